//! Upstream accounts: validation, the sealed record format, masking, and the service
//! that creates, reads, lists, updates and deletes them with compare-and-set.

mod directory;
pub mod mask;
mod model;
pub mod record;
pub mod upstream_token;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use directory::Directory;

pub use crate::validate::FieldError;
pub use directory::{Entry, ProviderSummary};
pub use model::{
    Account, AccountKey, AccountMeta, AccountSecrets, AccountUpdate, Credits, FreshSession,
    NewAccount, Refreshed, SessionInput, SessionMeta, Status,
};
pub use record::RecordError;

use crate::{
    clock::Clock,
    crypto::{Sealer, SecretString},
    providers::Providers,
    store::{Compare, Expect, Outcome, Store, StoreError, StoreExt, Swap, Tree, Txn},
    validate,
};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// How often a read-modify-write is retried when other writers keep winning the race.
const MAX_CAS_ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("Configuration not found. To create configuration use CreateAccount (account: {0})")]
    NotFound(AccountKey),
    #[error("account {0} already exists")]
    AlreadyExists(AccountKey),
    #[error(
        "version mismatch: account {key} is at version {actual}, the request expected {expected}"
    )]
    VersionMismatch {
        key: AccountKey,
        expected: u64,
        actual: u64,
    },
    #[error("account {0} is being changed by too many writers at once; retry")]
    Contended(AccountKey),
    #[error("account {key} failed its integrity check and will not be served: {source}")]
    DataLoss {
        key: AccountKey,
        #[source]
        source: RecordError,
    },
    #[error("storing account {key} failed: {source}")]
    Encode {
        key: AccountKey,
        #[source]
        source: RecordError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page of [`AccountService::list`].
#[derive(Debug)]
pub struct Page {
    pub accounts: Vec<Account>,
    /// Empty on the last page.
    pub next_page_token: String,
}

pub struct AccountService {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    providers: Arc<Providers>,
    clock: Arc<dyn Clock>,
    directory: RwLock<Directory>,
    /// Held from a write's store commit to its directory update, so that the directory
    /// takes the writes in the order the store did.
    writing: tokio::sync::Mutex<()>,
}

impl AccountService {
    /// Reads the metadata of every stored account into the in-memory directory.
    pub async fn open(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        providers: Arc<Providers>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let mut directory = Directory::default();
        for (key, value) in store.entries(Tree::Accounts, b"", None, usize::MAX).await? {
            match record::decode_meta_unauthenticated(&value) {
                Ok(meta) => directory.put(meta),
                // Not offered for leases; reading it answers DATA_LOSS as before.
                Err(_) => tracing::error!(
                    key = %String::from_utf8_lossy(&key).replace('\0', "/"),
                    "a stored account's metadata does not parse; it is left out of the directory"
                ),
            }
        }
        Ok(Self {
            store,
            sealer,
            providers,
            clock,
            directory: RwLock::new(directory),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held across a write's compare-and-swap and its directory update.
    fn directory_mut(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }

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
            let _writing = self.writing.lock().await;
            match self
                .store
                .swap(Tree::Accounts, &key.storage_key(), None, Some(&bytes))
                .await?
            {
                Swap::Done => self.directory_mut().put(account.meta.clone()),
                Swap::Conflict { .. } => return Err(AccountError::AlreadyExists(key)),
            }
        }
        self.store.flush().await?;
        Ok(account)
    }

    pub async fn get(&self, provider: &str, email: &str) -> Result<Account, AccountError> {
        let key = lookup_key(provider, email)?;
        let bytes = self
            .store
            .value(Tree::Accounts, &key.storage_key())
            .await?
            .ok_or_else(|| AccountError::NotFound(key.clone()))?;
        self.decode(&key, &bytes)
    }

    /// Accounts in (provider, email) order; `provider` empty means all providers.
    pub async fn list(
        &self,
        provider: &str,
        page_size: i64,
        page_token: &str,
    ) -> Result<Page, AccountError> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=i64::from(MAX_PAGE_SIZE)).contains(&n) => n as u32,
            got => {
                return Err(FieldError::PageSize {
                    max: MAX_PAGE_SIZE,
                    got,
                }
                .into());
            }
        } as usize;
        let prefix = if provider.is_empty() {
            Vec::new()
        } else {
            validate::text("provider", provider, validate::MAX_PROVIDER_LEN, true)?;
            model::provider_prefix(provider)
        };
        let after = decode_page_token(page_token, provider)?;

        // One extra entry tells whether another page follows.
        let mut entries = self
            .store
            .entries(Tree::Accounts, &prefix, after.as_deref(), limit + 1)
            .await?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next_page_token = match (more, entries.last()) {
            (true, Some((last, _))) => encode_page_token(provider, last),
            _ => String::new(),
        };
        let accounts = entries
            .iter()
            .map(|(key, value)| self.decode_stored(key, value))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            accounts,
            next_page_token,
        })
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

    /// Metadata of up to `limit` accounts after `after`, without opening their
    /// secrets: enough to plan refreshes, and fast. The refresh itself reads the
    /// record authenticated.
    pub async fn scan_meta(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, AccountMeta)>, AccountError> {
        let entries = self
            .store
            .entries(Tree::Accounts, b"", after, limit)
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, value)| {
                record::decode_meta_unauthenticated(&value)
                    .ok()
                    .map(|meta| (key, meta))
            })
            .collect())
    }

    /// One account's metadata from the in-memory directory: for choosing among
    /// accounts. Whatever is then handed out is read with [`AccountService::get`], which
    /// authenticates the record.
    pub async fn entry(&self, provider: &str, email: &str) -> Result<Arc<Entry>, AccountError> {
        let key = lookup_key(provider, email)?;
        if let Some(entry) = self.directory().get(&key.provider, &key.email) {
            return Ok(entry);
        }
        // Only a record whose metadata does not parse is stored but left out of the
        // directory: tell that apart from an account that does not exist.
        match self.store.value(Tree::Accounts, &key.storage_key()).await? {
            Some(bytes) => match record::decode_meta_unauthenticated(&bytes) {
                Err(source) => Err(AccountError::DataLoss { key, source }),
                Ok(meta) => Ok(Arc::new(Entry { key, meta })),
            },
            None => Err(AccountError::NotFound(key)),
        }
    }

    /// Every account of one provider, from the directory (see [`AccountService::entry`]).
    pub fn provider_entries(&self, provider: &str) -> Result<Vec<Arc<Entry>>, AccountError> {
        validate::text("provider", provider, validate::MAX_PROVIDER_LEN, true)?;
        Ok(self.directory().provider(provider).cloned().collect())
    }

    /// Per-provider counts for the metrics.
    pub fn summary(&self) -> Vec<ProviderSummary> {
        self.directory().summary()
    }

    /// How many accounts the directory holds.
    pub fn count(&self) -> usize {
        self.directory().len()
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
        let storage_key = key.storage_key();
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
                Outcome::Committed(_) => {
                    self.directory_mut().put(account.meta.clone());
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
        let storage_key = key.storage_key();
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self
                .store
                .value(Tree::Accounts, &storage_key)
                .await?
                .ok_or_else(|| AccountError::NotFound(key.clone()))?;
            if expected_version.is_some() {
                let meta = record::decode_meta_unauthenticated(&current).map_err(|source| {
                    AccountError::DataLoss {
                        key: key.clone(),
                        source,
                    }
                })?;
                check_version(&key, &meta, expected_version)?;
            }
            let swapped = {
                let _writing = self.writing.lock().await;
                let swapped = self
                    .store
                    .swap(Tree::Accounts, &storage_key, Some(&current), None)
                    .await?;
                if swapped == Swap::Done {
                    self.directory_mut().remove(&key);
                }
                swapped
            };
            match swapped {
                Swap::Done => {
                    self.store.flush().await?;
                    return Ok(());
                }
                Swap::Conflict { .. } => continue,
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

    fn encode(&self, key: &AccountKey, account: &Account) -> Result<Vec<u8>, AccountError> {
        record::encode(&self.sealer, &key.storage_key(), account).map_err(|source| {
            AccountError::Encode {
                key: key.clone(),
                source,
            }
        })
    }

    fn decode(&self, key: &AccountKey, bytes: &[u8]) -> Result<Account, AccountError> {
        record::decode(&self.sealer, &key.storage_key(), bytes).map_err(|source| {
            AccountError::DataLoss {
                key: key.clone(),
                source,
            }
        })
    }

    /// Decodes a record found by a scan, naming it by its storage key.
    fn decode_stored(&self, storage_key: &[u8], bytes: &[u8]) -> Result<Account, AccountError> {
        record::decode(&self.sealer, storage_key, bytes).map_err(|source| {
            let text = String::from_utf8_lossy(storage_key);
            let (provider, email) = text.split_once('\0').unwrap_or((&text, ""));
            AccountError::DataLoss {
                key: AccountKey {
                    provider: provider.to_owned(),
                    email: email.to_owned(),
                },
                source,
            }
        })
    }
}

/// The key named by a read, update or delete. The provider need not be configured any
/// more: an account of a provider since removed from the config can still be managed.
fn lookup_key(provider: &str, email: &str) -> Result<AccountKey, FieldError> {
    validate::text("provider", provider, validate::MAX_PROVIDER_LEN, true)?;
    validate::text("email", email, validate::MAX_EMAIL_LEN, true)?;
    Ok(AccountKey {
        provider: provider.to_owned(),
        email: email.to_lowercase(),
    })
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

/// A page token names the filter it was made under and the last key it listed, so
/// that it pages only through the listing that gave it out: `filter \0 last key`.
fn encode_page_token(provider: &str, last: &[u8]) -> String {
    let mut token = model::provider_prefix(provider);
    token.extend_from_slice(last);
    URL_SAFE_NO_PAD.encode(token)
}

/// The key to list after, from a token [`encode_page_token`] made under the same
/// filter; anything else is refused.
fn decode_page_token(token: &str, provider: &str) -> Result<Option<Vec<u8>>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| FieldError::PageToken)?;
    let after = bytes
        .strip_prefix(model::provider_prefix(provider).as_slice())
        .ok_or(FieldError::PageToken)?;
    // The last key listed: `provider \0 email`, both printable text, within the filter.
    let printable = |part: &[u8], max: usize| {
        std::str::from_utf8(part)
            .is_ok_and(|text| validate::text("page_token", text, max, true).is_ok())
    };
    let key_ok = after.iter().position(|b| *b == 0).is_some_and(|split| {
        let (key_provider, email) = (&after[..split], &after[split + 1..]);
        (provider.is_empty() || key_provider == provider.as_bytes())
            && printable(key_provider, validate::MAX_PROVIDER_LEN)
            && printable(email, validate::MAX_EMAIL_LEN)
            && email.contains(&b'@')
    });
    if !key_ok {
        return Err(FieldError::PageToken);
    }
    Ok(Some(after.to_vec()))
}
