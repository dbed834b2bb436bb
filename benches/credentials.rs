//! The Credentials service under load, against a baseline measured in the same run: a
//! minimal tonic server answering a trivial unary RPC (health Check). A load generator
//! on the generated tonic client holds N connections × M calls in flight for a fixed
//! time and counts answers by gRPC status (h2load cannot). Also: p99 of AcquireLease at
//! half its peak rate, and RSS with 100,000 accounts loaded.
//!
//! `cargo bench --bench credentials`; figures are printed, not asserted, and the run
//! ends with one line `BENCH_SUMMARY {json}` (each load's calls/s, p50, p99 and ratio
//! to the baseline, the target ratios, RSS). `CREDVAULT_BENCH_ROUNDS` and
//! `CREDVAULT_BENCH_SECS` shorten a run (default 5 rounds of 3 s).

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use credvault::{
    accounts::{NewAccount, SessionInput},
    callers::Role,
    config::Config,
    crypto::{MasterKey, SecretString},
    proto::{
        self, accounts_client::AccountsClient, callers_client::CallersClient,
        credentials_client::CredentialsClient,
    },
    providers::{ProviderConfig, ProviderKind},
    server::{self, Listeners},
    vault::Vault,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::Interceptor,
    transport::{Channel, Server},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[path = "../tests/support/debian.rs"]
mod debian;
#[path = "credentials/etcd.rs"]
mod etcd;
#[allow(dead_code)]
#[path = "../tests/support/etcd.rs"]
mod etcd_cluster;

const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 16;

/// How long each load runs, per round (`CREDVAULT_BENCH_SECS`, default 3).
fn window() -> Duration {
    Duration::from_secs_f64(env_number("CREDVAULT_BENCH_SECS").unwrap_or(3.0))
}

/// Every measurement runs this many times, interleaved with the baseline
/// (`CREDVAULT_BENCH_ROUNDS`, default 5): this machine is shared and its speed drifts
/// by a third within a minute, so each ratio is taken against the baseline of its own
/// round and the median round is reported.
fn rounds() -> usize {
    env_number("CREDVAULT_BENCH_ROUNDS").map_or(5, |n| n.max(1.0) as usize)
}

fn env_number(name: &str) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    match value.parse::<f64>() {
        Ok(n) if n > 0.0 => Some(n),
        _ => panic!("{name}={value:?}: expected a positive number"),
    }
}
const BOOTSTRAP: &str = "bench-bootstrap-token-0123456789abcdef";
const SECRET: &str = "bench-client-secret-0123456789abcdef-0123456789";

