//! Job slots on etcd: what a cluster-wide `maxJobs` needs beyond the seam.
//!
//! Slot `i` of an account is the key `{prefix}/leases/{account}/{i:05}` (the account as
//! a keyed fingerprint, never its email), holding the sealed lease, bound to an etcd
//! lease whose TTL is the job lease's: a process that dies leaves its slots held until
//! then, and etcd frees them after. A take is one txn that holds only if slot `i` does
//! not exist **and** no slot at or past `maxJobs` exists (a range compare), so however
//! many processes race, no more than `maxJobs` keys ever hold an account, even after
//! its `maxJobs` was lowered.

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, TxnOp};

use super::{EtcdStore, prefix_end};
use crate::store::{Revision, StoreError, Tree};

/// One slot as the cluster holds it.
#[derive(Clone)]
pub struct HeldSlot {
    /// The key under the leases tree: `{account}/{i:05}`.
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: Revision,
    /// The etcd lease the key is bound to.
    pub etcd_lease: i64,
}

impl std::fmt::Debug for HeldSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldSlot")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("mod_revision", &self.mod_revision)
            .finish_non_exhaustive()
    }
}

/// The key of slot `index` of `account`.
pub fn slot_key(account: &str, index: usize) -> Vec<u8> {
    format!("{account}/{index:05}").into_bytes()
}

/// The slot index a slot key names.
pub fn slot_index(key: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(key).ok()?;
    text.rsplit('/').next()?.parse().ok()
}

impl EtcdStore {
    /// A new etcd lease that ends after `ttl_secs` unless renewed.
    pub async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        let answer = self.connection.grant(ttl_secs.max(1)).await?;
        Ok(answer)
    }

    /// Ends an etcd lease and every key bound to it. Best effort: a lease that cannot
    /// be revoked ends at its TTL.
    pub async fn revoke(&self, etcd_lease: i64) {
        if let Err(error) = self.connection.revoke(etcd_lease).await {
            tracing::warn!(%error, "revoking an etcd lease failed; it ends at its TTL");
        }
    }

    /// Takes slot `index` of `account` with `value`, bound to `etcd_lease`, if that
    /// slot is free and no slot at or past `max_jobs` is held. The revision of the
    /// take, or `None` when it did not hold.
    pub async fn take_slot(
        &self,
        account: &str,
        index: usize,
        max_jobs: usize,
        value: &[u8],
        etcd_lease: i64,
    ) -> Result<Option<Revision>, StoreError> {
        let slot = self.full_key(Tree::Leases, &slot_key(account, index));
        let beyond = self.full_key(Tree::Leases, &slot_key(account, max_jobs));
        let account_end =
            prefix_end(&self.full_key(Tree::Leases, format!("{account}/").as_bytes()));
        let txn = etcd_client::Txn::new()
            .when([
                Compare::create_revision(slot.clone(), CompareOp::Equal, 0),
                Compare::version(beyond, CompareOp::Equal, 0).with_range(account_end),
            ])
            .and_then([TxnOp::put(
                slot,
                value.to_vec(),
                Some(PutOptions::new().with_lease(etcd_lease)),
            )]);
        let answer = self.connection.commit(txn).await?;
        let revision = self.seen(answer.header());
        Ok(answer.succeeded().then_some(revision))
    }

    /// Replaces a held slot's value and etcd lease, if the slot is still what was read
    /// at `mod_revision`. The revision of the change, or `None` when it moved on.
    pub async fn replace_slot(
        &self,
        key: &[u8],
        mod_revision: Revision,
        value: &[u8],
        etcd_lease: i64,
    ) -> Result<Option<Revision>, StoreError> {
        let slot = self.full_key(Tree::Leases, key);
        let txn = etcd_client::Txn::new()
            .when([Compare::mod_revision(
                slot.clone(),
                CompareOp::Equal,
                mod_revision as i64,
            )])
            .and_then([TxnOp::put(
                slot,
                value.to_vec(),
                Some(PutOptions::new().with_lease(etcd_lease)),
            )]);
        let answer = self.connection.commit(txn).await?;
        let revision = self.seen(answer.header());
        Ok(answer.succeeded().then_some(revision))
    }

    /// Every held slot (of one account when `account` is given), and the revision read
    /// at.
    pub async fn held_slots(
        &self,
        account: Option<&str>,
    ) -> Result<(Vec<HeldSlot>, Revision), StoreError> {
        let tree_root = self.tree_root(Tree::Leases);
        let start = match account {
            Some(account) => self.full_key(Tree::Leases, format!("{account}/").as_bytes()),
            None => tree_root.clone(),
        };
        let end = prefix_end(&start);
        let mut slots = Vec::new();
        let mut from = start;
        let mut at = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(512);
            if at > 0 {
                options = options.with_revision(at);
            }
            let answer = self.connection.range(&from, Some(options)).await?;
            let revision = self.seen(answer.header());
            if at == 0 {
                at = revision as i64;
            }
            for kv in answer.kvs() {
                slots.push(HeldSlot {
                    key: kv
                        .key()
                        .strip_prefix(tree_root.as_slice())
                        .unwrap_or_default()
                        .to_vec(),
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision().max(0) as Revision,
                    etcd_lease: kv.lease(),
                });
            }
            match answer.kvs().last() {
                Some(last) if answer.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((slots, at as Revision)),
            }
        }
    }
}
