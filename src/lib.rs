//! credvault: a credential vault for pools of upstream accounts, served over gRPC.
//!
//! # Layout
//!
//! - [`server`]: listeners, the router and graceful shutdown; `main.rs` only calls it.
//! - [`api`]: the gRPC services, the auth layer, and the one error-to-status mapping.
//! - [`auth`]: who a caller is, from the `authorization` metadata.
//! - [`accounts`]: upstream accounts: validation, sealed records, masking, CRUD.
//! - [`store`]: the storage trait and its sled implementation (group-commit flushes).
//! - [`crypto`]: secret types, the master key and its HKDF sub-keys, record sealing.
//! - [`vault`]: opening a data directory: format and key checks, wiring the services.
//! - [`config`] and [`cli`]: layered configuration (defaults, TOML, env, flags).
//! - [`providers`]: the configured upstream providers and their `maxJobs` ranges.
//! - [`clock`], [`timefmt`], [`telemetry`]: time, timestamps, logging.
//! - [`proto`]: generated code for `credvault.v1`.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod proto;
pub mod providers;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod timefmt;
pub mod vault;
