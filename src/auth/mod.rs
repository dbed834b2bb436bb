//! Who is calling. The gRPC layer hands the `authorization` header to an
//! [`Authenticator`], which answers with a typed [`Caller`] or an [`AuthError`] whose
//! text is the reference API's wording.
//!
//! Today there is one identity, the admin, proven by a bearer token from the
//! configuration. Issued caller tokens will be one more arm of [`Authenticator::authenticate`].

use std::fmt;

use http::HeaderValue;
use ring::hmac;

use crate::crypto::{RngError, SecretString, random_bytes};

/// Longest `authorization` value looked at; anything longer is refused unread.
const MAX_HEADER_LEN: usize = 8 * 1024;

/// Shortest admin token accepted from configuration.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything, including account secrets management.
    Admin,
}

/// An authenticated caller, put into each request's extensions by the auth layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Stable identifier for logs and audit.
    pub id: String,
    pub role: Role,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No header, a malformed one, or a token that is not ours.
    #[error("JWT is missing or invalid, check Authorization header")]
    MissingOrInvalid,
}

/// Checks bearer tokens in constant time against an HMAC of the admin token, so the
/// token itself is not kept in memory after start-up.
pub struct Authenticator {
    key: hmac::Key,
    admin_tag: hmac::Tag,
}

impl Authenticator {
    pub fn new(admin_token: &SecretString) -> Result<Self, RngError> {
        let mut key = [0u8; 32];
        random_bytes(&mut key)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let admin_tag = hmac::sign(&key, admin_token.expose().as_bytes());
        Ok(Self { key, admin_tag })
    }

    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Caller, AuthError> {
        let token = bearer(authorization).ok_or(AuthError::MissingOrInvalid)?;
        hmac::verify(&self.key, token.as_bytes(), self.admin_tag.as_ref())
            .map_err(|_| AuthError::MissingOrInvalid)?;
        Ok(Caller {
            id: "admin".to_owned(),
            role: Role::Admin,
        })
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authenticator([redacted])")
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive), if the header is one.
fn bearer(value: Option<&HeaderValue>) -> Option<&str> {
    let value = value?;
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        Authenticator::new(&SecretString::from(TOKEN.to_owned())).unwrap()
    }

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn accepts_the_admin_token() {
        let caller = auth()
            .authenticate(Some(&header(&format!("Bearer {TOKEN}"))))
            .unwrap();
        assert_eq!(caller.role, Role::Admin);
        assert!(
            auth()
                .authenticate(Some(&header(&format!("bearer {TOKEN}"))))
                .is_ok()
        );
    }

    #[test]
    fn refuses_everything_else_with_the_reference_wording() {
        let auth = auth();
        let long = format!("Bearer {}", "a".repeat(MAX_HEADER_LEN));
        for value in [
            None,
            Some(header("")),
            Some(header("Bearer ")),
            Some(header(TOKEN)),
            Some(header(&format!("Basic {TOKEN}"))),
            Some(header(&format!("Bearer {TOKEN}x"))),
            Some(header(&long)),
        ] {
            let error = auth.authenticate(value.as_ref()).unwrap_err();
            assert_eq!(
                error.to_string(),
                "JWT is missing or invalid, check Authorization header"
            );
        }
    }
}
