//! Debits, refunds and credits taken ahead; the bootstrap admin's role kept.

use std::sync::Arc;

use super::*;
use crate::{
    callers::{
        BOOTSTRAP_ADMIN_ID, CallerSettings, CallerUpdate, MIN_SECRET_LEN, NewCaller, Role,
        keys::CallerMacs,
    },
    clock::ManualClock,
    crypto::{MasterKey, Sealer, SecretString},
    store::{FaultPlan, FaultyStore, MemoryStore, Naming, Store, Tree},
};

/// A service over a (breakable) store, and a consumer holding `credits`.
async fn consumer(credits: i64) -> (CallerService, Arc<FaultPlan>, String) {
    let master = MasterKey::generate().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let memory: Arc<dyn Store> = MemoryStore::open();
    let service = CallerService::open(
        Arc::new(FaultyStore::new(memory, plan.clone())),
        Arc::new(Sealer::new(&master)),
        CallerMacs::new(&master),
        Naming::Emails,
        Arc::new(ManualClock::at(1_800_000_000_000)),
        CallerSettings {
            default_credits: credits,
            ..CallerSettings::default()
        },
    )
    .await
    .unwrap();
    let admin = service.bootstrap_admin().unwrap();
    let created = service
        .create(
            &admin,
            NewCaller {
                email: "spender@example.com".into(),
                secret: SecretString::from("s".repeat(MIN_SECRET_LEN)),
                scopes: vec!["pixverse".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = created.caller.id.clone();
    (service, plan, id)
}

/// A debit as a hand-out makes it: charged, then written and flushed.
async fn debit(service: &CallerService, id: &str, cost: i64) -> Result<i64, CallerError> {
    let charge = service.charge(id, cost)?;
    service.flush().await?;
    match charge.written() {
        Some(true) => Ok(charge.credits.map_or(0, |c| c.remaining)),
        _ => Err(CallerError::DebitUnwritten),
    }
}

/// The balance as stored, without pending debits.
async fn stored(service: &CallerService, id: &str) -> i64 {
    let opened = service.read_afresh(id).await.unwrap().unwrap();
    opened.record.credits.as_ref().unwrap().remaining
}

#[tokio::test]
async fn pending_debits_count_against_the_balance_until_one_write_takes_them_all() {
    let (service, _plan, id) = consumer(3).await;
    let charges: Vec<Charge> = (0..3).map(|_| service.charge(&id, 1).unwrap()).collect();
    assert_eq!(charges[2].credits.as_ref().unwrap().remaining, 0);
    assert!(matches!(
        service.charge(&id, 1),
        Err(CallerError::Credits(CreditError::Exhausted {
            remaining: 0,
            cost: 1
        }))
    ));
    assert_eq!(charges[0].written(), None);
    assert_eq!(stored(&service, &id).await, 3);
    assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 0);
    let version = service.get(&id).unwrap().version;
    service.settle().await;
    assert!(charges.iter().all(|c| c.written() == Some(true)));
    assert_eq!(stored(&service, &id).await, 0);
    assert_eq!(service.get(&id).unwrap().version, version + 1, "one write");
}

#[tokio::test]
async fn a_refund_takes_off_a_pending_debit_and_pays_back_a_written_one() {
    let (service, _plan, id) = consumer(5).await;
    let pending = service.charge(&id, 2).unwrap();
    service.refund(&pending).await.unwrap();
    assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 5);
    let written = service.charge(&id, 2).unwrap();
    service.settle().await;
    assert_eq!(stored(&service, &id).await, 3);
    service.refund(&written).await.unwrap();
    assert_eq!(stored(&service, &id).await, 5);
    // The refunded pending debit was never written.
    service.settle().await;
    assert_eq!(stored(&service, &id).await, 5);
}

#[tokio::test]
async fn a_batch_that_cannot_be_written_refuses_its_debits_and_takes_nothing() {
    let (service, plan, id) = consumer(5).await;
    let charge = service.charge(&id, 1).unwrap();
    plan.fail_writes(Tree::Callers, true);
    service.settle().await;
    assert_eq!(charge.written(), Some(false));
    assert!(matches!(
        debit(&service, &id, 1).await,
        Err(CallerError::DebitUnwritten)
    ));
    plan.fail_writes(Tree::Callers, false);
    service.refund(&charge).await.unwrap();
    assert_eq!(stored(&service, &id).await, 5);
    assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 5);
    assert_eq!(debit(&service, &id, 1).await.unwrap(), 4);
    assert_eq!(stored(&service, &id).await, 4);
}

#[tokio::test]
async fn on_a_shared_store_a_large_balance_is_spent_from_credits_taken_ahead() {
    use crate::callers::reserve::AHEAD_CALLS;
    let (service, _plan, id) = consumer(100_000).await;
    service.follows_shared_store();
    // The first debit is written as it is made, and asks for a block.
    assert_eq!(debit(&service, &id, 1).await.unwrap(), 99_999);
    service.top_up().await;
    assert_eq!(stored(&service, &id).await, 99_999 - AHEAD_CALLS);
    let version = service.get(&id).unwrap().version;
    // Paid ahead: settled at once, nothing written, the balance shown whole.
    for n in 1..=10 {
        let charge = service.charge(&id, 1).unwrap();
        assert_eq!(charge.written(), Some(true));
        assert_eq!(charge.credits.unwrap().remaining, 99_999 - n);
    }
    service.settle().await;
    assert_eq!(service.get(&id).unwrap().version, version, "no write");
    assert_eq!(stored(&service, &id).await, 99_999 - AHEAD_CALLS);
    assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 99_989);
    // A refund goes back into the block.
    let charge = service.charge(&id, 1).unwrap();
    service.refund(&charge).await.unwrap();
    assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 99_989);
    // Under half a block left: the top-up takes it back to a whole one.
    for _ in 0..30 {
        assert_eq!(service.charge(&id, 1).unwrap().written(), Some(true));
    }
    service.top_up().await;
    assert_eq!(stored(&service, &id).await, 99_999 - AHEAD_CALLS - 40);
    assert_eq!(service.get(&id).unwrap().credits.unwrap().remaining, 99_959);
    // Given back at shutdown: the stored balance is what was spent.
    service.give_back_reserves().await;
    assert_eq!(stored(&service, &id).await, 99_959);
    assert_eq!(service.charge(&id, 1).unwrap().written(), None);
}

