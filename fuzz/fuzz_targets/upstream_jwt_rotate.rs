//! The JWT-rotation adapter's reading of its answers (issue, balance) and of the
//! expiry inside an upstream token.

#![no_main]

use credvault::{
    accounts::upstream_token,
    refresh::providers::jwt_rotate::{read_balance, read_issued},
};
use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = match first % 5 {
        0 => StatusCode::CONFLICT,
        1 => StatusCode::FORBIDDEN,
        2 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    if let Ok(Some(jwt)) = read_issued(status, body) {
        assert!(!jwt.is_empty());
        let _ = upstream_token::expiry(&jwt);
    }
    let _ = read_balance(status, body);
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = upstream_token::expiry(text);
    }
});
