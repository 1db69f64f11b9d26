//! Streaming weights through a bounded ring: a chain of linears (one bf16, a transposed weight,
//! a bias) run three times from a ring that holds only two of its weights gives bit-identical
//! outputs to the resident run, reads every weight once per invocation, and with a throttled
//! source stalls the kernels by about the time the loads take.

use orrery_compiler::{compile, min_weight_capacity, plan_weight_timeline, Plan};
use orrery_cpu::CpuTensor;
use orrery_formats::{write_safetensors, TensorToWrite};
use orrery_ir::{DType, GraphBuilder};
use orrery_runtime::{EventKind, FormatWeights, Prefetch, Session, WeightStream};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

const D: usize = 96;

fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0) / 8.0).collect()
}

/// `layers` linears of D × D (layer 1 stored bf16), then a matmul with a transposed weight.
fn model(dir: &std::path::Path, layers: usize) -> (Plan, Arc<FormatWeights>) {
    let mut b = GraphBuilder::new();
    let mut x = b.input("x", DType::F32, [3, D]).unwrap();
    let mut files: Vec<(String, DType, Vec<usize>, Vec<u8>)> = Vec::new();
    for i in 0..layers {
        let dtype = if i == 1 { DType::BF16 } else { DType::F32 };
        let w = b.weight(&format!("l{i}.weight"), dtype, [D, D]).unwrap();
        let bias = b.weight(&format!("l{i}.bias"), DType::F32, [D]).unwrap();
        x = b.linear(&format!("l{i}"), x, w, Some(bias)).unwrap();
        let wv = values(D * D, i as u64);
        let bytes: Vec<u8> = if dtype == DType::BF16 {
            wv.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()
        } else {
            wv.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        files.push((format!("l{i}.weight"), dtype, vec![D, D], bytes));
        files.push((
            format!("l{i}.bias"),
            DType::F32,
            vec![D],
            values(D, 50 + i as u64).iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let wt = b.weight("head", DType::F32, [D, D]).unwrap();
    let t = b.permute("head_t", wt, &[1, 0]).unwrap();
    let y = b.matmul("out", x, t).unwrap();
    b.output("y", y).unwrap();
    files.push((
        "head".into(),
        DType::F32,
        vec![D, D],
        values(D * D, 99).iter().flat_map(|v| v.to_le_bytes()).collect(),
    ));
    let list: Vec<TensorToWrite> =
        files.iter().map(|(n, d, s, b)| TensorToWrite { name: n, dtype: *d, shape: s, data: b }).collect();
    let path = dir.join("model.safetensors");
    write_safetensors(&path, &list).unwrap();
    let weights = Arc::new(FormatWeights::new(orrery_formats::open_weights(&path).unwrap()));
    (compile(b.finish().unwrap()).unwrap(), weights)
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("orrery-stream-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn input(seed: u64) -> HashMap<String, CpuTensor> {
    HashMap::from([("x".to_string(), CpuTensor::from_vec(vec![3, D], values(3 * D, seed)))])
}

#[test]
fn a_ring_of_two_weights_gives_the_resident_results_bit_for_bit() {
    let dir = tmp("bits");
    let (plan, weights) = model(&dir, 5);
    let resident = Session::new(plan.clone(), weights.clone(), 2).unwrap();
    let want: Vec<Vec<f32>> = (0..3).map(|s| resident.run(&input(s)).unwrap().0["y"].to_f32_vec()).collect();

    let invocations = [&plan, &plan, &plan];
    let min = min_weight_capacity(&invocations);
    // A weight and its bias at once is the most one kernel reads.
    assert_eq!(min, (D * D * 4 + D * 4) as u64);
    let timeline = plan_weight_timeline(&invocations, 2 * min).unwrap();
    let total: u64 = plan.weight_bytes;
    assert!(timeline.capacity < total / 2, "the ring holds well under half the weights");
    let stream = WeightStream::start(timeline, vec![weights.clone(); 3], None, Prefetch::Planned).unwrap();
    let session = Session::new(plan.clone(), weights, 2).unwrap();
    for (s, want) in want.iter().enumerate() {
        let cursor = stream.begin(s).unwrap();
        let (out, stats) = session.run_streamed(input(s as u64), &cursor).unwrap();
        assert_eq!(&out["y"].to_f32_vec(), want, "run {s}");
        assert_eq!(stats.weights_resolved_bytes, 0, "nothing through the resolver");
    }
    let stats = stream.stats();
    assert_eq!(stats.bytes_loaded, 3 * total, "every weight read once per invocation");
    assert_eq!(stats.loads, 3 * 11);
    // Out of order is refused.
    assert!(stream.begin(0).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_slow_source_shows_as_load_and_stall_time() {
    let dir = tmp("slow");
    let (plan, weights) = model(&dir, 4);
    let timeline = plan_weight_timeline(&[&plan], plan.weight_bytes * 2).unwrap();
    // 2 MB/s: the ~190 KB of weights take about 95 ms to arrive.
    let rate = 2e6;
    let stream = WeightStream::start(timeline, vec![weights.clone()], Some(rate), Prefetch::Planned).unwrap();
    let session = Session::new(plan.clone(), weights, 1).unwrap();
    let cursor = stream.begin(0).unwrap();
    session.run_streamed(input(1), &cursor).unwrap();
    let stats = stream.stats();
    let expected = plan.weight_bytes as f64 / rate;
    assert!(stats.load_seconds >= 0.95 * expected, "{} < {expected}", stats.load_seconds);
    // The kernels take microseconds: nearly all of the load time is stall.
    assert!(stats.stall_seconds >= 0.8 * expected, "stall {} of {expected}", stats.stall_seconds);
    let events = stream.events();
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::Load).count(), 9);
    assert!(events.iter().all(|e| e.end >= e.start));
    std::fs::remove_dir_all(&dir).unwrap();
}
