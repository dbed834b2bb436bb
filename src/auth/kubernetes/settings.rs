//! `[kubernetes_auth]` as written in the configuration, and the checked settings the
//! verifier runs on.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::bindings::{Binding, BindingError};

/// Where the kubelet mounts a pod's ServiceAccount token and the cluster's CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const IN_CLUSTER_API: &str = "https://kubernetes.default.svc";
const MAX_CACHE_SECS: u64 = 3600;

/// `[kubernetes_auth]`: absent, ServiceAccount tokens are not accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesAuthConfig {
    /// The audience a token must carry to be accepted here.
    pub audience: String,
    /// A verified token is remembered this long at most (never past its `exp`).
    pub cache_secs: u64,
    /// Accept Secret-based tokens that never expire and carry no audience.
    pub allow_legacy_tokens: bool,
    /// Verify each token with the API server's TokenReview.
    pub token_review: Option<TokenReviewConfig>,
    /// Verify each token's signature offline against the issuer's keys.
    pub jwks: Option<JwksConfig>,
    /// Which ServiceAccounts are which callers, first match wins.
    pub bindings: Vec<BindingConfig>,
}

impl Default for KubernetesAuthConfig {
    fn default() -> Self {
        Self {
            audience: "credvault".to_owned(),
            cache_secs: 60,
            allow_legacy_tokens: false,
            token_review: None,
            jwks: None,
            bindings: Vec::new(),
        }
    }
}

/// `[kubernetes_auth.token_review]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenReviewConfig {
    /// The API server's base URL.
    pub api_server: String,
    /// credvault's own ServiceAccount token, read again for every review (the kubelet
    /// rotates it).
    pub token_file: PathBuf,
    /// The CA that signed the API server's certificate (PEM), for https.
    pub ca_file: Option<PathBuf>,
    pub timeout_ms: u64,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            api_server: IN_CLUSTER_API.to_owned(),
            token_file: Path::new(SERVICE_ACCOUNT_DIR).join("token"),
            ca_file: None,
            timeout_ms: 5000,
        }
    }
}

/// `[kubernetes_auth.jwks]`: one of `file`, `jwks_url` or discovery (the default,
/// `discovery_url` or the issuer's `/.well-known/openid-configuration`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksConfig {
    /// The `iss` the cluster's ServiceAccount tokens carry.
    pub issuer: String,
    /// A JWKS document on disk (a mounted ConfigMap), read again when it changes.
    pub file: Option<PathBuf>,
    /// The JWKS document's URL, fetched directly.
    pub jwks_url: Option<String>,
    /// The OIDC discovery document's URL, whose `jwks_uri` names the keys.
    pub discovery_url: Option<String>,
    /// The CA for https fetches (PEM).
    pub ca_file: Option<PathBuf>,
    /// A bearer token for the fetches (the API server serves discovery to
    /// ServiceAccounts).
    pub token_file: Option<PathBuf>,
    /// Fetched keys are fetched again after this long (and on an unknown `kid`).
    pub refresh_secs: u64,
}

/// `[[kubernetes_auth.bindings]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    pub namespace: String,
    pub service_account: String,
    pub caller: String,
}

/// Checked `[kubernetes_auth]`.
#[derive(Clone, Debug)]
pub struct KubernetesAuthSettings {
    pub audience: String,
    pub cache_for: Duration,
    pub allow_legacy_tokens: bool,
    pub token_review: Option<ReviewSettings>,
    pub jwks: Option<JwksSettings>,
    pub bindings: Vec<Binding>,
}

#[derive(Clone, Debug)]
pub struct ReviewSettings {
    /// `…/apis/authentication.k8s.io/v1/tokenreviews`.
    pub url: reqwest::Url,
    pub token_file: PathBuf,
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct JwksSettings {
    pub issuer: String,
    pub source: JwksSource,
    pub ca_pem: Option<Vec<u8>>,
    pub token_file: Option<PathBuf>,
    pub refresh: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(reqwest::Url),
    Discovery(reqwest::Url),
}

/// Why `[kubernetes_auth]` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Binding(#[from] BindingError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid(message.into())
}

