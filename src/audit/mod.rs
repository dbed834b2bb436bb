//! The audit trail: one event per audited call, logged as a line with target `audit`
//! and appended to its own tree of the store in sealed blocks (compact protobuf, see
//! [`block`]).
//!
//! Appending only queues the event. Queued events are written together, as blocks of
//! at most 256 events and 6 KiB (each sealed, keyed by the sequence number of its first
//! event), by whichever comes first: a hand-out that commits its event (it waits for
//! the block holding it, then flushes), a read of the trail, the writer task every
//! [`WRITE_EVERY`], or shutdown. Writing a
//! block per batch instead of a record per event is what lets hand-outs under load
//! share one store write.
//!
//! Secret values never enter it. What a call handed out or issued (a revealed
//! password, a lease's token, a new API key or JWT) is recorded as HMAC-SHA256 under
//! the vault's audit sub-key, so an operator holding a value can ask whether it was
//! handed out (`AuditHash`) without the trail being able to give it away.

use std::{
    future::Future,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

mod block;

use crate::{
    clock::Clock,
    crypto::{Fingerprinter, Sealer},
    sealed::{self, SealedError},
    store::{Range, Store, StoreError, StoreExt, Tree},
};

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// How many matching events AuditHash lists (it counts them all).
pub const MAX_HASH_MATCHES: usize = 100;
/// Retention pruning runs this often (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const SCAN_BATCH: usize = 64;
/// The writer task writes queued events this often (hand-outs do not wait for it).
pub const WRITE_EVERY: Duration = Duration::from_millis(100);
/// At most this many events share a block; a longer queue is written as several.
const BLOCK_MAX: usize = 256;
/// A block is closed before it passes this many bytes (about 30 events). Small values
/// suit every backend: the embedded one keeps a tree node inline only under 128 KiB
/// (larger ones went to blob files that outlived the events pruned from them), etcd
/// limits a request to 1.5 MiB. 4 KiB blocks cost about 8% of reveal throughput in the
/// credentials bench; tests/audit.rs checks the embedded store stays bounded.
const BLOCK_BYTES: usize = 6 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail could not be written: {0}")]
    Store(#[from] StoreError),
    #[error("an audit event: {0}")]
    Sealed(#[from] SealedError),
    #[error("page token {0:?} is not one this trail gave out")]
    PageToken(String),
    /// The block holding the event could not be written (the store's error is logged
    /// where it happened).
    #[error("the audit trail could not be written")]
    Unwritten,
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

/// What older stores hold under a block's key, sealed as JSON: a block, or (before
/// blocks) one event per key, read as a block of one. New blocks are written compact
/// (see [`block`]).
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Block { events: Vec<AuditEvent> },
    Single(AuditEvent),
}

impl Stored {
    fn into_events(self) -> Vec<AuditEvent> {
        match self {
            Stored::Block { events } => events,
            Stored::Single(event) => vec![event],
        }
    }
}

/// What became of the block an event went into, set once when known: written as the
/// n-th write of queued events (`Some(n)`), or lost (`None`).
type Written = Arc<OnceLock<Option<u64>>>;

/// Events appended but not yet written, and the outcome they will share.
struct Queue {
    events: Vec<AuditEvent>,
    written: Written,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            written: Arc::new(OnceLock::new()),
        }
    }
}

/// What each durable commit writes between its block write and its flush.
pub type BeforeFlush =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub struct AuditLog {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    hasher: Arc<Fingerprinter>,
    clock: Arc<dyn Clock>,
    next_seq: AtomicU64,
    queue: Mutex<Queue>,
    /// Held while queued events are written: whoever gets it after a writer finds the
    /// events queued before it either written or failed.
    writer: tokio::sync::Mutex<()>,
    /// How many writes of queued events have happened; the last one made durable.
    writes: AtomicU64,
    durable_through: AtomicU64,
    /// Durable commits line up here: while one flushes, the next ones queue their
    /// events, and the first of them writes them all behind one flush.
    committing: tokio::sync::Mutex<()>,
    /// Run by each durable commit between its block write and its flush: writes what
    /// other services batch for the same flush (the callers' pending debits).
    before_flush: OnceLock<BeforeFlush>,
    retention: Option<Duration>,
}

