//! Layout kernels. Reshape, permute, slice and expand return zero-copy views; the others
//! (concat, pad, repeat, index_select, gather, embedding, arange) write a dense output, in
//! parallel over fixed-size chunks, copying runs of adjacent elements where they can.

use super::elementwise::strided::{
    dense, densified, map_view, tensor_from, tensor_from_output, typed, with_scalar_type, Scalar, CHUNK,
};
use crate::output::output;
use crate::{CpuError, CpuTensor};
use half::{bf16, f16};
use orrery_ir::{DType, Op, PadMode, TensorType};
use rayon::prelude::*;
use std::borrow::Cow;

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    if let Op::Arange { start, step, len, dtype } = op {
        return Ok(arange(*start, *step, *len, *dtype));
    }
    let x = inputs[0];
    match op {
        Op::Reshape { shape } => Ok(densified(x).reshape(shape)),
        Op::Permute { perm } => Ok(x.permute(perm)),
        Op::Slice { axis, start, end, step } => Ok(x.slice(*axis, *start, *end, *step)),
        Op::Expand { shape } => Ok(x.expand(shape)),
        Op::Concat { axis } => {
            with_scalar_type!(out.dtype, T => concat::<T>(op, inputs, *axis, out))
        }
        Op::Pad { pads, mode } => with_scalar_type!(out.dtype, T => {
            let maps: Vec<Vec<Option<usize>>> = pads
                .iter()
                .zip(x.shape())
                .zip(out.shape.dims())
                .map(|((&(before, _), &d), &n)| (0..n).map(|i| pad_source(i, before, d, *mode)).collect())
                .collect();
            let fill = match mode {
                PadMode::Constant(v) => T::from_constant(*v, out.dtype),
                _ => T::default(),
            };
            remap::<T>(op, x, x.shape(), &maps, fill, out)
        }),
        Op::Repeat { repeats } => with_scalar_type!(out.dtype, T => {
            // x gains leading size-1 dims up to the rank of `repeats`, then tiles.
            let mut in_dims = vec![1; repeats.len() - x.shape().len()];
            in_dims.extend_from_slice(x.shape());
            let maps: Vec<Vec<Option<usize>>> = in_dims
                .iter()
                .zip(out.shape.dims())
                .map(|(&d, &n)| (0..n).map(|i| Some(i % d)).collect())
                .collect();
            remap::<T>(op, x, &in_dims, &maps, T::default(), out)
        }),
        Op::IndexSelect { axis } => {
            with_scalar_type!(out.dtype, T => index_select::<T>(op, x, inputs[1], *axis, out))
        }
        Op::Gather { axis } => {
            with_scalar_type!(out.dtype, T => gather::<T>(op, x, inputs[1], *axis, out))
        }
        Op::Embedding => match x.dtype() {
            DType::F32 => embedding::<f32>(op, x, inputs[1], out),
            DType::F16 => embedding::<f16>(op, x, inputs[1], out),
            DType::BF16 => embedding::<bf16>(op, x, inputs[1], out),
            other => Err(CpuError::kernel(op, format!("table must be f32, f16 or bf16, got {other}"))),
        },
        _ => Err(CpuError::kernel(op, "not a layout op")),
    }
}

/// `start + i·step` computed in f64, then converted like a cast (integers truncate).
fn arange(start: f64, step: f64, len: usize, dtype: DType) -> CpuTensor {
    let value = |i: usize| start + i as f64 * step;
    match dtype {
        DType::I64 => CpuTensor::from_vec(vec![len], (0..len).map(|i| value(i) as i64).collect::<Vec<_>>()),
        DType::I32 => CpuTensor::from_vec(vec![len], (0..len).map(|i| value(i) as i64 as i32).collect::<Vec<_>>()),
        _ => CpuTensor::from_vec(vec![len], (0..len).map(|i| value(i) as f32).collect::<Vec<_>>()),
    }
}

fn dense_data<'a, T: Scalar>(op: &Op, t: &'a CpuTensor) -> Result<Cow<'a, [T]>, CpuError> {
    dense::<T>(t).ok_or_else(|| CpuError::kernel(op, format!("input buffer does not hold {}", t.dtype())))
}

/// Index tensors of any integer dtype, as i64 in row-major order.
fn index_values(op: &Op, t: &CpuTensor) -> Result<Vec<i64>, CpuError> {
    Ok(match t.dtype() {
        DType::I64 => map_view(t, typed::<i64>(op, t)?, |v| v).into_vec(),
        DType::I32 => map_view(t, typed::<i32>(op, t)?, |v| v as i64).into_vec(),
        DType::U8 => map_view(t, typed::<u8>(op, t)?, |v| v as i64).into_vec(),
        other => return Err(CpuError::kernel(op, format!("indices must be i64, i32 or u8, got {other}"))),
    })
}

