use super::*;
use crate::crypto::MasterKey;

fn record(id: &str, version: u64) -> CallerRecord {
    CallerRecord {
        id: id.into(),
        email: format!("{id}@example.com"),
        name: String::new(),
        created_at_ms: 0,
        roles: Default::default(),
        scopes: Vec::new(),
        groups: Vec::new(),
        disabled: false,
        secret_mac: None,
        keys: Vec::new(),
        tokens: Vec::new(),
        credits: None,
        version,
    }
}

/// A view read afresh at revision 9 keeps what the old one took after 9 (this
/// process's own writes while it was read), and not what it took before.
#[test]
fn a_view_read_afresh_keeps_the_newer_writes_of_the_old_one() {
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let mut old = View::default();
    old.remember("c1", b"sealed-v2".to_vec(), record("c1", 2), 10);
    old.apply(&sealer, Tree::ApiKeys, b"k1", Some(b"c1"), 11);
    old.apply(&sealer, Tree::ApiKeys, b"k0", None, 12);
    old.apply(
        &sealer,
        Tree::CallerEmails,
        b"old@example.com",
        Some(b"c0"),
        3,
    );

    let mut fresh = View::default();
    fresh.apply(&sealer, Tree::ApiKeys, b"k0", Some(b"c1"), 5);
    fresh.take_newer(&old, 9);

    let kept = fresh.record(&sealer, "c1").unwrap().unwrap();
    assert_eq!(kept.record.version, 2);
    assert_eq!(fresh.id_by_key("k1"), Some("c1"));
    assert_eq!(
        fresh.id_by_key("k0"),
        None,
        "a key removed after 9 stays removed"
    );
    assert_eq!(
        fresh.id_by_email("old@example.com"),
        None,
        "what the old view took before 9 comes from the fresh read, not the old view"
    );
    // And a late change from before the removal does not bring the key back.
    fresh.apply(&sealer, Tree::ApiKeys, b"k0", Some(b"c1"), 8);
    assert_eq!(fresh.id_by_key("k0"), None);
}
