//! `orrery run <component-dir> [--method M] --inputs in.safetensors --output out.safetensors
//! [--repeat N] [--threads N] [--json]`

use crate::bind::convert;
use crate::component_plan::{canonical_shapes, describe_specs, find_spec, plan};
use crate::tensor_file::{read_tensors, write_f32_safetensors};
use anyhow::{bail, Context, Result};
use orrery_compiler::CompileOptions;
use orrery_models::{load_component, WeightTypes};
use orrery_runtime::{peak_rss_bytes, resolve_threads, FormatWeights, Session};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct RunArgs {
    /// A diffusers or transformers component folder (config.json plus weights).
    component: PathBuf,
    /// forward, encode or decode (what the component supports).
    #[arg(long, default_value = "forward")]
    method: String,
    /// Input tensors, named like the reference forward arguments.
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the outputs (f32 safetensors).
    #[arg(long)]
    output: PathBuf,
    /// Run the plan 1 + N times and report the N repeated runs.
    #[arg(long, default_value_t = 0)]
    repeat: usize,
    /// Worker threads (default: RAYON_NUM_THREADS, else the available CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object with timings on stdout (logs stay on stderr).
    #[arg(long)]
    json: bool,
    /// Decode a Cosmos tokenizer latent N latent frames at a time (exact; bounds memory).
    #[arg(long)]
    chunk_frames: Option<usize>,
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    let component = load_component(&args.component)?;
    let load_start = Instant::now();
    let source = orrery_formats::open_weights(&args.component)
        .with_context(|| format!("opening the weights of {}", args.component.display()))?;
    let load_s = load_start.elapsed().as_secs_f64();

    let specs = component.inputs(&args.method)?;
    let given = read_tensors(&args.inputs)?;
    let mut inputs = HashMap::new();
    let mut shapes = Vec::new();
    for (name, tensor) in &given {
        let Some(spec) = find_spec(&specs, name) else {
            bail!("unknown input `{name}` in {}; expected {}", args.inputs.display(), describe_specs(&specs));
        };
        let converted = convert(spec, tensor)?;
        shapes.push((spec.name.clone(), converted.shape().to_vec()));
        inputs.insert(spec.name.clone(), converted);
    }
    let shapes = canonical_shapes(&specs, &shapes)?;
    if let Some(frames) = args.chunk_frames {
        return run_chunked(args, source, &inputs, frames, load_s);
    }

    let compile_start = Instant::now();
    let lookup = |name: &str| source.info(name).map(|i| (i.dtype, i.shape.clone()));
    let plan =
        plan(component.as_ref(), &args.method, &shapes, &WeightTypes::Checkpoint(&lookup), &CompileOptions::default())?;
    let compile_s = compile_start.elapsed().as_secs_f64();

    let (threads, thread_source) = resolve_threads(args.threads);
    eprintln!(
        "orrery: {} `{}`: {} kernels, {:.3} GFLOP, {} threads ({thread_source:?})",
        component.class_name(),
        args.method,
        plan.kernels.len(),
        plan.flops as f64 / 1e9,
        threads
    );
    let session = Session::new(plan, Arc::new(FormatWeights::new(source)), threads)?;
    let mut runs_s = Vec::with_capacity(args.repeat.max(1));
    let mut outputs = HashMap::new();
    for i in 0..=args.repeat {
        let (out, stats) = session.run(&inputs)?;
        if i > 0 || args.repeat == 0 {
            runs_s.push(stats.seconds);
        }
        outputs = out;
    }
    write_f32_safetensors(&args.output, &outputs)?;
    let plan = session.plan();
    let totals = Totals { weight_bytes: plan.weight_bytes, arena_bytes: plan.arena_bytes, flops: plan.flops };
    report(args, &runs_s, (compile_s, load_s), threads, totals, None);
    Ok(ExitCode::SUCCESS)
}

/// `--chunk-frames`: the tokenizer's decoder, chunk by chunk (one run; `--repeat` repeats it).
fn run_chunked(
    args: &RunArgs,
    source: Box<dyn orrery_formats::WeightSource>,
    inputs: &HashMap<String, orrery_cpu::CpuTensor>,
    frames: usize,
    load_s: f64,
) -> Result<ExitCode> {
    let config = crate::chunked_decode::tokenizer_config(&args.component, &args.method)?;
    let z = &inputs["z"];
    let compile_start = Instant::now();
    let lookup = |name: &str| source.info(name).map(|i| (i.dtype, i.shape.clone()));
    let plans = crate::chunked_decode::chunk_plans(&config, &WeightTypes::Checkpoint(&lookup), z.shape(), frames)?;
    let compile_s = compile_start.elapsed().as_secs_f64();
    let (weight_bytes, arena_bytes) = (plans[0].weight_bytes, plans.iter().map(|p| p.arena_bytes).max().unwrap_or(0));
    let flops: u64 = plans.iter().map(|p| p.flops).sum();
    let chunks = plans.len();
    let (threads, thread_source) = resolve_threads(args.threads);
    eprintln!("orrery: AutoencoderKLCosmos `decode` in {chunks} chunks of {frames} latent frame(s), {threads} threads ({thread_source:?})");
    let weights: Arc<dyn orrery_runtime::WeightResolver> = Arc::new(FormatWeights::new(source));
    let mut runs_s = Vec::new();
    let mut sample = None;
    for i in 0..=args.repeat {
        let start = Instant::now();
        let out =
            crate::chunked_decode::decode(&plans, weights.clone(), z, threads, config.temporal_compression_ratio)?;
        if i > 0 || args.repeat == 0 {
            runs_s.push(start.elapsed().as_secs_f64());
        }
        sample = Some(out);
    }
    let outputs = HashMap::from([("sample".to_string(), sample.expect("at least one run"))]);
    write_f32_safetensors(&args.output, &outputs)?;
    report(args, &runs_s, (compile_s, load_s), threads, Totals { weight_bytes, arena_bytes, flops }, Some(chunks));
    Ok(ExitCode::SUCCESS)
}

/// The plan figures `run` reports (for chunks: the largest chunk's arena, all chunks' FLOPs).
struct Totals {
    weight_bytes: u64,
    arena_bytes: u64,
    flops: u64,
}

/// Prints the run contract's JSON object (plus `chunks` for a chunked decode), or a log line.
fn report(
    args: &RunArgs,
    runs_s: &[f64],
    (compile_s, load_s): (f64, f64),
    threads: usize,
    t: Totals,
    chunks: Option<usize>,
) {
    let median_s = median(runs_s);
    let peak = peak_rss_bytes().unwrap_or(0);
    if args.json {
        let mut json = serde_json::json!({
            "median_s": median_s,
            "runs_s": runs_s,
            "compile_s": compile_s,
            "load_s": load_s,
            "peak_rss_bytes": peak,
            "threads": threads,
            "weight_bytes": t.weight_bytes,
            "arena_bytes": t.arena_bytes,
            "flops": t.flops,
        });
        if let Some(n) = chunks {
            json["chunks"] = n.into();
        }
        println!("{json}");
    } else {
        eprintln!(
            "orrery: wrote {}; median {median_s:.6} s over {} run(s); peak RSS {:.1} MiB; arena {:.1} MiB{}",
            args.output.display(),
            runs_s.len(),
            peak as f64 / (1 << 20) as f64,
            t.arena_bytes as f64 / (1 << 20) as f64,
            chunks.map(|n| format!(" (largest of {n} chunks)")).unwrap_or_default()
        );
    }
}

/// Median (mean of the middle two for an even count).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
