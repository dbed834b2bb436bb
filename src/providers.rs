//! The upstream providers credvault knows, as configured: each has a name, the style of
//! its login, and the range its accounts' `maxJobs` must fall in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a provider's accounts log in (DESIGN.md §1 A–D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Pixverse,
    BasicSession,
    JwtRotate,
    ApiKey,
}

/// A `[providers.NAME]` table as written. Unset fields take defaults: the kind from the
/// name when the name is one of the four styles, the `maxJobs` range from the kind
/// (PixVerse 1–8, others 1–50), the rest from [`ProviderSpec::new`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<ProviderKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_jobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u32>,
    /// Where the provider's API lives. Without it credvault stores the provider's
    /// accounts but does not log them in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Per HTTP call to the provider (connect and whole request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// basic-session: JSON pointer to the token in the session answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_pointer: Option<String>,
    /// basic-session: JSON pointer to the expiry (unix seconds) in the session answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry_pointer: Option<String>,
    /// basic-session: lifetime to assume when the answer gives no expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_lifetime_secs: Option<i64>,
}

impl ProviderConfig {
    pub fn of(kind: ProviderKind) -> Self {
        Self {
            kind: Some(kind),
            ..Self::default()
        }
    }
}

/// Why a provider's configuration was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "provider {0:?}: no kind given, and the name is not one (pixverse, basic-session, jwt-rotate, api-key)"
    )]
    NoKind(String),
    #[error("provider {name:?}: max_jobs range {min}..={max} is empty or starts below 1")]
    Range { name: String, min: u32, max: u32 },
}

/// A provider with every setting resolved.
#[derive(Clone, Debug)]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    pub min_jobs: u32,
    pub max_jobs: u32,
    pub base_url: Option<String>,
    pub timeout_secs: u64,
    pub token_pointer: String,
    pub expiry_pointer: String,
    pub session_lifetime_secs: Option<i64>,
}

impl ProviderKind {
    /// The kind a provider named like one of the styles has by default.
    pub fn from_name(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }

    /// The reference limits: PixVerse allows 1–8 jobs per account, others up to 50.
    pub fn default_max_jobs(self) -> u32 {
        match self {
            ProviderKind::Pixverse => 8,
            ProviderKind::BasicSession | ProviderKind::JwtRotate | ProviderKind::ApiKey => 50,
        }
    }
}

impl ProviderSpec {
    /// A spec with every optional setting at its default.
    pub fn new(kind: ProviderKind, min_jobs: u32, max_jobs: u32) -> Self {
        Self {
            kind,
            min_jobs,
            max_jobs,
            base_url: None,
            timeout_secs: 10,
            token_pointer: "/token".to_owned(),
            expiry_pointer: "/expires_at".to_owned(),
            session_lifetime_secs: None,
        }
    }

    fn resolve(name: &str, config: ProviderConfig) -> Result<Self, ProviderError> {
        let kind = config
            .kind
            .or_else(|| ProviderKind::from_name(name))
            .ok_or_else(|| ProviderError::NoKind(name.to_owned()))?;
        let defaults = Self::new(kind, 1, kind.default_max_jobs());
        let spec = Self {
            kind,
            min_jobs: config.min_jobs.unwrap_or(defaults.min_jobs),
            max_jobs: config.max_jobs.unwrap_or(defaults.max_jobs),
            base_url: config.base_url,
            timeout_secs: config.timeout_secs.unwrap_or(defaults.timeout_secs),
            token_pointer: config.token_pointer.unwrap_or(defaults.token_pointer),
            expiry_pointer: config.expiry_pointer.unwrap_or(defaults.expiry_pointer),
            session_lifetime_secs: config.session_lifetime_secs,
        };
        if spec.min_jobs < 1 || spec.min_jobs > spec.max_jobs {
            return Err(ProviderError::Range {
                name: name.to_owned(),
                min: spec.min_jobs,
                max: spec.max_jobs,
            });
        }
        Ok(spec)
    }
}

/// The configured providers by name.
#[derive(Clone, Debug)]
pub struct Providers(BTreeMap<String, ProviderSpec>);

impl Providers {
    /// The configured providers, resolved, with `pixverse` (maxJobs 1–8, no base URL)
    /// added unless the configuration names it itself.
    pub fn new(configured: BTreeMap<String, ProviderConfig>) -> Result<Self, ProviderError> {
        let mut providers = BTreeMap::new();
        for (name, config) in configured {
            let spec = ProviderSpec::resolve(&name, config)?;
            providers.insert(name, spec);
        }
        providers
            .entry("pixverse".to_owned())
            .or_insert_with(|| ProviderSpec::new(ProviderKind::Pixverse, 1, 8));
        Ok(Self(providers))
    }

    pub fn get(&self, name: &str) -> Option<&ProviderSpec> {
        self.0.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &ProviderSpec)> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests;
