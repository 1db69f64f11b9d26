//! Tokenizer latents ↔ diffusion-model latents (cosmos-reference §4.1, §5): model latent =
//! (tokenizer latent − μ)·σ_data / s, per channel and latent frame, and back
//! `latent·s / σ_data + μ`, in diffusers' order of operations (f32). Without statistics in the
//! config only σ_data scales.

use orrery_models::cosmos::LatentStatistics;

/// Applies `f(value, k)` to every element of a [1, C, T, h, w] tensor, `k = c·T + t` being the
/// element's index into the statistics.
fn per_channel_frame(values: &[f32], shape: &[usize; 5], f: impl Fn(f32, usize) -> f32) -> Vec<f32> {
    let [_, c, t, h, w] = *shape;
    values.iter().enumerate().map(|(i, &v)| f(v, ((i / (t * h * w)) % c) * t + (i / (h * w)) % t)).collect()
}

/// Tokenizer latents (the encoder's output) → the model's latents.
pub fn to_model_latents(z: &[f32], shape: &[usize; 5], stats: Option<&LatentStatistics>, sigma_data: f32) -> Vec<f32> {
    match stats {
        Some(s) => per_channel_frame(z, shape, |v, k| (v - s.mean[k] as f32) * sigma_data / s.std[k] as f32),
        None => z.iter().map(|v| v * sigma_data).collect(),
    }
}

/// The model's latents → tokenizer latents (the decoder's input).
pub fn to_tokenizer_latents(
    latents: &[f32],
    shape: &[usize; 5],
    stats: Option<&LatentStatistics>,
    sigma_data: f32,
) -> Vec<f32> {
    match stats {
        Some(s) => per_channel_frame(latents, shape, |v, k| v * s.std[k] as f32 / sigma_data + s.mean[k] as f32),
        None => latents.iter().map(|v| v / sigma_data).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_apply_per_channel_and_latent_frame_and_round_trip() {
        // [1, 2, 2, 1, 3]: k = c·2 + t.
        let shape = [1, 2, 2, 1, 3];
        let stats = LatentStatistics { mean: vec![0.1, -0.2, 0.3, 0.0], std: vec![0.5, 0.8, 1.2, 0.6] };
        let z: Vec<f32> = (0..12).map(|i| i as f32 * 0.37 - 1.0).collect();
        let model = to_model_latents(&z, &shape, Some(&stats), 0.5);
        for (i, (&m, &v)) in model.iter().zip(&z).enumerate() {
            let k = (i / 6) * 2 + (i / 3) % 2;
            let want = (v as f64 - stats.mean[k]) * 0.5 / stats.std[k];
            assert!((m as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "element {i}");
        }
        let back = to_tokenizer_latents(&model, &shape, Some(&stats), 0.5);
        back.iter().zip(&z).for_each(|(a, b)| assert!((a - b).abs() <= 1e-5, "{a} vs {b}"));
    }

    #[test]
    fn without_statistics_only_sigma_data_scales() {
        let shape = [1, 1, 1, 2, 3];
        let z = [1.0, -2.0, 4.0, 0.5, 8.0, -1.0];
        assert_eq!(to_model_latents(&z, &shape, None, 0.5), z.iter().map(|v| v * 0.5).collect::<Vec<_>>());
        assert_eq!(to_tokenizer_latents(&z, &shape, None, 0.5), z.iter().map(|v| v * 2.0).collect::<Vec<_>>());
    }
}
