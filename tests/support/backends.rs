//! The store backends a conformance suite runs on, and the macro that runs each of its
//! cases on every one: `conformance!(case_a, case_b)` makes `memory::case_a`,
//! `sled::case_a`, … each calling `case_a(Backend)`. A new backend adds itself here.

use std::sync::Arc;

use credvault::store::{MemoryStore, Store};

/// A store under test, with whatever keeps it alive.
pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub fn memory() -> Self {
        Backend {
            store: MemoryStore::open(),
            _dir: None,
        }
    }

    pub fn sled() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            store: credvault::store::open_embedded(dir.path()).unwrap(),
            _dir: Some(dir),
        }
    }
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
    };
}
#[allow(unused_imports)]
pub(crate) use conformance;
