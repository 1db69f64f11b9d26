//! Reference elementwise ops: unary functions, clamp, broadcasting binary ops, comparisons,
//! `where` and casts. Also the index helpers (ravel, unravel, broadcast reads) the other
//! reference modules share.

use crate::{BinaryOp, CompareOp, DType, Op, RefTensor, TensorType, UnaryOp};
use half::{bf16, f16};
use std::f64::consts::{FRAC_1_SQRT_2, PI};

pub(super) fn eval(op: &Op, inputs: &[&RefTensor], out: &TensorType) -> Result<RefTensor, String> {
    let x = inputs[0];
    let data = match op {
        Op::Unary(f) => x.data.iter().map(|&v| unary(*f, v)).collect(),
        Op::Clamp { min, max } => x.data.iter().map(|&v| clamp(v, *min, *max)).collect(),
        Op::Binary(f) => broadcast_map(out, inputs, |v| binary(*f, v[0], v[1])),
        Op::Compare(c) => broadcast_map(out, inputs, |v| f64::from(u8::from(compare(*c, v[0], v[1])))),
        Op::Where => broadcast_map(out, inputs, |v| if v[0] != 0.0 { v[1] } else { v[2] }),
        Op::Cast { to } => x.data.iter().map(|&v| cast_value(v, *to)).collect(),
        _ => return Err(format!("{op} is not an elementwise op")),
    };
    Ok(RefTensor::new(out.dtype, out.shape.0.clone(), data))
}

/// Row-major multi-index of the element at flat position `flat` of a tensor with `dims`.
pub(super) fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut index = vec![0; dims.len()];
    for axis in (0..dims.len()).rev() {
        index[axis] = flat % dims[axis];
        flat /= dims[axis];
    }
    index
}

/// Flat row-major position of `index` in a tensor with `dims`.
pub(super) fn ravel(index: &[usize], dims: &[usize]) -> usize {
    index.iter().zip(dims).fold(0, |flat, (&i, &d)| flat * d + i)
}

/// The element of `t` that numpy broadcasting places at `out_index` of a (larger) output:
/// missing leading dims are ignored and size-1 dims repeat.
pub(super) fn broadcast_get(t: &RefTensor, out_index: &[usize]) -> f64 {
    let lead = out_index.len() - t.shape.len();
    let index: Vec<usize> =
        t.shape.iter().enumerate().map(|(a, &d)| if d == 1 { 0 } else { out_index[lead + a] }).collect();
    t.data[ravel(&index, &t.shape)]
}

/// `f(values of every input at that position)` for every position of the broadcast output.
pub(super) fn broadcast_map(out: &TensorType, inputs: &[&RefTensor], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let dims = out.shape.dims();
    (0..out.shape.numel())
        .map(|flat| {
            let index = unravel(flat, dims);
            let values: Vec<f64> = inputs.iter().map(|t| broadcast_get(t, &index)).collect();
            f(&values)
        })
        .collect()
}

pub(super) fn unary(f: UnaryOp, x: f64) -> f64 {
    match f {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        // NaN stays NaN, as in torch (f64::max would turn it into 0).
        UnaryOp::Relu => {
            if x.is_nan() || x > 0.0 {
                x
            } else {
                0.0
            }
        }
        UnaryOp::GeluErf => x * 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)),
        UnaryOp::GeluTanh => {
            // `x/2·(1 + tanh(u))` written as `x / (1 + e^(-2u))`, the same function: in the
            // left tail `1 + tanh(u)` cancels (at x = -6 it is 3e-11, so f64 keeps only 5
            // digits of it), which once made the reference, not the kernel, 1.5e-6 off.
            let inner = (2.0 / PI).sqrt() * (x + 0.044715 * x * x * x);
            x / (1.0 + (-2.0 * inner).exp())
        }
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
    }
}

/// `min(max(x, lo), hi)`, keeping NaN (torch `clamp`); `lo > hi` gives `hi` everywhere.
pub(super) fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() {
        x
    } else {
        x.max(lo).min(hi)
    }
}

