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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    #[serde(default = "default_min_jobs")]
    pub min_jobs: u32,
    #[serde(default = "default_max_jobs")]
    pub max_jobs: u32,
    /// Where the provider's API lives. Without it credvault stores the provider's
    /// accounts but does not log them in.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Per HTTP call to the provider (connect and whole request).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// basic-session: JSON pointer to the token in the session answer.
    #[serde(default = "default_token_pointer")]
    pub token_pointer: String,
    /// basic-session: JSON pointer to the expiry (unix seconds) in the session answer.
    #[serde(default = "default_expiry_pointer")]
    pub expiry_pointer: String,
    /// basic-session: lifetime to assume when the answer gives no expiry.
    #[serde(default)]
    pub session_lifetime_secs: Option<i64>,
}

fn default_timeout_secs() -> u64 {
    10
}

fn default_token_pointer() -> String {
    "/token".to_owned()
}

fn default_expiry_pointer() -> String {
    "/expires_at".to_owned()
}

impl ProviderSpec {
    /// A spec with every optional setting at its default.
    pub fn new(kind: ProviderKind, min_jobs: u32, max_jobs: u32) -> Self {
        Self {
            kind,
            min_jobs,
            max_jobs,
            base_url: None,
            timeout_secs: default_timeout_secs(),
            token_pointer: default_token_pointer(),
            expiry_pointer: default_expiry_pointer(),
            session_lifetime_secs: None,
        }
    }
}

fn default_min_jobs() -> u32 {
    1
}

fn default_max_jobs() -> u32 {
    50
}

/// The configured providers by name.
#[derive(Clone, Debug)]
pub struct Providers(BTreeMap<String, ProviderSpec>);

impl Providers {
    /// The configured providers, with `pixverse` (maxJobs 1–8) added unless the
    /// configuration names it itself.
    pub fn new(mut configured: BTreeMap<String, ProviderSpec>) -> Self {
        configured
            .entry("pixverse".to_owned())
            .or_insert(ProviderSpec::new(ProviderKind::Pixverse, 1, 8));
        Self(configured)
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
