use super::*;
use crate::{crypto::MasterKey, store::MemoryStore};

const YEAR: i64 = 365 * 24 * 3600;

async fn keys() -> (std::sync::Arc<MemoryStore>, Sealer, TokenKeys) {
    let store = MemoryStore::open();
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let keys = TokenKeys::load_or_init(store.as_ref(), &sealer, 0, "credvault", "credvault", YEAR)
        .await
        .unwrap();
    (store, sealer, keys)
}

#[tokio::test]
async fn issue_verify_and_the_time_window() {
    let (_store, _sealer, keys) = keys().await;
    let now = 1_700_000_000_000;
    let (token, claims) = keys.issue("c1", TokenKind::Access, now, 3600).unwrap();
    assert_eq!(keys.verify(&token, now).unwrap(), claims);
    assert_eq!(claims.exp - claims.iat, 3600);
    assert_eq!(
        keys.verify(&token, now + 3_600_000),
        Err(TokenError::Expired)
    );
    assert_eq!(keys.verify(&token, now - 1000), Err(TokenError::Invalid));
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_and_survives_reload() {
    let (store, sealer, keys) = keys().await;
    let (old, _) = keys.issue("c1", TokenKind::Access, 1000, YEAR).unwrap();
    let new_kid = keys.rotate(store.as_ref(), &sealer, 2000).await.unwrap();
    let (new, _) = keys.issue("c1", TokenKind::Access, 2000, YEAR).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().kid.unwrap(),
        new_kid
    );
    assert!(keys.verify(&old, 3000).is_ok());
    assert!(keys.verify(&new, 3000).is_ok());

    let reloaded = TokenKeys::load_or_init(
        store.as_ref(),
        &sealer,
        4000,
        "credvault",
        "credvault",
        YEAR,
    )
    .await
    .unwrap();
    assert!(reloaded.verify(&old, 4000).is_ok());
    assert!(reloaded.verify(&new, 4000).is_ok());
    assert_eq!(reloaded.public_keys().len(), 2);

    // A rotation after the old key's tokens have all expired drops it.
    let much_later = 2000 + (YEAR + 10) * 1000;
    keys.rotate(store.as_ref(), &sealer, much_later)
        .await
        .unwrap();
    assert_eq!(
        keys.public_keys().len(),
        2,
        "the first key is gone, the second retired"
    );
}

#[tokio::test]
async fn another_issuer_or_audience_is_invalid() {
    let (store, sealer, keys) = keys().await;
    let other = TokenKeys::load_or_init(
        store.as_ref(),
        &sealer,
        0,
        "someone-else",
        "credvault",
        YEAR,
    )
    .await
    .unwrap();
    let (token, _) = other.issue("c1", TokenKind::Access, 1000, 60).unwrap();
    assert_eq!(keys.verify(&token, 1000), Err(TokenError::Invalid));
}
