//! The restricted unpickler on raw pickle streams.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = orrery_formats::pickle::unpickle(data) {
        assert!(p.root < p.nodes.len());
    }
});
