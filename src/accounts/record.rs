//! The stored form of an account.
//!
//! Layout: `b"CVA" | format (1 byte) | meta length (u32 BE) | meta JSON | sealed secrets`.
//! The sealed secrets' associated data is the tree, the record key and the exact meta
//! bytes, so a flipped byte anywhere, a ciphertext moved to another record, or an edited
//! `maxJobs` all fail to open.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::model::{Account, AccountMeta, AccountSecrets};
use crate::crypto::{SealError, Sealer, SecretString};

const MAGIC: &[u8; 3] = b"CVA";
/// The record format this build writes and reads.
pub const FORMAT: u8 = 1;
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

pub fn encode(sealer: &Sealer, key: &[u8], account: &Account) -> Result<Vec<u8>, RecordError> {
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

    let meta_len = u32::try_from(meta.len()).map_err(|_| RecordError::Malformed)?;
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&meta_len.to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a record completely. Secrets are returned only if everything authenticates.
pub fn decode(sealer: &Sealer, key: &[u8], bytes: &[u8]) -> Result<Account, RecordError> {
    let (meta_bytes, sealed) = split(bytes)?;
    let plaintext = sealer.open(&context(key, meta_bytes), sealed)?;
    let meta: AccountMeta =
        serde_json::from_slice(meta_bytes).map_err(|_| RecordError::Malformed)?;
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
    let (meta_bytes, sealed) = split(bytes)?;
    let Some(resealed) = sealer.reseal(&context(key, meta_bytes), sealed)? else {
        return Ok(None);
    };
    let mut out = bytes[..bytes.len() - sealed.len()].to_vec();
    out.extend_from_slice(&resealed);
    Ok(Some(out))
}

/// Reads the metadata without authenticating it. Only for decisions that hand out
/// nothing, such as deleting a record that no longer opens.
pub fn decode_meta_unauthenticated(bytes: &[u8]) -> Result<AccountMeta, RecordError> {
    let (meta_bytes, _) = split(bytes)?;
    serde_json::from_slice(meta_bytes).map_err(|_| RecordError::Malformed)
}

fn expose(secret: &Option<SecretString>) -> Option<&str> {
    secret.as_ref().map(SecretString::expose)
}

fn split(bytes: &[u8]) -> Result<(&[u8], &[u8]), RecordError> {
    if bytes.len() < HEADER_LEN || &bytes[..3] != MAGIC {
        return Err(RecordError::Malformed);
    }
    if bytes[3] != FORMAT {
        return Err(RecordError::UnsupportedFormat(bytes[3]));
    }
    let meta_len = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[HEADER_LEN..];
    if rest.len() < meta_len {
        return Err(RecordError::Malformed);
    }
    Ok(rest.split_at(meta_len))
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

#[cfg(test)]
mod tests;
