//! Decoding a Cosmos video latent in temporal chunks (`orrery run --method decode
//! --chunk-frames N`, `orrery compile … --chunk-frames N`): one plan per chunk, each chunk's
//! `next_state.*` outputs fed to the next chunk's `state.*` inputs, the samples concatenated
//! along time. Exact: the same frames as the one-shot decode (within float rounding, since
//! kernel shapes change with the chunk).

use anyhow::{bail, Context, Result};
use orrery_compiler::{compile, Plan};
use orrery_cpu::CpuTensor;
use orrery_models::cosmos::{decoder_chunk_graph, CosmosVaeConfig, DecodeChunk};
use orrery_models::{ComponentConfig, WeightTypes};
use orrery_runtime::{run_chunks, ChunkOutput, WeightResolver};
use std::path::Path;
use std::sync::Arc;

/// The tokenizer config of `component`, or an error saying that chunking applies only there.
pub fn tokenizer_config(component: &Path, method: &str) -> Result<CosmosVaeConfig> {
    let config = ComponentConfig::read(component)?;
    if config.class != "AutoencoderKLCosmos" || method != "decode" {
        bail!(
            "--chunk-frames applies to `--method decode` of an AutoencoderKLCosmos folder; {} is {} (method `{method}`)",
            component.display(),
            config.class
        );
    }
    Ok(CosmosVaeConfig::from_config(&config)?)
}

/// The plan of each chunk of `frames` latent frames for latent shape `z`.
pub fn chunk_plans(config: &CosmosVaeConfig, weights: &WeightTypes, z: &[usize], frames: usize) -> Result<Vec<Plan>> {
    let [b, c, t, h, w]: [usize; 5] =
        z.try_into().map_err(|_| anyhow::anyhow!("`z` must be [batch, channels, frames, h, w], got {z:?}"))?;
    if frames == 0 {
        bail!("--chunk-frames must be at least 1");
    }
    (0..t)
        .step_by(frames)
        .map(|start| {
            let shape = [b, c, frames.min(t - start), h, w];
            let graph = decoder_chunk_graph(config, weights, shape, DecodeChunk { start, total: t })
                .with_context(|| format!("building the decoder chunk at latent frame {start}"))?;
            Ok(compile(graph)?)
        })
        .collect()
}

/// Runs the chunk plans on `z` and returns the decoded video (1 + r·(T − 1) frames for T latent
/// frames and temporal ratio r).
pub fn decode(
    plans: &[Plan],
    weights: Arc<dyn WeightResolver>,
    z: &CpuTensor,
    threads: usize,
    temporal_ratio: usize,
) -> Result<CpuTensor> {
    let latent = z.shape()[2];
    let mut start = 0;
    let mut slices = Vec::with_capacity(plans.len());
    for plan in plans {
        let len = plan.graph.node(plan.graph.find("z").expect("chunk graphs take `z`")).ty.shape.dims()[2];
        slices.push(z.slice(2, start, start + len, 1).contiguous());
        start += len;
    }
    let frames = 1 + temporal_ratio * (latent - 1);
    let output = ChunkOutput { name: "sample", axis: 2, len: frames };
    Ok(run_chunks(plans, weights, "z", slices, output, threads)?)
}
