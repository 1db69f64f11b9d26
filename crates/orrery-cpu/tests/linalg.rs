//! Conformance of MatMul, Linear and Attention against the float64 reference, plus the
//! thread-count determinism of the GEMM-based kernels.
//!
//! Tolerances are relative to the largest reference magnitude (see `common::rel_err`):
//! - 1e-5 for every op on small random shapes: f32 accumulation over K ≤ ~300 terms of values
//!   in [-1, 1) loses well under 1e-6, and attention's fast exp is within ~2 ulp;
//! - 1e-5 for the K = 4096 GEMM: f32 rounding grows with √K (~4e-6 expected relative to the
//!   largest output);
//! - f16/bf16 weights are compared exactly as stored: both sides read the same rounded values;
//! - the random matmul/linear cases measure the error against the largest Σ|a||b| of an
//!   output (`check_product`), since cancellation can make an output tiny beside its terms.

mod common;

use common::*;
use orrery_cpu::CpuTensor;
use orrery_ir::{AttentionLayout, AttentionMask, ConvPadMode, ConvParams, DType, Op};
use proptest::prelude::*;

const TOL: f64 = 1e-5;

fn matmul(transpose_a: bool, transpose_b: bool) -> Op {
    Op::MatMul { transpose_a, transpose_b }
}

