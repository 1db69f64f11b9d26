//! Writing Cosmos-architecture pipelines with random weights: test and benchmark models of
//! any size, made from a seed in Rust rather than committed (the `medium` pipeline of the
//! runtime's memory tests and benchmarks; `orrery make-pipeline` on the command line).
//!
//! The folder is a diffusers `CosmosTextToWorldPipeline` or `CosmosVideoToWorldPipeline`
//! layout: each component's `config.json` is written from the size, its weights are exactly
//! the tensors orrery's graph for that config reads (listed by building the graphs), filled
//! from orrery's seeded normal generator: 1-D norm scales 1 + 0.1·n, other 1-D 0.1·n, matrices
//! and kernels n/√fan_in, so activations stay in range through the layers. The T5 tokenizer
//! is copied from a given folder.

use crate::{standard_normal, PipelineError};
use orrery_formats::StreamingSafetensors;
use orrery_ir::DType;
use orrery_models::{load_component, WeightTypes};
use std::collections::BTreeMap;
use std::path::Path;

/// The widths of a synthetic pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticSize {
    pub t5_d_model: usize,
    pub t5_heads: usize,
    pub t5_layers: usize,
    pub t5_d_ff: usize,
    pub dit_heads: usize,
    pub dit_head_dim: usize,
    pub dit_layers: usize,
    pub vae_widths: [usize; 4],
    pub latent_channels: usize,
    /// The transformer's `max_size` (latent frames, height, width it can position).
    pub max_size: [usize; 3],
    /// Weights stored as bf16 (the real checkpoints' dtype) instead of f32.
    pub bf16: bool,
    /// A `CosmosVideoToWorldPipeline` (the transformer takes the condition mask).
    pub video_to_world: bool,
}

impl SyntheticSize {
    /// The runtime issues' medium pipeline: T5 d_model 256 × 2 layers, DiT hidden 256
    /// (4 heads × 64) × 4 layers, a VAE of the real block structure at widths (32, 64, 64, 64),
    /// 16 latent channels.
    pub const MEDIUM: SyntheticSize = SyntheticSize {
        t5_d_model: 256,
        t5_heads: 4,
        t5_layers: 2,
        t5_d_ff: 1024,
        dit_heads: 4,
        dit_head_dim: 64,
        dit_layers: 4,
        vae_widths: [32, 64, 64, 64],
        latent_channels: 16,
        max_size: [8, 16, 16],
        bf16: false,
        video_to_world: false,
    };

    /// The scale benchmark's pipeline: the transformer of Cosmos-1.0-Diffusion-7B (4096 =
    /// 32 × 128 heads, 28 layers, max_size 128 × 240 × 240) and the tokenizer's real widths
    /// (128, 256, 512, 512), bf16 like the real checkpoints (about 14 GB), with a small T5 of
    /// the real width (1024 × 2 layers).
    pub const DIT_7B: SyntheticSize = SyntheticSize {
        t5_d_model: 1024,
        t5_heads: 16,
        t5_layers: 2,
        t5_d_ff: 4096,
        dit_heads: 32,
        dit_head_dim: 128,
        dit_layers: 28,
        vae_widths: [128, 256, 512, 512],
        latent_channels: 16,
        max_size: [128, 240, 240],
        bf16: true,
        video_to_world: false,
    };
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), PipelineError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    std::fs::write(path, text).map_err(|e| io(path, e))
}

fn io(path: &Path, e: std::io::Error) -> PipelineError {
    PipelineError::Config { path: path.display().to_string(), reason: e.to_string() }
}

/// FNV-1a of a tensor name: each tensor its own noise stream.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn random_tensor(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let noise = standard_normal(n, seed ^ name_hash(name));
    match shape.len() {
        0 | 1 => {
            let base = if name.contains("norm") { 1.0 } else { 0.0 };
            noise.iter().map(|v| base + 0.1 * v).collect()
        }
        _ => {
            let fan_in = (shape[1..].iter().product::<usize>()).max(1) as f32;
            noise.iter().map(|v| v / fan_in.sqrt()).collect()
        }
    }
}

