//! A caller as stored: identity, roles and scopes, keyed hashes of its API keys and
//! secret, the JWTs it holds (by id only), and its credits.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Consumer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Consumer => "consumer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Issued by IssueToken; long-lived; at most three live per caller.
    Access,
    /// Issued by CreateSession; short-lived.
    Session,
}

impl TokenKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Session => "session",
        }
    }
}

/// One API key: only its public id and a keyed hash of the whole key are kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyEntry {
    pub key_id: String,
    pub key_mac: String,
    pub created_at_ms: i64,
    /// Set by the key's first call, ActivateCaller.
    pub activated_at_ms: Option<i64>,
}

/// A JWT the caller holds. The token text is never stored; its `jti` is, so that each
/// call can check the token is still live (an allow-list: unknown ids are refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub jti: String,
    pub kind: TokenKind,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl TokenEntry {
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && now_ms < self.expires_at_ms
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerCredits {
    pub total: i64,
    pub remaining: i64,
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
}

impl CallerCredits {
    /// What can be spent at `now_ms`: nothing outside the validity window.
    pub fn balance(&self, now_ms: i64) -> i64 {
        let started = self.valid_from_ms.is_none_or(|from| now_ms >= from);
        let ended = self.valid_until_ms.is_some_and(|until| now_ms >= until);
        if started && !ended {
            self.remaining.max(0)
        } else {
            0
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerRecord {
    pub id: String,
    /// Empty for the bootstrap admin, which has no email.
    pub email: String,
    pub name: String,
    pub created_at_ms: i64,
    pub roles: BTreeSet<Role>,
    /// For consumers: "provider" or "provider/email-glob".
    pub scopes: Vec<String>,
    pub groups: Vec<String>,
    pub disabled: bool,
    /// Keyed hash of the client secret; `None` for the bootstrap admin.
    pub secret_mac: Option<String>,
    pub keys: Vec<ApiKeyEntry>,
    pub tokens: Vec<TokenEntry>,
    /// `None`: unmetered (hand-outs cost nothing).
    pub credits: Option<CallerCredits>,
    pub version: u64,
}

/// Revoked token entries a caller record keeps (see `CallerRecord::prune_tokens`).
pub const MAX_REVOKED_KEPT: usize = 16;

impl CallerRecord {
    pub fn live_tokens(&self, kind: TokenKind, now_ms: i64) -> usize {
        self.tokens
            .iter()
            .filter(|t| t.kind == kind && t.is_live(now_ms))
            .count()
    }

    /// Drops entries of tokens that have expired (they are refused as expired by their
    /// own `exp` claim before their entry would be looked at) and all but the
    /// [`MAX_REVOKED_KEPT`] latest revoked ones. A token is accepted only while its
    /// entry is here and not revoked, so a dropped revoked entry still refuses its
    /// token ("missing or invalid" instead of "revoked"); keeping every revocation
    /// until expiry would grow the record, rewritten on every change, without bound.
    pub fn prune_tokens(&mut self, now_ms: i64) {
        self.tokens.retain(|t| now_ms < t.expires_at_ms);
        let mut revoked: Vec<(i64, usize)> = self
            .tokens
            .iter()
            .enumerate()
            .filter_map(|(index, t)| t.revoked_at_ms.map(|at| (at, index)))
            .collect();
        if revoked.len() > MAX_REVOKED_KEPT {
            revoked.sort_unstable();
            let dropped: Vec<usize> = revoked[..revoked.len() - MAX_REVOKED_KEPT]
                .iter()
                .map(|(_, index)| *index)
                .collect();
            let mut index = 0;
            self.tokens.retain(|_| {
                let keep = !dropped.contains(&index);
                index += 1;
                keep
            });
        }
    }

    pub fn activated_keys(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| k.activated_at_ms.is_some())
            .count()
    }
}
