//! Reductions (sum, mean, max, min over axes; argmax) and softmax / log-softmax.
//!
//! Every input is first viewed as dense `[outer, len, inner]` data with `len` the reduced
//! extent: directly when the reduced axes are adjacent (size-1 dims ignored), else after a
//! transposing copy that moves them last. Each output element is then folded over its `len`
//! inputs in a fixed order: rows (`inner == 1`) with eight interleaved accumulators, long rows
//! in fixed blocks of [`BLOCK`] whose partial results are combined in order, and columns
//! (`inner > 1`) one row after the other. None of this depends on the thread count.
//! Sums accumulate in f64.

use super::elementwise::math::{exp_f32, nan_max, nan_min};
use super::elementwise::strided::{dense, CHUNK};
use crate::{CpuError, CpuTensor};
use orrery_ir::{Op, ReduceOp, TensorType};
use rayon::prelude::*;
use std::borrow::Cow;

/// Rows longer than this are folded in blocks of this many elements (in parallel), and the
/// block results combined in order.
const BLOCK: usize = 4 * CHUNK;

/// Columns folded together by one task in the `inner > 1` layout.
const TILE: usize = 256;

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let x = inputs[0];
    let dims = out.shape.dims().to_vec();
    match op {
        Op::Reduce { op: f, axes, .. } => {
            let (data, split) = to_split(op, x, axes)?;
            let values = reduce(op, *f, &data, split)?;
            Ok(CpuTensor::from_vec(dims, values))
        }
        Op::ArgMax { axis, .. } => {
            let (data, split) = to_split(op, x, &[*axis])?;
            Ok(CpuTensor::from_vec(dims, argmax(&data, split)))
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            let log = matches!(op, Op::LogSoftmax { .. });
            let (data, split) = to_split(op, x, &[*axis])?;
            Ok(CpuTensor::from_vec(dims, softmax(&data, split, log)))
        }
        _ => Err(CpuError::kernel(op, "not a reduction")),
    }
}

/// Dense data seen as `[outer, len, inner]`, `len` being the reduced extent.
#[derive(Clone, Copy, Debug)]
struct Split {
    outer: usize,
    len: usize,
    inner: usize,
}

/// x's data in `[outer, len, inner]` layout for reducing `axes`. The output elements, in
/// `(outer, inner)` order, are the kept axes in row-major order, as the op's output wants.
fn to_split<'a>(op: &Op, x: &'a CpuTensor, axes: &[usize]) -> Result<(Cow<'a, [f32]>, Split), CpuError> {
    let dims = x.shape();
    // Size-1 dims may count as kept or reduced; ignoring them lets more cases stay copy-free.
    let real: Vec<usize> = (0..dims.len()).filter(|&a| dims[a] != 1).collect();
    let reduced: Vec<usize> = real.iter().copied().filter(|a| axes.contains(a)).collect();
    let product = |list: &[usize]| list.iter().map(|&a| dims[a]).product::<usize>();
    let first = real.iter().position(|a| axes.contains(a));
    let adjacent = first.is_none_or(|p| real[p..p + reduced.len()].iter().all(|a| axes.contains(a)));
    let (view, split) = if adjacent {
        let p = first.unwrap_or(real.len());
        let split =
            Split { outer: product(&real[..p]), len: product(&reduced), inner: product(&real[p + reduced.len()..]) };
        (Cow::Borrowed(x), split)
    } else {
        let kept: Vec<usize> = (0..dims.len()).filter(|a| !axes.contains(a)).collect();
        let perm: Vec<usize> = kept.iter().chain(axes).copied().collect();
        let split = Split { outer: product(&kept), len: product(axes), inner: 1 };
        (Cow::Owned(x.permute(&perm)), split)
    };
    let data = match view {
        Cow::Borrowed(v) => dense::<f32>(v),
        Cow::Owned(v) => dense::<f32>(&v).map(|d| Cow::Owned(d.into_owned())),
    };
    let data = data.ok_or_else(|| CpuError::kernel(op, format!("input of dtype {} is not f32", x.dtype())))?;
    Ok((data, split))
}

