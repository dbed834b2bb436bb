//! Login hygiene against the fake PixVerse upstream, on an injected clock: a PixVerse
//! login ends the session running jobs hold, so credvault logs in only when it must.
//! Short-lived tokens are renewed past halfway, not in a loop; the login budget holds
//! RefreshAccount (unless forced) and lease-driven logins; a lease never logs in because
//! of its ttl; and every AcquireLease refusal names its cause.

mod support;

use std::{sync::Arc, time::Duration};

use credvault::{
    accounts::{AccountKey, NewAccount},
    clock::{Clock, ManualClock},
    config::Config,
    providers::{ProviderConfig, ProviderKind},
    refresh::Refresher,
};
use fake_upstream::FakeUpstream;
use support::{Auth, TestServer, proto, upstream_jwt, wait_until};
use tonic::Code;

const START_MS: i64 = 1_767_225_600_000;
const PASSWORD: &str = "upstream-password-1";
const SECRET: &str = "logins-test-secret-0123456789abcdef";

fn config(dir: &std::path::Path, fake: &FakeUpstream) -> Config {
    let mut config = support::config(dir, &support::new_key());
    config.providers.insert(
        "pixverse".into(),
        ProviderConfig {
            base_url: Some(fake.base_url()),
            timeout_secs: Some(5),
            max_jobs: Some(50),
            ..ProviderConfig::of(ProviderKind::Pixverse)
        },
    );
    // The same kind of upstream, which credvault is not told how to reach.
    config.providers.insert(
        "offline".into(),
        ProviderConfig {
            max_jobs: Some(50),
            ..ProviderConfig::of(ProviderKind::Pixverse)
        },
    );
    config
}

struct Env {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    fake: FakeUpstream,
    server: TestServer,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    let server =
        TestServer::start_with_clock(config(dir.path(), &fake), Arc::new(clock.clone())).await;
    Env {
        _dir: dir,
        clock,
        fake,
        server,
    }
}

