//! Soak: the daemon binary under a mixed load for SOAK_SECS (default 600) — reveals,
//! leases, reads, token issue and revoke — while the fake upstream's short-lived
//! tokens keep the refresh engine logging accounts in. Every 10 s it prints the
//! daemon's RSS, the store's size on disk and the calls answered; at the end, RSS
//! growth after warm-up (the first fifth), the answers by status code, and a verdict
//! against the targets: RSS growth under 10%, no unexpected code, the store's growth
//! accounted for by the audit trail.
//!
//! Growth is the median RSS of the last tenth of the run against the median of the
//! tenth right after warm-up: single samples move by ±5% (transient buffers), so one
//! high sample against one low one measured noise, not growth. The highest sample is
//! printed too.
//!
//! `cargo bench --bench soak` (SOAK_SECS=60 for a short run).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use credvault::{
    api::layer::code_name,
    clock::SystemClock,
    crypto::MasterKey,
    proto::{
        self, accounts_client::AccountsClient, callers_client::CallersClient,
        credentials_client::CredentialsClient,
    },
};
use fake_upstream::FakeUpstream;
use tonic::{Request, Status, metadata::MetadataValue, service::Interceptor, transport::Channel};

const ADMIN_TOKEN: &str = "soak-admin-token-0123456789abcdef-xyz";
const SECRET: &str = "50a4c0ffee0ddba11f00dfeedfacecafebeef00d1234567890abcdef01234567";
const ACCOUNTS: usize = 200;
const WORKERS: usize = 8;
const PASSWORD: &str = "soak-upstream-password";

#[derive(Clone)]
struct Auth(Vec<(&'static str, String)>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (name, value) in &self.0 {
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| Status::internal("bad metadata"))?;
            request.metadata_mut().insert(*name, value);
        }
        Ok(request)
    }
}

