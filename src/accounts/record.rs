//! The stored form of an account, in one of two formats:
//!
//! - format 1, readable metadata (the embedded store, on the node's own disk):
//!   `b"CVA" | 1 | meta length (u32 BE) | meta JSON | sealed secrets`;
//! - format 2, sealed metadata (a shared store such as etcd, which must see no email):
//!   `b"CVA" | 2 | sealed meta length (u32 BE) | sealed meta JSON | sealed secrets`.
//!
//! The sealed secrets' associated data is the record key and the exact meta JSON, so a
//! flipped byte anywhere, a ciphertext moved to another record, or an edited `maxJobs`
//! all fail to open. In format 2 the metadata is sealed too, bound to the record key.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::model::{Account, AccountMeta, AccountSecrets};
use crate::crypto::{SealError, Sealer, SecretString};

const MAGIC: &[u8; 3] = b"CVA";
/// Readable metadata.
pub const FORMAT: u8 = 1;
/// Sealed metadata.
pub const SEALED_META_FORMAT: u8 = 2;
const HEADER_LEN: usize = MAGIC.len() + 1 + 4;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record is not in credvault's account format")]
    Malformed,
    #[error("the record has format {0}, which this build cannot read")]
    UnsupportedFormat(u8),
    #[error(
        "the record's sealed secrets failed authentication (tampered, moved, or sealed with another key)"
    )]
    Unauthentic,
    #[error("sealing failed: {0}")]
    Seal(SealError),
}

impl From<SealError> for RecordError {
    fn from(error: SealError) -> Self {
        match error {
            SealError::Rng(_) => RecordError::Seal(error),
            SealError::Unauthentic | SealError::Truncated | SealError::UnknownKey(_) => {
                RecordError::Unauthentic
            }
        }
    }
}

/// The secrets as serialized inside the sealed blob.
#[derive(Serialize, Deserialize)]
struct SealedFields<S> {
    password: Option<S>,
    api_key: Option<S>,
    secret: Option<S>,
    token: Option<S>,
    previous_token: Option<S>,
}

/// The record of `account` under `key`, its metadata readable or sealed.
pub fn encode(
    sealer: &Sealer,
    key: &[u8],
    account: &Account,
    seal_meta: bool,
) -> Result<Vec<u8>, RecordError> {
    let meta = serde_json::to_vec(&account.meta).map_err(|_| RecordError::Malformed)?;
    let secrets = &account.secrets;
    let fields = SealedFields {
        password: expose(&secrets.password),
        api_key: expose(&secrets.api_key),
        secret: expose(&secrets.secret),
        token: expose(&secrets.token),
        previous_token: expose(&secrets.previous_token),
    };
    let plaintext =
        Zeroizing::new(serde_json::to_vec(&fields).map_err(|_| RecordError::Malformed)?);
    let sealed = sealer.seal(&context(key, &meta), &plaintext)?;
    let (format, stored_meta) = if seal_meta {
        let sealed_meta = sealer.seal(&meta_context(key), &meta)?;
        (SEALED_META_FORMAT, sealed_meta)
    } else {
        (FORMAT, meta)
    };
    assemble(format, &stored_meta, &sealed)
}

