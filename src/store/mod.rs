//! Storage: a small key-value trait the domain is written against, and its sled
//! implementation. Values are opaque bytes here; encryption happens above this layer,
//! so nothing in `store/` ever sees a plaintext secret or a protobuf type.

mod faults;
pub mod mark;
mod sled_store;

use std::{future::Future, pin::Pin};

pub use faults::{FaultPlan, FaultyStore};
pub use sled_store::SledStore;

/// The named key spaces. Each maps to one sled tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the storage engine failed: {0}")]
    Engine(String),
    #[error("the data directory is in use by another credvault process")]
    Locked,
    /// The engine read bytes whose checksum failed.
    #[error("the store is damaged: {0}")]
    Corrupted(String),
    /// The store recovered fewer group commits than were acknowledged: its log was
    /// damaged, and what was written after the damage is gone.
    #[error(
        "the store lost acknowledged writes: the write mark file says {acknowledged} group commits were made durable, the store recovered {recovered}"
    )]
    LostWrites { acknowledged: u64, recovered: u64 },
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
}

/// The outcome of a compare-and-swap that did not fail outright.
#[derive(Debug, PartialEq, Eq)]
pub enum Swap {
    Done,
    /// The stored value was not the expected one; here is what it is now.
    Conflict {
        current: Option<Vec<u8>>,
    },
}

pub type Entry = (Vec<u8>, Vec<u8>);
pub type FlushFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// What credvault needs from a storage engine. Writes become durable only once a later
/// [`Store::flush`] has completed; callers await it before acknowledging a write.
pub trait Store: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Atomically replaces `expected` by `new` (`None` meaning absent on either side).
    fn compare_and_swap(
        &self,
        tree: Tree,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Swap, StoreError>;

    /// Up to `limit` entries whose key starts with `prefix` and sorts after `after`, in
    /// key order.
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// How many entries the tree holds (walks it; for progress reports, not hot paths).
    fn count(&self, tree: Tree) -> Result<u64, StoreError>;

    /// The greatest key in the tree, if any.
    fn last_key(&self, tree: Tree) -> Result<Option<Vec<u8>>, StoreError>;

    /// Makes every write that completed before this call durable. Concurrent callers
    /// share one flush.
    fn flush(&self) -> FlushFuture<'_>;
}
