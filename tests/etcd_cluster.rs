//! Three credvault processes (the real binary) on one real 3-member etcd cluster: the
//! invariants that must hold across processes, under load and under faults of etcd
//! and of credvault itself (SIGSTOP, SIGKILL).
//!
//! - `maxJobs` holds cluster-wide: 300 concurrent AcquireLease over the three nodes on
//!   5 accounts x maxJobs 3, with no fault, with the etcd leader SIGSTOPped for 5 s,
//!   and with it SIGKILLed and restarted. Two independent checkers: the clients count
//!   the leases they hold per account at every moment, and etcd's own history of the
//!   slot keys, replayed in revision order, is counted per account after each round.
//! - A SIGKILLed process's leases free at their TTL, not before.
//! - One login per account: 20 concurrent RefreshAccount over the three nodes log in
//!   once; the lock holder SIGKILLed mid-login is taken over after the lock's TTL.
//! - Credits: 300 concurrent reveals over the three nodes on a balance of 100 grant
//!   exactly 100. A JWT revoked on A is refused by B within a second. A watcher on C
//!   hears of a token rotated through A.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use fake_upstream::FakeUpstream;
use support::{Auth, Daemon, Reach, Remote, etcd::EtcdCluster, leasable, proto};
use tonic::Code;

const PREFIX: &str = "/cluster-test";
/// The cases run one after another: each runs six processes, and their timing checks
/// (a TTL, a lock's expiry) should not measure the other cases' load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SECRET: &str = "etcd-cluster-secret-0123456789abcdef";
const PASSWORD: &str = "pw-123456";

