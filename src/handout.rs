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

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    audit::{AuditError, CallAudit},
    callers::{CallerError, Charge, Credits, identity::AuthError},
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
    passed: AtomicU64,
}

impl Door {
    pub fn new(credits: Arc<dyn Credits>) -> Self {
        Self {
            credits,
            passed: AtomicU64::new(0),
        }
    }

    /// Secrets handed out through this door so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::SeqCst)
    }

    /// Checks `caller_id`, charges it `cost` credits and makes the charge and `audit`
    /// (naming `secrets`) durable; answers the charge (its `credits` are the balance
    /// after it). On `Err` nothing may be handed out, and nothing is owed.
    pub async fn hand_out(
        &self,
        audit: &CallAudit,
        caller_id: &str,
        cost: i64,
        secrets: &[&str],
    ) -> Result<Charge, HandOutError> {
        let credits = &self.credits;
        credits.check_enabled(caller_id)?;
        let charge = credits.charge(caller_id, cost)?;
        for secret in secrets {
            audit.handed_out(secret);
        }
        let durable: Result<(), HandOutError> = async {
            // A call that is not audited (none is, among hand-outs; a test may build
            // one) still makes its debit durable.
            if !audit.commit_durable().await? {
                credits.durable().await?;
            }
            match charge.written() {
                Some(true) => Ok(()),
                _ => Err(CallerError::DebitUnwritten.into()),
            }
        }
        .await;
        if let Err(error) = durable {
            if let Err(refund) = credits.refund(&charge).await {
                tracing::error!(error = %refund, "refunding a failed hand-out failed");
            }
            return Err(error);
        }
        self.passed
            .fetch_add(secrets.len() as u64, Ordering::SeqCst);
        Ok(charge)
    }
}
