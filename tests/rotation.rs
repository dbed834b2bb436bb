//! Master-key rotation: online while reveals and leases run (no call fails, every
//! record opens under the new key alone afterwards, the old key is refused), resumed
//! after an interruption, and offline through `credvault rotate-key`.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use credvault::{
    config::Config,
    crypto::SecretString,
    store::{FaultPlan, Tree},
};
use support::{Auth, TestServer, pixverse, proto, upstream_jwt};

const SECRET: &str = "rotation-client-secret-0123456789abcdef-0123456789";
const ACCOUNTS: usize = 300;

fn with_keys(dir: &std::path::Path, current: &str, previous: Option<&str>) -> Config {
    let mut config = support::config(dir, current);
    config.previous_master_key = previous.map(|k| SecretString::from(k.to_owned()));
    config
}

fn token(i: usize) -> String {
    upstream_jwt(1_900_000_000, &format!("rot{i}"))
}

/// Accounts, a consumer with plenty of credits and a JWT, as the old key seals them.
async fn fill(server: &TestServer) -> (Auth, String) {
    let mut accounts = server.accounts().await;
    for i in 0..ACCOUNTS {
        accounts
            .create_account(proto::CreateAccountRequest {
                max_jobs: 4,
                jwt: Some(proto::JwtInput {
                    token: token(i),
                    ..Default::default()
                }),
                ..pixverse(&format!("r{i}@example.com"), &format!("pw-{i}-123456"))
            })
            .await
            .unwrap();
    }
    let credits = proto::UpdateCallerRequest {
        add_credits: 1_000_000,
        ..Default::default()
    };
    let (_, key) = support::pixverse_consumer(server, "svc@example.com", SECRET, credits).await;
    let auth = Auth::api_key(&key, SECRET);
    let jwt = server
        .callers(auth.clone())
        .await
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jwt;
    (auth, jwt)
}

