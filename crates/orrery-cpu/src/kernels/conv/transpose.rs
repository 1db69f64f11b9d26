//! Transposed convolution as GEMM (`Wᵀ·x` into columns) followed by a col2im scatter.
//!
//! A task owns a block of output channels of one (batch, group) and walks the input positions
//! in fixed tiles: it computes the block's columns `col[(c, k), i] = Σ_ci w[ci, c, k]·x[ci, i]`
//! with one single-threaded GEMM, then adds each column value into the output position
//! `i·stride + k·dil - pad` it lands on. Because a task is the only writer of its channels and
//! always visits tiles, taps and positions in the same order, the sums are bit-identical for
//! any number of threads.

use super::{unravel3, valid_range, with_scratch, Spatial};
use crate::kernels::linalg::blas::{gemm, MatMut, MatRef, Threads};
use crate::kernels::linalg::operand::F32Operand;
use crate::CpuTensor;
use orrery_ir::{ConvTransposeParams, TensorType};
use rayon::prelude::*;

/// Target GEMM rows (channels × kernel taps) per task.
const TARGET_ROWS: usize = 128;
/// Target size of one tile of columns, in floats.
const TILE_FLOATS: usize = 1 << 16;

struct Geometry {
    cin: usize,
    groups: usize,
    cin_g: usize,
    cout_g: usize,
    sp: Spatial,
}

impl Geometry {
    fn inside(&self, axis: usize, o: isize) -> Option<usize> {
        (0..self.sp.out_dims[axis] as isize).contains(&o).then_some(o as usize)
    }
}

pub(super) fn conv_transpose(
    x: &CpuTensor,
    w: &CpuTensor,
    bias: Option<&CpuTensor>,
    p: &ConvTransposeParams,
    out: &TensorType,
) -> CpuTensor {
    let od = out.shape.dims().to_vec();
    let (xd, wd) = (x.shape(), w.shape());
    let geo = Geometry {
        cin: xd[1],
        groups: p.groups,
        cin_g: xd[1] / p.groups,
        cout_g: wd[1],
        sp: Spatial::new(&xd[2..], &wd[2..], &od[2..], &p.stride, &p.dilation, &p.padding),
    };
    let (x, w) = (F32Operand::dense(x), F32Operand::dense(w));
    let bias = bias.map(F32Operand::dense);
    let (x, w, bias) = (x.dense_slice(), w.dense_slice(), bias.as_ref().map(|b| b.dense_slice()));
    let mut y = vec![0f32; out.shape.numel()];
    if y.is_empty() {
        return CpuTensor::from_vec(od, y);
    }
    let out_vol = geo.sp.out_volume();
    let block_channels = (TARGET_ROWS / geo.sp.kernel_volume()).clamp(1, geo.cout_g.max(1));
    y.par_chunks_mut(geo.cout_g * out_vol).enumerate().for_each(|(bg, group_out)| {
        let (b, g) = (bg / geo.groups, bg % geo.groups);
        group_out.par_chunks_mut(block_channels * out_vol).enumerate().for_each(|(cb, block_out)| {
            let c0 = cb * block_channels;
            let channels = block_out.len() / out_vol;
            let first_channel = g * geo.cout_g + c0;
            for (c, plane) in block_out.chunks_mut(out_vol).enumerate() {
                plane.fill(bias.map_or(0.0, |bias| bias[first_channel + c]));
            }
            let task = Task { b, g, c0, channels };
            channel_block(&geo, &task, x, w, block_out);
        });
    });
    CpuTensor::from_vec(od, y)
}

/// The output channels one task owns: `c0..c0 + channels` (within the group) of batch `b`.
struct Task {
    b: usize,
    g: usize,
    c0: usize,
    channels: usize,
}

/// Accumulates every contribution to the task's `channels × out_vol` block.
fn channel_block(geo: &Geometry, t: &Task, x: &[f32], w: &[f32], block_out: &mut [f32]) {
    let in_vol = geo.sp.in_volume();
    let kvol = geo.sp.kernel_volume();
    let rows = t.channels * kvol;
    let tile = (TILE_FLOATS / rows.max(1)).clamp(16, 4096).min(in_vol).max(1);
    // lhs (row, ci) = w[g·Cin/g + ci, c0 + row / kvol, row % kvol]; rows are contiguous in w.
    let lhs = MatRef::new(w, (t.g * geo.cin_g * geo.cout_g + t.c0) * kvol, 1, geo.cout_g * kvol);
    with_scratch(rows * tile, |scratch| {
        for s0 in (0..in_vol).step_by(tile) {
            let cols = tile.min(in_vol - s0);
            let col = &mut scratch[..rows * cols];
            let rhs = MatRef::new(x, (t.b * geo.cin + t.g * geo.cin_g) * in_vol + s0, in_vol, 1);
            // SAFETY: `col` is a dense rows×cols scratch block owned by this task.
            unsafe {
                gemm(rows, cols, geo.cin_g, MatMut::dense(col, rows, cols), lhs, rhs, 1.0, false, Threads::Single)
            };
            scatter(geo, col, cols, s0, t.channels, block_out);
        }
    });
}

/// Adds `col` (rows (channel, kz, ky, kx) × columns = input positions `s0..s0 + cols`) into the
/// output planes it lands on.
fn scatter(geo: &Geometry, col: &[f32], cols: usize, s0: usize, channels: usize, block_out: &mut [f32]) {
    let out_vol = geo.sp.out_volume();
    let [k0, k1, k2] = geo.sp.kernel;
    let mut rows = col.chunks_exact(cols);
    for plane in block_out.chunks_mut(out_vol).take(channels) {
        for kz in 0..k0 {
            for ky in 0..k1 {
                for kx in 0..k2 {
                    if let Some(row) = rows.next() {
                        scatter_row(geo, row, s0, [kz, ky, kx], plane);
                    }
                }
            }
        }
    }
}

/// One kernel tap of one channel: input positions `s0..` walked one input line at a time.
fn scatter_row(geo: &Geometry, row: &[f32], s0: usize, k: [usize; 3], plane: &mut [f32]) {
    let (step, out_w) = (geo.sp.stride[2], geo.sp.out_dims[2]);
    // Input position `ix` lands on output `ix·step + offset`.
    let offset = geo.sp.position(2, 0, k[2]);
    let mut j = 0;
    while j < row.len() {
        let [iz, iy, ix0] = unravel3(s0 + j, geo.sp.in_dims);
        let run = (geo.sp.in_dims[2] - ix0).min(row.len() - j);
        let oz = geo.inside(0, geo.sp.position(0, iz, k[0]));
        let oy = geo.inside(1, geo.sp.position(1, iy, k[1]));
        if let (Some(oz), Some(oy)) = (oz, oy) {
            let line = &mut plane[(oz * geo.sp.out_dims[1] + oy) * out_w..][..out_w];
            let valid = valid_range(ix0 + run, step, offset, out_w);
            for ix in valid.start.max(ix0)..valid.end.max(ix0) {
                line[((ix * step) as isize + offset) as usize] += row[j + ix - ix0];
            }
        }
        j += run;
    }
}
