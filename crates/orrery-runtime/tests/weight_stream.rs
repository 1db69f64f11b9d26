//! Streaming weights through a bounded ring: a chain of linears (one bf16, a transposed weight,
//! a bias) run three times from a ring that holds only two of its weights gives bit-identical
//! outputs to the resident run, reads every weight once per invocation, and with a throttled
//! source stalls the kernels by about the time the loads take; issue points planned with a
//! wrong cost model are re-timed from measured speeds, and the stalls they caused go away.

use orrery_compiler::{compile, min_weight_capacity, plan_weight_timeline, IssueModel, Plan, RunPoint};
use orrery_cpu::CpuTensor;
use orrery_formats::{write_safetensors, TensorToWrite};
use orrery_ir::{DType, GraphBuilder};
use orrery_runtime::{EventKind, FormatWeights, Prefetch, Session, StreamOptions, WeightStream};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

const D: usize = 96;

fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0) / 8.0).collect()
}

/// `layers` linears of D × D (layer 1 stored bf16), then a matmul with a transposed weight,
/// on `rows` × D inputs.
fn model(dir: &std::path::Path, layers: usize, rows: usize) -> (Plan, Arc<FormatWeights>) {
    let mut b = GraphBuilder::new();
    let mut x = b.input("x", DType::F32, [rows, D]).unwrap();
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
    rows_input(3, seed)
}

fn rows_input(rows: usize, seed: u64) -> HashMap<String, CpuTensor> {
    HashMap::from([("x".to_string(), CpuTensor::from_vec(vec![rows, D], values(rows * D, seed)))])
}

fn options(io_bandwidth: Option<f64>) -> StreamOptions {
    StreamOptions { io_bandwidth, ..StreamOptions::default() }
}

#[test]
fn a_ring_of_two_weights_gives_the_resident_results_bit_for_bit() {
    let dir = tmp("bits");
    let (plan, weights) = model(&dir, 5, 3);
    let resident = Session::new(plan.clone(), weights.clone(), 2).unwrap();
    let want: Vec<Vec<f32>> = (0..3).map(|s| resident.run(&input(s)).unwrap().0["y"].to_f32_vec()).collect();

    let invocations = [&plan, &plan, &plan];
    let min = min_weight_capacity(&invocations);
    // A weight and its bias at once is the most one kernel reads.
    assert_eq!(min, (D * D * 4 + D * 4) as u64);
    let timeline = plan_weight_timeline(&invocations, 2 * min).unwrap();
    let total: u64 = plan.weight_bytes;
    assert!(timeline.capacity < total / 2, "the ring holds well under half the weights");
    let stream = WeightStream::start(timeline, vec![weights.clone(); 3], options(None)).unwrap();
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
    let (plan, weights) = model(&dir, 4, 3);
    let timeline = plan_weight_timeline(&[&plan], plan.weight_bytes * 2).unwrap();
    // 2 MB/s: the ~190 KB of weights take about 95 ms to arrive.
    let rate = 2e6;
    let stream = WeightStream::start(timeline, vec![weights.clone()], options(Some(rate))).unwrap();
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

/// Seconds invocation `i` waited for weights.
fn stall_of(events: &[orrery_runtime::StreamEvent], i: usize) -> f64 {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Stall && e.invocation == i)
        .map(|e| (e.end - e.start).as_secs_f64())
        .sum()
}

#[test]
fn issue_points_from_a_wrong_model_are_re_timed_from_measured_speeds() {
    let dir = tmp("retime");
    // 6 products of 16384 × 96 × 96 per invocation (~20 ms here) against 223 KB of weights
    // read at 40 MB/s (~6 ms): loads issued early enough never stall.
    let rows = 16384;
    let (plan, weights) = model(&dir, 5, rows);
    let invocations = [&plan, &plan, &plan, &plan];
    let mut timeline = plan_weight_timeline(&invocations, 8 * plan.weight_bytes).unwrap();
    // A badly wrong plan: every load issued only once the kernel before its first use is done
    // (no lead at all), as a model that believed loads instant would plan them.
    let model = IssueModel { flop_rate: 50e9, memory_bandwidth: 10e9, kernel_overhead: 0.0, load_bandwidth: 1e9 };
    timeline.schedule_issue_points(&invocations, &model);
    let per = plan.kernels.len();
    for l in &mut timeline.loads {
        let due = timeline.kernels_per_invocation[..l.first_use.invocation].iter().sum::<usize>() + l.first_use.kernel;
        l.issue_at = due.checked_sub(1).map(|s| RunPoint { invocation: s / per, kernel: s % per });
    }
    assert!(timeline.loads.iter().all(|l| l.issue_after.is_none()), "the ring never binds here");
    let session = Session::new(plan.clone(), weights.clone(), 1).unwrap();
    let want = session.run(&rows_input(rows, 7)).unwrap().0["y"].to_f32_vec();
    let rate = 40e6;
    let mut late_stall = Vec::new();
    for retime in [false, true] {
        let stream = WeightStream::start(
            timeline.clone(),
            vec![weights.clone(); 4],
            StreamOptions { io_bandwidth: Some(rate), prefetch: Prefetch::Planned, retime },
        )
        .unwrap();
        for i in 0..4 {
            let (out, _) = session.run_streamed(rows_input(rows, 7), &stream.begin(i).unwrap()).unwrap();
            assert_eq!(out["y"].to_f32_vec(), want, "retime {retime}, invocation {i}");
        }
        let stats = stream.stats();
        let events = stream.events();
        let stalls: Vec<f64> = (0..4).map(|i| stall_of(&events, i)).collect();
        eprintln!("retime {retime}: stalls per invocation {stalls:?}, {stats:?}");
        if retime {
            assert_eq!(stats.retimes, 3, "before each invocation after the first");
            assert!(stats.issue_points_moved > 0);
            assert_eq!(events.iter().filter(|e| e.kind == EventKind::Retime).count(), 3);
        } else {
            assert_eq!(stats.retimes, 0);
        }
        late_stall.push(stalls[2] + stalls[3]);
    }
    // Without re-timing every load stalls for its whole read (~2 × 6 ms over the last two
    // invocations); re-timed from the first invocation's speeds, the loads run ahead of the
    // kernels and almost nothing waits.
    assert!(late_stall[0] > 0.006, "the wrong model should stall: {late_stall:?}");
    assert!(late_stall[1] < 0.3 * late_stall[0], "re-timing should remove most stalls: {late_stall:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
