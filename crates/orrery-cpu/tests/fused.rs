//! Fused programs: elementwise ones against the f64 reference (1e-5 relative: chains of f32
//! steps each within a few ulp) and bit for bit against the same steps run as unfused kernels;
//! row programs (segment means, rotations) against the reference on awkward shapes.

mod common;

use common::*;
use orrery_cpu::CpuTensor;
use orrery_ir::{BinaryOp, FusedProgram, FusedStep, Op, RopeStyle, UnaryOp};
use proptest::prelude::*;

const UNARY: [UnaryOp; 9] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::GeluErf,
    UnaryOp::GeluTanh,
    UnaryOp::Silu,
    UnaryOp::Exp,
];
const BINARY: [BinaryOp; 5] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Max, BinaryOp::Min];

/// A program of `codes.len()` steps over `n_inputs` inputs; each code picks the step kind and
/// its operands among the values defined so far (well-conditioned functions only, so f32 and
/// f64 agree on where NaN and inf appear).
fn program(n_inputs: usize, codes: &[(u8, u16, u16)]) -> FusedProgram {
    let steps = codes
        .iter()
        .enumerate()
        .map(|(i, &(kind, a, b))| {
            let n = n_inputs + i;
            let (a, b) = (a as usize % n, b as usize % n);
            match kind % 8 {
                0..=2 => FusedStep::Unary(UNARY[(kind as usize / 8) % UNARY.len()], a),
                3..=5 => FusedStep::Binary(BINARY[(kind as usize / 8) % BINARY.len()], a, b),
                6 => FusedStep::Clamp { min: -0.5, max: 0.75, x: a },
                _ => FusedStep::Const(0.25 * (kind as f64 / 8.0) - 1.0),
            }
        })
        .collect();
    FusedProgram { n_inputs, steps }
}

/// The program run as one unfused kernel per step, broadcast to `dims` at the end.
fn unfused(program: &FusedProgram, inputs: &[CpuTensor], dims: &[usize]) -> CpuTensor {
    let mut v: Vec<CpuTensor> = inputs.to_vec();
    for step in &program.steps {
        let t = match *step {
            FusedStep::Unary(u, x) => run_cpu(&Op::Unary(u), &[&v[x]]),
            FusedStep::Clamp { min, max, x } => run_cpu(&Op::Clamp { min, max }, &[&v[x]]),
            FusedStep::Binary(b, x, y) => run_cpu(&Op::Binary(b), &[&v[x], &v[y]]),
            FusedStep::Const(c) => CpuTensor::from_vec(vec![], vec![c as f32]),
            FusedStep::SegMean { .. } | FusedStep::Rotate { .. } => unreachable!("row steps have no unfused kernel"),
        };
        v.push(t);
    }
    run_cpu(&Op::Expand { shape: dims.to_vec() }, &[v.last().unwrap()])
}

