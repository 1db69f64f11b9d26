//! `orrery run <component-dir> [--method M] --inputs in.safetensors --output out.safetensors
//! [--repeat N] [--threads N] [--json]`

use crate::bind::convert;
use crate::chunked::{ChunkSize, ChunkedTokenizer};
use crate::component_plan::{canonical_shapes, describe_specs, find_spec, plan};
use crate::tensor_file::{read_tensors, write_f32_safetensors};
use anyhow::{bail, Context, Result};
use orrery_compiler::CompileOptions;
use orrery_ir::DType;
use orrery_models::{load_component, InputSpec, WeightTypes};
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
    /// Run the Cosmos tokenizer's encode or decode N latent frames at a time (exact; bounds
    /// memory; the output is written to the file chunk by chunk).
    #[arg(long, conflicts_with = "memory_budget")]
    chunk_frames: Option<usize>,
    /// Run the Cosmos tokenizer in the largest temporal chunks whose plan fits this many bytes
    /// (weights + activations + carried state), e.g. 4GiB, 3.5G, 512MiB.
    #[arg(long, value_parser = orrery_runtime::parse_byte_size)]
    memory_budget: Option<u64>,
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    let component = load_component(&args.component)?;
    let load_start = Instant::now();
    let source = orrery_formats::open_weights(&args.component)
        .with_context(|| format!("opening the weights of {}", args.component.display()))?;
    let load_s = load_start.elapsed().as_secs_f64();

    let specs = component.inputs(&args.method)?;
    let inputs = bind_inputs(&args.inputs, &specs, None)?;
    let shapes: Vec<(String, Vec<usize>)> = inputs.iter().map(|(n, t)| (n.clone(), t.shape().to_vec())).collect();
    let shapes = canonical_shapes(&specs, &shapes)?;
    if let Some(size) = ChunkSize::from_flags(args.chunk_frames, args.memory_budget) {
        let shapes = shapes.into_iter().collect();
        // Each chunk reads its own frames from the file (below); nothing of the whole input is
        // held, so its pages do not stay mapped either.
        drop(inputs);
        return run_chunked(args, source, &specs, &shapes, size, load_s);
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
    let mut live_bytes = 0;
    for i in 0..=args.repeat {
        // The last run's outputs hold their places in the arena: let this run have them.
        outputs.clear();
        let (out, stats) = session.run(&inputs)?;
        if i > 0 || args.repeat == 0 {
            runs_s.push(stats.seconds);
        }
        live_bytes = live_bytes.max(stats.peak_live_bytes);
        outputs = out;
    }
    // Only the outputs' pages of the activation arena stay while they are written out.
    session.release_arena();
    write_f32_safetensors(&args.output, &outputs)?;
    let plan = session.plan();
    let totals =
        Totals { weight_bytes: plan.weight_bytes, arena_bytes: plan.arena_bytes, flops: plan.flops, live_bytes };
    report(args, &runs_s, (compile_s, load_s), threads, totals, None);
    Ok(ExitCode::SUCCESS)
}

