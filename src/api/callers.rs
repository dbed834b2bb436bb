//! `credvault.v1.Callers`: credvault's own identities, keys, tokens and sessions.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    authorized, call_audit, caller, convert,
    status::{caller_error, denied},
    text_field,
};
use crate::{
    auth::{Credential, Permission},
    callers::{CallerError, CallerService, CallerUpdate, NewCaller, TokenError},
    crypto::SecretString,
    leases::LeaseService,
    proto::{self, callers_server::Callers},
    validate::{self, FieldError},
};

/// ListCallers' page sizes.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: i32 = 1000;

pub struct CallersApi {
    callers: Arc<CallerService>,
    /// Ends a deleted caller's leases.
    leases: Option<Arc<LeaseService>>,
}

impl CallersApi {
    pub fn new(callers: Arc<CallerService>) -> Self {
        Self {
            callers,
            leases: None,
        }
    }

    /// DeleteCaller ends the deleted caller's leases here.
    pub fn ending_leases_with(mut self, leases: Arc<LeaseService>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// The caller an admin call names: by id, or else by email (one of the two).
    fn named(&self, caller_id: &str, email: &str) -> Result<String, Status> {
        text_field("caller_id", caller_id, validate::MAX_ID_LEN)?;
        text_field("email", email, validate::MAX_EMAIL_LEN)?;
        match (caller_id, email) {
            ("", "") => Err(invalid(FieldError::OneOf("caller_id", "email"))),
            ("", email) => Ok(self.callers.find_by_email(email).map_err(caller_error)?.id),
            (id, _) => Ok(id.to_owned()),
        }
    }

    fn info(&self, id: &str) -> Result<proto::CallerInfo, Status> {
        let record = self.callers.get(id).map_err(caller_error)?;
        Ok(convert::caller_info(&record, self.callers.now_ms()))
    }
}

fn invalid(error: FieldError) -> Status {
    caller_error(CallerError::Invalid(error))
}

#[tonic::async_trait]
impl Callers for CallersApi {
    #[tracing::instrument(skip_all)]
    async fn create_caller(
        &self,
        request: Request<proto::CreateCallerRequest>,
    ) -> Result<Response<proto::CreateCallerResponse>, Status> {
        let actor = caller(&request)?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        let input = NewCaller {
            email: req.email,
            secret: SecretString::from(req.secret),
            name: req.name,
            roles: convert::roles(&req.roles).map_err(invalid)?,
            scopes: req.scopes,
        };
        let created = self
            .callers
            .create(&actor, input)
            .await
            .map_err(caller_error)?;
        tracing::info!(actor = %actor.id, caller = %created.caller.id, key_id = %created.key_id, "API key created");
        audit.target(&created.caller.id);
        audit.handed_out(created.api_key.expose());
        Ok(Response::new(proto::CreateCallerResponse {
            caller_id: created.caller.id.clone(),
            api_key: created.api_key.expose().to_owned(),
            key_id: created.key_id,
            caller: Some(convert::caller_info(&created.caller, self.callers.now_ms())),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn activate_caller(
        &self,
        request: Request<proto::ActivateCallerRequest>,
    ) -> Result<Response<proto::CallerInfo>, Status> {
        let actor = caller(&request)?;
        let Credential::ApiKey { key_id, .. } = &actor.credential else {
            return Err(Status::failed_precondition(
                "ActivateCaller is called with the new API key: authorization: Bearer <api key> and x-credvault-secret: <secret>",
            ));
        };
        call_audit(&request).target(key_id);
        let record = self
            .callers
            .activate(&actor.id, key_id)
            .await
            .map_err(caller_error)?;
        tracing::info!(caller = %actor.id, key_id = %key_id, "API key activated");
        Ok(Response::new(convert::caller_info(
            &record,
            self.callers.now_ms(),
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn get_caller_info(
        &self,
        request: Request<proto::GetCallerInfoRequest>,
    ) -> Result<Response<proto::CallerInfo>, Status> {
        let actor = caller(&request)?;
        Ok(Response::new(self.info(&actor.id)?))
    }

    #[tracing::instrument(skip_all)]
    async fn create_session(
        &self,
        request: Request<proto::CreateSessionRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        let actor = caller(&request)?;
        if actor.credential != Credential::Basic {
            return Err(Status::unauthenticated(
                "CreateSession needs authorization: Basic base64(email:secret)",
            ));
        }
        let (jwt, claims, record) = self
            .callers
            .create_session(&actor.id)
            .await
            .map_err(caller_error)?;
        tracing::info!(caller = %actor.id, jti = %claims.jti, "session created");
        let audit = call_audit(&request);
        audit.target(&claims.jti);
        audit.handed_out(&jwt);
        Ok(Response::new(proto::Session {
            jwt,
            expires_at: Some(convert::timestamp(claims.exp * 1000)),
            profile: Some(convert::profile(&record, &actor)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn issue_token(
        &self,
        request: Request<proto::IssueTokenRequest>,
    ) -> Result<Response<proto::IssueTokenResponse>, Status> {
        let actor = caller(&request)?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        text_field("caller_id", &req.caller_id, validate::MAX_ID_LEN)?;
        let target = actor.target(&req.caller_id).map_err(denied)?;
        if target == actor.id && matches!(actor.credential, Credential::Kubernetes { .. }) {
            return Err(Status::permission_denied(
                "IssueToken for yourself needs one of credvault's own credentials: a ServiceAccount token is not traded for a one-year JWT (its pod's token is the credential)",
            ));
        }
        let (jwt, claims) = self
            .callers
            .issue_token(target)
            .await
            .map_err(caller_error)?;
        tracing::info!(actor = %actor.id, caller = %target, jti = %claims.jti, "token issued");
        audit.target(&claims.jti);
        audit.handed_out(&jwt);
        Ok(Response::new(proto::IssueTokenResponse {
            jwt,
            jti: claims.jti,
            expires_at: Some(convert::timestamp(claims.exp * 1000)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<()>, Status> {
        let actor = caller(&request)?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        text_field("jwt", &req.jwt, validate::MAX_TOKEN_LEN)?;
        text_field("jti", &req.jti, validate::MAX_ID_LEN)?;
        text_field("caller_id", &req.caller_id, validate::MAX_ID_LEN)?;
        let (owner, jti) = match (req.jwt.as_str(), req.jti.as_str()) {
            ("", "") | (_, "") if req.jwt.is_empty() => {
                return Err(invalid(FieldError::OneOf("jwt", "jti")));
            }
            (jwt, "") => match self.callers.token_keys().verify(jwt, self.callers.now_ms()) {
                Ok(claims) => (claims.sub, claims.jti),
                // An expired token needs no revoking.
                Err(TokenError::Expired) => return Ok(Response::new(())),
                Err(TokenError::Invalid) => return Err(invalid(FieldError::ForeignJwt)),
            },
            ("", jti) => (req.caller_id.clone(), jti.to_owned()),
            _ => return Err(invalid(FieldError::OneOf("jwt", "jti"))),
        };
        audit.target(&jti);
        let owner = actor.target(&owner).map_err(denied)?;
        self.callers
            .revoke(owner, &jti)
            .await
            .map_err(caller_error)?;
        tracing::info!(actor = %actor.id, caller = %owner, jti = %jti, "token revoked");
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let actor = caller(&request)?;
        text_field(
            "caller_id",
            &request.get_ref().caller_id,
            validate::MAX_ID_LEN,
        )?;
        let target = actor.target(&request.get_ref().caller_id).map_err(denied)?;
        let tokens = self.callers.list_tokens(target).map_err(caller_error)?;
        Ok(Response::new(proto::ListTokensResponse {
            tokens: tokens.iter().map(convert::token_info).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_caller(
        &self,
        request: Request<proto::UpdateCallerRequest>,
    ) -> Result<Response<proto::CallerInfo>, Status> {
        let actor = authorized(&request, Permission::ManageCallers, "UpdateCaller")?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        let id = self.named(&req.caller_id, &req.email)?;
        audit.target(&id);
        let update = CallerUpdate {
            roles: req
                .set_roles
                .then(|| convert::roles(&req.roles))
                .transpose()
                .map_err(invalid)?,
            scopes: req.set_scopes.then_some(req.scopes),
            groups: req.set_groups.then_some(req.groups),
            name: req.name,
            disabled: req.disabled,
            unmetered: req.unmetered,
            add_credits: req.add_credits,
            valid_from_ms: convert::timestamp_ms("credits_valid_from", req.credits_valid_from)
                .map_err(invalid)?,
            valid_until_ms: convert::timestamp_ms("credits_valid_until", req.credits_valid_until)
                .map_err(invalid)?,
            remove_keys: req.remove_api_keys,
            expected_version: req.expected_version,
        };
        let record = self
            .callers
            .update(&id, update)
            .await
            .map_err(caller_error)?;
        tracing::info!(actor = %actor.id, caller = %id, version = record.version, "caller updated");
        Ok(Response::new(convert::caller_info(
            &record,
            self.callers.now_ms(),
        )))
    }

    async fn list_callers(
        &self,
        request: Request<proto::ListCallersRequest>,
    ) -> Result<Response<proto::ListCallersResponse>, Status> {
        authorized(&request, Permission::ManageCallers, "ListCallers")?;
        let req = request.into_inner();
        text_field("page_token", &req.page_token, validate::MAX_ID_LEN)?;
        let limit = match req.page_size {
            0 => DEFAULT_PAGE,
            n if (1..=MAX_PAGE).contains(&n) => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "page_size must be between 1 and {MAX_PAGE} (got {n})"
                )));
            }
        };
        let role = match req.role {
            0 => None,
            value => Some(
                convert::roles(&[value])
                    .map_err(invalid)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| invalid(FieldError::UnknownRole(value)))?,
            ),
        };
        let (records, more) = self
            .callers
            .list(&req.page_token, limit, role)
            .map_err(caller_error)?;
        let now = self.callers.now_ms();
        let next_page_token = match (more, records.last()) {
            (true, Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListCallersResponse {
            callers: records
                .iter()
                .map(|record| convert::caller_info(record, now))
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_caller(
        &self,
        request: Request<proto::DeleteCallerRequest>,
    ) -> Result<Response<()>, Status> {
        let actor = authorized(&request, Permission::ManageCallers, "DeleteCaller")?;
        let audit = call_audit(&request);
        let req = request.into_inner();
        let id = self.named(&req.caller_id, &req.email)?;
        audit.target(&id);
        self.callers.delete(&id).await.map_err(caller_error)?;
        let leases = match &self.leases {
            Some(leases) => leases.end_caller(&id).await,
            None => 0,
        };
        tracing::info!(actor = %actor.id, caller = %id, leases_ended = leases, "caller deleted");
        Ok(Response::new(()))
    }
}
