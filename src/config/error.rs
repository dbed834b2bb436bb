//! What a configuration is refused with.

use std::path::PathBuf;

use crate::{
    auth::{MIN_ADMIN_TOKEN_LEN, kubernetes::SettingsError},
    crypto::{KeyError, RngError},
    providers::ProviderError,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", describe(.0))]
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
    #[error("kubernetes_auth: {0}")]
    Kubernetes(#[from] SettingsError),
}

/// A configuration file or environment error as an operator reads it: the key as it
/// is written (dotted for the file, the variable's name for the environment), where it
/// came from, and for a misspelt key the nearest known one.
fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| one(&e))
        .collect::<Vec<_>>()
        .join("; ")
}

fn one(error: &figment::Error) -> String {
    use figment::error::Kind;
    let key = match error.path.join(".") {
        key if key.is_empty() => "the configuration".to_owned(),
        key => format!("\"{key}\""),
    };
    let place = match &error.metadata {
        Some(meta) => match &meta.source {
            Some(figment::Source::File(path)) => format!(" in {}", path.display()),
            _ if meta.name.contains("environment") => format!(
                " (environment variable CREDVAULT_{})",
                error.path.join("__").to_uppercase()
            ),
            _ => String::new(),
        },
        None => String::new(),
    };
    match &error.kind {
        Kind::UnknownField(found, expected) => {
            let near = nearest(found, expected)
                .map(|near| format!("; did you mean \"{near}\"?"))
                .unwrap_or_default();
            format!(
                "unknown key {key}{place}{near} (known there: {})",
                expected.join(", ")
            )
        }
        Kind::UnknownVariant(found, expected) => format!(
            "{key}{place}: \"{found}\" is not one of {}",
            expected.join(", ")
        ),
        kind => format!("{key}{place}: {kind}"),
    }
}

/// The known name closest to `found`, when it is a likely misspelling.
fn nearest<'a>(found: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|name| (distance(found, name), *name))
        .filter(|(d, name)| *d <= 2.max(name.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Edit distance (insertions, deletions, substitutions, and swaps of neighbours).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_key_is_named_with_its_nearest_known_one() {
        assert_eq!(nearest("listne", &["listen", "socket"]), Some("listen"));
        assert_eq!(nearest("zzzzzz", &["listen", "socket"]), None);
        assert_eq!(distance("listne", "listen"), 1);
        assert_eq!(distance("", "abc"), 3);
    }
}
