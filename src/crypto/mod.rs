//! Everything that touches key material: the secret types that keep plaintext out of
//! logs, the master key and its HKDF sub-keys, and the AEAD sealer for records at rest.

mod keys;
mod seal;
mod secret;

pub use keys::{KeyError, KeyId, MasterKey, Purpose, SubKey};
pub use seal::{SealError, Sealer};
pub use secret::SecretString;

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), RngError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| RngError)
}

/// The operating system's random source failed; nothing secret can be made safely.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RngError;

/// Stable, keyed fingerprints of identifying values (emails) for log lines: the same
/// value always gives the same tag, and without the audit key the tag reveals nothing.
pub struct Fingerprinter(ring::hmac::Key);

impl Fingerprinter {
    pub fn new(master: &MasterKey) -> Self {
        Self::from_key(&master.derive(Purpose::AuditHmac))
    }

    pub fn from_key(key: &SubKey) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose()))
    }

    /// The whole HMAC-SHA256, in hex: how the audit trail records a secret value.
    pub fn hash(&self, value: &str) -> String {
        crate::hex::encode(ring::hmac::sign(&self.0, value.as_bytes()).as_ref())
    }

    /// The first 8 bytes of HMAC-SHA256, in hex.
    pub fn tag(&self, value: &str) -> String {
        let tag = ring::hmac::sign(&self.0, value.as_bytes());
        crate::hex::encode(&tag.as_ref()[..8])
    }
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprinter([redacted])")
    }
}

/// A uniformly random number in `0..bound` (0 when `bound` is 0), for jitter.
pub fn random_below(bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let mut bytes = [0u8; 8];
    // Jitter that falls back to none when the RNG fails is still a correct schedule.
    if random_bytes(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % bound
}
