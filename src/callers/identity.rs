//! Who a caller is and what it may do: the identity the auth layer proves on every
//! request ([`Caller`], with the [`Credential`] it used), the [`Permission`]s roles
//! grant, and the refusals ([`Denied`], [`AuthError`]) in the reference API's wording.
//! The services read these; proving them is `crate::auth`'s job.

use std::collections::BTreeSet;

use super::{Role, TokenKind, scope};

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
    /// A Kubernetes ServiceAccount token, for a ServiceAccount bound to this caller.
    Kubernetes {
        namespace: String,
        service_account: String,
    },
}

impl Credential {
    /// Who outside credvault the caller is, for the audit trail: `k8s:ns/name` for a
    /// ServiceAccount; empty for credvault's own credentials.
    pub fn principal(&self) -> String {
        match self {
            Credential::Kubernetes {
                namespace,
                service_account,
            } => kubernetes_principal(namespace, service_account),
            _ => String::new(),
        }
    }
}

/// How the audit trail names a Kubernetes ServiceAccount: `k8s:namespace/name`.
pub fn kubernetes_principal(namespace: &str, service_account: &str) -> String {
    format!("k8s:{namespace}/{service_account}")
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

    /// Whether the caller may have the credentials of every account of `provider`:
    /// admins, and consumers with a scope naming the whole provider. When not, each
    /// account is still checked with [`Caller::require_reach`].
    pub fn reaches_provider(&self, provider: &str) -> bool {
        self.is_admin() || scope::covers_provider(&self.scopes, provider)
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

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No header, a malformed one, or a credential that is not ours.
    #[error("JWT is missing or invalid, check Authorization header")]
    MissingOrInvalid,
    /// An API key without `x-credvault-secret`.
    #[error("an API key is sent with its secret, in the x-credvault-secret header")]
    KeyWithoutSecret,
    /// An API key that is not ours, or its secret does not match (one answer for both).
    #[error("API key or secret is invalid")]
    BadKey,
    /// Basic credentials that do not prove a caller (one answer for a wrong email and a
    /// wrong secret).
    #[error("email or secret is invalid")]
    BadBasic,
    /// Basic credentials sent to another method than CreateSession.
    #[error(
        "Basic credentials (email:secret) are for Callers/CreateSession only; send authorization: Bearer with an API key or a JWT"
    )]
    BasicNotHere,
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
    /// This process cannot confirm that its view of callers is current (a shared
    /// store it has not heard from), so it trusts no credential that view decides.
    #[error(
        "this credvault node cannot confirm its view of callers is current (no word from the shared store for {0} s); try another node or retry later"
    )]
    Stale(u64),
    /// A ServiceAccount token that did not pass a check (which one, in words that
    /// name nothing of the token).
    #[error("ServiceAccount token refused: {0}")]
    Kubernetes(&'static str),
    /// A verified ServiceAccount that no binding maps to a caller.
    #[error(
        "ServiceAccount {namespace}/{service_account} is not bound to a caller here (kubernetes_auth.bindings)"
    )]
    KubernetesUnbound {
        namespace: String,
        service_account: String,
    },
    /// The API server or the issuer's keys could not be reached to verify a
    /// ServiceAccount token (other credentials are unaffected).
    #[error(
        "the ServiceAccount token could not be verified now: the Kubernetes API server or the issuer's keys did not answer; retry later"
    )]
    KubernetesUnavailable,
}

impl AuthError {
    /// The outside identity a refusal names, for its audit event.
    pub fn principal(&self) -> String {
        match self {
            AuthError::KubernetesUnbound {
                namespace,
                service_account,
            } => kubernetes_principal(namespace, service_account),
            _ => String::new(),
        }
    }
}
