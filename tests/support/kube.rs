//! A Kubernetes API server as far as credvault talks to one, on loopback: TokenReview
//! (checked against the keys it signs with, as the real one does), OIDC discovery and
//! the JWKS document. Keys are made by the test (ES256 with rcgen, RS256 with rsa);
//! tokens are shaped like the kubelet's projected ServiceAccount tokens.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinSet};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// What credvault presents as its own ServiceAccount token to the fake API server.
pub const REVIEWER_TOKEN: &str = "credvault-reviewer-token-0123456789";
/// The audiences the API server answers for a review that asks for none.
const API_AUDIENCE: &str = "https://kubernetes.default.svc";

/// A signing key of the cluster's ServiceAccount issuer.
#[derive(Clone)]
pub struct IssuerKey {
    pub kid: String,
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key as a JWK.
    pub jwk: Value,
    /// The public key as PEM (for the HS256-with-the-public-key attack).
    pub public_pem: String,
}

impl IssuerKey {
    pub fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let raw = pair.public_key_raw();
        let (x, y) = raw[1..].split_at(32);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            decoding: DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap(),
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    pub fn rs256(kid: &str) -> Self {
        use rsa::{pkcs1::EncodeRsaPrivateKey, pkcs8::EncodePublicKey, traits::PublicKeyParts};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let public = private.to_public_key();
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes()),
            decoding: DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap(),
            jwk,
            public_pem: public
                .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap(),
        }
    }

    /// A token with these claims, signed by this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// The claims of a projected token the kubelet mounts: `audiences`, valid from
/// `iat_secs` for `life_secs`, bound to a pod.
pub fn projected(
    namespace: &str,
    service_account: &str,
    audiences: &[&str],
    iat_secs: i64,
    life_secs: i64,
) -> Value {
    json!({
        "aud": audiences,
        "exp": iat_secs + life_secs,
        "iat": iat_secs,
        "nbf": iat_secs,
        "iss": ISSUER,
        "jti": format!("{namespace}-{service_account}-{iat_secs}"),
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "0e5c7f7c-1111-4f8e-9a51-0d1f2e3a4b5c"},
            "pod": {"name": format!("{service_account}-7d9f8-abcde"), "uid": "5b0c3a52-2222-4c1e-8f0a-9e8d7c6b5a4f"},
            "serviceaccount": {"name": service_account, "uid": "a1b2c3d4-3333-4e5f-8a9b-0c1d2e3f4a5b"},
        },
    })
}

/// The claims of a Secret-based (legacy) token: no `exp`, no `aud`.
pub fn legacy(namespace: &str, service_account: &str) -> Value {
    json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": format!("{service_account}-token-x7k2p"),
        "kubernetes.io/serviceaccount/service-account.name": service_account,
        "kubernetes.io/serviceaccount/service-account.uid": "a1b2c3d4-3333-4e5f-8a9b-0c1d2e3f4a5b",
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
    })
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[derive(Default)]
struct State {
    keys: Vec<IssuerKey>,
    /// Answer every review with `authenticated: false` (a deleted pod, say).
    deny_all: bool,
    reviews: u64,
    jwks_fetches: u64,
    /// The bearer each review came with.
    review_bearers: Vec<String>,
    /// How long a review takes to answer (a slow API server).
    review_delay: std::time::Duration,
    /// Answer the JWKS document with 503 (still counted as a fetch).
    jwks_down: bool,
}

