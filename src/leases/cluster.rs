//! The slot table shared by every credvault process on one etcd cluster.
//!
//! etcd decides every take (see [`crate::store::etcd::slots`]): slot `i` of an account
//! is a key that exists at most once, a take holds only while no slot at or past
//! `maxJobs` exists, and each slot is bound to an etcd lease with the job lease's TTL,
//! so the slots of a process that died free at their TTL. Each slot also carries its
//! deadline (the sealed lease's expiry), and every process reaps slots past it:
//! etcd restarts its lease timers when the leader changes, so a TTL alone could hold a
//! slot longer.
//!
//! What this process reads from (`get`, `held`, the reaper's `next_expiry`) is a
//! mirror of the slots, kept by its own takes and frees and by a watch of every other
//! process's ([`ClusterSlots::follow`]). The mirror only guides: a take it thinks
//! possible can still be refused by etcd, and is then retried on a fresh read.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::broadcast;

use super::{
    LeaseError, LeaseRecord,
    slots::{SlotFuture, SlotTable},
    table::Table,
};
use crate::{
    accounts::AccountKey,
    clock::Clock,
    crypto::{Fingerprinter, Sealer},
    sealed,
    store::{
        Change, Revision, Store, Tree,
        etcd::{
            EtcdStore,
            slots::{HeldSlot, slot_index, slot_key},
        },
    },
};

/// Attempts at a take that etcd refused because another process took a slot first.
const TAKE_ATTEMPTS: usize = 8;

/// Where a mirrored lease sits in etcd.
#[derive(Clone)]
struct Slot {
    key: Vec<u8>,
    mod_revision: Revision,
    etcd_lease: i64,
}

#[derive(Default)]
struct Mirror {
    table: Table,
    slots: HashMap<String, Slot>,
    /// Slot key → the lease id holding it.
    by_key: HashMap<Vec<u8>, String>,
    /// Leases freed lately. A lease id is never reused, so a read that was in flight
    /// while its lease was freed must not bring it back.
    gone: HashMap<String, Instant>,
}

/// How long a freed lease id is remembered: longer than any read can be in flight.
const GONE_FOR: Duration = Duration::from_secs(60);

impl Mirror {
    fn insert(&mut self, record: LeaseRecord, slot: Slot) -> Option<LeaseRecord> {
        if self.gone.contains_key(&record.id) {
            return None;
        }
        // A key held by another lease was freed meanwhile (its deletion not seen yet).
        let displaced = match self.by_key.get(&slot.key) {
            Some(other) if *other != record.id => {
                let other = other.clone();
                self.remove(&other)
            }
            _ => None,
        };
        if let Some(old) = self.slots.get(&record.id)
            && old.key != slot.key
        {
            self.by_key.remove(&old.key);
        }
        self.table.remove(&record.id);
        self.by_key.insert(slot.key.clone(), record.id.clone());
        self.slots.insert(record.id.clone(), slot);
        self.table.insert(record);
        displaced
    }

    fn remove(&mut self, id: &str) -> Option<LeaseRecord> {
        let now = Instant::now();
        self.gone.retain(|_, at| now.duration_since(*at) < GONE_FOR);
        self.gone.insert(id.to_owned(), now);
        if let Some(slot) = self.slots.remove(id) {
            self.by_key.remove(&slot.key);
        }
        self.table.remove(id)
    }

    fn indices(&self, key: &AccountKey) -> Vec<usize> {
        self.table
            .of_account(key)
            .iter()
            .filter_map(|record| self.slots.get(&record.id))
            .filter_map(|slot| slot_index(&slot.key))
            .collect()
    }
}

pub struct ClusterSlots {
    store: Arc<EtcdStore>,
    sealer: Arc<Sealer>,
    fingerprints: Arc<Fingerprinter>,
    clock: Arc<dyn Clock>,
    mirror: Mutex<Mirror>,
    /// The revision the mirror has followed to.
    seen: AtomicU64,
    version: AtomicU64,
    freed: broadcast::Sender<AccountKey>,
}

