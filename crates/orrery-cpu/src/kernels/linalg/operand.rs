//! f32 operands for the matmul- and convolution-family kernels.
//!
//! f32 views are read in place through their strides (no copy, whatever the permutation or
//! broadcast); f16/bf16 weights are widened once per call into a dense f32 buffer. Broadcast
//! batch dims become per-batch buffer offsets.

use crate::{Buffer, CpuTensor, Element};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use orrery_ir::shape::contiguous_strides;
use orrery_ir::DType;
use rayon::prelude::*;
use std::sync::Arc;

/// An f32 tensor as (data, offset, shape, strides): element `idx` lives at
/// `data()[offset + Σ idx[i]·strides[i]]`.
pub(crate) struct F32Operand {
    storage: Storage,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

enum Storage {
    /// The tensor's own f32 buffer (possibly memory-mapped), shared.
    Shared(Arc<Buffer>),
    /// A dense copy made here (widened from f16/bf16, or gathered from a non-dense view).
    Owned(Vec<f32>),
}

impl F32Operand {
    /// Reads f32 tensors in place with their own strides; widens other dtypes densely.
    pub fn strided(t: &CpuTensor) -> F32Operand {
        if t.dtype() == DType::F32 && f32::slice(t.buffer()).is_some() {
            return F32Operand {
                storage: Storage::Shared(t.buffer().clone()),
                offset: t.offset(),
                shape: t.shape().to_vec(),
                strides: t.strides().to_vec(),
            };
        }
        F32Operand::owned(t.shape().to_vec(), widen_to_f32(t))
    }

    /// Dense row-major data; copies only when the view is not dense or not f32.
    pub fn dense(t: &CpuTensor) -> F32Operand {
        if t.dtype() == DType::F32 && t.is_contiguous() {
            let mut op = F32Operand::strided(t);
            // Size-1 dims of a contiguous view may carry any stride; normalise them.
            op.strides = contiguous_strides(&op.shape);
            return op;
        }
        if t.dtype() == DType::F32 {
            return F32Operand::dense(&t.contiguous());
        }
        F32Operand::owned(t.shape().to_vec(), widen_to_f32(t))
    }

    /// An operand of no elements (a placeholder where the data is read another way).
    pub fn empty() -> F32Operand {
        F32Operand::owned(vec![0], Vec::new())
    }

    fn owned(shape: Vec<usize>, data: Vec<f32>) -> F32Operand {
        F32Operand { storage: Storage::Owned(data), offset: 0, strides: contiguous_strides(&shape), shape }
    }

    /// The whole underlying storage; index it with `offset` and `strides`.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            // Checked to be Some when the operand was built.
            Storage::Shared(buf) => f32::slice(buf).unwrap_or(&[]),
            Storage::Owned(v) => v,
        }
    }

    /// The elements of a dense operand, in row-major order.
    pub fn dense_slice(&self) -> &[f32] {
        let n = self.shape.iter().product::<usize>();
        &self.data()[self.offset..self.offset + n]
    }

    /// One stride when `dims` (leading dims of this operand, `range`) can be walked as one
    /// flattened dim; `None` when the view's layout does not allow it.
    pub fn collapsed_stride(&self, range: std::ops::Range<usize>) -> Option<usize> {
        collapsed_stride(&self.shape[range.clone()], &self.strides[range])
    }
}

/// The stride of `dims` flattened into one dim, if their strides nest (size-1 dims ignored).
pub(crate) fn collapsed_stride(dims: &[usize], strides: &[usize]) -> Option<usize> {
    let mut inner: Option<(usize, usize)> = None; // (stride, size) of the innermost dim seen
    for (&d, &s) in dims.iter().zip(strides).rev() {
        if d == 1 {
            continue;
        }
        match inner {
            None => inner = Some((s, d)),
            Some((is, id)) if s == is * id => inner = Some((is, id * d)),
            Some(_) => return None,
        }
    }
    Some(inner.map_or(0, |(s, _)| s))
}

/// Dense f32 copy of any float tensor (f16/bf16 widened exactly). Chunked in parallel with a
/// fixed chunk size; a conversion has no reduction, so the result never depends on threads.
fn widen_to_f32(t: &CpuTensor) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let t = t.contiguous();
    let mut out = vec![0f32; t.numel()];
    if let Some(src) = t.data::<f16>() {
        out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| s.convert_to_f32_slice(d));
    } else if let Some(src) = t.data::<bf16>() {
        out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| s.convert_to_f32_slice(d));
    } else {
        return t.to_f32_vec();
    }
    out
}

/// Strides that read an operand with `dims`/`strides` as if broadcast to `target` (numpy
/// rules, aligned to the right): missing and broadcast (size-1) dims get stride 0.
pub(crate) fn broadcast_strides_to(dims: &[usize], strides: &[usize], target: &[usize]) -> Vec<usize> {
    let lead = target.len() - dims.len();
    (0..target.len())
        .map(|i| match i.checked_sub(lead) {
            Some(j) if dims[j] != 1 => strides[j],
            _ => 0,
        })
        .collect()
}

/// `base + Σ idx[i]·strides[i]` for every row-major index `idx` of `dims`.
pub(crate) fn index_offsets(dims: &[usize], strides: &[usize], base: usize) -> Vec<usize> {
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; dims.len()];
    let mut off = base;
    for _ in 0..n {
        out.push(off);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < dims[d] {
                break;
            }
            off -= strides[d] * dims[d];
            idx[d] = 0;
        }
    }
    out
}

/// A raw output pointer shared by tasks that write disjoint elements of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);

impl SharedMut {
    /// The pointer `offset` elements further (a method, so that closures capture the whole
    /// `Send + Sync` wrapper rather than its raw-pointer field).
    pub fn add(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

// SAFETY: users only write disjoint elements from different tasks (stated at each use), and the
// buffer outlives the parallel region that uses the pointer.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapsing_follows_the_layout() {
        assert_eq!(collapsed_stride(&[2, 3], &[3, 1]), Some(1));
        assert_eq!(collapsed_stride(&[2, 1, 3], &[6, 99, 2]), Some(2));
        assert_eq!(collapsed_stride(&[2, 3], &[1, 2]), None);
        assert_eq!(collapsed_stride(&[], &[]), Some(0));
    }

    #[test]
    fn broadcast_offsets_repeat_the_broadcast_rows() {
        let s = broadcast_strides_to(&[3, 1], &[1, 7], &[2, 3, 2]);
        assert_eq!(s, vec![0, 1, 0]);
        assert_eq!(index_offsets(&[2, 3, 2], &s, 5), vec![5, 5, 6, 6, 7, 7, 5, 5, 6, 6, 7, 7]);
    }
}
