//! Storage fault injection over real gRPC: with a fifth of all store operations failing,
//! a mixed workload (creates, updates, reads, reveals, leases, tokens) gets only clean
//! answers: its own domain codes, or UNAVAILABLE/INTERNAL with generic text. Nothing
//! read is ever a half-written record, no account holds more leases than maxJobs, and
//! once the faults stop everything acknowledged is there and every call succeeds.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use credvault::{api::status::STORAGE_UNAVAILABLE, store::FaultPlan};
use support::{Auth, TestServer, proto};
use tonic::{Code, Status};

const SECRET: &str = "c0ffee0ddba11f00dfeedfacecafebeef00d1234567890abcdef0123456789ab";
const INTERNAL: &str = "internal error; the credvault log has the details";
const AUDIT_UNAVAILABLE: &str = "the audit trail is unavailable; retry later";
const AUDIT_REFUSED: &str =
    "the audit trail could not be written, so nothing was handed out; retry later";
const WORKERS: usize = 4;
const OPS_PER_WORKER: usize = 150;

/// What the workload knows of one account: every password ever sent for it, and the
/// last one acknowledged.
#[derive(Default)]
struct Known {
    sent: Vec<String>,
    acked: Option<String>,
    created: bool,
}

#[derive(Default)]
struct Tally {
    codes: BTreeMap<&'static str, u64>,
    unclean: Vec<String>,
}

impl Tally {
    fn record<T>(&mut self, op: &str, outcome: &Result<T, Status>, domain: &[Code]) {
        let name = match outcome {
            Ok(_) => "OK",
            Err(status) => credvault::api::layer::code_name(status.code()),
        };
        *self.codes.entry(name).or_default() += 1;
        let Err(status) = outcome else { return };
        let clean = match status.code() {
            Code::Unavailable => {
                [STORAGE_UNAVAILABLE, AUDIT_UNAVAILABLE, AUDIT_REFUSED].contains(&status.message())
            }
            Code::Internal => status.message() == INTERNAL,
            code => domain.contains(&code),
        };
        if !clean || status.message().contains("injected") {
            self.unclean
                .push(format!("{op}: {:?} {}", status.code(), status.message()));
        }
    }
}

