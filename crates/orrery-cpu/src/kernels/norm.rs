//! Normalisations (layer, RMS, group and batch norm) and rotary embeddings.
//!
//! Statistics are exact-order computations per row or per group: f64 sums over eight
//! interleaved lanes, two passes (the mean, then squared deviations from it), so they never
//! depend on how rows are spread over threads. The mean is then subtracted in f32 as a
//! high part and a low part, which keeps `x - mean` accurate even when the mean is large
//! compared with the spread.

use super::elementwise::strided::{dense, typed, CHUNK};
use super::reduce::sum_f64;
use crate::output::{fill_output_chunks, output, Output};
use crate::{CpuError, CpuTensor};
use orrery_ir::{Op, RopeStyle, TensorType};
use rayon::prelude::*;
use std::borrow::Cow;

pub(super) fn execute(op: &Op, inputs: &[&CpuTensor], out: &TensorType) -> Result<CpuTensor, CpuError> {
    let dims = out.shape.dims().to_vec();
    let x = f32_data(op, inputs[0])?;
    // Per-channel parameters, dense. Rope reads its cos/sin tables through their (usually
    // broadcast) views instead, so they are not densified.
    let params = match op {
        Op::Rope { .. } => Vec::new(),
        _ => inputs[1..].iter().map(|t| f32_data(op, t)).collect::<Result<Vec<_>, _>>()?,
    };
    if x.is_empty() {
        return Ok(CpuTensor::from_vec(dims, Vec::<f32>::new()));
    }
    let d = dims[dims.len() - 1];
    match op {
        Op::LayerNorm { eps, .. } => {
            let (w, b) = (params.first().map(|p| &p[..]), params.get(1).map(|p| &p[..]));
            return Ok(for_rows(&x, d, |x, y| layer_norm_row(x, y, *eps, w, b)).into_tensor(dims));
        }
        Op::RmsNorm { eps, .. } => {
            let w = params.first().map(|p| &p[..]);
            return Ok(for_rows(&x, d, |x, y| rms_norm_row(x, y, *eps, w)).into_tensor(dims));
        }
        _ => {}
    }
    let mut y = output::<f32>(x.len());
    match op {
        Op::GroupNorm { groups, eps, .. } => group_norm(&x, &mut y, &dims, *groups, *eps, &params),
        Op::BatchNorm { eps, .. } => batch_norm(&x, &mut y, &dims, *eps, &params),
        Op::Rope { style } => rope(op, &x, &mut y, &dims, [inputs[1], inputs[2]], *style)?,
        _ => return Err(CpuError::kernel(op, "not a normalisation")),
    }
    Ok(y.into_tensor(dims))
}

fn f32_data<'a>(op: &Op, t: &'a CpuTensor) -> Result<Cow<'a, [f32]>, CpuError> {
    dense::<f32>(t).ok_or_else(|| CpuError::kernel(op, format!("input of dtype {} is not f32", t.dtype())))
}

/// The output of `f(x_row, y_row)` for every row of length `d`, rows handed out in groups of
/// about [`CHUNK`] elements.
fn for_rows(x: &[f32], d: usize, f: impl Fn(&[f32], &mut [f32]) + Sync + Send) -> Output {
    let per_chunk = (CHUNK / d).max(1) * d;
    fill_output_chunks(
        x.len(),
        per_chunk,
        || (),
        |_, i, yc| {
            for (yr, xr) in yc.chunks_exact_mut(d).zip(x[i * per_chunk..].chunks_exact(d)) {
                f(xr, yr);
            }
        },
    )
}

/// `Σ (x - mean)²` in f64, eight interleaved lanes.
fn sum_sq_dev(xs: &[f32], mean: f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            let d = c[k] as f64 - mean;
            acc[k] += d * d;
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in tail {
        sum += (v as f64 - mean) * (v as f64 - mean);
    }
    sum
}

/// Mean as an f32 high part and an f32 low part, plus `1/√(var + eps)`, of a group.
struct Stats {
    mean_hi: f32,
    mean_lo: f32,
    rstd: f64,
}

fn stats(xs: &[f32], eps: f64) -> Stats {
    let n = xs.len() as f64;
    let mean = sum_f64(xs) / n;
    let var = sum_sq_dev(xs, mean) / n;
    let mean_hi = mean as f32;
    Stats { mean_hi, mean_lo: (mean - mean_hi as f64) as f32, rstd: 1.0 / (var + eps).sqrt() }
}

impl Stats {
    /// `x - mean`, accurate to an f32 rounding: `x - mean_hi` is exact when x is near the mean.
    #[inline(always)]
    fn centered(&self, x: f32) -> f32 {
        (x - self.mean_hi) - self.mean_lo
    }
}

fn layer_norm_row(x: &[f32], y: &mut [f32], eps: f64, w: Option<&[f32]>, b: Option<&[f32]>) {
    let s = stats(x, eps);
    let rstd = s.rstd as f32;
    match (w, b) {
        (Some(w), Some(b)) => {
            for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                *y = s.centered(x) * rstd * w + b;
            }
        }
        _ => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = s.centered(x) * rstd;
            }
        }
    }
}

fn rms_norm_row(x: &[f32], y: &mut [f32], eps: f64, w: Option<&[f32]>) {
    let mean_square = sum_sq_dev(x, 0.0) / x.len() as f64;
    let scale = (1.0 / (mean_square + eps).sqrt()) as f32;
    match w {
        Some(w) => {
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * scale * w;
            }
        }
        None => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * scale;
            }
        }
    }
}

