//! `[store]`: where credvault keeps its records — sled in the data directory (the
//! default), or etcd shared by several processes (`[store.etcd]`).

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};

use super::ConfigError;
use crate::{
    crypto::SecretString,
    store::{EtcdOptions, EtcdTls},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Sled,
    Etcd,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: BackendKind,
    pub etcd: EtcdConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the members; in the environment also a comma-separated string.
    #[serde(deserialize_with = "list_or_commas")]
    pub endpoints: Vec<String>,
    /// Every key of this vault starts with it.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd authentication: the user, and a file holding its password.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    /// How long one request to one member may take before the next is tried.
    pub request_timeout_ms: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        let options = EtcdOptions::default();
        EtcdConfig {
            endpoints: Vec::new(),
            prefix: options.prefix,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            connect_timeout_ms: options.connect_timeout.as_millis() as u64,
            request_timeout_ms: options.request_timeout.as_millis() as u64,
        }
    }
}

fn list_or_commas<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCommas {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match ListOrCommas::deserialize(deserializer)? {
        ListOrCommas::List(list) => list,
        ListOrCommas::Commas(text) => text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Where the records live, checked.
#[derive(Clone, Debug)]
pub enum StoreSettings {
    Sled,
    Etcd(EtcdOptions),
}

impl StoreConfig {
    pub fn resolve(&self) -> Result<StoreSettings, ConfigError> {
        match self.backend {
            BackendKind::Sled => Ok(StoreSettings::Sled),
            BackendKind::Etcd => self.etcd.resolve().map(StoreSettings::Etcd),
        }
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Store(message)
}

impl EtcdConfig {
    fn resolve(&self) -> Result<EtcdOptions, ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid(
                "store.etcd.endpoints: backend \"etcd\" needs at least one endpoint, like http://10.0.0.5:2379".into(),
            ));
        }
        for endpoint in &self.endpoints {
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !scheme_ok || endpoint.parse::<http::Uri>().is_err() {
                return Err(invalid(format!(
                    "store.etcd.endpoints: {endpoint:?} is not a URL like http://10.0.0.5:2379"
                )));
            }
        }
        let prefix = self.prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains('\0') {
            return Err(invalid(format!(
                "store.etcd.prefix: {:?} must start with / and name something, like /credvault",
                self.prefix
            )));
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err(invalid(
                "store.etcd: connect_timeout_ms and request_timeout_ms must be above 0".into(),
            ));
        }
        let tls = match (&self.ca_file, &self.cert_file, &self.key_file) {
            (None, None, None) => None,
            (_, Some(_), None) | (_, None, Some(_)) => {
                return Err(invalid(
                    "store.etcd: set cert_file and key_file together".into(),
                ));
            }
            (ca, cert, key) => Some(EtcdTls {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
        };
        let user = match (&self.username, &self.password_file) {
            (None, None) => None,
            (Some(name), Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|error| {
                    invalid(format!(
                        "store.etcd.password_file: cannot read {}: {error}",
                        file.display()
                    ))
                })?;
                let password = text.trim_end_matches(['\n', '\r']).to_owned();
                if password.is_empty() {
                    return Err(invalid(format!(
                        "store.etcd.password_file: {} is empty",
                        file.display()
                    )));
                }
                Some((name.clone(), SecretString::from(password)))
            }
            _ => {
                return Err(invalid(
                    "store.etcd: set username and password_file together".into(),
                ));
            }
        };
        Ok(EtcdOptions {
            endpoints: self.endpoints.clone(),
            prefix: prefix.to_owned(),
            tls,
            user,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        })
    }
}

/// This process's name in logs, audit events and lock values: `node_id`, else the host
/// name.
pub fn node_id(configured: &str) -> Result<String, ConfigError> {
    let id = match configured.trim() {
        "" => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "credvault".to_owned()),
        given => given.to_owned(),
    };
    if id.len() > 128 || id.chars().any(char::is_control) {
        return Err(invalid(format!(
            "node_id: {id:?} must be at most 128 printable characters"
        )));
    }
    Ok(id)
}
