//! Numbers for audit events. What a sequence guarantees ([`AuditSequence`]): no number
//! is handed out twice, and the numbers one process takes increase, so its events are
//! listed in the order they were appended. One process's sequence ([`LocalSequence`])
//! is a counter that starts past the last stored event.

use std::sync::atomic::{AtomicU64, Ordering};

pub trait AuditSequence: Send + Sync + 'static {
    /// The next number.
    fn next(&self) -> u64;
}

pub struct LocalSequence(AtomicU64);

impl LocalSequence {
    /// Numbers from `first` on.
    pub fn starting_at(first: u64) -> Self {
        Self(AtomicU64::new(first))
    }
}

impl AuditSequence for LocalSequence {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}
