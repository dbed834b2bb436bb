//! `credvault.v1.Accounts`: convert, call the account service, convert back.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    authorized, call_audit, convert,
    status::{account_error, refresh_error},
};
use crate::{
    accounts::{Account, AccountKey, AccountService, AccountUpdate, NewAccount},
    auth::Permission,
    crypto::Fingerprinter,
    events::{Event, EventKind, Events},
    leases::LeaseService,
    proto::{self, accounts_server::Accounts},
    refresh::Refresher,
};

pub struct AccountsApi {
    accounts: Arc<AccountService>,
    refresher: Arc<Refresher>,
    leases: Arc<LeaseService>,
    events: Events,
    fingerprints: Arc<Fingerprinter>,
}

impl AccountsApi {
    pub fn new(
        accounts: Arc<AccountService>,
        refresher: Arc<Refresher>,
        leases: Arc<LeaseService>,
        events: Events,
        fingerprints: Arc<Fingerprinter>,
    ) -> Self {
        Self {
            accounts,
            refresher,
            leases,
            events,
            fingerprints,
        }
    }

    fn view(&self, account: &Account) -> proto::Account {
        convert::masked_account(account, self.leases.active_jobs(&account.meta.key()))
    }

    /// Ends the leases of an account that can no longer be used, and tells watchers.
    async fn retire(&self, key: &AccountKey, kind: EventKind) {
        self.leases.end_account(key).await;
        self.events.publish(Event {
            key: key.clone(),
            kind,
            at_ms: self.leases.now_ms(),
        });
    }

    fn email_tag(&self, email: &str) -> String {
        self.fingerprints.tag(&email.to_lowercase())
    }
}

#[tonic::async_trait]
impl Accounts for AccountsApi {
    #[tracing::instrument(skip_all, fields(provider = %crate::telemetry::Plain(&request.get_ref().provider), email = %self.email_tag(&request.get_ref().email)))]
    async fn create_account(
        &self,
        request: Request<proto::CreateAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let caller = authorized(&request, Permission::AccountsWrite, "CreateAccount")?;
        call_audit(&request).account(&request.get_ref().provider, &request.get_ref().email);
        let req = request.into_inner();
        let input = NewAccount {
            provider: req.provider,
            email: req.email,
            password: convert::secret(req.password),
            api_key: convert::secret(req.api_key),
            secret: convert::secret(req.secret),
            max_jobs: i64::from(req.max_jobs),
            session: convert::session(req.jwt),
            labels: req.labels.into_iter().collect(),
            disabled: req.disabled,
        };
        let account = self.refresher.admit(input).await.map_err(account_error)?;
        tracing::info!(caller = %caller.id, version = account.meta.version, "account created");
        Ok(Response::new(self.view(&account)))
    }

    #[tracing::instrument(skip_all, fields(provider = %crate::telemetry::Plain(&request.get_ref().provider), email = %self.email_tag(&request.get_ref().email)))]
    async fn get_account(
        &self,
        request: Request<proto::GetAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        authorized(&request, Permission::AccountsRead, "GetAccount")?;
        let req = request.into_inner();
        let account = self
            .accounts
            .get(&req.provider, &req.email)
            .await
            .map_err(account_error)?;
        Ok(Response::new(self.view(&account)))
    }

