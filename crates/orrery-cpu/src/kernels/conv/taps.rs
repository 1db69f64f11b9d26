//! (k, 1, 1) convolutions as k accumulating GEMMs over the input shifted by whole frames: the
//! causal video tokenizer's temporal convolutions, x read in place with no gathered copy.

use super::forward::{fill_bias, Geometry, Input, Weights};
use super::{shared_scratch, valid_range};
use crate::kernels::linalg::blas::{gemm, MatMut, MatRef, Threads};
use crate::kernels::linalg::operand::SharedMut;
use rayon::prelude::*;

/// Most output positions per tile of [`temporal_taps`]: enough columns to amortise packing each
/// tap's weights, few enough that the output tile stays in L2 across the taps.
const TAP_TILE: usize = 1024;
/// Output channels per task of [`temporal_taps`]: splitting channels too keeps small volumes
/// (a 512-channel conv over 5 × 16 × 16) in several balanced tasks.
const TAP_ROWS: usize = 256;

/// A (k, 1, 1) convolution as k accumulating GEMMs per tile of output positions: tap `kz` of
/// output frame `t` reads input frame `t + kz − pad`, i.e. x's positions shifted by whole
/// frames, so x is read in place with no gathered copy (positions dense, checked by the
/// caller). Taps that would read padding skip those output frames (zero padding adds nothing)
/// or read the edge frame in place (replicate padding: the causal video convolutions).
/// Each output element sums its taps in order kz = 0, 1, …, each tap a dot product over the
/// input channels: fixed, whatever the thread count.
pub(super) fn temporal_taps(geo: &Geometry, x: &Input<'_>, wts: &Weights<'_>, y: &mut [f32]) {
    taps_split_or_not(geo, x, wts, y, split_pays(geo))
}

/// [`temporal_taps`] with the weights split by tap first, or read in place.
fn taps_split_or_not(geo: &Geometry, x: &Input<'_>, wts: &Weights<'_>, y: &mut [f32], split: bool) {
    let sp = &geo.sp;
    let (frames, plane) = (sp.out_dims[0], sp.out_dims[1] * sp.out_dims[2]);
    let positions = frames * plane;
    let kt = sp.kernel[0];
    let TapTiling { col_tiles, width, row_blocks, rows_per } = TapTiling::new(geo);
    let tiles = col_tiles * row_blocks;
    let zeros = vec![0f32; geo.cout_g];
    let y_ptr = SharedMut(y.as_mut_ptr());
    // Tap kz's weights as a matrix [Cout, Cin/g]: read in place from `[Cout, Cin/g, kt]`, its
    // steps lie kt floats apart and every GEMM call packs its rows; split, they are read in place.
    let run = |split: Option<&[f32]>| {
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
            let row = g * geo.cout_g + r0;
            for kz in 0..kt {
                let lhs = match split {
                    Some(taps) => MatRef::new(taps, (kz * geo.cout + row) * geo.cin_g, geo.cin_g, 1),
                    None => MatRef::new(wts.w, row * geo.cin_g * kt + kz, geo.cin_g * kt, kt),
                };
                // Output positions lo..hi (within this tile) read x's positions from `source` on.
                let tap = |lo: usize, hi: usize, source: usize| {
                    if lo < hi {
                        let rhs = MatRef::new(x.data, channels + source, x.sc, 1);
                        // SAFETY: see above; `rhs` reads x only.
                        unsafe { gemm(rows, hi - lo, geo.cin_g, dst_at(lo), lhs, rhs, 1.0, true, Threads::Single) };
                    }
                };
                // Output frames whose tap kz reads a real input frame: x shifted by whole frames.
                let shift = kz as isize - sp.pad[0] as isize;
                let valid = valid_range(frames, 1, shift, sp.in_dims[0]);
                let (lo, hi) = ((valid.start * plane).max(p0), (valid.end * plane).min(p1));
                tap(lo, hi, (lo as isize + shift * plane as isize).max(0) as usize);
                // With replicate padding the frames before read the first input frame, those after
                // the last; with zero padding they add nothing.
                if geo.replicate && sp.in_dims[0] > 0 {
                    let edges =
                        (0..valid.start).map(|t| (t, 0)).chain((valid.end..frames).map(|t| (t, sp.in_dims[0] - 1)));
                    for (t, frame) in edges {
                        let (lo, hi) = ((t * plane).max(p0), ((t + 1) * plane).min(p1));
                        tap(lo, hi, frame * plane + lo.saturating_sub(t * plane));
                    }
                }
            }
        });
    };
    if split {
        shared_scratch(wts.w.len(), |taps| {
            split_taps(wts.w, kt, taps);
            run(Some(taps))
        })
    } else {
        run(None)
    }
}

