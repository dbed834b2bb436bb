//! A damaged store is never served: the daemon binary refuses to start with exit 74
//! (EX_IOERR) and the way out, when sled's log was edited under it, and when the store
//! recovered fewer group commits than were acknowledged (a store rolled back to an
//! older copy of itself). Clean restarts and restores are covered by tests/crash.rs
//! and tests/backup.rs.

mod support;

use std::{net::SocketAddr, path::Path, process::ExitStatus};

use credvault::store::mark;
use support::{ADMIN_TOKEN, Bearer, Daemon, proto};
use tonic::transport::Channel;

const EXIT_DAMAGED: i32 = 74;

async fn create_accounts(addr: SocketAddr, emails: impl IntoIterator<Item = String>) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = proto::accounts_client::AccountsClient::with_interceptor(
        channel,
        Bearer(Some(ADMIN_TOKEN.into())),
    );
    for email in emails {
        client
            .create_account(support::pixverse(&email, "pw-123456"))
            .await
            .expect("the account is created");
    }
}

/// Runs the daemon on `data`, creates the accounts, and stops it cleanly.
async fn session(data: &Path, key: &str, emails: impl IntoIterator<Item = String>) {
    let mut running = Daemon::serve(data, key);
    create_accounts(running.wait_for_addr(), emails).await;
    assert!(running.terminate().success(), "{}", running.output());
}

/// Starts the daemon on `data` and expects it to refuse; answers its output.
fn refused(data: &Path, key: &str) -> String {
    let mut refused = Daemon::serve(data, key);
    let status: ExitStatus = refused.wait();
    let output = refused.output();
    assert_eq!(status.code(), Some(EXIT_DAMAGED), "{output}");
    assert!(output.contains("credvault restore --data-dir"), "{output}");
    assert!(!output.contains("credvault serving"), "{output}");
    output
}

#[tokio::test]
async fn a_flipped_byte_in_the_log_is_refused_with_exit_74() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = support::new_key();
    let mut emails = vec!["victim@example.com".to_owned()];
    emails.extend((0..20).map(|i| format!("later-{i}@example.com")));
    session(&data, &key, emails).await;

    // The hex editor: one byte of the victim's record (its email is in the clear in
    // the record's readable part and in its key), wherever sled wrote it.
    let log = data.join("db").join("db");
    let mut bytes = std::fs::read(&log).unwrap();
    let needle = b"victim@example.com";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the victim's record is in the log");
    bytes[at] ^= 0x20;
    std::fs::write(&log, &bytes).unwrap();

    let output = refused(&data, &key);
    assert!(
        output.contains("lost acknowledged writes") || output.contains("the store is damaged"),
        "{output}"
    );
}

#[tokio::test]
async fn a_store_behind_its_write_mark_is_refused_with_exit_74() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = support::new_key();
    session(&data, &key, ["first@example.com".to_owned()]).await;
    // An older copy of the store, as sled would recover it had its log lost the tail.
    let older = dir.path().join("older");
    copy_dir(&data, &older);
    session(&data, &key, ["second@example.com".to_owned()]).await;
    std::fs::copy(
        data.join("db").join(mark::FILE_NAME),
        older.join("db").join(mark::FILE_NAME),
    )
    .unwrap();

    let output = refused(&older, &key);
    assert!(
        output.contains("the store lost acknowledged writes"),
        "{output}"
    );

    // The store it was copied from starts as it should.
    let mut again = Daemon::serve(&data, &key);
    again.wait_for_addr();
    assert!(again.terminate().success());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
