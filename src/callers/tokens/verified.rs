//! Tokens whose signature has been checked, so that a caller presenting the same JWT
//! call after call pays for one Ed25519 verification, not one per call.
//!
//! An entry is keyed by the SHA-256 of the token (the token itself is never kept) and
//! holds the claims the signature vouched for and the key that signed them. A hit
//! still goes through every check that can change between two calls: the time window
//! against the injected clock (an entry past its `exp` is dropped and refused), and
//! that the signing key is still held. Revocation and a disabled caller are checked on
//! the caller's record by whoever asked, cached or not.

use std::{collections::HashMap, sync::Mutex};

use ring::digest::{SHA256, digest};

use super::Claims;

/// How many verified tokens are kept. At most 3 access and a few session tokens are
/// live per caller, so this covers thousands of callers; past it, expired entries go
/// first, then arbitrary ones, an eighth at a time (a miss costs one verification,
/// nothing else).
pub const CAPACITY: usize = 8192;

type Digest = [u8; 32];

pub struct Verified {
    entries: Mutex<HashMap<Digest, Entry>>,
    capacity: usize,
}

#[derive(Clone)]
pub struct Entry {
    pub claims: Claims,
    pub kid: String,
}

impl Verified {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The key a token is filed under.
    pub fn digest(token: &str) -> Digest {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        out
    }

    pub fn get(&self, key: &Digest) -> Option<Entry> {
        self.lock().get(key).cloned()
    }

    pub fn remove(&self, key: &Digest) {
        self.lock().remove(key);
    }

    /// Keeps `entry`, making room first if full: whatever has expired by `now_secs`,
    /// then arbitrary entries.
    pub fn insert(&self, key: Digest, entry: Entry, now_secs: i64) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.claims.exp > now_secs);
            // Room for an eighth more at once, so that a stream of new tokens does not
            // scan the whole map on every insert.
            while entries.len() >= self.capacity - self.capacity / 8 {
                let Some(any) = entries.keys().next().copied() else {
                    break;
                };
                entries.remove(&any);
            }
        }
        entries.insert(key, entry);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
