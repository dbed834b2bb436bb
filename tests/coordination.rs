//! The coordination contracts: the slot table (`maxJobs` never exceeded, whatever the
//! interleaving), the credit floor (concurrent hand-outs never take a balance below
//! zero) and the token write's fence, over every store backend; the login flight's
//! exclusivity.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use credvault::{
    accounts::AccountKey,
    crypto::{MasterKey, Sealer},
    leases::LeaseRecord,
    store::{FaultPlan, Tree},
};

mod support;

use support::backends::{Backend, conformance};

conformance!(
    concurrent_takers_never_exceed_max_jobs,
    slots_survive_a_reload_and_expire_on_time,
    renew_release_and_the_news_of_freed_slots,
    a_slot_whose_lease_cannot_be_written_is_not_held,
    concurrent_hand_outs_take_exactly_the_balance,
    two_processes_never_overspend_one_balance,
    credits_taken_ahead_are_never_overspent_and_given_back,
    a_token_write_whose_fence_fails_stores_nothing,
    a_directory_follows_writes_made_through_another_service,
    callers_and_signing_keys_follow_another_service,
);

const NOW: i64 = 1_800_000_000_000;

fn sealer() -> Arc<Sealer> {
    Arc::new(Sealer::new(&MasterKey::generate().unwrap()))
}

fn lease(id: &str, email: &str, expires_at_ms: i64) -> LeaseRecord {
    LeaseRecord {
        id: id.to_owned(),
        caller_id: "c_test".into(),
        provider: "pool".into(),
        email: email.to_owned(),
        acquired_at_ms: NOW,
        expires_at_ms,
    }
}

fn key(email: &str) -> AccountKey {
    AccountKey {
        provider: "pool".into(),
        email: email.to_owned(),
    }
}

/// 16 tasks take and release slots of one account with `maxJobs` 3 as fast as they
/// can; a counter raised after each take and lowered before each release never passes
/// 3, and the table never says more than 3 either.
async fn concurrent_takers_never_exceed_max_jobs(backend: Backend) {
    let slots = backend.slot_table(sealer(), NOW, None).await;
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let (slots, holding, most) = (slots.clone(), holding.clone(), most.clone());
        tasks.spawn(async move {
            let mut taken = 0;
            for round in 0..40 {
                let id = format!("l_{task}_{round}");
                if slots
                    .take(lease(&id, "a@x", NOW + 60_000), 3)
                    .await
                    .unwrap()
                {
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    assert!(slots.held(&key("a@x")) <= 3);
                    taken += 1;
                    tokio::task::yield_now().await;
                    holding.fetch_sub(1, Ordering::SeqCst);
                    assert!(slots.release(&id).await.unwrap().is_some());
                } else {
                    tokio::task::yield_now().await;
                }
            }
            taken
        });
    }
    let mut taken = 0;
    while let Some(done) = tasks.join_next().await {
        taken += done.unwrap();
    }
    assert!(
        most.load(Ordering::SeqCst) <= 3,
        "{} held at once",
        most.load(Ordering::SeqCst)
    );
    assert!(taken > 0, "somebody got a slot");
    assert_eq!(slots.held(&key("a@x")), 0);
}

