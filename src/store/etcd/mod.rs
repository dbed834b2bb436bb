//! The shared backend: etcd (v3 API), for several credvault processes on one truth.
//!
//! Every tree is a key prefix under the configured one: `{prefix}/{tree}/{key}`. The
//! seam maps onto etcd without emulation:
//!
//! - a value's version is its modification revision;
//! - a transaction is one etcd txn: `Absent` compares the key's version with 0, `Value`
//!   its bytes, `Version` its modification revision; on conflict the else branch reads
//!   every compared key, so the answer is what they held at that same revision;
//! - a scan is a range (`at` is the range's revision; etcd answers a compacted one
//!   with an error that becomes [`StoreError::Compacted`]);
//! - a watch is an etcd watch from the revision after `from`, pumped into a bounded
//!   channel: a follower that falls behind is ended, as on the local backends;
//! - a commit is durable once etcd answers it (a quorum has it), so `flush` has
//!   nothing to do.
//!
//! Requests stay well under etcd's 1.5 MiB limit (the vault's records are a few KiB;
//! scans are paged by their callers), and answers under tonic's 4 MiB by the same
//! paging.

mod client;
pub mod lock;
pub mod slots;
mod watch;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, TxnOp, TxnOpResponse};

pub use client::{EtcdOptions, EtcdTls};

use super::{
    Entry, FlushFuture, Outcome, Page, Range, Revision, Store, StoreError, StoreFuture, Tree, Txn,
    Versioned, Watch, txn::Expect,
};
use client::Connection;

/// A [`Store`] on an etcd cluster.
pub struct EtcdStore {
    connection: Arc<Connection>,
    /// `{prefix}/`: every key of this vault starts with it.
    root: Vec<u8>,
    /// The greatest revision any answer carried.
    revision: Arc<AtomicU64>,
}

impl EtcdStore {
    /// Connects to the cluster and reads its current revision.
    pub async fn connect(options: &EtcdOptions) -> Result<Self, StoreError> {
        let connection = Arc::new(Connection::open(options).await?);
        let mut root = options.prefix.trim_end_matches('/').as_bytes().to_vec();
        root.push(b'/');
        let store = EtcdStore {
            connection,
            root,
            revision: Arc::new(AtomicU64::new(0)),
        };
        // The current revision, from any read's header.
        store.count(Tree::Meta).await?;
        Ok(store)
    }

    fn tree_root(&self, tree: Tree) -> Vec<u8> {
        let mut out = self.root.clone();
        out.extend_from_slice(tree.name().as_bytes());
        out.push(b'/');
        out
    }

    fn full_key(&self, tree: Tree, key: &[u8]) -> Vec<u8> {
        let mut out = self.tree_root(tree);
        out.extend_from_slice(key);
        out
    }

    fn seen(&self, header: Option<&etcd_client::ResponseHeader>) -> Revision {
        let revision = header.map_or(0, |h| h.revision().max(0) as Revision);
        self.revision.fetch_max(revision, Ordering::SeqCst);
        revision
    }

