//! Conformance of the elementwise kernels (unary, clamp, binary, compare, where, cast) with the
//! f64 reference, on random shapes (size-1 and odd dims included), broadcasting in every
//! position, and non-contiguous inputs.
//!
//! Tolerances (max |cpu - ref| / max |ref|): 1e-6 for f32 arithmetic (each f32 result is
//! within an ulp or two of the exact value; 1e-6 is ~8 ulps); 0 for comparisons, `where` and
//! casts, which must be exact.

mod common;

use common::*;
use orrery_cpu::CpuTensor;
use orrery_ir::{BinaryOp, CompareOp, DType, Op, UnaryOp};
use proptest::prelude::*;

const F32_TOL: f64 = 1e-6;

const UNARY: [UnaryOp; 15] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Reciprocal,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::GeluErf,
    UnaryOp::GeluTanh,
    UnaryOp::Silu,
];

const BINARY: [BinaryOp; 7] =
    [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Pow, BinaryOp::Max, BinaryOp::Min];

const COMPARE: [CompareOp; 6] =
    [CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Le, CompareOp::Gt, CompareOp::Ge];

/// Random values in [-scale, scale) stored as `dtype`.
fn rand_scaled(seed: u64, shape: &[usize], scale: f64, dtype: DType) -> CpuTensor {
    let n = shape.iter().product();
    let v: Vec<f64> = values(seed, n).iter().map(|x| x * scale).collect();
    CpuTensor::from_f64(dtype, shape.to_vec(), &v)
}

/// A pair of shapes that broadcast to `out`: each side drops some leading dims and turns some
/// dims into 1, as chosen by the bits of `mask_a` / `mask_b`.
fn broadcast_pair(out: &[usize], mask_a: u32, mask_b: u32, drop_a: usize, drop_b: usize) -> (Vec<usize>, Vec<usize>) {
    let side = |mask: u32, drop: usize| -> Vec<usize> {
        let drop = drop.min(out.len());
        out[drop..].iter().enumerate().map(|(i, &d)| if mask >> i & 1 == 1 { 1 } else { d }).collect()
    };
    (side(mask_a, drop_a), side(mask_b, drop_b))
}

