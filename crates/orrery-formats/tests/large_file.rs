//! A multi-gigabyte `.pt` written at test time (streamed: never held in memory) with ZIP64
//! records: opening it and reading one small tensor must not pull the big storages into
//! memory. Process RSS (VmRSS) is measured across open + read.
//!
//! This is the only test in this binary so that no other test's allocations disturb RSS.

mod common;

use std::time::Instant;

use common::{f32_bytes, Pickler, TempDir, TorchZipWriter};
use orrery_formats::{open_weights, TensorData};

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Elements per big storage: 2 x 2.2e9 bytes of f32, a 4.4 GB file, so that the last
/// entries lie beyond 4 GiB and their offsets only fit in the ZIP64 fields. Override with
/// ORRERY_BIG_PT_ELEMS (at least 250000000: the file must stay >= 2 GB).
fn big_elems() -> u64 {
    std::env::var("ORRERY_BIG_PT_ELEMS").ok().and_then(|v| v.parse().ok()).unwrap_or(550_000_000)
}

fn start_of(src: &dyn orrery_formats::WeightSource, name: &str) -> u64 {
    match src.load(name).unwrap().data {
        TensorData::Mapped { start, .. } => start as u64,
        TensorData::Owned(_) => panic!("{name} not mapped"),
    }
}

#[test]
fn multi_gigabyte_checkpoint_opens_without_loading_storages() {
    let n = big_elems();
    let dir = TempDir::new("big");
    // ORRERY_BIG_PT_KEEP=<path> writes the file there and keeps it (to check it with torch:
    // `torch.load(path, mmap=True, weights_only=True)`).
    let keep = std::env::var_os("ORRERY_BIG_PT_KEEP").map(std::path::PathBuf::from);
    let path = keep.clone().unwrap_or_else(|| dir.path("big.pt"));

    let t0 = Instant::now();
    let mut p = Pickler::new();
    p.raw(b"}(");
    p.str("big.a").tensor("FloatStorage", "0", n as i64, 0, &[n as i64], &[1]);
    p.str("big.b").tensor("FloatStorage", "1", n as i64, 0, &[(n / 1000) as i64, 1000], &[1000, 1]);
    p.str("small").tensor("FloatStorage", "2", 16, 0, &[4, 4], &[4, 1]);
    p.str("small_t").tensor("FloatStorage", "2", 16, 0, &[4, 4], &[1, 4]);
    p.raw(b"u");
    let pickle = p.finish();
    let small: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 1.0).collect();

    let mut w = TorchZipWriter::create(&path, "big");
    w.add("data.pkl", &pickle);
    w.add("byteorder", b"little");
    // Element i of each big storage holds (i % 1024) as f32; 8 MiB chunks hold whole periods.
    let pattern = |chunk: &mut [u8], off: u64| {
        let first = off / 4;
        for (j, c) in chunk.chunks_exact_mut(4).enumerate() {
            c.copy_from_slice(&(((first + j as u64) % 1024) as f32).to_le_bytes());
        }
    };
    w.add_streamed("data/0", n * 4, pattern);
    w.add_streamed("data/1", n * 4, pattern);
    w.add("data/2", &f32_bytes(&small));
    w.add("version", b"3\n");
    w.finish();
    let size = std::fs::metadata(&path).unwrap().len();
    let write_s = t0.elapsed().as_secs_f64();
    assert!(size >= 2_000_000_000, "{size}");

    let rss0 = vm_rss_kib();
    let t1 = Instant::now();
    let src = open_weights(&path).unwrap();
    let t = src.load("small").unwrap();
    let values: Vec<f64> = t.to_f64_vec();
    let rss1 = vm_rss_kib();
    let open_s = t1.elapsed().as_secs_f64();
    assert_eq!(values, small.iter().map(|&x| x as f64).collect::<Vec<_>>());
    assert!(t.is_zero_copy());
    let tt = src.load("small_t").unwrap();
    assert!(!tt.is_zero_copy());
    assert_eq!(tt.to_f64_vec()[..4], [-1.0, 0.0, 1.0, 2.0]);

    // The big tensors are described and mapped, not read.
    let a = src.info("big.a").unwrap();
    assert_eq!(a.byte_len as u64, n * 4);
    let big = src.load("big.b").unwrap();
    let TensorData::Mapped { start, len, .. } = &big.data else { panic!("big.b should be mapped") };
    assert!(*start as u64 > n * 4, "second storage lies after the first");
    assert_eq!(*len as u64, n * 4);
    // Touch just the last element of big.b.
    let bytes = big.as_bytes();
    let last = f32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
    assert_eq!(last, ((n - 1) % 1024) as f32);
    let rss2 = vm_rss_kib();

    eprintln!(
        "large_file: file {size} bytes ({:.2} GB) written in {write_s:.1}s; open + read 'small' took {:.1} ms; \
         VmRSS before {rss0} KiB, after open+read {rss1} KiB (+{} KiB), after touching big.b's last element \
         {rss2} KiB",
        size as f64 / 1e9,
        open_s * 1e3,
        rss1 as i64 - rss0 as i64
    );
    assert!(rss1.saturating_sub(rss0) < 64 * 1024, "RSS grew by {} KiB", rss1 - rss0);
    assert!(rss2.saturating_sub(rss0) < 64 * 1024, "RSS grew by {} KiB", rss2 - rss0);
    if n * 4 * 2 > u32::MAX as u64 {
        assert!(start_of(src.as_ref(), "small") > u32::MAX as u64, "'small' should lie past 4 GiB");
    }
    drop(src);
    drop(dir);
    if keep.is_none() {
        assert!(!path.exists());
    }
}
