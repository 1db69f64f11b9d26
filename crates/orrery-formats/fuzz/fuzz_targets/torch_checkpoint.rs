//! Whole `.pt` images: zip + unpickler + torch interpretation + loading every tensor. The
//! input is used as the data.pkl of a fixed, valid zip (so the pickle layer is reached
//! easily) when it starts with 0x80 (PROTO), and as the whole file otherwise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orrery_formats::{inspect_source, TorchCheckpoint, WeightSource};

/// A stored zip holding `archive/data.pkl` = `pkl` and `archive/data/0`..`3` of 64 bytes.
fn wrap(pkl: &[u8]) -> Vec<u8> {
    let storage = [0x3fu8; 64];
    let mut entries: Vec<(String, &[u8])> = vec![("archive/data.pkl".into(), pkl)];
    for k in 0..4 {
        entries.push((format!("archive/data/{k}"), &storage));
    }
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in &entries {
        let off = out.len() as u32;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 10]);
        central.extend_from_slice(&[0; 2]);
        central.extend_from_slice(&off.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fuzz_target!(|data: &[u8]| {
    let image = if data.first() == Some(&0x80) { wrap(data) } else { data.to_vec() };
    if let Ok(ck) = TorchCheckpoint::from_bytes("fuzz.pt", image) {
        for n in ck.names() {
            let info = ck.info(&n).unwrap();
            if let Ok(t) = ck.load(&n) {
                assert_eq!(t.as_bytes().len(), info.byte_len);
            }
        }
        for p in ck.problems() {
            assert!(ck.load(&p.key).is_err());
        }
        let _ = inspect_source(&ck).to_string();
    }
});
