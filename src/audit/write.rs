//! Writing the trail: numbering and queueing events, writing them as sealed blocks,
//! and the durable commit a hand-out waits for.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;

use super::{
    AuditError, AuditEvent, AuditLog, BLOCK_BYTES, BLOCK_MAX, BeforeFlush, LocalSequence, Queue,
    WRITE_EVERY, Written, block, seq_of,
};
use crate::{
    clock::Clock,
    crypto::{Fingerprinter, Sealer},
    sealed,
    store::{Store, StoreError, StoreExt, Tree},
};

/// A debit a hand-out took under `audit.sync = "os"` and the store lost in a crash,
/// read back from the spill with its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpilledDebit {
    pub caller_id: String,
    pub credits: i64,
}

/// How often `audit.sync = "os"` flushes what hand-outs spilled.
pub const SPILL_FLUSH_EVERY: Duration = Duration::from_millis(50);

impl AuditLog {
    pub async fn open(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        hasher: Arc<Fingerprinter>,
        clock: Arc<dyn Clock>,
        retention: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let mut log = Self {
            store,
            sealer,
            hasher,
            clock,
            sequence: Box::new(LocalSequence::starting_at(1)),
            queue: Mutex::new(Queue::default()),
            writer: tokio::sync::Mutex::new(()),
            writes: AtomicU64::new(0),
            durable: crate::rounds::Rounds::default(),
            before_flush: OnceLock::new(),
            retention,
            node_id: String::new(),
            log_lines: false,
            spill: None,
        };
        let next = log.next_stored_seq().await?;
        log.sequence = Box::new(LocalSequence::starting_at(next));
        Ok(log)
    }

    /// The number after the last event stored. The last block's key is its first
    /// event's number; the next follows its last. A block that does not open
    /// (tampered) does not stop the vault: reading the trail reports it, and numbering
    /// continues past any number it could hold.
    async fn next_stored_seq(&self) -> Result<u64, StoreError> {
        let Some(key) = self.store.last_key(Tree::Audit).await? else {
            return Ok(1);
        };
        let Some(value) = self.store.value(Tree::Audit, &key).await? else {
            return Ok(1);
        };
        let first = seq_of(&key).unwrap_or(0);
        Ok(match self.open_block(&key, &value) {
            Ok(events) => {
                events
                    .iter()
                    .map(|e| e.seq)
                    .max()
                    .unwrap_or(first)
                    .max(first)
                    + 1
            }
            Err(error) => {
                tracing::error!(%error, "the last audit block does not open");
                first + BLOCK_MAX as u64
            }
        })
    }

    /// `audit.sync = "os"`: hand-outs' events go to a spill file in `dir` before the
    /// answer (see [`spill`](super::spill)). Events a previous run spilled and the store
    /// lost are put back first; answers the debits their hand-outs took, which the
    /// store lost with them (the caller's id and the credits), for the credits to take
    /// again.
    pub async fn spilling_to(
        mut self,
        dir: &Path,
    ) -> Result<(Self, Vec<SpilledDebit>), StoreError> {
        let (spill, left) = super::spill::Spill::open(dir)?;
        let next = self.next_stored_seq().await?;
        let stored = self.stored_between(&left).await?;
        let missing: Vec<_> = left.iter().filter(|s| !stored.contains(&s.seq)).collect();
        let mut last = None;
        let mut debits = Vec::new();
        for spilled in &missing {
            self.store
                .swap(
                    Tree::Audit,
                    &spilled.seq.to_be_bytes(),
                    None,
                    Some(&spilled.block),
                )
                .await?;
            last = Some(spilled.seq);
            // The debit is read from the sealed event; one that does not open is
            // reported by reads, and charges nobody.
            match self.open_block(&spilled.seq.to_be_bytes(), &spilled.block) {
                Ok(events) => debits.extend(
                    events
                        .into_iter()
                        .filter(|e| e.unwritten_debit > 0)
                        .map(|e| SpilledDebit {
                            caller_id: e.caller_id,
                            credits: e.unwritten_debit,
                        }),
                ),
                Err(error) => {
                    tracing::error!(%error, seq = spilled.seq, "a spilled audit event does not open");
                }
            }
        }
        if let Some(last) = last {
            self.store.flush().await?;
            tracing::warn!(
                events = missing.len(),
                "audit events the store lost were put back from the spill file"
            );
            self.sequence = Box::new(LocalSequence::starting_at(next.max(last + 1)));
        }
        self.spill = Some(spill);
        Ok((self, debits))
    }

