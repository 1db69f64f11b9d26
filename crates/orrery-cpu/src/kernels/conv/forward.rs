//! Convolution as tiled im2col + GEMM.
//!
//! For each (batch, group) the output `[Cout/g, P]` (P = output positions) is `W_g · Col`, where
//! `Col` holds the receptive field of every output position (`Cin/g · Kvol` rows). `Col` is
//! never built whole: each task builds the columns of one tile of [`tile_width`] positions in a
//! per-thread scratch buffer and runs one single-threaded GEMM into its own output columns.
//! Padding is resolved while gathering (zeros, or the border element for replicate padding),
//! so the GEMM sees plain dense data. 1×1 convolutions with stride 1 and no padding read x as
//! the GEMM operand directly, with no gather at all, and (k, 1, 1) temporal convolutions run as
//! k accumulating GEMMs over x shifted by whole frames ([`temporal_taps`]: 1.2–1.6× faster than
//! gathering at the tokenizer's 256-channel 17 × 64 × 64; the same idea for (1, 3, 3) over a
//! zero-padded copy measured no faster than gathering, so spatial kernels gather).
//!
//! Determinism: tiles have sizes fixed by the problem shape and each output element is one
//! GEMM dot product over the whole `Cin/g · Kvol` range (temporal taps: one per tap, summed in
//! tap order), so no reduction depends on threads.

use super::{as_3d, unravel3, valid_range, with_scratch, Spatial};
use crate::kernels::linalg::blas::{gemm, MatMut, MatRef, Threads};
use crate::kernels::linalg::operand::{F32Operand, SharedMut};
use crate::CpuTensor;
use orrery_ir::{ConvPadMode, ConvParams, TensorType};
use rayon::prelude::*;

/// Target size of one tile's gathered columns, in floats (fits the L2 cache with room for the
/// weights' panels).
const TILE_FLOATS: usize = 1 << 16;
/// Work (m·n·k) from which one pointwise GEMM is split over threads instead of the batch.
const SPLIT_ONE_GEMM_WORK: usize = 1 << 21;

/// Shapes of one convolution, spatial dims widened to 3.
pub(super) struct Geometry {
    batch: usize,
    cout: usize,
    groups: usize,
    cin_g: usize,
    cout_g: usize,
    sp: Spatial,
    replicate: bool,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], y: &[usize], p: &ConvParams) -> Geometry {
        let pads: Vec<usize> = p.padding.iter().map(|&(before, _)| before).collect();
        Geometry {
            batch: x[0],
            cout: w[0],
            groups: p.groups,
            cin_g: x[1] / p.groups,
            cout_g: w[0] / p.groups,
            sp: Spatial::new(&x[2..], &w[2..], &y[2..], &p.stride, &p.dilation, &pads),
            replicate: p.pad_mode == ConvPadMode::Replicate,
        }
    }

    /// Rows of the gathered column matrix (the GEMM's k).
    fn depth(&self) -> usize {
        self.cin_g * self.sp.kernel_volume()
    }

    /// A (k, 1, 1) kernel with stride and dilation 1 and zero padding in time only: each
    /// temporal tap reads the input shifted by whole frames, so the taps can be GEMMs reading x
    /// in place ([`temporal_taps`]).
    fn is_temporal(&self) -> bool {
        let sp = &self.sp;
        sp.kernel[1] == 1
            && sp.kernel[2] == 1
            && sp.kernel[0] > 1
            && sp.stride == [1; 3]
            && sp.dilation == [1; 3]
            && sp.pad[1..] == [0, 0]
            && (sp.pad[0] == 0 || !self.replicate)
            && sp.out_dims[1..] == sp.in_dims[1..]
    }

    /// A 1×1 kernel with stride 1 and no padding: output positions are input positions.
    fn is_pointwise(&self) -> bool {
        let sp = &self.sp;
        sp.kernel == [1; 3] && sp.stride == [1; 3] && sp.pad == [0; 3] && sp.out_dims == sp.in_dims
    }

    /// Which input row a padded position reads: itself, the border (replicate), or none (zeros).
    fn source(&self, axis: usize, pos: isize) -> Option<usize> {
        let len = self.sp.in_dims[axis];
        if (0..len as isize).contains(&pos) {
            Some(pos as usize)
        } else if self.replicate && len > 0 {
            Some(pos.clamp(0, len as isize - 1) as usize)
        } else {
            None
        }
    }
}

