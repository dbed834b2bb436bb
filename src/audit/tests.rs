//! The trail's unit tests, on the in-memory store.

use std::{sync::Arc, time::Duration};

use serde::Serialize;

use super::*;
use crate::{
    clock::ManualClock,
    crypto::MasterKey,
    store::{FaultPlan, FaultyStore, MemoryStore},
};
use crate::{
    crypto::{Fingerprinter, Sealer},
    sealed::{self, SealedError},
    store::{Store, StoreExt, Swap, Tree},
};

struct Trail {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    hasher: Arc<Fingerprinter>,
    clock: Arc<ManualClock>,
}

impl Trail {
    fn new() -> Self {
        let master = MasterKey::generate().unwrap();
        Self {
            store: MemoryStore::open(),
            sealer: Arc::new(Sealer::new(&master)),
            hasher: Arc::new(Fingerprinter::new(&master)),
            clock: Arc::new(ManualClock::at(1_800_000_000_000)),
        }
    }

    async fn open(&self, store: Arc<dyn Store>, retention: Option<Duration>) -> AuditLog {
        AuditLog::open(
            store,
            self.sealer.clone(),
            self.hasher.clone(),
            self.clock.clone(),
            retention,
        )
        .await
        .unwrap()
    }

    async fn log(&self) -> AuditLog {
        self.open(self.store.clone(), None).await
    }

    async fn stored_keys(&self) -> Vec<u64> {
        self.store
            .entries(Tree::Audit, b"", None, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|(key, _)| seq_of(key).unwrap())
            .collect()
    }
}

fn event(n: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("r{n}"),
        rpc: "credvault.v1.Credentials/RevealAccount".into(),
        outcome: "OK".into(),
        ..AuditEvent::default()
    }
}

