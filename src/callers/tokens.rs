//! credvault's own JWTs. EdDSA (Ed25519) is the one algorithm accepted, so `alg: none`
//! and algorithm confusion fail before any key is used. Signing keys are generated at
//! init and sealed in the store; each token names its key in the `kid` header, so a
//! key can be rotated while tokens signed by the previous one stay valid to their expiry.

use std::{collections::HashMap, fmt, sync::RwLock};

use base64::{Engine, engine::general_purpose::STANDARD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::model::TokenKind;
use crate::{
    crypto::{RngError, Sealer, random_bytes},
    sealed::{self, SealedError},
    store::{Expect, Outcome, Revision, Store, StoreError, StoreExt, Swap, Tree, Txn},
};
use verified::Verified;

const KEYS_RECORD: &[u8] = b"signing-keys";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The caller id.
    pub sub: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub kind: TokenKind,
}

/// Why a presented JWT is refused; the texts are the reference API's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("JWT is missing or invalid, check Authorization header")]
    Invalid,
    #[error("JWT expired")]
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("the signing keys record: {0}")]
    Sealed(#[from] SealedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error("the signing keys record is inconsistent (no current key)")]
    NoCurrentKey,
    #[error("signing a token failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

#[derive(Serialize, Deserialize)]
struct StoredKeys {
    current: String,
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// PKCS#8 document of the key pair, base64. Only ever stored sealed.
    pkcs8: String,
    public: String,
    created_at_ms: i64,
    /// When a newer key took over; the key then only verifies, until tokens it signed
    /// have all expired.
    retired_at_ms: Option<i64>,
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pkcs8);
    }
}

struct LoadedKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: Vec<u8>,
}

struct KeySet {
    current: String,
    keys: HashMap<String, LoadedKey>,
}

/// The signing keys, the issuer and audience every token must carry, and the
/// longest lifetime a token may have (which bounds how long a retired key is kept).
pub struct TokenKeys {
    issuer: String,
    audience: String,
    max_lifetime_secs: i64,
    set: RwLock<KeySet>,
    /// The store revision the set was stored at (0: read at open), so that a change
    /// arriving late through the watch does not undo a newer rotation.
    set_at: std::sync::Mutex<Revision>,
    verified: Verified,
}

