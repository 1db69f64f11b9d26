//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

/// `n` deterministic pseudo-random values in [-scale, scale) (xorshift), so failures reproduce.
pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// max|got − reference| / max|reference|, the project's relative error, in f64.
pub fn rel_err(got: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(got.len(), reference.len(), "length mismatch");
    let scale = reference.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    got.iter().zip(reference).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale
}
