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

#[tokio::test]
async fn a_verified_token_is_kept_by_hash_and_its_window_checked_on_every_call() {
    let (_store, _sealer, keys) = keys().await;
    let now = 1_700_000_000_000;
    let (token, claims) = keys.issue("c1", TokenKind::Access, now, 60).unwrap();
    assert_eq!(keys.verified_len(), 0);
    assert_eq!(keys.verify(&token, now).unwrap(), claims);
    assert_eq!(keys.verified_len(), 1, "kept after one verification");
    assert_eq!(keys.verify(&token, now + 1000).unwrap(), claims);
    assert_eq!(keys.verified_len(), 1, "the second call hit it");
    // Still before nbf on another call: refused from the cache as it would be afresh.
    assert_eq!(keys.verify(&token, now - 1000), Err(TokenError::Invalid));
    // At exp the entry is refused and dropped.
    assert_eq!(keys.verify(&token, now + 60_000), Err(TokenError::Expired));
    assert_eq!(keys.verified_len(), 0);
    assert_eq!(keys.verify(&token, now + 60_000), Err(TokenError::Expired));
    assert_eq!(keys.verified_len(), 0, "an expired token is not kept");

    // A token one character off is its own entry, and refused.
    let (token, _) = keys.issue("c1", TokenKind::Access, now, 60).unwrap();
    keys.verify(&token, now).unwrap();
    let mut damaged = token.clone();
    let last = damaged.pop().unwrap();
    damaged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(keys.verify(&damaged, now), Err(TokenError::Invalid));
    assert_eq!(keys.verified_len(), 1);
}

#[tokio::test]
async fn cached_tokens_of_a_rotated_key_stay_valid_until_the_key_is_dropped() {
    // Keys are kept for 60 s after they retire; a token that outlives that (only a
    // misconfiguration could make one) is refused once its key is gone, cached or not.
    let store = MemoryStore::open();
    let sealer = Sealer::new(&MasterKey::generate().unwrap());
    let keys = TokenKeys::load_or_init(store.as_ref(), &sealer, 0, "credvault", "credvault", 60)
        .await
        .unwrap();
    let now = 1_700_000_000_000;
    let (old, _) = keys.issue("c1", TokenKind::Access, now, 3600).unwrap();
    keys.verify(&old, now).unwrap();
    keys.rotate(store.as_ref(), &sealer, now + 1000)
        .await
        .unwrap();
    assert!(
        keys.verify(&old, now + 2000).is_ok(),
        "the retired key still verifies"
    );
    let (new, _) = keys
        .issue("c1", TokenKind::Access, now + 2000, 3600)
        .unwrap();
    assert!(keys.verify(&new, now + 2000).is_ok());
    assert_eq!(keys.verified_len(), 2);
    keys.rotate(store.as_ref(), &sealer, now + 120_000)
        .await
        .unwrap();
    assert_eq!(keys.verify(&old, now + 121_000), Err(TokenError::Invalid));
    assert!(keys.verify(&new, now + 121_000).is_ok());
    assert_eq!(keys.verified_len(), 1, "the dropped key's entry is gone");
}

#[test]
fn the_cache_stays_within_its_capacity_expired_entries_first() {
    use super::verified::{Entry, Verified};
    let cache = Verified::new(4);
    let claims = |exp: i64| Claims {
        iss: "credvault".into(),
        aud: "credvault".into(),
        sub: "c1".into(),
        jti: format!("j{exp}"),
        iat: 0,
        nbf: 0,
        exp,
        kind: TokenKind::Access,
    };
    let entry = |exp| Entry {
        claims: claims(exp),
        kid: "k".into(),
    };
    let live = Verified::digest("live");
    cache.insert(live, entry(1000), 0);
    for i in 0..3 {
        cache.insert(Verified::digest(&format!("old{i}")), entry(10), 0);
    }
    assert_eq!(cache.len(), 4);
    cache.insert(Verified::digest("new"), entry(1000), 100);
    assert_eq!(cache.len(), 2, "the three expired entries made room");
    assert!(cache.get(&live).is_some());
    for i in 0..10 {
        cache.insert(Verified::digest(&format!("more{i}")), entry(1000), 100);
        assert!(cache.len() <= 4);
    }
    let big = Verified::new(64);
    for i in 0..64 {
        big.insert(Verified::digest(&format!("t{i}")), entry(1000), 0);
    }
    big.insert(Verified::digest("one more"), entry(1000), 0);
    assert_eq!(
        big.len(),
        56,
        "an eighth made room at once (down to 55, then the new one)"
    );
}