/// Where the sealed signing keys are stored (in [`Tree::Meta`]), for their watch.
pub const SIGNING_KEYS_RECORD: &[u8] = KEYS_RECORD;

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Loads the sealed keys, or generates the first one in a new store.
    pub async fn load_or_init(
        store: &dyn Store,
        sealer: &Sealer,
        now_ms: i64,
        issuer: &str,
        audience: &str,
        max_lifetime_secs: i64,
    ) -> Result<Self, KeysError> {
        let stored = match store.value(Tree::Meta, KEYS_RECORD).await? {
            Some(bytes) => sealed::open::<StoredKeys>(sealer, Tree::Meta, KEYS_RECORD, &bytes)?,
            None => {
                let first = StoredKeys {
                    current: String::new(),
                    keys: Vec::new(),
                };
                let stored = with_new_key(first, now_ms)?;
                let bytes = sealed::seal(sealer, Tree::Meta, KEYS_RECORD, &stored)?;
                if let Swap::Conflict {
                    current: Some(existing),
                } = store
                    .swap(Tree::Meta, KEYS_RECORD, None, Some(&bytes))
                    .await?
                {
                    sealed::open::<StoredKeys>(sealer, Tree::Meta, KEYS_RECORD, &existing)?
                } else {
                    stored
                }
            }
        };
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            max_lifetime_secs,
            set: RwLock::new(key_set(&stored)?),
            set_at: std::sync::Mutex::new(0),
            verified: Verified::new(verified::CAPACITY),
        })
    }

    pub fn issue(
        &self,
        sub: &str,
        kind: TokenKind,
        now_ms: i64,
        lifetime_secs: i64,
    ) -> Result<(String, Claims), KeysError> {
        let mut jti = [0u8; 16];
        random_bytes(&mut jti)?;
        let iat = now_ms.div_euclid(1000);
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.to_owned(),
            jti: crate::hex::encode(&jti),
            iat,
            nbf: iat,
            exp: iat + lifetime_secs,
            kind,
        };
        Ok((self.sign(&claims)?, claims))
    }

    /// Signs `claims` as they are with the current key. `issue` is the way to make a
    /// token; this is public so tests can forge tokens that are wrong in one claim only.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeysError> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        let key = set.keys.get(&set.current).ok_or(KeysError::NoCurrentKey)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(set.current.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(KeysError::Sign)
    }

    /// Checks signature, algorithm, key id, issuer, audience and the time window.
    /// Revocation is the caller record's business (see `CallerService`). A token seen
    /// before is not verified again while its key is held (see [`verified`]); its time
    /// window is checked on every call.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
        let now = now_ms.div_euclid(1000);
        let digest = Verified::digest(token);
        let entry = match self.verified.get(&digest) {
            Some(entry) if self.holds(&entry.kid) => entry,
            Some(_) => {
                // Its key was dropped since: verified afresh (and refused).
                self.verified.remove(&digest);
                self.verify_signed(token)?
            }
            None => {
                let entry = self.verify_signed(token)?;
                if now < entry.claims.exp {
                    self.verified.insert(digest, entry.clone(), now);
                }
                entry
            }
        };
        if now >= entry.claims.exp {
            self.verified.remove(&digest);
            return Err(TokenError::Expired);
        }
        if now < entry.claims.nbf {
            return Err(TokenError::Invalid);
        }
        Ok(entry.claims)
    }

    /// Tokens whose signature is known good, kept (for tests of the cache).
    pub fn verified_len(&self) -> usize {
        self.verified.len()
    }

    fn holds(&self, kid: &str) -> bool {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        set.keys.contains_key(kid)
    }

    /// The signature, algorithm, key id, issuer and audience; not the time window.
    fn verify_signed(&self, token: &str) -> Result<verified::Entry, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        // Time is checked by `verify` against the injected clock, with no leeway.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        let key = set.keys.get(&kid).ok_or(TokenError::Invalid)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|_| TokenError::Invalid)?
            .claims;
        Ok(verified::Entry { claims, kid })
    }

    /// Makes a new key current. Tokens signed by the old key keep verifying until they
    /// expire; keys retired longer ago than the longest token lifetime are dropped.
    pub async fn rotate(
        &self,
        store: &dyn Store,
        sealer: &Sealer,
        now_ms: i64,
    ) -> Result<String, KeysError> {
        loop {
            let old = store.value(Tree::Meta, KEYS_RECORD).await?;
            let mut stored = match &old {
                Some(bytes) => sealed::open::<StoredKeys>(sealer, Tree::Meta, KEYS_RECORD, bytes)?,
                None => return Err(KeysError::NoCurrentKey),
            };
            let horizon = now_ms - self.max_lifetime_secs * 1000;
            stored
                .keys
                .retain(|k| k.retired_at_ms.is_none_or(|retired| retired > horizon));
            for key in &mut stored.keys {
                key.retired_at_ms.get_or_insert(now_ms);
            }
            let stored = with_new_key(stored, now_ms)?;
            let bytes = sealed::seal(sealer, Tree::Meta, KEYS_RECORD, &stored)?;
            let txn = Txn::new()
                .expect(Tree::Meta, KEYS_RECORD, Expect::from_value(old.as_deref()))
                .put(Tree::Meta, KEYS_RECORD, &bytes);
            if let Outcome::Committed(revision) = store.commit(txn).await? {
                let current = stored.current.clone();
                self.keep(key_set(&stored)?, revision);
                return Ok(current);
            }
        }
    }

    /// Takes the signing keys as another writer stored them at `revision` (a rotation
    /// on another node), unless a later set is held.
    pub fn take_stored(
        &self,
        sealer: &Sealer,
        bytes: &[u8],
        revision: Revision,
    ) -> Result<(), KeysError> {
        let stored = sealed::open::<StoredKeys>(sealer, Tree::Meta, KEYS_RECORD, bytes)?;
        self.keep(key_set(&stored)?, revision);
        Ok(())
    }

    fn keep(&self, set: KeySet, revision: Revision) {
        let mut at = self.set_at.lock().unwrap_or_else(|e| e.into_inner());
        if revision >= *at {
            *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
            *at = revision;
        }
    }

    /// Public keys by key id (they are public; tests use them to forge confused tokens).
    pub fn public_keys(&self) -> Vec<(String, Vec<u8>)> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        set.keys
            .iter()
            .map(|(kid, k)| (kid.clone(), k.public.clone()))
            .collect()
    }
}

fn with_new_key(mut stored: StoredKeys, now_ms: i64) -> Result<StoredKeys, KeysError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| RngError)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| RngError)?;
    let mut kid = [0u8; 8];
    random_bytes(&mut kid)?;
    let kid = crate::hex::encode(&kid);
    stored.keys.push(StoredKey {
        kid: kid.clone(),
        pkcs8: STANDARD.encode(pkcs8.as_ref()),
        public: STANDARD.encode(pair.public_key().as_ref()),
        created_at_ms: now_ms,
        retired_at_ms: None,
    });
    stored.current = kid;
    Ok(stored)
}

fn key_set(stored: &StoredKeys) -> Result<KeySet, KeysError> {
    let mut keys = HashMap::new();
    for key in &stored.keys {
        let pkcs8 = Zeroizing::new(
            STANDARD
                .decode(&key.pkcs8)
                .map_err(|_| SealedError::Malformed)?,
        );
        let public = STANDARD
            .decode(&key.public)
            .map_err(|_| SealedError::Malformed)?;
        keys.insert(
            key.kid.clone(),
            LoadedKey {
                encoding: EncodingKey::from_ed_der(&pkcs8),
                decoding: DecodingKey::from_ed_der(&public),
                public,
            },
        );
    }
    if !keys.contains_key(&stored.current) {
        return Err(KeysError::NoCurrentKey);
    }
    Ok(KeySet {
        current: stored.current.clone(),
        keys,
    })
}

#[cfg(test)]
mod tests;
mod verified;
