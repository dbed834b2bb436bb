//! `credvault.v1.Credentials`: credentials for backend services.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    authorized, convert,
    status::{account_error, caller_error, denied},
};
use crate::{
    accounts::AccountService,
    auth::Permission,
    callers::CallerService,
    crypto::Fingerprinter,
    proto::{self, credentials_server::Credentials},
};

pub struct CredentialsApi {
    accounts: Arc<AccountService>,
    callers: Arc<CallerService>,
    fingerprints: Arc<Fingerprinter>,
}

impl CredentialsApi {
    pub fn new(
        accounts: Arc<AccountService>,
        callers: Arc<CallerService>,
        fingerprints: Arc<Fingerprinter>,
    ) -> Self {
        Self {
            accounts,
            callers,
            fingerprints,
        }
    }
}

#[tonic::async_trait]
impl Credentials for CredentialsApi {
    #[tracing::instrument(skip_all, fields(provider = %request.get_ref().provider, email = %self.fingerprints.tag(&request.get_ref().email.to_lowercase())))]
    async fn reveal_account(
        &self,
        request: Request<proto::RevealAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let actor = authorized(&request, Permission::Credentials, "RevealAccount")?;
        let req = request.into_inner();
        actor
            .require_reach(&req.provider, &req.email.to_lowercase())
            .map_err(denied)?;
        // Read first: an account that does not exist costs nothing.
        let account = self
            .accounts
            .get(&req.provider, &req.email)
            .map_err(account_error)?;
        let cost = self.callers.settings().reveal_cost;
        let credits = self
            .callers
            .debit(&actor.id, cost)
            .await
            .map_err(caller_error)?;
        tracing::info!(
            caller = %actor.id,
            cost,
            remaining = credits.map(|c| c.remaining),
            "account revealed"
        );
        Ok(Response::new(convert::revealed_account(&account)))
    }
}
