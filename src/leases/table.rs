//! Held leases in memory, indexed by id, by account and by expiry.

use std::collections::{BTreeSet, HashMap, HashSet};

use foldhash::fast::RandomState;

use serde::{Deserialize, Serialize};

use crate::{accounts::AccountKey, audit::Subject};

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

    /// What handing out this lease's token is about, for its audit event.
    pub fn subject(&self) -> Subject {
        Subject {
            provider: self.provider.clone(),
            email: self.email.clone(),
            target: self.id.clone(),
        }
    }
}

/// The maps hash with foldhash (seeded per process): an AcquireLease looks every
/// candidate account up, and SipHash made that most of choosing among 100.
#[derive(Default)]
pub struct Table {
    leases: HashMap<String, LeaseRecord, RandomState>,
    by_account: HashMap<AccountKey, HashSet<String, RandomState>, RandomState>,
    by_expiry: BTreeSet<(i64, String)>,
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

    pub fn of_account(&self, key: &AccountKey) -> Vec<LeaseRecord> {
        self.by_account
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.leases.get(id).cloned())
            .collect()
    }

    pub fn next_expiry(&self) -> Option<i64> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    pub fn all(&self) -> impl Iterator<Item = &LeaseRecord> {
        self.leases.values()
    }
}
