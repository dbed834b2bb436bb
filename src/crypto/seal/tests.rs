use super::*;

fn sealer() -> Sealer {
    Sealer::new(&MasterKey::generate().unwrap())
}

#[test]
fn round_trip_with_fresh_nonces() {
    let sealer = sealer();
    let a = sealer.seal(b"record-1", b"pa55word").unwrap();
    let b = sealer.seal(b"record-1", b"pa55word").unwrap();
    assert_ne!(a, b, "each seal draws a new nonce");
    assert_eq!(
        sealer.open(b"record-1", &a).unwrap().as_slice(),
        b"pa55word"
    );
    assert!(!a.windows(8).any(|w| w == b"pa55word"));
}

#[test]
fn another_context_does_not_open() {
    let sealer = sealer();
    let sealed = sealer.seal(b"record-1", b"secret").unwrap();
    assert!(matches!(
        sealer.open(b"record-2", &sealed),
        Err(SealError::Unauthentic)
    ));
}

#[test]
fn any_flipped_byte_is_detected() {
    let sealer = sealer();
    let sealed = sealer.seal(b"ctx", b"secret").unwrap();
    for i in KEY_ID_LEN..sealed.len() {
        let mut tampered = sealed.clone();
        tampered[i] ^= 0x01;
        assert!(sealer.open(b"ctx", &tampered).is_err(), "byte {i}");
    }
}

#[test]
fn another_key_or_key_id_is_refused() {
    let sealed = sealer().seal(b"ctx", b"secret").unwrap();
    let other = sealer();
    assert!(matches!(
        other.open(b"ctx", &sealed),
        Err(SealError::UnknownKey(_))
    ));
    let mut relabelled = sealed.clone();
    relabelled[..4].copy_from_slice(&other.key_id().0.to_be_bytes());
    assert!(matches!(
        other.open(b"ctx", &relabelled),
        Err(SealError::Unauthentic)
    ));
    assert!(matches!(
        other.open(b"ctx", &sealed[..20]),
        Err(SealError::Truncated)
    ));
}
