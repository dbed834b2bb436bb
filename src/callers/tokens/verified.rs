//! Tokens whose signature has been checked, so that a caller presenting the same JWT
//! call after call pays for one Ed25519 verification, not one per call.
//!
//! An entry (see [`crate::cache`]: keyed by the token's SHA-256, never the token)
//! holds the claims the signature vouched for and the key that signed them. A hit
//! still goes through every check that can change between two calls: the time window
//! against the injected clock (an entry past its `exp` is dropped and refused), and
//! that the signing key is still held. Revocation and a disabled caller are checked on
//! the caller's record by whoever asked, cached or not.

use super::Claims;
use crate::cache::{Expiring, Remembered};

/// How many verified tokens are kept. At most 3 access and a few session tokens are
/// live per caller, so this covers thousands of callers.
pub const CAPACITY: usize = 8192;

pub type Verified = Remembered<Entry>;

#[derive(Clone)]
pub struct Entry {
    pub claims: Claims,
    pub kid: String,
}

impl Expiring for Entry {
    /// `now` in seconds, as `exp` is.
    fn expired(&self, now: i64) -> bool {
        self.claims.exp <= now
    }
}
