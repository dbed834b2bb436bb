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
    let bytes = encode(&sealer, b"pixverse\0a@example.com", &original).unwrap();
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
    let bytes = encode(&sealer, b"k1", &account("a@example.com")).unwrap();
    assert!(matches!(
        decode(&sealer, b"k2", &bytes),
        Err(RecordError::Unauthentic)
    ));

    // Raise maxJobs in the readable part and keep the sealed part as it was.
    let (meta, sealed) = split(&bytes).unwrap();
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
    assert_eq!(decode_meta_unauthenticated(&forged).unwrap().max_jobs, 8);
}

#[test]
fn unknown_formats_are_named() {
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let mut bytes = encode(&sealer, b"k", &account("a@example.com")).unwrap();
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
