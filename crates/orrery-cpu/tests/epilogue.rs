//! Epilogue kernels (a base op plus an elementwise program over its output): against the f64
//! reference, bit for bit against the base kernel followed by the `Op::Fused` kernel, and bit
//! for bit across thread counts. The GEMM shapes cross the kernel's 128-row and 512-column
//! tiles (with remainders folded into the last tile) and gemm's k blocking (K > 512).

mod common;

use common::*;
use orrery_cpu::CpuTensor;
use orrery_ir::{BinaryOp, ConvPadMode, ConvParams, DType, FusedProgram, FusedStep, Op, RopeStyle, UnaryOp};

/// `gelu(v0 + v1)`: a bias and an activation.
fn bias_gelu() -> FusedProgram {
    FusedProgram {
        n_inputs: 2,
        steps: vec![FusedStep::Binary(BinaryOp::Add, 0, 1), FusedStep::Unary(UnaryOp::GeluErf, 2)],
    }
}

/// `v1 + v2·v0`: a gated residual.
fn gated_residual() -> FusedProgram {
    FusedProgram {
        n_inputs: 3,
        steps: vec![FusedStep::Binary(BinaryOp::Mul, 2, 0), FusedStep::Binary(BinaryOp::Add, 1, 3)],
    }
}

/// `v0·(1 + v1) + v2`: AdaLN modulation.
fn modulation() -> FusedProgram {
    FusedProgram {
        n_inputs: 3,
        steps: vec![
            FusedStep::Const(1.0),
            FusedStep::Binary(BinaryOp::Add, 3, 1),
            FusedStep::Binary(BinaryOp::Mul, 0, 4),
            FusedStep::Binary(BinaryOp::Add, 5, 2),
        ],
    }
}

/// Checks `epilogue{base; program}` on `base_inputs ++ extras`: reference within `tol`, the
/// unfused pair bit for bit, and 1, 2 and 3 threads bit for bit.
fn check(base: Op, program: FusedProgram, base_inputs: &[CpuTensor], extras: &[CpuTensor], tol: f64) {
    let op = Op::Epilogue { base: Box::new(base.clone()), program: program.clone(), view: None, perm: None };
    let inputs: Vec<CpuTensor> = base_inputs.iter().chain(extras).cloned().collect();
    let got = check_op(&op, &inputs, tol);
    let base_refs: Vec<&CpuTensor> = base_inputs.iter().collect();
    let base_out = run_cpu(&base, &base_refs);
    let mut fused_args = vec![&base_out];
    fused_args.extend(extras.iter());
    let unfused = run_cpu(&Op::Fused(program), &fused_args);
    assert_eq!(bits(&got), bits(&unfused), "{op}: epilogue differs from the unfused pair");
    let args: Vec<&CpuTensor> = inputs.iter().collect();
    let one = with_threads(1, || run_cpu(&op, &args));
    let two = with_threads(2, || run_cpu(&op, &args));
    let three = with_threads(3, || run_cpu(&op, &args));
    assert_eq!(bits(&one), bits(&got), "{op}: 1 thread");
    assert_eq!(bits(&two), bits(&got), "{op}: 2 threads");
    assert_eq!(bits(&three), bits(&got), "{op}: 3 threads");
}

#[test]
fn linear_epilogues_across_tiles_and_shapes() {
    // (rows, K, N): one tile; tiled rows and columns with remainders and K > 512; tiled rows
    // with a narrow N; N too narrow to tile (one GEMM, then a second pass); a single row.
    for (i, &(m, k, n)) in
        [(5, 7, 6), (300, 600, 1100), (257, 40, 40), (257, 700, 40), (300, 33, 2), (1, 64, 700)].iter().enumerate()
    {
        let seed = 10 * i as u64;
        let x = rand_f32(seed, &[m, k]);
        let w = rand_f32(seed + 1, &[n, k]);
        let bias = rand_f32(seed + 2, &[n]);
        // Bias-like [N] extra and gelu, with the weight in f32 and as bf16.
        check(Op::Linear { has_bias: false }, bias_gelu(), &[x.clone(), w.clone()], std::slice::from_ref(&bias), 1e-4);
        let w16 = rand_of(DType::BF16, seed + 1, &[n, k]);
        check(Op::Linear { has_bias: false }, bias_gelu(), &[x.clone(), w16], std::slice::from_ref(&bias), 1e-4);
        // With the op's own bias, a full-shape residual and a [rows, 1] gate.
        let residual = rand_f32(seed + 3, &[m, n]);
        let gate = rand_f32(seed + 4, &[m, 1]);
        check(Op::Linear { has_bias: true }, gated_residual(), &[x, w, bias], &[residual, gate], 1e-4);
    }
}

