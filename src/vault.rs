//! Opening a vault: the store, the key check, and the services built on them.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    accounts::{AccountService, Names},
    audit::AuditLog,
    auth::{Authenticator, kubernetes::KubernetesAuth},
    callers::keys::CallerMacs,
    callers::{CallerError, CallerService},
    clock::{Clock, SystemClock},
    config::{Settings, StoreSettings},
    crypto::{Fingerprinter, MasterKey, Purpose, RngError, SealError, Sealer, SubKey},
    leases::LeaseSettings,
    ops::rekey::Rekey,
    ops::reload::SecretFiles,
    providers::Providers,
    refresh::RefreshSettings,
    sealed,
    store::{
        EtcdStore, FaultPlan, FaultyStore, Naming, Store, StoreError, StoreExt, Swap, Tree,
        split::Split,
    },
};

/// The layout of the data this build writes. Bumped when builds before it could not
/// read what it writes: 2 writes the audit trail as compact blocks (sealed format 2).
pub const STORE_FORMAT: u32 = 2;
/// The oldest layout this build reads. Opening one older than [`STORE_FORMAT`] marks
/// it as [`STORE_FORMAT`] (its records stay as they are, and are read as they are), so
/// that an older build refuses it instead of misreading what this one adds.
pub const OLDEST_FORMAT: u32 = 1;

pub use crate::store::meta::{FORMAT_KEY, HMAC_KEYS_KEY, KEY_CHECK_CONTEXT, KEY_CHECK_KEY};
const KEY_CHECK_PLAINTEXT: &[u8] = b"credvault master key check";

/// The HMAC keys for callers' secrets and the audit trail. Stored (sealed) rather than
/// derived at each start, so that they survive a master-key rotation: the MACs made
/// with them cannot be recomputed without the secrets.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredHmacKeys {
    caller: String,
    audit: String,
}

/// The stored HMAC keys; on first use (a new vault, or one from before they were
/// stored) the ones derived from the master key, stored for good.
async fn hmac_keys(
    store: &dyn Store,
    sealer: &Sealer,
    master: &MasterKey,
) -> Result<(SubKey, SubKey), CheckError> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let decode = |text: &str| -> Option<SubKey> {
        let bytes = zeroize::Zeroizing::new(STANDARD.decode(text).ok()?);
        Some(SubKey::from_bytes(bytes.as_slice().try_into().ok()?))
    };
    let open = |bytes: &[u8]| -> Result<(SubKey, SubKey), CheckError> {
        let stored: StoredHmacKeys = sealed::open(sealer, Tree::Meta, HMAC_KEYS_KEY, bytes)
            .map_err(|e| CheckError::Open(OpenError::HmacKeys(e.to_string())))?;
        let keys = decode(&stored.caller).zip(decode(&stored.audit));
        keys.ok_or_else(|| CheckError::Open(OpenError::HmacKeys("malformed".into())))
    };
    if let Some(bytes) = store.value(Tree::Meta, HMAC_KEYS_KEY).await? {
        return open(&bytes);
    }
    let caller = master.derive(Purpose::CallerHmac);
    let audit = master.derive(Purpose::AuditHmac);
    let stored = StoredHmacKeys {
        caller: STANDARD.encode(caller.expose()),
        audit: STANDARD.encode(audit.expose()),
    };
    let bytes = sealed::seal(sealer, Tree::Meta, HMAC_KEYS_KEY, &stored)
        .map_err(|e| CheckError::Open(OpenError::HmacKeys(e.to_string())))?;
    match store
        .swap(Tree::Meta, HMAC_KEYS_KEY, None, Some(&bytes))
        .await?
    {
        Swap::Done => Ok((caller, audit)),
        Swap::Conflict {
            current: Some(current),
        } => open(&current),
        Swap::Conflict { current: None } => Err(CheckError::Open(OpenError::HmacKeys(
            "vanished while being stored".into(),
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the store in {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(
        "the master key does not match the data in {0} (key check failed); start with the key it is sealed under now (after a master-key rotation, the new one)"
    )]
    WrongKey(PathBuf),
    #[error(
        "the data in {path} has store format {found}, this build reads formats {OLDEST_FORMAT} to {STORE_FORMAT}; run a credvault release that supports format {found}, or restore a backup made for this one"
    )]
    UnsupportedFormat { path: PathBuf, found: String },
    #[error(
        "a master-key rotation of {0} is running or was interrupted (`credvault rotate-key`); start once it has finished, with the new key, or finish it by running the same rotate-key command again"
    )]
    Rotating(PathBuf),
    /// The data directory (or a new `--dev` key file) could not be made.
    #[error("{0}")]
    DataDir(String),
    #[error("the stored HMAC keys do not open: {0}")]
    HmacKeys(String),
    #[error("{0} holds no credvault data")]
    Empty(PathBuf),
    #[error("opening the callers: {0}")]
    Callers(#[from] CallerError),
    #[error("initialising the key check: {0}")]
    Seal(#[from] SealError),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error("{0}")]
    Kubernetes(String),
}

impl OpenError {
    /// Errors an operator fixes in configuration (exit 64) rather than in the machine.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            OpenError::WrongKey(_)
                | OpenError::Kubernetes(_)
                | OpenError::UnsupportedFormat { .. }
                | OpenError::Empty(_)
                | OpenError::Rotating(_)
        )
    }

    /// Another process holds the data directory (exit 75).
    pub fn is_in_use(&self) -> bool {
        matches!(
            self,
            OpenError::Store {
                source: StoreError::Locked,
                ..
            }
        )
    }

    /// The shared store did not answer (exit 69).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, OpenError::Store { source, .. } if source.is_unavailable())
    }

    /// The data on disk is damaged or has lost acknowledged writes (exit 74): it is not
    /// served, and the way out is a restore.
    pub fn is_damage(&self) -> bool {
        matches!(self, OpenError::Store { source, .. } if source.is_damage())
    }
}

