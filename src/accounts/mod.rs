//! Upstream accounts: validation, the sealed record format, masking, and the service
//! that creates, reads, lists, updates and deletes them with compare-and-set.

mod directory;
pub mod mask;
mod model;
mod read;
pub mod record;
pub mod upstream_token;
mod write;

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
    crypto::{Fingerprinter, Sealer, SecretString},
    providers::Providers,
    store::{
        Compare, Expect, Naming, Outcome, Range, Revision, Store, StoreError, StoreExt, Tree, Txn,
    },
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
    /// How records are keyed and written: by email with readable metadata, or by
    /// keyed fingerprint with sealed metadata (a shared store).
    names: Names,
    providers: Arc<Providers>,
    clock: Arc<dyn Clock>,
    directory: RwLock<Directory>,
    /// Held from a write's store commit to its directory update, so that the directory
    /// takes the writes in the order the store did.
    writing: tokio::sync::Mutex<()>,
    /// The revision the directory was read at, where its watch starts.
    read_at: std::sync::atomic::AtomicU64,
    /// Changes another process made, as the watch brings them.
    foreign: tokio::sync::broadcast::Sender<Foreign>,
}

/// An account changed by another process (on a shared store): what this process held
/// before, and what the account is now (`None`: deleted).
#[derive(Clone, Debug)]
pub struct Foreign {
    pub key: AccountKey,
    pub before: Option<AccountMeta>,
    pub after: Option<AccountMeta>,
}

/// How account records are named: [`Naming`], with the key that makes fingerprints.
#[derive(Clone)]
pub struct Names {
    pub naming: Naming,
    pub fingerprints: Arc<Fingerprinter>,
}

impl Names {
    /// Where `key`'s record is stored: `provider \0 email`, or, on a shared store,
    /// `provider \0 fingerprint`.
    pub fn record_key(&self, key: &AccountKey) -> Vec<u8> {
        match self.naming {
            Naming::Emails => key.storage_key(),
            Naming::Fingerprints => {
                let mut out = model::provider_prefix(&key.provider);
                out.extend_from_slice(key.fingerprint(&self.fingerprints).as_bytes());
                out
            }
        }
    }

    fn seals_meta(&self) -> bool {
        self.naming == Naming::Fingerprints
    }

    /// The metadata of the record stored under `record_key`, without its secrets; a
    /// record whose metadata names another account than the one stored there is
    /// refused as unauthentic.
    pub fn meta(
        &self,
        sealer: &Sealer,
        record_key: &[u8],
        bytes: &[u8],
    ) -> Result<AccountMeta, RecordError> {
        let meta = record::decode_meta(sealer, record_key, bytes)?;
        if self.record_key(&meta.key()) != record_key {
            return Err(RecordError::Unauthentic);
        }
        Ok(meta)
    }
}

/// The record stored under `record_key` as `from` names it, opened and sealed again as
/// `to` names it: its new key and bytes (for `credvault migrate`). The secrets are
/// opened in memory only.
pub fn rename_record(
    sealer: &Sealer,
    from: &Names,
    to: &Names,
    record_key: &[u8],
    bytes: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), RecordError> {
    from.meta(sealer, record_key, bytes)?;
    let account = record::decode(sealer, record_key, bytes)?;
    let key = to.record_key(&account.meta.key());
    let renamed = record::encode(sealer, &key, &account, to.seals_meta())?;
    Ok((key, renamed))
}