async fn status(server: &TestServer) -> proto::KeyRotation {
    proto::keys_client::KeysClient::with_interceptor(server.channel().await, Auth::admin())
        .rotation_status(proto::RotationStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn phase(status: &proto::KeyRotation) -> proto::key_rotation::Phase {
    proto::key_rotation::Phase::try_from(status.phase).unwrap()
}

/// Everything reads back under the current key: every account's secrets, the
/// caller's API key (its MAC), the JWT issued before, the audit trail and its hashes.
async fn everything_reads(server: &TestServer, auth: &Auth, jwt: &str) {
    let mut credentials = server.credentials(auth.clone()).await;
    for i in 0..ACCOUNTS {
        let account = credentials
            .reveal_account(proto::RevealAccountRequest {
                provider: "pixverse".into(),
                email: format!("r{i}@example.com"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(account.password, format!("pw-{i}-123456"));
        assert_eq!(account.jwt.unwrap().token, token(i));
    }
    server
        .callers(Auth::bearer(jwt))
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .expect("a token issued before the rotation stays valid");
    let mut audit = server.audit(Auth::admin()).await;
    let trail = audit
        .list_events(proto::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!trail.events.is_empty());
    let found = audit
        .audit_hash(proto::AuditHashRequest { value: token(0) })
        .await
        .unwrap()
        .into_inner();
    assert!(found.events >= 1, "audit hashes still match after rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_while_serving_fails_no_call_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (support::new_key(), support::new_key());
    let server = TestServer::start(dir.path(), &old).await;
    let (auth, jwt) = fill(&server).await;
    server.stop().await;

    // Slow storage stretches the rotation so the load surely overlaps it.
    let plan = Arc::new(FaultPlan::default());
    plan.set_latency(Duration::from_micros(300));
    let server =
        TestServer::start_with_faults(with_keys(dir.path(), &new, Some(&old)), plan.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for worker in 0..4usize {
        let (mut credentials, stop) = (server.credentials(auth.clone()).await, stop.clone());
        let (calls, failures) = (calls.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let email = format!("r{}@example.com", i % ACCOUNTS);
                let ok = if i % 2 == 0 {
                    credentials
                        .reveal_account(proto::RevealAccountRequest {
                            provider: "pixverse".into(),
                            email,
                        })
                        .await
                        .is_ok()
                } else {
                    match credentials
                        .acquire_lease(proto::AcquireLeaseRequest {
                            provider: "pixverse".into(),
                            email,
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(lease) => credentials
                            .release_lease(proto::ReleaseLeaseRequest {
                                lease_id: lease.into_inner().lease_id,
                            })
                            .await
                            .is_ok(),
                        Err(_) => false,
                    }
                };
                calls.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                i += 4;
            }
        }));
    }
    let mut seen_running_with_load = false;
    let done = support::eventually(Duration::from_secs(60), async || {
        let now = status(&server).await;
        if phase(&now) == proto::key_rotation::Phase::Running && calls.load(Ordering::Relaxed) > 0 {
            seen_running_with_load = true;
        }
        phase(&now) == proto::key_rotation::Phase::Done
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let last = status(&server).await;
    assert!(done, "the rotation finished: {last:?}");
    assert!(seen_running_with_load, "the load ran during the rotation");
    assert!(calls.load(Ordering::Relaxed) > 10);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no call failed");
    assert!(last.records_resealed as usize > ACCOUNTS, "{last:?}");
    assert_ne!(last.current_key_id, last.previous_key_id);
    server.stop().await;

    // The new key alone opens everything; the old one no longer opens the vault.
    let server = TestServer::start(dir.path(), &new).await;
    assert_eq!(
        phase(&status(&server).await),
        proto::key_rotation::Phase::Idle
    );
    everything_reads(&server, &auth, &jwt).await;
    server.stop().await;
    let settings = support::config(dir.path(), &old).resolve().unwrap();
    let refused = support::try_open_vault(&settings, Arc::new(credvault::clock::SystemClock)).await;
    assert!(
        matches!(refused, Err(credvault::vault::OpenError::WrongKey(_))),
        "the old key is retired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_resumes_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (support::new_key(), support::new_key());
    let server = TestServer::start(dir.path(), &old).await;
    let (auth, jwt) = fill(&server).await;
    server.stop().await;

    // The rotation dies part-way: writes to the audit tree fail.
    let plan = Arc::new(FaultPlan::default());
    plan.fail_writes(Tree::Audit, true);
    let server = TestServer::start_with_faults(with_keys(dir.path(), &new, Some(&old)), plan).await;
    let mut last = status(&server).await;
    let failed = support::eventually(Duration::from_secs(30), async || {
        last = status(&server).await;
        phase(&last) == proto::key_rotation::Phase::Failed
    })
    .await;
    assert!(failed, "{last:?}");
    assert!(last.records_resealed > 0, "{last:?}");
    assert!(last.error.contains("storage"), "{last:?}");
    server.stop().await;

    // Half done: the key check still names the old key, so the new one alone is refused.
    let settings = support::config(dir.path(), &new).resolve().unwrap();
    let refused = support::try_open_vault(&settings, Arc::new(credvault::clock::SystemClock)).await;
    assert!(matches!(
        refused,
        Err(credvault::vault::OpenError::WrongKey(_))
    ));

    // Both keys again, and it finishes what was left.
    let server = TestServer::start_with(with_keys(dir.path(), &new, Some(&old))).await;
    let done = support::eventually(Duration::from_secs(30), async || {
        last = status(&server).await;
        phase(&last) == proto::key_rotation::Phase::Done
    })
    .await;
    assert!(done, "{last:?}");
    server.stop().await;
    let server = TestServer::start(dir.path(), &new).await;
    everything_reads(&server, &auth, &jwt).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_runs_offline() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, key: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, key).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (old, new) = (
        write("old.key", &support::new_key()),
        write("new.key", &support::new_key()),
    );
    let data = dir.path().join("data");
    let serve = |key: &str| {
        support::Daemon::spawn(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                "--master-key-file",
                key,
            ],
            &[("CREDVAULT_ADMIN_TOKEN", support::ADMIN_TOKEN)],
        )
    };
    let channel = |addr: std::net::SocketAddr| {
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let mut daemon = serve(&old);
    let addr = daemon.wait_for_addr();
    proto::accounts_client::AccountsClient::with_interceptor(channel(addr), Auth::admin())
        .create_account(proto::CreateAccountRequest {
            jwt: Some(proto::JwtInput {
                token: token(1),
                ..Default::default()
            }),
            ..pixverse("offline@example.com", "pw-offline-123456")
        })
        .await
        .unwrap();
    let rotate_key = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_credvault"))
            .args([
                "rotate-key",
                "--data-dir",
                data.to_str().unwrap(),
                "--master-key-file",
                &old,
                "--new-key-file",
                &new,
            ])
            .env_remove("CREDVAULT_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    // While the daemon holds the store, the command says how to rotate online instead.
    let busy = rotate_key();
    let said = String::from_utf8_lossy(&busy.stderr).to_string();
    // EX_TEMPFAIL, as for every command on a data directory in use.
    assert_eq!(busy.status.code(), Some(75), "{said}");
    assert!(said.contains("previous_master_key_file"), "{said}");
    assert!(daemon.terminate().success());

    let output = rotate_key();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("records re-sealed under master key"),
        "{text}"
    );

    let mut daemon = serve(&new);
    let addr = daemon.wait_for_addr();
    let revealed = proto::credentials_client::CredentialsClient::with_interceptor(
        channel(addr),
        Auth::admin(),
    )
    .reveal_account(proto::RevealAccountRequest {
        provider: "pixverse".into(),
        email: "offline@example.com".into(),
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(revealed.password, "pw-offline-123456");
    assert!(daemon.terminate().success());

    let mut refused = serve(&old);
    let status = refused.wait();
    assert_eq!(status.code(), Some(64), "{}", refused.output());
    assert!(refused.output().contains("does not match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_rotates_the_master_key_over_grpc_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (support::new_key(), support::new_key());
    let new_file = dir.path().join("new.key");
    std::fs::write(&new_file, &new).unwrap();
    let server = TestServer::start(dir.path(), &old).await;
    let (auth, jwt) = fill(&server).await;
    let rotate = |auth: Auth, path: String| {
        let server = &server;
        async move {
            proto::keys_client::KeysClient::with_interceptor(server.channel().await, auth)
                .rotate_master_key(proto::RotateMasterKeyRequest { new_key_file: path })
                .await
        }
    };
    let path = new_file.to_str().unwrap().to_owned();
    let refused = rotate(auth.clone(), path.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("keys:admin"),
        "{}",
        refused.message()
    );
    let missing = rotate(Auth::admin(), "/nonexistent/new.key".into())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);

    let mut credentials = server.credentials(auth.clone()).await;
    let started = rotate(Auth::admin(), path.clone())
        .await
        .unwrap()
        .into_inner();
    assert_ne!(started.current_key_id, started.previous_key_id);
    // Reveals go on while it runs, and none fails.
    let mut last = status(&server).await;
    let mut reveals = 0;
    let done = support::eventually(Duration::from_secs(60), async || {
        credentials
            .reveal_account(proto::RevealAccountRequest {
                provider: "pixverse".into(),
                email: format!("r{}@example.com", reveals % ACCOUNTS),
            })
            .await
            .expect("no reveal fails during the rotation");
        reveals += 1;
        last = status(&server).await;
        phase(&last) == proto::key_rotation::Phase::Done
    })
    .await;
    assert!(done, "{last:?}");
    assert_eq!(last.current_key_id, started.current_key_id);
    assert!(
        last.previous_key_id.is_empty(),
        "the old key is retired: {last:?}"
    );
    let again = rotate(Auth::admin(), path).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    // The call is in the audit trail, by path, never by key.
    let trail = server
        .audit(Auth::admin())
        .await
        .list_events(proto::ListEventsRequest {
            rpc: "RotateMasterKey".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(trail.events.iter().any(|e| e.outcome == "OK"));
    assert!(!format!("{trail:?}").contains(new.as_str()));
    server.stop().await;

    let server = TestServer::start(dir.path(), &new).await;
    everything_reads(&server, &auth, &jwt).await;
    server.stop().await;
}
