//! Scalar math for the f32 kernels: the unary functions, and the normal CDF that exact GELU
//! needs (std has no erf).

use std::f64::consts::FRAC_1_SQRT_2;

/// Chebyshev coefficients of `erf(z)/z` as a function of `u = z²` on [0, 1] (variable mapped
/// to [-1, 1] as `2u - 1`). Fitted by Chebyshev interpolation at 12 nodes against a libm erf;
/// relative error below 2e-15.
const ERF_OVER_Z: [f64; 12] = [
    0.975476939382654,
    -0.14226120510371357,
    0.010035582187599701,
    -0.000576876469976469,
    2.7419931251900415e-05,
    -1.1043175508484993e-06,
    3.8488755405019504e-08,
    -1.1808584665651267e-09,
    3.233398733944644e-11,
    -7.98463147451874e-13,
    1.8013368574543165e-14,
    -6.337523098901935e-16,
];

/// Chebyshev coefficients of `erfcx(z)·(1 + z)` (where `erfcx(z) = e^(z²)·erfc(z)`) as a
/// function of `s = 1/(1 + z)` on [1/11, 1/2], i.e. z in [1, 10]. Fitted like [`ERF_OVER_Z`];
/// relative error below 3e-14.
const ERFCX_SCALED: [f64; 16] = [
    0.7399448649745198,
    0.1198514984434839,
    -0.0036682664163902035,
    -0.0010541060963195348,
    8.480428638878157e-05,
    1.0693354253576981e-05,
    -2.4151686421891583e-06,
    3.76896805154292e-08,
    4.872130181937662e-08,
    -7.550603919881382e-09,
    -1.156500450960607e-10,
    2.2464837629021517e-10,
    -3.586080044026829e-11,
    -1.331955379324512e-13,
    1.1555392059880987e-12,
    -2.3736047849443054e-13,
];

/// `Σ c_j T_j(t)` by Clenshaw's recurrence (stable for any degree).
fn chebyshev(c: &[f64], t: f64) -> f64 {
    let (mut b1, mut b2) = (0.0, 0.0);
    for &cj in c[1..].iter().rev() {
        (b1, b2) = (2.0 * t * b1 - b2 + cj, b1);
    }
    t * b1 - b2 + c[0]
}

/// The standard normal CDF `Φ(x) = (1 + erf(x/√2))/2` in f64, with relative error below 1e-13
/// everywhere, including the far left tail where `1 + erf` would cancel: there it is computed
/// from erfc directly.
pub(super) fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let z = x.abs() * FRAC_1_SQRT_2;
    if z < 1.0 {
        let erf = z * chebyshev(&ERF_OVER_Z, 2.0 * z * z - 1.0);
        return if x < 0.0 { 0.5 - 0.5 * erf } else { 0.5 + 0.5 * erf };
    }
    // Beyond z = 10 erfc(z) < 3e-45 underflows f32 anyway; the fit's end value is fine there.
    let s = 1.0 / (1.0 + z.min(10.0));
    let (lo, hi) = (1.0 / 11.0, 0.5);
    let erfcx = s * chebyshev(&ERFCX_SCALED, (2.0 * s - lo - hi) / (hi - lo));
    let erfc = (-z * z).exp() * erfcx;
    if x < 0.0 {
        0.5 * erfc
    } else {
        1.0 - 0.5 * erfc
    }
}

/// `√(2/π)`.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

// The unary functions that are more than one std call. They are `fn` items, not pointers, so
// each kernel instantiation inlines its function into the loop.

#[inline(always)]
pub(super) fn rsqrt(x: f32) -> f32 {
    1.0 / x.sqrt()
}

/// `1/(1 + e^-x)`: tends to 0 or 1 without overflow or NaN.
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
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

/// `x·Φ(x)` in f64, rounded once.
#[inline(always)]
pub(super) fn gelu_erf(x: f32) -> f32 {
    (x as f64 * normal_cdf(x as f64)) as f32
}

/// `x/2·(1 + tanh(u))` rewritten as `x / (1 + e^(-2u))`: the same function, without tanh's
/// cancellation for negative x. In f64 because for negative x the result's relative error is
/// `2|u|` times that of `u` (about 1e-6 in f32 at x = -4); the exp call costs the same.
#[inline(always)]
pub(super) fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    (x / (1.0 + (-2.0 * u).exp())) as f32
}

#[inline(always)]
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
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

    #[test]
    fn normal_cdf_matches_known_values() {
        // Φ(x) from tables: Φ(0) = 0.5, Φ(1), Φ(-1), Φ(2.5), Φ(-8).
        for (x, want) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746_068_542_9),
            (-1.0, 0.158_655_253_931_457_05),
            (2.5, 0.993_790_334_674_223_8),
            (-8.0, 6.220_960_574_271_784e-16),
        ] {
            let got = normal_cdf(x);
            assert!((got - want).abs() <= 1e-13 * want, "Φ({x}) = {got}, want {want}");
        }
    }
}
