//! Credits style (§1D): an API key with its client secret; the first call activates
//! the key upstream, later calls read the credits. There is no session token.

use serde::Deserialize;

use super::{
    LoginError, LoginFuture, Provider,
    http::{Http, malformed, unexpected},
};
use crate::accounts::{Account, Credits, Refreshed};

/// The header that carries the client secret next to the key.
pub const SECRET_HEADER: &str = "x-client-secret";

pub struct ApiKey {
    pub http: Http,
    pub base: String,
}

#[derive(Deserialize)]
struct Info {
    credits: UpstreamCredits,
}

#[derive(Deserialize)]
struct UpstreamCredits {
    total: i64,
    remaining: i64,
    /// Unix seconds.
    valid_from: Option<i64>,
    valid_until: Option<i64>,
}

impl ApiKey {
    fn request(
        &self,
        method: reqwest::Method,
        account: &Account,
    ) -> Result<reqwest::RequestBuilder, LoginError> {
        let key = account.secrets.api_key.as_ref().ok_or_else(|| {
            LoginError::permanent("no API key stored; set one with UpdateAccount")
        })?;
        let mut request = self
            .http
            .client()
            .request(method, format!("{}/api/v1/accounts", self.base))
            .bearer_auth(key.expose());
        if let Some(secret) = &account.secrets.secret {
            request = request.header(SECRET_HEADER, secret.expose());
        }
        Ok(request)
    }
}

/// Reads the account answer: the key's credits.
pub fn read_credits(status: reqwest::StatusCode, answer: &[u8]) -> Result<Credits, LoginError> {
    const WHAT: &str = "credits";
    if !status.is_success() {
        return Err(unexpected(WHAT, status, answer));
    }
    let info: Info = serde_json::from_slice(answer).map_err(|_| malformed(WHAT))?;
    // Seconds from the upstream; out-of-range values are malformed, not overflowed.
    let millis = |secs: Option<i64>| -> Result<Option<i64>, LoginError> {
        secs.map(|s| s.checked_mul(1000).ok_or_else(|| malformed(WHAT)))
            .transpose()
    };
    Ok(Credits {
        total: info.credits.total,
        remaining: info.credits.remaining,
        valid_from_ms: millis(info.credits.valid_from)?,
        valid_until_ms: millis(info.credits.valid_until)?,
    })
}

impl Provider for ApiKey {
    fn refresh<'a>(&'a self, account: &'a Account, _now_ms: i64) -> LoginFuture<'a> {
        Box::pin(async move {
            if !account.meta.upstream_activated {
                const WHAT: &str = "API key activation";
                let request = self.request(reqwest::Method::PUT, account)?;
                let (status, answer) = self.http.send(request, WHAT).await?;
                if !status.is_success() {
                    return Err(unexpected(WHAT, status, &answer));
                }
            }
            const WHAT: &str = "credits";
            let request = self.request(reqwest::Method::GET, account)?;
            let (status, answer) = self.http.send(request, WHAT).await?;
            Ok(Refreshed {
                session: None,
                credits: Some(read_credits(status, &answer)?),
                activated: true,
                revoked_previous: false,
            })
        })
    }
}