/// x read in place: element (b, c, z, y, x) is at `offset + b·sb + c·sc + Σ s[i]·pos[i]`.
struct Input<'a> {
    data: &'a [f32],
    offset: usize,
    sb: usize,
    sc: usize,
    s: [usize; 3],
}

/// The weights `[Cout, Cin/g·Kvol]` (dense) and the optional bias.
struct Weights<'a> {
    w: &'a [f32],
    bias: Option<&'a [f32]>,
}

pub(super) fn conv(
    x: &CpuTensor,
    w: &CpuTensor,
    bias: Option<&CpuTensor>,
    p: &ConvParams,
    out: &TensorType,
) -> CpuTensor {
    let od = out.shape.dims().to_vec();
    let geo = Geometry::new(x.shape(), w.shape(), &od, p);
    let x = F32Operand::strided(x);
    let (w, bias) = (F32Operand::dense(w), bias.map(F32Operand::dense));
    let weights = Weights { w: w.dense_slice(), bias: bias.as_ref().map(|b| b.dense_slice()) };
    let input =
        Input { data: x.data(), offset: x.offset, sb: x.strides[0], sc: x.strides[1], s: as_3d(&x.strides[2..], 0) };
    let mut y = vec![0f32; out.shape.numel()];
    if y.is_empty() {
        return CpuTensor::from_vec(od, y);
    }
    let rank = x.shape.len();
    match x.collapsed_stride(2..rank) {
        Some(position_stride) if geo.is_pointwise() => pointwise(&geo, &input, position_stride, &weights, &mut y),
        Some(1) if geo.is_temporal() => temporal_taps(&geo, &input, &weights, &mut y),
        _ => tiled(&geo, &input, &weights, &mut y),
    }
    CpuTensor::from_vec(od, y)
}

/// Fills each row `co` of the `rows × cols` block at `dst` (row stride `rs`) with `bias[co]`.
///
/// # Safety
/// The block must be valid for writes and owned by the caller.
unsafe fn fill_bias(dst: MatMut, rows: usize, cols: usize, bias: &[f32]) {
    for (co, &b) in bias.iter().enumerate().take(rows) {
        // SAFETY: row `co` of the caller's block.
        unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(co * dst.rs), cols) }.fill(b);
    }
}

/// 1×1 convolution: `y[b, group] = W_g · x[b, group]` with x's positions as GEMM columns.
fn pointwise(geo: &Geometry, x: &Input<'_>, position_stride: usize, wts: &Weights<'_>, y: &mut [f32]) {
    let positions = geo.sp.out_volume();
    let block = geo.cout_g * positions;
    let work = geo.cout_g * positions * geo.cin_g;
    let threads = if work >= SPLIT_ONE_GEMM_WORK { Threads::Pool } else { Threads::Single };
    let one = |bg: usize, dst: &mut [f32]| {
        let (b, g) = (bg / geo.groups, bg % geo.groups);
        let dst = MatMut::dense(dst, geo.cout_g, positions);
        let bias = wts.bias.map(|bias| &bias[g * geo.cout_g..(g + 1) * geo.cout_g]);
        let lhs = MatRef::new(wts.w, g * geo.cout_g * geo.cin_g, geo.cin_g, 1);
        let rhs = MatRef::new(x.data, x.offset + b * x.sb + g * geo.cin_g * x.sc, x.sc, position_stride);
        // SAFETY: `dst` is this (batch, group)'s own dense output block.
        unsafe {
            if let Some(bias) = bias {
                fill_bias(dst, geo.cout_g, positions, bias);
            }
            gemm(geo.cout_g, positions, geo.cin_g, dst, lhs, rhs, 1.0, bias.is_some(), threads);
        }
    };
    match threads {
        Threads::Pool => y.chunks_mut(block).enumerate().for_each(|(bg, dst)| one(bg, dst)),
        Threads::Single => y.par_chunks_mut(block).enumerate().for_each(|(bg, dst)| one(bg, dst)),
    }
}

/// Most output positions per tile of [`temporal_taps`]: enough columns to amortise packing each
/// tap's weights, few enough that the output tile stays in L2 across the taps.
const TAP_TILE: usize = 1024;
/// Output channels per task of [`temporal_taps`]: splitting channels too keeps small volumes
/// (a 512-channel conv over 5 × 16 × 16) in several balanced tasks.
const TAP_ROWS: usize = 256;

