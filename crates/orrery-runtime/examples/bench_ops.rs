//! Times single-op plans on the CPU backend, for BENCHMARKS.md.
//!
//! `cargo run --release -p orrery-runtime --example bench_ops -- <case> [--threads N] [--runs R]`
//! prints one JSON line: the case, median and all run times (first, warm-up run excluded) and
//! the achieved GFLOP/s. Cases: `gemm<N>` (N³ f32), `attn<L>` (16 heads × 64, self-attention
//! of length L), `conv` (3×3, 256→256 channels at 64×64). `tools/bench/compare.sh` interleaves
//! these runs with `tools/bench/torch_ops.py` on the same shapes.

use orrery_cpu::CpuTensor;
use orrery_ir::{AttentionMask, ConvPadMode, ConvParams, DType, Graph, GraphBuilder, Op};
use orrery_runtime::{MemoryWeights, Session};
use std::collections::HashMap;
use std::sync::Arc;

fn filled(shape: &[usize], seed: u32) -> CpuTensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) - 0.5);
    CpuTensor::from_vec(shape.to_vec(), data.collect())
}

/// Input names with their shapes.
type CaseInputs = Vec<(&'static str, Vec<usize>)>;

/// The graph of one case plus its inputs.
fn case(name: &str) -> Option<(Graph, CaseInputs)> {
    let mut b = GraphBuilder::new();
    let inputs: CaseInputs;
    if let Some(n) = name.strip_prefix("gemm").and_then(|s| s.parse::<usize>().ok()) {
        inputs = vec![("a", vec![n, n]), ("b", vec![n, n])];
        let a = b.input("a", DType::F32, [n, n]).ok()?;
        let w = b.input("b", DType::F32, [n, n]).ok()?;
        let y = b.matmul("mm", a, w).ok()?;
        b.output("y", y).ok()?;
    } else if let Some(l) = name.strip_prefix("attn").and_then(|s| s.parse::<usize>().ok()) {
        let shape = vec![1, 16, l, 64];
        inputs = vec![("q", shape.clone()), ("k", shape.clone()), ("v", shape.clone())];
        let q = b.input("q", DType::F32, shape.clone()).ok()?;
        let k = b.input("k", DType::F32, shape.clone()).ok()?;
        let v = b.input("v", DType::F32, shape).ok()?;
        let y = b.op("attn", Op::Attention { scale: 0.125, mask: AttentionMask::None }, &[q, k, v]).ok()?;
        b.output("y", y).ok()?;
    } else if name == "conv" {
        inputs = vec![("x", vec![1, 256, 64, 64]), ("w", vec![256, 256, 3, 3])];
        let x = b.input("x", DType::F32, [1, 256, 64, 64]).ok()?;
        let w = b.input("w", DType::F32, [256, 256, 3, 3]).ok()?;
        let p = ConvParams {
            stride: vec![1, 1],
            dilation: vec![1, 1],
            padding: vec![(1, 1), (1, 1)],
            pad_mode: ConvPadMode::Zeros,
            groups: 1,
            has_bias: false,
        };
        let y = b.op("conv", Op::Conv(p), &[x, w]).ok()?;
        b.output("y", y).ok()?;
    } else {
        return None;
    }
    Some((b.finish().ok()?, inputs))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().cloned().unwrap_or_else(|| "gemm1024".into());
    let flag = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let threads: usize = flag("--threads").unwrap_or(2);
    let runs: usize = flag("--runs").unwrap_or(5);
    let Some((graph, inputs)) = case(&name) else {
        eprintln!("unknown case `{name}`: use gemm<N>, attn<L> or conv");
        std::process::exit(2);
    };
    let plan = orrery_compiler::compile(graph).expect("valid case graph");
    let flops = plan.flops as f64;
    let session = Session::new(plan, Arc::new(MemoryWeights::new()), threads).expect("thread pool");
    let feed: HashMap<String, CpuTensor> =
        inputs.iter().enumerate().map(|(i, (n, s))| (n.to_string(), filled(s, i as u32))).collect();
    let mut times = Vec::new();
    for i in 0..=runs {
        let (_, stats) = session.run(&feed).expect("case runs");
        if i > 0 {
            times.push(stats.seconds);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{{\"impl\": \"orrery\", \"case\": \"{name}\", \"threads\": {threads}, \"median_s\": {median:.6}, \"gflops\": {:.1}, \"peak_rss_bytes\": {}, \"runs_s\": {times:?}}}",
        flops / median / 1e9,
        orrery_runtime::peak_rss_bytes().unwrap_or(0)
    );
}
