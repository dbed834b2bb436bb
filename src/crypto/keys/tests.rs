use super::*;

#[test]
fn purposes_get_different_keys_and_the_same_key_twice() {
    let master = MasterKey::generate().unwrap();
    let sealing = master.derive(Purpose::Sealing);
    assert_eq!(sealing.expose(), master.derive(Purpose::Sealing).expose());
    assert_ne!(sealing.expose(), master.derive(Purpose::AuditHmac).expose());
    assert_ne!(
        sealing.expose(),
        master.derive(Purpose::CallerHmac).expose()
    );
}

#[test]
fn base64_round_trip_and_key_id_is_stable() {
    let master = MasterKey::generate().unwrap();
    let again = MasterKey::from_base64(&format!("{}\n", *master.to_base64())).unwrap();
    assert_eq!(master.key_id(), again.key_id());
    assert_ne!(master.key_id(), MasterKey::generate().unwrap().key_id());
}

#[test]
fn bad_keys_are_refused_with_a_reason() {
    assert_eq!(
        MasterKey::from_base64("not base64!")
            .unwrap_err()
            .to_string(),
        "the master key is not valid base64"
    );
    assert_eq!(
        MasterKey::from_base64(&STANDARD.encode([7u8; 16]))
            .unwrap_err()
            .to_string(),
        "the master key must be 32 bytes, base64-encoded (got 16 bytes); generate one with `credvault keygen`"
    );
    assert_eq!(
        MasterKey::from_base64(&STANDARD.encode([0u8; 32]))
            .unwrap_err()
            .to_string(),
        "the master key is weak (all bytes are the same); generate one with `credvault keygen`"
    );
}

#[test]
fn debug_shows_no_key_material() {
    let master = MasterKey::generate().unwrap();
    let text = format!("{master:?} {:?}", master.derive(Purpose::Sealing));
    assert_eq!(text, "MasterKey([redacted]) SubKey([redacted])");
}
