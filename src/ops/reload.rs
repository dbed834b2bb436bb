//! Secrets read from files are read again on SIGHUP and whenever the file's content
//! changes (a Kubernetes Secret update swaps the mounted file), without a restart: a
//! new admin token replaces the old one at once; a new master key starts an online
//! rotation to it (the old key is kept for reading until every record is re-sealed).
//! A file that no longer holds a valid secret is reported and the current one kept.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ring::digest;
use tokio::{signal::unix::Signal, sync::watch};

use crate::{
    auth::Authenticator,
    callers::CallerService,
    config,
    crypto::Sealer,
    ops::rekey::{Phase, Rekey, RotateError},
};

/// How often the files are looked at between SIGHUPs.
const POLL: Duration = Duration::from_secs(2);

/// The files to follow (none when a secret was given inline or made by --dev).
#[derive(Clone, Debug, Default)]
pub struct SecretFiles {
    pub admin_token: Option<PathBuf>,
    pub master_key: Option<PathBuf>,
}

pub struct Reloader {
    pub files: SecretFiles,
    pub authenticator: Arc<Authenticator>,
    pub sealer: Arc<Sealer>,
    pub rekey: Arc<Rekey>,
    pub callers: Arc<CallerService>,
}

impl Reloader {
    /// Follows the files until `stop`; `hangup` forces a read.
    pub async fn run(self, mut hangup: Option<Signal>, mut stop: watch::Receiver<bool>) {
        let mut seen: HashMap<PathBuf, Vec<u8>> = HashMap::new();
        for path in self.paths() {
            if let Some(digest) = fingerprint(&path) {
                seen.insert(path, digest);
            }
        }
        loop {
            let forced = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                () = tokio::time::sleep(POLL) => false,
            };
            if forced {
                tracing::info!("SIGHUP: reading the secret files again");
            }
            for path in self.paths() {
                let Some(now) = fingerprint(&path) else {
                    continue;
                };
                if forced || seen.get(&path) != Some(&now) {
                    seen.insert(path.clone(), now);
                    self.apply(&path);
                }
            }
        }
    }

    fn paths(&self) -> Vec<PathBuf> {
        [&self.files.admin_token, &self.files.master_key]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn apply(&self, path: &PathBuf) {
        if Some(path) == self.files.admin_token.as_ref() {
            match config::read_admin_token_file(path) {
                Ok(token) => {
                    self.authenticator.set_bootstrap_token(&token);
                    tracing::info!(file = %path.display(), "admin token reloaded; the previous one no longer works");
                }
                Err(error) => {
                    tracing::error!(%error, "the admin token file changed but is not usable; the current token stays");
                }
            }
        }
        if Some(path) == self.files.master_key.as_ref() {
            self.master_key_changed(path);
        }
    }

    fn master_key_changed(&self, path: &Path) {
        let key = match config::read_master_key_file(path) {
            Ok(key) => key,
            Err(error) => {
                tracing::error!(%error, "the master key file changed but holds no usable key; nothing changes");
                return;
            }
        };
        if key.key_id() == self.sealer.key_id() {
            return;
        }
        if self.rekey.shared() {
            tracing::error!(error = %RotateError::Shared, "the master key file holds a new key; it is not used");
            return;
        }
        if self.rekey.phase() == Phase::Running || !self.sealer.rotate_to(&key) {
            tracing::warn!(
                "the master key file holds a new key, but a rotation is still running; it is taken up at the next change or SIGHUP"
            );
            return;
        }
        tracing::warn!(
            key_id = %key.key_id(),
            "the master key file holds a new key: rotating to it while serving (keep the old key as previous_master_key_file until RotationStatus says DONE)"
        );
        self.rekey.start(self.callers.clone());
    }
}

/// SHA-256 of the file's content; `None` when it cannot be read just now (a Secret
/// update in progress): looked at again at the next poll.
fn fingerprint(path: &Path) -> Option<Vec<u8>> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).ok()?);
    Some(digest::digest(&digest::SHA256, &bytes).as_ref().to_vec())
}
