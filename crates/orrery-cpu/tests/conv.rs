//! Conformance of Conv, ConvTranspose, Pool and Resize against the float64 reference.
//!
//! Tolerances are relative to the largest reference magnitude (see `common::rel_err`):
//! - 1e-5 for convolutions: each output is an f32 dot product over at most a few hundred terms;
//! - 1e-5 for resize (f32 weights and sums of ≤ 16 taps; bicubic weights are partly negative);
//! - 1e-6 for pooling (sums of ≤ 27 values, then one division; max is exact).
//!
//! f16/bf16 weights are compared exactly as stored: both sides read the same rounded values.

mod common;

use common::*;
use orrery_cpu::CpuTensor;
use orrery_ir::{ConvPadMode, ConvParams, ConvTransposeParams, DType, Op, PoolKind, PoolParams, ResizeMode};
use proptest::prelude::*;

const TOL: f64 = 1e-5;

/// Inputs of a (transposed) convolution: x (random f32 seen through layout `vx`), a weight and,
/// if `bias` gives its length, a bias, both of `weight_dtype(dtype)`.
fn conv_inputs(
    seed: u64,
    x_shape: &[usize],
    vx: u8,
    w_shape: &[usize],
    bias: Option<usize>,
    dtype: u8,
) -> Vec<CpuTensor> {
    let x = view(&rand_f32(seed, x_shape), vx);
    let mut inputs = vec![x, rand_of(weight_dtype(dtype), seed ^ 1, w_shape)];
    if let Some(n) = bias {
        inputs.push(rand_of(weight_dtype(dtype), seed ^ 2, &[n]));
    }
    inputs
}

/// Per spatial dim: (kernel, stride, dilation, pad before, pad after, extra input length).
type AxisCase = (usize, usize, usize, usize, usize, usize);

fn axis_case() -> impl Strategy<Value = AxisCase> {
    (1usize..=3, 1usize..=2, 1usize..=2, 0usize..=2, 0usize..=2, 0usize..=4)
}

