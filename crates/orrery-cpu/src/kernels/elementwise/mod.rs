//! Elementwise kernels: unary functions, clamp, broadcasting binary ops, comparisons, `where`
//! and casts. All read strided inputs directly (no densifying copy) through
//! [`strided::Broadcast`], and write a dense output in parallel.

mod cast;
pub(in crate::kernels) mod math;
pub(in crate::kernels) mod strided;

use crate::output::output;
use crate::{CpuError, CpuTensor};
use math::{exp_f32, gelu_erf, gelu_tanh, nan_max, nan_min, relu, rsqrt, sigmoid, silu};
use orrery_ir::{BinaryOp, CompareOp, DType, Op, TensorType, UnaryOp};
use rayon::prelude::*;
pub(crate) use strided::{dense_copy, output_copy};
use strided::{map_view, tensor_from_output, typed, with_scalar_type, zip_broadcast, Broadcast, Scalar};

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let dims = out.shape.dims();
    match op {
        Op::Unary(f) => unary(op, *f, inputs[0]),
        Op::Clamp { min, max } => {
            let (lo, hi) = (*min as f32, *max as f32);
            map_f32(op, inputs[0], move |x| clamp_value(x, lo, hi))
        }
        Op::Binary(f) => binary(op, *f, inputs[0], inputs[1], dims),
        Op::Compare(c) => compare(op, *c, inputs[0], inputs[1], dims),
        Op::Where => with_scalar_type!(out.dtype, T => select::<T>(op, inputs, out)),
        Op::Cast { to } => cast::cast(inputs[0], *to)
            .ok_or_else(|| CpuError::kernel(op, format!("input buffer does not hold {}", inputs[0].dtype()))),
        _ => Err(CpuError::kernel(op, "not an elementwise op")),
    }
}

/// `f` of every element of the f32 tensor `x`.
fn map_f32(op: &Op, x: &CpuTensor, f: impl Fn(f32) -> f32 + Sync) -> Result<CpuTensor, CpuError> {
    let src = typed::<f32>(op, x)?;
    Ok(map_view(x, src, f).into_tensor(x.shape().to_vec()))
}

/// Expands `$body` once per unary function with `$g` bound to its scalar function, so each
/// instantiation inlines it. The one table of scalar functions for the unfused kernels and
/// fused programs alike (which is what makes them agree bit for bit).
macro_rules! with_unary_fn {
    ($f:expr, $g:ident => $body:expr) => {
        match $f {
            UnaryOp::Neg => {
                let $g = |v: f32| -v;
                $body
            }
            UnaryOp::Abs => {
                let $g = f32::abs;
                $body
            }
            UnaryOp::Exp => {
                let $g = exp_f32;
                $body
            }
            UnaryOp::Log => {
                let $g = f32::ln;
                $body
            }
            UnaryOp::Sqrt => {
                let $g = f32::sqrt;
                $body
            }
            UnaryOp::Rsqrt => {
                let $g = rsqrt;
                $body
            }
            UnaryOp::Reciprocal => {
                let $g = |v: f32| 1.0 / v;
                $body
            }
            UnaryOp::Sin => {
                let $g = f32::sin;
                $body
            }
            UnaryOp::Cos => {
                let $g = f32::cos;
                $body
            }
            UnaryOp::Tanh => {
                let $g = f32::tanh;
                $body
            }
            UnaryOp::Sigmoid => {
                let $g = sigmoid;
                $body
            }
            UnaryOp::Relu => {
                let $g = relu;
                $body
            }
            UnaryOp::GeluErf => {
                let $g = gelu_erf;
                $body
            }
            UnaryOp::GeluTanh => {
                let $g = gelu_tanh;
                $body
            }
            UnaryOp::Silu => {
                let $g = silu;
                $body
            }
        }
    };
}

fn unary(op: &Op, f: UnaryOp, x: &CpuTensor) -> Result<CpuTensor, CpuError> {
    with_unary_fn!(f, g => map_f32(op, x, g))
}

fn binary(op: &Op, f: BinaryOp, a: &CpuTensor, b: &CpuTensor, dims: &[usize]) -> Result<CpuTensor, CpuError> {
    let a = (a, typed::<f32>(op, a)?);
    let b = (b, typed::<f32>(op, b)?);
    let out = match f {
        BinaryOp::Add => zip_broadcast(dims, a, b, |x, y| x + y),
        BinaryOp::Sub => zip_broadcast(dims, a, b, |x, y| x - y),
        BinaryOp::Mul => zip_broadcast(dims, a, b, |x, y| x * y),
        BinaryOp::Div => zip_broadcast(dims, a, b, |x, y| x / y),
        BinaryOp::Pow => zip_broadcast(dims, a, b, f32::powf),
        BinaryOp::Max => zip_broadcast(dims, a, b, nan_max),
        BinaryOp::Min => zip_broadcast(dims, a, b, nan_min),
    };
    Ok(out.into_tensor(dims.to_vec()))
}

fn compare(op: &Op, c: CompareOp, a: &CpuTensor, b: &CpuTensor, dims: &[usize]) -> Result<CpuTensor, CpuError> {
    with_scalar_type!(a.dtype(), T => {
        let a = (a, typed::<T>(op, a)?);
        let b = (b, typed::<T>(op, b)?);
        let out = match c {
            CompareOp::Eq => zip_broadcast(dims, a, b, |x: T, y: T| u8::from(x == y)),
            CompareOp::Ne => zip_broadcast(dims, a, b, |x: T, y: T| u8::from(x != y)),
            CompareOp::Lt => zip_broadcast(dims, a, b, |x: T, y: T| u8::from(x < y)),
            CompareOp::Le => zip_broadcast(dims, a, b, |x: T, y: T| u8::from(x <= y)),
            CompareOp::Gt => zip_broadcast(dims, a, b, |x: T, y: T| u8::from(x > y)),
            CompareOp::Ge => zip_broadcast(dims, a, b, |x: T, y: T| u8::from(x >= y)),
        };
        Ok(tensor_from_output(dims, DType::Bool, out))
    })
}

