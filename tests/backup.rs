//! Backup and restore through the real binary: a daemon fills a data directory, is
//! stopped, `credvault backup` snapshots it, `credvault restore` rebuilds it in a fresh
//! directory, and a daemon there serves every account and caller. A wrong key, a
//! flipped byte, a non-empty target and an existing output file are refused with a
//! clear message and exit 64.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use support::{ADMIN_TOKEN, Auth, Daemon, proto, upstream_jwt};
use tonic::transport::Channel;

const SECRET: &str = "backup-client-secret-0123456789abcdef-0123456789";
const PASSWORD: &str = "pw-backed-up-123456";

fn key_file(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, support::new_key()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs an offline command; answers its exit code and everything it printed.
fn offline(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_credvault"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("CREDVAULT_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn serve(data: &Path, key: &str) -> (Daemon, std::net::SocketAddr) {
    let daemon = Daemon::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--master-key-file",
            key,
        ],
        &[("CREDVAULT_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let addr = daemon.wait_for_addr();
    (daemon, addr)
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_serves_every_account_and_caller() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "master.key");
    let data = dir.path().join("data");
    let (mut daemon, addr) = serve(&data, &key);

    let mut accounts = proto::accounts_client::AccountsClient::with_interceptor(
        channel(addr).await,
        Auth::admin(),
    );
    for i in 0..20 {
        accounts
            .create_account(proto::CreateAccountRequest {
                max_jobs: 2,
                jwt: Some(proto::JwtInput {
                    token: upstream_jwt(1_900_000_000, &format!("t{i}")),
                    ..Default::default()
                }),
                ..support::pixverse(&format!("user{i}@example.com"), PASSWORD)
            })
            .await
            .unwrap();
    }
    let mut callers =
        proto::callers_client::CallersClient::with_interceptor(channel(addr).await, Auth::admin());
    let created = callers
        .create_caller(proto::CreateCallerRequest {
            email: "svc@example.com".into(),
            secret: SECRET.into(),
            roles: vec![proto::Role::Consumer as i32],
            scopes: vec!["pixverse".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let consumer = Auth::api_key(&created.api_key, SECRET);
    proto::callers_client::CallersClient::with_interceptor(channel(addr).await, consumer.clone())
        .activate_caller(proto::ActivateCallerRequest {})
        .await
        .unwrap();
    assert!(daemon.terminate().success());

    let snapshot = dir.path().join("vault.backup");
    let snapshot_arg = snapshot.to_str().unwrap();
    let (code, out) = offline(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--master-key-file",
        &key,
        "--out",
        snapshot_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("backup written to"), "{out}");
    let bytes = std::fs::read(&snapshot).unwrap();
    assert_eq!(
        std::fs::metadata(&snapshot).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Encrypted through and through: not even the account names show.
    for plain in [
        &b"user1@example.com"[..],
        PASSWORD.as_bytes(),
        b"svc@example.com",
    ] {
        assert!(
            !bytes.windows(plain.len()).any(|w| w == plain),
            "the backup shows {}",
            String::from_utf8_lossy(plain)
        );
    }
    // It is never written over.
    let (code, out) = offline(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--master-key-file",
        &key,
        "--out",
        snapshot_arg,
    ]);
    // EX_CANTCREAT, said before the store is read.
    assert_eq!((code, out.contains("already exists")), (73, true), "{out}");

    let restored = dir.path().join("restored");
    let (code, out) = offline(&[
        "restore",
        "--data-dir",
        restored.to_str().unwrap(),
        "--master-key-file",
        &key,
        "--from",
        snapshot_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(20 accounts)"), "{out}");
    // Restoring again, into what is now a full directory, is refused.
    let (code, out) = offline(&[
        "restore",
        "--data-dir",
        restored.to_str().unwrap(),
        "--master-key-file",
        &key,
        "--from",
        snapshot_arg,
    ]);
    assert_eq!(
        (code, out.contains("already holds a store")),
        (64, true),
        "{out}"
    );

    let (mut daemon, addr) = serve(&restored, &key);
    let mut accounts = proto::accounts_client::AccountsClient::with_interceptor(
        channel(addr).await,
        Auth::admin(),
    );
    let listed = accounts
        .list_accounts(proto::ListAccountsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts.len(), 20);
    // The caller's API key still works, and every secret still decrypts.
    let revealed = proto::credentials_client::CredentialsClient::with_interceptor(
        channel(addr).await,
        consumer,
    )
    .reveal_account(proto::RevealAccountRequest {
        provider: "pixverse".into(),
        email: "user7@example.com".into(),
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(revealed.password, PASSWORD);
    assert_eq!(
        revealed.jwt.unwrap().token,
        upstream_jwt(1_900_000_000, "t7")
    );
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_a_damaged_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "master.key");
    let other_key = key_file(dir.path(), "other.key");
    let data = dir.path().join("data");
    let (mut daemon, addr) = serve(&data, &key);
    proto::accounts_client::AccountsClient::with_interceptor(channel(addr).await, Auth::admin())
        .create_account(proto::CreateAccountRequest {
            jwt: Some(proto::JwtInput {
                token: upstream_jwt(1_900_000_000, "one"),
                ..Default::default()
            }),
            ..support::pixverse("one@example.com", PASSWORD)
        })
        .await
        .unwrap();
    assert!(daemon.terminate().success());
    let snapshot = dir.path().join("vault.backup");
    let (code, out) = offline(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--master-key-file",
        &key,
        "--out",
        snapshot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");

    let restore = |from: &Path, target: &str, key: &str| {
        offline(&[
            "restore",
            "--data-dir",
            dir.path().join(target).to_str().unwrap(),
            "--master-key-file",
            key,
            "--from",
            from.to_str().unwrap(),
        ])
    };
    let (code, out) = restore(&snapshot, "wrong-key", &other_key);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("made with another master key"), "{out}");

    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let flipped = dir.path().join("flipped.backup");
    std::fs::write(&flipped, &bytes).unwrap();
    let (code, out) = restore(&flipped, "flipped", &key);
    // EX_DATAERR: the input file is bad.
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("is damaged"), "{out}");

    let truncated = dir.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..20]).unwrap();
    let (code, out) = restore(&truncated, "truncated", &key);
    assert_eq!(
        (code, out.contains("not a credvault backup")),
        (65, true),
        "{out}"
    );
    // EX_NOINPUT: no such file.
    let (code, out) = restore(&dir.path().join("absent.backup"), "absent", &key);
    assert_eq!(code, 66, "{out}");
    assert!(out.contains("absent.backup"), "{out}");

    // A refused restore leaves nothing behind: not even the data directory.
    for target in ["wrong-key", "flipped", "truncated", "absent"] {
        assert!(
            !dir.path().join(target).exists(),
            "{target} was left behind"
        );
    }
    let (code, out) = restore(&snapshot, "wrong-key-then-right", &other_key);
    assert_eq!(code, 64, "{out}");
    assert!(!dir.path().join("wrong-key-then-right").exists());
    let (code, out) = restore(&snapshot, "wrong-key-then-right", &key);
    assert_eq!(code, 0, "{out}");
}