fn reduce(op: &Op, f: ReduceOp, data: &[f32], s: Split) -> Result<Vec<f32>, CpuError> {
    if s.len == 0 && s.outer * s.inner > 0 && matches!(f, ReduceOp::Max | ReduceOp::Min) {
        return Err(CpuError::kernel(op, "the reduced axes hold no elements, so there is no maximum or minimum"));
    }
    let n = s.len as f64;
    Ok(match (f, s.inner) {
        (ReduceOp::Sum, 1) => fold_rows(data, s, sum_f64, |a, b| a + b).into_iter().map(|v| v as f32).collect(),
        (ReduceOp::Mean, 1) => fold_rows(data, s, sum_f64, |a, b| a + b).into_iter().map(|v| (v / n) as f32).collect(),
        (ReduceOp::Max, 1) => fold_rows(data, s, max_f32, nan_max),
        (ReduceOp::Min, 1) => fold_rows(data, s, min_f32, nan_min),
        (ReduceOp::Sum, _) => {
            fold_columns(data, s, |_| 0.0, |acc, v, _| *acc += v as f64).into_iter().map(|v| v as f32).collect()
        }
        (ReduceOp::Mean, _) => {
            fold_columns(data, s, |_| 0.0, |acc, v, _| *acc += v as f64).into_iter().map(|v| (v / n) as f32).collect()
        }
        (ReduceOp::Max, _) => fold_columns(data, s, |_| f32::NEG_INFINITY, |acc, v, _| *acc = nan_max(*acc, v)),
        (ReduceOp::Min, _) => fold_columns(data, s, |_| f32::INFINITY, |acc, v, _| *acc = nan_min(*acc, v)),
    })
}

/// `leaf` of every row (`inner == 1`), rows longer than [`BLOCK`] as blocks whose results
/// `combine` joins left to right. The split depends on the shape only.
fn fold_rows<A: Copy + Send>(
    data: &[f32],
    s: Split,
    leaf: impl Fn(&[f32]) -> A + Sync,
    combine: impl Fn(A, A) -> A,
) -> Vec<A> {
    let blocks = s.len.div_ceil(BLOCK).max(1);
    let per_task = (CHUNK / s.len.clamp(1, BLOCK)).max(1);
    let partials: Vec<A> = (0..s.outer * blocks)
        .into_par_iter()
        .with_min_len(per_task)
        .map(|t| {
            let row = &data[t / blocks * s.len..][..s.len];
            let start = (t % blocks) * BLOCK;
            leaf(&row[start..(start + BLOCK).min(s.len)])
        })
        .collect();
    partials.chunks(blocks).map(|p| p[1..].iter().fold(p[0], |a, &b| combine(a, b))).collect()
}

/// For each output `(o, i)` of the `inner > 1` layout, starts from `init(flat)` and applies
/// `step(acc, x[o, r, i], flat)` for r = 0, 1, … in order (`flat = o·inner + i`). Tiles of
/// [`TILE`] columns are independent tasks.
fn fold_columns<A: Copy + Send>(
    data: &[f32],
    s: Split,
    init: impl Fn(usize) -> A + Sync,
    step: impl Fn(&mut A, f32, usize) + Sync,
) -> Vec<A> {
    let mut out: Vec<A> = (0..s.outer * s.inner).map(&init).collect();
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(s.inner).enumerate().for_each(|(o, row)| {
        row.par_chunks_mut(TILE).enumerate().for_each(|(t, tile)| {
            let first = t * TILE;
            for r in 0..s.len {
                let src = &data[(o * s.len + r) * s.inner + first..][..tile.len()];
                for (j, (acc, &v)) in tile.iter_mut().zip(src).enumerate() {
                    step(acc, v, o * s.inner + first + j);
                }
            }
        });
    });
    out
}

/// Sum in f64 with eight interleaved accumulators (vectorisable, fixed order).
#[inline]
pub(super) fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k] as f64;
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in tail {
        sum += v as f64;
    }
    sum
}

/// Maximum with NaN propagation, eight lanes at a time; -inf for an empty slice.
#[inline]
fn max_f32(xs: &[f32]) -> f32 {
    lanes(xs, f32::NEG_INFINITY, nan_max)
}

#[inline]
fn min_f32(xs: &[f32]) -> f32 {
    lanes(xs, f32::INFINITY, nan_min)
}

#[inline]
fn lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = f(acc[k], c[k]);
        }
    }
    let mut result = acc.into_iter().fold(init, &f);
    for &v in tail {
        result = f(result, v);
    }
    result
}

