//! Two credvault servers on one real 3-member etcd cluster, as two replicas' sidecars
//! are: what one writes the other serves, `maxJobs` holds across both, a waiter on one
//! is served by a release on the other, a token revoked on one is refused by the
//! other within a second, and a watcher on one hears of a token rotated through the
//! other.

mod support;

use std::time::{Duration, Instant};

use credvault::config::{BackendKind, Config};
use support::{Auth, TestServer, etcd::EtcdCluster, leasable, proto};
use tonic::Code;

const SECRET: &str = "etcd-nodes-secret-0123456789abcdef";

fn node_config(dir: &std::path::Path, key: &str, cluster: &EtcdCluster, node: &str) -> Config {
    let mut config = support::config(dir, key);
    config.store.backend = BackendKind::Etcd;
    config.store.etcd.endpoints = cluster.endpoints();
    config.store.etcd.prefix = "/credvault-test".into();
    config.node_id = node.into();
    config
}

fn acquire(wait_secs: i64) -> proto::AcquireLeaseRequest {
    proto::AcquireLeaseRequest {
        provider: "pixverse".into(),
        email: "shared@example.com".into(),
        ttl: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        wait_timeout: Some(prost_types::Duration {
            seconds: wait_secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Polls `check` until it holds or `within` has passed; answers how long it took.
async fn within<F, Fut>(within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_accounts_slots_and_revocations() {
    let cluster = EtcdCluster::start(3).await;
    let key = support::new_key();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start_with(node_config(dir_a.path(), &key, &cluster, "node-a")).await;
    let b = TestServer::start_with(node_config(dir_b.path(), &key, &cluster, "node-b")).await;

    // Created once, on A.
    a.accounts()
        .await
        .create_account(leasable("shared@example.com", "pw-123456", 2))
        .await
        .unwrap();
    let (_, api_key) = support::unmetered_consumer(&a, "svc@example.com", SECRET).await;
    let auth = || Auth::api_key(&api_key, SECRET);

    // B serves the account and the caller A created.
    within(Duration::from_secs(5), || async {
        reveal(&b, auth()).await.is_ok()
    })
    .await;

    // maxJobs 2 across both: one lease on each, then neither has a third.
    let on_a = a.credentials(auth()).await.acquire_lease(acquire(0)).await;
    let on_b = b.credentials(auth()).await.acquire_lease(acquire(0)).await;
    let (on_a, on_b) = (on_a.unwrap().into_inner(), on_b.unwrap().into_inner());
    for server in [&a, &b] {
        let third = server
            .credentials(auth())
            .await
            .acquire_lease(acquire(0))
            .await
            .unwrap_err();
        assert_eq!(third.code(), Code::ResourceExhausted, "{}", third.message());
    }

    // A waiter on B is served by a release on A.
    let waiter = {
        let mut client = b.credentials(auth()).await;
        tokio::spawn(async move { client.acquire_lease(acquire(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "no slot is free yet");
    a.credentials(auth())
        .await
        .release_lease(proto::ReleaseLeaseRequest {
            lease_id: on_a.lease_id.clone(),
        })
        .await
        .unwrap();
    let served = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("the waiter is served")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_ne!(served.lease_id, on_b.lease_id);

    // A JWT issued on A works on B until A revokes it; B refuses it within a second.
    let issued = a
        .callers(auth())
        .await
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    within(Duration::from_secs(5), || async {
        b.callers(Auth::bearer(&issued.jwt))
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .is_ok()
    })
    .await;
    a.callers(auth())
        .await
        .revoke_token(proto::RevokeTokenRequest {
            jti: issued.jti.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let took = within(Duration::from_secs(1), || async {
        let answer = b
            .callers(Auth::bearer(&issued.jwt))
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await;
        matches!(answer, Err(status) if status.code() == Code::Unauthenticated)
    })
    .await;
    println!("revocation on A refused on B after {took:?}");

    // A watcher on B sees a token rotation made through A.
    let mut events = b
        .credentials(auth())
        .await
        .watch_credentials(proto::WatchCredentialsRequest {
            provider: "pixverse".into(),
            email: "shared@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (rotated, token, took) =
        support::rotate_and_hear(&a, "shared@example.com", "rotated-on-a", &mut events).await;
    println!("rotation on A heard on B after {took:?}");
    assert!(!rotated.token_masked, "{}", rotated.masked_reason);
    assert_eq!(rotated.token, token);

    // Master-key rotation would lock the other node out of every record: refused.
    let new_key = dir_a.path().join("new.key");
    std::fs::write(&new_key, support::new_key()).unwrap();
    let refused = a
        .keys(Auth::admin())
        .await
        .rotate_master_key(proto::RotateMasterKeyRequest {
            new_key_file: new_key.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("etcd backend")
            && refused.message().contains("credvault rotate-key"),
        "{}",
        refused.message()
    );
    // The records still open with the one key both nodes hold.
    reveal(&b, auth()).await.unwrap();
    // Each node keeps its own trail, every event tagged with the node that served it.
    for (server, node) in [(&a, "node-a"), (&b, "node-b")] {
        let events = server
            .audit(Auth::admin())
            .await
            .list_events(proto::ListEventsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(!events.is_empty());
        assert!(
            events.iter().all(|event| event.node_id == node),
            "{events:?}"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// etcd holds no email and no secret: account records are keyed by a keyed
/// fingerprint with their metadata sealed, the caller-email index is keyed by a MAC,
/// and everything else was sealed already. Read straight from etcd, every key and value
/// under the prefix is searched for each email and secret this test wrote. Listing
/// still pages in (provider, email) order, from the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_sees_no_email_and_no_secret() {
    let cluster = EtcdCluster::start(3).await;
    let key = support::new_key();
    let dir = tempfile::tempdir().unwrap();
    let node = TestServer::start_with(node_config(dir.path(), &key, &cluster, "node-a")).await;
    let emails = ["zoe@example.com", "adam@example.com", "mia@example.com"];
    for email in emails {
        node.accounts()
            .await
            .create_account(leasable(email, &format!("pw-of-{email}"), 2))
            .await
            .unwrap();
    }
    let (_, api_key) = support::unmetered_consumer(&node, "svc@example.com", SECRET).await;
    let auth = || Auth::api_key(&api_key, SECRET);
    let jwt = node
        .callers(auth())
        .await
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jwt;
    node.credentials(auth())
        .await
        .acquire_lease(proto::AcquireLeaseRequest {
            email: "mia@example.com".into(),
            ..acquire(0)
        })
        .await
        .unwrap();

    // Pages in email order, one account a page.
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = node
            .accounts()
            .await
            .list_accounts(proto::ListAccountsRequest {
                page_size: 1,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.accounts.into_iter().map(|account| account.email));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        listed,
        ["adam@example.com", "mia@example.com", "zoe@example.com"]
    );

    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let everything = client
        .get(
            "/credvault-test",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(
        everything.kvs().len() > 10,
        "{} keys",
        everything.kvs().len()
    );
    let mut needles: Vec<String> = emails
        .iter()
        .flat_map(|email| [email.to_string(), format!("pw-of-{email}")])
        .collect();
    needles.extend(["svc@example.com".into(), SECRET.into(), api_key.clone()]);
    needles.push(jwt);
    // The upstream JWTs' payload and signature parts.
    needles.extend(emails.iter().flat_map(|email| {
        let token = support::upstream_jwt(1_900_000_000, email);
        token
            .split('.')
            .skip(1)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    }));
    for kv in everything.kvs() {
        let (key, value) = (
            String::from_utf8_lossy(kv.key()),
            String::from_utf8_lossy(kv.value()),
        );
        for needle in &needles {
            assert!(!key.contains(needle.as_str()), "{needle} in the key {key}");
            assert!(
                !value.contains(needle.as_str()),
                "{needle} in the value of {key}"
            );
        }
        assert!(
            !value.contains("@example.com"),
            "an email in the value of {key}"
        );
        assert!(!key.contains("@example.com"), "an email in the key {key}");
    }
    node.stop().await;
}

/// A node cut off from etcd (every member behind a proxy that stops forwarding, the
/// connections left open, as in a partition) fails closed: its hand-outs answer
/// UNAVAILABLE, its readiness turns NOT_SERVING while liveness stays SERVING, and the
/// other node serves on. Restored, it is ready and serves again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_fails_closed_and_recovers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let cluster = EtcdCluster::start(3).await;
    let key = support::new_key();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start_with(node_config(dir_a.path(), &key, &cluster, "node-a")).await;
    let mut proxies = Vec::new();
    for member in 0..cluster.size() {
        let target = cluster.endpoint(member);
        let target = target.trim_start_matches("http://").parse().unwrap();
        proxies.push(support::proxy::Proxy::start(target).await);
    }
    let mut config_b = node_config(dir_b.path(), &key, &cluster, "node-b");
    config_b.store.etcd.endpoints = proxies.iter().map(|proxy| proxy.url()).collect();
    let b = TestServer::start_with(config_b).await;

    a.accounts()
        .await
        .create_account(leasable("shared@example.com", "pw-123456", 2))
        .await
        .unwrap();
    let (_, api_key) = support::unmetered_consumer(&a, "svc@example.com", SECRET).await;
    let auth = || Auth::api_key(&api_key, SECRET);
    within(Duration::from_secs(5), || async {
        reveal(&b, auth()).await.is_ok()
    })
    .await;
    assert_eq!(health(&b, "").await, ServingStatus::Serving as i32);

    for proxy in &proxies {
        proxy.cut(true);
    }
    let cut_at = Instant::now();
    // Hand-outs on B fail closed, each within its deadline.
    let refused = reveal(&b, auth()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    println!(
        "cut off: reveal refused after {:?}: {}",
        cut_at.elapsed(),
        refused.message()
    );
    let leased = b
        .credentials(auth())
        .await
        .acquire_lease(acquire(0))
        .await
        .unwrap_err();
    assert_eq!(leased.code(), Code::Unavailable, "{}", leased.message());
    // Readiness turns NOT_SERVING (the view goes unconfirmed for 10 s); liveness stays.
    within(Duration::from_secs(20), || async {
        health(&b, "").await == ServingStatus::NotServing as i32
    })
    .await;
    println!("cut off: NOT_SERVING after {:?}", cut_at.elapsed());
    assert_eq!(health(&b, "liveness").await, ServingStatus::Serving as i32);
    // Now even a credential alone is refused: B cannot vouch for its view.
    let stale = b
        .callers(auth())
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Unavailable);
    assert!(
        stale.message().contains("cannot confirm"),
        "{}",
        stale.message()
    );
    // The admin token is configuration, not the view: an operator can still look.
    b.callers(Auth::admin())
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap();
    // A, which still reaches etcd, serves on.
    reveal(&a, auth()).await.unwrap();
    assert_eq!(health(&a, "").await, ServingStatus::Serving as i32);

    for proxy in &proxies {
        proxy.cut(false);
    }
    let restored_at = Instant::now();
    within(Duration::from_secs(20), || async {
        health(&b, "").await == ServingStatus::Serving as i32
    })
    .await;
    println!("restored: SERVING after {:?}", restored_at.elapsed());
    within(Duration::from_secs(10), || async {
        reveal(&b, auth()).await.is_ok()
    })
    .await;
    b.credentials(auth())
        .await
        .acquire_lease(acquire(0))
        .await
        .unwrap();
    a.stop().await;
    b.stop().await;
}

/// RevealAccount of the shared account, with a 10 s deadline.
async fn reveal(
    server: &TestServer,
    auth: Auth,
) -> Result<tonic::Response<proto::Account>, tonic::Status> {
    let mut client = server.credentials(auth).await;
    let mut request = tonic::Request::new(proto::RevealAccountRequest {
        provider: "pixverse".into(),
        email: "shared@example.com".into(),
    });
    request.set_timeout(Duration::from_secs(10));
    client.reveal_account(request).await
}

/// The health status of `service` on the server's port.
async fn health(server: &TestServer, service: &str) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}
