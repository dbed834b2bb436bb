//! credvault's own callers (reference behaviours B, C and D): identities created from
//! an email and a client secret, API keys that activate on first use, JWTs (at most
//! three live), short-lived sessions, roles and scopes, and a credit balance that
//! credential hand-outs draw on.

pub mod identity;
pub mod keys;
mod model;
pub mod scope;
pub mod tokens;

use std::{
    collections::{BTreeSet, HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, OnceLock, RwLock},
};

pub use model::{ApiKeyEntry, CallerCredits, CallerRecord, Role, TokenEntry, TokenKind};
pub use tokens::{Claims, KeysError, TokenError, TokenKeys};

use crate::{
    clock::Clock,
    crypto::{RngError, Sealer, SecretString, random_bytes},
    sealed::{self, SealedError},
    store::{Store, StoreError, Swap, Tree},
    timefmt::rfc3339_millis,
    validate::{self, FieldError},
};
use identity::{AuthError, Caller, Credential, Permission};
use keys::{CallerMacs, KEY_LABEL, SECRET_LABEL};

/// The caller the configured bootstrap token authenticates as.
pub const BOOTSTRAP_ADMIN_ID: &str = "admin";
pub const MAX_KEYS: usize = 3;
pub const MAX_TOKENS: usize = 3;
/// Live sessions per caller; sessions are short-lived, this only bounds the record.
pub const MAX_SESSIONS: usize = 16;
pub const MIN_SECRET_LEN: usize = 32;
const MAX_SECRET_LEN: usize = 1024;
const MAX_GROUPS: usize = 64;
const STRIPES: usize = 64;

/// The `[callers]` section of the configuration.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallerSettings {
    /// `iss` and `aud` of every token credvault issues and accepts.
    pub issuer: String,
    pub audience: String,
    /// IssueToken's tokens (default one year).
    pub token_lifetime_secs: i64,
    /// CreateSession's tokens (default one hour).
    pub session_lifetime_secs: i64,
    /// Credits a new caller starts with.
    pub default_credits: i64,
    /// Credits one RevealAccount costs.
    pub reveal_cost: i64,
    /// Credits one AcquireLease costs.
    pub lease_cost: i64,
}

impl Default for CallerSettings {
    fn default() -> Self {
        Self {
            issuer: "credvault".into(),
            audience: "credvault".into(),
            token_lifetime_secs: 365 * 24 * 3600,
            session_lifetime_secs: 3600,
            default_credits: 100,
            reveal_cost: 1,
            lease_cost: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    #[error(
        "no credits remaining: the balance is {remaining}, this call costs {cost}; ask an admin to top up"
    )]
    Exhausted { remaining: i64, cost: i64 },
    #[error("credits are not valid until {0}")]
    NotYetValid(String),
    #[error("credits expired at {0}")]
    Expired(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("caller {0} not found")]
    NotFound(String),
    #[error("Too many Requests")]
    TooManyKeys,
    #[error("JWT limit exceeded, please revoke an existing JWT to create a new one")]
    TooManyTokens,
    #[error("too many live sessions ({MAX_SESSIONS}); wait for one to expire or revoke one")]
    TooManySessions,
    #[error("no JWT with jti {0} for this caller")]
    TokenNotFound(String),
    #[error("no API key {0} for this caller")]
    KeyNotFound(String),
    #[error("permission denied: the secret does not match this caller's secret")]
    SecretMismatch,
    #[error(transparent)]
    Denied(#[from] identity::Denied),
    #[error(transparent)]
    Credits(#[from] CreditError),
    #[error(
        "version mismatch: caller {id} is at version {actual}, the request expected {expected}"
    )]
    VersionMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "the bootstrap admin keeps the admin role and cannot be disabled: it is the way back in when every other admin is locked out (replace its token to shut someone out)"
    )]
    BootstrapAdmin,
    #[error("caller {0} is being created by another request at the same time; retry")]
    Contended(String),
    #[error("caller {id} failed its integrity check and will not be used: {source}")]
    DataLoss {
        id: String,
        #[source]
        source: SealedError,
    },
    #[error("sealing a caller record failed: {0}")]
    Seal(SealedError),
    /// A debit taken in memory could not be written with its batch (the store's error
    /// is logged where it happened); nothing was taken.
    #[error("the debit could not be written")]
    DebitUnwritten,
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// CreateCaller's input, before validation.
#[derive(Debug, Default)]
pub struct NewCaller {
    pub email: String,
    pub secret: SecretString,
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub scopes: Vec<String>,
}

