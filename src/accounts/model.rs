//! The account as the domain holds it: readable metadata plus sealed secrets.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::crypto::{Fingerprinter, SecretString};

/// Accounts are keyed by (provider, email); the email is stored lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    pub provider: String,
    pub email: String,
}

impl AccountKey {
    /// `provider \0 email`: sorts by provider, so one provider is one key prefix.
    pub fn storage_key(&self) -> Vec<u8> {
        let mut key = provider_prefix(&self.provider);
        key.extend_from_slice(self.email.as_bytes());
        key
    }

    /// A keyed fingerprint of the account (128 bits of HMAC-SHA256 over
    /// `provider \0 email`, in hex): how a shared store names it without its email.
    pub fn fingerprint(&self, fingerprints: &Fingerprinter) -> String {
        let name = String::from_utf8_lossy(&self.storage_key()).into_owned();
        let mut hash = fingerprints.hash(&name);
        hash.truncate(32);
        hash
    }
}

/// The account a storage key names (`provider \0 email`), if it is one.
pub fn key_of(storage_key: &[u8]) -> Option<AccountKey> {
    let text = std::str::from_utf8(storage_key).ok()?;
    let (provider, email) = text.split_once('\0')?;
    Some(AccountKey {
        provider: provider.to_owned(),
        email: email.to_owned(),
    })
}

/// The key prefix under which all of one provider's accounts sort.
pub fn provider_prefix(provider: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(provider.len() + 1);
    prefix.extend_from_slice(provider.as_bytes());
    prefix.push(0);
    prefix
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.email)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Active,
    Refreshing,
    NeedsAttention,
    Disabled,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Active,
        Status::Refreshing,
        Status::NeedsAttention,
        Status::Disabled,
    ];

    /// As the API and the metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Active => "ACTIVE",
            Status::Refreshing => "REFRESHING",
            Status::NeedsAttention => "NEEDS_ATTENTION",
            Status::Disabled => "DISABLED",
        }
    }
}

/// What is known about the upstream session apart from the token itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub account_id: String,
    pub username: String,
    /// Unix seconds; 0 when unknown.
    pub expire_time: i64,
    pub generation: u64,
    /// When the refresh engine last stored a token (unix ms; 0: never).
    #[serde(default)]
    pub last_refresh_at_ms: i64,
    /// Expiry of the previous token, kept (sealed) until then; 0 when none is kept.
    #[serde(default)]
    pub previous_expire_time: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credits {
    pub total: i64,
    pub remaining: i64,
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
}

/// The non-secret part of an account. Stored readable, but authenticated: it is part of
/// the associated data of the sealed secrets, so editing it on disk breaks the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountMeta {
    pub provider: String,
    pub email: String,
    pub max_jobs: u32,
    pub disabled: bool,
    pub labels: BTreeMap<String, String>,
    pub status: Status,
    pub status_reason: String,
    pub session: Option<SessionMeta>,
    pub credits: Option<Credits>,
    /// API-key style: the upstream has seen the key's activating first call.
    #[serde(default)]
    pub upstream_activated: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
}

impl AccountMeta {
    pub fn key(&self) -> AccountKey {
        AccountKey {
            provider: self.provider.clone(),
            email: self.email.clone(),
        }
    }

    /// The status a reader sees: a disabled account is DISABLED whatever else is true.
    pub fn effective_status(&self) -> Status {
        if self.disabled {
            Status::Disabled
        } else {
            self.status
        }
    }
}

/// The secret part of an account, sealed as one blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountSecrets {
    pub password: Option<SecretString>,
    pub api_key: Option<SecretString>,
    pub secret: Option<SecretString>,
    /// The upstream session token.
    pub token: Option<SecretString>,
    /// The token before the last refresh, still valid upstream until its own expiry.
    pub previous_token: Option<SecretString>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub meta: AccountMeta,
    pub secrets: AccountSecrets,
}

/// A session token supplied by an operator.
#[derive(Clone, Debug, Default)]
pub struct SessionInput {
    pub token: SecretString,
    pub account_id: String,
    pub username: String,
    /// Unix seconds; 0 means "read it from the token's `exp` claim".
    pub expire_time: i64,
}

/// CreateAccount's input, before validation.
#[derive(Clone, Debug, Default)]
pub struct NewAccount {
    pub provider: String,
    pub email: String,
    pub password: Option<SecretString>,
    pub api_key: Option<SecretString>,
    pub secret: Option<SecretString>,
    /// As requested; checked against the provider's range (wide so that a negative
    /// request is reported as it was sent).
    pub max_jobs: i64,
    pub session: Option<SessionInput>,
    pub labels: BTreeMap<String, String>,
    pub disabled: bool,
}

/// What a provider login produced, before it is checked and stored.
#[derive(Clone, Debug, Default)]
pub struct Refreshed {
    pub session: Option<FreshSession>,
    pub credits: Option<Credits>,
    /// The upstream has activated the account's API key.
    pub activated: bool,
    /// The provider revoked the replaced token upstream, so it is not worth keeping.
    pub revoked_previous: bool,
}

#[derive(Clone, Debug)]
pub struct FreshSession {
    pub token: SecretString,
    pub account_id: Option<String>,
    pub username: Option<String>,
    /// Unix seconds.
    pub expire_time: i64,
}

/// UpdateAccount's input: `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct AccountUpdate {
    pub max_jobs: Option<i64>,
    pub password: Option<SecretString>,
    pub api_key: Option<SecretString>,
    pub secret: Option<SecretString>,
    pub disabled: Option<bool>,
    pub set_labels: BTreeMap<String, String>,
    pub remove_labels: Vec<String>,
    pub session: Option<SessionInput>,
}
