//! Credits: a hand-out takes its debit in memory, never below zero counting the debits
//! not yet written; the group commit that makes the hand-out durable writes each
//! caller's sum with one compare-and-swap ([`CallerService::settle`]). When the store
//! is shared, another process may have spent from the same balance meanwhile: the
//! compare-and-swap then reads the balance afresh and writes only the debits it still
//! covers; the others are refused (their hand-outs answer nothing and owe nothing), so
//! a balance is never overspent across processes.
//!
//! A caller's debits are in one of three states: pending (taken, not yet written), in
//! flight (a settle is writing them) or written. The balance a charge sees is the
//! stored one less both pending and in-flight debits, plus the credits this node took
//! ahead ([`super::reserve`], on a shared store); a settle moves the record and the
//! in-flight sum together, under the same lock a charge reads them under, so no moment
//! shows the debit twice or not at all.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, MutexGuard, OnceLock},
};

use super::{
    CallerCredits, CallerError, CallerService, CreditError, identity::AuthError, reserve::Reserve,
};
use crate::timefmt::rfc3339_millis;

/// What a hand-out draws on. What an implementation guarantees: a charge never takes a
/// caller's balance below zero, counting every debit taken and not yet written or given
/// back, however many hand-outs (on however many nodes) charge at once; a debit is
/// written by the next `durable` call, and [`Charge::written`] then says whether it was.
pub trait Credits: Send + Sync + 'static {
    /// Refuses a caller that is disabled now.
    fn check_enabled(&self, caller_id: &str) -> Result<(), AuthError>;
    /// Takes `cost` credits, never below zero.
    fn charge(&self, caller_id: &str, cost: i64) -> Result<Charge, CallerError>;
    /// Makes every debit taken so far durable.
    fn durable(&self) -> Pin<Box<dyn Future<Output = Result<(), CallerError>> + Send + '_>>;
    /// Gives a debit back.
    fn refund<'a>(
        &'a self,
        charge: &'a Charge,
    ) -> Pin<Box<dyn Future<Output = Result<(), CallerError>> + Send + 'a>>;
    /// Held shared from a charge until its hand-out's event is spilled: no debit is
    /// written meanwhile (see [`CallerService::settle`]).
    fn spill_gate(&self) -> &tokio::sync::RwLock<()>;
}

impl Credits for CallerService {
    fn check_enabled(&self, caller_id: &str) -> Result<(), AuthError> {
        CallerService::check_enabled(self, caller_id)
    }

    fn charge(&self, caller_id: &str, cost: i64) -> Result<Charge, CallerError> {
        CallerService::charge(self, caller_id, cost)
    }

    fn durable(&self) -> Pin<Box<dyn Future<Output = Result<(), CallerError>> + Send + '_>> {
        Box::pin(self.flush())
    }

    fn refund<'a>(
        &'a self,
        charge: &'a Charge,
    ) -> Pin<Box<dyn Future<Output = Result<(), CallerError>> + Send + 'a>> {
        Box::pin(CallerService::refund(self, charge))
    }

    fn spill_gate(&self) -> &tokio::sync::RwLock<()> {
        &self.spill_gate
    }
}

/// What a caller owes, not yet written: each debit with the outcome its hand-out
/// waits for.
#[derive(Default)]
pub(super) struct PendingDebit {
    charges: Vec<(i64, Arc<OnceLock<Settled>>)>,
    /// Being written by a settle now.
    in_flight: i64,
    /// Credits this node took off the shared balance ahead (see [`super::reserve`]).
    pub(super) reserve: Reserve,
}

impl PendingDebit {
    fn amount(&self) -> i64 {
        self.charges.iter().map(|(cost, _)| cost).sum()
    }
}

pub(super) type Pending = HashMap<String, PendingDebit>;

/// What became of a debit's write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Written,
    /// Refused: the stored balance no longer covered it (another process spent from
    /// it); `remaining` is what the balance held after the debits it did cover.
    Spent {
        remaining: i64,
    },
    /// Its batch could not be written.
    Lost,
}

