//! Configuration: defaults, then a TOML file, then `CREDVAULT_*` environment variables,
//! then command-line flags, each overriding the one before (figment). [`Config`] is what
//! was written; [`Settings`] is what was checked and resolved, keys loaded.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

mod checks;
mod error;
mod secrets;
mod store;
#[cfg(test)]
mod tests;

use checks::{check_callers, check_refresh};
pub use error::ConfigError;
pub use secrets::{DevKey, dev_previous_key_path, keep_dev_keys, write_key_file};
pub use secrets::{
    SecretBytes, TlsFiles, generate_token, read_admin_token_file, read_master_key_file,
};
use secrets::{
    admin_token, create_private_dir, master_key, optional_addr, read_pem, write_dev_key,
};
pub use store::{BackendKind, EtcdConfig, StoreConfig, StoreSettings};

use crate::{
    auth::kubernetes::{KubernetesAuthConfig, KubernetesAuthSettings},
    callers::CallerSettings,
    crypto::{MasterKey, SecretString},
    leases::LeaseSettings,
    limits::LimitSettings,
    providers::{ProviderConfig, Providers},
    refresh::RefreshSettings,
};

/// The address served when nothing else is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Name of the key file `--dev` keeps inside the data directory.
pub const DEV_KEY_FILE: &str = "dev-master.key";
/// The previous key a `--dev` vault keeps beside the data while a rotation runs.
pub const DEV_PREVIOUS_KEY_FILE: &str = "dev-master.previous.key";

/// Environment variables read, beyond nested provider settings (`CREDVAULT_PROVIDERS__…`).
const ENV_KEYS: [&str; 22] = [
    "listen",
    "reflection",
    "node_id",
    "socket",
    "socket_mode",
    "data_dir",
    "master_key",
    "master_key_file",
    "admin_token",
    "admin_token_file",
    "log_format",
    "log_filter",
    "shutdown_grace_secs",
    "dev",
    "metrics_listen",
    "health_listen",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "previous_master_key",
    "previous_master_key_file",
    "audit_retention_days",
];

/// Who may ask the server reflection service for the schema (the schema is public in
/// `proto/`; hardened deployments may still hide it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reflection {
    /// Anyone, without a credential (grpcurl works without `-proto`).
    #[default]
    Public,
    /// Callers with a credential, as any other RPC.
    Authenticated,
    /// Not served.
    Off,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The configuration as written. Secrets in it are [`SecretString`]s, so printing a
/// `Config` shows none of them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TCP address for the API; "none" (or empty) serves no TCP.
    pub listen: String,
    /// Unix socket path for the API, in addition to or instead of TCP.
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file, octal.
    pub socket_mode: String,
    pub data_dir: PathBuf,
    /// Base64 master key (for `CREDVAULT_MASTER_KEY`); prefer `master_key_file`.
    #[serde(skip_serializing)]
    pub master_key: Option<SecretString>,
    pub master_key_file: Option<PathBuf>,
    /// During a master-key rotation: the key being replaced, still read (never used to
    /// seal) until every record is re-sealed under `master_key`.
    #[serde(skip_serializing)]
    pub previous_master_key: Option<SecretString>,
    pub previous_master_key_file: Option<PathBuf>,
    #[serde(skip_serializing)]
    pub admin_token: Option<SecretString>,
    pub admin_token_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub log_filter: String,
    pub shutdown_grace_secs: u64,
    /// Development mode: a key file beside the data and a fresh admin token each start.
    pub dev: bool,
    /// Address of the Prometheus `/metrics` listener (plain HTTP); "none" (the
    /// default) serves none.
    pub metrics_listen: String,
    /// Address of the probe port: `grpc.health.v1.Health` only, plaintext, for kubelet
    /// gRPC probes (which cannot reach a Unix socket); "none" (the default) serves none.
    pub health_listen: String,
    /// Server reflection: "public" (default), "authenticated" or "off".
    pub reflection: Reflection,
    /// Audit events older than this many days are pruned; 0 keeps them forever.
    pub audit_retention_days: u64,
    /// TLS for the TCP API (the Unix socket and the probe port stay plaintext): the
    /// server's certificate chain and key, PEM. Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// With TLS: clients must present a certificate signed by this CA (PEM).
    pub tls_client_ca_file: Option<PathBuf>,
    /// Peer-credential callers: a connection on the Unix socket from one of these uids,
    /// carrying no `authorization`, is the mapped caller (id). Empty: off.
    pub socket_peers: BTreeMap<String, String>,
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Caller tokens, sessions and credits.
    pub callers: CallerSettings,
    /// The refresh engine.
    pub refresh: RefreshSettings,
    /// Job leases.
    pub leases: LeaseSettings,
    /// Request size, call deadline and per-connection concurrency.
    pub limits: LimitSettings,
    /// Where the records live: sled (default) or etcd.
    pub store: StoreConfig,
    /// This process's name in logs and lock values; empty: the host name.
    pub node_id: String,
    /// The audit trail's options beside its retention.
    pub audit: AuditConfig,
    /// Kubernetes ServiceAccount tokens as a credential; absent: not accepted.
    pub kubernetes_auth: Option<KubernetesAuthConfig>,
}