/// The left tail of the tanh GELU, one element at a time (so the error is each element's own
/// relative error): the kernel's `x / (1 + e^(-2u))` against the reference's, within 1e-6
/// down to x = -9, where the result is 1e-26. (The reference once used `x/2·(1 + tanh u)`,
/// whose cancellation put it, not the kernel, 1.5e-6 off at x = -5.98.)
#[test]
fn tanh_gelu_left_tail_element_by_element() {
    for i in 0..64 {
        let x = CpuTensor::from_f64(DType::F32, vec![], &[-9.0 + 0.1 * i as f64]);
        check_op(&Op::Unary(UnaryOp::GeluTanh), &[x], F32_TOL);
    }
    let x = CpuTensor::from_f64(DType::F32, vec![], &[-5.9837956]);
    check_op(&Op::Unary(UnaryOp::GeluTanh), &[x], F32_TOL);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn unary_ops_match_reference(shape in shape_strategy(0..=4, 7), seed: u64, variant in 0u8..3, axis: usize) {
        // Values in [-6, 6) reach both tails of gelu, sigmoid and tanh.
        let x = layout(&rand_scaled(seed, &shape, 6.0, DType::F32), variant, axis);
        for f in UNARY {
            check_op(&Op::Unary(f), std::slice::from_ref(&x), F32_TOL);
        }
    }

    #[test]
    fn clamp_matches_reference(shape in shape_strategy(0..=4, 7), seed: u64, lo in -1.0f64..1.0, width in -0.5f64..2.0, variant in 0u8..3) {
        // A negative width gives min > max, where torch returns max everywhere. The bounds are
        // rounded to f32 once, hence F32_TOL rather than 0.
        let x = layout(&rand_f32(seed, &shape), variant, seed as usize);
        check_op(&Op::Clamp { min: lo, max: lo + width }, &[x], F32_TOL);
    }

    #[test]
    fn binary_ops_broadcast_in_every_position(
        out in shape_strategy(1..=4, 6),
        mask_a in 0u32..16, mask_b in 0u32..16, drop_a in 0usize..3, drop_b in 0usize..3,
        seed: u64, variant in 0u8..3,
    ) {
        let (sa, sb) = broadcast_pair(&out, mask_a, mask_b, drop_a, drop_b);
        let a = layout(&rand_scaled(seed, &sa, 2.0, DType::F32), variant, seed as usize);
        let b = rand_scaled(seed ^ 1, &sb, 2.0, DType::F32);
        for f in BINARY {
            check_op(&Op::Binary(f), &[a.clone(), b.clone()], F32_TOL);
            check_op(&Op::Binary(f), &[b.clone(), a.clone()], F32_TOL);
        }
    }

    #[test]
    fn comparisons_are_exact_for_every_dtype(
        out in shape_strategy(1..=3, 5), mask_a in 0u32..8, mask_b in 0u32..8, seed: u64, dtype_pick in 0usize..6,
    ) {
        // Values from {-2, ..., 2} so that equal pairs are common.
        let dtype = [DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::U8][dtype_pick];
        let (sa, sb) = broadcast_pair(&out, mask_a, mask_b, 0, 1);
        let small = |seed, shape: &[usize]| {
            let v: Vec<f64> = values(seed, shape.iter().product()).iter().map(|x| (x * 2.5).round().abs()).collect();
            CpuTensor::from_f64(dtype, shape.to_vec(), &v)
        };
        let (a, b) = (small(seed, &sa), small(seed ^ 7, &sb));
        for c in COMPARE {
            check_op(&Op::Compare(c), &[a.clone(), b.clone()], 0.0);
        }
    }

    #[test]
    fn where_broadcasts_all_three_operands(
        out in shape_strategy(1..=4, 5), masks in (0u32..16, 0u32..16, 0u32..16), seed: u64, ints: bool,
    ) {
        let (sc, sa) = broadcast_pair(&out, masks.0, masks.1, 1, 0);
        let (sb, _) = broadcast_pair(&out, masks.2, 0, 2, 0);
        let cond = rand_scaled(seed, &sc, 1.0, DType::F32);
        let cond = CpuTensor::from_bools(sc.clone(), cond.to_f32_vec().iter().map(|&v| v > 0.0).collect());
        let dtype = if ints { DType::I64 } else { DType::F32 };
        let a = rand_scaled(seed ^ 3, &sa, 100.0, dtype);
        let b = layout(&rand_scaled(seed ^ 5, &sb, 100.0, dtype), 1, 0);
        check_op(&Op::Where, &[cond, a, b], 0.0);
    }

    #[test]
    fn casts_between_all_dtypes_are_exact(shape in shape_strategy(0..=3, 6), seed: u64, variant in 0u8..3) {
        for from in DType::ALL {
            // Floats up to ±400 exercise u8 wrapping and truncation; ints cover their range.
            let scale = match from {
                DType::Bool => 1.0,
                DType::U8 => 255.0,
                _ => 400.0,
            };
            let raw = rand_scaled(seed, &shape, scale, DType::F32).to_f64_vec();
            let v: Vec<f64> = raw.iter().map(|&x| if matches!(from, DType::U8 | DType::Bool) { x.abs() } else { x }).collect();
            let x = layout(&CpuTensor::from_f64(from, shape.clone(), &v), variant, seed as usize);
            for to in DType::ALL {
                check_op(&Op::Cast { to }, std::slice::from_ref(&x), 0.0);
            }
        }
    }
}

/// Runs `op` on the CPU backend only.
fn run(op: &Op, inputs: &[CpuTensor]) -> CpuTensor {
    let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
    let out = op.infer(&tys).unwrap();
    let args: Vec<&CpuTensor> = inputs.iter().collect();
    orrery_cpu::execute(op, &args, &out).unwrap()
}

fn cast_f32(values: &[f32], to: DType) -> Vec<f64> {
    let x = CpuTensor::from_vec(vec![values.len()], values.to_vec());
    run(&Op::Cast { to }, &[x]).to_f64_vec()
}

#[test]
fn half_casts_round_to_nearest_even() {
    // 1/3 in bf16 is 0.333984375 (0x3EAB); 65504 is f16's largest finite value; 1e6
    // overflows f16 to +inf; 0.1 in f16 is 0.0999755859375.
    assert_eq!(cast_f32(&[1.0 / 3.0], DType::BF16), vec![0.333_984_375]);
    assert_eq!(
        cast_f32(&[65504.0, 1e6, -1e6, 0.1], DType::F16),
        vec![65504.0, f64::INFINITY, f64::NEG_INFINITY, 0.099_975_585_937_5]
    );
    // Ties go to even: 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7.
    assert_eq!(cast_f32(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0], DType::BF16), vec![1.0, 1.0 + 4.0 / 256.0]);
    // Round trip through f16 and back to f32 is exact for values f16 holds.
    let halves = run(&Op::Cast { to: DType::F16 }, &[CpuTensor::from_vec(vec![3], vec![0.5f32, -2.25, 1024.0])]);
    assert_eq!(run(&Op::Cast { to: DType::F32 }, &[halves]).to_f32_vec(), vec![0.5, -2.25, 1024.0]);
}

