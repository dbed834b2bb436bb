//! The API-key adapter's reading of the credits answer.

#![no_main]

use credvault::refresh::providers::api_key::read_credits;
use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = if first < 220 {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let _ = read_credits(status, body);
});
