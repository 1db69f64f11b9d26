//! Conformance of the layout kernels with the f64 reference: the zero-copy views (reshape,
//! permute, slice, expand), concat, pad, repeat, index_select, gather, embedding and arange,
//! on random shapes, several dtypes and non-contiguous inputs, plus their index errors.
//!
//! Tolerance: 0 everywhere. These ops move values without arithmetic (embedding widens
//! f16/bf16 exactly; arange computes `start + i·step` in f64 like the reference).

mod common;

use common::*;
use orrery_cpu::CpuTensor;
use orrery_ir::{DType, Op, PadMode};
use proptest::prelude::*;
use std::sync::Arc;

/// Random values of `dtype` (integers in ±100, bools about half true).
fn rand_typed(dtype: DType, seed: u64, shape: &[usize]) -> CpuTensor {
    let v: Vec<f64> = values(seed, shape.iter().product()).iter().map(|x| (x * 100.0).round()).collect();
    let v: Vec<f64> = match dtype {
        DType::F32 | DType::F16 | DType::BF16 => values(seed, v.len()),
        DType::U8 => v.iter().map(|x| x.abs()).collect(),
        _ => v,
    };
    CpuTensor::from_f64(dtype, shape.to_vec(), &v)
}

fn pick_dtype(i: usize) -> DType {
    DType::ALL[i % DType::ALL.len()]
}

fn run(op: &Op, inputs: &[CpuTensor]) -> Result<CpuTensor, orrery_cpu::CpuError> {
    let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
    let out = op.infer(&tys).unwrap_or_else(|e| panic!("{op}: {e}"));
    let args: Vec<&CpuTensor> = inputs.iter().collect();
    orrery_cpu::execute(op, &args, &out)
}

