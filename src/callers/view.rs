//! Every caller record, opened, with the two indexes that lead to one (email → id and
//! API key id → id). Authentication reads only this, so a call costs no store read and
//! no decryption. It is loaded whole at open (callers number in the hundreds, not
//! millions), takes this process's own writes as they commit, and follows the store's
//! watch for the rest (a re-sealed record, another node's write).
//!
//! Each entry remembers the revision it was written at, and a deleted one leaves a
//! tombstone with its revision, so a change arriving late through the watch (older
//! than what this process already took from its own commit) is ignored: a removed API
//! key never comes back, not even for a moment.

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
    records: HashMap<String, (Held, Revision)>,
    emails: HashMap<String, (String, Revision)>,
    keys: HashMap<String, (String, Revision)>,
    /// Deleted keys and the revision of their deletion, until the watch has passed it.
    gone: HashMap<(Tree, Vec<u8>), Revision>,
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
                    view.apply(sealer, tree, &key, Some(&value), at);
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
        match self.records.get(id).map(|(held, _)| held) {
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

    /// Every caller id, in order.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.records.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn id_by_email(&self, email: &str) -> Option<&str> {
        self.emails.get(email).map(|(id, _)| id.as_str())
    }

    pub fn id_by_key(&self, key_id: &str) -> Option<&str> {
        self.keys.get(key_id).map(|(id, _)| id.as_str())
    }

    /// Keeps a record as of `revision`: one this process just wrote (or read afresh).
    pub fn remember(&mut self, id: &str, bytes: Vec<u8>, record: CallerRecord, revision: Revision) {
        if revision < self.revision_of(Tree::Callers, id.as_bytes()) {
            return;
        }
        self.gone.remove(&(Tree::Callers, id.as_bytes().to_vec()));
        let held = Held::Opened(Arc::new(Opened { bytes, record }));
        self.records.insert(id.to_owned(), (held, revision));
    }

    /// The revision the view holds `key` at (0: never seen).
    fn revision_of(&self, tree: Tree, key: &[u8]) -> Revision {
        let text = String::from_utf8_lossy(key);
        let held = match tree {
            Tree::Callers => self.records.get(text.as_ref()).map(|(_, at)| *at),
            Tree::CallerEmails => self.emails.get(text.as_ref()).map(|(_, at)| *at),
            Tree::ApiKeys => self.keys.get(text.as_ref()).map(|(_, at)| *at),
            _ => None,
        };
        held.or_else(|| self.gone.get(&(tree, key.to_vec())).copied())
            .unwrap_or(0)
    }

    /// Takes one change the store made at `revision`, unless the view already holds
    /// the key as of a later one.
    pub fn apply(
        &mut self,
        sealer: &Sealer,
        tree: Tree,
        key: &[u8],
        value: Option<&[u8]>,
        revision: Revision,
    ) {
        if !TREES.contains(&tree) || revision < self.revision_of(tree, key) {
            return;
        }
        // A node's pulse (see `freshness`), not a caller.
        if tree == Tree::Callers && key.starts_with(super::freshness::PULSE_PREFIX) {
            return;
        }
        let text = String::from_utf8_lossy(key).into_owned();
        let Some(bytes) = value else {
            match tree {
                Tree::Callers => drop(self.records.remove(&text)),
                Tree::CallerEmails => drop(self.emails.remove(&text)),
                _ => drop(self.keys.remove(&text)),
            }
            self.gone.insert((tree, key.to_vec()), revision);
            return;
        };
        self.gone.remove(&(tree, key.to_vec()));
        let id = || String::from_utf8_lossy(bytes).into_owned();
        match tree {
            Tree::Callers => {
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
                self.records.insert(text, (held, revision));
            }
            Tree::CallerEmails => drop(self.emails.insert(text, (id(), revision))),
            _ => drop(self.keys.insert(text, (id(), revision))),
        }
    }

    pub fn apply_change(&mut self, sealer: &Sealer, change: &Change) {
        self.apply(
            sealer,
            change.tree,
            &change.key,
            change.value.as_deref(),
            change.revision,
        );
    }

    /// Keeps what `newer` holds past `at` (writes made while this view was read at
    /// `at`).
    pub fn take_newer(&mut self, newer: &View, at: Revision) {
        for (id, (held, revision)) in &newer.records {
            if *revision > at
                && let Held::Opened(opened) = held
            {
                let (bytes, record) = (opened.bytes.clone(), opened.record.clone());
                self.remember(id, bytes, record, *revision);
            }
        }
        for (tree, index) in [
            (Tree::CallerEmails, &newer.emails),
            (Tree::ApiKeys, &newer.keys),
        ] {
            for (key, (id, revision)) in index {
                if *revision > at {
                    let (key, id) = (key.as_bytes(), id.as_bytes());
                    self.index(tree, key, Some(id), *revision);
                }
            }
        }
        for ((tree, key), revision) in &newer.gone {
            if *revision > at {
                self.index(*tree, key, None, *revision);
            }
        }
    }

    /// An index entry (or a record's deletion) as of `revision`.
    fn index(&mut self, tree: Tree, key: &[u8], id: Option<&[u8]>, revision: Revision) {
        if revision < self.revision_of(tree, key) {
            return;
        }
        let text = String::from_utf8_lossy(key).into_owned();
        let index = match tree {
            Tree::CallerEmails => &mut self.emails,
            Tree::ApiKeys => &mut self.keys,
            _ => {
                // Only deletions come here for records.
                self.records.remove(&text);
                self.gone.insert((tree, key.to_vec()), revision);
                return;
            }
        };
        match id {
            Some(id) => {
                index.insert(text, (String::from_utf8_lossy(id).into_owned(), revision));
                self.gone.remove(&(tree, key.to_vec()));
            }
            None => {
                index.remove(&text);
                self.gone.insert((tree, key.to_vec()), revision);
            }
        }
    }

    /// Tombstones of `tree` its watch has passed: no older change can arrive.
    pub fn forget_tombstones(&mut self, tree: Tree, upto: Revision) {
        self.gone.retain(|(t, _), at| *t != tree || *at > upto);
    }
}

#[cfg(test)]
mod tests;
