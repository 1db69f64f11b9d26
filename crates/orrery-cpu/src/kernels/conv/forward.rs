//! Convolution as GEMMs over the column matrix (im2col), which is never stored whole.
//!
//! For each (batch, group) the output `[Cout/g, P]` (P = output positions) is `W_g · Col`, where
//! `Col` holds the receptive field of every output position (`Cin/g · Kvol` rows, gathered by
//! [`Fields`], padding resolved there). The strategies, most specific first:
//! - 1×1 with stride 1 and no padding ([`pointwise`]): x is the GEMM operand itself;
//! - (k, 1, 1) temporal kernels ([`temporal_taps`], in `taps`): k accumulating GEMMs over x shifted by
//!   whole frames, read in place (1.2–1.6× faster than gathering at the tokenizer's 256-channel
//!   17 × 64 × 64; the same idea for (1, 3, 3) over a zero-padded copy measured no faster);
//! - 3 × 3 spatial kernels with stride 1, enough channels and enough output tiles
//!   ([`winograd`]): F(4, 3) or F(2, 3) (not on AMX) Winograd, α² GEMMs of depth Cin/g over transformed
//!   patches (2–2.1× faster than gathering at the tokenizer's 256 channels × 17 × 64 × 64,
//!   1.4× at 512 × 5 × 16 × 16; within 1e-5 of the float64 convolution, not bit-identical to
//!   the direct one; `ORRERY_WINOGRAD=0` turns it off);
//! - otherwise, on the own GEMM ([`implicit`]): one product per (batch, group) whose operand
//!   the GEMM gathers block by block while packing it (below 512 positions, two products over
//!   the two halves of the depth, summed);
//! - otherwise ([`tiled`], the `gemm` crate): each task gathers the columns of one tile of
//!   [`tile_width`] positions into a per-thread scratch buffer and multiplies it.
//!
//! Determinism: every output element is one GEMM dot product over the whole `Cin/g · Kvol`
//! range (temporal taps: one per tap, summed in tap order; below 512 positions: one per fixed
//! half of the range, the upper added to the lower; Winograd: fixed transforms around α² dot
//! products over Cin/g), and the GEMMs' own results do not depend on threads or tiles
//! (see `blas`), so no reduction depends on threads.

use super::super::elementwise::strided::CHUNK;
use super::fields::Fields;
use super::taps::temporal_taps;
use super::winograd;
use super::{as_3d, with_scratch, Spatial};
use crate::kernels::linalg::blas::{gathers_while_packing, gemm, gemm_gathered, GatheredB, MatMut, MatRef, Threads};
use crate::kernels::linalg::operand::{F32Operand, SharedMut};
use crate::output::output;
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
    pub(super) batch: usize,
    pub(super) cout: usize,
    pub(super) groups: usize,
    pub(super) cin_g: usize,
    pub(super) cout_g: usize,
    pub(super) sp: Spatial,
    pub(super) replicate: bool,
}