/// `--chunk-frames`: the tokenizer chunk by chunk, each chunk's result written straight into
/// the output file (one run; `--repeat` repeats it, rewriting the same bytes).
fn run_chunked(
    args: &RunArgs,
    source: Box<dyn orrery_formats::WeightSource>,
    specs: &[InputSpec],
    shapes: &HashMap<String, Vec<usize>>,
    size: ChunkSize,
    load_s: f64,
) -> Result<ExitCode> {
    let (config, method) = crate::chunked::tokenizer_config(&args.component, &args.method)?;
    let shape = &shapes[method.input()];
    let compile_start = Instant::now();
    let lookup = |name: &str| source.info(name).map(|i| (i.dtype, i.shape.clone()));
    let weight_types = WeightTypes::Checkpoint(&lookup);
    let chunked = ChunkedTokenizer::plan(&config, method, &weight_types, shape, size)?;
    let frames = chunked.frames;
    let compile_s = compile_start.elapsed().as_secs_f64();
    let chunks = chunked.plans.len();
    let totals = Totals {
        weight_bytes: chunked.plans[0].weight_bytes,
        arena_bytes: chunked.largest_arena(),
        flops: chunked.flops(),
        live_bytes: 0,
    };
    let (threads, thread_source) = resolve_threads(args.threads);
    eprintln!(
        "orrery: AutoencoderKLCosmos `{}` in {chunks} chunks of {frames} latent frame(s) (planned to need {:.2} GiB), {threads} threads ({thread_source:?})",
        args.method,
        chunked.needed_bytes() as f64 / (1u64 << 30) as f64
    );
    if let Some(budget) = args.memory_budget {
        // Packed weights take only what the budget leaves beside the chunks' plan.
        orrery_runtime::plan_pack_budget(budget.saturating_sub(chunked.needed_bytes()));
    }
    let weights: Arc<dyn orrery_runtime::WeightResolver> = Arc::new(FormatWeights::new(source));
    let name = method.output();
    let mut file =
        orrery_formats::StreamingSafetensors::create(&args.output, &[(name, DType::F32, &chunked.output_shape)])?;
    let mut runs_s = Vec::new();
    let mut live_bytes = 0;
    for i in 0..=args.repeat {
        let read = |frames: &std::ops::Range<usize>| -> Result<orrery_cpu::CpuTensor> {
            let mut inputs = bind_inputs(&args.inputs, specs, Some(frames))?;
            inputs
                .remove(method.input())
                .with_context(|| format!("{} lost `{}`", args.inputs.display(), method.input()))
        };
        let stats = chunked.run(weights.clone(), read, threads, |offset, values| {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok(file.write(name, offset as u64 * 4, &bytes)?)
        })?;
        if i > 0 || args.repeat == 0 {
            runs_s.push(stats.seconds);
        }
        live_bytes = live_bytes.max(stats.peak_live_bytes);
    }
    file.finish()?;
    report(args, &runs_s, (compile_s, load_s), threads, Totals { live_bytes, ..totals }, Some(chunks));
    Ok(ExitCode::SUCCESS)
}

/// Reads the inputs file and converts each tensor as its spec says (dtype, alias → name).
/// With `frames`, only those frames (axis 2) of each input are read and converted: one
/// temporal chunk, copied out of the file's mapping, which is dropped before returning.
fn bind_inputs(
    path: &std::path::Path,
    specs: &[InputSpec],
    frames: Option<&std::ops::Range<usize>>,
) -> Result<HashMap<String, orrery_cpu::CpuTensor>> {
    let mut inputs = HashMap::new();
    for (name, tensor) in read_tensors(path)? {
        let Some(spec) = find_spec(specs, &name) else {
            bail!("unknown input `{name}` in {}; expected {}", path.display(), describe_specs(specs));
        };
        let tensor = match frames {
            Some(r) if tensor.shape().len() > 2 && r.end <= tensor.shape()[2] => tensor.slice(2, r.start, r.end, 1),
            Some(r) => bail!("input `{name}` {:?} has no frames {r:?} on axis 2", tensor.shape()),
            None => tensor,
        };
        let converted = convert(spec, &tensor)?;
        if inputs.insert(spec.name.clone(), if frames.is_some() { converted.compact() } else { converted }).is_some() {
            bail!("input `{}` is given twice in {} (directly or through an alias)", spec.name, path.display());
        }
    }
    Ok(inputs)
}

/// The plan figures `run` reports (for chunks: the largest chunk's arena, all chunks' FLOPs).
struct Totals {
    weight_bytes: u64,
    arena_bytes: u64,
    flops: u64,
    /// Measured: the most activation bytes held at once (`RunStats::peak_live_bytes`).
    live_bytes: u64,
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
            "peak_live_bytes": t.live_bytes,
            "flops": t.flops,
        });
        if let Some(n) = chunks {
            json["chunks"] = n.into();
        }
        println!("{json}");
    } else {
        eprintln!(
            "orrery: wrote {}; median {median_s:.6} s over {} run(s); peak RSS {:.1} MiB; activations {:.1} MiB held at most, arena {:.1} MiB planned{}",
            args.output.display(),
            runs_s.len(),
            peak as f64 / (1 << 20) as f64,
            t.live_bytes as f64 / (1 << 20) as f64,
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
