//! `credvault rotate-key`: every record re-sealed under a new master key, on the
//! embedded store or (with every node stopped) on an etcd prefix.

use std::process::ExitCode;

use super::{
    EXIT_CANT_CREATE, EXIT_CONFIG, EXIT_IN_USE, existing_data, offline_settings, open_failed,
};
use crate::{
    cli::RotateKeyArgs,
    config::{LogFormat, StoreSettings},
    crypto::MasterKey,
    ops::shared_rekey,
    telemetry,
    vault::{OpenError, Vault},
};

pub async fn rotate_key(args: &RotateKeyArgs) -> ExitCode {
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
    if let Err(code) = existing_data(&settings) {
        return code;
    }
    // The configured key becomes the previous one (still read), the new one current.
    let resuming = settings.previous_master_key.is_some();
    let old = std::mem::replace(&mut settings.master_key, new_key);
    if settings.previous_master_key.is_none() {
        settings.previous_master_key = Some(old);
    }
    let vault = match Vault::open_to_rotate(&settings).await {
        Ok(vault) => vault,
        Err(OpenError::Store {
            source: crate::store::StoreError::Locked,
            ..
        }) if matches!(settings.store, StoreSettings::Etcd(_)) => {
            eprintln!(
                "credvault: a node is running on this data directory; on the etcd backend the key is rotated with every node stopped: stop them all, then run rotate-key again"
            );
            return ExitCode::from(EXIT_IN_USE);
        }
        Err(OpenError::Store {
            source: crate::store::StoreError::Locked,
            ..
        }) => {
            eprintln!(
                "credvault: the daemon is running on this data directory. To rotate while it serves, restart it with master_key_file = {} and previous_master_key_file = the current key; it re-seals everything in the background (see Keys/RotationStatus).",
                args.new_key_file.display()
            );
            return ExitCode::from(EXIT_IN_USE);
        }
        Err(error) => return open_failed(&error),
    };
    // A --dev vault's key file takes the new key, the old one kept beside it until the
    // rotation is done (a second run, or a start, resumes with both).
    if let Some(dev) = &settings.dev_key
        && !resuming
        && let Err(error) = crate::config::keep_dev_keys(&dev.path, &settings.master_key)
    {
        eprintln!("credvault: keeping the --dev key files: {error}");
        return ExitCode::from(EXIT_CANT_CREATE);
    }
    let store = vault.store.as_ref();
    // On a shared store: no node may serve meanwhile.
    let quiet = match &vault.etcd {
        Some(_) => match claim_shared(store, vault.sealer.key_id()).await {
            Ok(pulses) => Some(pulses),
            Err(code) => return code,
        },
        None => None,
    };
    let resealed = match vault.rekey.run().await {
        Ok(resealed) => resealed,
        Err(error) => {
            let _ = store.flush().await;
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
        Ok(kid) => store.flush().await.map(|()| kid).map_err(Into::into),
        Err(error) => Err(error),
    };
    let kid = match finished {
        Ok(kid) => kid,
        Err(error) => {
            eprintln!("credvault: finishing the key rotation failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(before) = &quiet
        && let Err(code) = release_shared(store, before).await
    {
        return code;
    }
    println!(
        "{resealed} records re-sealed under master key {}{}; start credvault with --master-key-file {} from now on; the old key is no longer needed",
        vault.sealer.key_id(),
        kid.map(|kid| format!(", signing key {kid} current"))
            .unwrap_or_default(),
        args.new_key_file.display()
    );
    if let Some(dev) = &settings.dev_key {
        let _ = std::fs::remove_file(crate::config::dev_previous_key_path(&dev.path));
    }
    if quiet.is_some() {
        println!(
            "the shared records are done, and the audit trail in {}; every other node's data directory still holds its own audit trail under the old key: run this same command once with each as --data-dir (it re-seals that trail only)",
            settings.data_dir.display()
        );
    }
    ExitCode::SUCCESS
}

/// Marks a shared store as being rotated and makes sure no node serves on it; answers
/// the nodes' pulses as they were then.
async fn claim_shared(
    store: &dyn crate::store::Store,
    key: crate::crypto::KeyId,
) -> Result<shared_rekey::Pulses, ExitCode> {
    let refused = |error: &shared_rekey::SharedRekeyError| {
        eprintln!("credvault: key rotation refused: {error}");
        ExitCode::from(if error.is_usage() { EXIT_CONFIG } else { 1 })
    };
    let made = shared_rekey::mark(store, key)
        .await
        .map_err(|e| refused(&e))?;
    if !made {
        println!("continuing the unfinished rotation to master key {key}");
    }
    println!(
        "making sure no node serves on this store ({} s)",
        shared_rekey::LIVE_WINDOW.as_secs_f32()
    );
    match shared_rekey::none_serving(store, shared_rekey::LIVE_WINDOW).await {
        Ok(pulses) => Ok(pulses),
        Err(error) => {
            if made {
                let _ = shared_rekey::unmark(store).await;
            }
            Err(refused(&error))
        }
    }
}

/// Lets nodes start again, unless one pulsed during the rotation (it may have written
/// under the old key what the rotation had passed: the mark stays until a run with
/// every node stopped).
async fn release_shared(
    store: &dyn crate::store::Store,
    before: &shared_rekey::Pulses,
) -> Result<(), ExitCode> {
    let failed = |error: &dyn std::fmt::Display| {
        eprintln!(
            "credvault: finishing the key rotation failed: {error}; run the same command again"
        );
        ExitCode::FAILURE
    };
    let now = shared_rekey::pulses(store).await.map_err(|e| failed(&e))?;
    let moved = shared_rekey::moved(before, &now);
    if !moved.is_empty() {
        eprintln!(
            "credvault: node {} served during the rotation; the store stays marked as being rotated: stop every node, then run the same command again",
            moved.join(", ")
        );
        return Err(ExitCode::FAILURE);
    }
    shared_rekey::unmark(store).await.map_err(|e| failed(&e))
}
