//! `orrery compile <component-dir|config.json> [--method M] --shape NAME=D0xD1x… …
//! [--weight-dtype stored|bf16|f32] [--dump] [--json]`

use crate::chunked::{ChunkSize, ChunkedTokenizer};
use crate::component_plan::{canonical_shapes, plan};
use anyhow::{bail, Context, Result};
use orrery_compiler::{CompileOptions, Kernel, Passes, Plan, Storage};
use orrery_ir::DType;
use orrery_models::{load_component, WeightTypes};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CompileArgs {
    /// A component folder (weights optional) or its config.json.
    component: PathBuf,
    #[arg(long, default_value = "forward")]
    method: String,
    /// An input shape, e.g. `--shape x=2x8`; repeat for each input.
    #[arg(long = "shape", value_parser = parse_shape)]
    shapes: Vec<(String, Vec<usize>)>,
    /// Weight dtype: `stored` (the checkpoint's, else the config's `torch_dtype`, else f32),
    /// `bf16` or `f32`.
    #[arg(long, default_value = "stored")]
    weight_dtype: String,
    /// Print the whole graph, then every kernel with its output's place in the arena.
    #[arg(long)]
    dump: bool,
    /// Print exactly `kernels`, `weight_bytes`, `arena_bytes` and `flops` as one JSON object.
    #[arg(long)]
    json: bool,
    /// Rewrite passes before planning: `none`, `simplify` (canonicalise, fold constants, CSE,
    /// DCE) or `fuse` (simplify plus elementwise fusion).
    #[arg(long, default_value = "fuse", value_parser = parse_passes)]
    passes: Passes,
    /// Stop the optimizer after N rewrites (to bisect a bad rewrite; `--dump` lists them).
    #[arg(long)]
    stop_after_rewrites: Option<usize>,
    /// Also plan the Cosmos tokenizer's encode or decode in chunks of N latent frames and
    /// report the largest chunk's arena beside the one-shot plan's.
    #[arg(long, conflicts_with = "memory_budget")]
    chunk_frames: Option<usize>,
    /// Also plan the Cosmos tokenizer in the largest temporal chunks that fit this many bytes
    /// (weights + activations + carried state), e.g. 4GiB.
    #[arg(long, value_parser = orrery_runtime::parse_byte_size)]
    memory_budget: Option<u64>,
}

fn parse_passes(s: &str) -> Result<Passes, String> {
    match s {
        "none" => Ok(Passes::None),
        "simplify" => Ok(Passes::Simplify),
        "fuse" => Ok(Passes::Fuse),
        other => Err(format!("`{other}` is not one of none, simplify, fuse")),
    }
}

/// Parses `NAME=D0xD1x…` (a scalar is `NAME=` with no dims, or `NAME=1`).
fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=D0xD1x…"))?;
    if name.is_empty() {
        return Err(format!("`{s}` has no input name before `=`"));
    }
    let dims = if dims.is_empty() {
        vec![]
    } else {
        dims.split(['x', 'X', ','])
            .map(|d| d.trim().parse::<usize>().map_err(|_| format!("`{d}` in `{s}` is not a dimension")))
            .collect::<Result<_, _>>()?
    };
    Ok((name.to_string(), dims))
}