impl Env {
    /// An account whose token (set by an operator, so no login) expires in `secs`.
    async fn account_with_token(&self, provider: &str, email: &str, secs: i64) {
        self.fake.add_user(email, PASSWORD);
        let expiry = self.clock.now_ms() / 1000 + secs;
        self.server
            .accounts()
            .await
            .create_account(proto::CreateAccountRequest {
                provider: provider.into(),
                email: email.into(),
                password: PASSWORD.into(),
                max_jobs: 30,
                jwt: Some(proto::JwtInput {
                    token: upstream_jwt(expiry, email),
                    expire_time: expiry,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("the account is created");
    }

    async fn consumer(&self) -> Auth {
        let (_, key) =
            support::unmetered_consumer(&self.server, "worker@example.com", SECRET).await;
        Auth::api_key(&key, SECRET)
    }

    async fn refresh(&self, email: &str, force: bool) -> Result<proto::Account, tonic::Status> {
        self.server
            .accounts()
            .await
            .refresh_account(proto::RefreshAccountRequest {
                provider: "pixverse".into(),
                email: email.into(),
                force,
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

fn acquire(provider: &str, email: &str) -> proto::AcquireLeaseRequest {
    proto::AcquireLeaseRequest {
        provider: provider.into(),
        email: email.into(),
        ttl: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_second_tokens_are_renewed_past_halfway_not_in_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    fake.add_user("short@example.com", PASSWORD);
    fake.set_token_lifetime(60);
    let settings = config(dir.path(), &fake).resolve().unwrap();
    assert_eq!(
        (
            settings.refresh.skew_secs,
            settings.refresh.min_login_interval_secs
        ),
        (300, 30),
        "the defaults"
    );
    let vault = support::open_vault(&settings, Arc::new(clock.clone())).await;
    let refresher = Refresher::start(
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
        .create(NewAccount {
            provider: "pixverse".into(),
            email: "short@example.com".into(),
            password: Some(PASSWORD.to_owned().into()),
            max_jobs: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let key = AccountKey {
        provider: "pixverse".into(),
        email: "short@example.com".into(),
    };
    let meta = vault
        .accounts
        .get("pixverse", "short@example.com")
        .await
        .unwrap()
        .meta;
    refresher.account_changed(&key, Some(&meta));

    // Two minutes of engine time, from the first login on: jump to each planned
    // login, once the engine has planned it after the one before.
    let end = START_MS + 120_000;
    let mut logins_at = Vec::new();
    loop {
        let made = logins_at.len() as u64 + 1;
        assert!(
            wait_until(Duration::from_secs(10), || fake.logins("short@example.com")
                == made),
            "login {made} was not made"
        );
        logins_at.push(clock.now_ms() - START_MS);
        let now = clock.now_ms();
        let mut next = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                next = refresher.next_attempt(&key).filter(|due| *due > now);
                next.is_some()
            }),
            "after login {made} the next one was due at once: a loop"
        );
        if next.unwrap() >= end {
            break;
        }
        clock.set(next.unwrap());
    }
    assert!(logins_at.len() <= 3, "logins at {logins_at:?} ms");
    // 42–45 s after each login; the upstream states expiry in whole seconds, which
    // can take up to one more second off.
    for pair in logins_at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (41_000..=45_000).contains(&gap),
            "logins at {logins_at:?} ms"
        );
    }
    assert_eq!(refresher.refused_by_budget(), 0);
    refresher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_account_within_the_budget_answers_the_fresh_token() {
    let env = env().await;
    env.fake.add_user("budget@example.com", PASSWORD);
    env.server
        .accounts()
        .await
        .create_account(support::pixverse("budget@example.com", PASSWORD))
        .await
        .unwrap();
    assert_eq!(env.fake.logins("budget@example.com"), 1, "create logs in");

    let client = env.server.accounts().await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut client = client.clone();
        calls.spawn(async move {
            client
                .refresh_account(proto::RefreshAccountRequest {
                    provider: "pixverse".into(),
                    email: "budget@example.com".into(),
                    force: false,
                })
                .await
        });
    }
    for answer in calls.join_all().await {
        let account = answer.expect("answered without a login").into_inner();
        assert_eq!(account.jwt.unwrap().generation, 1);
        assert!(
            account.status_reason.starts_with(
                "not logged in again: the last login was 0 s ago, within refresh.min_login_interval_secs (30 s)"
            ),
            "{}",
            account.status_reason
        );
    }
    assert_eq!(
        env.fake.logins("budget@example.com"),
        1,
        "20 calls, no login"
    );

    let forced = env.refresh("budget@example.com", true).await.unwrap();
    assert_eq!(forced.jwt.unwrap().generation, 2);
    assert!(forced.status_reason.is_empty(), "{}", forced.status_reason);
    assert_eq!(
        env.fake.logins("budget@example.com"),
        2,
        "force: exactly one"
    );

    env.clock.advance(31_000);
    let later = env.refresh("budget@example.com", false).await.unwrap();
    assert_eq!(later.jwt.unwrap().generation, 3, "past the budget, a login");
    assert_eq!(env.fake.logins("budget@example.com"), 3);
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_longer_than_the_token_takes_the_current_token_without_a_login() {
    let env = env().await;
    env.account_with_token("pixverse", "long-job@example.com", 120)
        .await;
    let mut client = env.server.credentials(env.consumer().await).await;
    let lease = client
        .acquire_lease(acquire("pixverse", "long-job@example.com"))
        .await
        .expect("a 300 s lease on a 120 s token is granted")
        .into_inner();
    assert_eq!(lease.generation, 1, "the current token");
    assert_eq!(env.fake.logins("long-job@example.com"), 0, "no login");
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_about_to_expire_is_renewed_once_for_twenty_acquirers() {
    let env = env().await;
    env.account_with_token("pixverse", "soon@example.com", 10)
        .await;
    let auth = env.consumer().await;
    let client = env.server.credentials(auth).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut client = client.clone();
        calls.spawn(async move {
            client
                .acquire_lease(acquire("pixverse", "soon@example.com"))
                .await
        });
    }
    let leases: Vec<proto::Lease> = calls
        .join_all()
        .await
        .into_iter()
        .map(|answer| answer.expect("granted").into_inner())
        .collect();
    assert!(
        leases.iter().all(|lease| lease.generation == 2),
        "all on the new token"
    );
    assert_eq!(
        env.fake.logins("soon@example.com"),
        1,
        "one login for 20 acquirers"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_token_that_cannot_be_renewed_is_still_served_and_a_full_one_is_busy() {
    let env = env().await;
    // 10 s left, on a provider credvault cannot log in: the token is all there is.
    env.account_with_token("offline", "last@example.com", 10)
        .await;
    let mut admin = env.server.credentials(Auth::admin()).await;
    let lease = admin
        .acquire_lease(acquire("offline", "last@example.com"))
        .await
        .expect("a valid token is served even when short")
        .into_inner();
    assert_eq!(lease.generation, 1);
    // The same, its one slot taken: busy, not "cannot serve".
    env.server
        .accounts()
        .await
        .update_account(proto::UpdateAccountRequest {
            provider: "offline".into(),
            email: "last@example.com".into(),
            max_jobs: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let error = admin
        .acquire_lease(acquire("offline", "last@example.com"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            Code::ResourceExhausted,
            "all slots are busy: 1 job is running on account offline/last@example.com; retry after 300 s"
        )
    );
    env.server.stop().await;
}

/// The refusal of an AcquireLease, code and message.
async fn refusal(env: &Env, auth: &Auth, provider: &str, email: &str) -> (Code, String) {
    let error = env
        .server
        .credentials(auth.clone())
        .await
        .acquire_lease(acquire(provider, email))
        .await
        .expect_err("refused");
    (error.code(), error.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_names_its_cause() {
    let env = env().await;
    let auth = env.consumer().await;
    let now_s = START_MS / 1000;
    let at = |secs: i64| credvault::timefmt::rfc3339_millis(secs * 1000);
    let failed = |code: Code, expected: &str, got: (Code, String)| {
        assert_eq!(got, (code, expected.to_owned()));
    };

    // Disabled.
    env.account_with_token("pixverse", "off@example.com", 3600)
        .await;
    env.server
        .accounts()
        .await
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "off@example.com".into(),
            disabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    failed(
        Code::FailedPrecondition,
        "account pixverse/off@example.com cannot serve: it is disabled",
        refusal(&env, &auth, "pixverse", "off@example.com").await,
    );

    // Needs attention: the upstream refuses the password.
    env.account_with_token("pixverse", "locked@example.com", 3600)
        .await;
    env.fake.add_user("locked@example.com", "another-password");
    let error = env.refresh("locked@example.com", true).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    let reason = error.message().to_owned();
    failed(
        Code::FailedPrecondition,
        &format!("account pixverse/locked@example.com cannot serve: it needs attention ({reason})"),
        refusal(&env, &auth, "pixverse", "locked@example.com").await,
    );

    // No valid token, and no way to log in.
    env.account_with_token("offline", "stranded@example.com", -60)
        .await;
    failed(
        Code::FailedPrecondition,
        "account offline/stranded@example.com cannot serve: it has no valid token, and credvault cannot log it in: provider offline has no base_url",
        // The admin: the consumer's scopes hold pixverse only.
        refusal(&env, &Auth::admin(), "offline", "stranded@example.com").await,
    );

    // Logged in now, on a token that lives 20 s (its refusal comes below).
    env.fake.add_user("brief@example.com", PASSWORD);
    env.fake.set_token_lifetime(20);
    env.server
        .accounts()
        .await
        .create_account(support::pixverse("brief@example.com", PASSWORD))
        .await
        .unwrap();
    env.fake.set_token_lifetime(3600);

    // An expired token, and a login that failed (the engine's, or this call's own:
    // either may come first, and the later one waits out the backoff).
    env.fake.set_down(true);
    env.account_with_token("pixverse", "lapsed@example.com", -60)
        .await;
    let (code, message) = refusal(&env, &auth, "pixverse", "lapsed@example.com").await;
    assert_eq!(code, Code::FailedPrecondition);
    let expected = format!(
        "account pixverse/lapsed@example.com cannot serve: its token expired at {} and logging in failed: PixVerse login: HTTP 503 (upstream unavailable)",
        at(now_s - 60)
    );
    assert!(message.starts_with(&expected), "{message}");

    // The login budget spent: logged in 25 s ago, its 20 s token expired.
    env.clock.advance(25_000);
    failed(
        Code::FailedPrecondition,
        &format!(
            "account pixverse/brief@example.com cannot serve: it has no valid token, and its login budget is spent until {}",
            at(now_s + 30)
        ),
        refusal(&env, &auth, "pixverse", "brief@example.com").await,
    );
    assert_eq!(env.fake.logins("brief@example.com"), 1, "the budget held");

    // Provider-wide, counted by cause.
    let (code, message) = refusal(&env, &auth, "pixverse", "").await;
    assert_eq!(code, Code::FailedPrecondition);
    // Word for word but for the retry time the engine's backoff put on the last.
    assert!(
        message.starts_with(&format!(
            "no pixverse account can serve: 1 disabled, 1 needs attention ({reason}), 2 without a valid token (it has no valid token, and its login budget is spent until {}; its token expired at {} and logging in failed: PixVerse login: HTTP 503 (upstream unavailable)",
            at(now_s + 30),
            at(now_s - 60)
        )),
        "{message}"
    );
    assert!(message.ends_with("), 0 with a free slot"), "{message}");
    env.server.stop().await;
}
