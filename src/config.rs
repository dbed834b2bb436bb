//! Configuration: defaults, then a TOML file, then `CREDVAULT_*` environment variables,
//! then command-line flags, each overriding the one before (figment). [`Config`] is what
//! was written; [`Settings`] is what was checked and resolved, keys loaded.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Write,
    net::SocketAddr,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::MIN_ADMIN_TOKEN_LEN,
    callers::CallerSettings,
    crypto::{KeyError, MasterKey, RngError, SecretString, random_bytes},
    leases::LeaseSettings,
    limits::LimitSettings,
    providers::{ProviderConfig, ProviderError, Providers},
    refresh::RefreshSettings,
};

/// The address served when nothing else is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Name of the key file `--dev` keeps inside the data directory.
pub const DEV_KEY_FILE: &str = "dev-master.key";

/// Environment variables read, beyond nested provider settings (`CREDVAULT_PROVIDERS__…`).
const ENV_KEYS: [&str; 20] = [
    "listen",
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
    /// `None`: audit events are kept forever.
    pub audit_retention: Option<Duration>,
    /// Unix-socket peer uid → caller id.
    pub socket_peers: HashMap<u32, String>,
    /// TLS for the TCP API, when configured.
    pub tls: Option<TlsFiles>,
    /// Set when `--dev` created or used the key file beside the data.
    pub dev_key_file: Option<PathBuf>,
    pub providers: Providers,
    pub callers: CallerSettings,
    pub refresh: RefreshSettings,
    pub leases: LeaseSettings,
    pub limits: LimitSettings,
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
        check_callers(&self.callers)?;
        check_refresh(&self.refresh)?;
        if self.leases.min_token_validity_secs < 0 {
            return Err(ConfigError::Leases(
                "min_token_validity_secs must not be negative",
            ));
        }
        if let Some(problem) = self.limits.problem() {
            return Err(ConfigError::Limits(problem));
        }
        create_private_dir(&self.data_dir)?;
        let previous_master_key = match (self.previous_master_key, self.previous_master_key_file) {
            (None, None) => None,
            (inline, file) => Some(master_key(inline, file, &self.data_dir, false)?.0),
        };
        let master_key_file = self.master_key_file.clone();
        let admin_token_file = self.admin_token_file.clone();
        let (master_key, dev_key_file) = master_key(
            self.master_key,
            self.master_key_file,
            &self.data_dir,
            self.dev,
        )?;
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
            socket_peers,
            tls,
            audit_retention: (self.audit_retention_days > 0)
                .then(|| Duration::from_secs(self.audit_retention_days.saturating_mul(86_400))),
            dev_key_file,
            providers,
            callers: self.callers,
            refresh: self.refresh,
            leases: self.leases,
            limits: self.limits,
        })
    }
}

fn check_callers(callers: &CallerSettings) -> Result<(), ConfigError> {
    let problem = if callers.issuer.is_empty() || callers.audience.is_empty() {
        Some("issuer and audience must not be empty")
    } else if callers.token_lifetime_secs < 60 || callers.session_lifetime_secs < 60 {
        Some("token_lifetime_secs and session_lifetime_secs must be at least 60")
    } else if callers.default_credits < 0 || callers.reveal_cost < 0 {
        Some("default_credits and reveal_cost must not be negative")
    } else {
        None
    };
    problem.map_or(Ok(()), |p| Err(ConfigError::Callers(p)))
}

fn check_refresh(refresh: &RefreshSettings) -> Result<(), ConfigError> {
    let problem = if refresh.concurrency == 0 {
        Some("concurrency must be at least 1")
    } else if refresh.skew_secs < 0
        || refresh.min_login_interval_secs < 0
        || refresh.backoff_base_ms < 1
        || refresh.backoff_cap_ms < refresh.backoff_base_ms
    {
        Some(
            "skew_secs and min_login_interval_secs must not be negative, backoff_base_ms at least 1 and backoff_cap_ms at least backoff_base_ms",
        )
    } else if refresh.credits_interval_secs < 1 || refresh.unknown_expiry_secs < 1 {
        Some("credits_interval_secs and unknown_expiry_secs must be at least 1")
    } else {
        None
    };
    problem.map_or(Ok(()), |p| Err(ConfigError::Refresh(p)))
}

fn master_key(
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    data_dir: &Path,
    dev: bool,
) -> Result<(MasterKey, Option<PathBuf>), ConfigError> {
    let parse = |text: &str, origin: String| {
        MasterKey::from_base64(text).map_err(|source| ConfigError::MasterKey { origin, source })
    };
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::TwoMasterKeys),
        (Some(inline), None) => Ok((
            parse(inline.expose(), "from CREDVAULT_MASTER_KEY".into())?,
            None,
        )),
        (None, Some(path)) => {
            let text = read_secret_file(&path, "reading master key file")?;
            Ok((
                parse(text.expose(), format!("in {}", path.display()))?,
                None,
            ))
        }
        (None, None) if dev => {
            let path = data_dir.join(DEV_KEY_FILE);
            if path.exists() {
                let text = read_secret_file(&path, "reading dev master key file")?;
                Ok((
                    parse(text.expose(), format!("in {}", path.display()))?,
                    Some(path),
                ))
            } else {
                let key = MasterKey::generate().map_err(|source| ConfigError::MasterKey {
                    origin: "generated for --dev".into(),
                    source,
                })?;
                write_private_file(&path, key.to_base64().as_bytes())?;
                Ok((key, Some(path)))
            }
        }
        (None, None) => Err(ConfigError::NoMasterKey),
    }
}

