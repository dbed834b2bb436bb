//! AcquireLease: choosing an account with a free slot, queueing when none is, logging
//! an account in when only its token holds it back, and saying why nothing can serve.

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::Notify;

use super::{
    AcquireRequest, Granted, LeaseError, LeaseRecord, LeaseService,
    refusal::{Cause, NoToken, Unserved, no_token},
    waiters::QueueKey,
};
use crate::{
    accounts::{AccountKey, AccountMeta, Entry, Status},
    audit::Call,
    auth::Caller,
    crypto::{RngError, random_below, random_bytes},
    providers::ProviderKind,
    timefmt::rfc3339_millis,
    validate,
};

/// How an account's token stands for a lease now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// Valid for at least `min_token_validity_secs` (or an API-key account, or a token
    /// whose expiry is unknown).
    Ready,
    /// Valid now, for less than that: served once a login has been tried.
    Short,
    /// Missing or expired.
    Invalid,
}

struct Candidate {
    entry: Arc<Entry>,
    token: Token,
}

impl Candidate {
    fn max_jobs(&self) -> usize {
        self.entry.meta.max_jobs as usize
    }

    /// Whether it may be given now: a ready token, or one still valid once this
    /// request tried a login (or when none can be made).
    fn usable(&self, tried_login: bool) -> bool {
        match self.token {
            Token::Ready => true,
            Token::Short => tried_login,
            Token::Invalid => false,
        }
    }
}

/// The accounts an AcquireLease may use, and those it may not (disabled, needing
/// attention).
struct Pool {
    candidates: Vec<Candidate>,
    unserved: Vec<Cause>,
}

impl LeaseService {
    /// A lease for `caller`. Its audit event (with the token's hash) is written before
    /// the lease is made durable; when it cannot be, nothing is handed out.
    pub async fn acquire(
        &self,
        caller: &Caller,
        request: AcquireRequest,
        call: &Call,
    ) -> Result<Granted, LeaseError> {
        validate::text(
            "provider",
            &request.provider,
            validate::MAX_PROVIDER_LEN,
            true,
        )?;
        let email = request.email.as_deref().map(str::to_lowercase);
        let queue: QueueKey = (request.provider.clone(), email.clone());
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(request.wait_ms.max(0) as u64);
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let mut queued = false;
        // Set once this request has tried a login (at most one): the account and how
        // it failed, if it did.
        let mut login: Option<(AccountKey, Option<String>)> = None;
        let outcome = loop {
            let now = self.clock.now_ms();
            let Pool {
                candidates,
                unserved,
            } = match self.pool(caller, &request, email.as_deref(), now).await {
                Ok(pool) => pool,
                Err(error) => break Err(error),
            };
            // A provider credvault cannot log in has nothing better to offer than the
            // token it has.
            let tried_login = login.is_some() || !self.refresher.refreshes(&request.provider);
            let waiting = tokio::time::Instant::now() < deadline;
            // Read before choosing: a slot freed after it changes it.
            let version = self.slots.version();
            let choice = if self.waiters.may_take(&queue, ticket) {
                self.choose(&candidates, tried_login)
            } else {
                None
            };
            if let Some(candidate) = choice {
                let id = match lease_id() {
                    Ok(id) => id,
                    Err(error) => break Err(error.into()),
                };
                let key = &candidate.entry.key;
                let record = LeaseRecord {
                    id,
                    caller_id: caller.id.clone(),
                    provider: key.provider.clone(),
                    email: key.email.clone(),
                    acquired_at_ms: now,
                    expires_at_ms: now + request.ttl_ms,
                };
                match self.slots.take(record.clone(), candidate.max_jobs()).await {
                    Ok(true) => {
                        self.wake_reaper_for(record.expires_at_ms);
                        if queued {
                            // The next in line may find another slot free.
                            self.waiters.leave(&queue, ticket);
                            queued = false;
                        }
                        break self.complete(record, call).await;
                    }
                    // Taken by someone else meanwhile: look again.
                    Ok(false) => continue,
                    Err(error) => break Err(error),
                }
            }
            if waiting && !queued {
                self.waiters.enqueue(&queue, ticket, wake.clone());
                queued = true;
            }
            // Accounts held back only by their token (missing, expired or about to):
            // log one in (joining a login in flight; the login budget and the backoff
            // apply) and look again.
            if !tried_login {
                let stale = candidates
                    .iter()
                    .find(|c| {
                        c.token != Token::Ready && self.slots.held(&c.entry.key) < c.max_jobs()
                    })
                    .map(|c| c.entry.key.clone());
                if let Some(key) = stale {
                    // Backing off after failed logins (`Ok(false)`), the last failure is
                    // on the account's status reason, which a refusal reads.
                    let failure = match self.refresher.refresh_unless_backing_off(&key).await {
                        Ok(_) => None,
                        Err(error) => {
                            tracing::info!(reason = %error, "refreshing a token for a lease failed");
                            Some(error.to_string())
                        }
                    };
                    login = Some((key, failure));
                    continue;
                }
            }
            // The accounts that can serve, their slots taken or not: those with a token
            // valid now.
            let serving: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| c.token != Token::Invalid)
                .collect();
            if serving.is_empty() {
                break Err(LeaseError::CannotServe(self.unserved(
                    &request.provider,
                    email.as_deref(),
                    unserved,
                    &candidates,
                    login.as_ref(),
                    now,
                )));
            }
            if !waiting {
                let keys: Vec<&AccountKey> = serving.iter().map(|c| &c.entry.key).collect();
                let (executing, first_end) = self.load_of(&keys);
                let retry_after_secs = first_end.map_or(1, |end| ((end - now) / 1000).max(1));
                let on = match email.as_deref() {
                    Some(email) => format!("account {}/{email}", request.provider),
                    None => format!("{} accounts", request.provider),
                };
                break Err(LeaseError::Busy {
                    on,
                    executing,
                    retry_after_secs,
                });
            }
            // A slot freed since the choice was made: look again now.
            if self.slots.version() != version {
                continue;
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        };
        if queued {
            self.waiters.leave(&queue, ticket);
        }
        outcome
    }

