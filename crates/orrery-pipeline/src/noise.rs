//! Reproducible standard normal noise from a seed, and the decoded video as 8-bit frames.
//!
//! The generator is orrery's own and documented so that any implementation can reproduce it:
//! SplitMix64 (Steele, Lea and Flood 2014) seeded with the seed gives 64-bit words; each pair of
//! words becomes two uniforms `u = (w >> 11 + 1) · 2⁻⁵³` in (0, 1], and the Box–Muller
//! transform turns each pair of uniforms into two normals (`√(−2 ln u₁)·cos 2πu₂`, then the
//! `sin` one), computed in f64 and rounded to f32, filling the tensor in row-major order. It
//! does not reproduce torch's generator: to match a reference run bit for bit, inject its noise
//! (`--init-noise`).

/// `count` standard normal values from `seed` (see the module documentation).
pub fn standard_normal(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let uniform = |w: u64| ((w >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let (u1, u2) = (uniform(next()), uniform(next()));
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(count);
    out
}

/// The decoder's output [1, 3, F, H, W] (about [-1, 1]) as F frames of H × W × RGB bytes, as
/// diffusers converts it: `(x / 2 + 0.5)` clamped to [0, 1], times 255, truncated (f32
/// arithmetic throughout).
pub fn video_frames_u8(decoded: &[f32], frames: usize, height: usize, width: usize) -> Vec<Vec<u8>> {
    let plane = height * width;
    assert_eq!(decoded.len(), 3 * frames * plane, "decoded video does not match 3 × {frames} × {height} × {width}");
    (0..frames)
        .map(|f| {
            let mut rgb = vec![0u8; 3 * plane];
            for c in 0..3 {
                let src = &decoded[(c * frames + f) * plane..][..plane];
                for (p, &v) in src.iter().enumerate() {
                    let unit = (v / 2.0 + 0.5).clamp(0.0, 1.0);
                    rgb[3 * p + c] = (unit * 255.0) as u8;
                }
            }
            rgb
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_reproducible_and_standard_normal() {
        let a = standard_normal(100_001, 42);
        assert_eq!(a, standard_normal(100_001, 42));
        assert_ne!(a[..10], standard_normal(10, 43)[..]);
        // A prefix does not depend on the count.
        assert_eq!(a[..7], standard_normal(7, 42)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean}, variance {var}");
        assert!(a.iter().all(|v| v.is_finite()));
        // The first values are pinned: the generator is part of the documented behaviour, and
        // a seed must give the same video on every build and platform.
        assert_eq!(standard_normal(4, 0), [-0.45275775, 0.20776604, 2.650606, -0.49042282]);
    }

    #[test]
    fn frames_clamp_and_truncate_like_diffusers() {
        // One frame, 1 × 2 pixels: channel planes R = [-1, 1], G = [0, 2], B = [-3, 0.999].
        let decoded = [-1.0, 1.0, 0.0, 2.0, -3.0, 0.999];
        let frames = video_frames_u8(&decoded, 1, 1, 2);
        // 0.0·255 = 0; 1·255 = 255; 0.5·255 = 127.5 → 127; clamp(1.5) → 255; clamp(-1) → 0;
        // (0.999/2 + 0.5)·255 = 254.87… → 254.
        assert_eq!(frames, vec![vec![0, 127, 0, 255, 255, 254]]);
    }
}