fn admin_token(
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    dev: bool,
) -> Result<(SecretString, bool), ConfigError> {
    let token = match (inline, file) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoAdminTokens),
        (Some(inline), None) => inline,
        (None, Some(path)) => read_secret_file(&path, "reading admin token file")?,
        (None, None) if dev => return Ok((generate_token()?, true)),
        (None, None) => return Err(ConfigError::NoAdminToken),
    };
    let strong = token.len() >= MIN_ADMIN_TOKEN_LEN
        && !token
            .expose()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !strong {
        return Err(ConfigError::WeakAdminToken);
    }
    Ok((token, false))
}

/// An address option: `None` for "none" or empty, else a socket address (or `error`
/// naming what was given).
fn optional_addr(
    text: &str,
    error: fn(String) -> ConfigError,
) -> Result<Option<SocketAddr>, ConfigError> {
    match text.trim() {
        "" | "none" => Ok(None),
        text => text
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| error(text.to_owned())),
    }
}

/// PEM files for the TCP API's TLS, read at start-up.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: SecretBytes,
    pub client_ca: Option<Vec<u8>>,
}

/// Bytes that must not be printed (a private key).
#[derive(Clone)]
pub struct SecretBytes(zeroize::Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("client_certificates", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

fn read_pem<T: From<Vec<u8>>>(path: &Path) -> Result<T, ConfigError> {
    fs::read(path)
        .map(T::from)
        .map_err(|source| ConfigError::Io {
            action: "reading TLS file",
            path: path.to_owned(),
            source,
        })
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        SecretBytes(zeroize::Zeroizing::new(bytes))
    }
}

/// The admin token in `path`, checked as at start-up (for reloads).
pub fn read_admin_token_file(path: &Path) -> Result<SecretString, ConfigError> {
    admin_token(None, Some(path.to_owned()), false).map(|(token, _)| token)
}

/// The master key in `path`, checked as at start-up (for reloads).
pub fn read_master_key_file(path: &Path) -> Result<MasterKey, ConfigError> {
    master_key(None, Some(path.to_owned()), Path::new(""), false).map(|(key, _)| key)
}

/// 32 random bytes as URL-safe base64 (43 characters).
pub fn generate_token() -> Result<SecretString, RngError> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(bytes.as_mut())?;
    Ok(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

fn read_secret_file(path: &Path, action: &'static str) -> Result<SecretString, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
        action,
        path: path.to_owned(),
        source,
    })?;
    Ok(SecretString::from(text.trim().to_owned()))
}

fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)
}

fn create_private_dir(path: &Path) -> Result<(), ConfigError> {
    if path.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o700)))
        .map_err(|source| ConfigError::Io {
            action: "creating data directory",
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path) -> Config {
        Config {
            data_dir: dir.to_owned(),
            ..Config::default()
        }
    }

    #[test]
    fn toml_text_parses_or_names_the_problem() {
        let config =
            Config::from_toml("listen = \"none\"\n[limits]\ncall_timeout_secs = 5\n").unwrap();
        assert_eq!(config.listen, "none");
        assert_eq!(config.limits.call_timeout_secs, 5);
        let error = Config::from_toml("lisen = \"none\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("lisen"), "{error}");
        let error = Config::from_toml("[limits]\nmax_request_bytes = \"big\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_request_bytes"), "{error}");
    }

    #[test]
    fn production_needs_a_master_key_and_an_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let error = base(dir.path()).resolve().unwrap_err();
        assert!(matches!(error, ConfigError::NoMasterKey), "{error}");

        let mut config = base(dir.path());
        config.master_key = Some(
            MasterKey::generate()
                .unwrap()
                .to_base64()
                .to_string()
                .into(),
        );
        assert!(matches!(
            config.resolve().unwrap_err(),
            ConfigError::NoAdminToken
        ));

        let mut config = base(dir.path());
        config.master_key = Some(
            MasterKey::generate()
                .unwrap()
                .to_base64()
                .to_string()
                .into(),
        );
        config.admin_token = Some(SecretString::from("short".to_owned()));
        assert!(matches!(
            config.resolve().unwrap_err(),
            ConfigError::WeakAdminToken
        ));
    }

    #[test]
    fn dev_creates_a_private_key_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = base(dir.path());
        config.dev = true;
        let first = config.resolve().unwrap();
        let path = dir.path().join(DEV_KEY_FILE);
        assert_eq!(first.dev_key_file.as_deref(), Some(path.as_path()));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(first.admin_token_generated);

        let mut again = base(dir.path());
        again.dev = true;
        let second = again.resolve().unwrap();
        assert_eq!(first.master_key.key_id(), second.master_key.key_id());
        assert_ne!(first.admin_token, second.admin_token);
    }

    #[test]
    fn bad_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = base(dir.path());
        config.listen = "localhost".into();
        assert_eq!(
            config.resolve().unwrap_err().to_string(),
            "listen: \"localhost\" is not an address like 127.0.0.1:50051 (or \"none\")"
        );
        let mut config = base(dir.path());
        config.socket_mode = "rw".into();
        assert!(matches!(
            config.resolve().unwrap_err(),
            ConfigError::SocketMode(_)
        ));
        let mut config = base(dir.path());
        config.listen = "none".into();
        assert!(matches!(
            config.resolve().unwrap_err(),
            ConfigError::NoListener
        ));
    }

    #[test]
    fn debug_shows_no_secret() {
        let config = Config {
            master_key: Some(SecretString::from("bWFzdGVyLWtleS1zZWNyZXQ=".to_owned())),
            admin_token: Some(SecretString::from("admin-token-secret-value".to_owned())),
            ..Config::default()
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("bWFzdGVyLWtleS1zZWNyZXQ=")
                && !text.contains("admin-token-secret-value")
        );
    }
}
