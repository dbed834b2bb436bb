//! How the client reaches a daemon (TCP, TLS or the Unix socket) and which credential
//! it sends. A credential never comes from a flag's value, which would land in shell
//! history: it is read from `CREDVAULT_TOKEN`, a `--token-file`, or the API-key pair
//! `CREDVAULT_API_KEY` + `CREDVAULT_SECRET`.

use std::path::PathBuf;

use clap::Args;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataKey},
    service::Interceptor,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::Failure;

/// Where the daemon is and how to prove who is calling.
#[derive(Debug, Args, Clone)]
pub struct Connection {
    /// The daemon's gRPC address (env CREDVAULT_ADDR); https:// uses TLS.
    #[arg(
        long,
        env = "CREDVAULT_ADDR",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL",
        global = true
    )]
    pub addr: String,
    /// The daemon's Unix socket instead of TCP (env CREDVAULT_SOCKET).
    #[arg(long, env = "CREDVAULT_SOCKET", value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// With https://: the CA certificate (PEM) that signed the daemon's certificate.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// A file holding the bearer credential (admin token, JWT or API key); otherwise
    /// CREDVAULT_TOKEN, or CREDVAULT_API_KEY with CREDVAULT_SECRET.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// How answers are printed: a table for people, or proto3 JSON as grpcurl prints it.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    pub output: super::output::Format,
}

/// The headers every call carries.
#[derive(Clone, Default)]
pub struct Credential {
    headers: Vec<(MetadataKey<tonic::metadata::Ascii>, AsciiMetadataValue)>,
}

impl Interceptor for Credential {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (key, value) in &self.headers {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        Ok(request)
    }
}

impl Connection {
    /// The credential from the token file or the environment (none over a socket whose
    /// peer uid is mapped to a caller).
    pub fn credential(&self) -> Result<Credential, Failure> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let bearer = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Failure::usage(format!("reading {}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => env("CREDVAULT_TOKEN").or_else(|| env("CREDVAULT_API_KEY")),
        };
        let mut credential = Credential::default();
        let mut add = |name: &'static str, value: String| -> Result<(), Failure> {
            let value = AsciiMetadataValue::try_from(value)
                .map_err(|_| Failure::usage(format!("the {name} value is not printable text")))?;
            credential
                .headers
                .push((MetadataKey::from_static(name), value));
            Ok(())
        };
        if let Some(token) = bearer {
            add("authorization", format!("Bearer {}", token.trim()))?;
        }
        if self.token_file.is_none()
            && env("CREDVAULT_TOKEN").is_none()
            && let Some(secret) = env("CREDVAULT_SECRET")
        {
            add("x-credvault-secret", secret)?;
        }
        Ok(credential)
    }

    /// A channel to the daemon.
    pub async fn channel(&self) -> Result<Channel, Failure> {
        let unreachable =
            |what: &str, e: &dyn std::fmt::Display| Failure::unavailable(format!("{what}: {e}"));
        if let Some(path) = &self.socket {
            let path = path.clone();
            let endpoint = Endpoint::from_static("http://localhost");
            return endpoint
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| unreachable(&format!("connecting to {}", self.socket_name()), &e));
        }
        let mut endpoint = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| Failure::usage(format!("--addr {}: {e}", self.addr)))?;
        if self.addr.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| Failure::usage(format!("reading {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Failure::usage(format!("TLS for {}: {e}", self.addr)))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| unreachable(&format!("connecting to {}", self.addr), &e))
    }

    fn socket_name(&self) -> String {
        self.socket
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}