impl KubernetesAuthConfig {
    /// Checks every field; `own_issuer` is the `iss` of credvault's own tokens, which a
    /// cluster's tokens must not share (the two are told apart by it).
    pub fn resolve(self, own_issuer: &str) -> Result<KubernetesAuthSettings, SettingsError> {
        if self.audience.trim().is_empty() || self.audience.len() > 256 {
            return Err(invalid("audience must be set (e.g. \"credvault\")"));
        }
        if self.cache_secs > MAX_CACHE_SECS {
            return Err(invalid(format!(
                "cache_secs must be at most {MAX_CACHE_SECS}"
            )));
        }
        if self.token_review.is_none() && self.jwks.is_none() {
            return Err(invalid(
                "choose how tokens are verified: [kubernetes_auth.token_review], [kubernetes_auth.jwks], or both",
            ));
        }
        if self.bindings.is_empty() {
            return Err(invalid(
                "no [[kubernetes_auth.bindings]]: every ServiceAccount would be refused",
            ));
        }
        let bindings = self
            .bindings
            .iter()
            .map(|b| Binding::new(&b.namespace, &b.service_account, &b.caller))
            .collect::<Result<Vec<_>, _>>()?;
        let token_review = self.token_review.map(ReviewSettings::resolve).transpose()?;
        let jwks = self
            .jwks
            .map(|jwks| JwksSettings::resolve(jwks, own_issuer))
            .transpose()?;
        Ok(KubernetesAuthSettings {
            audience: self.audience,
            cache_for: Duration::from_secs(self.cache_secs),
            allow_legacy_tokens: self.allow_legacy_tokens,
            token_review,
            jwks,
            bindings,
        })
    }
}