/// Whether [`temporal_taps`] splits the weights by tap: when the taps' rows would otherwise be
/// packed more than once each (several column tiles, or edge frames read separately).
fn split_pays(geo: &Geometry) -> bool {
    TapTiling::new(geo).col_tiles > 1 || (geo.replicate && geo.sp.pad[0] > 0)
}

/// How [`temporal_taps`] divides the output: balanced column tiles (a multiple of 16 wide, the
/// GEMM micro-kernel's height) and channel blocks; both depend on the shape only.
struct TapTiling {
    col_tiles: usize,
    width: usize,
    row_blocks: usize,
    rows_per: usize,
}

impl TapTiling {
    fn new(geo: &Geometry) -> TapTiling {
        let positions = geo.sp.out_volume();
        let col_tiles = positions.div_ceil(TAP_TILE);
        let width = positions.div_ceil(col_tiles).div_ceil(16) * 16;
        let row_blocks = geo.cout_g.div_ceil(TAP_ROWS);
        TapTiling { col_tiles: positions.div_ceil(width), width, row_blocks, rows_per: geo.cout_g.div_ceil(row_blocks) }
    }
}

/// The weights `[Cout, Cin/g, kt]` as kt matrices `[Cout, Cin/g]`, tap after tap, in `taps`.
/// Read in place, tap kz's steps lie kt floats apart, which the GEMM packs into panels on every
/// call; replicate padding adds a call per edge frame (6 calls per task for the causal (3, 1, 1)
/// kernel), each packing its rows again (about 6% of the tokenizer decoder's time at 512
/// channels over 3 × 8 × 8). Split once, every call reads its rows in place: the same values,
/// so the same bits.
fn split_taps(w: &[f32], kt: usize, taps: &mut [f32]) {
    let per_tap = w.len() / kt;
    // Blocks of weight rows per task (whole rows of kt floats).
    const BLOCK: usize = 1 << 14;
    let taps_at = SharedMut(taps.as_mut_ptr());
    w.par_chunks(BLOCK * kt).enumerate().for_each(|(i, block)| {
        let rows = block.len() / kt;
        for kz in 0..kt {
            // SAFETY: floats i·BLOCK.. i·BLOCK + rows of tap kz belong to this block alone, and
            // `taps` (w.len() floats) outlives the loop.
            let dst = unsafe { std::slice::from_raw_parts_mut(taps_at.add(kz * per_tap + i * BLOCK), rows) };
            dst.iter_mut().zip(block.iter().skip(kz).step_by(kt)).for_each(|(d, &v)| *d = v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::test_values as values;
    use orrery_ir::{ConvPadMode, ConvParams};

    /// Splitting the weights by tap changes where the GEMM reads A from, not what it computes:
    /// the outputs are bit-identical both ways, with replicate and zero padding, groups, a
    /// partial 6-row panel and several column tiles.
    #[test]
    fn split_taps_keep_the_bits() {
        // (x dims [B, Cin, T, H, W], Cout, kt, time padding, groups, replicate)
        let cases = [
            ([1, 16, 3, 8, 8], 20, 3, (2, 0), 1, true),
            ([2, 12, 5, 20, 21], 10, 3, (1, 1), 2, false),
            ([1, 8, 4, 3, 5], 14, 2, (3, 1), 2, true),
        ];
        for (i, (xd, cout, kt, tpad, groups, replicate)) in cases.into_iter().enumerate() {
            let p = ConvParams {
                stride: vec![1; 3],
                dilation: vec![1; 3],
                padding: vec![tpad, (0, 0), (0, 0)],
                pad_mode: if replicate { ConvPadMode::Replicate } else { ConvPadMode::Zeros },
                groups,
                has_bias: true,
            };
            let wd = [cout, xd[1] / groups, kt, 1, 1];
            let yd = [xd[0], cout, xd[2] + tpad.0 + tpad.1 - kt + 1, xd[3], xd[4]];
            let geo = Geometry::new(&xd, &wd, &yd, &p);
            assert!(geo.is_temporal());
            let x = values(i as u64, xd.iter().product());
            let (w, bias) = (values(100 + i as u64, wd.iter().product()), values(200 + i as u64, cout));
            let plane = xd[3] * xd[4];
            let input =
                Input { data: &x, offset: 0, sb: xd[1] * xd[2] * plane, sc: xd[2] * plane, s: [plane, xd[4], 1] };
            let weights = Weights { w: &w, bias: Some(&bias) };
            let run = |split: bool| {
                let mut y = vec![0f32; yd.iter().product()];
                taps_split_or_not(&geo, &input, &weights, &mut y, split);
                y
            };
            let (split, in_place) = (run(true), run(false));
            assert!(split.iter().zip(&in_place).all(|(a, b)| a.to_bits() == b.to_bits()), "case {i}");
            assert!(split.iter().any(|&v| v != 0.0), "case {i}");
        }
    }
}
