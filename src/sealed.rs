//! Records stored whole under AEAD, bound to their place (tree and key) and to their
//! format, so they can be neither read nor edited nor moved on disk. Used for
//! everything that is not an account (accounts keep a readable part for listing, see
//! `accounts::record`).
//!
//! Layout: `b"CVS" | format (1 byte) | sealed plaintext`. Format 1 seals a value as
//! JSON; format 2 seals bytes its writer encoded itself (the audit trail's compact
//! blocks). The format byte is part of what the seal authenticates.

use serde::{Serialize, de::DeserializeOwned};
use zeroize::Zeroizing;

use crate::{
    crypto::{SealError, Sealer},
    store::Tree,
};

const MAGIC: &[u8; 3] = b"CVS";
const FORMAT_JSON: u8 = 1;
const FORMAT_RAW: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error("the record is not a sealed credvault record of a format this build reads")]
    Malformed,
    #[error("the record failed authentication (tampered, moved, or sealed with another key)")]
    Unauthentic,
    #[error("sealing failed: {0}")]
    Seal(SealError),
}

impl SealedError {
    /// True when the stored bytes are at fault, not this process.
    pub fn is_data_loss(&self) -> bool {
        matches!(self, SealedError::Malformed | SealedError::Unauthentic)
    }
}

/// Seals `value` as JSON (format 1).
pub fn seal<T: Serialize>(
    sealer: &Sealer,
    tree: Tree,
    key: &[u8],
    value: &T,
) -> Result<Vec<u8>, SealedError> {
    let plaintext = Zeroizing::new(serde_json::to_vec(value).map_err(|_| SealedError::Malformed)?);
    frame(sealer, FORMAT_JSON, tree, key, &plaintext)
}

/// Opens a format 1 record.
pub fn open<T: DeserializeOwned>(
    sealer: &Sealer,
    tree: Tree,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, SealedError> {
    let plaintext = unframe(sealer, FORMAT_JSON, tree, key, bytes)?;
    serde_json::from_slice(&plaintext).map_err(|_| SealedError::Malformed)
}

/// Seals bytes the caller encoded (format 2).
pub fn seal_raw(
    sealer: &Sealer,
    tree: Tree,
    key: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealedError> {
    frame(sealer, FORMAT_RAW, tree, key, plaintext)
}

/// Opens a format 2 record: the bytes its writer sealed.
pub fn open_raw(
    sealer: &Sealer,
    tree: Tree,
    key: &[u8],
    bytes: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealedError> {
    unframe(sealer, FORMAT_RAW, tree, key, bytes)
}

/// True when `bytes` claim format 2 (whether they open is another matter).
pub fn is_raw(bytes: &[u8]) -> bool {
    format_of(bytes) == Some(FORMAT_RAW)
}

/// The record sealed again under the sealer's current key, or `None` when it already is
/// (key rotation).
pub fn reseal(
    sealer: &Sealer,
    tree: Tree,
    key: &[u8],
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, SealedError> {
    let format = format_of(bytes).ok_or(SealedError::Malformed)?;
    let resealed = sealer
        .reseal(&context(format, tree, key), &bytes[4..])
        .map_err(|error| match error {
            crate::crypto::SealError::Rng(_) => SealedError::Seal(error),
            _ => SealedError::Unauthentic,
        })?;
    Ok(resealed.map(|sealed| {
        let mut out = bytes[..4].to_vec();
        out.extend_from_slice(&sealed);
        out
    }))
}

fn frame(
    sealer: &Sealer,
    format: u8,
    tree: Tree,
    key: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealedError> {
    let sealed = sealer
        .seal(&context(format, tree, key), plaintext)
        .map_err(SealedError::Seal)?;
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(format);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn unframe(
    sealer: &Sealer,
    format: u8,
    tree: Tree,
    key: &[u8],
    bytes: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealedError> {
    if format_of(bytes) != Some(format) {
        return Err(SealedError::Malformed);
    }
    sealer
        .open(&context(format, tree, key), &bytes[4..])
        .map_err(|_| SealedError::Unauthentic)
}

fn format_of(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [m0, m1, m2, format @ (FORMAT_JSON | FORMAT_RAW), ..] if [*m0, *m1, *m2] == *MAGIC => {
            Some(*format)
        }
        _ => None,
    }
}

/// What the seal binds a record to. Format 1 keeps the context it was first written
/// with; later formats name themselves in it, so that a record's format byte cannot be
/// changed on disk without the record failing to open.
fn context(format: u8, tree: Tree, key: &[u8]) -> Vec<u8> {
    let name = tree.name().as_bytes();
    let mut ctx = Vec::with_capacity(24 + name.len() + key.len());
    match format {
        FORMAT_JSON => ctx.extend_from_slice(b"credvault/sealed/v1\0"),
        _ => {
            ctx.extend_from_slice(b"credvault/sealed/format\0");
            ctx.push(format);
        }
    }
    ctx.extend_from_slice(name);
    ctx.push(0);
    ctx.extend_from_slice(key);
    ctx
}

#[cfg(test)]
mod tests;