/// A (k, 1, 1) convolution as k accumulating GEMMs per tile of output positions: tap `kz` of
/// output frame `t` reads input frame `t + kz − pad`, i.e. x's positions shifted by whole
/// frames, so x is read in place with no gathered copy (positions dense, checked by the
/// caller). Taps that would read padding skip those output frames (zero padding adds nothing).
/// Each output element sums its taps in order kz = 0, 1, …, each tap a dot product over the
/// input channels: fixed, whatever the thread count.
fn temporal_taps(geo: &Geometry, x: &Input<'_>, wts: &Weights<'_>, y: &mut [f32]) {
    let sp = &geo.sp;
    let (frames, plane) = (sp.out_dims[0], sp.out_dims[1] * sp.out_dims[2]);
    let positions = frames * plane;
    let kt = sp.kernel[0];
    // Balanced column tiles (a multiple of 16 wide, the GEMM micro-kernel's height) and
    // channel blocks; both depend on the shape only.
    let col_tiles = positions.div_ceil(TAP_TILE);
    let width = positions.div_ceil(col_tiles).div_ceil(16) * 16;
    let col_tiles = positions.div_ceil(width);
    let row_blocks = geo.cout_g.div_ceil(TAP_ROWS);
    let rows_per = geo.cout_g.div_ceil(row_blocks);
    let tiles = col_tiles * row_blocks;
    let zeros = vec![0f32; geo.cout_g];
    let y_ptr = SharedMut(y.as_mut_ptr());
    (0..geo.batch * geo.groups * tiles).into_par_iter().for_each(|task| {
        let (bg, tile) = (task / tiles, task % tiles);
        let (b, g) = (bg / geo.groups, bg % geo.groups);
        let (rb, ct) = (tile / col_tiles, tile % col_tiles);
        let (r0, rows) = (rb * rows_per, rows_per.min(geo.cout_g - rb * rows_per));
        let (p0, p1) = (ct * width, ((ct + 1) * width).min(positions));
        let first = (b * geo.cout + g * geo.cout_g + r0) * positions;
        let dst_at = |p: usize| MatMut { ptr: y_ptr.add(first + p), rs: positions, cs: 1 };
        let start = wts.bias.map_or(&zeros[..], |bias| &bias[g * geo.cout_g..(g + 1) * geo.cout_g]);
        // SAFETY (all writes below): rows r0.. and columns p0..p1 of this (batch, group)'s
        // output belong to this task alone, and `y` outlives the parallel loop. The taps
        // accumulate onto the bias (or zero).
        unsafe { fill_bias(dst_at(p0), rows, p1 - p0, &start[r0..r0 + rows]) };
        let channels = x.offset + b * x.sb + g * geo.cin_g * x.sc;
        for kz in 0..kt {
            // Output frames whose tap kz reads a real input frame, clipped to this tile.
            let shift = kz as isize - sp.pad[0] as isize;
            let valid = valid_range(frames, 1, shift, sp.in_dims[0]);
            let (lo, hi) = ((valid.start * plane).max(p0), (valid.end * plane).min(p1));
            if lo >= hi {
                continue;
            }
            let source = (lo as isize + shift * plane as isize) as usize;
            // Tap kz of the weights [Cout, Cin/g, kt, 1, 1]: row stride Cin/g·kt, column kt.
            let lhs = MatRef::new(wts.w, (g * geo.cout_g + r0) * geo.cin_g * kt + kz, geo.cin_g * kt, kt);
            let rhs = MatRef::new(x.data, channels + source, x.sc, 1);
            // SAFETY: see above; `rhs` reads x only.
            unsafe { gemm(rows, hi - lo, geo.cin_g, dst_at(lo), lhs, rhs, 1.0, true, Threads::Single) };
        }
    });
}

/// Output positions per tile: about [`TILE_FLOATS`] gathered values, within fixed bounds, and a
/// multiple of 16 (the GEMM micro-kernel's height once `gemm` transposes the problem) so that
/// only the last tile runs edge kernels.
fn tile_width(depth: usize, positions: usize) -> usize {
    ((TILE_FLOATS / depth.max(1)).clamp(64, 1024) / 16 * 16).min(positions).max(1)
}