impl Geometry {
    pub(super) fn new(x: &[usize], w: &[usize], y: &[usize], p: &ConvParams) -> Geometry {
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

    /// A (k, 1, 1) kernel with stride and dilation 1 and padding in time only (zeros or
    /// replicas): each temporal tap reads the input shifted by whole frames, or one edge frame,
    /// so the taps can be GEMMs reading x in place ([`temporal_taps`]).
    pub(super) fn is_temporal(&self) -> bool {
        let sp = &self.sp;
        sp.kernel[1] == 1
            && sp.kernel[2] == 1
            && sp.kernel[0] > 1
            && sp.stride == [1; 3]
            && sp.dilation == [1; 3]
            && sp.pad[1..] == [0, 0]
            && sp.out_dims[1..] == sp.in_dims[1..]
    }

    /// A 1×1 kernel with stride 1 and no padding: output positions are input positions.
    fn is_pointwise(&self) -> bool {
        let sp = &self.sp;
        sp.kernel == [1; 3] && sp.stride == [1; 3] && sp.pad == [0; 3] && sp.out_dims == sp.in_dims
    }

    /// Which input row a padded position reads: itself, the border (replicate), or none (zeros).
    pub(super) fn source(&self, axis: usize, pos: isize) -> Option<usize> {
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
pub(super) struct Input<'a> {
    pub(super) data: &'a [f32],
    pub(super) offset: usize,
    pub(super) sb: usize,
    pub(super) sc: usize,
    pub(super) s: [usize; 3],
}

/// The weights `[Cout, Cin/g·Kvol]` (dense) and the optional bias.
pub(super) struct Weights<'a> {
    pub(super) w: &'a [f32],
    pub(super) bias: Option<&'a [f32]>,
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
    let weight = w;
    let (w, bias) = (F32Operand::dense(w), bias.map(F32Operand::dense));
    let weights = Weights { w: w.dense_slice(), bias: bias.as_ref().map(|b| b.dense_slice()) };
    let input =
        Input { data: x.data(), offset: x.offset, sb: x.strides[0], sc: x.strides[1], s: as_3d(&x.strides[2..], 0) };
    // Every strategy below writes every element (the bias, or a product that overwrites).
    let mut y = output::<f32>(out.shape.numel());
    if y.is_empty() {
        return y.into_tensor(od);
    }
    let rank = x.shape.len();
    match x.collapsed_stride(2..rank) {
        Some(position_stride) if geo.is_pointwise() => pointwise(&geo, &input, position_stride, &weights, &mut y),
        Some(1) if geo.is_temporal() => temporal_taps(&geo, &input, &weights, &mut y),
        _ => match winograd::choose(&geo, &input) {
            Some(f) => winograd::winograd(&geo, &input, &weights, &mut y, f),
            None if gathers_while_packing() => implicit(&geo, &input, &weights, weight, &mut y),
            None => tiled(&geo, &input, &weights, &mut y),
        },
    }
    y.into_tensor(od)
}

/// Fills each row `co` of the `rows × cols` block at `dst` (row stride `rs`) with `bias[co]`.
///
/// # Safety
/// The block must be valid for writes and owned by the caller.
pub(super) unsafe fn fill_bias(dst: MatMut, rows: usize, cols: usize, bias: &[f32]) {
    for (co, &b) in bias.iter().enumerate().take(rows) {
        // SAFETY: row `co` of the caller's block.
        unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(co * dst.rs), cols) }.fill(b);
    }
}

/// Runs `one(bg, block)` for every (batch, group) block of `y` (`Cout/g × positions` each):
/// the blocks in parallel when one GEMM's `work` (m·n·k) is too small to split, else one
/// after the other with each GEMM split over the pool (the `Threads` passed to `one`).
fn per_block(geo: &Geometry, y: &mut [f32], work: usize, one: impl Fn(usize, &mut [f32], Threads) + Sync) {
    let block = geo.cout_g * geo.sp.out_volume();
    if work >= SPLIT_ONE_GEMM_WORK {
        y.chunks_mut(block).enumerate().for_each(|(bg, dst)| one(bg, dst, Threads::Pool));
    } else {
        y.par_chunks_mut(block).enumerate().for_each(|(bg, dst)| one(bg, dst, Threads::Single));
    }
}

/// 1×1 convolution: `y[b, group] = W_g · x[b, group]` with x's positions as GEMM columns.
fn pointwise(geo: &Geometry, x: &Input<'_>, position_stride: usize, wts: &Weights<'_>, y: &mut [f32]) {
    let positions = geo.sp.out_volume();
    per_block(geo, y, geo.cout_g * positions * geo.cin_g, |bg, dst, threads| {
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
    });
}