#[derive(Default)]
struct Stats {
    codes: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// CPU time of the whole process (server and load generator) while it ran.
    cpu_ns: u64,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        self.latencies.extend(other.latencies);
        self.cpu_ns += other.cpu_ns;
    }

    /// CPU µs per call, load generator included (steadier than calls/s on a machine
    /// whose speed drifts: a same-build A/B compares these).
    fn cpu_us_per_call(&self) -> f64 {
        self.cpu_ns as f64 / 1000.0 / self.latencies.len().max(1) as f64
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&mut self, p: usize) -> f64 {
        self.latencies.sort();
        self.latencies
            .get(self.latencies.len() * p / 100)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

/// Every line of the report.
#[derive(Default)]
struct Rows {
    baseline: Row,
    nagle: Row,
    check: Row,
    whoami: Row,
    whoami_jwt: Row,
    masked: Row,
    reveal: Row,
    reveal_log_lines: Row,
    reveal_os_sync: Row,
    /// The masked read, then the least an `"os"` reveal adds by its contract (see `OsFloor`).
    masked_os_floor: Row,
    /// The masked read, then a round of a group commit (see `DurableFloor`).
    masked_durable: Row,
    two_whoami: Row,
    /// Two GetCallerInfo, then a round of a group commit (see `DurableFloor`).
    two_whoami_durable: Row,
    /// A RevealAccount of a pool account, then a GetCallerInfo: what a lease pair
    /// does at least.
    reveal_whoami: Row,
    lease: Row,
    half_rate: Row,
    /// Store flushes timed while the half-rate load runs.
    probe: Row,
    /// A RevealAccount of a pool account + a GetCallerInfo, paced as `half_rate`.
    half_floor: Row,
    /// Store flushes timed while `half_floor` runs.
    floor_probe: Row,
    /// `half_rate` again, in its probe's window.
    half_beside: Row,
    /// `half_floor` again, in its probe's window.
    floor_beside: Row,
}

impl Rows {
    /// One round of target 4: the half-rate lease load and its floor.
    fn add_half(&mut self, lease: Paced, floor: Paced, base: f64) {
        self.half_rate.add(lease.alone, base);
        self.half_beside.add(lease.beside, base);
        self.probe.add(lease.probe, base);
        self.half_floor.add(floor.alone, base);
        self.floor_beside.add(floor.beside, base);
        self.floor_probe.add(floor.probe, base);
    }

    /// Target 4 and its floor, from every round's latencies together.
    fn half_targets(&mut self) -> serde_json::Map<String, serde_json::Value> {
        let half = self.half_rate.all.percentile_ms(99);
        let floor = self.half_floor.all.percentile_ms(99);
        let probe = self.probe.all.percentile_ms(99);
        let floor_probe = self.floor_probe.all.percentile_ms(99);
        let mut targets = serde_json::Map::new();
        for (name, ratio) in [
            ("lease_half_p99_vs_flush_probe_p99", half / probe),
            (
                "reveal_then_call_half_p99_vs_its_flush_probe_p99",
                floor / floor_probe,
            ),
            ("lease_half_p99_vs_reveal_then_call_half_p99", half / floor),
            (
                "lease_half_beside_probe_p99_vs_flush_probe_p99",
                self.half_beside.all.percentile_ms(99) / probe,
            ),
            (
                "reveal_then_call_half_beside_probe_p99_vs_its_flush_probe_p99",
                self.floor_beside.all.percentile_ms(99) / floor_probe,
            ),
        ] {
            targets.insert(name.into(), round(ratio, 3).into());
        }
        targets
    }
}

/// One line of the report: a measurement's rounds.
#[derive(Default)]
struct Row {
    rates: Vec<f64>,
    ratios: Vec<f64>,
    cpu: Vec<f64>,
    all: Stats,
}

impl Row {
    fn add(&mut self, stats: Stats, baseline: f64) {
        self.rates.push(stats.rate());
        self.ratios.push(stats.rate() / baseline);
        self.cpu.push(stats.cpu_us_per_call());
        self.all.merge(stats);
    }

    /// The row as `BENCH_SUMMARY` gives it.
    fn summary(&mut self) -> serde_json::Value {
        let (p50, p99) = (self.all.percentile_ms(50), self.all.percentile_ms(99));
        serde_json::json!({
            "calls_per_s": round(median(&self.rates), 0),
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
            "ratio": round(median(&self.ratios), 3),
            "cpu_us_per_call": round(median(&self.cpu), 1),
        })
    }

    fn print(&mut self, name: &str) {
        let (p50, p99) = (self.all.percentile_ms(50), self.all.percentile_ms(99));
        println!(
            "  {name:<54} {:>7.0}/s  p50 {p50:>5.2} ms  p99 {p99:>6.2} ms  CPU {:>5.1} µs/call  ×baseline {:>4.2} (rounds {})  {:?}",
            median(&self.rates),
            median(&self.cpu),
            median(&self.ratios),
            self.round_ratios(),
            self.all.codes
        );
    }

    /// Each round's ratio, as printed.
    fn round_ratios(&self) -> String {
        let ratios: Vec<String> = self.ratios.iter().map(|r| format!("{r:.2}")).collect();
        ratios.join(" ")
    }
}

/// One line per load of an A/B mode: its median rate, CPU per `unit`, and ratio to
/// the round's first load (`against`), with each round's ratio.
fn print_against(loads: &[&str], rows: &[Row], unit: &str, against: &str) {
    for (name, row) in loads.iter().zip(rows) {
        println!(
            "  {name:<22} {:>7.0} {unit}s/s  CPU {:>6.1} µs/{unit}  ×{against} {:.3}  ({})",
            median(&row.rates),
            median(&row.cpu),
            median(&row.ratios),
            row.round_ratios()
        );
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

#[derive(Clone)]
struct Auth(Vec<(&'static str, String)>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (name, value) in &self.0 {
            request
                .metadata_mut()
                .insert(*name, MetadataValue::try_from(value.as_str()).unwrap());
        }
        Ok(request)
    }
}

async fn channels(addr: std::net::SocketAddr) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    out
}

/// Runs `call` from CONNECTIONS × IN_FLIGHT tasks until the window closes; with
/// `per_task_rate`, each task paces itself (open loop) instead of going flat out. A
/// call answers the latency to record: its own, or that of the one RPC it measures.
async fn drive<F, Fut>(channels: &[Channel], per_task_rate: Option<f64>, call: F) -> Stats
where
    F: Fn(Channel, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Duration, Status>> + Send,
{
    let started = Instant::now();
    let cpu_before = cpu_ns();
    let deadline = started + window();
    let mut tasks = JoinSet::new();
    for (c, channel) in channels.iter().enumerate() {
        for t in 0..IN_FLIGHT {
            let (call, channel) = (call.clone(), channel.clone());
            tasks.spawn(async move {
                let mut stats = Stats::default();
                let mut pace = per_task_rate.map(|rate| {
                    // Staggered start phases: paced tasks that tick in lockstep would
                    // arrive as bursts of every task at once.
                    let period = Duration::from_secs_f64(1.0 / rate);
                    let phase = period
                        .mul_f64((c * IN_FLIGHT + t) as f64 / (CONNECTIONS * IN_FLIGHT) as f64);
                    let mut interval =
                        tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    interval
                });
                let mut i = (c * IN_FLIGHT + t) as u64 * 1_000_003;
                while Instant::now() < deadline {
                    if let Some(pace) = pace.as_mut() {
                        pace.tick().await;
                    }
                    let at = Instant::now();
                    let (code, latency) = match call(channel.clone(), i).await {
                        Ok(latency) => ("Ok".to_owned(), latency),
                        Err(status) => (format!("{:?}", status.code()), at.elapsed()),
                    };
                    stats.latencies.push(latency);
                    *stats.codes.entry(code).or_default() += 1;
                    i += 1;
                }
                stats
            });
        }
    }
    let mut total = Stats::default();
    while let Some(stats) = tasks.join_next().await {
        total.merge(stats.unwrap());
    }
    total.elapsed = started.elapsed();
    total.cpu_ns = cpu_ns() - cpu_before;
    total
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// CPU time this process's threads have run, in ns (their schedstat).
fn cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_owned(),
        master_key: Some(SecretString::from(
            MasterKey::generate().unwrap().to_base64().to_string(),
        )),
        admin_token: Some(SecretString::from(BOOTSTRAP.to_owned())),
        ..Config::default()
    };
    config.providers.insert(
        "pool".into(),
        ProviderConfig {
            max_jobs: Some(8),
            ..ProviderConfig::of(ProviderKind::Pixverse)
        },
    );
    config
}

async fn create_accounts(vault: &Vault, provider: &'static str, n: usize) {
    let mut tasks = JoinSet::new();
    let per = n.div_ceil(128);
    for t in 0..128 {
        let accounts = vault.accounts.clone();
        tasks.spawn(async move {
            for i in t * per..((t + 1) * per).min(n) {
                accounts
                    .create(NewAccount {
                        provider: provider.into(),
                        email: format!("user{i}@example.com"),
                        password: Some(SecretString::from("bench-password".to_owned())),
                        max_jobs: 8,
                        session: Some(SessionInput {
                            token: SecretString::from(format!("eyJ.session-token-{i}.sig")),
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

/// A credvault serving, with its caller's credential.
struct Bench {
    addr: std::net::SocketAddr,
    auth: Auth,
    /// The same caller with a JWT (one year, as the reference behaviours issue them).
    jwt: Auth,
    store: std::sync::Arc<dyn credvault::store::Store>,
    sealer: std::sync::Arc<credvault::crypto::Sealer>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

/// credvault on `settings`: 1,000 pixverse accounts for reveals, 100 pool accounts
/// (maxJobs 8) for leases, and a metered consumer and operator of both with credits to
/// spare.
async fn serve(settings: &credvault::config::Settings) -> Bench {
    // credvault: 1,000 pixverse accounts for reveals, 100 pool accounts (maxJobs 8) for leases.
    let vault = Vault::open(settings).await.unwrap();
    create_accounts(&vault, "pixverse", 1_000).await;
    create_accounts(&vault, "pool", 100).await;
    let admin = vault.callers.bootstrap_admin().unwrap();
    let created = vault
        .callers
        .create(
            &admin,
            credvault::callers::NewCaller {
                email: "bench@example.com".into(),
                secret: SecretString::from(SECRET.to_owned()),
                // Operator too, for the masked GetAccount row (a floor under reveals).
                roles: [Role::Consumer, Role::Operator].into(),
                scopes: vec!["pixverse".into(), "pool".into()],
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
    vault
        .callers
        .update(
            &created.caller.id,
            credvault::callers::CallerUpdate {
                add_credits: 1_000_000_000,
                // What a debit per hand-out costs: set to measure without it.
                unmetered: std::env::var_os(UNMETERED).map(|_| true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let auth = Auth(vec![
        (
            "authorization",
            format!("Bearer {}", created.api_key.expose()),
        ),
        ("x-credvault-secret", SECRET.to_owned()),
    ]);
    let (token, _) = vault.callers.issue_token(&created.caller.id).await.unwrap();
    let jwt = Auth(vec![("authorization", format!("Bearer {token}"))]);
    let store = vault.store.clone();
    let sealer = vault.sealer.clone();
    let listeners = Listeners::bind(settings).await.unwrap();
    let addr = listeners.tcp_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(
        vault,
        listeners,
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    ));
    Bench {
        addr,
        auth,
        jwt,
        store,
        sealer,
        stop,
        serving,
    }
}

/// What one load's call answers: the latency to record.
type CallFuture = std::pin::Pin<Box<dyn Future<Output = Result<Duration, Status>> + Send>>;

/// RevealAccount of `user{i % 1000}@example.com` (pixverse).
fn reveal(auth: Auth) -> impl Fn(Channel, u64) -> CallFuture + Clone + Send + 'static {
    reveal_of(auth, "pixverse", 1000)
}

/// RevealAccount of `user{i % accounts}@example.com` of `provider`.
fn reveal_of(
    auth: Auth,
    provider: &'static str,
    accounts: u64,
) -> impl Fn(Channel, u64) -> CallFuture + Clone + Send + 'static {
    move |channel: Channel, i: u64| {
        let auth = auth.clone();
        Box::pin(async move {
            let mut client = CredentialsClient::with_interceptor(channel, auth);
            let request = proto::RevealAccountRequest {
                provider: provider.into(),
                email: format!("user{}@example.com", i % accounts),
            };
            let at = Instant::now();
            client.reveal_account(request).await?;
            Ok(at.elapsed())
        })
    }
}

/// Each call acquires a lease of the pool then releases it; the latency recorded is
/// the AcquireLease's.
fn lease(auth: Auth) -> impl Fn(Channel, u64) -> CallFuture + Clone + Send + 'static {
    move |channel: Channel, _| {
        let auth = auth.clone();
        Box::pin(async move {
            let mut client = CredentialsClient::with_interceptor(channel, auth);
            let request = proto::AcquireLeaseRequest {
                provider: "pool".into(),
                ttl: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                wait_timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            };
            let at = Instant::now();
            let lease = client.acquire_lease(request).await?.into_inner();
            let latency = at.elapsed();
            client
                .release_lease(proto::ReleaseLeaseRequest {
                    lease_id: lease.lease_id,
                })
                .await?;
            Ok(latency)
        })
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os(RSS_CHILD).is_some() {
        runtime.block_on(rss_with_100k_accounts());
    } else {
        runtime.block_on(run());
    }
}

/// Set in the child process that measures RSS, so that neither run disturbs the other
/// (100,000 creations leave the allocator fragmented for whatever runs next).
const RSS_CHILD: &str = "CREDVAULT_BENCH_RSS_CHILD";

/// The floor under a start's RSS: the embedded store alone, opened on the vault the
/// first RSS child filled, every account record read once (as a start reads them to
/// build the directory), nothing else.
async fn store_alone(db: &std::path::Path) {
    use credvault::store::{Range, Tree};
    let store = credvault::store::open_embedded(db).unwrap();
    let mut after: Option<Vec<u8>> = None;
    let mut records = 0;
    loop {
        let page = store
            .scan(Range::new(Tree::Accounts, b"", 1024).after(after.as_deref()))
            .await
            .unwrap();
        records += page.entries.len();
        after = page.entries.last().map(|(key, _)| key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(records, 100_000);
    let rss = rss_mib();
    println!("  RSS of the store alone, its 100,000 account records read once: {rss:.0} MiB");
    println!("{RSS_LINE}{rss:.1}");
}

/// Set in the third RSS child: the store alone (see [`store_alone`]).
const RSS_STORE_ONLY: &str = "CREDVAULT_BENCH_RSS_STORE_ONLY";

/// The RSS children's vault: its directory and its master key.
const RSS_DIR: &str = "CREDVAULT_BENCH_RSS_DIR";
const RSS_KEY: &str = "CREDVAULT_BENCH_RSS_KEY";
/// Set in the second RSS child, which starts on the vault the first one filled.
const RSS_STARTED: &str = "CREDVAULT_BENCH_RSS_STARTED";

/// How the RSS child tells its figure.
const RSS_LINE: &str = "RSS_100K_MIB ";

/// Set: the bench caller pays no credits (no debit settles per hand-out).
const UNMETERED: &str = "CREDVAULT_BENCH_UNMETERED";

/// Runs one load alone for 10 s (`reveal`, `reveal_os` (with `audit.sync = "os"`),
/// `lease`, `reveal_whoami` (the lease pair's floor), `whoami`, `whoami_jwt`, `masked`,
/// `os_floor` (the masked read, then `OsFloor`'s write) or `check`), for a profiler;
/// `pairs` the lease pair and its floors in interleaved rounds, for an A/B; `half`
/// target 4 and its floor; `os` target 7 and its floor; `etcd` runs the etcd rounds
/// alone, `sled` all but them (and the RSS run).
const ONLY: &str = "CREDVAULT_BENCH_ONLY";

/// RSS of a serving credvault with 100,000 accounts (in its own process): the one that
/// created them, or (with [`RSS_STARTED`]) one started on the vault it left.
async fn rss_with_100k_accounts() {
    let dir = PathBuf::from(std::env::var_os(RSS_DIR).expect("the vault's directory"));
    let mut config = config(&dir);
    config.master_key = std::env::var(RSS_KEY).ok().map(SecretString::from);
    let settings = config.resolve().unwrap();
    let started = std::env::var_os(RSS_STARTED).is_some();
    if std::env::var_os(RSS_STORE_ONLY).is_some() {
        return store_alone(&dir.join("db")).await;
    }
    let vault = Vault::open(&settings).await.unwrap();
    let before = rss_mib();
    if !started {
        create_accounts(&vault, "pixverse", 100_000).await;
    }
    assert_eq!(vault.accounts.count(), 100_000);
    let listeners = Listeners::bind(&settings).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(
        vault,
        listeners,
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    ));
    tokio::task::yield_now().await;
    let rss = rss_mib();
    let how = match started {
        true => "started on them",
        false => "the process that created them",
    };
    println!(
        "  RSS with 100,000 accounts serving, {how}: {rss:.0} MiB (was {before:.0} MiB before loading them; target ≤ 150)"
    );
    println!("{RSS_LINE}{rss:.1}");
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

/// The floor under a durable hand-out's latency: one small write and a flush of the
/// sled store, 1,000 times, nothing else running.
async fn store_flush_latency() {
    use credvault::store::{StoreExt, Tree};
    let dir = tempfile::tempdir().unwrap();
    let store = credvault::store::open_embedded(dir.path()).unwrap();
    let mut stats = Stats::default();
    let cpu_before = cpu_ns();
    for i in 0..1000u32 {
        let at = Instant::now();
        store
            .swap(Tree::Leases, &i.to_be_bytes(), None, Some(&[7u8; 300]))
            .await
            .unwrap();
        store.flush().await.unwrap();
        stats.latencies.push(at.elapsed());
    }
    let cpu_us = (cpu_ns() - cpu_before) as f64 / 1000.0 / 1000.0;
    let (p50, p99) = (stats.percentile_ms(50), stats.percentile_ms(99));
    println!(
        "  store write + flush (sled, idle), 1,000 times: p50 {p50:.2} ms  p99 {p99:.2} ms  CPU {cpu_us:.0} µs each (all threads)"
    );
    // The write mark's own part of that flush: its file written and synced alone.
    let mark_dir = tempfile::tempdir_in(dir.path()).unwrap();
    let (mark, _) = credvault::store::mark::MarkFile::open(mark_dir.path()).unwrap();
    let mut alone = Stats::default();
    for i in 0..1000u64 {
        let at = Instant::now();
        mark.write(1_000_000 + i).unwrap();
        alone.latencies.push(at.elapsed());
    }
    let (mark_p50, mark_p99) = (alone.percentile_ms(50), alone.percentile_ms(99));
    println!(
        "    of which the write mark (pwrite + fdatasync of its file), alone: p50 {mark_p50:.2} ms  p99 {mark_p99:.2} ms  = {:.0}% of the flush's p50",
        100.0 * mark_p50 / p50
    );
}

/// The least a durable hand-out adds to a read, shared as a hand-out's is: each call
/// waits for a round of the same group commit a hand-out's audit event goes through
/// (`credvault::rounds`), whose runner makes one small write and flushes the store. A
/// hand-out does all of this and more (its event encoded, sealed and written in the
/// round, its debit, the door), so no hand-out can beat a load built on this.
struct DurableFloor {
    store: std::sync::Arc<dyn credvault::store::Store>,
    rounds: credvault::rounds::Rounds,
    asked: std::sync::atomic::AtomicU64,
}

impl DurableFloor {
    fn new(store: std::sync::Arc<dyn credvault::store::Store>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            store,
            rounds: credvault::rounds::Rounds::default(),
            asked: Default::default(),
        })
    }

    async fn commit(&self) -> Result<(), Status> {
        use credvault::store::{Tree, Txn};
        use std::sync::atomic::Ordering;
        let mine = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.rounds
            .until(
                |covered| (covered >= mine).then_some(Ok(())),
                || async {
                    let covers = self.asked.load(Ordering::SeqCst);
                    let txn = Txn::new().put(Tree::Meta, b"bench-floor", &covers.to_be_bytes());
                    let failed = |e: credvault::store::StoreError| Status::internal(e.to_string());
                    self.store.commit(txn).await.map_err(failed)?;
                    self.store.flush().await.map_err(failed)?;
                    Ok(covers)
                },
            )
            .await
    }
}

/// The least a `sync = "os"` reveal adds to a masked read, by its contract, done in
/// this process the cheapest way: the event names each secret handed out by its
/// HMAC-SHA256 (the two of a bench account, as raw bytes, no hex), and a 150-byte
/// record holding them (a reveal's encoded event is larger: its method, account,
/// request id and caller come to more) is sealed under the vault's key and written to
/// the OS with its debit in one `write(2)`, as the spill writes it (the spill seals the
/// debit inside the event; beside it here, the same bytes to write). Within 100 ms it is
/// on disk: a thread `fdatasync`s the file every 50 ms (so the file itself is the
/// durable record; no store). A reveal also builds and encodes the event, checks and
/// charges the caller, and writes the event and the debit into the store.
struct OsFloor {
    sealer: std::sync::Arc<credvault::crypto::Sealer>,
    hmac: ring::hmac::Key,
    file: std::sync::Arc<std::fs::File>,
    seq: std::sync::atomic::AtomicU64,
}

impl OsFloor {
    fn new(
        sealer: std::sync::Arc<credvault::crypto::Sealer>,
        path: &std::path::Path,
    ) -> std::sync::Arc<Self> {
        let file = std::sync::Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        );
        let syncing = std::sync::Arc::downgrade(&file);
        // Pacing, not synchronisation: the contract's flush every 50 ms, for as long as
        // the floor exists.
        std::thread::spawn(move || {
            while let Some(file) = syncing.upgrade() {
                let _ = file.sync_data();
                drop(file);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let rng = ring::rand::SystemRandom::new();
        std::sync::Arc::new(Self {
            sealer,
            hmac: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).unwrap(),
            file,
            seq: Default::default(),
        })
    }

    /// The floor's work for a reveal of account `i % 1000` (its secrets as `create_accounts`
    /// sets them).
    fn write(&self, i: u64) -> Result<(), Status> {
        use std::io::Write;
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let token = format!("eyJ.session-token-{}.sig", i % 1000);
        let mut event = [0u8; 150];
        event[..8].copy_from_slice(&i.to_be_bytes());
        for (n, secret) in ["bench-password", token.as_str()].iter().enumerate() {
            let tag = ring::hmac::sign(&self.hmac, secret.as_bytes());
            event[8 + 32 * n..8 + 32 * (n + 1)].copy_from_slice(tag.as_ref());
        }
        let block = credvault::sealed::seal_raw(
            &self.sealer,
            credvault::store::Tree::Audit,
            &seq.to_be_bytes(),
            &event,
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let debit: i64 = 1;
        let mut record = Vec::with_capacity(20 + block.len());
        record.extend_from_slice(&(block.len() as u32).to_be_bytes());
        record.extend_from_slice(&seq.to_be_bytes());
        record.extend_from_slice(&debit.to_be_bytes());
        record.extend_from_slice(&block);
        (&*self.file)
            .write_all(&record)
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// Empties the file between loads (a spill's segments are deleted once flushed).
    fn truncate(&self) {
        self.file.set_len(0).unwrap();
    }
}

/// `first`, then `second` on the same connection: one pair, timed by `first`'s latency.
fn in_turn<A, FutA, B, FutB>(
    first: A,
    second: B,
) -> impl Fn(Channel, u64) -> CallFuture + Clone + Send + Sync + 'static
where
    A: Fn(Channel, u64) -> FutA + Clone + Send + Sync + 'static,
    FutA: Future<Output = Result<Duration, Status>> + Send + 'static,
    B: Fn(Channel, u64) -> FutB + Clone + Send + Sync + 'static,
    FutB: Future<Output = Result<Duration, Status>> + Send + 'static,
{
    move |channel: Channel, i: u64| {
        let (first, second) = (first.clone(), second.clone());
        Box::pin(async move {
            let latency = first(channel.clone(), i).await?;
            second(channel, i).await?;
            Ok(latency)
        })
    }
}

/// `call`, then `floor` (given the call's `i`), timed together: a floor under that load
/// (see `DurableFloor` and `OsFloor`).
fn then_floor<F, Fut, G, GFut>(
    call: F,
    floor: G,
) -> impl Fn(Channel, u64) -> CallFuture + Clone + Send + 'static
where
    F: Fn(Channel, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration, Status>> + Send + 'static,
    G: Fn(u64) -> GFut + Clone + Send + Sync + 'static,
    GFut: Future<Output = Result<(), Status>> + Send + 'static,
{
    move |channel: Channel, i: u64| {
        let (call, floor) = (call.clone(), floor.clone());
        Box::pin(async move {
            let at = Instant::now();
            call(channel, i).await?;
            floor(i).await?;
            Ok(at.elapsed())
        })
    }
}

/// What any durable hand-out waits for at least, timed beside a load: one small write
/// and a flush of the same store (through the store's group commit, where a
/// hand-out's flush goes too), every 5 ms for one measurement window.
async fn flush_probe(store: std::sync::Arc<dyn credvault::store::Store>) -> Stats {
    use credvault::store::{StoreExt, Tree};
    let mut stats = Stats::default();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let until = Instant::now() + window();
    for i in 0u64.. {
        tick.tick().await;
        if Instant::now() >= until {
            break;
        }
        let (key, value) = (b"bench-flush-probe", i.to_be_bytes());
        let at = Instant::now();
        store
            .swap(Tree::Meta, key, None, Some(&value))
            .await
            .unwrap();
        store.flush().await.unwrap();
        stats.latencies.push(at.elapsed());
        store
            .swap(Tree::Meta, key, Some(&value), None)
            .await
            .unwrap();
    }
    stats.elapsed = window();
    stats
}

/// A paced load's windows: alone, and again with the flush probe beside it.
struct Paced {
    /// The load alone (so that the probe's flushes do not weigh on its figures).
    alone: Stats,
    /// The same load in the probe's window.
    beside: Stats,
    /// The probe's flushes.
    probe: Stats,
}

/// `call` paced at `per_task` calls/s per task, then the same load again with the flush
/// probe beside it.
async fn paced_with_probe<F, Fut>(
    channels: &[Channel],
    per_task: f64,
    store: &std::sync::Arc<dyn credvault::store::Store>,
    call: F,
) -> Paced
where
    F: Fn(Channel, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Duration, Status>> + Send,
{
    let alone = drive(channels, Some(per_task), call.clone()).await;
    let probing = tokio::spawn(flush_probe(store.clone()));
    let beside = drive(channels, Some(per_task), call).await;
    Paced {
        alone,
        beside,
        probe: probing.await.unwrap(),
    }
}

/// A minimal tonic server answering health Check; `no_delay` as credvault sets it on
/// the streams it accepts.
async fn minimal_server(no_delay: bool) -> std::net::SocketAddr {
    use tokio_stream::StreamExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = TcpListenerStream::new(listener)
        .map(move |stream| stream.inspect(|s| s.set_nodelay(no_delay).unwrap()));
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    addr
}

/// Health Check, flat out, against the server at `addr`.
async fn health_load(addr: std::net::SocketAddr) -> Stats {
    drive(&channels(addr).await, None, |channel, _| async move {
        let at = Instant::now();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(at.elapsed())
    })
    .await
}

/// Where the bench's server log goes: JSON lines at info, as `serve` writes them (to
/// a file here, so their volume per call can be measured).
fn log_to(path: &std::path::Path) -> std::fs::File {
    let file = std::fs::File::create(path).unwrap();
    let writer = std::sync::Mutex::new(file.try_clone().unwrap());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(writer)
        .with_ansi(false)
        .json()
        .flatten_event(true)
        .init();
    file
}

/// Runs `load` and answers it with the server log it caused, in bytes per call.
async fn with_log_bytes(log: &std::fs::File, load: impl Future<Output = Stats>) -> (Stats, f64) {
    let before = log.metadata().unwrap().len();
    let stats = load.await;
    let bytes = log.metadata().unwrap().len() - before;
    let calls = stats.latencies.len().max(1);
    (stats, bytes as f64 / calls as f64)
}

async fn run() {
    if std::env::var(ONLY).as_deref() == Ok("etcd") {
        etcd::run().await;
        return;
    }
    let rounds = rounds();
    println!(
        "credentials under load: {CONNECTIONS} connections × {IN_FLIGHT} in flight, {rounds} interleaved rounds of {:.1} s, one 2-core machine; median round shown",
        window().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let log = log_to(&dir.path().join("server.log"));
    let settings = config(&dir.path().join("default")).resolve().unwrap();
    let Bench {
        addr,
        auth,
        jwt,
        store,
        sealer,
        stop,
        serving,
    } = serve(&settings).await;
    // The same vault with `[audit] log_lines = true`: every event also a log line.
    let mut logged = config(&dir.path().join("log-lines"));
    logged.audit.log_lines = true;
    let logged = serve(&logged.resolve().unwrap()).await;
    let logged_channels = channels(logged.addr).await;
    // The same vault with `[audit] sync = "os"`.
    let mut os_sync = config(&dir.path().join("os-sync"));
    os_sync.audit.sync = credvault::config::AuditSync::Os;
    let os_sync = serve(&os_sync.resolve().unwrap()).await;
    let os_channels = channels(os_sync.addr).await;
    let channels = channels(addr).await;

    let plain = minimal_server(true).await;
    let nagle = minimal_server(false).await;
    // Floors under a reveal, same caller and connections: an authenticated call that
    // reads one record (GetCallerInfo), and the masked read of the same accounts
    // (GetAccount: no credits, no durable audit event, no flush).
    let whoami = move |auth: Auth| {
        move |channel: Channel, _| {
            let auth = auth.clone();
            async move {
                let at = Instant::now();
                CallersClient::with_interceptor(channel, auth)
                    .get_caller_info(proto::GetCallerInfoRequest {})
                    .await?;
                Ok(at.elapsed())
            }
        }
    };
    let masked = move |auth: Auth| {
        move |channel: Channel, i: u64| {
            let auth = auth.clone();
            async move {
                let request = proto::GetAccountRequest {
                    provider: "pixverse".into(),
                    email: format!("user{}@example.com", i % 1000),
                };
                let at = Instant::now();
                AccountsClient::with_interceptor(channel, auth)
                    .get_account(request)
                    .await?;
                Ok(at.elapsed())
            }
        }
    };
    // Floors under durable hand-outs: the same calls, then the least a durable answer
    // adds (see `DurableFloor`; in this process, no audit event, no debit).
    let durable = DurableFloor::new(store.clone());
    let durable_round = move |_| {
        let durable = durable.clone();
        async move { durable.commit().await }
    };
    let masked_durable = then_floor(masked(auth.clone()), durable_round.clone());
    // The floor under an acquire-and-release pair: any two authenticated calls.
    let two_whoami = move |auth: Auth| in_turn(whoami(auth.clone()), whoami(auth));
    let two_whoami_durable = then_floor(two_whoami(auth.clone()), durable_round);
    // The floor under a durable lease pair: what an AcquireLease must do at least (an
    // authenticated call that reads and opens a pool account's sealed record and hands
    // its token out through the door, durably debited and audited) is a RevealAccount of
    // that account; the release, at least an authenticated call.
    let reveal_whoami =
        move |auth: Auth| in_turn(reveal_of(auth.clone(), "pool", 100), whoami(auth));
    let os_floor = OsFloor::new(sealer, &dir.path().join("os-floor"));
    let os_write = {
        let os_floor = os_floor.clone();
        move |i| std::future::ready(os_floor.write(i))
    };
    let masked_os_floor = then_floor(masked(auth.clone()), os_write);
    if std::env::var(ONLY).as_deref() == Ok("os") {
        // Target 7 and its floor alone, for an A/B: ratios to the masked read per round.
        let loads = ["masked", "masked + os floor", "reveal, sync = \"os\""];
        let mut rows: Vec<Row> = loads.iter().map(|_| Row::default()).collect();
        for _ in 0..rounds {
            let plain = drive(&channels, None, masked(auth.clone())).await;
            let base = plain.rate();
            rows[0].add(plain, base);
            rows[1].add(drive(&channels, None, masked_os_floor.clone()).await, base);
            os_floor.truncate();
            rows[2].add(
                drive(&os_channels, None, reveal(os_sync.auth.clone())).await,
                base,
            );
        }
        print_against(&loads, &rows, "call", "masked");
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        return;
    }
    if std::env::var(ONLY).as_deref() == Ok("pairs") {
        // The pair and its floors alone, for an A/B: ratios to two calls per round.
        let loads = [
            "two calls",
            "two calls + a flush",
            "reveal + a call",
            "lease pair",
        ];
        let mut rows: Vec<Row> = loads.iter().map(|_| Row::default()).collect();
        for _ in 0..rounds {
            let two = drive(&channels, None, two_whoami(auth.clone())).await;
            let base = two.rate();
            rows[0].add(two, base);
            rows[1].add(
                drive(&channels, None, two_whoami_durable.clone()).await,
                base,
            );
            rows[2].add(
                drive(&channels, None, reveal_whoami(auth.clone())).await,
                base,
            );
            rows[3].add(drive(&channels, None, lease(auth.clone())).await, base);
        }
        print_against(&loads, &rows, "pair", "two calls");
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        return;
    }
    if std::env::var(ONLY).as_deref() == Ok("half") {
        // Target 4 and its floor alone, for an A/B, measured as the full run does.
        let mut rows = Rows::default();
        for round in 0..rounds {
            let peak = drive(&channels, None, lease(auth.clone())).await;
            let per_task = peak.rate() / 2.0 / (CONNECTIONS * IN_FLIGHT) as f64;
            let base = peak.rate();
            let mut half = paced_with_probe(&channels, per_task, &store, lease(auth.clone())).await;
            let mut floor =
                paced_with_probe(&channels, per_task, &store, reveal_whoami(auth.clone())).await;
            let probe = half.probe.percentile_ms(99);
            let floor_probe = floor.probe.percentile_ms(99);
            println!(
                "  round {round}: peak {:.0} pairs/s; half p99 {:.2} ms ×probe {:.2} (beside it {:.2}); floor p99 {:.2} ms ×its probe {:.2} (beside it {:.2})",
                peak.rate(),
                half.alone.percentile_ms(99),
                half.alone.percentile_ms(99) / probe,
                half.beside.percentile_ms(99) / probe,
                floor.alone.percentile_ms(99),
                floor.alone.percentile_ms(99) / floor_probe,
                floor.beside.percentile_ms(99) / floor_probe,
            );
            rows.add_half(half, floor, base);
        }
        rows.half_rate.print("AcquireLease at half its peak rate");
        rows.half_beside.print("  the same in the probe's window");
        rows.probe.print("  flush probe beside it");
        rows.half_floor
            .print("  floor: RevealAccount + GetCallerInfo at that rate");
        rows.floor_beside.print("  the same in the probe's window");
        rows.floor_probe.print("  flush probe beside the floor");
        let targets = rows.half_targets();
        println!("  {}", serde_json::Value::Object(targets));
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        return;
    }
    // For a profiler: one load alone for 10 s, then exit.
    if let Ok(only) = std::env::var(ONLY)
        && only != "sled"
    {
        // For `callgrind_control -i on` (run under `valgrind --instr-atstart=no`).
        println!("  {only}: the load starts");
        let until = Instant::now() + Duration::from_secs(10);
        let mut stats = Stats::default();
        while Instant::now() < until {
            let paced = env_number("CREDVAULT_BENCH_RATE")
                .map(|rate| rate / (CONNECTIONS * IN_FLIGHT) as f64);
            stats.merge(match only.as_str() {
                "reveal" => drive(&channels, paced, reveal(auth.clone())).await,
                "reveal_os" => drive(&os_channels, paced, reveal(os_sync.auth.clone())).await,
                "lease" => drive(&channels, paced, lease(auth.clone())).await,
                "reveal_whoami" => drive(&channels, paced, reveal_whoami(auth.clone())).await,
                "whoami" => drive(&channels, paced, whoami(auth.clone())).await,
                "whoami_jwt" => drive(&channels, paced, whoami(jwt.clone())).await,
                "masked" => drive(&channels, paced, masked(auth.clone())).await,
                "os_floor" => drive(&channels, paced, masked_os_floor.clone()).await,
                _ => health_load(addr).await,
            });
        }
        stats.elapsed = Duration::from_secs(10);
        let (p50, p99) = (stats.percentile_ms(50), stats.percentile_ms(99));
        println!(
            "  {only} alone: {} calls, {:.0}/s p50 {p50:.2} ms p99 {p99:.2} ms {:?}",
            stats.latencies.len(),
            stats.rate(),
            stats.codes
        );
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
        return;
    }

    let mut rows = Rows::default();
    let (mut log_off, mut log_on) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Baseline: the same transport settings as credvault (TCP_NODELAY on accepted
        // streams); the same without TCP_NODELAY is shown for comparison.
        let baseline = health_load(plain).await;
        let base = baseline.rate();
        rows.baseline.add(baseline, base);
        rows.nagle.add(health_load(nagle).await, base);
        // credvault's own stack (auth layer, router) on its public health RPC.
        rows.check.add(health_load(addr).await, base);
        rows.whoami
            .add(drive(&channels, None, whoami(auth.clone())).await, base);
        rows.whoami_jwt
            .add(drive(&channels, None, whoami(jwt.clone())).await, base);
        rows.masked
            .add(drive(&channels, None, masked(auth.clone())).await, base);
        rows.masked_durable
            .add(drive(&channels, None, masked_durable.clone()).await, base);
        let (reveals, bytes) =
            with_log_bytes(&log, drive(&channels, None, reveal(auth.clone()))).await;
        rows.reveal.add(reveals, base);
        log_off.push(bytes);
        let (reveals, bytes) = with_log_bytes(
            &log,
            drive(&logged_channels, None, reveal(logged.auth.clone())),
        )
        .await;
        rows.reveal_log_lines.add(reveals, base);
        log_on.push(bytes);
        rows.reveal_os_sync.add(
            drive(&os_channels, None, reveal(os_sync.auth.clone())).await,
            base,
        );
        rows.masked_os_floor
            .add(drive(&channels, None, masked_os_floor.clone()).await, base);
        os_floor.truncate();
        let two = drive(&channels, None, two_whoami(auth.clone())).await;
        rows.two_whoami.add(two, base);
        rows.two_whoami_durable.add(
            drive(&channels, None, two_whoami_durable.clone()).await,
            base,
        );
        rows.reveal_whoami.add(
            drive(&channels, None, reveal_whoami(auth.clone())).await,
            base,
        );
        let pairs = drive(&channels, None, lease(auth.clone())).await;
        // At half of this round's peak, each of the tasks paced (open loop).
        let per_task = pairs.rate() / 2.0 / (CONNECTIONS * IN_FLIGHT) as f64;
        rows.lease.add(pairs, base);
        let half = paced_with_probe(&channels, per_task, &store, lease(auth.clone())).await;
        // Target 4's floor: what an acquire does at least, at the same rate.
        let floor =
            paced_with_probe(&channels, per_task, &store, reveal_whoami(auth.clone())).await;
        rows.add_half(half, floor, base);
    }
    rows.baseline
        .print("baseline: minimal tonic server, unary Check");
    rows.nagle.print("  (the same without TCP_NODELAY)");
    rows.check
        .print("credvault: unary Check (auth layer, no store)");
    rows.whoami
        .print("  floor: GetCallerInfo (API key + secret, no hand-out)");
    rows.whoami_jwt
        .print("GetCallerInfo with a JWT (the same caller)");
    rows.masked
        .print("  floor: GetAccount masked (same accounts, no audit)");
    rows.masked_durable
        .print("  floor: GetAccount masked + a group-committed flush");
    rows.reveal
        .print("RevealAccount, 1,000 accounts (metered caller)");
    println!(
        "    server log at info per reveal: {:.1} bytes",
        median(&log_off)
    );
    rows.reveal_log_lines
        .print("RevealAccount with [audit] log_lines = true");
    println!(
        "    server log at info per reveal: {:.1} bytes",
        median(&log_on)
    );
    rows.reveal_os_sync
        .print("RevealAccount with [audit] sync = \"os\"");
    rows.masked_os_floor
        .print("  floor: GetAccount masked + 2 HMACs, a sealed record write(2), fdatasync/50 ms");
    rows.two_whoami
        .print("  floor: two GetCallerInfo in a row, per pair");
    rows.two_whoami_durable
        .print("  floor: the two + a group-committed flush, per pair");
    rows.reveal_whoami
        .print("  floor: RevealAccount of a pool account + GetCallerInfo");
    rows.lease
        .print("AcquireLease (each then released), 100 × 8");
    println!(
        "  … counting the releases too: {:.0} calls/s, ×baseline {:.2}",
        2.0 * median(&rows.lease.rates),
        2.0 * median(&rows.lease.ratios)
    );
    rows.half_rate.print("AcquireLease at half its peak rate");
    rows.half_beside
        .print("  the same again, in the flush probe's window");
    rows.probe
        .print("  floor: one store write + flush beside that load, every 5 ms (calls/s: probes)");
    rows.half_floor
        .print("  floor: RevealAccount of a pool account + GetCallerInfo at that rate");
    rows.floor_beside
        .print("    the same again, in its flush probe's window");
    rows.floor_probe
        .print("    the same probe beside that floor load");

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    for other in [logged, os_sync] {
        let _ = other.stop.send(());
        other.serving.await.unwrap().unwrap();
    }
    store_flush_latency().await;
    let (etcd_rows, rss_mib) = if std::env::var(ONLY).as_deref() == Ok("sled") {
        (etcd::EtcdRows::default(), None)
    } else {
        (etcd::run().await, Some(rss_run()))
    };

    let mut summary = serde_json::json!({
        "rounds": rounds,
        "secs": window().as_secs_f64(),
        "rss_100k_mib": rss_mib.map(|(created, _, _)| round(created, 1)),
        "rss_100k_started_mib": rss_mib.map(|(_, started, _)| round(started, 1)),
        "rss_100k_store_alone_mib": rss_mib.map(|(_, _, store)| round(store, 1)),
        "log_bytes_per_reveal": {
            "log_lines_off": round(median(&log_off), 1),
            "log_lines_on": round(median(&log_on), 1),
        },
    });
    let serde_json::Value::Object(mut targets) = serde_json::json!({
        "whoami_jwt_vs_key": per_round(&rows.whoami_jwt, &rows.whoami),
        "reveal_vs_masked": per_round(&rows.reveal, &rows.masked),
        "lease_pair_vs_two_calls": per_round(&rows.lease, &rows.two_whoami),
        "reveal_os_sync_vs_masked": per_round(&rows.reveal_os_sync, &rows.masked),
        // What the least an "os" reveal adds leaves of target 7.
        "masked_os_floor_vs_masked": per_round(&rows.masked_os_floor, &rows.masked),
        "reveal_os_sync_vs_masked_os_floor": per_round(&rows.reveal_os_sync, &rows.masked_os_floor),
        // What the durable floors leave of the reveal and pair targets: above the
        // target, it is within reach; below, no durable hand-out can meet it here.
        "masked_durable_vs_masked": per_round(&rows.masked_durable, &rows.masked),
        "reveal_vs_masked_durable": per_round(&rows.reveal, &rows.masked_durable),
        "two_calls_durable_vs_two_calls": per_round(&rows.two_whoami_durable, &rows.two_whoami),
        "lease_pair_vs_two_calls_durable": per_round(&rows.lease, &rows.two_whoami_durable),
        // The floor a lease pair cannot beat: a reveal of the same accounts and a call.
        "reveal_then_call_vs_two_calls": per_round(&rows.reveal_whoami, &rows.two_whoami),
        "lease_pair_vs_reveal_then_call": per_round(&rows.lease, &rows.reveal_whoami),
        "reveal_log_lines_vs_off": round(
            median(&rows.reveal_log_lines.rates) / median(&rows.reveal.rates),
            3,
        ),
    }) else {
        unreachable!("an object literal")
    };
    let mut loads = serde_json::Map::new();
    for (name, row) in [
        ("baseline", &mut rows.baseline),
        ("whoami_key", &mut rows.whoami),
        ("whoami_jwt", &mut rows.whoami_jwt),
        ("masked", &mut rows.masked),
        ("masked_durable", &mut rows.masked_durable),
        ("reveal", &mut rows.reveal),
        ("reveal_os_sync", &mut rows.reveal_os_sync),
        ("masked_os_floor", &mut rows.masked_os_floor),
        ("reveal_log_lines", &mut rows.reveal_log_lines),
        ("two_calls", &mut rows.two_whoami),
        ("two_calls_durable", &mut rows.two_whoami_durable),
        ("reveal_then_call", &mut rows.reveal_whoami),
        ("lease_pair", &mut rows.lease),
        ("lease_half", &mut rows.half_rate),
        ("flush_probe", &mut rows.probe),
        ("reveal_then_call_half", &mut rows.half_floor),
        ("flush_probe_floor", &mut rows.floor_probe),
        ("lease_half_beside_probe", &mut rows.half_beside),
        ("reveal_then_call_half_beside_probe", &mut rows.floor_beside),
    ] {
        loads.insert(name.into(), row.summary());
    }
    for (name, value) in etcd_rows.loads {
        loads.insert(name.into(), value);
    }
    for (name, value) in etcd_rows.targets {
        targets.insert(name.into(), value.into());
    }
    targets.extend(rows.half_targets());
    let object = summary.as_object_mut().unwrap();
    object.extend(loads);
    object.insert("targets".into(), targets.into());
    println!("BENCH_SUMMARY {summary}");
}

/// RSS with 100,000 accounts, measured in child processes: the one that creates them
/// (the allocator keeps some of what creating them churned), and one started on them.
fn rss_run() -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap().to_base64().to_string();
    let child = |started: bool, store_only: bool| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args(std::env::args().skip(1))
            .env(RSS_CHILD, "1")
            .env(RSS_DIR, dir.path())
            .env(RSS_KEY, &key);
        if started {
            command.env(RSS_STARTED, "1");
        }
        if store_only {
            command.env(RSS_STORE_ONLY, "1");
        }
        let rss = command.output().unwrap();
        let out = String::from_utf8_lossy(&rss.stdout);
        print!("{out}");
        assert!(rss.status.success(), "the RSS run failed");
        out.lines()
            .find_map(|l| l.strip_prefix(RSS_LINE))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .expect("the RSS run printed its figure")
    };
    (child(false, false), child(true, false), child(true, true))
}

/// The median over rounds of `a`'s rate over `b`'s in the same round.
fn per_round(a: &Row, b: &Row) -> f64 {
    let ratios: Vec<f64> = a.rates.iter().zip(&b.rates).map(|(a, b)| a / b).collect();
    round(median(&ratios), 3)
}