/// Batch dims of an operand broadcast against `batch`: dims flagged in `ones` become 1 and the
/// first `drop` dims are left out.
fn operand_batch(batch: &[usize], ones: &[bool], drop: usize) -> Vec<usize> {
    batch.iter().zip(ones).skip(drop.min(batch.len())).map(|(&d, &one)| if one { 1 } else { d }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn matmul_matches_reference(
        batch in prop::collection::vec(1usize..=3, 0..=2),
        ones in prop::collection::vec(any::<bool>(), 4),
        drops in (0usize..=2, 0usize..=2),
        (m, k, n) in (1usize..=9, 1usize..=9, 1usize..=9),
        (ta, tb) in (any::<bool>(), any::<bool>()),
        dtype in 0u8..3,
        (va, vb) in (0u8..9, 0u8..9),
        seed in any::<u64>(),
    ) {
        let mut a_shape = operand_batch(&batch, &ones[..2], drops.0);
        let mut b_shape = operand_batch(&batch, &ones[2..], drops.1);
        a_shape.extend(if ta { [k, m] } else { [m, k] });
        b_shape.extend(if tb { [n, k] } else { [k, n] });
        let a = view(&rand_f32(seed, &a_shape), va);
        let b = view(&rand_of(weight_dtype(dtype), seed ^ 1, &b_shape), vb);
        check_product(&matmul(ta, tb), &[a, b], TOL);
    }

    #[test]
    fn linear_matches_reference(
        lead in prop::collection::vec(1usize..=5, 0..=2),
        (k, n) in (1usize..=17, 1usize..=9),
        has_bias in any::<bool>(),
        dtype in 0u8..3,
        (vx, vw) in (0u8..9, 0u8..9),
        seed in any::<u64>(),
    ) {
        let mut x_shape = lead.clone();
        x_shape.push(k);
        let x = view(&rand_f32(seed, &x_shape), vx);
        let w = view(&rand_of(weight_dtype(dtype), seed ^ 1, &[n, k]), vw);
        let mut inputs = vec![x, w];
        if has_bias {
            inputs.push(rand_of(weight_dtype(dtype), seed ^ 2, &[n]));
        }
        check_product(&Op::Linear { has_bias }, &inputs, TOL);
    }

    #[test]
    fn attention_matches_reference(
        batch in prop::collection::vec(1usize..=2, 1..=2),
        (lq, lk) in (1usize..=140, 1usize..=600),
        (d, dv) in (1usize..=16, 1usize..=16),
        mask_kind in 0u8..3,
        mask_ones in prop::collection::vec(any::<bool>(), 4),
        views in (0u8..9, 0u8..9, 0u8..9),
        seed in any::<u64>(),
    ) {
        let shape = |l: usize, e: usize| [batch.clone(), vec![l, e]].concat();
        let q = view(&rand_f32(seed, &shape(lq, d)), views.0);
        let k = view(&rand_f32(seed ^ 1, &shape(lk, d)), views.1);
        let v = view(&rand_f32(seed ^ 2, &shape(lk, dv)), views.2);
        let mut scores = batch.clone();
        scores.extend([lq, lk]);
        // Mask shapes broadcast over the flagged dims (including the query or key dim).
        let mask_shape: Vec<usize> =
            scores.iter().zip(&mask_ones).map(|(&s, &one)| if one { 1 } else { s }).collect();
        let (kind, mut inputs) = (mask_kind, vec![q, k, v]);
        let mask = match kind {
            0 => AttentionMask::None,
            1 => {
                inputs.push(rand_f32(seed ^ 3, &mask_shape));
                AttentionMask::Additive
            }
            _ => {
                let n: usize = mask_shape.iter().product();
                // About a third masked out; some rows end up with nothing to attend.
                let keep: Vec<bool> = values(seed ^ 4, n).iter().map(|&r| r > -0.33).collect();
                inputs.push(CpuTensor::from_bools(mask_shape.clone(), keep));
                AttentionMask::Boolean
            }
        };
        let scale = 1.0 / (d as f64).sqrt();
        check_op(&Op::attention(scale, mask), &inputs, TOL);
    }
}

#[test]
fn matmul_reads_expanded_and_transposed_views_in_place() {
    // b broadcast along the batch through a zero stride, a given as a permuted view.
    let a = as_permuted_view(&rand_f32(1, &[3, 5, 4]), &[2, 0, 1]);
    let b = rand_f32(2, &[1, 4, 6]).expand(&[3, 4, 6]);
    check_op(&matmul(false, false), &[a.clone(), b], TOL);
    // A column broadcast inside the matrix (stride 0 along n).
    let b = rand_f32(3, &[4, 1]).expand(&[4, 6]);
    check_op(&matmul(false, false), &[a, b], TOL);
}

#[test]
fn matmul_with_long_contraction() {
    // K = 4096: see the tolerance note at the top.
    let a = rand_f32(4, &[16, 4096]);
    let b = rand_of(DType::BF16, 5, &[4096, 24]);
    check_op(&matmul(false, false), &[a, b], 1e-5);
}

#[test]
fn matmul_batched_small_and_single_large() {
    // Many small matrices (split over the batch) and one large one (split inside the GEMM).
    check_op(&matmul(false, true), &[rand_f32(6, &[2, 33, 7, 5]), rand_f32(7, &[33, 3, 5])], TOL);
    check_op(&matmul(true, false), &[rand_f32(8, &[150, 140]), rand_f32(9, &[150, 130])], TOL);
}

#[test]
fn linear_with_f16_weight_and_bias_on_a_3d_input() {
    let x = as_sliced_view(&rand_f32(10, &[2, 7, 33]), 1);
    let w = rand_of(DType::F16, 11, &[19, 33]);
    let b = rand_of(DType::F16, 12, &[19]);
    check_op(&Op::Linear { has_bias: true }, &[x, w, b], TOL);
}

#[test]
fn attention_with_causal_mask_over_several_key_blocks() {
    // The kernel's blocks are 128 queries × 512 keys: Lk = 1100 spans three key blocks, the last
    // one partial; Lq = 130 spans two query blocks.
    let (lq, lk) = (130, 1100);
    let q = rand_f32(13, &[1, 2, lq, 24]);
    let k = rand_f32(14, &[1, 2, lk, 24]);
    let v = rand_f32(15, &[1, 2, lk, 8]);
    let keep: Vec<bool> = (0..lq * lk).map(|e| e % lk <= e / lk * 4).collect();
    let mask = CpuTensor::from_bools(vec![lq, lk], keep);
    let op = Op::attention(0.2, AttentionMask::Boolean);
    check_op(&op, &[q, k, v, mask], TOL);
}

#[test]
fn attention_fully_masked_rows_are_zero() {
    let (lq, lk) = (5, 700);
    let q = rand_f32(16, &[lq, 4]);
    let k = rand_f32(17, &[lk, 4]);
    let v = rand_f32(18, &[lk, 3]);
    // Row 1 attends nothing; row 3 attends only the last key (in the second key block of 512).
    let keep: Vec<bool> = (0..lq * lk).map(|e| e / lk != 1 && (e / lk != 3 || e % lk == lk - 1)).collect();
    let mask = CpuTensor::from_bools(vec![lq, lk], keep);
    let op = Op::attention(0.5, AttentionMask::Boolean);
    let y = check_op(&op, &[q, k, v.clone(), mask], TOL).to_f32_vec();
    assert_eq!(&y[3..6], &[0.0; 3]);
    assert_eq!(&y[9..12], &v.to_f32_vec()[(lk - 1) * 3..]);
    // The additive equivalent: -inf everywhere in a row gives zeros as well.
    let add: Vec<f64> = (0..lk).map(|j| if j < lk - 1 { f64::NEG_INFINITY } else { 0.0 }).collect();
    let mask = CpuTensor::from_f64(DType::F32, vec![1, lk], &add);
    let op = Op::attention(0.5, AttentionMask::Additive);
    let q = rand_f32(16, &[lq, 4]);
    let k = rand_f32(17, &[lk, 4]);
    let y = check_op(&op, &[q, k, v.clone(), mask], TOL).to_f32_vec();
    assert_eq!(&y[..3], &v.to_f32_vec()[(lk - 1) * 3..]);
}

#[test]
fn attention_with_heads_permuted_in_place() {
    // [B, L, H, D] storage viewed as [B, H, L, D], as models lay out heads after a projection.
    let view = |seed, l, e| rand_f32(seed, &[2, l, 3, e]).permute(&[0, 2, 1, 3]);
    let (q, k, v) = (view(19, 70, 16), view(20, 257, 16), view(21, 257, 8));
    let mask = rand_f32(22, &[1, 1, 70, 257]);
    check_op(&Op::attention(0.25, AttentionMask::Additive), &[q, k, v, mask], TOL);
}

/// A small graph-like chain (attention, then a convolution over its output) and large GEMMs
/// (split over threads inside `gemm`), evaluated in pools of 1, 2 and 3 threads: outputs must be
/// bit-identical.
#[test]
fn outputs_do_not_depend_on_the_thread_count() {
    let q = rand_f32(30, &[1, 8, 300, 16]);
    let k = rand_f32(31, &[1, 8, 300, 16]);
    let v = rand_f32(32, &[1, 8, 300, 16]);
    let mask = rand_f32(33, &[300, 300]);
    let w = rand_of(DType::BF16, 34, &[16, 8, 3, 3]);
    let a = rand_f32(35, &[257, 300]);
    let b = rand_f32(36, &[300, 129]);
    let x = rand_f32(37, &[3, 400, 300]);
    let lw = rand_f32(38, &[200, 300]);
    // 80 output rows: `gemm` packs its lhs with 1 thread but not with several in this range.
    let (c, d) = (rand_f32(39, &[80, 600]), rand_f32(40, &[600, 300]));
    let attention = Op::attention(0.25, AttentionMask::Additive);
    let conv = Op::Conv(ConvParams {
        stride: vec![1, 1],
        dilation: vec![1, 1],
        padding: vec![(2, 0), (1, 1)],
        pad_mode: ConvPadMode::Replicate,
        groups: 1,
        has_bias: false,
    });
    let chain = || {
        let h = run_cpu(&attention, &[&q, &k, &v, &mask]);
        let y = run_cpu(&conv, &[&h, &w]);
        let big = run_cpu(&matmul(false, false), &[&a, &b]);
        let lin = run_cpu(&Op::Linear { has_bias: false }, &[&x, &lw]);
        let packing = run_cpu(&matmul(false, false), &[&c, &d]);
        [bits(&h), bits(&y), bits(&big), bits(&lin), bits(&packing)]
    };
    let one = with_threads(1, chain);
    assert_eq!(one, with_threads(2, chain), "1 vs 2 threads");
    assert_eq!(one, with_threads(3, chain), "1 vs 3 threads");
}

#[test]
fn tokens_major_attention_equals_the_permuted_heads_major_output() {
    // Rows cross the 128-row query block; several heads, a batch of 2, strided q.
    for &(batch, heads, lq, lk, d) in &[(2, 3, 130, 70, 8), (1, 1, 5, 1, 4), (1, 8, 257, 513, 16)] {
        let q = as_permuted_view(&rand_f32(1, &[batch, heads, lq, d]), &[0, 2, 1, 3]);
        let k = rand_f32(2, &[batch, heads, lk, d]);
        let v = rand_f32(3, &[batch, heads, lk, d]);
        let op = Op::Attention { scale: 0.3, mask: AttentionMask::None, layout: AttentionLayout::TokensMajor };
        let got = check_op(&op, &[q.clone(), k.clone(), v.clone()], TOL);
        assert_eq!(got.shape(), &[batch, lq, heads, d]);
        let heads_major = run_cpu(&Op::attention(0.3, AttentionMask::None), &[&q, &k, &v]);
        let permuted = heads_major.permute(&[0, 2, 1, 3]).contiguous();
        assert_eq!(bits(&got), bits(&permuted));
    }
}

/// `linear` of `rows` random rows against a random bf16 `[n, k]` weight, with and without a
/// bias, equals bit for bit the same product with the weight widened to f32 (widening is
/// exact, whichever path reads the bf16 weight).
fn bf16_weight_gives_the_widened_bits(rows: usize, k: usize, n: usize) {
    let x = rand_f32(20 + rows as u64, &[rows, k]);
    let w = rand_of(DType::BF16, 21, &[n, k]);
    let w32 = CpuTensor::from_vec(vec![n, k], w.to_f32_vec());
    let bias = rand_f32(22, &[n]);
    let out = orrery_ir::TensorType::new(DType::F32, [rows, n]);
    for (op, extra) in [(Op::Linear { has_bias: false }, None), (Op::Linear { has_bias: true }, Some(&bias))] {
        let run = |w: &CpuTensor| {
            let mut inputs = vec![&x, w];
            inputs.extend(extra);
            orrery_cpu::execute(&op, &inputs, &out).unwrap()
        };
        assert_eq!(bits(&run(&w)), bits(&run(&w32)), "{rows}x{k}x{n} {op:?}");
    }
}

#[test]
fn few_rows_against_a_bf16_weight_equal_the_widened_weight_bit_for_bit() {
    // Up to 8 rows stream a weight row by row, bf16 or f32 alike. (From 9 to 32 rows only a
    // bf16 weight streams, so its bits differ from the f32 weight's GEMM, within rounding.)
    for (rows, k, n) in [(1, 300, 70), (5, 64, 33), (8, 131, 200)] {
        bf16_weight_gives_the_widened_bits(rows, k, n);
    }
}

#[test]
fn many_rows_against_a_bf16_weight_equal_the_widened_weight_bit_for_bit() {
    // Past the few-rows path the GEMM reads the bf16 weight as stored where it can (widening
    // while packing) and widens it whole elsewhere (`tests/epilogue.rs` covers fused
    // epilogues over bf16 weights).
    for (rows, k, n) in [(33, 300, 70), (150, 77, 600), (300, 513, 130)] {
        bf16_weight_gives_the_widened_bits(rows, k, n);
    }
}
