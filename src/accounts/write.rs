//! Creating, changing and deleting accounts: each a compare-and-set on its record,
//! retried while other writers win, with the directory following.

use super::*;

impl AccountService {
    pub async fn create(&self, input: NewAccount) -> Result<Account, AccountError> {
        let spec = validate::provider(&self.providers, &input.provider)?;
        let email = validate::email(&input.email)?;
        let max_jobs = validate::max_jobs(&input.provider, spec, input.max_jobs)?;
        check_credentials(&input.password, &input.api_key, &input.secret)?;
        validate::labels(&input.labels)?;
        let now = self.clock.now_ms();
        let mut account = Account {
            meta: AccountMeta {
                provider: input.provider,
                email,
                max_jobs,
                disabled: input.disabled,
                labels: input.labels,
                status: Status::Active,
                status_reason: String::new(),
                session: None,
                credits: None,
                upstream_activated: false,
                created_at_ms: now,
                updated_at_ms: now,
                version: 1,
            },
            secrets: AccountSecrets {
                password: input.password,
                api_key: input.api_key,
                secret: input.secret,
                token: None,
                previous_token: None,
            },
        };
        if let Some(session) = input.session {
            set_session(&mut account, session)?;
        }

        let key = account.meta.key();
        let bytes = self.encode(&key, &account)?;
        {
            let storage_key = self.record_key(&key);
            let txn = Txn::new()
                .expect(Tree::Accounts, &storage_key, Expect::Absent)
                .put(Tree::Accounts, &storage_key, &bytes);
            let _writing = self.writing.lock().await;
            match self.store.commit(txn).await? {
                Outcome::Committed(revision) => {
                    let mut directory = self.directory_mut();
                    directory.put(account.meta.clone(), revision);
                    directory.set_damaged(&storage_key, false);
                }
                Outcome::Conflict(_) => return Err(AccountError::AlreadyExists(key)),
            }
        }
        self.store.flush().await?;
        Ok(account)
    }

    pub async fn update(
        &self,
        provider: &str,
        email: &str,
        update: AccountUpdate,
        expected_version: Option<u64>,
    ) -> Result<Account, AccountError> {
        let key = lookup_key(provider, email)?;
        let max_jobs = self.check_update(&key, &update)?;
        let account = self
            .modify(&key, expected_version, |account| {
                apply(account, update.clone(), max_jobs).map_err(AccountError::from)
            })
            .await?;
        self.store.flush().await?;
        Ok(account)
    }

    /// The staged swap's last step: stores what a login produced in one atomic write.
    /// The current token becomes the previous one (kept sealed until its own expiry),
    /// the generation goes up by one, and the status returns to ACTIVE. The caller has
    /// checked the new token; `expected_generation` makes sure nobody stored another in
    /// between, and `fence` (the login flight's compare, where its right can be lost)
    /// that the login still held the flight.
    pub async fn store_refresh(
        &self,
        key: &AccountKey,
        refreshed: Refreshed,
        expected_generation: u64,
        fence: Option<&Compare>,
    ) -> Result<Account, AccountError> {
        let now = self.clock.now_ms();
        let account = self
            .modify_fenced(key, None, fence, |account| {
                let generation = account.meta.session.as_ref().map_or(0, |s| s.generation);
                if generation != expected_generation {
                    return Err(AccountError::Contended(key.clone()));
                }
                if let Some(fresh) = refreshed.session.clone() {
                    let old = account.meta.session.take().unwrap_or_default();
                    let keep_previous = !refreshed.revoked_previous
                        && old.expire_time > now / 1000
                        && account.secrets.token.is_some();
                    account.secrets.previous_token = if keep_previous {
                        account.secrets.token.take()
                    } else {
                        None
                    };
                    account.secrets.token = Some(fresh.token);
                    account.meta.session = Some(SessionMeta {
                        account_id: fresh.account_id.unwrap_or(old.account_id),
                        username: fresh.username.unwrap_or(old.username),
                        expire_time: fresh.expire_time,
                        generation: old.generation + 1,
                        last_refresh_at_ms: now,
                        previous_expire_time: if keep_previous { old.expire_time } else { 0 },
                    });
                }
                if refreshed.credits.is_some() {
                    account.meta.credits.clone_from(&refreshed.credits);
                }
                account.meta.upstream_activated |= refreshed.activated;
                account.meta.status = Status::Active;
                account.meta.status_reason.clear();
                Ok(())
            })
            .await?;
        self.store.flush().await?;
        Ok(account)
    }