/// Input length that fits the dilated kernel after padding, plus `extra`.
fn fitting_len(&(k, _, d, lo, hi, extra): &AxisCase) -> usize {
    (d * (k - 1) + 1).saturating_sub(lo + hi).max(1) + extra
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn conv_matches_reference(
        axes in prop::collection::vec(axis_case(), 1..=3),
        batch in 1usize..=2,
        (cin_g, cout_g) in (1usize..=3, 1usize..=3),
        grouping in 0u8..3,
        replicate in any::<bool>(),
        has_bias in any::<bool>(),
        dtype in 0u8..3,
        vx in 0u8..12,
        seed in any::<u64>(),
    ) {
        // Plain, two groups, or depthwise (one input channel per group).
        let (groups, cin_g) = match grouping { 0 => (1, cin_g), 1 => (2, cin_g), _ => (cin_g + 2, 1) };
        let (cin, cout) = (groups * cin_g, groups * cout_g);
        let mut x_shape = vec![batch, cin];
        x_shape.extend(axes.iter().map(fitting_len));
        let mut w_shape = vec![cout, cin_g];
        w_shape.extend(axes.iter().map(|a| a.0));
        let op = Op::Conv(ConvParams {
            stride: axes.iter().map(|a| a.1).collect(),
            dilation: axes.iter().map(|a| a.2).collect(),
            padding: axes.iter().map(|a| (a.3, a.4)).collect(),
            pad_mode: if replicate { ConvPadMode::Replicate } else { ConvPadMode::Zeros },
            groups,
            has_bias,
        });
        check_op(&op, &conv_inputs(seed, &x_shape, vx, &w_shape, has_bias.then_some(cout), dtype), TOL);
    }

    #[test]
    fn conv_transpose_matches_reference(
        axes in prop::collection::vec((1usize..=3, 1usize..=3, 1usize..=2, 0usize..=2, 0usize..=2, 1usize..=4), 1..=3),
        batch in 1usize..=2,
        (cin_g, cout_g, groups) in (1usize..=3, 1usize..=3, 1usize..=2),
        has_bias in any::<bool>(),
        dtype in 0u8..3,
        vx in 0u8..12,
        seed in any::<u64>(),
    ) {
        // (kernel, stride, dilation, padding, output_padding, input length), made valid:
        // output_padding < max(stride, dilation) and padding leaves a non-empty output.
        let axes: Vec<_> = axes
            .iter()
            .map(|&(k, s, d, pad, out_pad, len)| {
                let out_pad = out_pad % s.max(d);
                let full = (len - 1) * s + d * (k - 1) + out_pad + 1;
                (k, s, d, pad.min((full - 1) / 2), out_pad, len)
            })
            .collect();
        let (cin, cout) = (groups * cin_g, groups * cout_g);
        let mut x_shape = vec![batch, cin];
        x_shape.extend(axes.iter().map(|a| a.5));
        let mut w_shape = vec![cin, cout_g];
        w_shape.extend(axes.iter().map(|a| a.0));
        let op = Op::ConvTranspose(ConvTransposeParams {
            stride: axes.iter().map(|a| a.1).collect(),
            dilation: axes.iter().map(|a| a.2).collect(),
            padding: axes.iter().map(|a| a.3).collect(),
            output_padding: axes.iter().map(|a| a.4).collect(),
            groups,
            has_bias,
        });
        check_op(&op, &conv_inputs(seed, &x_shape, vx, &w_shape, has_bias.then_some(cout), dtype), TOL);
    }

    #[test]
    fn pool_matches_reference(
        axes in prop::collection::vec((1usize..=3, 1usize..=3, 0usize..=1, 0usize..=4), 1..=3),
        planes in (1usize..=2, 1usize..=3),
        kind in 0u8..3,
        vx in 0u8..12,
        seed in any::<u64>(),
    ) {
        // (kernel, stride, padding ≤ kernel/2, extra input length beyond what the window needs).
        let axes: Vec<_> = axes.iter().map(|&(k, s, p, extra)| (k, s, p.min(k / 2), extra)).collect();
        let mut x_shape = vec![planes.0, planes.1];
        x_shape.extend(axes.iter().map(|&(k, _, p, extra)| (k - 2 * p).max(1) + extra));
        let kind = match kind {
            0 => PoolKind::Max,
            1 => PoolKind::Avg { count_include_pad: true },
            _ => PoolKind::Avg { count_include_pad: false },
        };
        let op = Op::Pool(PoolParams {
            kind,
            kernel: axes.iter().map(|a| a.0).collect(),
            stride: axes.iter().map(|a| a.1).collect(),
            padding: axes.iter().map(|a| a.2).collect(),
        });
        check_op(&op, &[view(&rand_f32(seed, &x_shape), vx)], 1e-6);
    }

    #[test]
    fn resize_matches_reference(
        sizes in prop::collection::vec((1usize..=7, 1usize..=9), 1..=3),
        mode in 0u8..3,
        align_corners in any::<bool>(),
        planes in (1usize..=2, 1usize..=3),
        vx in 0u8..12,
        seed in any::<u64>(),
    ) {
        // Bilinear and bicubic take exactly two spatial dims.
        let (mode, sizes) = match mode {
            0 => (ResizeMode::Nearest, sizes),
            1 => (ResizeMode::Bilinear, [sizes.clone(), sizes].concat()[..2].to_vec()),
            _ => (ResizeMode::Bicubic, [sizes.clone(), sizes].concat()[..2].to_vec()),
        };
        let mut x_shape = vec![planes.0, planes.1];
        x_shape.extend(sizes.iter().map(|s| s.0));
        let op = Op::Resize { mode, size: sizes.iter().map(|s| s.1).collect(), align_corners };
        check_op(&op, &[view(&rand_f32(seed, &x_shape), vx)], TOL);
    }
}

fn conv_op(stride: &[usize], padding: &[(usize, usize)], pad_mode: ConvPadMode, groups: usize, has_bias: bool) -> Op {
    Op::Conv(ConvParams {
        stride: stride.to_vec(),
        dilation: vec![1; stride.len()],
        padding: padding.to_vec(),
        pad_mode,
        groups,
        has_bias,
    })
}

#[test]
fn causal_video_conv_pads_time_with_replicas() {
    // The Cosmos tokenizer's causal 3-d conv: time padded (2, 0) by replication, space (1, 1).
    let x = rand_f32(1, &[1, 4, 5, 6, 7]);
    let w = rand_of(DType::BF16, 2, &[8, 4, 3, 3, 3]);
    let b = rand_of(DType::BF16, 3, &[8]);
    let op = conv_op(&[1, 1, 1], &[(2, 0), (1, 1), (1, 1)], ConvPadMode::Replicate, 1, true);
    check_op(&op, &[x, w, b], TOL);
    // Strided in space, as a downsampling layer.
    let x = rand_f32(4, &[2, 3, 4, 9, 8]);
    let w = rand_f32(5, &[6, 3, 3, 3, 3]);
    let op = conv_op(&[1, 2, 2], &[(2, 0), (0, 1), (0, 1)], ConvPadMode::Replicate, 1, false);
    check_op(&op, &[x, w], TOL);
}

