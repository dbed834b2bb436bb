//! An upstream outage of an hour of injected time, against the fake upstream on
//! loopback: valid tokens keep being served until they expire, login attempts stay
//! within the backoff schedule (counted at the fake, with callers asking for leases
//! throughout), a lapsed token shows in the account's status, and within one backoff
//! interval of the upstream's return everything is fresh again.

mod support;

use std::{sync::Arc, time::Duration};

use credvault::{
    clock::ManualClock,
    providers::{ProviderConfig, ProviderKind},
    timefmt::rfc3339_millis,
};
use fake_upstream::FakeUpstream;
use support::{Auth, TestServer, proto};
use tonic::Code;

const START_MS: i64 = 1_767_225_600_000;
const PASSWORD: &str = "upstream-password-1";
const SECRET: &str = "0a7a9e5e1f2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081920a1b2c";
const BACKOFF_BASE_MS: i64 = 1_000;
const BACKOFF_CAP_MS: i64 = 60_000;
const OUTAGE_MS: i64 = 3_600_000;
const STEP_MS: i64 = 5_000;
/// The lapsing account's token lives 20 minutes, the steady one's 3 hours.
const LAPSING_LIFETIME_S: i64 = 1_200;
const STEADY_LIFETIME_S: i64 = 10_800;

fn get(email: &str) -> proto::GetAccountRequest {
    proto::GetAccountRequest {
        provider: "pixverse".into(),
        email: email.into(),
    }
}

