//! The embedded default: sled 0.34, one tree per [`Tree`], with group commit.

use std::{
    collections::HashMap,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use super::{Entry, FlushFuture, Store, StoreError, Swap, Tree};

pub struct SledStore {
    db: sled::Db,
    trees: HashMap<Tree, sled::Tree>,
    flush: GroupCommit,
}

/// sled's page cache (its default is 1 GiB, which a long-running daemon would fill
/// with audit pages it never reads again).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long `open` waits for a lock that this process may still hold: sled's
/// background threads release a dropped database a moment after the drop, so a command
/// that closes and reopens the store (restore, then its start-up check) can find it
/// still locked. Another process's lock outlasts this and is reported.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(CACHE_BYTES);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open().map_err(open_error) {
                Err(StoreError::Locked) if std::time::Instant::now() < deadline => {
                    std::thread::park_timeout(std::time::Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        let mut trees = HashMap::new();
        for tree in Tree::ALL {
            trees.insert(tree, db.open_tree(tree.name()).map_err(engine)?);
        }
        Ok(Self {
            db,
            trees,
            flush: GroupCommit::default(),
        })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[&tree]
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(engine)
    }

    /// Makes every write durable now, for callers outside an async runtime (offline
    /// maintenance commands).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(engine)
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(engine)?
            .map(|v| v.to_vec()))
    }

    fn compare_and_swap(
        &self,
        tree: Tree,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Swap, StoreError> {
        let outcome = self
            .tree(tree)
            .compare_and_swap(key, expected, new)
            .map_err(engine)?;
        Ok(match outcome {
            Ok(()) => {
                self.flush.wrote();
                Swap::Done
            }
            Err(conflict) => Swap::Conflict {
                current: conflict.current.map(|v| v.to_vec()),
            },
        })
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let tree = self.tree(tree);
        let iter = match after {
            Some(after) => tree
                .range::<&[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => tree.range::<&[u8], _>(prefix..),
        };
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(engine)?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn count(&self, tree: Tree) -> Result<u64, StoreError> {
        Ok(self.tree(tree).len() as u64)
    }

    fn last_key(&self, tree: Tree) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .last()
            .map_err(engine)?
            .map(|(key, _)| key.to_vec()))
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(self.flush.flush(&self.db))
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Last chance for writes that nobody awaited a flush for.
        if let Err(error) = self.db.flush() {
            tracing::error!(%error, "final flush of the store failed");
        }
    }
}

/// Group commit: every write bumps `written`; a flush makes everything written so far
/// durable and records how far it got, so a writer whose write is already covered by a
/// finished (or running) flush does not start another one.
#[derive(Default)]
struct GroupCommit {
    written: AtomicU64,
    flushed: AtomicU64,
    running: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    fn wrote(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    async fn flush(&self, db: &sled::Db) -> Result<(), StoreError> {
        let mine = self.written.load(Ordering::SeqCst);
        if self.flushed.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let _running = self.running.lock().await;
        // While we waited, the flush that held the lock may have covered our write.
        if self.flushed.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let covers = self.written.load(Ordering::SeqCst);
        db.flush_async().await.map_err(engine)?;
        self.flushed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

fn engine(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(io) => StoreError::Io(io),
        other => StoreError::Engine(other.to_string()),
    }
}

fn open_error(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => StoreError::Locked,
        sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked,
        other => engine(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cas_scan_and_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .compare_and_swap(Tree::Accounts, b"p\0a", None, Some(b"1"))
                .unwrap(),
            Swap::Done
        );
        assert_eq!(
            store
                .compare_and_swap(Tree::Accounts, b"p\0a", None, Some(b"2"))
                .unwrap(),
            Swap::Conflict {
                current: Some(b"1".to_vec())
            }
        );
        store
            .compare_and_swap(Tree::Accounts, b"p\0b", None, Some(b"3"))
            .unwrap();
        store
            .compare_and_swap(Tree::Accounts, b"q\0a", None, Some(b"4"))
            .unwrap();
        store.flush().await.unwrap();

        let keys = |entries: Vec<Entry>| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(store.scan(Tree::Accounts, b"p\0", None, 10).unwrap()),
            vec![b"p\0a".to_vec(), b"p\0b".to_vec()]
        );
        assert_eq!(
            keys(
                store
                    .scan(Tree::Accounts, b"p\0", Some(b"p\0a"), 10)
                    .unwrap()
            ),
            vec![b"p\0b".to_vec()]
        );
        assert_eq!(
            keys(store.scan(Tree::Accounts, b"", None, 2).unwrap()).len(),
            2
        );
        assert_eq!(store.get(Tree::Meta, b"p\0a").unwrap(), None);
    }

    #[tokio::test]
    async fn concurrent_flushes_share_work() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = i.to_be_bytes();
                store
                    .compare_and_swap(Tree::Accounts, &key, None, Some(b"v"))
                    .unwrap();
                store.flush().await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let flushed = store.flush.flushed.load(Ordering::SeqCst);
        assert_eq!(flushed, 32, "every write is covered by a completed flush");
    }
}