    /// The accounts this request may be given, with how their tokens stand, and why
    /// the others in its scope cannot serve.
    async fn pool(
        &self,
        caller: &Caller,
        request: &AcquireRequest,
        email: Option<&str>,
        now: i64,
    ) -> Result<Pool, LeaseError> {
        let kind = self.providers.get(&request.provider).map(|p| p.kind);
        let entries = match email {
            Some(email) => {
                caller.require_reach(&request.provider, email)?;
                vec![self.accounts.entry(&request.provider, email).await?]
            }
            None => self.accounts.provider_entries(&request.provider)?,
        };
        let ready_until = now + self.settings.min_token_validity_secs.saturating_mul(1000);
        // Checked once for the provider (a bare provider scope, or an admin); account
        // by account when the caller's scopes reach only part of it. The entry's own
        // provider is compared too, so the shortcut covers exactly what
        // `require_reach` would.
        let reaches_all = caller.reaches_provider(&request.provider);
        let mut pool = Pool {
            candidates: Vec::new(),
            unserved: Vec::new(),
        };
        for entry in entries {
            let m = &entry.meta;
            let wanted = request
                .labels
                .iter()
                .all(|(k, v)| m.labels.get(k) == Some(v))
                && ((reaches_all && m.provider == request.provider)
                    || caller.require_reach(&m.provider, &m.email).is_ok());
            if !wanted {
                continue;
            }
            if m.effective_status() == Status::Disabled {
                pool.unserved.push(Cause::Disabled);
                continue;
            }
            if m.status == Status::NeedsAttention {
                pool.unserved
                    .push(Cause::NeedsAttention(m.status_reason.clone()));
                continue;
            }
            let token = if kind == Some(ProviderKind::ApiKey) {
                Token::Ready
            } else {
                token_state(m, now, ready_until)
            };
            pool.candidates.push(Candidate { entry, token });
        }
        if pool.candidates.is_empty() && pool.unserved.is_empty() && email.is_none() {
            return Err(LeaseError::NoAccounts(request.provider.clone()));
        }
        Ok(pool)
    }

