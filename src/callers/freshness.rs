//! Whether this process may trust its view of callers. On a local store the view is
//! the store's own, always current. On a shared store it follows a watch, and a watch
//! can stall without an error (a partition, a member that stopped answering): then a
//! token revoked on another node would still be accepted here. So a process on a
//! shared store proves its view current every [`PULSE_EVERY`]: it writes a pulse
//! record into the callers' tree and waits for its own watch to bring it back. When
//! no pulse has come back for [`STALE_AFTER`], authentication through the view fails
//! closed (UNAVAILABLE) and readiness turns NOT_SERVING, until a pulse comes back.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::CallerService;
use crate::store::{Outcome, StoreError, Tree, Txn};

/// How often a pulse is written.
pub const PULSE_EVERY: Duration = Duration::from_secs(2);
/// How long the view may go unconfirmed before it is distrusted.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// Pulse records' keys in the callers' tree: `~pulse/{node_id}` (no caller id starts
/// with `~`).
pub const PULSE_PREFIX: &[u8] = b"~pulse/";

/// When the view was last confirmed current.
pub struct Freshness {
    /// Only a view that follows a shared store is ever distrusted.
    shared: AtomicBool,
    origin: Instant,
    /// Milliseconds since `origin` of the last confirmation.
    confirmed_ms: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            shared: AtomicBool::new(false),
            origin: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
        }
    }
}

impl Freshness {
    /// The view held everything written up to `at`.
    fn confirm(&self, at: Instant) {
        let at = at.saturating_duration_since(self.origin).as_millis() as u64;
        self.confirmed_ms.fetch_max(at, Ordering::SeqCst);
    }

    /// How long the view has gone unconfirmed, once that is past [`STALE_AFTER`].
    pub fn stale_for(&self) -> Option<Duration> {
        if !self.shared.load(Ordering::SeqCst) {
            return None;
        }
        let confirmed = Duration::from_millis(self.confirmed_ms.load(Ordering::SeqCst));
        let unconfirmed = self.origin.elapsed().saturating_sub(confirmed);
        (unconfirmed > STALE_AFTER).then_some(unconfirmed)
    }
}

impl CallerService {
    /// Marks the view as following a shared store, confirmed as of now (it was just
    /// read from the store).
    pub fn follows_shared_store(&self) {
        self.freshness.confirm(Instant::now());
        self.freshness.shared.store(true, Ordering::SeqCst);
    }

    /// How long the view has gone unconfirmed, once that is too long to trust it.
    pub fn stale_for(&self) -> Option<Duration> {
        self.freshness.stale_for()
    }

    /// Whether the view follows a store other processes share.
    pub(super) fn shares_store(&self) -> bool {
        self.freshness.shared.load(Ordering::SeqCst)
    }

    /// Writes this node's pulse and waits (at most `within`) for the watch to bring
    /// it back; confirms the view as of the moment the pulse was sent (what the watch
    /// had brought by then, it has brought now).
    pub async fn pulse(&self, node_id: &str, within: Duration) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut key = PULSE_PREFIX.to_vec();
        key.extend_from_slice(node_id.as_bytes());
        let stamp = self.clock.now_ms().to_string();
        let txn = Txn::new().put(Tree::Callers, &key, stamp.as_bytes());
        let written = tokio::time::timeout(within, self.store.commit(txn))
            .await
            .map_err(|_| StoreError::Unavailable("the pulse write timed out".into()))??;
        let Outcome::Committed(revision) = written else {
            return Err(StoreError::Unavailable("the pulse write conflicted".into()));
        };
        let mut seen = self.seen.subscribe();
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, seen.wait_for(|seen| *seen >= revision)).await {
            Ok(Ok(_)) => {
                self.freshness.confirm(started);
                Ok(())
            }
            _ => Err(StoreError::Unavailable(
                "the callers' watch did not bring the pulse back".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_view_is_never_stale_and_a_shared_one_is_after_its_window() {
        let freshness = Freshness::default();
        assert_eq!(freshness.stale_for(), None);
        freshness.shared.store(true, Ordering::SeqCst);
        freshness.confirm(Instant::now());
        assert_eq!(freshness.stale_for(), None);
        // Confirmed long ago: as if the origin were 11 s back and never confirmed since.
        let old = Freshness {
            shared: AtomicBool::new(true),
            origin: Instant::now() - Duration::from_secs(11),
            confirmed_ms: AtomicU64::new(0),
        };
        assert!(old.stale_for().is_some_and(|d| d > STALE_AFTER));
        // A pulse sent 11 s ago and only now back confirms nothing newer.
        old.confirm(old.origin);
        assert!(old.stale_for().is_some());
        old.confirm(Instant::now());
        assert_eq!(old.stale_for(), None);
    }
}