impl ReviewSettings {
    fn resolve(config: TokenReviewConfig) -> Result<Self, SettingsError> {
        let base = url("token_review.api_server", &config.api_server)?;
        let url = base
            .join("apis/authentication.k8s.io/v1/tokenreviews")
            .map_err(|_| invalid("token_review.api_server is not a base URL"))?;
        let ca_file = config.ca_file.or_else(|| {
            let mounted = Path::new(SERVICE_ACCOUNT_DIR).join("ca.crt");
            (base.scheme() == "https").then_some(mounted)
        });
        if !(100..=60_000).contains(&config.timeout_ms) {
            return Err(invalid("token_review.timeout_ms must be 100–60000"));
        }
        Ok(Self {
            url,
            token_file: config.token_file,
            ca_pem: ca_file.as_deref().map(read).transpose()?,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }
}

impl JwksSettings {
    fn resolve(config: JwksConfig, own_issuer: &str) -> Result<Self, SettingsError> {
        let issuer = config.issuer.trim().to_owned();
        if issuer.is_empty() {
            return Err(invalid(
                "jwks.issuer must be the cluster's ServiceAccount issuer (the tokens' iss)",
            ));
        }
        if issuer == own_issuer {
            return Err(invalid(
                "jwks.issuer is credvault's own token issuer (callers.issuer): the two must differ",
            ));
        }
        let source = match (config.file, config.jwks_url, config.discovery_url) {
            (Some(file), None, None) => {
                read(&file)?;
                JwksSource::File(file)
            }
            (None, Some(jwks), None) => JwksSource::Url(url("jwks.jwks_url", &jwks)?),
            (None, None, Some(discovery)) => {
                JwksSource::Discovery(url("jwks.discovery_url", &discovery)?)
            }
            (None, None, None) => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                JwksSource::Discovery(url("jwks.issuer", &discovery)?)
            }
            _ => return Err(invalid("jwks: set one of file, jwks_url and discovery_url")),
        };
        let refresh_secs = match config.refresh_secs {
            0 => 300,
            secs if secs < 10 => return Err(invalid("jwks.refresh_secs must be at least 10")),
            secs => secs,
        };
        Ok(Self {
            issuer,
            source,
            ca_pem: config.ca_file.as_deref().map(read).transpose()?,
            token_file: config.token_file,
            refresh: Duration::from_secs(refresh_secs),
        })
    }
}

/// An https URL, or http to a loopback host only (a token must not cross a network
/// in the clear).
fn url(field: &str, text: &str) -> Result<reqwest::Url, SettingsError> {
    let url = reqwest::Url::parse(text.trim())
        .map_err(|_| invalid(format!("{field}: {text:?} is not a URL")))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(invalid(format!(
            "{field}: {text:?} must be https (http only to a loopback address)"
        ))),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(review: Option<&str>, jwks: Option<JwksConfig>) -> KubernetesAuthConfig {
        KubernetesAuthConfig {
            token_review: review.map(|api| TokenReviewConfig {
                api_server: api.to_owned(),
                ca_file: None,
                ..TokenReviewConfig::default()
            }),
            jwks,
            bindings: vec![BindingConfig {
                namespace: "jobs".into(),
                service_account: "renderer".into(),
                caller: "c_1".into(),
            }],
            ..KubernetesAuthConfig::default()
        }
    }

    fn refusal(config: KubernetesAuthConfig) -> String {
        config.resolve("credvault").unwrap_err().to_string()
    }

    #[test]
    fn a_verifier_a_binding_and_safe_urls_are_required() {
        let ok = config(Some("http://127.0.0.1:6443"), None)
            .resolve("credvault")
            .unwrap();
        assert_eq!(
            ok.token_review.unwrap().url.as_str(),
            "http://127.0.0.1:6443/apis/authentication.k8s.io/v1/tokenreviews"
        );
        assert_eq!(ok.cache_for, Duration::from_secs(60));
        assert!(refusal(config(None, None)).contains("choose how tokens are verified"));
        for plain in [
            "http://10.0.0.1:6443",
            "http://kubernetes.default.svc",
            "ftp://x",
        ] {
            assert!(
                refusal(config(Some(plain), None)).contains("must be https"),
                "{plain}"
            );
        }
        assert!(refusal(config(Some("not a url"), None)).contains("is not a URL"));
        let mut unbound = config(Some("http://[::1]:6443"), None);
        unbound.bindings.clear();
        assert!(refusal(unbound).contains("no [[kubernetes_auth.bindings]]"));
        let mut empty_audience = config(Some("http://localhost:6443"), None);
        empty_audience.audience = " ".into();
        assert!(refusal(empty_audience).contains("audience"));
        let mut long_cache = config(Some("http://localhost:6443"), None);
        long_cache.cache_secs = 7200;
        assert!(refusal(long_cache).contains("cache_secs"));
    }

    #[test]
    fn jwks_needs_the_issuer_and_one_source() {
        let jwks = |issuer: &str, url: Option<&str>, file: Option<PathBuf>| JwksConfig {
            issuer: issuer.to_owned(),
            jwks_url: url.map(str::to_owned),
            file,
            ..JwksConfig::default()
        };
        let issuer = "https://kubernetes.default.svc.cluster.local";
        let resolved = config(None, Some(jwks(issuer, None, None)))
            .resolve("credvault")
            .unwrap();
        assert_eq!(
            resolved.jwks.unwrap().source,
            JwksSource::Discovery(
                reqwest::Url::parse(&format!("{issuer}/.well-known/openid-configuration")).unwrap()
            )
        );
        assert!(refusal(config(None, Some(jwks("", None, None)))).contains("jwks.issuer"));
        assert!(
            refusal(config(None, Some(jwks("credvault", None, None))))
                .contains("credvault's own token issuer")
        );
        let two = jwks(issuer, Some("https://x/keys"), Some("/nonexistent".into()));
        assert!(refusal(config(None, Some(two))).contains("set one of"));
        let missing = jwks(issuer, None, Some("/nonexistent/jwks.json".into()));
        assert!(refusal(config(None, Some(missing))).contains("/nonexistent/jwks.json"));
    }
}
