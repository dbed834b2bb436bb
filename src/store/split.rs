//! A shared store with node-local trees: in etcd mode the audit trail stays in this
//! node's data directory (as Vault's audit devices do), everything else is shared.
//!
//! Each operation goes to the store that holds its tree. A transaction may not span
//! both (nothing the vault writes does: the audit trail is written on its own), and
//! revisions are each store's own: a scan at a revision, or a watch from one, names a
//! revision of the store that holds the tree, as the page or change it came from did.
//! [`Store::revision`] is the shared store's.

use std::sync::Arc;

use super::{
    FlushFuture, Outcome, Page, Range, Revision, Store, StoreError, StoreFuture, Tree, Txn,
    Versioned, Watch,
};

pub struct Split {
    shared: Arc<dyn Store>,
    local: Arc<dyn Store>,
    local_trees: &'static [Tree],
}

impl Split {
    /// `local_trees` live in `local`, every other tree in `shared`.
    pub fn new(
        shared: Arc<dyn Store>,
        local: Arc<dyn Store>,
        local_trees: &'static [Tree],
    ) -> Self {
        Split {
            shared,
            local,
            local_trees,
        }
    }

    fn of(&self, tree: Tree) -> &dyn Store {
        if self.local_trees.contains(&tree) {
            self.local.as_ref()
        } else {
            self.shared.as_ref()
        }
    }

    /// The local store, for what is node-local (its disk size, the write mark).
    pub fn local(&self) -> &Arc<dyn Store> {
        &self.local
    }
}

impl Store for Split {
    fn get<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Versioned>> {
        self.of(tree).get(tree, key)
    }

    fn value<'a>(&'a self, tree: Tree, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.of(tree).value(tree, key)
    }

    fn scan<'a>(&'a self, range: Range<'a>) -> StoreFuture<'a, Page> {
        self.of(range.tree).scan(range)
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Outcome> {
        let trees = txn
            .compares
            .iter()
            .map(|c| c.tree)
            .chain(txn.writes.iter().map(|w| w.tree));
        let mut local = None;
        for tree in trees {
            let here = self.local_trees.contains(&tree);
            if *local.get_or_insert(here) != here {
                return Box::pin(async {
                    Err(StoreError::Engine(
                        "a transaction spans node-local and shared trees".into(),
                    ))
                });
            }
        }
        match local {
            Some(true) => self.local.commit(txn),
            _ => self.shared.commit(txn),
        }
    }

    fn watch<'a>(&'a self, tree: Tree, prefix: &'a [u8], from: Revision) -> StoreFuture<'a, Watch> {
        self.of(tree).watch(tree, prefix, from)
    }

    fn revision(&self) -> Revision {
        self.shared.revision()
    }

    fn count(&self, tree: Tree) -> StoreFuture<'_, u64> {
        self.of(tree).count(tree)
    }

    fn last_key(&self, tree: Tree) -> StoreFuture<'_, Option<Vec<u8>>> {
        self.of(tree).last_key(tree)
    }

    /// Both: a hand-out's audit event is local, its debit shared.
    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async move {
            self.shared.flush().await?;
            self.local.flush().await
        })
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.local.disk_bytes()
    }
}
