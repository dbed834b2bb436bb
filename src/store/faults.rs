//! A fault-injecting wrapper over any [`Store`], for tests: it fails chosen trees, or a
//! share of all operations, with an I/O error, and can add latency. The daemon never
//! builds one; tests reach it through `Vault::open_with_faults`.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{
    FlushFuture, Outcome, Page, Range, Revision, Store, StoreError, StoreFuture, Tree, Txn,
    Versioned, Watch,
};
use crate::crypto::random_below;

/// What to break; shared with the test, which changes it while the daemon runs.
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Transactions that write to these trees fail.
    failing_writes: Mutex<HashSet<Tree>>,
    /// Share of every operation that fails, in parts per million.
    failure_ppm: AtomicU32,
    /// Added to every operation, in microseconds.
    latency_us: AtomicU64,
    /// Operations failed so far.
    injected: AtomicU64,
}

impl FaultPlan {
    pub fn fail_writes(&self, tree: Tree, fail: bool) {
        let mut trees = self
            .failing_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if fail {
            trees.insert(tree);
        } else {
            trees.remove(&tree);
        }
    }

    /// Fails this share (0.0 to 1.0) of all operations.
    pub fn fail_share(&self, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        self.failure_ppm.store(ppm, Ordering::Relaxed);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Latency and the random share of failures, for any operation.
    fn check(&self) -> Result<(), StoreError> {
        let latency = self.latency_us.load(Ordering::Relaxed);
        if latency > 0 {
            std::thread::sleep(Duration::from_micros(latency));
        }
        let ppm = u64::from(self.failure_ppm.load(Ordering::Relaxed));
        if ppm > 0 && random_below(1_000_000) < ppm {
            return Err(self.injected_fault());
        }
        Ok(())
    }

    /// A write to a tree chosen to fail.
    fn check_tree(&self, tree: Tree) -> Result<(), StoreError> {
        let fails = self
            .failing_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&tree);
        if fails {
            return Err(self.injected_fault());
        }
        Ok(())
    }

    fn injected_fault(&self) -> StoreError {
        self.injected.fetch_add(1, Ordering::Relaxed);
        StoreError::Io(std::io::Error::other("injected fault"))
    }
}

pub struct FaultyStore {
    inner: Arc<dyn Store>,
    plan: Arc<FaultPlan>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }
}

impl FaultyStore {
    fn failed<'a, T: Send + 'a>(error: StoreError) -> StoreFuture<'a, T> {
        Box::pin(async move { Err(error) })
    }
}

impl Store for FaultyStore {
    fn get<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Versioned>> {
        match self.plan.check() {
            Ok(()) => self.inner.get(tree, key),
            Err(error) => Self::failed(error),
        }
    }

    fn value<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        match self.plan.check() {
            Ok(()) => self.inner.value(tree, key),
            Err(error) => Self::failed(error),
        }
    }

    fn scan<'a>(&'a self, range: Range<'a>) -> StoreFuture<'a, Page> {
        match self.plan.check() {
            Ok(()) => self.inner.scan(range),
            Err(error) => Self::failed(error),
        }
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Outcome> {
        let mut checked = self.plan.check();
        for write in &txn.writes {
            checked = checked.and_then(|()| self.plan.check_tree(write.tree));
        }
        match checked {
            Ok(()) => self.inner.commit(txn),
            Err(error) => Self::failed(error),
        }
    }

    fn watch<'a>(&'a self, tree: Tree, prefix: &'a [u8], from: Revision) -> StoreFuture<'a, Watch> {
        match self.plan.check() {
            Ok(()) => self.inner.watch(tree, prefix, from),
            Err(error) => Self::failed(error),
        }
    }

    fn revision(&self) -> Revision {
        self.inner.revision()
    }

    fn count(&self, tree: Tree) -> StoreFuture<'_, u64> {
        match self.plan.check() {
            Ok(()) => self.inner.count(tree),
            Err(error) => Self::failed(error),
        }
    }

    fn last_key(&self, tree: Tree) -> StoreFuture<'_, Option<Vec<u8>>> {
        match self.plan.check() {
            Ok(()) => self.inner.last_key(tree),
            Err(error) => Self::failed(error),
        }
    }

    fn flush(&self) -> FlushFuture<'_> {
        match self.plan.check() {
            Ok(()) => self.inner.flush(),
            Err(error) => Self::failed(error),
        }
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.inner.disk_bytes()
    }
}
