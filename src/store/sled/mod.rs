//! The embedded default: sled 0.34, one tree per [`Tree`], with group commit, under
//! the [`journal`](super::journal) that numbers commits and feeds watches.

pub mod mark;

use std::{
    collections::HashMap,
    ops::Bound,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ::sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{
    Entry, FlushFuture, StoreError, Tree, Write,
    journal::{Engine, Journaled},
};
use crate::rounds::Rounds;
use mark::MarkFile;

/// sled's own copy of the write mark (see [`mark`]): a tree outside [`Tree::ALL`], so
/// backups, restores and re-keying never carry it.
const MARK_TREE: &str = "write_mark";
const MARK_KEY: &[u8] = b"mark";

pub type SledStore = Journaled<SledEngine>;

pub struct SledEngine {
    db: ::sled::Db,
    trees: HashMap<Tree, ::sled::Tree>,
    flush: GroupCommit,
}

/// sled's page cache (its default is 1 GiB, which a long-running daemon would fill
/// with audit pages it never reads again). Accounts are listed from the in-memory
/// directory, so the cache only serves record reads; a miss is a read from the OS's
/// page cache. Measured with 100,000 accounts (`cargo bench --bench credentials`):
/// RSS 200 MiB at 64 MiB, 161 MiB at 16 MiB, 154 MiB at 8 MiB.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// How long `open` waits for a lock that this process may still hold: sled's
/// background threads release a dropped database a moment after the drop, so a command
/// that closes and reopens the store (restore, then its start-up check) can find it
/// still locked. Another process's lock outlasts this and is reported.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Journaled::new(SledEngine::open(dir)?))
    }

    /// Makes every write durable now, for callers outside an async runtime (offline
    /// maintenance commands).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let engine = self.engine();
        let mark = engine.flush.next_mark()?;
        engine.db.flush().map_err(engine_error)?;
        Ok(engine.flush.flusher.file.write(mark)?)
    }
}

impl SledEngine {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let config = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::LowSpace)
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
            trees.insert(tree, db.open_tree(tree.name()).map_err(engine_error)?);
        }
        let marks = db.open_tree(MARK_TREE).map_err(engine_error)?;
        let recovered = match marks.get(MARK_KEY).map_err(engine_error)? {
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
        let flusher = Flusher::start(db.clone(), Arc::new(file))?;
        Ok(Self {
            db,
            trees,
            flush: GroupCommit {
                written: AtomicU64::new(0),
                rounds: Rounds::default(),
                marks,
                mark: Mutex::new(recovered),
                flusher,
            },
        })
    }

    fn tree(&self, tree: Tree) -> &::sled::Tree {
        &self.trees[&tree]
    }
}

impl Engine for SledEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(engine_error)?
            .map(|v| v.to_vec()))
    }

    fn range(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for item in self.tree(tree).range::<&[u8], _>((start, Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(engine_error)?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, writes: &[Write]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let prevs = if let [write] = writes {
            let tree = self.tree(write.tree);
            let prev = match &write.value {
                Some(value) => tree.insert(write.key.as_slice(), value.as_slice()),
                None => tree.remove(write.key.as_slice()),
            }
            .map_err(engine_error)?;
            vec![prev.map(|v| v.to_vec())]
        } else {
            // Several keys, maybe in several trees: one sled transaction, so that a
            // crash keeps all of them or none.
            let mut involved: Vec<Tree> = writes.iter().map(|w| w.tree).collect();
            involved.sort();
            involved.dedup();
            let trees: Vec<::sled::Tree> = involved.iter().map(|t| self.tree(*t).clone()).collect();
            trees
                .as_slice()
                .transaction(|txs| {
                    let mut prevs = Vec::with_capacity(writes.len());
                    for write in writes {
                        let at = involved
                            .binary_search(&write.tree)
                            .expect("collected above");
                        let prev = match &write.value {
                            Some(value) => txs[at].insert(write.key.as_slice(), value.as_slice()),
                            None => txs[at].remove(write.key.as_slice()),
                        }?;
                        prevs.push(prev.map(|v| v.to_vec()));
                    }
                    Ok::<_, ConflictableTransactionError<()>>(prevs)
                })
                .map_err(|error| match error {
                    TransactionError::Storage(error) => engine_error(error),
                    TransactionError::Abort(()) => StoreError::Engine("transaction aborted".into()),
                })?
        };
        self.flush.wrote();
        Ok(prevs)
    }

    fn count(&self, tree: Tree) -> Result<u64, StoreError> {
        Ok(self.tree(tree).len() as u64)
    }

    fn last_key(&self, tree: Tree) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .last()
            .map_err(engine_error)?
            .map(|(key, _)| key.to_vec()))
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(self.flush.flush())
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }
}

