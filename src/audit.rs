//! The audit trail: one event per audited call, appended to its own sled tree (sealed,
//! keyed by sequence number) and logged as a line with target `audit`.
//!
//! Secret values never enter it. What a call handed out or issued (a revealed
//! password, a lease's token, a new API key or JWT) is recorded as HMAC-SHA256 under
//! the vault's audit sub-key, so an operator holding a value can ask whether it was
//! handed out (`AuditHash`) without the trail being able to give it away.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    clock::Clock,
    crypto::{Fingerprinter, Sealer},
    sealed::{self, SealedError},
    store::{Store, StoreError, Tree},
};

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// How many matching events AuditHash lists (it counts them all).
pub const MAX_HASH_MATCHES: usize = 100;
/// Retention pruning runs this often (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const SCAN_BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail could not be written: {0}")]
    Store(#[from] StoreError),
    #[error("an audit event: {0}")]
    Sealed(#[from] SealedError),
    #[error("page token {0:?} is not one this trail gave out")]
    PageToken(String),
}

/// One event, as stored and as listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: u64,
    pub at_ms: i64,
    pub request_id: String,
    /// Empty when authentication failed.
    pub caller_id: String,
    /// The gRPC method path without its leading slash.
    pub rpc: String,
    pub provider: String,
    pub email: String,
    /// A caller id, lease id, key id or token id, where the call has one.
    pub target: String,
    /// "OK" or the gRPC status code name.
    pub outcome: String,
    pub secret_hashes: Vec<String>,
}

/// What ListEvents may filter on; empty strings and `None` match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub caller_id: String,
    pub provider: String,
    pub email: String,
    pub rpc: String,
}

impl Filter {
    fn matches(&self, event: &AuditEvent) -> bool {
        let rpc_ok = self.rpc.is_empty()
            || event.rpc == self.rpc
            || event.rpc.rsplit('/').next() == Some(self.rpc.as_str());
        self.since_ms.is_none_or(|since| event.at_ms >= since)
            && self.until_ms.is_none_or(|until| event.at_ms < until)
            && (self.caller_id.is_empty() || event.caller_id == self.caller_id)
            && (self.provider.is_empty() || event.provider == self.provider)
            && (self.email.is_empty() || event.email.eq_ignore_ascii_case(&self.email))
            && rpc_ok
    }
}

pub struct AuditLog {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    hasher: Arc<Fingerprinter>,
    clock: Arc<dyn Clock>,
    next_seq: AtomicU64,
    retention: Option<Duration>,
}

impl AuditLog {
    pub fn open(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        hasher: Arc<Fingerprinter>,
        clock: Arc<dyn Clock>,
        retention: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let last = store.last_key(Tree::Audit)?;
        let next = last.and_then(|key| seq_of(&key)).map_or(1, |seq| seq + 1);
        Ok(Self {
            store,
            sealer,
            hasher,
            clock,
            next_seq: AtomicU64::new(next),
            retention,
        })
    }

    /// The audit hash of a secret value.
    pub fn hash(&self, secret: &str) -> String {
        self.hasher.hash(secret)
    }

    /// Appends one event (its `seq` and time are assigned here) and logs it. The write
    /// is made durable by the caller's next flush.
    pub fn append(&self, mut event: AuditEvent) -> Result<u64, AuditError> {
        event.seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        event.at_ms = self.clock.now_ms();
        let key = event.seq.to_be_bytes();
        let bytes = sealed::seal(&self.sealer, Tree::Audit, &key, &event)?;
        if let Err(error) = self
            .store
            .compare_and_swap(Tree::Audit, &key, None, Some(&bytes))
        {
            metrics::counter!("credvault_audit_write_failures_total").increment(1);
            tracing::error!(%error, rpc = %event.rpc, "writing an audit event failed");
            return Err(error.into());
        }
        tracing::info!(
            target: "audit",
            seq = event.seq,
            request_id = %event.request_id,
            caller = %event.caller_id,
            rpc = %event.rpc,
            provider = %event.provider,
            email = %if event.email.is_empty() { String::new() } else { self.hasher.tag(&event.email) },
            target_id = %event.target,
            outcome = %event.outcome,
            secret_hashes = %event.secret_hashes.join(","),
            "audit"
        );
        Ok(event.seq)
    }

    pub async fn flush(&self) -> Result<(), AuditError> {
        Ok(self.store.flush().await?)
    }

