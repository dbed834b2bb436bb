//! Operations on the etcd backend, through the binary: `credvault migrate` copies a
//! data directory with 1,000 accounts and a caller into an empty etcd prefix (renamed
//! so that etcd sees no email, verified); a node on that prefix serves all of it;
//! `credvault backup` snapshots the prefix at one revision while the node serves;
//! `credvault restore` puts it into a fresh prefix, which a node then serves; every
//! refusal (a non-empty prefix, a backup of the other backend's naming, a wrong key)
//! exits 64 naming why. `credvault rotate-key` re-seals a prefix with every node
//! stopped, and refuses while one serves.

mod support;

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use credvault::{
    accounts::NewAccount,
    callers::{NewCaller, Role},
    config::{BackendKind, Config},
    crypto::SecretString,
};
use support::{Auth, TestServer, etcd::EtcdCluster, proto};

const CALLER_SECRET: &str = "migrated-caller-secret-0123456789";

/// Runs a maintenance command of the binary against the cluster under `prefix`;
/// answers its exit code and what it printed.
fn command(
    args: &[&str],
    cluster: &EtcdCluster,
    prefix: &str,
    key_file: &Path,
    scratch: &Path,
) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_credvault"))
        .args(args)
        .args([
            "--master-key-file",
            key_file.to_str().unwrap(),
            "--data-dir",
            scratch.to_str().unwrap(),
        ])
        .env_remove("RUST_LOG")
        .env("CREDVAULT_STORE__BACKEND", "etcd")
        .env(
            "CREDVAULT_STORE__ETCD__ENDPOINTS",
            cluster.endpoints().join(","),
        )
        .env("CREDVAULT_STORE__ETCD__PREFIX", prefix)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

fn node_config(dir: &Path, key: &str, cluster: &EtcdCluster, prefix: &str) -> Config {
    let mut config = support::config(dir, key);
    config.store.backend = BackendKind::Etcd;
    config.store.etcd.endpoints = cluster.endpoints();
    config.store.etcd.prefix = prefix.into();
    config.node_id = "ops-node".into();
    config
}

