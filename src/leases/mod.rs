//! Job leases: each holds one of an account's `maxJobs` slots while a job runs.
//!
//! The invariant — never more leases than `maxJobs` on one account — is kept by the
//! [`table::Table`]: a slot is reserved under its lock, before any I/O, and released if
//! anything after fails. Leases are sealed in the store so held slots survive a
//! restart; a reaper frees them at their expiry. Waiters queue first come, first served
//! per provider (or per account, when they named one).

mod refusal;
mod table;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

pub use refusal::{Cause, Unserved};
use refusal::{NoToken, jobs_running, no_token};
use serde::{Deserialize, Serialize};
pub use table::LeaseRecord;
use table::{QueueKey, Table, Ticket};

use crate::{
    accounts::{Account, AccountError, AccountKey, AccountMeta, AccountService, Entry, Status},
    audit::{AuditError, CallAudit},
    auth::{Caller, Denied},
    callers::{CallerError, CallerService},
    clock::Clock,
    crypto::{RngError, Sealer, random_below, random_bytes},
    events::{Event, EventKind, Events},
    handout::{self, HandOutError},
    providers::{ProviderKind, Providers},
    refresh::Refresher,
    sealed::{self, SealedError},
    store::{Store, StoreError, StoreExt, Tree, Txn},
    timefmt::rfc3339_millis,
    validate::{self, FieldError},
};

pub const DEFAULT_TTL_MS: i64 = 5 * 60 * 1000;
pub const MAX_TTL_MS: i64 = 24 * 3600 * 1000;
pub const MAX_WAIT_MS: i64 = 60 * 1000;

/// The `[leases]` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseSettings {
    /// AcquireLease hands out an account's current token when it stays valid at least
    /// this long; otherwise it logs the account in first (joining a login in flight).
    /// The lease's ttl plays no part: a job outlives a token by taking the rotated one
    /// from WatchCredentials or RenewLease.
    pub min_token_validity_secs: i64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            min_token_validity_secs: 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Caller(#[from] CallerError),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("no account of provider {0} is available to this caller")]
    NoAccounts(String),
    #[error("lease {0} not found or expired")]
    NotFound(String),
    #[error("permission denied: lease {0} belongs to another caller")]
    NotOwner(String),
    #[error(
        "all slots are busy: {} on {on}; retry after {retry_after_secs} s",
        jobs_running(.executing)
    )]
    Busy {
        /// "pixverse accounts", or "account pixverse/a@example.com".
        on: String,
        executing: usize,
        retry_after_secs: i64,
    },
    /// No account can serve for a reason other than busy slots.
    #[error("{0}")]
    CannotServe(Unserved),
    #[error("lease record: {0}")]
    Sealed(#[from] SealedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    HandOut(#[from] HandOutError),
}

/// AcquireLease's input.
#[derive(Clone, Debug, Default)]
pub struct AcquireRequest {
    pub provider: String,
    pub email: Option<String>,
    pub ttl_ms: i64,
    pub wait_ms: i64,
    pub labels: BTreeMap<String, String>,
}

/// A lease and the account it is on (with its current token).
#[derive(Debug)]
pub struct Granted {
    pub lease: LeaseRecord,
    pub account: Account,
}

/// How an account's token stands for a lease now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// Valid for at least `min_token_validity_secs` (or an API-key account, or a token
    /// whose expiry is unknown).
    Ready,
    /// Valid now, for less than that: served once a login has been tried.
    Short,
    /// Missing or expired.
    Invalid,
}

struct Candidate {
    entry: Arc<Entry>,
    token: Token,
}

impl Candidate {
    fn max_jobs(&self) -> usize {
        self.entry.meta.max_jobs as usize
    }

    /// Whether it may be given now: a ready token, or one still valid once this
    /// request tried a login (or when none can be made).
    fn usable(&self, tried_login: bool) -> bool {
        match self.token {
            Token::Ready => true,
            Token::Short => tried_login,
            Token::Invalid => false,
        }
    }
}

