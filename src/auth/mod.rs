//! Who is calling, and what they may do.
//!
//! The gRPC auth layer hands the request path and headers to the [`Authenticator`],
//! which answers with a typed [`Caller`] or an [`AuthError`] in the reference API's
//! wording. Four credentials are understood:
//!
//! - `Bearer <bootstrap token>` from the configuration: the bootstrap admin;
//! - `Bearer <api key>` with `x-credvault-secret: <secret>`;
//! - `Bearer <jwt>`: a token from IssueToken or CreateSession;
//! - `Bearer <ServiceAccount token>`, with `[kubernetes_auth]` (see [`kubernetes`]);
//! - `Basic base64(email:secret)`, on CreateSession only.
//!
//! Handlers then ask [`Caller::require`] for a [`Permission`].

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, RwLock},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use ring::hmac;

use crate::{
    callers::{CallerService, keys},
    crypto::{RngError, SecretString, random_bytes},
};
use kubernetes::{Failure, KubernetesAuth};

pub mod kubernetes;

/// Longest `authorization` value looked at; anything longer is refused unread.
const MAX_HEADER_LEN: usize = 8 * 1024;

/// Shortest bootstrap (admin) token accepted from configuration.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// The client secret that goes with an API key.
pub const SECRET_HEADER: &str = "x-credvault-secret";

pub const CREATE_SESSION_PATH: &str = "/credvault.v1.Callers/CreateSession";
pub const ACTIVATE_PATH: &str = "/credvault.v1.Callers/ActivateCaller";

/// What a not-yet-activated key may call: ActivateCaller, and reflection, which only
/// describes the API (grpcurl asks it before every call, ActivateCaller included).
fn allowed_before_activation(path: &str) -> bool {
    path == ACTIVATE_PATH
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

pub use crate::callers::identity::{AuthError, Caller, Credential, Denied, Permission};

pub struct Authenticator {
    key: hmac::Key,
    /// Replaced when the admin token file is read again.
    bootstrap_tag: RwLock<hmac::Tag>,
    callers: Arc<CallerService>,
    /// Unix-socket peer uid → caller id (`socket_peers`).
    peers: HashMap<u32, String>,
    /// ServiceAccount tokens, when `[kubernetes_auth]` is configured.
    kubernetes: Option<KubernetesAuth>,
}

impl Authenticator {
    pub fn new(
        bootstrap_token: &SecretString,
        callers: Arc<CallerService>,
        peers: HashMap<u32, String>,
    ) -> Result<Self, RngError> {
        let mut key = [0u8; 32];
        random_bytes(&mut key)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let bootstrap_tag = hmac::sign(&key, bootstrap_token.expose().as_bytes());
        Ok(Self {
            key,
            bootstrap_tag: RwLock::new(bootstrap_tag),
            callers,
            peers,
            kubernetes: None,
        })
    }

    /// Accepts ServiceAccount tokens as `kubernetes` verifies them.
    pub fn with_kubernetes(mut self, kubernetes: KubernetesAuth) -> Self {
        self.kubernetes = Some(kubernetes);
        self
    }

    /// From now on the bootstrap token is `token`; the previous one no longer works.
    pub fn set_bootstrap_token(&self, token: &SecretString) {
        let tag = hmac::sign(&self.key, token.expose().as_bytes());
        *self
            .bootstrap_tag
            .write()
            .unwrap_or_else(|e| e.into_inner()) = tag;
    }

    /// Proves the caller of one request. `peer_uid` is the uid of a Unix-socket peer;
    /// a mapped uid stands in for a credential only when the request carries none. A
    /// credential the caller view decides (everything but the bootstrap admin token,
    /// which is configuration) is refused while that view cannot be confirmed current
    /// (see [`crate::callers::freshness`]).
    pub async fn authenticate(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer_uid: Option<u32>,
    ) -> Result<Caller, AuthError> {
        let caller = match self.identify(path, headers, peer_uid) {
            Err(AuthError::MissingOrInvalid) if self.kubernetes.is_some() => {
                self.service_account(headers).await?
            }
            other => other?,
        };
        if let Some(unconfirmed) = self.callers.stale_for()
            && !self.is_bootstrap(headers)
        {
            return Err(AuthError::Stale(unconfirmed.as_secs()));
        }
        Ok(caller)
    }

    fn is_bootstrap(&self, headers: &HeaderMap) -> bool {
        let Some((scheme, value)) = credentials(headers.get(AUTHORIZATION)) else {
            return false;
        };
        let bootstrap = *self.bootstrap_tag.read().unwrap_or_else(|e| e.into_inner());
        scheme.eq_ignore_ascii_case("bearer")
            && hmac::verify(&self.key, value.as_bytes(), bootstrap.as_ref()).is_ok()
    }

    /// The caller a request's credential names, per the caller view.
    fn identify(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer_uid: Option<u32>,
    ) -> Result<Caller, AuthError> {
        if headers.get(AUTHORIZATION).is_none()
            && let Some((uid, caller_id)) =
                peer_uid.and_then(|uid| self.peers.get(&uid).map(|id| (uid, id)))
        {
            return self.callers.authenticate_peer(caller_id, uid);
        }
        let header = headers.get(AUTHORIZATION);
        let Some((scheme, value)) = credentials(header) else {
            // "Basic" with nothing after it.
            let bare_basic = header
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("basic"));
            return Err(match bare_basic {
                true => AuthError::BadBasic,
                false => AuthError::MissingOrInvalid,
            });
        };
        if scheme.eq_ignore_ascii_case("basic") {
            if path != CREATE_SESSION_PATH {
                return Err(AuthError::BasicNotHere);
            }
            let (email, secret) = basic(value).ok_or(AuthError::BadBasic)?;
            return self.callers.authenticate_basic(&email, secret.expose());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::MissingOrInvalid);
        }
        if self.is_bootstrap(headers) {
            return self.callers.bootstrap_admin();
        }
        if keys::looks_like_api_key(value) {
            let secret = headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok());
            let caller = self.callers.authenticate_key(value, secret)?;
            let activated = matches!(
                caller.credential,
                Credential::ApiKey {
                    activated: true,
                    ..
                }
            );
            if !activated && !allowed_before_activation(path) {
                return Err(AuthError::NotActivated);
            }
            return Ok(caller);
        }
        self.callers.authenticate_jwt(value)
    }
}

