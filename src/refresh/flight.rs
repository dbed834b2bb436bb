//! The login flight: one login per account at a time.
//!
//! What an implementation guarantees ([`LoginFlights`]): while a [`Boarded`] guard is
//! held, no other boarding for the same account completes; and the guard's [`Fence`]
//! is what the token write carries, so a holder that lost its right (on a shared
//! backend: a paused node whose lock lease ran out) cannot store a token. The flights
//! of one process ([`LocalFlights`]) are per-account async mutexes: a guard held here
//! cannot be lost, so its fence needs no compare.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    accounts::AccountKey,
    store::{Compare, StoreError},
};

/// What a token write checks to be sure its login still holds the flight.
#[derive(Clone, Debug)]
pub struct Fence {
    /// Grows with every boarding of the account.
    pub number: u64,
    /// A compare the token write's transaction carries, when the right can be lost.
    pub compare: Option<Compare>,
}

/// The right to log one account in, until dropped.
pub struct Boarded {
    pub fence: Fence,
    _held: Box<dyn Send + Sync>,
}

impl Boarded {
    /// The right, held until `held` is dropped.
    pub fn new(fence: Fence, held: Box<dyn Send + Sync>) -> Self {
        Boarded { fence, _held: held }
    }
}

pub type Boarding<'a> = Pin<Box<dyn Future<Output = Result<Boarded, StoreError>> + Send + 'a>>;

pub trait LoginFlights: Send + Sync + 'static {
    /// Waits until no other login of `key` is under way, then holds the right. A
    /// shared backend that cannot be reached answers an error: nobody logs in then.
    fn board<'a>(&'a self, key: &'a AccountKey) -> Boarding<'a>;
}

type Locks = HashMap<AccountKey, Arc<tokio::sync::Mutex<()>>>;

#[derive(Default)]
struct Shared {
    accounts: Mutex<Locks>,
    boardings: AtomicU64,
}

impl Shared {
    fn accounts(&self) -> std::sync::MutexGuard<'_, Locks> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The flights of one process.
#[derive(Default)]
pub struct LocalFlights {
    shared: Arc<Shared>,
}

impl LocalFlights {
    /// Accounts with a login under way or waited for.
    pub fn active(&self) -> usize {
        self.shared.accounts().len()
    }
}

/// Gives the account's entry back when the last holder or waiter is gone.
struct Held {
    shared: Arc<Shared>,
    key: AccountKey,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut accounts = self.shared.accounts();
        drop(self.guard.take());
        // Only the map holds it now: nobody else holds or waits.
        if accounts
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            accounts.remove(&self.key);
        }
    }
}

impl LoginFlights for LocalFlights {
    fn board<'a>(&'a self, key: &'a AccountKey) -> Boarding<'a> {
        Box::pin(async move {
            let lock = self
                .shared
                .accounts()
                .entry(key.clone())
                .or_default()
                .clone();
            let guard = lock.lock_owned().await;
            let number = self.shared.boardings.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Boarded {
                fence: Fence {
                    number,
                    compare: None,
                },
                _held: Box::new(Held {
                    shared: self.shared.clone(),
                    key: key.clone(),
                    guard: Some(guard),
                }),
            })
        })
    }
}
