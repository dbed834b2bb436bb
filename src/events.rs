//! Credential events for watchers: a bus that the refresh engine, the account API and
//! the lease service publish to, and each WatchCredentials stream reads.
//!
//! What a bus guarantees ([`EventBus`]): a subscriber receives every event published
//! after it subscribed, in the order each publisher published them; one that falls
//! behind by more than it can hold is told how many it missed (`Lagged`), and then goes
//! on. The bus of one process is a broadcast channel ([`LocalBus`]).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{accounts::AccountKey, crypto::SecretString};

/// Events a slow watcher may fall behind by before it is told it missed some.
const CAPACITY: usize = 1024;

#[derive(Clone, Debug)]
pub enum EventKind {
    TokenRotated {
        generation: u64,
        token: SecretString,
        expire_time: i64,
    },
    AccountDisabled,
    AccountDeleted,
    LeaseRevoked {
        lease_id: String,
    },
}

#[derive(Clone, Debug)]
pub struct Event {
    pub key: AccountKey,
    pub kind: EventKind,
    pub at_ms: i64,
}

pub trait EventBus: Send + Sync + 'static {
    fn publish(&self, event: Event);
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// The bus of one process.
pub struct LocalBus(broadcast::Sender<Event>);

impl Default for LocalBus {
    fn default() -> Self {
        Self(broadcast::Sender::new(CAPACITY))
    }
}

impl EventBus for LocalBus {
    fn publish(&self, event: Event) {
        // No watcher is not an error.
        let _ = self.0.send(event);
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}

/// The handle services publish and subscribe through.
#[derive(Clone)]
pub struct Events(Arc<dyn EventBus>);

impl Default for Events {
    fn default() -> Self {
        Self(Arc::new(LocalBus::default()))
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    pub fn new(bus: Arc<dyn EventBus>) -> Self {
        Self(bus)
    }

    pub fn publish(&self, event: Event) {
        self.0.publish(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}
