//! Master-key rotation: re-seal every record still sealed under the previous key with
//! the current one, while the vault serves.
//!
//! It is safe to run beside live traffic and to interrupt: writers always seal with the
//! current key, each record is swapped in with compare-and-swap from the exact bytes
//! that were re-sealed (a record changed meanwhile is read again), and a record already
//! under the current key is left alone, so a second run continues where one stopped.
//! The key-check record goes last: until it is re-sealed, the vault does not start
//! without the previous key, so an unfinished rotation can never look finished.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    accounts::record,
    callers::CallerService,
    crypto::{MasterKey, Sealer},
    ops::{backup::durable, progress::Progress, shared_rekey::ROTATING_KEY},
    sealed,
    store::{
        Store, StoreError, StoreExt, Swap, Tree,
        meta::{FORMAT_KEY, KEY_CHECK_CONTEXT, KEY_CHECK_KEY},
    },
};

const BATCH: usize = 512;
/// Trees of sealed records (accounts have their own format; the indexes hold nothing
/// sealed). The meta tree goes last, its key check at the very end.
const SEALED_TREES: [Tree; 3] = [Tree::Callers, Tree::Leases, Tree::Audit];

#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record {key} of tree {tree} does not open under either key: {reason}")]
    Unreadable {
        tree: &'static str,
        key: String,
        reason: String,
    },
}

/// Where a rotation is, for the admin RPC and the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// No previous key configured: nothing to rotate.
    #[default]
    Idle,
    Running,
    Done,
    Failed(String),
}

/// Why RotateMasterKey did not start.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The key file does not read or does not hold a key (the reason names the path).
    #[error("{0}")]
    BadKey(String),
    #[error("a master key rotation is already running; see RotationStatus")]
    Running,
    #[error(
        "that key is already current, or a previous key is still held (an earlier rotation has not finished; see RotationStatus)"
    )]
    NotNow,
    /// On a store shared by several processes, re-sealing under a key the others do not
    /// hold would lock them out of every record.
    #[error(
        "master-key rotation does not run online with the etcd backend: every process reads the shared records with the key it holds; stop every node and run `credvault rotate-key --new-key-file FILE` against the prefix (README, \"Rotate the master key of an etcd cluster\")"
    )]
    Shared,
}

pub struct Rekey {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    /// The store is shared with other processes: online rotation is refused, and the
    /// offline one leaves the records bound to processes alone.
    shared: bool,
    /// A `--dev` vault's key file: a rotation keeps it current (see `rotate_to_file`).
    dev_key: Option<std::path::PathBuf>,
    examined: AtomicU64,
    resealed: AtomicU64,
    phase: Mutex<Phase>,
}

impl Rekey {
    pub fn new(store: Arc<dyn Store>, sealer: Arc<Sealer>) -> Self {
        Self::with_sharing(store, sealer, false)
    }

    /// `shared`: other processes use the same records (etcd); online rotation is
    /// refused.
    pub fn with_sharing(store: Arc<dyn Store>, sealer: Arc<Sealer>, shared: bool) -> Self {
        Self {
            store,
            sealer,
            shared,
            dev_key: None,
            examined: AtomicU64::new(0),
            resealed: AtomicU64::new(0),
            phase: Mutex::new(Phase::Idle),
        }
    }

    /// A `--dev` vault keeps its key in `path`.
    pub fn with_dev_key(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.dev_key = path;
        self
    }

    pub fn needed(&self) -> bool {
        self.sealer.previous_key_id().is_some()
    }

