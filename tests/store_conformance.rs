//! The storage seam's contract, run against every backend: the in-memory one, sled,
//! and each of them behind the fault injector. A new backend passes this suite.

use std::{collections::BTreeMap, sync::Arc};

use credvault::store::{
    Change, Expect, FaultPlan, FaultyStore, Outcome, Range, Store, StoreError, StoreExt, Swap,
    Tree, Txn,
};

mod support;

use support::backends::{Backend, conformance};

conformance!(
    reads_writes_and_versions,
    a_transaction_is_all_or_nothing_and_answers_what_it_found,
    concurrent_read_modify_write_loses_no_update,
    transfers_between_keys_keep_their_sum,
    scans_page_through_a_prefix_in_order,
    a_scan_at_a_revision_sees_that_point,
    a_watch_delivers_changes_in_order_and_resumes_from_a_revision,
    a_watch_follows_only_its_prefix,
    history_older_than_what_is_kept_is_refused,
    a_watch_that_falls_behind_ends,
    injected_faults_fail_whole_transactions,
);

fn key(n: u32) -> Vec<u8> {
    format!("k{n:05}").into_bytes()
}

async fn reads_writes_and_versions(backend: Backend) {
    let store = backend.store;
    assert_eq!(store.get(Tree::Accounts, b"a").await.unwrap(), None);
    let before = store.revision();
    let first = store
        .commit(Txn::new().put(Tree::Accounts, b"a", b"1"))
        .await;
    let Outcome::Committed(at) = first.unwrap() else {
        panic!("an unconditional put commits")
    };
    assert!(at > before, "a commit makes a new revision");
    assert_eq!(store.revision(), at);
    let one = store.get(Tree::Accounts, b"a").await.unwrap().unwrap();
    assert_eq!(one.value, b"1");
    // Trees are separate key spaces.
    assert_eq!(store.get(Tree::Callers, b"a").await.unwrap(), None);

    store
        .commit(Txn::new().put(Tree::Accounts, b"a", b"2"))
        .await
        .unwrap();
    let two = store.get(Tree::Accounts, b"a").await.unwrap().unwrap();
    assert_ne!(one.version, two.version, "a new value has a new version");
    // A compare on the old version fails; on the current one it holds.
    let stale = Txn::new()
        .expect(Tree::Accounts, b"a", Expect::Version(one.version))
        .delete(Tree::Accounts, b"a");
    assert_eq!(
        store.commit(stale).await.unwrap(),
        Outcome::Conflict(vec![Some(two.clone())])
    );
    let current = Txn::new()
        .expect(Tree::Accounts, b"a", Expect::Version(two.version))
        .delete(Tree::Accounts, b"a");
    assert!(store.commit(current).await.unwrap().committed());
    assert_eq!(store.get(Tree::Accounts, b"a").await.unwrap(), None);
    // A compare-only transaction writes nothing and makes no revision.
    let revision = store.revision();
    let check = Txn::new().expect(Tree::Accounts, b"a", Expect::Absent);
    assert_eq!(
        store.commit(check).await.unwrap(),
        Outcome::Committed(revision)
    );
    assert_eq!(store.revision(), revision);
}

