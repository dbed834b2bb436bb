//! Kubernetes ServiceAccount tokens as a credential, against a fake API server on
//! loopback that serves TokenReview, OIDC discovery and the JWKS document with keys
//! made here. Every refusal names its check, never the token.

mod support;

use std::{path::PathBuf, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use credvault::{
    auth::kubernetes::{
        KubernetesAuthConfig,
        settings::{BindingConfig, JwksConfig, TokenReviewConfig},
    },
    clock::ManualClock,
};
use serde_json::json;
use support::{
    Auth, Daemon, Reach, TestServer,
    kube::{self, FakeApiServer, ISSUER, IssuerKey, REVIEWER_TOKEN, now_secs, projected},
    proto,
};
use tonic::Code;

const AUDIENCE: &str = "credvault";

/// How a test's credvault verifies tokens.
#[derive(Clone, Copy, PartialEq)]
enum Verify {
    Review,
    JwksFile,
    Discovery,
    ReviewAndJwksFile,
}

struct Cluster {
    dir: tempfile::TempDir,
    key: String,
    /// The caller `jobs/renderer` is bound to.
    consumer: String,
    api: FakeApiServer,
    jwks_file: PathBuf,
    reviewer_file: PathBuf,
}

impl Cluster {
    /// A vault with a consumer caller, and an API server signing with `keys`.
    async fn new(keys: Vec<IssuerKey>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = support::new_key();
        let server = TestServer::start(&dir.path().join("data"), &key).await;
        let consumer = server
            .callers(Auth::admin())
            .await
            .create_caller(proto::CreateCallerRequest {
                email: "renderer@jobs.example.com".into(),
                secret: "renderer-client-secret-0123456789abcdef-0123".into(),
                roles: vec![proto::Role::Consumer as i32],
                scopes: vec!["pixverse".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .caller_id;
        server
            .accounts()
            .await
            .create_account(support::pixverse("worker1@studio.example.com", "pw-1"))
            .await
            .unwrap();
        server.stop().await;
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, kube::jwks(&keys).to_string()).unwrap();
        let reviewer_file = dir.path().join("reviewer-token");
        std::fs::write(&reviewer_file, format!("{REVIEWER_TOKEN}\n")).unwrap();
        let api = FakeApiServer::start(keys).await;
        Self {
            dir,
            key,
            consumer,
            api,
            jwks_file,
            reviewer_file,
        }
    }

    fn kubernetes_auth(&self, verify: Verify) -> KubernetesAuthConfig {
        let review = TokenReviewConfig {
            api_server: self.api.url(),
            token_file: self.reviewer_file.clone(),
            ..TokenReviewConfig::default()
        };
        let jwks_file = JwksConfig {
            issuer: ISSUER.into(),
            file: Some(self.jwks_file.clone()),
            ..JwksConfig::default()
        };
        let (token_review, jwks) = match verify {
            Verify::Review => (Some(review), None),
            Verify::JwksFile => (None, Some(jwks_file)),
            Verify::Discovery => (
                None,
                Some(JwksConfig {
                    issuer: ISSUER.into(),
                    discovery_url: Some(format!(
                        "{}/.well-known/openid-configuration",
                        self.api.url()
                    )),
                    ..JwksConfig::default()
                }),
            ),
            Verify::ReviewAndJwksFile => (Some(review), Some(jwks_file)),
        };
        KubernetesAuthConfig {
            audience: AUDIENCE.into(),
            token_review,
            jwks,
            bindings: vec![BindingConfig {
                namespace: "jobs".into(),
                service_account: "renderer".into(),
                caller: self.consumer.clone(),
            }],
            ..KubernetesAuthConfig::default()
        }
    }

    async fn serve(&self, verify: Verify, clock: &ManualClock) -> TestServer {
        let mut config = support::config(&self.dir.path().join("data"), &self.key);
        config.kubernetes_auth = Some(self.kubernetes_auth(verify));
        TestServer::start_with_clock(config, Arc::new(clock.clone())).await
    }
}

/// A clock that stands still at the wall clock's second; tokens are issued from it
/// (`seconds`), so none is ahead of credvault's time.
fn real_clock() -> ManualClock {
    ManualClock::at(now_secs() * 1000)
}

fn seconds(clock: &ManualClock) -> i64 {
    use credvault::clock::Clock;
    clock.now_ms() / 1000
}

async fn whoami(server: &TestServer, token: &str) -> Result<String, tonic::Status> {
    server
        .callers(Auth::bearer(token))
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .map(|info| info.into_inner().id)
}

/// The refusal's code and message, checked to name neither the token nor its parts.
async fn refused(server: &TestServer, token: &str) -> (Code, String) {
    let status = whoami(server, token).await.expect_err("refused");
    let message = status.message().to_owned();
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(
            !message.contains(part),
            "the refusal shows the token: {message}"
        );
    }
    (status.code(), message)
}

/// A token for jobs/renderer issued at `now` (seconds), valid 10 minutes.
fn renderer_token(key: &IssuerKey, now: i64) -> String {
    key.sign(&projected("jobs", "renderer", &[AUDIENCE], now, 600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projected_token_is_its_bound_caller_and_audited_as_its_service_account() {
    let (es, rs) = (IssuerKey::es256("es-1"), IssuerKey::rs256("rs-1"));
    let cluster = Cluster::new(vec![es.clone(), rs.clone()]).await;
    let clock = real_clock();
    let now = seconds(&clock);
    let server = cluster.serve(Verify::ReviewAndJwksFile, &clock).await;

    let token = renderer_token(&es, now);
    assert_eq!(whoami(&server, &token).await.unwrap(), cluster.consumer);
    assert_eq!(
        whoami(&server, &renderer_token(&rs, now)).await.unwrap(),
        cluster.consumer
    );
    assert_eq!(cluster.api.reviews(), 2);
    assert_eq!(cluster.api.review_bearers(), vec![REVIEWER_TOKEN; 2]);

    // The caller's roles, scopes and credits apply: a reveal in scope is answered and
    // charged, and its event names the ServiceAccount.
    let revealed = server
        .credentials(Auth::bearer(&token))
        .await
        .reveal_account(proto::RevealAccountRequest {
            provider: "pixverse".into(),
            email: "worker1@studio.example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revealed.password, "pw-1");
    let outside = server
        .credentials(Auth::bearer(&token))
        .await
        .reveal_account(proto::RevealAccountRequest {
            provider: "dataapi".into(),
            email: "worker1@studio.example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::PermissionDenied);
    // A pod's 10-minute token does not buy a one-year JWT.
    let traded = server
        .callers(Auth::bearer(&token))
        .await
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(traded.code(), Code::PermissionDenied, "{traded:?}");
    // Remembered: the calls after the first asked the API server nothing more.
    assert_eq!(cluster.api.reviews(), 2);

    let events = server
        .audit(Auth::admin())
        .await
        .list_events(proto::ListEventsRequest {
            caller_id: cluster.consumer.clone(),
            rpc: "RevealAccount".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let ok = events
        .iter()
        .find(|e| e.outcome == "OK")
        .expect("the reveal's event");
    assert_eq!(ok.principal, "k8s:jobs/renderer");
    assert_eq!(ok.email, "worker1@studio.example.com");
    let info = server
        .callers(Auth::bearer(&token))
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.credits.unwrap().remaining, 99, "one reveal charged");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_offline_with_the_check_it_failed() {
    let key = IssuerKey::es256("k1");
    let rsa = IssuerKey::rs256("r1");
    let cluster = Cluster::new(vec![key.clone(), rsa.clone()]).await;
    let clock = real_clock();
    let now = seconds(&clock);
    let server = cluster.serve(Verify::ReviewAndJwksFile, &clock).await;
    let sign = |claims: serde_json::Value| key.sign(&claims);

    let cases = [
        (
            "wrong audience",
            sign(projected("jobs", "renderer", &["vault"], now, 600)),
            "audience",
        ),
        (
            "expired",
            sign(projected("jobs", "renderer", &[AUDIENCE], now - 700, 600)),
            "expired",
        ),
        (
            "not yet valid",
            sign(projected("jobs", "renderer", &[AUDIENCE], now + 300, 600)),
            "not valid yet",
        ),
        (
            "another key with the same kid",
            IssuerKey::es256("k1").sign(&projected("jobs", "renderer", &[AUDIENCE], now, 600)),
            "signature",
        ),
        (
            "a kid the issuer does not have",
            IssuerKey::es256("k9").sign(&projected("jobs", "renderer", &[AUDIENCE], now, 600)),
            "kid",
        ),
        (
            "alg none",
            unsigned(
                "none",
                "k1",
                &projected("jobs", "renderer", &[AUDIENCE], now, 600),
            ),
            "algorithm",
        ),
        (
            "HS256 keyed with the issuer's public key",
            hs256_with(
                &rsa.public_pem,
                "r1",
                &projected("jobs", "renderer", &[AUDIENCE], now, 600),
            ),
            "algorithm",
        ),
        (
            "legacy Secret-based token",
            sign(kube::legacy("jobs", "renderer")),
            "legacy",
        ),
        (
            "another issuer",
            sign(json!({
                "iss": "https://evil.example.com",
                "aud": [AUDIENCE], "exp": now + 600, "nbf": now, "iat": now,
                "sub": "system:serviceaccount:jobs:renderer",
                "kubernetes.io": {"namespace": "jobs", "serviceaccount": {"name": "renderer"}},
            })),
            "issuer",
        ),
    ];
    for (what, token, reason) in &cases {
        let (code, message) = refused(&server, token).await;
        assert_eq!(code, Code::Unauthenticated, "{what}: {message}");
        assert!(
            message.starts_with("ServiceAccount token refused: ") && message.contains(reason),
            "{what}: {message}"
        );
    }
    // None of them got as far as the API server.
    assert_eq!(cluster.api.reviews(), 0);

    // A good token for a ServiceAccount no binding names: refused, naming it.
    let unbound = key.sign(&projected("jobs", "uploader", &[AUDIENCE], now, 600));
    let (code, message) = refused(&server, &unbound).await;
    assert_eq!(code, Code::Unauthenticated);
    assert_eq!(
        message,
        "ServiceAccount jobs/uploader is not bound to a caller here (kubernetes_auth.bindings)"
    );
    // credvault's own refusals are unchanged for its own credentials.
    let (code, message) = refused(&server, "x.y.z").await;
    assert_eq!(
        (code, message.as_str()),
        (
            Code::Unauthenticated,
            "JWT is missing or invalid, check Authorization header"
        )
    );
    server.stop().await;
}

/// A token with this header `alg` and no signature.
fn unsigned(alg: &str, kid: &str, claims: &serde_json::Value) -> String {
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The classic key-confusion token: HS256 with the issuer's public key as the secret.
fn hs256_with(public_pem: &str, kid: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_word_decides_and_its_absence_touches_no_other_credential() {
    let key = IssuerKey::es256("k1");
    let mut cluster = Cluster::new(vec![key.clone()]).await;
    let clock = real_clock();
    let now = seconds(&clock);
    let server = cluster.serve(Verify::Review, &clock).await;

    // The pod is gone: the API server answers authenticated: false.
    cluster.api.deny_all(true);
    let gone = key.sign(&projected("jobs", "renderer", &[AUDIENCE], now, 600));
    let (code, message) = refused(&server, &gone).await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        message.contains("API server did not authenticate it"),
        "{message}"
    );
    // The refusal is remembered: asking again costs the API server nothing.
    refused(&server, &gone).await;
    assert_eq!(cluster.api.reviews(), 1);

    cluster.api.deny_all(false);
    // (Another token: the same claims would be the same ES256 token, still refused.)
    let live = key.sign(&projected("jobs", "renderer", &[AUDIENCE], now - 3, 600));
    assert_eq!(whoami(&server, &live).await.unwrap(), cluster.consumer);
    assert_eq!(cluster.api.reviews(), 2);

    // A pod's first burst of calls with a fresh token, while reviews are slow: one
    // review for all of them.
    cluster
        .api
        .delay_reviews(std::time::Duration::from_millis(300));
    let burst = key.sign(&projected("jobs", "renderer", &[AUDIENCE], now - 4, 600));
    let addr = server.tcp();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let token = burst.clone();
        calls.spawn(async move {
            support::Remote(addr)
                .callers(Auth::bearer(&token))
                .await
                .get_caller_info(proto::GetCallerInfoRequest {})
                .await
                .map(|info| info.into_inner().id)
        });
    }
    while let Some(answer) = calls.join_next().await {
        assert_eq!(answer.unwrap().unwrap(), cluster.consumer);
    }
    assert_eq!(cluster.api.reviews(), 3);
    cluster.api.delay_reviews(std::time::Duration::ZERO);

    // The API server goes away: a token not seen before cannot be verified.
    cluster.api.stop();
    let new = key.sign(&projected("jobs", "renderer", &[AUDIENCE], now - 1, 600));
    let (code, message) = refused(&server, &new).await;
    assert_eq!(code, Code::Unavailable, "{message}");
    assert!(message.contains("retry later"), "{message}");
    // Everything else goes on: the remembered token, the admin, an API key.
    assert_eq!(whoami(&server, &live).await.unwrap(), cluster.consumer);
    let admin = server
        .callers(Auth::admin())
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap();
    assert_eq!(admin.into_inner().id, "admin");
    let (api_caller, api_key) = support::activated_caller(
        &server,
        proto::CreateCallerRequest {
            email: "keyed@example.com".into(),
            secret: "keyed-client-secret-0123456789abcdef-0123456".into(),
            roles: vec![proto::Role::Consumer as i32],
            ..Default::default()
        },
    )
    .await;
    let keyed = server
        .callers(Auth::api_key(
            &api_key,
            "keyed-client-secret-0123456789abcdef-0123456",
        ))
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap();
    assert_eq!(keyed.into_inner().id, api_caller);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_token_is_refused_once_past_its_exp_and_asked_again_after_cache_secs() {
    let key = IssuerKey::es256("k1");
    let cluster = Cluster::new(vec![key.clone()]).await;
    let clock = real_clock();
    let now = seconds(&clock);
    let server = cluster.serve(Verify::Review, &clock).await;

    // A token with 30 s left, under cache_secs = 60.
    let short = key.sign(&projected("jobs", "renderer", &[AUDIENCE], now - 570, 600));
    assert_eq!(whoami(&server, &short).await.unwrap(), cluster.consumer);
    assert_eq!(whoami(&server, &short).await.unwrap(), cluster.consumer);
    assert_eq!(cluster.api.reviews(), 1);
    let long = renderer_token(&key, now);
    assert_eq!(whoami(&server, &long).await.unwrap(), cluster.consumer);
    assert_eq!(cluster.api.reviews(), 2);

    // 31 s later the short one has expired, remembered or not.
    clock.advance(31_000);
    let (code, message) = refused(&server, &short).await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("expired"), "{message}");
    // The long one is still remembered...
    assert_eq!(whoami(&server, &long).await.unwrap(), cluster.consumer);
    assert_eq!(cluster.api.reviews(), 2);
    // ...until cache_secs has passed: then the API server is asked again.
    clock.advance(30_000);
    assert_eq!(whoami(&server, &long).await.unwrap(), cluster.consumer);
    assert_eq!(cluster.api.reviews(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwks_file_is_read_again() {
    let (old, new) = (IssuerKey::es256("old"), IssuerKey::es256("new"));
    let cluster = Cluster::new(vec![old.clone()]).await;
    let clock = real_clock();
    let now = seconds(&clock);
    let server = cluster.serve(Verify::JwksFile, &clock).await;
    assert_eq!(
        whoami(&server, &renderer_token(&old, now)).await.unwrap(),
        cluster.consumer
    );
    let early = renderer_token(&new, now);
    let (_, message) = refused(&server, &early).await;
    assert!(message.contains("kid"), "{message}");

    // The issuer rotates: the mounted document now holds only the new key.
    std::fs::write(
        &cluster.jwks_file,
        kube::jwks(std::slice::from_ref(&new)).to_string(),
    )
    .unwrap();
    assert_eq!(whoami(&server, &early).await.unwrap(), cluster.consumer);
    let stale = old.sign(&projected("jobs", "renderer", &[AUDIENCE], now - 1, 600));
    let (code, message) = refused(&server, &stale).await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("kid"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_discovery_are_fetched_once_and_again_for_an_unknown_kid() {
    let (first, second) = (IssuerKey::rs256("first"), IssuerKey::es256("second"));
    let cluster = Cluster::new(vec![first.clone()]).await;
    let clock = real_clock();
    let now = seconds(&clock);
    let server = cluster.serve(Verify::Discovery, &clock).await;
    assert_eq!(
        whoami(&server, &renderer_token(&first, now)).await.unwrap(),
        cluster.consumer
    );
    let other = first.sign(&projected("jobs", "renderer", &[AUDIENCE], now - 1, 600));
    assert_eq!(whoami(&server, &other).await.unwrap(), cluster.consumer);
    assert_eq!(cluster.api.jwks_fetches(), 1);

    // The issuer adds a key; a token with its kid makes credvault fetch again (at most
    // every 10 s).
    cluster.api.set_keys(vec![first.clone(), second.clone()]);
    let rotated = renderer_token(&second, now);
    let (_, message) = refused(&server, &rotated).await;
    assert!(message.contains("kid"), "{message}");
    assert_eq!(cluster.api.jwks_fetches(), 1, "refetched sooner than 10 s");
    clock.advance(11_000);
    assert_eq!(whoami(&server, &rotated).await.unwrap(), cluster.consumer);
    assert_eq!(cluster.api.jwks_fetches(), 2);

    // The issuer fails past refresh_secs: one attempt, then the keys held go on
    // verifying, and it is not asked again for 10 s, not even for an unknown kid.
    cluster.api.jwks_down(true);
    clock.advance(301_000);
    let later = seconds(&clock);
    assert_eq!(
        whoami(&server, &renderer_token(&second, later))
            .await
            .unwrap(),
        cluster.consumer
    );
    assert_eq!(cluster.api.jwks_fetches(), 3);
    let stranger = IssuerKey::es256("third");
    let (code, message) = refused(&server, &renderer_token(&stranger, later)).await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("kid"), "{message}");
    assert_eq!(cluster.api.jwks_fetches(), 3, "asked again within 10 s");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_is_reached_over_https_with_the_configured_ca_only() {
    let key = IssuerKey::es256("k1");
    let cluster = Cluster::new(vec![key.clone()]).await;
    let (api, ca_pem) = FakeApiServer::start_tls(vec![key.clone()]).await;
    let (_, stranger_ca) = FakeApiServer::start_tls(vec![]).await;
    for (ca, accepted) in [(&ca_pem, true), (&stranger_ca, false)] {
        let ca_file = cluster.dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca).unwrap();
        let mut kubernetes = cluster.kubernetes_auth(Verify::Review);
        kubernetes.token_review = Some(TokenReviewConfig {
            api_server: api.tls_url(),
            token_file: cluster.reviewer_file.clone(),
            ca_file: Some(ca_file),
            ..TokenReviewConfig::default()
        });
        let mut config = support::config(&cluster.dir.path().join("data"), &cluster.key);
        config.kubernetes_auth = Some(kubernetes);
        let server = TestServer::start_with(config).await;
        let token = renderer_token(&key, now_secs());
        match accepted {
            true => assert_eq!(whoami(&server, &token).await.unwrap(), cluster.consumer),
            // A certificate from another CA: the token is not sent, the call can retry.
            false => assert_eq!(refused(&server, &token).await.0, Code::Unavailable),
        }
        server.stop().await;
    }
    assert_eq!(api.reviews(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_tokens_pass_only_when_allowed() {
    let key = IssuerKey::es256("k1");
    let cluster = Cluster::new(vec![key.clone()]).await;
    let legacy = key.sign(&kube::legacy("jobs", "renderer"));
    let mut config = support::config(&cluster.dir.path().join("data"), &cluster.key);
    config.kubernetes_auth = Some(KubernetesAuthConfig {
        allow_legacy_tokens: true,
        ..cluster.kubernetes_auth(Verify::ReviewAndJwksFile)
    });
    let server = TestServer::start_with(config).await;
    assert_eq!(whoami(&server, &legacy).await.unwrap(), cluster.consumer);
    assert_eq!(cluster.api.reviews(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_text_reaches_the_log_at_trace_level() {
    let key = IssuerKey::es256("k1");
    let mut cluster = Cluster::new(vec![key.clone()]).await;
    let config = toml_config(&cluster);
    let path = cluster.dir.path().join("credvault.toml");
    std::fs::write(&path, config).unwrap();
    let mut daemon = Daemon::spawn(
        &["serve", "--config", path.to_str().unwrap()],
        &[("RUST_LOG", "trace")],
    );
    let remote = support::Remote(daemon.wait_for_addr());

    let accepted = renderer_token(&key, now_secs());
    let wrong_audience = key.sign(&projected("jobs", "renderer", &["vault"], now_secs(), 600));
    let unbound = key.sign(&projected("jobs", "uploader", &[AUDIENCE], now_secs(), 600));
    let whoami = async |token: &str| {
        remote
            .callers(Auth::bearer(token))
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
    };
    assert_eq!(
        whoami(&accepted).await.unwrap().into_inner().id,
        cluster.consumer
    );
    // The client reads the mounted token from its file, as an app's pod would.
    let token_file = cluster.dir.path().join("projected-token");
    std::fs::write(&token_file, &accepted).unwrap();
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_credvault"))
        .args([
            "callers",
            "--token-file",
            token_file.to_str().unwrap(),
            "whoami",
            "-o",
            "json",
        ])
        .env_remove("CREDVAULT_TOKEN")
        .env("CREDVAULT_ADDR", format!("http://{}", remote.0))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success() && printed.contains(&cluster.consumer),
        "{printed}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        whoami(&wrong_audience).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        whoami(&unbound).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    cluster.api.stop();
    let unreviewed = key.sign(&projected(
        "jobs",
        "renderer",
        &[AUDIENCE],
        now_secs() - 2,
        600,
    ));
    assert_eq!(
        whoami(&unreviewed).await.unwrap_err().code(),
        Code::Unavailable
    );
    daemon.terminate();

    let log = daemon.output();
    assert!(log.contains("TRACE"), "the daemon logged at trace level");
    assert!(
        log.contains("authentication failed"),
        "refusals were logged"
    );
    for token in [&accepted, &wrong_audience, &unbound, &unreviewed] {
        for part in token.split('.') {
            assert!(!log.contains(part), "a token part is in the log");
        }
    }
    assert!(
        !log.contains(REVIEWER_TOKEN),
        "credvault's own token is in the log"
    );
}

fn toml_config(cluster: &Cluster) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
data_dir = {data:?}
master_key = {key:?}
admin_token = {admin:?}

[kubernetes_auth]
audience = "credvault"

[kubernetes_auth.token_review]
api_server = {api:?}
token_file = {reviewer:?}

[kubernetes_auth.jwks]
issuer = {issuer:?}
file = {jwks:?}

[[kubernetes_auth.bindings]]
namespace = "jobs"
service_account = "renderer"
caller = {caller:?}
"#,
        data = cluster.dir.path().join("data"),
        key = cluster.key,
        admin = support::ADMIN_TOKEN,
        api = cluster.api.url(),
        reviewer = cluster.reviewer_file,
        issuer = ISSUER,
        jwks = cluster.jwks_file,
        caller = cluster.consumer,
    )
}
