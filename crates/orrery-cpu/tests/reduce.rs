//! Conformance of the reduction kernels (sum/mean/max/min over axes, argmax, softmax,
//! log-softmax) with the f64 reference, and the thread-count determinism of reductions.
//!
//! Tolerances (max |cpu - ref| / max |ref|): 1e-6 for sum/mean (f64 accumulation, one final
//! rounding to f32); 0 for max/min/argmax (no arithmetic); 1e-5 for softmax and log-softmax
//! (f32 `exp` of `x - max` carries a relative error of about |x - max|·2^-24 per element).

mod common;

use common::*;
use orrery_cpu::CpuTensor;
use orrery_ir::{Op, ReduceOp};
use proptest::prelude::*;

const SUM_TOL: f64 = 1e-6;
const SOFTMAX_TOL: f64 = 1e-5;

const REDUCE: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min];

fn tol(f: ReduceOp) -> f64 {
    match f {
        ReduceOp::Sum | ReduceOp::Mean => SUM_TOL,
        ReduceOp::Max | ReduceOp::Min => 0.0,
    }
}

/// Random values scaled by 4 and shifted by 1, so sums do not hover around zero.
fn input(seed: u64, shape: &[usize]) -> CpuTensor {
    let v: Vec<f64> = values(seed, shape.iter().product()).iter().map(|x| 4.0 * x + 1.0).collect();
    CpuTensor::from_f64(orrery_ir::DType::F32, shape.to_vec(), &v)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn reductions_over_any_axes(
        shape in shape_strategy(1..=4, 7), axes_mask in 0u32..16, keepdim: bool, seed: u64, variant in 0u8..3,
    ) {
        // Any subset of axes: none, one, several, adjacent or not, all.
        let axes: Vec<usize> = (0..shape.len()).filter(|a| axes_mask >> a & 1 == 1).collect();
        let x = layout(&input(seed, &shape), variant, seed as usize);
        for f in REDUCE {
            check_op(&Op::Reduce { op: f, axes: axes.clone(), keepdim }, std::slice::from_ref(&x), tol(f));
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum(shape in shape_strategy(1..=4, 6), axis: usize, keepdim: bool, seed: u64, variant in 0u8..3) {
        // Values from {-2, ..., 2}, so ties are common and the first one must win.
        let v: Vec<f64> = values(seed, shape.iter().product()).iter().map(|x| (x * 2.5).round()).collect();
        let x = layout(&CpuTensor::from_f64(orrery_ir::DType::F32, shape.clone(), &v), variant, seed as usize);
        check_op(&Op::ArgMax { axis: axis % shape.len(), keepdim }, &[x], 0.0);
    }

    #[test]
    fn softmax_along_any_axis(shape in shape_strategy(1..=4, 9), axis: usize, seed: u64, variant in 0u8..3) {
        let axis = axis % shape.len();
        let x = layout(&input(seed, &shape), variant, seed as usize);
        check_op(&Op::Softmax { axis }, std::slice::from_ref(&x), SOFTMAX_TOL);
        check_op(&Op::LogSoftmax { axis }, &[x], SOFTMAX_TOL);
    }
}

#[test]
fn long_rows_and_columns() {
    // A 200K row (folded in blocks), a 300-column reduction (two column tiles), and softmax
    // over a long row and over a leading axis.
    let row = input(1, &[2, 200_003]);
    for f in REDUCE {
        check_op(&Op::Reduce { op: f, axes: vec![1], keepdim: false }, std::slice::from_ref(&row), tol(f));
        check_op(&Op::Reduce { op: f, axes: vec![0, 1], keepdim: true }, std::slice::from_ref(&row), tol(f));
    }
    let cols = input(2, &[1000, 300]);
    for f in REDUCE {
        check_op(&Op::Reduce { op: f, axes: vec![0], keepdim: true }, std::slice::from_ref(&cols), tol(f));
    }
    check_op(&Op::ArgMax { axis: 0, keepdim: false }, std::slice::from_ref(&cols), 0.0);
    check_op(&Op::Softmax { axis: 0 }, std::slice::from_ref(&cols), SOFTMAX_TOL);
    check_op(&Op::LogSoftmax { axis: 0 }, &[cols], SOFTMAX_TOL);
    check_op(&Op::Softmax { axis: 1 }, &[input(3, &[3, 100_000])], SOFTMAX_TOL);
}

#[test]
fn non_adjacent_axes_of_a_4d_tensor() {
    let x = input(4, &[4, 5, 6, 7]);
    for axes in [vec![0, 2], vec![1, 3], vec![0, 3], vec![0, 1, 3]] {
        for keepdim in [false, true] {
            check_op(&Op::Reduce { op: ReduceOp::Sum, axes: axes.clone(), keepdim }, std::slice::from_ref(&x), SUM_TOL);
            check_op(&Op::Reduce { op: ReduceOp::Max, axes: axes.clone(), keepdim }, std::slice::from_ref(&x), 0.0);
        }
    }
}

#[test]
fn nan_wins_max_and_argmax() {
    let x = CpuTensor::from_vec(vec![2, 3], vec![1.0f32, f32::NAN, 3.0, 4.0, 5.0, 6.0]);
    let run = |op: Op| {
        let out = op.infer(&[x.ty()]).unwrap();
        orrery_cpu::execute(&op, &[&x], &out).unwrap().to_f64_vec()
    };
    let max = run(Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdim: false });
    assert!(max[0].is_nan() && max[1] == 6.0);
    assert_eq!(run(Op::ArgMax { axis: 1, keepdim: false }), vec![1.0, 2.0]);
    assert_eq!(run(Op::ArgMax { axis: 0, keepdim: true }), vec![1.0, 0.0, 1.0]);
}

#[test]
fn max_over_an_empty_axis_is_an_error() {
    let x = CpuTensor::from_vec(vec![3, 0], Vec::<f32>::new());
    let op = Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdim: false };
    let out = op.infer(&[x.ty()]).unwrap();
    assert!(orrery_cpu::execute(&op, &[&x], &out).is_err());
    // Sum over nothing is 0, mean is NaN (0/0), as in torch.
    let sum = Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: false };
    check_op(&sum, std::slice::from_ref(&x), 0.0);
    check_op(&Op::Reduce { op: ReduceOp::Mean, axes: vec![1], keepdim: false }, &[x], 0.0);
}

