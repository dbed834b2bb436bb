//! What the callers' operations refuse with.

use super::{MAX_SESSIONS, identity::AuthError, identity::Denied, tokens::KeysError};
use crate::{crypto::RngError, sealed::SealedError, store::StoreError, validate::FieldError};

#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    #[error(
        "no credits remaining: the balance is {remaining}, this call costs {cost}; ask an admin to top up"
    )]
    Exhausted { remaining: i64, cost: i64 },
    #[error("credits are not valid until {0}")]
    NotYetValid(String),
    #[error("credits expired at {0}")]
    Expired(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("caller {0} not found")]
    NotFound(String),
    #[error("Too many Requests")]
    TooManyKeys,
    #[error("JWT limit exceeded, please revoke an existing JWT to create a new one")]
    TooManyTokens,
    #[error("too many live sessions ({MAX_SESSIONS}); wait for one to expire or revoke one")]
    TooManySessions,
    #[error("no JWT with jti {0} for this caller")]
    TokenNotFound(String),
    #[error("no API key {0} for this caller")]
    KeyNotFound(String),
    #[error("permission denied: the secret does not match this caller's secret")]
    SecretMismatch,
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Credits(#[from] CreditError),
    #[error(
        "version mismatch: caller {id} is at version {actual}, the request expected {expected}"
    )]
    VersionMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "the bootstrap admin keeps the admin role and cannot be disabled: it is the way back in when every other admin is locked out (replace its token to shut someone out)"
    )]
    BootstrapAdmin,
    #[error("caller {0} is being created by another request at the same time; retry")]
    Contended(String),
    #[error("caller {id} failed its integrity check and will not be used: {source}")]
    DataLoss {
        id: String,
        #[source]
        source: SealedError,
    },
    #[error("sealing a caller record failed: {0}")]
    Seal(SealedError),
    /// A debit taken in memory could not be written with its batch (the store's error
    /// is logged where it happened); nothing was taken.
    #[error("the debit could not be written")]
    DebitUnwritten,
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rng(#[from] RngError),
}

impl CallerError {
    /// A record that does not open: damaged (DATA_LOSS) or unreadable for another
    /// reason.
    pub(super) fn unopened(id: &str, source: SealedError) -> Self {
        if source.is_data_loss() {
            CallerError::DataLoss {
                id: id.to_owned(),
                source,
            }
        } else {
            CallerError::Seal(source)
        }
    }

    /// What authentication answers when the record it needs cannot be had.
    pub(super) fn into_auth(self, id: &str) -> AuthError {
        match self {
            CallerError::NotFound(_) => AuthError::MissingOrInvalid,
            CallerError::Store(error) => {
                tracing::error!(%error, "store unreadable during authentication");
                match error {
                    StoreError::Io(_) | StoreError::Unavailable(_) => AuthError::Unavailable,
                    StoreError::Corrupted(_) => AuthError::DataLoss,
                    _ => AuthError::Internal,
                }
            }
            error @ CallerError::DataLoss { .. } => {
                tracing::error!(caller = id, %error, "caller record failed its integrity check during authentication");
                AuthError::DataLoss
            }
            error => {
                tracing::error!(caller = id, %error, "caller record unreadable during authentication");
                AuthError::Internal
            }
        }
    }
}