pub(super) fn binary(f: BinaryOp, a: f64, b: f64) -> f64 {
    match f {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        // torch `maximum`/`minimum` propagate NaN; f64::max/min would drop it.
        BinaryOp::Max if a.is_nan() || b.is_nan() => f64::NAN,
        BinaryOp::Min if a.is_nan() || b.is_nan() => f64::NAN,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
    }
}

pub(super) fn compare(c: CompareOp, a: f64, b: f64) -> bool {
    match c {
        CompareOp::Eq => a == b,
        CompareOp::Ne => a != b,
        CompareOp::Lt => a < b,
        CompareOp::Le => a <= b,
        CompareOp::Gt => a > b,
        CompareOp::Ge => a >= b,
    }
}

/// Converts a value (an element of any dtype, or a constant such as a pad value) to what
/// storage of dtype `to` holds.
///
/// - To f32: round to f32. To f16/bf16: round to f32 first, then to the half type (ties to
///   even). That is what torch does, and for every float source the first step is exact.
/// - Float to integer: truncate toward zero (saturating to i64, NaN to 0), then wrap to the
///   target width like an integer cast; torch gives the same (-1.7 → u8 255) wherever its
///   result is defined.
/// - Integer to integer wraps (two's complement). To bool: `v != 0`.
pub(super) fn cast_value(v: f64, to: DType) -> f64 {
    // Exact for integer sources; truncating (and saturating) for float ones.
    let integer = v as i64;
    match to {
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f32(v as f32).to_f64(),
        DType::BF16 => bf16::from_f32(v as f32).to_f64(),
        DType::I64 => integer as f64,
        DType::I32 => integer as i32 as f64,
        DType::U8 => integer as u8 as f64,
        DType::Bool => f64::from(u8::from(v != 0.0)),
    }
}

/// The error function, from the everywhere-positive series
/// `erf(x) = 2/√π · e^(-x²) · Σ_n 2^n x^(2n+1) / (1·3·5···(2n+1))`: no cancellation, so the
/// sum is accurate to a few f64 ulps. Beyond |x| = 6, `1 - |erf(x)| < 2.2e-17`.
pub(super) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x.abs() > 6.0 {
        return x.signum();
    }
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > sum.abs() * 1e-18 {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / PI.sqrt() * (-x * x).exp() * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from tables of erf (15+ significant digits).
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (-3.0, -0.999_977_909_503_001_4),
            (1e-3, 1.128_378_790_969_236_5e-3),
        ] {
            assert!((erf(x) - want).abs() <= 1e-15 * want.abs(), "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn casts_round_like_the_storage() {
        assert_eq!(cast_value(1.0 / 3.0, DType::BF16), 0.333_984_375);
        assert_eq!(cast_value(65504.0, DType::F16), 65504.0);
        assert_eq!(cast_value(1e6, DType::F16), f64::INFINITY);
        assert_eq!(cast_value(-1.7, DType::I32), -1.0);
        assert_eq!(cast_value(-1.7, DType::U8), 255.0);
        assert_eq!(cast_value(300.0, DType::U8), 44.0);
        assert_eq!(cast_value(f64::NAN, DType::Bool), 1.0);
        assert_eq!(cast_value(0.0, DType::Bool), 0.0);
    }

    #[test]
    fn gelu_and_silu_of_known_values() {
        // gelu(1) = Φ(1) = 0.841344746068543, silu(1) = 1/(1+e^-1).
        assert!((unary(UnaryOp::GeluErf, 1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((unary(UnaryOp::Silu, 1.0) - 0.731_058_578_630_004_9).abs() < 1e-15);
        assert!(unary(UnaryOp::Relu, f64::NAN).is_nan());
    }

    #[test]
    fn broadcast_reads_repeat_size_one_dims() {
        let t = RefTensor::new(DType::F32, vec![3, 1], vec![1.0, 2.0, 3.0]);
        assert_eq!(broadcast_get(&t, &[5, 2, 7]), 3.0);
        assert_eq!(unravel(ravel(&[1, 2, 3], &[2, 3, 4]), &[2, 3, 4]), vec![1, 2, 3]);
    }
}
