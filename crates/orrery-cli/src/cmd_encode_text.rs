//! `orrery encode-text --model <dir> --prompt "..." [--prompt ...] [--max-length 512]
//! [--output emb.safetensors] [--threads N] [--json]`: tokenizes prompts as Cosmos does (append
//! `</s>`, pad with 0 to the max length) and runs the T5 encoder on them.
//!
//! `<dir>` is a transformers T5 folder holding its tokenizer.json, or a diffusers pipeline root
//! (`text_encoder/` and `tokenizer/`); `--tokenizer` points elsewhere.

use crate::tensor_file::write_f32_safetensors;
use anyhow::{bail, Context, Result};
use orrery_compiler::CompileOptions;
use orrery_cpu::CpuTensor;
use orrery_models::{load_component, WeightTypes};
use orrery_runtime::{resolve_threads, FormatWeights, Session};
use orrery_text::{Encoding, T5Tokenizer};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct EncodeTextArgs {
    /// A T5 encoder folder (config.json, weights, tokenizer.json) or a diffusers pipeline root.
    #[arg(long)]
    model: PathBuf,
    /// The folder (or tokenizer.json) of the tokenizer, when it is not with the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A prompt; repeat the flag for a batch (e.g. a prompt and its negative prompt).
    #[arg(long = "prompt", required = true)]
    prompts: Vec<String>,
    /// Pad or truncate every prompt to this many tokens (Cosmos uses 512).
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Also write `last_hidden_state` [batch, max_length, d_model] and the token ids here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Worker threads (default: RAYON_NUM_THREADS, else the available CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object (ids, statistics, timings) on stdout.
    #[arg(long)]
    json: bool,
}

/// The encoder folder and the tokenizer location of `--model` (and `--tokenizer`).
fn locate(args: &EncodeTextArgs) -> (PathBuf, PathBuf) {
    let pipeline_encoder = args.model.join("text_encoder");
    let (encoder, default_tokenizer) = if pipeline_encoder.join("config.json").is_file() {
        (pipeline_encoder, args.model.join("tokenizer"))
    } else {
        (args.model.clone(), args.model.clone())
    };
    (encoder, args.tokenizer.clone().unwrap_or(default_tokenizer))
}

/// Mean, standard deviation, min and max of `values`.
fn stats(values: impl Iterator<Item = f32>) -> (f64, f64, f64, f64) {
    let (mut n, mut sum, mut sq, mut lo, mut hi) = (0usize, 0f64, 0f64, f64::INFINITY, f64::NEG_INFINITY);
    for v in values.map(f64::from) {
        n += 1;
        sum += v;
        sq += v * v;
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let mean = sum / n.max(1) as f64;
    (mean, (sq / n.max(1) as f64 - mean * mean).max(0.0).sqrt(), lo, hi)
}

pub fn encode_text(args: &EncodeTextArgs) -> Result<ExitCode> {
    if args.max_length == 0 {
        bail!("--max-length must be at least 1");
    }
    let (encoder_dir, tokenizer_dir) = locate(args);
    let tokenizer = T5Tokenizer::from_dir(&tokenizer_dir)?;
    let prompts: Vec<&str> = args.prompts.iter().map(String::as_str).collect();
    let encodings = tokenizer.encode_batch(&prompts, args.max_length)?;

    let component = load_component(&encoder_dir)?;
    if component.class_name() != "T5EncoderModel" {
        bail!(
            "{}: encode-text needs a T5 text encoder, this folder holds {}",
            encoder_dir.display(),
            component.class_name()
        );
    }
    let source = orrery_formats::open_weights(&encoder_dir)
        .with_context(|| format!("opening the weights of {}", encoder_dir.display()))?;
    let (batch, len) = (encodings.len(), args.max_length);
    let shape = vec![batch, len];
    let shapes =
        BTreeMap::from([("input_ids".to_string(), shape.clone()), ("attention_mask".to_string(), shape.clone())]);
    let lookup = |name: &str| source.info(name).map(|i| (i.dtype, i.shape.clone()));
    let graph = component.build("forward", &shapes, &WeightTypes::Checkpoint(&lookup))?;
    let plan = orrery_compiler::compile_with(graph, &CompileOptions::default())?;
    let vocab = plan_vocab(&plan).unwrap_or(usize::MAX);
    if let Some(bad) = encodings.iter().flat_map(|e| &e.ids).find(|&&id| id < 0 || id as usize >= vocab) {
        bail!(
            "token id {bad} from {} is outside the encoder's vocabulary of {vocab}: the tokenizer does not belong to {}",
            tokenizer.path().display(),
            encoder_dir.display()
        );
    }
    let ids: Vec<i64> = encodings.iter().flat_map(|e| e.ids.iter().copied()).collect();
    let mask: Vec<i64> = encodings.iter().flat_map(|e| e.attention_mask.iter().copied()).collect();
    let inputs = HashMap::from([
        ("input_ids".to_string(), CpuTensor::from_vec(shape.clone(), ids.clone())),
        ("attention_mask".to_string(), CpuTensor::from_vec(shape.clone(), mask)),
    ]);
    let (threads, _) = resolve_threads(args.threads);
    let session = Session::new(plan, Arc::new(FormatWeights::new(source)), threads)?;
    let (out, run) = session.run(&inputs)?;
    let hidden = &out["last_hidden_state"];
    let d = hidden.shape()[2];
    let values = hidden.to_f32_vec();
    // Statistics over the real tokens only (padded rows are what T5 makes of pad ids).
    let real = |e: &Encoding, b: usize| values[b * len * d..][..e.length * d].to_vec();
    let real_values: Vec<f32> = encodings.iter().enumerate().flat_map(|(b, e)| real(e, b)).collect();
    let (mean, std, lo, hi) = stats(real_values.iter().copied());
    if let Some(path) = &args.output {
        let mut tensors = HashMap::from([("last_hidden_state".to_string(), hidden.clone())]);
        let ids_f32: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
        tensors.insert("input_ids".into(), CpuTensor::from_vec(shape.clone(), ids_f32));
        write_f32_safetensors(path, &tensors)?;
    }
    if args.json {
        let rows: Vec<serde_json::Value> = encodings
            .iter()
            .zip(&args.prompts)
            .map(|(e, p)| serde_json::json!({"prompt": p, "length": e.length, "ids": &e.ids[..e.length]}))
            .collect();
        let json = serde_json::json!({
            "prompts": rows,
            "shape": hidden.shape(),
            "mean": mean, "std": std, "min": lo, "max": hi,
            "seconds": run.seconds,
            "threads": threads,
        });
        println!("{json}");
    } else {
        for (e, p) in encodings.iter().zip(&args.prompts) {
            println!("prompt {p:?}: {} tokens (max {len}): {:?}", e.length, &e.ids[..e.length]);
        }
        println!(
            "last_hidden_state {:?}: over the real tokens mean {mean:.6} std {std:.6} min {lo:.6} max {hi:.6}",
            hidden.shape()
        );
        eprintln!("orrery: encoded in {:.3} s with {threads} threads", run.seconds);
    }
    Ok(ExitCode::SUCCESS)
}

/// The vocabulary size of the plan's embedding table (input 0 of the embedding lookup).
fn plan_vocab(plan: &orrery_compiler::Plan) -> Option<usize> {
    let g = &plan.graph;
    let (id, _) = g.weights().find(|(_, n)| n.name == "shared.weight" || n.name == "encoder.embed_tokens.weight")?;
    g.node(id).ty.shape.dims().first().copied()
}
