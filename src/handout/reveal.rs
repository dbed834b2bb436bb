//! RevealAccount: an account's secrets, unmasked, through the door.

use crate::{
    accounts::{Account, AccountError, AccountService},
    audit::{Call, Subject},
    auth::{Caller, Denied},
    crypto::SecretString,
};

use super::{Door, HandOutError};

#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    HandOut(#[from] HandOutError),
}

impl Door {
    /// The account `provider`/`email` with its secrets, for `caller` (whose scopes must
    /// reach it), charged `cost` credits. An account that does not exist costs nothing.
    pub async fn reveal(
        &self,
        accounts: &AccountService,
        call: &Call,
        caller: &Caller,
        (provider, email): (&str, &str),
        cost: i64,
    ) -> Result<Account, RevealError> {
        caller.require_reach(provider, &email.to_lowercase())?;
        let account = accounts.get(provider, email).await?;
        let secrets = &account.secrets;
        let handed: Vec<&str> = [
            &secrets.password,
            &secrets.api_key,
            &secrets.secret,
            &secrets.token,
        ]
        .into_iter()
        .flatten()
        .map(SecretString::expose)
        .collect();
        let subject = Subject {
            provider: provider.to_owned(),
            email: email.to_owned(),
            target: String::new(),
        };
        let charge = self
            .hand_out_read(call, subject, &caller.id, cost, &handed)
            .await?;
        tracing::debug!(
            caller = %caller.id,
            cost,
            remaining = charge.credits.map(|c| c.remaining),
            "account revealed"
        );
        Ok(account)
    }
}
