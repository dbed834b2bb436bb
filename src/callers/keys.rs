//! API keys and client secrets: generated keys, and the keyed hashes (HMAC-SHA256 with
//! the caller sub-key) that are all credvault stores of either.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;

use crate::crypto::{MasterKey, Purpose, RngError, SecretString, SubKey, random_bytes};

const KEY_PREFIX: &str = "cvk_";
const KEY_ID_BYTES: usize = 6;

/// Hashes keys and secrets; comparisons run in constant time.
pub struct CallerMacs(hmac::Key);

impl CallerMacs {
    pub fn new(master: &MasterKey) -> Self {
        Self::from_key(&master.derive(Purpose::CallerHmac))
    }

    pub fn from_key(key: &SubKey) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key.expose()))
    }

    /// The stored form of a secret or key. `label` keeps a key's hash from matching a
    /// secret's even if a client used the same string for both.
    pub fn mac(&self, label: &str, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        crate::hex::encode(ctx.sign().as_ref())
    }

    pub fn verify(&self, label: &str, value: &str, stored: &str) -> bool {
        let Some(tag) = crate::hex::decode(stored) else {
            return false;
        };
        let mut message = Vec::with_capacity(label.len() + 1 + value.len());
        message.extend_from_slice(label.as_bytes());
        message.push(0);
        message.extend_from_slice(value.as_bytes());
        let ok = hmac::verify(&self.0, &message, &tag).is_ok();
        zeroize::Zeroize::zeroize(&mut message);
        ok
    }
}

impl fmt::Debug for CallerMacs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallerMacs([redacted])")
    }
}

pub const SECRET_LABEL: &str = "secret";
pub const KEY_LABEL: &str = "api-key";
/// The email index's keys on a shared store.
pub const EMAIL_LABEL: &str = "email";

/// A new API key: `cvk_<key id>_<32 random bytes>`. The key id is public (it names
/// the key in logs and finds it in the index); the rest is the secret part.
pub fn generate() -> Result<(String, SecretString), RngError> {
    let mut id = [0u8; KEY_ID_BYTES];
    random_bytes(&mut id)?;
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(secret.as_mut())?;
    let key_id = crate::hex::encode(&id);
    let key = format!(
        "{KEY_PREFIX}{key_id}_{}",
        URL_SAFE_NO_PAD.encode(secret.as_ref())
    );
    Ok((key_id, SecretString::from(key)))
}

/// The key id of something shaped like an API key.
pub fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == KEY_ID_BYTES * 2 && !secret.is_empty()).then_some(id)
}

pub fn looks_like_api_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_hash() {
        let (id, key) = generate().unwrap();
        assert_eq!(key_id(key.expose()), Some(id.as_str()));
        assert_eq!(key_id("cvk_short_x"), None);
        assert_eq!(key_id("other"), None);

        let macs = CallerMacs::new(&MasterKey::generate().unwrap());
        let stored = macs.mac(KEY_LABEL, key.expose());
        assert!(!stored.contains(key.expose()));
        assert!(macs.verify(KEY_LABEL, key.expose(), &stored));
        assert!(!macs.verify(SECRET_LABEL, key.expose(), &stored));
        assert!(!macs.verify(KEY_LABEL, "cvk_other", &stored));
        assert!(!macs.verify(KEY_LABEL, key.expose(), "zz"));
    }
}
