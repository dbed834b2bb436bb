//! The slot table: who holds which of each account's `maxJobs` slots.
//!
//! What an implementation guarantees: a [`SlotTable::take`] succeeds only if, at the
//! moment it takes effect, fewer than `max_jobs` live leases hold the account, so no
//! interleaving of takers (in this process or, for a shared backend, in any) puts more
//! leases on an account than its `maxJobs`. A slot taken is durable once the store's
//! next flush completes, and stays held until it is released or its lease expires.
//! Every freed slot is announced to [`SlotTable::freed`] subscribers, so that waiters
//! can try again.

use std::{future::Future, pin::Pin};

use tokio::sync::broadcast;

use super::{LeaseError, LeaseRecord};
use crate::accounts::AccountKey;

pub type SlotFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LeaseError>> + Send + 'a>>;

pub trait SlotTable: Send + Sync + 'static {
    /// Takes a slot on `lease`'s account for it if fewer than `max_jobs` are held;
    /// answers whether it did.
    fn take(&self, lease: LeaseRecord, max_jobs: usize) -> SlotFuture<'_, bool>;

    /// Moves a held lease's expiry; `None` when the lease is not held.
    fn renew<'a>(&'a self, id: &'a str, expires_at_ms: i64) -> SlotFuture<'a, Option<LeaseRecord>>;

    /// Frees a lease's slot; the lease, if it was held.
    fn release<'a>(&'a self, id: &'a str) -> SlotFuture<'a, Option<LeaseRecord>>;

    /// Frees the slot of every lease expired at `now_ms`; answers them.
    fn expire(&self, now_ms: i64) -> SlotFuture<'_, Vec<LeaseRecord>>;

    /// A held lease.
    fn get(&self, id: &str) -> Option<LeaseRecord>;

    /// How many slots of this account are held.
    fn held(&self, key: &AccountKey) -> usize;

    /// How many slots of each of these accounts are held, read at one moment (under
    /// one lock, where [`SlotTable::held`] takes it once per account).
    fn held_each(&self, keys: &[&AccountKey]) -> Vec<usize>;

    /// The leases holding slots of this account.
    fn leases_of(&self, key: &AccountKey) -> Vec<LeaseRecord>;

    /// Every held lease.
    fn all(&self) -> Vec<LeaseRecord>;

    /// When the first held lease expires.
    fn next_expiry(&self) -> Option<i64>;

    /// Accounts whose slots were freed from now on.
    fn freed(&self) -> broadcast::Receiver<AccountKey>;

    /// Counts slot changes: read before a choice, and compared after queueing, it tells
    /// whether a slot may have been freed in between.
    fn version(&self) -> u64;

    /// Whether other processes take slots too: then slots appear that this process's
    /// reaper was not told of, and it looks at least every second.
    fn shared(&self) -> bool {
        false
    }
}
