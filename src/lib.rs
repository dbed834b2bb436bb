//! credvault: a credential vault for pools of upstream accounts, served over gRPC.
//!
//! # Layout
//!
//! Serving:
//! - [`server`]: listeners, TLS, the probe port, the router, serving and shutdown;
//!   it builds the services a [`vault::Vault`] holds and owns their background tasks.
//! - [`api`]: the thin gRPC services (parse, call one domain function, convert), the
//!   call layer (request id, authentication, audit, metrics), the one error-to-status
//!   map, and the WatchCredentials stream.
//! - [`auth`]: proving a request's credential (bootstrap token, API key + secret, JWT,
//!   Basic, socket peer, Kubernetes ServiceAccount token in `auth/kubernetes/`) into a
//!   [`auth::Caller`].
//! - [`limits`]: request size, call deadline and per-connection concurrency.
//!
//! The domain:
//! - [`accounts`]: upstream accounts: validation, the sealed record format, masking,
//!   the directory, reads and writes.
//! - [`callers`]: credvault's own callers: identity and permissions, keys, JWTs,
//!   sessions, scopes, the in-memory view authentication reads and, on a shared
//!   store, the pulse that proves it current, credits.
//! - [`leases`]: job leases: the slot table (`maxJobs`, behind a trait), waiters,
//!   AcquireLease's choice and refusals, the reaper.
//! - [`refresh`]: the refresh engine (schedule, login flight, budget, backoff, staged
//!   swap) and the provider adapters that log accounts in upstream.
//! - [`handout`]: the one door every unmasked secret leaves through; it writes the
//!   audit event of the call it hands out in, from the call the domain is given
//!   ([`audit::Call`]), and RevealAccount.
//! - [`audit`]: the audit trail (sealed blocks, the durable commit, reads, pruning).
//! - [`events`]: the event bus WatchCredentials streams read.
//! - [`providers`]: the configured upstream providers and their `maxJobs` ranges.
//! - [`validate`]: field checks shared by every service, in the reference wording.
//!
//! Keeping it:
//! - [`store`]: the storage seam (multi-key transactions, scans at a revision,
//!   watches), the journal the local backends share, sled and in-memory backends, the
//!   etcd backend, the fault injector.
//! - [`sealed`]: whole records under AEAD, bound to their tree and key.
//! - [`crypto`]: secret types, the master key and its HKDF sub-keys, sealing.
//! - [`vault`]: opening a store: format and key checks, the services it holds.
//! - [`ops`]: backup and restore (of a data directory or an etcd prefix), migrating a
//!   data directory into etcd, master-key rotation (online, or on etcd with every node
//!   stopped), secret-file reloads, readiness on
//!   a shared store, the metrics exporter.
//! - [`commands`]: the maintenance commands (backup, restore, migrate, key rotations,
//!   keygen), and the exit codes every command shares.
//! - [`client`]: the client commands of a running daemon (accounts, leases, callers,
//!   tokens, reveal, watch, audit, keys, health): connection, credential, output.
//! - [`config`] and [`cli`]: layered configuration (defaults, TOML, env, flags).
//! - [`clock`], [`timefmt`], [`telemetry`], [`hex`], [`proto`]: time, timestamps,
//!   logging, hex, and the generated code of `credvault.v1`.
//! - [`cache`] and [`rounds`]: a bounded map of what was proven about a token (keyed by
//!   its SHA-256), and the group-commit rounds that durable writes share.
//!
//! The fake upstream the tests and the README demo use is its own crate
//! (`fake-upstream/`), outside the daemon.

#![forbid(unsafe_code)]

/// mimalloc serves every binary built on this crate (the daemon, its tests and
/// benchmarks): under load glibc's malloc took about a sixth of the daemon's CPU, in
/// lock contention and consolidation (README "Benchmarks"). It is built without its
/// transparent-huge-page advice (`no_thp`), which kept whole 2 MiB pages resident for
/// a few small objects each: a third of the RSS with 100,000 accounts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod accounts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod callers;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod events;
pub mod handout;
pub mod hex;
pub mod leases;
pub mod limits;
pub mod ops;
pub mod proto;
pub mod providers;
pub mod refresh;
pub mod rounds;
pub mod sealed;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod timefmt;
pub mod validate;
pub mod vault;
