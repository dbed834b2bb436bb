//! Storage: the seam every backend implements, and the backends — sled, the embedded
//! default; etcd, shared by several processes; and an in-memory one for tests. Values
//! are opaque bytes here; sealing happens above this layer, so nothing in `store/` sees
//! a plaintext secret or a protobuf type.
//!
//! The seam is shaped after what both a local engine and etcd offer, so that each maps
//! onto it without pretending:
//!
//! - [`Store::get`] and [`Store::scan`] read; a scan page can be read **at** a
//!   revision, so that a listing spread over many pages sees one point in time.
//! - [`Store::commit`] runs a [`Txn`]: compares on several keys (absent, value,
//!   version), then puts and deletes on several keys, all or nothing. On conflict it
//!   answers what the compared keys hold now.
//! - [`Store::watch`] follows a key prefix from a revision: every change after it, in
//!   commit order. A watch that falls behind, or asks for history the store no longer
//!   keeps, ends with an error; the follower reads afresh and watches again.
//! - [`Store::flush`] makes every committed write durable. What "durable" costs is the
//!   backend's business: sled groups the writes of concurrent callers into one flush,
//!   a quorum store is durable at commit.

pub mod etcd;
pub mod faults;
mod journal;
pub mod memory;
mod sled;
pub mod split;
mod txn;

use std::{future::Future, path::Path, pin::Pin, sync::Arc};

pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use faults::{FaultPlan, FaultyStore};
pub use journal::{Change, Watch};
pub use memory::MemoryStore;
pub use sled::{SledStore, mark};
pub use txn::{Compare, Expect, Outcome, Redacted, Txn, Version, Versioned, Write, version_of};

/// Opens the embedded store in `dir` (created when missing).
pub fn open_embedded(dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SledStore::open(dir)?))
}

/// The named key spaces. Each is one sled tree, or one key prefix on a shared store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Vault-wide records: format version, key check.
    Meta,
    /// Upstream accounts, keyed by `provider \0 email`.
    Accounts,
    /// credvault's callers (sealed records), keyed by caller id.
    Callers,
    /// Index: caller email -> caller id.
    CallerEmails,
    /// Index: API key id (the public part of a key) -> caller id.
    ApiKeys,
    /// Job leases (sealed records), keyed by lease id.
    Leases,
    /// The audit trail (sealed events), keyed by big-endian sequence number.
    Audit,
}

impl Tree {
    pub const ALL: [Tree; 7] = [
        Tree::Meta,
        Tree::Accounts,
        Tree::Callers,
        Tree::CallerEmails,
        Tree::ApiKeys,
        Tree::Leases,
        Tree::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Accounts => "accounts",
            Tree::Callers => "callers",
            Tree::CallerEmails => "caller_emails",
            Tree::ApiKeys => "api_keys",
            Tree::Leases => "leases",
            Tree::Audit => "audit",
        }
    }
}

/// How records that name a person (an account's email, a caller's) are keyed and
/// written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// By email, with account metadata readable: the embedded store, on the node's own
    /// disk (the layout it always had).
    Emails,
    /// By keyed fingerprint (HMAC-SHA256 under the vault's stored fingerprint key),
    /// with account metadata sealed: a shared store (etcd), which never sees an email.
    Fingerprints,
}

/// The vault-wide records of [`Tree::Meta`], by key (what they hold is the vault's
/// business; re-keying walks them too).
pub mod meta {
    /// The store format, as decimal text.
    pub const FORMAT_KEY: &[u8] = b"format";
    /// A sealed known plaintext that tells a wrong master key at open.
    pub const KEY_CHECK_KEY: &[u8] = b"key-check";
    /// The sealing context of the key check.
    pub const KEY_CHECK_CONTEXT: &[u8] = b"credvault/meta/key-check/v1";
    /// The sealed HMAC keys (API-key and secret MACs).
    pub const HMAC_KEYS_KEY: &[u8] = b"hmac-keys";
}

/// A point in the store's history: every commit makes a new, greater one. Revisions
/// order the changes a watch delivers and name the point a scan reads at.
pub type Revision = u64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the storage engine failed: {0}")]
    Engine(String),
    #[error("the data directory is in use by another credvault process")]
    Locked,
    /// A shared store could not be reached, or did not answer in time. Nothing may be
    /// granted on what this node last knew.
    #[error("the shared store is unavailable: {0}")]
    Unavailable(String),
    /// The engine read bytes whose checksum failed.
    #[error("the store is damaged: {0}")]
    Corrupted(String),
    /// The store recovered fewer group commits than were acknowledged: its log was
    /// damaged, and what was written after the damage is gone.
    #[error(
        "the store lost acknowledged writes: the write mark file says {acknowledged} group commits were made durable, the store recovered {recovered}"
    )]
    LostWrites { acknowledged: u64, recovered: u64 },
    /// A scan or watch asked for a revision older than the history the store keeps.
    #[error("revision {asked} is no longer kept (the oldest kept is {oldest}); read afresh")]
    Compacted { asked: Revision, oldest: Revision },
    /// A watch ended: its follower fell behind, or the store closed.
    #[error("the watch ended; read afresh and watch again")]
    WatchEnded,
}

