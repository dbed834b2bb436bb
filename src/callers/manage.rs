//! Creating and changing callers: CreateCaller, ActivateCaller, tokens and sessions,
//! UpdateCaller, and the bootstrap admin.

use std::collections::BTreeSet;

use super::{
    ApiKeyEntry, BOOTSTRAP_ADMIN_ID, CallerCredits, CallerError, CallerRecord, CallerService,
    CallerUpdate, CreatedKey, MAX_GROUPS, MAX_KEYS, MAX_SECRET_LEN, MAX_SESSIONS, MAX_TOKENS,
    MIN_SECRET_LEN, NewCaller, Role, TokenEntry, TokenKind,
    identity::{Caller, Permission},
    keys::{self, KEY_LABEL, SECRET_LABEL},
    scope,
    tokens::Claims,
};
use crate::{
    crypto::{SecretString, random_bytes},
    store::{Expect, Outcome, Tree, Txn, Write},
    validate::{self, FieldError},
};

impl CallerService {
    /// Creates the bootstrap admin, or gives it back its powers: it is the way back in
    /// when every other admin is locked out, so a store that says it is no admin, or
    /// disabled (an older build allowed that), is corrected.
    pub(super) async fn ensure_bootstrap_admin(&self) -> Result<(), CallerError> {
        if let Some(opened) = self.opened(BOOTSTRAP_ADMIN_ID)? {
            let record = &opened.record;
            if record.roles.contains(&Role::Admin) && !record.disabled {
                return Ok(());
            }
            tracing::warn!(
                caller = BOOTSTRAP_ADMIN_ID,
                was_disabled = record.disabled,
                had_admin_role = record.roles.contains(&Role::Admin),
                "the bootstrap admin had lost its admin role or was disabled; restoring both"
            );
            self.modify(BOOTSTRAP_ADMIN_ID, None, Vec::new(), |record| {
                record.roles.insert(Role::Admin);
                record.disabled = false;
                Ok(true)
            })
            .await?;
            return Ok(());
        }
        let record = CallerRecord {
            id: BOOTSTRAP_ADMIN_ID.into(),
            email: String::new(),
            name: "bootstrap admin".into(),
            created_at_ms: self.now_ms(),
            roles: BTreeSet::from([Role::Admin]),
            scopes: Vec::new(),
            groups: Vec::new(),
            disabled: false,
            secret_mac: None,
            keys: Vec::new(),
            tokens: Vec::new(),
            credits: None,
            version: 1,
        };
        let bytes = self.seal(&record)?;
        let txn = Txn::new()
            .expect(Tree::Callers, BOOTSTRAP_ADMIN_ID.as_bytes(), Expect::Absent)
            .put(Tree::Callers, BOOTSTRAP_ADMIN_ID.as_bytes(), &bytes);
        match self.store.commit(txn).await? {
            Outcome::Committed(revision) => {
                self.remember(BOOTSTRAP_ADMIN_ID, bytes, record, revision);
            }
            // Created meanwhile (another node): take what is stored.
            Outcome::Conflict(_) => {
                self.read_afresh(BOOTSTRAP_ADMIN_ID).await?;
            }
        }
        Ok(())
    }

    /// CreateCaller: a new caller (admin only), or one more key for an existing one
    /// (admin, or the caller itself), proven by the caller's secret either way.
    pub async fn create(
        &self,
        actor: &Caller,
        input: NewCaller,
    ) -> Result<CreatedKey, CallerError> {
        let email = validate::email(&input.email)?;
        check_secret(&input.secret)?;
        validate::text("name", &input.name, validate::MAX_NAME_LEN, false)?;
        let scopes = parse_scopes(&input.scopes)?;
        let now = self.now_ms();
        let (key_id, api_key) = keys::generate()?;
        let key_entry = ApiKeyEntry {
            key_id: key_id.clone(),
            key_mac: self.macs.mac(KEY_LABEL, api_key.expose()),
            created_at_ms: now,
            activated_at_ms: None,
        };

        let existing = self.id_by_email(&email);
        let caller = match existing {
            Some(id) => {
                if actor.id != id {
                    actor.require(Permission::ManageCallers, "CreateCaller")?;
                }
                let index = key_index(&key_id, Some(&id));
                self.modify(&id, None, vec![index], |record| {
                    let matches = record.secret_mac.as_deref().is_some_and(|mac| {
                        self.macs.verify(SECRET_LABEL, input.secret.expose(), mac)
                    });
                    if !matches {
                        return Err(CallerError::SecretMismatch);
                    }
                    if record.keys.len() >= MAX_KEYS {
                        return Err(CallerError::TooManyKeys);
                    }
                    record.keys.push(key_entry.clone());
                    Ok(true)
                })
                .await?
            }
            None => {
                actor.require(Permission::ManageCallers, "CreateCaller")?;
                self.insert_new(&email, &input, scopes, key_entry, now)
                    .await?
            }
        };
        self.store.flush().await?;
        Ok(CreatedKey {
            caller,
            key_id,
            api_key,
        })
    }

