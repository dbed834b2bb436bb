//! How secrets read to operators: exactly like the reference API.

/// What every masked secret reads as.
pub const SECURED: &str = "…secured…";

/// Tokens shorter than this are shown only as [`SECURED`]: six visible characters of a
/// short token would give too much of it away.
const MIN_PARTLY_SHOWN: usize = 16;

/// `abc…secured…cde`: the first and last three characters of a token.
pub fn token(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < MIN_PARTLY_SHOWN {
        return SECURED.to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}{SECURED}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_the_reference() {
        assert_eq!(token("abcdefghijklmnopqrstuvwxyz-cde"), "abc…secured…cde");
        assert_eq!(token("short-token"), "…secured…");
    }
}
