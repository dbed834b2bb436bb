//! Configuration parsing: any file text is a configuration or a ConfigError naming
//! the problem; never a panic. (Resolving is not fuzzed: it creates the data directory
//! and reads key files.)

#![no_main]

use credvault::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::from_toml(text) {
            // What parsed can be printed (secrets show redacted).
            let _ = format!("{config:?}");
        }
    }
});