    /// Records why a refresh did not happen (and, for a permanent failure,
    /// NEEDS_ATTENTION).
    pub async fn record_status(
        &self,
        key: &AccountKey,
        status: Status,
        reason: &str,
    ) -> Result<Account, AccountError> {
        let account = self
            .modify(key, None, |account| {
                account.meta.status = status;
                account.meta.status_reason = reason.to_owned();
                Ok(())
            })
            .await?;
        self.store.flush().await?;
        Ok(account)
    }

    /// Read-modify-write with compare-and-swap, retried while other writers win.
    async fn modify(
        &self,
        key: &AccountKey,
        expected_version: Option<u64>,
        change: impl FnMut(&mut Account) -> Result<(), AccountError>,
    ) -> Result<Account, AccountError> {
        self.modify_fenced(key, expected_version, None, change)
            .await
    }

    /// [`AccountService::modify`] whose write also requires `fence` to hold (a login's
    /// right to store its token); when it does not, nothing is written.
    async fn modify_fenced(
        &self,
        key: &AccountKey,
        expected_version: Option<u64>,
        fence: Option<&Compare>,
        mut change: impl FnMut(&mut Account) -> Result<(), AccountError>,
    ) -> Result<Account, AccountError> {
        let storage_key = self.record_key(key);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self
                .store
                .value(Tree::Accounts, &storage_key)
                .await?
                .ok_or_else(|| AccountError::NotFound(key.clone()))?;
            let mut account = self.decode(key, &current)?;
            check_version(key, &account.meta, expected_version)?;
            change(&mut account)?;
            account.meta.version += 1;
            account.meta.updated_at_ms = self.clock.now_ms();
            let bytes = self.encode(key, &account)?;
            let mut txn = Txn::new()
                .expect(Tree::Accounts, &storage_key, Expect::Value(current))
                .put(Tree::Accounts, &storage_key, &bytes);
            txn.compares.extend(fence.cloned());
            let _writing = self.writing.lock().await;
            match self.store.commit(txn).await? {
                Outcome::Committed(revision) => {
                    let mut directory = self.directory_mut();
                    directory.put(account.meta.clone(), revision);
                    directory.set_damaged(&storage_key, false);
                    return Ok(account);
                }
                Outcome::Conflict(found) => {
                    // The login lost its right to store: not retried.
                    if let Some(fence) = fence
                        && !fence.expect.holds(found.get(1).and_then(Option::as_ref))
                    {
                        return Err(AccountError::Contended(key.clone()));
                    }
                    // Someone else wrote first: read again (and re-check the version).
                    continue;
                }
            }
        }
        Err(AccountError::Contended(key.clone()))
    }

    /// Deletes an account. A record that no longer authenticates can still be deleted,
    /// so an operator can clear it; nothing of it is handed out on the way.
    pub async fn delete(
        &self,
        provider: &str,
        email: &str,
        expected_version: Option<u64>,
    ) -> Result<(), AccountError> {
        let key = lookup_key(provider, email)?;
        let storage_key = self.record_key(&key);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self
                .store
                .value(Tree::Accounts, &storage_key)
                .await?
                .ok_or_else(|| AccountError::NotFound(key.clone()))?;
            if expected_version.is_some() {
                let meta = self
                    .names
                    .meta(&self.sealer, &storage_key, &current)
                    .map_err(|source| AccountError::DataLoss {
                        key: key.clone(),
                        source,
                    })?;
                check_version(&key, &meta, expected_version)?;
            }
            let txn = Txn::new()
                .expect(Tree::Accounts, &storage_key, Expect::Value(current))
                .delete(Tree::Accounts, &storage_key);
            let outcome = {
                let _writing = self.writing.lock().await;
                let outcome = self.store.commit(txn).await?;
                if let Outcome::Committed(revision) = outcome {
                    let mut directory = self.directory_mut();
                    directory.remove(&key, revision);
                    directory.set_damaged(&storage_key, false);
                }
                outcome
            };
            match outcome {
                Outcome::Committed(_) => {
                    self.store.flush().await?;
                    return Ok(());
                }
                Outcome::Conflict(_) => continue,
            }
        }
        Err(AccountError::Contended(key))
    }

    /// Checks an update's fields; returns the validated `max_jobs`.
    fn check_update(
        &self,
        key: &AccountKey,
        update: &AccountUpdate,
    ) -> Result<Option<u32>, AccountError> {
        let max_jobs = match update.max_jobs {
            Some(requested) => {
                let spec = validate::provider(&self.providers, &key.provider)?;
                Some(validate::max_jobs(&key.provider, spec, requested)?)
            }
            None => None,
        };
        for (field, value, max) in [
            ("password", &update.password, validate::MAX_SECRET_LEN),
            ("api_key", &update.api_key, validate::MAX_SECRET_LEN),
            ("secret", &update.secret, validate::MAX_SECRET_LEN),
        ] {
            if let Some(value) = value {
                validate::secret(field, value, max)?;
            }
        }
        validate::labels(&update.set_labels)?;
        for label in &update.remove_labels {
            validate::label_key(label)?;
        }
        Ok(max_jobs)
    }
}

