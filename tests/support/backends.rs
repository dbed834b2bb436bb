//! The store backends a conformance suite runs on, and the macro that runs each of its
//! cases on every one: `conformance!(case_a, case_b)` makes `memory::case_a`,
//! `sled::case_a`, `etcd::case_a`, … each calling `case_a(Backend)`. A new backend adds
//! itself here.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use credvault::store::{
    EtcdOptions, EtcdStore, MemoryStore, Revision, Store, StoreError, Tree, Txn,
};

use super::etcd::EtcdCluster;

/// A store under test, with whatever keeps it alive.
pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    /// The etcd cluster, for an etcd store.
    etcd: Option<EtcdCluster>,
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
        Backend {
            store: Arc::new(EtcdStore::connect(&options).await.unwrap()),
            _dir: None,
            etcd: Some(cluster),
        }
    }

    /// Makes the store forget the history after `from`, so that a watch or a scan at
    /// `from` is refused: the local backends keep a bounded history, so enough big
    /// writes push it out; etcd keeps what it has not compacted, so it is compacted.
    pub async fn forget_history(&self, from: Revision) {
        let store = &self.store;
        if let Some(cluster) = &self.etcd {
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