impl ClusterSlots {
    /// Reads every held slot. Slots past their deadline stay held until the reaper
    /// frees them.
    pub async fn open(
        store: Arc<EtcdStore>,
        sealer: Arc<Sealer>,
        fingerprints: Arc<Fingerprinter>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LeaseError> {
        let slots = ClusterSlots {
            store,
            sealer,
            fingerprints,
            clock,
            mirror: Mutex::default(),
            seen: AtomicU64::new(0),
            version: AtomicU64::new(0),
            freed: broadcast::channel(1024).0,
        };
        slots.reload(None).await?;
        Ok(slots)
    }

    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account's part of its slot keys: a keyed fingerprint, so etcd never holds
    /// an email.
    fn account(&self, key: &AccountKey) -> String {
        key.fingerprint(&self.fingerprints)
    }

    fn open_slot(&self, held: &HeldSlot) -> Option<LeaseRecord> {
        match sealed::open::<LeaseRecord>(&self.sealer, Tree::Leases, &held.key, &held.value) {
            Ok(record) => Some(record),
            Err(error) => {
                tracing::error!(%error, "a held slot does not open; it stays held until its TTL");
                None
            }
        }
    }

    /// Reads the slots (of one account, or all) afresh into the mirror; what the
    /// mirror held there and etcd no longer does is freed.
    async fn reload(&self, account: Option<&AccountKey>) -> Result<(), LeaseError> {
        let tag = account.map(|key| self.account(key));
        let (held, at) = self.store.held_slots(tag.as_deref()).await?;
        let opened: Vec<(LeaseRecord, Slot)> = held
            .iter()
            .filter_map(|h| {
                let record = self.open_slot(h)?;
                let slot = Slot {
                    key: h.key.clone(),
                    mod_revision: h.mod_revision,
                    etcd_lease: h.etcd_lease,
                };
                Some((record, slot))
            })
            .collect();
        let mut freed = Vec::new();
        {
            let mut mirror = self.mirror();
            let before: Vec<LeaseRecord> = match account {
                Some(key) => mirror.table.of_account(key),
                None => mirror.table.all().cloned().collect(),
            };
            for record in before {
                let newer = mirror
                    .slots
                    .get(&record.id)
                    .is_some_and(|slot| slot.mod_revision > at);
                if !newer && !opened.iter().any(|(r, _)| r.id == record.id) {
                    freed.extend(mirror.remove(&record.id));
                }
            }
            for (record, slot) in opened {
                let known = mirror.slots.get(&record.id).map(|s| s.mod_revision);
                if known.is_none_or(|rev| rev < slot.mod_revision) {
                    freed.extend(mirror.insert(record, slot));
                }
            }
        }
        if account.is_none() {
            self.seen.fetch_max(at, Ordering::SeqCst);
        }
        self.freed_now(&freed);
        Ok(())
    }

    /// Slots were freed: waiters may go.
    fn freed_now(&self, freed: &[LeaseRecord]) {
        if freed.is_empty() {
            return;
        }
        self.version.fetch_add(1, Ordering::SeqCst);
        for lease in freed {
            let _ = self.freed.send(lease.key());
        }
    }

    fn ttl_secs(until_ms: i64, now_ms: i64) -> i64 {
        ((until_ms - now_ms).max(0) + 999) / 1000
    }

    /// Takes what another process did to a slot.
    fn apply(&self, change: &Change) {
        let freed: Vec<LeaseRecord> = match &change.value {
            Some(value) => {
                let held = HeldSlot {
                    key: change.key.clone(),
                    value: value.clone(),
                    mod_revision: change.revision,
                    etcd_lease: 0,
                };
                let Some(record) = self.open_slot(&held) else {
                    return;
                };
                let mut mirror = self.mirror();
                let holder = mirror.by_key.get(&change.key).cloned();
                let known = [Some(record.id.clone()), holder]
                    .into_iter()
                    .flatten()
                    .filter_map(|id| mirror.slots.get(&id).map(|s| s.mod_revision))
                    .max();
                if known.is_some_and(|rev| rev >= change.revision) {
                    return;
                }
                let etcd_lease = mirror.slots.get(&record.id).map_or(0, |s| s.etcd_lease);
                let slot = Slot {
                    key: held.key,
                    mod_revision: held.mod_revision,
                    etcd_lease,
                };
                mirror.insert(record, slot).into_iter().collect()
            }
            None => {
                let mut mirror = self.mirror();
                let holder = mirror.by_key.get(&change.key).cloned();
                match holder {
                    Some(id)
                        if mirror
                            .slots
                            .get(&id)
                            .is_some_and(|slot| slot.mod_revision < change.revision) =>
                    {
                        mirror.remove(&id).into_iter().collect()
                    }
                    _ => Vec::new(),
                }
            }
        };
        self.freed_now(&freed);
    }

    /// Follows every process's slot changes until `stop`; when the watch ends, reads
    /// the slots afresh and follows on.
    pub async fn follow(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let from = self.seen.load(Ordering::SeqCst);
            let ended = match self.store.watch(Tree::Leases, b"", from).await {
                Ok(mut watch) => loop {
                    let change = tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        change = watch.next() => change,
                    };
                    match change {
                        Ok(change) => {
                            self.apply(&change);
                            self.seen.fetch_max(change.revision, Ordering::SeqCst);
                        }
                        Err(error) => break error,
                    }
                },
                Err(error) => error,
            };
            tracing::debug!(%ended, "the slots' watch ended; reading them afresh");
            loop {
                match self.reload(None).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "reading the slots failed; retrying in 1 s");
                        tokio::select! {
                            _ = stop.wait_for(|stop| *stop) => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        }
    }