async fn slots_survive_a_reload_and_expire_on_time(backend: Backend) {
    let sealer = sealer();
    let slots = backend.slot_table(sealer.clone(), NOW, None).await;
    assert!(
        slots
            .take(lease("l_1", "a@x", NOW + 1_000), 2)
            .await
            .unwrap()
    );
    assert!(
        slots
            .take(lease("l_2", "a@x", NOW + 5_000), 2)
            .await
            .unwrap()
    );
    assert!(
        !slots
            .take(lease("l_3", "a@x", NOW + 5_000), 2)
            .await
            .unwrap()
    );
    assert!(
        slots
            .take(lease("l_4", "b@x", NOW + 5_000), 1)
            .await
            .unwrap()
    );
    assert_eq!(slots.next_expiry(), Some(NOW + 1_000));
    backend.store.flush().await.unwrap();
    drop(slots);

    // Reloaded after l_1's expiry: it is gone (from the store too), the rest held.
    let reloaded = backend.slot_table(sealer.clone(), NOW + 2_000, None).await;
    assert_eq!(reloaded.held(&key("a@x")), 1);
    assert_eq!(reloaded.get("l_2").unwrap().expires_at_ms, NOW + 5_000);
    assert!(reloaded.get("l_1").is_none());
    assert_eq!(backend.store.count(Tree::Leases).await.unwrap(), 2);
    // The held slot still counts: one of two is free.
    assert!(
        reloaded
            .take(lease("l_5", "a@x", NOW + 9_000), 2)
            .await
            .unwrap()
    );
    assert!(
        !reloaded
            .take(lease("l_6", "a@x", NOW + 9_000), 2)
            .await
            .unwrap()
    );
    // Expiry frees exactly what expired by then.
    let expired = reloaded.expire(NOW + 5_000).await.unwrap();
    let mut ids: Vec<String> = expired.into_iter().map(|l| l.id).collect();
    ids.sort();
    assert_eq!(ids, vec!["l_2", "l_4"]);
    assert_eq!(reloaded.held(&key("a@x")), 1);
    assert_eq!(backend.store.count(Tree::Leases).await.unwrap(), 1);
}

async fn renew_release_and_the_news_of_freed_slots(backend: Backend) {
    let slots = backend.slot_table(sealer(), NOW, None).await;
    let mut freed = slots.freed();
    assert!(
        slots
            .take(lease("l_1", "a@x", NOW + 1_000), 1)
            .await
            .unwrap()
    );
    let version = slots.version();
    let renewed = slots.renew("l_1", NOW + 9_000).await.unwrap().unwrap();
    assert_eq!(renewed.expires_at_ms, NOW + 9_000);
    assert_eq!(slots.next_expiry(), Some(NOW + 9_000));
    assert_eq!(slots.version(), version, "a renewal frees nothing");
    assert!(slots.renew("l_unknown", NOW).await.unwrap().is_none());
    assert!(slots.expire(NOW + 5_000).await.unwrap().is_empty());
    // A release frees the slot and says so.
    assert_eq!(slots.release("l_1").await.unwrap().unwrap().id, "l_1");
    assert!(slots.version() > version);
    assert_eq!(freed.recv().await.unwrap(), key("a@x"));
    assert!(slots.release("l_1").await.unwrap().is_none());
    assert!(
        slots
            .take(lease("l_2", "a@x", NOW + 1_000), 1)
            .await
            .unwrap()
    );
    assert_eq!(slots.all().len(), 1);
    assert_eq!(slots.leases_of(&key("a@x"))[0].id, "l_2");
}

/// A take whose lease record cannot be written fails and leaves the slot free.
async fn a_slot_whose_lease_cannot_be_written_is_not_held(backend: Backend) {
    let plan = Arc::new(FaultPlan::default());
    let slots = backend.slot_table(sealer(), NOW, Some(plan.clone())).await;
    backend.break_writes(&plan, Tree::Leases, true);
    assert!(
        slots
            .take(lease("l_1", "a@x", NOW + 1_000), 1)
            .await
            .is_err()
    );
    assert_eq!(slots.held(&key("a@x")), 0);
    backend.break_writes(&plan, Tree::Leases, false);
    assert!(
        slots
            .take(lease("l_2", "a@x", NOW + 1_000), 1)
            .await
            .unwrap()
    );
}

