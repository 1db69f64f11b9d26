//! Values computed from weights and constants alone (T5's relative position bias, the DiT's
//! learnable position embedding) are computed by a session's first run, kept within the pack
//! budget, and read by later runs instead of running their kernels again: same bits, every
//! time.

use orrery_cpu::{CpuTensor, PackBudget};
use orrery_ir::{DType, Graph, GraphBuilder, Op, RefTensor};
use orrery_runtime::{MemoryWeights, RunStats, Session};
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes of the values the rest of the graph reads: the gathered bias (128 × 32 f32), `w²`
/// (32 × 32) and the output `table²` (16 × 4).
const KEPT_BYTES: u64 = (128 * 32 + 32 * 32 + 16 * 4) * 4;

/// `s = linear(x, w²) · biasᵀ`, where `bias` is a table gathered by constant indices, then
/// permuted and copied (as T5's relative bias); `w²` is also a graph output, and so is
/// `table²`, which nothing else reads.
fn graph() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, [8, 32]).unwrap();
    let w = b.weight("w", DType::F32, [32, 32]).unwrap();
    let table = b.weight("table", DType::F32, [16, 4]).unwrap();
    let indices: Vec<f64> = (0..32 * 32).map(|i| ((i / 32 + 3 * (i % 32)) % 16) as f64).collect();
    let indices = b.constant("indices", RefTensor::new(DType::I64, vec![32, 32], indices));
    let gathered = b.op("gathered", Op::Embedding, &[table, indices]).unwrap();
    let permuted = b.permute("gathered.hqk", gathered, &[2, 0, 1]).unwrap();
    let bias = b.reshape("bias", permuted, &[128, 32]).unwrap();
    let w2 = b.mul("w2", w, w).unwrap();
    let y = b.linear("y", x, w2, None).unwrap();
    let bias_t = b.permute("bias.t", bias, &[1, 0]).unwrap();
    let s = b.matmul("s", y, bias_t).unwrap();
    b.output("s", s).unwrap();
    b.output("w2", w2).unwrap();
    let t2 = b.mul("t2", table, table).unwrap();
    b.output("t2", t2).unwrap();
    // A constant output, bound though no kernel reads it.
    b.output("indices", indices).unwrap();
    b.finish().unwrap()
}

fn weights(budget: Arc<PackBudget>) -> Arc<MemoryWeights> {
    let mut w = MemoryWeights::with_pack_budget(budget);
    w.insert(
        "w",
        CpuTensor::from_vec(vec![32, 32], (0..1024).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect()),
    );
    w.insert("table", CpuTensor::from_vec(vec![16, 4], (0..64).map(|i| (i as f32 - 30.0) / 8.0).collect()));
    Arc::new(w)
}

fn inputs() -> HashMap<String, CpuTensor> {
    let x = CpuTensor::from_vec(vec![8, 32], (0..256).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect());
    HashMap::from([("x".to_string(), x)])
}

fn bits(out: &HashMap<String, CpuTensor>) -> Vec<Vec<u32>> {
    ["s", "w2", "t2"].iter().map(|n| out[*n].to_f32_vec().iter().map(|v| v.to_bits()).collect()).collect()
}

/// Seconds of the kernels computing values from weights alone (the gather, the copy of its
/// permuted view, `w²`, `table²`), by kernel name.
fn derived_kernel_seconds(session: &Session, stats: &RunStats) -> Vec<(String, f64)> {
    let plan = session.plan();
    plan.kernels
        .iter()
        .zip(&stats.kernel_seconds)
        .filter(|(k, _)| ["gathered", "bias", "w2", "t2"].iter().any(|n| k.name.starts_with(n)))
        .map(|(k, &t)| (k.name.clone(), t))
        .collect()
}

#[test]
fn values_from_weights_alone_are_kept_after_the_first_run() {
    let plan = orrery_compiler::compile(graph()).unwrap();
    let budget = PackBudget::new(1 << 20);
    let session = Session::new(plan.clone(), weights(budget.clone()), 2).unwrap();
    let (first, stats) = session.run(&inputs()).unwrap();
    let computed = derived_kernel_seconds(&session, &stats);
    assert!(computed.len() >= 2, "the derived kernels are in the plan: {computed:?}");
    assert!(computed.iter().all(|(_, t)| *t > 0.0), "the first run computes them: {computed:?}");
    assert_eq!(session.kept_derived_bytes(), KEPT_BYTES);
    assert_eq!(budget.used(), KEPT_BYTES, "kept values draw from the budget");

    for run in 1..3 {
        let (out, stats) = session.run(&inputs()).unwrap();
        assert_eq!(bits(&out), bits(&first), "run {run}");
        assert_eq!(out["indices"].to_f64_vec()[1], 3.0, "run {run}: the constant output");
        let skipped = derived_kernel_seconds(&session, &stats);
        assert!(skipped.iter().all(|(_, t)| *t == 0.0), "run {run} runs derived kernels again: {skipped:?}");
    }

    // Without room in the budget every run computes them, to the same bits.
    let none = PackBudget::new(KEPT_BYTES - 1);
    let unkept = Session::new(plan, weights(none.clone()), 2).unwrap();
    for run in 0..2 {
        let (out, stats) = unkept.run(&inputs()).unwrap();
        assert_eq!(bits(&out), bits(&first), "unkept, run {run}");
        assert!(derived_kernel_seconds(&unkept, &stats).iter().all(|(_, t)| *t > 0.0), "unkept, run {run}");
    }
    assert_eq!((unkept.kept_derived_bytes(), none.used()), (0, 0), "a value that does not fit keeps none");

    drop(session);
    assert_eq!(budget.used(), 0, "a dropped session gives the bytes back");
}
