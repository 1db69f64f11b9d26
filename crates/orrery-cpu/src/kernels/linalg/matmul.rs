//! MatMul and Linear: strided GEMM calls, no operand copies for f32 views.

use super::blas::{gemm, MatMut, MatRef, Threads};
use super::operand::{broadcast_strides_to, index_offsets, F32Operand};
use crate::CpuTensor;
use orrery_ir::TensorType;
use rayon::prelude::*;

/// Per-matrix work (m·n·k) from which one GEMM is worth splitting over threads; below it the
/// batch is split instead (one single-threaded GEMM per task).
const SPLIT_ONE_GEMM_WORK: usize = 1 << 21;

/// (row stride, column stride) of the trailing matrix of a view, transposed when asked.
fn matrix_strides(strides: &[usize], transpose: bool) -> (usize, usize) {
    let r = strides.len();
    if transpose {
        (strides[r - 1], strides[r - 2])
    } else {
        (strides[r - 2], strides[r - 1])
    }
}

/// Batched `a · b` with broadcast batch dims. Transposes, permutations and broadcasts of f32
/// operands are absorbed into GEMM strides; f16/bf16 `b` is widened once.
pub(super) fn matmul(a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool, out: &TensorType) -> CpuTensor {
    let (a, b) = (F32Operand::strided(a), F32Operand::strided(b));
    let od = out.shape.dims();
    let r = od.len();
    let (m, n) = (od[r - 2], od[r - 1]);
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let k = if ta { a.shape[ra - 2] } else { a.shape[ra - 1] };
    let batch = &od[..r - 2];
    let a_offsets =
        index_offsets(batch, &broadcast_strides_to(&a.shape[..ra - 2], &a.strides[..ra - 2], batch), a.offset);
    let b_offsets =
        index_offsets(batch, &broadcast_strides_to(&b.shape[..rb - 2], &b.strides[..rb - 2], batch), b.offset);
    let (a_rs, a_cs) = matrix_strides(&a.strides, ta);
    let (b_rs, b_cs) = matrix_strides(&b.strides, tb);
    let mut y = vec![0f32; out.shape.numel()];
    if m * n == 0 {
        return CpuTensor::from_vec(od.to_vec(), y);
    }
    let one = |bi: usize, dst: &mut [f32], threads: Threads| {
        let lhs = MatRef::new(a.data(), a_offsets[bi], a_rs, a_cs);
        let rhs = MatRef::new(b.data(), b_offsets[bi], b_rs, b_cs);
        // SAFETY: `dst` is this batch's own dense m×n block.
        unsafe { gemm(m, n, k, MatMut::dense(dst, m, n), lhs, rhs, 1.0, false, threads) };
    };
    if a_offsets.len() == 1 || m * n * k >= SPLIT_ONE_GEMM_WORK {
        y.chunks_mut(m * n).enumerate().for_each(|(bi, dst)| one(bi, dst, Threads::Pool));
    } else {
        y.par_chunks_mut(m * n).enumerate().for_each(|(bi, dst)| one(bi, dst, Threads::Single));
    }
    CpuTensor::from_vec(od.to_vec(), y)
}

/// torch `linear`: every leading row of x times `wᵀ`, plus the bias. x's leading dims are read
/// through one stride when its layout allows (else x is made dense once); w `[N, K]` is read
/// transposed through its strides; the bias pre-fills the output and the GEMM accumulates.
pub(super) fn linear(x: &CpuTensor, w: &CpuTensor, bias: Option<&CpuTensor>, out: &TensorType) -> CpuTensor {
    let od = out.shape.dims().to_vec();
    let (n, k) = (w.shape()[0], w.shape()[1]);
    let rows = out.shape.numel() / n.max(1);
    let lead = x.shape().len() - 1;
    let strided = F32Operand::strided(x);
    let (x, row_stride) = match strided.collapsed_stride(0..lead) {
        Some(s) => (strided, s),
        None => (F32Operand::dense(x), k),
    };
    let w = F32Operand::strided(w);
    let mut y = vec![0f32; rows * n];
    if let Some(bias) = bias {
        let bias = F32Operand::dense(bias);
        for row in y.chunks_mut(n.max(1)) {
            row.copy_from_slice(bias.dense_slice());
        }
    }
    let lhs = MatRef::new(x.data(), x.offset, row_stride, x.strides[lead]);
    let rhs = MatRef::new(w.data(), w.offset, w.strides[1], w.strides[0]);
    // SAFETY: `y` is a dense rows×n buffer owned here.
    unsafe { gemm(rows, n, k, MatMut::dense(&mut y, rows, n), lhs, rhs, 1.0, bias.is_some(), Threads::Pool) };
    CpuTensor::from_vec(od, y)
}
