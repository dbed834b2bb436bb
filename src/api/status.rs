//! Domain errors to gRPC status, in one place. Every match is exhaustive with no
//! catch-all arm, so a new error variant does not compile until it is mapped here.
//! Internal detail goes to the log, never to the client.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    accounts::AccountError,
    audit::AuditError,
    auth::{AuthError, Denied},
    callers::{CallerError, CreditError, MAX_KEYS},
    handout::{HandOutError, RevealError},
    leases::LeaseError,
    refresh::RefreshError,
    store::StoreError,
    validate::FieldError,
};

pub const INTERNAL_MESSAGE: &str = "internal error; the credvault log has the details";
/// The `domain` of every google.rpc.ErrorInfo credvault sends.
const DOMAIN: &str = "credvault";

pub fn auth_error(error: AuthError) -> Status {
    let message = error.to_string();
    match error {
        AuthError::MissingOrInvalid
        | AuthError::KeyWithoutSecret
        | AuthError::BadKey
        | AuthError::BadBasic
        | AuthError::BasicNotHere
        | AuthError::Revoked
        | AuthError::Expired
        | AuthError::Kubernetes(_)
        | AuthError::KubernetesUnbound { .. } => Status::unauthenticated(message),
        AuthError::NotActivated => Status::failed_precondition(message),
        AuthError::Disabled => Status::permission_denied(message),
        AuthError::DataLoss => Status::data_loss(message),
        AuthError::Unavailable => Status::unavailable(STORAGE_UNAVAILABLE),
        AuthError::Stale(_) | AuthError::KubernetesUnavailable => Status::unavailable(message),
        AuthError::Internal => Status::internal(INTERNAL_MESSAGE),
    }
}

pub fn denied(error: Denied) -> Status {
    match error {
        Denied::Scope { .. } | Denied::Account { .. } | Denied::OtherCaller => {
            Status::permission_denied(error.to_string())
        }
    }
}

pub fn account_error(error: AccountError) -> Status {
    account_error_ref(&error)
}

fn account_error_ref(error: &AccountError) -> Status {
    match error {
        AccountError::Invalid(_) => Status::invalid_argument(error.to_string()),
        AccountError::NotFound(_) => Status::not_found(error.to_string()),
        AccountError::AlreadyExists(_) => Status::already_exists(error.to_string()),
        AccountError::VersionMismatch { .. } | AccountError::Contended(_) => {
            Status::aborted(error.to_string())
        }
        AccountError::DataLoss { key, source } => {
            tracing::error!(account = %key, reason = %source, "record failed its integrity check");
            Status::data_loss(error.to_string())
        }
        AccountError::Encode { .. } => internal(error),
        AccountError::Store(store) => store_error(store),
    }
}

pub fn caller_error(error: CallerError) -> Status {
    let message = error.to_string();
    match error {
        CallerError::Invalid(_) => Status::invalid_argument(message),
        CallerError::NotFound(_) | CallerError::TokenNotFound(_) | CallerError::KeyNotFound(_) => {
            Status::not_found(message)
        }
        CallerError::TooManyKeys => with_info(
            Code::ResourceExhausted,
            message,
            "MAX_KEYS_PER_ACCOUNT",
            [("max_keys_per_account", MAX_KEYS.to_string())],
        ),
        CallerError::TooManyTokens => Status::already_exists(message),
        CallerError::TooManySessions => Status::resource_exhausted(message),
        CallerError::SecretMismatch => Status::permission_denied(message),
        CallerError::BootstrapAdmin => Status::failed_precondition(message),
        CallerError::Denied(denial) => denied(denial),
        CallerError::Credits(credits) => credit_error(credits),
        CallerError::VersionMismatch { .. } | CallerError::Contended(_) => Status::aborted(message),
        CallerError::DataLoss { ref id, ref source } => {
            tracing::error!(caller = %id, reason = %source, "caller record failed its integrity check");
            Status::data_loss(message)
        }
        CallerError::Store(ref store) => store_error(store),
        CallerError::DebitUnwritten => Status::unavailable(STORAGE_UNAVAILABLE),
        CallerError::Seal(_) | CallerError::Keys(_) | CallerError::Rng(_) => internal(&error),
    }
}

pub fn refresh_error(error: RefreshError) -> Status {
    let message = error.to_string();
    match error {
        RefreshError::Login(login) if login.permanent => Status::failed_precondition(message),
        RefreshError::Login(_) | RefreshError::Rejected(_) | RefreshError::ShuttingDown => {
            Status::unavailable(message)
        }
        RefreshError::NotConfigured(_) | RefreshError::Disabled | RefreshError::Budget { .. } => {
            Status::failed_precondition(message)
        }
        RefreshError::Account(account) => account_error_ref(&account),
    }
}