/// `[audit]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Also log every audit event as a line with target `audit` (as JSON with
    /// `log_format = "json"`), for a log pipeline that collects every node's trail.
    pub log_lines: bool,
    /// When a hand-out's audit event and debit are durable (see [`AuditSync`]).
    pub sync: AuditSync,
}

/// `[audit] sync`: what a hand-out waits for before its secret is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// The event and the debit are flushed to disk (fsync) before the answer.
    #[default]
    Commit,
    /// The event is written to the OS (a spill file, `write(2)`, no fsync) before the
    /// answer; the event and the debit are flushed within 100 ms. The embedded store
    /// only.
    Os,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            socket: None,
            socket_mode: "0660".to_owned(),
            data_dir: PathBuf::from("credvault-data"),
            master_key: None,
            master_key_file: None,
            previous_master_key: None,
            previous_master_key_file: None,
            admin_token: None,
            admin_token_file: None,
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            shutdown_grace_secs: 10,
            dev: false,
            metrics_listen: "none".to_owned(),
            health_listen: "none".to_owned(),
            reflection: Reflection::Public,
            audit_retention_days: 90,
            socket_peers: BTreeMap::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            providers: BTreeMap::new(),
            callers: CallerSettings::default(),
            refresh: RefreshSettings::default(),
            leases: LeaseSettings::default(),
            limits: LimitSettings::default(),
            store: StoreConfig::default(),
            node_id: String::new(),
            audit: AuditConfig::default(),
            kubernetes_auth: None,
        }
    }
}

/// Flags given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dev: bool,
}

/// Checked configuration, ready to start from.
#[derive(Debug)]
pub struct Settings {
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub socket_mode: u32,
    pub data_dir: PathBuf,
    pub master_key: MasterKey,
    /// Set during a master-key rotation (see `Config::previous_master_key`).
    pub previous_master_key: Option<MasterKey>,
    pub admin_token: SecretString,
    /// The files the admin token and the master key were read from (none when given
    /// inline or made by --dev): read again on SIGHUP and when they change.
    pub admin_token_file: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    /// True when the admin token was generated here and must be shown once.
    pub admin_token_generated: bool,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub shutdown_grace: Duration,
    pub dev: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub health_listen: Option<SocketAddr>,
    pub reflection: Reflection,
    /// `None`: audit events are kept forever.
    pub audit_retention: Option<Duration>,
    /// Unix-socket peer uid → caller id.
    pub socket_peers: HashMap<u32, String>,
    /// TLS for the TCP API, when configured.
    pub tls: Option<TlsFiles>,
    /// Set when `--dev` uses the key file beside the data (or will write it).
    pub dev_key: Option<DevKey>,
    pub providers: Providers,
    pub callers: CallerSettings,
    pub refresh: RefreshSettings,
    pub leases: LeaseSettings,
    pub limits: LimitSettings,
    pub store: StoreSettings,
    pub node_id: String,
    pub audit_log_lines: bool,
    pub audit_sync: AuditSync,
    pub kubernetes_auth: Option<KubernetesAuthSettings>,
}

impl Settings {
    /// Makes the data directory (0700) and, for a new `--dev` vault, its key file: done
    /// when the vault is about to be opened, so that a command or start that fails
    /// before leaves nothing behind.
    pub fn prepare_data_dir(&self) -> Result<(), ConfigError> {
        create_private_dir(&self.data_dir)?;
        if let Some(dev) = &self.dev_key
            && dev.new
            && !dev.path.exists()
        {
            write_dev_key(&dev.path, &self.master_key)?;
        }
        Ok(())
    }
}

