//! Job leases: each holds one of an account's `maxJobs` slots while a job runs.
//!
//! The invariant — never more leases than `maxJobs` on one account — is the
//! [`slots::SlotTable`]'s to keep: a slot is taken there before any hand-out, and given
//! back if anything after fails. Held slots survive a restart; the reaper frees them at
//! their expiry. Waiters queue first come, first served per provider (or per account,
//! when they named one) and are woken by freed slots ([`waiters`]).

mod acquire;
mod cluster;
mod local;
mod refusal;
pub mod slots;
mod table;
mod waiters;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use tokio::sync::{Notify, broadcast::error::RecvError, watch};

pub use cluster::ClusterSlots;
pub use local::LocalSlots;
use refusal::jobs_running;
pub use refusal::{Cause, Unserved};
use serde::{Deserialize, Serialize};
use slots::SlotTable;
pub use table::LeaseRecord;
use waiters::Waiters;

use crate::{
    accounts::{Account, AccountError, AccountKey, AccountService},
    audit::{AuditError, Call},
    auth::{Caller, Denied},
    callers::{CallerError, CallerService},
    clock::Clock,
    crypto::RngError,
    events::{Event, EventKind, Events},
    handout::{Door, HandOutError},
    providers::Providers,
    refresh::Refresher,
    sealed::SealedError,
    store::{Store, StoreError},
    validate::FieldError,
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

pub struct LeaseService {
    store: Arc<dyn Store>,
    accounts: Arc<AccountService>,
    callers: Arc<CallerService>,
    refresher: Arc<Refresher>,
    providers: Arc<Providers>,
    events: Events,
    clock: Arc<dyn Clock>,
    settings: LeaseSettings,
    slots: Arc<dyn SlotTable>,
    door: Arc<Door>,
    waiters: Waiters,
    tickets: AtomicU64,
    reaper: Notify,
    /// The expiry the reaper sleeps until (`i64::MAX`: none, or being worked out). A
    /// lease that expires sooner wakes it.
    reaper_at: AtomicI64,
    stop: watch::Sender<bool>,
}

impl LeaseService {
    /// Serves leases from `slots` and starts the reaper and the waiters' wake-ups.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        store: Arc<dyn Store>,
        slots: Arc<dyn SlotTable>,
        door: Arc<Door>,
        accounts: Arc<AccountService>,
        callers: Arc<CallerService>,
        refresher: Arc<Refresher>,
        providers: Arc<Providers>,
        events: Events,
        clock: Arc<dyn Clock>,
        settings: LeaseSettings,
    ) -> Result<Arc<Self>, LeaseError> {
        let (stop, _) = watch::channel(false);
        let service = Arc::new(Self {
            store,
            accounts,
            callers,
            refresher,
            providers,
            events,
            clock,
            settings,
            slots,
            door,
            waiters: Waiters::default(),
            tickets: AtomicU64::new(0),
            reaper: Notify::new(),
            reaper_at: AtomicI64::new(i64::MAX),
            stop,
        });
        tokio::spawn(service.clone().reap());
        tokio::spawn(service.clone().wake_waiters());
        Ok(service)
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Callers queued for a slot of this provider's accounts.
    pub fn waiting(&self, provider: &str) -> usize {
        self.waiters.of_provider(provider)
    }

    /// Leases held and callers waiting, per provider.
    pub fn load_by_provider(&self) -> (HashMap<String, usize>, HashMap<String, usize>) {
        let mut held = HashMap::new();
        for lease in self.slots.all() {
            *held.entry(lease.provider).or_default() += 1;
        }
        (held, self.waiters.by_provider())
    }

    /// Leases holding a slot of this account now.
    pub fn active_jobs(&self, key: &AccountKey) -> usize {
        self.slots.held(key)
    }

    /// The id of a live lease `caller_id` holds on this account, if any.
    pub fn held_by(&self, key: &AccountKey, caller_id: &str) -> Option<String> {
        let now = self.clock.now_ms();
        self.slots
            .leases_of(key)
            .into_iter()
            .find(|lease| lease.caller_id == caller_id && lease.expires_at_ms > now)
            .map(|lease| lease.id)
    }

    pub async fn renew(
        &self,
        caller: &Caller,
        id: &str,
        ttl_ms: i64,
        call: &Call,
    ) -> Result<Granted, LeaseError> {
        let now = self.clock.now_ms();
        let held = self
            .slots
            .get(id)
            .filter(|r| r.expires_at_ms > now)
            .ok_or_else(|| LeaseError::NotFound(id.to_owned()))?;
        if held.caller_id != caller.id && !caller.is_admin() {
            return Err(LeaseError::NotOwner(id.to_owned()));
        }
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
        let record = self
            .slots
            .renew(id, now + ttl_ms)
            .await?
            .ok_or_else(|| LeaseError::NotFound(id.to_owned()))?;
        self.wake_reaper_for(record.expires_at_ms);
        let account = self.accounts.get(&record.provider, &record.email).await?;
        // The lease paid when it was acquired: the renewal's hand-out is free, and
        // audited like every other.
        let token: Vec<&str> = account.secrets.token.iter().map(|t| t.expose()).collect();
        self.door
            .hand_out(call, record.subject(), &record.caller_id, 0, &token)
            .await?;
        Ok(Granted {
            lease: record,
            account,
        })
    }

    /// Frees the slot; an unknown (released or expired) lease is not an error.
    ///
    /// The deletion is not flushed before answering: a release lost in a crash leaves
    /// the lease held until its expiry, which errs on the safe side of `maxJobs`. The
    /// store's own background flush or the next acknowledged write makes it durable.
    pub async fn release(&self, caller: &Caller, id: &str) -> Result<(), LeaseError> {
        match self.slots.get(id) {
            None => return Ok(()),
            Some(record) if record.caller_id != caller.id && !caller.is_admin() => {
                return Err(LeaseError::NotOwner(id.to_owned()));
            }
            Some(_) => {}
        }
        self.end(id).await;
        Ok(())
    }

    /// The live leases, oldest first: all of them, or those of one caller.
    pub fn list(&self, caller_id: Option<&str>) -> Vec<LeaseRecord> {
        let now = self.clock.now_ms();
        let mut leases: Vec<LeaseRecord> = self
            .slots
            .all()
            .into_iter()
            .filter(|lease| lease.expires_at_ms > now)
            .filter(|lease| caller_id.is_none_or(|id| lease.caller_id == id))
            .collect();
        leases.sort_by(|a, b| (a.acquired_at_ms, &a.id).cmp(&(b.acquired_at_ms, &b.id)));
        leases
    }

    /// RevokeLease: ends a live lease now and tells its holder through the watch.
    pub async fn revoke(&self, id: &str) -> Result<LeaseRecord, LeaseError> {
        let now = self.clock.now_ms();
        let lease = self
            .slots
            .get(id)
            .filter(|lease| lease.expires_at_ms > now)
            .ok_or_else(|| LeaseError::NotFound(id.to_owned()))?;
        self.end(id).await;
        self.events.publish(Event {
            key: lease.key(),
            kind: EventKind::LeaseRevoked {
                lease_id: id.to_owned(),
            },
            at_ms: now,
        });
        Ok(lease)
    }

    /// Ends every lease a (deleted) caller holds, telling each through the watch.
    pub async fn end_caller(&self, caller_id: &str) -> usize {
        let held = self.list(Some(caller_id));
        for lease in &held {
            let _ = self.revoke(&lease.id).await;
        }
        held.len()
    }

    /// Ends every lease on an account (deleted or disabled) and tells their holders.
    pub async fn end_account(&self, key: &AccountKey) {
        for lease in self.slots.leases_of(key) {
            self.end(&lease.id).await;
            self.events.publish(Event {
                key: key.clone(),
                kind: EventKind::LeaseRevoked { lease_id: lease.id },
                at_ms: self.clock.now_ms(),
            });
        }
        if let Err(error) = self.store.flush().await {
            tracing::error!(%error, "flushing ended leases failed");
        }
    }

    /// Frees a lease's slot (its waiters are woken by the slot table's news).
    async fn end(&self, id: &str) {
        if let Err(error) = self.slots.release(id).await {
            tracing::error!(%error, lease = id, "freeing a lease's slot failed");
        }
    }

    /// Wakes the reaper when a lease now expires before the time it sleeps until (most
    /// leases expire after the ones before them, and wake nothing).
    fn wake_reaper_for(&self, expires_at_ms: i64) {
        if expires_at_ms < self.reaper_at.load(Ordering::SeqCst) {
            self.reaper.notify_one();
        }
    }

    /// Frees leases at their expiry.
    async fn reap(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            // While the next expiry is worked out, any new lease wakes the reaper (it
            // keeps the wake-up for the next wait).
            self.reaper_at.store(i64::MAX, Ordering::SeqCst);
            let mut next = self.slots.next_expiry();
            if self.slots.shared() {
                // Another process's lease past its deadline is freed here too, within
                // a second, should that process have died.
                let soon = self.clock.now_ms() + 1_000;
                next = Some(next.map_or(soon, |at| at.min(soon)));
            }
            self.reaper_at
                .store(next.unwrap_or(i64::MAX), Ordering::SeqCst);
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
            match self.slots.expire(self.clock.now_ms()).await {
                Ok(expired) => {
                    for record in &expired {
                        tracing::info!(lease = %record.id, "lease expired; slot freed");
                    }
                }
                Err(error) => tracing::error!(%error, "freeing expired leases failed"),
            }
        }
    }

    /// Wakes the waiters of every freed slot, wherever it was freed.
    async fn wake_waiters(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut freed = self.slots.freed();
        loop {
            let news = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                news = freed.recv() => news,
            };
            match news {
                Ok(key) => self.waiters.wake(&key),
                Err(RecvError::Lagged(_)) => self.waiters.wake_all(),
                Err(RecvError::Closed) => return,
            }
        }
    }
}