/// One credvault process on the cluster.
struct Node {
    daemon: Daemon,
    remote: Remote,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(cluster: &EtcdCluster, key: &str, name: &str, upstream: Option<&str>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let endpoints = cluster.endpoints().join(",");
        let mut env = vec![
            ("CREDVAULT_MASTER_KEY", key.to_owned()),
            ("CREDVAULT_ADMIN_TOKEN", support::ADMIN_TOKEN.to_owned()),
            ("CREDVAULT_STORE__BACKEND", "etcd".to_owned()),
            ("CREDVAULT_STORE__ETCD__ENDPOINTS", endpoints),
            ("CREDVAULT_STORE__ETCD__PREFIX", PREFIX.to_owned()),
            ("CREDVAULT_NODE_ID", name.to_owned()),
        ];
        if let Some(url) = upstream {
            env.push(("CREDVAULT_PROVIDERS__PIXVERSE__BASE_URL", url.to_owned()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let data = dir.path().to_str().unwrap();
        let daemon = Daemon::spawn(
            &["serve", "--listen", "127.0.0.1:0", "--data-dir", data],
            &env,
        );
        let addr = daemon.wait_for_addr();
        Node {
            daemon,
            remote: Remote(addr),
            _dir: dir,
        }
    }
}

/// Three nodes on `cluster`, and an unmetered consumer's API key every node accepts.
async fn three_nodes(cluster: &EtcdCluster, upstream: Option<&str>) -> (Vec<Node>, String) {
    let key = support::new_key();
    let nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|name| Node::start(cluster, &key, name, upstream))
        .collect();
    let (_, api_key) =
        support::unmetered_consumer(&nodes[0].remote, "svc@example.com", SECRET).await;
    for node in &nodes {
        assert!(
            support::eventually(Duration::from_secs(10), async || {
                node.remote
                    .callers(Auth::api_key(&api_key, SECRET))
                    .await
                    .get_caller_info(proto::GetCallerInfoRequest {})
                    .await
                    .is_ok()
            })
            .await,
            "every node knows the consumer"
        );
    }
    (nodes, api_key)
}

fn acquire(email: &str, ttl_secs: i64, wait_secs: i64) -> proto::AcquireLeaseRequest {
    proto::AcquireLeaseRequest {
        provider: "pixverse".into(),
        email: email.into(),
        ttl: Some(prost_types::Duration {
            seconds: ttl_secs,
            nanos: 0,
        }),
        wait_timeout: Some(prost_types::Duration {
            seconds: wait_secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Writes a mark beside credvault's trees (no tree of it) and answers its revision:
/// where a replay of the history starts or ends.
async fn mark(cluster: &EtcdCluster) -> i64 {
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    client
        .put(format!("{PREFIX}/checker-mark"), "", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// Replays etcd's history of the slot keys from `from` through `to` in revision order
/// and answers the most slots any one account held at any revision, and how many
/// slots were taken (or renewed). Independent of credvault: it reads etcd's keys only.
async fn replay_slots(cluster: &EtcdCluster, from: i64, to: i64) -> (usize, usize) {
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let prefix = format!("{PREFIX}/leases/");
    // What was held at `from`.
    let at_start = client
        .get(
            prefix.as_str(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_revision(from),
            ),
        )
        .await
        .unwrap();
    let mut held: HashMap<String, BTreeMap<String, ()>> = HashMap::new();
    let split = |key: &[u8]| -> Option<(String, String)> {
        let key = std::str::from_utf8(key)
            .ok()?
            .strip_prefix(prefix.as_str())?;
        let (account, slot) = key.rsplit_once('/')?;
        Some((account.to_owned(), slot.to_owned()))
    };
    for kv in at_start.kvs() {
        if let Some((account, slot)) = split(kv.key()) {
            held.entry(account).or_default().insert(slot, ());
        }
    }
    let mut stream = client
        .watch(
            format!("{PREFIX}/"),
            Some(
                etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(from + 1),
            ),
        )
        .await
        .unwrap();
    let mut most = held.values().map(BTreeMap::len).max().unwrap_or(0);
    let mut puts = 0;
    let mut last = from;
    // Events of one revision come together; the count is checked between revisions.
    while last < to {
        let answer = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the history replays")
            .unwrap()
            .expect("the watch stays open");
        let mut revision = 0;
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            last = last.max(kv.mod_revision());
            if kv.mod_revision() > to {
                continue;
            }
            if kv.mod_revision() != revision {
                most = most.max(held.values().map(BTreeMap::len).max().unwrap_or(0));
                revision = kv.mod_revision();
            }
            let Some((account, slot)) = split(kv.key()) else {
                continue;
            };
            match event.event_type() {
                etcd_client::EventType::Put => {
                    puts += 1;
                    held.entry(account).or_default().insert(slot, ());
                }
                etcd_client::EventType::Delete => {
                    held.entry(account).or_default().remove(&slot);
                }
            }
        }
        most = most.max(held.values().map(BTreeMap::len).max().unwrap_or(0));
    }
    (most, puts)
}

/// What one round of acquirers saw.
#[derive(Debug, Default)]
struct Round {
    granted: usize,
    /// The most leases the clients held on one account at once.
    most_held: usize,
    refusals: BTreeMap<String, usize>,
}

/// `total` acquirers spread over the nodes and over 5 accounts; each holds its lease a
/// moment and releases it. Refusals of a faulty moment (UNAVAILABLE) are retried.
async fn acquire_round(nodes: &[Node], api_key: &str, total: usize) -> Round {
    let holding: Arc<Vec<AtomicUsize>> = Arc::new((0..5).map(|_| AtomicUsize::new(0)).collect());
    let most = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let mut client = nodes[i % nodes.len()]
            .remote
            .credentials(Auth::api_key(api_key, SECRET))
            .await;
        let (holding, most, refusals) = (holding.clone(), most.clone(), refusals.clone());
        tasks.spawn(async move {
            let account = i % 5;
            let email = format!("pool{account}@example.com");
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                assert!(Instant::now() < deadline, "acquirer {i} never got a lease");
                let lease = match client.acquire_lease(acquire(&email, 20, 30)).await {
                    Ok(lease) => lease.into_inner(),
                    Err(status) => {
                        *refusals
                            .lock()
                            .unwrap()
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let now = holding[account].fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // The job: a moment of work while holding the slot.
                tokio::time::sleep(Duration::from_millis(10 + (i % 7) as u64 * 5)).await;
                holding[account].fetch_sub(1, Ordering::SeqCst);
                // Released until it sticks (a lease that is gone is released too).
                loop {
                    let released = client
                        .release_lease(proto::ReleaseLeaseRequest {
                            lease_id: lease.lease_id.clone(),
                        })
                        .await;
                    match released {
                        Ok(_) => break,
                        Err(status) if status.code() == Code::NotFound => break,
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => panic!("release never went through: {status}"),
                    }
                }
                return;
            }
        });
    }
    let mut granted = 0;
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
        granted += 1;
    }
    let refusals = refusals.lock().unwrap().clone();
    Round {
        granted,
        most_held: most.load(Ordering::SeqCst),
        refusals,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_jobs_holds_across_three_processes_under_load_and_leader_faults() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::start(3).await;
    let (nodes, api_key) = three_nodes(&cluster, None).await;
    for account in 0..5 {
        nodes[account % 3]
            .remote
            .accounts_with(Auth::admin())
            .await
            .create_account(leasable(&format!("pool{account}@example.com"), PASSWORD, 3))
            .await
            .unwrap();
    }
    for node in &nodes {
        let seen = support::eventually(Duration::from_secs(10), async || {
            node.remote
                .credentials(Auth::api_key(&api_key, SECRET))
                .await
                .reveal_account(proto::RevealAccountRequest {
                    provider: "pixverse".into(),
                    email: "pool4@example.com".into(),
                })
                .await
                .is_ok()
        })
        .await;
        assert!(seen, "every node serves the accounts");
    }

    for fault in ["none", "leader SIGSTOP 5 s", "leader SIGKILL + restart"] {
        let from = mark(&cluster).await;
        let started = Instant::now();
        let injected = {
            let leader = cluster.leader().await.expect("a leader");
            let cluster = &cluster;
            async move {
                // Into the thick of the round.
                tokio::time::sleep(Duration::from_millis(300)).await;
                match fault {
                    "leader SIGSTOP 5 s" => {
                        cluster.pause(leader);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        cluster.resume(leader);
                    }
                    "leader SIGKILL + restart" => {
                        cluster.kill(leader);
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        cluster.restart(leader);
                    }
                    _ => {}
                }
            }
        };
        let (round, ()) = tokio::join!(acquire_round(&nodes, &api_key, 300), injected);
        let took = started.elapsed();
        cluster.wait_ready().await;
        let to = mark(&cluster).await;
        let (most_in_etcd, slot_puts) = replay_slots(&cluster, from, to).await;
        println!(
            "fault {fault}: {} granted in {took:.1?}, clients held at most {} on one account, etcd's history at most {most_in_etcd} over {slot_puts} slots taken; refusals retried: {:?}",
            round.granted, round.most_held, round.refusals
        );
        assert_eq!(round.granted, 300);
        assert!(
            round.most_held <= 3,
            "clients held {} at once",
            round.most_held
        );
        assert!(round.most_held >= 2, "the round never ran concurrently");
        assert!(
            most_in_etcd <= 3,
            "etcd held {most_in_etcd} slots of one account"
        );
        assert!(slot_puts >= 300, "{slot_puts} slots taken for 300 leases");
    }
    for node in &nodes {
        assert!(
            !node.daemon.output().contains("panicked"),
            "{}",
            node.daemon.output()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_leases_free_at_their_ttl_not_before() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::start(3).await;
    let (mut nodes, api_key) = three_nodes(&cluster, None).await;
    nodes[0]
        .remote
        .accounts_with(Auth::admin())
        .await
        .create_account(leasable("held@example.com", PASSWORD, 2))
        .await
        .unwrap();
    let auth = || Auth::api_key(&api_key, SECRET);
    const TTL: i64 = 6;
    let mut on_a = nodes[0].remote.credentials(auth()).await;
    on_a.acquire_lease(acquire("held@example.com", TTL, 0))
        .await
        .unwrap();
    on_a.acquire_lease(acquire("held@example.com", TTL, 0))
        .await
        .unwrap();
    let granted = Instant::now();
    nodes[0].daemon.kill();

    // B finds both slots held, and its waiter is served only once a slot's TTL ran out.
    let mut on_b = nodes[1].remote.credentials(auth()).await;
    let refused = on_b
        .acquire_lease(acquire("held@example.com", TTL, 0))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
    on_b.acquire_lease(acquire("held@example.com", TTL, 30))
        .await
        .unwrap();
    let freed = granted.elapsed();
    println!("a SIGKILLed node's lease freed {freed:?} after it was granted (ttl {TTL} s)");
    assert!(
        freed >= Duration::from_secs(TTL as u64) - Duration::from_millis(500),
        "freed after {freed:?}, before its TTL"
    );
    assert!(
        freed < Duration::from_secs(TTL as u64 + 10),
        "freed after {freed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_per_account_across_three_processes() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeUpstream::start(Arc::new(credvault::clock::SystemClock))
        .await
        .unwrap();
    let cluster = EtcdCluster::start(3).await;
    let (mut nodes, _) = three_nodes(&cluster, Some(&fake.base_url())).await;
    // Accounts that hold a valid token: created without a login.
    for email in ["once@example.com", "orphan@example.com"] {
        fake.add_user(email, PASSWORD);
        nodes[0]
            .remote
            .accounts_with(Auth::admin())
            .await
            .create_account(leasable(email, PASSWORD, 3))
            .await
            .unwrap();
    }
    assert_eq!(fake.logins("once@example.com"), 0);
    fake.set_latency(300);

    // 20 concurrent RefreshAccount over the three nodes: one logs in, the rest find the
    // login budget spent by it and answer its token.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut client = nodes[i % 3].remote.accounts_with(Auth::admin()).await;
        calls.spawn(async move {
            client
                .refresh_account(proto::RefreshAccountRequest {
                    provider: "pixverse".into(),
                    email: "once@example.com".into(),
                    force: false,
                })
                .await
        });
    }
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            Ok(_) => answered += 1,
            Err(status) => println!("refresh refused: {status:?}"),
        }
    }
    println!(
        "20 RefreshAccount over 3 nodes: {answered} answered, {} login(s), at most {} at once",
        fake.logins("once@example.com"),
        fake.max_concurrent_logins("once@example.com")
    );
    assert_eq!(fake.logins("once@example.com"), 1);
    assert_eq!(fake.max_concurrent_logins("once@example.com"), 1);
    assert_eq!(answered, 20);

    // The lock holder SIGKILLed mid-login: another node takes over once the lock's
    // session lease (10 s) has run out.
    fake.set_latency(3_000);
    let mut on_a = nodes[0].remote.accounts_with(Auth::admin()).await;
    let orphaned = tokio::spawn(async move {
        on_a.refresh_account(proto::RefreshAccountRequest {
            provider: "pixverse".into(),
            email: "orphan@example.com".into(),
            force: true,
        })
        .await
    });
    // Its login has reached the upstream (and waits there for 3 s).
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            fake.logins("orphan@example.com") > 0
        })
        .await
    );
    let killed = Instant::now();
    nodes[0].daemon.kill();
    let _ = orphaned.await;
    fake.set_latency(0);
    let taken_over = nodes[1]
        .remote
        .accounts_with(Auth::admin())
        .await
        .refresh_account(proto::RefreshAccountRequest {
            provider: "pixverse".into(),
            email: "orphan@example.com".into(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    println!(
        "the holder SIGKILLed mid-login: B logged in {:?} later",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(5),
        "B did not wait for the lock"
    );
    assert_eq!(fake.max_concurrent_logins("orphan@example.com"), 1);
    assert_eq!(
        fake.live_session("orphan@example.com").as_deref(),
        Some(
            reveal_token(&nodes[2].remote, "orphan@example.com")
                .await
                .as_str()
        ),
        "the token stored is the live session's"
    );
    assert!(taken_over.jwt.is_some());
}

/// The lock holder SIGSTOPped mid-login past its lock's TTL: another node takes the
/// lock and logs in; when the holder resumes, its login's answer arrives, and its token
/// write is refused by the fence (the lock's revision has moved on). The stored token
/// stays the live session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lock_holder_cannot_store_its_late_token() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeUpstream::start(Arc::new(credvault::clock::SystemClock))
        .await
        .unwrap();
    let cluster = EtcdCluster::start(3).await;
    let (nodes, _) = three_nodes(&cluster, Some(&fake.base_url())).await;
    fake.add_user("late@example.com", PASSWORD);
    nodes[0]
        .remote
        .accounts_with(Auth::admin())
        .await
        .create_account(leasable("late@example.com", PASSWORD, 3))
        .await
        .unwrap();
    fake.set_latency(2_000);
    let forced = || proto::RefreshAccountRequest {
        provider: "pixverse".into(),
        email: "late@example.com".into(),
        force: true,
    };
    let mut on_a = nodes[0].remote.accounts_with(Auth::admin()).await;
    let late = tokio::spawn(async move { on_a.refresh_account(forced()).await });
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            fake.logins("late@example.com") > 0
        })
        .await
    );
    let signal = |sig: &str| {
        let pid = nodes[0].daemon.pid().to_string();
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let paused = Instant::now();
    // B waits out A's lock (10 s) and logs in.
    fake.set_latency(0);
    nodes[1]
        .remote
        .accounts_with(Auth::admin())
        .await
        .refresh_account(forced())
        .await
        .unwrap();
    println!(
        "A paused mid-login; B logged in {:?} later",
        paused.elapsed()
    );
    assert!(
        paused.elapsed() >= Duration::from_secs(5),
        "B did not wait for the lock"
    );
    let live = fake
        .live_session("late@example.com")
        .expect("a live session");
    assert_eq!(
        reveal_token(&nodes[2].remote, "late@example.com").await,
        live
    );

    signal("-CONT");
    let answered = tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .expect("A answers once resumed")
        .unwrap();
    println!(
        "A resumed; its refresh answered {:?}",
        answered.as_ref().map(|_| "OK").map_err(|s| s.code())
    );
    // Whatever A answered, its late token was not stored: the live session's is.
    assert!(answered.is_err(), "A's fenced write went through");
    assert_eq!(
        reveal_token(&nodes[2].remote, "late@example.com").await,
        live
    );
    assert_eq!(fake.logins("late@example.com"), 2);
}

/// The upstream token an account holds, revealed by the admin.
async fn reveal_token(node: &Remote, email: &str) -> String {
    node.credentials(Auth::admin())
        .await
        .reveal_account(proto::RevealAccountRequest {
            provider: "pixverse".into(),
            email: email.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .jwt
        .map(|jwt| jwt.token)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_revocation_and_watches_are_cluster_wide() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::start(3).await;
    let (nodes, _) = three_nodes(&cluster, None).await;
    let (a, b, c) = (&nodes[0].remote, &nodes[1].remote, &nodes[2].remote);
    a.accounts_with(Auth::admin())
        .await
        .create_account(leasable("paid@example.com", PASSWORD, 8))
        .await
        .unwrap();
    // A metered consumer: the default balance of 100 credits, one per reveal.
    let (_, api_key) = support::pixverse_consumer(
        a,
        "metered@example.com",
        SECRET,
        proto::UpdateCallerRequest::default(),
    )
    .await;
    let auth = || Auth::api_key(&api_key, SECRET);
    for node in [b, c] {
        let ready = support::eventually(Duration::from_secs(10), async || {
            node.callers(auth())
                .await
                .get_caller_info(proto::GetCallerInfoRequest {})
                .await
                .is_ok()
        })
        .await;
        assert!(ready);
    }

    let mut reveals = tokio::task::JoinSet::new();
    for i in 0..300 {
        let node = [a, b, c][i % 3];
        let mut client = node.credentials(auth()).await;
        reveals.spawn(async move {
            client
                .reveal_account(proto::RevealAccountRequest {
                    provider: "pixverse".into(),
                    email: "paid@example.com".into(),
                })
                .await
                .map_err(|status| status.code())
        });
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = reveals.join_next().await {
        let key = match done.unwrap() {
            Ok(_) => "OK".to_owned(),
            Err(code) => format!("{code:?}"),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    println!("300 reveals over 3 nodes on a balance of 100: {outcomes:?}");
    // Exactly the balance, and every other reveal refused as such (a debit another
    // node's spending left uncovered is RESOURCE_EXHAUSTED too, not a storage error).
    let expected = BTreeMap::from([
        ("OK".to_owned(), 100),
        ("ResourceExhausted".to_owned(), 200),
    ]);
    assert_eq!(outcomes, expected);

    // A JWT revoked on A is refused by B within a second.
    let issued = a
        .callers(Auth::admin())
        .await
        .issue_token(proto::IssueTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    let works = support::eventually(Duration::from_secs(5), async || {
        b.callers(Auth::bearer(&issued.jwt))
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .is_ok()
    })
    .await;
    assert!(works);
    a.callers(Auth::admin())
        .await
        .revoke_token(proto::RevokeTokenRequest {
            jti: issued.jti.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let revoked = Instant::now();
    let refused = support::eventually(Duration::from_secs(1), async || {
        b.callers(Auth::bearer(&issued.jwt))
            .await
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .is_err_and(|status| status.code() == Code::Unauthenticated)
    })
    .await;
    println!(
        "a JWT revoked on A refused on B after {:?}",
        revoked.elapsed()
    );
    assert!(refused, "B still accepted the revoked JWT after 1 s");

    // A watcher on C hears of a token rotated through A.
    let mut events = c
        .credentials(Auth::admin())
        .await
        .watch_credentials(proto::WatchCredentialsRequest {
            provider: "pixverse".into(),
            email: "paid@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (heard, token, took) =
        support::rotate_and_hear(a, "paid@example.com", "rotated-through-a", &mut events).await;
    println!("a rotation through A heard on C after {took:?}");
    assert_eq!(heard.token, token);
}