pub fn compile(args: &CompileArgs) -> Result<ExitCode> {
    let options = CompileOptions {
        passes: args.passes,
        stop_after_rewrites: args.stop_after_rewrites,
        ..CompileOptions::default()
    };
    let component = load_component(&args.component)?;
    let specs = component.inputs(&args.method)?;
    let shapes = canonical_shapes(&specs, &args.shapes)?;
    let dir = if args.component.is_dir() {
        args.component.clone()
    } else {
        args.component.parent().map(PathBuf::from).unwrap_or_default()
    };
    let source = match args.weight_dtype.as_str() {
        // A folder without weight files is fine here; a broken weight file is not.
        "stored" => match orrery_formats::open_weights(&dir) {
            Ok(source) => Some(source),
            Err(orrery_formats::FormatError::NoWeights { .. }) => None,
            Err(e) => return Err(e.into()),
        },
        "bf16" | "f32" => None,
        other => bail!("--weight-dtype must be stored, bf16 or f32, got `{other}`"),
    };
    let plan = match (&source, args.weight_dtype.as_str()) {
        (Some(source), _) => {
            let lookup = |name: &str| source.info(name).map(|i| (i.dtype, i.shape.clone()));
            plan(component.as_ref(), &args.method, &shapes, &WeightTypes::Checkpoint(&lookup), &options)?
        }
        (None, flag) => {
            let dtype = match flag {
                "bf16" => DType::BF16,
                "f32" => DType::F32,
                _ => component.config_dtype().unwrap_or(DType::F32),
            };
            plan(component.as_ref(), &args.method, &shapes, &WeightTypes::Assumed(dtype), &options)?
        }
    };
    if let Some(size) = ChunkSize::from_flags(args.chunk_frames, args.memory_budget) {
        let (config, method) = crate::chunked::tokenizer_config(&args.component, &args.method)?;
        let input = method.input();
        let shape = shapes.get(input).with_context(|| format!("chunking needs `--shape {input}=…`"))?;
        let shape = &shape.clone();
        // The chunks read the weights as the one-shot plan did.
        let chunked = match &source {
            Some(source) => {
                let lookup = |name: &str| source.info(name).map(|i| (i.dtype, i.shape.clone()));
                ChunkedTokenizer::plan(&config, method, &WeightTypes::Checkpoint(&lookup), shape, size)?
            }
            None => {
                let dtype = if args.weight_dtype == "bf16" { DType::BF16 } else { DType::F32 };
                ChunkedTokenizer::plan(&config, method, &WeightTypes::Assumed(dtype), shape, size)?
            }
        };
        let (largest, flops, chunks, frames) =
            (chunked.largest_arena(), chunked.flops(), chunked.plans.len(), chunked.frames);
        let needed = chunked.needed_bytes();
        let one_shot_needed = plan.weight_bytes + plan.peak_resident_bytes;
        if args.json {
            let json = serde_json::json!({
                "chunks": chunks, "chunk_frames": frames, "arena_bytes": largest,
                "resident_bytes": chunked.largest_resident(), "needed_bytes": needed,
                "one_shot_arena_bytes": plan.arena_bytes, "one_shot_needed_bytes": one_shot_needed,
                "weight_bytes": plan.weight_bytes, "flops": flops,
            });
            println!("{json}");
        } else {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            println!(
                "{} in {chunks} chunks of {frames} latent frame(s): largest chunk arena {:.2} GiB, needs {:.2} GiB \
                 with weights and carried state; one shot: arena {:.2} GiB, needs {:.2} GiB; {flops} FLOPs",
                args.method,
                gib(largest),
                gib(needed),
                gib(plan.arena_bytes),
                gib(one_shot_needed)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        println!("{}", plan_json(&plan));
    } else {
        print_plan(&plan, args.dump);
    }
    Ok(ExitCode::SUCCESS)
}

fn plan_json(plan: &Plan) -> serde_json::Value {
    let kernels: Vec<_> = plan
        .kernels
        .iter()
        .map(|k| {
            serde_json::json!({
                "name": k.name,
                "op": k.op,
                "inputs": k.inputs.iter().map(|i| plan.graph.node(*i).name.clone()).collect::<Vec<_>>(),
                "output": k.output.to_string(),
                "flops": k.cost.flops,
                "bytes": k.cost.bytes,
                "offset": k.buffer.map(|b| b.offset),
                "size": k.buffer.map(|b| b.size),
                "storage": storage(plan, k),
            })
        })
        .collect();
    serde_json::json!({
        "kernels": kernels,
        "weight_bytes": plan.weight_bytes,
        "arena_bytes": plan.arena_bytes,
        "flops": plan.flops,
    })
}

/// Where a kernel's output lives: `arena`, `in-place over <name>`, `view of <name>`, or
/// `outside the arena` (a view of a graph input, weight or constant).
fn storage(plan: &Plan, k: &Kernel) -> String {
    let name = |id: orrery_ir::NodeId| plan.graph.node(id).name.clone();
    match k.buffer.map(|b| b.storage) {
        Some(Storage::Owned) => "arena".into(),
        Some(Storage::InPlace { over }) => format!("in-place over {}", name(over)),
        Some(Storage::View { of }) => format!("view of {}", name(of)),
        None => "outside the arena".into(),
    }
}

fn print_plan(plan: &Plan, dump: bool) {
    if dump {
        println!("# graph (after {} rewrites)\n{}", plan.rewrites.len(), plan.graph);
        if !plan.rewrites.is_empty() {
            println!("# rewrites");
            for (i, r) in plan.rewrites.iter().enumerate() {
                println!("{:>4} {}: {}", i + 1, r.rule, r.label);
            }
        }
    }
    println!("# kernels");
    for k in &plan.kernels {
        let inputs: Vec<&str> = k.inputs.iter().map(|i| plan.graph.node(*i).name.as_str()).collect();
        let place = match (k.buffer, storage(plan, k)) {
            (Some(b), s) if !matches!(b.storage, Storage::View { .. }) => {
                format!("@{}+{} ({s})", b.offset, b.size)
            }
            (_, s) => s,
        };
        println!(
            "{:<32} {:<48} ({}) -> {} {place}  flops={} bytes={}",
            k.name,
            k.op,
            inputs.join(", "),
            k.output,
            k.cost.flops,
            k.cost.bytes
        );
    }
    println!("weight_bytes {}", plan.weight_bytes);
    println!("arena_bytes {}", plan.arena_bytes);
    println!("peak_live_bytes {}", plan.peak_live_bytes);
    println!("flops {}", plan.flops);
}

#[cfg(test)]
mod tests {
    use super::parse_shape;

    #[test]
    fn shapes_parse() {
        assert_eq!(parse_shape("x=2x8").unwrap(), ("x".into(), vec![2, 8]));
        assert_eq!(parse_shape("fps=").unwrap(), ("fps".into(), vec![]));
        assert!(parse_shape("x=2xq").is_err());
        assert!(parse_shape("=2").is_err());
    }
}
