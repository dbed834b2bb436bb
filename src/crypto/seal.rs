//! XChaCha20-Poly1305 sealing of secret fields.
//!
//! Sealed layout: `key id (4 bytes, big endian) | nonce (24 bytes) | ciphertext + tag`.
//! The associated data is the key id followed by the caller's context (which names the
//! record), so a ciphertext copied to another record, or relabelled with another key
//! id, fails to open.

use std::{fmt, sync::RwLock};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use zeroize::Zeroizing;

use super::{KeyId, MasterKey, Purpose, RngError, random_bytes};

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Wrong key, tampered bytes, or a ciphertext moved from elsewhere: indistinguishable
    /// by design.
    #[error("sealed data failed authentication")]
    Unauthentic,
    #[error("sealed data is too short to be a ciphertext")]
    Truncated,
    #[error("sealed data names key id {0}, which this vault does not hold")]
    UnknownKey(KeyId),
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// Seals with the sealing sub-key of the current master key; opens with it or, during
/// a key rotation, with the previous key's (each ciphertext names its key id). The
/// keys can change while the vault serves (an online rotation).
pub struct Sealer {
    ring: RwLock<Ring>,
}

struct Ring {
    current: (KeyId, XChaCha20Poly1305),
    previous: Option<(KeyId, XChaCha20Poly1305)>,
}

fn cipher(master: &MasterKey) -> XChaCha20Poly1305 {
    let key = master.derive(Purpose::Sealing);
    XChaCha20Poly1305::new_from_slice(key.expose()).expect("the sealing key is 32 bytes")
}

impl Sealer {
    pub fn new(master: &MasterKey) -> Self {
        Self {
            ring: RwLock::new(Ring {
                current: (master.key_id(), cipher(master)),
                previous: None,
            }),
        }
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn ring_mut(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Also opens what `previous` sealed (while a rotation re-seals it).
    pub fn with_previous(self, previous: &MasterKey) -> Self {
        {
            let mut ring = self.ring_mut();
            if previous.key_id() != ring.current.0 {
                ring.previous = Some((previous.key_id(), cipher(previous)));
            }
        }
        self
    }

    /// Makes `next` the key that seals; the current one is kept for opening until
    /// [`Sealer::retire_previous`]. Refused (false) while another previous key is
    /// still held, or when `next` is already current.
    pub fn rotate_to(&self, next: &MasterKey) -> bool {
        let mut ring = self.ring_mut();
        if ring.previous.is_some() || next.key_id() == ring.current.0 {
            return false;
        }
        let old = std::mem::replace(&mut ring.current, (next.key_id(), cipher(next)));
        ring.previous = Some(old);
        true
    }

    /// Forgets the previous key once nothing is sealed under it any more.
    pub fn retire_previous(&self) {
        self.ring_mut().previous = None;
    }

    pub fn key_id(&self) -> KeyId {
        self.ring().current.0
    }

    pub fn previous_key_id(&self) -> Option<KeyId> {
        self.ring().previous.as_ref().map(|(id, _)| *id)
    }

    /// The key id a sealed value names, if it is long enough to name one.
    pub fn key_id_of(sealed: &[u8]) -> Option<KeyId> {
        let bytes: [u8; KEY_ID_LEN] = sealed.get(..KEY_ID_LEN)?.try_into().ok()?;
        Some(KeyId(u32::from_be_bytes(bytes)))
    }

    /// The value sealed again under the current key, or `None` when it already is.
    pub fn reseal(&self, context: &[u8], sealed: &[u8]) -> Result<Option<Vec<u8>>, SealError> {
        if Self::key_id_of(sealed) == Some(self.key_id()) {
            return Ok(None);
        }
        let plaintext = self.open(context, sealed)?;
        self.seal(context, &plaintext).map(Some)
    }

    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let ring = self.ring();
        let (key_id, cipher) = &ring.current;
        let aad = associated_data(*key_id, context);
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Unauthentic)?;
        let mut sealed = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&key_id.0.to_be_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated);
        }
        let (key_id, rest) = sealed.split_at(KEY_ID_LEN);
        let key_id = KeyId(u32::from_be_bytes(
            key_id.try_into().expect("split at KEY_ID_LEN"),
        ));
        let ring = self.ring();
        let cipher = if key_id == ring.current.0 {
            &ring.current.1
        } else {
            match &ring.previous {
                Some((previous, cipher)) if *previous == key_id => cipher,
                _ => return Err(SealError::UnknownKey(key_id)),
            }
        };
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let aad = associated_data(key_id, context);
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Unauthentic)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.key_id())
            .field("previous_key_id", &self.previous_key_id())
            .finish_non_exhaustive()
    }
}

fn associated_data(key_id: KeyId, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(KEY_ID_LEN + context.len());
    aad.extend_from_slice(&key_id.0.to_be_bytes());
    aad.extend_from_slice(context);
    aad
}

#[cfg(test)]
mod tests;
