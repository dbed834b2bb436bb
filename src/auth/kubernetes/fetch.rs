//! HTTP to the API server and the issuer: rustls with the configured CA, a timeout,
//! no redirects (one could carry the bearer token elsewhere), answers read up to a
//! cap. Failures name what failed, never what was sent.

use std::{path::Path, time::Duration};

use reqwest::{Client, Method, RequestBuilder, StatusCode, redirect::Policy};
use zeroize::Zeroizing;

use crate::refresh::providers::{failure_kind, install_crypto_provider, read_capped};

const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what}: {reason}")]
    Failed { what: &'static str, reason: String },
}

fn failed(what: &'static str, reason: impl Into<String>) -> FetchError {
    FetchError::Failed {
        what,
        reason: reason.into(),
    }
}

pub struct Fetcher {
    client: Client,
}

impl Fetcher {
    pub fn new(ca_pem: Option<&[u8]>, timeout: Duration) -> Result<Self, String> {
        install_crypto_provider();
        let mut builder = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(Policy::none());
        if let Some(pem) = ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| "the CA file is not PEM certificates".to_owned())?;
            if certificates.is_empty() {
                return Err("the CA file holds no certificate".to_owned());
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|_| "the HTTP client could not be built".to_owned())?;
        Ok(Self { client })
    }

    /// GETs `url` (with `bearer_file`'s token, when given) and answers the body of a
    /// 200.
    pub async fn get(
        &self,
        what: &'static str,
        url: reqwest::Url,
        bearer_file: Option<&Path>,
    ) -> Result<Vec<u8>, FetchError> {
        let request = self.client.request(Method::GET, url);
        let (status, body) = self.send(what, request, bearer_file).await?;
        match status {
            StatusCode::OK => Ok(body),
            status => Err(failed(what, format!("HTTP {}", status.as_u16()))),
        }
    }

    /// POSTs a JSON body; answers the status and the body.
    pub async fn post_json(
        &self,
        what: &'static str,
        url: reqwest::Url,
        body: Vec<u8>,
        bearer_file: Option<&Path>,
    ) -> Result<(StatusCode, Vec<u8>), FetchError> {
        let request = self
            .client
            .request(Method::POST, url)
            .header("content-type", "application/json")
            .body(body);
        self.send(what, request, bearer_file).await
    }

    async fn send(
        &self,
        what: &'static str,
        mut request: RequestBuilder,
        bearer_file: Option<&Path>,
    ) -> Result<(StatusCode, Vec<u8>), FetchError> {
        request = request.header("accept", "application/json");
        if let Some(path) = bearer_file {
            let token = bearer(path).await.map_err(|reason| failed(what, reason))?;
            request = request.bearer_auth(token.as_str());
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| failed(what, format!("request {}", failure_kind(&error))))?;
        let status = response.status();
        let body = read_capped(&mut response, MAX_ANSWER_BYTES)
            .await
            .map_err(|failure| failed(what, failure.to_string()))?;
        Ok((status, body))
    }
}

/// credvault's own ServiceAccount token, read afresh (the kubelet rotates it).
async fn bearer(path: &Path) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(
        tokio::fs::read_to_string(path)
            .await
            .map_err(|error| format!("reading the token file {}: {error}", path.display()))?,
    );
    let token = Zeroizing::new(text.trim().to_owned());
    match token.is_empty() {
        true => Err(format!("the token file {} is empty", path.display())),
        false => Ok(token),
    }
}
