//! Untrusted bytes never panic: every prefix of each small fixture, every single-byte
//! corruption, and seeded random mutations (including mutations of the pickle stream and of
//! the safetensors JSON specifically) either fail with an error or yield valid tensors.
//! A panic anywhere fails the test — there is deliberately no catch_unwind.

mod common;

use common::{fixture, write_checkpoint, Rng, TempDir};
use orrery_formats::pickle::unpickle;
use orrery_formats::safetensors::parse_header;
use orrery_formats::zip::ZipArchive;
use orrery_formats::{inspect_source, SafetensorsFile, TorchCheckpoint, WeightSource};

/// Opens `bytes` as `kind` and, if that succeeds, loads every tensor and inspects.
fn exercise(kind: &str, bytes: Vec<u8>) -> bool {
    let src: Box<dyn WeightSource> = match kind {
        "st" => match SafetensorsFile::from_bytes("fuzz.safetensors", bytes) {
            Ok(s) => Box::new(s),
            Err(e) => {
                let _ = e.to_string();
                return false;
            }
        },
        _ => match TorchCheckpoint::from_bytes("fuzz.pt", bytes) {
            Ok(s) => Box::new(s),
            Err(e) => {
                let _ = e.to_string();
                return false;
            }
        },
    };
    for n in src.names() {
        let info = src.info(&n).unwrap();
        match src.load(&n) {
            Ok(t) => {
                assert_eq!(t.as_bytes().len(), info.byte_len, "{n}");
                assert_eq!(t.numel() * t.dtype.size_bytes(), info.byte_len, "{n}");
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    for p in src.report().problems {
        let _ = src.load(&p.key).map(|_| ());
    }
    let _ = inspect_source(src.as_ref()).to_string();
    true
}

const CORPUS: &[(&str, &str)] = &[
    ("st", "single.safetensors"),
    ("st", "sharded/model-00001-of-00002.safetensors"),
    ("pt", "tensors.pt"),
    ("pt", "tensors_p4.pt"),
    ("pt", "nested.pt"),
    ("pt", "malicious_handmade.pt"),
    ("pt", "unknown_global.pt"),
];

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

#[test]
fn every_truncation_is_handled() {
    for (kind, name) in CORPUS {
        let full = read(name);
        assert!(exercise(kind, full.clone()), "{name} must open");
        let mut opened = 0;
        for n in 0..full.len() {
            opened += exercise(kind, full[..n].to_vec()) as usize;
        }
        // A zip needs its trailing central directory, so no strict prefix of a .pt opens.
        if *kind == "pt" {
            assert_eq!(opened, 0, "{name}");
        }
    }
}

#[test]
fn every_single_byte_corruption_is_handled() {
    for (kind, name) in CORPUS {
        let full = read(name);
        for i in 0..full.len() {
            for v in [full[i] ^ 0xFF, full[i] ^ 0x01, 0x00, 0x7F, 0x80, b'9'] {
                if v == full[i] {
                    continue;
                }
                let mut b = full.clone();
                b[i] = v;
                exercise(kind, b);
            }
        }
    }
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let n = 1 + rng.below(8);
    for _ in 0..n {
        if data.is_empty() {
            data.push(rng.next() as u8);
            continue;
        }
        let i = rng.below(data.len());
        match rng.below(7) {
            0 => data[i] ^= 1 << rng.below(8),
            1 => data[i] = rng.next() as u8,
            2 => {
                let interesting = [0x00, 0xFF, 0x7F, 0x80, 0x01];
                data[i] = interesting[rng.below(interesting.len())];
            }
            3 => {
                let len = 1 + rng.below(16.min(data.len() - i));
                data.drain(i..i + len);
            }
            4 => {
                let len = 1 + rng.below(16);
                for _ in 0..len {
                    data.insert(i, rng.next() as u8);
                }
            }
            5 => {
                // Copy a chunk from elsewhere (duplicates opcodes, records, JSON fragments).
                let j = rng.below(data.len());
                let len = 1 + rng.below(32.min(data.len() - j));
                let chunk: Vec<u8> = data[j..j + len].to_vec();
                let at = rng.below(data.len());
                data.splice(at..at, chunk);
            }
            _ => {
                // Overwrite 4 or 8 bytes with an extreme little-endian integer.
                let vals: [u64; 4] = [u64::MAX, u32::MAX as u64, 1 << 31, 0];
                let v = vals[rng.below(4)].to_le_bytes();
                let w = if rng.below(2) == 0 { 4 } else { 8 };
                for (k, &byte) in v.iter().enumerate().take(w) {
                    if let Some(b) = data.get_mut(i + k) {
                        *b = byte;
                    }
                }
            }
        }
    }
}

#[test]
fn seeded_random_mutations_of_whole_files() {
    let mut rng = Rng(0x5EED_0F0F_FE00);
    let mut opened = 0usize;
    let mut runs = 0usize;
    for (kind, name) in CORPUS {
        let full = read(name);
        for _ in 0..3000 {
            let mut b = full.clone();
            mutate(&mut rng, &mut b);
            opened += exercise(kind, b) as usize;
            runs += 1;
        }
    }
    eprintln!("whole-file mutations: {runs} runs, {opened} still opened");
}

#[test]
fn seeded_random_mutations_of_pickle_streams() {
    // Mutate data.pkl itself and re-wrap it in a valid zip, so the unpickler and the torch
    // interpretation (not just the zip reader) see the damage.
    let dir = TempDir::new("pklfuzz");
    let mut rng = Rng(0xD1CE_BA5E);
    let mut decoded = 0usize;
    let mut runs = 0usize;
    for name in ["tensors.pt", "tensors_p4.pt", "nested.pt", "malicious_handmade.pt", "unknown_global.pt"] {
        let full = read(name);
        let ar = ZipArchive::parse(&full).unwrap();
        let pkl_entry = ar.entries().iter().find(|e| e.name.ends_with("data.pkl")).unwrap();
        let prefix = pkl_entry.name.trim_end_matches("data.pkl").to_string();
        let pkl = ar.read(&full, pkl_entry).unwrap().to_vec();
        let storages: Vec<(String, Vec<u8>)> = ar
            .entries()
            .iter()
            .filter_map(|e| {
                let k = e.name.strip_prefix(&format!("{prefix}data/"))?;
                Some((k.to_string(), ar.read(&full, e).ok()?.to_vec()))
            })
            .collect();
        for i in 0..1500 {
            let mut p = pkl.clone();
            mutate(&mut rng, &mut p);
            runs += 1;
            if unpickle(&p).is_ok() {
                decoded += 1;
            }
            // Re-wrap a sample of them into a real checkpoint (zip writing is the slow part).
            if i % 3 == 0 {
                let path = dir.path("m.pt");
                let st: Vec<(&str, Vec<u8>)> = storages.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                write_checkpoint(&path, &p, &st);
                exercise("pt", std::fs::read(&path).unwrap());
            }
        }
    }
    eprintln!("pickle mutations: {runs} runs, {decoded} still decoded");
}

#[test]
fn seeded_random_mutations_of_safetensors_headers() {
    // Mutations confined to the JSON header, biased towards digits and structure characters.
    let full = read("single.safetensors");
    let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let mut rng = Rng(0xC0FF_EE00);
    let alphabet = b"0123456789[]{},:\"-eE.FIUBOL_ ";
    let mut ok = 0;
    for _ in 0..20000 {
        let mut b = full.clone();
        for _ in 0..1 + rng.below(4) {
            let i = 8 + rng.below(n);
            b[i] = alphabet[rng.below(alphabet.len())];
        }
        if parse_header(&b).is_ok() {
            ok += 1;
        }
        exercise("st", b);
    }
    eprintln!("header mutations: 20000 runs, {ok} still valid");
}
