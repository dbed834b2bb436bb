//! A bounded map of things proven about a token, keyed by the token's SHA-256 (the
//! token itself is never kept). Past its capacity, expired entries go first, then
//! arbitrary ones, an eighth at a time (a miss only costs a verification again).

use std::{collections::HashMap, sync::Mutex};

use ring::digest::{SHA256, digest};

pub type Digest = [u8; 32];

/// An entry that stops being good at some point, in whatever unit its owner counts.
pub trait Expiring {
    fn expired(&self, now: i64) -> bool;
}

pub struct Remembered<V> {
    entries: Mutex<HashMap<Digest, V>>,
    capacity: usize,
}

impl<V: Clone + Expiring> Remembered<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The key a token is filed under.
    pub fn digest(token: &str) -> Digest {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        out
    }

    pub fn get(&self, key: &Digest) -> Option<V> {
        self.lock().get(key).cloned()
    }

    pub fn remove(&self, key: &Digest) {
        self.lock().remove(key);
    }

    /// Keeps `entry`, making room first if full: whatever has expired by `now`, then
    /// arbitrary entries.
    pub fn insert(&self, key: Digest, entry: V, now: i64) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| !e.expired(now));
            // Room for an eighth more at once, so that a stream of new tokens does not
            // scan the whole map on every insert.
            while entries.len() >= self.capacity - self.capacity / 8 {
                let Some(any) = entries.keys().next().copied() else {
                    break;
                };
                entries.remove(&any);
            }
        }
        entries.insert(key, entry);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, V>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
