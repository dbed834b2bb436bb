//! The call an audit event belongs to, as the domain sees it.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use super::AuditEvent;

/// What a hand-out is about: the account whose secrets leave, and the lease (or other
/// object) it hands them out for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub provider: String,
    pub email: String,
    pub target: String,
}

/// One call, for the audit trail: who made it, which RPC, under which request id.
///
/// The call layer makes it and writes the call's event when the answer is known. A
/// hand-out writes that event itself, before the secret may be answered; it marks the
/// call written, and the layer then adds nothing. What the hand-out was about stays
/// on the call, so the event the layer writes when the hand-out failed names it too.
#[derive(Clone, Debug)]
pub struct Call {
    pub request_id: String,
    pub rpc: String,
    pub caller_id: String,
    /// `k8s:ns/name` for a ServiceAccount caller (see [`AuditEvent::principal`]).
    pub principal: String,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    written: AtomicBool,
    subject: Mutex<Option<Subject>>,
}

impl Call {
    pub fn new(request_id: &str, rpc: &str, caller_id: &str) -> Self {
        Self {
            request_id: request_id.to_owned(),
            rpc: rpc.to_owned(),
            caller_id: caller_id.to_owned(),
            principal: String::new(),
            shared: Arc::default(),
        }
    }

    /// The same call, with an event of its own: a stream that hands out more than once
    /// audits each hand-out apart from the call that opened it.
    pub fn another(&self) -> Self {
        Self::new(&self.request_id, &self.rpc, &self.caller_id).by(&self.principal)
    }

    /// The same call, made by the outside identity `principal`.
    pub fn by(mut self, principal: &str) -> Self {
        principal.clone_into(&mut self.principal);
        self
    }

    /// The call's event with this outcome, naming `subject` (when known).
    pub fn event(&self, outcome: &str) -> AuditEvent {
        let subject = self.subject().unwrap_or_default();
        AuditEvent {
            request_id: self.request_id.clone(),
            rpc: self.rpc.clone(),
            caller_id: self.caller_id.clone(),
            principal: self.principal.clone(),
            outcome: outcome.to_owned(),
            provider: subject.provider,
            email: subject.email,
            target: subject.target,
            ..AuditEvent::default()
        }
    }

    /// Records what a hand-out in this call is about.
    pub fn about(&self, subject: Subject) {
        *self
            .shared
            .subject
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(subject);
    }

    pub fn subject(&self) -> Option<Subject> {
        self.shared
            .subject
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks the call's event written; answers whether it was already.
    pub fn mark_written(&self) -> bool {
        self.shared.written.swap(true, Ordering::SeqCst)
    }

    pub fn written(&self) -> bool {
        self.shared.written.load(Ordering::SeqCst)
    }
}
