//! Weights packed once and kept with their tensor (`CpuTensor::with_packs`): products reading
//! the pack give the bits of products packing the weight themselves (plain and fused linear,
//! f32 and bf16 weights, several thread counts), packs stay within their budget and give
//! their bytes back when dropped, and a view of a packed weight is never served its pack.

mod common;

use common::*;
use orrery_cpu::{CpuTensor, PackBudget, WeightPacks};
use orrery_ir::{BinaryOp, DType, FusedProgram, FusedStep, Op, TensorType, UnaryOp};

/// `gelu(v0 + v1)`: a bias and an activation.
fn bias_gelu() -> Op {
    let program = FusedProgram {
        n_inputs: 2,
        steps: vec![FusedStep::Binary(BinaryOp::Add, 0, 1), FusedStep::Unary(UnaryOp::GeluErf, 2)],
    };
    Op::Epilogue { base: Box::new(Op::Linear { has_bias: false }), program, view: None, perm: None }
}

/// True where products can read packs (orrery's own GEMM: AVX-512 on x86-64).
fn packs_are_read_here() -> bool {
    cfg!(target_arch = "x86_64") && std::env::var("ORRERY_GEMM").map_or(true, |v| v != "crate") && is_avx512()
}

#[cfg(target_arch = "x86_64")]
fn is_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn is_avx512() -> bool {
    false
}

#[test]
fn packed_weights_give_the_bits_of_unpacked_ones() {
    // Rows past the few-rows path (which reads the weight as stored), columns not a whole
    // number of panels, K over several passes of every kernel, and the epilogue's 512-column
    // tiles (a fused product reads the pack from each tile's first column).
    for (rows, k, n, dtype) in [(40, 300, 70, DType::F32), (130, 1100, 600, DType::F32), (77, 513, 1030, DType::BF16)] {
        let x = rand_f32(1, &[rows, k]);
        let w = rand_of(dtype, 2, &[n, k]);
        let bias = rand_f32(3, &[n]);
        let out = TensorType::new(DType::F32, [rows, n]);
        let budget = PackBudget::new(1 << 30);
        let packed = w.clone().with_packs(WeightPacks::new(&budget));
        for op in [Op::Linear { has_bias: false }, bias_gelu()] {
            let run = |w: &CpuTensor, threads: usize| {
                let inputs: Vec<&CpuTensor> =
                    if matches!(op, Op::Linear { .. }) { vec![&x, w] } else { vec![&x, w, &bias] };
                with_threads(threads, || orrery_cpu::execute(&op, &inputs, &out).unwrap())
            };
            let want = run(&w, 2);
            for threads in [1, 2, 3] {
                assert_eq!(bits(&run(&packed, threads)), bits(&want), "{rows}×{k}×{n} {dtype} {op}, {threads} threads");
            }
        }
        let held = packed.packs().unwrap().bytes();
        if packs_are_read_here() {
            // At least 4 bytes a value (f32 panels; 6 as bf16 parts on AMX).
            assert!(held >= (n * k * 4) as u64, "{held} bytes packed for {n}×{k}");
        }
        assert_eq!(budget.used(), held);
        drop(packed);
        assert_eq!(budget.used(), 0, "a dropped pack gives its bytes back");
    }
}

#[test]
fn a_pack_that_does_not_fit_its_budget_is_not_made() {
    let (rows, k, n) = (64, 256, 256);
    let x = rand_f32(4, &[rows, k]);
    let w = rand_f32(5, &[n, k]);
    let out = TensorType::new(DType::F32, [rows, n]);
    let op = Op::Linear { has_bias: false };
    let want = orrery_cpu::execute(&op, &[&x, &w], &out).unwrap();
    // Room for one pack of this weight, not two.
    let budget = PackBudget::new((n * k * 7) as u64);
    let first = w.clone().with_packs(WeightPacks::new(&budget));
    let second = CpuTensor::from_vec(vec![n, k], w.to_f32_vec()).with_packs(WeightPacks::new(&budget));
    for t in [&first, &second] {
        assert_eq!(bits(&orrery_cpu::execute(&op, &[&x, t], &out).unwrap()), bits(&want));
    }
    if packs_are_read_here() {
        assert!(first.packs().unwrap().bytes() > 0);
    }
    assert_eq!(second.packs().unwrap().bytes(), 0, "the second pack would pass the budget");
    assert!(budget.used() <= budget.limit());
    // Nothing packs with a budget of 0.
    let none = w.clone().with_packs(WeightPacks::new(&PackBudget::new(0)));
    assert_eq!(bits(&orrery_cpu::execute(&op, &[&x, &none], &out).unwrap()), bits(&want));
    assert_eq!(none.packs().unwrap().bytes(), 0);
}

