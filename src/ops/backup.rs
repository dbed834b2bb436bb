//! Backup and restore of a whole store, offline (the embedded store admits one
//! process, so the daemon is stopped first). Every tree is read at one revision.
//!
//! The file stays encrypted: every tree's entries are serialized and sealed as one
//! payload with the vault's sealing key, so without the master key the file reveals
//! nothing, not even which accounts exist.
//!
//! Layout: `b"CVBACKUP" | version (1 byte) | key id (4 bytes) | SHA-256 of the sealed
//! payload (32 bytes) | sealed payload`. The checksum tells a damaged file from one made
//! with another key before anything is decrypted. The payload is, per tree:
//! `name length (1) | name | entry count (8) | entries`, each entry
//! `key length (4) | key | value length (4) | value`.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use ring::digest;
use zeroize::Zeroizing;

use crate::{
    crypto::{KeyId, SealError, Sealer},
    ops::progress::Progress,
    store::{Entry, Naming, Range, Store, StoreError, StoreExt, Swap, Tree},
};

/// Entries read per page.
const SCAN_PAGE: usize = 1024;

const MAGIC: &[u8; 8] = b"CVBACKUP";
pub const VERSION: u8 = 1;
const CONTEXT: &[u8] = b"credvault backup v1";
const HEADER_LEN: usize = MAGIC.len() + 1 + 4 + 32;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sealing the backup failed: {0}")]
    Seal(SealError),
    #[error("{0} is not a credvault backup")]
    NotABackup(PathBuf),
    #[error(
        "{path} is backup format {found}; this build reads format {VERSION}: restore it with the credvault release that made it"
    )]
    Version { path: PathBuf, found: u8 },
    #[error(
        "{path} is damaged: its checksum does not match (truncated or altered); nothing was restored"
    )]
    Corrupted { path: PathBuf },
    #[error(
        "{path} was made with another master key (key id {found}; this configuration's is {ours}); restore with the key the backup was made with"
    )]
    WrongKey {
        path: PathBuf,
        found: KeyId,
        ours: KeyId,
    },
    #[error(
        "{path} failed authentication under this master key (altered after it was written); nothing was restored"
    )]
    Unauthentic { path: PathBuf },
    #[error("{0} already holds a store; restore only into an empty one")]
    NotEmpty(String),
    #[error(
        "{path} holds a store whose records are named for {found} ({hint}); it cannot be restored into {into}"
    )]
    Naming {
        path: PathBuf,
        found: &'static str,
        into: &'static str,
        hint: &'static str,
    },
    #[error("{path} already exists; choose another output file")]
    Exists { path: PathBuf },
}

impl BackupError {
    /// Errors the operator fixes by giving other input (exit 64) rather than a machine
    /// failure.
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            BackupError::Io { .. } | BackupError::Store(_) | BackupError::Seal(_)
        )
    }
}

/// Whether a record of a shared (etcd) store outlives the processes that wrote it: not
/// the slots (bound to etcd leases, each ending with its job lease), the login locks
/// (bound to a session lease) or the nodes' pulses. Backups of a shared store carry the
/// durable ones only, and the audit trails stay with their nodes.
pub fn durable(tree: Tree, key: &[u8]) -> bool {
    match tree {
        Tree::Leases | Tree::Audit => false,
        Tree::Meta => !key.starts_with(crate::refresh::cluster_flight::FLIGHTS_PREFIX),
        Tree::Callers => !key.starts_with(crate::callers::freshness::PULSE_PREFIX),
        _ => true,
    }
}

/// What a backup or restore went through.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub entries: u64,
    pub bytes: u64,
}

/// Writes every tree of `store`, all read at one revision, to a new file `out` (0600),
/// sealed with `sealer`.
pub async fn backup(
    store: &dyn Store,
    sealer: &Sealer,
    out: &Path,
) -> Result<Summary, BackupError> {
    backup_where(store, sealer, out, |_, _| true).await
}

