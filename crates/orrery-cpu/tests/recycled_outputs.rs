//! Kernels that take their output from the recycler's shelf get a buffer holding the stale
//! values of a dead activation, so they must write every element. Each case here runs once
//! on a fresh buffer and once on a recycled one filled with NaN, and the two must agree bit
//! for bit (a single element left unwritten would be NaN). Kernels writing into new memory
//! that is not zeroed (`OutputBuffer`) write it by the same code as a recycled buffer, so the
//! same cases cover them.

mod common;

use common::{as_permuted_view, bits, rand_f32, run_cpu};
use orrery_cpu::{CpuTensor, Recycler};
use orrery_ir::{AttentionMask, ConvPadMode, ConvParams, FusedProgram, FusedStep, Op, UnaryOp};

/// Output elements of every case: above the recycler's smallest kept buffer (256 KiB).
const OUT: usize = 64 * 4 * 16 * 16;

fn conv(time_pad: (usize, usize), space_pad: usize, mode: ConvPadMode) -> Op {
    Op::Conv(ConvParams {
        stride: vec![1; 3],
        dilation: vec![1; 3],
        padding: vec![time_pad, (space_pad, space_pad), (space_pad, space_pad)],
        pad_mode: mode,
        groups: 1,
        has_bias: true,
    })
}

/// `op` on `inputs` with a NaN-filled buffer of the output's size on the shelf, and whether
/// the kernel took it.
fn on_stale_buffer(op: &Op, inputs: &[&CpuTensor]) -> (CpuTensor, bool) {
    let recycler = Recycler::default();
    recycler.give(CpuTensor::from_vec(vec![OUT], vec![f32::NAN; OUT]), usize::MAX);
    let out = recycler.install(|| run_cpu(op, inputs));
    (out, recycler.bytes() == 0)
}

/// `gelu(v0)`.
fn gelu_program() -> FusedProgram {
    FusedProgram { n_inputs: 1, steps: vec![FusedStep::Unary(UnaryOp::GeluErf, 0)] }
}

/// `base` followed by [`gelu_program`].
fn epilogue(base: Op) -> Op {
    Op::Epilogue { base: Box::new(base), program: gelu_program(), view: None, perm: None }
}

#[test]
fn recycled_outputs_are_written_whole() {
    let x = rand_f32(1, &[1, 64, 4, 16, 16]);
    let bias = rand_f32(2, &[64]);
    // (what the case exercises, op, inputs)
    let cases: Vec<(&str, Op, Vec<CpuTensor>)> = vec![
        (
            "pointwise conv",
            conv((0, 0), 0, ConvPadMode::Zeros),
            vec![x.clone(), rand_f32(3, &[64, 64, 1, 1, 1]), bias.clone()],
        ),
        (
            "temporal taps, replicate padding (weights split by tap)",
            conv((2, 0), 0, ConvPadMode::Replicate),
            vec![x.clone(), rand_f32(4, &[64, 64, 3, 1, 1]), bias.clone()],
        ),
        (
            "temporal taps, zero padding",
            conv((1, 1), 0, ConvPadMode::Zeros),
            vec![x.clone(), rand_f32(5, &[64, 64, 3, 1, 1]), bias.clone()],
        ),
        (
            "3 × 3 by Winograd",
            conv((0, 0), 1, ConvPadMode::Zeros),
            vec![rand_f32(6, &[1, 64, 1, 32, 32]), rand_f32(7, &[64, 64, 1, 3, 3]), bias.clone()],
        ),
        (
            "3 × 3 × 3, gathered columns",
            conv((1, 1), 1, ConvPadMode::Zeros),
            vec![rand_f32(8, &[1, 16, 4, 16, 16]), rand_f32(9, &[64, 16, 3, 3, 3]), bias.clone()],
        ),
        ("concat", Op::Concat { axis: 1 }, vec![rand_f32(10, &[1, 24, 4, 16, 16]), rand_f32(11, &[1, 40, 4, 16, 16])]),
        (
            "reshape of a permuted view (a dense copy)",
            Op::Reshape { shape: vec![256, 16, 16] },
            vec![as_permuted_view(&rand_f32(12, &[1, 4, 64, 16, 16]), &[0, 2, 1, 3, 4])],
        ),
        // The kernels below take new outputs without zeroing them (`OutputBuffer`): a missed
        // element would hold whatever the memory held.
        (
            "linear, one GEMM",
            Op::Linear { has_bias: false },
            vec![rand_f32(13, &[256, 128]), rand_f32(14, &[256, 128])],
        ),
        (
            "linear with a bias",
            Op::Linear { has_bias: true },
            vec![rand_f32(15, &[256, 128]), rand_f32(16, &[256, 128]), rand_f32(17, &[256])],
        ),
        (
            "linear streaming its weight (few rows)",
            Op::Linear { has_bias: false },
            vec![rand_f32(18, &[16, 64]), rand_f32(19, &[4096, 64])],
        ),
        (
            "linear streaming its weight, with a bias",
            Op::Linear { has_bias: true },
            vec![rand_f32(20, &[16, 64]), rand_f32(21, &[4096, 64]), rand_f32(22, &[4096])],
        ),
        (
            "batched matmul (products in parallel)",
            Op::MatMul { transpose_a: false, transpose_b: false },
            vec![rand_f32(23, &[4, 128, 64]), rand_f32(24, &[4, 64, 128])],
        ),
        ("linear then an epilogue, as a second pass", epilogue(Op::Linear { has_bias: false }), {
            vec![rand_f32(25, &[256, 128]), rand_f32(26, &[256, 128])]
        }),
        (
            "linear with a bias then an epilogue, tile by tile",
            epilogue(Op::Linear { has_bias: true }),
            vec![rand_f32(27, &[256, 16]), rand_f32(28, &[256, 16]), rand_f32(29, &[256])],
        ),
        (
            "batched matmul then an epilogue, tile by tile",
            epilogue(Op::MatMul { transpose_a: false, transpose_b: true }),
            vec![rand_f32(30, &[4, 128, 64]), rand_f32(31, &[4, 128, 64])],
        ),
        (
            "attention, keys in two blocks",
            Op::attention(0.1, AttentionMask::None),
            vec![rand_f32(32, &[1, 4, 128, 128]), rand_f32(33, &[1, 4, 600, 128]), rand_f32(34, &[1, 4, 600, 128])],
        ),
        ("fused program", Op::Fused(gelu_program()), vec![rand_f32(35, &[256, 256])]),
        (
            "RMS norm",
            Op::RmsNorm { eps: 1e-6, has_weight: true },
            vec![rand_f32(36, &[256, 256]), rand_f32(37, &[256])],
        ),
        ("layer norm", Op::LayerNorm { eps: 1e-5, affine: false }, vec![rand_f32(38, &[128, 512])]),
    ];
    for (what, op, inputs) in &cases {
        let args: Vec<&CpuTensor> = inputs.iter().collect();
        let fresh = run_cpu(op, &args);
        assert_eq!(fresh.numel(), OUT, "{what}");
        let (recycled, took) = on_stale_buffer(op, &args);
        assert!(took, "{what}: the kernel did not take the recycled buffer");
        let (got, want) = (bits(&recycled), bits(&fresh));
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{what}: {differ} of {OUT} elements differ from a fresh buffer's");
    }
}
