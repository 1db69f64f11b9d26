//! `orrery plan [--model …] [size flags] [--target cpu|h100|gpu-24gb|gpu-16gb|all]
//! [--memory-budget SIZE] [--io-bandwidth B/S] [--dump] [--json]`: predicts a Text2World or
//! Video2World run from its plans alone: peak memory, weight bytes moved per denoising step
//! and time per step, on this CPU (measured speeds) or on modelled devices.

use crate::cmd_generate::estimate::{best_run_seconds, human_bytes, human_time, measured_gflops};
use crate::cmd_generate::{memory::default_budget, SamplerArg};
use anyhow::{Context, Result};
use orrery_pipeline::{
    resolve_model, CosmosPipeline, MemoryBudget, MemoryPlan, Prediction, RunSize, SamplerKind, Target,
};
use orrery_runtime::{resolve_threads, Prefetch};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    /// This machine: its measured matrix-product speed and memory bandwidth.
    Cpu,
    /// An 80 GB H100 (modelled from its data sheet).
    H100,
    /// A 24 GB card such as an RTX 4090 (modelled).
    Gpu24gb,
    /// A 16 GB card such as an RTX 4080 (modelled).
    Gpu16gb,
    /// All of the above.
    All,
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// A diffusers Cosmos pipeline folder or `org/name[@rev]` in the Hugging Face cache
    /// (default: the built-in tiny pipeline).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 704)]
    height: usize,
    #[arg(long, default_value_t = 1280)]
    width: usize,
    #[arg(long, default_value_t = 121)]
    frames: usize,
    #[arg(long, default_value_t = 36)]
    steps: usize,
    #[arg(long, default_value_t = 7.0)]
    guidance: f32,
    #[arg(long, value_enum, default_value_t = SamplerArg::DiffusersEdm)]
    sampler: SamplerArg,
    #[arg(long, value_enum, default_value_t = TargetArg::All)]
    target: TargetArg,
    /// Bound on planned memory (default: the target's memory; for this CPU the smaller of the
    /// cgroup limit and the memory available, less 1 GiB).
    #[arg(long, value_parser = orrery_runtime::parse_byte_size)]
    memory_budget: Option<u64>,
    /// For the CPU target: how fast weights arrive (default: its memory bandwidth, i.e. files
    /// in the page cache).
    #[arg(long, value_parser = orrery_runtime::parse_byte_size)]
    io_bandwidth: Option<u64>,
    /// The prefetch policy to predict: `planned`, `eager` or `fixed:K` (as `generate --prefetch`).
    #[arg(long, value_parser = crate::cmd_generate::parse_prefetch, default_value = "planned")]
    prefetch: Prefetch,
    /// For the CPU target: run each component whose modelled run takes under this many seconds
    /// once (twice, the second timed) and scale the model to what it measured (0: never).
    #[arg(long, default_value_t = 10.0)]
    calibrate_seconds: f64,
    /// Also print the weight timeline of each streaming target (every load: invocation, weight,
    /// bytes, offset, first use, issue point).
    #[arg(long)]
    dump: bool,
    /// Parallel layouts to report the transformer's communication per denoising step for:
    /// `tp:N` (tensor), `sp:N` (sequence, Ulysses), `cfg` (guidance branches), `cfg+tp:N` /
    /// `cfg+sp:N` (each branch on N ranks), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "cfg,tp:2,tp:4,tp:8,sp:2,sp:4")]
    parallel: Vec<orrery_pipeline::ParallelLayout>,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    plan_cache: crate::plan_cache::PlanCacheArgs,
}

/// Bytes per second of a 64 MiB copy here (read + write counted), best of 5.
fn measured_memory_bandwidth() -> f64 {
    let n = 64 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    2.0 * n as f64 / best
}

