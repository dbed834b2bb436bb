//! Keys, tokens and TLS files: read from files (or generated for `--dev`), written
//! owner-only.

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::{ConfigError, DEV_KEY_FILE};
use crate::{
    auth::MIN_ADMIN_TOKEN_LEN,
    crypto::{MasterKey, RngError, SecretString, random_bytes},
};

pub(super) fn master_key(
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    data_dir: &Path,
    dev: bool,
) -> Result<(MasterKey, Option<DevKey>), ConfigError> {
    let parse = |text: &str, origin: String| {
        MasterKey::from_base64(text).map_err(|source| ConfigError::MasterKey { origin, source })
    };
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::TwoMasterKeys),
        (Some(inline), None) => Ok((
            parse(inline.expose(), "from CREDVAULT_MASTER_KEY".into())?,
            None,
        )),
        (None, Some(path)) => {
            let text = read_secret_file(&path, "reading master key file")?;
            Ok((
                parse(text.expose(), format!("in {}", path.display()))?,
                None,
            ))
        }
        (None, None) if dev => {
            let path = data_dir.join(DEV_KEY_FILE);
            if path.exists() {
                let text = read_secret_file(&path, "reading dev master key file")?;
                Ok((
                    parse(text.expose(), format!("in {}", path.display()))?,
                    Some(DevKey { path, new: false }),
                ))
            } else {
                // Written only once the vault is about to be made (see
                // `Settings::prepare_data_dir`): a start that fails before leaves nothing.
                let key = MasterKey::generate().map_err(|source| ConfigError::MasterKey {
                    origin: "generated for --dev".into(),
                    source,
                })?;
                Ok((key, Some(DevKey { path, new: true })))
            }
        }
        (None, None) => Err(ConfigError::NoMasterKey),
    }
}

pub(super) fn admin_token(
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    dev: bool,
) -> Result<(SecretString, bool), ConfigError> {
    let token = match (inline, file) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoAdminTokens),
        (Some(inline), None) => inline,
        (None, Some(path)) => read_secret_file(&path, "reading admin token file")?,
        (None, None) if dev => return Ok((generate_token()?, true)),
        (None, None) => return Err(ConfigError::NoAdminToken),
    };
    let strong = token.len() >= MIN_ADMIN_TOKEN_LEN
        && !token
            .expose()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !strong {
        return Err(ConfigError::WeakAdminToken);
    }
    Ok((token, false))
}

/// An address option: `None` for "none" or empty, else a socket address (or `error`
/// naming what was given).
pub(super) fn optional_addr(
    text: &str,
    error: fn(String) -> ConfigError,
) -> Result<Option<SocketAddr>, ConfigError> {
    match text.trim() {
        "" | "none" => Ok(None),
        text => text
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| error(text.to_owned())),
    }
}

/// PEM files for the TCP API's TLS, read at start-up.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: SecretBytes,
    pub client_ca: Option<Vec<u8>>,
}

/// Bytes that must not be printed (a private key).
#[derive(Clone)]
pub struct SecretBytes(zeroize::Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("client_certificates", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

pub(super) fn read_pem<T: From<Vec<u8>>>(path: &Path) -> Result<T, ConfigError> {
    fs::read(path)
        .map(T::from)
        .map_err(|source| ConfigError::Io {
            action: "reading TLS file",
            path: path.to_owned(),
            source,
        })
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        SecretBytes(zeroize::Zeroizing::new(bytes))
    }
}

/// The admin token in `path`, checked as at start-up (for reloads).
pub fn read_admin_token_file(path: &Path) -> Result<SecretString, ConfigError> {
    admin_token(None, Some(path.to_owned()), false).map(|(token, _)| token)
}

/// The master key in `path`, checked as at start-up (for reloads).
pub fn read_master_key_file(path: &Path) -> Result<MasterKey, ConfigError> {
    master_key(None, Some(path.to_owned()), Path::new(""), false).map(|(key, _)| key)
}

/// 32 random bytes as URL-safe base64 (43 characters).
pub fn generate_token() -> Result<SecretString, RngError> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(bytes.as_mut())?;
    Ok(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

fn read_secret_file(path: &Path, action: &'static str) -> Result<SecretString, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
        action,
        path: path.to_owned(),
        source,
    })?;
    Ok(SecretString::from(text.trim().to_owned()))
}

fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)
}

/// The `--dev` key file beside the data.
#[derive(Clone, Debug)]
pub struct DevKey {
    pub path: PathBuf,
    /// Generated by this start, not written yet.
    pub new: bool,
}

/// Writes a new `--dev` key file (never over an existing one).
pub(super) fn write_dev_key(path: &Path, key: &MasterKey) -> Result<(), ConfigError> {
    write_private_file(path, key.to_base64().as_bytes())
}

/// Writes `key` to a new file (never over an existing one), 0600.
pub fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), ConfigError> {
    write_private_file(path, key.to_base64().as_bytes())
}

/// Where a `--dev` vault keeps its previous key while a master-key rotation runs.
pub fn dev_previous_key_path(dev_key: &Path) -> PathBuf {
    dev_key.with_file_name(super::DEV_PREVIOUS_KEY_FILE)
}

/// A `--dev` vault rotating to `next`: its current key file is kept as the previous
/// key (a start before the rotation is done reads both), and `next` replaces it, written
/// beside it and renamed into place, so that either key file is always whole.
pub fn keep_dev_keys(dev_key: &Path, next: &MasterKey) -> Result<(), ConfigError> {
    let current = read_secret_file(dev_key, "reading dev master key file")?;
    write_private_file(&dev_previous_key_path(dev_key), current.expose().as_bytes())?;
    let fresh = dev_key.with_extension("new");
    let _ = fs::remove_file(&fresh);
    write_private_file(&fresh, next.to_base64().as_bytes())?;
    fs::rename(&fresh, dev_key).map_err(|source| ConfigError::Io {
        action: "renaming into place",
        path: dev_key.to_owned(),
        source,
    })
}

/// The previous key of a `--dev` vault whose rotation has not finished, if any.
pub(super) fn dev_previous_key(dev_key: &Path) -> Result<Option<MasterKey>, ConfigError> {
    let path = dev_previous_key_path(dev_key);
    if !path.exists() {
        return Ok(None);
    }
    let text = read_secret_file(&path, "reading dev previous master key file")?;
    MasterKey::from_base64(text.expose())
        .map(Some)
        .map_err(|source| ConfigError::MasterKey {
            origin: format!("in {}", path.display()),
            source,
        })
}

pub(super) fn create_private_dir(path: &Path) -> Result<(), ConfigError> {
    if path.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o700)))
        .map_err(|source| ConfigError::Io {
            action: "creating data directory",
            path: path.to_owned(),
            source,
        })
}