    /// The record, its email and its first key in one transaction: of two concurrent
    /// creates for one email, one wins.
    async fn insert_new(
        &self,
        email: &str,
        input: &NewCaller,
        scopes: Vec<String>,
        key: ApiKeyEntry,
        now: i64,
    ) -> Result<CallerRecord, CallerError> {
        let mut id = [0u8; 8];
        random_bytes(&mut id)?;
        let id = format!("c_{}", crate::hex::encode(&id));
        let index = key_index(&key.key_id, Some(&id));
        let record = CallerRecord {
            id: id.clone(),
            email: email.to_owned(),
            name: input.name.clone(),
            created_at_ms: now,
            roles: if input.roles.is_empty() {
                BTreeSet::from([Role::Consumer])
            } else {
                input.roles.clone()
            },
            scopes,
            groups: Vec::new(),
            disabled: false,
            secret_mac: Some(self.macs.mac(SECRET_LABEL, input.secret.expose())),
            keys: vec![key],
            tokens: Vec::new(),
            credits: Some(CallerCredits {
                total: self.settings.default_credits,
                remaining: self.settings.default_credits,
                valid_from_ms: None,
                valid_until_ms: None,
            }),
            version: 1,
        };
        let bytes = self.seal(&record)?;
        let email_key = self.email_key(email);
        let email_index = Write {
            tree: Tree::CallerEmails,
            key: email_key.as_bytes().to_vec(),
            value: Some(id.as_bytes().to_vec()),
        };
        let mut txn = Txn::new()
            .expect(Tree::CallerEmails, email_key.as_bytes(), Expect::Absent)
            .expect(Tree::Callers, id.as_bytes(), Expect::Absent)
            .put(Tree::Callers, id.as_bytes(), &bytes);
        txn.writes.push(email_index.clone());
        txn.writes.push(index.clone());
        match self.store.commit(txn).await? {
            Outcome::Committed(revision) => {
                self.took(&[email_index, index], revision);
                self.remember(&id, bytes, record.clone(), revision);
                Ok(record)
            }
            Outcome::Conflict(_) => Err(CallerError::Contended(email.to_owned())),
        }
    }

    /// ActivateCaller: the first call of a new key.
    pub async fn activate(
        &self,
        caller_id: &str,
        key_id: &str,
    ) -> Result<CallerRecord, CallerError> {
        let now = self.now_ms();
        let record = self
            .modify(caller_id, None, Vec::new(), |record| {
                let entry = record
                    .keys
                    .iter_mut()
                    .find(|k| k.key_id == key_id)
                    .ok_or_else(|| CallerError::KeyNotFound(key_id.to_owned()))?;
                entry.activated_at_ms.get_or_insert(now);
                Ok(true)
            })
            .await?;
        self.store.flush().await?;
        Ok(record)
    }

    pub async fn issue_token(&self, caller_id: &str) -> Result<(String, Claims), CallerError> {
        self.issue(caller_id, TokenKind::Access).await
    }

    pub async fn create_session(
        &self,
        caller_id: &str,
    ) -> Result<(String, Claims, CallerRecord), CallerError> {
        let (token, claims) = self.issue(caller_id, TokenKind::Session).await?;
        Ok((token, claims, self.get(caller_id)?))
    }

