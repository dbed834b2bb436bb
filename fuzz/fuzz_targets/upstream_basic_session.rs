//! The basic-session adapter's reading of a session answer at configured pointers.

#![no_main]

use credvault::refresh::providers::basic_session::{SessionFields, read_session};
use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let fields = SessionFields {
        token_pointer: "/data/token",
        expiry_pointer: "/data/expires_at",
        lifetime_secs: (first & 1 == 1).then_some(3_600),
    };
    let status = if first < 220 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if let Ok(refreshed) = read_session(&fields, status, body, 1_767_225_600_000) {
        let session = refreshed
            .session
            .expect("a session answer yields a session");
        assert!(!session.token.is_empty());
        assert!(session.expire_time > 0);
    }
});
