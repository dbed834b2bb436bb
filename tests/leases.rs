//! Job leases over real gRPC: the maxJobs invariant under 500 concurrent acquirers,
//! FIFO waiting, ttl expiry and renewal (injected clock), durability across restarts,
//! lowering maxJobs, disabling, the watch stream, and scope and credit refusals.

mod support;

use std::{collections::HashMap, sync::Arc, time::Duration};

use credvault::{audit::Call, clock::ManualClock};
use support::{
    Auth, TestServer, active_jobs, eventually, pixverse, proto, upstream_jwt, wait_until,
};
use tonic::Code;
use tonic_types::StatusExt;

const SECRET: &str = "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5";
const START_MS: i64 = 1_767_225_600_000;

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn acquire(provider: &str, email: &str, ttl: i64, wait: i64) -> proto::AcquireLeaseRequest {
    proto::AcquireLeaseRequest {
        provider: provider.into(),
        email: email.into(),
        ttl: secs(ttl),
        wait_timeout: secs(wait),
        ..Default::default()
    }
}

/// A pixverse account with a token valid until 2030.
async fn account(server: &TestServer, email: &str, max_jobs: i32) {
    server
        .accounts()
        .await
        .create_account(proto::CreateAccountRequest {
            max_jobs,
            jwt: Some(proto::JwtInput {
                token: upstream_jwt(1_900_000_000, email),
                ..Default::default()
            }),
            ..pixverse(email, "pw-123456")
        })
        .await
        .unwrap();
}

