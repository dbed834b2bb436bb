//! Domain errors to gRPC status, in one place. Every match is exhaustive with no
//! catch-all arm, so a new error variant does not compile until it is mapped here.
//! Internal detail goes to the log, never to the client.

use tonic::Status;

use crate::{accounts::AccountError, auth::AuthError, store::StoreError};

pub const INTERNAL_MESSAGE: &str = "internal error; the credvault log has the details";

pub fn auth_error(error: AuthError) -> Status {
    match error {
        AuthError::MissingOrInvalid => Status::unauthenticated(error.to_string()),
    }
}

pub fn account_error(error: AccountError) -> Status {
    match &error {
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
        AccountError::Encode { .. } => internal(&error),
        AccountError::Store(store) => store_error(store),
    }
}

fn store_error(error: &StoreError) -> Status {
    match error {
        StoreError::Io(_) | StoreError::Engine(_) | StoreError::Locked => internal(error),
    }
}

fn internal(detail: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %detail, "internal error");
    Status::internal(INTERNAL_MESSAGE)
}
