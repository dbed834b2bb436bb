//! Consumer scopes: `provider` (all its accounts) or `provider/email-glob`, where the
//! glob has `*` (any run of characters) and `?` (one character).

use crate::validate::{FieldError, shown};

pub const MAX_SCOPES: usize = 64;
const MAX_SCOPE_LEN: usize = 320;

/// Checks a scope's shape; returns it lower-cased (emails are stored lower-cased).
pub fn parse(scope: &str) -> Result<String, FieldError> {
    let bad = || FieldError::Scope(shown(scope));
    if scope.is_empty()
        || scope.len() > MAX_SCOPE_LEN
        || scope.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad());
    }
    let (provider, glob) = match scope.split_once('/') {
        Some((provider, glob)) => (provider, Some(glob)),
        None => (scope, None),
    };
    if provider.is_empty() || provider.contains('*') || glob.is_some_and(str::is_empty) {
        return Err(bad());
    }
    Ok(scope.to_lowercase())
}

/// Whether one of `scopes` covers every account of `provider` (a bare provider scope).
pub fn covers_provider(scopes: &[String], provider: &str) -> bool {
    scopes.iter().any(|scope| scope == provider)
}

/// Whether any of `scopes` covers the account.
pub fn covers(scopes: &[String], provider: &str, email: &str) -> bool {
    scopes.iter().any(|scope| match scope.split_once('/') {
        None => scope == provider,
        Some((p, glob)) => p == provider && glob_match(glob.as_bytes(), email.as_bytes()),
    })
}

/// Iterative wildcard match with backtracking to the last `*`: linear in practice,
/// never exponential.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_and_glob_scopes() {
        let scopes = vec![
            "pixverse/*@ops.example.com".to_owned(),
            "dataapi".to_owned(),
        ];
        assert!(covers(&scopes, "pixverse", "a@ops.example.com"));
        assert!(!covers(&scopes, "pixverse", "a@dev.example.com"));
        assert!(covers(&scopes, "dataapi", "anyone@x.io"));
        assert!(!covers(&scopes, "media", "a@ops.example.com"));
        assert!(covers(&["p/user?@x.io".to_owned()], "p", "user7@x.io"));
        assert!(!covers(&["p/user?@x.io".to_owned()], "p", "user77@x.io"));
        assert!(!covers(&[], "p", "a@x.io"));
    }

    #[test]
    fn only_a_bare_provider_scope_covers_the_whole_provider() {
        let scopes = vec!["pixverse/*".to_owned(), "dataapi".to_owned()];
        assert!(covers_provider(&scopes, "dataapi"));
        // A glob scope is checked account by account, even one that matches them all.
        assert!(!covers_provider(&scopes, "pixverse"));
        assert!(covers(&scopes, "pixverse", "a@x.io"));
        assert!(!covers_provider(&scopes, "data"));
        assert!(!covers_provider(&[], "dataapi"));
    }

    #[test]
    fn scope_shapes() {
        assert_eq!(parse("PixVerse/*@Ops.io").unwrap(), "pixverse/*@ops.io");
        for bad in ["", "*", "p/", "/x", "p x", "p/a\u{7}"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