#[test]
fn linear_epilogue_reads_strided_inputs_and_reduced_precision_weights() {
    let (b, l, k, n) = (2, 90, 70, 600);
    let x = as_permuted_view(&rand_f32(1, &[b, l, k]), &[1, 0, 2]);
    let w = rand_of(DType::BF16, 2, &[n, k]);
    let residual = as_sliced_view(&rand_f32(3, &[b, l, n]), 1);
    let gate = as_permuted_view(&rand_f32(4, &[b, 1, n]), &[2, 1, 0]);
    check(Op::Linear { has_bias: false }, gated_residual(), &[x.clone(), w.clone()], &[residual, gate], 1e-4);
    let bias_row = rand_f32(5, &[1, n]);
    check(Op::Linear { has_bias: false }, bias_gelu(), &[as_sliced_view(&x, 2), w], &[bias_row], 1e-4);
}

#[test]
fn matmul_epilogues_with_batches_and_transposes() {
    // Batched, broadcast batch dims, transposed rhs; one batch big enough to tile.
    let a = rand_f32(1, &[3, 130, 70]);
    let b = rand_f32(2, &[600, 70]);
    let bias = rand_f32(3, &[600]);
    check(Op::MatMul { transpose_a: false, transpose_b: true }, bias_gelu(), &[a, b], &[bias], 1e-4);
    let a = as_permuted_view(&rand_f32(4, &[2, 5, 9]), &[0, 2, 1]);
    let b = rand_f32(5, &[2, 9, 4]);
    let residual = rand_f32(6, &[2, 5, 4]);
    let gate = rand_f32(7, &[4]);
    check(Op::MatMul { transpose_a: false, transpose_b: false }, gated_residual(), &[a, b], &[residual, gate], 1e-5);
}

#[test]
fn norm_rope_and_conv_epilogues() {
    let (b, l, d) = (2, 37, 48);
    let x = rand_f32(1, &[b, l, d]);
    let scale = rand_f32(2, &[b, 1, d]);
    let shift = rand_f32(3, &[b, 1, d]);
    check(
        Op::LayerNorm { eps: 1e-6, affine: false },
        modulation(),
        std::slice::from_ref(&x),
        &[scale.clone(), shift.clone()],
        1e-5,
    );
    let (w, bias) = (rand_f32(4, &[d]), rand_f32(5, &[d]));
    check(
        Op::LayerNorm { eps: 1e-5, affine: true },
        modulation(),
        &[as_sliced_view(&x, 1), w.clone(), bias],
        &[scale, shift],
        1e-5,
    );
    let residual = rand_f32(6, &[b, l, d]);
    let gate = rand_f32(7, &[1, d]);
    check(Op::RmsNorm { eps: 1e-6, has_weight: true }, gated_residual(), &[x.clone(), w], &[residual, gate], 1e-5);
    let (cos, sin) = (rand_f32(8, &[l, d]), rand_f32(9, &[l, d]));
    check(Op::Rope { style: RopeStyle::RotateHalf }, bias_gelu(), &[x, cos, sin], &[rand_f32(10, &[d])], 1e-5);
    let conv = Op::Conv(ConvParams {
        stride: vec![1, 1],
        dilation: vec![1, 1],
        padding: vec![(1, 1), (1, 1)],
        pad_mode: ConvPadMode::Zeros,
        groups: 1,
        has_bias: true,
    });
    let img = rand_f32(11, &[2, 3, 9, 7]);
    let (cw, cb) = (rand_f32(12, &[5, 3, 3, 3]), rand_f32(13, &[5]));
    let residual = rand_f32(14, &[2, 5, 9, 7]);
    let gate = rand_f32(15, &[5, 1, 1]);
    check(conv, gated_residual(), &[img, cw, cb], &[residual, gate], 1e-5);
}

#[test]
fn inference_refuses_bad_epilogues() {
    let x = rand_f32(0, &[4, 3]);
    let w = rand_f32(1, &[5, 3]);
    let linear =
        |program| Op::Epilogue { base: Box::new(Op::Linear { has_bias: false }), program, view: None, perm: None };
    // An extra operand that would grow the output.
    let err = linear(bias_gelu()).infer(&[x.ty(), w.ty(), rand_f32(2, &[2, 4, 5]).ty()]).unwrap_err();
    assert!(err.contains("does not broadcast to the base's output"), "{err}");
    // A base that is not allowed, and a nested epilogue.
    let err = Op::Epilogue { base: Box::new(Op::Unary(UnaryOp::Exp)), program: bias_gelu(), view: None, perm: None }
        .infer(&[x.ty(), x.ty()])
        .unwrap_err();
    assert!(err.contains("cannot take an epilogue"), "{err}");
    let nested = Op::Epilogue { base: Box::new(linear(bias_gelu())), program: bias_gelu(), view: None, perm: None };
    assert!(nested.infer(&[x.ty(), w.ty(), rand_f32(3, &[5]).ty(), rand_f32(3, &[5]).ty()]).is_err());
    // Wrong input count.
    let err = linear(bias_gelu()).infer(&[x.ty(), w.ty()]).unwrap_err();
    assert!(err.contains("extra operand"), "{err}");
    // Cost: the base's FLOPs plus the program's per element.
    let ty = linear(bias_gelu()).infer(&[x.ty(), w.ty(), rand_f32(2, &[5]).ty()]).unwrap();
    let cost = linear(bias_gelu()).cost(&[x.ty(), w.ty(), rand_f32(2, &[5]).ty()], &ty);
    assert_eq!(cost.flops, 20 * (2 * 3) + 20 * (1 + 14));
    assert_eq!(cost.bytes, 4 * (12 + 15 + 5 + 20));
}

