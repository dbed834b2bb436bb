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
            LoginError::transient(format!("{what}: request {}", failure_kind(&error)))
        })?;
        let status = response.status();
        let body = read_capped(&mut response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|failure| LoginError::transient(format!("{what}: {failure}")))?;
        Ok((status, body))
    }
}

/// What went wrong with a request that got no answer, in words that name nothing sent.
pub fn failure_kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    }
}

/// Why an answer's body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    #[error("reading the answer failed")]
    Read,
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

/// An answer's body, `cap` bytes at most.
pub async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, ReadFailure> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| ReadFailure::Read)? {
        if body.len() + chunk.len() > cap {
            return Err(ReadFailure::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