/// A debit taken by [`CallerService::charge`].
#[derive(Debug)]
pub struct Charge {
    caller_id: String,
    cost: i64,
    /// Set when the batch holding this debit is settled; `None` for free calls,
    /// unmetered callers, which owe nothing, and debits paid from credits taken ahead.
    written: Option<Arc<OnceLock<Settled>>>,
    /// Paid from the credits this node took ahead: already off the stored balance.
    ahead: bool,
    /// The caller's credits once this debit (and those before it) are taken.
    pub credits: Option<CallerCredits>,
}

impl Charge {
    /// Answers whether the debit is written (nothing owed counts as written). After a
    /// durable commit it is known; before, `None`.
    pub fn written(&self) -> Option<bool> {
        self.settled().map(|settled| settled == Settled::Written)
    }

    /// What became of the debit (nothing owed counts as written); `None` before the
    /// durable commit.
    pub fn settled(&self) -> Option<Settled> {
        match &self.written {
            None => Some(Settled::Written),
            Some(written) => written.get().copied(),
        }
    }

    /// The credits this debit still has to write into the stored balance: its cost
    /// while it waits for a settle, 0 when nothing is owed or it was paid ahead.
    pub fn unwritten(&self) -> i64 {
        match &self.written {
            Some(written) if written.get().is_none() => self.cost,
            _ => 0,
        }
    }

    /// For a call that owed nothing.
    pub fn free() -> Self {
        Self {
            caller_id: String::new(),
            cost: 0,
            written: None,
            ahead: false,
            credits: None,
        }
    }
}

impl CallerService {
    /// Refuses a caller that is disabled now (it may have been since its call was
    /// authenticated).
    pub fn check_enabled(&self, caller_id: &str) -> Result<(), AuthError> {
        match self.opened(caller_id) {
            Ok(Some(opened)) if !opened.record.disabled => Ok(()),
            Ok(Some(_)) => Err(AuthError::Disabled),
            Ok(None) => Err(AuthError::MissingOrInvalid),
            Err(error) => Err(error.into_auth(caller_id)),
        }
    }

    /// Whether the caller's credits may be used now: within their validity window (an
    /// unmetered caller's always are). The balance is not looked at: for free calls.
    pub fn check_credit_window(&self, caller_id: &str) -> Result<(), CallerError> {
        let opened = self
            .opened(caller_id)?
            .ok_or_else(|| CallerError::NotFound(caller_id.to_owned()))?;
        match &opened.record.credits {
            Some(credits) => Ok(credit_window(credits, self.now_ms())?),
            None => Ok(()),
        }
    }

    /// Takes `cost` credits in memory, atomically (never below zero, counting debits
    /// not yet written). The debit is written by the next [`CallerService::settle`],
    /// which a durable commit runs before its flush; [`Charge::written`] then tells
    /// whether it was. A call that cannot complete gives it back with
    /// [`CallerService::refund`].
    pub fn charge(&self, caller_id: &str, cost: i64) -> Result<Charge, CallerError> {
        // Free calls cost nothing, not even a read.
        if cost == 0 {
            return Ok(Charge::free());
        }
        let now = self.now_ms();
        let mut pending = self.pending_debits();
        let opened = self
            .opened(caller_id)?
            .ok_or_else(|| CallerError::NotFound(caller_id.to_owned()))?;
        // Unmetered: nothing to take.
        let Some(mut credits) = opened.record.credits.clone() else {
            return Ok(Charge {
                caller_id: caller_id.to_owned(),
                ..Charge::free()
            });
        };
        credit_window(&credits, now)?;
        let shared = self.shares_store();
        let debit = pending.entry(caller_id.to_owned()).or_default();
        let ahead = debit.reserve.held(Some(&credits));
        credits.remaining -= owed(debit);
        let (paid_ahead, top_up) = debit.reserve.spend(cost, shared);
        if top_up {
            self.reserves_wanted.notify_one();
        }
        if paid_ahead {
            credits.remaining += ahead - cost;
            return Ok(Charge {
                caller_id: caller_id.to_owned(),
                cost,
                written: None,
                ahead: true,
                credits: Some(credits),
            });
        }
        if credits.remaining < cost {
            return Err(CreditError::Exhausted {
                remaining: credits.remaining + ahead,
                cost,
            }
            .into());
        }
        credits.remaining += ahead - cost;
        let written = Arc::new(OnceLock::new());
        debit.charges.push((cost, written.clone()));
        Ok(Charge {
            caller_id: caller_id.to_owned(),
            cost,
            written: Some(written),
            ahead: false,
            credits: Some(credits),
        })
    }