/// What CreateCaller hands back once: the new key.
#[derive(Debug)]
pub struct CreatedKey {
    pub caller: CallerRecord,
    pub key_id: String,
    pub api_key: SecretString,
}

/// UpdateCaller's input: `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct CallerUpdate {
    pub roles: Option<BTreeSet<Role>>,
    pub scopes: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub name: Option<String>,
    pub disabled: Option<bool>,
    pub unmetered: Option<bool>,
    pub add_credits: i64,
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    pub remove_keys: Vec<String>,
    pub expected_version: Option<u64>,
}

pub struct CallerService {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    clock: Arc<dyn Clock>,
    macs: CallerMacs,
    tokens: TokenKeys,
    settings: CallerSettings,
    /// Serialises read-modify-write per caller in this process, so that concurrent
    /// debits queue instead of racing on compare-and-swap.
    stripes: Vec<Mutex<()>>,
    /// Opened caller records with their stored bytes, so that authenticating and
    /// debiting do not decrypt and parse the same record on every call. The store stays
    /// the truth: an entry is replaced only by a higher version, and dropped when a
    /// compare-and-swap finds the store holding something else.
    opened: RwLock<HashMap<String, Arc<Opened>>>,
    /// Debits taken but not yet written, per caller: hand-outs under load take their
    /// credits here, and the group commit that makes them durable writes each caller's
    /// sum with one compare-and-swap ([`CallerService::settle`]).
    pending: Mutex<HashMap<String, PendingDebit>>,
    /// Held for a whole settle: a flush that follows any settle then covers every debit
    /// written so far, even one a concurrent settle was writing.
    settling: Mutex<()>,
    /// Counts the record changes this process wrote: a long-lived stream waits on it
    /// to check its caller again at once.
    changed: tokio::sync::watch::Sender<u64>,
}

/// What a caller owes, not yet written, and the outcome its debits will share.
struct PendingDebit {
    amount: i64,
    written: Arc<OnceLock<bool>>,
}

/// A debit taken by [`CallerService::charge`].
#[derive(Debug)]
pub struct Charge {
    caller_id: String,
    cost: i64,
    /// Set when the batch holding this debit is written (true) or lost (false); `None`
    /// for free calls and unmetered callers, which owe nothing.
    written: Option<Arc<OnceLock<bool>>>,
    /// The caller's credits once this debit (and those before it) are taken.
    pub credits: Option<CallerCredits>,
}

impl Charge {
    /// Answers whether the debit is written (nothing owed counts as written). After a
    /// durable commit it is known; before, `None`.
    pub fn written(&self) -> Option<bool> {
        match &self.written {
            None => Some(true),
            Some(written) => written.get().copied(),
        }
    }

    /// For a call that owed nothing.
    pub fn free() -> Self {
        Self {
            caller_id: String::new(),
            cost: 0,
            written: None,
            credits: None,
        }
    }
}

struct Opened {
    bytes: Vec<u8>,
    record: CallerRecord,
}

impl CallerService {
    /// Loads (or creates) the signing keys and the bootstrap admin.
    pub fn open(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        macs: CallerMacs,
        clock: Arc<dyn Clock>,
        settings: CallerSettings,
    ) -> Result<Self, CallerError> {
        let tokens = TokenKeys::load_or_init(
            store.as_ref(),
            &sealer,
            clock.now_ms(),
            &settings.issuer,
            &settings.audience,
            settings
                .token_lifetime_secs
                .max(settings.session_lifetime_secs),
        )?;
        let service = Self {
            store,
            sealer,
            clock,
            macs,
            tokens,
            settings,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            opened: RwLock::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            settling: Mutex::new(()),
            changed: tokio::sync::watch::Sender::new(0),
        };
        service.ensure_bootstrap_admin()?;
        Ok(service)
    }