/// Bits of the CPU output of `op` on `inputs`, computed in a pool of `threads` workers.
fn bits_with_threads(threads: usize, op: &Op, inputs: &[CpuTensor]) -> Vec<u32> {
    let args: Vec<&CpuTensor> = inputs.iter().collect();
    bits(&with_threads(threads, || run_cpu(op, &args)))
}

#[test]
fn reductions_and_norms_are_bit_identical_for_any_thread_count() {
    // Shapes large enough to span many chunks and blocks, rows and columns.
    let x = input(5, &[64, 3001]);
    let long = input(6, &[2, 300_001]);
    let w = rand_f32(7, &[3001]);
    let b = rand_f32(8, &[3001]);
    let cases: Vec<(Op, Vec<CpuTensor>)> = vec![
        (Op::Softmax { axis: 1 }, vec![x.clone()]),
        (Op::Softmax { axis: 0 }, vec![x.clone()]),
        (Op::LayerNorm { eps: 1e-5, affine: true }, vec![x.clone(), w, b]),
        (Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: false }, vec![long.clone()]),
        (Op::Reduce { op: ReduceOp::Sum, axes: vec![0, 1], keepdim: false }, vec![long]),
        (Op::Reduce { op: ReduceOp::Mean, axes: vec![0], keepdim: false }, vec![x]),
    ];
    for (op, inputs) in &cases {
        let one = bits_with_threads(1, op, inputs);
        for threads in [2, 4] {
            assert!(one == bits_with_threads(threads, op, inputs), "{op} differs between 1 and {threads} threads");
        }
    }
}