async fn a_transaction_is_all_or_nothing_and_answers_what_it_found(backend: Backend) {
    let store = backend.store;
    assert_eq!(
        store
            .swap(Tree::Callers, b"id", None, Some(b"record"))
            .await
            .unwrap(),
        Swap::Done
    );
    // One failing compare among several: nothing is written, and the answer holds what
    // each compared key holds, in the order of the compares.
    let txn = Txn::new()
        .expect(Tree::CallerEmails, b"e@x", Expect::Absent)
        .expect(Tree::Callers, b"id", Expect::Absent)
        .put(Tree::CallerEmails, b"e@x", b"id")
        .put(Tree::ApiKeys, b"key", b"id")
        .put(Tree::Callers, b"id", b"other");
    let Outcome::Conflict(found) = store.commit(txn).await.unwrap() else {
        panic!("a failing compare must not commit")
    };
    // A version is the backend's own (a digest here, etcd's modification revision).
    let held = store.get(Tree::Callers, b"id").await.unwrap();
    assert_eq!(held.as_ref().map(|v| &v.value[..]), Some(&b"record"[..]));
    assert_eq!(found, vec![None, held]);
    assert_eq!(store.value(Tree::CallerEmails, b"e@x").await.unwrap(), None);
    assert_eq!(store.value(Tree::ApiKeys, b"key").await.unwrap(), None);
    assert_eq!(
        store.value(Tree::Callers, b"id").await.unwrap().unwrap(),
        b"record"
    );
    // Every compare holding: every write lands, at one revision.
    let from = store.revision();
    let mut watch = store.watch(Tree::Callers, b"", from).await.unwrap();
    let mut emails = store.watch(Tree::CallerEmails, b"", from).await.unwrap();
    let txn = Txn::new()
        .expect(Tree::CallerEmails, b"e@x", Expect::Absent)
        .expect(Tree::Callers, b"id", Expect::Value(b"record".to_vec()))
        .put(Tree::CallerEmails, b"e@x", b"id")
        .put(Tree::Callers, b"id", b"other");
    let Outcome::Committed(at) = store.commit(txn).await.unwrap() else {
        panic!("every compare holds")
    };
    assert_eq!(watch.next().await.unwrap().revision, at);
    assert_eq!(emails.next().await.unwrap().revision, at);
    assert_eq!(
        store.value(Tree::CallerEmails, b"e@x").await.unwrap(),
        Some(b"id".to_vec())
    );
}

/// Many tasks add to one counter by read, compare, write: no increment is lost.
async fn concurrent_read_modify_write_loses_no_update(backend: Backend) {
    let store = backend.store;
    const TASKS: u64 = 8;
    const EACH: u64 = 50;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let current = store.get(Tree::Meta, b"counter").await.unwrap();
                    let (expect, n) = match &current {
                        Some(v) => (
                            Expect::Version(v.version),
                            u64::from_be_bytes(v.value.as_slice().try_into().unwrap()),
                        ),
                        None => (Expect::Absent, 0),
                    };
                    let txn = Txn::new().expect(Tree::Meta, b"counter", expect).put(
                        Tree::Meta,
                        b"counter",
                        &(n + 1).to_be_bytes(),
                    );
                    if store.commit(txn).await.unwrap().committed() {
                        break;
                    }
                    conflicts += 1;
                    tokio::task::yield_now().await;
                }
            }
            conflicts
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let stored = store.value(Tree::Meta, b"counter").await.unwrap().unwrap();
    assert_eq!(
        u64::from_be_bytes(stored.as_slice().try_into().unwrap()),
        TASKS * EACH
    );
}

/// Transfers between two keys in multi-key transactions: any reader sees the sum whole.
async fn transfers_between_keys_keep_their_sum(backend: Backend) {
    let store = backend.store;
    let balance = |value: &[u8]| i64::from_be_bytes(value.try_into().unwrap());
    store
        .commit(
            Txn::new()
                .put(Tree::Meta, b"left", &100i64.to_be_bytes())
                .put(Tree::Meta, b"right", &0i64.to_be_bytes()),
        )
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..40 {
                let (from, to): (&[u8], &[u8]) = if (task + i) % 2 == 0 {
                    (b"left", b"right")
                } else {
                    (b"right", b"left")
                };
                loop {
                    let a = store.get(Tree::Meta, from).await.unwrap().unwrap();
                    let b = store.get(Tree::Meta, to).await.unwrap().unwrap();
                    let txn = Txn::new()
                        .expect(Tree::Meta, from, Expect::Version(a.version))
                        .expect(Tree::Meta, to, Expect::Version(b.version))
                        .put(Tree::Meta, from, &(balance(&a.value) - 1).to_be_bytes())
                        .put(Tree::Meta, to, &(balance(&b.value) + 1).to_be_bytes());
                    if store.commit(txn).await.unwrap().committed() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    // A reader at one revision always sees the whole sum.
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                let page = store.scan(Range::new(Tree::Meta, b"", 10)).await.unwrap();
                let sum: i64 = page.entries.iter().map(|(_, v)| balance(v)).sum();
                assert_eq!(sum, 100, "a scan saw half a transfer");
                tokio::task::yield_now().await;
            }
        })
    };
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    reader.await.unwrap();
}

