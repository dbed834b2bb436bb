//! The staged swap's checks: a new token replaces the current one only if it parses,
//! expires in the future, and differs from it.

use crate::accounts::{Account, Refreshed, upstream_token};

const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a login's result was not stored.
pub fn check(refreshed: &Refreshed, current: &Account, now_ms: i64) -> Result<(), &'static str> {
    let Some(fresh) = &refreshed.session else {
        return Ok(());
    };
    let token = fresh.token.expose();
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || token.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err("the new token is empty, too long, or not printable");
    }
    if token.matches('.').count() == 2 && upstream_token::claims_parse(token).is_none() {
        return Err("the new token looks like a JWT but does not parse");
    }
    if fresh.expire_time.saturating_mul(1000) <= now_ms {
        return Err("the new token has already expired");
    }
    if current
        .secrets
        .token
        .as_ref()
        .is_some_and(|t| t.expose() == token)
    {
        return Err("the upstream answered with the token credvault already holds");
    }
    Ok(())
}
