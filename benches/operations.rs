//! Operations on a vault of 100,000 accounts (CREDVAULT_BENCH_ACCOUNTS overrides the
//! count): backup size and time, restore time, and master-key rotation time (every
//! record re-sealed under a new key). Figures are printed, not asserted.
//!
//! `cargo bench --bench operations`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use credvault::{
    accounts::{NewAccount, SessionInput},
    clock::SystemClock,
    config::Config,
    crypto::{MasterKey, SecretString},
    ops::backup,
    vault::Vault,
};
use tokio::task::JoinSet;

fn config(dir: &std::path::Path, key: &str, previous: Option<&str>) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_owned(),
        master_key: Some(SecretString::from(key.to_owned())),
        previous_master_key: previous.map(|k| SecretString::from(k.to_owned())),
        admin_token: Some(SecretString::from(
            "bench-bootstrap-token-0123456789abcdef".to_owned(),
        )),
        ..Config::default()
    }
}

async fn fill(vault: &Vault, n: usize) {
    let mut tasks = JoinSet::new();
    let per = n.div_ceil(128);
    for t in 0..128 {
        let accounts = vault.accounts.clone();
        tasks.spawn(async move {
            for i in t * per..((t + 1) * per).min(n) {
                accounts
                    .create(NewAccount {
                        provider: "pixverse".into(),
                        email: format!("user{i}@example.com"),
                        password: Some(SecretString::from(format!("password-{i}"))),
                        max_jobs: 8,
                        session: Some(SessionInput {
                            token: SecretString::from(format!(
                                "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjIwMDAwMDAwMDB9.session-token-{i}"
                            )),
                            expire_time: 2_000_000_000,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("CREDVAULT_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let old = MasterKey::generate().unwrap().to_base64().to_string();
    let new = MasterKey::generate().unwrap().to_base64().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let settings = config(&data, &old, None).resolve().unwrap();
    let vault = Vault::open(&settings).await.unwrap();
    let started = Instant::now();
    fill(&vault, n).await;
    vault.store.flush().await.unwrap();
    println!("operations on {n} accounts (one 2-core machine)");
    println!("  filled in {}", secs(started.elapsed()));
    let on_disk = vault.store.disk_bytes().unwrap();

    let out = dir.path().join("vault.backup");
    let started = Instant::now();
    let summary = backup::backup(vault.store.as_ref(), &vault.sealer, &out)
        .await
        .unwrap();
    println!(
        "  backup: {} entries, {:.1} MiB file ({} bytes per account; store on disk {:.1} MiB), {}",
        summary.entries,
        summary.bytes as f64 / 1_048_576.0,
        summary.bytes / n as u64,
        on_disk as f64 / 1_048_576.0,
        secs(started.elapsed())
    );
    drop(vault);

    let restored = dir.path().join("restored");
    let restore_settings = config(&restored, &old, None).resolve().unwrap();
    let started = Instant::now();
    let sealer = credvault::crypto::Sealer::new(&restore_settings.master_key);
    let db_dir = restored.join("db");
    let store = credvault::store::open_embedded(&db_dir).unwrap();
    let target = db_dir.display().to_string();
    let naming = credvault::store::Naming::Emails;
    backup::restore(&out, &sealer, store.as_ref(), &target, naming)
        .await
        .unwrap();
    drop(store);
    println!("  restore: {}", secs(started.elapsed()));

    let rotating = config(&data, &new, Some(&old)).resolve().unwrap();
    let vault = Vault::open_with_clock(&rotating, Arc::new(SystemClock))
        .await
        .unwrap();
    let started = Instant::now();
    let resealed = vault.rekey.run().await.unwrap();
    vault.store.flush().await.unwrap();
    let took = started.elapsed();
    println!(
        "  master-key rotation: {resealed} records re-sealed in {} ({:.0} records/s)",
        secs(took),
        resealed as f64 / took.as_secs_f64()
    );
}