    /// One page of events matching `filter`, oldest first.
    pub fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String), AuditError> {
        let after = match page_token {
            "" => None,
            token => Some(
                token
                    .parse::<u64>()
                    .map_err(|_| AuditError::PageToken(token.to_owned()))?,
            ),
        };
        let mut events = Vec::new();
        let full = self.each(after, |event| {
            if filter.matches(&event) {
                events.push(event);
            }
            events.len() < page_size
        })?;
        let next = match (full, events.last()) {
            (true, Some(last)) => last.seq.to_string(),
            _ => String::new(),
        };
        Ok((events, next))
    }

    /// How many events carry `hash`, and the first of them.
    pub fn find_hash(&self, hash: &str) -> Result<(usize, Vec<AuditEvent>), AuditError> {
        let mut count = 0;
        let mut matches = Vec::new();
        self.each(None, |event| {
            if event.secret_hashes.iter().any(|h| h == hash) {
                count += 1;
                if matches.len() < MAX_HASH_MATCHES {
                    matches.push(event);
                }
            }
            true
        })?;
        Ok((count, matches))
    }

    /// Deletes events older than the retention; answers how many went.
    pub fn prune(&self) -> Result<usize, AuditError> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let cutoff = self.clock.now_ms() - retention.as_millis() as i64;
        let mut old = Vec::new();
        // Events are appended in time order, so the old ones come first.
        self.each(None, |event| {
            if event.at_ms < cutoff {
                old.push(event.seq);
                true
            } else {
                false
            }
        })?;
        for seq in &old {
            let key = seq.to_be_bytes();
            if let Some(current) = self.store.get(Tree::Audit, &key)? {
                self.store
                    .compare_and_swap(Tree::Audit, &key, Some(&current), None)?;
            }
        }
        Ok(old.len())
    }

    /// Prunes at start and then every hour until `stop`.
    pub async fn keep_pruned(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.retention.is_none() {
            return;
        }
        loop {
            match self.prune() {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(events = n, "audit events past their retention pruned");
                    if let Err(error) = self.flush().await {
                        tracing::error!(%error, "flushing the pruned audit trail failed");
                    }
                }
                Err(error) => tracing::error!(%error, "pruning the audit trail failed"),
            }
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    }

    /// Visits the events after sequence number `after`, oldest first, while `visit`
    /// answers true; answers whether it stopped early.
    fn each(
        &self,
        after: Option<u64>,
        mut visit: impl FnMut(AuditEvent) -> bool,
    ) -> Result<bool, AuditError> {
        let mut after: Option<Vec<u8>> = after.map(|seq| seq.to_be_bytes().to_vec());
        loop {
            let batch = self
                .store
                .scan(Tree::Audit, b"", after.as_deref(), SCAN_BATCH)?;
            let done = batch.len() < SCAN_BATCH;
            for (key, value) in batch {
                let event = self.open_event(&key, &value)?;
                after = Some(key);
                if !visit(event) {
                    return Ok(true);
                }
            }
            if done {
                return Ok(false);
            }
        }
    }

    fn open_event(&self, key: &[u8], value: &[u8]) -> Result<AuditEvent, AuditError> {
        Ok(sealed::open(&self.sealer, Tree::Audit, key, value)?)
    }
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The audit record of one call in progress: the layer makes it, the handler adds what
/// the call is about and what it handed out, and the layer writes it when the answer
/// is known — unless the handler already committed it (hand-outs that must not be
/// answered unaudited).
#[derive(Clone)]
pub struct CallAudit {
    log: Option<Arc<AuditLog>>,
    event: Arc<Mutex<(AuditEvent, bool)>>,
}

impl CallAudit {
    pub fn new(log: Arc<AuditLog>, request_id: &str, rpc: &str, caller_id: &str) -> Self {
        Self {
            log: Some(log),
            event: Arc::new(Mutex::new((
                AuditEvent {
                    request_id: request_id.to_owned(),
                    rpc: rpc.to_owned(),
                    caller_id: caller_id.to_owned(),
                    ..AuditEvent::default()
                },
                false,
            ))),
        }
    }

    /// For calls that are not audited: every method does nothing.
    pub fn none() -> Self {
        Self {
            log: None,
            event: Arc::new(Mutex::new((AuditEvent::default(), true))),
        }
    }

    fn with(&self, change: impl FnOnce(&mut AuditEvent)) {
        let mut guard = self.event.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut guard.0);
    }

    pub fn account(&self, provider: &str, email: &str) {
        self.with(|e| {
            e.provider = provider.to_owned();
            e.email = email.to_lowercase();
        });
    }

    pub fn target(&self, target: &str) {
        self.with(|e| e.target = target.to_owned());
    }

    /// Records that the call hands out (or issues) this secret value, as its hash.
    pub fn handed_out(&self, secret: &str) {
        if let Some(log) = &self.log {
            let hash = log.hash(secret);
            self.with(|e| e.secret_hashes.push(hash));
        }
    }

    /// Writes the event now with outcome OK. A hand-out calls this before its answer
    /// is made durable, and does not answer when it fails.
    pub fn commit(&self) -> Result<(), AuditError> {
        self.finish("OK").map(drop)
    }

    /// Writes the event with this outcome unless it was already written; answers
    /// whether a write happened.
    pub fn finish(&self, outcome: &str) -> Result<bool, AuditError> {
        let Some(log) = &self.log else {
            return Ok(false);
        };
        let event = {
            let mut guard = self.event.lock().unwrap_or_else(|e| e.into_inner());
            if guard.1 {
                return Ok(false);
            }
            guard.1 = true;
            let mut event = guard.0.clone();
            event.outcome = outcome.to_owned();
            event
        };
        log.append(event).map(|_| true)
    }
}
