//! The audit record of one call in progress.

use std::sync::{Arc, Mutex};

use super::{AuditError, AuditEvent, AuditLog};

/// The audit record of one call in progress: the layer makes it, the handler adds what
/// the call is about and what it handed out, and the layer writes it when the answer
/// is known — unless the handler already committed it (hand-outs that must not be
/// answered unaudited).
#[derive(Clone)]
pub struct CallAudit {
    log: Option<Arc<AuditLog>>,
    event: Arc<Mutex<(AuditEvent, bool)>>,
}

impl CallAudit {
    pub fn new(log: Arc<AuditLog>, request_id: &str, rpc: &str, caller_id: &str) -> Self {
        Self {
            log: Some(log),
            event: Arc::new(Mutex::new((
                AuditEvent {
                    request_id: request_id.to_owned(),
                    rpc: rpc.to_owned(),
                    caller_id: caller_id.to_owned(),
                    ..AuditEvent::default()
                },
                false,
            ))),
        }
    }

    /// A new event for the same call (request id, rpc, caller): a stream that hands
    /// out more than once audits each hand-out on its own.
    pub fn another(&self) -> Self {
        let guard = self.event.lock().unwrap_or_else(|e| e.into_inner());
        match &self.log {
            Some(log) => Self::new(
                log.clone(),
                &guard.0.request_id,
                &guard.0.rpc,
                &guard.0.caller_id,
            ),
            None => Self::none(),
        }
    }

    /// For calls that are not audited: every method does nothing.
    pub fn none() -> Self {
        Self {
            log: None,
            event: Arc::new(Mutex::new((AuditEvent::default(), true))),
        }
    }

    fn with(&self, change: impl FnOnce(&mut AuditEvent)) {
        let mut guard = self.event.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut guard.0);
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

    /// Records that the call hands out (or issues) this secret value, as its hash.
    pub fn handed_out(&self, secret: &str) {
        if let Some(log) = &self.log {
            let hash = log.hash(secret);
            self.with(|e| e.secret_hashes.push(hash));
        }
    }

    /// Writes the event now with outcome OK. A hand-out calls this before its answer
    /// is made durable, and does not answer when it fails.
    pub async fn commit(&self) -> Result<(), AuditError> {
        match (&self.log, self.take("OK")) {
            (Some(log), Some(event)) => log.commit(event).await.map(drop),
            _ => Ok(()),
        }
    }

    /// Writes the event now with outcome OK and waits until it is durable, together
    /// with every store write the call made before (see [`AuditLog::commit_durable`]).
    /// A hand-out does not answer when it fails. Answers false when there was nothing
    /// to commit (a call not audited, or committed already): then the caller flushes.
    pub async fn commit_durable(&self) -> Result<bool, AuditError> {
        match (&self.log, self.take("OK")) {
            (Some(log), Some(event)) => log.commit_durable(event).await.map(|_| true),
            _ => Ok(false),
        }
    }

    /// Queues the event with this outcome unless it was already committed; answers
    /// whether it did.
    pub fn finish(&self, outcome: &str) -> bool {
        match (&self.log, self.take(outcome)) {
            (Some(log), Some(event)) => {
                log.append(event);
                true
            }
            _ => false,
        }
    }

    /// The event with this outcome, once: later calls answer `None`.
    fn take(&self, outcome: &str) -> Option<AuditEvent> {
        self.log.as_ref()?;
        let mut guard = self.event.lock().unwrap_or_else(|e| e.into_inner());
        if guard.1 {
            return None;
        }
        guard.1 = true;
        let mut event = guard.0.clone();
        event.outcome = outcome.to_owned();
        Some(event)
    }
}
