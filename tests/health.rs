//! The probe port (gRPC health only, plaintext) through a daemon's life: NOT_SERVING
//! before the vault is open, SERVING once it is, NOT_SERVING from the start of
//! shutdown while calls drain, and nothing but health served on it.

mod support;

use std::{sync::Arc, time::Duration};

use credvault::{
    clock::SystemClock,
    server::{self, Listeners},
};
use support::{Auth, proto};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The `credvault_lease_waiters` gauge for pixverse, scraped from `/metrics`.
async fn lease_waiters(metrics: std::net::SocketAddr) -> Option<f64> {
    credvault::refresh::providers::install_crypto_provider();
    let page = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    page.lines()
        .find(|l| l.starts_with("credvault_lease_waiters{") && l.contains("provider=\"pixverse\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn probe(addr: std::net::SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_port_follows_readiness_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), &support::new_key());
    config.health_listen = "127.0.0.1:0".into();
    config.shutdown_grace_secs = 10;
    config.metrics_listen = "127.0.0.1:0".into();
    let settings = config.resolve().unwrap();

    // Bound, vault not open yet: the probe answers, and says not ready.
    let listeners = Listeners::bind(&settings).await.unwrap();
    let health = listeners.health_addr().expect("a probe port");
    let api = listeners.tcp_addr().unwrap();
    let metrics = listeners.metrics_addr().expect("a metrics listener");
    assert_eq!(probe(health, "").await, Some(ServingStatus::NotServing));

    let vault = support::open_vault(&settings, Arc::new(SystemClock)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(
        vault,
        listeners,
        settings.shutdown_grace,
        async {
            let _ = stopped.await;
        },
    ));
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            probe(health, "").await == Some(ServingStatus::Serving)
        })
        .await
    );
    assert_eq!(
        probe(health, "credvault.v1.Credentials").await,
        Some(ServingStatus::Serving)
    );

    // Only health is served on the probe port.
    let channel = Channel::from_shared(format!("http://{health}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let elsewhere =
        proto::accounts_client::AccountsClient::with_interceptor(channel, Auth::admin())
            .list_accounts(proto::ListAccountsRequest::default())
            .await
            .unwrap_err();
    assert_eq!(elsewhere.code(), tonic::Code::Unimplemented);

    // An AcquireLease waiting for a slot keeps the API draining after the stop (for up
    // to the 10 s grace); the probe says so meanwhile. (A watch would not: open watches
    // end at shutdown, and the drain after them was too short for a probe on a loaded
    // machine to see.) The only slot of the only account (maxJobs 1) is held first, and the stop
    // is sent once the metrics say the second acquire waits for it.
    let channel = Channel::from_shared(format!("http://{api}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    proto::accounts_client::AccountsClient::with_interceptor(channel.clone(), Auth::admin())
        .create_account(support::leasable("one@example.com", "pw-123456", 1))
        .await
        .unwrap();
    let mut credentials =
        proto::credentials_client::CredentialsClient::with_interceptor(channel, Auth::admin());
    let acquire = |wait_secs| proto::AcquireLeaseRequest {
        provider: "pixverse".into(),
        wait_timeout: Some(prost_types::Duration {
            seconds: wait_secs,
            nanos: 0,
        }),
        ..Default::default()
    };
    let _held = credentials.acquire_lease(acquire(0)).await.unwrap();
    let waiting = {
        let mut credentials = credentials.clone();
        tokio::spawn(async move { credentials.acquire_lease(acquire(60)).await })
    };
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            lease_waiters(metrics).await == Some(1.0)
        })
        .await,
        "the second AcquireLease waits for the slot"
    );
    stop.send(()).unwrap();
    assert!(
        support::eventually(Duration::from_secs(5), async || {
            probe(health, "").await == Some(ServingStatus::NotServing)
        })
        .await,
        "NOT_SERVING while draining"
    );
    assert!(!serving.is_finished(), "still draining the waiting acquire");
    waiting.abort();
    serving.await.unwrap().unwrap();
    assert_eq!(probe(health, "").await, None, "the probe port closes last");
}