fn check_credentials(
    password: &Option<SecretString>,
    api_key: &Option<SecretString>,
    secret: &Option<SecretString>,
) -> Result<(), FieldError> {
    match (password, api_key) {
        (None, None) => return Err(FieldError::Missing("password")),
        (Some(password), _) => validate::secret("password", password, validate::MAX_SECRET_LEN)?,
        _ => {}
    }
    if let Some(api_key) = api_key {
        validate::secret("api_key", api_key, validate::MAX_SECRET_LEN)?;
    }
    match (secret, api_key) {
        (Some(_), None) => Err(FieldError::SecretWithoutApiKey),
        (Some(secret), Some(_)) => validate::secret("secret", secret, validate::MAX_SECRET_LEN),
        (None, _) => Ok(()),
    }
}

fn check_version(
    key: &AccountKey,
    meta: &AccountMeta,
    expected: Option<u64>,
) -> Result<(), AccountError> {
    match expected {
        Some(expected) if expected != meta.version => Err(AccountError::VersionMismatch {
            key: key.clone(),
            expected,
            actual: meta.version,
        }),
        _ => Ok(()),
    }
}

fn apply(
    account: &mut Account,
    update: AccountUpdate,
    max_jobs: Option<u32>,
) -> Result<(), FieldError> {
    let meta = &mut account.meta;
    if let Some(max_jobs) = max_jobs {
        meta.max_jobs = max_jobs;
    }
    if let Some(disabled) = update.disabled {
        meta.disabled = disabled;
    }
    for label in &update.remove_labels {
        meta.labels.remove(label);
    }
    meta.labels.extend(update.set_labels);
    if meta.labels.len() > validate::MAX_LABELS {
        return Err(FieldError::TooManyLabels);
    }
    let credentials_changed =
        update.password.is_some() || update.api_key.is_some() || update.secret.is_some();
    if update.password.is_some() {
        account.secrets.password = update.password;
    }
    if update.api_key.is_some() {
        account.secrets.api_key = update.api_key;
    }
    if update.secret.is_some() {
        account.secrets.secret = update.secret;
    }
    if account.secrets.secret.is_some() && account.secrets.api_key.is_none() {
        return Err(FieldError::SecretWithoutApiKey);
    }
    // New credentials are the operator's answer to a login the upstream refused.
    if credentials_changed && account.meta.status == Status::NeedsAttention {
        account.meta.status = Status::Active;
        account.meta.status_reason.clear();
    }
    if let Some(session) = update.session {
        set_session(account, session)?;
    }
    Ok(())
}

/// Stores an operator-supplied session token, reading its expiry from the token itself
/// when none is given.
fn set_session(account: &mut Account, session: SessionInput) -> Result<(), FieldError> {
    validate::secret("jwt.token", &session.token, validate::MAX_TOKEN_LEN)?;
    validate::text(
        "jwt.account_id",
        &session.account_id,
        validate::MAX_NAME_LEN,
        false,
    )?;
    validate::text(
        "jwt.username",
        &session.username,
        validate::MAX_NAME_LEN,
        false,
    )?;
    if session.expire_time < 0 {
        return Err(FieldError::NegativeExpiry);
    }
    let expire_time = match session.expire_time {
        0 => upstream_token::expiry(session.token.expose()).unwrap_or(0),
        given => given,
    };
    let old = account.meta.session.take().unwrap_or_default();
    // An operator's token replaces the session outright: no previous token is kept.
    account.meta.session = Some(SessionMeta {
        account_id: session.account_id,
        username: session.username,
        expire_time,
        generation: old.generation + 1,
        last_refresh_at_ms: old.last_refresh_at_ms,
        previous_expire_time: 0,
    });
    account.secrets.token = Some(session.token);
    account.secrets.previous_token = None;
    Ok(())
}