    #[tracing::instrument(skip_all, fields(provider = %crate::telemetry::Plain(&request.get_ref().provider)))]
    async fn list_accounts(
        &self,
        request: Request<proto::ListAccountsRequest>,
    ) -> Result<Response<proto::ListAccountsResponse>, Status> {
        authorized(&request, Permission::AccountsRead, "ListAccounts")?;
        let req = request.into_inner();
        let page = self
            .accounts
            .list(&req.provider, i64::from(req.page_size), &req.page_token)
            .await
            .map_err(account_error)?;
        Ok(Response::new(proto::ListAccountsResponse {
            accounts: page.accounts.iter().map(|a| self.view(a)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(provider = %crate::telemetry::Plain(&request.get_ref().provider), email = %self.email_tag(&request.get_ref().email)))]
    async fn update_account(
        &self,
        request: Request<proto::UpdateAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let caller = authorized(&request, Permission::AccountsWrite, "UpdateAccount")?;
        call_audit(&request).account(&request.get_ref().provider, &request.get_ref().email);
        let req = request.into_inner();
        let disabling = req.disabled == Some(true);
        let token_replaced = req.jwt.is_some();
        let update = AccountUpdate {
            max_jobs: req.max_jobs.map(i64::from),
            password: req.password.map(Into::into),
            api_key: req.api_key.map(Into::into),
            secret: req.secret.map(Into::into),
            disabled: req.disabled,
            set_labels: req.labels.into_iter().collect(),
            remove_labels: req.remove_labels,
            session: convert::session(req.jwt),
        };
        let account = self
            .accounts
            .update(&req.provider, &req.email, update, req.expected_version)
            .await
            .map_err(account_error)?;
        tracing::info!(caller = %caller.id, version = account.meta.version, "account updated");
        let key = account.meta.key();
        self.refresher.account_changed(&key, Some(&account.meta));
        if disabling {
            self.retire(&key, EventKind::AccountDisabled).await;
        }
        if let (true, Some(session), Some(token)) = (
            token_replaced,
            &account.meta.session,
            &account.secrets.token,
        ) {
            self.events.publish(Event {
                key: key.clone(),
                kind: EventKind::TokenRotated {
                    generation: session.generation,
                    token: token.clone(),
                    expire_time: session.expire_time,
                },
                at_ms: self.leases.now_ms(),
            });
        }
        Ok(Response::new(self.view(&account)))
    }

    #[tracing::instrument(skip_all, fields(provider = %crate::telemetry::Plain(&request.get_ref().provider), email = %self.email_tag(&request.get_ref().email)))]
    async fn delete_account(
        &self,
        request: Request<proto::DeleteAccountRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = authorized(&request, Permission::AccountsWrite, "DeleteAccount")?;
        call_audit(&request).account(&request.get_ref().provider, &request.get_ref().email);
        let req = request.into_inner();
        self.accounts
            .delete(&req.provider, &req.email, req.expected_version)
            .await
            .map_err(account_error)?;
        tracing::info!(caller = %caller.id, "account deleted");
        let key = AccountKey {
            provider: req.provider,
            email: req.email.to_lowercase(),
        };
        self.refresher.account_changed(&key, None);
        self.retire(&key, EventKind::AccountDeleted).await;
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all, fields(provider = %crate::telemetry::Plain(&request.get_ref().provider), email = %self.email_tag(&request.get_ref().email)))]
    async fn refresh_account(
        &self,
        request: Request<proto::RefreshAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let caller = authorized(&request, Permission::AccountsWrite, "RefreshAccount")?;
        call_audit(&request).account(&request.get_ref().provider, &request.get_ref().email);
        let req = request.into_inner();
        // Validates the names and gives NOT_FOUND with the hint for unknown accounts.
        let account = self
            .accounts
            .get(&req.provider, &req.email)
            .await
            .map_err(account_error)?;
        if !req.force
            && let Some(reason) = self.refresher.needless_login(&account)
        {
            let mut view = self.view(&account);
            view.status_reason = reason;
            tracing::info!(caller = %caller.id, "refresh on request answered without a login (login budget)");
            return Ok(Response::new(view));
        }
        let key = account.meta.key();
        let refreshed = if req.force {
            self.refresher.refresh_forced(&key).await
        } else {
            self.refresher.refresh_now(&key).await
        };
        let account = match refreshed {
            // Another process logged the account in while this call waited for the
            // account's login lock: its token is the fresh one this call wanted.
            Err(error @ crate::refresh::RefreshError::Budget { .. }) => {
                let account = self
                    .accounts
                    .get(&req.provider, &req.email)
                    .await
                    .map_err(account_error)?;
                let Some(reason) = self.refresher.needless_login(&account) else {
                    return Err(refresh_error(error));
                };
                let mut view = self.view(&account);
                view.status_reason = reason;
                return Ok(Response::new(view));
            }
            other => other.map_err(refresh_error)?,
        };
        tracing::info!(caller = %caller.id, forced = req.force, "account refreshed on request");
        Ok(Response::new(self.view(&account)))
    }
}
