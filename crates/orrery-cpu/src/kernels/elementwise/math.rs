//! Scalar math for the f32 kernels. The transcendental functions here are branch-free and use
//! no fused multiply-add, so that loops over them vectorise (std's `f32::exp` is a scalar libm
//! call) and give the same bits on every x86-64 CPU. Accuracy is stated per function and
//! checked against f64 over dense sweeps in the tests below.

/// 1.5·2^23: adding it to a float below 2^22 in magnitude rounds it to an integer, which then
/// sits in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// ln 2 split for Cody–Waite reduction: the high part has 9 significant bits, so `n·LN2_HI`
/// is exact for every `n` used here.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x` in f32 with at most 2 ulp error over the whole range (subnormal results, overflow to
/// inf, NaN included).
#[inline(always)]
pub(in crate::kernels) fn exp_f32(x: f32) -> f32 {
    // Outside this range the result is 0 or inf anyway; clamp keeps NaN.
    let x = x.clamp(-104.0, 89.0);
    let t = x * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r for |r| ≤ 0.35 by its Taylor polynomial of degree 7 (truncation error 5e-9).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n as two factors so that n in [-150, 128] never leaves the normal exponent range;
    // the second product rounds once into subnormals or overflows to inf.
    let n = t.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let (n1, n2) = (n >> 1, n - (n >> 1));
    p * f32::from_bits(((n1 + 127) << 23) as u32) * f32::from_bits(((n2 + 127) << 23) as u32)
}

/// `e^a` for an f64 exponent: `e^hi · (1 + lo)` with `hi + lo = a`, which keeps the low bits
/// of the exponent that rounding `a` to f32 would lose (they matter when |a| is large: the
/// result's relative error is |a| times the exponent's).
#[inline(always)]
fn exp_of_f64(a: f64) -> f32 {
    // Beyond ±200 the result is 0 or inf anyway; clamping keeps `lo` finite for infinite `a`.
    let a = a.clamp(-200.0, 200.0);
    let hi = a as f32;
    let lo = (a - hi as f64) as f32;
    exp_f32(hi) * (1.0 + lo)
}

#[inline(always)]
pub(super) fn rsqrt(x: f32) -> f32 {
    1.0 / x.sqrt()
}

/// `1/(1 + e^-x)`: tends to 0 or 1 without overflow or NaN.
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[inline(always)]
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// Keeps NaN, as torch does.
#[inline(always)]
pub(super) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() {
        x
    } else {
        0.0
    }
}

/// `|x|` beyond which `gelu_erf` takes `Φ(-|x|)` as 0 (and `Φ(|x|)` as 1): there
/// `|x|·Φ(-|x|) < 4e-39`. Clamping `|x|` to it keeps `e^(-x²/2)` in range, and at the clamp the
/// scale factor `2^n` of that exponential comes out as exactly +0 (see `gelu_erf`).
const GELU_CUT: f32 = 13.25;
/// 1.5·2^23 + 127: adding it to `y` in (-128, 0] rounds `y` to an integer `n` and leaves `n + 127`,
/// the biased exponent of `2^n`, in the low mantissa bits.
const GELU_ROUND: f32 = 12_583_039.0;
/// 2·ln 2 split like `LN2_HI`/`LN2_LO` (the high part has 9 significant bits).
const LN2X2_HI: f32 = 2.0 * LN2_HI;
const LN2X2_LO: f32 = 2.0 * LN2_LO;
/// `e^(-s/2)` for |s| ≤ ln 2 (`s = -2r` for the reduced exponent `r`): minimax for relative
/// error, 9.2e-8 with the coefficients rounded to f32 (the leading 1 exactly).
const GELU_EXP: [f32; 6] = [1.0, -0.499_999_85, 0.124_997_87, -0.020_834_561, 0.002_618_637_4, -2.590_516e-4];
/// `G(a) = e^(a²/2)·Φ(-a) = erfcx(a/√2)/2` for a in [0, 13.25] as `P(a)/Q(a)` with the numerator
/// coefficients first, then the denominator's after its constant 1. Fitted for relative error
/// against mpmath's erfc (weighted least squares iterated to minimax, then rounded to f32 one
/// coefficient at a time with the rest refitted): 1.5e-8. All coefficients are positive, so
/// neither polynomial cancels and each is accurate to a few roundings.
const GELU_TAIL: [f32; 10] = [
    0.5,
    0.434_887_65,
    0.180_693_95,
    0.039_771_415,
    0.003_986_755_4,
    1.667_660_1,
    1.191_984_8,
    0.462_756_93,
    0.099_699_736,
    0.009_993_166,
];

