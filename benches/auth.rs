//! What authenticating one call costs: the full check the auth layer runs (parse,
//! verify, revocation lookup in the sealed caller record) for each credential kind,
//! against a baseline measured in the same run: the Ed25519 signature check alone.
//!
//! `cargo bench --bench auth`; figures are printed, not asserted.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use credvault::{
    auth::{Authenticator, SECRET_HEADER},
    callers::NewCaller,
    config::Config,
    crypto::{MasterKey, SecretString},
    vault::Vault,
};
use http::{HeaderMap, HeaderValue};

const BOOTSTRAP: &str = "bench-bootstrap-token-0123456789abcdef";
const SECRET: &str = "bench-client-secret-0123456789abcdef-0123456789";
const PATH: &str = "/credvault.v1.Callers/GetCallerInfo";
const ITERATIONS: usize = 20_000;

struct Figures {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
}

fn measure(mut op: impl FnMut()) -> Figures {
    for _ in 0..1_000 {
        op();
    }
    let mut samples = Vec::with_capacity(ITERATIONS);
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        let t = Instant::now();
        op();
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Figures {
        mean_us: us(total) / ITERATIONS as f64,
        p50_us: us(samples[ITERATIONS / 2]),
        p99_us: us(samples[ITERATIONS * 99 / 100]),
    }
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_owned(),
        master_key: Some(SecretString::from(
            MasterKey::generate().unwrap().to_base64().to_string(),
        )),
        admin_token: Some(SecretString::from(BOOTSTRAP.to_owned())),
        ..Config::default()
    };
    let settings = config.resolve().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vault = runtime.block_on(Vault::open(&settings)).unwrap();
    let (api_key, jwt) = runtime.block_on(async {
        let admin = vault.callers.bootstrap_admin().unwrap();
        let created = vault
            .callers
            .create(
                &admin,
                NewCaller {
                    email: "bench@example.com".into(),
                    secret: SecretString::from(SECRET.to_owned()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        vault
            .callers
            .activate(&created.caller.id, &created.key_id)
            .await
            .unwrap();
        let (jwt, _) = vault.callers.issue_token(&created.caller.id).await.unwrap();
        (created.api_key.expose().to_owned(), jwt)
    });
    let auth: &Authenticator = &vault.authenticator;

    // A token never seen before each call: verified remembers a token whose signature
    // checked out (by hash), so the same token again would not measure the check.
    let baseline = {
        let keys = vault.callers.token_keys();
        let now = vault.callers.now_ms();
        let claims: credvault::callers::Claims =
            jsonwebtoken::dangerous::insecure_decode_claims(&jwt).unwrap();
        let fresh: Vec<String> = (0..ITERATIONS + 1_000)
            .map(|i| {
                let mut claims = claims.clone();
                claims.jti = format!("bench-{i}");
                keys.sign(&claims).unwrap()
            })
            .collect();
        let mut next = fresh.iter();
        measure(|| {
            let token = next.next().expect("one token per call");
            black_box(keys.verify(black_box(token), now).unwrap());
        })
    };
    let cases = [
        (
            "JWT seen before (remembered + revocation lookup)",
            headers(&[("authorization", format!("Bearer {jwt}"))]),
        ),
        (
            "API key + secret (2 HMACs + record)",
            headers(&[
                ("authorization", format!("Bearer {api_key}")),
                (SECRET_HEADER, SECRET.to_owned()),
            ]),
        ),
        (
            "bootstrap token (HMAC + record)",
            headers(&[("authorization", format!("Bearer {BOOTSTRAP}"))]),
        ),
        (
            "refused: garbage bearer",
            headers(&[("authorization", "Bearer x.y.z".to_owned())]),
        ),
    ];

    println!("auth check cost per call ({ITERATIONS} calls each, one thread)");
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>12}",
        "credential", "mean µs", "p50 µs", "p99 µs", "× baseline"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "{:<40} {:>10.1} {:>10.1} {:>10.1} {:>12.2}",
            name,
            f.mean_us,
            f.p50_us,
            f.p99_us,
            f.mean_us / baseline.mean_us
        );
    };
    row("baseline: Ed25519 JWT verify, first sight", &baseline);
    for (name, map) in &cases {
        let figures = measure(|| {
            black_box(ready(auth.authenticate(PATH, black_box(map), None)).ok());
        });
        assert!(ready(auth.authenticate(PATH, map, None)).is_ok() || name.starts_with("refused"));
        row(name, &figures);
    }
}

/// The answer of a future that needs no I/O (every credential here is decided in
/// memory), polled once on this thread.
fn ready<T>(future: impl std::future::Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(answer) => answer,
        std::task::Poll::Pending => panic!("an in-memory credential check waited"),
    }
}
