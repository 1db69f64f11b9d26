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

/// Like `check_op`, but the error is measured against max(max|reference|, 1): random programs
/// can cancel (`x - tanh(x)` near 0, on a single element) and leave a reference far below the
/// O(1) values the f32 steps rounded, where a purely relative bound would only measure the
/// cancellation. The bit-for-bit comparison with the unfused kernels stays exact.
fn check_against_reference_with_floor(op: &Op, inputs: &[CpuTensor], tol: f64) -> CpuTensor {
    let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
    let out_ty = op.infer(&tys).unwrap();
    let refs: Vec<_> = inputs.iter().map(to_ref).collect();
    let ref_args: Vec<_> = refs.iter().collect();
    let expected = orrery_ir::reference::eval_op(op, &ref_args, &out_ty).unwrap();
    let args: Vec<&CpuTensor> = inputs.iter().collect();
    let got = run_cpu(op, &args);
    let got_values = got.to_f64_vec();
    // Where the f64 reference leaves the f32 range (`exp(exp(x))`), f32 gives ±inf: allowed.
    let f32_max = f32::MAX as f64;
    let (mut diff, mut scale) = (0f64, 1f64);
    for (&a, &b) in got_values.iter().zip(&expected.data) {
        if b.is_nan() || a.is_nan() {
            assert!(a.is_nan() && b.is_nan(), "{op}: NaN mismatch: got {a}, reference {b}");
        } else if b.abs() >= f32_max || a.is_infinite() {
            assert!(
                a.is_infinite() && b.abs() >= f32_max * (1.0 - 1e-6) && a.signum() == b.signum(),
                "{op}: {a} vs {b}"
            );
        } else {
            diff = diff.max((a - b).abs());
            scale = scale.max(b.abs());
        }
    }
    let err = diff / scale;
    assert!(err <= tol, "{op}: error {err:e} (relative to max(max|ref|, 1)) > {tol:e} for inputs {tys:?}");
    got
}