/// Index of the first maximum; a NaN counts as the maximum (torch `argmax`).
fn argmax(data: &[f32], s: Split) -> Vec<i64> {
    if s.inner > 1 {
        return argmax_columns(data, s);
    }
    let per_task = (CHUNK / s.len.max(1)).max(1);
    (0..s.outer)
        .into_par_iter()
        .with_min_len(per_task)
        .map(|o| {
            let row = &data[o * s.len..][..s.len];
            let mut best = 0;
            for (i, &v) in row.iter().enumerate().skip(1) {
                if beats(v, row[best]) {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

/// Whether `v` replaces `best` as the running maximum: strictly greater, or the first NaN.
#[inline(always)]
fn beats(v: f32, best: f32) -> bool {
    !best.is_nan() && (v.is_nan() || v > best)
}

/// Argmax for the `inner > 1` layout: per column tile, scan rows in order.
fn argmax_columns(data: &[f32], s: Split) -> Vec<i64> {
    let mut out = vec![0i64; s.outer * s.inner];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(s.inner).enumerate().for_each(|(o, row)| {
        row.par_chunks_mut(TILE).enumerate().for_each(|(t, tile)| {
            let first = t * TILE;
            let mut best = data[o * s.len * s.inner + first..][..tile.len()].to_vec();
            for r in 1..s.len {
                let src = &data[(o * s.len + r) * s.inner + first..][..tile.len()];
                for ((b, idx), &v) in best.iter_mut().zip(tile.iter_mut()).zip(src) {
                    if beats(v, *b) {
                        *b = v;
                        *idx = r as i64;
                    }
                }
            }
        });
    });
    out
}

/// Softmax (or log-softmax) along `len`. Rows: see [`softmax_row_portable`]. Columns: the max
/// and the sum of each column first, then every output element from those.
fn softmax(data: &[f32], s: Split, log: bool) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    if out.is_empty() {
        return out;
    }
    if s.inner == 1 {
        let rows_per_chunk = (CHUNK / s.len).max(1);
        out.par_chunks_mut(rows_per_chunk * s.len).enumerate().for_each(|(c, chunk)| {
            let first = c * rows_per_chunk * s.len;
            for (y, x) in chunk.chunks_exact_mut(s.len).zip(data[first..].chunks_exact(s.len)) {
                softmax_row(x, y, log);
            }
        });
        return out;
    }
    let max = fold_columns(data, s, |_| f32::NEG_INFINITY, |acc, v, _| *acc = nan_max(*acc, v));
    let sum = fold_columns(data, s, |_| 0f64, |acc, v, flat| *acc += exp_f32(v - max[flat]) as f64);
    // Per column: ln Σ for log-softmax, 1/Σ for softmax.
    let scale: Vec<f64> = sum.iter().map(|&t| if log { t.ln() } else { 1.0 / t }).collect();
    out.par_chunks_mut(s.inner).enumerate().for_each(|(q, y)| {
        let base = q / s.len * s.inner;
        let x = &data[q * s.inner..][..s.inner];
        let (max, scale) = (&max[base..base + s.inner], &scale[base..base + s.inner]);
        for (((y, &v), &m), &k) in y.iter_mut().zip(x).zip(max).zip(scale) {
            *y = if log { (v as f64 - m as f64 - k) as f32 } else { (exp_f32(v - m) as f64 * k) as f32 };
        }
    });
    out
}

/// One softmax row, with the loops compiled for AVX2 when the CPU has it (exp is
/// compute-bound). The operations and their order are the same either way, so are the bits.
fn softmax_row(x: &[f32], y: &mut [f32], log: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { softmax_row_avx2(x, y, log) };
        return;
    }
    softmax_row_portable(x, y, log);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_row_avx2(x: &[f32], y: &mut [f32], log: bool) {
    softmax_row_portable(x, y, log);
}

/// Max, then `e = exp(x - max)` into `y`, their f64 sum, then one scaling pass.
#[inline(always)]
fn softmax_row_portable(x: &[f32], y: &mut [f32], log: bool) {
    let max = max_f32(x);
    for (e, &v) in y.iter_mut().zip(x) {
        *e = exp_f32(v - max);
    }
    let total = sum_f64(y);
    if log {
        let shift = max as f64 + total.ln();
        for (out, &v) in y.iter_mut().zip(x) {
            *out = (v as f64 - shift) as f32;
        }
    } else {
        let inv = 1.0 / total;
        for e in y.iter_mut() {
            *e = (*e as f64 * inv) as f32;
        }
    }
}
