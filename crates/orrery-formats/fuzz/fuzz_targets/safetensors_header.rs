//! Whole safetensors images: header validation, then every tensor is loaded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orrery_formats::{SafetensorsFile, WeightSource};

fuzz_target!(|data: &[u8]| {
    let _ = orrery_formats::safetensors::parse_header(data);
    if let Ok(f) = SafetensorsFile::from_bytes("fuzz.safetensors", data.to_vec()) {
        for n in f.names() {
            let info = f.info(&n).unwrap();
            let t = f.load(&n).unwrap();
            assert_eq!(t.as_bytes().len(), info.byte_len);
        }
    }
});
