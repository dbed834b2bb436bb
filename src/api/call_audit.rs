//! The audit record of one call in progress, as the call layer keeps it.

use std::sync::{Arc, Mutex};

use crate::audit::{AuditError, AuditEvent, AuditLog, Call};

/// The audit record of one call in progress: the layer makes it, the handler adds what
/// the call is about and what it issued, and the layer writes it when the answer is
/// known — unless a hand-out in the call wrote it already (see [`Call`]).
#[derive(Clone)]
pub struct CallAudit {
    log: Option<Arc<AuditLog>>,
    call: Call,
    event: Arc<Mutex<AuditEvent>>,
}

impl CallAudit {
    pub fn new(
        log: Arc<AuditLog>,
        request_id: &str,
        rpc: &str,
        caller_id: &str,
        principal: &str,
    ) -> Self {
        Self {
            log: Some(log),
            call: Call::new(request_id, rpc, caller_id).by(principal),
            event: Arc::default(),
        }
    }

    /// For calls that are not audited: every method does nothing.
    pub fn none() -> Self {
        Self {
            log: None,
            call: Call::new("", "", ""),
            event: Arc::default(),
        }
    }

    /// The call, for the domain to write a hand-out's event on.
    pub fn call(&self) -> &Call {
        &self.call
    }

    fn with(&self, change: impl FnOnce(&mut AuditEvent)) {
        change(&mut self.event.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn account(&self, provider: &str, email: &str) {
        self.with(|e| {
            e.provider = provider.to_owned();
            e.email = email.to_lowercase();
        });
    }

    pub fn target(&self, target: &str) {
        self.with(|e| e.target = target.to_owned());
    }

    /// Records that the call issues this secret value (a new API key or JWT), as its
    /// hash.
    pub fn handed_out(&self, secret: &str) {
        if let Some(log) = &self.log {
            let hash = log.hash(secret);
            self.with(|e| e.secret_hashes.push(hash));
        }
    }

    /// Writes the event now with outcome OK, unless it was written already. A call that
    /// issues a secret calls this before answering, and does not answer when it fails.
    pub async fn commit(&self) -> Result<(), AuditError> {
        match self.take("OK") {
            Some((log, event)) => log.commit(event).await.map(drop),
            None => Ok(()),
        }
    }

    /// Queues the event with this outcome unless it was already written; answers
    /// whether it did.
    pub fn finish(&self, outcome: &str) -> bool {
        match self.take(outcome) {
            Some((log, event)) => {
                log.append(event);
                true
            }
            None => false,
        }
    }

    /// The event with this outcome, once: later calls (and calls after a hand-out
    /// wrote it) answer `None`. What a failed hand-out was about fills in what the
    /// handler did not name.
    fn take(&self, outcome: &str) -> Option<(&Arc<AuditLog>, AuditEvent)> {
        let log = self.log.as_ref()?;
        if self.call.mark_written() {
            return None;
        }
        let mut event = self.call.event(outcome);
        let named = self.event.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if event.provider.is_empty() {
            event.provider = named.provider;
            event.email = named.email;
        }
        if event.target.is_empty() {
            event.target = named.target;
        }
        event.secret_hashes = named.secret_hashes;
        Some((log, event))
    }
}
