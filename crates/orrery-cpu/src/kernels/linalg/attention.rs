//! Flash-style scaled dot-product attention.
//!
//! Each task owns a run of query rows of one (batch, head) and walks the keys in blocks of
//! [`K_BLOCK`], preparing each key block once (packed for the GEMM) for all its queries. For
//! each block of up to [`Q_BLOCK`] of its rows: scores (`q·kᵀ·scale`, one GEMM), mask, then
//! an online softmax (running max and running sum per row, rescaling the accumulated output
//! when the max grows) and `acc += p·v` (a second GEMM). Only a `Q_BLOCK × K_BLOCK` score
//! block ever exists. Every row's arithmetic depends on its own values and the fixed key
//! blocks only, whichever task holds it, so results do not depend on the thread count.

use super::blas::{gemm_shared, MatMut, MatRef, SharedB};
use super::fast_exp::{exp, exp_shifted_sum, row_max};
use super::operand::{broadcast_strides_to, index_offsets, F32Operand};
use crate::output::OutputBuffer;
use crate::{Buffer, CpuTensor};
use orrery_ir::{AttentionLayout, AttentionMask, TensorType};
use rayon::prelude::*;
use std::sync::Arc;

/// Query rows per score block: a whole number of the GEMM's 6-row register tiles (128 left
/// a tile of 2 live rows in 6 per block; 96 measured 1.01–1.14× faster on the attention cases,
/// BENCHMARKS.md).
const Q_BLOCK: usize = 96;
/// Keys per score block.
const K_BLOCK: usize = 512;
/// Query blocks a task is given at least (when it has that many), so that preparing a key
/// block is shared by several query blocks.
const RUN_BLOCKS: usize = 4;
/// Tasks per thread aimed at when heads are few.
const TASKS_PER_THREAD: usize = 8;

/// A strided matrix per (batch, head): the buffer offset of each head, then row/column strides.
struct Heads<'a> {
    data: &'a [f32],
    offsets: Vec<usize>,
    rs: usize,
    cs: usize,
}

impl<'a> Heads<'a> {
    /// The trailing matrices of `op`, one per index of its leading `batch` dims.
    fn new(op: &'a F32Operand, batch: &[usize]) -> Heads<'a> {
        let r = op.shape.len();
        let strides = broadcast_strides_to(&op.shape[..r - 2], &op.strides[..r - 2], batch);
        Heads {
            data: op.data(),
            offsets: index_offsets(batch, &strides, op.offset),
            rs: op.strides[r - 2],
            cs: op.strides[r - 1],
        }
    }

    /// Rows `first..` of head `h` as a matrix (transposed when asked: element (i, j) is then
    /// row j, column i).
    fn rows_from(&self, h: usize, first: usize, transposed: bool) -> MatRef<'a> {
        let offset = self.offsets[h] + first * self.rs;
        if transposed {
            MatRef::new(self.data, offset, self.cs, self.rs)
        } else {
            MatRef::new(self.data, offset, self.rs, self.cs)
        }
    }
}

/// The mask values, read in place through broadcast strides.
enum MaskValues {
    Additive(F32Operand),
    /// 0/1 bytes (a bool buffer).
    Keep(Arc<Buffer>),
}

struct Mask {
    values: MaskValues,
    /// Offset of each (batch, head)'s `[Lq, Lk]` plane.
    offsets: Vec<usize>,
    rs: usize,
    cs: usize,
}

impl Mask {
    /// `mask` broadcast to the score shape `batch ++ [lq, lk]`.
    fn new(mask: &CpuTensor, kind: AttentionMask, batch: &[usize], lq: usize, lk: usize) -> Option<Mask> {
        let mut scores = batch.to_vec();
        scores.extend([lq, lk]);
        let (values, offset, shape, strides) = match kind {
            AttentionMask::None => return None,
            AttentionMask::Additive => {
                let op = F32Operand::strided(mask);
                let (offset, shape, strides) = (op.offset, op.shape.clone(), op.strides.clone());
                (MaskValues::Additive(op), offset, shape, strides)
            }
            AttentionMask::Boolean => {
                // Bool tensors always own a Bool buffer; anything else is converted once.
                let m = match **mask.buffer() {
                    Buffer::Bool(_) => mask.clone(),
                    _ => CpuTensor::from_bools(
                        mask.shape().to_vec(),
                        mask.to_f64_vec().iter().map(|&v| v != 0.0).collect(),
                    ),
                };
                (MaskValues::Keep(m.buffer().clone()), m.offset(), m.shape().to_vec(), m.strides().to_vec())
            }
        };
        let full = broadcast_strides_to(&shape, &strides, &scores);
        let r = scores.len();
        Some(Mask { values, offsets: index_offsets(batch, &full[..r - 2], offset), rs: full[r - 2], cs: full[r - 1] })
    }

