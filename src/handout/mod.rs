//! The door every unmasked secret leaves through: RevealAccount, AcquireLease,
//! RenewLease and the tokens WatchCredentials delivers.
//!
//! A hand-out first checks the caller as it is now (a caller disabled since the call
//! was authenticated gets nothing), then charges it (a cost of 0 when something else
//! already paid, such as the lease behind a renewal), then its audit event names every
//! secret it hands out by hash, and the debit and the event are made durable together
//! (one block write and one flush shared with concurrent hand-outs). Only then may the
//! secret be answered. When anything after the charge fails, the credits are paid back
//! and nothing is handed out. Whoever opens the door has checked the rest (the call
//! authenticated, its scopes covering the account).
//!
//! The door counts what passed it, so a test can tell that an RPC handed its secret
//! out through it and not around it.

mod reveal;

pub use reveal::RevealError;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    audit::{AuditError, AuditLog, Call, Subject},
    callers::{CallerError, Charge, CreditError, Credits, Settled, identity::AuthError},
};

#[derive(Debug, thiserror::Error)]
pub enum HandOutError {
    /// The caller was disabled after this call was authenticated.
    #[error(transparent)]
    Refused(#[from] AuthError),
    #[error(transparent)]
    Caller(#[from] CallerError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

pub struct Door {
    credits: Arc<dyn Credits>,
    audit: Arc<AuditLog>,
    passed: AtomicU64,
}

impl Door {
    pub fn new(credits: Arc<dyn Credits>, audit: Arc<AuditLog>) -> Self {
        Self {
            credits,
            audit,
            passed: AtomicU64::new(0),
        }
    }

    /// Secrets handed out through this door so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::SeqCst)
    }

    /// Checks `payer` (the caller of `call`, or the holder of the lease it renews),
    /// charges it `cost` credits, and makes the charge and the call's audit event
    /// (about `subject`, naming `secrets` by hash) durable;
    /// answers the charge (its `credits` are the balance after it). On `Err` nothing
    /// may be handed out, and nothing is owed.
    pub async fn hand_out(
        &self,
        call: &Call,
        subject: Subject,
        payer: &str,
        cost: i64,
        secrets: &[&str],
    ) -> Result<Charge, HandOutError> {
        self.pass(call, subject, payer, cost, secrets, false).await
    }

    /// A hand-out that holds nothing once answered (RevealAccount): with `[audit] sync
    /// = "os"` its event is spilled and its debit written by the next flush round.
    /// Leases keep the durable commit in either mode, since a lease lost in a crash
    /// would free a slot its holder still uses.
    pub async fn hand_out_read(
        &self,
        call: &Call,
        subject: Subject,
        payer: &str,
        cost: i64,
        secrets: &[&str],
    ) -> Result<Charge, HandOutError> {
        self.pass(call, subject, payer, cost, secrets, true).await
    }

    async fn pass(
        &self,
        call: &Call,
        subject: Subject,
        payer: &str,
        cost: i64,
        secrets: &[&str],
        may_spill: bool,
    ) -> Result<Charge, HandOutError> {
        let spilled = may_spill && self.audit.spills();
        let credits = &self.credits;
        call.about(Subject {
            email: subject.email.to_lowercase(),
            ..subject
        });
        // A spilled hand-out's debit is not written before its event is (see
        // `CallerService::settle`): no settle runs from the charge until the event is
        // spilled.
        let mut gate = if spilled {
            Some(credits.spill_gate().read().await)
        } else {
            None
        };
        credits.check_enabled(payer)?;
        let charge = credits.charge(payer, cost)?;
        let mut event = call.event("OK");
        event.secret_hashes = secrets.iter().map(|s| self.audit.hash(s)).collect();
        let durable: Result<(), HandOutError> = async {
            // Once the event is on its way, it is the call's: the call layer does not
            // write another (a failure below is told by the error).
            if spilled {
                event.unwritten_debit = charge.unwritten();
                // A spill that failed took its event back from the trail's queue: the
                // call layer records the call's failure instead, and the gate stays
                // held until the refund below, so no settle writes this debit.
                self.audit.commit_spilled(event).await?;
                call.mark_written();
                drop(gate.take());
            } else {
                call.mark_written();
                self.audit.commit_durable(event).await?;
            }
            match charge.settled() {
                Some(Settled::Written) => Ok(()),
                // Another process spent the balance first: refused as exhausted.
                Some(Settled::Spent { remaining }) => {
                    Err(CallerError::Credits(CreditError::Exhausted { remaining, cost }).into())
                }
                // `audit.sync = "os"` (one process, the embedded store): the next
                // flush round writes the debit.
                None if spilled => Ok(()),
                _ => Err(CallerError::DebitUnwritten.into()),
            }
        }
        .await;
        if let Err(error) = durable {
            if let Err(refund) = credits.refund(&charge).await {
                tracing::error!(error = %refund, "refunding a failed hand-out failed");
            }
            drop(gate);
            return Err(error);
        }
        self.passed
            .fetch_add(secrets.len() as u64, Ordering::SeqCst);
        Ok(charge)
    }
}
