//! Records stored whole under AEAD: serialized as JSON, sealed, and bound to their
//! place (tree and key), so they can be neither read nor edited nor moved on disk.
//! Used for everything that is not an account (accounts keep a readable part for
//! listing, see `accounts::record`).
//!
//! Layout: `b"CVS" | format (1 byte) | sealed JSON`.

use serde::{Serialize, de::DeserializeOwned};
use zeroize::Zeroizing;

use crate::{
    crypto::{SealError, Sealer},
    store::Tree,
};

const MAGIC: &[u8; 3] = b"CVS";
const FORMAT: u8 = 1;

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

pub fn seal<T: Serialize>(
    sealer: &Sealer,
    tree: Tree,
    key: &[u8],
    value: &T,
) -> Result<Vec<u8>, SealedError> {
    let plaintext = Zeroizing::new(serde_json::to_vec(value).map_err(|_| SealedError::Malformed)?);
    let sealed = sealer
        .seal(&context(tree, key), &plaintext)
        .map_err(SealedError::Seal)?;
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&sealed);
    Ok(out)
}

pub fn open<T: DeserializeOwned>(
    sealer: &Sealer,
    tree: Tree,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, SealedError> {
    if bytes.len() < MAGIC.len() + 1 || &bytes[..3] != MAGIC || bytes[3] != FORMAT {
        return Err(SealedError::Malformed);
    }
    let plaintext = sealer
        .open(&context(tree, key), &bytes[4..])
        .map_err(|_| SealedError::Unauthentic)?;
    serde_json::from_slice(&plaintext).map_err(|_| SealedError::Malformed)
}

/// The record sealed again under the sealer's current key, or `None` when it already is
/// (key rotation).
pub fn reseal(
    sealer: &Sealer,
    tree: Tree,
    key: &[u8],
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, SealedError> {
    if bytes.len() < MAGIC.len() + 1 || &bytes[..3] != MAGIC || bytes[3] != FORMAT {
        return Err(SealedError::Malformed);
    }
    let resealed =
        sealer
            .reseal(&context(tree, key), &bytes[4..])
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

fn context(tree: Tree, key: &[u8]) -> Vec<u8> {
    let name = tree.name().as_bytes();
    let mut ctx = Vec::with_capacity(24 + name.len() + key.len());
    ctx.extend_from_slice(b"credvault/sealed/v1\0");
    ctx.extend_from_slice(name);
    ctx.push(0);
    ctx.extend_from_slice(key);
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn bound_to_tree_and_key() {
        let sealer = Sealer::new(&MasterKey::generate().unwrap());
        let bytes = seal(&sealer, Tree::Callers, b"c1", &vec!["x".to_owned()]).unwrap();
        let back: Vec<String> = open(&sealer, Tree::Callers, b"c1", &bytes).unwrap();
        assert_eq!(back, ["x"]);
        assert!(matches!(
            open::<Vec<String>>(&sealer, Tree::Callers, b"c2", &bytes),
            Err(SealedError::Unauthentic)
        ));
        assert!(matches!(
            open::<Vec<String>>(&sealer, Tree::Meta, b"c1", &bytes),
            Err(SealedError::Unauthentic)
        ));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open::<Vec<String>>(&sealer, Tree::Callers, b"c1", &flipped).is_err());
    }
}
