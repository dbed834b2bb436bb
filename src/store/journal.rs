//! What turns a local key-value engine into a [`Store`]: one writer at a time, a
//! revision per commit, a bounded history of recent changes, and the watches that
//! follow them.
//!
//! Commits hold one lock while they compare, write and number, so revisions follow
//! commit order exactly. The history keeps each change with the value it replaced, up
//! to [`HISTORY_BYTES`]; that is what lets a scan read as the store was at a recent
//! revision (it undoes the later changes over what the engine holds now) and a watch
//! start from one. Older revisions answer [`StoreError::Compacted`], as etcd does after
//! a compaction. Revisions count from the open: a local store belongs to one process,
//! so nothing that holds a revision outlives it.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::mpsc;

use super::{
    Entry, FlushFuture, Outcome, Page, Range, Redacted, Revision, Store, StoreError, StoreFuture,
    Tree, Txn, Versioned, Write,
};

/// How many bytes of recent changes (keys and both values) the history keeps.
pub const HISTORY_BYTES: usize = 4 * 1024 * 1024;
/// Changes a watch may have waiting before it is ended as fallen behind.
const WATCH_BUFFER: usize = 4096;

/// The synchronous engine under a journal: reads, and an all-or-nothing write of
/// several keys.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries under `prefix` after `after`, in key order.
    fn range(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Writes all of `writes` or none; answers what each key held before.
    fn apply(&self, writes: &[Write]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    fn count(&self, tree: Tree) -> Result<u64, StoreError>;
    fn last_key(&self, tree: Tree) -> Result<Option<Vec<u8>>, StoreError>;
    fn flush(&self) -> FlushFuture<'_>;
    fn disk_bytes(&self) -> Option<u64>;
}

/// One change, as a watch delivers it.
#[derive(Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: Revision,
    pub tree: Tree,
    pub key: Vec<u8>,
    /// The new value; `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Change")
            .field("revision", &self.revision)
            .field("tree", &self.tree)
            .field("key", &Redacted(&self.key))
            .field("value", &self.value.as_deref().map(Redacted))
            .finish()
    }
}

/// The changes under one prefix, in commit order.
pub struct Watch {
    changes: mpsc::Receiver<Change>,
}

impl Watch {
    /// The next change. [`StoreError::WatchEnded`] once the watch fell behind or the
    /// store closed; read afresh and watch again then.
    pub async fn next(&mut self) -> Result<Change, StoreError> {
        self.changes.recv().await.ok_or(StoreError::WatchEnded)
    }

    /// A watch over a channel a backend feeds itself.
    pub fn from_channel(changes: mpsc::Receiver<Change>) -> Self {
        Watch { changes }
    }
}

struct Record {
    change: Change,
    /// What the key held before.
    prev: Option<Vec<u8>>,
}

impl Record {
    fn bytes(&self) -> usize {
        64 + self.change.key.len()
            + self.change.value.as_ref().map_or(0, Vec::len)
            + self.prev.as_ref().map_or(0, Vec::len)
    }
}

struct Follower {
    tree: Tree,
    prefix: Vec<u8>,
    tx: mpsc::Sender<Change>,
}

impl Follower {
    fn wants(&self, change: &Change) -> bool {
        change.tree == self.tree && change.key.starts_with(&self.prefix)
    }
}

#[derive(Default)]
struct State {
    revision: Revision,
    /// Reads at revisions from this one on are answered; older ones are compacted.
    oldest: Revision,
    history: VecDeque<Record>,
    history_bytes: usize,
    followers: Vec<Follower>,
}

pub struct Journaled<E> {
    engine: E,
    state: Mutex<State>,
    /// `state.revision`, readable without the lock.
    revision: AtomicU64,
}