/// Checks `v` against a dim of size `size`; negative values count from the end only where the
/// op allows it (index_select does; gather and embedding, like torch, do not).
fn resolve_index(op: &Op, v: i64, size: usize, axis: usize, negative_from_end: bool) -> Result<usize, CpuError> {
    let resolved = if v < 0 && negative_from_end { v + size as i64 } else { v };
    if resolved < 0 || resolved >= size as i64 {
        return Err(CpuError::kernel(op, format!("index {v} is out of range for dim {axis} of size {size}")));
    }
    Ok(resolved as usize)
}

fn concat<T: Scalar>(op: &Op, inputs: &[&CpuTensor], axis: usize, out: &TensorType) -> Result<CpuTensor, CpuError> {
    let dims = out.shape.dims();
    let inner: usize = dims[axis + 1..].iter().product();
    let parts = inputs.iter().map(|t| dense_data::<T>(op, t)).collect::<Result<Vec<_>, _>>()?;
    // Each output row (one index of the dims before `axis`) is the inputs' rows side by side.
    let widths: Vec<usize> = inputs.iter().map(|t| t.shape()[axis] * inner).collect();
    let row: usize = widths.iter().sum();
    // Every element is copied below.
    let mut data = output::<T>(out.shape.numel());
    data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut pos = c * CHUNK;
        let mut dst = chunk;
        while !dst.is_empty() {
            let (o, mut col) = (pos / row, pos % row);
            let mut k = 0;
            while col >= widths[k] {
                col -= widths[k];
                k += 1;
            }
            let take = (widths[k] - col).min(dst.len());
            let (head, rest) = std::mem::take(&mut dst).split_at_mut(take);
            head.copy_from_slice(&parts[k][o * widths[k] + col..][..take]);
            dst = rest;
            pos += take;
        }
    });
    Ok(tensor_from_output(dims, out.dtype, data))
}

/// Where output index `i` of a padded dim reads from (`None`: the fill value).
fn pad_source(i: usize, before: usize, size: usize, mode: PadMode) -> Option<usize> {
    let (pos, d) = (i as i64 - before as i64, size as i64);
    if (0..d).contains(&pos) {
        return Some(pos as usize);
    }
    match mode {
        PadMode::Constant(_) => None,
        PadMode::Replicate => Some(pos.clamp(0, d - 1) as usize),
        // Mirror about the edge element without repeating it (padding < size, checked by the IR).
        PadMode::Reflect if pos < 0 => Some((-pos) as usize),
        PadMode::Reflect => Some((2 * (d - 1) - pos) as usize),
    }
}

/// A run of the last output dim: `len` elements from `source..` of the input row, or fill.
struct Run {
    start: usize,
    len: usize,
    source: Option<usize>,
}

/// Builds each output element from one input element (or `fill`): along every dim `a`, output
/// index `i` reads input index `maps[a][i]`. x is seen with dims `in_dims` (same element
/// count, same rank as the output).
fn remap<T: Scalar>(
    op: &Op,
    x: &CpuTensor,
    in_dims: &[usize],
    maps: &[Vec<Option<usize>>],
    fill: T,
    out: &TensorType,
) -> Result<CpuTensor, CpuError> {
    let src = dense_data::<T>(op, x)?;
    let dims = out.shape.dims();
    // Every element is written below: copied, or the fill.
    let mut data = output::<T>(out.shape.numel());
    if data.is_empty() || dims.is_empty() {
        let n = data.len();
        data.copy_from_slice(&src[..n]);
        return Ok(tensor_from_output(dims, out.dtype, data));
    }
    let last = dims.len() - 1;
    let in_strides = orrery_ir::shape::contiguous_strides(in_dims);
    let runs = runs_of(&maps[last]);
    let row_len = dims[last];
    let rows_per_chunk = (CHUNK / row_len).max(1);
    data.par_chunks_mut(rows_per_chunk * row_len).enumerate().for_each(|(c, chunk)| {
        for (r, dst) in chunk.chunks_exact_mut(row_len).enumerate() {
            let mut rest = c * rows_per_chunk + r;
            let mut base = Some(0);
            for a in (0..last).rev() {
                let i = rest % dims[a];
                rest /= dims[a];
                base = base.zip(maps[a][i]).map(|(b, s)| b + s * in_strides[a]);
            }
            let Some(base) = base else {
                dst.fill(fill);
                continue;
            };
            // The runs cover the row.
            for run in &runs {
                let dst = &mut dst[run.start..run.start + run.len];
                match run.source {
                    Some(s) => dst.copy_from_slice(&src[base + s..base + s + run.len]),
                    None => dst.fill(fill),
                }
            }
        }
    });
    Ok(tensor_from_output(dims, out.dtype, data))
}

