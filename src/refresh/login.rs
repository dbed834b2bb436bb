//! One login: the single flight that joins concurrent requests for an account, the
//! login itself (budget, adapter, staged check, fenced token write), and what a
//! failure does to the account and its next attempt.

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::watch;

use super::{Inner, LoginOutcome, Next, RefreshError, flight, stage};

/// A login that could not board its flight (the shared store out of reach) is tried
/// again this much later.
const BOARDING_RETRY_MS: i64 = 5_000;
use crate::{
    accounts::{Account, AccountError, AccountKey, Status},
    events::{Event, EventKind},
    timefmt::rfc3339_millis,
};

impl Inner {
    /// A login, or the one in flight; a forced one that joined a flight the budget
    /// refused starts its own.
    pub(super) async fn refresh(
        self: Arc<Self>,
        key: AccountKey,
        force: bool,
    ) -> Result<Account, RefreshError> {
        match self.clone().flight(key.clone(), force).await {
            Err(RefreshError::Budget { .. }) if force => self.flight(key, true).await,
            outcome => outcome,
        }
    }

    /// Single flight: the first caller for an account starts the login, later ones
    /// wait for the same result.
    async fn flight(
        self: Arc<Self>,
        key: AccountKey,
        force: bool,
    ) -> Result<Account, RefreshError> {
        let mut rx = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    let me = self.clone();
                    let mut stop = self.stop.clone();
                    tokio::spawn(async move {
                        let flown = async {
                            match me.flights.board(&key).await {
                                Ok(boarded) => me.login(&key, force, &boarded.fence).await,
                                // The shared store is out of reach: try again later.
                                Err(error) => (
                                    Err(AccountError::Store(error).into()),
                                    Next::At(me.clock.now_ms() + BOARDING_RETRY_MS),
                                ),
                            }
                        };
                        let (outcome, next) = tokio::select! {
                            done = flown => done,
                            _ = stop.wait_for(|stop| *stop) => {
                                (Err(RefreshError::ShuttingDown), Next::Unchanged)
                            }
                        };
                        // The flight ends before the next attempt is planned: an attempt
                        // that comes due must start a new login, not join this one.
                        me.inflight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                        me.apply(&key, next);
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RefreshError::ShuttingDown)?;
        outcome.clone().unwrap_or(Err(RefreshError::ShuttingDown))
    }

    fn apply(&self, key: &AccountKey, next: Next) {
        match next {
            Next::Replan(meta) => self.plan(key, Some(&meta)),
            Next::At(due) => self.plan_at(key, due),
            Next::Unschedule => self.plan(key, None),
            Next::Unchanged => {}
        }
    }

    #[tracing::instrument(skip_all, fields(provider = %key.provider, email = %self.accounts.email_tag(&key.email)))]
    async fn login(&self, key: &AccountKey, force: bool, fence: &flight::Fence) -> LoginOutcome {
        let Ok(_permit) = self.limit.acquire().await else {
            return (Err(RefreshError::ShuttingDown), Next::Unchanged);
        };
        let account = match self.accounts.get(&key.provider, &key.email).await {
            Ok(account) => account,
            Err(error) => return (Err(error.into()), Next::Unschedule),
        };
        if account.meta.disabled {
            return (Err(RefreshError::Disabled), Next::Unschedule);
        }
        let Some((_, adapter)) = self.adapters.get(&key.provider) else {
            let error = RefreshError::NotConfigured(key.provider.clone());
            return (Err(error), Next::Unschedule);
        };
        let generation = account.meta.session.as_ref().map_or(0, |s| s.generation);
        let now = self.clock.now_ms();
        if let Some(next) = self
            .settings
            .login_allowed_at(&account.meta, now)
            .filter(|_| !force)
        {
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("credvault_logins_refused_total", "provider" => key.provider.clone(), "reason" => "budget")
                .increment(1);
            let next_at = rfc3339_millis(next);
            tracing::info!(next_login_at = %next_at, "login refused: the account's login budget is spent");
            let error = RefreshError::Budget {
                interval_secs: self.settings.min_login_interval_secs,
                next_at,
            };
            return (Err(error), Next::Replan(Box::new(account.meta)));
        }
        self.logins.fetch_add(1, Ordering::Relaxed);
        let refreshed = match adapter.refresh(&account, now).await {
            Ok(refreshed) => match stage::check(&refreshed, &account, now) {
                Ok(()) => refreshed,
                Err(reason) => {
                    return self
                        .failed(key, RefreshError::Rejected(reason), false)
                        .await;
                }
            },
            Err(error) => {
                let permanent = error.permanent;
                return self
                    .failed(key, RefreshError::Login(error), permanent)
                    .await;
            }
        };
        let stored = match self
            .accounts
            .store_refresh(key, refreshed, generation, fence.compare.as_ref())
            .await
        {
            Ok(stored) => stored,
            // An operator stored another token meanwhile; their change re-planned it.
            Err(error @ AccountError::Contended(_)) => return (Err(error.into()), Next::Unchanged),
            // Anything else (the store failing) is retried like a failed login, so the
            // account never drops out of the schedule.
            Err(error) => return self.failed(key, error.into(), false).await,
        };
        self.refreshed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("credvault_logins_total", "provider" => key.provider.clone(), "outcome" => "ok")
            .increment(1);
        self.attempts_clear(key);
        if let (Some(session), Some(token)) = (&stored.meta.session, &stored.secrets.token) {
            self.events.publish(Event {
                key: key.clone(),
                kind: EventKind::TokenRotated {
                    generation: session.generation,
                    token: token.clone(),
                    expire_time: session.expire_time,
                },
                at_ms: self.clock.now_ms(),
            });
        }
        tracing::info!(
            generation = stored.meta.session.as_ref().map_or(0, |s| s.generation),
            "upstream session refreshed"
        );
        let next = Next::Replan(Box::new(stored.meta.clone()));
        (Ok(stored), next)
    }

    /// Records a failure on the account and says when to try again (never, for a
    /// permanent one).
    async fn failed(&self, key: &AccountKey, error: RefreshError, permanent: bool) -> LoginOutcome {
        let outcome = if permanent {
            "permanent_failure"
        } else {
            "transient_failure"
        };
        metrics::counter!("credvault_logins_total", "provider" => key.provider.clone(), "outcome" => outcome)
            .increment(1);
        let (status, reason, next) = if permanent {
            tracing::warn!(reason = %error, "login refused; the account needs attention");
            self.attempts_clear(key);
            (Status::NeedsAttention, error.to_string(), Next::Unschedule)
        } else {
            let attempt = {
                let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
                let attempt = attempts.entry(key.clone()).or_insert(0);
                *attempt += 1;
                *attempt
            };
            let now = self.clock.now_ms();
            let entry = self.accounts.entry(&key.provider, &key.email).await.ok();
            // The retry waits out its backoff, and the login budget of the last login
            // that succeeded, whichever ends later.
            let budget = entry
                .as_ref()
                .and_then(|entry| self.settings.login_allowed_at(&entry.meta, now))
                .unwrap_or(now);
            let due = (now + self.settings.backoff_ms(attempt)).max(budget);
            tracing::warn!(reason = %error, attempt, "login failed; retrying later");
            // Past its token's expiry the account serves nothing: say so first.
            let lapsed = entry
                .as_ref()
                .and_then(|entry| entry.meta.session.as_ref().map(|s| s.expire_time))
                .filter(|expiry| *expiry > 0 && expiry.saturating_mul(1000) <= now)
                .map(|expiry| format!("token expired at {}; ", rfc3339_millis(expiry * 1000)))
                .unwrap_or_default();
            let reason = format!(
                "{lapsed}{error}; retry {attempt} at {}",
                rfc3339_millis(due)
            );
            (Status::Active, reason, Next::At(due))
        };
        if let Err(status_error) = self.accounts.record_status(key, status, &reason).await {
            tracing::warn!(error = %status_error, "recording the login failure on the account failed");
        }
        (Err(error), next)
    }
}
