//! The refresh engine (DESIGN.md §4): keeps every upstream account's session fresh.
//!
//! One scheduler task owns a time-ordered [`Schedule`]. Due accounts are logged in by
//! their provider's adapter with bounded concurrency, one login per account at a time:
//! a caller that needs a fresh token (RefreshAccount, CreateAccount) joins the login in
//! flight instead of starting another. A result is checked (see [`stage`]) and stored
//! in one atomic write; transient failures retry with capped, jittered exponential
//! backoff; permanent ones set NEEDS_ATTENTION and wait for an operator.

pub mod cluster_flight;
pub mod flight;
mod login;
pub mod providers;
pub mod schedule;
mod stage;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};

pub use providers::{LoginError, Provider};
pub use schedule::{RefreshSettings, Schedule};

use crate::{
    accounts::{Account, AccountError, AccountKey, AccountMeta, AccountService, NewAccount},
    clock::Clock,
    events::Events,
    providers::{ProviderKind, Providers},
};

/// Accounts read per batch when the schedule is rebuilt at start-up.
const REBUILD_BATCH: usize = 1000;

#[derive(Clone, Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider refused or failed; `permanent` says whether retrying can help.
    #[error("login failed: {0}")]
    Login(LoginError),
    #[error("the new token was not stored: {0}")]
    Rejected(&'static str),
    #[error("provider {0} has no base_url configured, so credvault does not log its accounts in")]
    NotConfigured(String),
    #[error("the account is disabled")]
    Disabled,
    #[error("the account changed while logging in: {0}")]
    Account(Arc<AccountError>),
    #[error("credvault is shutting down")]
    ShuttingDown,
    /// The account was logged in less than `refresh.min_login_interval_secs` ago.
    #[error(
        "the login budget is spent: the account was logged in less than {interval_secs} s ago; the next login is allowed at {next_at}"
    )]
    Budget { interval_secs: i64, next_at: String },
}

impl From<AccountError> for RefreshError {
    fn from(error: AccountError) -> Self {
        RefreshError::Account(Arc::new(error))
    }
}

type Outcome = Option<Result<Account, RefreshError>>;

/// What to do with an account's schedule once its login is over.
enum Next {
    /// Plan from the account as it now is.
    Replan(Box<AccountMeta>),
    At(i64),
    Unschedule,
    /// Nothing: someone else (an operator's change) has re-planned it.
    Unchanged,
}

type LoginOutcome = (Result<Account, RefreshError>, Next);

enum Command {
    At(AccountKey, i64),
    Remove(AccountKey),
}

struct Inner {
    accounts: Arc<AccountService>,
    adapters: HashMap<String, (ProviderKind, Arc<dyn Provider>)>,
    settings: RefreshSettings,
    clock: Arc<dyn Clock>,
    limit: Semaphore,
    /// This process's logins under way: later callers for the same account share the
    /// first one's outcome.
    inflight: Mutex<HashMap<AccountKey, watch::Receiver<Outcome>>>,
    /// The right to log an account in (one login at a time, wherever it runs).
    flights: Arc<dyn flight::LoginFlights>,
    attempts: Mutex<HashMap<AccountKey, u32>>,
    commands: mpsc::UnboundedSender<Command>,
    stop: watch::Receiver<bool>,
    logins: AtomicU64,
    refreshed: AtomicU64,
    /// Logins the budget refused.
    refused: AtomicU64,
    /// A copy of each account's planned next attempt, for operators and tests (the
    /// schedule itself belongs to the scheduler task).
    planned: Mutex<HashMap<AccountKey, i64>>,
    events: Events,
}

/// Handle to the running engine. Dropping it (or [`Refresher::shutdown`]) stops the
/// scheduler and every login in flight.
pub struct Refresher {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Refresher {
    /// Rebuilds the schedule from the store and starts the scheduler task; logins
    /// take this process's flights.
    pub async fn start(
        accounts: Arc<AccountService>,
        providers: &Providers,
        clock: Arc<dyn Clock>,
        settings: RefreshSettings,
        events: Events,
    ) -> Result<Self, AccountError> {
        let flights = Arc::new(flight::LocalFlights::default());
        Self::start_with_flights(accounts, providers, clock, settings, events, flights).await
    }

