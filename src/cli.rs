//! The command line. Flags override the config file and the environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    client,
    config::{LogFormat, Overrides},
};

#[derive(Debug, Parser)]
#[command(
    name = "credvault",
    version,
    about = "Credential vault for upstream accounts, served over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Print a new random master key (base64) for a key file or CREDVAULT_MASTER_KEY.
    Keygen(KeygenArgs),
    /// Make a new caller-token signing key current (run while the daemon is stopped,
    /// with its configuration). Tokens signed by earlier keys stay valid until they
    /// expire.
    RotateSigningKey(OfflineArgs),
    /// Write an encrypted snapshot of the store to a new file, with the daemon's
    /// configuration: of the data directory (daemon stopped), or of the etcd prefix at
    /// one revision (nodes may serve meanwhile).
    Backup(BackupArgs),
    /// Restore a snapshot into an empty data directory or an empty etcd prefix, with
    /// the master key the snapshot was made with.
    Restore(RestoreArgs),
    /// Copy an embedded store (a data directory, its daemon stopped) into the empty etcd
    /// prefix the configuration names, sealed records as they are, then verify.
    Migrate(MigrateArgs),
    /// Re-seal every record under a new master key (run while the daemon is stopped,
    /// with its configuration; to rotate while serving, start the daemon with the new
    /// key and previous_master_key_file instead). Rotates the signing key too.
    RotateKey(RotateKeyArgs),
    /// Client: accounts on a running daemon (list, get, create, update, delete, refresh).
    Accounts(client::Group<client::AccountsAction>),
    /// Client: leases (list, acquire, renew, release, revoke).
    Leases(client::Group<client::LeasesAction>),
    /// Client: callers (list, create, activate, update, delete, whoami).
    Callers(client::Group<client::CallersAction>),
    /// Client: the calling caller's JWTs (issue, list, revoke).
    Tokens(client::Group<client::TokensAction>),
    /// Client: one account unmasked (audited, and charged to the caller).
    Reveal(client::Reveal),
    /// Client: credential events as they happen, until interrupted.
    Watch(client::Watch),
    /// Client: the node's audit trail (list, hash).
    Audit(client::Group<client::AuditAction>),
    /// Client: master-key rotation (status, rotate).
    Keys(client::Group<client::KeysAction>),
    /// Client: whether the daemon serves (exit 0) or not (69).
    Health(client::Health),
    /// A completion script for bash, zsh or fish.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write the key to this new file (owner-only, 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    #[command(flatten)]
    pub offline: OfflineArgs,
    /// The new master key (base64, as `credvault keygen` prints it).
    #[arg(long, value_name = "FILE")]
    pub new_key_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub offline: OfflineArgs,
    /// The file to create (it must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub offline: OfflineArgs,
    /// The data directory to copy from (its daemon stopped); it is only read.
    #[arg(long, value_name = "DIR")]
    pub from_data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub offline: OfflineArgs,
    /// The backup file to restore.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

/// What an offline maintenance command needs to open the data directory: the same
/// configuration the daemon runs with.
#[derive(Debug, Args)]
pub struct OfflineArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's data directory (env CREDVAULT_DATA_DIR; default ./credvault-data).
    /// On etcd it holds this node's audit trail.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the base64 master key the data was sealed with (env
    /// CREDVAULT_MASTER_KEY_FILE, or the key itself in CREDVAULT_MASTER_KEY).
    #[arg(long, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// The data directory was made with --dev (its key file is beside the data).
    #[arg(long)]
    pub dev: bool,
}

impl OfflineArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            master_key_file: self.master_key_file.clone(),
            dev: self.dev,
            ..Overrides::default()
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = SERVE_ENVIRONMENT)]
pub struct ServeArgs {
    /// Development mode: creates a key file beside the data and prints a fresh admin
    /// token. Never for production.
    #[arg(long)]
    pub dev: bool,
    /// TCP address for the API ("none" to serve only the Unix socket).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Unix socket path for the API.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Where the store (and, in --dev, the key file) lives (env CREDVAULT_DATA_DIR;
    /// default ./credvault-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// File holding the base64 master key (env CREDVAULT_MASTER_KEY_FILE, or the key
    /// itself in CREDVAULT_MASTER_KEY).
    #[arg(long, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Log lines on stderr as text or JSON (env CREDVAULT_LOG_FORMAT).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// What `serve --help` says about configuration beyond its flags.
const SERVE_ENVIRONMENT: &str = "\
Configuration, each layer over the one before: built-in defaults, the --config file,
CREDVAULT_* environment variables, then these flags. Every key of the file has its
variable: CREDVAULT_LISTEN, CREDVAULT_SOCKET, CREDVAULT_DATA_DIR,
CREDVAULT_MASTER_KEY_FILE (or CREDVAULT_MASTER_KEY), CREDVAULT_ADMIN_TOKEN_FILE (or
CREDVAULT_ADMIN_TOKEN), CREDVAULT_LOG_FORMAT, CREDVAULT_LOG_FILTER (RUST_LOG wins),
CREDVAULT_METRICS_LISTEN, CREDVAULT_HEALTH_LISTEN, CREDVAULT_REFLECTION,
CREDVAULT_NODE_ID, CREDVAULT_SHUTDOWN_GRACE_SECS; tables nest with __, e.g.
CREDVAULT_STORE__BACKEND=etcd,
CREDVAULT_STORE__ETCD__ENDPOINTS=http://a:2379,http://b:2379,
CREDVAULT_PROVIDERS__PIXVERSE__MAX_JOBS=4. The README's Configuration table lists
them all.";

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            socket: self.socket.clone(),
            data_dir: self.data_dir.clone(),
            master_key_file: self.master_key_file.clone(),
            log_format: self.log_format,
            dev: self.dev,
        }
    }
}