impl AuditLog {
    pub async fn open(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        hasher: Arc<Fingerprinter>,
        clock: Arc<dyn Clock>,
        retention: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let mut log = Self {
            store,
            sealer,
            hasher,
            clock,
            next_seq: AtomicU64::new(1),
            queue: Mutex::new(Queue::default()),
            writer: tokio::sync::Mutex::new(()),
            writes: AtomicU64::new(0),
            durable_through: AtomicU64::new(0),
            committing: tokio::sync::Mutex::new(()),
            before_flush: OnceLock::new(),
            retention,
        };
        // The last block's key is its first event's number; the next follows its last.
        // A block that does not open (tampered) does not stop the vault: reading the
        // trail reports it, and numbering continues past any number it could hold.
        if let Some(key) = log.store.last_key(Tree::Audit).await?
            && let Some(value) = log.store.value(Tree::Audit, &key).await?
        {
            let first = seq_of(&key).unwrap_or(0);
            let next = match log.open_block(&key, &value) {
                Ok(events) => {
                    events
                        .iter()
                        .map(|e| e.seq)
                        .max()
                        .unwrap_or(first)
                        .max(first)
                        + 1
                }
                Err(error) => {
                    tracing::error!(%error, "the last audit block does not open");
                    first + BLOCK_MAX as u64
                }
            };
            log.next_seq = AtomicU64::new(next);
        }
        Ok(log)
    }

    /// The audit hash of a secret value.
    pub fn hash(&self, secret: &str) -> String {
        self.hasher.hash(secret)
    }

    /// Queues one event (its `seq` and time are assigned here) and logs it. It is
    /// written with the next block: [`AuditLog::commit`] waits for that.
    pub fn append(&self, event: AuditEvent) -> u64 {
        self.enqueue(event).0
    }

    /// Appends one event and waits until the block holding it is written (not yet
    /// durable: the caller's next store flush makes it so).
    pub async fn commit(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (seq, written) = self.enqueue(event);
        if written.get().is_none() {
            self.write_queued().await;
        }
        match written.get() {
            Some(Some(_)) => Ok(seq),
            _ => Err(AuditError::Unwritten),
        }
    }

    /// Appends one event and waits until it is durable, together with every store
    /// write that completed before this call (a hand-out's debit and lease). Concurrent
    /// callers share the block write and the flush.
    pub async fn commit_durable(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (seq, written) = self.enqueue(event);
        let _turn = self.committing.lock().await;
        // A flush that ran while this call waited may have covered its event already.
        if let Some(outcome) = written.get() {
            match outcome {
                None => return Err(AuditError::Unwritten),
                Some(n) if *n <= self.durable_through.load(Ordering::SeqCst) => return Ok(seq),
                Some(_) => {}
            }
        }
        self.write_queued().await;
        let Some(Some(_)) = written.get() else {
            return Err(AuditError::Unwritten);
        };
        let covers = self.writes.load(Ordering::SeqCst);
        self.run_before_flush().await;
        self.store.flush().await?;
        self.durable_through.fetch_max(covers, Ordering::SeqCst);
        Ok(seq)
    }

    /// Sets what every durable commit writes just before its flush (once; later calls
    /// are ignored).
    pub fn before_flush(&self, write: BeforeFlush) {
        let _ = self.before_flush.set(write);
    }

    /// Numbers, logs and queues an event. Numbers are taken under the queue's lock, so
    /// the queue (and every block written from it) is in order.
    fn enqueue(&self, mut event: AuditEvent) -> (u64, Written) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        event.seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        event.at_ms = self.clock.now_ms();
        let seq = event.seq;
        tracing::info!(
            target: "audit",
            seq,
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
        queue.events.push(event);
        (seq, queue.written.clone())
    }

