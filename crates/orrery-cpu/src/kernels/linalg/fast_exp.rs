//! Vectorisable exp for softmax rows.
//!
//! `f32::exp` is a scalar libm call; attention evaluates one exp per score, which would cost
//! more than the matrix products. This is the Cephes `expf` scheme (range reduction by ln 2,
//! degree-6 polynomial, exponent bits), ≈1 ulp, written branch-free so that LLVM vectorises it.
//! Its multiply-adds are explicitly fused (`mul_add`, exactly rounded wherever it runs: an FMA
//! instruction in the AVX2+FMA build, the libm routine in the portable one), so every build
//! rounds identically and the result does not depend on which one runs.

/// Below this, `e^x` is under the smallest normal f32; it is flushed to exactly 0 (so that
/// masked scores, which are -inf, weigh exactly nothing).
const EXP_MIN_ARG: f32 = -87.33654;
const EXP_MAX_ARG: f32 = 88.37626;
/// 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN_ARG, EXP_MAX_ARG);
    // n = round(x / ln 2), read both as a float and as the integer in the mantissa.
    let t = xc.mul_add(std::f32::consts::LOG2_E, ROUND_MAGIC);
    let n_int = t.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let n = t - ROUND_MAGIC;
    // r = x - n·ln 2 in two parts (Cody–Waite), |r| ≤ ln 2 / 2.
    let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_4, xc));
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    let scaled = e * f32::from_bits(((n_int + 127) << 23) as u32);
    if x < EXP_MIN_ARG {
        0.0
    } else {
        scaled
    }
}

const LANES: usize = 8;

/// `row[j] = e^(row[j] - shift)`; returns Σ row in a fixed order (eight interleaved partial
/// sums, then combined pairwise), independent of threads.
#[inline(always)]
fn exp_shifted_sum_body(row: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
            *v = exp_approx(*v - shift);
            *a += *v;
        }
    }
    for (v, a) in chunks.into_remainder().iter_mut().zip(acc.iter_mut()) {
        *v = exp_approx(*v - shift);
        *a += *v;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

#[inline(always)]
fn max_body(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (v, a) in c.iter().zip(acc.iter_mut()) {
            *a = if *v > *a { *v } else { *a };
        }
    }
    for (v, a) in chunks.remainder().iter().zip(acc.iter_mut()) {
        *a = if *v > *a { *v } else { *a };
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_sum_avx2(row: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_body(row, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn max_avx2(row: &[f32]) -> f32 {
    max_body(row)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// See [`exp_shifted_sum_body`]. Uses AVX2 and FMA when the CPU has them (same results either way).
pub(crate) fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { exp_shifted_sum_avx2(row, shift) };
    }
    exp_shifted_sum_body(row, shift)
}

/// The largest element (NaNs ignored; -inf for an empty or all -inf row).
pub(crate) fn row_max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { max_avx2(row) };
    }
    max_body(row)
}

/// Scalar `e^x` with the same rounding as the row functions.
pub(crate) fn exp(x: f32) -> f32 {
    exp_approx(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_on_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -88.0 + 88.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if want > 1.2e-38 {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn row_helpers_match_plain_loops() {
        let mut row: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 * 0.25 - 3.0).collect();
        let max = row_max(&row);
        assert_eq!(max, row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let plain: Vec<f32> = row.iter().map(|v| exp(v - max)).collect();
        let sum = exp_shifted_sum(&mut row, max);
        assert_eq!(row, plain);
        assert!((sum - plain.iter().sum::<f32>()).abs() < 1e-5);
    }
}
