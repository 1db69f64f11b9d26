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

/// Monomial coefficients (in `t = 2.6·s - 1.6`, mapping s in [3/13, 1] to [-1, 1]) of
/// `erfcx(z) / s` with `s = 3/(3 + z)`, z in [0, 10], where `erfcx(z) = e^(z²)·erfc(z)`.
/// Chebyshev interpolation at 10 nodes against libm's erfc (fit error 5e-9), then converted
/// to monomials (rounding them to f32 adds no visible error).
const ERFCX_POLY: [f32; 10] = [
    0.437_823_7,
    0.310_681_25,
    0.166_974_62,
    0.065_919_05,
    0.017_287_541,
    0.001_928_866_1,
    -4.549_896e-4,
    -1.784_823_7e-4,
    7.923_35e-6,
    1.050_574_2e-5,
];

/// `erfc(z) = e^(-z²)·erfcx(z)` for z = |x|/√2. The polynomial runs in f64 (in f32 the
/// rounding of its variable costs several ulps) and `z² = x²/2` is formed in f64 too.
#[inline(always)]
fn erfc_of_abs_x_over_sqrt2(x: f32) -> f32 {
    let xd = x as f64;
    let z = (xd.abs() * std::f64::consts::FRAC_1_SQRT_2).min(10.0);
    let inv = 1.0 / (3.0 + z);
    let (s, t) = (3.0 * inv, (3.0 - 1.6 * z) * inv);
    let mut p = ERFCX_POLY[ERFCX_POLY.len() - 1] as f64;
    for &c in ERFCX_POLY[..ERFCX_POLY.len() - 1].iter().rev() {
        p = p * t + c as f64;
    }
    exp_of_f64(-0.5 * xd * xd) * (s * p) as f32
}

/// `x·Φ(x)` with `Φ(x) = erfc(-x/√2)/2`: for x < 0 that is `erfc(|x|/√2)/2` directly (no
/// `1 + erf` cancellation in the left tail), for x ≥ 0 it is `1 - erfc(x/√2)/2`. Relative
/// error at most 4 ulp (5 where |result| < 1e-11).
#[inline(always)]
pub(super) fn gelu_erf(x: f32) -> f32 {
    let half_erfc = 0.5 * erfc_of_abs_x_over_sqrt2(x);
    let phi = if x < 0.0 { half_erfc } else { 1.0 - half_erfc };
    x * phi
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

    #[test]
    fn gelu_is_within_a_few_ulp_everywhere() {
        let (mut bulk, mut tail) = (0, 0);
        for i in 0..=400_000 {
            let x = -14.0 + 22.0 * i as f32 / 400_000.0;
            let want = gelu_f64(x as f64) as f32;
            let err = ulps(gelu_erf(x), want);
            if want.abs() >= 1e-11 {
                bulk = bulk.max(err);
            } else if want.abs() > 1e-37 {
                tail = tail.max(err);
            }
        }
        assert!(bulk <= 4 && tail <= 5, "worst errors {bulk} and {tail} ulp");
        assert_eq!(gelu_erf(0.0), 0.0);
        assert_eq!(gelu_erf(f32::INFINITY), f32::INFINITY);
        assert!(gelu_erf(f32::NEG_INFINITY).is_nan() && gelu_erf(f32::NAN).is_nan());
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