/// [`backup`] of the entries `keep` keeps.
pub async fn backup_where(
    store: &dyn Store,
    sealer: &Sealer,
    out: &Path,
    keep: fn(Tree, &[u8]) -> bool,
) -> Result<Summary, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists {
            path: out.to_owned(),
        });
    }
    let mut trees = Vec::new();
    let mut total = 0u64;
    let at = store.revision();
    for tree in Tree::ALL {
        let mut entries: Vec<Entry> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let range = Range::new(tree, b"", SCAN_PAGE)
                .after(after.as_deref())
                .at(Some(at));
            let page = store.scan(range).await?;
            after = page.entries.last().map(|(key, _)| key.clone());
            let more = page.more;
            entries.extend(page.entries.into_iter().filter(|(key, _)| keep(tree, key)));
            if !more {
                break;
            }
        }
        total += entries.len() as u64;
        trees.push((tree, entries));
    }
    let mut progress = Progress::new("backup", total);
    let mut payload = Zeroizing::new(Vec::new());
    for (tree, entries) in &trees {
        let name = tree.name().as_bytes();
        payload.push(name.len() as u8);
        payload.extend_from_slice(name);
        payload.extend_from_slice(&(entries.len() as u64).to_be_bytes());
        for (key, value) in entries {
            for part in [key, value] {
                payload.extend_from_slice(&(part.len() as u32).to_be_bytes());
                payload.extend_from_slice(part);
            }
            progress.advance(1);
        }
    }
    progress.finish();
    let sealed = sealer.seal(CONTEXT, &payload).map_err(BackupError::Seal)?;
    let mut file = Vec::with_capacity(HEADER_LEN + sealed.len());
    file.extend_from_slice(MAGIC);
    file.push(VERSION);
    file.extend_from_slice(&sealer.key_id().0.to_be_bytes());
    file.extend_from_slice(digest::digest(&digest::SHA256, &sealed).as_ref());
    file.extend_from_slice(&sealed);
    write_new(out, &file)?;
    Ok(Summary {
        entries: total,
        bytes: file.len() as u64,
    })
}

/// Checks, writing nothing, that `from` is a backup this key opens whole and whose
/// records are named as `naming` does: what a restore checks before it creates or
/// writes anything.
pub fn check(from: &Path, sealer: &Sealer, naming: Naming) -> Result<(), BackupError> {
    let bytes = read(from)?;
    let payload = open(from, &bytes, sealer)?;
    let trees = parse(&payload).ok_or_else(|| BackupError::Corrupted {
        path: from.to_owned(),
    })?;
    check_naming(from, &trees, naming)
}

fn read(from: &Path) -> Result<Vec<u8>, BackupError> {
    std::fs::read(from).map_err(|source| BackupError::Io {
        action: "reading",
        path: from.to_owned(),
        source,
    })
}

/// Checks `from` and writes its entries into `store`, which must be empty (`target`
/// names it in errors) and name its records as `naming` does.
pub async fn restore(
    from: &Path,
    sealer: &Sealer,
    store: &dyn Store,
    target: &str,
    naming: Naming,
) -> Result<Summary, BackupError> {
    let bytes = read(from)?;
    let payload = open(from, &bytes, sealer)?;
    let trees = parse(&payload).ok_or_else(|| BackupError::Corrupted {
        path: from.to_owned(),
    })?;
    check_naming(from, &trees, naming)?;
    for tree in Tree::ALL {
        if !store.entries(tree, b"", None, 1).await?.is_empty() {
            return Err(BackupError::NotEmpty(target.to_owned()));
        }
    }
    let total = trees.iter().map(|(_, entries)| entries.len() as u64).sum();
    let mut progress = Progress::new("restore", total);
    for (tree, entries) in trees {
        for (key, value) in entries {
            if store.swap(tree, key, None, Some(value)).await? != Swap::Done {
                return Err(BackupError::Corrupted {
                    path: from.to_owned(),
                });
            }
            progress.advance(1);
        }
    }
    progress.finish();
    store.flush().await?;
    Ok(Summary {
        entries: total,
        bytes: bytes.len() as u64,
    })
}

/// Refuses a backup whose records are named for the other backend.
fn check_naming(from: &Path, trees: &Parsed<'_>, naming: Naming) -> Result<(), BackupError> {
    if let Some(found) = naming_of(trees)
        && found != naming
    {
        let (found, into, hint) = match found {
            Naming::Emails => (
                "the embedded store",
                "a shared (etcd) store",
                "copy a data directory into etcd with `credvault migrate --from-data-dir`",
            ),
            Naming::Fingerprints => (
                "a shared (etcd) store",
                "an embedded store",
                "restore it into an etcd prefix",
            ),
        };
        return Err(BackupError::Naming {
            path: from.to_owned(),
            found,
            into,
            hint,
        });
    }
    Ok(())
}