#[test]
fn temporal_convs_run_as_shifted_gemms() {
    // (k, 1, 1) kernels read x shifted by whole frames, no gathered columns: the tokenizer's
    // causal (3,1,1) after its explicit pad, zero-padded ones that skip taps at the ends,
    // groups, a batch, f16 weights, and more positions than one tile (5 × 20 × 21 > 1024).
    // With replicate padding in time (the tokenizer's causal convolutions, padding folded in)
    // the taps that fall off the input read the edge frame in place, also with padding wider
    // than the input and tiles that cross frames.
    // (x shape, weight shape, time padding, groups, bias, replicate)
    type Case<'a> = (&'a [usize], &'a [usize], (usize, usize), usize, bool, bool);
    let cases: [Case; 9] = [
        (&[1, 4, 7, 6, 5], &[6, 4, 3, 1, 1], (0, 0), 1, true, false),
        (&[2, 4, 5, 3, 4], &[4, 4, 3, 1, 1], (1, 1), 1, false, false),
        (&[1, 6, 4, 2, 3], &[4, 3, 2, 1, 1], (1, 0), 2, true, false),
        (&[1, 3, 5, 20, 21], &[5, 3, 3, 1, 1], (2, 0), 1, true, false),
        (&[1, 2, 2, 4, 4], &[3, 2, 3, 1, 1], (2, 2), 1, false, false),
        (&[1, 4, 3, 6, 5], &[6, 4, 3, 1, 1], (2, 0), 1, true, true),
        (&[2, 4, 4, 3, 4], &[4, 4, 3, 1, 1], (1, 1), 1, false, true),
        (&[1, 6, 2, 2, 3], &[4, 3, 3, 1, 1], (3, 1), 2, true, true),
        (&[1, 3, 5, 20, 21], &[5, 3, 3, 1, 1], (2, 0), 1, true, true),
    ];
    for (i, (xs, ws, tpad, groups, bias, replicate)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let mut inputs = vec![rand_f32(seed, xs), rand_of(DType::F16, seed + 1, ws)];
        if bias {
            inputs.push(rand_f32(seed + 2, &[ws[0]]));
        }
        let mode = if replicate { ConvPadMode::Replicate } else { ConvPadMode::Zeros };
        let op = conv_op(&[1, 1, 1], &[tpad, (0, 0), (0, 0)], mode, groups, bias);
        check_op(&op, &inputs, TOL);
        // The same through a channels-last view (positions not dense: the gathering path).
        inputs[0] = as_permuted_view(&inputs[0], &[0, 2, 3, 4, 1]);
        check_op(&op, &inputs, TOL);
    }
}

#[test]
fn conv_over_many_tiles() {
    // 64×64 outputs with 72-deep columns: several position tiles per (batch, group).
    let x = rand_f32(6, &[2, 8, 64, 64]);
    let w = rand_f32(7, &[16, 8, 3, 3]);
    let b = rand_f32(8, &[16]);
    check_op(&conv_op(&[1, 1], &[(1, 1), (1, 1)], ConvPadMode::Zeros, 1, true), &[x, w, b], TOL);
    // Per group a product big enough to split over threads, with two passes over its
    // 288-deep columns and 1449 positions (two packed blocks, a partial last panel), read
    // through a channels-last view, with replicate padding.
    let x = as_permuted_view(&rand_f32(9, &[1, 64, 3, 21, 23]), &[0, 2, 3, 4, 1]);
    let w = rand_f32(10, &[26, 32, 1, 3, 3]);
    let op = conv_op(&[1, 1, 1], &[(0, 0), (1, 1), (1, 1)], ConvPadMode::Replicate, 2, false);
    check_op(&op, &[x, w], TOL);
}

