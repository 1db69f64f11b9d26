//! The tokenizer latent ↔ diffusion-model latent conversion (cosmos-reference §5, §4.1):
//! model latent = (tokenizer latent − μ) / s · σ_data and back, where μ and s are given per
//! channel *and* per latent frame (`latents_mean` / `latents_std` in the diffusers
//! `vae/config.json`, 256 floats at index c·16 + t) and σ_data is 0.5. Built as graph nodes so
//! the pipeline can put them at the end of the encoder or the front of the decoder (and the
//! compiler fuses them there); a temporal chunk passes its first latent frame.

use super::vae::CosmosVaeConfig;
use crate::ModelError;
use orrery_ir::{BinaryOp, DType, GraphBuilder, NodeId, RefTensor};

/// The EDM σ_data of the Cosmos diffusion models.
pub const SIGMA_DATA: f64 = 0.5;

/// μ and s for latent frames `start .. start + frames`, shaped [1, C, frames, 1, 1].
fn stats(config: &CosmosVaeConfig, start: usize, frames: usize) -> Result<Option<(RefTensor, RefTensor)>, ModelError> {
    let shape = vec![1, config.latent_channels, frames, 1, 1];
    Ok(latent_statistics(config, start, frames)?
        .map(|s| (RefTensor::new(DType::F32, shape.clone(), s.mean), RefTensor::new(DType::F32, shape, s.std))))
}

/// Per channel × latent frame statistics of the tokenizer's latents, channel-major
/// (`[c·frames + t]`).
#[derive(Clone, Debug, PartialEq)]
pub struct LatentStatistics {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// μ and s for latent frames `start .. start + frames`, channel-major (`[c·frames + t]`), from
/// the config's `latents_mean` / `latents_std` (`None` when it has none). Errors name what is
/// wrong with the table.
pub fn latent_statistics(
    config: &CosmosVaeConfig,
    start: usize,
    frames: usize,
) -> Result<Option<LatentStatistics>, ModelError> {
    let (Some(mean), Some(std)) = (&config.latents_mean, &config.latents_std) else {
        return Ok(None);
    };
    let c = config.latent_channels;
    let err = |reason: String| ModelError::Config { path: "vae/config.json".into(), reason };
    if mean.len() != std.len() || mean.is_empty() || !mean.len().is_multiple_of(c) {
        return Err(err(format!(
            "`latents_mean` ({}) and `latents_std` ({}) must hold the same multiple of latent_channels ({c}) values",
            mean.len(),
            std.len()
        )));
    }
    let per_channel = mean.len() / c;
    if start + frames > per_channel {
        return Err(err(format!(
            "`latents_mean`/`latents_std` cover {per_channel} latent frames; latent frames {start}..{} asked for",
            start + frames
        )));
    }
    if let Some(bad) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(err(format!("`latents_std` must be positive and finite, found {bad}")));
    }
    let pick = |v: &[f64]| -> Vec<f64> {
        (0..c).flat_map(|ch| v[ch * per_channel + start..][..frames].iter().copied()).collect()
    };
    Ok(Some(LatentStatistics { mean: pick(mean), std: pick(std) }))
}

/// μ and s for `latent` (first frame `start`) as constant nodes named `<tag>.mean` / `.std`.
fn stat_nodes(
    b: &mut GraphBuilder,
    config: &CosmosVaeConfig,
    latent: NodeId,
    start: usize,
    tag: &str,
) -> Result<Option<(NodeId, NodeId)>, ModelError> {
    let frames = b.dims(latent)[2];
    Ok(stats(config, start, frames)?
        .map(|(mean, std)| (b.constant(&format!("{tag}.mean"), mean), b.constant(&format!("{tag}.std"), std))))
}

/// `(latent − μ) / s · σ_data` for a tokenizer latent [B, C, T, h, w] whose first frame is
/// latent frame `start`; without `latents_mean`/`latents_std` in the config, `latent · σ_data`.
pub fn normalize_latent(
    b: &mut GraphBuilder,
    config: &CosmosVaeConfig,
    latent: NodeId,
    start: usize,
) -> Result<NodeId, ModelError> {
    let sigma = b.scalar("latent_norm.sigma_data", SIGMA_DATA);
    let unit = match stat_nodes(b, config, latent, start, "latent_norm")? {
        Some((mean, std)) => {
            let centred = b.binary("latent_norm.centred", BinaryOp::Sub, latent, mean)?;
            b.binary("latent_norm.unit", BinaryOp::Div, centred, std)?
        }
        None => latent,
    };
    Ok(b.mul("latent_norm.scaled", unit, sigma)?)
}

