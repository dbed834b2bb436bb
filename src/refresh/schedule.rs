//! When each account is due, in time order. Owned by the scheduler task alone.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    accounts::{AccountKey, AccountMeta, Status},
    crypto::random_below,
    providers::ProviderKind,
};

/// The `[refresh]` section of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshSettings {
    /// Refresh at least this long before expiry (or 10% of the token's lifetime, if more),
    /// but never before half of the token's lifetime has passed.
    pub skew_secs: i64,
    /// The engine logs an account in at most once per this many seconds (a PixVerse
    /// login ends the session running jobs hold); RefreshAccount within it answers
    /// the fresh token unless `force` is set.
    pub min_login_interval_secs: i64,
    /// Logins running at once, across all accounts.
    pub concurrency: usize,
    /// First retry delay after a transient failure; doubles per attempt.
    pub backoff_base_ms: i64,
    /// Longest retry delay.
    pub backoff_cap_ms: i64,
    /// API-key accounts (no token): how often credits are read.
    pub credits_interval_secs: i64,
    /// Tokens whose expiry is unknown: how often they are renewed.
    pub unknown_expiry_secs: i64,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        Self {
            skew_secs: 300,
            min_login_interval_secs: 30,
            concurrency: 4,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 15 * 60 * 1000,
            credits_interval_secs: 3600,
            unknown_expiry_secs: 3600,
        }
    }
}

impl RefreshSettings {
    /// Delay before retry `attempt` (1-based): exponential, capped, with "equal
    /// jitter" (between half and all of the step) so retries of many accounts spread.
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let step = self
            .backoff_base_ms
            .saturating_mul(1i64 << attempt.saturating_sub(1).min(30))
            .min(self.backoff_cap_ms)
            .max(1);
        step / 2 + random_below((step - step / 2) as u64 + 1) as i64
    }

    /// The earliest time the login budget allows this account's next login (its last
    /// successful login plus `min_login_interval_secs`), if that is still ahead.
    pub fn login_allowed_at(&self, meta: &AccountMeta, now_ms: i64) -> Option<i64> {
        let last = meta.session.as_ref()?.last_refresh_at_ms;
        let next = last.checked_add(self.min_login_interval_secs.saturating_mul(1000))?;
        (last > 0 && next > now_ms).then_some(next)
    }

    /// When an account should next be refreshed, or `None` when it must wait for an
    /// operator (disabled, or a permanent failure).
    ///
    /// A token is renewed `max(skew, lifetime / 10)` before its expiry, but never more
    /// than a quarter of its lifetime before it, less a jitter of up to a twentieth of
    /// its lifetime (60 s at most) so that accounts spread out. So it serves at least
    /// 70% of its life, is never renewed before halfway, and never within the login
    /// budget: a token that lives 60 s is renewed 42–45 s after it was issued, not in
    /// a loop.
    pub fn next_due(&self, kind: ProviderKind, meta: &AccountMeta, now_ms: i64) -> Option<i64> {
        if meta.disabled || meta.status == Status::NeedsAttention {
            return None;
        }
        if kind == ProviderKind::ApiKey {
            return Some(if meta.upstream_activated {
                meta.updated_at_ms + self.credits_interval_secs * 1000
            } else {
                now_ms
            });
        }
        let Some(session) = &meta.session else {
            return Some(now_ms);
        };
        let since = match session.last_refresh_at_ms {
            0 => meta.updated_at_ms,
            at => at,
        };
        if session.expire_time <= 0 {
            return Some(since + self.unknown_expiry_secs * 1000);
        }
        let expiry = session.expire_time.saturating_mul(1000);
        let lifetime = (expiry - since).max(0);
        let lead = (self.skew_secs * 1000).max(lifetime / 10).min(lifetime / 4);
        let jitter = random_below((lifetime / 20).clamp(0, 60_000) as u64) as i64;
        let halfway = since + lifetime / 2;
        let budget = self.login_allowed_at(meta, now_ms).unwrap_or(i64::MIN);
        Some((expiry - lead - jitter).max(halfway).max(budget))
    }
}

/// Accounts ordered by due time.
#[derive(Debug, Default)]
pub struct Schedule {
    by_time: BTreeSet<(i64, AccountKey)>,
    due: HashMap<AccountKey, i64>,
}

impl Schedule {
    pub fn set(&mut self, key: AccountKey, at_ms: i64) {
        if let Some(old) = self.due.insert(key.clone(), at_ms) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at_ms, key));
    }

    pub fn remove(&mut self, key: &AccountKey) {
        if let Some(old) = self.due.remove(key) {
            self.by_time.remove(&(old, key.clone()));
        }
    }

    pub fn next_due(&self) -> Option<i64> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Takes every account due at `now_ms`, earliest first.
    pub fn pop_due(&mut self, now_ms: i64) -> Vec<AccountKey> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now_ms {
                break;
            }
            let (_, key) = self.by_time.pop_first().expect("checked above");
            self.due.remove(&key);
            out.push(key);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    pub fn snapshot(&self) -> HashMap<AccountKey, i64> {
        self.due.clone()
    }
}

#[cfg(test)]
mod tests;