impl Drop for SledEngine {
    fn drop(&mut self) {
        // Last chance for writes that nobody awaited a flush for.
        if let Err(error) = self.db.flush() {
            tracing::error!(%error, "final flush of the store failed");
        }
        self.flush.flusher.stop();
    }
}

/// The thread every group commit's flush runs on: sled's flush and then the write
/// mark's, one after the other without leaving it. (`flush_async` hands the flush to
/// sled's thread pool, which wakes every idle pool thread for each task, and the mark
/// then went to tokio's blocking pool: two more thread hand-offs per commit.)
struct Flusher {
    requests: Mutex<Option<std::sync::mpsc::Sender<FlushRequest>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    file: Arc<MarkFile>,
}

struct FlushRequest {
    mark: u64,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

impl Flusher {
    fn start(db: ::sled::Db, file: Arc<MarkFile>) -> Result<Self, StoreError> {
        let (requests, incoming) = std::sync::mpsc::channel::<FlushRequest>();
        let marks = file.clone();
        let thread = std::thread::Builder::new()
            .name("credvault-flush".into())
            .spawn(move || {
                for FlushRequest { mark, done } in incoming {
                    let flushed = db
                        .flush()
                        .map_err(engine_error)
                        .and_then(|_| Ok(marks.write(mark)?));
                    let _ = done.send(flushed);
                }
            })?;
        Ok(Self {
            requests: Mutex::new(Some(requests)),
            thread: Mutex::new(Some(thread)),
            file,
        })
    }

    /// Flushes sled, then writes `mark` to the mark file.
    async fn flush(&self, mark: u64) -> Result<(), StoreError> {
        let (done, flushed) = tokio::sync::oneshot::channel();
        let sent = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|requests| requests.send(FlushRequest { mark, done }).is_ok());
        if !sent {
            return Err(StoreError::Engine("the store is closed".into()));
        }
        flushed
            .await
            .map_err(|_| StoreError::Engine("the flush thread stopped".into()))?
    }

    /// Ends the thread once the flushes asked for are done (it holds the database).
    fn stop(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// Group commit: every write bumps `written`; a flush makes everything written so far
/// durable and says how far it got, so a writer whose write is already covered by a
/// finished (or running) flush does not start another one (see [`Rounds`]). Each flush
/// also carries the next write mark into sled and, once sled has it on disk, into the
/// mark file.
struct GroupCommit {
    written: AtomicU64,
    rounds: Rounds,
    marks: ::sled::Tree,
    /// The last mark written into sled; held while the next one is, so that sled's
    /// copy only ever grows.
    mark: Mutex<u64>,
    flusher: Flusher,
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
            .map_err(engine_error)?;
        *mark = next;
        Ok(next)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let mine = self.written.load(Ordering::SeqCst);
        self.rounds
            .until(
                |flushed| (flushed >= mine).then_some(Ok(())),
                || async {
                    let covers = self.written.load(Ordering::SeqCst);
                    let mark = self.next_mark()?;
                    self.flusher.flush(mark).await?;
                    Ok(covers)
                },
            )
            .await
    }

    #[cfg(test)]
    fn flushed(&self) -> u64 {
        self.rounds.covered()
    }
}

fn engine_error(error: ::sled::Error) -> StoreError {
    match error {
        ::sled::Error::Io(io) => StoreError::Io(io),
        error @ ::sled::Error::Corruption { .. } => StoreError::Corrupted(error.to_string()),
        other => StoreError::Engine(other.to_string()),
    }
}

fn open_error(error: ::sled::Error) -> StoreError {
    match error {
        ::sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => StoreError::Locked,
        ::sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked,
        other => engine_error(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreExt, Swap};

    #[tokio::test]
    async fn concurrent_flushes_share_work() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = i.to_be_bytes();
                let swapped = store.swap(Tree::Accounts, &key, None, Some(b"v")).await;
                assert_eq!(swapped.unwrap(), Swap::Done);
                store.flush().await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let flushed = store.engine().flush.flushed();
        assert_eq!(flushed, 32, "every write is covered by a completed flush");
    }

    #[tokio::test]
    async fn a_store_that_recovered_fewer_commits_than_acknowledged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for (i, key) in [b"p\0a", b"p\0b"].into_iter().enumerate() {
            let swapped = store.swap(Tree::Accounts, key, None, Some(b"v")).await;
            assert_eq!(swapped.unwrap(), Swap::Done);
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
