//! Media-platform style (§1C): a session created with Basic auth; the token and its
//! expiry are read from the answer at configured JSON pointers.

use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::StatusCode;
use zeroize::Zeroizing;

use super::{
    LoginError, LoginFuture, Provider,
    http::{Http, malformed, unexpected},
};
use crate::accounts::{Account, FreshSession, Refreshed, upstream_token};

pub struct BasicSession {
    pub http: Http,
    pub base: String,
    pub token_pointer: String,
    pub expiry_pointer: String,
    pub lifetime_secs: Option<i64>,
}

/// Where the answer carries the session, as configured for the provider.
pub struct SessionFields<'a> {
    pub token_pointer: &'a str,
    pub expiry_pointer: &'a str,
    pub lifetime_secs: Option<i64>,
}

impl BasicSession {
    fn fields(&self) -> SessionFields<'_> {
        SessionFields {
            token_pointer: &self.token_pointer,
            expiry_pointer: &self.expiry_pointer,
            lifetime_secs: self.lifetime_secs,
        }
    }
}

/// Reads the session-create answer: the token and expiry at the configured pointers.
pub fn read_session(
    fields: &SessionFields<'_>,
    status: StatusCode,
    answer: &[u8],
    now_ms: i64,
) -> Result<Refreshed, LoginError> {
    const WHAT: &str = "session create";
    if !status.is_success() {
        return Err(unexpected(WHAT, status, answer));
    }
    let value: serde_json::Value = serde_json::from_slice(answer).map_err(|_| malformed(WHAT))?;
    let token = value
        .pointer(fields.token_pointer)
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            LoginError::transient(format!("{WHAT}: no token at {}", fields.token_pointer))
        })?
        .to_owned();
    let expire_time = value
        .pointer(fields.expiry_pointer)
        .and_then(|e| {
            e.as_i64()
                .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
        })
        .filter(|e| *e > 0)
        .or_else(|| upstream_token::expiry(&token))
        .or_else(|| fields.lifetime_secs.map(|l| now_ms / 1000 + l))
        .ok_or_else(|| {
            LoginError::transient(format!(
                "{WHAT}: no expiry at {} and no session_lifetime_secs configured",
                fields.expiry_pointer
            ))
        })?;
    Ok(Refreshed {
        session: Some(FreshSession {
            token: token.into(),
            account_id: value.pointer("/id").map(|id| match id {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            username: None,
            expire_time,
        }),
        credits: None,
        activated: false,
        revoked_previous: false,
    })
}

impl Provider for BasicSession {
    fn refresh<'a>(&'a self, account: &'a Account, now_ms: i64) -> LoginFuture<'a> {
        Box::pin(async move {
            const WHAT: &str = "session create";
            let password = account.secrets.password.as_ref().ok_or_else(|| {
                LoginError::permanent("no password stored; set one with UpdateAccount")
            })?;
            let credentials =
                Zeroizing::new(format!("{}:{}", account.meta.email, password.expose()));
            let header =
                Zeroizing::new(format!("Basic {}", STANDARD.encode(credentials.as_bytes())));
            let request = self
                .http
                .client()
                .post(format!("{}/api/session", self.base))
                .header("authorization", header.as_str());
            let (status, answer) = self.http.send(request, WHAT).await?;
            read_session(&self.fields(), status, &answer, now_ms)
        })
    }
}