#[test]
fn views_of_a_packed_weight_are_not_served_its_pack() {
    let (rows, k, n) = (48, 200, 192);
    let x = rand_f32(6, &[rows, k]);
    let w = rand_f32(7, &[n, k]).with_packs(WeightPacks::new(&PackBudget::new(1 << 30)));
    let op = Op::Linear { has_bias: false };
    // Packed by a first product over the whole weight.
    orrery_cpu::execute(&op, &[&x, &w], &TensorType::new(DType::F32, [rows, n])).unwrap();
    // Rows 64.. of the weight (a view with an offset), the weight read as [n/2, 2k] and the
    // transpose of a square weight would each get a wrong product from the whole weight's
    // pack.
    let rows_view = w.slice(0, 64, n, 1);
    let dense_rows = CpuTensor::from_vec(vec![n - 64, k], rows_view.to_f32_vec());
    let out = TensorType::new(DType::F32, [rows, n - 64]);
    let got = orrery_cpu::execute(&op, &[&x, &rows_view], &out).unwrap();
    assert_eq!(bits(&got), bits(&orrery_cpu::execute(&op, &[&x, &dense_rows], &out).unwrap()));
    let x2 = rand_f32(8, &[rows, 2 * k]);
    let reshaped = w.reshape(&[n / 2, 2 * k]);
    let dense = CpuTensor::from_vec(vec![n / 2, 2 * k], w.to_f32_vec());
    let out = TensorType::new(DType::F32, [rows, n / 2]);
    let got = orrery_cpu::execute(&op, &[&x2, &reshaped], &out).unwrap();
    assert_eq!(bits(&got), bits(&orrery_cpu::execute(&op, &[&x2, &dense], &out).unwrap()));
    // The transpose of a square weight has the pack's dims but not its values.
    let square = rand_f32(9, &[k, k]).with_packs(WeightPacks::new(&PackBudget::new(1 << 30)));
    let out = TensorType::new(DType::F32, [rows, k]);
    orrery_cpu::execute(&op, &[&x, &square], &out).unwrap();
    let transposed = square.permute(&[1, 0]);
    let dense = transposed.contiguous();
    let got = orrery_cpu::execute(&op, &[&x, &transposed], &out).unwrap();
    assert_eq!(bits(&got), bits(&orrery_cpu::execute(&op, &[&x, &dense], &out).unwrap()));
}

/// A 3-d convolution (gathered while packing, its weights the GEMM's A) with packed weights
/// gives the bits of one packing its weights itself: over many positions (one product over the
/// whole depth) and over few (the depth split in two halves, one pack each).
#[test]
fn convolutions_with_packed_weights_give_the_same_bits() {
    let conv = |has_bias: bool| {
        Op::Conv(orrery_ir::ConvParams {
            stride: vec![1; 3],
            dilation: vec![1; 3],
            padding: vec![(1, 1); 3],
            pad_mode: orrery_ir::ConvPadMode::Zeros,
            groups: 1,
            has_bias,
        })
    };
    // 4 × 12 × 12 = 576 positions; 2 × 8 × 8 = 128 positions with a depth of 64 · 27 = 1728.
    for (cin, cout, [t, h, w]) in [(16, 40, [4, 12, 12]), (64, 96, [2, 8, 8])] {
        let x = rand_f32(10, &[1, cin, t, h, w]);
        let weight = rand_f32(11, &[cout, cin, 3, 3, 3]);
        let bias = rand_f32(12, &[cout]);
        let out = TensorType::new(DType::F32, [1, cout, t, h, w]);
        let budget = PackBudget::new(1 << 30);
        let packed = weight.clone().with_packs(WeightPacks::new(&budget));
        for has_bias in [false, true] {
            let op = conv(has_bias);
            let run = |w: &CpuTensor, threads: usize| {
                let inputs: Vec<&CpuTensor> = if has_bias { vec![&x, w, &bias] } else { vec![&x, w] };
                with_threads(threads, || orrery_cpu::execute(&op, &inputs, &out).unwrap())
            };
            let want = run(&weight, 2);
            for threads in [1, 2, 3] {
                assert_eq!(bits(&run(&packed, threads)), bits(&want), "{cin}→{cout} at {t}×{h}×{w}, {threads} threads");
            }
        }
        if packs_are_read_here() && cfg!(target_arch = "x86_64") && amx_here() {
            assert!(packed.packs().unwrap().bytes() >= (cout * cin * 27 * 6) as u64, "{cin}→{cout}: weights packed");
        }
        assert_eq!(budget.used(), packed.packs().unwrap().bytes());
    }
}

/// True where products run on AMX (where a convolution's weights are packed): the CPU has
/// AMX-BF16 and `ORRERY_GEMM` does not keep products on AVX-512.
fn amx_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        leaf7.edx & (1 << 22) != 0 && std::env::var("ORRERY_GEMM").map_or(true, |v| v != "avx512")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
