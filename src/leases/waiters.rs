//! Callers waiting for a slot, first come first served: one queue per provider, or per
//! account when they named one. Only the head of a queue may take a slot; a freed slot
//! wakes the head of the account's queue and of its provider's.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

use crate::accounts::AccountKey;

/// Waiters queue per provider, or per account when they named one.
pub type QueueKey = (String, Option<String>);

struct Ticket {
    id: u64,
    wake: Arc<Notify>,
}

#[derive(Default)]
pub struct Waiters {
    queues: Mutex<HashMap<QueueKey, VecDeque<Ticket>>>,
}

impl Waiters {
    fn queues(&self) -> MutexGuard<'_, HashMap<QueueKey, VecDeque<Ticket>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the ticket may take a slot now: nobody queues, or it is first in line.
    pub fn may_take(&self, queue: &QueueKey, ticket: u64) -> bool {
        match self.queues().get(queue).and_then(VecDeque::front) {
            None => true,
            Some(head) => head.id == ticket,
        }
    }

    /// Joins the queue (once).
    pub fn enqueue(&self, queue: &QueueKey, ticket: u64, wake: Arc<Notify>) {
        let mut queues = self.queues();
        let line = queues.entry(queue.clone()).or_default();
        if !line.iter().any(|t| t.id == ticket) {
            line.push_back(Ticket { id: ticket, wake });
        }
    }

    /// Leaves the queue; if it was first in line, the next one may go.
    pub fn leave(&self, queue: &QueueKey, ticket: u64) {
        let mut queues = self.queues();
        if let Some(line) = queues.get_mut(queue) {
            let was_head = line.front().is_some_and(|t| t.id == ticket);
            line.retain(|t| t.id != ticket);
            if line.is_empty() {
                queues.remove(queue);
            } else if was_head {
                line[0].wake.notify_one();
            }
        }
    }

    /// A slot of this account may be free: wake the first waiter for the account and
    /// the first waiter for any account of its provider.
    pub fn wake(&self, key: &AccountKey) {
        let queues = self.queues();
        for queue in [
            (key.provider.clone(), Some(key.email.clone())),
            (key.provider.clone(), None),
        ] {
            if let Some(head) = queues.get(&queue).and_then(VecDeque::front) {
                head.wake.notify_one();
            }
        }
    }

    /// Every head: when freed slots may have been missed.
    pub fn wake_all(&self) {
        for line in self.queues().values() {
            if let Some(head) = line.front() {
                head.wake.notify_one();
            }
        }
    }

    /// Waiters per provider.
    pub fn by_provider(&self) -> HashMap<String, usize> {
        let mut waiting = HashMap::new();
        for ((provider, _), line) in self.queues().iter() {
            *waiting.entry(provider.clone()).or_default() += line.len();
        }
        waiting
    }

    pub fn of_provider(&self, provider: &str) -> usize {
        self.queues()
            .iter()
            .filter(|((p, _), _)| p == provider)
            .map(|(_, line)| line.len())
            .sum()
    }
}