/// The program run as one unfused kernel per step, broadcast to `dims` at the end. Row steps
/// (which have no unfused kernel) run alone as a one-step program over their operand expanded
/// to `dims`: every value is then a plain tensor, whatever the fused executor makes of it.
fn unfused(program: &FusedProgram, inputs: &[CpuTensor], dims: &[usize]) -> CpuTensor {
    let mut v: Vec<CpuTensor> = inputs.to_vec();
    for step in &program.steps {
        let t = match *step {
            FusedStep::Unary(u, x) => run_cpu(&Op::Unary(u), &[&v[x]]),
            FusedStep::Clamp { min, max, x } => run_cpu(&Op::Clamp { min, max }, &[&v[x]]),
            FusedStep::Binary(b, x, y) => run_cpu(&Op::Binary(b), &[&v[x], &v[y]]),
            FusedStep::Const(c) => CpuTensor::from_vec(vec![], vec![c as f32]),
            FusedStep::SegMean { x, .. } | FusedStep::Rotate { x, .. } => {
                let full = run_cpu(&Op::Expand { shape: dims.to_vec() }, &[&v[x]]).contiguous();
                let alone = FusedProgram { n_inputs: 1, steps: vec![step.map_operands(|_| 0)] };
                run_cpu(&Op::Fused(alone), &[&full])
            }
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
        let got = check_against_reference_with_floor(&op, &inputs, 1e-5);
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

/// The AdaLN row program of a Cosmos DiT block: layer norm over rows of `d` (no affine), then
/// `· (1 + scale) + shift` with `scale`, `shift` broadcast over rows.
fn adaln(d: usize) -> FusedProgram {
    FusedProgram {
        n_inputs: 3,
        steps: vec![
            FusedStep::SegMean { x: 0, len: d },      // v3
            FusedStep::Binary(BinaryOp::Sub, 0, 3),   // v4
            FusedStep::Binary(BinaryOp::Mul, 4, 4),   // v5
            FusedStep::SegMean { x: 5, len: d },      // v6
            FusedStep::Const(1e-6),                   // v7
            FusedStep::Binary(BinaryOp::Add, 6, 7),   // v8
            FusedStep::Unary(UnaryOp::Rsqrt, 8),      // v9
            FusedStep::Binary(BinaryOp::Mul, 4, 9),   // v10
            FusedStep::Const(1.0),                    // v11
            FusedStep::Binary(BinaryOp::Add, 1, 11),  // v12
            FusedStep::Binary(BinaryOp::Mul, 10, 12), // v13
            FusedStep::Binary(BinaryOp::Add, 13, 2),  // v14
        ],
    }
}

/// The q/k row program: RMS norm over heads of `d`, times the weight, then RoPE (rotate-half).
fn qk_norm_rope(d: usize) -> FusedProgram {
    FusedProgram {
        n_inputs: 4,
        steps: vec![
            FusedStep::Binary(BinaryOp::Mul, 0, 0),                            // v4
            FusedStep::SegMean { x: 4, len: d },                               // v5
            FusedStep::Const(1e-5),                                            // v6
            FusedStep::Binary(BinaryOp::Add, 5, 6),                            // v7
            FusedStep::Unary(UnaryOp::Rsqrt, 7),                               // v8
            FusedStep::Binary(BinaryOp::Mul, 0, 8),                            // v9
            FusedStep::Binary(BinaryOp::Mul, 9, 1),                            // v10
            FusedStep::Rotate { x: 10, len: d, style: RopeStyle::RotateHalf }, // v11
            FusedStep::Binary(BinaryOp::Mul, 10, 2),                           // v12
            FusedStep::Binary(BinaryOp::Mul, 11, 3),                           // v13
            FusedStep::Binary(BinaryOp::Add, 12, 13),                          // v14
        ],
    }
}

/// ns per output element of the two DiT row programs, 2 threads, median of 7 runs:
/// `cargo test --release -p orrery-cpu --test fused -- --ignored --nocapture row_program_timing`.
#[test]
#[ignore]
fn row_program_timing() {
    fn median_ns_per_element(p: &FusedProgram, inputs: &[CpuTensor]) -> f64 {
        let op = Op::Fused(p.clone());
        let args: Vec<&CpuTensor> = inputs.iter().collect();
        let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
        let out = op.infer(&tys).unwrap();
        let n = out.shape.numel() as f64;
        with_threads(2, || {
            let _ = orrery_cpu::execute(&op, &args, &out).unwrap();
            let mut times: Vec<f64> = (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(orrery_cpu::execute(&op, &args, &out).unwrap());
                    t.elapsed().as_nanos() as f64 / n
                })
                .collect();
            times.sort_by(f64::total_cmp);
            times[3]
        })
    }
    let adaln_inputs = [rand_f32(1, &[1, 2048, 1024]), rand_f32(2, &[1, 1, 1024]), rand_f32(3, &[1, 1, 1024])];
    let qk_inputs = [
        rand_f32(4, &[1, 2048, 8, 128]),
        rand_f32(5, &[128]),
        rand_f32(6, &[1, 2048, 1, 128]),
        rand_f32(7, &[1, 2048, 1, 128]),
    ];
    println!("adaln [1, 2048, 1024]: {:.3} ns/element", median_ns_per_element(&adaln(1024), &adaln_inputs));
    println!("q/k [1, 2048, 8, 128]: {:.3} ns/element", median_ns_per_element(&qk_norm_rope(128), &qk_inputs));
}

/// Unary functions for the mixed row programs: the well-conditioned ones and those that make
/// NaN and inf (bit comparisons only, so anything goes).
const ROW_UNARY: [UnaryOp; 6] =
    [UnaryOp::Rsqrt, UnaryOp::Sqrt, UnaryOp::Reciprocal, UnaryOp::Log, UnaryOp::GeluTanh, UnaryOp::Neg];
const ALL_BINARY: [BinaryOp; 7] =
    [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Pow, BinaryOp::Max, BinaryOp::Min];

/// A program mixing segment means, rotations, constants and elementwise steps: each code picks
/// the step kind, its operands among the values so far and (row steps) a segment length among
/// `lens` (rotations use the even ones; there is always one).
fn row_program(n_inputs: usize, lens: &[usize], codes: &[(u8, u16, u16, u8)]) -> FusedProgram {
    let even: Vec<usize> = lens.iter().copied().filter(|l| l % 2 == 0).collect();
    let steps = codes
        .iter()
        .enumerate()
        .map(|(i, &(kind, a, b, l))| {
            let n = n_inputs + i;
            let (a, b) = (a as usize % n, b as usize % n);
            match kind % 9 {
                0 => FusedStep::Unary(ROW_UNARY[(kind as usize / 9) % ROW_UNARY.len()], a),
                1..=3 => FusedStep::Binary(ALL_BINARY[(kind as usize / 9) % ALL_BINARY.len()], a, b),
                4 => FusedStep::Clamp { min: -0.5, max: 0.75, x: a },
                5 => FusedStep::Const([1e-5, -0.0, 0.0, 1.0, -2.5, f64::INFINITY][(kind as usize / 9) % 6]),
                6 | 7 => FusedStep::SegMean { x: a, len: lens[l as usize % lens.len()] },
                _ => FusedStep::Rotate {
                    x: a,
                    len: even[l as usize % even.len()],
                    style: if kind / 9 % 2 == 0 { RopeStyle::RotateHalf } else { RopeStyle::Interleaved },
                },
            }
        })
        .collect();
    FusedProgram { n_inputs, steps }
}

/// Runs `p` over `inputs` with 2 threads and compares the bits with [`unfused`] (1 thread).
fn check_uniform_values(p: &FusedProgram, inputs: &[CpuTensor]) {
    let args: Vec<&CpuTensor> = inputs.iter().collect();
    let got = with_threads(2, || run_cpu(&Op::Fused(p.clone()), &args));
    let expected = with_threads(1, || unfused(p, inputs, got.shape()));
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    // NaN signs and payloads carry no meaning (x86 produces -NaN for 0·inf, negation flips
    // it): every NaN compares as one pattern.
    let canonical = |t: &CpuTensor| -> Vec<u32> {
        t.to_f32_vec().iter().map(|v| if v.is_nan() { f32::NAN.to_bits() } else { v.to_bits() }).collect()
    };
    assert_eq!(canonical(&got), canonical(&expected), "program {p}, inputs {shapes:?}");
}

/// Inputs for a row program over `[rows, d]`: a full one, then broadcast rows (`[d]`,
/// `[1, d]`), per-row columns (`[rows, 1]`) and scalars (`[]`), some strided.
fn row_inputs(n_inputs: usize, rows: usize, d: usize, seed: u64, lay: u8) -> Vec<CpuTensor> {
    (0..n_inputs)
        .map(|i| {
            let shape = match (i, (seed >> (2 * i)) % 4) {
                (0, _) => vec![rows, d],
                (_, 0) => vec![d],
                (_, 1) => vec![1, d],
                (_, 2) => vec![rows, 1],
                _ => vec![],
            };
            layout(&rand_f32(seed.wrapping_add(i as u64), &shape), (lay >> i) % 3, i)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Segments of 1, 2, odd and even lengths, one dividing another or not, over rows from
    /// one segment to a few dozen rows that cross chunk boundaries.
    #[test]
    fn uniform_values_match_per_element_evaluation(
        odd in 0usize..4,
        half in 1usize..5,
        nest in 1usize..4,
        per_row in 1usize..4,
        rows in 1usize..40,
        n_inputs in 1usize..4,
        codes in prop::collection::vec((any::<u8>(), any::<u16>(), any::<u16>(), any::<u8>()), 1..14),
        seed in any::<u64>(),
        lay in any::<u8>(),
    ) {
        // 1, 3, 5 or 7; an even one; a multiple of that; and 1 and 2 themselves.
        let lens = [2 * odd + 1, 2 * half, 2 * half * nest, 1, 2];
        let align = lens.iter().fold(1, |a, &l| a / gcd(a, l) * l);
        let d = align * per_row;
        let p = row_program(n_inputs, &lens, &codes);
        check_uniform_values(&p, &row_inputs(n_inputs, rows, d, seed, lay));
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[test]
fn uniform_values_in_the_dit_programs_and_across_chunks() {
    // The DiT programs themselves, over rows that do not fill a chunk, fill several, and (1500)
    // straddle chunk boundaries.
    for (rows, d) in [(3, 1024), (5, 1500), (1, 4)] {
        let inputs = [rand_f32(1, &[rows, d]), rand_f32(2, &[1, 1, d]), rand_f32(3, &[1, d])];
        check_uniform_values(&adaln(d), &inputs);
    }
    for (rows, heads, d) in [(33, 8, 128), (3, 5, 6), (2, 3, 2)] {
        let inputs = [
            rand_f32(4, &[1, rows, heads, d]),
            rand_f32(5, &[d]),
            rand_f32(6, &[1, rows, 1, d]),
            rand_f32(7, &[1, rows, 1, d]),
        ];
        check_uniform_values(&qk_norm_rope(d), &inputs);
    }
    // Hand-picked mixes: means of means, unrelated segment lengths (3 and 4: both expanded),
    // nested ones (2 in 6), a constant-only tail, rotations of uniform values, a last value
    // that is a segment mean or a constant; rows of 1500 straddle the chunks (of 2052 or 2048).
    use BinaryOp::*;
    let programs = [
        vec![
            FusedStep::SegMean { x: 0, len: 3 },                               // v2
            FusedStep::SegMean { x: 0, len: 4 },                               // v3
            FusedStep::Binary(Sub, 2, 3),                                      // v4: runs of 3 ∘ runs of 4
            FusedStep::SegMean { x: 4, len: 6 },                               // v5
            FusedStep::SegMean { x: 5, len: 6 },                               // v6: mean of a uniform value
            FusedStep::SegMean { x: 0, len: 2 },                               // v7
            FusedStep::Binary(Div, 6, 7),                                      // v8: runs of 6 ∘ runs of 2
            FusedStep::Binary(Max, 1, 8),                                      // v9
            FusedStep::Rotate { x: 7, len: 4, style: RopeStyle::Interleaved }, // v10
            FusedStep::Binary(Add, 9, 10),                                     // v11
            FusedStep::SegMean { x: 11, len: 12 },                             // v12: the result is a segment mean
        ],
        vec![
            FusedStep::Const(-0.0),                                           // v2
            FusedStep::SegMean { x: 2, len: 4 },                              // v3: +0.0, not -0.0
            FusedStep::Const(2.0),                                            // v4
            FusedStep::Binary(Pow, 4, 2),                                     // v5: scalar ∘ scalar
            FusedStep::Unary(UnaryOp::Rsqrt, 5),                              // v6
            FusedStep::Rotate { x: 6, len: 2, style: RopeStyle::RotateHalf }, // v7: of a scalar
            FusedStep::Binary(Div, 6, 3),                                     // v8: scalar ∘ runs, +inf
            FusedStep::Binary(Mul, 7, 8),                                     // v9: ±inf
            FusedStep::Binary(Sub, 9, 0),                                     // v10
            FusedStep::Binary(Max, 10, 1),                                    // v11
        ],
        vec![
            FusedStep::Binary(Sub, 0, 1),                    // v2
            FusedStep::Const(0.5),                           // v3
            FusedStep::Unary(UnaryOp::Log, 3),               // v4
            FusedStep::Clamp { min: -0.5, max: 0.25, x: 4 }, // v5: the result is a constant
        ],
    ];
    for steps in programs {
        let p = FusedProgram { n_inputs: 2, steps };
        for (rows, d) in [(5, 1500), (2, 12), (1, 60)] {
            check_uniform_values(&p, &[rand_f32(8, &[rows, d]), rand_f32(9, &[rows, 1])]);
        }
    }
}

#[test]
fn row_epilogues_match_per_element_evaluation() {
    // The same programs applied in place over linear tiles (`apply_in_place`): AdaLN over rows
    // of 1024 (tiled), q/k over [B, L, H, 128] heads and over heads of 6 straddling the
    // tiles' columns; bit for bit against the linear followed by the per-step evaluation.
    let cases: [(Vec<usize>, usize, usize); 3] =
        [(vec![1, 300, 1024], 1024, 48), (vec![1, 150, 8, 128], 128, 33), (vec![2, 70, 3, 6], 6, 5)];
    for (i, (view, d, k)) in cases.into_iter().enumerate() {
        let seed = 50 + 10 * i as u64;
        // The linear's output is [rows, n], its last `view` dims flattened.
        let n = if view.len() == 4 { view[2] * d } else { d };
        let rows = view.iter().product::<usize>() / n;
        let x = rand_f32(seed, &[rows, k]);
        let w = rand_f32(seed + 1, &[n, k]);
        let (program, extras) = if view.len() == 3 {
            (adaln(d), vec![rand_f32(seed + 2, &[1, 1, d]), rand_f32(seed + 3, &[d])])
        } else {
            let trig = [1, view[1], 1, d];
            (qk_norm_rope(d), vec![rand_f32(seed + 2, &[d]), rand_f32(seed + 3, &trig), rand_f32(seed + 4, &trig)])
        };
        let op = Op::Epilogue {
            base: Box::new(Op::Linear { has_bias: false }),
            program: program.clone(),
            view: Some(view.clone()),
            perm: None,
        };
        let inputs: Vec<CpuTensor> = [x.clone(), w.clone()].into_iter().chain(extras.iter().cloned()).collect();
        let args: Vec<&CpuTensor> = inputs.iter().collect();
        let got = with_threads(2, || run_cpu(&op, &args));
        let base = run_cpu(&Op::Linear { has_bias: false }, &[&x, &w]).reshape(&view);
        let per_element: Vec<CpuTensor> = std::iter::once(base).chain(extras).collect();
        assert_eq!(bits(&got), bits(&unfused(&program, &per_element, &view)), "{op}");
    }
}
