//! ean-db style (§1B): present the current JWT to get a new one, revoke the old one,
//! stay under the upstream's 3-token cap, and read the balance.

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{
    LoginError, LoginFuture, Provider,
    http::{Http, malformed, unexpected, upstream_message},
};
use crate::{
    accounts::{Account, Credits, FreshSession, Refreshed, upstream_token},
    crypto::SecretString,
};

pub struct JwtRotate {
    pub http: Http,
    pub base: String,
}

#[derive(Serialize, Deserialize)]
struct JwtBody {
    jwt: String,
}

#[derive(Deserialize)]
struct AccountInfo {
    balance: i64,
}

impl JwtRotate {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// PUT a new JWT; `None` on 409 (the upstream's token cap).
    async fn issue(&self, current: &SecretString) -> Result<Option<String>, LoginError> {
        const WHAT: &str = "JWT rotation";
        let request = self
            .http
            .client()
            .put(self.url("/api/v2/account/jwt"))
            .bearer_auth(current.expose());
        let (status, answer) = self.http.send(request, WHAT).await?;
        read_issued(status, &answer)
    }

    async fn revoke(&self, auth: &str, jwt: &str) -> Result<(), LoginError> {
        const WHAT: &str = "JWT revocation";
        let body = serde_json::to_vec(&JwtBody {
            jwt: jwt.to_owned(),
        })
        .map_err(|_| malformed(WHAT))?;
        let request = self
            .http
            .client()
            .delete(self.url("/api/v2/account/jwt"))
            .bearer_auth(auth)
            .header("content-type", "application/json")
            .body(body);
        let (status, answer) = self.http.send(request, WHAT).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(unexpected(WHAT, status, &answer))
        }
    }

    async fn balance(&self, jwt: &str) -> Result<i64, LoginError> {
        const WHAT: &str = "account balance";
        let request = self
            .http
            .client()
            .get(self.url("/api/v2/account"))
            .bearer_auth(jwt);
        let (status, answer) = self.http.send(request, WHAT).await?;
        read_balance(status, &answer)
    }
}

/// Reads the answer to a JWT issue: the new JWT, or `None` at the upstream's cap (409).
pub fn read_issued(status: StatusCode, answer: &[u8]) -> Result<Option<String>, LoginError> {
    const WHAT: &str = "JWT rotation";
    match status {
        StatusCode::CONFLICT => Ok(None),
        status if status.is_success() => {
            let body: JwtBody = serde_json::from_slice(answer).map_err(|_| malformed(WHAT))?;
            if body.jwt.is_empty() {
                return Err(malformed(WHAT));
            }
            Ok(Some(body.jwt))
        }
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Err(LoginError::permanent(format!(
            "{WHAT}: upstream refused the current JWT ({})",
            upstream_message(answer).unwrap_or_else(|| format!("HTTP {}", status.as_u16()))
        ))),
        status => Err(unexpected(WHAT, status, answer)),
    }
}

/// Reads the account answer: the balance.
pub fn read_balance(status: StatusCode, answer: &[u8]) -> Result<i64, LoginError> {
    const WHAT: &str = "account balance";
    if !status.is_success() {
        return Err(unexpected(WHAT, status, answer));
    }
    let info: AccountInfo = serde_json::from_slice(answer).map_err(|_| malformed(WHAT))?;
    Ok(info.balance)
}

impl Provider for JwtRotate {
    fn refresh<'a>(&'a self, account: &'a Account, _now_ms: i64) -> LoginFuture<'a> {
        Box::pin(async move {
            let current = account.secrets.token.as_ref().ok_or_else(|| {
                LoginError::permanent("no JWT to rotate; set one with UpdateAccount (jwt.token)")
            })?;
            let new = match self.issue(current).await? {
                Some(new) => new,
                None => {
                    // At the cap: revoke the oldest token credvault knows, once.
                    let oldest = account.secrets.previous_token.as_ref().ok_or_else(|| {
                        LoginError::permanent(
                            "JWT limit exceeded upstream and credvault holds no older token to revoke",
                        )
                    })?;
                    self.revoke(current.expose(), oldest.expose()).await?;
                    self.issue(current).await?.ok_or_else(|| {
                        LoginError::transient(
                            "JWT limit exceeded upstream even after revoking the oldest token",
                        )
                    })?
                }
            };
            let expire_time = upstream_token::expiry(&new).ok_or_else(|| {
                LoginError::transient("JWT rotation: the new JWT carries no exp claim")
            })?;
            // The old token is revoked with the new one; if that fails it still
            // expires on its own, so the rotation stands.
            let revoked_previous = match self.revoke(&new, current.expose()).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(reason = %error, "revoking the replaced upstream JWT failed; keeping it as the previous token");
                    false
                }
            };
            let credits = match self.balance(&new).await {
                Ok(balance) => Some(Credits {
                    total: balance,
                    remaining: balance,
                    valid_from_ms: None,
                    valid_until_ms: None,
                }),
                Err(error) => {
                    tracing::warn!(reason = %error, "reading the upstream balance failed");
                    None
                }
            };
            Ok(Refreshed {
                session: Some(FreshSession {
                    token: new.into(),
                    account_id: None,
                    username: None,
                    expire_time,
                }),
                credits,
                activated: false,
                revoked_previous,
            })
        })
    }
}
