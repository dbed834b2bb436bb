//! A watch on etcd, pumped into the bounded channel a [`Watch`] reads.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use super::{
    client::{Connection, store_error},
    prefix_end,
};
use crate::store::{Change, Revision, StoreError, Tree, Watch};

/// Changes a follower may leave unread before its watch is ended, as on the local
/// backends.
const BUFFER: usize = 4096;

/// Every change under `key` (a prefix) after `from`.
pub async fn open(
    connection: Arc<Connection>,
    seen: Arc<AtomicU64>,
    root: &[u8],
    tree: Tree,
    tree_root: Vec<u8>,
    key: Vec<u8>,
    from: Revision,
) -> Result<Watch, StoreError> {
    // etcd tells a compacted start only after the watch was created; a read at `from`
    // tells it before.
    if from > 0 {
        let options = GetOptions::new()
            .with_range(prefix_end(&key))
            .with_revision(from as i64)
            .with_count_only();
        let read = connection.range(&key, Some(options)).await;
        match read {
            Ok(_) => {}
            Err(StoreError::Compacted { .. }) => {
                let oldest = connection.oldest_revision(root).await?;
                return Err(StoreError::Compacted {
                    asked: from,
                    oldest,
                });
            }
            Err(error) => return Err(error),
        }
    }
    let options = WatchOptions::new()
        .with_range(prefix_end(&key))
        .with_start_revision(from as i64 + 1);
    let (mut stream, member) = connection.watch(key, options).await?;
    // The first answer says the watch was created.
    let deadline = connection.request_timeout();
    match tokio::time::timeout(deadline, stream.message()).await {
        Ok(Ok(Some(answer))) if answer.created() && !answer.canceled() => {}
        Ok(Ok(Some(answer))) if answer.compact_revision() > 0 => {
            return Err(StoreError::Compacted {
                asked: from,
                oldest: answer.compact_revision() as Revision,
            });
        }
        Ok(Ok(Some(answer))) => {
            return Err(StoreError::Unavailable(format!(
                "etcd did not create the watch: {}",
                answer.cancel_reason()
            )));
        }
        Ok(Ok(None)) => return Err(StoreError::WatchEnded),
        Ok(Err(error)) => return Err(store_error(&error)),
        Err(_) => {
            connection.unanswered(member);
            return Err(StoreError::Unavailable(
                "etcd did not create the watch in time".into(),
            ));
        }
    }
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        loop {
            let answer = tokio::select! {
                () = sender.closed() => break,
                answer = stream.message() => answer,
            };
            let answer = match answer {
                Ok(Some(answer)) => answer,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(error = %store_error(&error), "an etcd watch ended");
                    break;
                }
            };
            if let Some(header) = answer.header() {
                seen.fetch_max(header.revision().max(0) as u64, Ordering::SeqCst);
            }
            if answer.canceled() {
                break;
            }
            let mut full = false;
            for event in answer.events() {
                let Some(kv) = event.kv() else { continue };
                let change = Change {
                    revision: kv.mod_revision().max(0) as Revision,
                    tree,
                    key: kv
                        .key()
                        .strip_prefix(tree_root.as_slice())
                        .unwrap_or_default()
                        .to_vec(),
                    value: match event.event_type() {
                        EventType::Put => Some(kv.value().to_vec()),
                        EventType::Delete => None,
                    },
                };
                if sender.try_send(change).is_err() {
                    full = true;
                    break;
                }
            }
            // A follower that fell this far behind reads afresh.
            if full {
                break;
            }
        }
        // Dropping the stream cancels the watch on the member.
    });
    Ok(Watch::from_channel(receiver))
}
