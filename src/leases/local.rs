//! The slot table of one process: the held leases in memory, where every take is
//! checked and recorded under one lock, and each lease sealed in the store so that
//! held slots survive a restart.

use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::broadcast;

use super::{
    LeaseError, LeaseRecord,
    slots::{SlotFuture, SlotTable},
    table::Table,
};
use crate::{
    accounts::AccountKey,
    crypto::Sealer,
    sealed,
    store::{Range, Store, StoreExt, Tree, Txn},
};

const PAGE: usize = 1024;

pub struct LocalSlots {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    table: Mutex<Table>,
    version: AtomicU64,
    freed: broadcast::Sender<AccountKey>,
}

impl LocalSlots {
    /// Loads the leases held before a restart; those expired at `now_ms` (or that do
    /// not open) are deleted.
    pub async fn load(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        now_ms: i64,
    ) -> Result<Self, LeaseError> {
        let mut table = Table::default();
        let mut after: Option<Vec<u8>> = None;
        let at = store.revision();
        loop {
            let range = Range::new(Tree::Leases, b"", PAGE)
                .after(after.as_deref())
                .at(Some(at));
            let page = store.scan(range).await?;
            for (key, value) in &page.entries {
                match sealed::open::<LeaseRecord>(&sealer, Tree::Leases, key, value) {
                    Ok(record) if record.expires_at_ms > now_ms => table.insert(record),
                    Ok(_) => {
                        store.swap(Tree::Leases, key, Some(value), None).await?;
                    }
                    Err(error) => {
                        tracing::error!(%error, "a stored lease does not open; it is dropped");
                        store.swap(Tree::Leases, key, Some(value), None).await?;
                    }
                }
            }
            after = page.entries.last().map(|(key, _)| key.clone());
            if !page.more {
                break;
            }
        }
        Ok(Self {
            store,
            sealer,
            table: Mutex::new(table),
            version: AtomicU64::new(0),
            freed: broadcast::channel(1024).0,
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn write(&self, record: &LeaseRecord) -> Result<(), LeaseError> {
        let bytes = sealed::seal(&self.sealer, Tree::Leases, record.id.as_bytes(), record)?;
        let txn = Txn::new().put(Tree::Leases, record.id.as_bytes(), &bytes);
        self.store.commit(txn).await?;
        Ok(())
    }

    /// Deletes a freed lease's record. A failure is logged, not answered: the record
    /// expires on its own, and on restart it is dropped as expired.
    async fn forget(&self, id: &str) {
        let deleted = self
            .store
            .commit(Txn::new().delete(Tree::Leases, id.as_bytes()))
            .await;
        if let Err(error) = deleted {
            tracing::error!(%error, lease = id, "deleting a lease record failed");
        }
    }

    /// Slots were freed: waiters may go.
    fn freed_now(&self, freed: &[LeaseRecord]) {
        self.version.fetch_add(1, Ordering::SeqCst);
        for lease in freed {
            let _ = self.freed.send(lease.key());
        }
    }
}

impl SlotTable for LocalSlots {
    fn take(&self, lease: LeaseRecord, max_jobs: usize) -> SlotFuture<'_, bool> {
        Box::pin(async move {
            {
                let mut table = self.table();
                if table.count(&lease.key()) >= max_jobs {
                    return Ok(false);
                }
                table.insert(lease.clone());
            }
            if let Err(error) = self.write(&lease).await {
                // Not written: the slot is not held.
                let removed = self.table().remove(&lease.id);
                self.freed_now(removed.as_slice());
                return Err(error);
            }
            Ok(true)
        })
    }

    fn renew<'a>(&'a self, id: &'a str, expires_at_ms: i64) -> SlotFuture<'a, Option<LeaseRecord>> {
        Box::pin(async move {
            let Some(record) = self.table().extend(id, expires_at_ms) else {
                return Ok(None);
            };
            self.write(&record).await?;
            Ok(Some(record))
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> SlotFuture<'a, Option<LeaseRecord>> {
        Box::pin(async move {
            let removed = self.table().remove(id);
            if let Some(record) = &removed {
                self.freed_now(std::slice::from_ref(record));
                self.forget(id).await;
            }
            Ok(removed)
        })
    }

    fn expire(&self, now_ms: i64) -> SlotFuture<'_, Vec<LeaseRecord>> {
        Box::pin(async move {
            let expired = self.table().take_expired(now_ms);
            if !expired.is_empty() {
                self.freed_now(&expired);
            }
            for record in &expired {
                self.forget(&record.id).await;
            }
            Ok(expired)
        })
    }

    fn get(&self, id: &str) -> Option<LeaseRecord> {
        self.table().get(id).cloned()
    }

    fn held(&self, key: &AccountKey) -> usize {
        self.table().count(key)
    }

    fn held_each(&self, keys: &[&AccountKey]) -> Vec<usize> {
        let table = self.table();
        keys.iter().map(|key| table.count(key)).collect()
    }

    fn leases_of(&self, key: &AccountKey) -> Vec<LeaseRecord> {
        self.table().of_account(key)
    }

    fn all(&self) -> Vec<LeaseRecord> {
        self.table().all().cloned().collect()
    }

    fn next_expiry(&self) -> Option<i64> {
        self.table().next_expiry()
    }

    fn freed(&self) -> broadcast::Receiver<AccountKey> {
        self.freed.subscribe()
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
}
