//! The gRPC surface: one module per service, the auth layer that runs before all of
//! them, and the single place where domain errors become `tonic::Status`.

pub mod accounts;
pub mod auth;
pub mod callers;
mod convert;
pub mod credentials;
pub mod status;

use tonic::{Request, Status};

use crate::auth::{Caller, Permission};

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