    /// As [`Refresher::start`], with the login flights given (shared ones in etcd
    /// mode).
    pub async fn start_with_flights(
        accounts: Arc<AccountService>,
        providers: &Providers,
        clock: Arc<dyn Clock>,
        settings: RefreshSettings,
        events: Events,
        flights: Arc<dyn flight::LoginFlights>,
    ) -> Result<Self, AccountError> {
        let adapters = providers
            .iter()
            .filter_map(|(name, spec)| {
                providers::adapter(spec).map(|a| (name.clone(), (spec.kind, a)))
            })
            .collect();
        let (commands, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            accounts,
            adapters,
            limit: Semaphore::new(settings.concurrency.max(1)),
            settings,
            clock,
            inflight: Mutex::new(HashMap::new()),
            flights,
            attempts: Mutex::new(HashMap::new()),
            commands,
            stop: stop_rx,
            logins: AtomicU64::new(0),
            refreshed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            planned: Mutex::new(HashMap::new()),
            events,
        });
        let schedule = inner.rebuild().await?;
        tracing::info!(accounts = schedule.len(), "refresh schedule built");
        *inner.planned.lock().unwrap_or_else(|e| e.into_inner()) = schedule.snapshot();
        let task = tokio::spawn(Inner::run(inner.clone(), rx, schedule));
        Ok(Self {
            inner,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// CreateAccount's domain work: creates the account and, when it came without a
    /// token and credvault logs its provider in, logs it in before answering (with the
    /// token, or the reason in its status); otherwise plans its refreshes.
    pub async fn admit(&self, input: NewAccount) -> Result<Account, AccountError> {
        let account = self.inner.accounts.create(input).await?;
        let key = account.meta.key();
        if account.secrets.token.is_some() || !self.refreshes(&key.provider) {
            self.account_changed(&key, Some(&account.meta));
            return Ok(account);
        }
        if let Err(error) = self.refresh_now(&key).await {
            tracing::info!(reason = %error, "first login of a new account failed");
        }
        self.inner.accounts.get(&key.provider, &key.email).await
    }

    /// Logs the account in now and waits for the result; joins a login in flight. The
    /// login budget applies: within it, [`RefreshError::Budget`].
    pub async fn refresh_now(&self, key: &AccountKey) -> Result<Account, RefreshError> {
        self.inner.clone().refresh(key.clone(), false).await
    }

    /// Logs the account in even within the login budget (an operator's `force`).
    pub async fn refresh_forced(&self, key: &AccountKey) -> Result<Account, RefreshError> {
        self.inner.clone().refresh(key.clone(), true).await
    }

    /// Why a login asked for now would be wasted, if it would: the account holds a valid
    /// token from a login within the budget, and a new login would only end the
    /// session running jobs hold. RefreshAccount answers this instead of logging in.
    pub fn needless_login(&self, account: &Account) -> Option<String> {
        let now = self.inner.clock.now_ms();
        let session = account.meta.session.as_ref()?;
        let valid = account.secrets.token.is_some()
            && (session.expire_time == 0 || session.expire_time.saturating_mul(1000) > now);
        self.inner
            .settings
            .login_allowed_at(&account.meta, now)
            .filter(|_| valid)?;
        Some(format!(
            "not logged in again: the last login was {} s ago, within refresh.min_login_interval_secs ({} s); the token is fresh; pass force to start a new session",
            (now - session.last_refresh_at_ms).max(0) / 1000,
            self.inner.settings.min_login_interval_secs
        ))
    }

    /// The settings the engine runs with.
    pub fn settings(&self) -> &RefreshSettings {
        &self.inner.settings
    }

    /// Like [`Refresher::refresh_now`], for calls made on a caller's behalf (a lease
    /// that needs a fresher token): while the account is backing off after failed
    /// logins, no login is made and `false` is answered, so that callers cannot push
    /// the upstream past the backoff schedule (during an outage, say).
    pub async fn refresh_unless_backing_off(&self, key: &AccountKey) -> Result<bool, RefreshError> {
        let backing_off = self
            .inner
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|attempts| *attempts > 0)
            && self
                .next_attempt(key)
                .is_some_and(|due| due > self.inner.clock.now_ms());
        if backing_off {
            return Ok(false);
        }
        self.refresh_now(key).await.map(|_| true)
    }

    /// Whether credvault logs this provider's accounts in at all.
    pub fn refreshes(&self, provider: &str) -> bool {
        self.inner.adapters.contains_key(provider)
    }

    /// Re-plans an account after an operator changed it (`None`: it was deleted).
    pub fn account_changed(&self, key: &AccountKey, meta: Option<&AccountMeta>) {
        self.inner.attempts_clear(key);
        self.inner.plan(key, meta);
    }

    /// Logins attempted since start (all outcomes).
    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::Relaxed)
    }

