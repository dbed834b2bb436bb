//! The master key and the sub-keys derived from it.
//!
//! One 256-bit master key (from a file or the environment) never encrypts anything
//! itself: each purpose gets its own key through HKDF-SHA256, so a leak of, say, the
//! audit HMAC key says nothing about the sealing key.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};
use ring::hkdf;
use zeroize::Zeroizing;

use super::{RngError, random_bytes};

pub const KEY_LEN: usize = 32;

/// Fixed HKDF salt: the master key is already uniformly random, the salt only separates
/// credvault's derivations from any other use of the same bytes.
const HKDF_SALT: &[u8] = b"credvault/hkdf/v1";

/// Why a master key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the master key is not valid base64")]
    NotBase64,
    #[error(
        "the master key must be {KEY_LEN} bytes, base64-encoded (got {0} bytes); generate one with `credvault keygen`"
    )]
    WrongLength(usize),
    #[error(
        "the master key is weak (all bytes are the same); generate one with `credvault keygen`"
    )]
    Weak,
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// What a derived key is for; each purpose has its own HKDF `info` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// XChaCha20-Poly1305 key for records at rest.
    Sealing,
    /// HMAC-SHA256 key for callers' API keys and client secrets: only keyed hashes of
    /// them are stored.
    CallerHmac,
    /// HMAC-SHA256 key for secret values in the audit trail.
    AuditHmac,
    /// Source of the public key id; not a key for anything.
    KeyId,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Sealing => b"credvault sealing v1",
            Purpose::CallerHmac => b"credvault caller hmac v1",
            Purpose::AuditHmac => b"credvault audit hmac v1",
            Purpose::KeyId => b"credvault key id v1",
        }
    }
}

/// Names a master key in every ciphertext it made, so that rotation can tell old
/// records from new ones without trying keys. Derived, so it reveals nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The 256-bit root of all of credvault's keys.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(bytes.as_mut())?;
        Self::from_bytes(bytes)
    }

    /// Parses the base64 text of a key file or environment variable (whitespace around
    /// it is ignored, so a trailing newline in a mounted Secret is fine).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::NotBase64)?,
        );
        let array: [u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(decoded.len()))?;
        Self::from_bytes(Zeroizing::new(array))
    }

    fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Result<Self, KeyError> {
        if bytes.iter().all(|b| *b == bytes[0]) {
            return Err(KeyError::Weak);
        }
        Ok(Self(bytes))
    }

    /// The key as base64, for `credvault keygen` and the `--dev` key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_ref()))
    }

    pub fn derive(&self, purpose: Purpose) -> SubKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(self.0.as_ref());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        let info = [purpose.label()];
        // Both calls fail only when the requested length exceeds 255 * 32 bytes.
        prk.expand(&info, hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(out.as_mut()))
            .expect("HKDF-SHA256 always yields 32 bytes");
        SubKey(out)
    }

    pub fn key_id(&self) -> KeyId {
        let derived = self.derive(Purpose::KeyId);
        let bytes = derived.expose();
        KeyId(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// A 256-bit key derived for one purpose.
pub struct SubKey(Zeroizing<[u8; KEY_LEN]>);

impl SubKey {
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A sub-key kept in the store (sealed) rather than derived each start: the HMAC
    /// keys, which must outlive a master-key rotation.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SubKey(Zeroizing::new(bytes))
    }
}

impl fmt::Debug for SubKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubKey([redacted])")
    }
}

#[cfg(test)]
mod tests;