/// Splits a last-dim map into runs of consecutive sources (or of fill).
fn runs_of(map: &[Option<usize>]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (i, &source) in map.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if run.source.map(|s| s + run.len) == source || (run.source.is_none() && source.is_none()) => {
                run.len += 1;
            }
            _ => runs.push(Run { start: i, len: 1, source }),
        }
    }
    runs
}

fn index_select<T: Scalar>(
    op: &Op,
    x: &CpuTensor,
    indices: &CpuTensor,
    axis: usize,
    out: &TensorType,
) -> Result<CpuTensor, CpuError> {
    let d = x.shape()[axis];
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let picks = index_values(op, indices)?
        .into_iter()
        .map(|v| resolve_index(op, v, d, axis, true))
        .collect::<Result<Vec<_>, _>>()?;
    let src = dense_data::<T>(op, x)?;
    let mut data = vec![T::default(); out.shape.numel()];
    if !data.is_empty() {
        // Output rows of `inner` elements: row q is (outer index q / n, pick q % n).
        let rows_per_chunk = (CHUNK / inner).max(1);
        data.par_chunks_mut(rows_per_chunk * inner).enumerate().for_each(|(c, chunk)| {
            for (r, dst) in chunk.chunks_exact_mut(inner).enumerate() {
                let q = c * rows_per_chunk + r;
                let (o, pick) = (q / picks.len(), picks[q % picks.len()]);
                dst.copy_from_slice(&src[(o * d + pick) * inner..][..inner]);
            }
        });
    }
    Ok(tensor_from(out.shape.dims(), out.dtype, data))
}

/// torch `gather`, reading x through its strides (no copy of x).
fn gather<T: Scalar>(
    op: &Op,
    x: &CpuTensor,
    index: &CpuTensor,
    axis: usize,
    out: &TensorType,
) -> Result<CpuTensor, CpuError> {
    let d = x.shape()[axis];
    let picks = index_values(op, index)?;
    // Checked up front, in order, so the error names the first bad index whatever the threads.
    for &v in &picks {
        resolve_index(op, v, d, axis, false)?;
    }
    let (buf, strides) = (typed::<T>(op, x)?, x.strides());
    let dims = out.shape.dims();
    let last = dims.len() - 1;
    let row_len = dims[last];
    let mut data = vec![T::default(); out.shape.numel()];
    if !data.is_empty() {
        let rows_per_chunk = (CHUNK / row_len).max(1);
        data.par_chunks_mut(rows_per_chunk * row_len).enumerate().for_each(|(c, chunk)| {
            for (r, dst) in chunk.chunks_exact_mut(row_len).enumerate() {
                let row = c * rows_per_chunk + r;
                let mut rest = row;
                let mut base = x.offset();
                for a in (0..last).rev() {
                    if a != axis {
                        base += rest % dims[a] * strides[a];
                    }
                    rest /= dims[a];
                }
                let along = if axis == last { 0 } else { strides[last] };
                let picks = &picks[row * row_len..][..row_len];
                for (j, (y, &v)) in dst.iter_mut().zip(picks).enumerate() {
                    *y = buf[base + j * along + v as usize * strides[axis]];
                }
            }
        });
    }
    Ok(tensor_from(dims, out.dtype, data))
}

/// Table element types an embedding widens to f32.
trait Widen: Scalar {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Widen for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

fn embedding<T: Widen>(op: &Op, table: &CpuTensor, ids: &CpuTensor, out: &TensorType) -> Result<CpuTensor, CpuError> {
    let (vocab, width) = (table.shape()[0], table.shape()[1]);
    let rows = index_values(op, ids)?
        .into_iter()
        .map(|v| {
            resolve_index(op, v, vocab, 0, false)
                .map_err(|_| CpuError::kernel(op, format!("id {v} is out of range for a table of {vocab} rows")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let src = dense_data::<T>(op, table)?;
    // Every row is written below.
    let mut data = output::<f32>(out.shape.numel());
    if !data.is_empty() {
        let rows_per_chunk = (CHUNK / width).max(1);
        data.par_chunks_mut(rows_per_chunk * width).enumerate().for_each(|(c, chunk)| {
            for (r, dst) in chunk.chunks_exact_mut(width).enumerate() {
                let row = rows[c * rows_per_chunk + r];
                for (y, &v) in dst.iter_mut().zip(&src[row * width..][..width]) {
                    *y = v.widen();
                }
            }
        });
    }
    Ok(data.into_tensor(out.shape.0.clone()))
}
