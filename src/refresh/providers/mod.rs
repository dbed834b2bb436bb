//! Provider adapters: one small module per login style (DESIGN.md §1 A–D), behind one
//! trait. An adapter turns an account into a fresh session and/or credits, or says why
//! it could not, and whether trying again can help.

pub mod api_key;
pub mod basic_session;
mod http;
pub mod jwt_rotate;
pub mod pixverse;

use std::{future::Future, pin::Pin, sync::Arc};

pub use http::{ReadFailure, failure_kind, install_crypto_provider, read_capped};

use crate::{
    accounts::{Account, Refreshed},
    providers::{ProviderKind, ProviderSpec},
};

pub type LoginFuture<'a> = Pin<Box<dyn Future<Output = Result<Refreshed, LoginError>> + Send + 'a>>;

/// Why a login did not produce a session. `reason` is shown to operators as the
/// account's `statusReason`: built from status codes and the upstream's own error
/// text, never from a request or a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct LoginError {
    /// Trying again will not help until an operator changes the account.
    pub permanent: bool,
    pub reason: String,
}

impl LoginError {
    pub fn transient(reason: impl AsRef<str>) -> Self {
        Self {
            permanent: false,
            reason: clean(reason.as_ref()),
        }
    }

    pub fn permanent(reason: impl AsRef<str>) -> Self {
        Self {
            permanent: true,
            reason: clean(reason.as_ref()),
        }
    }
}

/// Upstream text is bounded and printable before it is stored or shown.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

pub trait Provider: Send + Sync + 'static {
    fn refresh<'a>(&'a self, account: &'a Account, now_ms: i64) -> LoginFuture<'a>;
}

/// The adapter for a configured provider, or `None` when it has no base URL.
pub fn adapter(spec: &ProviderSpec) -> Option<Arc<dyn Provider>> {
    let base = spec.base_url.as_deref()?.trim_end_matches('/').to_owned();
    let http = http::Http::new(spec.timeout_secs);
    Some(match spec.kind {
        ProviderKind::Pixverse => Arc::new(pixverse::Pixverse { http, base }),
        ProviderKind::BasicSession => Arc::new(basic_session::BasicSession {
            http,
            base,
            token_pointer: spec.token_pointer.clone(),
            expiry_pointer: spec.expiry_pointer.clone(),
            lifetime_secs: spec.session_lifetime_secs,
        }),
        ProviderKind::JwtRotate => Arc::new(jwt_rotate::JwtRotate { http, base }),
        ProviderKind::ApiKey => Arc::new(api_key::ApiKey { http, base }),
    })
}