    /// Writes every queued event, as blocks of at most `BLOCK_MAX` events and
    /// `BLOCK_BYTES` bytes; answers false if a block could not be written (its events
    /// are lost, and their committers told).
    pub async fn write_queued(&self) -> bool {
        let _writer = self.writer.lock().await;
        let Queue { events, written } =
            std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let mut ok = true;
        for block in block::encode_blocks(&events, BLOCK_MAX, BLOCK_BYTES) {
            ok &= self
                .write_block(events[block.first].seq, block.count, &block.bytes)
                .await;
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = written.set(ok.then_some(n));
        ok
    }

    /// Seals and writes one encoded block of `count` events, keyed by its first `seq`.
    async fn write_block(&self, seq: u64, count: usize, plaintext: &[u8]) -> bool {
        let key = seq.to_be_bytes();
        let result = match sealed::seal_raw(&self.sealer, Tree::Audit, &key, plaintext) {
            Ok(bytes) => (self.store.swap(Tree::Audit, &key, None, Some(&bytes)).await)
                .map_err(AuditError::from),
            Err(error) => Err(error.into()),
        };
        match result {
            Ok(_) => true,
            Err(error) => {
                metrics::counter!("credvault_audit_write_failures_total").increment(count as u64);
                tracing::error!(%error, events = count, "writing audit events failed");
                false
            }
        }
    }

    /// Writes what is pending every [`WRITE_EVERY`] until `stop` (shutdown writes the
    /// rest once the calls have drained).
    pub async fn keep_written(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(WRITE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = tick.tick() => {}
            }
            self.write_pending().await;
        }
    }

    /// Writes the queued events and what the durable commits write before their flush
    /// (debits a cancelled hand-out left pending, too). Not flushed.
    pub async fn write_pending(&self) {
        if !self.queue_is_empty() {
            self.write_queued().await;
        }
        self.run_before_flush().await;
    }

    async fn run_before_flush(&self) {
        if let Some(before_flush) = self.before_flush.get() {
            before_flush().await;
        }
    }