fn assemble(format: u8, meta: &[u8], sealed: &[u8]) -> Result<Vec<u8>, RecordError> {
    let meta_len = u32::try_from(meta.len()).map_err(|_| RecordError::Malformed)?;
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(format);
    out.extend_from_slice(&meta_len.to_be_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(sealed);
    Ok(out)
}

/// Opens a record completely. Secrets are returned only if everything authenticates.
pub fn decode(sealer: &Sealer, key: &[u8], bytes: &[u8]) -> Result<Account, RecordError> {
    let parts = split(bytes)?;
    let meta_bytes = parts.meta_json(sealer, key)?;
    let plaintext = sealer.open(&context(key, &meta_bytes), parts.sealed)?;
    let meta: AccountMeta =
        serde_json::from_slice(&meta_bytes).map_err(|_| RecordError::Malformed)?;
    let fields: SealedFields<String> =
        serde_json::from_slice(&plaintext).map_err(|_| RecordError::Malformed)?;
    let secret = |s: Option<String>| s.map(SecretString::from);
    Ok(Account {
        meta,
        secrets: AccountSecrets {
            password: secret(fields.password),
            api_key: secret(fields.api_key),
            secret: secret(fields.secret),
            token: secret(fields.token),
            previous_token: secret(fields.previous_token),
        },
    })
}

/// The record with its secrets sealed again under the sealer's current key (the
/// readable part unchanged), or `None` when it already is (key rotation).
pub fn reseal(sealer: &Sealer, key: &[u8], bytes: &[u8]) -> Result<Option<Vec<u8>>, RecordError> {
    let parts = split(bytes)?;
    let meta_json = parts.meta_json(sealer, key)?;
    let secrets = sealer.reseal(&context(key, &meta_json), parts.sealed)?;
    let meta = match parts.format {
        SEALED_META_FORMAT => sealer.reseal(&meta_context(key), parts.meta)?,
        _ => None,
    };
    if secrets.is_none() && meta.is_none() {
        return Ok(None);
    }
    assemble(
        parts.format,
        meta.as_deref().unwrap_or(parts.meta),
        secrets.as_deref().unwrap_or(parts.sealed),
    )
    .map(Some)
}

/// Reads the metadata without opening the secrets: authenticated (bound to `key`) in
/// the sealed-metadata format, unauthenticated in the readable one. Only for decisions
/// that hand out nothing (choosing, planning, deleting a record that no longer opens):
/// whatever is handed out is read with [`decode`].
pub fn decode_meta(sealer: &Sealer, key: &[u8], bytes: &[u8]) -> Result<AccountMeta, RecordError> {
    let meta_json = split(bytes)?.meta_json(sealer, key)?;
    serde_json::from_slice(&meta_json).map_err(|_| RecordError::Malformed)
}

fn expose(secret: &Option<SecretString>) -> Option<&str> {
    secret.as_ref().map(SecretString::expose)
}

/// A record cut into its parts, nothing opened yet.
struct Parts<'a> {
    format: u8,
    /// The meta JSON (format 1) or its sealed form (format 2).
    meta: &'a [u8],
    sealed: &'a [u8],
}

impl Parts<'_> {
    fn meta_json(&self, sealer: &Sealer, key: &[u8]) -> Result<Zeroizing<Vec<u8>>, RecordError> {
        match self.format {
            SEALED_META_FORMAT => Ok(sealer.open(&meta_context(key), self.meta)?),
            _ => Ok(Zeroizing::new(self.meta.to_vec())),
        }
    }
}

fn split(bytes: &[u8]) -> Result<Parts<'_>, RecordError> {
    if bytes.len() < HEADER_LEN || &bytes[..3] != MAGIC {
        return Err(RecordError::Malformed);
    }
    let format = bytes[3];
    if format != FORMAT && format != SEALED_META_FORMAT {
        return Err(RecordError::UnsupportedFormat(format));
    }
    let meta_len = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[HEADER_LEN..];
    if rest.len() < meta_len {
        return Err(RecordError::Malformed);
    }
    let (meta, sealed) = rest.split_at(meta_len);
    Ok(Parts {
        format,
        meta,
        sealed,
    })
}

/// Associated data: the record's place and its readable part.
fn context(key: &[u8], meta: &[u8]) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(32 + key.len() + meta.len());
    ctx.extend_from_slice(b"credvault/accounts/v1\0");
    ctx.extend_from_slice(&(key.len() as u32).to_be_bytes());
    ctx.extend_from_slice(key);
    ctx.extend_from_slice(meta);
    ctx
}

/// Associated data of the sealed metadata: the record's place.
fn meta_context(key: &[u8]) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(32 + key.len());
    ctx.extend_from_slice(b"credvault/accounts/meta/v2\0");
    ctx.extend_from_slice(&(key.len() as u32).to_be_bytes());
    ctx.extend_from_slice(key);
    ctx
}

#[cfg(test)]
mod tests;