    pub fn settings(&self) -> &CallerSettings {
        &self.settings
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn token_keys(&self) -> &TokenKeys {
        &self.tokens
    }

    /// Makes a new signing key current (old tokens stay valid until they expire).
    pub fn rotate_signing_key(&self) -> Result<String, CallerError> {
        Ok(self
            .tokens
            .rotate(self.store.as_ref(), &self.sealer, self.clock.now_ms())?)
    }

    /// Creates the bootstrap admin, or gives it back its powers: it is the way back in
    /// when every other admin is locked out, so a store that says it is no admin, or
    /// disabled (an older build allowed that), is corrected.
    fn ensure_bootstrap_admin(&self) -> Result<(), CallerError> {
        if let Some((_, record)) = self.load(BOOTSTRAP_ADMIN_ID)? {
            if record.roles.contains(&Role::Admin) && !record.disabled {
                return Ok(());
            }
            tracing::warn!(
                caller = BOOTSTRAP_ADMIN_ID,
                was_disabled = record.disabled,
                had_admin_role = record.roles.contains(&Role::Admin),
                "the bootstrap admin had lost its admin role or was disabled; restoring both"
            );
            self.modify(BOOTSTRAP_ADMIN_ID, None, |record| {
                record.roles.insert(Role::Admin);
                record.disabled = false;
                Ok(true)
            })?;
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
        self.store.compare_and_swap(
            Tree::Callers,
            BOOTSTRAP_ADMIN_ID.as_bytes(),
            None,
            Some(&bytes),
        )?;
        Ok(())
    }

    /// The caller as stored, its credits net of debits not yet written.
    pub fn get(&self, id: &str) -> Result<CallerRecord, CallerError> {
        let mut record = self
            .load(id)?
            .map(|(_, record)| record)
            .ok_or_else(|| CallerError::NotFound(id.to_owned()))?;
        if let Some(credits) = record.credits.as_mut() {
            credits.remaining -= self.owed(id);
        }
        Ok(record)
    }

    pub fn find_by_email(&self, email: &str) -> Result<CallerRecord, CallerError> {
        let email = email.to_lowercase();
        let id = self
            .store
            .get(Tree::CallerEmails, email.as_bytes())?
            .ok_or_else(|| CallerError::NotFound(email.clone()))?;
        self.get(&String::from_utf8_lossy(&id))
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

        let caller = match self.store.get(Tree::CallerEmails, email.as_bytes())? {
            Some(id) => {
                let id = String::from_utf8_lossy(&id).into_owned();
                if actor.id != id {
                    actor.require(Permission::ManageCallers, "CreateCaller")?;
                }
                self.modify(&id, None, |record| {
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
                })?
            }
            None => {
                actor.require(Permission::ManageCallers, "CreateCaller")?;
                self.insert_new(&email, &input, scopes, key_entry, now)?
            }
        };
        self.store.compare_and_swap(
            Tree::ApiKeys,
            key_id.as_bytes(),
            None,
            Some(caller.id.as_bytes()),
        )?;
        self.store.flush().await?;
        Ok(CreatedKey {
            caller,
            key_id,
            api_key,
        })
    }

    fn insert_new(
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
        // Claim the email first: of two concurrent creates, one wins here.
        if let Swap::Conflict { .. } = self.store.compare_and_swap(
            Tree::CallerEmails,
            email.as_bytes(),
            None,
            Some(id.as_bytes()),
        )? {
            return Err(CallerError::Contended(email.to_owned()));
        }
        let bytes = self.seal(&record)?;
        self.store
            .compare_and_swap(Tree::Callers, id.as_bytes(), None, Some(&bytes))?;
        Ok(record)
    }

    /// Proves an API key and the caller's secret (`x-credvault-secret`).
    pub fn authenticate_key(
        &self,
        api_key: &str,
        secret: Option<&str>,
    ) -> Result<Caller, AuthError> {
        let key_id = keys::key_id(api_key).ok_or(AuthError::MissingOrInvalid)?;
        let caller_id = self
            .store
            .get(Tree::ApiKeys, key_id.as_bytes())
            .map_err(auth_store_error)?
            .ok_or(AuthError::MissingOrInvalid)?;
        let opened = self.record_for_auth(&String::from_utf8_lossy(&caller_id))?;
        let record = &opened.record;
        let entry = record
            .keys
            .iter()
            .find(|k| k.key_id == key_id)
            .ok_or(AuthError::MissingOrInvalid)?;
        let key_ok = self.macs.verify(KEY_LABEL, api_key, &entry.key_mac);
        let secret_ok = match (secret, &record.secret_mac) {
            (Some(secret), Some(mac)) => self.macs.verify(SECRET_LABEL, secret, mac),
            _ => false,
        };
        if !(key_ok && secret_ok) {
            return Err(AuthError::MissingOrInvalid);
        }
        let credential = Credential::ApiKey {
            key_id: key_id.to_owned(),
            activated: entry.activated_at_ms.is_some(),
        };
        caller(record, credential)
    }

    /// Proves `email:secret` from a Basic header (CreateSession only).
    pub fn authenticate_basic(&self, email: &str, secret: &str) -> Result<Caller, AuthError> {
        let id = self
            .store
            .get(Tree::CallerEmails, email.to_lowercase().as_bytes())
            .map_err(auth_store_error)?
            .ok_or(AuthError::MissingOrInvalid)?;
        let opened = self.record_for_auth(&String::from_utf8_lossy(&id))?;
        let record = &opened.record;
        let ok = record
            .secret_mac
            .as_deref()
            .is_some_and(|mac| self.macs.verify(SECRET_LABEL, secret, mac));
        if !ok {
            return Err(AuthError::MissingOrInvalid);
        }
        if record.activated_keys() == 0 {
            return Err(AuthError::NotActivated);
        }
        caller(record, Credential::Basic)
    }

    /// Proves a JWT: signature, claims and time, then that its `jti` is live.
    pub fn authenticate_jwt(&self, token: &str) -> Result<Caller, AuthError> {
        let claims = self
            .tokens
            .verify(token, self.now_ms())
            .map_err(|e| match e {
                TokenError::Invalid => AuthError::MissingOrInvalid,
                TokenError::Expired => AuthError::Expired,
            })?;
        let opened = self.record_for_auth(&claims.sub)?;
        let record = &opened.record;
        let entry = record
            .tokens
            .iter()
            .find(|t| t.jti == claims.jti && t.kind == claims.kind)
            .ok_or(AuthError::MissingOrInvalid)?;
        if entry.revoked_at_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        let credential = Credential::Jwt {
            jti: claims.jti,
            kind: claims.kind,
        };
        caller(record, credential)
    }

    /// The caller the configuration maps a Unix-socket peer's uid to.
    pub fn authenticate_peer(&self, caller_id: &str, uid: u32) -> Result<Caller, AuthError> {
        caller(
            &self.record_for_auth(caller_id)?.record,
            Credential::Peer { uid },
        )
    }

    /// The bootstrap admin, for the configured bootstrap token.
    pub fn bootstrap_admin(&self) -> Result<Caller, AuthError> {
        caller(
            &self.record_for_auth(BOOTSTRAP_ADMIN_ID)?.record,
            Credential::Bootstrap,
        )
    }

    /// The caller's record as last opened (shared, not copied: authentication runs on
    /// every call).
    fn record_for_auth(&self, id: &str) -> Result<Arc<Opened>, AuthError> {
        match self.load_shared(id) {
            Ok(Some(opened)) => Ok(opened),
            Ok(None) => Err(AuthError::MissingOrInvalid),
            Err(CallerError::Store(error)) => Err(auth_store_error(error)),
            Err(error @ CallerError::DataLoss { .. }) => {
                tracing::error!(caller = id, %error, "caller record failed its integrity check during authentication");
                Err(AuthError::DataLoss)
            }
            Err(error) => {
                tracing::error!(caller = id, %error, "caller record unreadable during authentication");
                Err(AuthError::Internal)
            }
        }
    }

    /// ActivateCaller: the first call of a new key.
    pub async fn activate(
        &self,
        caller_id: &str,
        key_id: &str,
    ) -> Result<CallerRecord, CallerError> {
        let now = self.now_ms();
        let record = self.modify(caller_id, None, |record| {
            let entry = record
                .keys
                .iter_mut()
                .find(|k| k.key_id == key_id)
                .ok_or_else(|| CallerError::KeyNotFound(key_id.to_owned()))?;
            entry.activated_at_ms.get_or_insert(now);
            Ok(true)
        })?;
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
        self.modify(caller_id, None, |record| {
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
        })?;
        self.store.flush().await?;
        Ok(issued.expect("a successful modify ran the closure"))
    }

    /// Revokes one of `caller_id`'s tokens. Revoking twice is not an error.
    pub async fn revoke(&self, caller_id: &str, jti: &str) -> Result<(), CallerError> {
        let now = self.now_ms();
        self.modify(caller_id, None, |record| {
            let entry = record
                .tokens
                .iter_mut()
                .find(|t| t.jti == jti)
                .ok_or_else(|| CallerError::TokenNotFound(jti.to_owned()))?;
            entry.revoked_at_ms.get_or_insert(now);
            record.prune_tokens(now);
            Ok(true)
        })?;
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
        self.settle();
        let record = self.modify(caller_id, update.expected_version, |record| {
            apply_update(record, &update, scopes.clone())?;
            for key_id in &update.remove_keys {
                let before = record.keys.len();
                record.keys.retain(|k| &k.key_id != key_id);
                if record.keys.len() == before {
                    return Err(CallerError::KeyNotFound(key_id.clone()));
                }
            }
            Ok(true)
        })?;
        // The index entries go once the record no longer lists the keys.
        for key_id in &update.remove_keys {
            self.store.compare_and_swap(
                Tree::ApiKeys,
                key_id.as_bytes(),
                Some(record.id.as_bytes()),
                None,
            )?;
        }
        self.store.flush().await?;
        Ok(record)
    }

    /// Changes each time a caller record is changed here (roles, scopes, tokens
    /// revoked, disabled, balance): for streams that check their caller again.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the caller's credits may be used now: within their validity window (an
    /// unmetered caller's always are). The balance is not looked at: for free calls.
    pub fn check_credit_window(&self, caller_id: &str) -> Result<(), CallerError> {
        let opened = self
            .load_shared(caller_id)?
            .ok_or_else(|| CallerError::NotFound(caller_id.to_owned()))?;
        match &opened.record.credits {
            Some(credits) => Ok(credit_window(credits, self.now_ms())?),
            None => Ok(()),
        }
    }

    /// Takes `cost` credits in memory, atomically (never below zero, counting debits
    /// not yet written). The debit is written by the next [`CallerService::settle`],
    /// which a durable commit runs before its flush; [`Charge::written`] then tells
    /// whether it was. A call that cannot complete gives it back with
    /// [`CallerService::refund`].
    pub fn charge(&self, caller_id: &str, cost: i64) -> Result<Charge, CallerError> {
        // Free calls cost nothing, not even a read.
        if cost == 0 {
            return Ok(Charge::free());
        }
        let now = self.now_ms();
        let _guard = self
            .stripe(caller_id)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let opened = self
            .load_shared(caller_id)?
            .ok_or_else(|| CallerError::NotFound(caller_id.to_owned()))?;
        // Unmetered: nothing to take.
        let Some(mut credits) = opened.record.credits.clone() else {
            return Ok(Charge {
                caller_id: caller_id.to_owned(),
                ..Charge::free()
            });
        };
        credit_window(&credits, now)?;
        let mut pending = self.pending_debits();
        let owed = pending.get(caller_id).map_or(0, |p| p.amount);
        credits.remaining -= owed;
        if credits.remaining < cost {
            return Err(CreditError::Exhausted {
                remaining: credits.remaining,
                cost,
            }
            .into());
        }
        credits.remaining -= cost;
        let entry = pending
            .entry(caller_id.to_owned())
            .or_insert_with(|| PendingDebit {
                amount: 0,
                written: Arc::new(OnceLock::new()),
            });
        entry.amount += cost;
        Ok(Charge {
            caller_id: caller_id.to_owned(),
            cost,
            written: Some(entry.written.clone()),
            credits: Some(credits),
        })
    }

    /// Writes every pending debit: one compare-and-swap per caller for the sum it owes,
    /// under that caller's stripe lock. Not flushed: the durable commit that runs it
    /// flushes next.
    pub fn settle(&self) {
        let _settling = self.settling.lock().unwrap_or_else(|e| e.into_inner());
        let owing: Vec<String> = self.pending_debits().keys().cloned().collect();
        for id in owing {
            let _guard = self.stripe(&id).lock().unwrap_or_else(|e| e.into_inner());
            let Some(debit) = self.pending_debits().remove(&id) else {
                continue;
            };
            let result = self.modify_locked(&id, None, |record| {
                let Some(credits) = record.credits.as_mut() else {
                    // Made unmetered since: nothing is owed.
                    return Ok(false);
                };
                credits.remaining -= debit.amount;
                Ok(debit.amount != 0)
            });
            if let Err(error) = &result {
                tracing::error!(caller = %id, %error, "writing debits failed; the calls that took them are refused");
            }
            let _ = debit.written.set(result.is_ok());
        }
    }

    /// Makes every write so far durable, pending debits included.
    pub async fn flush(&self) -> Result<(), CallerError> {
        self.settle();
        Ok(self.store.flush().await?)
    }

    /// Gives back a debit for something that was then not handed out: still pending, it
    /// is taken off; written, it is paid back (not flushed: the store's background flush
    /// or the next durable write makes it so); lost, there is nothing to give back.
    pub fn refund(&self, charge: &Charge) -> Result<(), CallerError> {
        let Some(written) = &charge.written else {
            return Ok(());
        };
        let _guard = self
            .stripe(&charge.caller_id)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Under the stripe lock, settle has either written this batch or not begun it.
        match written.get() {
            None => {
                if let Some(debit) = self.pending_debits().get_mut(&charge.caller_id)
                    && Arc::ptr_eq(&debit.written, written)
                {
                    debit.amount -= charge.cost;
                }
                Ok(())
            }
            Some(false) => Ok(()),
            Some(true) => {
                self.modify_locked(&charge.caller_id, None, |record| {
                    let Some(credits) = record.credits.as_mut() else {
                        return Ok(false);
                    };
                    credits.remaining = credits.remaining.saturating_add(charge.cost);
                    Ok(true)
                })?;
                Ok(())
            }
        }
    }

    /// What a caller owes in debits not yet written.
    fn owed(&self, id: &str) -> i64 {
        self.pending_debits().get(id).map_or(0, |p| p.amount)
    }

    fn pending_debits(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingDebit>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stripe(&self, id: &str) -> &Mutex<()> {
        let mut hasher = DefaultHasher::new();
        id.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % STRIPES]
    }

    /// The opened record, shared with the cache (no copy when it is kept).
    fn load_shared(&self, id: &str) -> Result<Option<Arc<Opened>>, CallerError> {
        if let Some(opened) = self.opened_cache().get(id) {
            return Ok(Some(opened.clone()));
        }
        Ok(self
            .load(id)?
            .map(|(bytes, record)| Arc::new(Opened { bytes, record })))
    }

    fn load(&self, id: &str) -> Result<Option<(Vec<u8>, CallerRecord)>, CallerError> {
        if let Some(opened) = self.opened_cache().get(id) {
            return Ok(Some((opened.bytes.clone(), opened.record.clone())));
        }
        let Some(bytes) = self.store.get(Tree::Callers, id.as_bytes())? else {
            return Ok(None);
        };
        let record =
            sealed::open(&self.sealer, Tree::Callers, id.as_bytes(), &bytes).map_err(|source| {
                if source.is_data_loss() {
                    CallerError::DataLoss {
                        id: id.to_owned(),
                        source,
                    }
                } else {
                    CallerError::Seal(source)
                }
            })?;
        self.remember(id, &bytes, &record);
        Ok(Some((bytes, record)))
    }

    fn opened_cache(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Opened>>> {
        self.opened.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps an opened record unless a newer version is kept already.
    fn remember(&self, id: &str, bytes: &[u8], record: &CallerRecord) {
        let mut opened = self.opened.write().unwrap_or_else(|e| e.into_inner());
        if opened
            .get(id)
            .is_none_or(|kept| kept.record.version < record.version)
        {
            opened.insert(
                id.to_owned(),
                Arc::new(Opened {
                    bytes: bytes.to_vec(),
                    record: record.clone(),
                }),
            );
        }
    }

    /// The store holds something other than what is kept (a re-seal, another writer).
    fn forget(&self, id: &str) {
        self.opened
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn seal(&self, record: &CallerRecord) -> Result<Vec<u8>, CallerError> {
        sealed::seal(&self.sealer, Tree::Callers, record.id.as_bytes(), record)
            .map_err(CallerError::Seal)
    }

    /// Read-modify-write of one caller under its stripe lock; the closure may run more
    /// than once if another process wrote in between. It answers whether it changed the
    /// record: when it did not, nothing is written.
    fn modify(
        &self,
        id: &str,
        expected_version: Option<u64>,
        change: impl FnMut(&mut CallerRecord) -> Result<bool, CallerError>,
    ) -> Result<CallerRecord, CallerError> {
        let _guard = self.stripe(id).lock().unwrap_or_else(|e| e.into_inner());
        self.modify_locked(id, expected_version, change)
    }

    /// [`CallerService::modify`] for a caller already holding the stripe lock.
    fn modify_locked(
        &self,
        id: &str,
        expected_version: Option<u64>,
        mut change: impl FnMut(&mut CallerRecord) -> Result<bool, CallerError>,
    ) -> Result<CallerRecord, CallerError> {
        loop {
            let (old, mut record) = self
                .load(id)?
                .ok_or_else(|| CallerError::NotFound(id.to_owned()))?;
            if let Some(expected) = expected_version.filter(|v| *v != record.version) {
                return Err(CallerError::VersionMismatch {
                    id: id.to_owned(),
                    expected,
                    actual: record.version,
                });
            }
            if !change(&mut record)? {
                return Ok(record);
            }
            record.version += 1;
            let new = self.seal(&record)?;
            if self
                .store
                .compare_and_swap(Tree::Callers, id.as_bytes(), Some(&old), Some(&new))?
                == Swap::Done
            {
                self.remember(id, &new, &record);
                self.changed.send_modify(|count| *count += 1);
                return Ok(record);
            }
            self.forget(id);
        }
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

/// Refuses credits outside their validity window.
fn credit_window(credits: &CallerCredits, now: i64) -> Result<(), CreditError> {
    if let Some(from) = credits.valid_from_ms.filter(|from| now < *from) {
        return Err(CreditError::NotYetValid(rfc3339_millis(from)));
    }
    if let Some(until) = credits.valid_until_ms.filter(|until| now >= *until) {
        return Err(CreditError::Expired(rfc3339_millis(until)));
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

fn caller(record: &CallerRecord, credential: Credential) -> Result<Caller, AuthError> {
    if record.disabled {
        return Err(AuthError::Disabled);
    }
    Ok(Caller {
        id: record.id.clone(),
        email: record.email.clone(),
        roles: record.roles.clone(),
        scopes: record.scopes.clone(),
        credential,
    })
}

fn auth_store_error(error: StoreError) -> AuthError {
    tracing::error!(%error, "store unreadable during authentication");
    match error {
        StoreError::Io(_) => AuthError::Unavailable,
        StoreError::Corrupted(_) => AuthError::DataLoss,
        StoreError::Engine(_) | StoreError::Locked | StoreError::LostWrites { .. } => {
            AuthError::Internal
        }
    }
}

#[cfg(test)]
mod debit_tests {
    use super::*;
    use crate::{
        clock::ManualClock,
        crypto::MasterKey,
        store::{FaultPlan, FaultyStore, SledStore},
    };

    /// A service over a (breakable) store, and a consumer holding `credits`.
    async fn consumer(credits: i64) -> (tempfile::TempDir, CallerService, Arc<FaultPlan>, String) {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let plan = Arc::new(FaultPlan::default());
        let sled: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let service = CallerService::open(
            Arc::new(FaultyStore::new(sled, plan.clone())),
            Arc::new(Sealer::new(&master)),
            CallerMacs::new(&master),
            Arc::new(ManualClock::at(1_800_000_000_000)),
            CallerSettings {
                default_credits: credits,
                ..CallerSettings::default()
            },
        )
        .unwrap();
        let admin = service.bootstrap_admin().unwrap();
        let created = service
            .create(
                &admin,
                NewCaller {
                    email: "spender@example.com".into(),
                    secret: SecretString::from("s".repeat(MIN_SECRET_LEN)),
                    scopes: vec!["pixverse".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let id = created.caller.id.clone();
        (dir, service, plan, id)
    }

    /// A debit as a hand-out makes it: charged, then written and flushed.
    async fn debit(service: &CallerService, id: &str, cost: i64) -> Result<i64, CallerError> {
        let charge = service.charge(id, cost)?;
        service.flush().await?;
        match charge.written() {
            Some(true) => Ok(charge.credits.map_or(0, |c| c.remaining)),
            _ => Err(CallerError::DebitUnwritten),
        }
    }

    /// The balance as stored (the cache follows the store), without pending debits.
    fn stored(service: &CallerService, id: &str) -> i64 {
        let (_, record) = service.load(id).unwrap().unwrap();
        record.credits.unwrap().remaining
    }

    #[tokio::test]
    async fn pending_debits_count_against_the_balance_until_one_write_takes_them_all() {
        let (_dir, service, _plan, id) = consumer(3).await;
        let charges: Vec<Charge> = (0..3).map(|_| service.charge(&id, 1).unwrap()).collect();
        assert_eq!(charges[2].credits.as_ref().unwrap().remaining, 0);
        assert!(matches!(
            service.charge(&id, 1),
            Err(CallerError::Credits(CreditError::Exhausted {
                remaining: 0,
                cost: 1
            }))
        ));
        assert_eq!(charges[0].written(), None);
        assert_eq!(stored(&service, &id), 3);
        assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 0);
        let version = service.get(&id).unwrap().version;
        service.settle();
        assert!(charges.iter().all(|c| c.written() == Some(true)));
        assert_eq!(stored(&service, &id), 0);
        assert_eq!(service.get(&id).unwrap().version, version + 1, "one write");
    }

    #[tokio::test]
    async fn a_refund_takes_off_a_pending_debit_and_pays_back_a_written_one() {
        let (_dir, service, _plan, id) = consumer(5).await;
        let pending = service.charge(&id, 2).unwrap();
        service.refund(&pending).unwrap();
        assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 5);
        let written = service.charge(&id, 2).unwrap();
        service.settle();
        assert_eq!(stored(&service, &id), 3);
        service.refund(&written).unwrap();
        assert_eq!(stored(&service, &id), 5);
        // The refunded pending debit was never written.
        service.settle();
        assert_eq!(stored(&service, &id), 5);
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_written_refuses_its_debits_and_takes_nothing() {
        let (_dir, service, plan, id) = consumer(5).await;
        let charge = service.charge(&id, 1).unwrap();
        plan.fail_writes(Tree::Callers, true);
        service.settle();
        assert_eq!(charge.written(), Some(false));
        assert!(matches!(
            debit(&service, &id, 1).await,
            Err(CallerError::DebitUnwritten)
        ));
        plan.fail_writes(Tree::Callers, false);
        service.refund(&charge).unwrap();
        assert_eq!(stored(&service, &id), 5);
        assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 5);
        assert_eq!(debit(&service, &id, 1).await.unwrap(), 4);
        assert_eq!(stored(&service, &id), 4);
    }

    #[tokio::test]
    async fn free_calls_and_unmetered_callers_owe_nothing() {
        let (_dir, service, _plan, id) = consumer(0).await;
        assert_eq!(service.charge(&id, 0).unwrap().written(), Some(true));
        service
            .update(
                &id,
                CallerUpdate {
                    unmetered: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let charge = service.charge(&id, 1).unwrap();
        assert_eq!((charge.written(), charge.credits), (Some(true), None));
    }

    #[tokio::test]
    async fn the_bootstrap_admin_cannot_be_demoted_and_is_restored_at_start() {
        let (_dir, service, _plan, _id) = consumer(0).await;
        for update in [
            CallerUpdate {
                roles: Some([Role::Consumer].into()),
                ..Default::default()
            },
            CallerUpdate {
                disabled: Some(true),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                service.update(BOOTSTRAP_ADMIN_ID, update).await,
                Err(CallerError::BootstrapAdmin)
            ));
        }
        // A store written by an older build, which let the admin demote itself.
        service
            .modify(BOOTSTRAP_ADMIN_ID, None, |record| {
                record.roles = [Role::Consumer].into();
                record.disabled = true;
                Ok(true)
            })
            .unwrap();
        let (_, record) = service.load(BOOTSTRAP_ADMIN_ID).unwrap().unwrap();
        assert!(!record.roles.contains(&Role::Admin) && record.disabled);
        service.ensure_bootstrap_admin().unwrap();
        let admin = service.bootstrap_admin().unwrap();
        assert!(admin.is_admin());
        let (_, record) = service.load(BOOTSTRAP_ADMIN_ID).unwrap().unwrap();
        assert!(record.roles.contains(&Role::Admin) && !record.disabled);
    }
}