fn acquire(email: &str) -> proto::AcquireLeaseRequest {
    proto::AcquireLeaseRequest {
        provider: "pixverse".into(),
        email: email.into(),
        ttl: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The caller's credits usable now.
async fn balance(server: &TestServer, key: &str) -> i64 {
    server
        .callers(Auth::api_key(key, SECRET))
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .balance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_of_store_operations_failing_gives_clean_errors_and_full_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let server = Arc::new(
        TestServer::start_with_faults(
            support::config(dir.path(), &support::new_key()),
            plan.clone(),
        )
        .await,
    );
    let credits = proto::UpdateCallerRequest {
        add_credits: 1_000_000,
        ..Default::default()
    };
    let (caller_id, key) =
        support::pixverse_consumer(&server, "worker@acme.com", SECRET, credits).await;
    let starting_balance = balance(&server, &key).await;
    let consumer = Auth::api_key(&key, SECRET);

    let known: Arc<Mutex<HashMap<String, Known>>> = Arc::default();
    // Hand-outs answered OK (each costs one credit), and leases whose release failed.
    let handed_out = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let unreleased: Arc<Mutex<Vec<String>>> = Arc::default();
    let tally: Arc<Mutex<Tally>> = Arc::default();
    plan.fail_share(0.2);

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let server = server.clone();
        let known = known.clone();
        let tally = tally.clone();
        let consumer = consumer.clone();
        let caller_id = caller_id.clone();
        let handed_out = handed_out.clone();
        let unreleased = unreleased.clone();
        workers.spawn(async move {
            let mut accounts = server.accounts().await;
            let mut credentials = server.credentials(consumer).await;
            let mut callers = server.callers(Auth::admin()).await;
            for op in 0..OPS_PER_WORKER {
                let email = format!("w{worker}-{}@acme.com", (op / 6) % 8);
                let password = format!("pw-{worker}-{op}-{}", "s".repeat(12));
                match op % 6 {
                    0 | 1 => {
                        let exists = known.lock().unwrap().get(&email).is_some_and(|k| k.created);
                        known
                            .lock()
                            .unwrap()
                            .entry(email.clone())
                            .or_default()
                            .sent
                            .push(password.clone());
                        let outcome = if exists {
                            accounts
                                .update_account(proto::UpdateAccountRequest {
                                    provider: "pixverse".into(),
                                    email: email.clone(),
                                    password: Some(password.clone()),
                                    ..Default::default()
                                })
                                .await
                                .map(|_| ())
                        } else {
                            accounts
                                .create_account(support::leasable(&email, &password, 2))
                                .await
                                .map(|_| ())
                        };
                        let codes = [Code::AlreadyExists, Code::NotFound, Code::Aborted];
                        tally.lock().unwrap().record("write", &outcome, &codes);
                        match &outcome {
                            Ok(()) => {
                                let mut known = known.lock().unwrap();
                                let entry = known.get_mut(&email).unwrap();
                                entry.acked = Some(password);
                                entry.created = true;
                            }
                            // A create that failed may have happened: the next write
                            // finds out (ALREADY_EXISTS), and the email is marked so.
                            Err(status) if status.code() == Code::AlreadyExists => {
                                known.lock().unwrap().get_mut(&email).unwrap().created = true;
                            }
                            Err(_) => {}
                        }
                    }
                    2 => {
                        let outcome = credentials
                            .reveal_account(proto::RevealAccountRequest {
                                provider: "pixverse".into(),
                                email: email.clone(),
                            })
                            .await;
                        tally
                            .lock()
                            .unwrap()
                            .record("reveal", &outcome, &[Code::NotFound]);
                        if let Ok(account) = outcome {
                            handed_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let password = account.into_inner().password;
                            let known = known.lock().unwrap();
                            let sent = known.get(&email).map(|k| &k.sent);
                            assert!(
                                sent.is_some_and(|sent| sent.contains(&password)),
                                "a reveal returned a password never sent for {email}"
                            );
                        }
                    }
                    3 => {
                        let outcome = credentials.acquire_lease(acquire(&email)).await;
                        let domain = [Code::NotFound, Code::ResourceExhausted];
                        tally.lock().unwrap().record("acquire", &outcome, &domain);
                        if let Ok(lease) = outcome {
                            handed_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let lease_id = lease.into_inner().lease_id;
                            let released = credentials
                                .release_lease(proto::ReleaseLeaseRequest {
                                    lease_id: lease_id.clone(),
                                })
                                .await;
                            tally.lock().unwrap().record("release", &released, &[]);
                            if released.is_err() {
                                unreleased.lock().unwrap().push(lease_id);
                            }
                        }
                    }
                    4 => {
                        let outcome = accounts
                            .get_account(proto::GetAccountRequest {
                                provider: "pixverse".into(),
                                email: email.clone(),
                            })
                            .await;
                        tally
                            .lock()
                            .unwrap()
                            .record("get", &outcome, &[Code::NotFound]);
                        if let Ok(account) = outcome {
                            let account = account.into_inner();
                            assert_eq!(account.email, email);
                            assert!(account.active_jobs <= account.max_jobs);
                        }
                    }
                    _ => {
                        let issued = callers
                            .issue_token(proto::IssueTokenRequest {
                                caller_id: caller_id.clone(),
                            })
                            .await;
                        // At most 3 live tokens per caller: ALREADY_EXISTS is its answer.
                        tally
                            .lock()
                            .unwrap()
                            .record("issue", &issued, &[Code::AlreadyExists]);
                        if let Ok(issued) = issued {
                            let revoked = callers
                                .revoke_token(proto::RevokeTokenRequest {
                                    jti: issued.into_inner().jti,
                                    caller_id: caller_id.clone(),
                                    ..Default::default()
                                })
                                .await;
                            tally.lock().unwrap().record("revoke", &revoked, &[]);
                        }
                    }
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("no worker panicked");
    }
    let injected = plan.injected();
    plan.fail_share(0.0);

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let total: u64 = tally.codes.values().sum();
    let failed = total - tally.codes.get("OK").copied().unwrap_or(0);
    println!(
        "fault injection: {injected} store operations failed; {failed} of {total} calls answered an error ({:.1}%): {:?}",
        100.0 * failed as f64 / total as f64,
        tally.codes
    );
    assert!(injected > 50, "faults were injected ({injected})");
    assert!(failed > 0, "some calls saw the faults");
    assert!(
        tally.codes.get("OK").copied().unwrap_or(0) > total / 4,
        "most calls still succeed"
    );
    assert!(
        tally.unclean.is_empty(),
        "unclean answers: {:#?}",
        tally.unclean
    );

    // Faults off: every acknowledged write is there and whole; every call succeeds.
    let mut accounts = server.accounts().await;
    let mut credentials = server.credentials(consumer.clone()).await;
    // No hand-out was free, and no failed one was paid for (a refund that itself
    // failed under the faults is the only way to pay more; it is logged).
    let paid = starting_balance - balance(&server, &key).await;
    let handed_out = handed_out.load(std::sync::atomic::Ordering::Relaxed);
    println!("credits: {handed_out} hand-outs answered OK, {paid} credits paid");
    assert!(paid >= handed_out, "every hand-out was paid for");
    // A client retries the releases that failed.
    let unreleased = std::mem::take(&mut *unreleased.lock().unwrap());
    for lease_id in unreleased {
        credentials
            .release_lease(proto::ReleaseLeaseRequest { lease_id })
            .await
            .expect("a retried release succeeds");
    }
    let known = std::mem::take(&mut *known.lock().unwrap());
    let mut checked = 0;
    for (email, known) in &known {
        let revealed = credentials
            .reveal_account(proto::RevealAccountRequest {
                provider: "pixverse".into(),
                email: email.clone(),
            })
            .await;
        match (&known.acked, revealed) {
            (Some(acked), Ok(account)) => {
                let password = account.into_inner().password;
                // The last acknowledged password, or a later write whose answer was
                // lost to a fault: never anything else.
                let position = known.sent.iter().position(|p| p == acked).unwrap();
                assert!(
                    known.sent[position..].contains(&password),
                    "{email} lost its acknowledged password"
                );
                checked += 1;
            }
            (Some(_), Err(status)) => panic!("{email}: acknowledged but {status:?}"),
            (None, Ok(account)) => {
                assert!(known.sent.contains(&account.into_inner().password));
            }
            (None, Err(status)) => assert_eq!(status.code(), Code::NotFound, "{email}"),
        }
        let lease = credentials
            .acquire_lease(acquire(email))
            .await
            .map(|l| l.into_inner());
        if known.acked.is_some() {
            let lease = lease.expect("after the faults, a lease is granted");
            credentials
                .release_lease(proto::ReleaseLeaseRequest {
                    lease_id: lease.lease_id,
                })
                .await
                .expect("and released");
        }
        let account = accounts
            .get_account(proto::GetAccountRequest {
                provider: "pixverse".into(),
                email: email.clone(),
            })
            .await;
        if let Ok(account) = account {
            let account = account.into_inner();
            assert!(account.active_jobs <= account.max_jobs);
        }
    }
    assert!(
        checked > 10,
        "acknowledged accounts were checked ({checked})"
    );
    accounts
        .create_account(support::leasable("after@acme.com", "after-password-1", 4))
        .await
        .expect("writes succeed again");
    // Tokens whose revocation failed under the faults are still live; revoke them.
    let mut callers = server.callers(Auth::admin()).await;
    let tokens = callers
        .list_tokens(proto::ListTokensRequest {
            caller_id: caller_id.clone(),
        })
        .await
        .expect("tokens are listed again")
        .into_inner()
        .tokens;
    for token in tokens.into_iter().filter(|t| !t.revoked) {
        callers
            .revoke_token(proto::RevokeTokenRequest {
                jti: token.jti,
                caller_id: caller_id.clone(),
                ..Default::default()
            })
            .await
            .expect("revocations succeed again");
    }
    let issued = callers
        .issue_token(proto::IssueTokenRequest {
            caller_id: caller_id.clone(),
        })
        .await
        .expect("tokens are issued again")
        .into_inner();
    server
        .callers(Auth::bearer(&issued.jwt))
        .await
        .get_caller_info(proto::GetCallerInfoRequest {})
        .await
        .expect("the new token works");
    Arc::into_inner(server)
        .unwrap()
        .stopped()
        .await
        .expect("the daemon shuts down cleanly after the faults");
}
