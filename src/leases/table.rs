//! The in-memory lease table: the one place that decides who holds which slot. Every
//! reservation is checked and recorded under its lock, so no interleaving of callers
//! can put more leases on an account than its `maxJobs`.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::accounts::AccountKey;

/// A lease as stored (sealed) and held in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: String,
    pub caller_id: String,
    pub provider: String,
    pub email: String,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
}

impl LeaseRecord {
    pub fn key(&self) -> AccountKey {
        AccountKey {
            provider: self.provider.clone(),
            email: self.email.clone(),
        }
    }
}

/// Waiters queue per provider, or per account when they named one.
pub type QueueKey = (String, Option<String>);

pub struct Ticket {
    pub id: u64,
    pub wake: Arc<Notify>,
}

#[derive(Default)]
pub struct Table {
    leases: HashMap<String, LeaseRecord>,
    by_account: HashMap<AccountKey, HashSet<String>>,
    by_expiry: BTreeSet<(i64, String)>,
    queues: HashMap<QueueKey, VecDeque<Ticket>>,
}

impl Table {
    pub fn count(&self, key: &AccountKey) -> usize {
        self.by_account.get(key).map_or(0, HashSet::len)
    }

    pub fn get(&self, id: &str) -> Option<&LeaseRecord> {
        self.leases.get(id)
    }

    pub fn insert(&mut self, record: LeaseRecord) {
        self.by_account
            .entry(record.key())
            .or_default()
            .insert(record.id.clone());
        self.by_expiry
            .insert((record.expires_at_ms, record.id.clone()));
        self.leases.insert(record.id.clone(), record);
    }

    pub fn remove(&mut self, id: &str) -> Option<LeaseRecord> {
        let record = self.leases.remove(id)?;
        self.by_expiry
            .remove(&(record.expires_at_ms, record.id.clone()));
        let key = record.key();
        if let Some(ids) = self.by_account.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_account.remove(&key);
            }
        }
        Some(record)
    }

    pub fn extend(&mut self, id: &str, expires_at_ms: i64) -> Option<LeaseRecord> {
        let mut record = self.remove(id)?;
        record.expires_at_ms = expires_at_ms;
        self.insert(record.clone());
        Some(record)
    }

    /// Removes and returns every lease that has expired at `now_ms`.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<LeaseRecord> {
        let mut expired = Vec::new();
        while let Some((at, id)) = self.by_expiry.first().cloned() {
            if at > now_ms {
                break;
            }
            expired.extend(self.remove(&id));
        }
        expired
    }

    pub fn of_account(&self, key: &AccountKey) -> Vec<String> {
        self.by_account
            .get(key)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A lease of `caller_id` on this account that is still live at `now_ms`.
    pub fn held_by(&self, key: &AccountKey, caller_id: &str, now_ms: i64) -> Option<&LeaseRecord> {
        self.by_account
            .get(key)?
            .iter()
            .filter_map(|id| self.leases.get(id))
            .find(|lease| lease.caller_id == caller_id && lease.expires_at_ms > now_ms)
    }

    pub fn next_expiry(&self) -> Option<i64> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// Jobs running on these accounts, and when the first of them ends.
    pub fn load_of(&self, keys: &[&AccountKey]) -> (usize, Option<i64>) {
        let mut running = 0;
        let mut first_end: Option<i64> = None;
        for key in keys {
            for id in self.by_account.get(*key).into_iter().flatten() {
                if let Some(lease) = self.leases.get(id) {
                    running += 1;
                    first_end = Some(
                        first_end.map_or(lease.expires_at_ms, |at| at.min(lease.expires_at_ms)),
                    );
                }
            }
        }
        (running, first_end)
    }

    /// Leases held per provider.
    pub fn held_by_provider(&self) -> HashMap<String, usize> {
        let mut held = HashMap::new();
        for lease in self.leases.values() {
            *held.entry(lease.provider.clone()).or_default() += 1;
        }
        held
    }

    /// Waiters per provider.
    pub fn waiting_by_provider(&self) -> HashMap<String, usize> {
        let mut waiting = HashMap::new();
        for ((provider, _), queue) in &self.queues {
            *waiting.entry(provider.clone()).or_default() += queue.len();
        }
        waiting
    }

    pub fn waiting(&self, provider: &str) -> usize {
        self.queues
            .iter()
            .filter(|((p, _), _)| p == provider)
            .map(|(_, q)| q.len())
            .sum()
    }

    pub fn queue_busy(&self, queue: &QueueKey) -> bool {
        self.queues.get(queue).is_some_and(|q| !q.is_empty())
    }

    pub fn is_head(&self, queue: &QueueKey, ticket: u64) -> bool {
        self.queues
            .get(queue)
            .and_then(VecDeque::front)
            .is_some_and(|t| t.id == ticket)
    }

    pub fn enqueue(&mut self, queue: QueueKey, ticket: Ticket) {
        self.queues.entry(queue).or_default().push_back(ticket);
    }

    pub fn leave(&mut self, queue: &QueueKey, ticket: u64) {
        if let Some(q) = self.queues.get_mut(queue) {
            q.retain(|t| t.id != ticket);
            if q.is_empty() {
                self.queues.remove(queue);
            }
        }
    }

    /// A slot of this account may be free: wake the first waiter for the account and
    /// the first waiter for any account of its provider.
    pub fn wake(&self, key: &AccountKey) {
        for queue in [
            (key.provider.clone(), Some(key.email.clone())),
            (key.provider.clone(), None),
        ] {
            if let Some(head) = self.queues.get(&queue).and_then(VecDeque::front) {
                head.wake.notify_one();
            }
        }
    }

    /// Wake the first waiter of this queue (after its former head left).
    pub fn wake_queue(&self, queue: &QueueKey) {
        if let Some(head) = self.queues.get(queue).and_then(VecDeque::front) {
            head.wake.notify_one();
        }
    }
}
