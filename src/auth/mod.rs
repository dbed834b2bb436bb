//! Who is calling, and what they may do.
//!
//! The gRPC auth layer hands the request path and headers to the [`Authenticator`],
//! which answers with a typed [`Caller`] or an [`AuthError`] in the reference API's
//! wording. Four credentials are understood:
//!
//! - `Bearer <bootstrap token>` from the configuration: the bootstrap admin;
//! - `Bearer <api key>` with `x-credvault-secret: <secret>`;
//! - `Bearer <jwt>`: a token from IssueToken or CreateSession;
//! - `Basic base64(email:secret)`, on CreateSession only.
//!
//! Handlers then ask [`Caller::require`] for a [`Permission`].

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    sync::{Arc, RwLock},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use ring::hmac;

use crate::{
    callers::{CallerService, Role, TokenKind, keys, scope},
    crypto::{RngError, SecretString, random_bytes},
};

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

/// How the caller proved itself on this request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Bootstrap,
    ApiKey {
        key_id: String,
        activated: bool,
    },
    Jwt {
        jti: String,
        kind: TokenKind,
    },
    Basic,
    /// A Unix-socket peer whose uid the configuration maps to this caller.
    Peer {
        uid: u32,
    },
}

/// An authenticated caller, put into each request's extensions by the auth layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub email: String,
    pub roles: BTreeSet<Role>,
    pub scopes: Vec<String>,
    pub credential: Credential,
}

/// What an RPC needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Read accounts, masked.
    AccountsRead,
    /// Create, update, delete and refresh accounts.
    AccountsWrite,
    /// Unmasked credentials and leases, within the caller's scopes.
    Credentials,
    /// Create and change other callers.
    ManageCallers,
    /// Read the audit trail.
    Audit,
    /// See and drive master-key rotation.
    Keys,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Permission::AccountsRead,
        Permission::AccountsWrite,
        Permission::Credentials,
        Permission::ManageCallers,
        Permission::Audit,
        Permission::Keys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::AccountsRead => "accounts:read",
            Permission::AccountsWrite => "accounts:write",
            Permission::Credentials => "credentials",
            Permission::ManageCallers => "callers:admin",
            Permission::Audit => "audit:read",
            Permission::Keys => "keys:admin",
        }
    }

    /// The roles that grant it; admin grants everything.
    fn roles(self) -> &'static [Role] {
        match self {
            Permission::AccountsRead | Permission::AccountsWrite => &[Role::Operator, Role::Admin],
            Permission::Credentials => &[Role::Consumer, Role::Admin],
            Permission::ManageCallers | Permission::Audit | Permission::Keys => &[Role::Admin],
        }
    }
}

/// A refusal that names what was missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("permission denied: {rpc} needs the \"{scope}\" scope ({roles})")]
    Scope {
        rpc: &'static str,
        scope: &'static str,
        roles: String,
    },
    #[error("permission denied: account {provider}/{email} is outside this caller's scopes")]
    Account { provider: String, email: String },
    #[error("permission denied: only an admin may act for another caller")]
    OtherCaller,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    pub fn permissions(&self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| p.roles().iter().any(|r| self.roles.contains(r)))
            .collect()
    }

    pub fn require(&self, permission: Permission, rpc: &'static str) -> Result<(), Denied> {
        if permission.roles().iter().any(|r| self.roles.contains(r)) {
            return Ok(());
        }
        let roles = permission
            .roles()
            .iter()
            .map(|r| format!("role {}", r.name()))
            .collect::<Vec<_>>()
            .join(" or ");
        Err(Denied::Scope {
            rpc,
            scope: permission.name(),
            roles,
        })
    }

    /// Whether the caller may have this account's credentials: admins always,
    /// consumers when one of their scopes covers it.
    pub fn require_reach(&self, provider: &str, email: &str) -> Result<(), Denied> {
        if self.is_admin() || scope::covers(&self.scopes, provider, email) {
            return Ok(());
        }
        Err(Denied::Account {
            provider: provider.to_owned(),
            email: email.to_owned(),
        })
    }

    /// The caller an admin-only `caller_id` field names: the caller itself when empty.
    pub fn target<'a>(&'a self, caller_id: &'a str) -> Result<&'a str, Denied> {
        match caller_id {
            "" => Ok(&self.id),
            id if id == self.id => Ok(id),
            id if self.is_admin() => Ok(id),
            _ => Err(Denied::OtherCaller),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No header, a malformed one, or a credential that is not ours.
    #[error("JWT is missing or invalid, check Authorization header")]
    MissingOrInvalid,
    #[error("JWT revoked")]
    Revoked,
    #[error("JWT expired")]
    Expired,
    /// A new API key that has not called ActivateCaller yet.
    #[error("account not activated")]
    NotActivated,
    #[error("caller is disabled")]
    Disabled,
    /// The caller's record failed its integrity check (tampered, or sealed under
    /// another key); logged where it happened, as UpdateCaller's DATA_LOSS is.
    #[error("the caller's record failed its integrity check and will not be used")]
    DataLoss,
    /// The store could not be read; a retry may succeed. Logged where it happened.
    #[error("authentication could not be completed")]
    Unavailable,
    /// Anything else that failed; the detail is logged where it happened.
    #[error("authentication could not be completed")]
    Internal,
}

pub struct Authenticator {
    key: hmac::Key,
    /// Replaced when the admin token file is read again.
    bootstrap_tag: RwLock<hmac::Tag>,
    callers: Arc<CallerService>,
    /// Unix-socket peer uid → caller id (`socket_peers`).
    peers: HashMap<u32, String>,
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
        })
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
    /// a mapped uid stands in for a credential only when the request carries none.
    pub fn authenticate(
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
        let (scheme, value) =
            credentials(headers.get(AUTHORIZATION)).ok_or(AuthError::MissingOrInvalid)?;
        if scheme.eq_ignore_ascii_case("basic") {
            if path != CREATE_SESSION_PATH {
                return Err(AuthError::MissingOrInvalid);
            }
            let (email, secret) = basic(value).ok_or(AuthError::MissingOrInvalid)?;
            return self.callers.authenticate_basic(&email, secret.expose());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::MissingOrInvalid);
        }
        let bootstrap = *self.bootstrap_tag.read().unwrap_or_else(|e| e.into_inner());
        if hmac::verify(&self.key, value.as_bytes(), bootstrap.as_ref()).is_ok() {
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
mod tests {
    use super::*;

    #[test]
    fn headers_are_parsed_strictly() {
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            credentials(Some(&header("Bearer abc"))),
            Some(("Bearer", "abc"))
        );
        assert_eq!(credentials(Some(&header("Bearer "))), None);
        assert_eq!(credentials(Some(&header("abc"))), None);
        assert_eq!(credentials(None), None);
        let long = format!("Bearer {}", "a".repeat(MAX_HEADER_LEN));
        assert_eq!(credentials(Some(&header(&long))), None);
        assert_eq!(basic("not base64!"), None);
        let (email, secret) = basic(&STANDARD.encode("a@b.io:s:3")).unwrap();
        assert_eq!((email.as_str(), secret.expose()), ("a@b.io", "s:3"));
    }
}
