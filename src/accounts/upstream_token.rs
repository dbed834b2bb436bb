//! Reading the upstream's own session token. credvault does not hold the upstream's
//! signing key, so the token is decoded without verification, only to learn its expiry.

use serde::Deserialize;

#[derive(Deserialize)]
struct Claims {
    exp: Option<serde_json::Number>,
}

/// The claims of a JWT-shaped token, if they decode (without verification).
pub fn claims_parse(token: &str) -> Option<serde_json::Value> {
    jsonwebtoken::dangerous::insecure_decode_claims(token).ok()
}

/// The token's `exp` claim in unix seconds, if it is a JWT that has one.
pub fn expiry(token: &str) -> Option<i64> {
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    let exp = claims.exp?;
    exp.as_i64()
        .or_else(|| exp.as_f64().map(|f| f as i64))
        .filter(|exp| *exp > 0)
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp_without_verifying() {
        assert_eq!(
            expiry(&jwt(r#"{"exp":1735733594,"sub":"1"}"#)),
            Some(1_735_733_594)
        );
        assert_eq!(expiry(&jwt(r#"{"exp":1735733594.5}"#)), Some(1_735_733_594));
        assert_eq!(expiry(&jwt(r#"{"sub":"1"}"#)), None);
        assert_eq!(expiry("not-a-jwt"), None);
    }
}