/// Everything a running credvault holds. Dropping it closes the store.
pub struct Vault {
    /// What the services read and write through (the configured backend, or a
    /// fault-injecting wrapper over it in tests).
    pub store: Arc<dyn Store>,
    pub audit: Arc<AuditLog>,
    /// Re-seals records under the current master key during a rotation.
    pub rekey: Arc<Rekey>,
    /// Secret files to read again on SIGHUP or change.
    pub secret_files: SecretFiles,
    pub sealer: Arc<Sealer>,
    pub accounts: Arc<AccountService>,
    pub callers: Arc<CallerService>,
    /// The one door unmasked secrets leave through.
    pub door: Arc<crate::handout::Door>,
    pub authenticator: Arc<Authenticator>,
    pub providers: Arc<Providers>,
    pub refresh: RefreshSettings,
    pub lease_settings: LeaseSettings,
    pub limits: crate::limits::LimitSettings,
    pub clock: Arc<dyn Clock>,
    pub fingerprints: Arc<Fingerprinter>,
    /// The shared etcd store, in etcd mode: slots and login flights are coordinated
    /// through it.
    pub etcd: Option<Arc<EtcdStore>>,
    /// This process's name in logs and lock values.
    pub node_id: String,
}

impl Vault {
    pub async fn open(settings: &Settings) -> Result<Self, OpenError> {
        Self::open_with_clock(settings, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        Self::open_with(settings, clock, None, false).await
    }

    /// For tests: every store operation goes through a [`FaultyStore`] following `plan`.
    pub async fn open_with_faults(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        plan: Arc<FaultPlan>,
    ) -> Result<Self, OpenError> {
        Self::open_with(settings, clock, Some(plan), false).await
    }

    /// For `credvault rotate-key`: opens a shared store although a rotation is marked
    /// on it (that is the run it continues); see [`crate::ops::shared_rekey`].
    pub async fn open_to_rotate(settings: &Settings) -> Result<Self, OpenError> {
        Self::open_with(settings, Arc::new(SystemClock), None, true).await
    }

    async fn open_with(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        faults: Option<Arc<FaultPlan>>,
        rotating: bool,
    ) -> Result<Self, OpenError> {
        settings
            .prepare_data_dir()
            .map_err(|e| OpenError::DataDir(e.to_string()))?;
        let db_path = settings.data_dir.join("db");
        let (backend, etcd, where_) = open_backend(settings, &db_path).await?;
        let store_error = |source| OpenError::Store {
            path: where_.clone(),
            source,
        };
        let store: Arc<dyn Store> = match faults {
            Some(plan) => Arc::new(FaultyStore::new(backend, plan)),
            None => backend,
        };
        let mut sealer = Sealer::new(&settings.master_key);
        if let Some(previous) = &settings.previous_master_key {
            sealer = sealer.with_previous(previous);
        }
        let sealer = Arc::new(sealer);
        // Where the data is, as the refusals below name it.
        let data = match &etcd {
            Some(_) => where_.clone(),
            None => settings.data_dir.clone(),
        };
        let format = check_format(store.as_ref(), &data)
            .await
            .map_err(|e| match e {
                CheckError::Store(source) => store_error(source),
                CheckError::Open(error) => error,
            })?;
        check_key(store.as_ref(), &sealer, &data)
            .await
            .map_err(|e| match e {
                CheckError::Store(source) => store_error(source),
                CheckError::Open(error) => error,
            })?;
        // A shared store being re-sealed is opened only by the rotation itself: a node
        // started now would write under the old key what the rotation already passed.
        if etcd.is_some() && !rotating {
            match crate::ops::shared_rekey::marked(store.as_ref()).await {
                Ok(false) => {}
                Ok(true) => return Err(OpenError::Rotating(data.clone())),
                Err(source) => return Err(store_error(source)),
            }
        }
        if format < STORE_FORMAT {
            upgrade_format(store.as_ref(), format)
                .await
                .map_err(store_error)?;
        }

        let (caller_hmac, audit_hmac) = hmac_keys(store.as_ref(), &sealer, &settings.master_key)
            .await
            .map_err(|e| match e {
                CheckError::Store(source) => store_error(source),
                CheckError::Open(error) => error,
            })?;

        let providers = Arc::new(settings.providers.clone());
        let fingerprints = Arc::new(Fingerprinter::from_key(&audit_hmac));
        // A shared store never sees an email: records are named by keyed fingerprint.
        let naming = match etcd {
            Some(_) => Naming::Fingerprints,
            None => Naming::Emails,
        };
        let names = Names {
            naming,
            fingerprints: fingerprints.clone(),
        };
        let accounts = Arc::new(
            AccountService::open(
                store.clone(),
                sealer.clone(),
                names,
                providers.clone(),
                clock.clone(),
            )
            .await
            .map_err(store_error)?,
        );
        let callers = Arc::new(
            CallerService::open(
                store.clone(),
                sealer.clone(),
                CallerMacs::from_key(&caller_hmac),
                naming,
                clock.clone(),
                settings.callers.clone(),
            )
            .await?,
        );
        let mut authenticator = Authenticator::new(
            &settings.admin_token,
            callers.clone(),
            settings.socket_peers.clone(),
        )?;
        if let Some(kubernetes) = &settings.kubernetes_auth {
            let kubernetes =
                KubernetesAuth::new(kubernetes, clock.clone()).map_err(OpenError::Kubernetes)?;
            authenticator = authenticator.with_kubernetes(kubernetes);
        }
        let authenticator = Arc::new(authenticator);
        let mut audit = AuditLog::open(
            store.clone(),
            sealer.clone(),
            fingerprints.clone(),
            clock.clone(),
            settings.audit_retention,
        )
        .await
        .map_err(store_error)?
        .tagged(&settings.node_id, settings.audit_log_lines);
        if settings.audit_sync == crate::config::AuditSync::Os {
            let debits;
            (audit, debits) = audit
                .spilling_to(&settings.data_dir)
                .await
                .map_err(store_error)?;
            // Flushed before the first call: a crash from here on finds the events
            // stored and charges nothing again (the spill is only deleted by the first
            // flush round).
            if !debits.is_empty() {
                callers.take_spilled(&debits).await?;
                store.flush().await.map_err(store_error)?;
            }
        }
        let audit = Arc::new(audit);
        // Hand-outs take their credits in memory; each group commit writes them.
        let settling = callers.clone();
        audit.before_flush(Box::new(move || {
            let callers = settling.clone();
            Box::pin(async move { callers.settle().await })
        }));
        let rekey = Arc::new(
            Rekey::with_sharing(store.clone(), sealer.clone(), etcd.is_some())
                .with_dev_key(settings.dev_key.as_ref().map(|dev| dev.path.clone())),
        );
        if audit.spills() {
            // Weak: the audit log's hook above already holds the callers.
            let events = Arc::downgrade(&audit);
            callers.write_events_first(Box::new(move || {
                let events = events.clone();
                Box::pin(async move {
                    if let Some(audit) = events.upgrade() {
                        audit.write_queued_if_any().await;
                    }
                })
            }));
        }
        let door = Arc::new(crate::handout::Door::new(callers.clone(), audit.clone()));
        Ok(Self {
            store,
            audit,
            rekey,
            secret_files: SecretFiles {
                admin_token: settings.admin_token_file.clone(),
                master_key: settings.master_key_file.clone(),
            },
            sealer,
            accounts,
            authenticator,
            providers,
            refresh: settings.refresh.clone(),
            lease_settings: settings.leases.clone(),
            limits: settings.limits.clone(),
            door,
            callers,
            fingerprints,
            clock,
            etcd,
            node_id: settings.node_id.clone(),
        })
    }
}

/// The store the settings name, the etcd store when it is shared, and where the data
/// is (for messages): the data directory's `db`, or etcd's endpoints and prefix.
async fn open_backend(
    settings: &Settings,
    db_path: &Path,
) -> Result<(Arc<dyn Store>, Option<Arc<EtcdStore>>, PathBuf), OpenError> {
    let local = |path: &Path| {
        crate::store::open_embedded(path).map_err(|source| OpenError::Store {
            path: path.to_owned(),
            source,
        })
    };
    match &settings.store {
        StoreSettings::Sled => Ok((local(db_path)?, None, db_path.to_owned())),
        StoreSettings::Etcd(options) => {
            let where_ = etcd_place(options);
            let etcd = EtcdStore::connect(options)
                .await
                .map_err(|source| OpenError::Store {
                    path: where_.clone(),
                    source,
                })?;
            let etcd = Arc::new(etcd);
            // The audit trail stays on this node, in its data directory.
            let split = Split::new(etcd.clone(), local(db_path)?, &[Tree::Audit]);
            Ok((Arc::new(split), Some(etcd), where_))
        }
    }
}

enum CheckError {
    Store(StoreError),
    Open(OpenError),
}

impl From<StoreError> for CheckError {
    fn from(error: StoreError) -> Self {
        CheckError::Store(error)
    }
}

/// Writes the format marker into a new store, or checks the one found; answers the
/// store's format.
async fn check_format(store: &dyn Store, data_dir: &std::path::Path) -> Result<u32, CheckError> {
    match store.value(Tree::Meta, FORMAT_KEY).await? {
        Some(found) => std::str::from_utf8(&found)
            .ok()
            .and_then(|text| text.parse::<u32>().ok())
            .filter(|format| (OLDEST_FORMAT..=STORE_FORMAT).contains(format))
            .ok_or_else(|| {
                CheckError::Open(OpenError::UnsupportedFormat {
                    path: data_dir.to_owned(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                })
            }),
        None => {
            let current = STORE_FORMAT.to_string();
            store
                .swap(Tree::Meta, FORMAT_KEY, None, Some(current.as_bytes()))
                .await?;
            Ok(STORE_FORMAT)
        }
    }
}

/// Marks an older store as this build's format, before anything is written in it.
async fn upgrade_format(store: &dyn Store, found: u32) -> Result<(), StoreError> {
    let (old, new) = (found.to_string(), STORE_FORMAT.to_string());
    store
        .swap(
            Tree::Meta,
            FORMAT_KEY,
            Some(old.as_bytes()),
            Some(new.as_bytes()),
        )
        .await?;
    tracing::info!(
        from = found,
        to = STORE_FORMAT,
        "store format upgraded; builds that read only the older format refuse this data now"
    );
    Ok(())
}

/// Where an etcd store's data is, as messages name it.
pub fn etcd_place(options: &crate::store::EtcdOptions) -> PathBuf {
    PathBuf::from(format!(
        "etcd {} under {}",
        options.endpoints.join(","),
        options.prefix
    ))
}

/// Checks, writing nothing, that `store` (at `place`) holds a vault sealed with
/// `sealer`'s key: for commands that read or copy a store without opening a vault.
pub async fn verify_key(store: &dyn Store, sealer: &Sealer, place: &Path) -> Result<(), OpenError> {
    let stored = store
        .value(Tree::Meta, KEY_CHECK_KEY)
        .await
        .map_err(|source| OpenError::Store {
            path: place.to_owned(),
            source,
        })?;
    match stored {
        None => Err(OpenError::Empty(place.to_owned())),
        Some(sealed) => match sealer.open(KEY_CHECK_CONTEXT, &sealed) {
            Ok(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
            _ => Err(OpenError::WrongKey(place.to_owned())),
        },
    }
}

/// A sealed constant: if it opens, this is the key the data was written with.
async fn check_key(
    store: &dyn Store,
    sealer: &Sealer,
    data_dir: &std::path::Path,
) -> Result<(), CheckError> {
    match store.value(Tree::Meta, KEY_CHECK_KEY).await? {
        Some(sealed) => match sealer.open(KEY_CHECK_CONTEXT, &sealed) {
            Ok(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
            _ => Err(CheckError::Open(OpenError::WrongKey(data_dir.to_owned()))),
        },
        None => {
            let sealed = sealer
                .seal(KEY_CHECK_CONTEXT, KEY_CHECK_PLAINTEXT)
                .map_err(|e| CheckError::Open(e.into()))?;
            match store
                .swap(Tree::Meta, KEY_CHECK_KEY, None, Some(&sealed))
                .await?
            {
                Swap::Done => Ok(()),
                Swap::Conflict { .. } => {
                    Err(CheckError::Open(OpenError::WrongKey(data_dir.to_owned())))
                }
            }
        }
    }
}