#[tokio::test]
async fn nothing_is_taken_ahead_near_the_end_nor_kept_once_credits_are_taken_away() {
    let (service, _plan, id) = consumer(2_000).await;
    service.follows_shared_store();
    assert_eq!(debit(&service, &id, 1).await.unwrap(), 1_999);
    service.top_up().await;
    assert_eq!(stored(&service, &id).await, 1_999, "too close to the end");
    assert_eq!(service.charge(&id, 1).unwrap().written(), None);

    let (service, _plan, id) = consumer(10_000).await;
    service.follows_shared_store();
    debit(&service, &id, 1).await.unwrap();
    service.top_up().await;
    assert!(stored(&service, &id).await < 9_999);
    service
        .update(
            &id,
            CallerUpdate {
                add_credits: -100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The block went with the credits taken away: debits are written again.
    let shown = service.get(&id).unwrap().credits.unwrap().remaining;
    assert_eq!(shown, stored(&service, &id).await);
    assert_eq!(service.charge(&id, 1).unwrap().written(), None);
}

#[tokio::test]
async fn free_calls_and_unmetered_callers_owe_nothing() {
    let (service, _plan, id) = consumer(0).await;
    assert_eq!(service.charge(&id, 0).unwrap().written(), Some(true));
    service
        .update(
            &id,
            CallerUpdate {
                unmetered: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let charge = service.charge(&id, 1).unwrap();
    assert_eq!((charge.written(), charge.credits), (Some(true), None));
}

#[tokio::test]
async fn the_bootstrap_admin_cannot_be_demoted_and_is_restored_at_start() {
    let (service, _plan, _id) = consumer(0).await;
    for update in [
        CallerUpdate {
            roles: Some([Role::Consumer].into()),
            ..Default::default()
        },
        CallerUpdate {
            disabled: Some(true),
            ..Default::default()
        },
    ] {
        assert!(matches!(
            service.update(BOOTSTRAP_ADMIN_ID, update).await,
            Err(CallerError::BootstrapAdmin)
        ));
    }
    // A store written by an older build, which let the admin demote itself.
    service
        .modify(BOOTSTRAP_ADMIN_ID, None, Vec::new(), |record| {
            record.roles = [Role::Consumer].into();
            record.disabled = true;
            Ok(true)
        })
        .await
        .unwrap();
    let opened = service
        .read_afresh(BOOTSTRAP_ADMIN_ID)
        .await
        .unwrap()
        .unwrap();
    assert!(!opened.record.roles.contains(&Role::Admin) && opened.record.disabled);
    service.ensure_bootstrap_admin().await.unwrap();
    let admin = service.bootstrap_admin().unwrap();
    assert!(admin.is_admin());
    let opened = service
        .read_afresh(BOOTSTRAP_ADMIN_ID)
        .await
        .unwrap()
        .unwrap();
    assert!(opened.record.roles.contains(&Role::Admin) && !opened.record.disabled);
}

#[tokio::test]
async fn a_debit_is_unwritten_until_a_settle_and_a_free_call_owes_none() {
    let (service, _plan, id) = consumer(10).await;
    let charge = service.charge(&id, 2).unwrap();
    assert_eq!(charge.unwritten(), 2);
    service.flush().await.unwrap();
    assert_eq!(charge.unwritten(), 0);
    assert_eq!(service.charge(&id, 0).unwrap().unwritten(), 0);
}

#[tokio::test]
async fn spilled_debits_are_taken_again_per_caller_and_never_below_zero() {
    let (service, _plan, id) = consumer(10).await;
    let spilled = |caller: &str, credits| crate::audit::SpilledDebit {
        caller_id: caller.into(),
        credits,
    };
    // A caller deleted since owes nothing, and does not stop the others.
    service
        .take_spilled(&[spilled(&id, 3), spilled("gone", 5), spilled(&id, 4)])
        .await
        .unwrap();
    assert_eq!(stored(&service, &id).await, 3);
    service.take_spilled(&[spilled(&id, 9)]).await.unwrap();
    assert_eq!(stored(&service, &id).await, 0, "never below zero");
}

#[tokio::test]
async fn a_settle_waits_for_spilling_hand_outs_and_writes_the_queued_events_first() {
    let (service, _plan, id) = consumer(10).await;
    let events_written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = events_written.clone();
    service.write_events_first(Box::new(move || {
        let counter = counter.clone();
        Box::pin(async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    }));
    // A hand-out between its charge and its spilled event holds the gate shared.
    let handing_out = service.spill_gate.read().await;
    service.charge(&id, 2).unwrap();
    let mut settle = Box::pin(service.settle());
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(settle.as_mut().poll(&mut context).is_pending());
    assert_eq!(events_written.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        stored(&service, &id).await,
        10,
        "no debit written meanwhile"
    );
    drop(handing_out);
    settle.await;
    assert_eq!(events_written.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(stored(&service, &id).await, 8);
}