/// The accounts an AcquireLease may use, and those it may not (disabled, needing
/// attention).
struct Pool {
    candidates: Vec<Candidate>,
    unserved: Vec<Cause>,
}

pub struct LeaseService {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    accounts: Arc<AccountService>,
    callers: Arc<CallerService>,
    refresher: Arc<Refresher>,
    providers: Arc<Providers>,
    events: Events,
    clock: Arc<dyn Clock>,
    settings: LeaseSettings,
    table: Mutex<Table>,
    tickets: AtomicU64,
    reaper: Notify,
    /// The expiry the reaper sleeps until (`i64::MAX`: none). Read and written only
    /// with the table locked, so that a lease expiring sooner is never missed.
    reaper_at: AtomicI64,
    stop: watch::Sender<bool>,
}

impl LeaseService {
    /// Loads the leases held before a restart (dropping expired ones) and starts the
    /// reaper.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        accounts: Arc<AccountService>,
        callers: Arc<CallerService>,
        refresher: Arc<Refresher>,
        providers: Arc<Providers>,
        events: Events,
        clock: Arc<dyn Clock>,
        settings: LeaseSettings,
    ) -> Result<Arc<Self>, LeaseError> {
        let now = clock.now_ms();
        let mut table = Table::default();
        let stored = store.entries(Tree::Leases, b"", None, usize::MAX).await?;
        for (key, value) in stored {
            match sealed::open::<LeaseRecord>(&sealer, Tree::Leases, &key, &value) {
                Ok(record) if record.expires_at_ms > now => table.insert(record),
                Ok(_) => {
                    store.swap(Tree::Leases, &key, Some(&value), None).await?;
                }
                Err(error) => {
                    tracing::error!(%error, "a stored lease does not open; it is dropped");
                    store.swap(Tree::Leases, &key, Some(&value), None).await?;
                }
            }
        }
        let (stop, _) = watch::channel(false);
        let service = Arc::new(Self {
            store,
            sealer,
            accounts,
            callers,
            refresher,
            providers,
            events,
            clock,
            settings,
            table: Mutex::new(table),
            tickets: AtomicU64::new(0),
            reaper: Notify::new(),
            reaper_at: AtomicI64::new(i64::MAX),
            stop,
        });
        tokio::spawn(service.clone().reap());
        Ok(service)
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Callers queued for a slot of this provider's accounts.
    pub fn waiting(&self, provider: &str) -> usize {
        self.table().waiting(provider)
    }

    /// Leases held and callers waiting, per provider.
    pub fn load_by_provider(
        &self,
    ) -> (
        std::collections::HashMap<String, usize>,
        std::collections::HashMap<String, usize>,
    ) {
        let table = self.table();
        (table.held_by_provider(), table.waiting_by_provider())
    }

    /// Leases holding a slot of this account now.
    pub fn active_jobs(&self, key: &AccountKey) -> usize {
        self.table().count(key)
    }

    /// The id of a live lease `caller_id` holds on this account, if any.
    pub fn held_by(&self, key: &AccountKey, caller_id: &str) -> Option<String> {
        let now = self.clock.now_ms();
        self.table()
            .held_by(key, caller_id, now)
            .map(|lease| lease.id.clone())
    }

    /// A lease for `caller`. Its audit event (with the token's hash) is written before
    /// the lease is made durable; when it cannot be, nothing is handed out.
    pub async fn acquire(
        &self,
        caller: &Caller,
        request: AcquireRequest,
        audit: &CallAudit,
    ) -> Result<Granted, LeaseError> {
        validate::text(
            "provider",
            &request.provider,
            validate::MAX_PROVIDER_LEN,
            true,
        )?;
        let email = request.email.as_deref().map(str::to_lowercase);
        let queue: QueueKey = (request.provider.clone(), email.clone());
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(request.wait_ms.max(0) as u64);
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let mut queued = false;
        // Set once this request has tried a login (at most one): the account and how
        // it failed, if it did.
        let mut login: Option<(AccountKey, Option<String>)> = None;
        let outcome = loop {
            let now = self.clock.now_ms();
            let Pool {
                candidates,
                unserved,
            } = match self.pool(caller, &request, email.as_deref(), now).await {
                Ok(pool) => pool,
                Err(error) => break Err(error),
            };
            // A provider credvault cannot log in has nothing better to offer than the
            // token it has.
            let tried_login = login.is_some() || !self.refresher.refreshes(&request.provider);
            let waiting = tokio::time::Instant::now() < deadline;
            // Made before the lock: an error here must not skip leaving the queue.
            let id = match lease_id() {
                Ok(id) => id,
                Err(error) => break Err(error.into()),
            };
            let reserved = {
                let mut table = self.table();
                let my_turn =
                    !table.queue_busy(&queue) || (queued && table.is_head(&queue, ticket));
                let choice = if my_turn {
                    choose(&table, &candidates, tried_login)
                } else {
                    None
                };
                match choice {
                    Some(key) => {
                        let record = LeaseRecord {
                            id,
                            caller_id: caller.id.clone(),
                            provider: key.provider.clone(),
                            email: key.email.clone(),
                            acquired_at_ms: now,
                            expires_at_ms: now + request.ttl_ms,
                        };
                        table.insert(record.clone());
                        self.wake_reaper_for(record.expires_at_ms);
                        if queued {
                            table.leave(&queue, ticket);
                            queued = false;
                            // Another slot may be free for the next in line.
                            table.wake_queue(&queue);
                        }
                        Some(record)
                    }
                    None => {
                        // Queue while still holding the lock, so a slot freed from now
                        // on wakes us.
                        if waiting && !queued {
                            table.enqueue(
                                queue.clone(),
                                Ticket {
                                    id: ticket,
                                    wake: wake.clone(),
                                },
                            );
                            queued = true;
                        }
                        None
                    }
                }
            };
            if let Some(record) = reserved {
                break self.complete(record, audit).await;
            }
            // Accounts held back only by their token (missing, expired or about to):
            // log one in (joining a login in flight; the login budget and the backoff
            // apply) and look again.
            if !tried_login {
                let stale = {
                    let table = self.table();
                    candidates
                        .iter()
                        .find(|c| {
                            c.token != Token::Ready && table.count(&c.entry.key) < c.max_jobs()
                        })
                        .map(|c| c.entry.key.clone())
                };
                if let Some(key) = stale {
                    // Backing off after failed logins (`Ok(false)`), the last failure is
                    // on the account's status reason, which a refusal reads.
                    let failure = match self.refresher.refresh_unless_backing_off(&key).await {
                        Ok(_) => None,
                        Err(error) => {
                            tracing::info!(reason = %error, "refreshing a token for a lease failed");
                            Some(error.to_string())
                        }
                    };
                    login = Some((key, failure));
                    continue;
                }
            }
            // The accounts that can serve, their slots taken or not: those with a token
            // valid now.
            let serving: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| c.token != Token::Invalid)
                .collect();
            if serving.is_empty() {
                break Err(LeaseError::CannotServe(self.unserved(
                    &request.provider,
                    email.as_deref(),
                    unserved,
                    &candidates,
                    login.as_ref(),
                    now,
                )));
            }
            if !waiting {
                let keys: Vec<&AccountKey> = serving.iter().map(|c| &c.entry.key).collect();
                let (executing, first_end) = self.table().load_of(&keys);
                let retry_after_secs = first_end.map_or(1, |end| ((end - now) / 1000).max(1));
                let on = match email.as_deref() {
                    Some(email) => format!("account {}/{email}", request.provider),
                    None => format!("{} accounts", request.provider),
                };
                break Err(LeaseError::Busy {
                    on,
                    executing,
                    retry_after_secs,
                });
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        };
        if queued {
            let mut table = self.table();
            let was_head = table.is_head(&queue, ticket);
            table.leave(&queue, ticket);
            if was_head {
                table.wake_queue(&queue);
            }
        }
        outcome
    }

    /// The accounts this request may be given, with how their tokens stand, and why
    /// the others in its scope cannot serve.
    async fn pool(
        &self,
        caller: &Caller,
        request: &AcquireRequest,
        email: Option<&str>,
        now: i64,
    ) -> Result<Pool, LeaseError> {
        let kind = self.providers.get(&request.provider).map(|p| p.kind);
        let entries = match email {
            Some(email) => {
                caller.require_reach(&request.provider, email)?;
                vec![self.accounts.entry(&request.provider, email).await?]
            }
            None => self.accounts.provider_entries(&request.provider)?,
        };
        let ready_until = now + self.settings.min_token_validity_secs.saturating_mul(1000);
        let mut pool = Pool {
            candidates: Vec::new(),
            unserved: Vec::new(),
        };
        for entry in entries {
            let m = &entry.meta;
            let wanted = request
                .labels
                .iter()
                .all(|(k, v)| m.labels.get(k) == Some(v))
                && caller.require_reach(&m.provider, &m.email).is_ok();
            if !wanted {
                continue;
            }
            if m.effective_status() == Status::Disabled {
                pool.unserved.push(Cause::Disabled);
                continue;
            }
            if m.status == Status::NeedsAttention {
                pool.unserved
                    .push(Cause::NeedsAttention(m.status_reason.clone()));
                continue;
            }
            let token = if kind == Some(ProviderKind::ApiKey) {
                Token::Ready
            } else {
                token_state(m, now, ready_until)
            };
            pool.candidates.push(Candidate { entry, token });
        }
        if pool.candidates.is_empty() && pool.unserved.is_empty() && email.is_none() {
            return Err(LeaseError::NoAccounts(request.provider.clone()));
        }
        Ok(pool)
    }

    /// Why no account can serve: the causes found while pooling, and for accounts
    /// without a valid token, why none could be had.
    fn unserved(
        &self,
        provider: &str,
        email: Option<&str>,
        mut causes: Vec<Cause>,
        candidates: &[Candidate],
        login: Option<&(AccountKey, Option<String>)>,
        now: i64,
    ) -> Unserved {
        let refreshes = self.refresher.refreshes(provider);
        for candidate in candidates {
            let meta = &candidate.entry.meta;
            let expired_at = meta
                .session
                .as_ref()
                .filter(|s| s.expire_time > 0)
                .map(|s| rfc3339_millis(s.expire_time.saturating_mul(1000)));
            let budget = self
                .refresher
                .settings()
                .login_allowed_at(meta, now)
                .map(rfc3339_millis);
            // This request's own failed login, else the last one the engine recorded.
            let failure = login
                .filter(|(key, _)| *key == candidate.entry.key)
                .and_then(|(_, failure)| failure.as_deref())
                .or_else(|| Some(last_failure(&meta.status_reason)).filter(|r| !r.is_empty()));
            let why = if !refreshes {
                NoToken::CannotLogIn
            } else if let Some(until) = &budget {
                NoToken::BudgetSpent { until }
            } else if let Some(reason) = failure {
                NoToken::LoginFailed {
                    expired_at: expired_at.as_deref(),
                    reason,
                }
            } else {
                NoToken::NotTried
            };
            causes.push(Cause::NoToken(no_token(provider, why)));
        }
        Unserved {
            provider: provider.to_owned(),
            email: email.map(str::to_owned),
            causes,
        }
    }

    /// Makes a reserved lease durable and reads the token to hand out. Any failure
    /// gives the slot back.
    async fn complete(
        &self,
        record: LeaseRecord,
        audit: &CallAudit,
    ) -> Result<Granted, LeaseError> {
        let cost = self.callers.settings().lease_cost;
        let result = async {
            let account = self.accounts.get(&record.provider, &record.email).await?;
            let bytes = sealed::seal(&self.sealer, Tree::Leases, record.id.as_bytes(), &record)?;
            self.store
                .swap(Tree::Leases, record.id.as_bytes(), None, Some(&bytes))
                .await?;
            audit.account(&record.provider, &record.email);
            audit.target(&record.id);
            let token: Vec<&str> = account.secrets.token.iter().map(|t| t.expose()).collect();
            // The door's one flush makes the lease durable too, with the debit and the
            // audit event; when it fails, the credits are paid back.
            handout::hand_out(&self.callers, audit, &record.caller_id, cost, &token).await?;
            Ok(account)
        }
        .await;
        match result {
            Ok(account) => Ok(Granted {
                lease: record,
                account,
            }),
            Err(error) => {
                // Nothing was handed out: the slot is freed.
                self.end(&record.id).await;
                Err(error)
            }
        }
    }

    pub async fn renew(
        &self,
        caller: &Caller,
        id: &str,
        ttl_ms: i64,
        audit: &CallAudit,
    ) -> Result<Granted, LeaseError> {
        audit.target(id);
        let now = self.clock.now_ms();
        let held = {
            let table = self.table();
            let record = table
                .get(id)
                .filter(|r| r.expires_at_ms > now)
                .ok_or_else(|| LeaseError::NotFound(id.to_owned()))?;
            if record.caller_id != caller.id && !caller.is_admin() {
                return Err(LeaseError::NotOwner(id.to_owned()));
            }
            record.clone()
        };
        // The checks AcquireLease makes, against the caller as it is now (the call layer
        // authenticated it on this call): the account is still within its scopes, and
        // its credits are within their validity window (a renewal costs nothing). A
        // lease that fails them ends, and its holder is told through the watch.
        let allowed = caller
            .require_reach(&held.provider, &held.email)
            .map_err(LeaseError::from)
            .and_then(|()| Ok(self.callers.check_credit_window(&held.caller_id)?));
        if let Err(error) = allowed {
            self.end(id).await;
            self.events.publish(Event {
                key: held.key(),
                kind: EventKind::LeaseRevoked {
                    lease_id: id.to_owned(),
                },
                at_ms: now,
            });
            return Err(error);
        }
        let record = {
            let mut table = self.table();
            let record = table
                .extend(id, now + ttl_ms)
                .ok_or_else(|| LeaseError::NotFound(id.to_owned()))?;
            self.wake_reaper_for(record.expires_at_ms);
            record
        };
        let bytes = sealed::seal(&self.sealer, Tree::Leases, id.as_bytes(), &record)?;
        let renewed = Txn::new().put(Tree::Leases, id.as_bytes(), &bytes);
        self.store.commit(renewed).await?;
        let account = self.accounts.get(&record.provider, &record.email).await?;
        audit.account(&record.provider, &record.email);
        // The lease paid when it was acquired: the renewal's hand-out is free, and
        // audited like every other.
        let token: Vec<&str> = account.secrets.token.iter().map(|t| t.expose()).collect();
        handout::hand_out(&self.callers, audit, &record.caller_id, 0, &token).await?;
        Ok(Granted {
            lease: record,
            account,
        })
    }

    /// Frees the slot; an unknown (released or expired) lease is not an error.
    ///
    /// The deletion is not flushed before answering: a release lost in a crash leaves
    /// the lease held until its expiry, which errs on the safe side of `maxJobs`. The
    /// store's own background flush (every 500 ms) or the next acknowledged write makes
    /// it durable.
    pub async fn release(&self, caller: &Caller, id: &str) -> Result<(), LeaseError> {
        {
            let table = self.table();
            match table.get(id) {
                None => return Ok(()),
                Some(record) if record.caller_id != caller.id && !caller.is_admin() => {
                    return Err(LeaseError::NotOwner(id.to_owned()));
                }
                Some(_) => {}
            }
        }
        self.end(id).await;
        Ok(())
    }

    /// Ends every lease on an account (deleted or disabled) and tells their holders.
    pub async fn end_account(&self, key: &AccountKey) {
        let ids = self.table().of_account(key);
        for id in ids {
            self.end(&id).await;
            self.events.publish(Event {
                key: key.clone(),
                kind: EventKind::LeaseRevoked { lease_id: id },
                at_ms: self.clock.now_ms(),
            });
        }
        if let Err(error) = self.store.flush().await {
            tracing::error!(%error, "flushing ended leases failed");
        }
    }

    /// Removes a lease from the table and the store, and wakes a waiter.
    async fn end(&self, id: &str) {
        let record = {
            let mut table = self.table();
            let record = table.remove(id);
            if let Some(record) = &record {
                table.wake(&record.key());
            }
            record
        };
        if record.is_some() {
            self.forget(id).await;
        }
    }

    async fn forget(&self, id: &str) {
        let deleted = self
            .store
            .commit(Txn::new().delete(Tree::Leases, id.as_bytes()))
            .await;
        if let Err(error) = deleted {
            // The record expires on its own; on restart it is dropped as expired.
            tracing::error!(%error, lease = id, "deleting a lease record failed");
        }
    }

    /// Wakes the reaper when a lease now expires before the time it sleeps until (most
    /// leases expire after the ones before them, and wake nothing). Call with the table
    /// locked.
    fn wake_reaper_for(&self, expires_at_ms: i64) {
        if expires_at_ms < self.reaper_at.load(Ordering::Relaxed) {
            self.reaper.notify_one();
        }
    }

    /// Frees leases at their expiry.
    async fn reap(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let next = {
                let table = self.table();
                let next = table.next_expiry();
                self.reaper_at
                    .store(next.unwrap_or(i64::MAX), Ordering::Relaxed);
                next
            };
            let sleep = match next {
                Some(at) => self.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            let expired = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                () = self.reaper.notified() => false,
                () = sleep => true,
            };
            if !expired {
                continue;
            }
            let expired = {
                let mut table = self.table();
                let expired = table.take_expired(self.clock.now_ms());
                for record in &expired {
                    table.wake(&record.key());
                }
                expired
            };
            for record in &expired {
                tracing::info!(lease = %record.id, "lease expired; slot freed");
                self.forget(&record.id).await;
            }
        }
    }
}

