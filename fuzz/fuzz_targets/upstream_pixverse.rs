//! The PixVerse adapter's reading of a login answer: any status and body is a session
//! or a LoginError; never a panic, and never a session without a token and an expiry.

#![no_main]

use credvault::refresh::providers::pixverse::read_login;
use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    // Mostly 200, sometimes any other status.
    let status = if first < 200 {
        StatusCode::OK
    } else {
        StatusCode::from_u16(100 + u16::from(first) * 2).unwrap_or(StatusCode::BAD_GATEWAY)
    };
    if let Ok(refreshed) = read_login(status, body) {
        let session = refreshed.session.expect("a login yields a session");
        assert!(!session.token.is_empty());
        assert!(session.expire_time > 0);
    }
});