    /// Whether online rotation is refused (a shared store).
    pub fn shared(&self) -> bool {
        self.shared
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records looked at and re-sealed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.examined.load(Ordering::Relaxed),
            self.resealed.load(Ordering::Relaxed),
        )
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// RotateMasterKey's domain work: reads the new key from `path`, makes it current
    /// (the old one is kept to read what is not re-sealed yet) and re-seals everything
    /// in the background.
    pub fn rotate_to_file(
        self: &Arc<Self>,
        path: &str,
        callers: Arc<CallerService>,
    ) -> Result<(), RotateError> {
        let key = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {path}: {e}"))
            .and_then(|text| {
                MasterKey::from_base64(text.trim()).map_err(|e| format!("the key in {path}: {e}"))
            })
            .map_err(RotateError::BadKey)?;
        if self.shared {
            return Err(RotateError::Shared);
        }
        if self.phase() == Phase::Running {
            return Err(RotateError::Running);
        }
        if self.sealer.previous_key_id().is_some() || key.key_id() == self.sealer.key_id() {
            return Err(RotateError::NotNow);
        }
        // A --dev vault has no configuration to change: its key file beside the data
        // takes the new key now, the old one kept beside it until the rotation is done.
        if let Some(dev_key) = &self.dev_key {
            crate::config::keep_dev_keys(dev_key, &key)
                .map_err(|e| RotateError::BadKey(format!("keeping the --dev key files: {e}")))?;
        }
        if !self.sealer.rotate_to(&key) {
            return Err(RotateError::NotNow);
        }
        tracing::warn!(
            key_id = %self.sealer.key_id(),
            "master key rotation requested: set master_key_file to the new key (and previous_master_key_file to the old one until it completes) before the next start"
        );
        self.start(callers);
        Ok(())
    }

    /// Re-seals in the background; RUNNING from this moment (a status asked right
    /// after the request sees it started).
    pub fn start(self: &Arc<Self>, callers: Arc<CallerService>) {
        self.set_phase(Phase::Running);
        self.examined.store(0, Ordering::Relaxed);
        self.resealed.store(0, Ordering::Relaxed);
        tokio::spawn(self.clone().in_background(callers));
    }