    /// The numbers of the stored events among those `spilled` names: the blocks that
    /// may hold them are read (a block's key is its first number, and it holds at most
    /// `BLOCK_MAX`), so an event lost between stored ones is found too.
    async fn stored_between(
        &self,
        spilled: &[super::spill::Spilled],
    ) -> Result<std::collections::HashSet<u64>, StoreError> {
        let mut stored = std::collections::HashSet::new();
        let (Some(low), Some(high)) = (
            spilled.iter().map(|s| s.seq).min(),
            spilled.iter().map(|s| s.seq).max(),
        ) else {
            return Ok(stored);
        };
        let mut after = low
            .saturating_sub(BLOCK_MAX as u64 + 1)
            .to_be_bytes()
            .to_vec();
        loop {
            let page = self
                .store
                .entries(Tree::Audit, b"", Some(&after), 64)
                .await?;
            for (key, value) in &page {
                if seq_of(key).is_some_and(|first| first > high) {
                    return Ok(stored);
                }
                // A block that does not open is reported by reads; its events are not
                // put back over it.
                if let Ok(events) = self.open_block(key, value) {
                    stored.extend(events.iter().map(|e| e.seq));
                }
            }
            match page.last() {
                Some((key, _)) if page.len() == 64 => after = key.clone(),
                _ => return Ok(stored),
            }
        }
    }

    /// Whether hand-outs' events are spilled (`audit.sync = "os"`), their debits then
    /// written by the next flush round rather than before the answer.
    pub fn spills(&self) -> bool {
        self.spill.is_some()
    }

    /// Fault injection for tests: from now on the spill's appends fail as on a full
    /// disk (nothing without a spill).
    #[doc(hidden)]
    pub fn fail_spill_appends(&self) {
        if let Some(spill) = &self.spill {
            spill.fail_appends();
        }
    }