impl AccountService {
    /// Reads the metadata of every stored account into the in-memory directory.
    pub async fn open(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        names: Names,
        providers: Arc<Providers>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let (directory, at) = read_directory(store.as_ref(), &sealer, &names).await?;
        Ok(Self {
            store,
            sealer,
            names,
            providers,
            clock,
            directory: RwLock::new(directory),
            writing: tokio::sync::Mutex::new(()),
            read_at: std::sync::atomic::AtomicU64::new(at),
            foreign: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// How log lines name an account's email: a keyed tag (8 bytes of HMAC, hex), the
    /// same in every line, never the email.
    pub fn email_tag(&self, email: &str) -> String {
        self.names.fingerprints.tag(&email.to_lowercase())
    }

    /// Follows the store's changes to accounts (another node's write) until `stop`;
    /// when the watch ends, reads the directory afresh (keeping what this process
    /// wrote meanwhile) and follows on.
    pub async fn follow(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        use std::sync::atomic::Ordering;
        loop {
            let from = self.read_at.load(Ordering::SeqCst);
            let ended = match self.store.watch(Tree::Accounts, b"", from).await {
                Ok(mut watch) => loop {
                    let change = tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        change = watch.next() => change,
                    };
                    let change = match change {
                        Ok(change) => change,
                        Err(error) => break error,
                    };
                    let meta = change
                        .value
                        .as_deref()
                        .map(|value| self.names.meta(&self.sealer, &change.key, value));
                    let damaged = matches!(meta, Some(Err(_)));
                    let meta = meta.and_then(Result::ok);
                    let named = meta.as_ref().map(AccountMeta::key);
                    let named = named.or_else(|| self.named(&change.key));
                    let mut directory = self.directory_mut();
                    directory.set_damaged(&change.key, damaged);
                    let Some(key) = named else {
                        continue;
                    };
                    // Newer than what this process holds: another process wrote it.
                    if change.revision > directory.revision_of(&key) {
                        let before = directory
                            .get(&key.provider, &key.email)
                            .map(|entry| entry.meta.clone());
                        let _ = self.foreign.send(Foreign {
                            key: key.clone(),
                            before,
                            after: meta.clone(),
                        });
                    }
                    match meta {
                        Some(meta) => directory.put(meta, change.revision),
                        // Deleted, or metadata that does not parse: not offered.
                        None => directory.remove(&key, change.revision),
                    }
                    directory.forget_tombstones(change.revision.saturating_sub(1));
                },
                Err(error) => error,
            };
            tracing::debug!(%ended, "the accounts' watch ended; reading them afresh");
            match read_directory(self.store.as_ref(), &self.sealer, &self.names).await {
                Ok((mut fresh, at)) => {
                    let mut directory = self.directory_mut();
                    fresh.take_newer(&directory, at);
                    *directory = fresh;
                    self.read_at.store(at, Ordering::SeqCst);
                }
                Err(error) => {
                    tracing::error!(%error, "reading the accounts afresh failed; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Accounts other processes change, from now on.
    pub fn foreign_changes(&self) -> tokio::sync::broadcast::Receiver<Foreign> {
        self.foreign.subscribe()
    }

    fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held across a write's compare-and-swap and its directory update.
    fn directory_mut(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }

    fn record_key(&self, key: &AccountKey) -> Vec<u8> {
        self.names.record_key(key)
    }

    /// The account whose record is stored under `record_key`, if the directory holds
    /// it (for a deletion, or a record that no longer opens, which carry no readable
    /// name on a shared store).
    fn named(&self, record_key: &[u8]) -> Option<AccountKey> {
        match self.names.naming {
            Naming::Emails => model::key_of(record_key),
            Naming::Fingerprints => {
                let provider = record_key.split(|b| *b == 0).next()?;
                let provider = std::str::from_utf8(provider).ok()?;
                let directory = self.directory();
                directory
                    .provider(provider)
                    .find(|entry| self.record_key(&entry.key) == record_key)
                    .map(|entry| entry.key.clone())
            }
        }
    }

    fn encode(&self, key: &AccountKey, account: &Account) -> Result<Vec<u8>, AccountError> {
        record::encode(
            &self.sealer,
            &self.record_key(key),
            account,
            self.names.seals_meta(),
        )
        .map_err(|source| AccountError::Encode {
            key: key.clone(),
            source,
        })
    }

    fn decode(&self, key: &AccountKey, bytes: &[u8]) -> Result<Account, AccountError> {
        record::decode(&self.sealer, &self.record_key(key), bytes).map_err(|source| {
            AccountError::DataLoss {
                key: key.clone(),
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

/// Every account's metadata, read at one revision; answers the directory and it.
async fn read_directory(
    store: &dyn Store,
    sealer: &Sealer,
    names: &Names,
) -> Result<(Directory, Revision), StoreError> {
    const PAGE: usize = 1024;
    let at = store.revision();
    let mut directory = Directory::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let range = Range::new(Tree::Accounts, b"", PAGE)
            .after(after.as_deref())
            .at(Some(at));
        let page = store.scan(range).await?;
        for (key, value) in &page.entries {
            match names.meta(sealer, key, value) {
                Ok(meta) => directory.put(meta, at),
                // Not offered for leases; reading it answers DATA_LOSS as before.
                Err(_) => {
                    tracing::error!(
                        key = %String::from_utf8_lossy(key).replace('\0', "/"),
                        "a stored account's metadata does not open; it is left out of the directory"
                    );
                    directory.set_damaged(key, true);
                }
            }
        }
        after = page.entries.last().map(|(key, _)| key.clone());
        if !page.more {
            return Ok((directory, at));
        }
    }
}
