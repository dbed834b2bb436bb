//! The store backends a conformance suite runs on, and the macro that runs each of its
//! cases on every one: `conformance!(case_a, case_b)` makes `memory::case_a`,
//! `sled::case_a`, `etcd::case_a`, … each calling `case_a(Backend)`. A new backend adds
//! itself here.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use credvault::{
    accounts::Names,
    clock::ManualClock,
    crypto::{Fingerprinter, MasterKey, Sealer},
    leases::{ClusterSlots, LocalSlots, slots::SlotTable},
    store::{
        EtcdOptions, EtcdStore, FaultPlan, FaultyStore, MemoryStore, Naming, Revision, Store,
        StoreError, Tree, Txn,
    },
};

use super::etcd::EtcdCluster;

/// One fingerprint key for every process of a test, as for a cluster sharing its
/// master key.
fn fingerprints() -> Arc<Fingerprinter> {
    static FINGERPRINTS: std::sync::OnceLock<Arc<Fingerprinter>> = std::sync::OnceLock::new();
    FINGERPRINTS
        .get_or_init(|| Arc::new(Fingerprinter::new(&MasterKey::generate().unwrap())))
        .clone()
}

/// A store under test, with whatever keeps it alive.
pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    /// The etcd cluster and the store on it, for an etcd store.
    etcd: Option<(EtcdCluster, Arc<EtcdStore>)>,
}

impl Backend {
    pub fn memory() -> Self {
        Backend {
            store: MemoryStore::open(),
            _dir: None,
            etcd: None,
        }
    }

    pub fn sled() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            store: credvault::store::open_embedded(dir.path()).unwrap(),
            _dir: Some(dir),
            etcd: None,
        }
    }

    /// A store on a 3-member cluster of its own (a case may compact its history,
    /// which is cluster-wide), under a prefix of its own.
    pub async fn etcd() -> Self {
        let cluster = EtcdCluster::start(3).await;
        let options = EtcdOptions {
            endpoints: cluster.endpoints(),
            prefix: format!("/test-{}", credvault::hex::encode(&rand_bytes())),
            ..EtcdOptions::default()
        };
        let store = Arc::new(EtcdStore::connect(&options).await.unwrap());
        Backend {
            store: store.clone(),
            _dir: None,
            etcd: Some((cluster, store)),
        }
    }

    /// Makes the store forget the history after `from`, so that a watch or a scan at
    /// `from` is refused: the local backends keep a bounded history, so enough big
    /// writes push it out; etcd keeps what it has not compacted, so it is compacted.
    pub async fn forget_history(&self, from: Revision) {
        let store = &self.store;
        if let Some((cluster, _)) = &self.etcd {
            store
                .commit(Txn::new().put(Tree::Audit, b"after", b"x"))
                .await
                .unwrap();
            let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
                .await
                .unwrap();
            client.compact(store.revision() as i64, None).await.unwrap();
            return;
        }
        let big = vec![7u8; 256 * 1024];
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in 0u32.. {
            assert!(Instant::now() < deadline, "the history never compacted");
            let key = format!("big{n:05}");
            store
                .commit(Txn::new().put(Tree::Audit, key.as_bytes(), &big))
                .await
                .unwrap();
            match store.watch(Tree::Audit, b"", from).await {
                Err(StoreError::Compacted { .. }) => return,
                Err(other) => panic!("unexpected {other}"),
                Ok(_) => {}
            }
        }
    }
}

impl Backend {
    /// The slot table a process opens on this store at `now_ms` (its reaper's first
    /// pass included): the local one, or the cluster-wide one on etcd. `plan` injects
    /// faults into a local store's writes; on etcd, [`Backend::break_writes`] freezes
    /// the cluster instead.
    pub async fn slot_table(
        &self,
        sealer: Arc<Sealer>,
        now_ms: i64,
        plan: Option<Arc<FaultPlan>>,
    ) -> Arc<dyn SlotTable> {
        if let Some((_, store)) = &self.etcd {
            let slots = ClusterSlots::open(
                store.clone(),
                sealer,
                fingerprints(),
                Arc::new(ManualClock::at(now_ms)),
            )
            .await
            .unwrap();
            slots.expire(now_ms).await.unwrap();
            return Arc::new(slots);
        }
        let store: Arc<dyn Store> = match plan {
            Some(plan) => Arc::new(FaultyStore::new(self.store.clone(), plan)),
            None => self.store.clone(),
        };
        Arc::new(LocalSlots::load(store, sealer, now_ms).await.unwrap())
    }

    /// How a process names account records on this store: by fingerprint on etcd,
    /// which must see no email.
    pub fn names(&self) -> Names {
        Names {
            naming: match self.etcd {
                Some(_) => Naming::Fingerprints,
                None => Naming::Emails,
            },
            fingerprints: fingerprints(),
        }
    }

    /// The etcd store, for an etcd backend.
    pub fn etcd_store(&self) -> Option<Arc<EtcdStore>> {
        self.etcd.as_ref().map(|(_, store)| store.clone())
    }

    /// The etcd cluster's client URLs, for an etcd backend.
    pub fn etcd_endpoints(&self) -> Option<Vec<String>> {
        self.etcd.as_ref().map(|(cluster, _)| cluster.endpoints())
    }

    /// Makes writes to `tree` fail (`broken`) or work again: through the fault plan on
    /// a local store, by freezing every etcd member (SIGSTOP) on etcd.
    pub fn break_writes(&self, plan: &FaultPlan, tree: Tree, broken: bool) {
        match &self.etcd {
            Some((cluster, _)) => {
                for member in 0..cluster.size() {
                    if broken {
                        cluster.pause(member);
                    } else {
                        cluster.resume(member);
                    }
                }
            }
            None => plan.fail_writes(tree, broken),
        }
    }
}

fn rand_bytes() -> [u8; 8] {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes
}

// Every test crate includes `support`; only the conformance suites use this.
#[allow(unused_macros)]
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::support::backends::Backend::memory()).await
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::support::backends::Backend::sled()).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::support::backends::Backend::etcd().await).await
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use conformance;