    async fn issue(
        &self,
        caller_id: &str,
        kind: TokenKind,
    ) -> Result<(String, Claims), CallerError> {
        let now = self.now_ms();
        let (limit, lifetime) = match kind {
            TokenKind::Access => (MAX_TOKENS, self.settings.token_lifetime_secs),
            TokenKind::Session => (MAX_SESSIONS, self.settings.session_lifetime_secs),
        };
        let mut issued = None;
        self.modify(caller_id, None, Vec::new(), |record| {
            record.prune_tokens(now);
            if record.live_tokens(kind, now) >= limit {
                return Err(match kind {
                    TokenKind::Access => CallerError::TooManyTokens,
                    TokenKind::Session => CallerError::TooManySessions,
                });
            }
            let (token, claims) = self.tokens.issue(&record.id, kind, now, lifetime)?;
            record.tokens.push(TokenEntry {
                jti: claims.jti.clone(),
                kind,
                issued_at_ms: now,
                expires_at_ms: claims.exp * 1000,
                revoked_at_ms: None,
            });
            issued = Some((token, claims));
            Ok(true)
        })
        .await?;
        self.store.flush().await?;
        Ok(issued.expect("a successful modify ran the closure"))
    }

    /// Revokes one of `caller_id`'s tokens. Revoking twice is not an error.
    pub async fn revoke(&self, caller_id: &str, jti: &str) -> Result<(), CallerError> {
        let now = self.now_ms();
        self.modify(caller_id, None, Vec::new(), |record| {
            let entry = record
                .tokens
                .iter_mut()
                .find(|t| t.jti == jti)
                .ok_or_else(|| CallerError::TokenNotFound(jti.to_owned()))?;
            entry.revoked_at_ms.get_or_insert(now);
            record.prune_tokens(now);
            Ok(true)
        })
        .await?;
        self.store.flush().await?;
        Ok(())
    }

    /// Tokens that have not expired yet (revoked ones included, marked).
    pub fn list_tokens(&self, caller_id: &str) -> Result<Vec<TokenEntry>, CallerError> {
        let now = self.now_ms();
        let mut record = self.get(caller_id)?;
        record.prune_tokens(now);
        Ok(record.tokens)
    }

    pub async fn update(
        &self,
        caller_id: &str,
        update: CallerUpdate,
    ) -> Result<CallerRecord, CallerError> {
        let scopes = update.scopes.as_deref().map(parse_scopes).transpose()?;
        if let Some(name) = &update.name {
            validate::text("name", name, validate::MAX_NAME_LEN, false)?;
        }
        if let Some(groups) = &update.groups {
            if groups.len() > MAX_GROUPS {
                return Err(FieldError::TooMany("groups").into());
            }
            for group in groups {
                validate::text("groups", group, validate::MAX_NAME_LEN, true)?;
            }
        }
        let demotes = update
            .roles
            .as_ref()
            .is_some_and(|roles| !roles.contains(&Role::Admin))
            || update.disabled == Some(true);
        if caller_id == BOOTSTRAP_ADMIN_ID && demotes {
            return Err(CallerError::BootstrapAdmin);
        }
        // The update, and the record it answers, start from a balance with every debit
        // taken so far written.
        self.settle().await;
        // The index entries go with the keys, in the same transaction.
        let unindexed = update
            .remove_keys
            .iter()
            .map(|key_id| key_index(key_id, None))
            .collect();
        let record = self
            .modify(caller_id, update.expected_version, unindexed, |record| {
                apply_update(record, &update, scopes.clone())?;
                for key_id in &update.remove_keys {
                    let before = record.keys.len();
                    record.keys.retain(|k| &k.key_id != key_id);
                    if record.keys.len() == before {
                        return Err(CallerError::KeyNotFound(key_id.clone()));
                    }
                }
                Ok(true)
            })
            .await?;
        self.store.flush().await?;
        Ok(record)
    }
}

