//! Login flights shared by every process on one etcd cluster: one login per account,
//! cluster-wide.
//!
//! Boarding creates the account's lock key (`{prefix}/meta/flights/{account}`, the
//! account as a keyed fingerprint) bound to an etcd lease of [`LOCK_TTL_SECS`] that a
//! task renews while the guard lives. Whoever finds the key taken waits for its
//! deletion (a watch, or at the latest a new try every second) and tries again. The
//! fence is the lock key's modification revision, compared by the token write's
//! transaction: a holder paused past the TTL lost the key, and a later holder's key has
//! a newer revision, so its late write stores nothing.

use std::{sync::Arc, time::Duration};

use super::flight::{Boarded, Boarding, Fence, LoginFlights};
use crate::{
    accounts::AccountKey,
    crypto::Fingerprinter,
    store::{
        Compare, Expect, Store, Tree,
        etcd::{EtcdStore, lock::Locked},
    },
};

/// How long a lock outlives a holder that stopped renewing it.
pub const LOCK_TTL_SECS: i64 = 10;
/// The holder renews this often.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// A waiter tries again at least this often, watch or not.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Where the login locks are, in the meta tree: `flights/{account fingerprint}`.
pub const FLIGHTS_PREFIX: &[u8] = b"flights/";

pub struct ClusterFlights {
    store: Arc<EtcdStore>,
    fingerprints: Arc<Fingerprinter>,
    /// Names the holder in the lock's value (for operators reading etcd).
    node_id: String,
}

impl ClusterFlights {
    pub fn new(store: Arc<EtcdStore>, fingerprints: Arc<Fingerprinter>, node_id: &str) -> Self {
        ClusterFlights {
            store,
            fingerprints,
            node_id: node_id.to_owned(),
        }
    }

    fn lock_key(&self, key: &AccountKey) -> Vec<u8> {
        let mut lock = FLIGHTS_PREFIX.to_vec();
        lock.extend_from_slice(key.fingerprint(&self.fingerprints).as_bytes());
        lock
    }

    /// Waits until the lock may have been freed after `revision`.
    async fn wait_freed(&self, lock: &[u8], revision: u64) {
        let watch = self.store.watch(Tree::Meta, lock, revision).await;
        let Ok(mut watch) = watch else {
            tokio::time::sleep(RETRY_EVERY).await;
            return;
        };
        let deleted = async {
            while let Ok(change) = watch.next().await {
                if change.value.is_none() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(RETRY_EVERY, deleted).await;
    }
}

/// Renews the lock's etcd lease until dropped; then frees the lock.
struct Held {
    renewer: tokio::task::JoinHandle<()>,
    release: Option<(Arc<EtcdStore>, Vec<u8>, u64, i64)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
        if let Some((store, lock, revision, etcd_lease)) = self.release.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(error) = store.delete_if(Tree::Meta, &lock, revision).await {
                    tracing::warn!(%error, "freeing a login lock failed; it ends at its TTL");
                }
                store.revoke(etcd_lease).await;
            });
        }
    }
}

impl LoginFlights for ClusterFlights {
    fn board<'a>(&'a self, key: &'a AccountKey) -> Boarding<'a> {
        Box::pin(async move {
            let lock = self.lock_key(key);
            loop {
                let etcd_lease = self.store.grant(LOCK_TTL_SECS).await?;
                let locked = self
                    .store
                    .try_lock(Tree::Meta, &lock, self.node_id.as_bytes(), etcd_lease)
                    .await;
                let revision = match locked {
                    Ok(Locked::Taken(revision)) => revision,
                    Ok(Locked::Held(at)) => {
                        self.store.revoke(etcd_lease).await;
                        self.wait_freed(&lock, at).await;
                        continue;
                    }
                    Err(error) => {
                        // It may have been taken: ending the lease frees it.
                        self.store.revoke(etcd_lease).await;
                        return Err(error);
                    }
                };
                let store = self.store.clone();
                let renewer = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(RENEW_EVERY).await;
                        match store.keep_alive(etcd_lease).await {
                            Ok(ttl) if ttl > 0 => {}
                            Ok(_) => {
                                tracing::warn!(
                                    "a login lock's lease ended; its token write will be refused"
                                );
                                return;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "renewing a login lock failed");
                            }
                        }
                    }
                });
                let fence = Fence {
                    number: revision,
                    compare: Some(Compare {
                        tree: Tree::Meta,
                        key: lock.clone(),
                        expect: Expect::Version(revision),
                    }),
                };
                let held = Held {
                    renewer,
                    release: Some((self.store.clone(), lock, revision, etcd_lease)),
                };
                return Ok(Boarded::new(fence, Box::new(held)));
            }
        })
    }
}

impl std::fmt::Debug for ClusterFlights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterFlights")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}
