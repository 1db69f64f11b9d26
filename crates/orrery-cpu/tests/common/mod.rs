//! Shared helpers for the op conformance tests: each test builds inputs, runs the CPU kernel
//! and the float64 reference on the same data, and compares with a stated tolerance.
#![allow(dead_code)]

use orrery_cpu::CpuTensor;
use orrery_ir::reference::eval_op;
use orrery_ir::{DType, Op, RefTensor};
use proptest::prelude::*;

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64), so failures reproduce.
pub fn values(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// A dense f32 tensor of random values in [-1, 1) (already rounded to f32).
pub fn rand_f32(seed: u64, shape: &[usize]) -> CpuTensor {
    let n = shape.iter().product();
    CpuTensor::from_f64(DType::F32, shape.to_vec(), &values(seed, n))
}

/// Random values in [-1, 1) stored as `dtype` (f16/bf16 rounded at construction, so the
/// reference sees the same values).
pub fn rand_of(dtype: DType, seed: u64, shape: &[usize]) -> CpuTensor {
    let n = shape.iter().product();
    CpuTensor::from_f64(dtype, shape.to_vec(), &values(seed, n))
}

/// A weight dtype picked by `i`: f32, f16 or bf16.
pub fn weight_dtype(i: u8) -> DType {
    [DType::F32, DType::F16, DType::BF16][i as usize % 3]
}

/// The same logical tensor made non-contiguous: stored permuted, then viewed back through the
/// inverse permutation. `perm` must be a permutation of the rank.
pub fn as_permuted_view(t: &CpuTensor, perm: &[usize]) -> CpuTensor {
    let stored = t.permute(perm).contiguous();
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    let v = stored.permute(&inv);
    assert_eq!(v.shape(), t.shape());
    v
}

/// The same logical tensor as a strided slice of a bigger buffer (every other element along
/// `axis`), so strides are not the dense ones.
pub fn as_sliced_view(t: &CpuTensor, axis: usize) -> CpuTensor {
    let mut big_shape = t.shape().to_vec();
    big_shape[axis] = 2 * t.shape()[axis] + 1;
    let dense = t.to_f64_vec();
    let big_n: usize = big_shape.iter().product();
    let mut big = vec![f64::NAN; big_n];
    // Fill positions 1, 3, 5, … along `axis` with t's values.
    let outer: usize = t.shape()[..axis].iter().product();
    let inner: usize = t.shape()[axis + 1..].iter().product();
    let d = t.shape()[axis];
    for o in 0..outer {
        for i in 0..d {
            for k in 0..inner {
                big[(o * big_shape[axis] + 2 * i + 1) * inner + k] = dense[(o * d + i) * inner + k];
            }
        }
    }
    let bt = CpuTensor::from_f64(t.dtype(), big_shape.clone(), &big);
    let v = bt.slice(axis, 1, 2 * d + 1, 2);
    assert_eq!(v.shape(), t.shape());
    v
}

/// The same tensor, dense (0), stored transposed (1) or as a strided slice (2) along an axis
/// picked by `axis_seed`. Variants a tensor's rank does not allow (a transpose below rank 2, a
/// slice of a scalar) give it back dense.
pub fn layout(t: &CpuTensor, variant: u8, axis_seed: usize) -> CpuTensor {
    let rank = t.shape().len();
    match variant {
        1 if rank >= 2 => as_permuted_view(t, &(0..rank).rev().collect::<Vec<_>>()),
        2 if rank >= 1 => as_sliced_view(t, axis_seed % rank),
        _ => t.clone(),
    }
}

/// The same values as `t` through another layout: `kind % 3` is 0 for dense, 1 for
/// reversed-permuted, 2 for strided along axis `(kind / 3) % rank`. `t` must have rank ≥ 1.
pub fn view(t: &CpuTensor, kind: u8) -> CpuTensor {
    let r = t.shape().len();
    match kind % 3 {
        0 => t.clone(),
        1 => as_permuted_view(t, &(0..r).rev().collect::<Vec<_>>()),
        _ => as_sliced_view(t, (kind as usize / 3) % r),
    }
}

pub fn to_ref(t: &CpuTensor) -> RefTensor {
    RefTensor::new(t.dtype(), t.shape().to_vec(), t.to_f64_vec())
}

/// max|a - b| / max|b| (0/0 = 0); NaNs must match position for position.
pub fn rel_err(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let mut max_diff: f64 = 0.0;
    let mut max_ref: f64 = 0.0;
    for (&o, &r) in out.iter().zip(reference) {
        if r.is_nan() || o.is_nan() {
            assert!(r.is_nan() && o.is_nan(), "NaN mismatch: got {o}, reference {r}");
            continue;
        }
        if r.is_infinite() || o.is_infinite() {
            assert_eq!(o, r, "infinity mismatch");
            continue;
        }
        max_diff = max_diff.max((o - r).abs());
        max_ref = max_ref.max(r.abs());
    }
    if max_ref == 0.0 {
        max_diff
    } else {
        max_diff / max_ref
    }
}

/// Runs `op` on the CPU backend and on the reference, asserts the output type is the inferred
/// one and that the relative error is at most `tol`. Returns the CPU output.
pub fn check_op(op: &Op, inputs: &[CpuTensor], tol: f64) -> CpuTensor {
    let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
    let out_ty = op.infer(&tys).unwrap_or_else(|e| panic!("{op} rejected {tys:?}: {e}"));
    let refs: Vec<RefTensor> = inputs.iter().map(to_ref).collect();
    let ref_args: Vec<&RefTensor> = refs.iter().collect();
    let expected = eval_op(op, &ref_args, &out_ty).unwrap_or_else(|e| panic!("reference {op}: {e}"));
    let args: Vec<&CpuTensor> = inputs.iter().collect();
    let got = orrery_cpu::execute(op, &args, &out_ty).unwrap_or_else(|e| panic!("cpu {op}: {e}"));
    assert_eq!(got.shape(), out_ty.shape.dims(), "{op}: shape");
    assert_eq!(got.dtype(), out_ty.dtype, "{op}: dtype");
    assert_eq!(expected.shape, out_ty.shape.dims(), "{op}: reference shape");
    let err = rel_err(&got.to_f64_vec(), &expected.data);
    assert!(err <= tol, "{op}: relative error {err:e} > {tol:e} for inputs {tys:?}");
    got
}

/// [`check_op`] for products (matmul, linear): the error is measured against the largest
/// `Σ|a|·|b|` (+ |bias|) of any output — the scale f32 rounding of a dot product grows with —
/// rather than the largest output, which cancellation can make arbitrarily small beside its
/// terms (a single 1 × 8 × 1 product once failed that way).
pub fn check_product(op: &Op, inputs: &[CpuTensor], tol: f64) -> CpuTensor {
    let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
    let out_ty = op.infer(&tys).unwrap_or_else(|e| panic!("{op} rejected {tys:?}: {e}"));
    let refs: Vec<RefTensor> = inputs.iter().map(to_ref).collect();
    let abs: Vec<RefTensor> = refs
        .iter()
        .map(|r| RefTensor::new(r.dtype, r.shape.clone(), r.data.iter().map(|v| v.abs()).collect()))
        .collect();
    let eval = |args: &[RefTensor]| {
        let args: Vec<&RefTensor> = args.iter().collect();
        eval_op(op, &args, &out_ty).unwrap_or_else(|e| panic!("reference {op}: {e}"))
    };
    let (expected, magnitude) = (eval(&refs), eval(&abs));
    let args: Vec<&CpuTensor> = inputs.iter().collect();
    let got = orrery_cpu::execute(op, &args, &out_ty).unwrap_or_else(|e| panic!("cpu {op}: {e}"));
    assert_eq!(got.shape(), out_ty.shape.dims(), "{op}: shape");
    assert_eq!(got.dtype(), out_ty.dtype, "{op}: dtype");
    let diff = got.to_f64_vec().iter().zip(&expected.data).fold(0f64, |m, (g, e)| m.max((g - e).abs()));
    let scale = magnitude.data.iter().fold(0f64, |m, v| m.max(*v));
    let err = if scale == 0.0 { diff } else { diff / scale };
    assert!(err <= tol, "{op}: error {err:e} of the largest Σ|a||b| > {tol:e} for inputs {tys:?}");
    got
}

/// Runs `op` on the CPU backend only (panics if the op rejects the inputs or the kernel fails).
pub fn run_cpu(op: &Op, inputs: &[&CpuTensor]) -> CpuTensor {
    let tys: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
    let out = op.infer(&tys).expect("valid op");
    orrery_cpu::execute(op, inputs, &out).expect("kernel runs")
}

/// The bit patterns of an f32 tensor's values, for exact (determinism) comparisons.
pub fn bits(t: &CpuTensor) -> Vec<u32> {
    t.to_f32_vec().iter().map(|v| v.to_bits()).collect()
}

/// A shape of `rank` dims, each in 1..=max (size 1 and odd sizes included).
pub fn shape_strategy(rank: std::ops::RangeInclusive<usize>, max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=max, rank)
}

/// Runs `f` inside a rayon pool with `threads` workers.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}
