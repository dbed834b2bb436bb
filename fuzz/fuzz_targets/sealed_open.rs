//! Sealed-record decoding: any bytes read from the store either open (only a record
//! sealed here, for this tree and key) or are refused; never a panic.

#![no_main]

use std::sync::OnceLock;

use credvault::{
    accounts::record,
    crypto::{MasterKey, Sealer},
    sealed,
    store::Tree,
};
use libfuzzer_sys::fuzz_target;

fn sealer() -> &'static Sealer {
    static SEALER: OnceLock<Sealer> = OnceLock::new();
    SEALER.get_or_init(|| Sealer::new(&MasterKey::generate().unwrap()))
}

fuzz_target!(|data: &[u8]| {
    // As an account record: whole, its metadata alone, and re-sealed.
    let _ = record::decode(sealer(), b"pixverse/a@acme.com", data);
    let _ = record::decode_meta(sealer(), b"pixverse/a@acme.com", data);
    let _ = record::reseal(sealer(), b"pixverse/a@acme.com", data);
    // As any other sealed record.
    let _ = sealed::open::<serde_json::Value>(sealer(), Tree::Callers, b"caller", data);
    let _ = sealed::open_raw(sealer(), Tree::Audit, b"block", data);
    // A record sealed here and then damaged by the input must be refused.
    let sealed = sealed::seal(sealer(), Tree::Meta, b"k", &data.len()).unwrap();
    let mut damaged = sealed.clone();
    for (i, byte) in data.iter().enumerate().take(damaged.len()) {
        damaged[i] ^= byte;
    }
    if damaged != sealed {
        assert!(sealed::open::<usize>(sealer(), Tree::Meta, b"k", &damaged).is_err());
    }
    // And so must one sealed in the other format, damaged the same way.
    let raw = sealed::seal_raw(sealer(), Tree::Audit, b"k", data).unwrap();
    let mut damaged = raw.clone();
    for (i, byte) in data.iter().enumerate().take(damaged.len()) {
        damaged[i] ^= byte;
    }
    if damaged != raw {
        assert!(sealed::open_raw(sealer(), Tree::Audit, b"k", &damaged).is_err());
    }
});