#[test]
fn winograd_convolutions_match_reference() {
    // 3 × 3 kernels with stride 1 and at least 32 channels run by Winograd: F(2, 3) for 17 × 17
    // tiles here, F(4, 3) from 256 tiles of 4 × 4 on (see `conv/winograd.rs`).
    let zeros = conv_op(&[1, 1], &[(1, 1), (1, 1)], ConvPadMode::Zeros, 1, true);
    let x = rand_f32(31, &[1, 32, 34, 34]);
    let (w, b) = (rand_f32(32, &[40, 32, 3, 3]), rand_f32(33, &[40]));
    check_op(&zeros, &[x.clone(), w, b], TOL);
    // f16 weights, a channels-last view and replicate padding.
    let replicate = conv_op(&[1, 1], &[(1, 1), (1, 1)], ConvPadMode::Replicate, 1, false);
    let x_last = as_permuted_view(&rand_f32(34, &[1, 32, 34, 34]), &[0, 2, 3, 1]);
    check_op(&replicate, &[x_last, rand_of(DType::F16, 35, &[32, 32, 3, 3])], TOL);
    // The tokenizer's (1, 3, 3) kernel on a 2-frame volume: F(4, 3), edge tiles cut by the plane.
    let video = conv_op(&[1, 1, 1], &[(0, 0), (1, 1), (1, 1)], ConvPadMode::Zeros, 1, true);
    let x = rand_f32(36, &[1, 32, 2, 66, 63]);
    let (w, b) = (rand_f32(37, &[33, 32, 1, 3, 3]), rand_f32(38, &[33]));
    check_op(&video, &[x, w, b], TOL);
    // Two groups of 32 channels, a batch of 2, no padding.
    let grouped = conv_op(&[1, 1], &[(0, 0), (0, 0)], ConvPadMode::Zeros, 2, false);
    check_op(&grouped, &[rand_f32(39, &[2, 64, 36, 35]), rand_f32(40, &[64, 32, 3, 3])], TOL);
}

#[test]
fn pointwise_conv_direct_and_gathered() {
    let w = rand_of(DType::F16, 9, &[12, 6, 1, 1]);
    let b = rand_f32(10, &[12]);
    let op = conv_op(&[1, 1], &[(0, 0), (0, 0)], ConvPadMode::Zeros, 1, true);
    // Dense x: read directly as the GEMM operand.
    let x = rand_f32(11, &[2, 6, 9, 11]);
    check_op(&op, &[x.clone(), w.clone(), b.clone()], TOL);
    // Channels-last storage (positions still collapse into one stride) and a spatially strided
    // view (they do not: the gathering path runs).
    check_op(&op, &[as_permuted_view(&x, &[0, 2, 3, 1]), w.clone(), b.clone()], TOL);
    check_op(&op, &[as_sliced_view(&x, 3), w.clone(), b.clone()], TOL);
    // Grouped 1×1 with a big batch-parallel split.
    let op = conv_op(&[1], &[(0, 0)], ConvPadMode::Zeros, 3, false);
    check_op(&op, &[rand_f32(12, &[4, 6, 50]), rand_f32(13, &[9, 2, 1])], TOL);
}

#[test]
fn depthwise_conv_with_replicate_padding() {
    let x = rand_f32(14, &[1, 5, 10, 13]);
    let w = rand_f32(15, &[10, 1, 3, 5]);
    let op = conv_op(&[2, 1], &[(1, 1), (2, 2)], ConvPadMode::Replicate, 5, false);
    check_op(&op, &[x, w], TOL);
}

/// A 2-d transposed convolution that upsamples 2× (kernel 4, stride 2, padding 1).
fn upsample_2x(has_bias: bool) -> Op {
    Op::ConvTranspose(ConvTransposeParams {
        stride: vec![2, 2],
        dilation: vec![1, 1],
        padding: vec![1, 1],
        output_padding: vec![0, 0],
        groups: 1,
        has_bias,
    })
}

#[test]
fn conv_transpose_upsampling_layers() {
    // 2× upsampling (kernel 4, stride 2, padding 1) in 2-d and a 3-d one with output padding.
    let x = rand_f32(16, &[1, 6, 9, 7]);
    let (w, b) = (rand_of(DType::BF16, 17, &[6, 5, 4, 4]), rand_f32(18, &[5]));
    check_op(&upsample_2x(true), &[x, w, b], TOL);
    let p3 = ConvTransposeParams {
        stride: vec![1, 2, 2],
        dilation: vec![1, 1, 1],
        padding: vec![1, 1, 0],
        output_padding: vec![0, 1, 1],
        groups: 2,
        has_bias: false,
    };
    let x = rand_f32(19, &[2, 4, 3, 5, 4]);
    check_op(&Op::ConvTranspose(p3), &[x, rand_f32(20, &[4, 3, 3, 3, 3])], TOL);
}