/// General convolution: parallel over (batch, group, tile of output positions).
fn tiled(geo: &Geometry, x: &Input<'_>, wts: &Weights<'_>, y: &mut [f32]) {
    let positions = geo.sp.out_volume();
    let depth = geo.depth();
    let width = tile_width(depth, positions);
    let tiles = positions.div_ceil(width);
    let y_ptr = SharedMut(y.as_mut_ptr());
    (0..geo.batch * geo.groups * tiles).into_par_iter().for_each(|task| {
        let (bg, tile) = (task / tiles, task % tiles);
        let (b, g) = (bg / geo.groups, bg % geo.groups);
        let p0 = tile * width;
        let cols = width.min(positions - p0);
        with_scratch(depth * cols, |col| {
            gather_columns(col, cols, x, geo, b, g, p0);
            // Columns p0..p0+cols of rows g·Cout/g.. of batch b: owned by this task only.
            let first = (b * geo.cout + g * geo.cout_g) * positions + p0;
            let dst = MatMut { ptr: y_ptr.add(first), rs: positions, cs: 1 };
            let bias = wts.bias.map(|bias| &bias[g * geo.cout_g..(g + 1) * geo.cout_g]);
            let lhs = MatRef::new(wts.w, g * geo.cout_g * depth, depth, 1);
            let rhs = MatRef::new(col, 0, cols, 1);
            // SAFETY: the block lies inside `y` (rows < Cout/g, columns < cols, within batch b)
            // and no other task writes it; `y` outlives the parallel loop.
            unsafe {
                if let Some(bias) = bias {
                    fill_bias(dst, geo.cout_g, cols, bias);
                }
                gemm(geo.cout_g, cols, depth, dst, lhs, rhs, 1.0, bias.is_some(), Threads::Single);
            }
        });
    });
}

/// Fills `col` (`Cin/g·Kvol` rows × `cols`, row-major) with the receptive fields of output
/// positions `p0..p0 + cols` of batch `b`, group `g`; row order is (channel, kz, ky, kx), the
/// order of the weights.
fn gather_columns(col: &mut [f32], cols: usize, x: &Input<'_>, geo: &Geometry, b: usize, g: usize, p0: usize) {
    let [k0, k1, k2] = geo.sp.kernel;
    let mut rows = col.chunks_exact_mut(cols);
    for ci in 0..geo.cin_g {
        let channel = x.offset + b * x.sb + (g * geo.cin_g + ci) * x.sc;
        for kz in 0..k0 {
            for ky in 0..k1 {
                for kx in 0..k2 {
                    if let Some(row) = rows.next() {
                        gather_row(row, x, channel, geo, [kz, ky, kx], p0);
                    }
                }
            }
        }
    }
}

/// One row of the column matrix: kernel tap `k` of one channel, for consecutive output
/// positions from `p0`, walked one output line (constant z, y) at a time.
fn gather_row(row: &mut [f32], x: &Input<'_>, channel: usize, geo: &Geometry, k: [usize; 3], p0: usize) {
    let mut j = 0;
    while j < row.len() {
        let [oz, oy, ox0] = unravel3(p0 + j, geo.sp.out_dims);
        let run = (geo.sp.out_dims[2] - ox0).min(row.len() - j);
        let dst = &mut row[j..j + run];
        let iz = geo.source(0, geo.sp.position(0, oz, k[0]));
        let iy = geo.source(1, geo.sp.position(1, oy, k[1]));
        match (iz, iy) {
            (Some(iz), Some(iy)) => gather_line(dst, x, channel + iz * x.s[0] + iy * x.s[1], geo, k[2], ox0),
            _ => dst.fill(0.0),
        }
        j += run;
    }
}

/// Output positions `ox0..ox0 + dst.len()` of one line, kernel column `kx`, reading the input
/// line starting at `line`.
fn gather_line(dst: &mut [f32], x: &Input<'_>, line: usize, geo: &Geometry, kx: usize, ox0: usize) {
    let (step, len, sx) = (geo.sp.stride[2], geo.sp.in_dims[2], x.s[2]);
    // Output position `ox` reads input `ox·step + offset`.
    let offset = geo.sp.position(2, 0, kx);
    let valid = valid_range(ox0 + dst.len(), step, offset, len);
    let (lo, hi) = (valid.start.max(ox0) - ox0, valid.end.max(ox0) - ox0);
    let (low_edge, high_edge) =
        if geo.replicate && len > 0 { (x.data[line], x.data[line + (len - 1) * sx]) } else { (0.0, 0.0) };
    dst[..lo].fill(low_edge);
    dst[hi..].fill(high_edge);
    if lo == hi {
        return;
    }
    let first = (((ox0 + lo) * step) as isize + offset) as usize;
    let middle = &mut dst[lo..hi];
    if step == 1 && sx == 1 {
        middle.copy_from_slice(&x.data[line + first..line + first + middle.len()]);
    } else {
        for (t, v) in middle.iter_mut().enumerate() {
            *v = x.data[line + (first + t * step) * sx];
        }
    }
}
