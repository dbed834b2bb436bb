//! The audit trail: one event per audited call, tagged with the node that served it,
//! appended to its own tree of the store in sealed blocks (compact protobuf, see
//! [`block`]) and, when `audit.log_lines` is on, logged as a line with target `audit`
//! (for a log pipeline that collects every node's).
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
    sync::{Arc, Mutex, OnceLock, atomic::AtomicU64},
    time::Duration,
};

use serde::{Deserialize, Serialize};

mod block;
mod call;
mod read;
mod sequence;
mod spill;
#[cfg(test)]
mod tests;
mod write;

pub use call::{Call, Subject};
pub use sequence::{AuditSequence, LocalSequence};
pub use write::SpilledDebit;

use crate::{
    clock::Clock,
    crypto::{Fingerprinter, Sealer},
    sealed::SealedError,
    store::{Store, StoreError},
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
    /// The `node_id` of the process that served the call (empty in events written
    /// before events carried it).
    #[serde(default)]
    pub node_id: String,
    /// The outside identity the caller proved itself with, when it was one:
    /// `k8s:namespace/serviceaccount`. Empty for credvault's own credentials.
    #[serde(default)]
    pub principal: String,
    /// Under `audit.sync = "os"`: the credits a reveal took that only the spill held
    /// when it was answered; a start that puts the event back from the spill takes
    /// them from the caller again. 0 otherwise. Sealed with the event, so the spill
    /// file cannot be edited to charge anyone.
    #[serde(default)]
    pub unwritten_debit: i64,
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
    Single(Box<AuditEvent>),
}

impl Stored {
    fn into_events(self) -> Vec<AuditEvent> {
        match self {
            Stored::Block { events } => events,
            Stored::Single(event) => vec![*event],
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
    /// Numbers the events (taken under the queue's lock, so the queue is in order).
    sequence: Box<dyn AuditSequence>,
    queue: Mutex<Queue>,
    /// Held while queued events are written: whoever gets it after a writer finds the
    /// events queued before it either written or failed.
    writer: tokio::sync::Mutex<()>,
    /// How many writes of queued events have happened.
    writes: AtomicU64,
    /// Durable commits: while one flushes, the next ones queue their events, and one
    /// of them writes them all behind the next flush; the rounds cover writes.
    durable: crate::rounds::Rounds,
    /// Run by each durable commit between its block write and its flush: writes what
    /// other services batch for the same flush (the callers' pending debits).
    before_flush: OnceLock<BeforeFlush>,
    retention: Option<Duration>,
    /// Tags every event.
    node_id: String,
    /// Logs every event as a line with target `audit`.
    log_lines: bool,
    /// With `audit.sync = "os"`: where hand-outs' events are written before the answer.
    spill: Option<spill::Spill>,
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}
