//! Range checks of the sections that need more than serde's types.

use super::ConfigError;
use crate::{callers::CallerSettings, refresh::RefreshSettings};

pub(super) fn check_callers(callers: &CallerSettings) -> Result<(), ConfigError> {
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

pub(super) fn check_refresh(refresh: &RefreshSettings) -> Result<(), ConfigError> {
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
