use super::*;
use crate::crypto::MasterKey;

#[test]
fn bound_to_tree_and_key() {
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let bytes = seal(&sealer, Tree::Callers, b"c1", &vec!["x".to_owned()]).unwrap();
    let back: Vec<String> = open(&sealer, Tree::Callers, b"c1", &bytes).unwrap();
    assert_eq!(back, ["x"]);
    assert!(matches!(
        open::<Vec<String>>(&sealer, Tree::Callers, b"c2", &bytes),
        Err(SealedError::Unauthentic)
    ));
    assert!(matches!(
        open::<Vec<String>>(&sealer, Tree::Meta, b"c1", &bytes),
        Err(SealedError::Unauthentic)
    ));
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(open::<Vec<String>>(&sealer, Tree::Callers, b"c1", &flipped).is_err());
}

#[test]
fn raw_records_are_bound_to_their_format_too() {
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let bytes = seal_raw(&sealer, Tree::Audit, b"k", b"\x01\x02").unwrap();
    assert!(is_raw(&bytes));
    assert_eq!(
        &*open_raw(&sealer, Tree::Audit, b"k", &bytes).unwrap(),
        b"\x01\x02"
    );
    assert!(matches!(
        open_raw(&sealer, Tree::Audit, b"j", &bytes),
        Err(SealedError::Unauthentic)
    ));
    // Read as the other format, or relabelled as it, the record does not open.
    assert!(matches!(
        open::<Vec<u8>>(&sealer, Tree::Audit, b"k", &bytes),
        Err(SealedError::Malformed)
    ));
    let mut relabelled = bytes.clone();
    relabelled[3] = FORMAT_JSON;
    assert!(matches!(
        open::<Vec<u8>>(&sealer, Tree::Audit, b"k", &relabelled),
        Err(SealedError::Unauthentic)
    ));
    let json = seal(&sealer, Tree::Audit, b"k", &vec![1u8]).unwrap();
    assert!(!is_raw(&json));
    let mut relabelled = json.clone();
    relabelled[3] = FORMAT_RAW;
    assert!(matches!(
        open_raw(&sealer, Tree::Audit, b"k", &relabelled),
        Err(SealedError::Unauthentic)
    ));
    // Key rotation keeps the format.
    let other = Sealer::new(&MasterKey::generate().unwrap());
    assert!(reseal(&other, Tree::Audit, b"k", &bytes).is_err());
    assert_eq!(reseal(&sealer, Tree::Audit, b"k", &bytes).unwrap(), None);
}