/// The least loaded usable account with a free slot; random among ties.
fn choose(table: &Table, candidates: &[Candidate], tried_login: bool) -> Option<AccountKey> {
    let open: Vec<(usize, &Candidate)> = candidates
        .iter()
        .filter(|c| c.usable(tried_login))
        .map(|c| (table.count(&c.entry.key), c))
        .filter(|(load, c)| *load < c.max_jobs())
        .collect();
    let least = open.iter().map(|(load, _)| *load).min()?;
    let tied: Vec<&Candidate> = open
        .iter()
        .filter(|(l, _)| *l == least)
        .map(|(_, c)| *c)
        .collect();
    Some(
        tied[random_below(tied.len() as u64) as usize]
            .entry
            .key
            .clone(),
    )
}

/// The failure an account's status reason records, without the "token expired at …; "
/// the engine puts first (the refusal says that its own way).
fn last_failure(status_reason: &str) -> &str {
    status_reason
        .split_once("; ")
        .filter(|(head, _)| head.starts_with("token expired at "))
        .map_or(status_reason, |(_, rest)| rest)
}

/// How the account's token stands: ready when valid until `ready_until` (or its
/// expiry is unknown), short when valid only now, else invalid.
fn token_state(meta: &AccountMeta, now: i64, ready_until: i64) -> Token {
    let Some(session) = meta.session.as_ref() else {
        return Token::Invalid;
    };
    let expiry = session.expire_time.saturating_mul(1000);
    match session.expire_time {
        0 => Token::Ready,
        _ if expiry >= ready_until => Token::Ready,
        _ if expiry > now => Token::Short,
        _ => Token::Invalid,
    }
}

fn lease_id() -> Result<String, RngError> {
    let mut bytes = [0u8; 12];
    random_bytes(&mut bytes)?;
    Ok(format!("l_{}", crate::hex::encode(&bytes)))
}
