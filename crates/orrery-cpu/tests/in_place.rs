//! Elementwise kernels run in place (`execute_in_place`): the output is written over the
//! memory of one input, and must have the bits of the out-of-place kernel. Shapes are random
//! (size 1 and odd sizes included), the other operands broadcast or strided views; an operand
//! something else still holds is read, never overwritten.

mod common;

use common::{as_permuted_view, bits, rand_f32, run_cpu, shape_strategy};
use orrery_cpu::{execute_in_place, runs_in_place, CpuTensor};
use orrery_ir::{BinaryOp, FusedProgram, FusedStep, Op, UnaryOp};
use proptest::prelude::*;

/// `op` with input `at` given by value (a fresh copy of `inputs[at]`): the result, and
/// whether it was written over that copy's memory.
fn in_place(op: &Op, inputs: &[&CpuTensor], at: usize) -> (CpuTensor, bool) {
    let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
    let out = op.infer(&tys).expect("valid op");
    let operand = CpuTensor::from_vec(inputs[at].shape().to_vec(), inputs[at].to_f32_vec());
    let memory = operand.data::<f32>().unwrap().as_ptr();
    let others: Vec<&CpuTensor> = inputs.iter().enumerate().filter(|(j, _)| *j != at).map(|(_, t)| *t).collect();
    let y = execute_in_place(op, &others, at, operand, &out).expect("kernel runs");
    let over = y.data::<f32>().is_some_and(|d| d.as_ptr() == memory);
    (y, over)
}

/// `op` run in place over input `at` gives the out-of-place bits, in that input's memory.
fn check(op: &Op, inputs: &[&CpuTensor], at: usize) -> Result<(), TestCaseError> {
    let want = bits(&run_cpu(op, inputs));
    let (got, over) = in_place(op, inputs, at);
    prop_assert_eq!(bits(&got), want, "{} over input {}", op, at);
    prop_assert!(over, "{} did not write over input {}", op, at);
    Ok(())
}

/// `shape` with some dims set to 1 (by the bits of `mask`): an operand broadcast to it.
fn broadcast_of(shape: &[usize], mask: u8) -> Vec<usize> {
    shape.iter().enumerate().map(|(i, &d)| if mask >> i & 1 == 1 { 1 } else { d }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn unary_and_clamp(shape in shape_strategy(1..=4, 9), seed in 0u64..1000, f in 0usize..4) {
        let x = rand_f32(seed, &shape);
        let op = match f {
            0 => Op::Unary(UnaryOp::Exp),
            1 => Op::Unary(UnaryOp::GeluErf),
            2 => Op::Unary(UnaryOp::Silu),
            _ => Op::Clamp { min: -0.25, max: 0.5 },
        };
        check(&op, &[&x], 0)?;
    }

    #[test]
    fn binary_over_either_operand(
        shape in shape_strategy(1..=4, 9),
        seed in 0u64..1000,
        f in 0usize..7,
        mask in 0u8..16,
        transposed in any::<bool>(),
    ) {
        let f = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Pow, BinaryOp::Max, BinaryOp::Min][f];
        let x = rand_f32(seed, &shape);
        // The other operand: broadcast over the dims in `mask`, or a transposed view.
        let other = if transposed && shape.len() >= 2 {
            let mut perm: Vec<usize> = (0..shape.len()).collect();
            perm.swap(shape.len() - 2, shape.len() - 1);
            as_permuted_view(&rand_f32(seed + 1, &shape), &perm)
        } else {
            rand_f32(seed + 1, &broadcast_of(&shape, mask))
        };
        let op = Op::Binary(f);
        check(&op, &[&x, &other], 0)?;
        check(&op, &[&other, &x], 1)?;
    }

    #[test]
    fn fused_program_over_any_full_input(rows in 1usize..40, seg in 1usize..5, seed in 0u64..1000, at in 0usize..3) {
        // (v0 + v1) * v2, then centred on each row's mean: chunks hold whole segments.
        let cols = 8 * seg;
        let program = FusedProgram {
            n_inputs: 3,
            steps: vec![
                FusedStep::Binary(BinaryOp::Add, 0, 1),
                FusedStep::Binary(BinaryOp::Mul, 3, 2),
                FusedStep::SegMean { x: 4, len: cols },
                FusedStep::Binary(BinaryOp::Sub, 4, 5),
            ],
        };
        let full = [rows, cols];
        let inputs = [rand_f32(seed, &full), rand_f32(seed + 1, &full), rand_f32(seed + 2, &full)];
        let refs: Vec<&CpuTensor> = inputs.iter().collect();
        check(&Op::Fused(program), &refs, at)?;
    }
}

#[test]
fn a_shared_operand_is_read_not_overwritten() {
    let x = rand_f32(1, &[33, 17]);
    let kept = bits(&x);
    let op = Op::Unary(UnaryOp::Exp);
    let out = op.infer(&[x.ty()]).unwrap();
    // A clone shares the buffer, so the kernel must allocate.
    let y = execute_in_place(&op, &[], 0, x.clone(), &out).unwrap();
    assert_eq!(bits(&y), bits(&run_cpu(&op, &[&x])));
    assert_eq!(bits(&x), kept, "the shared operand is untouched");
    assert_ne!(y.data::<f32>().unwrap().as_ptr(), x.data::<f32>().unwrap().as_ptr());
    // A strided view of a dense buffer is not written over either.
    let t = x.permute(&[1, 0]);
    let y = execute_in_place(&op, &[], 0, t.clone(), &op.infer(&[t.ty()]).unwrap()).unwrap();
    assert_eq!(bits(&y), bits(&run_cpu(&op, &[&t])));
    assert_eq!(bits(&x), kept);
}

#[test]
fn only_elementwise_f32_ops_run_in_place() {
    assert!(runs_in_place(&Op::Binary(BinaryOp::Add)));
    assert!(runs_in_place(&Op::Unary(UnaryOp::Relu)));
    assert!(!runs_in_place(&Op::Where));
    assert!(!runs_in_place(&Op::Softmax { axis: 1 }));
    // An op that does not run in place still gives its result from an operand given by value.
    let x = rand_f32(3, &[4, 6]);
    let op = Op::Softmax { axis: 1 };
    let (y, over) = in_place(&op, &[&x], 0);
    assert!(!over);
    assert_eq!(bits(&y), bits(&run_cpu(&op, &[&x])));
}
