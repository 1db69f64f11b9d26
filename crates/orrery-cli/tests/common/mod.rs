//! Shared by the CLI integration tests: running the binary, temporary folders, and reading
//! and comparing safetensors outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The orrery binary, with its default plan cache in the temporary folder rather than the
/// user's cache (plans are keyed by the binary, so test runs never see each other's stale ones).
pub fn orrery_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orrery"));
    c.env("ORRERY_PLAN_CACHE", std::env::temp_dir().join("orrery-cli-test-plans"));
    c
}

pub fn orrery(args: &[&str]) -> Output {
    orrery_command().args(args).output().expect("the orrery binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("orrery-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Reads one f32 tensor from a safetensors file with the project's own reader.
pub fn read_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let source = orrery_formats::open_weights(path).unwrap();
    let t = orrery_runtime::tensor_from_source(source.as_ref(), name).unwrap();
    (t.shape().to_vec(), t.to_f32_vec())
}

pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    diff / scale
}

/// Copies the tensors of `from` whose names pass `keep` into a new f32 safetensors file `to`.
pub fn copy_tensors(from: &Path, keep: impl Fn(&str) -> bool, to: &Path) {
    let source = orrery_formats::open_weights(from).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = source
        .names()
        .into_iter()
        .filter(|n| keep(n))
        .map(|n| {
            let (shape, values) = read_f32(from, &n);
            (n, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let list: Vec<orrery_formats::TensorToWrite> = tensors
        .iter()
        .map(|(name, shape, data)| orrery_formats::TensorToWrite { name, dtype: orrery_ir::DType::F32, shape, data })
        .collect();
    orrery_formats::write_safetensors(to, &list).unwrap();
}