/// A consumer of pixverse with `credits`; returns its auth.
async fn consumer(server: &TestServer, email: &str, scopes: &[&str], credits: i64) -> Auth {
    let (id, key) = support::activated_caller(
        server,
        proto::CreateCallerRequest {
            email: email.into(),
            secret: SECRET.into(),
            roles: vec![proto::Role::Consumer as i32],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .await;
    server
        .callers(Auth::admin())
        .await
        .update_caller(proto::UpdateCallerRequest {
            caller_id: id,
            add_credits: credits - 100,
            ..Default::default()
        })
        .await
        .unwrap();
    Auth::api_key(&key, SECRET)
}

async fn clocked() -> (tempfile::TempDir, TestServer, ManualClock, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let clock = ManualClock::at(START_MS);
    let server =
        TestServer::start_with_clock(support::config(dir.path(), &key), Arc::new(clock.clone()))
            .await;
    (dir, server, clock, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_renew_release() {
    let (_dir, server, _clock, _key) = clocked().await;
    account(&server, "a@example.com", 2).await;
    let auth = consumer(&server, "job@example.com", &["pixverse"], 100).await;
    let mut client = server.credentials(auth).await;

    let lease = client
        .acquire_lease(acquire("pixverse", "", 60, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (lease.provider.as_str(), lease.email.as_str()),
        ("pixverse", "a@example.com")
    );
    assert_eq!(
        lease.token,
        upstream_jwt(1_900_000_000, "a@example.com"),
        "the token itself, unmasked"
    );
    assert_eq!((lease.generation, lease.expire_time), (1, 1_900_000_000));
    assert_eq!(
        lease.lease_expires_at.unwrap().seconds,
        START_MS / 1000 + 60
    );
    assert_eq!(active_jobs(&server, "a@example.com").await, 1);

    let renewed = client
        .renew_lease(proto::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl: secs(600),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        renewed.lease_expires_at.unwrap().seconds,
        START_MS / 1000 + 600
    );

    let release = || proto::ReleaseLeaseRequest {
        lease_id: lease.lease_id.clone(),
    };
    client.release_lease(release()).await.unwrap();
    client
        .release_lease(release())
        .await
        .expect("releasing twice is fine");
    assert_eq!(active_jobs(&server, "a@example.com").await, 0);
    let error = client
        .renew_lease(proto::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl: secs(60),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::NotFound,
            format!("lease {} not found or expired", lease.lease_id).as_str()
        )
    );
    let error = client
        .acquire_lease(acquire("pixverse", "", 0, 0))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::InvalidArgument,
            "invalid parameter: [ttl] must be between 1000 ms and 86400000 ms"
        )
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_acquirers_never_exceed_max_jobs() {
    let (_dir, server, _clock, _key) = clocked().await;
    for i in 0..10 {
        account(&server, &format!("pool{i}@example.com"), 3).await;
    }
    let auth = consumer(&server, "storm@example.com", &["pixverse"], 10_000).await;
    let client = server.credentials(auth).await;

    // Sample every account's activeJobs from the server throughout.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let accounts = server.accounts().await;
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut accounts = accounts;
            let mut highest: HashMap<String, i32> = HashMap::new();
            let mut samples = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let page = accounts
                    .list_accounts(proto::ListAccountsRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                for account in page.accounts {
                    let seen = highest.entry(account.email).or_default();
                    *seen = (*seen).max(account.active_jobs);
                }
                samples += 1;
            }
            (highest, samples)
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let lease = client
                .acquire_lease(acquire("pixverse", "", 60, 30))
                .await?
                .into_inner();
            tokio::task::yield_now().await;
            client
                .release_lease(proto::ReleaseLeaseRequest {
                    lease_id: lease.lease_id,
                })
                .await?;
            Ok::<_, tonic::Status>(())
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(status) if status.code() == Code::ResourceExhausted => busy += 1,
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (highest, samples) = sampler.await.unwrap();
    assert_eq!(ok + busy, 500);
    assert_eq!(ok, 500, "with a 30 s wait every acquirer gets a slot");
    assert!(samples > 0);
    for (email, seen) in &highest {
        assert!(*seen <= 3, "{email} held {seen} leases at once");
    }
    for i in 0..10 {
        assert_eq!(
            active_jobs(&server, &format!("pool{i}@example.com")).await,
            0
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_lease_is_reaped_at_its_expiry() {
    let (_dir, server, clock, _key) = clocked().await;
    account(&server, "ttl@example.com", 1).await;
    let auth = consumer(&server, "ttl-job@example.com", &["pixverse"], 100).await;
    let mut client = server.credentials(auth).await;
    let lease = client
        .acquire_lease(acquire("pixverse", "ttl@example.com", 60, 0))
        .await
        .unwrap()
        .into_inner();

    clock.advance(59_000);
    client
        .renew_lease(proto::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl: secs(60),
        })
        .await
        .expect("renewed in time");
    clock.advance(59_000);
    assert_eq!(
        active_jobs(&server, "ttl@example.com").await,
        1,
        "the renewal kept it"
    );
    clock.advance(1_000);
    assert!(
        eventually(Duration::from_secs(10), async || active_jobs(
            &server,
            "ttl@example.com"
        )
        .await
            == 0)
        .await,
        "reaped at its expiry"
    );
    client
        .acquire_lease(acquire("pixverse", "ttl@example.com", 60, 0))
        .await
        .expect("the slot is free again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expiring_before_those_held_is_reaped_on_time() {
    let (_dir, server, clock, _key) = clocked().await;
    account(&server, "short@example.com", 3).await;
    let auth = consumer(&server, "short-job@example.com", &["pixverse"], 100).await;
    let mut client = server.credentials(auth).await;
    let mut take = async |ttl| {
        client
            .acquire_lease(acquire("pixverse", "short@example.com", ttl, 0))
            .await
            .unwrap()
            .into_inner()
    };
    // The reaper sleeps until the first lease's expiry, an hour away; the shorter
    // ones taken after it must wake it.
    let _long = take(3600).await;
    let _short = take(10).await;
    let renewed = take(600).await;
    let jobs = async |n| {
        eventually(Duration::from_secs(10), async || {
            active_jobs(&server, "short@example.com").await == n
        })
        .await
    };
    assert!(jobs(3).await);
    clock.advance(10_000);
    assert!(jobs(2).await, "the 10 s lease is reaped at its expiry");
    // A renewal can shorten a lease, too.
    client
        .renew_lease(proto::RenewLeaseRequest {
            lease_id: renewed.lease_id.clone(),
            ttl: secs(5),
        })
        .await
        .unwrap();
    clock.advance(5_000);
    assert!(
        jobs(1).await,
        "the renewed lease is reaped at its new expiry"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_slots_survive_a_restart() {
    let (dir, server, clock, key) = clocked().await;
    account(&server, "durable@example.com", 1).await;
    let auth = consumer(&server, "durable-job@example.com", &["pixverse"], 100).await;
    let mut client = server.credentials(auth.clone()).await;
    client
        .acquire_lease(acquire("pixverse", "durable@example.com", 120, 0))
        .await
        .unwrap();
    drop(client);
    server.stop().await;

    let server =
        TestServer::start_with_clock(support::config(dir.path(), &key), Arc::new(clock.clone()))
            .await;
    assert_eq!(active_jobs(&server, "durable@example.com").await, 1);
    let mut client = server.credentials(auth).await;
    let busy = client
        .acquire_lease(acquire("pixverse", "durable@example.com", 60, 0))
        .await
        .unwrap_err();
    assert_eq!(
        (busy.code(), busy.message()),
        (
            Code::ResourceExhausted,
            "all slots are busy: 1 job is running on account pixverse/durable@example.com; retry after 120 s"
        )
    );
    assert_eq!(
        busy.metadata()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap(),
        "120"
    );
    let info = busy.get_details_error_info().unwrap();
    assert_eq!(
        (
            info.reason.as_str(),
            info.metadata["executing_jobs"].as_str()
        ),
        ("ALL_SLOTS_BUSY", "1")
    );
    clock.advance(120_000);
    assert!(
        eventually(Duration::from_secs(10), async || active_jobs(
            &server,
            "durable@example.com"
        )
        .await
            == 0)
        .await
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_jobs_keeps_running_leases_and_blocks_new_ones() {
    let (_dir, server, _clock, _key) = clocked().await;
    account(&server, "lower@example.com", 3).await;
    let auth = consumer(&server, "lower-job@example.com", &["pixverse"], 100).await;
    let mut client = server.credentials(auth).await;
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(
            client
                .acquire_lease(acquire("pixverse", "lower@example.com", 60, 0))
                .await
                .unwrap()
                .into_inner()
                .lease_id,
        );
    }
    server
        .accounts()
        .await
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "lower@example.com".into(),
            max_jobs: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        active_jobs(&server, "lower@example.com").await,
        3,
        "running leases continue"
    );
    for lease_id in leases.drain(..2) {
        assert_eq!(
            client
                .acquire_lease(acquire("pixverse", "lower@example.com", 60, 0))
                .await
                .unwrap_err()
                .code(),
            Code::ResourceExhausted
        );
        client
            .release_lease(proto::ReleaseLeaseRequest { lease_id })
            .await
            .unwrap();
    }
    assert_eq!(
        client
            .acquire_lease(acquire("pixverse", "lower@example.com", 60, 0))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted,
        "one lease left equals the new maxJobs"
    );
    client
        .release_lease(proto::ReleaseLeaseRequest {
            lease_id: leases.remove(0),
        })
        .await
        .unwrap();
    client
        .acquire_lease(acquire("pixverse", "lower@example.com", 60, 0))
        .await
        .expect("below the new limit");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_ends_leases_and_tells_watchers() {
    let (_dir, server, _clock, _key) = clocked().await;
    account(&server, "watched@example.com", 2).await;
    let auth = consumer(&server, "watcher@example.com", &["pixverse"], 100).await;
    let mut client = server.credentials(auth).await;
    let mut events = client
        .watch_credentials(proto::WatchCredentialsRequest {
            provider: "pixverse".into(),
            email: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let lease = client
        .acquire_lease(acquire("pixverse", "watched@example.com", 60, 0))
        .await
        .unwrap()
        .into_inner();

    // An operator replaces the token mid-job: the holder hears of it without polling.
    let mut admin = server.accounts().await;
    let next = upstream_jwt(1_950_000_000, "rotated");
    admin
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "watched@example.com".into(),
            jwt: Some(proto::JwtInput {
                token: next.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let rotated = events.message().await.unwrap().unwrap();
    assert_eq!(
        rotated.kind,
        proto::credential_event::Kind::TokenRotated as i32
    );
    assert_eq!(
        (
            rotated.generation,
            rotated.token.as_str(),
            rotated.expire_time
        ),
        (2, next.as_str(), 1_950_000_000)
    );

    admin
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "watched@example.com".into(),
            disabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let revoked = events.message().await.unwrap().unwrap();
    assert_eq!(
        (revoked.kind, revoked.lease_id.as_str()),
        (
            proto::credential_event::Kind::LeaseRevoked as i32,
            lease.lease_id.as_str()
        )
    );
    let disabled = events.message().await.unwrap().unwrap();
    assert_eq!(
        disabled.kind,
        proto::credential_event::Kind::AccountDisabled as i32
    );
    assert_eq!(active_jobs(&server, "watched@example.com").await, 0);
    let error = client
        .acquire_lease(acquire("pixverse", "watched@example.com", 60, 0))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::FailedPrecondition,
            "account pixverse/watched@example.com cannot serve: it is disabled"
        ),
        "a disabled account gives no lease, and says why"
    );
    drop(events);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_credit_and_lookup_refusals() {
    let (_dir, server, _clock, _key) = clocked().await;
    account(&server, "team@example.com", 2).await;
    let outsider = consumer(
        &server,
        "outsider@example.com",
        &["pixverse/*@other.example.com"],
        100,
    )
    .await;
    let mut client = server.credentials(outsider).await;
    let error = client
        .acquire_lease(acquire("pixverse", "team@example.com", 60, 0))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::PermissionDenied,
            "permission denied: account pixverse/team@example.com is outside this caller's scopes"
        )
    );
    let error = client
        .acquire_lease(acquire("pixverse", "", 60, 0))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::NotFound,
            "no account of provider pixverse is available to this caller"
        )
    );
    // A scope covering part of the provider: a pool lease comes from that part only.
    account(&server, "ops@other.example.com", 2).await;
    for _ in 0..3 {
        let lease = client
            .acquire_lease(acquire("pixverse", "", 60, 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(lease.email, "ops@other.example.com");
        client
            .release_lease(proto::ReleaseLeaseRequest {
                lease_id: lease.lease_id,
            })
            .await
            .unwrap();
    }

    let broke = consumer(&server, "broke@example.com", &["pixverse"], 0).await;
    let mut client = server.credentials(broke).await;
    let error = client
        .acquire_lease(acquire("pixverse", "", 60, 0))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(
        error.message().starts_with("no credits remaining"),
        "{}",
        error.message()
    );
    assert_eq!(
        active_jobs(&server, "team@example.com").await,
        0,
        "a refused lease holds no slot"
    );
    let error = client
        .acquire_lease(acquire("pixverse", "ghost@example.com", 60, 0))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert!(
        error
            .message()
            .starts_with("Configuration not found. To create configuration use CreateAccount")
    );

    let operator_denied = server
        .credentials(Auth::raw("Bearer nope"))
        .await
        .acquire_lease(acquire("pixverse", "", 60, 0))
        .await
        .unwrap_err();
    assert_eq!(operator_denied.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_arrival_order() {
    use credvault::{
        accounts::{NewAccount, SessionInput},
        events::Events,
        leases::{AcquireRequest, LeaseService, LocalSlots},
        refresh::Refresher,
    };
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let settings = support::config(dir.path(), &support::new_key())
        .resolve()
        .unwrap();
    let vault = support::open_vault(&settings, Arc::new(clock.clone())).await;
    let events = Events::default();
    let refresher = Arc::new(
        Refresher::start(
            vault.accounts.clone(),
            &vault.providers,
            vault.clock.clone(),
            vault.refresh.clone(),
            events.clone(),
        )
        .await
        .unwrap(),
    );
    let slots = LocalSlots::load(vault.store.clone(), vault.sealer.clone(), START_MS)
        .await
        .unwrap();
    let leases = LeaseService::start(
        vault.store.clone(),
        Arc::new(slots),
        vault.door.clone(),
        vault.accounts.clone(),
        vault.callers.clone(),
        refresher.clone(),
        vault.providers.clone(),
        events,
        vault.clock.clone(),
        vault.lease_settings.clone(),
    )
    .await
    .unwrap();
    vault
        .accounts
        .create(NewAccount {
            provider: "pixverse".into(),
            email: "one@example.com".into(),
            password: Some("pw-123456".to_owned().into()),
            max_jobs: 1,
            session: Some(SessionInput {
                token: upstream_jwt(1_900_000_000, "one").into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let admin = vault.callers.bootstrap_admin().unwrap();
    let request = |wait_ms| AcquireRequest {
        provider: "pixverse".into(),
        ttl_ms: 60_000,
        wait_ms,
        ..Default::default()
    };
    let holder = leases
        .acquire(
            &admin,
            request(0),
            &Call::new("fifo", "Credentials/AcquireLease", &admin.id),
        )
        .await
        .unwrap();

    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (service, admin, served) = (leases.clone(), admin.clone(), served.clone());
        waiters.push(tokio::spawn(async move {
            let granted = service
                .acquire(
                    &admin,
                    request(30_000),
                    &Call::new("fifo", "Credentials/AcquireLease", &admin.id),
                )
                .await
                .unwrap();
            served.lock().unwrap().push(i);
            service.release(&admin, &granted.lease.id).await.unwrap();
        }));
        // The next waiter arrives only once this one is queued.
        assert!(wait_until(Duration::from_secs(10), || leases
            .waiting("pixverse")
            == i + 1));
    }
    leases.release(&admin, &holder.lease.id).await.unwrap();
    for waiter in waiters {
        waiter.await.unwrap();
    }
    assert_eq!(*served.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(leases.waiting("pixverse"), 0);
    leases.shutdown();
    refresher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_during_a_lease_reaches_the_holder() {
    use credvault::providers::ProviderConfig;
    use fake_upstream::FakeUpstream;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    fake.add_user("live@example.com", "upstream-pw-1");
    let mut config = support::config(dir.path(), &support::new_key());
    config.providers.insert(
        "pixverse".into(),
        ProviderConfig {
            base_url: Some(fake.base_url()),
            ..ProviderConfig::default()
        },
    );
    let server = TestServer::start_with_clock(config, Arc::new(clock.clone())).await;
    server
        .accounts()
        .await
        .create_account(pixverse("live@example.com", "upstream-pw-1"))
        .await
        .unwrap();
    let auth = consumer(&server, "holder@example.com", &["pixverse"], 100).await;
    let mut client = server.credentials(auth).await;
    let mut events = client
        .watch_credentials(proto::WatchCredentialsRequest {
            provider: String::new(),
            email: "live@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let lease = client
        .acquire_lease(acquire("pixverse", "", 600, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.generation, 1);

    // The engine logs in again (on request here; on schedule it is the same path).
    server
        .accounts()
        .await
        .refresh_account(proto::RefreshAccountRequest {
            provider: "pixverse".into(),
            email: "live@example.com".into(),
            force: true,
        })
        .await
        .unwrap();
    let rotated = events.message().await.unwrap().unwrap();
    assert_eq!(
        rotated.kind,
        proto::credential_event::Kind::TokenRotated as i32
    );
    assert_eq!(rotated.generation, 2);
    assert_eq!(
        Some(rotated.token),
        fake.live_session("live@example.com"),
        "the new token, as the upstream issued it"
    );
    drop(events);
    server.stop().await;
}