impl Authenticator {
    /// The caller bound to the ServiceAccount whose token the request carries (asked
    /// when the bearer credential is none of credvault's own).
    async fn service_account(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let (Some(kubernetes), Some((scheme, token))) =
            (&self.kubernetes, credentials(headers.get(AUTHORIZATION)))
        else {
            return Err(AuthError::MissingOrInvalid);
        };
        // Only a JWT from another issuer than credvault's own is a candidate: one of
        // credvault's own tokens keeps its own refusal.
        let other_issuer = kubernetes::claims::peek(token).is_ok_and(|(_, claims)| {
            claims.iss.as_deref() != Some(&self.callers.settings().issuer)
        });
        if !scheme.eq_ignore_ascii_case("bearer") || !other_issuer {
            return Err(AuthError::MissingOrInvalid);
        }
        let account = kubernetes
            .verify(token)
            .await
            .map_err(|failure| match failure {
                Failure::Refused(refusal) => AuthError::Kubernetes(refusal.reason()),
                Failure::Unavailable => AuthError::KubernetesUnavailable,
            })?;
        let caller_id =
            kubernetes
                .caller_for(&account)
                .ok_or_else(|| AuthError::KubernetesUnbound {
                    namespace: account.namespace.clone(),
                    service_account: account.name.clone(),
                })?;
        self.callers
            .authenticate_kubernetes(caller_id, &account.namespace, &account.name)
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authenticator([redacted])")
    }
}

/// `(scheme, credentials)` of an authorization header.
fn credentials(value: Option<&HeaderValue>) -> Option<(&str, &str)> {
    let value = value?;
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let (scheme, rest) = value.to_str().ok()?.split_once(' ')?;
    let rest = rest.trim();
    (!rest.is_empty()).then_some((scheme, rest))
}

/// `email:secret` of a Basic credential.
fn basic(value: &str) -> Option<(String, SecretString)> {
    let decoded = zeroize::Zeroizing::new(STANDARD.decode(value).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (email, secret) = text.split_once(':')?;
    Some((email.to_owned(), SecretString::from(secret.to_owned())))
}

#[cfg(test)]
mod tests;
