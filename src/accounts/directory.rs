//! The readable part of every account, kept in memory so that choosing an account for
//! a lease reads no record. The store stays the truth: this process is its only
//! writer, and every write updates the directory under the same lock as its
//! compare-and-swap, so the two never disagree in an order a reader could see.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{AccountKey, AccountMeta, Status};

/// One account as the directory holds it: its key (made once, not per look-up) and its
/// metadata. Nothing secret is in here.
#[derive(Debug)]
pub struct Entry {
    pub key: AccountKey,
    pub meta: AccountMeta,
}

#[derive(Clone, Debug, Default)]
pub struct ProviderSummary {
    pub provider: String,
    pub by_status: BTreeMap<&'static str, u64>,
    pub capacity: u64,
    pub soonest_expiry: Option<i64>,
}

#[derive(Default)]
pub struct Directory {
    by_provider: HashMap<String, BTreeMap<String, Arc<Entry>>>,
}

impl Directory {
    pub fn put(&mut self, meta: AccountMeta) {
        let entry = Arc::new(Entry {
            key: meta.key(),
            meta,
        });
        self.by_provider
            .entry(entry.key.provider.clone())
            .or_default()
            .insert(entry.key.email.clone(), entry);
    }

    pub fn remove(&mut self, key: &AccountKey) {
        if let Some(accounts) = self.by_provider.get_mut(&key.provider) {
            accounts.remove(&key.email);
            if accounts.is_empty() {
                self.by_provider.remove(&key.provider);
            }
        }
    }

    pub fn get(&self, provider: &str, email: &str) -> Option<Arc<Entry>> {
        self.by_provider.get(provider)?.get(email).cloned()
    }

    /// Every account of one provider, in email order.
    pub fn provider(&self, provider: &str) -> impl Iterator<Item = &Arc<Entry>> {
        self.by_provider
            .get(provider)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// Per provider: accounts by effective status, the slots of its usable accounts,
    /// and the soonest token expiry (unix seconds).
    pub fn summary(&self) -> Vec<ProviderSummary> {
        self.by_provider
            .iter()
            .map(|(provider, accounts)| {
                let mut summary = ProviderSummary {
                    provider: provider.clone(),
                    ..ProviderSummary::default()
                };
                for entry in accounts.values() {
                    let meta = &entry.meta;
                    let status = meta.effective_status();
                    *summary.by_status.entry(status.name()).or_default() += 1;
                    if status == Status::Active {
                        summary.capacity += u64::from(meta.max_jobs);
                    }
                    if let Some(expiry) = meta
                        .session
                        .as_ref()
                        .map(|s| s.expire_time)
                        .filter(|e| *e > 0)
                    {
                        summary.soonest_expiry = Some(
                            summary
                                .soonest_expiry
                                .map_or(expiry, |s: i64| s.min(expiry)),
                        );
                    }
                }
                summary
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_provider.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests;