/// `x·Φ(x)`, the exact GELU, in f32 only (so that it vectorises 4 or 8 lanes wide) and
/// branch-free. With `a = |x|`, `Φ(-a) = e^(-a²/2)·G(a)` for the smooth `G` above, which
/// keeps the left tail's relative accuracy (no `1 + erf` cancellation), and `Φ(a) = 1 - Φ(-a)`.
/// `e^(-a²/2)` is reduced to `2^n·e^r` with `a²` split exactly as `hi² + lo·(hi + a)`, `hi` the
/// top 12 bits of `a` (its square is exact), so that the exponent is right to ~1e-8 even where it
/// is -87: rounding `a²/2` in f32 would cost up to 4e-6 of relative error there.
///
/// Error: relative error below 1e-6 wherever `|x·Φ(x)| ≥ 1e-31` (at most 6.4e-7 over all f32),
/// absolute error below 1e-37 where it is smaller; results under about 4e-39 (x < -13.24) are 0.
/// `gelu(+inf) = +inf`, `gelu(-inf)` and `gelu(NaN)` are NaN (as torch's `x·(1 + erf)/2`
/// gives), `gelu(±0) = ±0`.
#[inline(always)]
pub(super) fn gelu_erf(x: f32) -> f32 {
    let ax = x.abs();
    // min(|x|, CUT) that also maps NaN to CUT (the NaN comes back through `ax` below).
    let a = if ax < GELU_CUT { ax } else { GELU_CUT };
    // -a²/2 = n·ln 2 + r with n = round(-a²/(2 ln 2)) in [-127, 0] and r = -s/2, where
    // s = a² + 2n·ln 2 = (hi² + n·LN2X2_HI) + (lo·(hi + a) + n·LN2X2_LO): the first sum is exact.
    let t = a * (a * (-0.5 * std::f32::consts::LOG2_E)) + GELU_ROUND;
    let n = t - GELU_ROUND;
    let hi = f32::from_bits(a.to_bits() & 0xFFFF_F000);
    let lo = a - hi;
    let s = (hi * hi + n * LN2X2_HI) + (lo * (hi + a) + n * LN2X2_LO);
    let c = &GELU_EXP;
    let e_r = c[0] + s * (c[1] + s * (c[2] + s * (c[3] + s * (c[4] + s * c[5]))));
    // 2^n from the low bits of `t` (n + 127 ≥ 0): +0 for n = -127, which |x| ≥ 13.25 gives.
    let two_n = f32::from_bits(t.to_bits() << 23);
    let k = &GELU_TAIL;
    let num = k[0] + a * (k[1] + a * (k[2] + a * (k[3] + a * k[4])));
    let den = 1.0 + a * (k[5] + a * (k[6] + a * (k[7] + a * (k[8] + a * k[9]))));
    // Φ(-a), in [0, 1/2]. `num/den·2^n` is normal wherever the result needs relative accuracy
    // (n ≥ -102 there); nearer the cut it may round into subnormals, an absolute error < 1e-44.
    let tail = (num / den * two_n) * e_r;
    // x·Φ(x) = -|x|·(Φ(-|x|) - [x ≥ +0]): for x < 0 that is x·Φ(-|x|), for x ≥ 0 it is
    // x·(1 - Φ(-x)); the sign-bit test keeps -0 → -0, and -inf gives inf·0 = NaN.
    let positive = f32::from_bits(!((x.to_bits() as i32 >> 31) as u32) & 1f32.to_bits());
    -ax * (tail - positive)
}

/// `√(2/π)`.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// `x/2·(1 + tanh(u))` rewritten as `x / (1 + e^(-2u))`: the same function, without tanh's
/// cancellation for negative x. `u` is formed in f64 because for negative x the result's
/// relative error is `2|u|` times that of `u` (about 1e-6 in f32 at x = -4).
#[inline(always)]
pub(super) fn gelu_tanh(x: f32) -> f32 {
    let xd = x as f64;
    let u = SQRT_2_OVER_PI * (xd + 0.044715 * xd * xd * xd);
    x / (1.0 + exp_of_f64(-2.0 * u))
}

