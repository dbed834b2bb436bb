//! Master-key rotation of a shared (etcd) store, with every node stopped.
//!
//! Every node reads the shared records with the key it holds, so they cannot be
//! re-sealed while some node serves without the new key. The rotation is therefore
//! offline, done by `credvault rotate-key` against the prefix:
//!
//! 1. It marks the store as being rotated (a record in the meta tree naming the new
//!    key's id). A node does not start while the mark is there, so none starts with
//!    the old key halfway through; a second run with the same new key takes an
//!    interrupted run's mark over, a run with another key is refused.
//! 2. It watches the nodes' pulses for [`LIVE_WINDOW`]: a pulse that moves is a node
//!    still serving, and the rotation is refused (the mark is taken back).
//! 3. It re-seals (`Rekey`), leaving the records bound to processes' lifetimes alone
//!    (slots, login locks, pulses: they end with their etcd leases or are rewritten).
//! 4. It looks at the pulses once more, and takes the mark back only if none moved.

use std::time::Duration;

use crate::{
    callers::freshness::{PULSE_EVERY, PULSE_PREFIX},
    crypto::KeyId,
    store::{Store, StoreError, StoreExt, Swap, Tree},
};

/// The mark's key in the meta tree; its value is the new key id, in decimal.
pub const ROTATING_KEY: &[u8] = b"rotating";

/// How long pulses are watched for a node still serving: more than two pulses.
pub const LIVE_WINDOW: Duration = Duration::from_millis(PULSE_EVERY.as_millis() as u64 * 5 / 2);

const PULSE_PAGE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SharedRekeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "another master-key rotation, to key id {0}, is marked on this store (running, or interrupted); finish it with the same new key first"
    )]
    OtherKey(String),
    #[error(
        "credvault is still running on this store (node {}: its pulse moved within {} s); stop every node first, then run rotate-key again",
        nodes.join(", "),
        window.as_secs_f32()
    )]
    Serving {
        nodes: Vec<String>,
        window: Duration,
    },
}

impl SharedRekeyError {
    /// Refusals the operator resolves (exit 64) rather than machine failures.
    pub fn is_usage(&self) -> bool {
        !matches!(self, SharedRekeyError::Store(_))
    }
}

/// Each node's pulse record, as last written.
pub type Pulses = Vec<(String, Vec<u8>)>;

/// Marks `store` as being rotated to `key`; answers whether this call made the mark
/// (a mark for the same key left by an interrupted run is taken over).
pub async fn mark(store: &dyn Store, key: KeyId) -> Result<bool, SharedRekeyError> {
    let wanted = key.to_string();
    match store
        .swap(Tree::Meta, ROTATING_KEY, None, Some(wanted.as_bytes()))
        .await?
    {
        Swap::Done => Ok(true),
        Swap::Conflict { current } => match current {
            Some(found) if found == wanted.as_bytes() => Ok(false),
            Some(found) => Err(SharedRekeyError::OtherKey(
                String::from_utf8_lossy(&found).into_owned(),
            )),
            // Taken back between the two reads: mark again.
            None => Box::pin(mark(store, key)).await,
        },
    }
}

/// Takes the mark back: nodes may start again.
pub async fn unmark(store: &dyn Store) -> Result<(), StoreError> {
    if let Some(current) = store.value(Tree::Meta, ROTATING_KEY).await? {
        store
            .swap(Tree::Meta, ROTATING_KEY, Some(&current), None)
            .await?;
    }
    Ok(())
}

/// Whether a rotation is marked on `store`.
pub async fn marked(store: &dyn Store) -> Result<bool, StoreError> {
    Ok(store.value(Tree::Meta, ROTATING_KEY).await?.is_some())
}

/// Every node's pulse record.
pub async fn pulses(store: &dyn Store) -> Result<Pulses, StoreError> {
    let found = store
        .entries(Tree::Callers, PULSE_PREFIX, None, PULSE_PAGE)
        .await?;
    Ok(found
        .into_iter()
        .map(|(key, value)| {
            let node = String::from_utf8_lossy(&key[PULSE_PREFIX.len()..]).into_owned();
            (node, value)
        })
        .collect())
}

/// The nodes whose pulse differs in `now` from `before` (a node that first pulsed
/// meanwhile included).
pub fn moved(before: &Pulses, now: &Pulses) -> Vec<String> {
    now.iter()
        .filter(|(node, value)| !before.iter().any(|(n, v)| n == node && v == value))
        .map(|(node, _)| node.clone())
        .collect()
}

/// Watches the pulses for `window`; answers them as they are at its end, or refuses
/// when a node pulsed meanwhile.
pub async fn none_serving(store: &dyn Store, window: Duration) -> Result<Pulses, SharedRekeyError> {
    let before = pulses(store).await?;
    tokio::time::sleep(window).await;
    let now = pulses(store).await?;
    let nodes = moved(&before, &now);
    if nodes.is_empty() {
        Ok(now)
    } else {
        Err(SharedRekeyError::Serving { nodes, window })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulse(node: &str, stamp: &str) -> (String, Vec<u8>) {
        (node.to_owned(), stamp.as_bytes().to_vec())
    }

    #[test]
    fn a_node_moved_when_its_pulse_changed_or_first_appeared() {
        let before = vec![pulse("a", "1"), pulse("b", "5")];
        assert!(moved(&before, &before).is_empty());
        let now = vec![pulse("a", "1"), pulse("b", "7"), pulse("c", "9")];
        assert_eq!(moved(&before, &now), ["b", "c"]);
        // A pulse record deleted meanwhile is no node serving.
        assert!(moved(&before, &[pulse("a", "1")].to_vec()).is_empty());
    }
}
