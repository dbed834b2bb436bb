//! What a configuration is refused with.

use std::path::PathBuf;

use crate::{
    auth::MIN_ADMIN_TOKEN_LEN,
    crypto::{KeyError, RngError},
    providers::ProviderError,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(Box<figment::Error>),
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("listen: {0:?} is not an address like 127.0.0.1:50051 (or \"none\")")]
    Listen(String),
    #[error("health_listen: {0:?} is not an address like 0.0.0.0:8081 (or \"none\")")]
    HealthListen(String),
    #[error("metrics_listen: {0:?} is not an address like 127.0.0.1:9464 (or \"none\")")]
    MetricsListen(String),
    #[error("tls: set tls_cert_file and tls_key_file together (tls_client_ca_file needs both)")]
    Tls,
    #[error("{0}")]
    Store(String),
    #[error("socket_peers: {0:?} is not a uid (a number) mapped to a caller id")]
    SocketPeer(String),
    #[error("nothing to serve on: set listen or socket")]
    NoListener,
    #[error("socket_mode: {0:?} is not an octal mode like 0660")]
    SocketMode(String),
    #[error(
        "no master key: set master_key_file (--master-key-file) or CREDVAULT_MASTER_KEY, or run with --dev"
    )]
    NoMasterKey,
    #[error("both master_key and master_key_file are set: keep one")]
    TwoMasterKeys,
    #[error("master key {origin}: {source}")]
    MasterKey {
        origin: String,
        #[source]
        source: KeyError,
    },
    #[error("no admin token: set admin_token_file or CREDVAULT_ADMIN_TOKEN, or run with --dev")]
    NoAdminToken,
    #[error("both admin_token and admin_token_file are set: keep one")]
    TwoAdminTokens,
    #[error(
        "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters without spaces or control characters"
    )]
    WeakAdminToken,
    #[error("callers: {0}")]
    Callers(&'static str),
    #[error("refresh: {0}")]
    Refresh(&'static str),
    #[error("leases: {0}")]
    Leases(&'static str),
    #[error("limits: {0}")]
    Limits(&'static str),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Rng(#[from] RngError),
}
