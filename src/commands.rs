//! The maintenance commands: `backup`, `restore`, `migrate`, `rotate-signing-key`,
//! `rotate-key` and `keygen`, with the exit codes every command shares. On the
//! embedded store they run while the daemon is stopped; backup, restore and rotate-key
//! also work on an etcd prefix (rotate-key with every node stopped).

use std::process::ExitCode;

use crate::{
    accounts::Names,
    cli::{BackupArgs, MigrateArgs, OfflineArgs, RestoreArgs},
    config::{Config, LogFormat, Settings, StoreSettings},
    crypto::{MasterKey, Sealer, SecretString},
    ops::{backup, migrate},
    store::{EtcdStore, Naming},
    telemetry,
    vault::{self, OpenError, Vault},
};

mod rotate;

pub use rotate::rotate_key;

// Exit codes, after sysexits.h (listed in the README).
/// EX_USAGE: bad flags, configuration or keys.
pub const EXIT_CONFIG: u8 = 64;
/// EX_DATAERR: an input file that is not what it should be (a damaged backup).
pub const EXIT_DATA: u8 = 65;
/// EX_NOINPUT: an input file that does not exist or cannot be read.
pub const EXIT_NO_INPUT: u8 = 66;
/// EX_UNAVAILABLE: a service needed is out of reach (etcd).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// EX_CANTCREAT: an output file or directory that cannot be made.
pub const EXIT_CANT_CREATE: u8 = 73;
/// EX_IOERR: the data on disk is damaged or has lost acknowledged writes.
pub const EXIT_DAMAGED: u8 = 74;
/// EX_TEMPFAIL: try again later: the data directory (or the port) is in use.
pub const EXIT_IN_USE: u8 = 75;
/// What an operator does about a damaged store.
const RESTORE_ADVICE: &str = "this store will not be served (it could answer records that were changed or revoked since); restore the latest backup into a new, empty data directory with `credvault restore --data-dir NEW_DIR --from BACKUP_FILE` (same master key), start credvault on it, and keep the damaged directory for inspection";