/// Random indices in [-size, size) (negative ones count from the end), or in [0, size).
fn indices(seed: u64, n: usize, size: usize, allow_negative: bool, dtype: DType) -> CpuTensor {
    let v: Vec<f64> = values(seed, n)
        .iter()
        .map(|x| {
            let k = ((x + 1.0) / 2.0 * size as f64).floor().min(size as f64 - 1.0);
            if allow_negative && x.to_bits() % 2 == 0 {
                k - size as f64
            } else {
                k
            }
        })
        .collect();
    CpuTensor::from_f64(dtype, vec![n], &v)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn views_match_reference_and_share_the_buffer(shape in shape_strategy(1..=4, 6), seed: u64, dtype in 0usize..7, axis: usize, step in 1usize..3) {
        let x = rand_typed(pick_dtype(dtype), seed, &shape);
        let rank = shape.len();
        let axis = axis % rank;
        let perm: Vec<usize> = (0..rank).rev().collect();
        let start = shape[axis] / 3;
        let mut expanded = vec![3];
        expanded.extend(shape.iter().map(|&d| if d == 1 { 4 } else { d }));
        let x1 = {
            let mut s = shape.clone();
            s[axis] = 1;
            rand_typed(pick_dtype(dtype), seed, &s)
        };
        let mut target = vec![2];
        target.extend_from_slice(&shape);
        let ops = [
            (Op::Reshape { shape: vec![shape.iter().product()] }, x.clone()),
            (Op::Permute { perm }, x.clone()),
            (Op::Slice { axis, start, end: shape[axis], step }, x.clone()),
            (Op::Expand { shape: expanded }, x.clone()),
            (Op::Expand { shape: target }, x1),
        ];
        for (op, input) in ops {
            let y = check_op(&op, std::slice::from_ref(&input), 0.0);
            prop_assert!(Arc::ptr_eq(y.buffer(), input.buffer()), "{} copied", op);
        }
        // Reshape of a non-contiguous view copies (once), with the right values.
        check_op(&Op::Reshape { shape: vec![shape.iter().product()] }, &[layout(&x, 1, 0)], 0.0);
    }

    #[test]
    fn concat_along_any_axis(shape in shape_strategy(1..=4, 5), sizes in prop::collection::vec(0usize..4, 1..4), axis: usize, dtype in 0usize..7, seed: u64, variant in 0u8..3) {
        let axis = axis % shape.len();
        let inputs: Vec<CpuTensor> = sizes.iter().enumerate().map(|(i, &n)| {
            let mut s = shape.clone();
            s[axis] = n;
            let t = rand_typed(pick_dtype(dtype), seed + i as u64, &s);
            if n > 0 { layout(&t, variant, i) } else { t }
        }).collect();
        check_op(&Op::Concat { axis }, &inputs, 0.0);
    }

    #[test]
    fn pad_in_all_modes(shape in shape_strategy(1..=4, 5), pads_seed in prop::collection::vec((0usize..4, 0usize..4), 4), seed: u64, variant in 0u8..3, dtype in 0usize..7, value in -3.0f64..3.0) {
        let x = layout(&rand_typed(DType::F32, seed, &shape), variant, seed as usize);
        let pads: Vec<(usize, usize)> = shape.iter().zip(&pads_seed).map(|(_, &p)| p).collect();
        check_op(&Op::Pad { pads: pads.clone(), mode: PadMode::Constant(value) }, std::slice::from_ref(&x), 0.0);
        check_op(&Op::Pad { pads: pads.clone(), mode: PadMode::Replicate }, std::slice::from_ref(&x), 0.0);
        // Reflect needs padding < dim.
        let reflect: Vec<(usize, usize)> = shape.iter().zip(&pads).map(|(&d, &(a, b))| (a % d, b % d)).collect();
        check_op(&Op::Pad { pads: reflect, mode: PadMode::Reflect }, &[x], 0.0);
        // Constant padding of any dtype casts the value to it.
        let other = layout(&rand_typed(pick_dtype(dtype), seed, &shape), variant, 0);
        check_op(&Op::Pad { pads, mode: PadMode::Constant(value) }, &[other], 0.0);
    }

    #[test]
    fn repeat_tiles_and_grows_rank(shape in shape_strategy(0..=3, 4), reps in prop::collection::vec(1usize..4, 0..=5), seed: u64, dtype in 0usize..7, variant in 0u8..3) {
        let mut repeats = reps.clone();
        while repeats.len() < shape.len() {
            repeats.push(1);
        }
        let x = layout(&rand_typed(pick_dtype(dtype), seed, &shape), variant, 0);
        check_op(&Op::Repeat { repeats }, &[x], 0.0);
    }

    #[test]
    fn index_select_with_negative_indices(shape in shape_strategy(1..=4, 5), n in 0usize..7, axis: usize, seed: u64, dtype in 0usize..7, idx_dtype in 0usize..3, variant in 0u8..3) {
        let axis = axis % shape.len();
        let idx_dtype = [DType::I64, DType::I32, DType::U8][idx_dtype];
        let x = layout(&rand_typed(pick_dtype(dtype), seed, &shape), variant, 0);
        let idx = indices(seed ^ 9, n, shape[axis], idx_dtype != DType::U8, idx_dtype);
        check_op(&Op::IndexSelect { axis }, &[x, idx], 0.0);
    }

    #[test]
    fn gather_along_any_axis(shape in shape_strategy(1..=4, 5), shrink in prop::collection::vec(0usize..3, 4), n in 1usize..6, axis: usize, seed: u64, dtype in 0usize..7, variant in 0u8..3) {
        let axis = axis % shape.len();
        // Index dims are at most x's except along `axis`, where any length works.
        let idx_shape: Vec<usize> = shape.iter().enumerate().map(|(a, &d)| if a == axis { n } else { (d - shrink[a] % d).max(1) }).collect();
        let flat = indices(seed ^ 3, idx_shape.iter().product(), shape[axis], false, DType::I64);
        let idx = flat.reshape(&idx_shape);
        let x = layout(&rand_typed(pick_dtype(dtype), seed, &shape), variant, 1);
        check_op(&Op::Gather { axis }, &[x, idx], 0.0);
    }
}

