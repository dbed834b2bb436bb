//! The refresh engine against the fake upstream on loopback, with an injected clock:
//! each adapter's happy path and failure classes, refresh before expiry, single flight,
//! backoff, permanent failures, and restart with expired tokens.

mod support;

use std::{sync::Arc, time::Duration};

use credvault::{
    clock::{Clock, ManualClock},
    config::Config,
    providers::{ProviderConfig, ProviderKind},
};
use fake_upstream::FakeUpstream;
use support::{TestServer, pixverse, proto, wait_until};
use tonic::Code;

const START_MS: i64 = 1_767_225_600_000;
const PASSWORD: &str = "upstream-password-1";

struct Env {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    fake: FakeUpstream,
    server: TestServer,
}

fn config(dir: &std::path::Path, key: &str, fake: &FakeUpstream) -> Config {
    let mut config = support::config(dir, key);
    for (name, kind, max) in [
        ("pixverse", ProviderKind::Pixverse, 8),
        ("media", ProviderKind::BasicSession, 50),
        ("eandb", ProviderKind::JwtRotate, 50),
        ("credits", ProviderKind::ApiKey, 50),
    ] {
        let spec = ProviderConfig {
            max_jobs: Some(max),
            base_url: Some(fake.base_url()),
            timeout_secs: Some(5),
            ..ProviderConfig::of(kind)
        };
        config.providers.insert(name.into(), spec);
    }
    config.refresh.backoff_base_ms = 1_000;
    config.refresh.backoff_cap_ms = 8_000;
    config
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    let server = TestServer::start_with_clock(
        config(dir.path(), &support::new_key(), &fake),
        Arc::new(clock.clone()),
    )
    .await;
    Env {
        _dir: dir,
        clock,
        fake,
        server,
    }
}

fn get(provider: &str, email: &str) -> proto::GetAccountRequest {
    proto::GetAccountRequest {
        provider: provider.into(),
        email: email.into(),
    }
}

fn refresh(provider: &str, email: &str) -> proto::RefreshAccountRequest {
    proto::RefreshAccountRequest {
        provider: provider.into(),
        email: email.into(),
        force: true,
    }
}

async fn account(env: &Env, provider: &str, email: &str) -> proto::Account {
    env.server
        .accounts()
        .await
        .get_account(get(provider, email))
        .await
        .unwrap()
        .into_inner()
}

/// Polls (bounded) until the account satisfies `check`.
async fn eventually(
    env: &Env,
    provider: &str,
    email: &str,
    check: impl Fn(&proto::Account) -> bool,
) -> proto::Account {
    let mut last = None;
    let held = support::eventually(Duration::from_secs(15), async || {
        let account = account(env, provider, email).await;
        let ok = check(&account);
        last = Some(account);
        ok
    })
    .await;
    let last = last.expect("polled at least once");
    assert!(
        held,
        "condition never held; last: {last:?} {}",
        last.status_reason
    );
    last
}

