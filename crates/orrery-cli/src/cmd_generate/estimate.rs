//! How long a run will take here, before it starts: the plans' FLOPs over this machine's
//! measured speed, and how to print times and sizes for people.

use anyhow::Result;
use orrery_cpu::CpuTensor;
use std::collections::HashMap;

/// Runs estimated longer than this need `--yes`.
pub const LONG_RUN_SECONDS: f64 = 30.0 * 60.0;

/// The best of `runs` timings of `plan` on `inputs` (no weights), on `threads` workers.
pub fn best_run_seconds(
    plan: orrery_compiler::Plan,
    inputs: &HashMap<String, CpuTensor>,
    threads: usize,
    runs: usize,
) -> Result<f64> {
    let session =
        orrery_runtime::Session::new(plan, std::sync::Arc::new(orrery_runtime::MemoryWeights::new()), threads)?;
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        best = best.min(session.run(inputs)?.1.seconds);
    }
    Ok(best)
}

/// The speed of an f32 matrix product `[m, k] × [k, n]` through the runtime here, in
/// FLOP/s (best of `runs`).
fn gemm_rate((m, k, n): (usize, usize, usize), threads: usize, runs: usize) -> Result<f64> {
    let mut b = orrery_ir::GraphBuilder::new();
    let x = b.input("a", orrery_ir::DType::F32, [m, k])?;
    let w = b.input("b", orrery_ir::DType::F32, [k, n])?;
    let y = b.matmul("mm", x, w)?;
    b.output("y", y)?;
    let inputs = HashMap::from([
        ("a".to_string(), CpuTensor::from_vec(vec![m, k], vec![1f32; m * k])),
        ("b".to_string(), CpuTensor::from_vec(vec![k, n], vec![1f32; k * n])),
    ]);
    let best = best_run_seconds(orrery_compiler::compile(b.finish()?)?, &inputs, threads, runs)?;
    Ok(2.0 * (m * k * n) as f64 / best)
}

/// This machine's speed on what dominates these models: a 512³ f32 matrix product through the
/// runtime (best of 5; small enough to add only 4 MiB to the process), times 0.7, since whole
/// models run at about 70% of their GEMM speed here (BENCHMARKS.md).
pub fn measured_gflops(threads: usize) -> Result<f64> {
    Ok(0.7 * gemm_rate((512, 512, 512), threads, 5)? / 1e9)
}

pub fn human_time(seconds: f64) -> String {
    match seconds {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 10.0 => format!("{s:.1} s"),
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

pub fn human_bytes(bytes: u64) -> String {
    match bytes as f64 / (1u64 << 20) as f64 {
        mib if mib < 1.0 => format!("{:.0} KiB", mib * 1024.0),
        mib if mib < 10.0 => format!("{mib:.1} MiB"),
        mib if mib < 1024.0 => format!("{mib:.0} MiB"),
        mib => format!("{:.1} GiB", mib / 1024.0),
    }
}

pub fn human_flops(flops: u64) -> String {
    match flops as f64 {
        f if f < 1e12 => format!("{:.1} GFLOP", f / 1e9),
        f => format!("{:.2} TFLOP", f / 1e12),
    }
}