/// What a node on the prefix must serve: every account, the caller's email login, a
/// revealed password.
async fn serves_everything(node: &TestServer) {
    let listed = node
        .accounts()
        .await
        .list_accounts(proto::ListAccountsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts.len(), 1000);
    assert!(listed.next_page_token.is_empty());
    assert_eq!(listed.accounts[0].email, "acct0000@example.com");
    let revealed = node
        .credentials(Auth::admin())
        .await
        .reveal_account(proto::RevealAccountRequest {
            provider: "pixverse".into(),
            email: "acct0777@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revealed.password, "pw-of-0777");
    // The caller-email index came across renamed: Basic email:secret still finds it.
    node.callers(Auth::basic("ops@example.com", CALLER_SECRET))
        .await
        .create_session(proto::CreateSessionRequest {})
        .await
        .unwrap();
}

/// No email in any key or value under the prefix, read straight from etcd.
async fn no_email_under(cluster: &EtcdCluster, prefix: &str) {
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let everything = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(everything.kvs().len() > 1000);
    for kv in everything.kvs() {
        for part in [kv.key(), kv.value()] {
            assert!(
                !String::from_utf8_lossy(part).contains("@example.com"),
                "an email under {}",
                String::from_utf8_lossy(kv.key())
            );
        }
    }
}

/// A data directory with 1,000 accounts and a caller (`ops@example.com`), its
/// daemon stopped; answers the caller's id.
async fn sled_vault(data: &Path, key: &str) -> String {
    let settings = support::config(data, key).resolve().unwrap();
    let vault = support::open_vault(&settings, Arc::new(credvault::clock::SystemClock)).await;
    for n in 0..1000 {
        vault
            .accounts
            .create(NewAccount {
                provider: "pixverse".into(),
                email: format!("acct{n:04}@example.com"),
                password: Some(SecretString::from(format!("pw-of-{n:04}"))),
                max_jobs: 2,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let admin = vault.callers.bootstrap_admin().unwrap();
    let created = vault
        .callers
        .create(
            &admin,
            NewCaller {
                email: "ops@example.com".into(),
                secret: SecretString::from(CALLER_SECRET.to_owned()),
                roles: [Role::Consumer].into(),
                scopes: vec!["pixverse".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    vault
        .callers
        .activate(&created.caller.id, &created.key_id)
        .await
        .unwrap();
    vault.store.flush().await.unwrap();
    created.caller.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_then_back_up_and_restore_an_etcd_prefix() {
    let cluster = EtcdCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let key_file = dir.path().join("master.key");
    std::fs::write(&key_file, &key).unwrap();
    let scratch = dir.path().join("scratch");
    let run =
        |args: &[&str], prefix: &str, key: &Path| command(args, &cluster, prefix, key, &scratch);

    // A data directory with 1,000 accounts and a caller, its daemon stopped.
    let data = dir.path().join("sled");
    sled_vault(&data, &key).await;

    let started = Instant::now();
    let (code, out) = run(
        &["migrate", "--from-data-dir", data.to_str().unwrap()],
        "/migrated",
        &key_file,
    );
    println!(
        "migrate of 1,000 accounts took {:?}: {out}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("(1000 accounts)") && out.contains("verified"),
        "{out}"
    );
    no_email_under(&cluster, "/migrated").await;
    // Not twice into one prefix.
    let (code, out) = run(
        &["migrate", "--from-data-dir", data.to_str().unwrap()],
        "/migrated",
        &key_file,
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("already holds a store"), "{out}");

    let node_dir = tempfile::tempdir().unwrap();
    let node =
        TestServer::start_with(node_config(node_dir.path(), &key, &cluster, "/migrated")).await;
    serves_everything(&node).await;

    // A backup of the prefix while the node serves, restored into a fresh prefix.
    let snapshot = dir.path().join("etcd.cvb");
    let (code, out) = run(
        &["backup", "--out", snapshot.to_str().unwrap()],
        "/migrated",
        &key_file,
    );
    assert_eq!(code, 0, "{out}");
    node.stop().await;
    let (code, out) = run(
        &["restore", "--from", snapshot.to_str().unwrap()],
        "/restored",
        &key_file,
    );
    assert_eq!(code, 0, "{out}");
    let restored_dir = tempfile::tempdir().unwrap();
    let restored = TestServer::start_with(node_config(
        restored_dir.path(),
        &key,
        &cluster,
        "/restored",
    ))
    .await;
    serves_everything(&restored).await;
    restored.stop().await;

    // Refusals: a non-empty prefix; the etcd snapshot into a data directory (its
    // records are named for etcd); a prefix with another key.
    let (code, out) = run(
        &["restore", "--from", snapshot.to_str().unwrap()],
        "/restored",
        &key_file,
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("already holds a store"), "{out}");
    let output = Command::new(env!("CARGO_BIN_EXE_credvault"))
        .args(["restore", "--from", snapshot.to_str().unwrap()])
        .args(["--master-key-file", key_file.to_str().unwrap()])
        .args(["--data-dir", dir.path().join("fresh").to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{text}");
    assert!(text.contains("named for a shared (etcd) store"), "{text}");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, support::new_key()).unwrap();
    let (code, out) = run(
        &[
            "backup",
            "--out",
            dir.path().join("x.cvb").to_str().unwrap(),
        ],
        "/migrated",
        &other_key,
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("master key does not match"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(600));
}

/// Reveals `email`'s password through `node`, once the node's directory has it.
async fn password_on(node: &TestServer, email: &str) -> String {
    let mut revealed = None;
    let found = support::eventually(Duration::from_secs(5), async || {
        let answer = node
            .credentials(Auth::admin())
            .await
            .reveal_account(proto::RevealAccountRequest {
                provider: "pixverse".into(),
                email: email.into(),
            })
            .await;
        revealed = answer.ok().map(|a| a.into_inner().password);
        revealed.is_some()
    })
    .await;
    assert!(found, "{email} is not revealed by the node");
    revealed.unwrap()
}

/// How many granted RevealAccount events the node's own audit trail lists (all of it
/// opens).
async fn reveals_audited(node: &TestServer) -> usize {
    let listed = node
        .audit(Auth::admin())
        .await
        .list_events(proto::ListEventsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.next_page_token.is_empty());
    listed
        .events
        .iter()
        .filter(|e| e.rpc.ends_with("RevealAccount") && e.outcome == "OK")
        .count()
}

/// Master-key rotation of an etcd prefix is offline: refused while any node serves
/// (their pulses move), refused while another rotation is marked, and a node does not
/// start while one is; with every node stopped, one run re-seals the shared records
/// and its data directory's audit trail, a run per other data directory re-seals that
/// node's trail, and the nodes serve everything with the new key alone, while the old
/// key no longer opens the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_the_master_key_of_an_etcd_prefix_with_every_node_stopped() {
    const PREFIX: &str = "/rotated";
    let cluster = EtcdCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (support::new_key(), support::new_key());
    let (old_file, new_file) = (dir.path().join("old.key"), dir.path().join("new.key"));
    std::fs::write(&old_file, &old).unwrap();
    std::fs::write(&new_file, &new).unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let config = |data: &Path, key: &str, node: &str| {
        let mut config = node_config(data, key, &cluster, PREFIX);
        config.node_id = node.into();
        config
    };
    let rotate = |data: &Path| {
        let new = new_file.to_str().unwrap();
        command(
            &["rotate-key", "--new-key-file", new],
            &cluster,
            PREFIX,
            &old_file,
            data,
        )
    };
    let mut etcd = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let mark = format!("{PREFIX}/meta/rotating");

    let a = TestServer::start_with(config(&data_a, &old, "node-a")).await;
    let b = TestServer::start_with(config(&data_b, &old, "node-b")).await;
    a.accounts()
        .await
        .create_account(support::pixverse("rotated@example.com", "pw-before"))
        .await
        .unwrap();
    assert_eq!(password_on(&a, "rotated@example.com").await, "pw-before");
    assert_eq!(password_on(&b, "rotated@example.com").await, "pw-before");

    // Nodes serving: refused on a node's data directory, and from elsewhere once their
    // pulses moved, the mark taken back.
    let (code, out) = rotate(&data_a);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("with every node stopped"), "{out}");
    let (code, out) = rotate(&dir.path().join("elsewhere"));
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("still running") && out.contains("node-a") && out.contains("node-b"),
        "{out}"
    );
    assert!(
        etcd.get(mark.as_str(), None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
    a.stop().await;
    b.stop().await;

    // Another rotation marked: refused, its mark left as it was.
    etcd.put(mark.as_str(), "1234abcd", None).await.unwrap();
    let (code, out) = rotate(&data_a);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("another master-key rotation"), "{out}");
    // A run to the new key interrupted: no node starts, the next run finishes it.
    let new_id = credvault::crypto::MasterKey::from_base64(&new)
        .unwrap()
        .key_id()
        .to_string();
    etcd.put(mark.as_str(), new_id.as_str(), None)
        .await
        .unwrap();
    let settings = config(&data_a, &old, "node-a").resolve().unwrap();
    let refused = support::try_open_vault(&settings, Arc::new(credvault::clock::SystemClock))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(refused.contains("master-key rotation"), "{refused}");
    let (code, out) = rotate(&data_a);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("continuing the unfinished rotation") && out.contains("records re-sealed"),
        "{out}"
    );
    assert!(
        etcd.get(mark.as_str(), None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );

    // The old key no longer opens the prefix; B's own trail is re-sealed by its run.
    let refused = support::try_open_vault(&settings, Arc::new(credvault::clock::SystemClock))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(refused.contains("master key does not match"), "{refused}");
    let (code, out) = rotate(&data_b);
    assert_eq!(code, 0, "{out}");

    for (data, node) in [(&data_a, "node-a"), (&data_b, "node-b")] {
        let server = TestServer::start_with(config(data, &new, node)).await;
        assert_eq!(
            password_on(&server, "rotated@example.com").await,
            "pw-before"
        );
        // The reveal from before the rotation, and the one just made.
        assert_eq!(reveals_audited(&server).await, 2, "{node}");
        server.stop().await;
    }
}

/// A migration that fails after it began writing (here another writer takes one of its
/// keys meanwhile) takes back what it wrote: the prefix holds only the other writer's
/// key afterwards, so the migration can be run again once it is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_leaves_nothing_behind() {
    const PREFIX: &str = "/raced";
    let cluster = EtcdCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let key = support::new_key();
    let key_file = dir.path().join("master.key");
    std::fs::write(&key_file, &key).unwrap();
    let data = dir.path().join("sled");
    let caller_id = sled_vault(&data, &key).await;

    let mut etcd = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let mut watch = etcd
        .watch(PREFIX, Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let scratch = dir.path().join("scratch");
    let migrating = {
        let (endpoints, data, key_file) = (cluster.endpoints(), data.clone(), key_file.clone());
        std::thread::spawn(move || {
            let output = Command::new(env!("CARGO_BIN_EXE_credvault"))
                .args(["migrate", "--from-data-dir", data.to_str().unwrap()])
                .args(["--master-key-file", key_file.to_str().unwrap()])
                .args(["--data-dir", scratch.to_str().unwrap()])
                .env_remove("RUST_LOG")
                .env("CREDVAULT_STORE__BACKEND", "etcd")
                .env("CREDVAULT_STORE__ETCD__ENDPOINTS", endpoints.join(","))
                .env("CREDVAULT_STORE__ETCD__PREFIX", PREFIX)
                .output()
                .unwrap();
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
    };
    // Its first write (the meta tree's) seen, the caller's record (written after the
    // 1,000 accounts) is taken by another writer.
    // (The watch's first answer only says it was created.)
    while watch
        .message()
        .await
        .unwrap()
        .expect("the migration writes")
        .events()
        .is_empty()
    {}
    let taken = format!("{PREFIX}/callers/{caller_id}");
    etcd.put(taken.as_str(), "another writer", None)
        .await
        .unwrap();
    let (code, stderr) = migrating.join().unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("changed while being migrated"), "{stderr}");
    let left = etcd
        .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<String> = left
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert_eq!(keys, [taken], "only the other writer's key is left");
}