/// A method and its graph inputs' shapes.
type MethodShapes<'a> = (&'a str, Vec<(&'a str, Vec<usize>)>);

/// Builds `component_dir`'s graphs for `methods` at `shapes` and writes every weight they
/// read, random, as safetensors `file` (f32, or bf16 like the real checkpoints).
fn write_weights(
    component_dir: &Path,
    file: &str,
    methods: &[MethodShapes],
    seed: u64,
    bf16: bool,
) -> Result<u64, PipelineError> {
    let component = load_component(component_dir)?;
    let mut weights: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (method, shapes) in methods {
        let shapes: BTreeMap<String, Vec<usize>> = shapes.iter().map(|(n, s)| (n.to_string(), s.clone())).collect();
        let graph = component.build(method, &shapes, &WeightTypes::Assumed(DType::F32))?;
        for (_, node) in graph.weights() {
            weights.insert(node.name.clone(), node.ty.shape.dims().to_vec());
        }
    }
    // Written tensor by tensor: a 7B-shaped transformer never sits in memory whole.
    let dtype = if bf16 { DType::BF16 } else { DType::F32 };
    let declared: Vec<(&str, DType, &[usize])> =
        weights.iter().map(|(n, s)| (n.as_str(), dtype, s.as_slice())).collect();
    let mut file = StreamingSafetensors::create(&component_dir.join(file), &declared)?;
    let mut total = 0u64;
    for (name, shape) in &weights {
        let values = random_tensor(name, shape, seed);
        let bytes: Vec<u8> = if bf16 {
            values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()
        } else {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        file.write(name, 0, &bytes)?;
        total += bytes.len() as u64;
    }
    file.finish()?;
    Ok(total)
}

/// Writes a pipeline of `size` with weights from `seed` into `out` (created), the tokenizer
/// copied from `tokenizer_dir` (`tokenizer.json`, `tokenizer_config.json`). Returns the
/// weight bytes written.
pub fn write_synthetic_pipeline(
    out: &Path,
    size: &SyntheticSize,
    tokenizer_dir: &Path,
    seed: u64,
) -> Result<u64, PipelineError> {
    let tokenizer = out.join("tokenizer");
    std::fs::create_dir_all(&tokenizer).map_err(|e| io(&tokenizer, e))?;
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer_dir.join(name), tokenizer.join(name)).map_err(|e| io(&tokenizer_dir.join(name), e))?;
    }
    let vocab: serde_json::Value = std::fs::read_to_string(tokenizer.join("tokenizer.json"))
        .map_err(|e| io(&tokenizer, e))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| PipelineError::Invalid(e.to_string())))?;
    let vocab_size = vocab["model"]["vocab"].as_array().map_or(32128, |v| v.len());
    let class = if size.video_to_world { "CosmosVideoToWorldPipeline" } else { "CosmosTextToWorldPipeline" };
    write_json(
        &out.join("model_index.json"),
        &serde_json::json!({
            "_class_name": class, "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "EDMEulerScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "CosmosTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLCosmos"],
        }),
    )?;
    write_json(
        &out.join("scheduler/scheduler_config.json"),
        &serde_json::json!({
            "_class_name": "EDMEulerScheduler", "final_sigmas_type": "sigma_min", "num_train_timesteps": 1000,
            "prediction_type": "epsilon", "rho": 7.0, "sigma_data": 0.5, "sigma_max": 80, "sigma_min": 0.002,
            "sigma_schedule": "karras",
        }),
    )?;
    let d = size.t5_d_model;
    write_json(
        &out.join("text_encoder/config.json"),
        &serde_json::json!({
            "architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": d, "d_kv": d / size.t5_heads,
            "num_heads": size.t5_heads, "num_layers": size.t5_layers, "d_ff": size.t5_d_ff,
            "feed_forward_proj": "relu", "dense_act_fn": "relu", "is_gated_act": false, "layer_norm_epsilon": 1e-6,
            "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "vocab_size": vocab_size,
            "pad_token_id": 0, "eos_token_id": 1,
        }),
    )?;
    let c = size.latent_channels;
    write_json(
        &out.join("transformer/config.json"),
        &serde_json::json!({
            "_class_name": "CosmosTransformer3DModel", "adaln_lora_dim": 256, "attention_head_dim": size.dit_head_dim,
            "concat_padding_mask": true, "extra_pos_embed_type": "learnable",
            "in_channels": c + usize::from(size.video_to_world), "out_channels": c, "max_size": size.max_size,
            "mlp_ratio": 4.0, "num_attention_heads": size.dit_heads, "num_layers": size.dit_layers,
            "patch_size": [1, 2, 2], "rope_scale": [2.0, 1.0, 1.0], "text_embed_dim": d,
        }),
    )?;
    let mean = standard_normal(c * 16, seed ^ 0x4d45_414e).iter().map(|v| 0.1 * v).collect::<Vec<f32>>();
    let std = standard_normal(c * 16, seed ^ 0x5354_4400).iter().map(|v| 0.75 + 0.1 * v.abs()).collect::<Vec<f32>>();
    write_json(
        &out.join("vae/config.json"),
        &serde_json::json!({
            "_class_name": "AutoencoderKLCosmos", "attention_resolutions": [32],
            "encoder_block_out_channels": size.vae_widths, "decode_block_out_channels": size.vae_widths,
            "in_channels": 3, "out_channels": 3, "latent_channels": c, "latents_mean": mean, "latents_std": std,
            "num_layers": 2, "patch_size": 4, "patch_type": "haar", "resolution": 1024, "scaling_factor": 1.0,
            "spatial_compression_ratio": 8, "temporal_compression_ratio": 8,
        }),
    )?;
    // Graph input shapes only decide which weights are read, not their shapes.
    let text = vec![("input_ids", vec![1, 8]), ("attention_mask", vec![1, 8])];
    let bf16 = size.bf16;
    let mut total = write_weights(&out.join("text_encoder"), "model.safetensors", &[("forward", text)], seed, bf16)?;
    let mut dit = vec![
        ("hidden_states", vec![1, c, 2, 4, 4]),
        ("timestep", vec![1]),
        ("encoder_hidden_states", vec![1, 8, d]),
        ("fps", vec![]),
        ("padding_mask", vec![1, 1, 32, 32]),
    ];
    if size.video_to_world {
        dit.push(("condition_mask", vec![1, 1, 2, 4, 4]));
    }
    let dit_methods = [("forward", dit)];
    total += write_weights(&out.join("transformer"), "diffusion_pytorch_model.safetensors", &dit_methods, seed, bf16)?;
    let vae = [("encode", vec![("sample", vec![1, 3, 9, 32, 32])]), ("decode", vec![("z", vec![1, c, 2, 4, 4])])];
    total += write_weights(&out.join("vae"), "diffusion_pytorch_model.safetensors", &vae, seed, bf16)?;
    Ok(total)
}
