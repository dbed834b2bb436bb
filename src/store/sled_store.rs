//! The embedded default: sled 0.34, one tree per [`Tree`], with group commit.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{Entry, FlushFuture, Store, StoreError, Swap, Tree, mark::MarkFile};

/// sled's own copy of the write mark (see [`super::mark`]): a tree outside [`Tree::ALL`],
/// so backups, restores and re-keying never carry it.
const MARK_TREE: &str = "write_mark";
const MARK_KEY: &[u8] = b"mark";

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
        let marks = db.open_tree(MARK_TREE).map_err(engine)?;
        let recovered = match marks.get(MARK_KEY).map_err(engine)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupted("the write mark is not 8 bytes".into()))?,
            ),
            None => 0,
        };
        let (file, acknowledged) = MarkFile::open(dir)?;
        if acknowledged > recovered {
            return Err(StoreError::LostWrites {
                acknowledged,
                recovered,
            });
        }
        Ok(Self {
            db,
            trees,
            flush: GroupCommit {
                written: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                running: tokio::sync::Mutex::new(()),
                marks,
                mark: Mutex::new(recovered),
                file: Arc::new(file),
            },
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
        let mark = self.flush.next_mark()?;
        self.db.flush().map_err(engine)?;
        Ok(self.flush.file.write(mark)?)
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
/// finished (or running) flush does not start another one. Each flush also carries the
/// next write mark into sled and, once sled has it on disk, into the mark file.
struct GroupCommit {
    written: AtomicU64,
    flushed: AtomicU64,
    running: tokio::sync::Mutex<()>,
    marks: sled::Tree,
    /// The last mark written into sled; held while the next one is, so that sled's
    /// copy only ever grows.
    mark: Mutex<u64>,
    file: Arc<MarkFile>,
}

impl GroupCommit {
    fn wrote(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Writes the next mark into sled (not yet durable) and answers it.
    fn next_mark(&self) -> Result<u64, StoreError> {
        let mut mark = self.mark.lock().unwrap_or_else(|e| e.into_inner());
        let next = *mark + 1;
        self.marks
            .insert(MARK_KEY, &next.to_be_bytes())
            .map_err(engine)?;
        *mark = next;
        Ok(next)
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
        let mark = self.next_mark()?;
        db.flush_async().await.map_err(engine)?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.write(mark))
            .await
            .map_err(|error| StoreError::Io(std::io::Error::other(error)))??;
        self.flushed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

fn engine(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(io) => StoreError::Io(io),
        error @ sled::Error::Corruption { .. } => StoreError::Corrupted(error.to_string()),
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

    #[tokio::test]
    async fn a_store_that_recovered_fewer_commits_than_acknowledged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for (i, key) in [b"p\0a", b"p\0b"].into_iter().enumerate() {
            store
                .compare_and_swap(Tree::Accounts, key, None, Some(b"v"))
                .unwrap();
            store.flush().await.unwrap();
            assert_eq!(MarkFile::open(dir.path()).unwrap().1, i as u64 + 1);
        }
        drop(store);
        let store = SledStore::open(dir.path()).expect("a clean restart opens");
        drop(store);
        // What the mark file says was acknowledged, beyond what sled holds: as when
        // sled's recovery stops at a damaged message and drops the commits after it.
        let (file, _) = MarkFile::open(dir.path()).unwrap();
        file.write(7).unwrap();
        drop(file);
        match SledStore::open(dir.path()) {
            Err(error @ StoreError::LostWrites { .. }) => {
                assert!(error.is_damage());
                assert_eq!(
                    error.to_string(),
                    "the store lost acknowledged writes: the write mark file says 7 group commits were made durable, the store recovered 2"
                );
            }
            Err(other) => panic!("expected LostWrites, got {other}"),
            Ok(_) => panic!("a store that lost writes opened"),
        }
    }
}