/// Unary, clamp and binary ops (f32) with the output written over `y`, the values of input
/// `at` (dense, of the output's `dims`); `others` are the other inputs. Each element gets the
/// scalar function of the out-of-place kernel on the same operands, so the same bits.
pub(super) fn execute_in_place(
    op: &Op,
    others: &[&CpuTensor],
    at: usize,
    y: &mut [f32],
    dims: &[usize],
) -> Result<(), CpuError> {
    match (op, others) {
        (Op::Unary(f), []) => with_unary_fn!(*f, g => map_in_place(y, g)),
        (Op::Clamp { min, max }, []) => {
            let (lo, hi) = (*min as f32, *max as f32);
            map_in_place(y, move |x| clamp_value(x, lo, hi));
        }
        (Op::Binary(f), [other]) => {
            let other = (*other, typed::<f32>(op, other)?);
            match f {
                BinaryOp::Add => zip_in_place(dims, y, other, at, |x, y| x + y),
                BinaryOp::Sub => zip_in_place(dims, y, other, at, |x, y| x - y),
                BinaryOp::Mul => zip_in_place(dims, y, other, at, |x, y| x * y),
                BinaryOp::Div => zip_in_place(dims, y, other, at, |x, y| x / y),
                BinaryOp::Pow => zip_in_place(dims, y, other, at, f32::powf),
                BinaryOp::Max => zip_in_place(dims, y, other, at, nan_max),
                BinaryOp::Min => zip_in_place(dims, y, other, at, nan_min),
            }
        }
        _ => return Err(CpuError::kernel(op, "does not run in place")),
    }
    Ok(())
}

/// `y[i] = f(y[i])`, through the vectorised loop of the out-of-place kernel.
fn map_in_place(y: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    const PIECE: usize = 256;
    y.par_chunks_mut(strided::CHUNK).for_each(|chunk| {
        let mut held = [0f32; PIECE];
        for piece in chunk.chunks_mut(PIECE) {
            let held = &mut held[..piece.len()];
            held.copy_from_slice(piece);
            strided::map_dense(piece, held, &f);
        }
    });
}

/// `y[i] = f(y[i], other[i])` (`at` 0) or `f(other[i], y[i])` (`at` 1), `other` broadcast to
/// `dims`.
fn zip_in_place(
    dims: &[usize],
    y: &mut [f32],
    (other, data): (&CpuTensor, &[f32]),
    at: usize,
    f: impl Fn(f32, f32) -> f32 + Sync,
) {
    Broadcast::new(dims, [other]).par_segments(y, |dst, _, [start], [stride]| {
        for (i, d) in dst.iter_mut().enumerate() {
            let v = data[start + i * stride];
            *d = if at == 0 { f(*d, v) } else { f(v, *d) };
        }
    });
}

/// `cond ? a : b` with all three broadcast to the output.
fn select<T: Scalar>(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let (cond, a, b) = (inputs[0], inputs[1], inputs[2]);
    let (xc, xa, xb) = (typed::<u8>(op, cond)?, typed::<T>(op, a)?, typed::<T>(op, b)?);
    let dims = out.shape.dims();
    // Every element is written below.
    let mut data = output::<T>(out.shape.numel());
    Broadcast::new(dims, [cond, a, b]).par_segments(&mut data, |dst, _, [oc, oa, ob], [sc, sa, sb]| {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = if xc[oc + i * sc] != 0 { xa[oa + i * sa] } else { xb[ob + i * sb] };
        }
    });
    Ok(tensor_from_output(dims, out.dtype, data))
}

/// `dst[i] = f(src[i])` with the same scalar functions as the unfused unary kernels (so fused
/// programs give the same bits); one loop per function so each inlines, in AVX2 where the CPU
/// has it (same bits: no FMA contraction happens in Rust).
pub(in crate::kernels) fn unary_slice(f: UnaryOp, src: &[f32], dst: &mut [f32]) {
    with_unary_fn!(f, g => strided::map_dense(dst, src, &g))
}

/// `dst[i] = a[i] ∘ b[i]` with the unfused binary kernels' scalar functions (AVX2 loops where
/// available, as [`unary_slice`]).
pub(in crate::kernels) fn binary_slice(f: BinaryOp, a: &[f32], b: &[f32], dst: &mut [f32]) {
    fn zip(a: &[f32], b: &[f32], dst: &mut [f32], f: impl Fn(f32, f32) -> f32) {
        strided::zip_dense(dst, a, b, &f);
    }
    match f {
        BinaryOp::Add => zip(a, b, dst, |x, y| x + y),
        BinaryOp::Sub => zip(a, b, dst, |x, y| x - y),
        BinaryOp::Mul => zip(a, b, dst, |x, y| x * y),
        BinaryOp::Div => zip(a, b, dst, |x, y| x / y),
        BinaryOp::Pow => zip(a, b, dst, f32::powf),
        BinaryOp::Max => zip(a, b, dst, nan_max),
        BinaryOp::Min => zip(a, b, dst, nan_min),
    }
}

/// The clamp kernel's scalar function (NaN passes through).
pub(in crate::kernels) fn clamp_value(x: f32, lo: f32, hi: f32) -> f32 {
    if x.is_nan() {
        x
    } else {
        x.max(lo).min(hi)
    }
}