/// Seconds one small kernel costs beyond its work: a chain of 64 products of 8 × 8 matrices
/// (what a matrix kernel pays to start, split and join on the pool).
fn measured_kernel_overhead(threads: usize) -> Result<f64> {
    let mut b = orrery_ir::GraphBuilder::new();
    let mut x = b.input("x", orrery_ir::DType::F32, [8, 8])?;
    let w = b.input("w", orrery_ir::DType::F32, [8, 8])?;
    for i in 0..64 {
        x = b.matmul(&format!("m{i}"), x, w)?;
    }
    b.output("y", x)?;
    let options = orrery_compiler::CompileOptions { passes: orrery_compiler::Passes::None, ..Default::default() };
    let plan = orrery_compiler::compile_with(b.finish()?, &options)?;
    let small = || orrery_cpu::CpuTensor::from_vec(vec![8, 8], vec![0.1; 64]);
    let inputs = std::collections::HashMap::from([("x".to_string(), small()), ("w".to_string(), small())]);
    let best = best_run_seconds(plan, &inputs, threads, 5)?;
    Ok(best / 64.0)
}

/// This machine, measured: a 512³ matrix product (times 0.7, what whole models reach of it
/// here), a memory copy and the per-kernel overhead.
fn cpu_target(args: &PlanArgs, threads: usize) -> Result<Target> {
    let memory_bandwidth = measured_memory_bandwidth();
    Ok(Target {
        name: format!("this CPU ({threads} threads, measured)"),
        memory_bytes: args.memory_budget.or_else(default_budget).unwrap_or(u64::MAX),
        memory_bandwidth,
        link_bandwidth: args.io_bandwidth.map_or(memory_bandwidth, |b| b as f64),
        flop_rate: measured_gflops(threads)? * 1e9,
        kernel_overhead: measured_kernel_overhead(threads)?,
        measured: true,
    })
}

fn report(target: &Target, memory: &MemoryPlan, p: &Prediction, run: &RunSize) -> serde_json::Value {
    serde_json::json!({
        "target": target.name, "measured": target.measured, "memory_bytes": target.memory_bytes,
        "flop_rate": target.flop_rate, "memory_bandwidth": target.memory_bandwidth,
        "link_bandwidth": target.link_bandwidth,
        "streamed": memory.timeline.is_some(), "weight_bytes": memory.weight_bytes,
        "resident_weight_bytes": p.resident_weight_bytes, "pinned_bytes": memory.timeline.as_ref().map(|t| t.pinned_bytes),
        "activation_bytes": p.activation_bytes, "transient_bytes": p.transient_bytes, "peak_bytes": p.peak_bytes(), "min_budget_bytes": memory.min_budget,
        "weight_split_bytes": memory.weight_split,
        "bytes_per_step": p.bytes_per_step, "seconds_per_step": p.seconds_per_step,
        "stall_seconds_per_step": p.stall_seconds_per_step, "seconds": p.seconds, "steps": run.steps,
        "calibration": p.calibration.iter().map(|(c, f)| serde_json::json!({"component": c, "scale": f})).collect::<Vec<_>>(),
    })
}