    fn queue_is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .is_empty()
    }

    /// Writes the queued events, then flushes the store.
    pub async fn flush(&self) -> Result<(), AuditError> {
        if !self.write_queued().await {
            return Err(AuditError::Unwritten);
        }
        Ok(self.store.flush().await?)
    }

    /// One page of events matching `filter`, oldest first.
    pub async fn list(
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
        let full = self
            .each(after, |event| {
                if filter.matches(&event) {
                    events.push(event);
                }
                events.len() < page_size
            })
            .await?;
        let next = match (full, events.last()) {
            (true, Some(last)) => last.seq.to_string(),
            _ => String::new(),
        };
        Ok((events, next))
    }

    /// How many events carry `hash`, and the first of them.
    pub async fn find_hash(&self, hash: &str) -> Result<(usize, Vec<AuditEvent>), AuditError> {
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
        })
        .await?;
        Ok((count, matches))
    }

    /// Deletes events older than the retention; answers how many went. A block of old
    /// events goes whole; the block where old and new meet is trimmed in place (its
    /// key stays, so it still starts at or before its first number).
    pub async fn prune(&self) -> Result<usize, AuditError> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let cutoff = self.clock.now_ms() - retention.as_millis() as i64;
        let mut old = Vec::new();
        // Events are appended in time order, so the old blocks come first.
        self.each_block(None, |key, value, events| {
            let (gone, kept): (Vec<_>, Vec<_>) =
                events.into_iter().partition(|event| event.at_ms < cutoff);
            if !gone.is_empty() {
                old.push((key.to_vec(), value.to_vec(), gone.len(), kept.clone()));
            }
            kept.is_empty()
        })
        .await?;
        let mut pruned = 0;
        for (key, value, count, kept) in old {
            let trimmed = match kept.is_empty() {
                true => None,
                false => Some(self.seal_block(&key, &kept)?),
            };
            self.store
                .swap(Tree::Audit, &key, Some(&value), trimmed.as_deref())
                .await?;
            pruned += count;
        }
        Ok(pruned)
    }

    /// Prunes at start and then every hour until `stop`.
    pub async fn keep_pruned(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.retention.is_none() {
            return;
        }
        loop {
            match self.prune().await {
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
    /// answers true; answers whether it stopped early. Queued events are written first,
    /// so that a read sees every call answered before it.
    async fn each(
        &self,
        after: Option<u64>,
        mut visit: impl FnMut(AuditEvent) -> bool,
    ) -> Result<bool, AuditError> {
        // A block holds at most BLOCK_MAX consecutive numbers from its key on, so the
        // one holding `after + 1` starts after `after - BLOCK_MAX`.
        let start = after
            .filter(|after| *after >= BLOCK_MAX as u64)
            .map(|after| (after - BLOCK_MAX as u64).to_be_bytes().to_vec());
        let after = after.unwrap_or(0);
        let mut stopped = false;
        self.each_block(start, |_, _, events| {
            for event in events.into_iter().filter(|event| event.seq > after) {
                if !visit(event) {
                    stopped = true;
                    return false;
                }
            }
            true
        })
        .await?;
        Ok(stopped)
    }

    /// Visits the stored blocks whose key sorts after `start`, in order, while `visit`
    /// answers true.
    async fn each_block(
        &self,
        start: Option<Vec<u8>>,
        mut visit: impl FnMut(&[u8], &[u8], Vec<AuditEvent>) -> bool,
    ) -> Result<(), AuditError> {
        self.write_queued().await;
        let mut after = start;
        let mut at = None;
        loop {
            let range = Range::new(Tree::Audit, b"", SCAN_BATCH)
                .after(after.as_deref())
                .at(at);
            let page = self.store.scan(range).await?;
            // Every page at the first one's revision: one point in time.
            at = Some(page.revision);
            let done = !page.more;
            for (key, value) in page.entries {
                let events = self.open_block(&key, &value)?;
                if !visit(&key, &value, events) {
                    return Ok(());
                }
                after = Some(key);
            }
            if done {
                return Ok(());
            }
        }
    }

    fn seal_block(&self, key: &[u8], events: &[AuditEvent]) -> Result<Vec<u8>, SealedError> {
        sealed::seal_raw(&self.sealer, Tree::Audit, key, &block::encode(events))
    }

    fn open_block(&self, key: &[u8], value: &[u8]) -> Result<Vec<AuditEvent>, AuditError> {
        if !sealed::is_raw(value) {
            let stored: Stored = sealed::open(&self.sealer, Tree::Audit, key, value)?;
            return Ok(stored.into_events());
        }
        let plaintext = sealed::open_raw(&self.sealer, Tree::Audit, key, value)?;
        Ok(block::decode(&plaintext).ok_or(SealedError::Malformed)?)
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

    /// A new event for the same call (request id, rpc, caller): a stream that hands
    /// out more than once audits each hand-out on its own.
    pub fn another(&self) -> Self {
        let guard = self.event.lock().unwrap_or_else(|e| e.into_inner());
        match &self.log {
            Some(log) => Self::new(
                log.clone(),
                &guard.0.request_id,
                &guard.0.rpc,
                &guard.0.caller_id,
            ),
            None => Self::none(),
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
    pub async fn commit(&self) -> Result<(), AuditError> {
        match (&self.log, self.take("OK")) {
            (Some(log), Some(event)) => log.commit(event).await.map(drop),
            _ => Ok(()),
        }
    }

    /// Writes the event now with outcome OK and waits until it is durable, together
    /// with every store write the call made before (see [`AuditLog::commit_durable`]).
    /// A hand-out does not answer when it fails. Answers false when there was nothing
    /// to commit (a call not audited, or committed already): then the caller flushes.
    pub async fn commit_durable(&self) -> Result<bool, AuditError> {
        match (&self.log, self.take("OK")) {
            (Some(log), Some(event)) => log.commit_durable(event).await.map(|_| true),
            _ => Ok(false),
        }
    }

    /// Queues the event with this outcome unless it was already committed; answers
    /// whether it did.
    pub fn finish(&self, outcome: &str) -> bool {
        match (&self.log, self.take(outcome)) {
            (Some(log), Some(event)) => {
                log.append(event);
                true
            }
            _ => false,
        }
    }

    /// The event with this outcome, once: later calls answer `None`.
    fn take(&self, outcome: &str) -> Option<AuditEvent> {
        self.log.as_ref()?;
        let mut guard = self.event.lock().unwrap_or_else(|e| e.into_inner());
        if guard.1 {
            return None;
        }
        guard.1 = true;
        let mut event = guard.0.clone();
        event.outcome = outcome.to_owned();
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::ManualClock,
        crypto::MasterKey,
        store::{FaultPlan, FaultyStore, MemoryStore},
    };

    struct Trail {
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        hasher: Arc<Fingerprinter>,
        clock: Arc<ManualClock>,
    }

    impl Trail {
        fn new() -> Self {
            let master = MasterKey::generate().unwrap();
            Self {
                store: MemoryStore::open(),
                sealer: Arc::new(Sealer::new(&master)),
                hasher: Arc::new(Fingerprinter::new(&master)),
                clock: Arc::new(ManualClock::at(1_800_000_000_000)),
            }
        }

        async fn open(&self, store: Arc<dyn Store>, retention: Option<Duration>) -> AuditLog {
            AuditLog::open(
                store,
                self.sealer.clone(),
                self.hasher.clone(),
                self.clock.clone(),
                retention,
            )
            .await
            .unwrap()
        }

        async fn log(&self) -> AuditLog {
            self.open(self.store.clone(), None).await
        }

        async fn stored_keys(&self) -> Vec<u64> {
            self.store
                .entries(Tree::Audit, b"", None, usize::MAX)
                .await
                .unwrap()
                .iter()
                .map(|(key, _)| seq_of(key).unwrap())
                .collect()
        }
    }

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            request_id: format!("r{n}"),
            rpc: "credvault.v1.Credentials/RevealAccount".into(),
            outcome: "OK".into(),
            ..AuditEvent::default()
        }
    }

    async fn all(log: &AuditLog) -> Vec<u64> {
        let (events, next) = log
            .list(&Filter::default(), MAX_PAGE_SIZE, "")
            .await
            .unwrap();
        assert_eq!(next, "");
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn queued_events_are_written_as_one_block_and_listed_in_order() {
        let trail = Trail::new();
        let log = trail.log().await;
        for n in 0..5 {
            log.append(event(n));
        }
        // Not in the store until written; a read writes them first.
        assert!(trail.stored_keys().await.is_empty());
        assert_eq!(all(&log).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(trail.stored_keys().await, vec![1]);
        assert_eq!(log.commit(event(5)).await.unwrap(), 6);
        assert_eq!(trail.stored_keys().await, vec![1, 6]);
    }

    #[tokio::test]
    async fn pages_continue_inside_and_across_blocks_and_numbering_survives_a_reopen() {
        let trail = Trail::new();
        let log = trail.log().await;
        // One write of 600 queued events (several blocks, each closed at its byte or
        // event limit), then one of 1.
        for n in 0..600 {
            log.append(event(n));
        }
        assert!(log.write_queued().await);
        log.commit(event(600)).await.unwrap();
        let keys = trail.stored_keys().await;
        assert_eq!((keys[0], keys[keys.len() - 1]), (1, 601));
        assert!(keys.len() >= 4, "{keys:?}");
        assert!(keys.windows(2).all(|w| w[1] - w[0] <= BLOCK_MAX as u64));
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = log.list(&Filter::default(), 7, &token).await.unwrap();
            seen.extend(page.iter().map(|e| e.seq));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, (1..=601).collect::<Vec<_>>());
        drop(log);
        let reopened = trail.log().await;
        assert_eq!(reopened.commit(event(601)).await.unwrap(), 602);
    }

    #[tokio::test]
    async fn older_layouts_one_event_per_key_and_json_blocks_are_read_and_continued() {
        #[derive(Serialize)]
        struct JsonBlock {
            events: Vec<AuditEvent>,
        }
        let trail = Trail::new();
        let numbered = |seq: u64| AuditEvent {
            seq,
            ..event(seq as usize)
        };
        let put = |key: u64, bytes: Vec<u8>| {
            let store = trail.store.clone();
            async move {
                let key = key.to_be_bytes();
                store
                    .swap(Tree::Audit, &key, None, Some(&bytes))
                    .await
                    .unwrap()
            }
        };
        for seq in 1..=3u64 {
            let key = seq.to_be_bytes();
            put(
                seq,
                sealed::seal(&trail.sealer, Tree::Audit, &key, &numbered(seq)).unwrap(),
            )
            .await;
        }
        let block = JsonBlock {
            events: (4..=6).map(numbered).collect(),
        };
        let key = 4u64.to_be_bytes();
        put(
            4,
            sealed::seal(&trail.sealer, Tree::Audit, &key, &block).unwrap(),
        )
        .await;
        let log = trail.log().await;
        assert_eq!(log.commit(event(7)).await.unwrap(), 7);
        assert_eq!(all(&log).await, vec![1, 2, 3, 4, 5, 6, 7]);
        let (listed, _) = log.list(&Filter::default(), 10, "").await.unwrap();
        assert_eq!(listed[4].request_id, event(5).request_id);
        assert_eq!(listed[4].secret_hashes, event(5).secret_hashes);
    }

    #[tokio::test]
    async fn a_tampered_last_block_is_reported_on_read_and_numbering_goes_past_it() {
        let trail = Trail::new();
        let log = trail.log().await;
        log.commit(event(0)).await.unwrap();
        log.commit(event(1)).await.unwrap();
        drop(log);
        let key = 2u64.to_be_bytes();
        let mut bytes = trail.store.value(Tree::Audit, &key).await.unwrap().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let current = trail.store.value(Tree::Audit, &key).await.unwrap();
        trail
            .store
            .swap(Tree::Audit, &key, current.as_deref(), Some(&bytes))
            .await
            .unwrap();
        let reopened = trail.log().await;
        assert!(matches!(
            reopened.list(&Filter::default(), 10, "").await,
            Err(AuditError::Sealed(SealedError::Unauthentic))
        ));
        assert_eq!(
            reopened.commit(event(2)).await.unwrap(),
            2 + BLOCK_MAX as u64
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_commits_share_blocks_and_all_arrive() {
        // On a store whose flush takes a disk's time (the in-memory one's takes none,
        // and gives the others no time to queue).
        let dir = tempfile::tempdir().unwrap();
        let mut trail = Trail::new();
        trail.store = crate::store::open_embedded(dir.path()).unwrap();
        let log = Arc::new(trail.log().await);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..200 {
            let log = log.clone();
            tasks.spawn(async move { log.commit_durable(event(n)).await.unwrap() });
        }
        let mut seqs = Vec::new();
        while let Some(seq) = tasks.join_next().await {
            seqs.push(seq.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        assert_eq!(all(&log).await, seqs);
        // While one commit flushes, the others queue: they share blocks.
        let blocks = trail.stored_keys().await.len();
        assert!(blocks <= 100, "{blocks} blocks for 200 events");
    }

    #[tokio::test]
    async fn an_event_whose_block_cannot_be_written_fails_its_commit_and_is_not_listed() {
        let trail = Trail::new();
        let plan = Arc::new(FaultPlan::default());
        let faulty: Arc<dyn Store> = Arc::new(FaultyStore::new(trail.store.clone(), plan.clone()));
        let log = trail.open(faulty, None).await;
        log.commit(event(0)).await.unwrap();
        plan.fail_writes(Tree::Audit, true);
        assert!(matches!(
            log.commit(event(1)).await,
            Err(AuditError::Unwritten)
        ));
        assert!(matches!(
            log.commit_durable(event(2)).await,
            Err(AuditError::Unwritten)
        ));
        log.append(event(3));
        assert!(!log.write_queued().await);
        assert!(matches!(log.flush().await, Ok(())));
        plan.fail_writes(Tree::Audit, false);
        log.commit_durable(event(4)).await.unwrap();
        assert_eq!(all(&log).await, vec![1, 5]);
    }

    #[tokio::test]
    async fn pruning_removes_old_blocks_and_trims_the_one_where_old_meets_new() {
        let trail = Trail::new();
        let log = trail
            .open(trail.store.clone(), Some(Duration::from_secs(3600)))
            .await;
        log.append(event(0));
        log.append(event(1));
        log.commit(event(2)).await.unwrap();
        trail.clock.advance(1_800_000);
        log.append(event(3));
        log.commit(event(4)).await.unwrap();
        log.append(event(5));
        log.append(event(6));
        trail.clock.advance(1_800_000);
        log.commit(event(7)).await.unwrap();
        // Now: block 1 = [1,2,3] (old), block 4 = [4,5] (30 min), block 6 = [6,7,8]
        // with 6 and 7 30 min old and 8 new. An hour's retention, an hour later:
        assert_eq!(trail.stored_keys().await, vec![1, 4, 6]);
        trail.clock.advance(1_800_000 + 1);
        assert_eq!(log.prune().await.unwrap(), 7);
        assert_eq!(all(&log).await, vec![8]);
        assert_eq!(trail.stored_keys().await, vec![6]);
        assert_eq!(log.prune().await.unwrap(), 0);
    }
}
