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

/// Publishes what another process did to an account (as its watch brings it) to this
/// process's watchers: a new token, a disabled or deleted account. `changed` is told
/// of every such change first (the refresh engine plans from it). Runs until `stop`.
pub async fn relay_foreign(
    accounts: Arc<crate::accounts::AccountService>,
    events: Events,
    clock: Arc<dyn crate::clock::Clock>,
    changed: impl Fn(&AccountKey, Option<&crate::accounts::AccountMeta>),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut foreign = accounts.foreign_changes();
    loop {
        let change = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            change = foreign.recv() => change,
        };
        let change = match change {
            Ok(change) => change,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "fell behind other processes' account changes");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        changed(&change.key, change.after.as_ref());
        let at_ms = clock.now_ms();
        let publish = |kind| {
            events.publish(Event {
                key: change.key.clone(),
                kind,
                at_ms,
            })
        };
        let (before, after) = (change.before.as_ref(), change.after.as_ref());
        let Some(after) = after else {
            if before.is_some() {
                publish(EventKind::AccountDeleted);
            }
            continue;
        };
        if after.disabled && !before.is_some_and(|b| b.disabled) {
            publish(EventKind::AccountDisabled);
        }
        let generation = |meta: Option<&crate::accounts::AccountMeta>| {
            meta.and_then(|m| m.session.as_ref())
                .map_or(0, |s| s.generation)
        };
        if generation(Some(after)) > generation(before) {
            let key = &change.key;
            match accounts.get(&key.provider, &key.email).await {
                Ok(account) => {
                    if let (Some(session), Some(token)) =
                        (&account.meta.session, &account.secrets.token)
                    {
                        publish(EventKind::TokenRotated {
                            generation: session.generation,
                            token: token.clone(),
                            expire_time: session.expire_time,
                        });
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading an account another process changed failed");
                }
            }
        }
    }
}
