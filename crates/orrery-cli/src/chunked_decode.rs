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
use orrery_runtime::{Session, WeightResolver};
use std::collections::HashMap;
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

/// Runs the chunk plans on `z` and returns the concatenated `sample`. Each chunk's frames are
/// copied into the output as soon as the chunk finishes, so no more than one chunk's output
/// exists besides the video.
pub fn decode(
    plans: &[Plan],
    weights: Arc<dyn WeightResolver>,
    z: &CpuTensor,
    threads: usize,
    temporal_ratio: usize,
) -> Result<CpuTensor> {
    let mut state: HashMap<String, CpuTensor> = HashMap::new();
    let latent = z.shape()[2];
    let mut video: Vec<f32> = Vec::new();
    let mut dims: Vec<usize> = Vec::new();
    let (mut start, mut frame) = (0, 0);
    for plan in plans {
        let len = plan.graph.node(plan.graph.find("z").expect("chunk graphs take `z`")).ty.shape.dims()[2];
        let mut inputs = HashMap::from([("z".to_string(), z.slice(2, start, start + len, 1).contiguous())]);
        for (_, node) in plan.graph.inputs() {
            if let Some(key) = node.name.strip_prefix("state.") {
                let t = state.remove(&format!("next_state.{key}")).expect("every state comes from the previous chunk");
                inputs.insert(node.name.clone(), t.contiguous());
            }
        }
        let session = Session::new(plan.clone(), weights.clone(), threads)?;
        let (mut out, _) = session.run(&inputs)?;
        let sample = out.remove("sample").expect("chunk graphs output `sample`");
        let d = sample.shape().to_vec();
        if dims.is_empty() {
            // The first chunk gives r·len − (r − 1) frames, every later one r·len: 1 + r·(T − 1).
            dims = vec![d[0], d[1], 1 + temporal_ratio * (latent - 1), d[3], d[4]];
            video = vec![0f32; dims.iter().product()];
        }
        let (bc, hw, total) = (d[0] * d[1], d[3] * d[4], dims[2]);
        let values = sample.to_f32_vec();
        for i in 0..bc {
            let src = &values[i * d[2] * hw..(i + 1) * d[2] * hw];
            video[(i * total + frame) * hw..][..d[2] * hw].copy_from_slice(src);
        }
        frame += d[2];
        state = out;
        start += len;
    }
    if frame != dims[2] {
        bail!("the chunks gave {frame} frames, expected {}", dims[2]);
    }
    Ok(CpuTensor::from_vec(dims, video))
}
