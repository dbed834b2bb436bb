//! Crash test: the daemon binary as a child process, killed with SIGKILL at a random
//! moment while clients create and update accounts, take and give back leases, and
//! issue and revoke tokens; 20 rounds. After every restart (which must need no repair):
//! every acknowledged write is there and decrypts, nothing unacknowledged is
//! half-visible, acknowledged revocations hold, and no account holds more leases than
//! its maxJobs.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use credvault::crypto::random_below;
use support::{Auth, Daemon, proto};
use tonic::{Code, transport::Channel};

const ROUNDS: usize = 20;
const SECRET: &str = "d1ce5a1tfeedfacecafebeef00d1234567890abcdef0123456789abcdef012345";
const POOL: usize = 4;
const POOL_MAX_JOBS: i32 = 2;

/// One password write: when it was sent and when (if ever) it was answered OK, on
/// one clock of ledger ticks.
#[derive(Clone)]
struct Write {
    password: String,
    sent_at: u64,
    acked_at: Option<u64>,
}

/// Every password write to an account.
#[derive(Default, Clone)]
struct Known {
    writes: Vec<Write>,
}

impl Known {
    fn acked(&self) -> bool {
        self.writes.iter().any(|w| w.acked_at.is_some())
    }

    /// Whether the account may now hold `password`: a write of it that was not
    /// certainly overwritten, that is, no acknowledged write was sent after it was
    /// acknowledged. (Writers race on an account, so the order they land in is the
    /// server's to choose, within those bounds.)
    fn may_hold(&self, password: &str) -> bool {
        self.writes
            .iter()
            .filter(|w| w.password == password)
            .any(|w| {
                let Some(acked_at) = w.acked_at else {
                    return true;
                };
                !self
                    .writes
                    .iter()
                    .any(|later| later.acked_at.is_some() && later.sent_at > acked_at)
            })
    }
}

/// What the clients were told, across all rounds.
#[derive(Default)]
struct Ledger {
    accounts: HashMap<String, Known>,
    /// Tokens issued (acknowledged) and not known to be revoked.
    live_tokens: Vec<String>,
    /// Tokens whose revocation was acknowledged.
    revoked_tokens: Vec<String>,
    acked_writes: u64,
    ticks: u64,
}

