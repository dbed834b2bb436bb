//! Credential events for watchers: a broadcast hub that the refresh engine, the account
//! API and the lease service publish to, and each WatchCredentials stream reads.

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

#[derive(Clone, Debug)]
pub struct Events(broadcast::Sender<Event>);

impl Default for Events {
    fn default() -> Self {
        Self(broadcast::Sender::new(CAPACITY))
    }
}

impl Events {
    pub fn publish(&self, event: Event) {
        // No watcher is not an error.
        let _ = self.0.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}