    /// The compare that checks `expect` on the etcd key `key`.
    fn compare(key: Vec<u8>, expect: &Expect) -> Compare {
        match expect {
            Expect::Absent => Compare::version(key, CompareOp::Equal, 0),
            Expect::Value(value) => Compare::value(key, CompareOp::Equal, value.clone()),
            Expect::Version(version) => {
                Compare::mod_revision(key, CompareOp::Equal, *version as i64)
            }
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a
/// prefix); empty (meaning "to the end") when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn versioned(kv: &etcd_client::KeyValue) -> Versioned {
    Versioned {
        value: kv.value().to_vec(),
        version: kv.mod_revision().max(0) as u64,
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Versioned>> {
        Box::pin(async move {
            let full = self.full_key(tree, key);
            let answer = self.connection.range(&full, None).await?;
            self.seen(answer.header());
            Ok(answer.kvs().first().map(versioned))
        })
    }

    fn scan<'a>(&'a self, range: Range<'a>) -> StoreFuture<'a, Page> {
        Box::pin(async move {
            let mut start = self.full_key(range.tree, range.prefix);
            let end = prefix_end(&start);
            if let Some(after) = range.after {
                let mut next = self.full_key(range.tree, after);
                next.push(0);
                start = start.max(next);
            }
            let mut options = GetOptions::new()
                .with_range(end)
                .with_limit(range.limit.max(1) as i64);
            if let Some(at) = range.at {
                options = options.with_revision(at as i64);
            }
            let answer =
                self.connection
                    .range(&start, Some(options))
                    .await
                    .map_err(|error| match (error, range.at) {
                        (StoreError::Compacted { oldest, .. }, Some(asked)) => {
                            StoreError::Compacted { asked, oldest }
                        }
                        (error, _) => error,
                    });
            let answer = match answer {
                Err(StoreError::Compacted { asked, .. }) => {
                    let oldest = self.connection.oldest_revision(&self.root).await?;
                    return Err(StoreError::Compacted { asked, oldest });
                }
                other => other?,
            };
            let revision = self.seen(answer.header());
            let tree_root = self.tree_root(range.tree);
            let entries: Vec<Entry> = answer
                .kvs()
                .iter()
                .map(|kv| {
                    let key = kv
                        .key()
                        .strip_prefix(tree_root.as_slice())
                        .unwrap_or_default();
                    (key.to_vec(), kv.value().to_vec())
                })
                .collect();
            Ok(Page {
                entries,
                revision: range.at.unwrap_or(revision),
                more: answer.more(),
            })
        })
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Outcome> {
        Box::pin(async move {
            let compares: Vec<Compare> = txn
                .compares
                .iter()
                .map(|c| Self::compare(self.full_key(c.tree, &c.key), &c.expect))
                .collect();
            // etcd refuses two operations on one key in a txn: the last write wins, as
            // it would on the local backends.
            let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            for write in &txn.writes {
                let key = self.full_key(write.tree, &write.key);
                writes.retain(|(k, _)| *k != key);
                writes.push((key, write.value.clone()));
            }
            let then: Vec<TxnOp> = writes
                .into_iter()
                .map(|(key, value)| match value {
                    Some(value) => TxnOp::put(key, value, None),
                    None => TxnOp::delete(key, None),
                })
                .collect();
            let reads: Vec<TxnOp> = txn
                .compares
                .iter()
                .map(|c| TxnOp::get(self.full_key(c.tree, &c.key), None))
                .collect();
            let request = etcd_client::Txn::new()
                .when(compares)
                .and_then(then)
                .or_else(reads);
            let answer = self.connection.commit(request).await?;
            let revision = self.seen(answer.header());
            if answer.succeeded() {
                return Ok(Outcome::Committed(revision));
            }
            let current = answer
                .op_responses()
                .into_iter()
                .map(|response| match response {
                    TxnOpResponse::Get(get) => get.kvs().first().map(versioned),
                    _ => None,
                })
                .collect();
            Ok(Outcome::Conflict(current))
        })
    }

    fn watch<'a>(&'a self, tree: Tree, prefix: &'a [u8], from: Revision) -> StoreFuture<'a, Watch> {
        Box::pin(async move {
            let key = self.full_key(tree, prefix);
            watch::open(
                self.connection.clone(),
                self.revision.clone(),
                &self.root,
                tree,
                self.tree_root(tree),
                key,
                from,
            )
            .await
        })
    }

    fn revision(&self) -> Revision {
        self.revision.load(Ordering::SeqCst)
    }

    fn count(&self, tree: Tree) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let root = self.tree_root(tree);
            let options = GetOptions::new()
                .with_range(prefix_end(&root))
                .with_count_only();
            let answer = self.connection.range(&root, Some(options)).await?;
            self.seen(answer.header());
            Ok(answer.count().max(0) as u64)
        })
    }

    fn last_key(&self, tree: Tree) -> StoreFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            let root = self.tree_root(tree);
            let options = GetOptions::new()
                .with_range(prefix_end(&root))
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(1)
                .with_keys_only();
            let answer = self.connection.range(&root, Some(options)).await?;
            self.seen(answer.header());
            Ok(answer
                .kvs()
                .first()
                .and_then(|kv| kv.key().strip_prefix(root.as_slice()))
                .map(<[u8]>::to_vec))
        })
    }

    /// A commit is durable once etcd has answered it.
    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_after_every_key_it_starts() {
        assert_eq!(prefix_end(b"/cv/accounts/"), b"/cv/accounts0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