#[test]
fn index_errors_name_the_index_and_the_dim() {
    let x = rand_f32(1, &[2, 3]);
    let bad = CpuTensor::from_vec(vec![2], vec![0i64, 5]);
    let err = run(&Op::IndexSelect { axis: 1 }, &[x.clone(), bad]).unwrap_err().to_string();
    assert!(err.contains("index 5") && err.contains("dim 1"), "{err}");
    let too_negative = CpuTensor::from_vec(vec![1], vec![-4i32]);
    let err = run(&Op::IndexSelect { axis: 1 }, &[x.clone(), too_negative]).unwrap_err().to_string();
    assert!(err.contains("index -4") && err.contains("dim 1"), "{err}");
    // gather follows torch: negative indices are out of range.
    let gather_idx = CpuTensor::from_vec(vec![2, 1], vec![0i64, -1]);
    let err = run(&Op::Gather { axis: 1 }, &[x.clone(), gather_idx]).unwrap_err().to_string();
    assert!(err.contains("index -1") && err.contains("dim 1"), "{err}");
    let gather_idx = CpuTensor::from_vec(vec![1, 1], vec![2i64]);
    let err = run(&Op::Gather { axis: 0 }, &[x, gather_idx]).unwrap_err().to_string();
    assert!(err.contains("index 2") && err.contains("dim 0"), "{err}");
}

#[test]
fn embedding_widens_half_tables() {
    // A bf16 table: rows are widened exactly (1/3 is stored as 0.333984375).
    let table = CpuTensor::from_f64(DType::BF16, vec![3, 2], &[1.0 / 3.0, -2.0, 0.5, 7.0, 1e-3, 3.0]);
    let ids = CpuTensor::from_vec(vec![2, 2], vec![2i32, 0, 0, 1]);
    let y = check_op(&Op::Embedding, &[table.clone(), ids], 0.0);
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_eq!(y.to_f64_vec()[2..4], [0.333_984_375, -2.0]);
    let f16_table = layout(&CpuTensor::from_f64(DType::F16, vec![5, 3], &values(2, 15)), 1, 0);
    let ids = CpuTensor::from_vec(vec![4], vec![4u8, 0, 3, 3]);
    check_op(&Op::Embedding, &[f16_table, ids.clone()], 0.0);
    check_op(&Op::Embedding, &[rand_f32(3, &[5, 70_000]), ids], 0.0);
    let err = run(&Op::Embedding, &[table, CpuTensor::from_vec(vec![1], vec![3i64])]).unwrap_err().to_string();
    assert!(err.contains("id 3") && err.contains("3 rows"), "{err}");
}

#[test]
fn arange_in_each_dtype() {
    for dtype in [DType::F32, DType::I64, DType::I32] {
        check_op(&Op::Arange { start: -2.0, step: 0.75, len: 9, dtype }, &[], 0.0);
        check_op(&Op::Arange { start: 5.0, step: -1.0, len: 0, dtype }, &[], 0.0);
    }
    let y = run(&Op::Arange { start: 1.5, step: -1.0, len: 4, dtype: DType::I64 }, &[]).unwrap();
    assert_eq!(y.to_f64_vec(), vec![1.0, 0.0, 0.0, -1.0]);
}

#[test]
fn large_tensors_cross_chunk_boundaries() {
    let a = rand_f32(1, &[3, 7001]);
    let b = as_permuted_view(&rand_f32(2, &[3, 5001]), &[1, 0]);
    check_op(&Op::Concat { axis: 1 }, &[a.clone(), b.clone()], 0.0);
    check_op(&Op::Concat { axis: 0 }, &[a.reshape(&[7001, 3]), b.reshape(&[5001, 3])], 0.0);
    check_op(&Op::Concat { axis: 0 }, &[a.clone(), as_sliced_view(&rand_f32(3, &[1, 7001]), 1)], 0.0);
    check_op(&Op::Pad { pads: vec![(2, 2), (1000, 5)], mode: PadMode::Reflect }, std::slice::from_ref(&a), 0.0);
    check_op(&Op::Repeat { repeats: vec![2, 1, 3] }, std::slice::from_ref(&a), 0.0);
    let idx = indices(4, 20_000, 7001, true, DType::I64);
    check_op(&Op::IndexSelect { axis: 1 }, &[a, idx], 0.0);
}
