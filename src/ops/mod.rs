//! Operations around the serving path: backup and restore, master-key rotation
//! (re-sealing; on a shared store with every node stopped), secret files read again on change, the metrics exporter, and the
//! progress lines long operations print.

pub mod backup;
pub mod exporter;
pub mod migrate;
pub mod progress;
pub mod readiness;
pub mod rekey;
pub mod reload;
pub mod shared_rekey;