pub fn plan(args: &PlanArgs) -> Result<ExitCode> {
    let (model_dir, label) = match &args.model {
        Some(spec) => (resolve_model(spec)?, spec.clone()),
        None => (crate::embedded::pipeline_dir()?, "built-in tiny random pipeline".to_string()),
    };
    let mut pipeline =
        CosmosPipeline::load(&model_dir).with_context(|| format!("loading the pipeline {}", model_dir.display()))?;
    args.plan_cache.attach(&mut pipeline);
    let sampler = match args.sampler {
        SamplerArg::DiffusersEdm => SamplerKind::DiffusersEdm,
        SamplerArg::Predict1 => SamplerKind::Predict1,
    };
    let run = RunSize {
        height: args.height,
        width: args.width,
        frames: args.frames,
        steps: args.steps,
        guidance: args.guidance,
        sampler,
        max_text_len: 512,
    };
    let (threads, _) = resolve_threads(args.threads);
    let mut targets = Vec::new();
    if matches!(args.target, TargetArg::Cpu | TargetArg::All) {
        targets.push(cpu_target(args, threads)?);
    }
    for (arg, make) in [
        (TargetArg::H100, Target::h100_80gb as fn() -> Target),
        (TargetArg::Gpu24gb, Target::gpu_24gb),
        (TargetArg::Gpu16gb, Target::gpu_16gb),
    ] {
        if args.target == arg || args.target == TargetArg::All {
            targets.push(make());
        }
    }
    let mut reports = Vec::new();
    eprintln!(
        "orrery: {label}: {}x{}, {} frames, {} steps, guidance {}",
        run.height, run.width, run.frames, run.steps, run.guidance
    );
    for target in &targets {
        let budget = MemoryBudget {
            prefetch: args.prefetch,
            ..MemoryBudget::new(args.memory_budget.unwrap_or(target.memory_bytes))
        };
        let calibrate = (target.measured && args.calibrate_seconds > 0.0).then_some((threads, args.calibrate_seconds));
        let (memory, p) = match pipeline.predict(&run, true, target, Some(budget), calibrate) {
            Ok(result) => result,
            Err(e) => {
                eprintln!("orrery: {}: cannot run: {e}", target.name);
                reports.push(serde_json::json!({"target": target.name, "error": e.to_string()}));
                continue;
            }
        };
        let weights = match &memory.timeline {
            None => format!("{} of weights resident", human_bytes(memory.weight_bytes)),
            Some(t) => format!(
                "{} of weights streamed through {} ({} kept resident)",
                human_bytes(memory.weight_bytes),
                human_bytes(t.capacity),
                human_bytes(t.pinned_bytes)
            ),
        };
        eprintln!("orrery: {}:", target.name);
        eprintln!(
            "  memory: {weights}; peak {} = {} weights + {} activations + {} widened in one kernel",
            human_bytes(p.peak_bytes()),
            human_bytes(p.resident_weight_bytes),
            human_bytes(p.activation_bytes),
            human_bytes(p.transient_bytes)
        );
        eprintln!(
            "  per step: {} of weights moved, {} ({} waiting for weights); whole run {}",
            human_bytes(p.bytes_per_step),
            human_time(p.seconds_per_step),
            human_time(p.stall_seconds_per_step),
            human_time(p.seconds)
        );
        if !p.calibration.is_empty() {
            let list: Vec<String> = p.calibration.iter().map(|(c, f)| format!("{c} × {f:.2}")).collect();
            eprintln!("  calibrated (measured / modelled): {}", list.join(", "));
        }
        if args.dump {
            if let Some(t) = &memory.timeline {
                for (j, l) in t.loads.iter().enumerate() {
                    let point = |p: Option<orrery_compiler::RunPoint>| {
                        p.map_or("start".to_string(), |a| format!("{}:{}", a.invocation, a.kernel))
                    };
                    let (after, issue) = (point(l.issue_after), point(l.issue_at));
                    eprintln!(
                        "  load {j}: invocation {} `{}` {} B at {}{} first use {}:{} ring free after {after}, \
                         issue after {issue}",
                        l.invocation,
                        l.name,
                        l.bytes,
                        l.offset,
                        if l.pinned { " (resident)" } else { "" },
                        l.first_use.invocation,
                        l.first_use.kernel
                    );
                }
            }
        }
        reports.push(report(target, &memory, &p, &run));
    }
    let parallel = communication(&pipeline, &run, &args.parallel);
    crate::plan_cache::report_warnings(&pipeline);
    if args.json {
        let plan_cache = crate::plan_cache::stats_json(&pipeline);
        println!(
            "{}",
            serde_json::json!({"model": label, "targets": reports, "parallel": parallel, "plan_cache": plan_cache})
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints (and returns as JSON) what each parallel layout sends per denoising step.
fn communication(
    pipeline: &CosmosPipeline,
    run: &RunSize,
    layouts: &[orrery_pipeline::ParallelLayout],
) -> Vec<serde_json::Value> {
    if !layouts.is_empty() {
        eprintln!("orrery: communication per denoising step (the transformer's f32 activations; half for bf16):");
    }
    let mut out = Vec::new();
    for &layout in layouts {
        match pipeline.step_communication(run, layout) {
            Ok(c) => {
                eprintln!(
                    "  {layout}: {} ranks, {} collectives, {} sent by each rank",
                    c.ranks,
                    c.collectives,
                    human_bytes(c.bytes_per_rank)
                );
                out.push(serde_json::json!({
                    "layout": layout.to_string(), "ranks": c.ranks, "collectives_per_step": c.collectives,
                    "bytes_per_rank_per_step": c.bytes_per_rank,
                }));
            }
            Err(e) => {
                eprintln!("  {e}");
                out.push(serde_json::json!({"layout": layout.to_string(), "error": e.to_string()}));
            }
        }
    }
    out
}
