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
    /// Where the provider's API lives; used by the refresh engine.
    #[serde(default)]
    pub base_url: Option<String>,
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
            .or_insert(ProviderSpec {
                kind: ProviderKind::Pixverse,
                min_jobs: 1,
                max_jobs: 8,
                base_url: None,
            });
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