    /// Writes every pending debit: one compare-and-swap per caller for the sum it owes,
    /// under that caller's stripe lock. The debits the stored balance no longer covers
    /// (another process spent from it) are refused, the others written. Not flushed:
    /// the durable commit that runs it flushes next.
    ///
    /// With `audit.sync = "os"`, the next start takes a spilled hand-out's debit again
    /// when the store lost its event, so a debit must never be stored without its
    /// event. A settle therefore holds the spill gate alone (each such hand-out holds
    /// it shared from its charge until its event is queued and spilled) and writes the
    /// queued events before the debits: the store keeps a debit only after its event,
    /// and a replay never charges twice.
    pub async fn settle(&self) {
        let _settling = self.settling.lock().await;
        let _gate = self.spill_gate.write().await;
        if let Some(write_events) = self.write_events.get() {
            write_events().await;
        }
        // Only callers that owe something: one whose hand-outs paid ahead needs no
        // write, and must not wait for a top-up holding its stripe.
        let owing: Vec<String> = {
            let mut pending = self.pending_debits();
            pending.retain(|_, debit| !debit.charges.is_empty() || !debit.reserve.is_empty());
            pending
                .iter()
                .filter(|(_, debit)| !debit.charges.is_empty())
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in owing {
            let _stripe = self.stripe(&id).lock().await;
            let batch = {
                let mut pending = self.pending_debits();
                let Some(debit) = pending.get_mut(&id) else {
                    continue;
                };
                // Refunded meanwhile.
                if debit.charges.is_empty() {
                    continue;
                }
                debit.in_flight = debit.amount();
                std::mem::take(&mut debit.charges)
            };
            // Which debits the balance covers, decided afresh on every read of it.
            let mut covered = vec![true; batch.len()];
            let mut left = 0;
            let result = self
                .modify_locked(&id, None, Vec::new(), |record| {
                    covered.fill(true);
                    let Some(credits) = record.credits.as_mut() else {
                        // Made unmetered since: nothing is owed.
                        return Ok(false);
                    };
                    let mut taken = 0;
                    for (n, (cost, _)) in batch.iter().enumerate() {
                        if credits.remaining - taken >= *cost {
                            taken += cost;
                        } else {
                            covered[n] = false;
                        }
                    }
                    credits.remaining -= taken;
                    left = credits.remaining;
                    Ok(taken != 0)
                })
                .await;
            if let Err(error) = &result {
                tracing::error!(caller = %id, %error, "writing debits failed; the calls that took them are refused");
            }
            {
                // On success the record that shows the debit was kept together with
                // clearing it (see `remember`); on failure nothing was taken.
                let mut pending = self.pending_debits();
                if let Some(debit) = pending.get_mut(&id) {
                    debit.in_flight = 0;
                    if debit.charges.is_empty() && debit.reserve.is_empty() {
                        pending.remove(&id);
                    }
                }
            }
            let refused = covered.iter().filter(|c| !**c).count();
            if refused > 0 && result.is_ok() {
                tracing::info!(caller = %id, refused, "debits refused: the balance was spent elsewhere");
            }
            for ((_, written), covered) in batch.iter().zip(covered) {
                let _ = written.set(match (result.is_ok(), covered) {
                    (true, true) => Settled::Written,
                    (true, false) => Settled::Spent { remaining: left },
                    (false, _) => Settled::Lost,
                });
            }
        }
    }

    /// Makes every write so far durable, pending debits included.
    pub async fn flush(&self) -> Result<(), CallerError> {
        self.settle().await;
        Ok(self.store.flush().await?)
    }

    /// Gives back a debit for something that was then not handed out: still pending, it
    /// is taken off; written, it is paid back (not flushed: the store's background flush
    /// or the next durable write makes it so); lost, there is nothing to give back.
    pub async fn refund(&self, charge: &Charge) -> Result<(), CallerError> {
        if charge.ahead {
            if let Some(debit) = self.pending_debits().get_mut(&charge.caller_id) {
                debit.reserve.give_back(charge.cost);
            }
            return Ok(());
        }
        let Some(written) = &charge.written else {
            return Ok(());
        };
        // Under the stripe lock, settle has either written this batch or not begun it.
        let _stripe = self.stripe(&charge.caller_id).lock().await;
        match written.get() {
            None => {
                if let Some(debit) = self.pending_debits().get_mut(&charge.caller_id) {
                    debit.charges.retain(|(_, w)| !Arc::ptr_eq(w, written));
                }
                Ok(())
            }
            Some(Settled::Spent { .. } | Settled::Lost) => Ok(()),
            Some(Settled::Written) => {
                self.add_to_balance_locked(&charge.caller_id, charge.cost)
                    .await?;
                Ok(())
            }
        }
    }

    /// Sets what a settle runs first to write the queued audit events (`audit.sync =
    /// "os"`; once, later calls are ignored).
    pub fn write_events_first(&self, write: crate::audit::BeforeFlush) {
        let _ = self.write_events.set(write);
    }

    /// Takes again the debits of hand-outs whose events the last run spilled (`audit.sync
    /// = "os"`) and the store lost: at start, before any call. A caller deleted or made
    /// unmetered since owes nothing; a balance is never taken below zero. Not flushed.
    pub async fn take_spilled(
        &self,
        debits: &[crate::audit::SpilledDebit],
    ) -> Result<(), CallerError> {
        let mut owed: HashMap<&str, i64> = HashMap::new();
        for debit in debits {
            *owed.entry(debit.caller_id.as_str()).or_default() += debit.credits;
        }
        for (id, sum) in owed {
            let _stripe = self.stripe(id).lock().await;
            match self.add_to_balance_locked(id, -sum).await {
                Ok(()) => {
                    tracing::warn!(caller = %id, credits = sum, "debits the store lost were taken again from the spill file")
                }
                Err(CallerError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Adds `delta` credits to a metered caller's stored balance, never below zero (an
    /// unmetered caller's is left as it is); its stripe lock held by the caller.
    async fn add_to_balance_locked(&self, id: &str, delta: i64) -> Result<(), CallerError> {
        self.modify_locked(id, None, Vec::new(), |record| {
            let Some(credits) = record.credits.as_mut() else {
                return Ok(false);
            };
            credits.remaining = credits.remaining.saturating_add(delta).max(0);
            Ok(true)
        })
        .await
        .map(|_| ())
    }

    pub(super) fn pending_debits(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a caller owes in debits not yet written.
pub(super) fn owed(debit: &PendingDebit) -> i64 {
    debit.amount() + debit.in_flight
}

/// A record that includes the in-flight debits (or a top-up's block) is being kept:
/// they are written.
pub(super) fn written(pending: &mut Pending, id: &str) {
    if let Some(debit) = pending.get_mut(id) {
        debit.in_flight = 0;
        debit.reserve.written();
    }
}

/// The credits this node holds ahead for a caller whose credits are `credits` now.
pub(super) fn held_ahead(pending: &mut Pending, id: &str, credits: &CallerCredits) -> i64 {
    pending
        .get_mut(id)
        .map_or(0, |debit| debit.reserve.held(Some(credits)))
}

/// Refuses credits outside their validity window.
fn credit_window(credits: &CallerCredits, now: i64) -> Result<(), CreditError> {
    if let Some(from) = credits.valid_from_ms.filter(|from| now < *from) {
        return Err(CreditError::NotYetValid(rfc3339_millis(from)));
    }
    if let Some(until) = credits.valid_until_ms.filter(|until| now >= *until) {
        return Err(CreditError::Expired(rfc3339_millis(until)));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
