//! The refresh engine at scale against the fake upstream on loopback: schedule rebuild
//! time at start-up and scheduler memory per tracked account for 100,000 accounts whose
//! tokens expire spread over an hour, then refreshes completed per second with every
//! account due, at login concurrency 4 and 16.
//!
//! `cargo bench --bench refresh` (CREDVAULT_BENCH_ACCOUNTS overrides the count); the
//! figures are printed, not asserted.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use credvault::{
    accounts::{NewAccount, SessionInput},
    clock::{Clock, ManualClock},
    config::Config,
    crypto::{MasterKey, SecretString, random_below},
    providers::ProviderConfig,
    refresh::Refresher,
    vault::Vault,
};
use fake_upstream::FakeUpstream;

const START_MS: i64 = 1_767_225_600_000;
const WINDOW: Duration = Duration::from_secs(5);

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let accounts: usize = std::env::var("CREDVAULT_BENCH_ACCOUNTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(accounts));
}

async fn run(n: usize) {
    let clock = ManualClock::at(START_MS);
    let fake = FakeUpstream::start(Arc::new(clock.clone())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_owned(),
        master_key: Some(SecretString::from(
            MasterKey::generate().unwrap().to_base64().to_string(),
        )),
        admin_token: Some(SecretString::from(
            "bench-bootstrap-token-0123456789abcdef".to_owned(),
        )),
        ..Config::default()
    };
    let spec = ProviderConfig {
        base_url: Some(fake.base_url()),
        ..ProviderConfig::default()
    };
    config.providers.insert("pixverse".into(), spec);
    let settings = config.resolve().unwrap();
    let vault = Vault::open_with_clock(&settings, Arc::new(clock.clone()))
        .await
        .unwrap();

    // Accounts with tokens expiring spread over the next hour.
    let created = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(128);
    for t in 0..128 {
        let accounts = vault.accounts.clone();
        tasks.spawn(async move {
            for i in t * per_task..((t + 1) * per_task).min(n) {
                let expire = START_MS / 1000 + 600 + random_below(3600) as i64;
                accounts
                    .create(NewAccount {
                        provider: "pixverse".into(),
                        email: format!("user{i}@example.com"),
                        password: Some(SecretString::from("bench-password".to_owned())),
                        max_jobs: 4,
                        session: Some(SessionInput {
                            token: SecretString::from(format!("opaque-session-token-{i}")),
                            expire_time: expire,
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
    for i in 0..n {
        fake.add_user(&format!("user{i}@example.com"), "bench-password");
    }
    let created = created.elapsed();

    let before = rss_kib();
    let start = Instant::now();
    let refresher = Refresher::start(
        vault.accounts.clone(),
        &vault.providers,
        vault.clock.clone(),
        vault.refresh.clone(),
        credvault::events::Events::default(),
    )
    .await
    .unwrap();
    let rebuild = start.elapsed();
    let after = rss_kib();
    let scheduled = refresher.scheduled();
    refresher.shutdown().await;
    drop(refresher);

    println!(
        "refresh engine: {n} accounts, tokens expiring over one hour, fake upstream on loopback"
    );
    println!(
        "  accounts created (128 concurrent writers): {:.1} s",
        created.as_secs_f64()
    );
    println!(
        "  schedule rebuild at start-up: {:.0} ms for {scheduled} scheduled (target < 2000 ms)",
        rebuild.as_secs_f64() * 1000.0
    );
    println!(
        "  scheduler memory: {:.0} bytes per tracked account (RSS delta {} KiB; target < 1024)",
        (after.saturating_sub(before) * 1024) as f64 / n as f64,
        after.saturating_sub(before)
    );

    for concurrency in [4, 16] {
        // Two hours on: every token has lapsed, every account is due.
        clock.advance(2 * 3600 * 1000);
        let mut refresh = vault.refresh.clone();
        refresh.concurrency = concurrency;
        let refresher = Refresher::start(
            vault.accounts.clone(),
            &vault.providers,
            vault.clock.clone(),
            refresh,
            credvault::events::Events::default(),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while started.elapsed() < WINDOW && refresher.refreshed() < n as u64 {
            tick.tick().await;
        }
        let done = refresher.refreshed();
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "  concurrency {concurrency:>2}: {:.0} refreshes/s ({done} in {elapsed:.1} s; each a login over HTTP, a sealed write and a durable flush)",
            done as f64 / elapsed
        );
        refresher.shutdown().await;
    }
    let _ = clock.now_ms();
}
