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

use super::{Entry, FlushFuture, Store, StoreError, Swap, Tree};
use crate::crypto::random_below;

/// What to break; shared with the test, which changes it while the daemon runs.
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Writes (compare-and-swap) to these trees fail.
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

    fn check(&self, write_to: Option<Tree>) -> Result<(), StoreError> {
        let latency = self.latency_us.load(Ordering::Relaxed);
        if latency > 0 {
            std::thread::sleep(Duration::from_micros(latency));
        }
        let tree_fails = write_to.is_some_and(|tree| {
            self.failing_writes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&tree)
        });
        let ppm = u64::from(self.failure_ppm.load(Ordering::Relaxed));
        if tree_fails || (ppm > 0 && random_below(1_000_000) < ppm) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Io(std::io::Error::other("injected fault")));
        }
        Ok(())
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

impl Store for FaultyStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.plan.check(None)?;
        self.inner.get(tree, key)
    }

    fn compare_and_swap(
        &self,
        tree: Tree,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Swap, StoreError> {
        self.plan.check(Some(tree))?;
        self.inner.compare_and_swap(tree, key, expected, new)
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.plan.check(None)?;
        self.inner.scan(tree, prefix, after, limit)
    }

    fn count(&self, tree: Tree) -> Result<u64, StoreError> {
        self.plan.check(None)?;
        self.inner.count(tree)
    }

    fn last_key(&self, tree: Tree) -> Result<Option<Vec<u8>>, StoreError> {
        self.plan.check(None)?;
        self.inner.last_key(tree)
    }

    fn flush(&self) -> FlushFuture<'_> {
        match self.plan.check(None) {
            Ok(()) => self.inner.flush(),
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }
}
