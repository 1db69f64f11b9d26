//! Weights named as slices of stored tensors (`w@rows[a:b]`, `w@cols[a:b]`): resolved and
//! streamed with only the slice's bytes read, equal to the same part of the whole tensor, and
//! a linear split into row slices gives the whole linear's outputs bit for bit.

use orrery_compiler::{compile, min_weight_capacity, plan_weight_timeline};
use orrery_cpu::CpuTensor;
use orrery_formats::{write_safetensors, TensorToWrite};
use orrery_ir::{DType, GraphBuilder, Shape, TensorType};
use orrery_runtime::{FormatWeights, Session, StreamOptions, WeightResolver, WeightStream};
use std::collections::HashMap;
use std::sync::Arc;

fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType { dtype, shape: Shape::new(dims.to_vec()) }
}

/// `w` f32 [6, 4, 2] holding 0, 1, 2, …; `h` bf16 [5, 3] holding 0.5·i.
fn checkpoint(dir: &std::path::Path) -> Arc<FormatWeights> {
    let w: Vec<u8> = (0..48).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let h: Vec<u8> = (0..15).flat_map(|i| half::bf16::from_f32(0.5 * i as f32).to_le_bytes()).collect();
    let path = dir.join("model.safetensors");
    write_safetensors(
        &path,
        &[
            TensorToWrite { name: "w", dtype: DType::F32, shape: &[6, 4, 2], data: &w },
            TensorToWrite { name: "h", dtype: DType::BF16, shape: &[5, 3], data: &h },
        ],
    )
    .unwrap();
    Arc::new(FormatWeights::new(orrery_formats::open_weights(&path).unwrap()))
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("orrery-slices-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn slices_resolve_and_read_to_the_parts_of_the_tensor() {
    let dir = tmp("parts");
    let weights = checkpoint(&dir);
    // Rows 1..4 of w: elements 8..32.
    let rows = weights.resolve("w@rows[1:4]", &ty(DType::F32, &[3, 4, 2])).unwrap();
    assert_eq!(rows.to_f32_vec(), (8..32).map(|i| i as f32).collect::<Vec<_>>());
    // Columns 1..3 of w: per row r, elements r·8 + 2..6.
    let cols = weights.resolve("w@cols[1:3]", &ty(DType::F32, &[6, 2, 2])).unwrap();
    let want: Vec<f32> = (0..6).flat_map(|r| (r * 8 + 2..r * 8 + 6).map(|i| i as f32)).collect();
    assert_eq!(cols.to_f32_vec(), want);
    // bf16 columns, read through the streaming path too.
    let h = weights.resolve("h@cols[2:3]", &ty(DType::BF16, &[5, 1])).unwrap();
    assert_eq!(h.to_f32_vec(), [1.0, 2.5, 4.0, 5.5, 7.0]);
    let mut bytes = vec![0u8; 10];
    weights.read_into("h@cols[2:3]", &mut bytes).unwrap();
    let read: Vec<f32> = bytes.chunks(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    assert_eq!(read, [1.0, 2.5, 4.0, 5.5, 7.0]);
    // Only the slices' bytes were counted: 3·8·4 + 6·4·4 + 5·2 (resolved) + 5·2 (read).
    assert_eq!(weights.bytes_read(), 96 + 96 + 10 + 10);
    // Ranges outside the tensor, wrong declared shapes and unknown bases are refused.
    assert!(weights.resolve("w@rows[4:7]", &ty(DType::F32, &[3, 4, 2])).is_err());
    assert!(weights.resolve("w@rows[0:2]", &ty(DType::F32, &[3, 4, 2])).unwrap_err().contains("expects"));
    assert!(weights.resolve("nope@rows[0:1]", &ty(DType::F32, &[1])).is_err());
    assert!(weights.read_into("w@cols[0:5]", &mut [0u8; 4]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_linear_split_into_row_slices_gives_the_whole_linears_bits_resident_and_streamed() {
    let dir = tmp("split");
    let weights = checkpoint(&dir);
    let x = CpuTensor::from_vec(vec![2, 8], (0..16).map(|i| (i as f32 * 0.37).sin()).collect());
    // Whole: y = x · Wᵀ with W = w viewed as [6, 8].
    let mut b = GraphBuilder::new();
    let xi = b.input("x", DType::F32, [2, 8]).unwrap();
    let w = b.weight("w", DType::F32, [6, 4, 2]).unwrap();
    let w = b.reshape("w2", w, &[6, 8]).unwrap();
    let y = b.linear("fc", xi, w, None).unwrap();
    b.output("y", y).unwrap();
    let whole = Session::new(compile(b.finish().unwrap()).unwrap(), weights.clone(), 2).unwrap();
    let want = whole.run(&HashMap::from([("x".to_string(), x.clone())])).unwrap().0["y"].to_f32_vec();
    // Split: rows 0..2, 2..5, 5..6, each its own weight, concatenated.
    let mut b = GraphBuilder::new();
    let xi = b.input("x", DType::F32, [2, 8]).unwrap();
    let mut parts = Vec::new();
    for (i, (lo, hi)) in [(0, 2), (2, 5), (5, 6)].into_iter().enumerate() {
        let w = b.weight(&format!("w@rows[{lo}:{hi}]"), DType::F32, [hi - lo, 4, 2]).unwrap();
        let w = b.reshape(&format!("w2.{i}"), w, &[hi - lo, 8]).unwrap();
        parts.push(b.linear(&format!("fc.{i}"), xi, w, None).unwrap());
    }
    let y = b.concat("y", &parts, 1).unwrap();
    b.output("y", y).unwrap();
    let plan = compile(b.finish().unwrap()).unwrap();
    let split = Session::new(plan.clone(), weights.clone(), 2).unwrap();
    let got = split.run(&HashMap::from([("x".to_string(), x.clone())])).unwrap().0["y"].to_f32_vec();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // Streamed through the smallest ring: one slice at a time (the largest, 96 B, aligned).
    let ring = min_weight_capacity(&[&plan]);
    assert_eq!(ring, 128);
    let timeline = plan_weight_timeline(&[&plan], ring).unwrap();
    let stream = WeightStream::start(timeline, vec![weights.clone()], StreamOptions::default()).unwrap();
    let (out, _) = split.run_streamed(HashMap::from([("x".to_string(), x)]), &stream.begin(0).unwrap()).unwrap();
    assert_eq!(
        out["y"].to_f32_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(stream.stats().bytes_loaded, 6 * 8 * 4, "each row read once");
    std::fs::remove_dir_all(&dir).unwrap();
}