/// 40 concurrent debits of 1 against a balance of 25, each made durable as a hand-out
/// makes it: exactly 25 are granted, and the stored balance ends at zero.
async fn concurrent_hand_outs_take_exactly_the_balance(backend: Backend) {
    use credvault::{
        callers::{
            CallerError, CallerService, CallerSettings, MIN_SECRET_LEN, NewCaller, keys::CallerMacs,
        },
        clock::ManualClock,
        crypto::SecretString,
    };
    let master = MasterKey::generate().unwrap();
    let callers = Arc::new(
        CallerService::open(
            backend.store.clone(),
            Arc::new(Sealer::new(&master)),
            CallerMacs::new(&master),
            backend.names().naming,
            Arc::new(ManualClock::at(NOW)),
            CallerSettings {
                default_credits: 25,
                ..CallerSettings::default()
            },
        )
        .await
        .unwrap(),
    );
    let admin = callers.bootstrap_admin().unwrap();
    let id = callers
        .create(
            &admin,
            NewCaller {
                email: "spender@example.com".into(),
                secret: SecretString::from("s".repeat(MIN_SECRET_LEN)),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .caller
        .id;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (callers, id) = (callers.clone(), id.clone());
        tasks.spawn(async move {
            let charge = match callers.charge(&id, 1) {
                Ok(charge) => charge,
                Err(CallerError::Credits(_)) => return false,
                Err(other) => panic!("{other}"),
            };
            callers.flush().await.unwrap();
            assert_eq!(charge.written(), Some(true));
            true
        });
    }
    let mut granted = 0;
    while let Some(done) = tasks.join_next().await {
        granted += usize::from(done.unwrap());
    }
    assert_eq!(granted, 25);
    assert_eq!(callers.get(&id).unwrap().credits.unwrap().remaining, 0);
}

/// A caller service over `backend`'s store (as one process would open it), its callers
/// starting with `credits`.
async fn caller_service(
    backend: &Backend,
    master: &MasterKey,
    credits: i64,
) -> credvault::callers::CallerService {
    use credvault::{
        callers::{CallerService, CallerSettings, keys::CallerMacs},
        clock::ManualClock,
    };
    CallerService::open(
        backend.store.clone(),
        Arc::new(Sealer::new(master)),
        CallerMacs::new(master),
        backend.names().naming,
        Arc::new(ManualClock::at(NOW)),
        CallerSettings {
            default_credits: credits,
            ..CallerSettings::default()
        },
    )
    .await
    .unwrap()
}

/// A consumer created through `service`; its id.
async fn spender(service: &credvault::callers::CallerService, email: &str) -> String {
    use credvault::{
        callers::{MIN_SECRET_LEN, NewCaller},
        crypto::SecretString,
    };
    let admin = service.bootstrap_admin().unwrap();
    service
        .create(
            &admin,
            NewCaller {
                email: email.into(),
                secret: SecretString::from("s".repeat(MIN_SECRET_LEN)),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .caller
        .id
}

/// Two processes' caller services over one store, each with its own view of a balance
/// of 25, take 60 debits of 1 between them: each view alone would allow 25, but the
/// writes decide, so exactly 25 are written and the stored balance ends at 0, never
/// below. A debit the balance no longer covers is refused and owes nothing.
async fn two_processes_never_overspend_one_balance(backend: Backend) {
    use credvault::callers::CallerError;
    let master = MasterKey::generate().unwrap();
    let a = Arc::new(caller_service(&backend, &master, 25).await);
    let id = spender(&a, "shared@example.com").await;
    let b = Arc::new(caller_service(&backend, &master, 25).await);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..60 {
        let callers = if n % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tasks.spawn(async move {
            let charge = match callers.charge(&id, 1) {
                Ok(charge) => charge,
                Err(CallerError::Credits(_)) => return false,
                Err(other) => panic!("{other}"),
            };
            callers.flush().await.unwrap();
            match charge.written() {
                Some(true) => true,
                Some(false) => {
                    callers.refund(&charge).await.unwrap();
                    false
                }
                None => panic!("a flushed debit is decided"),
            }
        });
    }
    let mut granted = 0;
    while let Some(done) = tasks.join_next().await {
        granted += usize::from(done.unwrap());
    }
    assert_eq!(granted, 25);
    // As a third process reads it from the store.
    let stored = caller_service(&backend, &master, 25)
        .await
        .get(&id)
        .unwrap();
    assert_eq!(stored.credits.unwrap().remaining, 0);
}

/// Two processes on one store, both taking credits ahead (as on etcd) from a balance
/// of 5,000, spend it with 8 workers each, charge after charge until refused, while
/// topping up in the background: exactly the balance is granted, some of it paid
/// from blocks taken ahead, and once both have given their blocks back the stored
/// balance is 0 (nothing overspent, nothing lost).
async fn credits_taken_ahead_are_never_overspent_and_given_back(backend: Backend) {
    use credvault::callers::CallerError;
    const BALANCE: i64 = 5_000;
    let master = MasterKey::generate().unwrap();
    let a = Arc::new(caller_service(&backend, &master, BALANCE).await);
    let id = spender(&a, "ahead@example.com").await;
    let b = Arc::new(caller_service(&backend, &master, BALANCE).await);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for node in [&a, &b] {
        node.follows_shared_store();
        tokio::spawn(node.clone().follow(stopped.clone()));
        tokio::spawn(node.clone().keep_reserves(stopped.clone()));
    }
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..16 {
        let callers = if n % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        workers.spawn(async move {
            let (mut granted, mut ahead) = (0i64, 0i64);
            loop {
                let charge = match callers.charge(&id, 1) {
                    Ok(charge) => charge,
                    Err(CallerError::Credits(_)) => return (granted, ahead),
                    Err(other) => panic!("{other}"),
                };
                // Decided before any write: paid from a block taken ahead.
                ahead += i64::from(charge.written().is_some());
                callers.flush().await.unwrap();
                match charge.written() {
                    Some(true) => granted += 1,
                    Some(false) => callers.refund(&charge).await.unwrap(),
                    None => panic!("a flushed debit is decided"),
                }
            }
        });
    }
    let (mut granted, mut ahead) = (0, 0);
    while let Some(done) = workers.join_next().await {
        let (written, paid_ahead) = done.unwrap();
        granted += written;
        ahead += paid_ahead;
    }
    let _ = stop.send(true);
    println!("{granted} granted, {ahead} paid from blocks taken ahead");
    assert_eq!(granted, BALANCE);
    assert!(ahead > 0, "no debit was paid ahead");
    for node in [&a, &b] {
        node.give_back_reserves().await;
        node.flush().await.unwrap();
    }
    // As a third process reads it from the store.
    let stored = caller_service(&backend, &master, BALANCE)
        .await
        .get(&id)
        .unwrap();
    assert_eq!(stored.credits.unwrap().remaining, 0);
}

/// The login flight: a second boarding for the same account waits until the first
/// lands; other accounts board at once; every boarding gets a greater fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_flight_per_account_with_growing_fences() {
    use credvault::refresh::flight::{LocalFlights, LoginFlights};
    let flights = Arc::new(LocalFlights::default());
    let first = flights.board(&key("a@x")).await.unwrap();
    let other = flights.board(&key("b@x")).await.unwrap();
    assert!(other.fence.number > first.fence.number);
    assert!(
        first.fence.compare.is_none(),
        "a local flight cannot be lost"
    );
    let second = {
        let flights = flights.clone();
        tokio::spawn(async move { flights.board(&key("a@x")).await.unwrap().fence.number })
    };
    // However long it is given, the second boarding does not land while the first
    // holds the flight.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!second.is_finished(), "two logins of one account at once");
    drop(first);
    assert!(second.await.unwrap() > other.fence.number);
    drop(other);
    assert_eq!(flights.active(), 0, "landed flights leave nothing behind");
}

/// A token write carries its flight's fence: when the fence no longer holds (another
/// node took the lock since), nothing is stored; while it holds, the token is.
async fn a_token_write_whose_fence_fails_stores_nothing(backend: Backend) {
    use credvault::{
        accounts::{AccountError, AccountService, FreshSession, NewAccount, Refreshed},
        clock::ManualClock,
        crypto::SecretString,
        providers::Providers,
        store::{Compare, Expect, StoreExt},
    };
    let accounts = AccountService::open(
        backend.store.clone(),
        sealer(),
        backend.names(),
        Arc::new(Providers::new(Default::default()).unwrap()),
        Arc::new(ManualClock::at(NOW)),
    )
    .await
    .unwrap();
    accounts
        .create(NewAccount {
            provider: "pixverse".into(),
            email: "fenced@example.com".into(),
            password: Some(SecretString::from("pw-123456".to_owned())),
            max_jobs: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let account = key_of("fenced@example.com");
    let refreshed = |token: &str| Refreshed {
        session: Some(FreshSession {
            token: SecretString::from(token.to_owned()),
            account_id: None,
            username: None,
            expire_time: NOW / 1000 + 3600,
        }),
        credits: None,
        activated: false,
        revoked_previous: false,
    };
    // The lock record as this login saw it when it boarded.
    backend
        .store
        .swap(Tree::Meta, b"lock", None, Some(b"node-a"))
        .await
        .unwrap();
    let held = backend
        .store
        .get(Tree::Meta, b"lock")
        .await
        .unwrap()
        .unwrap();
    let fence = Compare {
        tree: Tree::Meta,
        key: b"lock".to_vec(),
        expect: Expect::Version(held.version),
    };
    // Another node takes the lock: this login's write is refused and stores nothing.
    backend
        .store
        .swap(Tree::Meta, b"lock", Some(b"node-a"), Some(b"node-b"))
        .await
        .unwrap();
    let refused = accounts
        .store_refresh(&account, refreshed("token-from-a"), 0, Some(&fence))
        .await;
    assert!(
        matches!(refused, Err(AccountError::Contended(_))),
        "{refused:?}"
    );
    let stored = accounts
        .get("pixverse", "fenced@example.com")
        .await
        .unwrap();
    assert!(stored.secrets.token.is_none());
    // The holder's fence holds: its token is stored.
    let current = backend
        .store
        .get(Tree::Meta, b"lock")
        .await
        .unwrap()
        .unwrap();
    let fence = Compare {
        expect: Expect::Version(current.version),
        ..fence
    };
    let stored = accounts
        .store_refresh(&account, refreshed("token-from-b"), 0, Some(&fence))
        .await
        .unwrap();
    assert_eq!(stored.secrets.token.unwrap().expose(), "token-from-b");
}

fn key_of(email: &str) -> AccountKey {
    AccountKey {
        provider: "pixverse".into(),
        email: email.to_owned(),
    }
}

/// Two account services over one store, as two nodes share one: the second's
/// directory (what leases choose from) follows the first's creates, updates and deletes
/// through the store's watch.
async fn a_directory_follows_writes_made_through_another_service(backend: Backend) {
    use credvault::{
        accounts::{AccountService, AccountUpdate, NewAccount},
        clock::ManualClock,
        crypto::SecretString,
        providers::Providers,
    };
    // Nodes of one cluster share the master key.
    let sealer = sealer();
    let open = || {
        AccountService::open(
            backend.store.clone(),
            sealer.clone(),
            backend.names(),
            Arc::new(Providers::new(Default::default()).unwrap()),
            Arc::new(ManualClock::at(NOW)),
        )
    };
    let writer = open().await.unwrap();
    let follower = Arc::new(open().await.unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let following = tokio::spawn(follower.clone().follow(stopped));
    let max_jobs = |follower: &AccountService| {
        follower
            .provider_entries("pixverse")
            .unwrap()
            .iter()
            .map(|entry| entry.meta.max_jobs)
            .collect::<Vec<_>>()
    };
    // Polled with a deadline: the follower takes changes as the watch delivers them.
    async fn until(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "the follower never caught up"
            );
            tokio::task::yield_now().await;
        }
    }
    writer
        .create(NewAccount {
            provider: "pixverse".into(),
            email: "shared@example.com".into(),
            password: Some(SecretString::from("pw-123456".to_owned())),
            max_jobs: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    until(|| max_jobs(&follower) == vec![2]).await;
    writer
        .update(
            "pixverse",
            "shared@example.com",
            AccountUpdate {
                max_jobs: Some(5),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    until(|| max_jobs(&follower) == vec![5]).await;
    writer
        .delete("pixverse", "shared@example.com", None)
        .await
        .unwrap();
    until(|| max_jobs(&follower).is_empty()).await;
    let _ = stop.send(true);
    following.await.unwrap();
}

/// Two caller services over one store: a token the first issues after rotating its
/// signing key is accepted by the second once its view and its keys have followed the
/// store (the caller record with the token's id, and the new key).
async fn callers_and_signing_keys_follow_another_service(backend: Backend) {
    use credvault::{
        callers::{BOOTSTRAP_ADMIN_ID, CallerService, CallerSettings, keys::CallerMacs},
        clock::ManualClock,
    };
    let master = MasterKey::generate().unwrap();
    let open = || {
        CallerService::open(
            backend.store.clone(),
            Arc::new(Sealer::new(&master)),
            CallerMacs::new(&master),
            backend.names().naming,
            Arc::new(ManualClock::at(NOW)),
            CallerSettings::default(),
        )
    };
    let first = open().await.unwrap();
    let second = Arc::new(open().await.unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let following = tokio::spawn(second.clone().follow(stopped));
    let kid = first.rotate_signing_key().await.unwrap();
    let (jwt, claims) = first.issue_token(BOOTSTRAP_ADMIN_ID).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while second.authenticate_jwt(&jwt).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second never accepted the token"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(
        second.authenticate_jwt(&jwt).unwrap().id,
        BOOTSTRAP_ADMIN_ID
    );
    assert!(
        second
            .token_keys()
            .public_keys()
            .iter()
            .any(|(id, _)| *id == kid),
        "the second holds the new key"
    );
    // A revocation on the first reaches the second the same way.
    first.revoke(BOOTSTRAP_ADMIN_ID, &claims.jti).await.unwrap();
    while second.authenticate_jwt(&jwt).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never arrived"
        );
        tokio::task::yield_now().await;
    }
    let _ = stop.send(true);
    following.await.unwrap();
}

/// Two processes' slot tables on one etcd cluster (as two credvault processes have):
/// together they never hold more than `maxJobs`, a lowered `maxJobs` holds for both
/// even while slots past it are still held, and each follows the other's takes and
/// frees through the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_max_jobs_on_etcd() {
    use credvault::{
        clock::ManualClock,
        crypto::Fingerprinter,
        leases::{ClusterSlots, slots::SlotTable},
    };
    use std::time::{Duration, Instant};

    let backend = Backend::etcd().await;
    let store = backend.etcd_store().unwrap();
    let master = MasterKey::generate().unwrap();
    let sealer = Arc::new(Sealer::new(&master));
    let fingerprints = Arc::new(Fingerprinter::new(&master));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut processes = Vec::new();
    for _ in 0..2 {
        let slots = Arc::new(
            ClusterSlots::open(
                store.clone(),
                sealer.clone(),
                fingerprints.clone(),
                Arc::new(ManualClock::at(NOW)),
            )
            .await
            .unwrap(),
        );
        tokio::spawn(slots.clone().follow(stopped.clone()));
        processes.push(slots);
    }
    let (a, b) = (processes[0].clone(), processes[1].clone());

    // 2 × 8 tasks race for 3 slots of one account.
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let slots = processes[task % 2].clone();
        let (holding, most) = (holding.clone(), most.clone());
        tasks.spawn(async move {
            let mut taken = 0;
            for round in 0..15 {
                let id = format!("l_{task}_{round}");
                if slots
                    .take(lease(&id, "a@x", NOW + 60_000), 3)
                    .await
                    .unwrap()
                {
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    taken += 1;
                    tokio::task::yield_now().await;
                    holding.fetch_sub(1, Ordering::SeqCst);
                    assert!(slots.release(&id).await.unwrap().is_some());
                }
            }
            taken
        });
    }
    let mut taken = 0;
    while let Some(done) = tasks.join_next().await {
        taken += done.unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= 3, "{most:?} held at once");
    assert!(taken > 3, "{taken} takes");
    assert_eq!(backend.store.count(Tree::Leases).await.unwrap(), 0);

    // maxJobs 3 → 2 while A holds three slots: B cannot take until fewer than two
    // remain, counting those past the new limit.
    for n in 0..3 {
        let id = format!("l_low_{n}");
        assert!(a.take(lease(&id, "b@x", NOW + 60_000), 3).await.unwrap());
    }
    assert!(!b.take(lease("l_b1", "b@x", NOW + 60_000), 2).await.unwrap());
    a.release("l_low_0").await.unwrap();
    assert!(
        !b.take(lease("l_b2", "b@x", NOW + 60_000), 2).await.unwrap(),
        "two held, one of them past the lowered limit"
    );
    a.release("l_low_2").await.unwrap();
    assert!(b.take(lease("l_b3", "b@x", NOW + 60_000), 2).await.unwrap());

    // Each follows the other: A learns of B's take, and B of A's release.
    let mut freed = b.freed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get("l_b3").is_none() {
        assert!(Instant::now() < deadline, "A never saw B's take");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.held(&key("b@x")), 2);
    a.release("l_low_1").await.unwrap();
    let news = tokio::time::timeout(Duration::from_secs(10), freed.recv()).await;
    assert_eq!(news.unwrap().unwrap(), key("b@x"));
    assert!(b.get("l_low_1").is_none());
    let _ = stop.send(true);
}

/// Login flights of two processes on one etcd cluster: one login per account
/// cluster-wide; the next holder gets a greater fence; a holder whose lock lease ended
/// (paused past its TTL) cannot store a token, while the new holder can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_per_account_across_processes_on_etcd() {
    use credvault::{
        accounts::{AccountError, AccountService, FreshSession, NewAccount, Refreshed},
        clock::ManualClock,
        crypto::{Fingerprinter, SecretString},
        providers::Providers,
        refresh::{cluster_flight::ClusterFlights, flight::LoginFlights},
    };
    use std::time::Duration;

    let backend = Backend::etcd().await;
    let store = backend.etcd_store().unwrap();
    let fingerprints = Arc::new(Fingerprinter::new(&MasterKey::generate().unwrap()));
    let a = Arc::new(ClusterFlights::new(
        store.clone(),
        fingerprints.clone(),
        "node-a",
    ));
    let b = Arc::new(ClusterFlights::new(
        store.clone(),
        fingerprints.clone(),
        "node-b",
    ));

    let first = a.board(&key_of("one@x")).await.unwrap();
    assert!(
        first.fence.compare.is_some(),
        "a cluster flight can be lost"
    );
    let second = {
        let b = b.clone();
        tokio::spawn(async move { b.board(&key_of("one@x")).await.unwrap() })
    };
    // Another account boards at once meanwhile.
    let other = b.board(&key_of("two@x")).await.unwrap();
    // Not an event to wait for but its absence: 1.5 s is more than B's waiter takes
    // between tries (1 s), so a lock that did not hold would have let it through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!second.is_finished(), "two logins of one account at once");
    let first_fence = first.fence.number;
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second boarding lands once the first is dropped")
        .unwrap();
    assert!(second.fence.number > first_fence);
    drop((second, other));

    // A holder whose lock lease ends loses the flight, and its fence with it.
    let accounts = AccountService::open(
        backend.store.clone(),
        sealer(),
        backend.names(),
        Arc::new(Providers::new(Default::default()).unwrap()),
        Arc::new(ManualClock::at(NOW)),
    )
    .await
    .unwrap();
    accounts
        .create(NewAccount {
            provider: "pixverse".into(),
            email: "fenced@example.com".into(),
            password: Some(SecretString::from("pw-123456".to_owned())),
            max_jobs: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let account = key_of("fenced@example.com");
    let refreshed = |token: &str| Refreshed {
        session: Some(FreshSession {
            token: SecretString::from(token.to_owned()),
            account_id: None,
            username: None,
            expire_time: NOW / 1000 + 3600,
        }),
        credits: None,
        activated: false,
        revoked_previous: false,
    };
    let paused = a.board(&account).await.unwrap();
    // As if node A were paused past the TTL: etcd ends its lease.
    let mut client = etcd_client::Client::connect(store_endpoints(&backend), None)
        .await
        .unwrap();
    for lease in client.leases().await.unwrap().leases() {
        client.lease_revoke(lease.id()).await.unwrap();
    }
    let taken = tokio::time::timeout(Duration::from_secs(10), b.board(&account))
        .await
        .expect("B boards once A's lock is gone")
        .unwrap();
    let late = accounts
        .store_refresh(
            &account,
            refreshed("late-from-a"),
            0,
            paused.fence.compare.as_ref(),
        )
        .await;
    assert!(matches!(late, Err(AccountError::Contended(_))), "{late:?}");
    let stored = accounts
        .store_refresh(
            &account,
            refreshed("from-b"),
            0,
            taken.fence.compare.as_ref(),
        )
        .await
        .unwrap();
    assert_eq!(stored.secrets.token.unwrap().expose(), "from-b");
}

fn store_endpoints(backend: &Backend) -> Vec<String> {
    backend.etcd_endpoints().unwrap()
}
