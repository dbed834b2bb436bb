//! `credvault.v1.Credentials`: credentials for backend services — the unmasked reveal,
//! job leases, and the watch stream of credential events.

use std::{pin::Pin, sync::Arc};

use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    authorized, call_audit, convert, layer,
    status::{lease_error, reveal_error},
    text_field,
    watch::{Filter, Proof, Watch},
};
use crate::{
    accounts::AccountService,
    auth::{Authenticator, Permission},
    callers::CallerService,
    crypto::Fingerprinter,
    events::Events,
    handout::Door,
    leases::{AcquireRequest, DEFAULT_TTL_MS, Granted, LeaseService, MAX_TTL_MS, MAX_WAIT_MS},
    proto::{self, credentials_server::Credentials},
    validate::{self, FieldError},
};

/// A lease id as given: bounded and printable (ids are 32 hex digits).
fn lease_id(value: &str) -> Result<(), Status> {
    validate::text("lease_id", value, validate::MAX_ID_LEN, true)
        .map_err(super::status::field_error)
}

pub struct CredentialsApi {
    accounts: Arc<AccountService>,
    callers: Arc<CallerService>,
    leases: Arc<LeaseService>,
    door: Arc<Door>,
    events: Events,
    fingerprints: Arc<Fingerprinter>,
    /// Proves a watch's caller again while its stream lives.
    authenticator: Arc<Authenticator>,
    /// Turns true when the server starts shutting down: open watches end then.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl CredentialsApi {
    pub fn new(
        accounts: Arc<AccountService>,
        callers: Arc<CallerService>,
        leases: Arc<LeaseService>,
        door: Arc<Door>,
        events: Events,
        fingerprints: Arc<Fingerprinter>,
        authenticator: Arc<Authenticator>,
    ) -> Self {
        Self {
            accounts,
            callers,
            leases,
            door,
            events,
            fingerprints,
            authenticator,
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    /// Open watches end when `stopping` turns true (the server's shutdown).
    pub fn ending_watches_on(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::CredentialEvent, Status>> + Send>>;

/// A duration field in milliseconds: `default` when absent, within `0..=max`.
fn millis(
    field: &'static str,
    value: Option<prost_types::Duration>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, Status> {
    let ms = match value {
        None => default,
        Some(d) => d
            .seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(d.nanos / 1_000_000)),
    };
    if !(min..=max).contains(&ms) {
        return Err(lease_error(
            FieldError::Duration {
                field,
                min_ms: min,
                max_ms: max,
            }
            .into(),
        ));
    }
    Ok(ms)
}

fn lease(granted: &Granted) -> proto::Lease {
    let session = granted.account.meta.session.clone().unwrap_or_default();
    proto::Lease {
        lease_id: granted.lease.id.clone(),
        provider: granted.lease.provider.clone(),
        email: granted.lease.email.clone(),
        token: granted
            .account
            .secrets
            .token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .unwrap_or_default(),
        account_id: session.account_id,
        username: session.username,
        expire_time: session.expire_time,
        generation: session.generation,
        lease_expires_at: Some(convert::timestamp(granted.lease.expires_at_ms)),
    }
}

#[tonic::async_trait]
impl Credentials for CredentialsApi {
    #[tracing::instrument(skip_all, fields(provider = %crate::telemetry::Plain(&request.get_ref().provider), email = %self.fingerprints.tag(&request.get_ref().email.to_lowercase())))]
    async fn reveal_account(
        &self,
        request: Request<proto::RevealAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let actor = authorized(&request, Permission::Credentials, "RevealAccount")?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        audit.account(&req.provider, &req.email);
        let cost = self.callers.settings().reveal_cost;
        let account = self
            .door
            .reveal(
                &self.accounts,
                audit.call(),
                &actor,
                (&req.provider, &req.email),
                cost,
            )
            .await
            .map_err(reveal_error)?;
        let active = self.leases.active_jobs(&account.meta.key());
        Ok(Response::new(convert::revealed_account(&account, active)))
    }

    #[tracing::instrument(skip_all, fields(provider = %crate::telemetry::Plain(&request.get_ref().provider)))]
    async fn acquire_lease(
        &self,
        request: Request<proto::AcquireLeaseRequest>,
    ) -> Result<Response<proto::Lease>, Status> {
        let actor = authorized(&request, Permission::Credentials, "AcquireLease")?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        let acquire = AcquireRequest {
            provider: req.provider,
            email: Some(req.email).filter(|e| !e.is_empty()),
            ttl_ms: millis("ttl", req.ttl, DEFAULT_TTL_MS, 1_000, MAX_TTL_MS)?,
            wait_ms: millis("wait_timeout", req.wait_timeout, 0, 0, MAX_WAIT_MS)?,
            labels: req.labels.into_iter().collect(),
        };
        let granted = self
            .leases
            .acquire(&actor, acquire, audit.call())
            .await
            .map_err(lease_error)?;
        tracing::debug!(caller = %actor.id, lease = %granted.lease.id, email = %self.fingerprints.tag(&granted.lease.email), "lease acquired");
        Ok(Response::new(lease(&granted)))
    }

    #[tracing::instrument(skip_all, fields(lease = %crate::telemetry::Plain(&request.get_ref().lease_id)))]
    async fn renew_lease(
        &self,
        request: Request<proto::RenewLeaseRequest>,
    ) -> Result<Response<proto::Lease>, Status> {
        let actor = authorized(&request, Permission::Credentials, "RenewLease")?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        lease_id(&req.lease_id)?;
        let ttl = millis("ttl", req.ttl, DEFAULT_TTL_MS, 1_000, MAX_TTL_MS)?;
        audit.target(&req.lease_id);
        let granted = self
            .leases
            .renew(&actor, &req.lease_id, ttl, audit.call())
            .await
            .map_err(lease_error)?;
        Ok(Response::new(lease(&granted)))
    }

    #[tracing::instrument(skip_all, fields(lease = %crate::telemetry::Plain(&request.get_ref().lease_id)))]
    async fn release_lease(
        &self,
        request: Request<proto::ReleaseLeaseRequest>,
    ) -> Result<Response<()>, Status> {
        let actor = authorized(&request, Permission::Credentials, "ReleaseLease")?;
        lease_id(&request.get_ref().lease_id)?;
        call_audit(&request).target(&request.get_ref().lease_id);
        let req = request.into_inner();
        self.leases
            .release(&actor, &req.lease_id)
            .await
            .map_err(lease_error)?;
        tracing::debug!(caller = %actor.id, "lease released");
        Ok(Response::new(()))
    }

    type WatchCredentialsStream = EventStream;

    async fn watch_credentials(
        &self,
        request: Request<proto::WatchCredentialsRequest>,
    ) -> Result<Response<Self::WatchCredentialsStream>, Status> {
        let actor = authorized(&request, Permission::Credentials, "WatchCredentials")?;
        let audit = call_audit(&request);
        let proof = Proof::new(
            self.authenticator.clone(),
            request.metadata().as_ref(),
            layer::peer_uid(request.extensions()),
        );
        let req = request.into_inner();
        text_field("provider", &req.provider, validate::MAX_PROVIDER_LEN)?;
        text_field("email", &req.email, validate::MAX_EMAIL_LEN)?;
        let filter = Filter {
            provider: req.provider,
            email: req.email.to_lowercase(),
        };
        audit.account(&filter.provider, &filter.email);
        filter.allows(&actor, &actor)?;
        let watch = Watch {
            callers: self.callers.clone(),
            leases: self.leases.clone(),
            door: self.door.clone(),
            events: self.events.clone(),
            proof,
            filter,
            opened: actor,
            audit,
            stopping: self.stopping.clone(),
        };
        Ok(Response::new(Box::pin(ReceiverStream::new(watch.start()))))
    }

    async fn list_leases(
        &self,
        request: Request<proto::ListLeasesRequest>,
    ) -> Result<Response<proto::ListLeasesResponse>, Status> {
        let actor = super::caller(&request)?;
        let req = request.into_inner();
        text_field("provider", &req.provider, validate::MAX_PROVIDER_LEN)?;
        text_field("caller_id", &req.caller_id, validate::MAX_ID_LEN)?;
        // Admins and operators see every lease; a consumer its own.
        let everyone = actor
            .require(Permission::AccountsRead, "ListLeases")
            .is_ok();
        if !everyone {
            actor
                .require(Permission::Credentials, "ListLeases")
                .map_err(super::status::denied)?;
            if !req.caller_id.is_empty() && req.caller_id != actor.id {
                return Err(super::status::denied(crate::auth::Denied::OtherCaller));
            }
        }
        let caller = match (everyone, req.caller_id.as_str()) {
            (false, _) => Some(actor.id.as_str()),
            (true, "") => None,
            (true, id) => Some(id),
        };
        let leases = self
            .leases
            .list(caller)
            .into_iter()
            .filter(|lease| req.provider.is_empty() || lease.provider == req.provider)
            .map(|lease| proto::LeaseInfo {
                lease_id: lease.id,
                caller_id: lease.caller_id,
                provider: lease.provider,
                email: lease.email,
                acquired_at: Some(convert::timestamp(lease.acquired_at_ms)),
                expires_at: Some(convert::timestamp(lease.expires_at_ms)),
            })
            .collect();
        Ok(Response::new(proto::ListLeasesResponse { leases }))
    }

    #[tracing::instrument(skip_all, fields(lease = %crate::telemetry::Plain(&request.get_ref().lease_id)))]
    async fn revoke_lease(
        &self,
        request: Request<proto::RevokeLeaseRequest>,
    ) -> Result<Response<()>, Status> {
        let actor = authorized(&request, Permission::AccountsWrite, "RevokeLease")?;
        lease_id(&request.get_ref().lease_id)?;
        let audit = call_audit(&request);
        audit.target(&request.get_ref().lease_id);
        let lease = self
            .leases
            .revoke(&request.get_ref().lease_id)
            .await
            .map_err(lease_error)?;
        audit.account(&lease.provider, &lease.email);
        tracing::info!(actor = %actor.id, holder = %lease.caller_id, "lease revoked");
        Ok(Response::new(()))
    }
}
