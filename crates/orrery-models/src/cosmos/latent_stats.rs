//! The tokenizer's latent statistics (cosmos-reference §5, §4.1): μ and s per channel *and* per
//! latent frame, stored in the diffusers `vae/config.json` as 256-float `latents_mean` /
//! `latents_std` (index c·16 + t). The pipeline maps tokenizer latents into the diffusion
//! model's space with them (`orrery_pipeline`'s `latent_space`); this module only reads and
//! checks the table.

use super::vae::CosmosVaeConfig;
use crate::ModelError;

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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn statistics_are_per_channel_and_per_latent_frame() {
        // 4 latent frames per channel in the table; frames 1..3 picked for each channel.
        let c = config(4);
        let (mean, std) = (c.latents_mean.clone().unwrap(), c.latents_std.clone().unwrap());
        let s = latent_statistics(&c, 1, 2).unwrap().unwrap();
        assert_eq!(s.mean, vec![mean[1], mean[2], mean[5], mean[6]]);
        assert_eq!(s.std, vec![std[1], std[2], std[5], std[6]]);
        let mut none = config(4);
        none.latents_mean = None;
        assert_eq!(latent_statistics(&none, 0, 1).unwrap(), None);
    }

    #[test]
    fn frames_beyond_the_table_and_bad_tables_are_errors() {
        let err = latent_statistics(&config(4), 2, 3).unwrap_err().to_string();
        assert!(err.contains("cover 4 latent frames"), "{err}");
        let mut bad = config(4);
        bad.latents_std.as_mut().unwrap()[3] = 0.0;
        assert!(latent_statistics(&bad, 0, 1).is_err());
        let mut odd = config(4);
        odd.latents_mean.as_mut().unwrap().pop();
        assert!(latent_statistics(&odd, 0, 1).is_err());
    }
}