impl Ledger {
    fn tick(&mut self) -> u64 {
        self.ticks += 1;
        self.ticks
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects")
}

fn accounts(channel: &Channel) -> proto::accounts_client::AccountsClient<support::Authed> {
    proto::accounts_client::AccountsClient::with_interceptor(channel.clone(), Auth::admin())
}

fn callers(channel: &Channel, auth: Auth) -> proto::callers_client::CallersClient<support::Authed> {
    proto::callers_client::CallersClient::with_interceptor(channel.clone(), auth)
}

fn credentials(
    channel: &Channel,
    auth: Auth,
) -> proto::credentials_client::CredentialsClient<support::Authed> {
    proto::credentials_client::CredentialsClient::with_interceptor(channel.clone(), auth)
}

/// The consumer the lease and reveal calls are made as; created before the first crash.
async fn setup(channel: &Channel, ledger: &mut Ledger) -> (String, Auth) {
    let created = callers(channel, Auth::admin())
        .create_caller(proto::CreateCallerRequest {
            email: "crash@acme.com".into(),
            secret: SECRET.into(),
            roles: vec![proto::Role::Consumer as i32],
            scopes: vec!["pixverse".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let auth = Auth::api_key(&created.api_key, SECRET);
    callers(channel, auth.clone())
        .activate_caller(proto::ActivateCallerRequest {})
        .await
        .unwrap();
    callers(channel, Auth::admin())
        .update_caller(proto::UpdateCallerRequest {
            caller_id: created.caller_id.clone(),
            unmetered: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..POOL {
        let email = format!("pool{i}@acme.com");
        let password = format!("pool-password-{i}");
        accounts(channel)
            .create_account(support::leasable(&email, &password, POOL_MAX_JOBS))
            .await
            .unwrap();
        let at = ledger.tick();
        ledger.accounts.insert(
            email,
            Known {
                writes: vec![Write {
                    password,
                    sent_at: at,
                    acked_at: Some(at),
                }],
            },
        );
    }
    (created.caller_id, auth)
}

/// Creates and updates accounts until the daemon dies.
async fn writer(channel: Channel, ledger: Arc<Mutex<Ledger>>, round: usize, worker: usize) {
    let mut client = accounts(&channel);
    for i in 0.. {
        let update = i % 3 == 2;
        let email = if update {
            // An account of an earlier round or this one, acknowledged or not.
            let ledger = ledger.lock().unwrap();
            let emails: Vec<&String> = ledger.accounts.keys().collect();
            emails[random_below(emails.len() as u64) as usize].clone()
        } else {
            format!("r{round}-w{worker}-{i}@acme.com")
        };
        let password = format!("pw-{round}-{worker}-{i}-{}", "p".repeat(8));
        let index = {
            let mut ledger = ledger.lock().unwrap();
            let sent_at = ledger.tick();
            let known = ledger.accounts.entry(email.clone()).or_default();
            known.writes.push(Write {
                password: password.clone(),
                sent_at,
                acked_at: None,
            });
            known.writes.len() - 1
        };
        let outcome = if update {
            client
                .update_account(proto::UpdateAccountRequest {
                    provider: "pixverse".into(),
                    email: email.clone(),
                    password: Some(password),
                    ..Default::default()
                })
                .await
                .map(drop)
        } else {
            client
                .create_account(support::leasable(&email, &password, 3))
                .await
                .map(drop)
        };
        match outcome {
            Ok(()) => {
                let mut ledger = ledger.lock().unwrap();
                ledger.acked_writes += 1;
                let at = ledger.tick();
                ledger.accounts.get_mut(&email).unwrap().writes[index].acked_at = Some(at);
            }
            // An update of an account whose create was never acknowledged.
            Err(status) if status.code() == Code::NotFound => {}
            Err(_) => return,
        }
    }
}

/// Takes and gives back leases on the pool until the daemon dies.
async fn leaser(channel: Channel, auth: Auth) {
    let mut client = credentials(&channel, auth);
    loop {
        let outcome = client
            .acquire_lease(proto::AcquireLeaseRequest {
                provider: "pixverse".into(),
                email: format!("pool{}@acme.com", random_below(POOL as u64)),
                ttl: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await;
        match outcome {
            Ok(lease) => {
                let released = client
                    .release_lease(proto::ReleaseLeaseRequest {
                        lease_id: lease.into_inner().lease_id,
                    })
                    .await;
                if released.is_err() {
                    return;
                }
            }
            Err(status) if status.code() == Code::ResourceExhausted => {}
            Err(_) => return,
        }
    }
}

/// Issues tokens and revokes the older ones, keeping up to two live, until the daemon
/// dies (at most 3 may be live per caller, so every live one is revoked first).
async fn tokener(channel: Channel, ledger: Arc<Mutex<Ledger>>, caller_id: String) {
    let mut client = callers(&channel, Auth::admin());
    let Ok(listed) = client
        .list_tokens(proto::ListTokensRequest {
            caller_id: caller_id.clone(),
        })
        .await
    else {
        return;
    };
    // The previous round's live tokens were checked after the restart; they are about
    // to be revoked, so they are no longer tracked (a kill may cut this loop short).
    ledger.lock().unwrap().live_tokens.clear();
    for token in listed
        .into_inner()
        .tokens
        .into_iter()
        .filter(|t| !t.revoked)
    {
        let revoked = client
            .revoke_token(proto::RevokeTokenRequest {
                jti: token.jti,
                caller_id: caller_id.clone(),
                ..Default::default()
            })
            .await;
        if revoked.is_err() {
            return;
        }
    }
    loop {
        let issued = client
            .issue_token(proto::IssueTokenRequest {
                caller_id: caller_id.clone(),
            })
            .await;
        let issued = match issued {
            Ok(issued) => issued.into_inner(),
            Err(_) => return,
        };
        let oldest = {
            let mut ledger = ledger.lock().unwrap();
            ledger.acked_writes += 1;
            ledger.live_tokens.push(issued.jwt);
            if ledger.live_tokens.len() <= 2 {
                continue;
            }
            // Unanswered, a revocation may or may not happen: no longer tracked.
            ledger.live_tokens.remove(0)
        };
        let revoked = client
            .revoke_token(proto::RevokeTokenRequest {
                jwt: oldest.clone(),
                ..Default::default()
            })
            .await;
        if revoked.is_err() {
            return;
        }
        let mut ledger = ledger.lock().unwrap();
        ledger.acked_writes += 1;
        ledger.revoked_tokens.push(oldest);
    }
}

/// After a restart: everything the ledger holds against what the daemon answers.
async fn check(channel: &Channel, consumer: &Auth, ledger: &Ledger) -> usize {
    let mut reveals = credentials(channel, consumer.clone());
    let mut checked = 0;
    for (email, known) in &ledger.accounts {
        let revealed = reveals
            .reveal_account(proto::RevealAccountRequest {
                provider: "pixverse".into(),
                email: email.clone(),
            })
            .await;
        match (known.acked(), revealed) {
            (true, Ok(account)) => {
                assert!(
                    known.may_hold(&account.into_inner().password),
                    "{email}: an acknowledged password was lost"
                );
                checked += 1;
            }
            (true, Err(status)) => panic!("{email}: acknowledged, now {status:?}"),
            (false, Ok(account)) => assert!(
                known.may_hold(&account.into_inner().password),
                "{email}: unacknowledged and not what was sent"
            ),
            (false, Err(status)) => assert_eq!(status.code(), Code::NotFound, "{email}"),
        }
    }
    for jwt in &ledger.live_tokens {
        callers(channel, Auth::bearer(jwt))
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .expect("an acknowledged token still works");
    }
    for jwt in &ledger.revoked_tokens {
        let status = callers(channel, Auth::bearer(jwt))
            .get_caller_info(proto::GetCallerInfoRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "a revocation held");
    }
    let mut page_token = String::new();
    loop {
        let page = accounts(channel)
            .list_accounts(proto::ListAccountsRequest {
                provider: "pixverse".into(),
                page_size: 500,
                page_token,
            })
            .await
            .expect("accounts list")
            .into_inner();
        for account in &page.accounts {
            assert!(
                account.active_jobs <= account.max_jobs,
                "{} holds {} leases over maxJobs {}",
                account.email,
                account.active_jobs,
                account.max_jobs
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = support::new_key();
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    let mut daemon = Daemon::serve(&data, &key);
    let first = channel(daemon.wait_for_addr()).await;
    let mut fresh = Ledger::default();
    let (caller_id, consumer) = setup(&first, &mut fresh).await;
    *ledger.lock().unwrap() = fresh;
    drop(first);

    for round in 0..ROUNDS {
        let addr = daemon.wait_for_addr();
        let channel = channel(addr).await;
        let mut clients = tokio::task::JoinSet::new();
        for worker in 0..2 {
            clients.spawn(writer(channel.clone(), ledger.clone(), round, worker));
        }
        clients.spawn(leaser(channel.clone(), consumer.clone()));
        clients.spawn(tokener(channel.clone(), ledger.clone(), caller_id.clone()));

        // Pull the plug once a random number of writes has been acknowledged this
        // round: the kill lands anywhere in the load, after some work is done.
        let target = 10 + random_below(140);
        let before = ledger.lock().unwrap().acked_writes;
        let started = std::time::Instant::now();
        let reached = support::eventually(Duration::from_secs(30), async || {
            ledger.lock().unwrap().acked_writes - before >= target
        })
        .await;
        assert!(
            reached,
            "round {round}: the clients got {target} writes done"
        );
        let ran = started.elapsed();
        daemon.kill();
        while let Some(done) = clients.join_next().await {
            done.expect("no client panicked");
        }
        let acked = ledger.lock().unwrap().acked_writes - before;

        // Start again on the same data: no repair step, no manual help.
        daemon = Daemon::serve(&data, &key);
        let channel = self::channel(daemon.wait_for_addr()).await;
        let ledger_now = std::mem::take(&mut *ledger.lock().unwrap());
        let checked = check(&channel, &consumer, &ledger_now).await;
        println!(
            "round {round}: killed after {} ms, {acked} writes acknowledged this round, {checked} accounts checked, {} live and {} revoked tokens checked",
            ran.as_millis(),
            ledger_now.live_tokens.len(),
            ledger_now.revoked_tokens.len()
        );
        *ledger.lock().unwrap() = ledger_now;
    }
    let ledger = ledger.lock().unwrap();
    println!(
        "crash test: {ROUNDS} rounds, {} acknowledged writes, {} accounts",
        ledger.acked_writes,
        ledger.accounts.len()
    );
    assert!(
        ledger.acked_writes > ROUNDS as u64,
        "the clients got work done"
    );
    drop(ledger);
    daemon.terminate();
}
