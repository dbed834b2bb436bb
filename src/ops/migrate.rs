//! `credvault migrate --from-data-dir DIR`: copies an embedded (sled) store into an
//! empty etcd prefix, so that a single process's vault becomes a cluster's.
//!
//! Records go across sealed, never in the clear: the vault-wide records (format, key
//! check, HMAC keys, signing keys), the callers and the API-key index as they are (their
//! keys and sealing contexts are the same on both stores). Two kinds are renamed,
//! because etcd never sees an email: each account is opened in memory and sealed again
//! under its keyed fingerprint with its metadata sealed (record format 2), and the
//! caller-email index is keyed by the email's MAC. Live leases are not carried (a slot
//! on etcd lives only as long as its job lease; stop the jobs first), and the audit
//! trail stays in DIR, the node's own (point that node's `--data-dir` at DIR to keep
//! it). Every record written is then read back from etcd and compared, and every
//! account opened there. A run that fails after it began writing takes back what it
//! wrote, so the prefix is empty again.

use crate::{
    accounts::{Names, rename_record},
    callers::CallerService,
    crypto::Sealer,
    ops::progress::Progress,
    store::{EtcdStore, Expect, Naming, Outcome, Range, Store, StoreError, StoreExt, Tree, Txn},
};

/// Records written per etcd transaction (a put and its compare each: well under etcd's
/// 128 operations and 1.5 MiB per request).
const BATCH: usize = 32;
const SCAN_PAGE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} already holds a store; migrate only into an empty prefix")]
    NotEmpty(String),
    #[error("account record {key} does not open: {reason}; nothing of it was copied")]
    Account { key: String, reason: String },
    #[error(
        "{0} changed while being migrated (another writer?); migrate into an empty prefix again"
    )]
    Raced(String),
    #[error("verification failed: {0}")]
    Verify(String),
}

impl MigrateError {
    /// Errors the operator fixes with other input (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, MigrateError::NotEmpty(_))
    }
}

/// What was copied.
#[derive(Debug, Default)]
pub struct Migrated {
    /// Records written to etcd (accounts included).
    pub records: u64,
    pub accounts: u64,
    /// Live leases left behind.
    pub leases_left: u64,
    /// Audit-trail blocks left in the data directory.
    pub audit_left: u64,
}

/// The source: an opened embedded vault's store, sealer, names and callers.
pub struct Source<'a> {
    pub store: &'a dyn Store,
    pub sealer: &'a Sealer,
    pub names: &'a Names,
    pub callers: &'a CallerService,
}

/// Copies `from` into `to` (empty), then verifies; `target` names it in errors.
pub async fn migrate(
    from: Source<'_>,
    to: &EtcdStore,
    target: &str,
) -> Result<Migrated, MigrateError> {
    for tree in Tree::ALL {
        if !to.entries(tree, b"", None, 1).await?.is_empty() {
            return Err(MigrateError::NotEmpty(target.to_owned()));
        }
    }
    let etcd_names = Names {
        naming: Naming::Fingerprints,
        fingerprints: from.names.fingerprints.clone(),
    };
    let at = from.store.revision();
    let mut migrated = Migrated::default();
    // Every record to write, renamed where it must be, in the order of the trees.
    let mut writes: Vec<(Tree, Vec<u8>, Vec<u8>)> = Vec::new();
    for tree in Tree::ALL {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let range = Range::new(tree, b"", SCAN_PAGE)
                .after(after.as_deref())
                .at(Some(at));
            let page = from.store.scan(range).await?;
            after = page.entries.last().map(|(key, _)| key.clone());
            for (key, value) in page.entries {
                match tree {
                    Tree::Leases => migrated.leases_left += 1,
                    Tree::Audit => migrated.audit_left += 1,
                    Tree::Accounts => {
                        let (key, value) =
                            rename_record(from.sealer, from.names, &etcd_names, &key, &value)
                                .map_err(|error| MigrateError::Account {
                                    key: String::from_utf8_lossy(&key).replace('\0', "/"),
                                    reason: error.to_string(),
                                })?;
                        migrated.accounts += 1;
                        writes.push((tree, key, value));
                    }
                    Tree::CallerEmails => {
                        let email = String::from_utf8_lossy(&key);
                        let keyed = from.callers.keyed_email(&email).into_bytes();
                        writes.push((tree, keyed, value));
                    }
                    Tree::Meta | Tree::Callers | Tree::ApiKeys => {
                        writes.push((tree, key, value));
                    }
                }
            }
            if !page.more {
                break;
            }
        }
    }

    if let Err(error) =
        write_and_verify(from.sealer, &etcd_names, to, target, &writes, &mut migrated).await
    {
        // The prefix was empty: what this run wrote is taken back, so that a failed
        // migrate leaves nothing behind (and can simply be run again).
        let written = &writes[..migrated.records as usize];
        if let Err(cleanup) = take_back(to, written).await {
            tracing::error!(error = %cleanup, "taking back a failed migration's records failed; delete the prefix before running it again");
        }
        return Err(error);
    }
    Ok(migrated)
}

/// Writes `writes` in batches (each key compared absent), then reads every one back
/// and opens every account under its new name; `migrated.records` counts what was
/// committed.
async fn write_and_verify(
    sealer: &Sealer,
    etcd_names: &Names,
    to: &EtcdStore,
    target: &str,
    writes: &[(Tree, Vec<u8>, Vec<u8>)],
    migrated: &mut Migrated,
) -> Result<(), MigrateError> {
    let mut progress = Progress::new("migrate", writes.len() as u64);
    for batch in writes.chunks(BATCH) {
        let mut txn = Txn::new();
        for (tree, key, value) in batch {
            txn = txn
                .expect(*tree, key, Expect::Absent)
                .put(*tree, key, value);
        }
        match to.commit(txn).await? {
            Outcome::Committed(_) => {}
            Outcome::Conflict(_) => return Err(MigrateError::Raced(target.to_owned())),
        }
        migrated.records += batch.len() as u64;
        progress.advance(batch.len() as u64);
    }
    progress.finish();

    // Read back: every record as written, every account opens under its new name.
    let mut checking = Progress::new("verify", writes.len() as u64);
    for (tree, key, value) in writes {
        let stored = to.value(*tree, key).await?;
        if stored.as_deref() != Some(value.as_slice()) {
            return Err(MigrateError::Verify(format!(
                "a {} record differs in etcd from what was written",
                tree.name()
            )));
        }
        if *tree == Tree::Accounts {
            let meta = etcd_names
                .meta(sealer, key, value)
                .map_err(|error| MigrateError::Verify(error.to_string()))?;
            crate::accounts::record::decode(sealer, &etcd_names.record_key(&meta.key()), value)
                .map_err(|error| MigrateError::Verify(error.to_string()))?;
        }
        checking.advance(1);
    }
    checking.finish();
    Ok(())
}

/// Deletes records this run wrote.
async fn take_back(to: &EtcdStore, written: &[(Tree, Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
    for batch in written.chunks(BATCH) {
        let txn = batch
            .iter()
            .fold(Txn::new(), |txn, (tree, key, _)| txn.delete(*tree, key));
        to.commit(txn).await?;
    }
    Ok(())
}
