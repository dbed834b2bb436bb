//! Caller-token verification: any `authorization` bearer value is a valid token this
//! credvault issued, or refused; never a panic.

#![no_main]

use std::sync::OnceLock;

use credvault::{
    callers::{TokenKeys, TokenKind},
    crypto::{MasterKey, Sealer},
    store::MemoryStore,
};
use libfuzzer_sys::fuzz_target;

const NOW_MS: i64 = 1_767_225_600_000;

struct Keys {
    keys: TokenKeys,
    issued: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let store = MemoryStore::open();
        let sealer = Sealer::new(&MasterKey::generate().unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let keys = runtime
            .block_on(TokenKeys::load_or_init(
                store.as_ref(),
                &sealer,
                NOW_MS,
                "credvault",
                "credvault",
                86_400,
            ))
            .unwrap();
        let (issued, _) = keys
            .issue("caller-1", TokenKind::Access, NOW_MS, 3_600)
            .unwrap();
        Keys { keys, issued }
    })
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(claims) = keys.keys.verify(text, NOW_MS) {
            assert_eq!(claims.iss, "credvault");
            assert_eq!(claims.sub, "caller-1");
        }
    }
    // The issued token with the input spliced in: refused unless still the same claims
    // under the same signature.
    let mut token = keys.issued.clone().into_bytes();
    for (i, byte) in data.iter().enumerate() {
        let at = (i * 7 + usize::from(*byte)) % token.len();
        token[at] = *byte;
    }
    if let Ok(text) = String::from_utf8(token) {
        if let Ok(claims) = keys.keys.verify(&text, NOW_MS) {
            assert_eq!(claims.sub, "caller-1");
        }
    }
});