async fn scans_page_through_a_prefix_in_order(backend: Backend) {
    let store = backend.store;
    for n in 0..300u32 {
        let mut txn = Txn::new().put(Tree::Accounts, &key(n), &n.to_be_bytes());
        // Neighbours on both sides of the prefix, which no scan of it may show.
        txn = txn.put(Tree::Accounts, format!("j{n:05}").as_bytes(), b"x");
        txn = txn.put(Tree::Accounts, format!("l{n:05}").as_bytes(), b"x");
        store.commit(txn).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut at = None;
    loop {
        let range = Range::new(Tree::Accounts, b"k", 7)
            .after(after.as_deref())
            .at(at);
        let page = store.scan(range).await.unwrap();
        assert!(page.entries.len() <= 7);
        at = Some(page.revision);
        seen.extend(page.entries.iter().map(|(k, _)| k.clone()));
        after = page.entries.last().map(|(k, _)| k.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, (0..300).map(key).collect::<Vec<_>>());
    // A last page that ends exactly at the limit says there is no more.
    let range = Range::new(Tree::Accounts, b"k", 300);
    let page = store.scan(range).await.unwrap();
    assert_eq!((page.entries.len(), page.more), (300, false));
    // `after` before the prefix starts at the prefix; after its end, nothing.
    let range = Range::new(Tree::Accounts, b"k", 2).after(Some(b"a"));
    let page = store.scan(range).await.unwrap();
    assert_eq!(page.entries[0].0, key(0));
    let range = Range::new(Tree::Accounts, b"k", 2).after(Some(b"k99999"));
    assert!(store.scan(range).await.unwrap().entries.is_empty());
    assert_eq!(store.count(Tree::Accounts).await.unwrap(), 900);
    assert_eq!(
        store.last_key(Tree::Accounts).await.unwrap(),
        Some(b"l00299".to_vec())
    );
}

/// Pages read at one revision show the store as it was then, whatever was written
/// between them: updates, deletes and inserts on both sides of the page boundary.
async fn a_scan_at_a_revision_sees_that_point(backend: Backend) {
    let store = backend.store;
    for n in (0..100u32).step_by(2) {
        store
            .commit(Txn::new().put(Tree::Leases, &key(n), b"old"))
            .await
            .unwrap();
    }
    let first = store.scan(Range::new(Tree::Leases, b"", 10)).await.unwrap();
    let at = first.revision;
    let then: BTreeMap<Vec<u8>, Vec<u8>> = store
        .entries(Tree::Leases, b"", None, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .collect();
    // Changes after the first page: some keys rewritten, some deleted, some new (odd
    // numbers, in and after the first page), twice over for some.
    for n in 0..100u32 {
        let txn = match n % 6 {
            0 => Txn::new().put(Tree::Leases, &key(n), b"new"),
            2 => Txn::new().delete(Tree::Leases, &key(n)),
            1 | 3 => Txn::new().put(Tree::Leases, &key(n), b"inserted"),
            _ => continue,
        };
        store.commit(txn).await.unwrap();
    }
    store
        .commit(Txn::new().put(Tree::Leases, &key(0), b"newer"))
        .await
        .unwrap();
    let mut seen: BTreeMap<Vec<u8>, Vec<u8>> = first.entries.into_iter().collect();
    let mut after = seen.keys().last().cloned();
    loop {
        let range = Range::new(Tree::Leases, b"", 10)
            .after(after.as_deref())
            .at(Some(at));
        let page = store.scan(range).await.unwrap();
        assert_eq!(page.revision, at);
        after = page.entries.last().map(|(k, _)| k.clone());
        seen.extend(page.entries);
        if !page.more {
            break;
        }
    }
    assert_eq!(
        seen, then,
        "the listing is the store at the first page's revision"
    );
    // Read now, the changes show.
    let now = store.value(Tree::Leases, &key(1)).await.unwrap();
    assert_eq!(now.as_deref(), Some(&b"inserted"[..]));
}

async fn a_watch_delivers_changes_in_order_and_resumes_from_a_revision(backend: Backend) {
    let store = backend.store;
    let start = store.revision();
    let mut watch = store.watch(Tree::Leases, b"", start).await.unwrap();
    let mut revisions = Vec::new();
    for n in 0..20u32 {
        let txn = match n % 3 {
            2 => Txn::new().delete(Tree::Leases, &key(n - 1)),
            _ => Txn::new().put(Tree::Leases, &key(n), &n.to_be_bytes()),
        };
        let Outcome::Committed(at) = store.commit(txn).await.unwrap() else {
            panic!("unconditional writes commit")
        };
        revisions.push(at);
    }
    let mut delivered: Vec<Change> = Vec::new();
    for _ in 0..20 {
        delivered.push(watch.next().await.unwrap());
    }
    assert_eq!(
        delivered.iter().map(|c| c.revision).collect::<Vec<_>>(),
        revisions,
        "one change per commit, in commit order"
    );
    assert!(revisions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(delivered[0].key, key(0));
    assert_eq!(delivered[0].value, Some(0u32.to_be_bytes().to_vec()));
    assert_eq!(
        (delivered[2].key.clone(), delivered[2].value.clone()),
        (key(1), None)
    );
    // A follower that stopped at the 10th change resumes from its revision and gets
    // exactly the rest, the same.
    let mut resumed = store.watch(Tree::Leases, b"", revisions[9]).await.unwrap();
    for expected in &delivered[10..] {
        assert_eq!(&resumed.next().await.unwrap(), expected);
    }
    // And then what comes next, on both.
    let txn = Txn::new().put(Tree::Leases, b"last", b"x");
    let Outcome::Committed(at) = store.commit(txn).await.unwrap() else {
        panic!()
    };
    assert_eq!(resumed.next().await.unwrap().revision, at);
    assert_eq!(watch.next().await.unwrap().revision, at);
}

async fn a_watch_follows_only_its_prefix(backend: Backend) {
    let store = backend.store;
    let mut pool = store
        .watch(Tree::Accounts, b"pool\0", store.revision())
        .await
        .unwrap();
    store
        .commit(Txn::new().put(Tree::Accounts, b"pixverse\0a", b"1"))
        .await
        .unwrap();
    store
        .commit(Txn::new().put(Tree::Leases, b"pool\0a", b"1"))
        .await
        .unwrap();
    store
        .commit(Txn::new().put(Tree::Accounts, b"pool\0a", b"2"))
        .await
        .unwrap();
    let change = pool.next().await.unwrap();
    assert_eq!(
        (change.tree, change.key, change.value),
        (Tree::Accounts, b"pool\0a".to_vec(), Some(b"2".to_vec()))
    );
}

/// Writes enough to push the first commit out of the kept history: reads and watches
/// from before it are refused with `Compacted` (never answered wrong), later ones work.
async fn history_older_than_what_is_kept_is_refused(backend: Backend) {
    let store = backend.store.clone();
    let start = store.revision();
    store
        .commit(Txn::new().put(Tree::Audit, b"first", b"x"))
        .await
        .unwrap();
    backend.forget_history(start).await;
    let compacted = match store.watch(Tree::Audit, b"", start).await {
        Err(error @ StoreError::Compacted { .. }) => error,
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("a watch from forgotten history started"),
    };
    let StoreError::Compacted { asked, oldest } = compacted else {
        unreachable!()
    };
    assert_eq!(asked, start);
    assert!(oldest > start);
    let old = Range::new(Tree::Audit, b"", 10).at(Some(start));
    assert!(matches!(
        store.scan(old).await,
        Err(StoreError::Compacted { .. })
    ));
    // From the oldest kept revision on, both work.
    let kept = Range::new(Tree::Audit, b"", 10).at(Some(oldest));
    store.scan(kept).await.unwrap();
    store.watch(Tree::Audit, b"", oldest).await.unwrap();
}

/// A follower that reads nothing while thousands of changes arrive is ended (its
/// buffer is bounded) once it has read what was buffered.
async fn a_watch_that_falls_behind_ends(backend: Backend) {
    let store = backend.store;
    let mut slow = store
        .watch(Tree::Leases, b"", store.revision())
        .await
        .unwrap();
    // 6,000 changes, 100 to a transaction (etcd allows 128 operations in one).
    for batch in 0..60u32 {
        let txn = (0..100u32).fold(Txn::new(), |txn, n| {
            txn.put(Tree::Leases, &key(n), &(batch * 100 + n).to_be_bytes())
        });
        store.commit(txn).await.unwrap();
    }
    let mut read = 0;
    let ended = loop {
        match slow.next().await {
            Ok(_) => read += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(ended, StoreError::WatchEnded), "{ended}");
    assert!(
        read > 0 && read < 6000,
        "{read} changes read before the end"
    );
}

async fn injected_faults_fail_whole_transactions(backend: Backend) {
    let plan = Arc::new(FaultPlan::default());
    let store: Arc<dyn Store> = Arc::new(FaultyStore::new(backend.store.clone(), plan.clone()));
    plan.fail_writes(Tree::ApiKeys, true);
    // A transaction that writes to a failing tree fails whole.
    let txn = Txn::new()
        .put(Tree::Callers, b"id", b"record")
        .put(Tree::ApiKeys, b"key", b"id");
    assert!(matches!(store.commit(txn).await, Err(StoreError::Io(_))));
    assert_eq!(store.value(Tree::Callers, b"id").await.unwrap(), None);
    assert_eq!(plan.injected(), 1);
    // Other trees are written.
    store
        .commit(Txn::new().put(Tree::Callers, b"id", b"record"))
        .await
        .unwrap();
    plan.fail_writes(Tree::ApiKeys, false);
    // Every operation failing: reads, scans, commits and flushes all say so.
    plan.fail_share(1.0);
    assert!(store.get(Tree::Callers, b"id").await.is_err());
    assert!(store.scan(Range::new(Tree::Callers, b"", 1)).await.is_err());
    assert!(
        store
            .commit(Txn::new().delete(Tree::Callers, b"id"))
            .await
            .is_err()
    );
    assert!(store.flush().await.is_err());
    plan.fail_share(0.0);
    assert_eq!(
        store.value(Tree::Callers, b"id").await.unwrap(),
        Some(b"record".to_vec()),
        "nothing a failed operation touched changed"
    );
}

/// sled only: what a flush acknowledged is there after a reopen.
#[tokio::test]
async fn sled_keeps_flushed_writes_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = credvault::store::open_embedded(dir.path()).unwrap();
        let txn = Txn::new()
            .put(Tree::Accounts, b"a", b"1")
            .put(Tree::Leases, b"b", b"2");
        store.commit(txn).await.unwrap();
        store.flush().await.unwrap();
    }
    // (The open waits out the lock a just-closed store may hold a moment longer.)
    let store = credvault::store::open_embedded(dir.path()).unwrap();
    assert_eq!(
        store.value(Tree::Accounts, b"a").await.unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(
        store.value(Tree::Leases, b"b").await.unwrap(),
        Some(b"2".to_vec())
    );
}
