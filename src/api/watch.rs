//! The WatchCredentials stream: events for the accounts in the caller's reach, each
//! checked against the caller as it is at that moment, and a rotated token handed out
//! unmasked only by the rules every other hand-out follows.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderMap, header::AUTHORIZATION};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tonic::Status;

use super::{
    convert,
    status::{auth_error, denied, handout_error},
};
use crate::{
    accounts::{AccountKey, mask},
    api::call_audit::CallAudit,
    audit::Subject,
    auth::{Authenticator, Caller, Permission, SECRET_HEADER},
    callers::CallerService,
    crypto::SecretString,
    events::{Event, EventKind, Events},
    handout::Door,
    leases::LeaseService,
    proto,
};

/// How often an idle stream proves its caller again. Changes this process makes to a
/// caller's record wake every stream at once; this bounds what is not a record change
/// here: a token reaching its expiry, a replaced bootstrap token.
const RECHECK: Duration = Duration::from_millis(500);
const WATCH_PATH: &str = "/credvault.v1.Credentials/WatchCredentials";
/// Events queued for a slow reader before it is told it fell behind.
const BUFFER: usize = 64;

/// The credential a stream was opened with, kept to prove the caller again as a new call
/// would: only the headers that carry it, never shown.
pub struct Proof {
    authenticator: Arc<Authenticator>,
    headers: HeaderMap,
    peer_uid: Option<u32>,
}

impl Proof {
    pub fn new(authenticator: Arc<Authenticator>, all: &HeaderMap, peer_uid: Option<u32>) -> Self {
        let mut headers = HeaderMap::new();
        for name in [AUTHORIZATION.as_str(), SECRET_HEADER] {
            if let Some(value) = all.get(name) {
                headers.insert(name, value.clone());
            }
        }
        Self {
            authenticator,
            headers,
            peer_uid,
        }
    }

    async fn caller(&self) -> Result<Caller, Status> {
        self.authenticator
            .authenticate(WATCH_PATH, &self.headers, self.peer_uid)
            .await
            .map_err(auth_error)
    }
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Proof([redacted])")
    }
}

/// What the stream is for: an account, a provider, or everything in reach.
pub struct Filter {
    pub provider: String,
    /// Lowercase.
    pub email: String,
}

impl Filter {
    fn wants(&self, key: &AccountKey) -> bool {
        (self.provider.is_empty() || self.provider == key.provider)
            && (self.email.is_empty() || self.email == key.email)
    }

    /// The caller may keep watching: it still has the credentials permission; a watch
    /// of one account still reaches it; a wider watch has lost none of the scopes (or
    /// the admin role) it was opened with. Answers what a new call would be refused with.
    pub fn allows(&self, caller: &Caller, opened: &Caller) -> Result<(), Status> {
        caller
            .require(Permission::Credentials, "WatchCredentials")
            .map_err(denied)?;
        if !self.provider.is_empty() && !self.email.is_empty() {
            return caller
                .require_reach(&self.provider, &self.email)
                .map_err(denied);
        }
        let narrowed = (opened.is_admin() && !caller.is_admin())
            || opened.scopes.iter().any(|s| !caller.scopes.contains(s));
        if narrowed {
            return Err(Status::permission_denied(
                "permission denied: this caller's scopes were narrowed since the watch opened; open it again to watch what they cover now",
            ));
        }
        Ok(())
    }
}

