//! The call layer: one tower layer in front of every gRPC service. For each call it
//! takes (or makes) the request id and opens a span carrying it, proves the caller from
//! the `authorization` metadata and puts the typed [`Caller`] into the request
//! extensions (answering the refusal itself when that fails), opens the call's audit
//! record, and counts the call and its latency by method and status. Handlers never
//! parse metadata. Only the health service is public (kubelet probes carry no token),
//! and server reflection unless configured otherwise (the schema is public in
//! `proto/`, and grpcurl needs it before it can send any credential-bearing call).

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderValue, Request, Response};
use tonic::{Code, Status, body::Body, transport::server::UdsConnectInfo};
use tower::{Layer, Service};
use tracing::Instrument;

use super::call_audit::CallAudit;
use crate::{
    audit::{AuditEvent, AuditLog},
    auth::Authenticator,
    crypto::random_bytes,
    ops::exporter,
};

const PUBLIC_PREFIX: &str = "/grpc.health.v1.Health/";
const REFLECTION_PREFIXES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];
pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_LEN: usize = 128;
/// Largest request header block answered, counted as HPACK counts it (name, value and
/// 32 bytes per field, the path included). HTTP/2 itself is let through up to
/// [`HTTP2_MAX_HEADER_LIST`], so that a block between the two gets a gRPC status here
/// instead of a bare HTTP 431, which clients show as UNKNOWN.
pub const MAX_HEADER_BLOCK: usize = 16 * 1024;
/// The connection-level limit handed to HTTP/2: beyond it a request is refused by the
/// protocol (HTTP 431) before credvault sees it.
pub const HTTP2_MAX_HEADER_LIST: u32 = 256 * 1024;

/// The request id of the call, in the request extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// How a method is audited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Audited {
    No,
    Yes,
    /// Hands out or issues a secret: never answered OK without its audit event.
    HandOut,
}

fn audited(path: &str) -> Audited {
    match path.strip_prefix("/credvault.v1.") {
        Some(
            "Accounts/CreateAccount"
            | "Accounts/UpdateAccount"
            | "Accounts/DeleteAccount"
            | "Accounts/RefreshAccount"
            | "Callers/ActivateCaller"
            | "Callers/RevokeToken"
            | "Callers/UpdateCaller"
            | "Callers/DeleteCaller"
            | "Credentials/RevokeLease"
            | "Credentials/ReleaseLease"
            | "Credentials/WatchCredentials"
            | "Audit/AuditHash"
            | "Keys/RotateMasterKey",
        ) => Audited::Yes,
        Some(
            "Callers/CreateCaller"
            | "Callers/CreateSession"
            | "Callers/IssueToken"
            | "Credentials/RevealAccount"
            | "Credentials/AcquireLease"
            | "Credentials/RenewLease",
        ) => Audited::HandOut,
        _ => Audited::No,
    }
}

#[derive(Clone)]
pub struct CallLayer {
    authenticator: Arc<Authenticator>,
    audit: Arc<AuditLog>,
    call_timeout: Duration,
    public_reflection: bool,
}

impl CallLayer {
    pub fn new(
        authenticator: Arc<Authenticator>,
        audit: Arc<AuditLog>,
        call_timeout: Duration,
    ) -> Self {
        Self {
            authenticator,
            audit,
            call_timeout,
            public_reflection: false,
        }
    }

    /// Server reflection answers without a credential.
    pub fn with_public_reflection(mut self, public: bool) -> Self {
        self.public_reflection = public;
        self
    }
}

