//! credvault's own callers (reference behaviours B, C and D): identities created from
//! an email and a client secret, API keys that activate on first use, JWTs (at most
//! three live), short-lived sessions, roles and scopes, and a credit balance that
//! credential hand-outs draw on.

mod authenticate;
mod credits;
mod error;
pub mod freshness;
pub mod identity;
pub mod keys;
mod manage;
mod model;
mod reserve;
pub mod scope;
pub mod tokens;
mod view;

use std::{
    collections::{BTreeSet, HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
};

pub use credits::{Charge, Credits, Settled};
pub use error::{CallerError, CreditError};
pub use model::{ApiKeyEntry, CallerCredits, CallerRecord, Role, TokenEntry, TokenKind};
pub use tokens::{Claims, KeysError, TokenError, TokenKeys};

use crate::{
    clock::Clock,
    crypto::{Sealer, SecretString},
    sealed,
    store::{Expect, Naming, Outcome, Revision, Store, StoreError, Tree, Txn, Write},
};
use keys::CallerMacs;
use view::{Opened, View};

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
    /// How the email index is keyed.
    naming: Naming,
    tokens: TokenKeys,
    settings: CallerSettings,
    /// Serialises read-modify-write per caller in this process, so that concurrent
    /// writes queue instead of racing on compare-and-swap.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Every caller, opened (see [`view`]).
    view: RwLock<View>,
    /// Debits taken but not yet written, per caller (see [`credits`]). Taken before
    /// the view whenever both are.
    pending: Mutex<credits::Pending>,
    /// Held for a whole settle: a flush that follows any settle then covers every debit
    /// written so far, even one a concurrent settle was writing.
    settling: tokio::sync::Mutex<()>,
    /// Held shared by a hand-out whose event goes to the audit spill (`audit.sync =
    /// "os"`) from its charge until the event is spilled, and alone by a settle, which
    /// first writes the queued events (see [`CallerService::settle`]).
    spill_gate: tokio::sync::RwLock<()>,
    /// With `audit.sync = "os"`: writes the queued audit events.
    write_events: std::sync::OnceLock<crate::audit::BeforeFlush>,
    /// Counts the record changes this process wrote: a long-lived stream waits on it
    /// to check its caller again at once.
    changed: tokio::sync::watch::Sender<u64>,
    /// The revision the view has taken every change up to.
    seen: tokio::sync::watch::Sender<Revision>,
    /// Whether the view may be trusted (see [`freshness`]).
    freshness: freshness::Freshness,
    /// A charge asks for credits to be taken ahead (see [`reserve`]).
    reserves_wanted: tokio::sync::Notify,
}

impl CallerService {
    /// Loads the signing keys and every caller (creating the keys and the bootstrap
    /// admin in a new store).
    pub async fn open(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        macs: CallerMacs,
        naming: Naming,
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
        )
        .await?;
        let (view, seen) = View::load(store.as_ref(), &sealer).await?;
        let service = Self {
            store,
            sealer,
            clock,
            macs,
            naming,
            tokens,
            settings,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            view: RwLock::new(view),
            pending: Mutex::new(HashMap::new()),
            settling: tokio::sync::Mutex::new(()),
            spill_gate: tokio::sync::RwLock::new(()),
            write_events: std::sync::OnceLock::new(),
            changed: tokio::sync::watch::Sender::new(0),
            seen: tokio::sync::watch::Sender::new(seen),
            freshness: freshness::Freshness::default(),
            reserves_wanted: tokio::sync::Notify::new(),
        };
        service.ensure_bootstrap_admin().await?;
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
    pub async fn rotate_signing_key(&self) -> Result<String, CallerError> {
        Ok(self
            .tokens
            .rotate(self.store.as_ref(), &self.sealer, self.clock.now_ms())
            .await?)
    }

    /// The caller as stored, its credits net of debits not yet written, with the
    /// credits this node took ahead.
    pub fn get(&self, id: &str) -> Result<CallerRecord, CallerError> {
        let mut pending = self.pending_debits();
        let mut record = self
            .opened(id)?
            .map(|opened| opened.record.clone())
            .ok_or_else(|| CallerError::NotFound(id.to_owned()))?;
        if let Some(credits) = record.credits.as_mut() {
            credits.remaining += credits::held_ahead(&mut pending, id, credits)
                - pending.get(id).map_or(0, credits::owed);
        }
        Ok(record)
    }

