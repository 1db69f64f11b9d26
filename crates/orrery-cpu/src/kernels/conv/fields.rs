//! Receptive fields: the rows of a convolution's column matrix, gathered from the input.
//!
//! For one (batch, group), row (channel, kz, ky, kx) of the column matrix (the weights' order)
//! holds, for each output position, the input element that kernel tap (kz, ky, kx) of that
//! channel reads, or the padding value. Padding is resolved here (zeros, or the border
//! element for replicate padding), so the GEMM sees plain dense data.
//!
//! A block of rows is written with its output positions split once into line runs (constant
//! z and y, within one panel of the destination); each row then walks those runs with its tap
//! counters advanced, not divided out, and copies each run's interior as fixed-size blocks.
//! Rows are written one after the other across the whole block, so the input is read along
//! its lines. (Row by row per 64-column panel, through a division-heavy path and `memcpy`
//! calls, gathering took 15% of the VAE decoder.)

use super::forward::{Geometry, Input};
use super::{unravel3, valid_range};
use crate::kernels::linalg::blas::GatheredB;

/// The column matrix of one (batch, group), gathered on demand.
pub(super) struct Fields<'a> {
    x: &'a Input<'a>,
    geo: &'a Geometry,
    /// Where channel 0 of the group starts in x.
    channels: usize,
}

/// Output positions of one line: `len` of them from (z, y, x0), written from `at` on (row 0).
#[derive(Clone, Copy)]
struct Run {
    at: usize,
    len: usize,
    z: usize,
    y: usize,
    x0: usize,
}

/// What one kernel column reads for one run, the same on every line: outputs `lo..hi` of the
/// run read the input line from element offset `first` on; those before `lo` and from `hi` on
/// fall into the padding.
struct Span {
    lo: usize,
    hi: usize,
    first: usize,
}

impl<'a> Fields<'a> {
    pub(super) fn new(x: &'a Input<'a>, geo: &'a Geometry, batch: usize, group: usize) -> Fields<'a> {
        Fields { x, geo, channels: x.offset + batch * x.sb + group * geo.cin_g * x.sc }
    }

    /// Writes rows `k0 .. k0 + count`, output positions `j0 .. j0 + width`, in panels of
    /// `panel` columns as [`GatheredB::panels`] lays them out.
    pub(super) fn write(&self, k0: usize, count: usize, j0: usize, width: usize, panel: usize, dst: &mut [f32]) {
        if count == 0 || width == 0 {
            return;
        }
        let sp = &self.geo.sp;
        let runs = line_runs(j0, width, sp.out_dims, panel, count);
        // What each kernel column reads of each run, the same for every line.
        let spans: Vec<Vec<Span>> =
            (0..sp.kernel[2]).map(|kx| runs.iter().map(|r| self.span(r, kx)).collect()).collect();
        // Row k0's channel and tap; later rows advance them.
        let [_, k1, k2] = sp.kernel;
        let taps = sp.kernel_volume();
        let (mut channel, tap) = (k0 / taps, k0 % taps);
        let [mut kz, mut ky, mut kx] = [tap / (k1 * k2), tap / k2 % k1, tap % k2];
        // Where each run's input line starts (None: a padding line), for the current
        // (channel, kz, ky); the rows of one kernel line (kx = 0, 1, …) share it.
        let mut lines: Vec<Option<usize>> = Vec::with_capacity(runs.len());
        for i in 0..count {
            if i == 0 || kx == 0 {
                let plane = self.channels + channel * self.x.sc;
                lines.clear();
                lines.extend(runs.iter().map(|run| {
                    let iz = self.geo.source(0, sp.position(0, run.z, kz))?;
                    let iy = self.geo.source(1, sp.position(1, run.y, ky))?;
                    Some(plane + iz * self.x.s[0] + iy * self.x.s[1])
                }));
            }
            for ((run, line), span) in runs.iter().zip(&lines).zip(&spans[kx]) {
                let at = run.at + i * panel;
                let part = &mut dst[at..at + run.len];
                match *line {
                    Some(start) => self.gather_line(part, start, span),
                    None => part.fill(0.0),
                }
            }
            kx += 1;
            if kx == k2 {
                kx = 0;
                ky += 1;
                if ky == k1 {
                    ky = 0;
                    kz += 1;
                    if kz == sp.kernel[0] {
                        kz = 0;
                        channel += 1;
                    }
                }
            }
        }
    }

    /// What kernel column `kx` reads for the outputs of `run`, from the start of their input
    /// line: output `ox` reads input column `ox·stride + offset`.
    fn span(&self, run: &Run, kx: usize) -> Span {
        let sp = &self.geo.sp;
        let offset = sp.position(2, 0, kx);
        let valid = valid_range(sp.out_dims[2], sp.stride[2], offset, sp.in_dims[2]);
        let end = run.x0 + run.len;
        let (lo, hi) = (valid.start.clamp(run.x0, end) - run.x0, valid.end.clamp(run.x0, end) - run.x0);
        let first = ((run.x0 + lo) * sp.stride[2]) as isize + offset;
        Span { lo, hi, first: first.max(0) as usize * self.x.s[2] }
    }

    /// One run of outputs from the input line that starts at `start`, read as `span` says.
    fn gather_line(&self, dst: &mut [f32], start: usize, span: &Span) {
        let (x, geo) = (self.x, self.geo);
        let (len, sx) = (geo.sp.in_dims[2], x.s[2]);
        let (lo, hi) = (span.lo, span.hi);
        if geo.replicate && len > 0 {
            dst[..lo].fill(x.data[start]);
            dst[hi..].fill(x.data[start + (len - 1) * sx]);
        } else {
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
        }
        if lo == hi {
            return;
        }
        let (first, middle) = (start + span.first, &mut dst[lo..hi]);
        let step = geo.sp.stride[2] * sx;
        if step == 1 {
            copy_short(middle, &x.data[first..first + middle.len()]);
        } else {
            for (t, v) in middle.iter_mut().enumerate() {
                *v = x.data[first + t * step];
            }
        }
    }
}

impl GatheredB for Fields<'_> {
    fn panels(&self, k0: usize, count: usize, j0: usize, width: usize, panel: usize, dst: &mut [f32]) {
        self.write(k0, count, j0, width, panel, dst);
    }
}

