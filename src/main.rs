#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use credvault::{
    backup,
    cli::{BackupArgs, Cli, Command, OfflineArgs, RestoreArgs, RotateKeyArgs, ServeArgs},
    config::{Config, LogFormat, Settings},
    crypto::{MasterKey, Sealer, SecretString},
    server::{self, Listeners},
    telemetry,
    vault::Vault,
};

/// EX_USAGE: bad flags, configuration or keys.
const EXIT_CONFIG: u8 = 64;
/// EX_IOERR: the data on disk is damaged or has lost acknowledged writes.
const EXIT_DAMAGED: u8 = 74;
/// What an operator does about a damaged store.
const RESTORE_ADVICE: &str = "this store will not be served (it could answer records that were changed or revoked since); restore the latest backup into a new, empty data directory with `credvault restore --data-dir NEW_DIR --from BACKUP_FILE` (same master key), start credvault on it, and keep the damaged directory for inspection";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Keygen => keygen(),
        Command::Serve(args) => serve(&args),
        Command::RotateSigningKey(args) => offline(rotate_signing_key(&args)),
        Command::Backup(args) => offline(backup(&args)),
        Command::Restore(args) => offline(restore(&args)),
        Command::RotateKey(args) => offline(rotate_key(&args)),
    }
}

/// Runs a maintenance command on a runtime of its own (one thread: nothing else runs).
fn offline(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(error) => {
            eprintln!("credvault: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon's configuration, for a command that runs while it is stopped. Such a
/// command authenticates nobody, so it needs no admin token: a random one stands in.
fn offline_settings(args: &OfflineArgs) -> Result<Settings, ExitCode> {
    let fail = |error: &dyn std::fmt::Display| {
        eprintln!("credvault: configuration error: {error}");
        ExitCode::from(EXIT_CONFIG)
    };
    let mut config =
        Config::load(args.config.as_deref(), args.overrides()).map_err(|e| fail(&e))?;
    if config.admin_token.is_none() && config.admin_token_file.is_none() {
        let stand_in = MasterKey::generate().map_err(|e| fail(&e))?;
        config.admin_token = Some(SecretString::from(stand_in.to_base64().to_string()));
    }
    config.resolve().map_err(|e| fail(&e))
}

async fn open_offline(settings: &Settings) -> Result<Vault, ExitCode> {
    Vault::open(settings)
        .await
        .map_err(|error| open_failed(&error))
}

fn open_failed(error: &credvault::vault::OpenError) -> ExitCode {
    if error.is_damage() {
        eprintln!(
            "credvault: the data directory is damaged: {}",
            with_advice(error)
        );
    } else {
        eprintln!("credvault: cannot open the data directory (is the daemon stopped?): {error}");
    }
    exit_for(error)
}

/// The error, followed by the way out when the store is damaged.
fn with_advice(error: &credvault::vault::OpenError) -> String {
    if error.is_damage() {
        format!("{error}; {RESTORE_ADVICE}")
    } else {
        error.to_string()
    }
}

/// The exit code for a vault that did not open.
fn exit_for(error: &credvault::vault::OpenError) -> ExitCode {
    if error.is_configuration() {
        ExitCode::from(EXIT_CONFIG)
    } else if error.is_damage() {
        ExitCode::from(EXIT_DAMAGED)
    } else {
        ExitCode::FAILURE
    }
}

fn backup_failed(what: &str, error: &backup::BackupError) -> ExitCode {
    eprintln!("credvault: {what} failed: {error}");
    if error.is_usage() {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

async fn backup(args: &BackupArgs) -> ExitCode {
    let settings = match offline_settings(&args.offline) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    telemetry::init(LogFormat::Text, &settings.log_filter);
    let vault = match open_offline(&settings).await {
        Ok(vault) => vault,
        Err(code) => return code,
    };
    match backup::backup(vault.store.as_ref(), &vault.sealer, &args.out).await {
        Ok(summary) => {
            println!(
                "backup written to {}: {} entries, {} bytes, sealed with master key {}",
                args.out.display(),
                summary.entries,
                summary.bytes,
                vault.sealer.key_id()
            );
            ExitCode::SUCCESS
        }
        Err(error) => backup_failed("backup", &error),
    }
}

async fn restore(args: &RestoreArgs) -> ExitCode {
    let settings = match offline_settings(&args.offline) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    telemetry::init(LogFormat::Text, &settings.log_filter);
    let sealer = Sealer::new(&settings.master_key);
    let db_dir = settings.data_dir.join("db");
    let restored = match credvault::store::open_embedded(&db_dir) {
        Ok(store) => backup::restore(&args.from, &sealer, store.as_ref(), &db_dir).await,
        Err(error) => Err(error.into()),
    };
    let summary = match restored {
        Ok(summary) => summary,
        Err(error) => return backup_failed("restore", &error),
    };
    // Opening checks the store format and the key-check record, as start-up will.
    let vault = match open_offline(&settings).await {
        Ok(vault) => vault,
        Err(code) => return code,
    };
    println!(
        "restored {} entries ({} accounts) into {}",
        summary.entries,
        vault.accounts.count(),
        settings.data_dir.display()
    );
    ExitCode::SUCCESS
}

async fn rotate_signing_key(args: &OfflineArgs) -> ExitCode {
    let settings = match offline_settings(args) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let vault = match open_offline(&settings).await {
        Ok(vault) => vault,
        Err(code) => return code,
    };
    let rotated = match vault.callers.rotate_signing_key().await {
        Ok(kid) => vault.store.flush().await.map(|()| kid).map_err(Into::into),
        Err(error) => Err(error),
    };
    match rotated {
        Ok(kid) => {
            println!(
                "signing key {kid} is now current; tokens signed by earlier keys stay valid until they expire"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("credvault: rotating the signing key failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn rotate_key(args: &RotateKeyArgs) -> ExitCode {
    let mut settings = match offline_settings(&args.offline) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    telemetry::init(LogFormat::Text, &settings.log_filter);
    let new_key = match std::fs::read_to_string(&args.new_key_file)
        .map_err(|e| e.to_string())
        .and_then(|text| MasterKey::from_base64(text.trim()).map_err(|e| e.to_string()))
    {
        Ok(key) => key,
        Err(error) => {
            eprintln!(
                "credvault: the new key in {}: {error}",
                args.new_key_file.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The configured key becomes the previous one (still read), the new one current.
    let old = std::mem::replace(&mut settings.master_key, new_key);
    if settings.previous_master_key.is_none() {
        settings.previous_master_key = Some(old);
    }
    let vault = match Vault::open(&settings).await {
        Ok(vault) => vault,
        Err(credvault::vault::OpenError::Store {
            source: credvault::store::StoreError::Locked,
            ..
        }) => {
            eprintln!(
                "credvault: the daemon is running on this data directory. To rotate while it serves, restart it with master_key_file = {} and previous_master_key_file = the current key; it re-seals everything in the background (see Keys/RotationStatus).",
                args.new_key_file.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => return open_failed(&error),
    };
    let resealed = match vault.rekey.run().await {
        Ok(resealed) => resealed,
        Err(error) => {
            let _ = vault.store.flush().await;
            eprintln!(
                "credvault: key rotation stopped: {error}; run the same command again to resume"
            );
            return ExitCode::FAILURE;
        }
    };
    let signing = if resealed > 0 {
        vault.callers.rotate_signing_key().await.map(Some)
    } else {
        Ok(None)
    };
    let finished = match signing {
        Ok(kid) => vault.store.flush().await.map(|()| kid).map_err(Into::into),
        Err(error) => Err(error),
    };
    match finished {
        Ok(kid) => {
            println!(
                "{resealed} records re-sealed under master key {}{}; start credvault with --master-key-file {} from now on; the old key is no longer needed",
                vault.sealer.key_id(),
                kid.map(|kid| format!(", signing key {kid} current"))
                    .unwrap_or_default(),
                args.new_key_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("credvault: finishing the key rotation failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn keygen() -> ExitCode {
    match MasterKey::generate() {
        Ok(key) => {
            println!("{}", *key.to_base64());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("credvault: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let settings =
        match Config::load(args.config.as_deref(), args.overrides()).and_then(Config::resolve) {
            Ok(settings) => settings,
            Err(error) => {
                eprintln!("credvault: configuration error: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    telemetry::init(settings.log_format, &settings.log_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("credvault: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> ExitCode {
    if let Some(key_file) = &settings.dev_key_file {
        tracing::warn!(
            key_file = %key_file.display(),
            "DEVELOPMENT MODE: the master key is stored beside the data; anyone who can read the data directory can read every secret. Never use --dev in production."
        );
    }
    // Bound first: the probe port answers NOT_SERVING while the vault opens.
    let listeners = match Listeners::bind(&settings).await {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!("credvault: {error}");
            return ExitCode::FAILURE;
        }
    };
    let vault = match Vault::open(&settings).await {
        Ok(vault) => vault,
        Err(error) => {
            let described = with_advice(&error);
            tracing::error!(error = %described, "refusing to start");
            eprintln!("credvault: refusing to start: {described}");
            return exit_for(&error);
        }
    };
    let shutdown = match server::shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("credvault: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    if settings.admin_token_generated {
        // Shown once, on stdout, on its own line; never logged.
        println!("admin token: {}", settings.admin_token.expose());
    }
    tracing::info!(
        tcp = %listeners.tcp_addr().map(|a| a.to_string()).unwrap_or_default(),
        socket = %listeners.socket_path().map(|p| p.display().to_string()).unwrap_or_default(),
        data_dir = %settings.data_dir.display(),
        metrics = %listeners.metrics_addr().map(|a| a.to_string()).unwrap_or_default(),
        health = %listeners.health_addr().map(|a| a.to_string()).unwrap_or_default(),
        "credvault serving"
    );
    match server::run(vault, listeners, settings.shutdown_grace, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "credvault stopped with an error");
            ExitCode::FAILURE
        }
    }
}
