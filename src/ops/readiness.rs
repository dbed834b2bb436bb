//! Readiness on a shared store: every [`PULSE_EVERY`] this node proves its caller view
//! current (a pulse through the store and back through its watch, see
//! [`crate::callers::freshness`]). Readiness turns NOT_SERVING when the view has gone
//! unconfirmed past [`crate::callers::freshness::STALE_AFTER`] (etcd unreachable, no
//! quorum, a stalled watch) and SERVING again at the first pulse that comes back: no
//! restart needed. Liveness is not touched.

use std::sync::Arc;

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    callers::{CallerService, freshness::PULSE_EVERY},
    server::set_health,
};

pub async fn keep_confirming(
    callers: Arc<CallerService>,
    node_id: String,
    health: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut ready = true;
    let mut ticks = tokio::time::interval(PULSE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        let pulse = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            pulse = callers.pulse(&node_id, PULSE_EVERY * 2) => pulse,
        };
        if let Err(error) = &pulse {
            tracing::debug!(%error, "a pulse did not come back");
        }
        let stale = callers.stale_for();
        match (ready, stale) {
            (true, Some(unconfirmed)) => {
                tracing::warn!(
                    unconfirmed_secs = unconfirmed.as_secs(),
                    "the shared store has not confirmed this node's view; not ready, and refusing credentials until it does"
                );
                set_health(&health, ServingStatus::NotServing).await;
                ready = false;
            }
            (false, None) => {
                tracing::info!("the shared store confirms this node's view again; ready");
                set_health(&health, ServingStatus::Serving).await;
                ready = true;
            }
            _ => {}
        }
    }
}
