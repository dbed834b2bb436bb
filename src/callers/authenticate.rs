//! Proving a caller from what a request carries. Everything here reads the in-memory
//! view: no store read, no decryption, on every call.

use std::sync::Arc;

use super::{
    BOOTSTRAP_ADMIN_ID, CallerRecord, CallerService,
    identity::{AuthError, Caller, Credential},
    keys::{self, KEY_LABEL, SECRET_LABEL},
    tokens::TokenError,
    view::Opened,
};

impl CallerService {
    /// Proves an API key and the caller's secret (`x-credvault-secret`).
    pub fn authenticate_key(
        &self,
        api_key: &str,
        secret: Option<&str>,
    ) -> Result<Caller, AuthError> {
        // Told before the key is looked up: it says nothing about the key.
        let secret = secret.ok_or(AuthError::KeyWithoutSecret)?;
        let key_id = keys::key_id(api_key).ok_or(AuthError::BadKey)?;
        let caller_id = self
            .view()
            .id_by_key(key_id)
            .map(str::to_owned)
            .ok_or(AuthError::BadKey)?;
        let opened = self.record_for_auth(&caller_id)?;
        let record = &opened.record;
        let entry = record
            .keys
            .iter()
            .find(|k| k.key_id == key_id)
            .ok_or(AuthError::BadKey)?;
        let key_ok = self.macs.verify(KEY_LABEL, api_key, &entry.key_mac);
        let secret_ok = record
            .secret_mac
            .as_deref()
            .is_some_and(|mac| self.macs.verify(SECRET_LABEL, secret, mac));
        if !(key_ok && secret_ok) {
            return Err(AuthError::BadKey);
        }
        let credential = Credential::ApiKey {
            key_id: key_id.to_owned(),
            activated: entry.activated_at_ms.is_some(),
        };
        caller(record, credential)
    }

    /// Proves `email:secret` from a Basic header (CreateSession only).
    pub fn authenticate_basic(&self, email: &str, secret: &str) -> Result<Caller, AuthError> {
        let id = self
            .id_by_email(&email.to_lowercase())
            .ok_or(AuthError::BadBasic)?;
        let opened = self.record_for_auth(&id)?;
        let record = &opened.record;
        let ok = record
            .secret_mac
            .as_deref()
            .is_some_and(|mac| self.macs.verify(SECRET_LABEL, secret, mac));
        if !ok {
            return Err(AuthError::BadBasic);
        }
        if record.activated_keys() == 0 {
            return Err(AuthError::NotActivated);
        }
        caller(record, Credential::Basic)
    }

    /// Proves a JWT: signature, claims and time, then that its `jti` is live.
    pub fn authenticate_jwt(&self, token: &str) -> Result<Caller, AuthError> {
        let claims = self
            .tokens
            .verify(token, self.now_ms())
            .map_err(|e| match e {
                TokenError::Invalid => AuthError::MissingOrInvalid,
                TokenError::Expired => AuthError::Expired,
            })?;
        let opened = self.record_for_auth(&claims.sub)?;
        let record = &opened.record;
        let entry = record
            .tokens
            .iter()
            .find(|t| t.jti == claims.jti && t.kind == claims.kind)
            .ok_or(AuthError::MissingOrInvalid)?;
        if entry.revoked_at_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        let credential = Credential::Jwt {
            jti: claims.jti,
            kind: claims.kind,
        };
        caller(record, credential)
    }

    /// The caller the configuration maps a Unix-socket peer's uid to.
    pub fn authenticate_peer(&self, caller_id: &str, uid: u32) -> Result<Caller, AuthError> {
        caller(
            &self.record_for_auth(caller_id)?.record,
            Credential::Peer { uid },
        )
    }

    /// The caller a binding maps a verified ServiceAccount to.
    pub fn authenticate_kubernetes(
        &self,
        caller_id: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Caller, AuthError> {
        let opened = self.record_for_auth(caller_id).inspect_err(|_| {
            tracing::warn!(
                caller = caller_id,
                namespace,
                service_account,
                "a kubernetes_auth binding names a caller that cannot be used"
            );
        })?;
        let credential = Credential::Kubernetes {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        caller(&opened.record, credential)
    }

    /// The bootstrap admin, for the configured bootstrap token.
    pub fn bootstrap_admin(&self) -> Result<Caller, AuthError> {
        caller(
            &self.record_for_auth(BOOTSTRAP_ADMIN_ID)?.record,
            Credential::Bootstrap,
        )
    }

    /// The caller's record as last opened (shared, not copied).
    fn record_for_auth(&self, id: &str) -> Result<Arc<Opened>, AuthError> {
        match self.opened(id) {
            Ok(Some(opened)) => Ok(opened),
            Ok(None) => Err(AuthError::MissingOrInvalid),
            Err(error) => Err(error.into_auth(id)),
        }
    }
}

fn caller(record: &CallerRecord, credential: Credential) -> Result<Caller, AuthError> {
    if record.disabled {
        return Err(AuthError::Disabled);
    }
    Ok(Caller {
        id: record.id.clone(),
        email: record.email.clone(),
        roles: record.roles.clone(),
        scopes: record.scopes.clone(),
        credential,
    })
}