    pub fn find_by_email(&self, email: &str) -> Result<CallerRecord, CallerError> {
        let email = email.to_lowercase();
        let id = self
            .id_by_email(&email)
            .ok_or_else(|| CallerError::NotFound(email.clone()))?;
        self.get(&id)
    }

    /// The key of `email` (lower-cased) in the email index: the email itself, or, on a
    /// shared store, its keyed fingerprint (128 bits of HMAC-SHA256 in hex).
    fn email_key(&self, email: &str) -> String {
        match self.naming {
            Naming::Emails => email.to_owned(),
            Naming::Fingerprints => self.keyed_email(email),
        }
    }

    /// The email index's key for `email` on a shared store (for `credvault migrate`).
    pub fn keyed_email(&self, email: &str) -> String {
        let mut mac = self.macs.mac(keys::EMAIL_LABEL, email);
        mac.truncate(32);
        mac
    }

    /// The caller with this (lower-cased) email, from the index.
    fn id_by_email(&self, email: &str) -> Option<String> {
        self.view()
            .id_by_email(&self.email_key(email))
            .map(str::to_owned)
    }

    /// Changes each time a caller record is changed here (roles, scopes, tokens
    /// revoked, disabled, balance): for streams that check their caller again.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Follows the store's changes to callers (a re-sealed record, another node's
    /// write) until `stop`; when the watch ends, reads everything afresh and follows on.
    pub async fn follow(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let from = self.seen();
            let mut watches = Vec::new();
            let wanted = view::TREES
                .iter()
                .map(|tree| (*tree, &b""[..]))
                .chain([(Tree::Meta, tokens::SIGNING_KEYS_RECORD)]);
            for (tree, prefix) in wanted {
                match self.store.watch(tree, prefix, from).await {
                    Ok(watch) => watches.push(watch),
                    Err(_) => {
                        watches.clear();
                        break;
                    }
                }
            }
            let ended = match &mut watches[..] {
                [callers, emails, keys, signing] => loop {
                    let change = tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        change = callers.next() => change,
                        change = emails.next() => change,
                        change = keys.next() => change,
                        change = signing.next() => change,
                    };
                    match change {
                        Ok(change) if change.tree == Tree::Meta => {
                            // Another node rotated the signing keys.
                            let taken = change.value.as_deref().map(|bytes| {
                                self.tokens
                                    .take_stored(&self.sealer, bytes, change.revision)
                            });
                            if let Some(Err(error)) = taken {
                                tracing::error!(%error, "the stored signing keys do not open");
                            }
                        }
                        Ok(change) => {
                            let pulse = change.key.starts_with(freshness::PULSE_PREFIX);
                            if !pulse {
                                let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
                                view.apply_change(&self.sealer, &change);
                                view.forget_tombstones(change.tree, change.revision);
                            }
                            self.seen.send_if_modified(|seen| {
                                let newer = change.revision > *seen;
                                *seen = (*seen).max(change.revision);
                                newer
                            });
                            if !pulse {
                                self.changed.send_modify(|count| *count += 1);
                            }
                        }
                        Err(error) => break error,
                    }
                },
                // A watch could not start (history compacted): read afresh.
                _ => StoreError::WatchEnded,
            };
            tracing::debug!(%ended, "the callers' watch ended; reading them afresh");
            match View::load(self.store.as_ref(), &self.sealer).await {
                Ok((mut view, at)) => {
                    let keys = self
                        .store
                        .value(Tree::Meta, tokens::SIGNING_KEYS_RECORD)
                        .await;
                    if let Ok(Some(bytes)) = keys
                        && let Err(error) = self.tokens.take_stored(&self.sealer, &bytes, at)
                    {
                        tracing::error!(%error, "the stored signing keys do not open");
                    }
                    let _pending = self.pending_debits();
                    let mut held = self.view.write().unwrap_or_else(|e| e.into_inner());
                    view.take_newer(&held, at);
                    *held = view;
                    self.seen.send_replace(at);
                    self.changed.send_modify(|count| *count += 1);
                }
                Err(error) => {
                    tracing::error!(%error, "reading the callers afresh failed; retrying");
                    tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    fn view(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The opened record of `id`, as the view holds it.
    fn opened(&self, id: &str) -> Result<Option<Arc<Opened>>, CallerError> {
        self.view().record(&self.sealer, id)
    }

    /// The record as the store holds it now, opened; the view takes it too.
    async fn read_afresh(&self, id: &str) -> Result<Option<Arc<Opened>>, CallerError> {
        // Read before the value: the value is at least this recent.
        let at = self.store.revision();
        let Some(bytes) = self.store.get(Tree::Callers, id.as_bytes()).await? else {
            return Ok(None);
        };
        let record: CallerRecord =
            sealed::open(&self.sealer, Tree::Callers, id.as_bytes(), &bytes.value)
                .map_err(|source| CallerError::unopened(id, source))?;
        self.remember(id, bytes.value.clone(), record.clone(), at);
        Ok(Some(Arc::new(Opened {
            bytes: bytes.value,
            record,
        })))
    }

    /// Keeps a record read here as of `revision`.
    fn remember(&self, id: &str, bytes: Vec<u8>, record: CallerRecord, revision: Revision) {
        let _pending = self.pending_debits();
        self.view
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remember(id, bytes, record, revision);
    }

    /// Keeps a record written here as of `revision`, with the debits (or the credits
    /// taken ahead) it shows written: under one lock, so that no charge sees them
    /// twice or not at all.
    fn remember_written(&self, id: &str, bytes: Vec<u8>, record: CallerRecord, revision: Revision) {
        let mut pending = self.pending_debits();
        self.view
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remember(id, bytes, record, revision);
        credits::written(&mut pending, id);
    }

    fn seal(&self, record: &CallerRecord) -> Result<Vec<u8>, CallerError> {
        sealed::seal(&self.sealer, Tree::Callers, record.id.as_bytes(), record)
            .map_err(CallerError::Seal)
    }

    fn stripe(&self, id: &str) -> &tokio::sync::Mutex<()> {
        let mut hasher = DefaultHasher::new();
        id.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % STRIPES]
    }

    /// Read-modify-write of one caller under its stripe lock, with `also` (index
    /// entries) in the same transaction; the closure may run more than once if another
    /// writer came in between. It answers whether it changed the record: when it did
    /// not, nothing is written.
    async fn modify(
        &self,
        id: &str,
        expected_version: Option<u64>,
        also: Vec<Write>,
        change: impl FnMut(&mut CallerRecord) -> Result<bool, CallerError>,
    ) -> Result<CallerRecord, CallerError> {
        let _stripe = self.stripe(id).lock().await;
        self.modify_locked(id, expected_version, also, change).await
    }

    /// [`CallerService::modify`] for a caller already holding the stripe lock.
    async fn modify_locked(
        &self,
        id: &str,
        expected_version: Option<u64>,
        also: Vec<Write>,
        mut change: impl FnMut(&mut CallerRecord) -> Result<bool, CallerError>,
    ) -> Result<CallerRecord, CallerError> {
        let mut opened = self.opened(id)?;
        loop {
            let current = opened.ok_or_else(|| CallerError::NotFound(id.to_owned()))?;
            let mut record = current.record.clone();
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
            let mut txn = Txn::new()
                .expect(
                    Tree::Callers,
                    id.as_bytes(),
                    Expect::Value(current.bytes.clone()),
                )
                .put(Tree::Callers, id.as_bytes(), &new);
            txn.writes.extend(also.iter().cloned());
            if let Outcome::Committed(revision) = self.store.commit(txn).await? {
                self.took(&also, revision);
                self.remember_written(id, new, record.clone(), revision);
                self.changed.send_modify(|count| *count += 1);
                return Ok(record);
            }
            // The store holds something else (a re-seal, another writer): read it.
            opened = self.read_afresh(id).await?;
        }
    }

    /// Index entries this process just wrote.
    fn took(&self, writes: &[Write], revision: Revision) {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        for write in writes {
            let value = write.value.as_deref();
            view.apply(&self.sealer, write.tree, &write.key, value, revision);
        }
    }

    /// The revision the view has followed the store to.
    pub fn seen(&self) -> Revision {
        *self.seen.borrow()
    }
}