    /// Frees one mirrored slot in etcd (if it is still the one mirrored: slot indexes
    /// are reused, and a later take must not be freed) and ends its
    /// etcd lease. A failure is logged: the slot then frees at its TTL, and any
    /// process's reaper frees it past its deadline.
    async fn free(&self, slot: &Slot) {
        if let Err(error) = self
            .store
            .delete_if(Tree::Leases, &slot.key, slot.mod_revision)
            .await
        {
            tracing::warn!(%error, "freeing a slot failed; it frees at its deadline");
            return;
        }
        if slot.etcd_lease != 0 {
            self.store.revoke(slot.etcd_lease).await;
        }
    }
}

impl SlotTable for ClusterSlots {
    fn take(&self, lease: LeaseRecord, max_jobs: usize) -> SlotFuture<'_, bool> {
        Box::pin(async move {
            let account_key = lease.key();
            let account = self.account(&account_key);
            let ttl = Self::ttl_secs(lease.expires_at_ms, lease.acquired_at_ms);
            let mut etcd_lease = None;
            for _ in 0..TAKE_ATTEMPTS {
                let held = self.mirror().indices(&account_key);
                let Some(index) = (0..max_jobs).find(|i| !held.contains(i)) else {
                    break;
                };
                let etcd = match etcd_lease {
                    Some(id) => id,
                    None => *etcd_lease.insert(self.store.grant(ttl).await?),
                };
                let key = slot_key(&account, index);
                let value = sealed::seal(&self.sealer, Tree::Leases, &key, &lease)?;
                match self
                    .store
                    .take_slot(&account, index, max_jobs, &value, etcd)
                    .await
                {
                    Ok(Some(revision)) => {
                        let slot = Slot {
                            key,
                            mod_revision: revision,
                            etcd_lease: etcd,
                        };
                        let displaced = self.mirror().insert(lease, slot);
                        self.freed_now(displaced.as_slice());
                        return Ok(true);
                    }
                    // Another process was first: look at the account afresh.
                    Ok(None) => self.reload(Some(&account_key)).await?,
                    Err(error) => {
                        // The take may have committed: ending its etcd lease frees it.
                        self.store.revoke(etcd).await;
                        return Err(error.into());
                    }
                }
            }
            if let Some(etcd) = etcd_lease {
                self.store.revoke(etcd).await;
            }
            Ok(false)
        })
    }

    fn renew<'a>(&'a self, id: &'a str, expires_at_ms: i64) -> SlotFuture<'a, Option<LeaseRecord>> {
        Box::pin(async move {
            let (mut record, slot) = {
                let mirror = self.mirror();
                let (Some(record), Some(slot)) = (mirror.table.get(id), mirror.slots.get(id))
                else {
                    return Ok(None);
                };
                (record.clone(), slot.clone())
            };
            record.expires_at_ms = expires_at_ms;
            let ttl = Self::ttl_secs(expires_at_ms, self.clock.now_ms());
            let etcd = self.store.grant(ttl).await?;
            let value = sealed::seal(&self.sealer, Tree::Leases, &slot.key, &record)?;
            match self
                .store
                .replace_slot(&slot.key, slot.mod_revision, &value, etcd)
                .await
            {
                Ok(Some(revision)) => {
                    let renewed = Slot {
                        key: slot.key.clone(),
                        mod_revision: revision,
                        etcd_lease: etcd,
                    };
                    let displaced = self.mirror().insert(record.clone(), renewed);
                    self.freed_now(displaced.as_slice());
                    if slot.etcd_lease != 0 {
                        self.store.revoke(slot.etcd_lease).await;
                    }
                    Ok(Some(record))
                }
                Ok(None) => {
                    // Freed or reaped meanwhile: the lease is not held.
                    self.store.revoke(etcd).await;
                    let removed = self.mirror().remove(id);
                    self.freed_now(removed.as_slice());
                    Ok(None)
                }
                Err(error) => {
                    self.store.revoke(etcd).await;
                    Err(error.into())
                }
            }
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> SlotFuture<'a, Option<LeaseRecord>> {
        Box::pin(async move {
            let (removed, slot) = {
                let mut mirror = self.mirror();
                let slot = mirror.slots.get(id).cloned();
                (mirror.remove(id), slot)
            };
            if let Some(record) = &removed {
                self.freed_now(std::slice::from_ref(record));
            }
            if let Some(slot) = slot {
                self.free(&slot).await;
            }
            Ok(removed)
        })
    }

    fn expire(&self, now_ms: i64) -> SlotFuture<'_, Vec<LeaseRecord>> {
        Box::pin(async move {
            let expired: Vec<(LeaseRecord, Option<Slot>)> = {
                let mut mirror = self.mirror();
                let expired = mirror.table.take_expired(now_ms);
                expired
                    .into_iter()
                    .map(|record| {
                        let slot = mirror.slots.get(&record.id).cloned();
                        mirror.remove(&record.id);
                        (record, slot)
                    })
                    .collect()
            };
            let records: Vec<LeaseRecord> = expired.iter().map(|(r, _)| r.clone()).collect();
            self.freed_now(&records);
            for slot in expired.iter().filter_map(|(_, slot)| slot.as_ref()) {
                self.free(slot).await;
            }
            Ok(records)
        })
    }

    fn get(&self, id: &str) -> Option<LeaseRecord> {
        self.mirror().table.get(id).cloned()
    }

    fn held(&self, key: &AccountKey) -> usize {
        self.mirror().table.count(key)
    }

    fn held_each(&self, keys: &[&AccountKey]) -> Vec<usize> {
        let mirror = self.mirror();
        keys.iter().map(|key| mirror.table.count(key)).collect()
    }

    fn leases_of(&self, key: &AccountKey) -> Vec<LeaseRecord> {
        self.mirror().table.of_account(key)
    }

    fn all(&self) -> Vec<LeaseRecord> {
        self.mirror().table.all().cloned().collect()
    }

    fn next_expiry(&self) -> Option<i64> {
        self.mirror().table.next_expiry()
    }

    fn freed(&self) -> broadcast::Receiver<AccountKey> {
        self.freed.subscribe()
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    fn shared(&self) -> bool {
        true
    }
}