/// `max`/`min` that propagate NaN from either side (torch `maximum`/`minimum`).
#[inline(always)]
pub(in crate::kernels) fn nan_max(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

#[inline(always)]
pub(in crate::kernels) fn nan_min(a: f32, b: f32) -> f32 {
    if a < b || a.is_nan() {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between f32 values of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    /// `erf` in f64 from its everywhere-positive series
    /// `erf(x) = 2/√π · e^(-x²) · Σ 2^n x^(2n+1) / (1·3···(2n+1))` (no cancellation).
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 6.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > sum.abs() * 1e-18 {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    /// `x·Φ(x)` in f64, with the left tail from the continued fraction of erfc (where
    /// `1 + erf` would cancel): `erfc(z) = e^(-z²)/√π / (z + 1/2/(z + 1/(z + 3/2/(z + …))))`.
    fn gelu_f64(x: f64) -> f64 {
        let z = -x / std::f64::consts::SQRT_2;
        let erfc = if z > 3.0 {
            let mut f = z;
            for k in (1..200).rev() {
                f = z + k as f64 / 2.0 / f;
            }
            (-z * z).exp() / std::f64::consts::PI.sqrt() / f
        } else {
            1.0 - erf_f64(z)
        };
        x * 0.5 * erfc
    }

    #[test]
    fn exp_is_within_two_ulp_everywhere() {
        let mut worst = 0;
        for i in 0..=2_000_000 {
            let x = -104.0 + 194.0 * i as f32 / 2_000_000.0;
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp_f32(x), want));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        // A subnormal result: e^-100 = 3.7200760e-44.
        assert_eq!(exp_f32(-100.0), (-100f64).exp() as f32);
    }

    /// The worst errors of `gelu_erf(±x)` over `xs`: relative where `|x·Φ(x)| ≥ 1e-31`,
    /// absolute below, each with where it occurs.
    fn gelu_worst(xs: impl Iterator<Item = f32>) -> ((f64, f32), (f64, f32)) {
        let (mut rel, mut abs) = ((0.0f64, 0.0f32), (0.0f64, 0.0f32));
        for x in xs.flat_map(|x| [x, -x]) {
            let (want, got) = (gelu_f64(x as f64), gelu_erf(x) as f64);
            let err = (got - want).abs();
            if want.abs() >= 1e-31 {
                if err > rel.0 * want.abs() || err.is_nan() {
                    rel = (err / want.abs(), x);
                }
            } else if err > abs.0 || err.is_nan() {
                abs = (err, x);
            }
        }
        (rel, abs)
    }

    /// `gelu_erf`'s stated bound, `|error| ≤ 1e-6·max(|x·Φ(x)|, 1e-31)` (relative error 1e-6
    /// down to results of 1e-31, absolute error 1e-37 below), over every 61st f32 in [1e-4, 14]
    /// and every 1021st nearer 0, both signs (the left tail underflows to 0 from -13.24 on), and
    /// beyond ±14 where the result is `x` or -0. `gelu_is_within_its_bound_for_every_f32` checks
    /// every f32 in [-14, 14].
    #[test]
    fn gelu_is_within_its_bound_everywhere() {
        let (near_zero, fourteen) = (1e-4f32.to_bits(), 14f32.to_bits());
        let xs = (0..near_zero).step_by(1021).chain((near_zero..=fourteen).step_by(61)).map(f32::from_bits);
        let ((rel, rel_at), (abs, abs_at)) = gelu_worst(xs);
        assert!(
            rel <= 1e-6 && abs <= 1e-37,
            "worst errors: relative {rel:e} at {rel_at}, absolute {abs:e} at {abs_at}"
        );
        for bits in (fourteen..f32::INFINITY.to_bits()).step_by(4099) {
            let x = f32::from_bits(bits);
            assert_eq!(gelu_erf(x), x);
            assert_eq!(gelu_erf(-x).to_bits(), (-0f32).to_bits(), "gelu({})", -x);
        }
        assert_eq!(gelu_erf(0.0).to_bits(), 0f32.to_bits());
        assert_eq!(gelu_erf(-0.0).to_bits(), (-0f32).to_bits());
        // The smallest subnormal: x/2 rounds to 0 (ties to even).
        assert_eq!(gelu_erf(f32::from_bits(1)), 0.0);
        assert_eq!(gelu_erf(f32::INFINITY), f32::INFINITY);
        assert!(gelu_erf(f32::NEG_INFINITY).is_nan() && gelu_erf(f32::NAN).is_nan());
    }

    /// Every f32 in [-14, 14] (a few minutes: `cargo test --release -p orrery-cpu
    /// gelu_is_within_its_bound_for_every_f32 -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn gelu_is_within_its_bound_for_every_f32() {
        use rayon::prelude::*;
        let chunks: Vec<u32> = (0..=14f32.to_bits()).step_by(1 << 20).collect();
        let ((rel, rel_at), (abs, abs_at)) = chunks
            .into_par_iter()
            .map(|start| gelu_worst((start..(start + (1 << 20)).min(14f32.to_bits() + 1)).map(f32::from_bits)))
            .reduce(
                || ((0.0, 0.0), (0.0, 0.0)),
                |(r1, a1), (r2, a2)| (if r1.0 >= r2.0 { r1 } else { r2 }, if a1.0 >= a2.0 { a1 } else { a2 }),
            );
        println!("worst errors: relative {rel:e} at {rel_at}, absolute {abs:e} at {abs_at}");
        assert!(rel <= 1e-6 && abs <= 1e-37);
    }

    #[test]
    fn gelu_tanh_and_silu_are_accurate() {
        let (mut worst_tanh, mut worst_silu) = (0, 0);
        for i in 0..=200_000 {
            let x = -9.0 + 18.0 * i as f32 / 200_000.0;
            let xd = x as f64;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
            // x/2·(1 + tanh(u)) = x/(1 + e^(-2u)), the form without cancellation in f64 too.
            worst_tanh = worst_tanh.max(ulps(gelu_tanh(x), (xd / (1.0 + (-2.0 * u).exp())) as f32));
            worst_silu = worst_silu.max(ulps(silu(x), (xd / (1.0 + (-xd).exp())) as f32));
        }
        assert!(worst_tanh <= 4 && worst_silu <= 4, "worst errors {worst_tanh} and {worst_silu} ulp");
    }

    #[test]
    fn the_test_oracle_matches_known_values() {
        // x·Φ(x) from tables of Φ: Φ(1) = 0.8413447460685429, Φ(-8) = 6.220960574271784e-16.
        assert!((gelu_f64(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((gelu_f64(-8.0) / (-8.0 * 6.220_960_574_271_784e-16) - 1.0).abs() < 1e-13);
    }
}

/// Timing of the unary loops (`cargo test --release -p orrery-cpu unary_speed -- --ignored
/// --nocapture`): ns per element on one thread, median of 5 runs over 8M elements, streamed
/// from memory and then from a 16K-element chunk in cache, for the default-target (SSE2) loop
/// that `unary_slice` compiles to and for the same loop with AVX2 (as `map_view` runs it).
#[cfg(all(test, target_arch = "x86_64"))]
mod speed {
    use super::*;

    #[inline(always)]
    fn sse2(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f(s);
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
        sse2(src, dst, f)
    }

    /// ns per element, median of 5 runs, of `run` over all of `src`, or over its first `chunk`
    /// elements again and again (as many elements in all) so that the data stays in cache.
    fn median_ns(src: &[f32], dst: &mut [f32], chunk: usize, run: impl Fn(&[f32], &mut [f32])) -> f64 {
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let start = std::time::Instant::now();
                for _ in 0..src.len() / chunk {
                    run(std::hint::black_box(&src[..chunk]), &mut dst[..chunk]);
                    std::hint::black_box(&mut *dst);
                }
                start.elapsed().as_secs_f64() * 1e9 / src.len() as f64
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[2]
    }

    #[test]
    #[ignore]
    fn unary_speed() {
        let n = 8 << 20;
        let src: Vec<f32> = (0..n).map(|i| -8.0 + 16.0 * ((i * 7919) % n) as f32 / n as f32).collect();
        let mut dst = vec![1.0; n];
        // Streaming 8M elements (memory-bound floor: see `neg`), then in-cache 16K-element chunks.
        for chunk in [n, 16 << 10] {
            println!("chunks of {chunk} elements:");
            macro_rules! time {
                ($name:literal, $f:expr) => {{
                    let portable = median_ns(&src, &mut dst, chunk, |s, d| sse2(s, d, $f));
                    let wide = if std::is_x86_feature_detected!("avx2") {
                        // SAFETY: the CPU supports AVX2.
                        median_ns(&src, &mut dst, chunk, |s, d| unsafe { avx2(s, d, $f) })
                    } else {
                        f64::NAN
                    };
                    println!("{:>10}: {portable:.3} ns/element (SSE2), {wide:.3} ns/element (AVX2)", $name);
                }};
            }
            time!("neg", |x: f32| -x);
            time!("gelu_erf", gelu_erf);
            time!("gelu_tanh", gelu_tanh);
            time!("silu", silu);
            time!("exp", exp_f32);
        }
    }
}