#[test]
fn float_to_int_casts_truncate_toward_zero() {
    assert_eq!(cast_f32(&[-1.7, 1.7, -0.5, 2.999], DType::I32), vec![-1.0, 1.0, 0.0, 2.0]);
    assert_eq!(cast_f32(&[-1.7, 1.7], DType::I64), vec![-1.0, 1.0]);
    // As in torch: truncate, then wrap to 8 bits (-1 → 255, 300 → 44).
    assert_eq!(cast_f32(&[-1.7, 300.0, 255.9], DType::U8), vec![255.0, 44.0, 255.0]);
    assert_eq!(cast_f32(&[0.0, -0.0, 0.25, f32::NAN], DType::Bool), vec![0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn gelu_is_accurate_in_both_tails() {
    // x·Φ(x) for x = -8, 0.5, 3: relative accuracy survives the far left tail.
    let x = CpuTensor::from_vec(vec![3], vec![-8.0f32, 0.5, 3.0]);
    let y = run(&Op::Unary(UnaryOp::GeluErf), &[x]).to_f64_vec();
    let want = [-4.976_768_459_417_456e-15, 0.345_731_230_637_006_56, 2.995_950_305_905_11];
    for (g, w) in y.iter().zip(want) {
        assert!(((g - w) / w).abs() < 1e-6, "gelu gave {g}, want {w}");
    }
}

#[test]
fn nan_propagates_through_max_min_clamp_and_relu() {
    let a = CpuTensor::from_vec(vec![3], vec![f32::NAN, 1.0, 2.0]);
    let b = CpuTensor::from_vec(vec![3], vec![0.0f32, f32::NAN, 1.0]);
    let max = run(&Op::Binary(BinaryOp::Max), &[a.clone(), b.clone()]).to_f32_vec();
    assert!(max[0].is_nan() && max[1].is_nan() && max[2] == 2.0);
    let min = run(&Op::Binary(BinaryOp::Min), &[a.clone(), b]).to_f32_vec();
    assert!(min[0].is_nan() && min[1].is_nan() && min[2] == 1.0);
    assert!(run(&Op::Clamp { min: 0.0, max: 1.0 }, std::slice::from_ref(&a)).to_f32_vec()[0].is_nan());
    assert!(run(&Op::Unary(UnaryOp::Relu), &[a]).to_f32_vec()[0].is_nan());
}

#[test]
fn large_and_row_broadcast_shapes_cross_chunk_boundaries() {
    // 3 rows of 20000 (longer than a 16K chunk) plus a row vector, a column and a scalar.
    let a = rand_f32(1, &[3, 20_000]);
    for b_shape in [vec![20_000], vec![3, 1], vec![], vec![1, 1]] {
        let b = rand_f32(2, &b_shape);
        check_op(&Op::Binary(BinaryOp::Add), &[a.clone(), b.clone()], F32_TOL);
        check_op(&Op::Binary(BinaryOp::Mul), &[b, as_permuted_view(&a, &[1, 0])], F32_TOL);
    }
    check_op(&Op::Unary(UnaryOp::Silu), &[rand_f32(3, &[70_001])], F32_TOL);
    check_op(&Op::Cast { to: DType::BF16 }, &[as_sliced_view(&rand_f32(4, &[50, 999]), 1)], 0.0);
}

#[test]
fn where_and_compare_on_bool_tensors() {
    let a = CpuTensor::from_bools(vec![4], vec![true, false, true, false]);
    let b = CpuTensor::from_bools(vec![1], vec![true]);
    let eq = run(&Op::Compare(CompareOp::Eq), &[a.clone(), b.clone()]);
    assert_eq!(eq.dtype(), DType::Bool);
    assert_eq!(eq.to_f64_vec(), vec![1.0, 0.0, 1.0, 0.0]);
    let picked = run(&Op::Where, &[a, b, CpuTensor::from_bools(vec![], vec![false])]);
    assert_eq!(picked.to_f64_vec(), vec![1.0, 0.0, 1.0, 0.0]);
}