#[test]
fn resize_scaling_cases() {
    let x = rand_f32(21, &[1, 2, 8, 6]);
    for mode in [ResizeMode::Nearest, ResizeMode::Bilinear, ResizeMode::Bicubic] {
        for align_corners in [false, true] {
            for size in [vec![3, 2], vec![16, 12], vec![5, 9], vec![1, 1]] {
                check_op(&Op::Resize { mode, size, align_corners }, std::slice::from_ref(&x), TOL);
            }
        }
    }
    // Nearest in 1 and 3 spatial dims, by hand: [1, 2] → [1, 1, 2, 2].
    let x = CpuTensor::from_vec(vec![1, 1, 2], vec![1f32, 2.]);
    let y = check_op(&Op::Resize { mode: ResizeMode::Nearest, size: vec![4], align_corners: false }, &[x], 0.0);
    assert_eq!(y.to_f32_vec(), vec![1., 1., 2., 2.]);
    let x = rand_f32(22, &[1, 2, 3, 4, 5]);
    check_op(&Op::Resize { mode: ResizeMode::Nearest, size: vec![5, 2, 7], align_corners: false }, &[x], 0.0);
}

#[test]
fn convolutions_do_not_depend_on_the_thread_count() {
    let run = |op: &Op, inputs: &[&CpuTensor]| bits(&run_cpu(op, inputs));
    let x = rand_f32(23, &[1, 32, 40, 40]);
    let w3 = rand_f32(24, &[32, 32, 3, 3]);
    let w1 = rand_f32(25, &[64, 32, 1, 1]);
    let wt = rand_f32(26, &[32, 16, 4, 4]);
    let conv3 = conv_op(&[1, 1], &[(1, 1), (1, 1)], ConvPadMode::Zeros, 1, false);
    let conv1 = conv_op(&[1, 1], &[(0, 0), (0, 0)], ConvPadMode::Zeros, 1, false);
    let convt = upsample_2x(false);
    let pool = Op::Pool(PoolParams {
        kind: PoolKind::Avg { count_include_pad: false },
        kernel: vec![3, 3],
        stride: vec![2, 2],
        padding: vec![1, 1],
    });
    let resize = Op::Resize { mode: ResizeMode::Bicubic, size: vec![57, 33], align_corners: false };
    // Few positions (12 × 16) and enough work to split: the depth (576) in two halves, summed
    // after, with and without a bias; the same bits for any thread count.
    let (x_few, w_few) = (rand_f32(27, &[1, 64, 12, 16]), rand_f32(28, &[96, 64, 3, 3]));
    check_op(&conv3, &[x_few.clone(), w_few.clone()], TOL);
    let conv3_bias = conv_op(&[1, 1], &[(1, 1), (1, 1)], ConvPadMode::Zeros, 1, true);
    let b_few = rand_f32(31, &[96]);
    check_op(&conv3_bias, &[x_few.clone(), w_few.clone(), b_few.clone()], TOL);
    // 600 positions, 96 output channels: 2 threads split the columns, 3 the rows, each then
    // gathering the whole block while packing it.
    let (x_mid, w_mid) = (rand_f32(29, &[1, 16, 24, 25]), rand_f32(30, &[96, 16, 3, 3]));
    check_op(&conv3, &[x_mid.clone(), w_mid.clone()], TOL);
    // Winograd: F(2, 3) for `x` and `w3` below (20 × 20 tiles), F(4, 3) here (17 × 16 tiles).
    let (x_f4, w_f4) = (rand_f32(41, &[1, 32, 66, 64]), rand_f32(42, &[32, 32, 3, 3]));
    let all = || {
        [
            run(&conv3, &[&x_few, &w_few]),
            run(&conv3_bias, &[&x_few, &w_few, &b_few]),
            run(&conv3, &[&x_mid, &w_mid]),
            run(&conv3, &[&x_f4, &w_f4]),
            run(&conv3, &[&x, &w3]),
            run(&conv1, &[&x, &w1]),
            run(&convt, &[&x, &wt]),
            run(&pool, &[&x]),
            run(&resize, &[&x]),
        ]
    };
    let one = with_threads(1, all);
    assert_eq!(one, with_threads(2, all), "1 vs 2 threads");
    assert_eq!(one, with_threads(3, all), "1 vs 3 threads");
}

#[test]
fn a_convolution_of_no_input_channels_is_its_bias() {
    for has_bias in [false, true] {
        let x = rand_f32(1, &[2, 0, 3, 4]);
        let w = rand_f32(2, &[3, 0, 3, 3]);
        let mut inputs = vec![x, w];
        if has_bias {
            inputs.push(rand_f32(3, &[3]));
        }
        let op = conv_op(&[1, 1], &[(1, 1), (1, 1)], ConvPadMode::Zeros, 1, has_bias);
        let y = check_op(&op, &inputs, 0.0);
        let want: Vec<f32> =
            (0..2 * 3 * 12).map(|i| if has_bias { inputs[2].to_f32_vec()[i / 12 % 3] } else { 0.0 }).collect();
        assert_eq!(y.to_f32_vec(), want);
    }
}
