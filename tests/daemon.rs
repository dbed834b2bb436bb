//! The `credvault` binary as an operator runs it: start-up, `--dev`, exit codes,
//! SIGTERM, and logs that never hold a secret even at trace level.

mod support;

use std::{os::unix::fs::PermissionsExt, process::Command};

use support::{ADMIN_TOKEN, Bearer, Daemon, pixverse, proto, upstream_jwt};
use tonic::{Code, transport::Channel};

const PASSWORD: &str = "LOGSWEEP-PASSWORD-e1d2c3";
const NEW_PASSWORD: &str = "LOGSWEEP-NEWPASS-a9b8c7";
const API_KEY: &str = "LOGSWEEP-APIKEY-445566";
const CLIENT_SECRET: &str = "LOGSWEEP-CLIENTSECRET-7788aa-0123456789abcdef";
const BAD_TOKEN: &str = "LOGSWEEP-WRONG-BEARER-TOKEN-00ff";
const UPSTREAM_PASSWORD: &str = "LOGSWEEP-UPSTREAM-PASSWORD-31ab";
const UPSTREAM_API_KEY: &str = "LOGSWEEP-UPSTREAM-APIKEY-9c0d";
const UPSTREAM_KEY_SECRET: &str = "LOGSWEEP-UPSTREAM-KEYSECRET-7e1f";

type Client = proto::accounts_client::AccountsClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;

async fn client(addr: std::net::SocketAddr, token: &str) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    proto::accounts_client::AccountsClient::with_interceptor(
        channel,
        Bearer(Some(token.to_owned())),
    )
}

