//! The readable part of every account, kept in memory so that choosing an account for
//! a lease reads no record. The store stays the truth: this process's writes update the
//! directory as they commit, and the store's watch brings the rest. Each entry keeps
//! the revision it was written at, and a deleted one a tombstone, so a change that
//! arrives late through the watch never undoes a newer one.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use super::{AccountKey, AccountMeta, Status};
use crate::store::Revision;

/// One account as the directory holds it: its key (made once, not per look-up) and its
/// metadata. Nothing secret is in here.
#[derive(Debug)]
pub struct Entry {
    pub key: AccountKey,
    pub meta: AccountMeta,
    /// The store revision this entry was written at (0: not known).
    pub revision: Revision,
}

#[derive(Clone, Debug, Default)]
pub struct ProviderSummary {
    pub provider: String,
    pub by_status: BTreeMap<&'static str, u64>,
    pub capacity: u64,
    pub soonest_expiry: Option<i64>,
}

/// An entry filed under its email: the set's key is the entry's own email, not a
/// copy (a third copy of every email was about 5 MiB per 100,000 accounts).
struct ByEmail(Arc<Entry>);

impl ByEmail {
    fn email(&self) -> &str {
        &self.0.key.email
    }
}

impl PartialEq for ByEmail {
    fn eq(&self, other: &Self) -> bool {
        self.email() == other.email()
    }
}

impl Eq for ByEmail {}

impl PartialOrd for ByEmail {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByEmail {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.email().cmp(other.email())
    }
}

impl std::borrow::Borrow<str> for ByEmail {
    fn borrow(&self) -> &str {
        self.email()
    }
}

#[derive(Default)]
pub struct Directory {
    by_provider: HashMap<String, BTreeSet<ByEmail>>,
    /// Deleted accounts and the revision of their deletion, until the watch passed it.
    gone: HashMap<AccountKey, Revision>,
    /// Records stored but left out because their metadata does not open (or names
    /// another place), by record key: listing their provider reports them.
    damaged: BTreeSet<Vec<u8>>,
}

impl Directory {
    /// The revision the directory holds `key` at (0: never seen).
    /// The revision of what is held for `key` (an entry or a tombstone); 0 when none.
    pub fn revision_of(&self, key: &AccountKey) -> Revision {
        self.get(&key.provider, &key.email)
            .map(|entry| entry.revision)
            .or_else(|| self.gone.get(key).copied())
            .unwrap_or(0)
    }

    /// Keeps `meta` as written at `revision`, unless a later change is held already.
    pub fn put(&mut self, meta: AccountMeta, revision: Revision) {
        let key = meta.key();
        if revision < self.revision_of(&key) {
            return;
        }
        self.gone.remove(&key);
        let entry = Arc::new(Entry {
            key,
            meta,
            revision,
        });
        self.by_provider
            .entry(entry.key.provider.clone())
            .or_default()
            .replace(ByEmail(entry));
    }

    /// Drops the account as deleted at `revision`, unless a later change is held.
    pub fn remove(&mut self, key: &AccountKey, revision: Revision) {
        if revision < self.revision_of(key) {
            return;
        }
        if let Some(accounts) = self.by_provider.get_mut(&key.provider) {
            accounts.remove(key.email.as_str());
            if accounts.is_empty() {
                self.by_provider.remove(&key.provider);
            }
        }
        self.gone.insert(key.clone(), revision);
    }

    /// Notes (or clears) that the record stored under `record_key` is damaged.
    pub fn set_damaged(&mut self, record_key: &[u8], damaged: bool) {
        if damaged {
            self.damaged.insert(record_key.to_vec());
        } else if !self.damaged.is_empty() {
            self.damaged.remove(record_key);
        }
    }

    /// A damaged record of `provider` (any provider when empty), if one is known.
    pub fn damaged(&self, provider: &str) -> Option<&[u8]> {
        self.damaged
            .iter()
            .find(|key| {
                provider.is_empty() || key.split(|b| *b == 0).next() == Some(provider.as_bytes())
            })
            .map(Vec::as_slice)
    }

    /// Tombstones the watch has passed: no older change can arrive any more.
    pub fn forget_tombstones(&mut self, upto: Revision) {
        self.gone.retain(|_, at| *at > upto);
    }

    /// Keeps what `newer` holds past `at` (writes made while this directory was read
    /// at `at`).
    pub fn take_newer(&mut self, newer: &Directory, at: Revision) {
        for ByEmail(entry) in newer.by_provider.values().flatten() {
            if entry.revision > at {
                self.put(entry.meta.clone(), entry.revision);
            }
        }
        for (key, revision) in &newer.gone {
            if *revision > at {
                self.remove(key, *revision);
            }
        }
    }

    pub fn get(&self, provider: &str, email: &str) -> Option<Arc<Entry>> {
        self.by_provider
            .get(provider)?
            .get(email)
            .map(|found| found.0.clone())
    }

    /// Up to `limit` accounts after `after`, in (provider, email) order; `provider`
    /// empty means all providers.
    pub fn page(
        &self,
        provider: &str,
        after: Option<&AccountKey>,
        limit: usize,
    ) -> Vec<Arc<Entry>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut providers: Vec<&String> = self
            .by_provider
            .keys()
            .filter(|name| provider.is_empty() || name.as_str() == provider)
            .filter(|name| after.is_none_or(|after| name.as_str() >= after.provider.as_str()))
            .collect();
        providers.sort();
        let mut page = Vec::with_capacity(limit.min(1024));
        for name in providers {
            let accounts = &self.by_provider[name];
            let from = match after {
                Some(after) if after.provider == *name => Excluded(after.email.as_str()),
                _ => Unbounded,
            };
            for ByEmail(entry) in accounts.range::<str, _>((from, Unbounded)) {
                if page.len() == limit {
                    return page;
                }
                page.push(entry.clone());
            }
        }
        page
    }

    /// Every account of one provider, in email order.
    pub fn provider(&self, provider: &str) -> impl Iterator<Item = &Arc<Entry>> {
        self.by_provider
            .get(provider)
            .into_iter()
            .flatten()
            .map(|found| &found.0)
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
                for ByEmail(entry) in accounts {
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
        self.by_provider.values().map(BTreeSet::len).sum()
    }
}

#[cfg(test)]
mod tests;
