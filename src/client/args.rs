//! The client commands' flags and arguments as clap reads them, and reading what they
//! name: secrets from files or environment variables, durations, roles.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Failure, connect::Connection};
use crate::proto;

/// A group of commands on one service, with the connection flags.
#[derive(Debug, Args)]
pub struct Group<A: Subcommand> {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub action: A,
}

#[derive(Debug, Subcommand)]
pub enum AccountsAction {
    /// Every account (masked), or one provider's.
    List {
        /// Only this provider's accounts.
        #[arg(long)]
        provider: Option<String>,
    },
    /// One account, masked.
    Get {
        provider: String,
        email: String,
    },
    /// A new account. The password, API key and secret come from files or env vars.
    Create {
        provider: String,
        email: String,
        #[command(flatten)]
        secrets: AccountSecrets,
        /// How many jobs may hold the account at once.
        #[arg(long, default_value_t = 1)]
        max_jobs: i32,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Changes maxJobs, disables or enables, or replaces the password.
    Update {
        provider: String,
        email: String,
        /// How many jobs may hold the account at once.
        #[arg(long)]
        max_jobs: Option<i32>,
        /// true to disable the account (its leases end), false to enable it.
        #[arg(long)]
        disabled: Option<bool>,
        #[command(flatten)]
        secrets: AccountSecrets,
        /// Only if the account is still at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    Delete {
        provider: String,
        email: String,
    },
    /// Imports accounts from JSON Lines (CreateAccount-shaped objects) or CSV with a
    /// header (`--csv`, or a `.csv` file): created, or with --upsert updated (compare-
    /// and-set); a report line per line; exit 1 if any line failed.
    Import {
        file: PathBuf,
        /// The file is CSV (also said by a .csv name).
        #[arg(long)]
        csv: bool,
        /// Reports what would happen, writes nothing.
        #[arg(long)]
        dry_run: bool,
        /// Updates accounts that exist (at the version just read) instead of skipping.
        #[arg(long)]
        upsert: bool,
    },
    /// Writes every account as JSON Lines that `import` reads: without secrets, or
    /// with --with-secrets (each revealed: audited and charged; needs --yes on a
    /// terminal).
    Export {
        /// Only this provider's accounts.
        #[arg(long)]
        provider: Option<String>,
        /// Includes passwords, API keys, secrets and session tokens.
        #[arg(long)]
        with_secrets: bool,
        /// Prints secrets on a terminal all the same.
        #[arg(long)]
        yes: bool,
    },
    /// Logs in again now (`--force` even when the token is fresh).
    Refresh {
        provider: String,
        email: String,
        /// Even when the token is fresh.
        #[arg(long)]
        force: bool,
    },
}

/// Where an account's secrets are read from: a file (`-`: stdin) or an environment
/// variable named here, never the value itself.
#[derive(Debug, Args)]
pub struct AccountSecrets {
    /// The upstream password, from this file (`-`: stdin).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The upstream password, from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// An API-key account's key, from this file.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// An API-key account's secret, from this file.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// The upstream session token the account holds now.
    #[arg(long, value_name = "FILE")]
    pub jwt_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LeasesAction {
    /// Who holds which slot (admins and operators: every lease; a consumer its own).
    List {
        /// Only leases on this provider's accounts.
        #[arg(long)]
        provider: Option<String>,
        /// Only this caller's leases.
        #[arg(long)]
        caller_id: Option<String>,
    },
    /// A slot on one of the provider's accounts (or `--email` that one).
    Acquire {
        provider: String,
        /// This account only.
        #[arg(long)]
        email: Option<String>,
        /// How long the slot is held without a renewal, e.g. 300s, 5m.
        #[arg(long, default_value = "300s")]
        ttl: String,
        /// How long to wait for a free slot.
        #[arg(long, default_value = "0s")]
        wait: String,
    },
    Renew {
        lease_id: String,
        /// The new time to live from now.
        #[arg(long, default_value = "300s")]
        ttl: String,
    },
    Release {
        lease_id: String,
    },
    /// Admin or operator: ends somebody's lease now.
    Revoke {
        lease_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CallersAction {
    /// Admin: every caller (`--role consumer|operator|admin` keeps those).
    List {
        /// admin, operator or consumer.
        #[arg(long)]
        role: Option<String>,
    },
    /// Admin: a new caller; prints its API key once.
    Create {
        email: String,
        /// The caller's secret (at least 32 characters), from a file or `-` for stdin.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// admin, operator or consumer; repeat for several.
        #[arg(long, default_value = "consumer")]
        role: Vec<String>,
        /// `provider` or `provider/email-glob`; repeat for several.
        #[arg(long)]
        scope: Vec<String>,
    },
    /// The first call of a new API key (the credential from the environment).
    Activate,
    /// Admin: credits, disable or enable.
    Update {
        /// The caller, by id …
        #[arg(long)]
        caller_id: Option<String>,
        /// … or by email.
        #[arg(long)]
        email: Option<String>,
        /// Credits to add (negative to take some away).
        #[arg(long, allow_hyphen_values = true)]
        add_credits: Option<i64>,
        /// true to disable the caller, false to enable it.
        #[arg(long)]
        disabled: Option<bool>,
        /// Removes these API keys (ids as `whoami` and `list` show them).
        #[arg(long)]
        remove_api_key: Vec<String>,
    },
    /// Admin: deletes a caller; its keys, tokens and leases end.
    Delete {
        /// The caller, by id …
        #[arg(long)]
        caller_id: Option<String>,
        /// … or by email.
        #[arg(long)]
        email: Option<String>,
    },
    /// Who the credential is: roles, scopes, balance, key ids.
    Whoami,
}

#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// A long-lived JWT for the calling caller (at most 3 live).
    Issue,
    List,
    /// Revokes a JWT by its id (`jti`).
    Revoke {
        jti: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// The newest events of this node's trail.
    List {
        /// How many events (1 to 1000).
        #[arg(long, default_value_t = 100)]
        page_size: i32,
        /// Only this caller's events.
        #[arg(long)]
        caller_id: Option<String>,
    },
    /// Was this value handed out? Read from a file or `-` for stdin.
    Hash {
        #[arg(long, value_name = "FILE")]
        value_file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Where a master-key rotation is.
    Status,
    /// Starts an online master-key rotation to the key in FILE (a path on the daemon's
    /// host) and follows it to its end.
    Rotate {
        #[arg(long, value_name = "FILE")]
        new_key_file: String,
    },
}

/// One account unmasked (audited, and charged to the caller).
#[derive(Debug, Args)]
pub struct Reveal {
    #[command(flatten)]
    pub conn: Connection,
    pub provider: String,
    pub email: String,
}

/// Credential events as they happen, until interrupted.
#[derive(Debug, Args)]
pub struct Watch {
    #[command(flatten)]
    pub conn: Connection,
    /// Only this provider's accounts.
    #[arg(long)]
    pub provider: Option<String>,
    /// Only this account.
    #[arg(long)]
    pub email: Option<String>,
}

/// Whether the daemon serves (exit 0) or not (69).
#[derive(Debug, Args)]
pub struct Health {
    #[command(flatten)]
    pub conn: Connection,
    /// A service name ("" the whole server, `liveness`, `credvault.v1.Credentials`).
    #[arg(long, default_value = "")]
    pub service: String,
}

impl AccountSecrets {
    pub(super) fn password(&self) -> Result<Option<String>, Failure> {
        match (&self.password_file, &self.password_env) {
            (Some(_), Some(_)) => Err(Failure::usage(
                "give --password-file or --password-env, not both",
            )),
            (Some(file), None) => read_secret(file).map(Some),
            (None, Some(var)) => std::env::var(var).map(Some).map_err(|_| {
                Failure::usage(format!("--password-env {var}: the variable is not set"))
            }),
            (None, None) => Ok(None),
        }
    }
}

/// A secret from a file, or from stdin for `-`; surrounding whitespace dropped.
pub(super) fn read_secret(path: &std::path::Path) -> Result<String, Failure> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Failure::usage(format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("reading {}: {e}", path.display())))?
    };
    Ok(text.trim().to_owned())
}

pub(super) fn read_optional(path: Option<&std::path::Path>) -> Result<Option<String>, Failure> {
    path.map(read_secret).transpose()
}

/// `300s`, `5m`, `2h` or a number of seconds.
pub(super) fn duration(text: &str) -> Result<prost_types::Duration, Failure> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if scale > 0 => Ok(prost_types::Duration {
            seconds: n * scale,
            nanos: 0,
        }),
        _ => Err(Failure::usage(format!(
            "{text:?} is not a duration like 300s, 5m or 2h"
        ))),
    }
}

pub(super) fn role(name: &str) -> Result<proto::Role, Failure> {
    match name.trim().to_ascii_lowercase().trim_start_matches("role_") {
        "admin" => Ok(proto::Role::Admin),
        "operator" => Ok(proto::Role::Operator),
        "consumer" => Ok(proto::Role::Consumer),
        other => Err(Failure::usage(format!(
            "{other:?} is not a role: admin, operator or consumer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_as_people_write_them() {
        assert_eq!(duration("300s").unwrap().seconds, 300);
        assert_eq!(duration("5m").unwrap().seconds, 300);
        assert_eq!(duration("2h").unwrap().seconds, 7200);
        assert_eq!(duration("90").unwrap().seconds, 90);
        for bad in ["", "5x", "m", "-3s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
