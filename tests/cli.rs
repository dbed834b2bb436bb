//! The `credvault` client commands, end to end: the binary as a daemon (`serve --dev`,
//! TCP and a Unix socket) and the binary again as its client, the credential from the
//! environment. Tables for people, `-o json` equal to what grpcurl prints, refusals
//! with their ErrorInfo decoded, and the exit codes: 0 done, 1 refused, 64 usage, 69
//! unreachable.

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use support::Daemon;

const PASSWORD: &str = "cli-upstream-password-1";
const SECRET: &str = "cli-client-secret-0123456789abcdef-0123456789";

struct Cli<'a> {
    addr: String,
    envs: Vec<(&'a str, String)>,
}

impl Cli<'_> {
    /// Runs `credvault ARGS` against the daemon; answers the exit code and what it
    /// printed on stdout and on stderr.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_credvault"))
            .args(args)
            .env_remove("CREDVAULT_TOKEN")
            .env_remove("CREDVAULT_API_KEY")
            .env_remove("CREDVAULT_SECRET")
            .env("CREDVAULT_ADDR", &self.addr)
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    }
}

/// `serve --dev` on a free port in `dir` (with `extra` flags); the daemon, its address
/// and its admin token.
fn dev_daemon(dir: &Path, extra: &[&str]) -> (Daemon, std::net::SocketAddr, String) {
    let data = dir.join("data");
    let mut args = vec!["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"];
    args.push(data.to_str().unwrap());
    args.extend_from_slice(extra);
    let daemon = Daemon::spawn(&args, &[]);
    let addr = daemon.wait_for_addr();
    let token = daemon
        .wait_for_line("admin token: ")
        .trim_start_matches("admin token: ")
        .to_owned();
    (daemon, addr, token)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_client_commands_work_against_a_live_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("credvault.sock");
    let (mut daemon, addr, token) = dev_daemon(dir.path(), &["--socket", socket.to_str().unwrap()]);
    let admin = Cli {
        addr: format!("http://{addr}"),
        envs: vec![("CREDVAULT_TOKEN", token.clone()), ("PW", PASSWORD.into())],
    };

    let health = admin.ok(&["health"]);
    assert!(health.contains("status: SERVING"), "{health}");

    // An account, its password from an environment variable named on the line.
    let jwt = write(
        dir.path(),
        "jwt",
        &support::upstream_jwt(1_900_000_000, "cli"),
    );
    let created = admin.ok(&[
        "accounts",
        "create",
        "pixverse",
        "cli@example.com",
        "--password-env",
        "PW",
        "--max-jobs",
        "1",
        "--jwt-file",
        &jwt,
    ]);
    assert!(created.contains("password: …secured…"), "{created}");
    assert!(!created.contains(PASSWORD));
    let listed = admin.ok(&["accounts", "list"]);
    let header = listed.lines().next().unwrap();
    assert!(header.starts_with("PROVIDER  EMAIL"), "{listed}");
    assert!(listed.contains("cli@example.com"), "{listed}");

    // -o json is what grpcurl prints for the same call.
    let as_json: serde_json::Value =
        serde_json::from_str(&admin.ok(&["accounts", "list", "-o", "json"])).unwrap();
    let grpcurl = Command::new(support::grpcurl())
        .args([
            "-plaintext",
            "-H",
            &format!("authorization: Bearer {token}"),
        ])
        .args([
            "-d",
            "{}",
            &addr.to_string(),
            "credvault.v1.Accounts/ListAccounts",
        ])
        .output()
        .unwrap();
    assert!(grpcurl.status.success());
    let by_grpcurl: serde_json::Value = serde_json::from_slice(&grpcurl.stdout).unwrap();
    assert_eq!(as_json, by_grpcurl);

    // A lease, then every slot busy: refused (exit 1) with the ErrorInfo decoded.
    let lease: serde_json::Value = serde_json::from_str(
        &admin.ok(&["leases", "acquire", "pixverse", "--ttl", "5m", "-o", "json"]),
    )
    .unwrap();
    let lease_id = lease["leaseId"].as_str().unwrap().to_owned();
    let (code, _, refused) = admin.run(&["leases", "acquire", "pixverse"]);
    assert_eq!(code, 1, "{refused}");
    for shown in [
        "ResourceExhausted",
        "reason: ALL_SLOTS_BUSY",
        "retry_after_secs: ",
        "(retry after ",
    ] {
        assert!(refused.contains(shown), "{shown} in {refused}");
    }
    let leases = admin.ok(&["leases", "list"]);
    assert!(
        leases.contains(&lease_id) && leases.starts_with("LEASEID"),
        "{leases}"
    );
    admin.ok(&["leases", "renew", &lease_id, "--ttl", "10m"]);
    admin.ok(&["leases", "release", &lease_id]);
    let revealed = admin.ok(&["reveal", "pixverse", "cli@example.com"]);
    assert!(
        revealed.contains(&format!("password: {PASSWORD}")),
        "{revealed}"
    );

    // A caller made by the admin, then acting with its own key and secret.
    let secret_file = write(dir.path(), "secret", SECRET);
    let made: serde_json::Value = serde_json::from_str(&admin.ok(&[
        "callers",
        "create",
        "svc@example.com",
        "--secret-file",
        &secret_file,
        "--scope",
        "pixverse",
        "-o",
        "json",
    ]))
    .unwrap();
    let service = Cli {
        addr: format!("http://{addr}"),
        envs: vec![
            (
                "CREDVAULT_API_KEY",
                made["apiKey"].as_str().unwrap().to_owned(),
            ),
            ("CREDVAULT_SECRET", SECRET.to_owned()),
        ],
    };
    service.ok(&["callers", "activate"]);
    let whoami = service.ok(&["callers", "whoami"]);
    assert!(
        whoami.contains("email: svc@example.com") && whoami.contains("keys.0.keyId: "),
        "{whoami}"
    );
    let callers = admin.ok(&["callers", "list", "--role", "consumer"]);
    assert!(callers.contains("svc@example.com"), "{callers}");
    let status = admin.ok(&["keys", "status"]);
    assert!(status.contains("phase: PHASE_IDLE"), "{status}");
    // An online rotation, followed to its end (the key file is on the daemon's host).
    let next = dir.path().join("next.key");
    let (code, _, err) = admin.run(&["keys", "rotate", "--new-key-file", next.to_str().unwrap()]);
    assert_eq!(code, 1, "no such key file yet: {err}");
    assert!(err.contains("InvalidArgument: cannot read"), "{err}");
    let (code, _, err) = admin.run(&["keygen", "--out", next.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rotated = admin.ok(&["keys", "rotate", "--new-key-file", next.to_str().unwrap()]);
    assert!(rotated.contains("phase: PHASE_DONE"), "{rotated}");
    assert!(admin.ok(&["accounts", "list"]).contains("cli@example.com"));

    // The watch prints events as they happen and ends cleanly on Ctrl-C.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_credvault"))
        .args(["watch", "--provider", "pixverse"])
        .env("CREDVAULT_ADDR", format!("http://{addr}"))
        .env("CREDVAULT_TOKEN", &token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The watch may subscribe a moment after it starts: the account is disabled (and
    // enabled again) until the watch prints the disable, within a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut heard = false;
    while !heard && std::time::Instant::now() < deadline {
        admin.ok(&[
            "accounts",
            "update",
            "pixverse",
            "cli@example.com",
            "--disabled",
            "true",
        ]);
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
            if line.contains("kind: ACCOUNT_DISABLED") {
                heard = true;
                break;
            }
        }
        admin.ok(&[
            "accounts",
            "update",
            "pixverse",
            "cli@example.com",
            "--disabled",
            "false",
        ]);
    }
    assert!(heard, "the watch printed the disable");
    let pid = watch.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        watch.wait().unwrap().success(),
        "Ctrl-C ends the watch cleanly"
    );

    // The Unix socket, usage errors and an unreachable daemon.
    let listed = admin.ok(&["accounts", "list", "--socket", socket.to_str().unwrap()]);
    assert!(listed.contains("cli@example.com"));
    for usage in [
        vec!["leases", "acquire", "pixverse", "--ttl", "5x"],
        vec!["accounts", "get", "pixverse"],
        vec!["callers", "list", "--role", "boss"],
    ] {
        let (code, _, err) = admin.run(&usage);
        assert_eq!(code, 64, "{usage:?}: {err}");
    }
    let nowhere = Cli {
        addr: "http://127.0.0.1:1".into(),
        envs: vec![("CREDVAULT_TOKEN", token.clone())],
    };
    let (code, _, err) = nowhere.run(&["accounts", "list"]);
    assert_eq!(code, 69, "{err}");
    let completion = admin.ok(&["completion", "bash"]);
    assert!(completion.contains("credvault") && completion.contains("leases"));
    assert!(daemon.terminate().success());
}

/// The README's client walk-through, pasted as it is (the token line is the reader's
/// to fill in: the test sets CREDVAULT_TOKEN, and CREDVAULT_ADDR to its daemon).
#[test]
fn the_readme_cli_walkthrough_works_when_pasted() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- cli-walkthrough -->").unwrap();
    let end = readme.find("<!-- /cli-walkthrough -->").unwrap();
    let script: String = readme[start..end]
        .lines()
        .skip_while(|line| !line.starts_with("```bash"))
        .skip(1)
        .take_while(|line| !line.starts_with("```"))
        .filter(|line| !line.starts_with("export CREDVAULT_TOKEN="))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(script.contains("credvault leases acquire"), "{script}");
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, addr, token) = dev_daemon(dir.path(), &[]);
    let bin = Path::new(env!("CARGO_BIN_EXE_credvault")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("CREDVAULT_TOKEN", &token)
        .env("CREDVAULT_ADDR", format!("http://{addr}"))
        .output()
        .unwrap();
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{printed}");
    for shown in [
        "status: SERVING",
        "jobs@example.com",
        "password: s3cret-pass",
        "phase: PHASE_IDLE",
        "LEASEID",
    ] {
        assert!(printed.contains(shown), "{shown} in {printed}");
    }
    assert!(daemon.terminate().success());
}

/// A pool brought in bulk: JSON Lines and CSV imported (a report per line, no secret
/// printed, exit 1 when a line fails and the others imported), a dry run that writes
/// nothing, existing accounts skipped or, with --upsert, updated; exported without
/// secrets, and with them through audited reveals.
#[test]
fn pools_are_imported_and_exported_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, addr, token) = dev_daemon(dir.path(), &[]);
    let admin = Cli {
        addr: format!("http://{addr}"),
        envs: vec![("CREDVAULT_TOKEN", token)],
    };
    let jwt = support::upstream_jwt(1_900_000_000, "bulk");
    let mut jsonl: String = (0..20)
        .map(|n| {
            format!(
                "{{\"provider\":\"pixverse\",\"email\":\"bulk{n:02}@example.com\",\"password\":\"bulk-pw-{n:02}\",\"maxJobs\":2,\"jwt\":{{\"token\":\"{jwt}\"}}}}\n"
            )
        })
        .collect();
    jsonl.push_str(
        "{\"provider\":\"pixverse\",\"email\":\"not-an-email\",\"password\":\"bulk-pw-x\"}\n",
    );
    let jsonl_file = write(dir.path(), "pool.jsonl", &jsonl);
    let csv = format!(
        "provider,email,password,maxJobs,jwt\n{}",
        (0..5)
            .map(|n| format!("pixverse,csv{n}@example.com,\"csv,pw-{n}\",1,{jwt}\n"))
            .collect::<String>()
    );
    let csv_file = write(dir.path(), "pool.csv", &csv);

    let (code, out, err) = admin.run(&["accounts", "import", &jsonl_file, "--dry-run"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("line 1: would be created: pixverse/bulk00@example.com")
            && out
                .contains("20 created, 0 updated, 0 skipped, 1 refused (dry run: nothing written)"),
        "{out}"
    );
    assert!(
        admin.ok(&["accounts", "list"]).contains("(none)"),
        "a dry run writes nothing"
    );

    let (code, out, err) = admin.run(&["accounts", "import", &jsonl_file]);
    assert_eq!(code, 1, "one line refused: {out}{err}");
    assert!(
        out.contains("20 created, 0 updated, 0 skipped, 1 refused"),
        "{out}"
    );
    assert!(
        out.contains("line 21: refused: pixverse/not-an-email: InvalidArgument"),
        "{out}"
    );
    let imported = admin.ok(&["accounts", "import", &csv_file]);
    assert!(imported.contains("5 created"), "{imported}");
    for shown in [&out, &err, &imported] {
        assert!(
            !shown.contains("bulk-pw-") && !shown.contains("csv,pw-"),
            "{shown}"
        );
    }
    let again = admin.ok(&["accounts", "import", &csv_file]);
    assert!(again.contains("0 created, 0 updated, 5 skipped"), "{again}");
    let raised = write(
        dir.path(),
        "raise.csv",
        "provider,email,maxJobs\npixverse,csv0@example.com,7\n",
    );
    let upserted = admin.ok(&["accounts", "import", &raised, "--upsert"]);
    assert!(
        upserted.contains("line 2: updated: pixverse/csv0@example.com"),
        "{upserted}"
    );
    let csv0 = admin.ok(&["accounts", "get", "pixverse", "csv0@example.com"]);
    assert!(csv0.contains("maxJobs: 7"), "{csv0}");

    // Exported without secrets, and with them (the output is a pipe here).
    let masked = admin.ok(&["accounts", "export"]);
    assert_eq!(masked.lines().count(), 25);
    assert!(
        !masked.contains("pw-") && !masked.contains("eyJ"),
        "{masked}"
    );
    let full = admin.ok(&[
        "accounts",
        "export",
        "--with-secrets",
        "--provider",
        "pixverse",
    ]);
    assert!(
        full.contains("\"password\":\"csv,pw-3\"") && full.contains("bulk-pw-19"),
        "{full}"
    );
    // On a terminal (a pty from util-linux's `script`, Debian-essential), refused
    // without --yes, before anything is revealed.
    let bin = env!("CARGO_BIN_EXE_credvault");
    let on_terminal = Command::new("script")
        .args([
            "-qec",
            &format!("{bin} accounts export --with-secrets"),
            "/dev/null",
        ])
        .env("CREDVAULT_ADDR", &admin.addr)
        .env("CREDVAULT_TOKEN", &admin.envs[0].1)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&on_terminal.stdout);
    assert_eq!(on_terminal.status.code(), Some(64), "{said}");
    assert!(
        said.contains("add --yes") && !said.contains("bulk-pw-"),
        "{said}"
    );
    let events = admin.ok(&["audit", "list", "--page-size", "1000", "-o", "json"]);
    let reveals = events
        .matches("credvault.v1.Credentials/RevealAccount")
        .count();
    assert_eq!(reveals, 25, "one audited reveal per exported account");
    assert!(daemon.terminate().success());
}
