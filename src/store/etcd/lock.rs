//! Locks on etcd: a key created only if absent, bound to an etcd lease that its holder
//! keeps alive. When the holder stops renewing (it died, or paused past the TTL), etcd
//! deletes the key, and the next taker's creation gives a new revision: the lock's
//! modification revision is its fencing value.

use etcd_client::{Compare, CompareOp, PutOptions, TxnOp};

use super::EtcdStore;
use crate::store::{Revision, StoreError, Tree};

/// The outcome of a try at a lock.
pub enum Locked {
    /// Taken at this revision (its fencing value).
    Taken(Revision),
    /// Held by someone else; the revision the answer was read at.
    Held(Revision),
}

impl EtcdStore {
    /// Creates `key` in `tree`, bound to `etcd_lease`, unless it exists.
    pub async fn try_lock(
        &self,
        tree: Tree,
        key: &[u8],
        value: &[u8],
        etcd_lease: i64,
    ) -> Result<Locked, StoreError> {
        let full = self.full_key(tree, key);
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                full,
                value.to_vec(),
                Some(PutOptions::new().with_lease(etcd_lease)),
            )]);
        let answer = self.connection.commit(txn).await?;
        let revision = self.seen(answer.header());
        if answer.succeeded() {
            return Ok(Locked::Taken(revision));
        }
        Ok(Locked::Held(revision))
    }

    /// Deletes `key` if it is still what was written at `mod_revision`.
    pub async fn delete_if(
        &self,
        tree: Tree,
        key: &[u8],
        mod_revision: Revision,
    ) -> Result<bool, StoreError> {
        let full = self.full_key(tree, key);
        let txn = etcd_client::Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                mod_revision as i64,
            )])
            .and_then([TxnOp::delete(full, None)]);
        let answer = self.connection.commit(txn).await?;
        self.seen(answer.header());
        Ok(answer.succeeded())
    }

    /// Renews an etcd lease once; answers its remaining TTL in seconds (0 when it has
    /// ended).
    pub async fn keep_alive(&self, etcd_lease: i64) -> Result<i64, StoreError> {
        self.connection.keep_alive(etcd_lease).await
    }
}
