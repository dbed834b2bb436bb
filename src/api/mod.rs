//! The gRPC surface: one module per service, the call layer that runs before all of
//! them (request id, authentication, audit, metrics), and the single place where
//! domain errors become `tonic::Status`.

pub mod accounts;
pub mod audit;
pub mod call_audit;
pub mod callers;
mod convert;
pub mod credentials;
pub mod keys;
pub mod layer;
pub mod status;
mod watch;

use tonic::{Request, Status};

use crate::{
    api::call_audit::CallAudit,
    auth::{Caller, Permission},
};

/// The caller the auth layer proved; its absence is a wiring bug, not the client's.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            tracing::error!("request reached a handler without an authenticated caller");
            Status::internal(status::INTERNAL_MESSAGE)
        })
}

/// The call's audit record, for the handler to name its target and what it handed
/// out; a no-op record for calls that are not audited.
fn call_audit<T>(request: &Request<T>) -> CallAudit {
    request
        .extensions()
        .get::<CallAudit>()
        .cloned()
        .unwrap_or_else(CallAudit::none)
}

/// An optional text field of a request: at most `max` bytes, no control characters.
fn text_field(field: &'static str, value: &str, max: usize) -> Result<(), Status> {
    crate::validate::text(field, value, max, false).map_err(status::field_error)
}

/// The caller, provided it holds `permission`; the refusal names `rpc` and what it needs.
fn authorized<T>(
    request: &Request<T>,
    permission: Permission,
    rpc: &'static str,
) -> Result<Caller, Status> {
    let caller = caller(request)?;
    caller.require(permission, rpc).map_err(status::denied)?;
    Ok(caller)
}
