//! An in-memory backend: ordered maps behind the same journal as sled, for unit tests
//! and the conformance suite. Nothing is durable; a flush is a no-op.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{Arc, RwLock},
};

use super::{
    Entry, FlushFuture, StoreError, Tree, Write,
    journal::{Engine, Journaled},
};

pub type MemoryStore = Journaled<Maps>;

impl MemoryStore {
    pub fn open() -> Arc<Self> {
        Arc::new(Journaled::new(Maps::default()))
    }
}

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct Maps {
    trees: RwLock<BTreeMap<Tree, Map>>,
}

impl Engine for Maps {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        Ok(trees.get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn range(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        let Some(map) = trees.get(&tree) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        Ok(map
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, writes: &[Write]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut trees = self.trees.write().unwrap_or_else(|e| e.into_inner());
        let mut prevs = Vec::with_capacity(writes.len());
        for write in writes {
            let map = trees.entry(write.tree).or_default();
            prevs.push(match &write.value {
                Some(value) => map.insert(write.key.clone(), value.clone()),
                None => map.remove(&write.key),
            });
        }
        Ok(prevs)
    }

    fn count(&self, tree: Tree) -> Result<u64, StoreError> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        Ok(trees.get(&tree).map_or(0, |t| t.len() as u64))
    }

    fn last_key(&self, tree: Tree) -> Result<Option<Vec<u8>>, StoreError> {
        let trees = self.trees.read().unwrap_or_else(|e| e.into_inner());
        Ok(trees
            .get(&tree)
            .and_then(|t| t.last_key_value())
            .map(|(k, _)| k.clone()))
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async { Ok(()) })
    }

    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}