/// The inverse: `latent / σ_data · s + μ`, the decoder's input for a model latent.
pub fn denormalize_latent(
    b: &mut GraphBuilder,
    config: &CosmosVaeConfig,
    latent: NodeId,
    start: usize,
) -> Result<NodeId, ModelError> {
    let sigma = b.scalar("latent_denorm.sigma_data", SIGMA_DATA);
    let unit = b.binary("latent_denorm.unit", BinaryOp::Div, latent, sigma)?;
    match stat_nodes(b, config, latent, start, "latent_denorm")? {
        Some((mean, std)) => {
            let scaled = b.mul("latent_denorm.scaled", unit, std)?;
            Ok(b.add("latent_denorm.shifted", scaled, mean)?)
        }
        None => Ok(unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_ir::reference::eval_graph;
    use std::collections::HashMap;

    fn config(frames_per_channel: usize) -> CosmosVaeConfig {
        let c = 2;
        let n = c * frames_per_channel;
        CosmosVaeConfig {
            in_channels: 3,
            out_channels: 3,
            latent_channels: c,
            encoder_block_out_channels: vec![8, 16],
            decode_block_out_channels: vec![8, 16],
            attention_resolutions: vec![],
            resolution: 64,
            num_layers: 1,
            patch_size: 4,
            spatial_compression_ratio: 8,
            temporal_compression_ratio: 8,
            latents_mean: Some((0..n).map(|i| 0.1 * i as f64 - 0.3).collect()),
            latents_std: Some((0..n).map(|i| 0.5 + 0.05 * i as f64).collect()),
        }
    }

    /// Runs normalize (or denormalize) on x [1, 2, frames, 1, 3] from latent frame `start`.
    fn run(config: &CosmosVaeConfig, x: &[f64], frames: usize, start: usize, forward: bool) -> Vec<f64> {
        let mut b = GraphBuilder::new();
        let input = b.input("x", DType::F32, [1, 2, frames, 1, 3]).unwrap();
        let y = if forward {
            normalize_latent(&mut b, config, input, start).unwrap()
        } else {
            denormalize_latent(&mut b, config, input, start).unwrap()
        };
        b.output("y", y).unwrap();
        let g = b.finish().unwrap();
        let inputs =
            HashMap::from([("x".to_string(), RefTensor::new(DType::F32, vec![1, 2, frames, 1, 3], x.to_vec()))]);
        eval_graph(&g, &inputs, &|_| None).unwrap()["y"].data.clone()
    }

    #[test]
    fn statistics_are_per_channel_and_per_latent_frame() {
        // 4 latent frames per channel in the table; a chunk of 2 frames starting at frame 1.
        let c = config(4);
        let (mean, std) = (c.latents_mean.clone().unwrap(), c.latents_std.clone().unwrap());
        let x: Vec<f64> = (0..2 * 2 * 3).map(|i| i as f64 * 0.37 - 1.0).collect();
        let y = run(&c, &x, 2, 1, true);
        for ch in 0..2 {
            for t in 0..2 {
                for w in 0..3 {
                    let i = (ch * 2 + t) * 3 + w;
                    let k = ch * 4 + 1 + t; // index c·frames_per_channel + t
                    let expected = (x[i] - mean[k]) / std[k] * 0.5;
                    assert!((y[i] - expected).abs() <= 1e-6 * expected.abs().max(1.0), "{ch} {t} {w}");
                }
            }
        }
        // And back.
        let back = run(&c, &y, 2, 1, false);
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn without_statistics_only_sigma_data_scales() {
        let mut c = config(4);
        c.latents_mean = None;
        c.latents_std = None;
        let x = [1.0, -2.0, 4.0, 0.5, 8.0, -1.0];
        assert_eq!(run(&c, &x, 1, 0, true), x.iter().map(|v| v * 0.5).collect::<Vec<_>>());
        assert_eq!(run(&c, &x, 1, 0, false), x.iter().map(|v| v * 2.0).collect::<Vec<_>>());
    }

    #[test]
    fn frames_beyond_the_table_and_bad_tables_are_errors() {
        let c = config(4);
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [1, 2, 3, 1, 1]).unwrap();
        let err = normalize_latent(&mut b, &c, x, 2).unwrap_err().to_string();
        assert!(err.contains("cover 4 latent frames"), "{err}");
        let mut bad = config(4);
        bad.latents_std.as_mut().unwrap()[3] = 0.0;
        assert!(normalize_latent(&mut b, &bad, x, 0).is_err());
        let mut odd = config(4);
        odd.latents_mean.as_mut().unwrap().pop();
        assert!(normalize_latent(&mut b, &odd, x, 0).is_err());
    }
}