/// x `[N, C, *]`: each (sample, group) is one contiguous block of `C/groups` channels, and one
/// task.
fn group_norm(x: &[f32], y: &mut [f32], dims: &[usize], groups: usize, eps: f64, params: &[Cow<[f32]>]) {
    let channels = dims[1];
    let spatial: usize = dims[2..].iter().product();
    let per_group = channels / groups;
    let block = per_group * spatial;
    if block == 0 {
        return;
    }
    y.par_chunks_mut(block).zip(x.par_chunks(block)).enumerate().for_each(|(task, (yb, xb))| {
        let s = stats(xb, eps);
        let first_channel = task % groups * per_group;
        for (k, (yc, xc)) in yb.chunks_exact_mut(spatial).zip(xb.chunks_exact(spatial)).enumerate() {
            let c = first_channel + k;
            let (scale, shift) = match params {
                [w, b] => ((s.rstd * w[c] as f64) as f32, b[c]),
                _ => (s.rstd as f32, 0.0),
            };
            for (y, &x) in yc.iter_mut().zip(xc) {
                *y = s.centered(x) * scale + shift;
            }
        }
    });
}

/// Inference batch norm: per channel `(x - mean[c]) · (w[c] / √(var[c] + eps)) + b[c]`.
fn batch_norm(x: &[f32], y: &mut [f32], dims: &[usize], eps: f64, params: &[Cow<[f32]>]) {
    let channels = dims[1];
    let spatial: usize = dims[2..].iter().product::<usize>();
    if spatial == 0 {
        return;
    }
    let (mean, var) = (&params[0], &params[1]);
    let per_chunk = (CHUNK / spatial).max(1) * spatial;
    y.par_chunks_mut(per_chunk).zip(x.par_chunks(per_chunk)).enumerate().for_each(|(i, (yc, xc))| {
        let first_row = i * per_chunk / spatial;
        for (r, (yr, xr)) in yc.chunks_exact_mut(spatial).zip(xc.chunks_exact(spatial)).enumerate() {
            let c = (first_row + r) % channels;
            let inv_std = 1.0 / (var[c] as f64 + eps).sqrt();
            let (scale, shift) = match params {
                [_, _, w, b] => ((inv_std * w[c] as f64) as f32, b[c]),
                _ => (inv_std as f32, 0.0),
            };
            for (y, &x) in yr.iter_mut().zip(xr) {
                *y = (x - mean[c]) * scale + shift;
            }
        }
    });
}

/// `y = x · cos + rotate(x) · sin` row by row; cos and sin are read through their broadcast
/// views (often a `[L, D]` table shared by every batch and head).
fn rope(
    op: &Op,
    x: &[f32],
    y: &mut [f32],
    dims: &[usize],
    tables: [&CpuTensor; 2],
    style: RopeStyle,
) -> Result<(), CpuError> {
    let d = dims[dims.len() - 1];
    let [cos, sin] = tables.map(|t| t.expand(dims));
    let (cos_buf, sin_buf) = (typed::<f32>(op, tables[0])?, typed::<f32>(op, tables[1])?);
    let per_chunk = (CHUNK / d).max(1) * d;
    y.par_chunks_mut(per_chunk).zip(x.par_chunks(per_chunk)).enumerate().for_each(|(i, (yc, xc))| {
        let first_row = i * per_chunk / d;
        let (mut cos_scratch, mut sin_scratch) = (Vec::new(), Vec::new());
        for (r, (yr, xr)) in yc.chunks_exact_mut(d).zip(xc.chunks_exact(d)).enumerate() {
            let c = table_row(&cos, cos_buf, first_row + r, &mut cos_scratch);
            let s = table_row(&sin, sin_buf, first_row + r, &mut sin_scratch);
            rope_row(xr, yr, c, s, style);
        }
    });
    Ok(())
}

/// Row `row` (counting rows row-major over all dims but the last) of a broadcast view whose
/// buffer is `buf`: borrowed when its elements are adjacent, else gathered into `scratch`.
fn table_row<'a>(view: &CpuTensor, buf: &'a [f32], row: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
    let (dims, strides) = (view.shape(), view.strides());
    let last = dims.len() - 1;
    let mut rest = row;
    let mut offset = view.offset();
    for axis in (0..last).rev() {
        offset += rest % dims[axis] * strides[axis];
        rest /= dims[axis];
    }
    let (d, step) = (dims[last], strides[last]);
    if step == 1 {
        return &buf[offset..offset + d];
    }
    scratch.clear();
    scratch.extend((0..d).map(|i| buf[offset + i * step]));
    scratch
}

fn rope_row(x: &[f32], y: &mut [f32], c: &[f32], s: &[f32], style: RopeStyle) {
    let h = x.len() / 2;
    match style {
        RopeStyle::RotateHalf => {
            let (x1, x2) = x.split_at(h);
            let (y1, y2) = y.split_at_mut(h);
            let (c1, c2) = c.split_at(h);
            let (s1, s2) = s.split_at(h);
            for i in 0..h {
                y1[i] = x1[i] * c1[i] - x2[i] * s1[i];
                y2[i] = x2[i] * c2[i] + x1[i] * s2[i];
            }
        }
        RopeStyle::Interleaved => {
            for (((y, x), c), s) in
                y.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(c.chunks_exact(2)).zip(s.chunks_exact(2))
            {
                y[0] = x[0] * c[0] - x[1] * s[0];
                y[1] = x[1] * c[1] + x[0] * s[1];
            }
        }
    }
}
