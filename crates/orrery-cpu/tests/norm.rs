//! Conformance of the normalisation kernels (layer, RMS, group and batch norm) and rotary
//! embeddings with the f64 reference, on random shapes and non-contiguous inputs.
//!
//! Tolerances (max |cpu - ref| / max |ref|): 1e-5 for the norms (f64 statistics, then a few
//! f32 operations per element; inputs carry an offset of 50 so that `x - mean` is tested where
//! it cancels); 1e-6 for rope (two f32 products and a sum per element).

mod common;

use common::*;
use orrery_cpu::CpuTensor;
use orrery_ir::{DType, Op, RopeStyle};
use proptest::prelude::*;

const NORM_TOL: f64 = 1e-5;
const ROPE_TOL: f64 = 1e-6;

/// Random values `offset + scale·u`, u in [-1, 1).
fn input(seed: u64, shape: &[usize], scale: f64, offset: f64) -> CpuTensor {
    let v: Vec<f64> = values(seed, shape.iter().product()).iter().map(|x| offset + scale * x).collect();
    CpuTensor::from_f64(DType::F32, shape.to_vec(), &v)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn layer_and_rms_norm_over_the_last_dim(shape in shape_strategy(1..=4, 9), seed: u64, variant in 0u8..3, eps in prop::sample::select(vec![0.0, 1e-6, 1e-5, 0.1])) {
        let x = layout(&input(seed, &shape, 2.0, 50.0), variant, seed as usize);
        let d = shape[shape.len() - 1];
        let (w, b) = (input(seed ^ 1, &[d], 1.0, 0.5), input(seed ^ 2, &[d], 1.0, 0.0));
        // A constant row has zero variance: with eps = 0 the result is 0/0, so skip that case.
        if eps > 0.0 || d > 1 {
            check_op(&Op::LayerNorm { eps, affine: false }, std::slice::from_ref(&x), NORM_TOL);
            check_op(&Op::LayerNorm { eps, affine: true }, &[x.clone(), w.clone(), b], NORM_TOL);
        }
        check_op(&Op::RmsNorm { eps, has_weight: false }, std::slice::from_ref(&x), NORM_TOL);
        check_op(&Op::RmsNorm { eps, has_weight: true }, &[x, w], NORM_TOL);
    }

    #[test]
    fn group_norm_over_channel_groups(
        n in 1usize..3, groups in 1usize..4, per_group in 1usize..4, spatial in shape_strategy(0..=3, 6),
        seed: u64, variant in 0u8..3, affine: bool,
    ) {
        let c = groups * per_group;
        let mut shape = vec![n, c];
        shape.extend(spatial);
        let x = layout(&input(seed, &shape, 2.0, 50.0), variant, seed as usize);
        let mut inputs = vec![x];
        if affine {
            inputs.push(input(seed ^ 1, &[c], 1.0, 0.5));
            inputs.push(input(seed ^ 2, &[c], 1.0, 0.0));
        }
        check_op(&Op::GroupNorm { groups, eps: 1e-5, affine }, &inputs, NORM_TOL);
    }

    #[test]
    fn batch_norm_with_running_statistics(shape in shape_strategy(2..=4, 6), seed: u64, variant in 0u8..3, affine: bool) {
        let c = shape[1];
        let x = layout(&input(seed, &shape, 2.0, 50.0), variant, seed as usize);
        let mut inputs = vec![x, input(seed ^ 1, &[c], 1.0, 50.0), input(seed ^ 2, &[c], 1.0, 2.0)];
        if affine {
            inputs.push(input(seed ^ 3, &[c], 1.0, 0.5));
            inputs.push(input(seed ^ 4, &[c], 1.0, 0.0));
        }
        check_op(&Op::BatchNorm { eps: 1e-5, affine }, &inputs, NORM_TOL);
    }

    #[test]
    fn rope_with_broadcast_tables_in_both_styles(
        b in 1usize..3, h in 1usize..4, l in 1usize..6, half in 1usize..9, seed: u64, variant in 0u8..3, table_kind in 0u8..4,
    ) {
        let d = 2 * half;
        let x = layout(&rand_f32(seed, &[b, h, l, d]), variant, seed as usize);
        // Tables as models supply them: [L, D], [1, 1, L, D] stored transposed, [B, 1, L, D],
        // or one angle per position ([L, 1], broadcast along D).
        let table_shape = match table_kind {
            0 => vec![l, d],
            1 => vec![1, 1, l, d],
            2 => vec![b, 1, l, d],
            _ => vec![l, 1],
        };
        let cos = rand_f32(seed ^ 1, &table_shape);
        let sin = rand_f32(seed ^ 2, &table_shape);
        let cos = if table_kind == 1 { as_permuted_view(&cos, &[0, 1, 3, 2]) } else { cos };
        for style in [RopeStyle::RotateHalf, RopeStyle::Interleaved] {
            check_op(&Op::Rope { style }, &[x.clone(), cos.clone(), sin.clone()], ROPE_TOL);
        }
    }
}

#[test]
fn long_rows_and_large_groups() {
    // Rows and groups longer than a chunk, and many short rows in one chunk.
    let x = input(1, &[3, 40_000], 1.0, 50.0);
    let w = input(2, &[40_000], 1.0, 1.0);
    let b = input(3, &[40_000], 1.0, 0.0);
    check_op(&Op::LayerNorm { eps: 1e-5, affine: true }, &[x.clone(), w.clone(), b], NORM_TOL);
    check_op(&Op::RmsNorm { eps: 1e-6, has_weight: true }, &[x, w], NORM_TOL);
    check_op(&Op::LayerNorm { eps: 1e-5, affine: false }, &[input(4, &[20_000, 3], 1.0, 0.0)], NORM_TOL);
    let img = input(5, &[2, 64, 33, 35], 3.0, -20.0);
    check_op(&Op::GroupNorm { groups: 32, eps: 1e-6, affine: false }, std::slice::from_ref(&img), NORM_TOL);
    check_op(&Op::GroupNorm { groups: 1, eps: 1e-6, affine: false }, &[img], NORM_TOL);
}

#[test]
fn layer_norm_of_a_constant_row_is_zero() {
    // Variance 0 with eps > 0 gives exactly 0 (then the bias), not NaN.
    let x = CpuTensor::from_vec(vec![1, 4], vec![7.5f32; 4]);
    let op = Op::LayerNorm { eps: 1e-5, affine: false };
    let out = op.infer(&[x.ty()]).unwrap();
    let y = orrery_cpu::execute(&op, &[&x], &out).unwrap();
    assert_eq!(y.to_f32_vec(), vec![0.0; 4]);
}
