use super::*;

fn meta(provider: &str, email: &str, max_jobs: u32) -> AccountMeta {
    AccountMeta {
        provider: provider.into(),
        email: email.into(),
        max_jobs,
        disabled: false,
        labels: Default::default(),
        status: crate::accounts::Status::Active,
        status_reason: String::new(),
        session: None,
        credits: None,
        upstream_activated: false,
        created_at_ms: 0,
        updated_at_ms: 0,
        version: 1,
    }
}

#[test]
fn put_replaces_and_remove_forgets() {
    let mut directory = Directory::default();
    directory.put(meta("pool", "b@example.com", 1), 1);
    directory.put(meta("pool", "a@example.com", 2), 2);
    directory.put(meta("other", "a@example.com", 3), 3);
    directory.put(meta("pool", "b@example.com", 4), 4);
    assert_eq!(directory.len(), 3);
    let emails: Vec<(String, u32)> = directory
        .provider("pool")
        .map(|e| (e.key.email.clone(), e.meta.max_jobs))
        .collect();
    assert_eq!(
        emails,
        [("a@example.com".into(), 2), ("b@example.com".into(), 4)]
    );
    directory.remove(
        &AccountKey {
            provider: "pool".into(),
            email: "a@example.com".into(),
        },
        5,
    );
    assert!(directory.get("pool", "a@example.com").is_none());
    assert_eq!(
        directory
            .get("other", "a@example.com")
            .unwrap()
            .meta
            .max_jobs,
        3
    );
    assert_eq!(directory.provider("nobody").count(), 0);
}

/// A change older than what the directory holds (a watch delivering it late) is
/// ignored: it neither brings back a deleted account nor undoes a newer write.
#[test]
fn late_changes_do_not_undo_newer_ones() {
    let mut directory = Directory::default();
    let key = AccountKey {
        provider: "pool".into(),
        email: "a@example.com".into(),
    };
    directory.put(meta("pool", "a@example.com", 2), 10);
    directory.put(meta("pool", "a@example.com", 1), 9);
    assert_eq!(
        directory
            .get("pool", "a@example.com")
            .unwrap()
            .meta
            .max_jobs,
        2
    );
    directory.remove(&key, 12);
    directory.put(meta("pool", "a@example.com", 3), 11);
    assert!(
        directory.get("pool", "a@example.com").is_none(),
        "a deleted account came back"
    );
    // Once the watch has passed the deletion, a re-creation is taken.
    directory.forget_tombstones(12);
    directory.put(meta("pool", "a@example.com", 4), 13);
    assert_eq!(
        directory
            .get("pool", "a@example.com")
            .unwrap()
            .meta
            .max_jobs,
        4
    );
}