/// `rms_norm(v0) · v1` over segments of `len`, then rotated by `v2`/`v3`: the q/k path of a
/// DiT attention as a row program.
fn qk_norm_rope(len: usize) -> FusedProgram {
    FusedProgram {
        n_inputs: 4,
        steps: vec![
            FusedStep::Binary(BinaryOp::Mul, 0, 0),                         // v4
            FusedStep::SegMean { x: 4, len },                               // v5
            FusedStep::Const(1e-6),                                         // v6
            FusedStep::Binary(BinaryOp::Add, 5, 6),                         // v7
            FusedStep::Unary(UnaryOp::Rsqrt, 7),                            // v8
            FusedStep::Binary(BinaryOp::Mul, 0, 8),                         // v9
            FusedStep::Binary(BinaryOp::Mul, 9, 1),                         // v10
            FusedStep::Rotate { x: 10, len, style: RopeStyle::RotateHalf }, // v11
            FusedStep::Binary(BinaryOp::Mul, 10, 2),                        // v12
            FusedStep::Binary(BinaryOp::Mul, 11, 3),                        // v13
            FusedStep::Binary(BinaryOp::Add, 12, 13),                       // v14
        ],
    }
}

#[test]
fn row_epilogues_over_a_reshaped_linear_output() {
    // [rows, H·Dh] read as [B, L, H, Dh]: tiled (H·Dh = 1024, tiles of 512 hold whole heads),
    // one GEMM then a pass (narrow), and segments that straddle output rows (48 = 3 × 16 read
    // as rows of 24: the pass runs over flat aligned chunks).
    for (i, &(batch, len, heads, dh, k)) in
        [(1, 300, 8, 128, 96), (2, 5, 3, 4, 7), (1, 130, 2, 24, 33)].iter().enumerate()
    {
        let seed = 100 + 10 * i as u64;
        let n = heads * dh;
        let x = rand_f32(seed, &[batch, len, k]);
        let w = rand_f32(seed + 1, &[n, k]);
        let norm_w = rand_f32(seed + 2, &[dh]);
        let cos = rand_f32(seed + 3, &[1, len, 1, dh]);
        let sin = rand_f32(seed + 4, &[1, len, 1, dh]);
        let view = vec![batch, len, heads, dh];
        let op = Op::Epilogue {
            base: Box::new(Op::Linear { has_bias: false }),
            program: qk_norm_rope(dh),
            view: Some(view.clone()),
            perm: None,
        };
        let inputs = [x.clone(), w.clone(), norm_w.clone(), cos.clone(), sin.clone()];
        let got = check_op(&op, &inputs, 1e-5);
        assert_eq!(got.shape(), view.as_slice());
        let base = run_cpu(&Op::Linear { has_bias: false }, &[&x, &w]).reshape(&view);
        let unfused = run_cpu(&Op::Fused(qk_norm_rope(dh)), &[&base, &norm_w, &cos, &sin]);
        assert_eq!(bits(&got), bits(&unfused), "{op}");
        let args: Vec<&CpuTensor> = inputs.iter().collect();
        assert_eq!(bits(&with_threads(3, || run_cpu(&op, &args))), bits(&got), "{op}: 3 threads");
        // Stored heads-major: the same values, permuted, written densely.
        let Op::Epilogue { base, program, view, .. } = op.clone() else { unreachable!() };
        let stored = Op::Epilogue { base, program, view, perm: Some(vec![0, 2, 1, 3]) };
        let heads_major = check_op(&stored, &inputs, 1e-5);
        assert_eq!(heads_major.shape(), &[batch, heads, len, dh]);
        assert_eq!(bits(&heads_major), bits(&got.permute(&[0, 2, 1, 3]).contiguous()), "{stored}");
        assert_eq!(bits(&with_threads(3, || run_cpu(&stored, &args))), bits(&heads_major), "{stored}: 3 threads");
    }
    // Segments of 48 over rows of 24 output columns: the view [2, 48] of a [4, 24] linear.
    let x = rand_f32(7, &[4, 5]);
    let w = rand_f32(8, &[24, 5]);
    let program = FusedProgram { n_inputs: 1, steps: vec![FusedStep::SegMean { x: 0, len: 48 }] };
    let op =
        Op::Epilogue { base: Box::new(Op::Linear { has_bias: false }), program, view: Some(vec![2, 48]), perm: None };
    check_op(&op, &[x, w], 1e-6);
}