impl CallerService {
    /// ListCallers: up to `limit` callers after id `after`, in id order, those holding
    /// `role` when given; and whether more follow.
    pub fn list(
        &self,
        after: &str,
        limit: usize,
        role: Option<Role>,
    ) -> Result<(Vec<CallerRecord>, bool), CallerError> {
        let ids = self.view().ids();
        let mut page = Vec::new();
        for id in ids.iter().filter(|id| id.as_str() > after) {
            let record = self.get(id)?;
            if role.is_some_and(|role| !record.roles.contains(&role)) {
                continue;
            }
            if page.len() == limit {
                return Ok((page, true));
            }
            page.push(record);
        }
        Ok((page, false))
    }

    /// DeleteCaller: the record and both of its indexes, in one transaction; its keys
    /// and tokens stop working with it. The bootstrap admin stays.
    pub async fn delete(&self, id: &str) -> Result<CallerRecord, CallerError> {
        if id == BOOTSTRAP_ADMIN_ID {
            return Err(CallerError::BootstrapAdmin);
        }
        let _stripe = self.stripe(id).lock().await;
        let opened = self
            .opened(id)?
            .ok_or_else(|| CallerError::NotFound(id.to_owned()))?;
        let record = opened.record.clone();
        let mut writes = vec![Write {
            tree: Tree::Callers,
            key: id.as_bytes().to_vec(),
            value: None,
        }];
        if !record.email.is_empty() {
            writes.push(Write {
                tree: Tree::CallerEmails,
                key: self.email_key(&record.email).into_bytes(),
                value: None,
            });
        }
        writes.extend(record.keys.iter().map(|key| key_index(&key.key_id, None)));
        let mut txn = Txn::new().expect(
            Tree::Callers,
            id.as_bytes(),
            Expect::Value(opened.bytes.clone()),
        );
        txn.writes.extend(writes.iter().cloned());
        match self.store.commit(txn).await? {
            Outcome::Committed(revision) => {
                self.took(&writes, revision);
                self.changed.send_modify(|count| *count += 1);
                self.store.flush().await?;
                Ok(record)
            }
            Outcome::Conflict(_) => Err(CallerError::Contended(id.to_owned())),
        }
    }
}

/// The API-key index entry for `key_id`: pointing at `caller`, or deleted.
fn key_index(key_id: &str, caller: Option<&str>) -> Write {
    Write {
        tree: Tree::ApiKeys,
        key: key_id.as_bytes().to_vec(),
        value: caller.map(|id| id.as_bytes().to_vec()),
    }
}

fn apply_update(
    record: &mut CallerRecord,
    update: &CallerUpdate,
    scopes: Option<Vec<String>>,
) -> Result<(), CallerError> {
    if let Some(roles) = &update.roles {
        record.roles.clone_from(roles);
    }
    if let Some(scopes) = scopes {
        record.scopes = scopes;
    }
    if let Some(groups) = &update.groups {
        record.groups.clone_from(groups);
    }
    if let Some(name) = &update.name {
        record.name.clone_from(name);
    }
    if let Some(disabled) = update.disabled {
        record.disabled = disabled;
    }
    match update.unmetered {
        Some(true) => record.credits = None,
        Some(false) if record.credits.is_none() => {
            record.credits = Some(CallerCredits {
                total: 0,
                remaining: 0,
                valid_from_ms: None,
                valid_until_ms: None,
            });
        }
        _ => {}
    }
    if let Some(credits) = record.credits.as_mut() {
        credits.total = credits.total.saturating_add(update.add_credits).max(0);
        credits.remaining = credits.remaining.saturating_add(update.add_credits).max(0);
        if update.valid_from_ms.is_some() {
            credits.valid_from_ms = update.valid_from_ms;
        }
        if update.valid_until_ms.is_some() {
            credits.valid_until_ms = update.valid_until_ms;
        }
    }
    Ok(())
}

fn check_secret(secret: &SecretString) -> Result<(), FieldError> {
    validate::secret("secret", secret, MAX_SECRET_LEN)?;
    if secret.expose().chars().count() < MIN_SECRET_LEN {
        return Err(FieldError::SecretTooShort {
            min: MIN_SECRET_LEN,
        });
    }
    Ok(())
}

fn parse_scopes(scopes: &[String]) -> Result<Vec<String>, FieldError> {
    if scopes.len() > scope::MAX_SCOPES {
        return Err(FieldError::TooMany("scopes"));
    }
    scopes.iter().map(|s| scope::parse(s)).collect()
}