    /// Why no account can serve: the causes found while pooling, and for accounts
    /// without a valid token, why none could be had.
    fn unserved(
        &self,
        provider: &str,
        email: Option<&str>,
        mut causes: Vec<Cause>,
        candidates: &[Candidate],
        login: Option<&(AccountKey, Option<String>)>,
        now: i64,
    ) -> Unserved {
        let refreshes = self.refresher.refreshes(provider);
        for candidate in candidates {
            let meta = &candidate.entry.meta;
            let expired_at = meta
                .session
                .as_ref()
                .filter(|s| s.expire_time > 0)
                .map(|s| rfc3339_millis(s.expire_time.saturating_mul(1000)));
            let budget = self
                .refresher
                .settings()
                .login_allowed_at(meta, now)
                .map(rfc3339_millis);
            // This request's own failed login, else the last one the engine recorded.
            let failure = login
                .filter(|(key, _)| *key == candidate.entry.key)
                .and_then(|(_, failure)| failure.as_deref())
                .or_else(|| Some(last_failure(&meta.status_reason)).filter(|r| !r.is_empty()));
            let why = if !refreshes {
                NoToken::CannotLogIn
            } else if let Some(until) = &budget {
                NoToken::BudgetSpent { until }
            } else if let Some(reason) = failure {
                NoToken::LoginFailed {
                    expired_at: expired_at.as_deref(),
                    reason,
                }
            } else {
                NoToken::NotTried
            };
            causes.push(Cause::NoToken(no_token(provider, why)));
        }
        Unserved {
            provider: provider.to_owned(),
            email: email.map(str::to_owned),
            causes,
        }
    }

    /// Reads the token to hand out for a lease whose slot is taken, and hands it out.
    /// Any failure gives the slot back.
    async fn complete(&self, record: LeaseRecord, call: &Call) -> Result<Granted, LeaseError> {
        let cost = self.callers.settings().lease_cost;
        let result = async {
            let account = self.accounts.get(&record.provider, &record.email).await?;
            let token: Vec<&str> = account.secrets.token.iter().map(|t| t.expose()).collect();
            // The door's one flush makes the lease durable too, with the debit and the
            // audit event; when it fails, the credits are paid back.
            self.door
                .hand_out(call, record.subject(), &record.caller_id, cost, &token)
                .await?;
            Ok(account)
        }
        .await;
        match result {
            Ok(account) => Ok(Granted {
                lease: record,
                account,
            }),
            Err(error) => {
                // Nothing was handed out: the slot is freed.
                self.end(&record.id).await;
                Err(error)
            }
        }
    }

    /// The least loaded usable account with a free slot; random among ties. The loads
    /// are read together, under the slot table's lock once.
    fn choose<'a>(&self, candidates: &'a [Candidate], tried_login: bool) -> Option<&'a Candidate> {
        let usable: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.usable(tried_login))
            .collect();
        let keys: Vec<&AccountKey> = usable.iter().map(|c| &c.entry.key).collect();
        let held = self.slots.held_each(&keys);
        let mut least = usize::MAX;
        let mut tied: Vec<&Candidate> = Vec::new();
        for (candidate, load) in usable.into_iter().zip(held) {
            if load >= candidate.max_jobs() || load > least {
                continue;
            }
            if load < least {
                least = load;
                tied.clear();
            }
            tied.push(candidate);
        }
        if tied.is_empty() {
            return None;
        }
        Some(tied[random_below(tied.len() as u64) as usize])
    }

    /// Jobs running on these accounts, and when the first of them ends.
    fn load_of(&self, keys: &[&AccountKey]) -> (usize, Option<i64>) {
        let mut running = 0;
        let mut first_end: Option<i64> = None;
        for key in keys {
            for lease in self.slots.leases_of(key) {
                running += 1;
                first_end =
                    Some(first_end.map_or(lease.expires_at_ms, |at| at.min(lease.expires_at_ms)));
            }
        }
        (running, first_end)
    }
}

/// The failure an account's status reason records, without the "token expired at …; "
/// the engine puts first (the refusal says that its own way).
fn last_failure(status_reason: &str) -> &str {
    status_reason
        .split_once("; ")
        .filter(|(head, _)| head.starts_with("token expired at "))
        .map_or(status_reason, |(_, rest)| rest)
}

/// How the account's token stands: ready when valid until `ready_until` (or its
/// expiry is unknown), short when valid only now, else invalid.
fn token_state(meta: &AccountMeta, now: i64, ready_until: i64) -> Token {
    let Some(session) = meta.session.as_ref() else {
        return Token::Invalid;
    };
    let expiry = session.expire_time.saturating_mul(1000);
    match session.expire_time {
        0 => Token::Ready,
        _ if expiry >= ready_until => Token::Ready,
        _ if expiry > now => Token::Short,
        _ => Token::Invalid,
    }
}

fn lease_id() -> Result<String, RngError> {
    let mut bytes = [0u8; 12];
    random_bytes(&mut bytes)?;
    Ok(format!("l_{}", crate::hex::encode(&bytes)))
}
