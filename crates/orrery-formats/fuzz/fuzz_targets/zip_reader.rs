//! The ZIP reader: central directory, ZIP64 records, local headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orrery_formats::zip::ZipArchive;

fuzz_target!(|data: &[u8]| {
    if let Ok(ar) = ZipArchive::parse(data) {
        for e in ar.entries() {
            if let Ok(r) = ar.data_range(data, e) {
                assert!(r.end <= data.len());
            }
        }
    }
});
