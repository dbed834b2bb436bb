//! `credvault.v1.Audit`: the audit trail, for admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{authorized, call_audit, convert, status::audit_error, text_field};
use crate::{
    audit::{self, AuditEvent, AuditLog, Filter},
    auth::Permission,
    proto::{self, audit_server::Audit},
    validate::{self, FieldError},
};

pub struct AuditApi {
    log: Arc<AuditLog>,
}

impl AuditApi {
    pub fn new(log: Arc<AuditLog>) -> Self {
        Self { log }
    }
}

fn event(event: AuditEvent) -> proto::AuditEvent {
    proto::AuditEvent {
        seq: event.seq,
        at: Some(convert::timestamp(event.at_ms)),
        request_id: event.request_id,
        caller_id: event.caller_id,
        rpc: event.rpc,
        provider: event.provider,
        email: event.email,
        target: event.target,
        outcome: event.outcome,
        secret_hashes: event.secret_hashes,
        node_id: event.node_id,
        principal: event.principal,
    }
}

#[tonic::async_trait]
impl Audit for AuditApi {
    async fn list_events(
        &self,
        request: Request<proto::ListEventsRequest>,
    ) -> Result<Response<proto::ListEventsResponse>, Status> {
        authorized(&request, Permission::Audit, "ListEvents")?;
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => audit::DEFAULT_PAGE_SIZE,
            n if (1..=audit::MAX_PAGE_SIZE as i32).contains(&n) => n as usize,
            got => {
                return Err(super::status::field_error(FieldError::PageSize {
                    max: audit::MAX_PAGE_SIZE as u32,
                    got: i64::from(got),
                }));
            }
        };
        text_field("caller_id", &req.caller_id, validate::MAX_ID_LEN)?;
        text_field("provider", &req.provider, validate::MAX_PROVIDER_LEN)?;
        text_field("email", &req.email, validate::MAX_EMAIL_LEN)?;
        text_field("rpc", &req.rpc, validate::MAX_ID_LEN)?;
        text_field("page_token", &req.page_token, validate::MAX_ID_LEN)?;
        let filter = Filter {
            since_ms: convert::timestamp_ms("since", req.since)
                .map_err(super::status::field_error)?,
            until_ms: convert::timestamp_ms("until", req.until)
                .map_err(super::status::field_error)?,
            caller_id: req.caller_id,
            provider: req.provider,
            email: req.email,
            rpc: req.rpc,
        };
        let (events, next_page_token) = self
            .log
            .list(&filter, page_size, &req.page_token)
            .await
            .map_err(audit_error)?;
        Ok(Response::new(proto::ListEventsResponse {
            events: events.into_iter().map(event).collect(),
            next_page_token,
        }))
    }

    async fn audit_hash(
        &self,
        request: Request<proto::AuditHashRequest>,
    ) -> Result<Response<proto::AuditHashResponse>, Status> {
        authorized(&request, Permission::Audit, "AuditHash")?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        // Nothing longer, or holding control characters, is ever handed out.
        validate::text("value", &req.value, validate::MAX_TOKEN_LEN, true)
            .map_err(super::status::field_error)?;
        let hash = self.log.hash(&req.value);
        audit.target(&hash);
        let (count, matches) = self.log.find_hash(&hash).await.map_err(audit_error)?;
        Ok(Response::new(proto::AuditHashResponse {
            hash,
            events: count as i64,
            matches: matches.into_iter().map(event).collect(),
        }))
    }
}