/// Output positions `j0 .. j0 + width` of a `dims` volume as runs along x, none crossing a
/// panel of `panel` columns (`count` rows each).
fn line_runs(j0: usize, width: usize, dims: [usize; 3], panel: usize, count: usize) -> Vec<Run> {
    let [mut z, mut y, mut x] = unravel3(j0, dims);
    let mut runs = Vec::with_capacity(width.div_ceil(dims[2]) + width.div_ceil(panel) + 1);
    let mut j = 0;
    while j < width {
        let len = (dims[2] - x).min(width - j).min(panel - j % panel);
        runs.push(Run { at: j / panel * panel * count + j % panel, len, z, y, x0: x });
        j += len;
        x += len;
        if x == dims[2] {
            x = 0;
            y += 1;
            if y == dims[1] {
                (y, z) = (0, z + 1);
            }
        }
    }
    runs
}

/// `dst.copy_from_slice(src)` for the short runs of one image line, as fixed-size block copies
/// (the last one overlapping the one before): a `memmove` call per run of 15 or 16 floats cost
/// more than the copy.
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    assert_eq!(n, src.len(), "copy_short needs runs of one length");
    if n >= 16 {
        for at in (0..n - 15).step_by(16) {
            copy_block::<16>(dst, src, at);
        }
        copy_block::<16>(dst, src, n - 16);
    } else if n >= 8 {
        copy_block::<8>(dst, src, 0);
        copy_block::<8>(dst, src, n - 8);
    } else if n >= 4 {
        copy_block::<4>(dst, src, 0);
        copy_block::<4>(dst, src, n - 4);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

/// Copies `src[at..at + W]` to `dst[at..at + W]` (inlined: W is a constant).
#[inline(always)]
fn copy_block<const W: usize>(dst: &mut [f32], src: &[f32], at: usize) {
    let s: &[f32; W] = src[at..at + W].try_into().expect("W floats");
    let d: &mut [f32; W] = (&mut dst[at..at + W]).try_into().expect("W floats");
    *d = *s;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_runs_cover_the_positions_line_by_line() {
        // A [2, 3, 5] volume from position 7 (z 0, y 1, x 2), 14 positions, one panel.
        let runs = line_runs(7, 14, [2, 3, 5], 14, 4);
        let got: Vec<_> = runs.iter().map(|r| (r.at, r.len, r.z, r.y, r.x0)).collect();
        assert_eq!(got, vec![(0, 3, 0, 1, 2), (3, 5, 0, 2, 0), (8, 5, 1, 0, 0), (13, 1, 1, 1, 0)]);
        // Panels of 4 columns, 3 rows each (12 floats a panel): runs split at 4 and 8 and 12.
        let runs = line_runs(7, 14, [2, 3, 5], 4, 3);
        let got: Vec<_> = runs.iter().map(|r| (r.at, r.len, r.z, r.y, r.x0)).collect();
        let want = [(0, 3, 0, 1, 2), (3, 1, 0, 2, 0), (12, 4, 0, 2, 1), (24, 4, 1, 0, 0), (36, 1, 1, 0, 4)];
        assert_eq!(got[..5], want);
        assert_eq!(got[5..], [(37, 1, 1, 1, 0)]);
    }

    #[test]
    fn short_copies_of_every_length() {
        let src: Vec<f32> = (0..70).map(|v| v as f32).collect();
        for n in 0..=src.len() {
            let mut dst = vec![-1.0; n + 1];
            copy_short(&mut dst[..n], &src[..n]);
            assert_eq!(&dst[..n], &src[..n], "length {n}");
            assert_eq!(dst[n], -1.0, "length {n} wrote past its end");
        }
    }
}
