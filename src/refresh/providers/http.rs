//! The HTTP client every adapter uses: rustls with the ring provider, a timeout on
//! every call, no redirects (a redirect could carry credentials elsewhere), and answers
//! read up to a size cap.

use std::{sync::Once, time::Duration};

use reqwest::{Client, RequestBuilder, StatusCode, redirect::Policy};

use super::LoginError;

/// Largest answer read from an upstream.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Installs ring as the process's rustls provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub struct Http {
    client: Client,
}

impl Http {
    pub fn new(timeout_secs: u64) -> Self {
        install_crypto_provider();
        let timeout = Duration::from_secs(timeout_secs.max(1));
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(Policy::none())
            .build()
            .unwrap_or_else(|_| Client::new());
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends and reads the answer, capped. Transport failures and timeouts are
    /// transient; the reason names what failed, not what was sent.
    pub async fn send(
        &self,
        request: RequestBuilder,
        what: &str,
    ) -> Result<(StatusCode, Vec<u8>), LoginError> {
        let mut response = request.send().await.map_err(|error| {
            let kind = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "could not connect"
            } else {
                "failed"
            };
            LoginError::transient(format!("{what}: request {kind}"))
        })?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| LoginError::transient(format!("{what}: reading the answer failed")))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(LoginError::transient(format!(
                    "{what}: answer larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

/// A failure for an HTTP status that is not the expected one: 5xx and 429 may pass,
/// anything else is the upstream refusing.
pub fn unexpected(what: &str, status: StatusCode, body: &[u8]) -> LoginError {
    let message = upstream_message(body);
    let reason = match message {
        Some(message) => format!("{what}: HTTP {} ({message})", status.as_u16()),
        None => format!("{what}: HTTP {}", status.as_u16()),
    };
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        LoginError::transient(reason)
    } else {
        LoginError::permanent(reason)
    }
}

/// The `message` (or `error`) field of a JSON error answer, if there is one.
pub fn upstream_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["message", "error", "ErrMsg"]
        .iter()
        .find_map(|field| value.get(field).and_then(|m| m.as_str()).map(str::to_owned))
}

pub fn malformed(what: &str) -> LoginError {
    LoginError::transient(format!("{what}: malformed answer from upstream"))
}
