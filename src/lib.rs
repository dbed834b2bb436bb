//! credvault: a credential vault for pools of upstream accounts, served over gRPC.
//!
//! # Layout
//!
//! - [`server`]: listeners, the router and graceful shutdown; `main.rs` only calls it.
//! - [`api`]: the gRPC services, the auth layer, and the one error-to-status mapping.
//! - [`auth`]: who a caller is (bootstrap token, API key + secret, JWT, Basic) and
//!   what its roles permit.
//! - [`callers`]: credvault's own callers: keys, JWTs, sessions, scopes, credits.
//! - [`leases`]: job leases within each account's `maxJobs`, durable, reaped at expiry.
//! - [`events`]: credential events for WatchCredentials streams.
//! - [`accounts`]: upstream accounts: validation, sealed records, masking, CRUD.
//! - [`sealed`]: whole records under AEAD, bound to their tree and key.
//! - [`store`]: the storage seam (transactions, scans at a revision, watches), the
//!   embedded backend (group-commit flushes) and an in-memory one.
//! - [`crypto`]: secret types, the master key and its HKDF sub-keys, record sealing.
//! - [`vault`]: opening a data directory: format and key checks, wiring the services.
//! - [`config`] and [`cli`]: layered configuration (defaults, TOML, env, flags).
//! - [`refresh`]: the refresh engine (schedule, single flight, backoff) and the
//!   provider adapters that log accounts in upstream.
//! - [`limits`]: request size, call deadline and per-connection concurrency.
//! - [`providers`]: the configured upstream providers and their `maxJobs` ranges.
//! - [`validate`]: field checks shared by every service, in the reference wording.
//! - [`clock`], [`timefmt`], [`telemetry`], [`hex`]: time, timestamps, logging, hex.
//! - [`fake_upstream`]: a scriptable HTTP upstream for tests and the README demo.
//! - [`proto`]: generated code for `credvault.v1`.

#![forbid(unsafe_code)]

/// mimalloc serves every binary built on this crate (the daemon, its tests and
/// benchmarks): under load glibc's malloc took about a sixth of the daemon's CPU, in
/// lock contention and consolidation (README "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod accounts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod callers;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod events;
pub mod exporter;
pub mod handout;
pub mod hex;
pub mod leases;
pub mod limits;
pub mod progress;
pub mod proto;
pub mod providers;
pub mod refresh;
pub mod rekey;
pub mod reload;
pub mod sealed;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod timefmt;
pub mod validate;
pub mod vault;