    /// A reveal's event with `audit.sync = "os"`: written to the spill file, its
    /// [`unwritten_debit`](AuditEvent::unwritten_debit) with it (the store has the event
    /// and the debit within a flush round); without a spill, durable as
    /// [`AuditLog::commit_durable`] makes it.
    pub async fn commit_spilled(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let Some(spill) = &self.spill else {
            return self.commit_durable(event).await;
        };
        // Encoded as the one-event block the trail would store under its number before
        // it is queued (the queue takes the event), and sealed once the queue's lock is
        // let go: every hand-out takes that lock, and a seal (its nonce a `getrandom`
        // call) held it long enough to make the hand-outs queue on it.
        let (seq, encoded) = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let event = self.number(event);
            let seq = event.seq;
            let encoded = block::encode_blocks(std::slice::from_ref(&event), 1, usize::MAX);
            queue.events.push(event);
            (seq, encoded)
        };
        let spilled = encoded
            .first()
            .ok_or(AuditError::Unwritten)
            .and_then(|b| {
                sealed::seal_raw(&self.sealer, Tree::Audit, &seq.to_be_bytes(), &b.bytes)
                    .map_err(AuditError::from)
            })
            .and_then(|block| {
                spill.append(seq, &block).map_err(|error| {
                    tracing::error!(%error, "writing an audit event to the spill file failed");
                    AuditError::Unwritten
                })
            });
        if let Err(error) = spilled {
            metrics::counter!("credvault_audit_write_failures_total").increment(1);
            // Nothing is handed out: the event must not reach the store as handed out.
            if !self.unqueue(seq) {
                tracing::error!(
                    seq,
                    "the event of a hand-out refused for an unwritten spill was already \
                     being stored; the call's failure is recorded after it"
                );
            }
            return Err(error);
        }
        Ok(seq)
    }

    /// Takes back a queued event no flush round has taken yet; answers whether it was
    /// still queued.
    fn unqueue(&self, seq: u64) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let at = queue.events.iter().rposition(|event| event.seq == seq);
        at.map(|at| queue.events.remove(at)).is_some()
    }

    /// One flush round of `audit.sync = "os"`: the queued events and the debits written
    /// and flushed, then the spill segments before it deleted.
    async fn flush_spilled(&self, spill: &super::spill::Spill) {
        let covers = match spill.start_round() {
            Ok(Some(covers)) => covers,
            // Nothing spilled: the other queued events are written as without a spill.
            Ok(None) => return self.write_pending().await,
            Err(error) => {
                // No segment can be told covered from now on: keep them all (the next
                // start puts back what the store lacks), and write the queue anyway.
                tracing::error!(%error, "starting a spill segment failed");
                spill.keep_all();
                return self.write_pending().await;
            }
        };
        // Events whose block could not be written stay in the spill (the next start
        // puts them back); only a round that wrote and flushed them deletes it.
        let written = self.write_queued().await;
        self.run_before_flush().await;
        match self.store.flush().await {
            Ok(()) if !written => spill.keep_all(),
            Ok(()) => {
                if let Err(error) = spill.covered(covers) {
                    tracing::error!(%error, "deleting flushed spill segments failed");
                }
            }
            Err(error) => tracing::error!(%error, "flushing spilled audit events failed"),
        }
    }

    /// After the final flush at shutdown: the spill holds nothing the store lacks.
    pub fn spill_flushed(&self) {
        if let Some(spill) = &self.spill
            && let Err(error) = spill.finish()
        {
            tracing::error!(%error, "deleting flushed spill segments failed");
        }
    }

    /// The audit hash of a secret value.
    pub fn hash(&self, secret: &str) -> String {
        self.hasher.hash(secret)
    }

    /// Queues one event (its `seq` and time are assigned here) and logs it. It is
    /// written with the next block: [`AuditLog::commit`] waits for that.
    pub fn append(&self, event: AuditEvent) -> u64 {
        self.enqueue(event).0
    }

    /// Appends one event and waits until the block holding it is written (not yet
    /// durable: the caller's next store flush makes it so).
    pub async fn commit(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (seq, written) = self.enqueue(event);
        if written.get().is_none() {
            self.write_queued().await;
        }
        match written.get() {
            Some(Some(_)) => Ok(seq),
            _ => Err(AuditError::Unwritten),
        }
    }

    /// Appends one event and waits until it is durable, together with every store
    /// write that completed before this call (a hand-out's debit and lease). Concurrent
    /// callers share the block write and the flush.
    pub async fn commit_durable(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (seq, written) = self.enqueue(event);
        self.durable
            .until(
                // Done once the block holding the event is written and a flush after
                // it has ended (or when its write failed).
                |flushed| match written.get() {
                    Some(None) => Some(Err(AuditError::Unwritten)),
                    Some(Some(n)) if *n <= flushed => Some(Ok(seq)),
                    _ => None,
                },
                || async {
                    self.write_queued().await;
                    let covers = self.writes.load(Ordering::SeqCst);
                    self.run_before_flush().await;
                    self.store.flush().await?;
                    Ok(covers)
                },
            )
            .await
    }

    /// Tags every event with `node_id`; with `log_lines`, also logs each as a line with
    /// target `audit`.
    pub fn tagged(mut self, node_id: &str, log_lines: bool) -> Self {
        self.node_id = node_id.to_owned();
        self.log_lines = log_lines;
        self
    }

    /// Sets what every durable commit writes just before its flush (once; later calls
    /// are ignored).
    pub fn before_flush(&self, write: BeforeFlush) {
        let _ = self.before_flush.set(write);
    }

    /// Numbers, logs and queues an event. Numbers are taken under the queue's lock, so
    /// the queue (and every block written from it) is in order.
    fn enqueue(&self, event: AuditEvent) -> (u64, Written) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let event = self.number(event);
        let seq = event.seq;
        queue.events.push(event);
        (seq, queue.written.clone())
    }

    /// Numbers, times, tags and logs an event (under the queue's lock).
    fn number(&self, mut event: AuditEvent) -> AuditEvent {
        event.seq = self.sequence.next();
        event.at_ms = self.clock.now_ms();
        event.node_id.clone_from(&self.node_id);
        if self.log_lines {
            self.log_line(&event);
        }
        event
    }

    /// The event as a log line (the email as its fingerprint, secrets as their hashes).
    fn log_line(&self, event: &AuditEvent) {
        tracing::info!(
            target: "audit",
            seq = event.seq,
            at_ms = event.at_ms,
            node = %event.node_id,
            request_id = %event.request_id,
            caller = %event.caller_id,
            principal = %event.principal,
            rpc = %event.rpc,
            provider = %event.provider,
            email = %if event.email.is_empty() { String::new() } else { self.hasher.tag(&event.email) },
            target_id = %event.target,
            outcome = %event.outcome,
            secret_hashes = %event.secret_hashes.join(","),
            "audit"
        );
    }

    /// Writes every queued event, as blocks of at most `BLOCK_MAX` events and
    /// `BLOCK_BYTES` bytes; answers false if a block could not be written (its events
    /// are lost, and their committers told).
    pub async fn write_queued(&self) -> bool {
        let _writer = self.writer.lock().await;
        let Queue { events, written } =
            std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let mut ok = true;
        for block in block::encode_blocks(&events, BLOCK_MAX, BLOCK_BYTES) {
            ok &= self
                .write_block(events[block.first].seq, block.count, &block.bytes)
                .await;
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = written.set(ok.then_some(n));
        ok
    }

    /// Seals and writes one encoded block of `count` events, keyed by its first `seq`.
    async fn write_block(&self, seq: u64, count: usize, plaintext: &[u8]) -> bool {
        let key = seq.to_be_bytes();
        let result = match sealed::seal_raw(&self.sealer, Tree::Audit, &key, plaintext) {
            Ok(bytes) => (self.store.swap(Tree::Audit, &key, None, Some(&bytes)).await)
                .map_err(AuditError::from),
            Err(error) => Err(error.into()),
        };
        match result {
            Ok(_) => true,
            Err(error) => {
                metrics::counter!("credvault_audit_write_failures_total").increment(count as u64);
                tracing::error!(%error, events = count, "writing audit events failed");
                false
            }
        }
    }

    /// Writes the queued events, if any (what a settle runs first under `audit.sync =
    /// "os"`).
    pub async fn write_queued_if_any(&self) {
        if !self.queue_is_empty() {
            self.write_queued().await;
        }
    }

    /// Writes what is pending every [`WRITE_EVERY`] until `stop` (shutdown writes the
    /// rest once the calls have drained).
    pub async fn keep_written(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // With a spill, each tick is a flush round: started every 50 ms, a round that
        // takes under 50 ms leaves no event undurable longer than 100 ms.
        let every = if self.spill.is_some() {
            SPILL_FLUSH_EVERY
        } else {
            WRITE_EVERY
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = tick.tick() => {}
            }
            match &self.spill {
                Some(spill) => self.flush_spilled(spill).await,
                None => self.write_pending().await,
            }
        }
    }

    /// Writes the queued events and what the durable commits write before their flush
    /// (debits a cancelled hand-out left pending, too). Not flushed.
    pub async fn write_pending(&self) {
        self.write_queued_if_any().await;
        self.run_before_flush().await;
    }

    async fn run_before_flush(&self) {
        if let Some(before_flush) = self.before_flush.get() {
            before_flush().await;
        }
    }

    fn queue_is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .is_empty()
    }

    /// Writes the queued events, then flushes the store.
    pub async fn flush(&self) -> Result<(), AuditError> {
        if !self.write_queued().await {
            return Err(AuditError::Unwritten);
        }
        Ok(self.store.flush().await?)
    }
}