/// Runs a maintenance command on a runtime of its own (one thread: nothing else runs).
pub fn offline(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
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

fn open_failed(error: &OpenError) -> ExitCode {
    if error.is_damage() {
        eprintln!(
            "credvault: the data directory is damaged: {}",
            with_advice(error)
        );
    } else if error.is_in_use() {
        eprintln!("credvault: {error}: stop the daemon first");
    } else {
        eprintln!("credvault: cannot open the vault: {error}");
    }
    exit_for(error)
}

/// The error, followed by the way out when the store is damaged.
pub fn with_advice(error: &OpenError) -> String {
    if error.is_damage() {
        format!("{error}; {RESTORE_ADVICE}")
    } else {
        error.to_string()
    }
}

/// The exit code for a vault that did not open.
pub fn exit_for(error: &OpenError) -> ExitCode {
    ExitCode::from(if error.is_configuration() {
        EXIT_CONFIG
    } else if error.is_damage() {
        EXIT_DAMAGED
    } else if error.is_in_use() {
        EXIT_IN_USE
    } else if error.is_unreachable() {
        EXIT_UNAVAILABLE
    } else if matches!(error, OpenError::DataDir(_)) {
        EXIT_CANT_CREATE
    } else {
        1
    })
}

fn backup_failed(what: &str, error: &backup::BackupError) -> ExitCode {
    use backup::BackupError;
    eprintln!("credvault: {what} failed: {error}");
    ExitCode::from(match error {
        BackupError::Io {
            action: "reading", ..
        } => EXIT_NO_INPUT,
        BackupError::Io { .. } | BackupError::Exists { .. } => EXIT_CANT_CREATE,
        BackupError::NotABackup(_) | BackupError::Corrupted { .. } => EXIT_DATA,
        BackupError::Store(store) if store.is_unavailable() => EXIT_UNAVAILABLE,
        error if error.is_usage() => EXIT_CONFIG,
        _ => 1,
    })
}

/// Refuses a command that reads a vault where there is none, before anything is
/// created there.
fn existing_data(settings: &Settings) -> Result<(), ExitCode> {
    match settings.store {
        StoreSettings::Sled if !settings.data_dir.join("db").is_dir() => {
            eprintln!(
                "credvault: {} holds no credvault data (no db/ in it); give the daemon's --data-dir",
                settings.data_dir.display()
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
        _ => Ok(()),
    }
}

pub async fn backup(args: &BackupArgs) -> ExitCode {
    let settings = match offline_settings(&args.offline) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    telemetry::init(LogFormat::Text, &settings.log_filter);
    // Refused before the store is read: the output must be new.
    if args.out.exists() {
        return backup_failed(
            "backup",
            &backup::BackupError::Exists {
                path: args.out.clone(),
            },
        );
    }
    if let Err(code) = existing_data(&settings) {
        return code;
    }
    let backed_up = match &settings.store {
        StoreSettings::Sled => {
            let vault = match open_offline(&settings).await {
                Ok(vault) => vault,
                Err(code) => return code,
            };
            backup::backup(vault.store.as_ref(), &vault.sealer, &args.out).await
        }
        // The shared records at one revision (nodes may serve meanwhile), without
        // what lives only as long as a process (slots, locks, pulses).
        StoreSettings::Etcd(options) => {
            let (etcd, sealer) = match open_shared(&settings, options, true).await {
                Ok(opened) => opened,
                Err(code) => return code,
            };
            backup::backup_where(&etcd, &sealer, &args.out, backup::durable).await
        }
    };
    match backed_up {
        Ok(summary) => {
            println!(
                "backup written to {}: {} entries, {} bytes, sealed with master key {}",
                args.out.display(),
                summary.entries,
                summary.bytes,
                Sealer::new(&settings.master_key).key_id()
            );
            ExitCode::SUCCESS
        }
        Err(error) => backup_failed("backup", &error),
    }
}

/// The etcd store the settings name and the sealer; with `existing`, the store must
/// hold a vault sealed with this key (checked without writing anything).
async fn open_shared(
    settings: &Settings,
    options: &crate::store::EtcdOptions,
    existing: bool,
) -> Result<(EtcdStore, Sealer), ExitCode> {
    let place = vault::etcd_place(options);
    let etcd = EtcdStore::connect(options).await.map_err(|source| {
        open_failed(&OpenError::Store {
            path: place.clone(),
            source,
        })
    })?;
    let sealer = Sealer::new(&settings.master_key);
    if existing {
        vault::verify_key(&etcd, &sealer, &place)
            .await
            .map_err(|error| open_failed(&error))?;
    }
    Ok((etcd, sealer))
}

pub async fn restore(args: &RestoreArgs) -> ExitCode {
    let settings = match offline_settings(&args.offline) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    telemetry::init(LogFormat::Text, &settings.log_filter);
    if let StoreSettings::Etcd(options) = &settings.store {
        return restore_shared(args, &settings, options).await;
    }
    let sealer = Sealer::new(&settings.master_key);
    // The file is checked whole before anything is created.
    if let Err(error) = backup::check(&args.from, &sealer, Naming::Emails) {
        return backup_failed("restore", &error);
    }
    let db_dir = settings.data_dir.join("db");
    let target = format!("the data directory {}", db_dir.display());
    let created = !settings.data_dir.exists();
    let restored = match crate::store::open_embedded(&db_dir) {
        Ok(store) => {
            let restored =
                backup::restore(&args.from, &sealer, store.as_ref(), &target, Naming::Emails).await;
            drop(store);
            restored
        }
        Err(error) => Err(error.into()),
    };
    let summary = match restored {
        Ok(summary) => summary,
        Err(error) => {
            // A directory this run made is taken back: a failed restore leaves nothing.
            if created {
                let _ = std::fs::remove_dir_all(&settings.data_dir);
            }
            return backup_failed("restore", &error);
        }
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

/// Restores into an empty etcd prefix, then checks the key as a node's start would.
async fn restore_shared(
    args: &RestoreArgs,
    settings: &Settings,
    options: &crate::store::EtcdOptions,
) -> ExitCode {
    let (etcd, sealer) = match open_shared(settings, options, false).await {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let place = vault::etcd_place(options);
    let target = place.display().to_string();
    let restored = backup::restore(&args.from, &sealer, &etcd, &target, Naming::Fingerprints).await;
    let summary = match restored {
        Ok(summary) => summary,
        Err(error) => return backup_failed("restore", &error),
    };
    if let Err(error) = vault::verify_key(&etcd, &sealer, &place).await {
        return open_failed(&error);
    }
    println!("restored {} entries into {target}", summary.entries);
    ExitCode::SUCCESS
}

pub async fn migrate(args: &MigrateArgs) -> ExitCode {
    let mut settings = match offline_settings(&args.offline) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    telemetry::init(LogFormat::Text, &settings.log_filter);
    let StoreSettings::Etcd(options) = std::mem::replace(&mut settings.store, StoreSettings::Sled)
    else {
        eprintln!(
            "credvault: migrate copies a data directory into etcd: configure [store] backend = \"etcd\" and [store.etcd] endpoints (or CREDVAULT_STORE__BACKEND and CREDVAULT_STORE__ETCD__ENDPOINTS)"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    // The source: the data directory, opened as its daemon would (it must exist; an
    // empty one would be created).
    if !args.from_data_dir.join("db").is_dir() {
        eprintln!(
            "credvault: {} holds no credvault data (no db directory)",
            args.from_data_dir.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    settings.data_dir = args.from_data_dir.clone();
    let source = match open_offline(&settings).await {
        Ok(vault) => vault,
        Err(code) => return code,
    };
    let (etcd, _) = match open_shared(&settings, &options, false).await {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let names = Names {
        naming: Naming::Emails,
        fingerprints: source.fingerprints.clone(),
    };
    let from = migrate::Source {
        store: source.store.as_ref(),
        sealer: &source.sealer,
        names: &names,
        callers: &source.callers,
    };
    let target = vault::etcd_place(&options).display().to_string();
    match migrate::migrate(from, &etcd, &target).await {
        Ok(done) => {
            println!(
                "migrated {} records ({} accounts) into {target} and verified them; left behind: {} live leases (not carried), {} audit blocks (they stay in {}: use it as that node's --data-dir to keep them)",
                done.records,
                done.accounts,
                done.leases_left,
                done.audit_left,
                args.from_data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("credvault: migrate failed: {error}");
            if error.is_usage() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

pub async fn rotate_signing_key(args: &OfflineArgs) -> ExitCode {
    let settings = match offline_settings(args) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if let Err(code) = existing_data(&settings) {
        return code;
    }
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

/// Prints a new key, or writes it to a new file `out` (0600). Printed into a file
/// (`keygen > new.key`), that file is made owner-only too.
pub fn keygen(out: Option<&std::path::Path>) -> ExitCode {
    let key = match MasterKey::generate() {
        Ok(key) => key,
        Err(error) => {
            eprintln!("credvault: {error}");
            return ExitCode::FAILURE;
        }
    };
    let written = match out {
        Some(path) => crate::config::write_key_file(path, &key).map_err(|e| e.to_string()),
        None => {
            use std::io::Write;
            private_stdout();
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", *key.to_base64())
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("writing the key: {e}"))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("credvault: {error}");
            ExitCode::from(EXIT_CANT_CREATE)
        }
    }
}

/// When stdout is a regular file (a shell redirect), makes it owner-only before a key
/// is written into it.
fn private_stdout() {
    use std::os::{fd::AsFd, unix::fs::PermissionsExt};
    let Ok(file) = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
    else {
        return;
    };
    if file.metadata().is_ok_and(|m| m.is_file())
        && let Err(error) = file.set_permissions(std::fs::Permissions::from_mode(0o600))
    {
        eprintln!("credvault: warning: could not make the output file owner-only: {error}");
    }
}