fn lease(email: &str) -> proto::AcquireLeaseRequest {
    proto::AcquireLeaseRequest {
        provider: "pixverse".into(),
        email: email.into(),
        ttl: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The most login attempts the backoff schedule allows in `window_ms` after a first
/// failure: every delay at its shortest (half its step, jitter being in the upper half).
fn most_attempts(window_ms: i64) -> u64 {
    let (mut at, mut attempts, mut failures) = (0i64, 1u64, 0u32);
    loop {
        failures += 1;
        let step = (BACKOFF_BASE_MS << (failures - 1).min(30)).min(BACKOFF_CAP_MS);
        at += step / 2;
        if at > window_ms {
            return attempts;
        }
        attempts += 1;
    }
}

/// The planned retry in a status reason ("…; retry N at <time>"), as written.
fn planned_retry(reason: &str) -> Option<&str> {
    reason.rsplit_once(" at ").map(|(_, at)| at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_long_outage_serves_valid_tokens_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    let mut config = support::config(dir.path(), &support::new_key());
    config.providers.insert(
        "pixverse".into(),
        ProviderConfig {
            max_jobs: Some(8),
            base_url: Some(fake.base_url()),
            timeout_secs: Some(5),
            ..ProviderConfig::of(ProviderKind::Pixverse)
        },
    );
    config.refresh.backoff_base_ms = BACKOFF_BASE_MS;
    config.refresh.backoff_cap_ms = BACKOFF_CAP_MS;
    let server = TestServer::start_with_clock(config, Arc::new(clock.clone())).await;
    let mut accounts = server.accounts().await;

    // Two accounts logged in while the upstream is up, with different token lifetimes.
    for (email, lifetime) in [
        ("lapsing@acme.com", LAPSING_LIFETIME_S),
        ("steady@acme.com", STEADY_LIFETIME_S),
    ] {
        fake.add_user(email, PASSWORD);
        fake.set_token_lifetime(lifetime);
        let created = accounts
            .create_account(support::pixverse(email, PASSWORD))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.jwt.unwrap().generation, 1, "{email} logged in");
    }
    let (_, key) = support::unmetered_consumer(&server, "jobs@acme.com", SECRET).await;
    let mut credentials = server.credentials(Auth::api_key(&key, SECRET)).await;
    let steady_token = credentials
        .acquire_lease(lease("steady@acme.com"))
        .await
        .unwrap()
        .into_inner()
        .token;

    fake.set_down(true);
    // While down, the fake answers 503 before reading a request, so it counts
    // requests, not logins per account; only the lapsing account is due in the hour.
    let requests_before = fake.requests();
    let lapse_ms = START_MS + LAPSING_LIFETIME_S * 1000;
    let mut first_failure_ms = None;
    let mut lapse_reported = false;
    let mut refused_after_lapse = 0;

    let mut now = START_MS;
    while now < START_MS + OUTAGE_MS {
        now += STEP_MS;
        clock.set(now);
        // Wait (bounded) until the engine has dealt with everything due by now: once
        // the lapsing account has failed, its next retry is planned after now.
        let mut reason = String::new();
        let settled = support::eventually(Duration::from_secs(10), async || {
            reason = accounts
                .get_account(get("lapsing@acme.com"))
                .await
                .unwrap()
                .into_inner()
                .status_reason;
            match planned_retry(&reason) {
                Some(at) => at > rfc3339_millis(now).as_str(),
                // No failure yet: fine until the refresh is certainly due (skew 300 s).
                None => now < lapse_ms - 300_000,
            }
        })
        .await;
        assert!(settled, "at +{} s: {reason:?}", (now - START_MS) / 1000);
        if first_failure_ms.is_none() && planned_retry(&reason).is_some() {
            first_failure_ms = Some(now);
        }
        if now >= lapse_ms + BACKOFF_CAP_MS + STEP_MS {
            assert!(
                reason.starts_with("token expired at "),
                "a lapsed token shows in the status: {reason:?}"
            );
            lapse_reported = true;
        }

        if (now - START_MS) % 60_000 == 0 {
            // The steady account's token is valid: it is served, unchanged.
            let granted = credentials
                .acquire_lease(lease("steady@acme.com"))
                .await
                .expect("a valid token is served during the outage")
                .into_inner();
            assert_eq!(granted.token, steady_token);
            credentials
                .release_lease(proto::ReleaseLeaseRequest {
                    lease_id: granted.lease_id,
                })
                .await
                .unwrap();
        }
        // The lapsing one: served while its token is valid, then refused with the cause;
        // asked for at every step, as busy job runners would.
        let outcome = credentials.acquire_lease(lease("lapsing@acme.com")).await;
        if now + 60_000 <= lapse_ms {
            let granted = outcome.expect("served until its expiry").into_inner();
            credentials
                .release_lease(proto::ReleaseLeaseRequest {
                    lease_id: granted.lease_id,
                })
                .await
                .unwrap();
        } else if now > lapse_ms {
            let status = outcome.expect_err("an expired token is never leased");
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status.message().starts_with(
                    "account pixverse/lapsing@acme.com cannot serve: its token expired at "
                ) && status.message().contains(
                    " and logging in failed: PixVerse login: HTTP 503 (upstream unavailable)"
                ),
                "{}",
                status.message()
            );
            refused_after_lapse += 1;
        } else if let Ok(granted) = outcome {
            credentials
                .release_lease(proto::ReleaseLeaseRequest {
                    lease_id: granted.into_inner().lease_id,
                })
                .await
                .unwrap();
        }
    }
    assert!(lapse_reported);
    assert!(refused_after_lapse > 400);
    let first_failure_ms = first_failure_ms.expect("the refresh was attempted and failed");

    // Login attempts stayed within the schedule, lease requests notwithstanding.
    let attempts = fake.requests() - requests_before;
    let window = START_MS + OUTAGE_MS - first_failure_ms + STEP_MS;
    let most = most_attempts(window);
    // At their longest, delays are a whole step (at most the cap), plus our 5 s steps.
    let least = (window / (BACKOFF_CAP_MS + STEP_MS)) as u64;
    println!(
        "outage: {attempts} login attempts for the lapsing account in {} s (schedule allows {least}..={most})",
        window / 1000
    );
    assert!(
        (least..=most).contains(&attempts),
        "{attempts} attempts, schedule allows {least}..={most}"
    );

    // The upstream returns: within one backoff interval the lapsed account is fresh,
    // and the steady one was never logged in again.
    fake.set_down(false);
    let back = now;
    let fresh = loop {
        now += STEP_MS;
        clock.set(now);
        let refreshed = support::eventually(Duration::from_millis(500), async || {
            accounts
                .get_account(get("lapsing@acme.com"))
                .await
                .unwrap()
                .into_inner()
                .jwt
                .is_some_and(|jwt| jwt.generation == 2)
        })
        .await;
        if refreshed || now - back > 2 * BACKOFF_CAP_MS {
            break refreshed;
        }
    };
    assert!(fresh, "refreshed after the upstream came back");
    assert!(
        now - back <= BACKOFF_CAP_MS + STEP_MS,
        "fresh within one backoff interval: {} s",
        (now - back) / 1000
    );
    let account = accounts
        .get_account(get("lapsing@acme.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.status, proto::account::Status::Active as i32);
    assert_eq!(account.status_reason, "", "the lapse is no longer reported");
    assert!(account.jwt.unwrap().expire_time * 1000 > now);
    credentials
        .acquire_lease(lease("lapsing@acme.com"))
        .await
        .expect("leased again");
    assert_eq!(
        fake.logins("steady@acme.com"),
        1,
        "the steady account logged in only when created"
    );
    server.stop().await;
}
