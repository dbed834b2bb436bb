//! Credits taken ahead, on a shared store. Every debit written as it is made costs a
//! compare-and-swap on the caller's record in etcd, and every hand-out of one caller
//! waits for it (one key, one raft write at a time). So while a balance is large, each
//! node takes a block of credits off it ahead of its hand-outs (one write for
//! [`AHEAD_CALLS`] hand-outs) and spends from that block in memory; the hand-out's
//! audit event is still durable before its answer, and the block is already off the
//! stored balance, so nothing is ever overspent.
//!
//! - A block is taken only while the stored balance stays at least [`ONLY_ABOVE`]
//!   blocks above what is taken; below that, every debit is written as it is made, so
//!   near its end a balance grants exactly what it holds, across nodes.
//! - A node tops its block up in the background when half of it is spent, so hand-outs
//!   do not wait for the write.
//! - Credits taken away by an admin (the caller's `total` lowered) or a caller made
//!   unmetered drop the block; a node that stops gives its block back; a node that is
//!   killed loses it (under-spent, never overspent).

use std::sync::Arc;

use tokio::sync::watch;

use super::{CallerCredits, CallerService, credits::owed};

/// Hand-outs a block pays for ahead.
pub const AHEAD_CALLS: i64 = 64;
/// Blocks the stored balance must still hold after one is taken.
pub const ONLY_ABOVE: i64 = 32;

/// A caller's block on this node.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Reserve {
    /// Taken off the stored balance, not yet spent.
    credits: i64,
    /// The caller's `total` when it was taken; lowered since, the block is dropped.
    total: i64,
    /// The cost of the charge that last drew on it: a block is [`AHEAD_CALLS`] of them.
    unit: i64,
    /// Being taken by a top-up now.
    adding: i64,
    /// A top-up is due.
    wanted: bool,
}

impl Reserve {
    /// What is left of the block for a caller whose credits are `credits` now.
    pub(super) fn held(&mut self, credits: Option<&CallerCredits>) -> i64 {
        match credits {
            Some(credits) if credits.total >= self.total => self.credits,
            _ => {
                self.credits = 0;
                0
            }
        }
    }

    /// Spends `cost` from the block when it covers it; answers whether it did, and
    /// whether a top-up should now be asked for.
    pub(super) fn spend(&mut self, cost: i64, shared: bool) -> (bool, bool) {
        if self.credits < cost || cost <= 0 {
            return (false, self.want(cost, shared));
        }
        self.credits -= cost;
        (true, self.want(cost, shared))
    }

    /// Marks a top-up due when the block is under half of one (once).
    fn want(&mut self, cost: i64, shared: bool) -> bool {
        if !shared || self.wanted || self.credits * 2 >= AHEAD_CALLS * cost.max(1) {
            return false;
        }
        self.unit = cost.max(1);
        self.wanted = true;
        true
    }

    /// A refunded hand-out's credits, back into the block.
    pub(super) fn give_back(&mut self, cost: i64) {
        self.credits = self.credits.saturating_add(cost);
    }

    /// A write of the record by this node is kept: what a top-up was taking is held.
    pub(super) fn written(&mut self) {
        self.credits += std::mem::take(&mut self.adding);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.credits == 0 && self.adding == 0 && !self.wanted
    }
}

impl CallerService {
    /// Tops up the blocks of callers spending on this node, whenever one is asked for,
    /// until `stop`. Only on a shared store do charges ask.
    pub async fn keep_reserves(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = self.reserves_wanted.notified() => {}
            }
            self.top_up().await;
        }
    }

    /// Takes a block for every caller whose top-up is due, one write each, while the
    /// stored balance stays far above it.
    pub async fn top_up(&self) {
        let due: Vec<(String, i64)> = self
            .pending_debits()
            .iter_mut()
            .filter(|(_, debit)| debit.reserve.wanted)
            .map(|(id, debit)| {
                debit.reserve.wanted = false;
                (id.clone(), debit.reserve.unit)
            })
            .collect();
        for (id, unit) in due {
            let _stripe = self.stripe(&id).lock().await;
            let block = AHEAD_CALLS * unit;
            let result = self
                .modify_locked(&id, None, Vec::new(), |record| {
                    let mut pending = self.pending_debits();
                    let debit = pending.entry(id.clone()).or_default();
                    debit.reserve.adding = 0;
                    let Some(credits) = record.credits.as_mut() else {
                        return Ok(false);
                    };
                    let add = block - debit.reserve.held(Some(credits));
                    let after = credits.remaining - owed(debit) - add;
                    if add <= 0 || after < ONLY_ABOVE * block {
                        return Ok(false);
                    }
                    credits.remaining -= add;
                    debit.reserve.adding = add;
                    debit.reserve.total = credits.total;
                    Ok(true)
                })
                .await;
            // Kept, the write moved `adding` into the block (`remember`); otherwise
            // nothing was taken.
            if let Some(debit) = self.pending_debits().get_mut(&id) {
                debit.reserve.adding = 0;
            }
            if let Err(error) = result {
                tracing::warn!(caller = %id, %error, "taking credits ahead failed; debits are written as they are made");
            }
        }
    }

    /// Gives every block back to its caller's stored balance (at shutdown). Blocks
    /// whose credits were taken away meanwhile are dropped.
    pub async fn give_back_reserves(&self) {
        let held: Vec<(String, i64)> = {
            let mut pending = self.pending_debits();
            pending
                .iter_mut()
                .filter_map(|(id, debit)| {
                    let credits = self.opened(id).ok().flatten()?.record.credits.clone();
                    let held = debit.reserve.held(credits.as_ref());
                    debit.reserve.credits = 0;
                    (held > 0).then(|| (id.clone(), held))
                })
                .collect()
        };
        for (id, held) in held {
            let given = self
                .modify(&id, None, Vec::new(), |record| {
                    let Some(credits) = record.credits.as_mut() else {
                        return Ok(false);
                    };
                    credits.remaining = credits.remaining.saturating_add(held);
                    Ok(true)
                })
                .await;
            if let Err(error) = given {
                tracing::error!(caller = %id, credits = held, %error, "credits taken ahead could not be given back; they are lost");
            }
        }
    }
}
