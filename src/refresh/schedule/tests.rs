use std::collections::BTreeMap;

use super::*;
use crate::accounts::SessionMeta;

fn key(email: &str) -> AccountKey {
    AccountKey {
        provider: "p".into(),
        email: email.into(),
    }
}

fn meta(session: Option<SessionMeta>) -> AccountMeta {
    AccountMeta {
        provider: "p".into(),
        email: "a@x.io".into(),
        max_jobs: 1,
        disabled: false,
        labels: BTreeMap::new(),
        status: Status::Active,
        status_reason: String::new(),
        session,
        credits: None,
        upstream_activated: false,
        created_at_ms: 0,
        updated_at_ms: 0,
        version: 1,
    }
}

#[test]
fn order_update_and_pop() {
    let mut schedule = Schedule::default();
    schedule.set(key("b"), 20);
    schedule.set(key("a"), 10);
    schedule.set(key("c"), 30);
    schedule.set(key("c"), 5);
    assert_eq!(schedule.next_due(), Some(5));
    assert_eq!(schedule.pop_due(20), vec![key("c"), key("a"), key("b")]);
    assert!(schedule.is_empty());
    schedule.set(key("a"), 10);
    schedule.remove(&key("a"));
    assert_eq!(schedule.next_due(), None);
}

#[test]
fn due_before_expiry_by_skew_or_a_tenth_of_the_lifetime() {
    let settings = RefreshSettings::default();
    let session = |lifetime_secs: i64| SessionMeta {
        expire_time: lifetime_secs,
        last_refresh_at_ms: 0,
        ..Default::default()
    };
    // A 10-hour token: a tenth (1 h) beats the 5-minute skew; jitter at most 60 s.
    let due = settings
        .next_due(ProviderKind::Pixverse, &meta(Some(session(36_000))), 0)
        .unwrap();
    assert!(
        (36_000_000 - 3_600_000 - 60_000..=36_000_000 - 3_600_000).contains(&due),
        "{due}"
    );
    // A 20-minute token: the skew (5 min) beats a tenth (2 min).
    let due = settings
        .next_due(ProviderKind::Pixverse, &meta(Some(session(1_200))), 0)
        .unwrap();
    assert!(
        (1_200_000 - 300_000 - 60_000..=1_200_000 - 300_000).contains(&due),
        "{due}"
    );
    // A 60-second token: the skew would make it due before it was issued; the lead
    // is a quarter of its life instead, less up to 3 s of jitter.
    for _ in 0..50 {
        let due = settings
            .next_due(ProviderKind::Pixverse, &meta(Some(session(60))), 0)
            .unwrap();
        assert!((42_001..=45_000).contains(&due), "{due}");
    }
    // Logged in 10 s ago, a 20-second token: the budget (30 s) holds it back.
    let fresh = SessionMeta {
        expire_time: 1_020,
        last_refresh_at_ms: 1_000_000,
        ..Default::default()
    };
    let due = settings
        .next_due(ProviderKind::Pixverse, &meta(Some(fresh)), 1_010_000)
        .unwrap();
    assert_eq!(due, 1_030_000);
    // No token yet: now. Needs attention: never.
    assert_eq!(
        settings.next_due(ProviderKind::Pixverse, &meta(None), 77),
        Some(77)
    );
    let mut stuck = meta(None);
    stuck.status = Status::NeedsAttention;
    assert_eq!(settings.next_due(ProviderKind::Pixverse, &stuck, 77), None);
}

#[test]
fn backoff_grows_and_is_capped() {
    let settings = RefreshSettings {
        backoff_base_ms: 1_000,
        backoff_cap_ms: 60_000,
        ..Default::default()
    };
    for (attempt, step) in [
        (1, 1_000),
        (2, 2_000),
        (3, 4_000),
        (7, 60_000),
        (40, 60_000),
    ] {
        let delay = settings.backoff_ms(attempt);
        assert!(
            (step / 2..=step).contains(&delay),
            "attempt {attempt}: {delay}"
        );
    }
}