/// Shapes that broadcast to `full`: each input drops leading dims and sets some dims to 1.
fn input_shape(full: &[usize], mask: u8, drop: usize) -> Vec<usize> {
    let drop = drop.min(full.len());
    full[drop..].iter().enumerate().map(|(i, &d)| if mask >> i & 1 == 1 { 1 } else { d }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn fused_programs_match_reference_and_unfused_bits(
        full in shape_strategy(0..=4, 9),
        n_inputs in 1usize..4,
        masks in prop::collection::vec((any::<u8>(), 0usize..3, any::<u8>()), 3),
        codes in prop::collection::vec((any::<u8>(), any::<u16>(), any::<u16>()), 1..7),
        seed in any::<u64>(),
    ) {
        let inputs: Vec<CpuTensor> = (0..n_inputs)
            .map(|i| {
                let (mask, drop, lay) = masks[i];
                let shape = input_shape(&full, mask, drop);
                layout(&rand_f32(seed.wrapping_add(i as u64), &shape), lay % 3, lay as usize)
            })
            .collect();
        let p = program(n_inputs, &codes);
        let op = Op::Fused(p.clone());
        let got = check_op(&op, &inputs, 1e-5);
        let reference = unfused(&p, &inputs, got.shape());
        prop_assert_eq!(bits(&got), bits(&reference), "program {}", p);
    }
}

#[test]
fn chunk_boundaries_and_broadcast_rows_are_exact() {
    // 3 × 1500 crosses the 2048-element chunk inside a row; the bias broadcasts along rows.
    let x = rand_f32(1, &[3, 1500]);
    let bias = rand_f32(2, &[1500]);
    let gate = rand_f32(3, &[3, 1]);
    let p = FusedProgram {
        n_inputs: 3,
        steps: vec![
            FusedStep::Binary(BinaryOp::Add, 0, 1),
            FusedStep::Unary(UnaryOp::GeluErf, 3),
            FusedStep::Binary(BinaryOp::Mul, 4, 2),
            FusedStep::Binary(BinaryOp::Add, 5, 0),
        ],
    };
    let inputs = [x, bias, gate];
    let got = check_op(&Op::Fused(p.clone()), &inputs, 1e-6);
    assert_eq!(bits(&got), bits(&unfused(&p, &inputs, &[3, 1500])));
    let two = with_threads(2, || run_cpu(&Op::Fused(p.clone()), &[&inputs[0], &inputs[1], &inputs[2]]));
    let one = with_threads(1, || run_cpu(&Op::Fused(p.clone()), &[&inputs[0], &inputs[1], &inputs[2]]));
    assert_eq!(bits(&one), bits(&two));
}

#[test]
fn programs_with_bad_operands_are_refused_by_inference() {
    let p = FusedProgram { n_inputs: 1, steps: vec![FusedStep::Binary(BinaryOp::Add, 0, 1)] };
    let err = Op::Fused(p).infer(&[rand_f32(0, &[2]).ty()]).unwrap_err();
    assert!(err.contains("step 0 reads value v1"), "{err}");
}

/// `(x - mean) · rsqrt(mean((x - mean)²) + eps) · w`, then `rotate` of that times `sin` plus it
/// times `cos`: a layer norm over segments of `len`, then RoPE on each segment.
fn norm_rope(len: usize, style: RopeStyle) -> FusedProgram {
    FusedProgram {
        n_inputs: 4,
        steps: vec![
            FusedStep::SegMean { x: 0, len },         // v4
            FusedStep::Binary(BinaryOp::Sub, 0, 4),   // v5
            FusedStep::Binary(BinaryOp::Mul, 5, 5),   // v6
            FusedStep::SegMean { x: 6, len },         // v7
            FusedStep::Const(1e-5),                   // v8
            FusedStep::Binary(BinaryOp::Add, 7, 8),   // v9
            FusedStep::Unary(UnaryOp::Rsqrt, 9),      // v10
            FusedStep::Binary(BinaryOp::Mul, 5, 10),  // v11
            FusedStep::Binary(BinaryOp::Mul, 11, 1),  // v12
            FusedStep::Rotate { x: 12, len, style },  // v13
            FusedStep::Binary(BinaryOp::Mul, 12, 2),  // v14
            FusedStep::Binary(BinaryOp::Mul, 13, 3),  // v15
            FusedStep::Binary(BinaryOp::Add, 14, 15), // v16
        ],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Segments of 2..=40 elements (several per row, or one whole row) over shapes of rank
    /// 1..=4 with rows from 1 to 700 elements, strided and broadcast operands; 1e-5 relative
    /// (a dozen f32 steps and two f64-accumulated means per element).
    #[test]
    fn row_programs_match_the_reference(
        lead in prop::collection::vec(1usize..5, 0..3),
        half in 1usize..21,
        per_row in 1usize..18,
        interleaved in any::<bool>(),
        lay in any::<u8>(),
        seed in any::<u64>(),
    ) {
        let len = 2 * half;
        let mut dims = lead.clone();
        dims.push(len * per_row);
        let style = if interleaved { RopeStyle::Interleaved } else { RopeStyle::RotateHalf };
        let x = layout(&rand_f32(seed, &dims), lay % 3, lay as usize);
        // Weight per segment position (broadcast over rows), cos/sin per row.
        let w = rand_f32(seed ^ 1, &[dims[dims.len() - 1]]);
        let mut trig = dims.clone();
        trig[0] = 1;
        let (cos, sin) = (rand_f32(seed ^ 2, &trig), rand_f32(seed ^ 3, &trig));
        let p = norm_rope(len, style);
        check_op(&Op::Fused(p), &[x, w, cos, sin], 1e-5);
    }
}

#[test]
fn row_chunks_hold_whole_rows_and_do_not_depend_on_threads() {
    // Rows of 1500 elements: the 2048-element chunk grows to 3000 so no segment is split; rows
    // of 1 element (segments of 1) are the degenerate case.
    for (dims, len) in [(vec![5, 1500], 1500), (vec![7, 1], 1)] {
        let x = rand_f32(4, &dims);
        let p = FusedProgram {
            n_inputs: 1,
            steps: vec![
                FusedStep::SegMean { x: 0, len },
                FusedStep::Binary(BinaryOp::Sub, 0, 1),
                FusedStep::Binary(BinaryOp::Mul, 2, 2),
                FusedStep::SegMean { x: 3, len },
            ],
        };
        let one = with_threads(1, || check_op(&Op::Fused(p.clone()), std::slice::from_ref(&x), 1e-6));
        let two = with_threads(2, || run_cpu(&Op::Fused(p.clone()), &[&x]));
        assert_eq!(bits(&one), bits(&two));
    }
}

#[test]
fn segments_must_tile_the_last_axis() {
    let p = FusedProgram { n_inputs: 1, steps: vec![FusedStep::SegMean { x: 0, len: 4 }] };
    let err = Op::Fused(p).infer(&[rand_f32(0, &[3, 6]).ty()]).unwrap_err();
    assert!(err.contains("segments of 4 do not tile"), "{err}");
    let odd =
        FusedProgram { n_inputs: 1, steps: vec![FusedStep::Rotate { x: 0, len: 3, style: RopeStyle::RotateHalf }] };
    let err = Op::Fused(odd).infer(&[rand_f32(0, &[3, 6]).ty()]).unwrap_err();
    assert!(err.contains("even length"), "{err}");
}