impl<E: Engine> Journaled<E> {
    pub fn new(engine: E) -> Self {
        Journaled {
            engine,
            state: Mutex::new(State::default()),
            revision: AtomicU64::new(0),
        }
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn commit_now(&self, txn: Txn) -> Result<Outcome, StoreError> {
        let mut state = self.lock();
        let mut current = Vec::with_capacity(txn.compares.len());
        let mut holds = true;
        for compare in &txn.compares {
            let value = self.engine.get(compare.tree, &compare.key)?;
            holds &= compare.expect.holds_bytes(value.as_deref());
            current.push(value);
        }
        if !holds {
            // Versions are made only for the answer to a conflict.
            let found = current.into_iter().map(|v| v.map(Versioned::new));
            return Ok(Outcome::Conflict(found.collect()));
        }
        if txn.writes.is_empty() {
            return Ok(Outcome::Committed(state.revision));
        }
        let prevs = self.engine.apply(&txn.writes)?;
        state.revision += 1;
        let revision = state.revision;
        self.revision.store(revision, Ordering::Release);
        for (write, prev) in txn.writes.into_iter().zip(prevs) {
            let change = Change {
                revision,
                tree: write.tree,
                key: write.key,
                value: write.value,
            };
            // A follower whose buffer is full has fallen behind: dropping its sender
            // ends its watch once it has read what is buffered. One whose watch was
            // dropped goes too.
            state.followers.retain(|f| {
                !f.tx.is_closed() && (!f.wants(&change) || f.tx.try_send(change.clone()).is_ok())
            });
            let record = Record { change, prev };
            state.history_bytes += record.bytes();
            state.history.push_back(record);
        }
        while state.history_bytes > HISTORY_BYTES {
            let Some(record) = state.history.pop_front() else {
                break;
            };
            state.history_bytes -= record.bytes();
            state.oldest = state.oldest.max(record.change.revision);
        }
        Ok(Outcome::Committed(revision))
    }

    fn scan_now(&self, range: Range<'_>) -> Result<Page, StoreError> {
        let state = self.lock();
        let at = range.at.unwrap_or(state.revision).min(state.revision);
        if at < state.oldest {
            return Err(StoreError::Compacted {
                asked: at,
                oldest: state.oldest,
            });
        }
        let in_range = |tree: Tree, key: &[u8]| {
            tree == range.tree
                && key.starts_with(range.prefix)
                && range.after.is_none_or(|after| key > after)
        };
        // What each key changed since `at` held then: the value its first later
        // change replaced.
        let mut then: HashMap<&[u8], Option<&Vec<u8>>> = HashMap::new();
        for record in state.history.iter().rev() {
            if record.change.revision <= at {
                break;
            }
            if in_range(record.change.tree, &record.change.key) {
                then.insert(&record.change.key, record.prev.as_ref());
            }
        }
        let want = range.limit.saturating_add(then.len()).saturating_add(1);
        let now = self
            .engine
            .range(range.tree, range.prefix, range.after, want)?;
        let engine_has_more = now.len() >= want;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (key, value) in now {
            if !then.contains_key(key.as_slice()) {
                merged.insert(key, value);
            }
        }
        for (key, value) in then {
            if let Some(value) = value {
                merged.insert(key.to_vec(), value.clone());
            }
        }
        let more = engine_has_more || merged.len() > range.limit;
        Ok(Page {
            entries: merged.into_iter().take(range.limit).collect(),
            revision: at,
            more,
        })
    }

    fn watch_now(&self, tree: Tree, prefix: &[u8], from: Revision) -> Result<Watch, StoreError> {
        let mut state = self.lock();
        if from < state.oldest {
            return Err(StoreError::Compacted {
                asked: from,
                oldest: state.oldest,
            });
        }
        let follower = |tx| Follower {
            tree,
            prefix: prefix.to_vec(),
            tx,
        };
        let backlog: Vec<&Record> = state
            .history
            .iter()
            .filter(|r| r.change.revision > from)
            .collect();
        let (tx, changes) = mpsc::channel(WATCH_BUFFER + backlog.len());
        let follower = follower(tx);
        for record in backlog {
            if follower.wants(&record.change) {
                // Cannot fail: the channel has room for the whole backlog.
                let _ = follower.tx.try_send(record.change.clone());
            }
        }
        state.followers.push(follower);
        Ok(Watch { changes })
    }
}

impl<E: Engine> Store for Journaled<E> {
    fn get<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Versioned>> {
        let found = self.engine.get(tree, key).map(|v| v.map(Versioned::new));
        Box::pin(async move { found })
    }

    fn value<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        // No version wanted: no digest made.
        let found = self.engine.get(tree, key);
        Box::pin(async move { found })
    }

    fn scan<'a>(&'a self, range: Range<'a>) -> StoreFuture<'a, Page> {
        let page = self.scan_now(range);
        Box::pin(async move { page })
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Outcome> {
        let outcome = self.commit_now(txn);
        Box::pin(async move { outcome })
    }

    fn watch<'a>(&'a self, tree: Tree, prefix: &'a [u8], from: Revision) -> StoreFuture<'a, Watch> {
        let watch = self.watch_now(tree, prefix, from);
        Box::pin(async move { watch })
    }

    fn revision(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }

    fn count(&self, tree: Tree) -> StoreFuture<'_, u64> {
        let count = self.engine.count(tree);
        Box::pin(async move { count })
    }

    fn last_key(&self, tree: Tree) -> StoreFuture<'_, Option<Vec<u8>>> {
        let last = self.engine.last_key(tree);
        Box::pin(async move { last })
    }

    fn flush(&self) -> FlushFuture<'_> {
        self.engine.flush()
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.engine.disk_bytes()
    }
}