    /// Applies the mask to a `rows × cols` score block (row-major, row length `cols`) whose
    /// top-left element is (query `q0`, key `k0`) of head `h`.
    fn apply(&self, scores: &mut [f32], h: usize, q0: usize, k0: usize, cols: usize) {
        for (i, row) in scores.chunks_mut(cols).enumerate() {
            let start = self.offsets[h] + (q0 + i) * self.rs + k0 * self.cs;
            match &self.values {
                MaskValues::Additive(op) => {
                    let data = op.data();
                    if self.cs == 1 {
                        row.iter_mut().zip(&data[start..start + cols]).for_each(|(s, m)| *s += m);
                    } else {
                        row.iter_mut().enumerate().for_each(|(j, s)| *s += data[start + j * self.cs]);
                    }
                }
                MaskValues::Keep(buf) => {
                    let Buffer::Bool(keep) = &**buf else { continue };
                    for (j, s) in row.iter_mut().enumerate() {
                        if keep[start + j * self.cs] == 0 {
                            *s = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
    }
}

/// Attention over q `[..., Lq, D]`, k `[..., Lk, D]`, v `[..., Lk, Dv]` (any strides), into
/// `[..., Lq, Dv]` or, tokens-major, `[..., Lq, H, Dv]`.
pub(super) fn attention(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    mask: Option<(&CpuTensor, AttentionMask)>,
    scale: f32,
    layout: AttentionLayout,
    out: &TensorType,
) -> CpuTensor {
    let od = out.shape.dims().to_vec();
    // Heads split out of [.., L, H, D] are read in place, rows H·D apart: the keys and values
    // are packed once per task, and a block of queries is read in place by its products. (A
    // dense copy of such q, k and v up front, which paid when every query block packed the
    // keys again, cost 8–10% of the attention in T5 and the DiT once they were packed once.)
    let (q, k, v) = (F32Operand::strided(q), F32Operand::strided(k), F32Operand::strided(v));
    let r = q.shape.len();
    let batch = &q.shape[..r - 2];
    let (lq, d, lk, dv) = (q.shape[r - 2], q.shape[r - 1], k.shape[r - 2], v.shape[r - 1]);
    let (qh, kh, vh) = (Heads::new(&q, batch), Heads::new(&k, batch), Heads::new(&v, batch));
    let mask = mask.and_then(|(m, kind)| Mask::new(m, kind, batch, lq, lk));
    // Each task zeroes its own rows before accumulating into them (`attend_rows`); the tasks
    // cover every row of every head.
    let mut y = OutputBuffer::new(out.shape.numel());
    if out.shape.numel() == 0 {
        // SAFETY: there is nothing to write.
        return unsafe { y.assume_written() }.into_tensor(od);
    }
    let shape = BlockShape { d, lk, dv, scale };
    // Tasks: (head, run of query blocks). A task prepares each key block once for all its
    // query blocks. Heads are split into runs of at least RUN_BLOCKS query blocks (preparing
    // keys then costs a few percent of the products), as far as it takes to give the threads
    // several tasks each (a busy core then delays the end by a small task, not a big one).
    let heads = batch.iter().product::<usize>();
    let q_blocks = lq.div_ceil(Q_BLOCK);
    let runs =
        (TASKS_PER_THREAD * rayon::current_num_threads()).div_ceil(heads).clamp(1, q_blocks.div_ceil(RUN_BLOCKS));
    let run_blocks = q_blocks.div_ceil(runs);
    let runs = q_blocks.div_ceil(run_blocks);
    let base = y.ptr();
    (0..heads * runs).into_par_iter().for_each(|task| {
        let (h, run) = (task / runs, task % runs);
        let q0 = run * run_blocks * Q_BLOCK;
        let rows = (run_blocks * Q_BLOCK).min(lq - q0);
        // SAFETY: tasks own disjoint (head, rows) blocks of `y`, which outlives the loop.
        let out = match layout {
            AttentionLayout::HeadsMajor => MatMut { ptr: base.add((h * lq + q0) * dv), rs: dv, cs: 1 },
            // Each row goes straight into the interleaved output, rows H·Dv apart.
            AttentionLayout::TokensMajor => {
                let per = batch[r - 3];
                let (outer, head) = (h / per, h % per);
                MatMut { ptr: base.add(((outer * lq + q0) * per + head) * dv), rs: per * dv, cs: 1 }
            }
        };
        attend_rows(&shape, &QueryRows { h, q0, rows }, &qh, &kh, &vh, mask.as_ref(), out);
    });
    // SAFETY: the tasks wrote every (head, row) block, and so every element.
    unsafe { y.assume_written() }.into_tensor(od)
}

/// Sizes shared by every block of one attention call.
struct BlockShape {
    d: usize,
    lk: usize,
    dv: usize,
    scale: f32,
}

/// Which query rows a task owns.
struct QueryRows {
    h: usize,
    q0: usize,
    rows: usize,
}

/// Computes the `rows × dv` output block `out` (unit column stride, possibly unwritten memory;
/// the caller guarantees the block is this task's alone).
fn attend_rows(
    s: &BlockShape,
    b: &QueryRows,
    qh: &Heads<'_>,
    kh: &Heads<'_>,
    vh: &Heads<'_>,
    mask: Option<&Mask>,
    out: MatMut,
) {
    for i in 0..b.rows {
        // SAFETY: row `i < rows` of the block is `dv` elements from `ptr + i·rs`, owned by this
        // task; zeroed through the pointer, as it may be unwritten memory.
        unsafe { std::ptr::write_bytes(out.ptr.add(i * out.rs), 0, s.dv) };
    }
    // SAFETY: as above; every row is written (zeroed) before a slice covers it.
    let out_row = |i: usize| unsafe { std::slice::from_raw_parts_mut(out.ptr.add(i * out.rs), s.dv) };
    let mut scores = vec![0f32; Q_BLOCK.min(b.rows) * K_BLOCK.min(s.lk)];
    let mut running_max = vec![f32::NEG_INFINITY; b.rows];
    let mut running_sum = vec![0f32; b.rows];
    let (mut keys, mut values) = (SharedB::default(), SharedB::default());
    for k0 in (0..s.lk).step_by(K_BLOCK) {
        let cols = K_BLOCK.min(s.lk - k0);
        keys.set(s.d, cols, kh.rows_from(b.h, k0, true));
        values.set(cols, s.dv, vh.rows_from(b.h, k0, false));
        for r0 in (0..b.rows).step_by(Q_BLOCK) {
            let rows = Q_BLOCK.min(b.rows - r0);
            let block = &mut scores[..rows * cols];
            let q = qh.rows_from(b.h, b.q0 + r0, false);
            // SAFETY: `block` is a dense rows×cols buffer owned by this task.
            unsafe { gemm_shared(rows, MatMut::dense(block, rows, cols), q, &keys, s.scale, false) };
            if let Some(mask) = mask {
                mask.apply(block, b.h, b.q0 + r0, k0, cols);
            }
            let mut any_live = false;
            for (i, row) in block.chunks_mut(cols).enumerate() {
                let at = r0 + i;
                let new_max = running_max[at].max(row_max(row));
                if new_max == f32::NEG_INFINITY {
                    // Nothing attended so far in this row: these keys weigh nothing.
                    row.fill(0.0);
                    continue;
                }
                any_live = true;
                if new_max > running_max[at] && running_max[at] != f32::NEG_INFINITY {
                    let correction = exp(running_max[at] - new_max);
                    running_sum[at] *= correction;
                    out_row(at).iter_mut().for_each(|o| *o *= correction);
                }
                running_max[at] = new_max;
                running_sum[at] += exp_shifted_sum(row, new_max);
            }
            if any_live {
                // SAFETY: rows r0.. of `out` are this task's.
                unsafe {
                    let dst = MatMut { ptr: out.ptr.add(r0 * out.rs), ..out };
                    gemm_shared(rows, dst, MatRef::new(block, 0, cols, 1), &values, 1.0, true);
                }
            }
        }
    }
    for (i, &total) in running_sum.iter().enumerate() {
        let row = out_row(i);
        if total > 0.0 {
            row.iter_mut().for_each(|o| *o /= total);
        } else {
            row.fill(0.0);
        }
    }
}