/// The fake API server; dropped or [`FakeApiServer::stop`]ped, it stops listening and
/// its open connections close.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeApiServer {
    pub async fn start(keys: Vec<IssuerKey>) -> Self {
        Self::serve(keys, None).await
    }

    /// The same over https, with a certificate for `localhost` from a CA made here;
    /// answers the CA's certificate (PEM) too.
    pub async fn start_tls(keys: Vec<IssuerKey>) -> (Self, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::serve(keys, Some(acceptor)).await, ca_pem)
    }

    async fn serve(keys: Vec<IssuerKey>, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            keys,
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| answer(state.clone(), addr, request));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Self {
            addr,
            state,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The https URL, for a server started with [`FakeApiServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The keys the JWKS document serves and reviews check against, from now on.
    pub fn set_keys(&self, keys: Vec<IssuerKey>) {
        self.lock().keys = keys;
    }

    pub fn deny_all(&self, deny: bool) {
        self.lock().deny_all = deny;
    }

    pub fn delay_reviews(&self, delay: std::time::Duration) {
        self.lock().review_delay = delay;
    }

    pub fn jwks_down(&self, down: bool) {
        self.lock().jwks_down = down;
    }

    pub fn reviews(&self) -> u64 {
        self.lock().reviews
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.lock().jwks_fetches
    }

    pub fn review_bearers(&self) -> Vec<String> {
        self.lock().review_bearers.clone()
    }

    /// Stops listening and closes every open connection.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The JWKS document of `keys`.
pub fn jwks(keys: &[IssuerKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

async fn answer(
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Value| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap())
    };
    let bearer = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match (request.method().clone(), request.uri().path()) {
        (Method::GET, "/.well-known/openid-configuration") => reply(
            StatusCode::OK,
            json!({
                "issuer": ISSUER,
                "jwks_uri": format!("http://{addr}/openid/v1/jwks"),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }),
        ),
        (Method::GET, "/openid/v1/jwks") => {
            let mut state = state.lock().unwrap();
            state.jwks_fetches += 1;
            match state.jwks_down {
                true => reply(StatusCode::SERVICE_UNAVAILABLE, json!({"code": 503})),
                false => reply(StatusCode::OK, jwks(&state.keys)),
            }
        }
        (Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews") => {
            let body = Limited::new(request.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if bearer.as_deref() != Some(REVIEWER_TOKEN) {
                return reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"kind": "Status", "status": "Failure", "code": 401}),
                );
            }
            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
            let delay = state.lock().unwrap().review_delay;
            tokio::time::sleep(delay).await;
            let mut state = state.lock().unwrap();
            state.reviews += 1;
            state.review_bearers.push(bearer.unwrap_or_default());
            let status = match state.deny_all {
                true => json!({"authenticated": false, "error": "pod no longer exists"}),
                false => judge(&state.keys, &review),
            };
            let mut answer = review;
            answer["status"] = status;
            reply(StatusCode::CREATED, answer)
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"code": 404})),
    }
}

/// What the real API server answers: the token checked against the issuer's keys,
/// its expiry, and the audiences asked for (or the API server's own).
fn judge(keys: &[IssuerKey], review: &Value) -> Value {
    let refused = |error: &str| json!({"authenticated": false, "error": error});
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return refused("invalid bearer token");
    };
    let Some(key) = keys
        .iter()
        .find(|k| Some(&k.kid) == header.kid.as_ref() && k.algorithm == header.alg)
    else {
        return refused("invalid bearer token");
    };
    let mut validation = Validation::new(key.algorithm);
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.required_spec_claims.clear();
    let Ok(data) = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation) else {
        return refused("invalid bearer token");
    };
    let claims = data.claims;
    let legacy = claims["iss"] == "kubernetes/serviceaccount";
    let token_audiences: Vec<String> = match &claims["aud"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Value::String(one) => vec![one.clone()],
        _ if legacy => vec![API_AUDIENCE.to_owned()],
        _ => Vec::new(),
    };
    let asked = match wanted.is_empty() {
        true => vec![API_AUDIENCE.to_owned()],
        false => wanted,
    };
    let audiences: Vec<String> = asked
        .into_iter()
        .filter(|a| token_audiences.contains(a))
        .collect();
    if audiences.is_empty() {
        return refused("token audiences is invalid for the target audiences");
    }
    let mut extra = json!({});
    if let Some(pod) = claims["kubernetes.io"]["pod"].as_object() {
        extra = json!({
            "authentication.kubernetes.io/pod-name": [pod["name"]],
            "authentication.kubernetes.io/pod-uid": [pod["uid"]],
        });
    }
    json!({
        "authenticated": true,
        "audiences": audiences,
        "user": {
            "username": claims["sub"],
            "uid": "a1b2c3d4-3333-4e5f-8a9b-0c1d2e3f4a5b",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": extra,
        },
    })
}
