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
/// Partial sums of [`exp_shifted_sum`]: one AVX-512 register, two AVX2 ones. Each lane's sum is
/// a chain of dependent additions, so more lanes mean shorter chains.
const SUM_LANES: usize = 16;

/// The sixteen lane sums combined in a fixed order: lanes i and i + 8, then those eight
/// pairwise.
#[inline(always)]
fn combine_lanes(acc: [f32; SUM_LANES]) -> f32 {
    let h: [f32; LANES] = std::array::from_fn(|i| acc[i] + acc[i + LANES]);
    ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]))
}

/// `row[j] = e^(row[j] - shift)` on `row[start..]` (whose length is below `SUM_LANES` or a
/// multiple of it), adding element `start + i` to lane `i % SUM_LANES` of `acc`.
#[inline(always)]
fn exp_shifted_lanes(row: &mut [f32], shift: f32, acc: &mut [f32; SUM_LANES]) {
    for (i, v) in row.iter_mut().enumerate() {
        *v = exp_approx(*v - shift);
        acc[i % SUM_LANES] += *v;
    }
}

/// Portable [`exp_shifted_sum`].
fn exp_shifted_sum_portable(row: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; SUM_LANES];
    exp_shifted_lanes(row, shift, &mut acc);
    combine_lanes(acc)
}

/// Portable [`row_max`]: eight lane maxima, then their maximum.
fn row_max_portable(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    for (i, &v) in row.iter().enumerate() {
        let a = &mut acc[i % LANES];
        *a = if v > *a { v } else { *a };
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The same computations eight lanes at a time with AVX2 and FMA. Every lane performs exactly
/// the portable operations (fused where those are fused), so results are bit-identical.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let s = _mm256_set1_ps;
        // max(MIN, x) and min(MAX, ·) return x when x is NaN, like `f32::clamp`.
        let xc = _mm256_min_ps(s(EXP_MAX_ARG), _mm256_max_ps(s(EXP_MIN_ARG), x));
        let t = _mm256_fmadd_ps(xc, s(std::f32::consts::LOG2_E), s(ROUND_MAGIC));
        let n_int = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(ROUND_MAGIC.to_bits() as i32));
        let n = _mm256_sub_ps(t, s(ROUND_MAGIC));
        let r = _mm256_fmadd_ps(n, s(2.121_944_4e-4), _mm256_fmadd_ps(n, s(-0.693_359_4), xc));
        let mut p = s(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, s(c));
        }
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), s(1.0));
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n_int, _mm256_set1_epi32(127))));
        let scaled = _mm256_mul_ps(e, pow2);
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, s(EXP_MIN_ARG));
        _mm256_andnot_ps(underflow, scaled)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        // Lanes 0-7 and 8-15 of the sixteen partial sums.
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let shift8 = _mm256_set1_ps(shift);
        let mut chunks = row.chunks_exact_mut(SUM_LANES);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly SUM_LANES floats; unaligned loads and stores are allowed.
            unsafe {
                let (a, b) = (c.as_mut_ptr(), c.as_mut_ptr().add(LANES));
                let va = exp8(_mm256_sub_ps(_mm256_loadu_ps(a), shift8));
                let vb = exp8(_mm256_sub_ps(_mm256_loadu_ps(b), shift8));
                _mm256_storeu_ps(a, va);
                _mm256_storeu_ps(b, vb);
                lo = _mm256_add_ps(lo, va);
                hi = _mm256_add_ps(hi, vb);
            }
        }
        let mut lanes = [0f32; SUM_LANES];
        // SAFETY: `lanes` holds SUM_LANES floats.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(LANES), hi);
        }
        exp_shifted_lanes(chunks.into_remainder(), shift, &mut lanes);
        combine_lanes(lanes)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn row_max(row: &[f32]) -> f32 {
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly LANES floats. max(v, acc) keeps acc when v is NaN.
            acc = unsafe { _mm256_max_ps(_mm256_loadu_ps(c.as_ptr()), acc) };
        }
        let mut lanes = [0f32; LANES];
        // SAFETY: `lanes` holds LANES floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        for (i, &v) in chunks.remainder().iter().enumerate() {
            lanes[i] = if v > lanes[i] { v } else { lanes[i] };
        }
        lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
    }

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
}