fn admin() -> Auth {
    Auth(vec![("authorization", format!("Bearer {ADMIN_TOKEN}"))])
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
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

fn dir_mib(dir: &Path) -> f64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

#[derive(Default)]
struct Codes(Mutex<BTreeMap<&'static str, u64>>);

impl Codes {
    fn count<T>(&self, outcome: &Result<T, Status>) {
        let name = match outcome {
            Ok(_) => "OK",
            Err(status) => code_name(status.code()),
        };
        *self.0.lock().unwrap().entry(name).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap().clone()
    }
}

fn pick(n: usize) -> usize {
    credvault::crypto::random_below(n as u64) as usize
}

async fn worker(
    channel: Channel,
    consumer: Auth,
    caller_id: String,
    codes: Arc<Codes>,
    end: Instant,
) {
    let mut accounts = AccountsClient::with_interceptor(channel.clone(), admin());
    let mut credentials = CredentialsClient::with_interceptor(channel.clone(), consumer);
    let mut callers = CallersClient::with_interceptor(channel, admin());
    while Instant::now() < end {
        let email = format!("soak{}@acme.com", pick(ACCOUNTS));
        match pick(20) {
            0..=7 => {
                let outcome = credentials
                    .reveal_account(proto::RevealAccountRequest {
                        provider: "pixverse".into(),
                        email,
                    })
                    .await;
                codes.count(&outcome);
            }
            8..=13 => {
                let outcome = credentials
                    .acquire_lease(proto::AcquireLeaseRequest {
                        provider: "pixverse".into(),
                        ttl: Some(prost_types::Duration {
                            seconds: 30,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                    .await;
                codes.count(&outcome);
                if let Ok(lease) = outcome {
                    let released = credentials
                        .release_lease(proto::ReleaseLeaseRequest {
                            lease_id: lease.into_inner().lease_id,
                        })
                        .await;
                    codes.count(&released);
                }
            }
            14..=16 => {
                let outcome = accounts
                    .get_account(proto::GetAccountRequest {
                        provider: "pixverse".into(),
                        email,
                    })
                    .await;
                codes.count(&outcome);
            }
            17 => {
                let outcome = accounts
                    .list_accounts(proto::ListAccountsRequest {
                        provider: "pixverse".into(),
                        page_size: 50,
                        ..Default::default()
                    })
                    .await;
                codes.count(&outcome);
            }
            _ => {
                let issued = callers
                    .issue_token(proto::IssueTokenRequest {
                        caller_id: caller_id.clone(),
                    })
                    .await;
                codes.count(&issued);
                if let Ok(issued) = issued {
                    let revoked = callers
                        .revoke_token(proto::RevokeTokenRequest {
                            jwt: issued.into_inner().jwt,
                            ..Default::default()
                        })
                        .await;
                    codes.count(&revoked);
                }
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fake = FakeUpstream::start(Arc::new(SystemClock)).await.unwrap();
    // Tokens live two minutes and are refreshed 10 s before expiry: about
    // ACCOUNTS / 110 logins a second, all the time.
    fake.set_token_lifetime(120);
    for i in 0..ACCOUNTS {
        fake.add_user(&format!("soak{i}@acme.com"), PASSWORD);
    }
    let key_file = dir.path().join("master.key");
    std::fs::write(
        &key_file,
        MasterKey::generate().unwrap().to_base64().as_bytes(),
    )
    .unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let config_file = dir.path().join("credvault.toml");
    std::fs::write(
        &config_file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\nmaster_key_file = {key_file:?}\n\
             admin_token_file = {token_file:?}\nlog_filter = \"warn,credvault=info\"\n\
             [providers.pixverse]\nbase_url = \"{}\"\n[refresh]\nskew_secs = 10\n",
            fake.base_url()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_credvault"))
        .args(["serve", "--config", config_file.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("credvault starts");
    let pid = daemon.id();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let log_lines = Arc::new(AtomicU64::new(0));
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let stderr = daemon.stderr.take().unwrap();
        let log_lines = log_lines.clone();
        let warnings = warnings.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log_lines.fetch_add(1, Ordering::Relaxed);
                if line.contains("credvault serving")
                    && let Some(at) = line.find("127.0.0.1:")
                {
                    let addr: String = line[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = addr_tx.send(addr);
                }
                if line.contains("ERROR") {
                    warnings.lock().unwrap().push(line);
                }
            }
        });
    }
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon serves");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut accounts = AccountsClient::with_interceptor(channel.clone(), admin());
    for i in 0..ACCOUNTS {
        accounts
            .create_account(proto::CreateAccountRequest {
                provider: "pixverse".into(),
                email: format!("soak{i}@acme.com"),
                password: PASSWORD.into(),
                max_jobs: 4,
                ..Default::default()
            })
            .await
            .expect("accounts are created");
    }
    let mut consumers = Vec::new();
    for w in 0..WORKERS {
        let mut callers = CallersClient::with_interceptor(channel.clone(), admin());
        let created = callers
            .create_caller(proto::CreateCallerRequest {
                email: format!("worker{w}@acme.com"),
                secret: SECRET.into(),
                roles: vec![proto::Role::Consumer as i32],
                scopes: vec!["pixverse".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let auth = Auth(vec![
            ("authorization", format!("Bearer {}", created.api_key)),
            ("x-credvault-secret", SECRET.into()),
        ]);
        CallersClient::with_interceptor(channel.clone(), auth.clone())
            .activate_caller(proto::ActivateCallerRequest {})
            .await
            .unwrap();
        callers
            .update_caller(proto::UpdateCallerRequest {
                caller_id: created.caller_id.clone(),
                unmetered: Some(true),
                ..Default::default()
            })
            .await
            .unwrap();
        consumers.push((auth, created.caller_id));
    }

    let codes = Arc::new(Codes::default());
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut workers = tokio::task::JoinSet::new();
    for (auth, caller_id) in consumers {
        workers.spawn(worker(channel.clone(), auth, caller_id, codes.clone(), end));
    }
    let logins_at_start = fake.requests();
    println!("soak: {secs} s, {ACCOUNTS} accounts, {WORKERS} workers, daemon pid {pid}");
    println!(
        "{:>6} {:>9} {:>10} {:>9} {:>10}",
        "t (s)", "RSS MiB", "store MiB", "calls/s", "logins"
    );
    let mut samples: Vec<(u64, f64, f64)> = Vec::new();
    let mut last_calls = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs();
        let calls: u64 = codes.snapshot().values().sum();
        let (rss, store) = (rss_mib(pid), dir_mib(&data));
        println!(
            "{t:>6} {rss:>9.1} {store:>10.1} {:>9.0} {:>10}",
            (calls - last_calls) as f64 / 10.0,
            fake.requests() - logins_at_start
        );
        last_calls = calls;
        samples.push((t, rss, store));
        if Instant::now() >= end {
            break;
        }
    }
    while workers.join_next().await.is_some() {}

    let warm = secs / 5;
    let after_warmup: Vec<&(u64, f64, f64)> = samples.iter().filter(|s| s.0 >= warm).collect();
    let (rss_warm, store_warm) = after_warmup.first().map_or((0.0, 0.0), |s| (s.1, s.2));
    let (rss_end, store_end) = samples.last().map_or((0.0, 0.0), |s| (s.1, s.2));
    let rss_max = after_warmup.iter().map(|s| s.1).fold(0.0, f64::max);
    let window = (secs / 10).max(30);
    let median_rss = |from: u64, to: u64| {
        let mut rss: Vec<f64> = samples
            .iter()
            .filter(|s| s.0 >= from && s.0 < to)
            .map(|s| s.1)
            .collect();
        rss.sort_by(f64::total_cmp);
        rss.get(rss.len() / 2).copied().unwrap_or(0.0)
    };
    let (rss_early, rss_late) = (
        median_rss(warm, warm + window),
        median_rss(secs.saturating_sub(window) + 1, u64::MAX),
    );
    let growth = 100.0 * (rss_late - rss_early) / rss_early;
    let peak = 100.0 * (rss_max - rss_warm) / rss_warm;
    let codes = codes.snapshot();
    let unexpected: Vec<_> = codes
        .iter()
        .filter(|(code, _)| !["OK", "RESOURCE_EXHAUSTED"].contains(code))
        .collect();
    let total: u64 = codes.values().sum();
    // Reveals, acquires, renews, releases and token calls each leave one audit event.
    let store_per_kcall = (store_end - store_warm) * 1024.0 / (total as f64 / 1000.0);
    println!(
        "calls: {total} ({:.0}/s) by code: {codes:?}",
        total as f64 / secs as f64
    );
    println!(
        "upstream logins (refreshes): {}",
        fake.requests() - logins_at_start
    );
    println!(
        "RSS median over {window} s: {rss_early:.1} MiB after warm-up ({warm} s), {rss_late:.1} at the end; growth {growth:.1}% (target < 10%)"
    );
    println!(
        "RSS samples: {rss_warm:.1} MiB after warm-up, highest {rss_max:.1} ({peak:+.1}%), last {rss_end:.1}"
    );
    println!(
        "store on disk: {store_warm:.1} MiB after warm-up, {store_end:.1} MiB at the end ({store_per_kcall:.1} KiB per 1,000 calls: the audit trail, pruned after audit_retention_days)"
    );
    if std::env::var_os("SOAK_LIST").is_some() {
        let _ = Command::new("du").args(["-a", "-k"]).arg(&data).status();
    }
    let errors = warnings.lock().unwrap().clone();
    println!("daemon ERROR lines: {}", errors.len());
    for line in errors.iter().take(5) {
        println!("  {line}");
    }
    let ok = growth < 10.0 && unexpected.is_empty() && errors.is_empty();
    println!(
        "verdict: {} (unexpected codes: {unexpected:?})",
        if ok { "PASS" } else { "FAIL" }
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = daemon.wait();
    if !ok {
        // `exit` runs no destructor: remove the data directory first.
        drop(dir);
        std::process::exit(1);
    }
}
