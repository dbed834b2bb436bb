//! Every RPC that hands out an unmasked secret does so through the one door (which
//! checks the caller as it is now, charges, audits and makes both durable): each is
//! counted by the door as it answers, and one that went around it would not be. A
//! caller disabled after its call was authenticated gets nothing through it.

mod support;

use std::{sync::Arc, time::Duration};

use credvault::clock::ManualClock;
use support::{Auth, TestServer, leasable, proto, upstream_jwt};
use tonic::Code;

const SECRET: &str = "door-review-secret-0123456789abcdef";
const START_MS: i64 = 1_767_225_600_000;

fn reveal() -> proto::RevealAccountRequest {
    proto::RevealAccountRequest {
        provider: "pixverse".into(),
        email: "job@example.com".into(),
    }
}

/// A server on `config` and `clock`, holding the leasable account job@example.com.
async fn serving_job(
    config: credvault::config::Config,
    clock: Arc<dyn credvault::clock::Clock>,
) -> TestServer {
    let server = TestServer::start_with_clock(config, clock).await;
    server
        .accounts()
        .await
        .create_account(leasable("job@example.com", "pw-123456", 2))
        .await
        .unwrap();
    server
}

#[tokio::test]
async fn every_secret_bearing_rpc_hands_out_through_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let config = support::config(dir.path(), &support::new_key());
    let server = serving_job(config, Arc::new(clock.clone())).await;
    let (_, key) = support::unmetered_consumer(&server, "door@example.com", SECRET).await;
    let auth = || Auth::api_key(&key, SECRET);
    let mut credentials = server.credentials(auth()).await;
    let passed = || server.door.passed();

    // RevealAccount: the password and the token, two secrets.
    let before = passed();
    let revealed = credentials
        .reveal_account(reveal())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revealed.password, "pw-123456");
    assert_eq!(passed() - before, 2);

    // AcquireLease: the token.
    let before = passed();
    let lease = credentials
        .acquire_lease(proto::AcquireLeaseRequest {
            provider: "pixverse".into(),
            email: "job@example.com".into(),
            ttl: Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(passed() - before, 1);
    let lease_id = lease.lease_id;

    // RenewLease: the token again.
    let before = passed();
    credentials
        .renew_lease(proto::RenewLeaseRequest {
            lease_id: lease_id.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    assert_eq!(passed() - before, 1);

    // WatchCredentials: a rotated token delivered to the lease holder.
    let mut stream = credentials
        .watch_credentials(proto::WatchCredentialsRequest {
            provider: "pixverse".into(),
            email: "job@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let before = passed();
    let token = upstream_jwt(1_950_000_000, "door-rotated");
    server
        .accounts()
        .await
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "job@example.com".into(),
            jwt: Some(proto::JwtInput {
                token: token.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the rotation arrives")
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.token.as_str(), event.token_masked),
        (token.as_str(), false),
        "the holder gets the token unmasked: {event:?}"
    );
    assert_eq!(passed() - before, 1);
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn a_caller_disabled_since_it_authenticated_gets_nothing_through_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), &support::new_key());
    let server = serving_job(config, Arc::new(credvault::clock::SystemClock)).await;
    let (id, _) = support::unmetered_consumer(&server, "late@example.com", SECRET).await;
    let mut admin = server.callers(Auth::admin()).await;
    admin
        .update_caller(proto::UpdateCallerRequest {
            caller_id: id.clone(),
            disabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    // The call layer authenticated the caller before the update; the door, which
    // reads the caller as it is now, refuses.
    let door = server.door.clone();
    let before = door.passed();
    let call = credvault::audit::Call::new("late-call", "Credentials/RevealAccount", &id);
    let refused = door
        .hand_out(&call, Default::default(), &id, 0, &["a-secret"])
        .await;
    assert!(
        matches!(
            refused,
            Err(credvault::handout::HandOutError::Refused(
                credvault::auth::AuthError::Disabled
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(door.passed(), before);
    // Through the API, a disabled caller is refused at the call layer already.
    let error = server
        .credentials(Auth::basic("late@example.com", SECRET))
        .await
        .reveal_account(reveal())
        .await
        .unwrap_err();
    assert_ne!(error.code(), Code::Ok);
    server.stop().await;
}

/// RevealAccount's outcomes in the trail, oldest first.
async fn reveal_outcomes(server: &TestServer) -> Vec<String> {
    let page = server
        .audit(Auth::admin())
        .await
        .list_events(proto::ListEventsRequest {
            rpc: "RevealAccount".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut outcomes: Vec<(u64, String)> = page
        .events
        .into_iter()
        .map(|e| (e.seq, e.outcome))
        .collect();
    outcomes.sort();
    outcomes.into_iter().map(|(_, outcome)| outcome).collect()
}

#[tokio::test]
async fn with_sync_os_a_reveal_whose_event_cannot_be_spilled_hands_out_nothing_and_is_audited_as_failed()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), &support::new_key());
    config.audit.sync = credvault::config::AuditSync::Os;
    let server = serving_job(config, Arc::new(credvault::clock::SystemClock)).await;
    let terms = proto::UpdateCallerRequest {
        add_credits: 10,
        ..Default::default()
    };
    let (_, key) = support::pixverse_consumer(&server, "spill@example.com", SECRET, terms).await;
    let mut credentials = server.credentials(Auth::api_key(&key, SECRET)).await;
    let callers = server.callers(Auth::api_key(&key, SECRET)).await;
    let balance = || {
        let mut callers = callers.clone();
        async move {
            let me = callers
                .get_caller_info(proto::GetCallerInfoRequest {})
                .await;
            me.unwrap().into_inner().balance
        }
    };

    let before = balance().await;
    credentials.reveal_account(reveal()).await.unwrap();
    let after_one = balance().await;
    assert!(
        after_one < before,
        "the reveal was charged: {before} → {after_one}"
    );
    let passed = server.door.passed();

    // The spill's disk is full from now on: the event cannot reach the OS.
    server.audit.fail_spill_appends();
    let error = credentials.reveal_account(reveal()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(!error.message().contains("pw-123456"));
    assert_eq!(server.door.passed(), passed, "nothing handed out");
    assert_eq!(balance().await, after_one, "the charge was paid back");

    // The trail has the first reveal handed out and the second refused, never two
    // handed out (flush rounds run every 50 ms under "os").
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let outcomes = loop {
        let outcomes = reveal_outcomes(&server).await;
        if outcomes.len() >= 2 || std::time::Instant::now() > deadline {
            break outcomes;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcomes[0], "OK");
    assert_ne!(outcomes[1], "OK", "{outcomes:?}");
    server.stop().await;
}