impl StoreError {
    /// The data on disk is damaged or incomplete: serving it could answer stale or
    /// missing records (a revoked token that works again), so it must not be served.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupted(_) | StoreError::LostWrites { .. }
        )
    }

    /// A shared store that did not answer: a retry later, or another member, may.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The outcome of a single-key compare-and-swap that did not fail outright.
#[derive(PartialEq, Eq)]
pub enum Swap {
    Done,
    /// The stored value was not the expected one; here is what it is now.
    Conflict {
        current: Option<Vec<u8>>,
    },
}

impl std::fmt::Debug for Swap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Swap::Done => f.write_str("Done"),
            Swap::Conflict { current } => f
                .debug_struct("Conflict")
                .field("current", &current.as_deref().map(Redacted))
                .finish(),
        }
    }
}

pub type Entry = (Vec<u8>, Vec<u8>);

/// One page of a scan, read at one revision.
#[derive(Default)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// The revision the page was read at: pass it to the next page's scan to read the
    /// whole listing at one point, or to [`Store::watch`] to follow on from it.
    pub revision: Revision,
    /// More entries follow the last one.
    pub more: bool,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("entries", &self.entries.len())
            .field("revision", &self.revision)
            .field("more", &self.more)
            .finish()
    }
}

/// Where a scan starts and how much it reads.
#[derive(Clone, Copy)]
pub struct Range<'a> {
    pub tree: Tree,
    /// Only keys that start with this.
    pub prefix: &'a [u8],
    /// Only keys that sort after this one (the last key of the previous page).
    pub after: Option<&'a [u8]>,
    pub limit: usize,
    /// Read as the store was at this revision; `None` reads now.
    pub at: Option<Revision>,
}

impl std::fmt::Debug for Range<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Range")
            .field("tree", &self.tree)
            .field("prefix", &Redacted(self.prefix))
            .field("after", &self.after.map(Redacted))
            .field("limit", &self.limit)
            .field("at", &self.at)
            .finish()
    }
}

impl<'a> Range<'a> {
    /// The first `limit` entries under `prefix`, now.
    pub fn new(tree: Tree, prefix: &'a [u8], limit: usize) -> Self {
        Range {
            tree,
            prefix,
            after: None,
            limit,
            at: None,
        }
    }

    pub fn after(self, after: Option<&'a [u8]>) -> Self {
        Range { after, ..self }
    }

    pub fn at(self, at: Option<Revision>) -> Self {
        Range { at, ..self }
    }
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;
pub type FlushFuture<'a> = StoreFuture<'a, ()>;

/// What credvault needs from a storage engine. Writes are visible once committed and
/// durable once a later [`Store::flush`] has completed; callers await it before they
/// acknowledge a write.
pub trait Store: Send + Sync + 'static {
    /// The value under `key` and its version.
    fn get<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Versioned>>;

    /// The value under `key`, without its version (which may cost a backend work).
    fn value<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { Ok(self.get(tree, key).await?.map(|v| v.value)) })
    }

    /// Up to `range.limit` entries in key order.
    fn scan<'a>(&'a self, range: Range<'a>) -> StoreFuture<'a, Page>;

    /// Runs `txn` all or nothing.
    fn commit(&self, txn: Txn) -> StoreFuture<'_, Outcome>;

    /// Every change under `prefix` in `tree` after revision `from`, in commit order.
    /// [`StoreError::Compacted`] when the store no longer keeps what follows `from`.
    fn watch<'a>(&'a self, tree: Tree, prefix: &'a [u8], from: Revision) -> StoreFuture<'a, Watch>;

    /// The revision of the last commit.
    fn revision(&self) -> Revision;

    /// How many entries the tree holds (walks it; for progress reports, not hot paths).
    fn count(&self, tree: Tree) -> StoreFuture<'_, u64>;

    /// The greatest key in the tree, if any.
    fn last_key(&self, tree: Tree) -> StoreFuture<'_, Option<Vec<u8>>>;

    /// Makes every write committed before this call durable. Concurrent callers share
    /// one flush.
    fn flush(&self) -> FlushFuture<'_>;

    /// Bytes the store takes on this node's disk, when it keeps any.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}

/// Shorthands over [`Store`] for the common one-key cases.
pub trait StoreExt: Store {
    /// Replaces `expected` by `new` under `key` (`None` meaning absent on either side).
    fn swap<'a>(
        &'a self,
        tree: Tree,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
    ) -> StoreFuture<'a, Swap> {
        Box::pin(async move {
            let txn = Txn::new()
                .expect(tree, key, Expect::from_value(expected))
                .write(tree, key, new);
            Ok(match self.commit(txn).await? {
                Outcome::Committed(_) => Swap::Done,
                Outcome::Conflict(mut current) => Swap::Conflict {
                    current: current.pop().flatten().map(|v| v.value),
                },
            })
        })
    }

    /// Every entry of `tree` under `prefix` after `after`, up to `limit`, now.
    fn entries<'a>(
        &'a self,
        tree: Tree,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Entry>> {
        Box::pin(async move {
            let range = Range::new(tree, prefix, limit).after(after);
            Ok(self.scan(range).await?.entries)
        })
    }
}

impl<S: Store + ?Sized> StoreExt for S {}
