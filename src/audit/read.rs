//! Reading the trail: pages of events, hash look-ups, and pruning past the retention.

use std::sync::Arc;

use tokio::sync::watch;

use super::{
    AuditError, AuditEvent, AuditLog, BLOCK_MAX, Filter, MAX_HASH_MATCHES, PRUNE_EVERY, SCAN_BATCH,
    Stored, block,
};
use crate::{
    sealed::{self, SealedError},
    store::{Range, StoreExt, Tree},
};

impl AuditLog {
    /// One page of events matching `filter`, oldest first.
    pub async fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String), AuditError> {
        let after = match page_token {
            "" => None,
            token => Some(
                token
                    .parse::<u64>()
                    .map_err(|_| AuditError::PageToken(token.to_owned()))?,
            ),
        };
        let mut events = Vec::new();
        let full = self
            .each(after, |event| {
                if filter.matches(&event) {
                    events.push(event);
                }
                events.len() < page_size
            })
            .await?;
        let next = match (full, events.last()) {
            (true, Some(last)) => last.seq.to_string(),
            _ => String::new(),
        };
        Ok((events, next))
    }

    /// How many events carry `hash`, and the first of them.
    pub async fn find_hash(&self, hash: &str) -> Result<(usize, Vec<AuditEvent>), AuditError> {
        let mut count = 0;
        let mut matches = Vec::new();
        self.each(None, |event| {
            if event.secret_hashes.iter().any(|h| h == hash) {
                count += 1;
                if matches.len() < MAX_HASH_MATCHES {
                    matches.push(event);
                }
            }
            true
        })
        .await?;
        Ok((count, matches))
    }

    /// Deletes events older than the retention; answers how many went. A block of old
    /// events goes whole; the block where old and new meet is trimmed in place (its
    /// key stays, so it still starts at or before its first number).
    pub async fn prune(&self) -> Result<usize, AuditError> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let cutoff = self.clock.now_ms() - retention.as_millis() as i64;
        let mut old = Vec::new();
        // Events are appended in time order, so the old blocks come first.
        self.each_block(None, |key, value, events| {
            let (gone, kept): (Vec<_>, Vec<_>) =
                events.into_iter().partition(|event| event.at_ms < cutoff);
            if !gone.is_empty() {
                old.push((key.to_vec(), value.to_vec(), gone.len(), kept.clone()));
            }
            kept.is_empty()
        })
        .await?;
        let mut pruned = 0;
        for (key, value, count, kept) in old {
            let trimmed = match kept.is_empty() {
                true => None,
                false => Some(self.seal_block(&key, &kept)?),
            };
            self.store
                .swap(Tree::Audit, &key, Some(&value), trimmed.as_deref())
                .await?;
            pruned += count;
        }
        Ok(pruned)
    }

    /// Prunes at start and then every hour until `stop`.
    pub async fn keep_pruned(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.retention.is_none() {
            return;
        }
        loop {
            match self.prune().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(events = n, "audit events past their retention pruned");
                    if let Err(error) = self.flush().await {
                        tracing::error!(%error, "flushing the pruned audit trail failed");
                    }
                }
                Err(error) => tracing::error!(%error, "pruning the audit trail failed"),
            }
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    }

    /// Visits the events after sequence number `after`, oldest first, while `visit`
    /// answers true; answers whether it stopped early. Queued events are written first,
    /// so that a read sees every call answered before it.
    async fn each(
        &self,
        after: Option<u64>,
        mut visit: impl FnMut(AuditEvent) -> bool,
    ) -> Result<bool, AuditError> {
        // A block holds at most BLOCK_MAX consecutive numbers from its key on, so the
        // one holding `after + 1` starts after `after - BLOCK_MAX`.
        let start = after
            .filter(|after| *after >= BLOCK_MAX as u64)
            .map(|after| (after - BLOCK_MAX as u64).to_be_bytes().to_vec());
        let after = after.unwrap_or(0);
        let mut stopped = false;
        self.each_block(start, |_, _, events| {
            for event in events.into_iter().filter(|event| event.seq > after) {
                if !visit(event) {
                    stopped = true;
                    return false;
                }
            }
            true
        })
        .await?;
        Ok(stopped)
    }

    /// Visits the stored blocks whose key sorts after `start`, in order, while `visit`
    /// answers true.
    async fn each_block(
        &self,
        start: Option<Vec<u8>>,
        mut visit: impl FnMut(&[u8], &[u8], Vec<AuditEvent>) -> bool,
    ) -> Result<(), AuditError> {
        self.write_queued().await;
        let mut after = start;
        loop {
            // Each page as the store is now, not at one revision: a walk of a long
            // trail (AuditHash reads all of it) can outlast the store's history, and
            // the trail only grows at its end and is pruned at its start.
            let range = Range::new(Tree::Audit, b"", SCAN_BATCH).after(after.as_deref());
            let page = self.store.scan(range).await?;
            let done = !page.more;
            for (key, value) in page.entries {
                let events = self.open_block(&key, &value)?;
                if !visit(&key, &value, events) {
                    return Ok(());
                }
                after = Some(key);
            }
            if done {
                return Ok(());
            }
        }
    }

    pub(super) fn seal_block(
        &self,
        key: &[u8],
        events: &[AuditEvent],
    ) -> Result<Vec<u8>, SealedError> {
        sealed::seal_raw(&self.sealer, Tree::Audit, key, &block::encode(events))
    }

    pub(super) fn open_block(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Vec<AuditEvent>, AuditError> {
        if !sealed::is_raw(value) {
            let stored: Stored = sealed::open(&self.sealer, Tree::Audit, key, value)?;
            return Ok(stored.into_events());
        }
        let plaintext = sealed::open_raw(&self.sealer, Tree::Audit, key, value)?;
        Ok(block::decode(&plaintext).ok_or(SealedError::Malformed)?)
    }
}
