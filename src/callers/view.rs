//! Every caller record, opened, with the two indexes that lead to one (email → id and
//! API key id → id). Authentication reads only this, so a call costs no store read and
//! no decryption. It is loaded whole at open (callers number in the hundreds, not
//! millions), takes this process's own writes as they commit, and follows the store's
//! watch for the rest (a re-sealed record, another node's write).

use std::{collections::HashMap, sync::Arc};

use super::{CallerError, CallerRecord};
use crate::{
    crypto::Sealer,
    sealed,
    store::{Change, Range, Revision, Store, StoreError, Tree},
};

/// The trees the view is made of.
pub(super) const TREES: [Tree; 3] = [Tree::Callers, Tree::CallerEmails, Tree::ApiKeys];
const PAGE: usize = 512;

/// An opened record with the bytes it was opened from (what a compare expects).
pub(super) struct Opened {
    pub bytes: Vec<u8>,
    pub record: CallerRecord,
}

enum Held {
    Opened(Arc<Opened>),
    /// Stored bytes that do not open: kept, so that a call for this caller answers
    /// DATA_LOSS rather than "no such caller".
    Damaged(Vec<u8>),
}

#[derive(Default)]
pub(super) struct View {
    records: HashMap<String, Held>,
    emails: HashMap<String, String>,
    keys: HashMap<String, String>,
}

impl View {
    /// Reads the three trees at one revision; answers the view and that revision.
    pub async fn load(store: &dyn Store, sealer: &Sealer) -> Result<(Self, Revision), StoreError> {
        let at = store.revision();
        let mut view = View::default();
        for tree in TREES {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let range = Range::new(tree, b"", PAGE)
                    .after(after.as_deref())
                    .at(Some(at));
                let page = store.scan(range).await?;
                for (key, value) in page.entries {
                    view.apply(sealer, tree, &key, Some(&value));
                    after = Some(key);
                }
                if !page.more {
                    break;
                }
            }
        }
        Ok((view, at))
    }

    /// The record of `id`: `Ok(None)` when there is none, an error when it is damaged.
    pub fn record(&self, sealer: &Sealer, id: &str) -> Result<Option<Arc<Opened>>, CallerError> {
        match self.records.get(id) {
            None => Ok(None),
            Some(Held::Opened(opened)) => Ok(Some(opened.clone())),
            Some(Held::Damaged(bytes)) => {
                match sealed::open::<CallerRecord>(sealer, Tree::Callers, id.as_bytes(), bytes) {
                    Err(source) => Err(CallerError::unopened(id, source)),
                    // Cannot happen (it did not open before); answer it all the same.
                    Ok(record) => Ok(Some(Arc::new(Opened {
                        bytes: bytes.clone(),
                        record,
                    }))),
                }
            }
        }
    }

    pub fn id_by_email(&self, email: &str) -> Option<&str> {
        self.emails.get(email).map(String::as_str)
    }

    pub fn id_by_key(&self, key_id: &str) -> Option<&str> {
        self.keys.get(key_id).map(String::as_str)
    }

    /// Keeps a record this process just wrote (or read afresh).
    pub fn remember(&mut self, id: &str, bytes: Vec<u8>, record: CallerRecord) {
        self.records.insert(
            id.to_owned(),
            Held::Opened(Arc::new(Opened { bytes, record })),
        );
    }

    /// Takes one change from the store. A record is replaced only by a higher version,
    /// or by other bytes at the same version (a re-seal): a change older than what this
    /// process wrote since does not undo it.
    pub fn apply(&mut self, sealer: &Sealer, tree: Tree, key: &[u8], value: Option<&[u8]>) {
        let text = String::from_utf8_lossy(key).into_owned();
        match (tree, value) {
            (Tree::Callers, None) => {
                self.records.remove(&text);
            }
            (Tree::Callers, Some(bytes)) => {
                let held = match sealed::open::<CallerRecord>(sealer, tree, key, bytes) {
                    Ok(record) => Held::Opened(Arc::new(Opened {
                        bytes: bytes.to_vec(),
                        record,
                    })),
                    Err(error) => {
                        tracing::error!(caller = %text, %error, "a stored caller record does not open");
                        Held::Damaged(bytes.to_vec())
                    }
                };
                let newer = match (self.records.get(&text), &held) {
                    (Some(Held::Opened(kept)), Held::Opened(new)) => {
                        kept.record.version < new.record.version
                            || (kept.record.version == new.record.version
                                && kept.bytes != new.bytes)
                    }
                    _ => true,
                };
                if newer {
                    self.records.insert(text, held);
                }
            }
            (Tree::CallerEmails, value) => set(&mut self.emails, text, value),
            (Tree::ApiKeys, value) => set(&mut self.keys, text, value),
            _ => {}
        }
    }

    pub fn apply_change(&mut self, sealer: &Sealer, change: &Change) {
        self.apply(sealer, change.tree, &change.key, change.value.as_deref());
    }
}

fn set(index: &mut HashMap<String, String>, key: String, value: Option<&[u8]>) {
    match value {
        Some(id) => index.insert(key, String::from_utf8_lossy(id).into_owned()),
        None => index.remove(&key),
    };
}
