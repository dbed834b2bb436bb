//! Secret files read again without a restart, through the real binary: a new admin
//! token takes over on SIGHUP and, without one, when the file changes (the old token
//! stops working at once); a new master key in the key file starts an online rotation
//! after which the new key alone opens the vault.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use support::{Auth, Daemon, proto};
use tonic::{Code, transport::Channel};

const FIRST: &str = "reload-admin-token-first-0123456789abcdef";
const SECOND: &str = "reload-admin-token-second-0123456789abcdef";
const THIRD: &str = "reload-admin-token-third-0123456789abcdef";

fn write_secret(path: &Path, value: &str) {
    // Written beside and renamed into place, as a Secret volume swaps its files.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, value).unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

async fn admin_code(addr: std::net::SocketAddr, token: &str) -> Code {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    match proto::accounts_client::AccountsClient::with_interceptor(channel, Auth::bearer(token))
        .list_accounts(proto::ListAccountsRequest::default())
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn serve(data: &Path, key_file: &Path, token_file: &Path) -> Daemon {
    Daemon::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--master-key-file",
            key_file.to_str().unwrap(),
        ],
        &[("CREDVAULT_ADMIN_TOKEN_FILE", token_file.to_str().unwrap())],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_are_read_again_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    let token_file = dir.path().join("admin.token");
    write_secret(&key_file, &support::new_key());
    write_secret(&token_file, FIRST);
    let data = dir.path().join("data");
    let mut daemon = serve(&data, &key_file, &token_file);
    let addr = daemon.wait_for_addr();
    assert_eq!(admin_code(addr, FIRST).await, Code::Ok);

    // SIGHUP: the new token works, the old one is refused.
    write_secret(&token_file, SECOND);
    let pid = daemon.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    daemon.wait_for_line("SIGHUP: reading the secret files again");
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            admin_code(addr, SECOND).await == Code::Ok
        })
        .await,
        "{}",
        daemon.output()
    );
    assert_eq!(admin_code(addr, FIRST).await, Code::Unauthenticated);

    // No signal: the changed file is noticed on its own.
    write_secret(&token_file, THIRD);
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            admin_code(addr, THIRD).await == Code::Ok
        })
        .await
    );
    assert_eq!(admin_code(addr, SECOND).await, Code::Unauthenticated);

    // A file that holds no usable token keeps the current one.
    write_secret(&token_file, "short");
    daemon.wait_for_line("the admin token file changed but is not usable");
    assert_eq!(admin_code(addr, THIRD).await, Code::Ok);
    write_secret(&token_file, THIRD);

    // A new master key in the key file: an online rotation to it.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    proto::accounts_client::AccountsClient::with_interceptor(channel.clone(), Auth::bearer(THIRD))
        .create_account(proto::CreateAccountRequest {
            jwt: Some(proto::JwtInput {
                token: support::upstream_jwt(1_900_000_000, "reload"),
                ..Default::default()
            }),
            ..support::pixverse("kept@example.com", "pw-kept-123456")
        })
        .await
        .unwrap();
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    write_secret(&key_file, &support::new_key());
    let mut keys = proto::keys_client::KeysClient::with_interceptor(channel, Auth::bearer(THIRD));
    assert!(
        support::eventually(Duration::from_secs(20), async || {
            let status = keys
                .rotation_status(proto::RotationStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            status.phase == proto::key_rotation::Phase::Done as i32
        })
        .await,
        "{}",
        daemon.output()
    );
    assert!(daemon.terminate().success());
    assert!(
        !daemon.output().contains(old_key.trim()),
        "no key in the log"
    );

    // The new key alone opens the vault and every secret.
    let mut daemon = serve(&data, &key_file, &token_file);
    let addr = daemon.wait_for_addr();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let revealed = proto::credentials_client::CredentialsClient::with_interceptor(
        channel,
        Auth::bearer(THIRD),
    )
    .reveal_account(proto::RevealAccountRequest {
        provider: "pixverse".into(),
        email: "kept@example.com".into(),
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(revealed.password, "pw-kept-123456");
    assert!(daemon.terminate().success());
}