fn write_key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("master.key");
    std::fs::write(&path, support::new_key()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_secret_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_key_file(dir.path());
    let data = dir.path().join("data");
    // An upstream to log in to, so the refresh paths run too.
    let fake =
        fake_upstream::FakeUpstream::start(std::sync::Arc::new(credvault::clock::SystemClock))
            .await
            .unwrap();
    fake.add_user("upstream@example.com", UPSTREAM_PASSWORD);
    fake.add_user("media@example.com", UPSTREAM_PASSWORD);
    let seeded_jwt = fake.add_jwt_account("eandb@example.com", 77);
    fake.add_api_key(UPSTREAM_API_KEY, UPSTREAM_KEY_SECRET, 10, 10, (None, None));
    let base_url = fake.base_url();
    let mut daemon = Daemon::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--master-key-file",
            key_file.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[
            ("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN),
            ("CREDVAULT_METRICS_LISTEN", "127.0.0.1:0"),
            ("RUST_LOG", "trace"),
            // Audit events as log lines too, searched with the rest.
            ("CREDVAULT_AUDIT__LOG_LINES", "true"),
            ("CREDVAULT_NODE_ID", "sweep-node"),
            // Named like its style: no kind needed, and maxJobs stays 1–8.
            ("CREDVAULT_PROVIDERS__PIXVERSE__BASE_URL", &base_url),
            ("CREDVAULT_PROVIDERS__MEDIA__KIND", "basic-session"),
            ("CREDVAULT_PROVIDERS__MEDIA__BASE_URL", &base_url),
            ("CREDVAULT_PROVIDERS__EANDB__KIND", "jwt-rotate"),
            ("CREDVAULT_PROVIDERS__EANDB__BASE_URL", &base_url),
            ("CREDVAULT_PROVIDERS__CREDITS__KIND", "api-key"),
            ("CREDVAULT_PROVIDERS__CREDITS__BASE_URL", &base_url),
        ],
    );
    let addr = daemon.wait_for_addr();
    let token = upstream_jwt(1_900_000_000, "LOGSWEEP-JWT-SIGNATURE");
    let mut admin = client(addr, ADMIN_TOKEN).await;

    // Every RPC, and its failure paths, carrying known secrets.
    admin
        .create_account(proto::CreateAccountRequest {
            jwt: Some(proto::JwtInput {
                token: token.clone(),
                ..Default::default()
            }),
            ..pixverse("sweep@example.com", PASSWORD)
        })
        .await
        .unwrap();
    admin
        .create_account(proto::CreateAccountRequest {
            provider: "pixverse".into(),
            email: "keyed@example.com".into(),
            api_key: API_KEY.into(),
            secret: CLIENT_SECRET.into(),
            max_jobs: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    for failing in [
        pixverse("sweep@example.com", PASSWORD),
        pixverse("broken address", PASSWORD),
        proto::CreateAccountRequest {
            max_jobs: 99,
            ..pixverse("x@example.com", PASSWORD)
        },
        pixverse("ctl@example.com", &format!("{PASSWORD}\u{1}")),
    ] {
        assert!(admin.create_account(failing).await.is_err());
    }
    admin
        .get_account(proto::GetAccountRequest {
            provider: "pixverse".into(),
            email: "sweep@example.com".into(),
        })
        .await
        .unwrap();
    admin
        .list_accounts(proto::ListAccountsRequest::default())
        .await
        .unwrap();
    admin
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "sweep@example.com".into(),
            password: Some(NEW_PASSWORD.into()),
            jwt: Some(proto::JwtInput {
                token: token.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let stale = admin
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "sweep@example.com".into(),
            password: Some(NEW_PASSWORD.into()),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let mut intruder = client(addr, BAD_TOKEN).await;
    let refused = intruder
        .create_account(pixverse("intruder@example.com", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    admin
        .delete_account(proto::DeleteAccountRequest {
            provider: "pixverse".into(),
            email: "keyed@example.com".into(),
            expected_version: None,
        })
        .await
        .unwrap();
    // Refresh: a login that works, one refused for its password, one for its user.
    let logged_in = admin
        .create_account(pixverse("upstream@example.com", UPSTREAM_PASSWORD))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(logged_in.jwt.map(|j| j.generation), Some(1));
    admin
        .refresh_account(proto::RefreshAccountRequest {
            provider: "pixverse".into(),
            email: "upstream@example.com".into(),
            force: true,
        })
        .await
        .unwrap();
    let upstream_token = fake
        .live_session("upstream@example.com")
        .expect("logged in upstream");
    let _ = admin
        .create_account(pixverse("upstream2@example.com", UPSTREAM_PASSWORD))
        .await;
    admin
        .update_account(proto::UpdateAccountRequest {
            provider: "pixverse".into(),
            email: "upstream@example.com".into(),
            password: Some("wrong-upstream-password".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = admin
        .refresh_account(proto::RefreshAccountRequest {
            provider: "pixverse".into(),
            email: "upstream@example.com".into(),
            force: true,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    // The other three adapters: a Basic-auth session, a JWT rotation, an API key.
    let media = admin
        .create_account(proto::CreateAccountRequest {
            provider: "media".into(),
            ..pixverse("media@example.com", UPSTREAM_PASSWORD)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(media.jwt.map(|j| j.generation), Some(1));
    admin
        .create_account(proto::CreateAccountRequest {
            provider: "eandb".into(),
            jwt: Some(proto::JwtInput {
                token: seeded_jwt.clone(),
                ..Default::default()
            }),
            ..pixverse("eandb@example.com", UPSTREAM_PASSWORD)
        })
        .await
        .unwrap();
    let rotated = admin
        .refresh_account(proto::RefreshAccountRequest {
            provider: "eandb".into(),
            email: "eandb@example.com".into(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.jwt.map(|j| j.generation), Some(2));
    let keyed = admin
        .create_account(proto::CreateAccountRequest {
            provider: "credits".into(),
            email: "credits@example.com".into(),
            api_key: UPSTREAM_API_KEY.into(),
            secret: UPSTREAM_KEY_SECRET.into(),
            max_jobs: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keyed.credits.map(|c| c.remaining), Some(10));
    let mut upstream_tokens = fake.live_jwts("eandb@example.com");
    upstream_tokens.push(seeded_jwt);
    drop((admin, intruder));

    // Callers: every credential kind, and its failures.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let callers = |auth: support::Auth| {
        proto::callers_client::CallersClient::with_interceptor(channel.clone(), auth)
    };
    let created = callers(support::Auth::admin())
        .create_caller(proto::CreateCallerRequest {
            email: "svc@example.com".into(),
            secret: CLIENT_SECRET.into(),
            scopes: vec!["pixverse".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let with_key = support::Auth::api_key(&created.api_key, CLIENT_SECRET);
    callers(with_key.clone())
        .activate_caller(proto::ActivateCallerRequest {})
        .await
        .unwrap();
    let jwt = callers(with_key.clone())
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jwt;
    let session = callers(support::Auth::basic("svc@example.com", CLIENT_SECRET))
        .create_session(proto::CreateSessionRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwt;
    callers(support::Auth::bearer(&session))
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap();
    let revealed = proto::credentials_client::CredentialsClient::with_interceptor(
        channel.clone(),
        support::Auth::bearer(&jwt),
    )
    .reveal_account(proto::RevealAccountRequest {
        provider: "pixverse".into(),
        email: "sweep@example.com".into(),
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(revealed.password, NEW_PASSWORD);
    callers(support::Auth::bearer(&jwt))
        .revoke_token(proto::RevokeTokenRequest {
            jwt: jwt.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    for auth in [
        support::Auth::bearer(&jwt),
        support::Auth::api_key(&created.api_key, BAD_TOKEN),
        support::Auth::basic("svc@example.com", BAD_TOKEN),
    ] {
        assert!(
            callers(auth)
                .get_caller_info(proto::GetCallerInfoRequest {})
                .await
                .is_err()
        );
    }
    // The edge's refusals, each carrying secrets; their messages are swept too.
    let mut refusals = Vec::new();
    let mut accounts_admin = proto::accounts_client::AccountsClient::with_interceptor(
        channel.clone(),
        support::Auth::admin(),
    );
    let edge_failures = [
        // Past the request size limit, the secrets in a label.
        proto::CreateAccountRequest {
            labels: [(
                "note".to_owned(),
                format!("{PASSWORD}{}", "x".repeat(1 << 20)),
            )]
            .into(),
            ..pixverse("big@example.com", PASSWORD)
        },
        // An overlong password, and one with a control character.
        pixverse(
            "long@example.com",
            &format!("{PASSWORD}{}", "y".repeat(5000)),
        ),
        pixverse("ctl2@example.com", &format!("{NEW_PASSWORD}\u{7f}")),
        // Secrets beside a refused field.
        proto::CreateAccountRequest {
            api_key: API_KEY.into(),
            secret: CLIENT_SECRET.into(),
            max_jobs: 0,
            ..pixverse("bad address", "")
        },
    ];
    for failing in edge_failures {
        let status = accounts_admin.create_account(failing).await.unwrap_err();
        refusals.push(status.message().to_owned());
    }
    // Values are echoed only in part (64 characters): what follows is never shown.
    for scope in [
        format!("pixverse/{}\n{CLIENT_SECRET}", "p".repeat(70)),
        "x".repeat(400) + CLIENT_SECRET,
    ] {
        let status = callers(support::Auth::admin())
            .update_caller(proto::UpdateCallerRequest {
                caller_id: created.caller_id.clone(),
                set_scopes: true,
                scopes: vec![scope],
                ..Default::default()
            })
            .await
            .unwrap_err();
        refusals.push(status.message().to_owned());
    }
    let status = callers(support::Auth::admin())
        .revoke_token(proto::RevokeTokenRequest {
            jwt: format!("{BAD_TOKEN}\u{1}"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refusals.push(status.message().to_owned());
    assert!(refusals.iter().all(|m| !m.is_empty()));
    // The audit RPCs, one of them carrying a secret; then the trail and the metrics.
    let mut audit =
        proto::audit_client::AuditClient::with_interceptor(channel.clone(), support::Auth::admin());
    let looked_up = audit
        .audit_hash(proto::AuditHashRequest {
            value: NEW_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        looked_up.events >= 1,
        "the reveal of NEW_PASSWORD is in the trail"
    );
    let trail = audit
        .list_events(proto::ListEventsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(trail.events.len() > 20, "the run left its trail");
    let serving = daemon.wait_for_line("credvault serving");
    let metrics_addr: String = serving
        .split("\"metrics\":\"")
        .nth(1)
        .expect("the serving line names the metrics listener")
        .chars()
        .take_while(|c| *c != '"')
        .collect();
    credvault::refresh::providers::install_crypto_provider();
    let metrics_page = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics_page.contains("credvault_rpc_requests_total"));
    drop(channel);

    let status = daemon.terminate();
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status:?}; the log ends: {}",
        tail(&daemon.output())
    );
    let log = daemon.output();
    // Everything an operator can see: the log, the audit trail, the metrics, the store.
    let mut on_disk = String::new();
    for entry in walk(&data) {
        on_disk.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    let output = format!(
        "{log}\n{:?}\n{metrics_page}\n{on_disk}\n{}",
        trail.events,
        refusals.join("\n")
    );
    assert!(output.contains("stopped; store flushed"), "{output}");
    assert!(
        !output.contains("grace period over"),
        "idle connections close at once: {output}"
    );
    assert!(
        output.contains("authentication failed"),
        "auth failures are logged"
    );
    assert!(
        output.contains("\"level\":\"TRACE\""),
        "trace logging was on"
    );
    assert!(output.contains("account revealed"), "reveals are logged");
    // The refused login names its account by tag (never the email), and span fields
    // are plain JSON strings, not quoted twice.
    let refused_login = log
        .lines()
        .find(|line| line.contains("login refused; the account needs attention"))
        .expect("the refused login is logged");
    let tag: String = refused_login
        .split("\"email\":\"")
        .nth(1)
        .map(|rest| rest.chars().take_while(|c| *c != '"').collect())
        .unwrap_or_default();
    assert!(
        tag.len() == 16 && tag.chars().all(|c| c.is_ascii_hexdigit()),
        "{refused_login}"
    );
    assert!(!refused_login.contains("@example.com"), "{refused_login}");
    assert!(
        log.contains(r#""provider":"pixverse""#) && !log.contains(r#"\"pixverse\""#),
        "span fields quoted once"
    );
    assert!(
        output.contains("\"target\":\"audit\"") && output.contains("\"node\":\"sweep-node\""),
        "audit events are log lines, tagged with the node"
    );
    let api_key = created.api_key.as_str();
    // `cvk_<key id>_<secret>`; the secret (base64url) may itself hold underscores.
    let key_secret_part = api_key.splitn(3, '_').nth(2).unwrap();
    let secrets = [
        PASSWORD,
        NEW_PASSWORD,
        API_KEY,
        CLIENT_SECRET,
        BAD_TOKEN,
        ADMIN_TOKEN,
        token.as_str(),
        "LOGSWEEP-JWT-SIGNATURE",
        api_key,
        key_secret_part,
        jwt.as_str(),
        jwt.rsplit('.').next().unwrap(),
        session.as_str(),
        UPSTREAM_PASSWORD,
        "wrong-upstream-password",
        upstream_token.as_str(),
        upstream_token.rsplit('.').next().unwrap(),
        UPSTREAM_API_KEY,
        UPSTREAM_KEY_SECRET,
    ];
    use base64::Engine;
    for secret in secrets {
        let forms = [
            secret.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(secret),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
            secret.bytes().map(|b| format!("{b:02x}")).collect(),
        ];
        for form in forms {
            assert!(!output.contains(&form), "{secret} leaked (as {form})");
        }
    }
    for token in &upstream_tokens {
        assert!(
            !output.contains(token.rsplit('.').next().unwrap()),
            "an upstream JWT leaked into the log"
        );
    }
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("media@example.com:{UPSTREAM_PASSWORD}"));
    assert!(
        !output.contains(&basic),
        "a Basic credential leaked into the log"
    );
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(
        !output.contains(key.trim()),
        "the master key leaked into the log"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_one_admin_token_and_keeps_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev-data");
    let args = [
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];

    let mut daemon = Daemon::spawn(&args, &[]);
    let addr = daemon.wait_for_addr();
    // The token goes to stdout and the serving line to stderr: two pipes, two reader
    // threads, no order between them. Wait for the token line itself.
    let token = daemon
        .wait_for_line("admin token: ")
        .trim_start_matches("admin token: ")
        .to_owned();
    let output = daemon.output();
    assert!(output.contains("DEVELOPMENT MODE"), "{output}");
    assert!(token.len() >= 32);
    let key_file = data.join("dev-master.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut admin = client(addr, &token).await;
    admin
        .create_account(pixverse("dev@example.com", PASSWORD))
        .await
        .unwrap();
    drop(admin);
    assert!(daemon.terminate().success());
    // Exited, so both readers hold everything it wrote: exactly one token line.
    let output = daemon.output();
    let token_lines = output
        .lines()
        .filter(|l| l.starts_with("admin token: "))
        .count();
    assert_eq!(token_lines, 1, "{output}");

    // A second start reuses the key file (the data still opens) with a new token.
    let mut daemon = Daemon::spawn(&args, &[]);
    let addr = daemon.wait_for_addr();
    let second = daemon
        .wait_for_line("admin token: ")
        .trim_start_matches("admin token: ")
        .to_owned();
    assert_ne!(second, token);
    let mut old = client(addr, &token).await;
    let refused = old
        .get_account(proto::GetAccountRequest {
            provider: "pixverse".into(),
            email: "dev@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut admin = client(addr, &second).await;
    let account = admin
        .get_account(proto::GetAccountRequest {
            provider: "pixverse".into(),
            email: "dev@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.password, "…secured…");
    drop((old, admin));
    assert!(daemon.terminate().success());
}

#[test]
fn a_wrong_master_key_exits_64_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let first = write_key_file(dir.path());
    let mut daemon = Daemon::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_arg,
            "--master-key-file",
            first.to_str().unwrap(),
        ],
        &[("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    daemon.wait_for_addr();
    assert!(daemon.terminate().success());

    let other = dir.path().join("other.key");
    std::fs::write(&other, support::new_key()).unwrap();
    let mut daemon = Daemon::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_arg,
            "--master-key-file",
            other.to_str().unwrap(),
        ],
        &[("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let status = daemon.wait();
    assert_eq!(status.code(), Some(64));
    assert!(
        daemon.output().contains(&format!(
            "credvault: refusing to start: the master key does not match the data in {data_arg} (key check failed)"
        )),
        "{}",
        daemon.output()
    );
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credvault"));
    command
        .args(args)
        .env_remove("CREDVAULT_MASTER_KEY")
        .env_remove("CREDVAULT_ADMIN_TOKEN");
    for (key, value) in envs {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Arguments, environment, and what stderr must say.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn bad_configuration_exits_64_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let key = support::new_key();
    let good_env = [
        ("CREDVAULT_MASTER_KEY", key.as_str()),
        ("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "listen = \"127.0.0.1:0\"\nlisten_port = 5\n").unwrap();
    let bad_provider = dir.path().join("provider.toml");
    std::fs::write(
        &bad_provider,
        "[providers.media]\nkind = \"basic-session\"\nmin_jobs = 5\nmax_jobs = 2\n",
    )
    .unwrap();
    let bad_toml = bad_toml.to_str().unwrap();
    let bad_provider = bad_provider.to_str().unwrap();

    let cases: Vec<Case> = vec![
        (
            vec!["serve", "--data-dir", data, "--listen", "nonsense"],
            good_env.to_vec(),
            "configuration error: listen: \"nonsense\" is not an address",
        ),
        (
            vec!["serve", "--data-dir", data],
            vec![("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN)],
            "configuration error: no master key",
        ),
        (
            vec!["serve", "--data-dir", data],
            vec![("CREDVAULT_MASTER_KEY", "c2hvcnQ=")],
            "master key from CREDVAULT_MASTER_KEY: the master key must be 32 bytes",
        ),
        (
            vec!["serve", "--data-dir", data],
            vec![("CREDVAULT_MASTER_KEY", key.as_str())],
            "configuration error: no admin token",
        ),
        (
            vec!["serve", "--data-dir", data],
            vec![
                ("CREDVAULT_MASTER_KEY", key.as_str()),
                ("CREDVAULT_ADMIN_TOKEN", "tooshort"),
            ],
            "the admin token must be at least 32 characters",
        ),
        (
            vec!["serve", "--data-dir", data, "--config", bad_toml],
            good_env.to_vec(),
            "unknown key \"listen_port\" in ",
        ),
        (
            vec!["serve", "--data-dir", data, "--config", bad_provider],
            good_env.to_vec(),
            "provider \"media\": max_jobs range 5..=2 is empty",
        ),
        (
            vec!["serve", "--config", "/nonexistent/credvault.toml"],
            good_env.to_vec(),
            "config file /nonexistent/credvault.toml does not exist",
        ),
        (
            vec![
                "serve",
                "--master-key-file",
                "/nonexistent/key",
                "--data-dir",
                data,
            ],
            vec![("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN)],
            "reading master key file /nonexistent/key",
        ),
        (
            vec!["serve", "--no-such-flag"],
            vec![],
            "unexpected argument '--no-such-flag'",
        ),
    ];
    for (args, envs, expected) in cases {
        let (code, stderr) = run(&args, &envs);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains(&key), "the key is never echoed");
    }
}

#[test]
fn keygen_prints_a_fresh_valid_key() {
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let out = Command::new(env!("CARGO_BIN_EXE_credvault"))
                .arg("keygen")
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    assert_ne!(keys[0], keys[1]);
    for key in &keys {
        credvault::crypto::MasterKey::from_base64(key)
            .expect("keygen output is a valid master key");
    }
}

#[test]
fn the_example_config_in_deploy_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/credvault.example.toml");
    let config =
        credvault::config::Config::load(Some(std::path::Path::new(example)), Default::default())
            .expect("the example parses");
    assert_eq!(config.listen, "127.0.0.1:50051");
    assert_eq!(config.providers["pixverse"].max_jobs, Some(8));
    let providers = credvault::providers::Providers::new(config.providers.clone())
        .expect("every provider in the example resolves");
    assert_eq!(providers.get("dataapi").unwrap().max_jobs, 50);
    assert_eq!(
        providers.get("media").unwrap().session_lifetime_secs,
        Some(3600)
    );
    assert_eq!(config.log_format, credvault::config::LogFormat::Json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_signing_key_runs_offline_and_keeps_old_tokens_valid() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_key_file(dir.path());
    let data = dir.path().join("data");
    let offline = [
        "rotate-signing-key",
        "--data-dir",
        data.to_str().unwrap(),
        "--master-key-file",
        key_file.to_str().unwrap(),
    ];
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--master-key-file",
        key_file.to_str().unwrap(),
    ];
    let env = [("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN)];
    let mut daemon = Daemon::spawn(&serve, &env);
    let addr = daemon.wait_for_addr();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin =
        proto::callers_client::CallersClient::with_interceptor(channel, support::Auth::admin());
    let old = admin
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jwt;
    drop(admin);

    // Not while the daemon holds the data directory.
    let (code, stderr) = run(&offline, &env);
    // EX_TEMPFAIL: try again once the daemon is stopped.
    assert_eq!(code, Some(75), "{stderr}");
    assert!(
        stderr.contains("is in use by another credvault process: stop the daemon first"),
        "{stderr}"
    );
    assert!(daemon.terminate().success());

    let out = Command::new(env!("CARGO_BIN_EXE_credvault"))
        .args(offline)
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("is now current; tokens signed by earlier keys stay valid until they expire"),
        "{stdout}"
    );

    let mut daemon = Daemon::spawn(&serve, &env);
    let addr = daemon.wait_for_addr();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut with_old = proto::callers_client::CallersClient::with_interceptor(
        channel.clone(),
        support::Auth::bearer(&old),
    );
    with_old
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .expect("the old token still works");
    let mut admin =
        proto::callers_client::CallersClient::with_interceptor(channel, support::Auth::admin());
    let new = admin
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jwt;
    let kid = |jwt: &str| jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
    assert_ne!(kid(&old), kid(&new), "new tokens are signed by the new key");
    drop((with_old, admin));
    assert!(daemon.terminate().success());
}

/// The last lines of a daemon's output, for a failure message.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Every flag of every command says what it is, and `serve --help` names the
/// environment variables.
#[test]
fn help_explains_every_flag_and_serve_names_the_environment() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_credvault"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for command in [
        "serve",
        "backup",
        "restore",
        "migrate",
        "rotate-key",
        "rotate-signing-key",
    ] {
        let text = help(&[command]);
        for line in text.lines().filter(|l| l.trim_start().starts_with("--")) {
            let (flag, explained) = line.trim_start().split_once("  ").unwrap_or((line, ""));
            assert!(
                !explained.trim().is_empty(),
                "{command} {flag} has no help: {text}"
            );
        }
    }
    let serve = help(&["serve"]);
    for variable in [
        "CREDVAULT_DATA_DIR",
        "CREDVAULT_MASTER_KEY_FILE",
        "CREDVAULT_STORE__BACKEND",
        "CREDVAULT_REFLECTION",
    ] {
        assert!(serve.contains(variable), "{variable} in {serve}");
    }
}

/// A failed start or command writes nothing: a refused configuration or a busy port
/// leaves no data directory and no `--dev` key; `keygen` writes owner-only files,
/// printed into a redirect too.
#[test]
fn failed_starts_leave_nothing_and_keys_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let (code, stderr) = run(
        &["serve", "--dev", "--data-dir", data_arg],
        &[("CREDVAULT_ADMIN_TOKEN", "tooshort")],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(!data.exists(), "a refused configuration made {data_arg}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, stderr) = run(
        &["serve", "--dev", "--data-dir", data_arg, "--listen", &addr],
        &[],
    );
    assert_eq!(code, Some(75), "EX_TEMPFAIL for a busy port: {stderr}");
    assert!(
        stderr.contains(&format!("binding {addr}: ")),
        "the refusal names the port: {stderr}"
    );
    assert!(!data.exists(), "a busy port made {data_arg}");
    // The probe and metrics ports likewise, each named as what it is.
    for (variable, named) in [
        ("CREDVAULT_HEALTH_LISTEN", "health listener"),
        ("CREDVAULT_METRICS_LISTEN", "metrics listener"),
    ] {
        let (code, stderr) = run(
            &[
                "serve",
                "--dev",
                "--data-dir",
                data_arg,
                "--listen",
                "127.0.0.1:0",
            ],
            &[(variable, addr.as_str())],
        );
        assert_eq!(code, Some(75), "a busy {named}: {stderr}");
        assert!(
            stderr.contains(&format!("binding {named} {addr}: ")),
            "the refusal names the {named}: {stderr}"
        );
        assert!(!data.exists(), "a busy {named} made {data_arg}");
    }

    let out = dir.path().join("out.key");
    let (code, stderr) = run(&["keygen", "--out", out.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o600);
    let (code, stderr) = run(&["keygen", "--out", out.to_str().unwrap()], &[]);
    assert_eq!(code, Some(73), "never over an existing file: {stderr}");
    let redirected = dir.path().join("redirected.key");
    let file = std::fs::File::create(&redirected).unwrap();
    std::fs::set_permissions(&redirected, std::fs::Permissions::from_mode(0o644)).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_credvault"))
        .arg("keygen")
        .stdout(file)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(mode(&redirected), 0o600);
    assert_eq!(
        std::fs::read_to_string(&redirected).unwrap().trim().len(),
        44
    );
}

/// `--dev` through an online master-key rotation: RotateMasterKey answers RUNNING (or
/// already DONE), the key file beside the data holds the new key once it is done, and
/// the next `serve --dev`, `backup --dev` and `rotate-signing-key --dev` all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_follows_an_online_master_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let serve = [
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_arg,
    ];
    let start = || {
        let daemon = Daemon::spawn(&serve, &[]);
        let addr = daemon.wait_for_addr();
        let token = daemon
            .wait_for_line("admin token: ")
            .trim_start_matches("admin token: ")
            .to_owned();
        (daemon, addr, token)
    };
    let (mut daemon, addr, token) = start();
    client(addr, &token)
        .await
        .create_account(pixverse("dev@example.com", PASSWORD))
        .await
        .unwrap();
    let new_key = dir.path().join("new.key");
    let (code, stderr) = run(&["keygen", "--out", new_key.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut keys =
        proto::keys_client::KeysClient::with_interceptor(channel, Bearer(Some(token.clone())));
    let started = keys
        .rotate_master_key(proto::RotateMasterKeyRequest {
            new_key_file: new_key.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    use proto::key_rotation::Phase;
    assert!(
        [Phase::Running as i32, Phase::Done as i32].contains(&started.phase),
        "{started:?}"
    );
    let done = support::eventually(std::time::Duration::from_secs(10), async || {
        let status = keys
            .rotation_status(proto::RotationStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        status.phase == Phase::Done as i32
    })
    .await;
    assert!(done, "the rotation finishes");
    let status = keys
        .rotation_status(proto::RotationStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.records_examined >= status.records_resealed && status.records_resealed > 0);
    let dev_key = data.join("dev-master.key");
    assert_eq!(
        std::fs::read_to_string(&dev_key).unwrap().trim(),
        std::fs::read_to_string(&new_key).unwrap().trim()
    );
    assert!(!data.join("dev-master.previous.key").exists());
    drop(keys);
    assert!(daemon.terminate().success());

    let backup = dir.path().join("dev.backup");
    for offline in [
        vec![
            "backup",
            "--dev",
            "--data-dir",
            data_arg,
            "--out",
            backup.to_str().unwrap(),
        ],
        vec!["rotate-signing-key", "--dev", "--data-dir", data_arg],
    ] {
        let (code, stderr) = run(&offline, &[]);
        assert_eq!(code, Some(0), "{offline:?}: {stderr}");
    }
    let (mut daemon, addr, token) = start();
    let account = client(addr, &token)
        .await
        .get_account(proto::GetAccountRequest {
            provider: "pixverse".into(),
            email: "dev@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.email, "dev@example.com");
    assert!(daemon.terminate().success());
}