impl Config {
    /// A configuration file's text over the defaults, alone (no environment, no
    /// flags): what `load` makes of a file, for checking one.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))
    }

    /// Layers file, environment and flags over the defaults.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file(file));
        }
        let env = Env::prefixed("CREDVAULT_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                ENV_KEYS.contains(&key.as_str())
                    || key.starts_with("providers__")
                    || key.starts_with("callers__")
                    || key.starts_with("refresh__")
                    || key.starts_with("leases__")
                    || key.starts_with("limits__")
                    || key.starts_with("socket_peers__")
                    || key.starts_with("store__")
                    || key.starts_with("audit__")
                    || key.starts_with("kubernetes_auth__")
            })
            .split("__");
        figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))
    }

    /// Checks every field and loads the keys. In `--dev`, creates what is missing.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let listen = optional_addr(&self.listen, ConfigError::Listen)?;
        if listen.is_none() && self.socket.is_none() {
            return Err(ConfigError::NoListener);
        }
        let health_listen = optional_addr(&self.health_listen, ConfigError::HealthListen)?;
        let tls = match (
            self.tls_cert_file,
            self.tls_key_file,
            self.tls_client_ca_file,
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                cert: read_pem(&cert)?,
                key: read_pem(&key)?,
                client_ca: client_ca.as_deref().map(read_pem).transpose()?,
            }),
            _ => return Err(ConfigError::Tls),
        };
        let socket_peers = self
            .socket_peers
            .iter()
            .map(|(uid, caller)| match uid.trim().parse::<u32>() {
                Ok(uid) if !caller.trim().is_empty() => Ok((uid, caller.trim().to_owned())),
                _ => Err(ConfigError::SocketPeer(uid.clone())),
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let metrics_listen = optional_addr(&self.metrics_listen, ConfigError::MetricsListen)?;
        let socket_mode = u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| ConfigError::SocketMode(self.socket_mode.clone()))?;
        let providers = Providers::new(self.providers)?;
        let store = self.store.resolve()?;
        if self.audit.sync == AuditSync::Os && matches!(store, StoreSettings::Etcd(_)) {
            return Err(ConfigError::Store(
                "audit.sync = \"os\" is for the embedded store: on etcd a debit must be written before the answer to be checked against the other nodes' (use \"commit\")".into(),
            ));
        }
        let rotating =
            self.previous_master_key.is_some() || self.previous_master_key_file.is_some();
        if rotating && matches!(store, StoreSettings::Etcd(_)) {
            return Err(ConfigError::Store(
                "previous_master_key: master-key rotation does not run online with the etcd backend (every process shares the records); start with the current key only, and rotate with every node stopped (`credvault rotate-key`)".into(),
            ));
        }
        let node_id = store::node_id(&self.node_id)?;
        check_callers(&self.callers)?;
        let kubernetes_auth = self
            .kubernetes_auth
            .map(|k| k.resolve(&self.callers.issuer))
            .transpose()?;
        check_refresh(&self.refresh)?;
        if self.leases.min_token_validity_secs < 0 {
            return Err(ConfigError::Leases(
                "min_token_validity_secs must not be negative",
            ));
        }
        if let Some(problem) = self.limits.problem() {
            return Err(ConfigError::Limits(problem));
        }
        let previous_master_key = match (self.previous_master_key, self.previous_master_key_file) {
            (None, None) => None,
            (inline, file) => Some(master_key(inline, file, &self.data_dir, false)?.0),
        };
        let master_key_file = self.master_key_file.clone();
        let admin_token_file = self.admin_token_file.clone();
        let (master_key, dev_key) = master_key(
            self.master_key,
            self.master_key_file,
            &self.data_dir,
            self.dev,
        )?;
        // A --dev vault stopped during a rotation resumes it with both keys.
        let previous_master_key = match (&dev_key, previous_master_key) {
            (Some(dev), None) => secrets::dev_previous_key(&dev.path)?,
            (_, previous) => previous,
        };
        let (admin_token, admin_token_generated) =
            admin_token(self.admin_token, self.admin_token_file, self.dev)?;

        Ok(Settings {
            listen,
            socket: self.socket,
            socket_mode,
            data_dir: self.data_dir,
            master_key,
            previous_master_key,
            admin_token,
            admin_token_file,
            master_key_file,
            admin_token_generated,
            log_format: self.log_format,
            log_filter: self.log_filter,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            dev: self.dev,
            metrics_listen,
            health_listen,
            reflection: self.reflection,
            socket_peers,
            tls,
            audit_retention: (self.audit_retention_days > 0)
                .then(|| Duration::from_secs(self.audit_retention_days.saturating_mul(86_400))),
            dev_key,
            providers,
            callers: self.callers,
            refresh: self.refresh,
            leases: self.leases,
            limits: self.limits,
            store,
            node_id,
            audit_log_lines: self.audit.log_lines,
            audit_sync: self.audit.sync,
            kubernetes_auth,
        })
    }
}