/// Whether `path` is answered without a credential.
fn is_public(path: &str, public_reflection: bool) -> bool {
    path.starts_with(PUBLIC_PREFIX)
        || (public_reflection && REFLECTION_PREFIXES.iter().any(|p| path.starts_with(p)))
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            authenticator: self.authenticator.clone(),
            audit: self.audit.clone(),
            call_timeout: self.call_timeout,
            public_reflection: self.public_reflection,
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    audit: Arc<AuditLog>,
    call_timeout: Duration,
    public_reflection: bool,
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for CallService<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        if header_block_len(&request) > MAX_HEADER_BLOCK {
            let status = Status::resource_exhausted(format!(
                "the request's headers are larger than {} KiB",
                MAX_HEADER_BLOCK / 1024
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let path = request.uri().path().to_owned();
        let request_id = request_id(request.headers().get(REQUEST_ID_HEADER));
        let span = tracing::info_span!("rpc", request_id = %request_id, rpc = %path);
        request
            .extensions_mut()
            .insert(RequestId(request_id.clone()));

        let public = is_public(&path, self.public_reflection);
        let authenticator = self.authenticator.clone();
        let audit = self.audit.clone();
        let deadline =
            crate::limits::deadline(request.headers().get("grpc-timeout"), self.call_timeout);
        let rpc = path.trim_start_matches('/').to_owned();
        let future = async move {
            let proven = match public {
                true => None,
                false => Some(
                    authenticator
                        .authenticate(&path, request.headers(), peer_uid(request.extensions()))
                        .await
                        .inspect_err(|error| {
                            tracing::warn!(reason = %error, "authentication failed");
                        }),
                ),
            };
            let policy = audited(&path);
            let response = match proven {
                None => inner.call(request).await?,
                Some(Ok(caller)) => {
                    let call_audit = match policy {
                        Audited::No => CallAudit::none(),
                        _ => CallAudit::new(
                            audit,
                            &request_id,
                            &rpc,
                            &caller.id,
                            &caller.credential.principal(),
                        ),
                    };
                    request.extensions_mut().insert(caller);
                    request.extensions_mut().insert(call_audit.clone());
                    let mut response =
                        match tokio::time::timeout(deadline, inner.call(request)).await {
                            Ok(answer) => answer?,
                            Err(_) => Status::deadline_exceeded(format!(
                                "the call did not finish within its deadline ({} ms)",
                                deadline.as_millis()
                            ))
                            .into_http(),
                        };
                    let code = grpc_code(&response);
                    // A hand-out is not answered before its event is written; other
                    // events are queued for the trail's writer.
                    if policy == Audited::HandOut && code == Code::Ok {
                        if call_audit.commit().await.is_err() {
                            response = Status::unavailable(
                                "the audit trail could not be written, so nothing was handed out; retry later",
                            )
                            .into_http();
                        }
                    } else {
                        call_audit.finish(code_name(code));
                    }
                    response
                }
                Some(Err(error)) => {
                    let principal = error.principal();
                    let status = super::status::auth_error(error);
                    // Queued: a failing audit trail must not turn a refusal into
                    // something else (a failed write is logged and counted).
                    audit.append(AuditEvent {
                        request_id: request_id.clone(),
                        rpc: rpc.clone(),
                        principal,
                        outcome: code_name(status.code()).to_owned(),
                        ..AuditEvent::default()
                    });
                    status.into_http()
                }
            };
            let mut response = tidy(response);
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            if exporter::enabled() {
                let code = code_name(grpc_code(&response));
                metrics::counter!("credvault_rpc_requests_total", "method" => rpc.clone(), "code" => code)
                    .increment(1);
                metrics::histogram!("credvault_rpc_duration_seconds", "method" => rpc, "code" => code)
                    .record(started.elapsed().as_secs_f64());
            }
            Ok(response)
        };
        Box::pin(future.instrument(span))
    }
}

/// The uid of the Unix-socket peer that sent the request, if it came over one.
pub fn peer_uid(extensions: &http::Extensions) -> Option<u32> {
    extensions
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid())
}

/// The size of a request's header block as HTTP/2 counts it (RFC 7541 §4.1).
fn header_block_len<B>(request: &Request<B>) -> usize {
    const FIELD_OVERHEAD: usize = 32;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
        .sum();
    fields + request.uri().path().len() + FIELD_OVERHEAD
}

/// The caller's `x-request-id` when it is a sane one, else a new random id.
fn request_id(given: Option<&HeaderValue>) -> String {
    let given = given
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned);
    given.unwrap_or_else(|| {
        // A random prefix per process and a counter: unique without a system call per
        // request (ids need not be secret, only distinct).
        static PREFIX: OnceLock<String> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let prefix = PREFIX.get_or_init(|| {
            let mut bytes = [0u8; 4];
            // Without randomness the ids are only less distinct across restarts.
            let _ = random_bytes(&mut bytes);
            crate::hex::encode(&bytes)
        });
        format!("{prefix}{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
    })
}

/// Longest `grpc-message` sent, in bytes (percent-encoded): no answer grows with its
/// input, and none outgrows a client's header limit.
const MAX_MESSAGE_LEN: usize = 1024;

/// A request body that is not the method's protobuf message is the caller's mistake:
/// tonic answers it INTERNAL, credvault INVALID_ARGUMENT. Overlong messages are cut.
fn tidy(response: Response<Body>) -> Response<Body> {
    let message = response
        .headers()
        .get("grpc-message")
        .map(|v| v.as_bytes().to_vec());
    let Some(message) = message else {
        return response;
    };
    if grpc_code(&response) == Code::Internal
        && percent_decoded(&message).starts_with(b"failed to decode Protobuf message")
    {
        return Status::invalid_argument(
            "the request body is not a valid protobuf message for this method",
        )
        .into_http();
    }
    if message.len() <= MAX_MESSAGE_LEN {
        return response;
    }
    // Never cut inside a %XX escape.
    let mut cut = MAX_MESSAGE_LEN;
    while message[cut - 2..cut].contains(&b'%') {
        cut -= 1;
    }
    let mut response = response;
    if let Ok(value) = HeaderValue::from_bytes(&message[..cut]) {
        response.headers_mut().insert("grpc-message", value);
    }
    response
}

/// A `grpc-message` as sent: percent-encoded (spaces included).
fn percent_decoded(encoded: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        let escape = (encoded[i] == b'%')
            .then(|| Some(hex(*encoded.get(i + 1)?)? * 16 + hex(*encoded.get(i + 2)?)?))
            .flatten();
        match escape {
            Some(byte) => {
                out.push(byte as u8);
                i += 3;
            }
            None => {
                out.push(encoded[i]);
                i += 1;
            }
        }
    }
    out
}

/// The status of an answer: from its `grpc-status` header (errors are answered
/// trailers-only), else OK (a unary answer that made it to the body).
fn grpc_code(response: &Response<Body>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// The canonical name of a status code, as gRPC spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests;