/// How the backed-up records are named, where it shows: an account record's format
/// (readable metadata on the embedded store, sealed on a shared one), else the caller
/// email index's keys (emails, or their MACs).
fn naming_of(trees: &Parsed<'_>) -> Option<Naming> {
    let entries = |wanted: Tree| {
        trees
            .iter()
            .filter(move |(tree, _)| *tree == wanted)
            .flat_map(|(_, entries)| entries.iter())
    };
    if let Some((_, value)) = entries(Tree::Accounts).next() {
        return match value.get(3) {
            Some(&crate::accounts::record::SEALED_META_FORMAT) => Some(Naming::Fingerprints),
            _ => Some(Naming::Emails),
        };
    }
    entries(Tree::CallerEmails)
        .next()
        .map(|(key, _)| match key.contains(&b'@') {
            true => Naming::Emails,
            false => Naming::Fingerprints,
        })
}

fn open(path: &Path, bytes: &[u8], sealer: &Sealer) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotABackup(path.to_owned()));
    }
    let version = bytes[MAGIC.len()];
    if version != VERSION {
        return Err(BackupError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    let key_at = MAGIC.len() + 1;
    let found = KeyId(u32::from_be_bytes(
        bytes[key_at..key_at + 4].try_into().unwrap_or_default(),
    ));
    let checksum = &bytes[key_at + 4..HEADER_LEN];
    let sealed = &bytes[HEADER_LEN..];
    if digest::digest(&digest::SHA256, sealed).as_ref() != checksum {
        return Err(BackupError::Corrupted {
            path: path.to_owned(),
        });
    }
    if found != sealer.key_id() {
        return Err(BackupError::WrongKey {
            path: path.to_owned(),
            found,
            ours: sealer.key_id(),
        });
    }
    sealer
        .open(CONTEXT, sealed)
        .map_err(|_| BackupError::Unauthentic {
            path: path.to_owned(),
        })
}

type Parsed<'a> = Vec<(Tree, Vec<(&'a [u8], &'a [u8])>)>;

fn parse(payload: &[u8]) -> Option<Parsed<'_>> {
    let mut rest = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let mut trees = Vec::new();
    for _ in 0..Tree::ALL.len() {
        let name_len = *take(1)?.first()? as usize;
        let name = std::str::from_utf8(take(name_len)?).ok()?;
        let tree = Tree::ALL.into_iter().find(|t| t.name() == name)?;
        let count = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let mut entries = Vec::new();
        for _ in 0..count {
            let key_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
            let key = take(key_len)?;
            let value_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
            let value = take(value_len)?;
            entries.push((key, value));
        }
        trees.push((tree, entries));
    }
    rest.is_empty().then_some(trees)
}

/// Writes a new file (never over an existing one), 0600, synced before it is renamed
/// into place.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    if path.exists() {
        return Err(BackupError::Exists {
            path: path.to_owned(),
        });
    }
    let io = |action| {
        move |source| BackupError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io("creating"))?;
    file.write_all(bytes).map_err(io("writing"))?;
    file.sync_all().map_err(io("syncing"))?;
    std::fs::rename(&partial, path).map_err(io("renaming"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_truncation_and_trailing_bytes() {
        let mut payload = Vec::new();
        for tree in Tree::ALL {
            payload.push(tree.name().len() as u8);
            payload.extend_from_slice(tree.name().as_bytes());
            let n: u64 = if tree == Tree::Meta { 1 } else { 0 };
            payload.extend_from_slice(&n.to_be_bytes());
            if n == 1 {
                for part in [&b"k"[..], &b"value"[..]] {
                    payload.extend_from_slice(&(part.len() as u32).to_be_bytes());
                    payload.extend_from_slice(part);
                }
            }
        }
        let trees = parse(&payload).unwrap();
        assert_eq!(trees[0].1, [(&b"k"[..], &b"value"[..])]);
        assert!(parse(&payload[..payload.len() - 1]).is_none());
        let mut longer = payload.clone();
        longer.push(0);
        assert!(parse(&longer).is_none());
    }
}
