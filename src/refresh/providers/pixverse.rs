//! PixVerse style (§1A): password login, answer in an `ErrCode` envelope.

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    LoginError, LoginFuture, Provider,
    http::{Http, malformed, unexpected},
};
use crate::accounts::{Account, FreshSession, Refreshed, upstream_token};

/// ErrCodes that no retry will fix: "User does not exist." and a wrong password.
pub const PERMANENT_CODES: [i64; 2] = [500200, 500201];

pub struct Pixverse {
    pub http: Http,
    pub base: String,
}

#[derive(Serialize)]
struct Login<'a> {
    #[serde(rename = "Username")]
    username: &'a str,
    #[serde(rename = "Password")]
    password: &'a str,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "ErrCode")]
    err_code: i64,
    #[serde(rename = "ErrMsg", default)]
    err_msg: String,
    #[serde(rename = "Resp")]
    resp: Option<Resp>,
}

#[derive(Deserialize)]
struct Resp {
    #[serde(rename = "Result")]
    result: Option<LoginResult>,
}

#[derive(Deserialize)]
struct LoginResult {
    #[serde(rename = "AccountId", default)]
    account_id: serde_json::Value,
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Token")]
    token: String,
    #[serde(rename = "ExpireTime", default)]
    expire_time: Option<i64>,
}

/// Reads the login answer: a session, or the failure it describes.
pub fn read_login(status: StatusCode, answer: &[u8]) -> Result<Refreshed, LoginError> {
    const WHAT: &str = "PixVerse login";
    if !status.is_success() {
        return Err(unexpected(WHAT, status, answer));
    }
    let envelope: Envelope = serde_json::from_slice(answer).map_err(|_| malformed(WHAT))?;
    if envelope.err_code != 0 {
        let reason = format!(
            "{WHAT}: ErrCode {} ({})",
            envelope.err_code, envelope.err_msg
        );
        return Err(if PERMANENT_CODES.contains(&envelope.err_code) {
            LoginError::permanent(reason)
        } else {
            LoginError::transient(reason)
        });
    }
    let result = envelope
        .resp
        .and_then(|r| r.result)
        .filter(|r| !r.token.is_empty())
        .ok_or_else(|| malformed(WHAT))?;
    let expire_time = result
        .expire_time
        .filter(|t| *t > 0)
        .or_else(|| upstream_token::expiry(&result.token))
        .ok_or_else(|| LoginError::transient(format!("{WHAT}: the token carries no expiry")))?;
    let account_id = match result.account_id {
        serde_json::Value::String(id) => Some(id),
        serde_json::Value::Number(id) => Some(id.to_string()),
        _ => None,
    };
    Ok(Refreshed {
        session: Some(FreshSession {
            token: result.token.into(),
            account_id,
            username: Some(result.username).filter(|u| !u.is_empty()),
            expire_time,
        }),
        credits: None,
        activated: false,
        revoked_previous: false,
    })
}

impl Provider for Pixverse {
    fn refresh<'a>(&'a self, account: &'a Account, _now_ms: i64) -> LoginFuture<'a> {
        Box::pin(async move {
            const WHAT: &str = "PixVerse login";
            let password = account.secrets.password.as_ref().ok_or_else(|| {
                LoginError::permanent("no password stored; set one with UpdateAccount")
            })?;
            let body = Zeroizing::new(
                serde_json::to_vec(&Login {
                    username: &account.meta.email,
                    password: password.expose(),
                })
                .map_err(|_| LoginError::transient("encoding the login failed"))?,
            );
            let request = self
                .http
                .client()
                .post(format!("{}/creative_platform/login", self.base))
                .header("content-type", "application/json")
                .body(body.to_vec());
            let (status, answer) = self.http.send(request, WHAT).await?;
            read_login(status, &answer)
        })
    }
}
