use std::collections::BTreeMap;

use super::*;
use crate::{accounts::model::Status, crypto::MasterKey};

fn account(email: &str) -> Account {
    Account {
        meta: AccountMeta {
            provider: "pixverse".into(),
            email: email.into(),
            max_jobs: 4,
            disabled: false,
            labels: BTreeMap::new(),
            status: Status::Active,
            status_reason: String::new(),
            session: None,
            credits: None,
            upstream_activated: false,
            created_at_ms: 1,
            updated_at_ms: 1,
            version: 1,
        },
        secrets: AccountSecrets {
            password: Some(SecretString::from("correct horse".to_owned())),
            token: Some(SecretString::from("eyJ.token.sig".to_owned())),
            ..Default::default()
        },
    }
}

#[test]
fn round_trip_and_no_plaintext() {
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let original = account("a@example.com");
    let bytes = encode(&sealer, b"pixverse\0a@example.com", &original, false).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("correct horse") && !text.contains("eyJ.token.sig"));
    assert_eq!(
        decode(&sealer, b"pixverse\0a@example.com", &bytes).unwrap(),
        original
    );
}

#[test]
fn tampering_with_meta_or_place_is_detected() {
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let bytes = encode(&sealer, b"k1", &account("a@example.com"), false).unwrap();
    assert!(matches!(
        decode(&sealer, b"k2", &bytes),
        Err(RecordError::Unauthentic)
    ));

    // Raise maxJobs in the readable part and keep the sealed part as it was.
    let Parts { meta, sealed, .. } = split(&bytes).unwrap();
    let meta = String::from_utf8(meta.to_vec())
        .unwrap()
        .replace("\"max_jobs\":4", "\"max_jobs\":8");
    let mut forged = bytes[..HEADER_LEN].to_vec();
    forged.extend_from_slice(meta.as_bytes());
    forged.extend_from_slice(sealed);
    assert!(matches!(
        decode(&sealer, b"k1", &forged),
        Err(RecordError::Unauthentic)
    ));
    // The readable format's metadata is read unauthenticated, for choosing only.
    assert_eq!(decode_meta(&sealer, b"k1", &forged).unwrap().max_jobs, 8);
}

#[test]
fn unknown_formats_are_named() {
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let mut bytes = encode(&sealer, b"k", &account("a@example.com"), false).unwrap();
    bytes[3] = 9;
    assert_eq!(
        decode(&sealer, b"k", &bytes).unwrap_err().to_string(),
        "the record has format 9, which this build cannot read"
    );
    assert!(matches!(
        decode(&sealer, b"k", b"junk"),
        Err(RecordError::Malformed)
    ));
}

#[test]
fn sealed_metadata_shows_no_email_and_is_bound_to_its_place() {
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let original = account("private@example.com");
    let bytes = encode(&sealer, b"pixverse\0f00d", &original, true).unwrap();
    assert_eq!(bytes[3], SEALED_META_FORMAT);
    let text = String::from_utf8_lossy(&bytes);
    for clear in [
        "private@example.com",
        "max_jobs",
        "correct horse",
        "eyJ.token.sig",
    ] {
        assert!(!text.contains(clear), "{clear} is readable in the record");
    }
    assert_eq!(
        decode(&sealer, b"pixverse\0f00d", &bytes).unwrap(),
        original
    );
    assert_eq!(
        decode_meta(&sealer, b"pixverse\0f00d", &bytes).unwrap(),
        original.meta
    );
    // Moved under another key, neither part opens.
    assert!(matches!(
        decode_meta(&sealer, b"pixverse\0beef", &bytes),
        Err(RecordError::Unauthentic)
    ));
    assert!(matches!(
        decode(&sealer, b"pixverse\0beef", &bytes),
        Err(RecordError::Unauthentic)
    ));
    // Another record's sealed metadata spliced in (same key, another account's
    // fields): the secrets, bound to the metadata, no longer open.
    let other = encode(
        &sealer,
        b"pixverse\0f00d",
        &account("other@example.com"),
        true,
    )
    .unwrap();
    let (mine, theirs) = (split(&bytes).unwrap(), split(&other).unwrap());
    let spliced = assemble(SEALED_META_FORMAT, theirs.meta, mine.sealed).unwrap();
    assert!(matches!(
        decode(&sealer, b"pixverse\0f00d", &spliced),
        Err(RecordError::Unauthentic)
    ));
}

#[test]
fn reseal_renews_both_sealed_parts() {
    let old = MasterKey::generate().unwrap();
    let new = MasterKey::generate().unwrap();
    let original = account("a@example.com");
    for seal_meta in [false, true] {
        let bytes = encode(&Sealer::new(&old), b"k", &original, seal_meta).unwrap();
        let rotating = Sealer::new(&new).with_previous(&old);
        let resealed = reseal(&rotating, b"k", &bytes).unwrap().unwrap();
        assert!(reseal(&rotating, b"k", &resealed).unwrap().is_none());
        // Only the new key is needed now.
        assert_eq!(
            decode(&Sealer::new(&new), b"k", &resealed).unwrap(),
            original
        );
    }
}