    /// Re-seals every record under the new master key while serving (which retires the
    /// previous key), then rotates the caller-token signing key too (tokens signed
    /// before stay valid until they expire).
    pub async fn in_background(self: Arc<Self>, callers: Arc<CallerService>) {
        let key_id = self.sealer.key_id();
        tracing::info!(%key_id, "master key rotation: re-sealing every record under the new key");
        match self.run().await {
            Ok(resealed) => {
                if let Some(dev_key) = &self.dev_key {
                    let previous = crate::config::dev_previous_key_path(dev_key);
                    if let Err(error) = std::fs::remove_file(&previous)
                        && error.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!(%error, path = %previous.display(), "removing the --dev previous key failed");
                    }
                }
                let signing = if resealed > 0 {
                    callers.rotate_signing_key().await.map(Some)
                } else {
                    Ok(None)
                };
                match (signing, self.store.flush().await) {
                    (Ok(signing_key), Ok(())) => tracing::info!(
                        resealed,
                        %key_id,
                        signing_key = signing_key.unwrap_or_default(),
                        "master key rotation complete: the previous key is no longer needed; configure only master_key_file (the new key)"
                    ),
                    (Err(error), _) => {
                        tracing::error!(%error, "rotating the signing key after the master key failed");
                    }
                    (_, Err(error)) => tracing::error!(
                        %error,
                        "flushing the re-sealed records failed; the rotation resumes at the next start"
                    ),
                }
            }
            Err(error) => tracing::error!(
                %error,
                "master key rotation stopped; it resumes at the next start (configure both keys)"
            ),
        }
    }

    /// Re-seals everything; answers how many records were re-sealed. It yields after
    /// each batch, so that calls served meanwhile are not held up.
    pub async fn run(&self) -> Result<u64, RekeyError> {
        self.set_phase(Phase::Running);
        let outcome = self.walk().await;
        if outcome.is_ok() {
            // Nothing is sealed under it any more.
            self.sealer.retire_previous();
        }
        self.set_phase(match &outcome {
            Ok(_) => Phase::Done,
            Err(error) => Phase::Failed(error.to_string()),
        });
        outcome
    }

    async fn walk(&self) -> Result<u64, RekeyError> {
        // The trees walked (the indexes hold nothing sealed), as RotationStatus counts.
        let mut total = 0;
        for tree in [Tree::Accounts, Tree::Meta].into_iter().chain(SEALED_TREES) {
            total += self.store.count(tree).await?;
        }
        let mut progress = Progress::new("key rotation", total);
        self.tree(Tree::Accounts, &mut progress, |sealer, key, bytes| {
            record::reseal(sealer, key, bytes).map_err(|e| e.to_string())
        })
        .await?;
        for tree in SEALED_TREES {
            self.tree(tree, &mut progress, |sealer, key, bytes| {
                sealed::reseal(sealer, tree, key, bytes).map_err(|e| e.to_string())
            })
            .await?;
        }
        // Meta: sealed records (signing keys, HMAC keys); the format marker is plain;
        // the key check is raw sealer output and comes last.
        self.tree(Tree::Meta, &mut progress, |sealer, key, bytes| {
            if key == FORMAT_KEY || key == KEY_CHECK_KEY || key == ROTATING_KEY {
                return Ok(None);
            }
            sealed::reseal(sealer, Tree::Meta, key, bytes).map_err(|e| e.to_string())
        })
        .await?;
        // Counted where the meta tree was walked; re-sealed only now.
        self.one(Tree::Meta, KEY_CHECK_KEY, |sealer, _, bytes| {
            sealer
                .reseal(KEY_CHECK_CONTEXT, bytes)
                .map_err(|e| e.to_string())
        })
        .await?;
        progress.finish();
        Ok(self.resealed.load(Ordering::Relaxed))
    }

    async fn tree(
        &self,
        tree: Tree,
        progress: &mut Progress,
        reseal: impl Fn(&Sealer, &[u8], &[u8]) -> Result<Option<Vec<u8>>, String>,
    ) -> Result<(), RekeyError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self
                .store
                .entries(tree, b"", after.as_deref(), BATCH)
                .await?;
            let done = batch.len() < BATCH;
            for (key, _) in &batch {
                self.examined.fetch_add(1, Ordering::Relaxed);
                if !self.bound_to_a_process(tree, key) {
                    self.one(tree, key, &reseal).await?;
                }
                progress.advance(1);
            }
            after = batch.last().map(|(key, _)| key.clone());
            if done {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
    }

    /// On a shared store, the records that end with the process that wrote them (slots
    /// and login locks on their etcd leases, nodes' pulses) are left as they are: a
    /// rotation runs with every node stopped, so they expire or are written afresh.
    /// The audit trail is this node's own and is re-sealed.
    fn bound_to_a_process(&self, tree: Tree, key: &[u8]) -> bool {
        self.shared && tree != Tree::Audit && !durable(tree, key)
    }

    /// Re-seals one record, reading it again whenever a writer got there first.
    async fn one(
        &self,
        tree: Tree,
        key: &[u8],
        reseal: impl Fn(&Sealer, &[u8], &[u8]) -> Result<Option<Vec<u8>>, String>,
    ) -> Result<(), RekeyError> {
        loop {
            // Deleted meanwhile: nothing left to re-seal.
            let Some(current) = self.store.value(tree, key).await? else {
                return Ok(());
            };
            let resealed =
                reseal(&self.sealer, key, &current).map_err(|reason| RekeyError::Unreadable {
                    tree: tree.name(),
                    key: String::from_utf8_lossy(key).replace('\0', "/"),
                    reason,
                })?;
            let Some(resealed) = resealed else {
                return Ok(());
            };
            match self
                .store
                .swap(tree, key, Some(&current), Some(&resealed))
                .await?
            {
                Swap::Done => {
                    self.resealed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Swap::Conflict { .. } => continue,
            }
        }
    }
}
