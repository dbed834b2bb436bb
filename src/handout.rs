//! The door every unmasked secret leaves through: RevealAccount, AcquireLease,
//! RenewLease and the tokens WatchCredentials delivers.
//!
//! A hand-out is charged first (a cost of 0 when something else already paid, such as
//! the lease behind a renewal), then its audit event names every secret it hands out by
//! hash, and the debit and the event are made durable together (one block write and one
//! flush shared with concurrent hand-outs). Only then may the secret be answered. When
//! anything after the charge fails, the credits are paid back and nothing is handed out.
//! The caller itself is checked before, by whoever opens the door (authenticated on
//! this call, its scopes covering the account).

use crate::{
    audit::{AuditError, CallAudit},
    callers::{CallerError, CallerService, Charge},
};

#[derive(Debug, thiserror::Error)]
pub enum HandOutError {
    #[error(transparent)]
    Caller(#[from] CallerError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Charges `caller_id` `cost` credits and makes the charge and `audit` (naming
/// `secrets`) durable; answers the charge (its `credits` are the balance after it).
/// On `Err` nothing may be handed out, and nothing is owed.
pub async fn hand_out(
    callers: &CallerService,
    audit: &CallAudit,
    caller_id: &str,
    cost: i64,
    secrets: &[&str],
) -> Result<Charge, HandOutError> {
    let charge = callers.charge(caller_id, cost)?;
    for secret in secrets {
        audit.handed_out(secret);
    }
    let durable: Result<(), HandOutError> = async {
        // A call that is not audited (none is, among hand-outs; a test may build one)
        // still makes its debit durable.
        if !audit.commit_durable().await? {
            callers.flush().await?;
        }
        match charge.written() {
            Some(true) => Ok(()),
            _ => Err(CallerError::DebitUnwritten.into()),
        }
    }
    .await;
    if let Err(error) = durable {
        if let Err(refund) = callers.refund(&charge).await {
            tracing::error!(error = %refund, "refunding a failed hand-out failed");
        }
        return Err(error);
    }
    Ok(charge)
}