async fn all(log: &AuditLog) -> Vec<u64> {
    let (events, next) = log
        .list(&Filter::default(), MAX_PAGE_SIZE, "")
        .await
        .unwrap();
    assert_eq!(next, "");
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn queued_events_are_written_as_one_block_and_listed_in_order() {
    let trail = Trail::new();
    let log = trail.log().await;
    for n in 0..5 {
        log.append(event(n));
    }
    // Not in the store until written; a read writes them first.
    assert!(trail.stored_keys().await.is_empty());
    assert_eq!(all(&log).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(trail.stored_keys().await, vec![1]);
    assert_eq!(log.commit(event(5)).await.unwrap(), 6);
    assert_eq!(trail.stored_keys().await, vec![1, 6]);
}

#[tokio::test]
async fn pages_continue_inside_and_across_blocks_and_numbering_survives_a_reopen() {
    let trail = Trail::new();
    let log = trail.log().await;
    // One write of 600 queued events (several blocks, each closed at its byte or
    // event limit), then one of 1.
    for n in 0..600 {
        log.append(event(n));
    }
    assert!(log.write_queued().await);
    log.commit(event(600)).await.unwrap();
    let keys = trail.stored_keys().await;
    assert_eq!((keys[0], keys[keys.len() - 1]), (1, 601));
    assert!(keys.len() >= 4, "{keys:?}");
    assert!(keys.windows(2).all(|w| w[1] - w[0] <= BLOCK_MAX as u64));
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = log.list(&Filter::default(), 7, &token).await.unwrap();
        seen.extend(page.iter().map(|e| e.seq));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(seen, (1..=601).collect::<Vec<_>>());
    drop(log);
    let reopened = trail.log().await;
    assert_eq!(reopened.commit(event(601)).await.unwrap(), 602);
}

#[tokio::test]
async fn older_layouts_one_event_per_key_and_json_blocks_are_read_and_continued() {
    #[derive(Serialize)]
    struct JsonBlock {
        events: Vec<AuditEvent>,
    }
    let trail = Trail::new();
    let numbered = |seq: u64| AuditEvent {
        seq,
        ..event(seq as usize)
    };
    let put = |key: u64, bytes: Vec<u8>| {
        let store = trail.store.clone();
        async move {
            let key = key.to_be_bytes();
            store
                .swap(Tree::Audit, &key, None, Some(&bytes))
                .await
                .unwrap()
        }
    };
    for seq in 1..=3u64 {
        let key = seq.to_be_bytes();
        put(
            seq,
            sealed::seal(&trail.sealer, Tree::Audit, &key, &numbered(seq)).unwrap(),
        )
        .await;
    }
    let block = JsonBlock {
        events: (4..=6).map(numbered).collect(),
    };
    let key = 4u64.to_be_bytes();
    put(
        4,
        sealed::seal(&trail.sealer, Tree::Audit, &key, &block).unwrap(),
    )
    .await;
    let log = trail.log().await;
    assert_eq!(log.commit(event(7)).await.unwrap(), 7);
    assert_eq!(all(&log).await, vec![1, 2, 3, 4, 5, 6, 7]);
    let (listed, _) = log.list(&Filter::default(), 10, "").await.unwrap();
    assert_eq!(listed[4].request_id, event(5).request_id);
    assert_eq!(listed[4].secret_hashes, event(5).secret_hashes);
}

#[tokio::test]
async fn a_tampered_last_block_is_reported_on_read_and_numbering_goes_past_it() {
    let trail = Trail::new();
    let log = trail.log().await;
    log.commit(event(0)).await.unwrap();
    log.commit(event(1)).await.unwrap();
    drop(log);
    let key = 2u64.to_be_bytes();
    let mut bytes = trail.store.value(Tree::Audit, &key).await.unwrap().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let current = trail.store.value(Tree::Audit, &key).await.unwrap();
    trail
        .store
        .swap(Tree::Audit, &key, current.as_deref(), Some(&bytes))
        .await
        .unwrap();
    let reopened = trail.log().await;
    assert!(matches!(
        reopened.list(&Filter::default(), 10, "").await,
        Err(AuditError::Sealed(SealedError::Unauthentic))
    ));
    assert_eq!(
        reopened.commit(event(2)).await.unwrap(),
        2 + BLOCK_MAX as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_commits_share_blocks_and_all_arrive() {
    // On a store whose flush takes a disk's time (the in-memory one's takes none,
    // and gives the others no time to queue).
    let dir = tempfile::tempdir().unwrap();
    let mut trail = Trail::new();
    trail.store = crate::store::open_embedded(dir.path()).unwrap();
    let log = Arc::new(trail.log().await);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200 {
        let log = log.clone();
        tasks.spawn(async move { log.commit_durable(event(n)).await.unwrap() });
    }
    let mut seqs = Vec::new();
    while let Some(seq) = tasks.join_next().await {
        seqs.push(seq.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert_eq!(all(&log).await, seqs);
    // While one commit flushes, the others queue: they share blocks.
    let blocks = trail.stored_keys().await.len();
    assert!(blocks <= 100, "{blocks} blocks for 200 events");
}

#[tokio::test]
async fn an_event_whose_block_cannot_be_written_fails_its_commit_and_is_not_listed() {
    let trail = Trail::new();
    let plan = Arc::new(FaultPlan::default());
    let faulty: Arc<dyn Store> = Arc::new(FaultyStore::new(trail.store.clone(), plan.clone()));
    let log = trail.open(faulty, None).await;
    log.commit(event(0)).await.unwrap();
    plan.fail_writes(Tree::Audit, true);
    assert!(matches!(
        log.commit(event(1)).await,
        Err(AuditError::Unwritten)
    ));
    assert!(matches!(
        log.commit_durable(event(2)).await,
        Err(AuditError::Unwritten)
    ));
    log.append(event(3));
    assert!(!log.write_queued().await);
    assert!(matches!(log.flush().await, Ok(())));
    plan.fail_writes(Tree::Audit, false);
    log.commit_durable(event(4)).await.unwrap();
    assert_eq!(all(&log).await, vec![1, 5]);
}

#[tokio::test]
async fn pruning_removes_old_blocks_and_trims_the_one_where_old_meets_new() {
    let trail = Trail::new();
    let log = trail
        .open(trail.store.clone(), Some(Duration::from_secs(3600)))
        .await;
    log.append(event(0));
    log.append(event(1));
    log.commit(event(2)).await.unwrap();
    trail.clock.advance(1_800_000);
    log.append(event(3));
    log.commit(event(4)).await.unwrap();
    log.append(event(5));
    log.append(event(6));
    trail.clock.advance(1_800_000);
    log.commit(event(7)).await.unwrap();
    // Now: block 1 = [1,2,3] (old), block 4 = [4,5] (30 min), block 6 = [6,7,8]
    // with 6 and 7 30 min old and 8 new. An hour's retention, an hour later:
    assert_eq!(trail.stored_keys().await, vec![1, 4, 6]);
    trail.clock.advance(1_800_000 + 1);
    assert_eq!(log.prune().await.unwrap(), 7);
    assert_eq!(all(&log).await, vec![8]);
    assert_eq!(trail.stored_keys().await, vec![6]);
    assert_eq!(log.prune().await.unwrap(), 0);
}

#[tokio::test]
async fn spilled_events_the_store_lost_are_put_back_even_between_stored_ones() {
    let trail = Trail::new();
    let dir = tempfile::tempdir().unwrap();
    let log = trail.log().await.spilling_to(dir.path()).await.unwrap().0;
    for n in 0..5 {
        // Each event's hand-out took n credits from caller c{n}.
        let event = AuditEvent {
            caller_id: format!("c{n}"),
            unwritten_debit: n as i64,
            ..event(n)
        };
        assert_eq!(log.commit_spilled(event).await.unwrap(), n as u64 + 1);
    }
    // Events 1-5 are in the spill only; 1-3 reach the store, 4 and 5 do not, and a
    // later block (6) does (as when a block write failed and the next succeeded).
    log.write_queued().await;
    let keys = trail.stored_keys().await;
    assert_eq!(keys, [1], "one block of five: {keys:?}");
    // Keep 1-3 only: rewrite the block as three events, and add a block for 6.
    let five = trail
        .store
        .value(Tree::Audit, &1u64.to_be_bytes())
        .await
        .unwrap()
        .unwrap();
    let kept = log.open_block(&1u64.to_be_bytes(), &five).unwrap();
    let rewrite = |events: &[AuditEvent], first: u64| {
        let encoded = block::encode_blocks(events, BLOCK_MAX, BLOCK_BYTES);
        sealed::seal_raw(
            &trail.sealer,
            Tree::Audit,
            &first.to_be_bytes(),
            &encoded[0].bytes,
        )
        .unwrap()
    };
    let three = rewrite(&kept[..3], 1);
    let swapped = trail
        .store
        .swap(Tree::Audit, &1u64.to_be_bytes(), Some(&five), Some(&three))
        .await
        .unwrap();
    assert!(matches!(swapped, Swap::Done), "block 1 now holds 1-3 only");
    let mut sixth = kept[4].clone();
    sixth.seq = 6;
    let six = rewrite(&[sixth], 6);
    trail
        .store
        .swap(Tree::Audit, &6u64.to_be_bytes(), None, Some(&six))
        .await
        .unwrap();
    drop(log);

    let (log, debits) = trail.log().await.spilling_to(dir.path()).await.unwrap();
    assert_eq!(all(&log).await, [1, 2, 3, 4, 5, 6], "4 and 5 put back");
    let debit = |caller: &str, credits| SpilledDebit {
        caller_id: caller.into(),
        credits,
    };
    assert_eq!(
        debits,
        [debit("c3", 3), debit("c4", 4)],
        "the debits of the events put back, and only theirs"
    );
    assert_eq!(
        log.commit_spilled(event(9)).await.unwrap(),
        7,
        "numbering goes on after 6"
    );
    // Opened again without a flush round: 7 was spilled only, and is put back.
    drop(log);
    let (log, debits) = trail.log().await.spilling_to(dir.path()).await.unwrap();
    assert_eq!(all(&log).await, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(debits, [], "7 owed nothing; 4 and 5 are stored now");
}

#[tokio::test]
async fn a_spilled_debit_is_sealed_with_its_event_so_an_edited_spill_charges_nobody() {
    let trail = Trail::new();
    let dir = tempfile::tempdir().unwrap();
    let log = trail.log().await.spilling_to(dir.path()).await.unwrap().0;
    for caller in ["c1", "c2"] {
        let event = AuditEvent {
            caller_id: caller.into(),
            unwritten_debit: 5,
            ..event(0)
        };
        log.commit_spilled(event).await.unwrap();
    }
    drop(log);
    // The last byte of the file is the second record's seal tag.
    let path = dir.path().join("audit-spill.0");
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let (_, debits) = trail.log().await.spilling_to(dir.path()).await.unwrap();
    assert_eq!(
        debits,
        [SpilledDebit {
            caller_id: "c1".into(),
            credits: 5
        }],
        "the edited record charges nobody"
    );
}

#[tokio::test(start_paused = true)]
async fn with_a_spill_and_nothing_spilled_other_events_are_still_written() {
    let trail = Trail::new();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(trail.log().await.spilling_to(dir.path()).await.unwrap().0);
    log.append(event(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(log.clone().keep_written(stopped));
    // The paused clock jumps ahead once every task waits: two rounds' worth.
    tokio::time::sleep(write::SPILL_FLUSH_EVERY * 2).await;
    assert_eq!(trail.stored_keys().await, [1]);
    stop.send(true).unwrap();
    writer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_event_the_spill_cannot_take_is_taken_back_and_never_stored() {
    let trail = Trail::new();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(trail.log().await.spilling_to(dir.path()).await.unwrap().0);
    assert_eq!(log.commit_spilled(event(0)).await.unwrap(), 1);
    log.fail_spill_appends();
    let refused = log.commit_spilled(event(1)).await;
    assert!(matches!(refused, Err(AuditError::Unwritten)), "{refused:?}");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(log.clone().keep_written(stopped));
    // The paused clock jumps ahead once every task waits: two rounds' worth.
    tokio::time::sleep(write::SPILL_FLUSH_EVERY * 2).await;
    assert_eq!(trail.stored_keys().await, [1], "one round wrote the queue");
    assert_eq!(
        all(&log).await,
        [1],
        "the refused hand-out's event (2) is not stored as handed out"
    );
    stop.send(true).unwrap();
    writer.await.unwrap();
}