pub fn handout_error(error: HandOutError) -> Status {
    match error {
        HandOutError::Refused(error) => auth_error(error),
        HandOutError::Caller(error) => caller_error(error),
        HandOutError::Audit(error) => audit_error(error),
    }
}

pub fn reveal_error(error: RevealError) -> Status {
    match error {
        RevealError::Denied(error) => denied(error),
        RevealError::Account(error) => account_error(error),
        RevealError::HandOut(error) => handout_error(error),
    }
}

pub fn lease_error(error: LeaseError) -> Status {
    let message = error.to_string();
    match error {
        LeaseError::Audit(error) => audit_error(error),
        LeaseError::HandOut(error) => handout_error(error),
        LeaseError::Invalid(_) => Status::invalid_argument(message),
        LeaseError::Account(account) => account_error(account),
        LeaseError::Caller(caller) => caller_error(caller),
        LeaseError::Denied(denial) => denied(denial),
        LeaseError::NoAccounts(_) | LeaseError::NotFound(_) => Status::not_found(message),
        LeaseError::NotOwner(_) => Status::permission_denied(message),
        LeaseError::Busy {
            executing,
            retry_after_secs,
            ..
        } => {
            let mut status = with_info(
                Code::ResourceExhausted,
                message,
                "ALL_SLOTS_BUSY",
                [
                    ("executing_jobs", executing.to_string()),
                    ("retry_after_secs", retry_after_secs.to_string()),
                ],
            );
            if let Ok(value) = retry_after_secs.to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        LeaseError::CannotServe(unserved) => with_info(
            Code::FailedPrecondition,
            message,
            "NO_ACCOUNT_CAN_SERVE",
            [
                ("disabled", unserved.disabled().to_string()),
                ("needs_attention", unserved.needing_attention().to_string()),
                ("without_valid_token", unserved.without_token().to_string()),
            ],
        ),
        LeaseError::Sealed(_) | LeaseError::Rng(_) => internal(&message),
        LeaseError::Store(ref store) => store_error(store),
    }
}

fn credit_error(error: CreditError) -> Status {
    let reason = match error {
        CreditError::Exhausted { .. } => "CREDITS_EXHAUSTED",
        CreditError::NotYetValid(_) => "CREDITS_NOT_YET_VALID",
        CreditError::Expired(_) => "CREDITS_EXPIRED",
    };
    with_info(Code::ResourceExhausted, error.to_string(), reason, [])
}

fn with_info<const N: usize>(
    code: Code,
    message: String,
    reason: &str,
    metadata: [(&str, String); N],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

/// What a caller is told when the store failed a read, write or flush. A write may
/// have been made or not; a retry (with `expected_version` where it matters) settles it.
pub const STORAGE_UNAVAILABLE: &str = "storage is unavailable; retry later";

fn store_error(error: &StoreError) -> Status {
    match error {
        StoreError::Io(_) | StoreError::Unavailable(_) => {
            tracing::error!(%error, "storage failed");
            Status::unavailable(STORAGE_UNAVAILABLE)
        }
        StoreError::Corrupted(_) => {
            tracing::error!(%error, "the store is damaged");
            Status::data_loss(
                "the store is damaged and this record cannot be read; restore a backup",
            )
        }
        // A listing spread over pages outlived the history its first page was read at:
        // a retry reads at a new point.
        StoreError::Compacted { .. } | StoreError::WatchEnded => {
            tracing::warn!(%error, "a read outlived the store's history");
            Status::unavailable(STORAGE_UNAVAILABLE)
        }
        StoreError::Engine(_) | StoreError::Locked | StoreError::LostWrites { .. } => {
            internal(error)
        }
    }
}

fn internal(detail: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %detail, "internal error");
    Status::internal(INTERNAL_MESSAGE)
}

pub fn audit_error(error: AuditError) -> Status {
    match error {
        AuditError::PageToken(_) => Status::invalid_argument(error.to_string()),
        // The trail could not be read or written: the store's trouble, not the caller's.
        AuditError::Store(_) | AuditError::Unwritten => {
            tracing::error!(%error, "audit trail unavailable");
            Status::unavailable("the audit trail is unavailable; retry later")
        }
        AuditError::Sealed(ref sealed) if sealed.is_data_loss() => {
            tracing::error!(%error, "an audit event failed its integrity check");
            Status::data_loss("an audit event failed its integrity check")
        }
        AuditError::Sealed(_) => internal(&error),
    }
}

pub fn field_error(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}