fn generation(account: &proto::Account) -> u64 {
    account.jwt.as_ref().map_or(0, |j| j.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_logs_in_at_once_and_refreshes_before_expiry() {
    let env = env().await;
    env.fake.add_user("ops@example.com", PASSWORD);
    let created = env
        .server
        .accounts()
        .await
        .create_account(pixverse("ops@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    let jwt = created.jwt.clone().expect("logged in before answering");
    assert_eq!(jwt.generation, 1);
    assert_eq!(jwt.expire_time, START_MS / 1000 + 3600);
    assert!(jwt.token.contains("…secured…"));
    assert!(jwt.account_id.starts_with("10"));
    assert_eq!(created.status, proto::account::Status::Active as i32);
    assert_eq!(created.last_refresh_at.unwrap().seconds, START_MS / 1000);
    assert_eq!(env.fake.logins("ops@example.com"), 1);

    // Due at expiry minus a tenth of the lifetime (6 min beats the 5-min skew), less
    // at most 60 s of jitter.
    env.clock.advance(3_000 * 1000);
    assert!(
        !wait_until(Duration::from_millis(300), || env
            .fake
            .logins("ops@example.com")
            > 1),
        "not yet due"
    );
    env.clock.advance(250 * 1000);
    let refreshed = eventually(&env, "pixverse", "ops@example.com", |a| generation(a) == 2).await;
    assert_eq!(env.fake.logins("ops@example.com"), 2);
    assert_eq!(
        refreshed.jwt.unwrap().expire_time,
        START_MS / 1000 + 3_250 + 3600
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_refreshes_make_one_login() {
    let env = env().await;
    env.fake.add_user("busy@example.com", PASSWORD);
    env.server
        .accounts()
        .await
        .create_account(pixverse("busy@example.com", PASSWORD))
        .await
        .unwrap();
    env.fake.set_latency(300);
    let client = env.server.accounts().await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .refresh_account(refresh("pixverse", "busy@example.com"))
                .await
        }));
    }
    for task in tasks {
        let account = task.await.unwrap().unwrap().into_inner();
        assert_eq!(generation(&account), 2, "everyone got the one new token");
    }
    assert_eq!(
        env.fake.logins("busy@example.com"),
        2,
        "one at create, one for all hundred"
    );
    assert_eq!(
        env.fake.max_concurrent_logins("busy@example.com"),
        1,
        "never two logins at once"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_needs_attention_until_it_is_updated() {
    let env = env().await;
    env.fake.add_user("locked@example.com", PASSWORD);
    let created = env
        .server
        .accounts()
        .await
        .create_account(pixverse("locked@example.com", "not-the-password"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created.status,
        proto::account::Status::NeedsAttention as i32
    );
    assert_eq!(
        created.status_reason,
        "login failed: PixVerse login: ErrCode 500201 (Incorrect password.)"
    );
    assert!(created.jwt.is_none());

    let mut client = env.server.accounts().await;
    let error = client
        .refresh_account(refresh("pixverse", "locked@example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::FailedPrecondition,
            "login failed: PixVerse login: ErrCode 500201 (Incorrect password.)"
        )
    );
    // No retries on its own, however long we wait.
    let before = env.fake.logins("locked@example.com");
    env.clock.advance(24 * 3600 * 1000);
    assert!(!wait_until(Duration::from_millis(300), || env
        .fake
        .requests()
        > 2));
    assert_eq!(env.fake.logins("locked@example.com"), before);

    client
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "locked@example.com".into(),
            password: Some(PASSWORD.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let fixed = eventually(&env, "pixverse", "locked@example.com", |a| {
        generation(a) == 1
    })
    .await;
    assert_eq!(
        (fixed.status, fixed.status_reason.as_str()),
        (proto::account::Status::Active as i32, "")
    );

    let created = client
        .create_account(pixverse("ghost@example.com", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created.status_reason,
        "login failed: PixVerse login: ErrCode 500200 (User does not exist.)"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_keep_the_account_and_retry() {
    let env = env().await;
    env.fake.add_user("flaky@example.com", PASSWORD);
    let mut client = env.server.accounts().await;
    client
        .create_account(pixverse("flaky@example.com", PASSWORD))
        .await
        .unwrap();

    for (script, reason) in [
        (
            Box::new(|f: &FakeUpstream| f.errcode_next(10003, "user is not login", 1))
                as Box<dyn Fn(&FakeUpstream)>,
            "login failed: PixVerse login: ErrCode 10003 (user is not login)",
        ),
        (
            Box::new(|f: &FakeUpstream| f.fail_next(1)),
            "login failed: PixVerse login: HTTP 503 (upstream unavailable)",
        ),
        (
            Box::new(|f: &FakeUpstream| f.malformed_next(1)),
            "login failed: PixVerse login: malformed answer from upstream",
        ),
    ] {
        let before = generation(&account(&env, "pixverse", "flaky@example.com").await);
        script(&env.fake);
        // A call can join the previous retry's login while it finishes (single flight)
        // and share its fresh token; the first call that logs in itself meets the
        // scripted failure.
        let mut joined = 0;
        let error = loop {
            match client
                .refresh_account(refresh("pixverse", "flaky@example.com"))
                .await
            {
                Err(error) => break error,
                Ok(_) => {
                    joined += 1;
                    assert!(joined < 5, "no call met the scripted failure");
                }
            }
        };
        assert_eq!((error.code(), error.message()), (Code::Unavailable, reason));
        let account = account(&env, "pixverse", "flaky@example.com").await;
        assert_eq!(
            account.status,
            proto::account::Status::Active as i32,
            "a transient failure is not the operator's problem"
        );
        assert!(
            account
                .status_reason
                .starts_with(&format!("{reason}; retry 1 at ")),
            "{}",
            account.status_reason
        );
        // The earlier token is still there and still served.
        assert_eq!(generation(&account), before);
        // The retry comes by itself after the first backoff step, or once the login
        // budget of the last successful login (30 s) allows, whichever is later: here
        // the budget, as the account was logged in a moment ago.
        env.clock.advance(30_000);
        let recovered = eventually(&env, "pixverse", "flaky@example.com", |a| {
            a.status_reason.is_empty()
        })
        .await;
        assert_eq!(generation(&recovered), before + 1);
    }
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_doubles_with_jitter_up_to_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    fake.add_user("down@example.com", PASSWORD);
    fake.set_down(true);
    let settings = config(dir.path(), &support::new_key(), &fake)
        .resolve()
        .unwrap();
    let vault = support::open_vault(&settings, Arc::new(clock.clone())).await;
    let refresher = credvault::refresh::Refresher::start(
        vault.accounts.clone(),
        &vault.providers,
        vault.clock.clone(),
        vault.refresh.clone(),
        credvault::events::Events::default(),
    )
    .await
    .unwrap();
    vault
        .accounts
        .create(credvault::accounts::NewAccount {
            provider: "pixverse".into(),
            email: "down@example.com".into(),
            password: Some(PASSWORD.to_owned().into()),
            max_jobs: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let key = credvault::accounts::AccountKey {
        provider: "pixverse".into(),
        email: "down@example.com".into(),
    };
    refresher.account_changed(
        &key,
        Some(
            &vault
                .accounts
                .get("pixverse", "down@example.com")
                .await
                .unwrap()
                .meta,
        ),
    );

    let mut delays = Vec::new();
    for attempt in 1..=7u32 {
        // The attempt happens (the fake counts it), then the next one is planned.
        assert!(
            wait_until(Duration::from_secs(10), || fake.requests()
                == u64::from(attempt)),
            "attempt {attempt}: fake saw {} requests, engine made {} logins",
            fake.requests(),
            refresher.logins()
        );
        let now = clock.now_ms();
        let mut next = None;
        assert!(wait_until(Duration::from_secs(10), || {
            next = refresher.next_attempt(&key).filter(|due| *due > now);
            next.is_some()
        }));
        let delay = next.unwrap() - now;
        delays.push(delay);
        if attempt < 7 {
            clock.set(next.unwrap());
        }
    }
    for (i, delay) in delays.iter().enumerate() {
        let step = (1_000i64 << i).min(8_000);
        assert!(
            (step / 2..=step).contains(delay),
            "retry {}: {delay} ms, step {step}: {delays:?}",
            i + 1
        );
    }
    assert!(delays[4..].iter().all(|d| *d <= 8_000), "capped");
    let reason = vault
        .accounts
        .get("pixverse", "down@example.com")
        .await
        .unwrap()
        .meta
        .status_reason;
    assert!(
        reason.starts_with(
            "login failed: PixVerse login: HTTP 503 (upstream unavailable); retry 7 at "
        ),
        "{reason}"
    );

    // The upstream comes back: the next planned attempt succeeds and resets the backoff.
    fake.set_down(false);
    clock.set(refresher.next_attempt(&key).unwrap());
    assert!(wait_until(Duration::from_secs(10), || refresher
        .refreshed()
        == 1));
    refresher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_refreshes_expired_tokens_first() {
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    let start =
        || TestServer::start_with_clock(config(dir.path(), &key, &fake), Arc::new(clock.clone()));
    let server = start().await;
    let mut client = server.accounts().await;
    for i in 0..3 {
        let email = format!("short{i}@example.com");
        fake.add_user(&email, PASSWORD);
        client
            .create_account(pixverse(&email, PASSWORD))
            .await
            .unwrap();
    }
    fake.set_token_lifetime(10 * 24 * 3600);
    fake.add_user("long@example.com", PASSWORD);
    client
        .create_account(pixverse("long@example.com", PASSWORD))
        .await
        .unwrap();
    drop(client);
    server.stop().await;

    // Down for two hours: the one-hour tokens lapse.
    clock.advance(2 * 3600 * 1000);
    let server = start().await;
    let env = Env {
        _dir: tempfile::tempdir().unwrap(),
        clock: clock.clone(),
        fake,
        server,
    };
    for i in 0..3 {
        let refreshed = eventually(&env, "pixverse", &format!("short{i}@example.com"), |a| {
            generation(a) == 2
        })
        .await;
        assert!(refreshed.jwt.unwrap().expire_time > clock.now_ms() / 1000);
    }
    assert_eq!(
        env.fake.logins("long@example.com"),
        1,
        "a valid token is left alone"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_session_reads_token_and_expiry_from_the_answer() {
    let env = env().await;
    env.fake.add_user("media@example.com", PASSWORD);
    let mut client = env.server.accounts().await;
    let created = client
        .create_account(proto::CreateAccountRequest {
            provider: "media".into(),
            ..pixverse("media@example.com", PASSWORD)
        })
        .await
        .unwrap()
        .into_inner();
    let jwt = created.jwt.unwrap();
    assert_eq!(
        (jwt.generation, jwt.expire_time),
        (1, START_MS / 1000 + 3600)
    );
    assert!(jwt.account_id.starts_with("10"));

    let refused = client
        .create_account(proto::CreateAccountRequest {
            provider: "media".into(),
            ..pixverse("media2@example.com", PASSWORD)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        refused.status,
        proto::account::Status::NeedsAttention as i32
    );
    assert_eq!(
        refused.status_reason,
        "login failed: session create: HTTP 401 (Invalid credentials)"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rotation_revokes_the_old_token_and_reads_the_balance() {
    let env = env().await;
    let first = env.fake.add_jwt_account("rot@example.com", 1234);
    let mut client = env.server.accounts().await;
    let created = client
        .create_account(proto::CreateAccountRequest {
            provider: "eandb".into(),
            email: "rot@example.com".into(),
            password: "unused-but-required".into(),
            max_jobs: 3,
            jwt: Some(proto::JwtInput {
                token: first.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        generation(&created),
        1,
        "a token was given: no login at create"
    );
    let rotated = client
        .refresh_account(refresh("eandb", "rot@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(generation(&rotated), 2);
    assert_eq!(
        rotated.credits.as_ref().map(|c| (c.total, c.remaining)),
        Some((1234, 1234))
    );
    let live = env.fake.live_jwts("rot@example.com");
    assert_eq!(live.len(), 1, "the old token was revoked upstream");
    assert!(!live.contains(&first));

    // At the upstream's 3-token cap with no older token to give up: operator's turn.
    env.fake.add_foreign_jwt("rot@example.com");
    env.fake.add_foreign_jwt("rot@example.com");
    let error = client
        .refresh_account(refresh("eandb", "rot@example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::FailedPrecondition,
            "login failed: JWT limit exceeded upstream and credvault holds no older token to revoke"
        )
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_upstream_cap_the_oldest_known_token_is_revoked_and_rotation_retried() {
    let env = env().await;
    let first = env.fake.add_jwt_account("cap@example.com", 10);
    let mut client = env.server.accounts().await;
    client
        .create_account(proto::CreateAccountRequest {
            provider: "eandb".into(),
            email: "cap@example.com".into(),
            password: "unused-but-required".into(),
            max_jobs: 3,
            jwt: Some(proto::JwtInput {
                token: first.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // The first rotation cannot revoke the old token: credvault keeps it as previous.
    env.fake.fail_revocations(true);
    client
        .refresh_account(refresh("eandb", "cap@example.com"))
        .await
        .unwrap();
    env.fake.fail_revocations(false);
    assert_eq!(env.fake.live_jwts("cap@example.com").len(), 2);
    env.fake.add_foreign_jwt("cap@example.com");
    assert_eq!(env.fake.live_jwts("cap@example.com").len(), 3, "at the cap");

    let rotated = client
        .refresh_account(refresh("eandb", "cap@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(generation(&rotated), 3);
    let live = env.fake.live_jwts("cap@example.com");
    assert_eq!(live.len(), 2, "the foreign token and the new one: {live:?}");
    assert!(
        !live.contains(&first),
        "the oldest token credvault knew was revoked"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_upstream_jwt_is_permanent() {
    let env = env().await;
    let first = env.fake.add_jwt_account("gone@example.com", 5);
    env.fake.add_jwt_account("other@example.com", 5);
    let mut client = env.server.accounts().await;
    client
        .create_account(proto::CreateAccountRequest {
            provider: "eandb".into(),
            email: "gone@example.com".into(),
            password: "unused-but-required".into(),
            max_jobs: 1,
            jwt: Some(proto::JwtInput {
                token: first,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    env.clock.advance(3601 * 1000);
    let error = client
        .refresh_account(refresh("eandb", "gone@example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::FailedPrecondition,
            "login failed: JWT rotation: upstream refused the current JWT (JWT expired)"
        )
    );
    let account = account(&env, "eandb", "gone@example.com").await;
    assert_eq!(
        account.status,
        proto::account::Status::NeedsAttention as i32
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_activate_once_and_report_credits() {
    let env = env().await;
    let secret = "d".repeat(64);
    env.fake
        .add_api_key("ak_live_1", &secret, 500, 420, (Some(1_767_225_600), None));
    let mut client = env.server.accounts().await;
    let created = client
        .create_account(proto::CreateAccountRequest {
            provider: "credits".into(),
            email: "keys@example.com".into(),
            api_key: "ak_live_1".into(),
            secret: secret.clone(),
            max_jobs: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(env.fake.key_activated("ak_live_1"));
    let credits = created.credits.unwrap();
    assert_eq!((credits.total, credits.remaining), (500, 420));
    assert_eq!(credits.valid_from.unwrap().seconds, 1_767_225_600);
    assert!(created.jwt.is_none(), "an API key has no session token");

    let refused = client
        .create_account(proto::CreateAccountRequest {
            provider: "credits".into(),
            email: "bad@example.com".into(),
            api_key: "ak_live_1".into(),
            secret: "wrong".repeat(10),
            max_jobs: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        refused.status,
        proto::account::Status::NeedsAttention as i32
    );
    assert_eq!(
        refused.status_reason,
        "login failed: API key activation: HTTP 401 (invalid API key or secret)"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_account_names_what_cannot_be_refreshed() {
    let env = env().await;
    let mut client = env.server.accounts().await;
    let error = client
        .refresh_account(refresh("pixverse", "nobody@example.com"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    client
        .create_account(proto::CreateAccountRequest {
            provider: "dataapi".into(),
            ..pixverse("local@example.com", PASSWORD)
        })
        .await
        .unwrap();
    let error = client
        .refresh_account(refresh("dataapi", "local@example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::FailedPrecondition,
            "provider dataapi has no base_url configured, so credvault does not log its accounts in"
        )
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_answers_are_transient_failures() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    fake.add_user("edge@example.com", PASSWORD);
    let mut config = config(dir.path(), &support::new_key(), &fake);
    config.providers.get_mut("pixverse").unwrap().timeout_secs = Some(1);
    let server = TestServer::start_with_clock(config, Arc::new(clock.clone())).await;
    let mut client = server.accounts().await;
    client
        .create_account(pixverse("edge@example.com", PASSWORD))
        .await
        .unwrap();

    // An answer past the 1 MiB cap is not read to the end.
    fake.oversize_next(1);
    let error = client
        .refresh_account(refresh("pixverse", "edge@example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::Unavailable,
            "login failed: PixVerse login: answer larger than 1048576 bytes"
        )
    );

    // An upstream slower than timeout_secs is cut off.
    fake.set_latency(3_000);
    let error = client
        .refresh_account(refresh("pixverse", "edge@example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::Unavailable,
            "login failed: PixVerse login: request timed out"
        )
    );
    let account = client
        .get_account(get("pixverse", "edge@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.status, proto::account::Status::Active as i32);
    assert_eq!(generation(&account), 1, "the token from before is kept");
    drop(client);
    server.stop().await;
}