/// The same computations sixteen lanes at a time with AVX-512: the exponentials are the
/// AVX2 lanes' operations (less the clamps, which cannot act on the values kept), and the sums
/// are the sixteen partial sums the other builds keep, so results are bit-identical to theirs.
/// The maximum keeps four registers of lane maxima: a maximum is exact, so how the values are
/// grouped does not change it (but for the sign of a zero maximum, which no `x - shift` sees).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    const WIDE: usize = 2 * LANES;

    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let s = _mm512_set1_ps;
        // No clamping: x ≤ 0 (caller), so the upper clamp would never act, and below
        // EXP_MIN_ARG, where the other builds clamp, the result is masked to 0 in all builds.
        // In between, the other builds' operations.
        let t = _mm512_fmadd_ps(x, s(std::f32::consts::LOG2_E), s(ROUND_MAGIC));
        let n = _mm512_sub_ps(t, s(ROUND_MAGIC));
        let r = _mm512_fmadd_ps(n, s(2.121_944_4e-4), _mm512_fmadd_ps(n, s(-0.693_359_4), x));
        let mut p = s(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, s(c));
        }
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), s(1.0));
        // e·2^n in one instruction, one rounding: the bits of multiplying by the 2^n the other
        // builds assemble from exponent bits (n is in [-126, 0] where the result is kept, so
        // 2^n is normal). Masked to 0 below EXP_MIN_ARG; NaN is kept and propagated.
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, s(EXP_MIN_ARG));
        _mm512_maskz_scalef_ps(keep, e, n)
    }

    #[target_feature(enable = "avx512f")]
    pub fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let shift16 = _mm512_set1_ps(shift);
        let mut chunks = row.chunks_exact_mut(SUM_LANES);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly SUM_LANES floats; unaligned loads and stores are allowed.
            unsafe {
                let v = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), shift16));
                _mm512_storeu_ps(c.as_mut_ptr(), v);
                acc = _mm512_add_ps(acc, v);
            }
        }
        let mut lanes = [0f32; SUM_LANES];
        // SAFETY: `lanes` holds SUM_LANES floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        // The rest (under 16 elements) as the portable loop: lane i % 16 again.
        exp_shifted_lanes(chunks.into_remainder(), shift, &mut lanes);
        combine_lanes(lanes)
    }

    #[target_feature(enable = "avx512f")]
    pub fn row_max(row: &[f32]) -> f32 {
        let mut accs = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        let mut quads = row.chunks_exact(4 * WIDE);
        for q in &mut quads {
            for (i, acc) in accs.iter_mut().enumerate() {
                // SAFETY: `q` holds 4·WIDE floats. max(v, acc) keeps acc when v is NaN.
                *acc = unsafe { _mm512_max_ps(_mm512_loadu_ps(q.as_ptr().add(i * WIDE)), *acc) };
            }
        }
        let mut acc = _mm512_max_ps(_mm512_max_ps(accs[0], accs[1]), _mm512_max_ps(accs[2], accs[3]));
        let mut chunks = quads.remainder().chunks_exact(WIDE);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly WIDE floats. max(v, acc) keeps acc when v is NaN.
            acc = unsafe { _mm512_max_ps(_mm512_loadu_ps(c.as_ptr()), acc) };
        }
        let mut lanes = [0f32; WIDE];
        // SAFETY: `lanes` holds WIDE floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        for (i, &v) in chunks.remainder().iter().enumerate() {
            lanes[i] = if v > lanes[i] { v } else { lanes[i] };
        }
        lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
    }

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }
}

/// `row[j] = e^(row[j] - shift)`; returns Σ row in a fixed order (sixteen interleaved partial
/// sums, then combined pairwise), independent of threads and of the instruction set used.
/// `shift` is at least every element (a row maximum): the exponents are at most 0.
pub(crate) fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU supports AVX-512F (checked at run time).
        return unsafe { avx512::exp_shifted_sum(row, shift) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { avx2::exp_shifted_sum(row, shift) };
    }
    exp_shifted_sum_portable(row, shift)
}

/// The largest element (NaNs ignored; -inf for an empty or all -inf row).
pub(crate) fn row_max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU supports AVX-512F (checked at run time).
        return unsafe { avx512::row_max(row) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { avx2::row_max(row) };
    }
    row_max_portable(row)
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
    fn row_helpers_match_plain_loops_bit_for_bit() {
        // Scores over a few units (23 values, and many: sums whose rounding shows the order
        // of the additions), and over a range that crosses the flush to zero below
        // EXP_MIN_ARG (where the builds differ in how they get there).
        let few = |i: usize| ((i * 7919) % 23) as f32 * 0.9 - 12.0;
        let many = |i: usize| ((i * 7919) % 1009) as f32 * 0.0123 - 6.0;
        let wide = |i: usize| -(((i * 7919) % 1000) as f32 * 0.0957);
        let lens = [0, 1, 7, 8, 9, 15, 16, 17, 37, 64, 515, 1000, 4099];
        let rows = [&few as &dyn Fn(usize) -> f32, &many, &wide];
        for (len, values) in lens.iter().flat_map(|&len| rows.map(|values| (len, values))) {
            let row: Vec<f32> = (0..len).map(values).collect();
            let max = row_max(&row);
            assert_eq!(max, row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            assert_eq!(max.to_bits(), row_max_portable(&row).to_bits());
            let mut fast = row.clone();
            let mut portable = row.clone();
            let sum = exp_shifted_sum(&mut fast, max);
            assert_eq!(sum.to_bits(), exp_shifted_sum_portable(&mut portable, max).to_bits());
            // Each x86 build present on this CPU gives the same bits as the portable one.
            #[cfg(target_arch = "x86_64")]
            for (available, run) in [
                (
                    avx2::available(),
                    (|r: &mut [f32], s| unsafe { avx2::exp_shifted_sum(r, s) }) as fn(&mut [f32], f32) -> f32,
                ),
                (avx512::available(), |r: &mut [f32], s| unsafe { avx512::exp_shifted_sum(r, s) }),
            ] {
                if available {
                    let mut out = row.clone();
                    assert_eq!(run(&mut out, max).to_bits(), sum.to_bits(), "length {len}");
                    assert_eq!(out, portable);
                }
            }
            let plain: Vec<f32> = row.iter().map(|v| exp(v - max)).collect();
            assert_eq!(fast, plain);
            assert_eq!(portable, plain);
            assert!((sum - plain.iter().sum::<f32>()).abs() <= 1e-5 * sum.max(1.0));
        }
        // -inf (masked) weighs exactly nothing; NaN propagates through exp.
        let mut row = vec![f32::NEG_INFINITY, 0.0, f32::NAN, -97.0, 1.0, -1.0, 2.0, 3.0, 0.5];
        exp_shifted_sum(&mut row, 3.0);
        assert_eq!(row[0], 0.0);
        assert!(row[2].is_nan());
        assert_eq!(row[3], 0.0);
    }
}