/// General convolution on the own GEMM: one product per (batch, group) whose B, the column
/// matrix, is gathered block by block while the GEMM packs it (an implicit im2col). Against
/// [`tiled`], the weights' panels serve a whole packed block of 1024 positions instead of one
/// 64-wide tile, and the gathered values are written once, into the packed panels. With too
/// few positions for the threads to split them, the depth is split in two halves instead.
///
/// With one group, the weights' packs kept with `weight` ([`crate::weight_packs`]) serve as A
/// (the whole depth, or each half), so a call splits no weights on AMX.
fn implicit(geo: &Geometry, x: &Input<'_>, wts: &Weights<'_>, weight: &CpuTensor, y: &mut [f32]) {
    let (positions, depth) = (geo.sp.out_volume(), geo.depth());
    let work = geo.cout_g * positions * depth;
    // Products split over the pool (see `per_block`) with too few positions split the depth.
    let split_depth = work >= SPLIT_ONE_GEMM_WORK && positions < FEW_POSITIONS && depth >= 2 * MIN_DEPTH_HALF;
    let half = depth / 2;
    // Asked for here, on the calling thread, before any product runs on the pool.
    let packed = |k0: usize, k: usize| weight.packs().filter(|_| geo.groups == 1)?.conv_lhs(weight, k0, k);
    let whole = if split_depth { None } else { packed(0, depth) };
    let halves = if split_depth { [packed(0, half), packed(half, depth - half)] } else { [None, None] };
    per_block(geo, y, work, |bg, dst, threads| {
        let (b, g) = (bg / geo.groups, bg % geo.groups);
        let fields = Fields::new(x, geo, b, g);
        let dst = MatMut::dense(dst, geo.cout_g, positions);
        let bias = wts.bias.map(|bias| &bias[g * geo.cout_g..(g + 1) * geo.cout_g]);
        let lhs = MatRef::new(wts.w, g * geo.cout_g * depth, depth, 1);
        // SAFETY (the bias fill and both products): `dst` is this (batch, group)'s own dense
        // output block; the own GEMM runs here (checked by the caller); `fields` answers every
        // row below depth and every position.
        if let Some(bias) = bias {
            unsafe { fill_bias(dst, geo.cout_g, positions, bias) };
        }
        if split_depth {
            // Too few positions to split by columns: threads splitting the rows would each
            // gather every column. Split the depth instead, in two fixed halves, one product
            // each, gathered while packing: every column gathered once, straight into its
            // panels. The lower half accumulates onto the bias in `dst`, the upper one into
            // scratch, added after; the same sums for any thread count. At most two threads
            // work on such a product: below 512 positions it is small (the tokenizer's lowest
            // resolution of a tiny video), and more halves would add more sums to add.
            // Rows k0..k0 + k of the depth, into the block at `at`, on this thread.
            let product = |k0: usize, k: usize, at: SharedMut, accumulate: bool| {
                let lhs = MatRef::new(wts.w, g * geo.cout_g * depth + k0, depth, 1);
                let lhs_packed = halves[usize::from(k0 > 0)].as_deref();
                let dst = MatMut { ptr: at.add(0), rs: positions, cs: 1 };
                let source = DepthFrom { fields: &fields, k: k0 };
                // SAFETY: `at` is `dst` (this block's) or this call's scratch, each written by
                // one of the two products only; the rest as above.
                unsafe {
                    gemm_gathered(geo.cout_g, positions, k, dst, lhs, lhs_packed, &source, accumulate, Threads::Single)
                };
            };
            with_scratch(geo.cout_g * positions, |upper| {
                let (lower_at, upper_at) = (SharedMut(dst.ptr), SharedMut(upper.as_mut_ptr()));
                rayon::join(
                    || product(0, half, lower_at, bias.is_some()),
                    || product(half, depth - half, upper_at, false),
                );
                // SAFETY: `dst` is this block's dense `Cout/g × positions` output.
                let lower = unsafe { std::slice::from_raw_parts_mut(dst.ptr, geo.cout_g * positions) };
                lower.par_chunks_mut(CHUNK).zip(upper.par_chunks(CHUNK)).for_each(|(l, u)| {
                    l.iter_mut().zip(u).for_each(|(l, &u)| *l += u);
                });
            });
        } else {
            let lhs_packed = whole.as_deref();
            unsafe {
                gemm_gathered(geo.cout_g, positions, depth, dst, lhs, lhs_packed, &fields, bias.is_some(), threads)
            };
        }
    });
}

/// Rows `k..` of a convolution's column matrix: the upper half of [`implicit`]'s depth split.
struct DepthFrom<'a> {
    fields: &'a Fields<'a>,
    k: usize,
}

impl GatheredB for DepthFrom<'_> {
    fn panels(&self, k0: usize, count: usize, j0: usize, width: usize, panel: usize, dst: &mut [f32]) {
        self.fields.write(self.k + k0, count, j0, width, panel, dst);
    }
}

/// Below this many output positions (eight 64-column panels) a split product splits rows.
const FEW_POSITIONS: usize = 512;
/// Fewest rows of the column matrix in each half of a depth split (a GEMM pass of 256 steps).
const MIN_DEPTH_HALF: usize = 256;

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
            Fields::new(x, geo, b, g).write(0, depth, p0, cols, cols, col);
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