/// Resolves when `stopping` turns true; never, when nobody can turn it (no server).
async fn shutting_down(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One open stream: what it needs to check its caller and hand out tokens.
pub struct Watch {
    pub callers: Arc<CallerService>,
    pub leases: Arc<LeaseService>,
    pub door: Arc<Door>,
    pub events: Events,
    pub proof: Proof,
    pub filter: Filter,
    /// The caller as it opened the stream.
    pub opened: Caller,
    /// The call's audit record; each hand-out is audited on its own, as this call.
    pub audit: CallAudit,
    /// Turns true when the server starts shutting down.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl Watch {
    /// Starts the stream; it ends when the caller loses the right to it, falls behind,
    /// or hangs up, and ends cleanly (status OK) when the server starts shutting down,
    /// so that no open watch holds the shutdown for its grace period.
    pub fn start(self) -> mpsc::Receiver<Result<proto::CredentialEvent, Status>> {
        let (tx, rx) = mpsc::channel(BUFFER);
        // Subscribed before the call answers: no event after the open is missed.
        let events = self.events.subscribe();
        let changes = self.callers.changes();
        tokio::spawn(self.run(tx, events, changes));
        rx
    }

    async fn run(
        self,
        tx: mpsc::Sender<Result<proto::CredentialEvent, Status>>,
        mut events: tokio::sync::broadcast::Receiver<Event>,
        mut changes: tokio::sync::watch::Receiver<u64>,
    ) {
        let mut tick = tokio::time::interval(RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = self.stopping.clone();
        loop {
            let item = tokio::select! {
                () = tx.closed() => return,
                () = shutting_down(&mut stopping) => {
                    tracing::debug!(caller = %self.opened.id, "watch stream ended: shutting down");
                    return;
                }
                received = events.recv() => match received {
                    Ok(event) => match self.checked(&event).await {
                        Ok(Some(out)) => Ok(out),
                        Ok(None) => continue,
                        Err(status) => Err(status),
                    },
                    Err(RecvError::Lagged(missed)) => Err(Status::aborted(format!(
                        "the watch fell {missed} events behind; read the accounts again and watch anew"
                    ))),
                    Err(RecvError::Closed) => return,
                },
                changed = changes.changed() => match changed {
                    Ok(()) => match self.caller().await {
                        Ok(_) => continue,
                        Err(status) => Err(status),
                    },
                    Err(_) => return,
                },
                _ = tick.tick() => match self.caller().await {
                    Ok(_) => continue,
                    Err(status) => Err(status),
                },
            };
            let last = item.is_err();
            if let Err(status) = &item {
                // The message may name an account; the code says enough here.
                tracing::info!(caller = %self.opened.id, code = ?status.code(), "watch stream ended");
            }
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    }

    /// The caller proven again and still allowed this watch.
    async fn caller(&self) -> Result<Caller, Status> {
        let caller = self.proof.caller().await?;
        self.filter.allows(&caller, &self.opened)?;
        Ok(caller)
    }

    /// The event as this watcher may see it now, `None` when it is not theirs to see,
    /// or why the stream ends.
    async fn checked(&self, event: &Event) -> Result<Option<proto::CredentialEvent>, Status> {
        let caller = self.caller().await?;
        let key = &event.key;
        if !self.filter.wants(key) || caller.require_reach(&key.provider, &key.email).is_err() {
            return Ok(None);
        }
        let mut out = proto::CredentialEvent {
            provider: key.provider.clone(),
            email: key.email.clone(),
            at: Some(convert::timestamp(event.at_ms)),
            ..Default::default()
        };
        let kind = match &event.kind {
            EventKind::TokenRotated {
                generation,
                token,
                expire_time,
            } => {
                out.generation = *generation;
                out.expire_time = *expire_time;
                match self.hand_out(&caller, key, token).await {
                    Ok(()) => out.token = token.expose().to_owned(),
                    Err(reason) => {
                        out.token = mask::token(token.expose());
                        out.token_masked = true;
                        out.masked_reason = reason;
                    }
                }
                proto::credential_event::Kind::TokenRotated
            }
            EventKind::AccountDisabled => proto::credential_event::Kind::AccountDisabled,
            EventKind::AccountDeleted => proto::credential_event::Kind::AccountDeleted,
            EventKind::LeaseRevoked { lease_id } => {
                out.lease_id.clone_from(lease_id);
                proto::credential_event::Kind::LeaseRevoked
            }
        };
        out.kind = kind as i32;
        Ok(Some(out))
    }

    /// Whether `token` may go out unmasked to `caller`, with the hand-out audited (and,
    /// without a lease, paid for); else why not.
    async fn hand_out(
        &self,
        caller: &Caller,
        key: &AccountKey,
        token: &SecretString,
    ) -> Result<(), String> {
        let call = self.audit.call().another();
        let mut subject = Subject {
            provider: key.provider.clone(),
            email: key.email.clone(),
            target: String::new(),
        };
        let cost = match self.leases.held_by(key, &caller.id) {
            // The lease paid for the account's tokens while it lives.
            Some(lease_id) => {
                subject.target = lease_id;
                0
            }
            None => self.callers.settings().reveal_cost,
        };
        self.door
            .hand_out(&call, subject, &caller.id, cost, &[token.expose()])
            .await
            .map(drop)
            .map_err(|error| handout_error(error).message().to_owned())
    }
}