    /// Logins the login budget refused since start.
    pub fn refused_by_budget(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Logins that stored a new session or credits since start.
    pub fn refreshed(&self) -> u64 {
        self.inner.refreshed.load(Ordering::Relaxed)
    }

    /// When the account's next login is planned (unix ms), if it is scheduled.
    pub fn next_attempt(&self, key: &AccountKey) -> Option<i64> {
        self.inner
            .planned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// How many accounts are scheduled.
    pub fn scheduled(&self) -> usize {
        self.inner
            .planned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Stops the scheduler and every login in flight, and waits for them.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Inner {
    async fn rebuild(&self) -> Result<Schedule, AccountError> {
        let now = self.clock.now_ms();
        let mut schedule = Schedule::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self
                .accounts
                .scan_meta(after.as_deref(), REBUILD_BATCH)
                .await?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = Some(last.clone());
            for (_, meta) in &batch {
                if let Some(due) = self.due(meta, now) {
                    schedule.set(meta.key(), due);
                }
            }
            if batch.len() < REBUILD_BATCH {
                break;
            }
        }
        Ok(schedule)
    }

    fn due(&self, meta: &AccountMeta, now: i64) -> Option<i64> {
        let (kind, _) = self.adapters.get(&meta.provider)?;
        self.settings.next_due(*kind, meta, now)
    }

    fn plan(&self, key: &AccountKey, meta: Option<&AccountMeta>) {
        match meta.and_then(|m| self.due(m, self.clock.now_ms())) {
            Some(due) => self.plan_at(key, due),
            None => {
                self.planned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(key);
                let _ = self.commands.send(Command::Remove(key.clone()));
            }
        }
    }

    fn plan_at(&self, key: &AccountKey, due: i64) {
        self.planned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), due);
        let _ = self.commands.send(Command::At(key.clone(), due));
    }

    fn attempts_clear(&self, key: &AccountKey) {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    async fn run(
        self: Arc<Self>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut schedule: Schedule,
    ) {
        let mut stop = self.stop.clone();
        let mut logins = JoinSet::new();
        loop {
            while logins.try_join_next().is_some() {}
            let wake = match schedule.next_due() {
                Some(due) => self.clock.sleep_until(due),
                None => Box::pin(std::future::pending()),
            };
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                command = commands.recv() => match command {
                    Some(Command::At(key, due)) => schedule.set(key, due),
                    Some(Command::Remove(key)) => schedule.remove(&key),
                    None => break,
                },
                () = wake => {
                    for key in schedule.pop_due(self.clock.now_ms()) {
                        let me = self.clone();
                        logins.spawn(async move {
                            let _ = me.refresh(key, false).await;
                        });
                    }
                }
            }
        }
        logins.shutdown().await;
    }
}
