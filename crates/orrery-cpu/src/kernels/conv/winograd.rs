//! Winograd convolution F(m × m, 3 × 3) for 3 × 3 spatial kernels with stride 1 (the video
//! tokenizer's (1, 3, 3) convolutions).
//!
//! An output tile of m × m positions is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, where d is the α × α input
//! patch under it (α = m + 2) and g the 3 × 3 kernel. Summed over input channels, each of the
//! α² products `(G g Gᵀ)[t] · (Bᵀ d B)[t]` is a GEMM: `M_t = U_t · V_t` with `U_t` the
//! transformed weights `[Cout, Cin]` and `V_t` the transformed patches `[Cin, tiles]`. That is
//! α² GEMMs of depth Cin instead of one of depth 9·Cin over m² times as many columns: 2.25×
//! fewer multiplications for F(2, 3), 4× for F(4, 3), for the cost of the three transforms.
//!
//! Accuracy: the transforms add and scale a few f32 values (coefficients ≤ 8), so the result
//! differs from the direct convolution by a few f32 roundings of the larger terms, within the
//! convolutions' 1e-5 parity tolerance (tested against a float64 reference).
//!
//! Determinism: tiles are cut from the shape alone, every transform is a fixed sequence of
//! operations per tile, and each GEMM element is a dot product over Cin whose bits do not
//! depend on threads (see `blas`): no result depends on the thread count.

use super::forward::{Geometry, Input, Weights};
use super::shared_scratch;
use crate::kernels::linalg::blas::{gemm_shared_a, products_on_amx, APacks, MatMut, MatRef, Threads};
use crate::kernels::linalg::operand::SharedMut;
use rayon::prelude::*;
use std::sync::{Mutex, TryLockError};

/// The matrices of one F(m, 3) algorithm (α = m + 2 interpolation points), row-major.
pub(super) struct Transforms {
    /// Output tile edge.
    pub m: usize,
    /// Input patch edge, m + 2.
    pub alpha: usize,
    /// `Bᵀ`, α × α: input patch to transformed patch.
    bt: &'static [f32],
    /// `G`, α × 3: kernel to transformed kernel.
    g: &'static [f32],
    /// `Aᵀ`, m × α: transformed product to output tile.
    at: &'static [f32],
}

/// F(2, 3) on the points 0, 1, −1, ∞: 16 products per 4 outputs.
pub(super) const F2: Transforms = Transforms {
    m: 2,
    alpha: 4,
    #[rustfmt::skip]
    bt: &[
        1.0, 0.0, -1.0, 0.0,
        0.0, 1.0, 1.0, 0.0,
        0.0, -1.0, 1.0, 0.0,
        0.0, 1.0, 0.0, -1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0, 0.0, 0.0,
        0.5, 0.5, 0.5,
        0.5, -0.5, 0.5,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    at: &[
        1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, -1.0,
    ],
};

/// F(4, 3) on the points 0, 1, −1, 1/2, −2, ∞: 36 products per 16 outputs. Against the
/// usual 0, ±1, ±2, ∞ (Lavin's), the transformed patches are half as large (|Bᵀ| ≤ 5/2
/// instead of 5), which halves the rounding error: relative to the largest output, 2–6e-6
/// instead of 9–10e-6 at 512 input channels (simulated in f32 against float64).
pub(super) const F4: Transforms = Transforms {
    m: 4,
    alpha: 6,
    #[rustfmt::skip]
    bt: &[
        1.0, -1.5, -2.0, 1.5, 1.0, 0.0,
        0.0, -1.0, 0.5, 2.5, 1.0, 0.0,
        0.0, 1.0, -2.5, 0.5, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 0.5, -1.0, -0.5, 1.0, 0.0,
        0.0, 1.0, -1.5, -2.0, 1.5, 1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0, 0.0, 0.0,
        1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0,
        -1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0,
        -16.0 / 15.0, -8.0 / 15.0, -4.0 / 15.0,
        1.0 / 15.0, -2.0 / 15.0, 4.0 / 15.0,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 0.5, -2.0, 0.0,
        0.0, 1.0, 1.0, 0.25, 4.0, 0.0,
        0.0, 1.0, -1.0, 0.125, -8.0, 1.0,
    ],
};

/// Floats of transformed patches and products per block of tiles (16 MiB): enough tiles that
/// each transformed weight matrix, streamed once per block, serves several 64-column panels.
const BLOCK_FLOATS: usize = 1 << 22;
/// Bounds on the tiles per block.
const MIN_BLOCK_TILES: usize = 64;
const MAX_BLOCK_TILES: usize = 1024;
/// Fewest input and output channels (per group) for the GEMMs to outweigh the transforms.
const MIN_CHANNELS: usize = 32;
/// Fewest tiles per (batch, group) for an algorithm: four 64-column panels, over which the
/// transformed weights (α² times the input channels, per output channel) are made each call.
const MIN_TILES: usize = 256;
/// A table entry for a patch or tile element outside the input or output.
const OUTSIDE: i32 = -1;

/// The tiling of one convolution's output planes.
struct Tiling {
    m: usize,
    alpha: usize,
    /// Tiles per row and per column of an output plane.
    across: usize,
    down: usize,
    /// Tiles of all frames of one (batch, group).
    count: usize,
    /// Tiles per block.
    block: usize,
}

impl Tiling {
    fn new(geo: &Geometry, f: &Transforms) -> Tiling {
        let out = geo.sp.out_dims;
        let (across, down) = (out[2].div_ceil(f.m), out[1].div_ceil(f.m));
        let count = out[0] * across * down;
        let per_tile = f.alpha * f.alpha * (geo.cin_g + geo.cout_g);
        let block = (BLOCK_FLOATS / per_tile).clamp(MIN_BLOCK_TILES, MAX_BLOCK_TILES) / 16 * 16;
        Tiling { m: f.m, alpha: f.alpha, across, down, count, block: block.min(count) }
    }

    /// (frame, first output row, first output column) of tile `n`.
    fn origin(&self, n: usize) -> (usize, usize, usize) {
        let plane = self.across * self.down;
        let (z, r) = (n / plane, n % plane);
        (z, (r / self.across) * self.m, (r % self.across) * self.m)
    }
}

/// `y = conv(x, w) + bias` by F(m, 3) for a kernel `[Cout, Cin/g, 1, 3, 3]` with stride and
/// dilation 1 and no padding in time (checked by [`choose`]).
///
/// Per (batch, group), blocks of tiles one after the other: the block's patches are
/// transformed (in parallel over input channels), its α² products run in parallel (one GEMM
/// per task, so each packs its own operand once), and the products are transformed into the
/// output (in parallel over output channels). The transformed weights are made once per
/// group and call.
pub(super) fn winograd(geo: &Geometry, x: &Input<'_>, wts: &Weights<'_>, y: &mut [f32], f: &Transforms) {
    let tiling = Tiling::new(geo, f);
    let positions = geo.sp.out_volume();
    let a2 = f.alpha * f.alpha;
    let (cin, cout) = (geo.cin_g, geo.cout_g);
    shared_scratch(scratch_floats(geo, f), |scratch| {
        let (u, block) = scratch.split_at_mut(cout * a2 * cin);
        for g in 0..geo.groups {
            transform_weights(f, &wts.w[g * cout * cin * 9..(g + 1) * cout * cin * 9], cin, u);
            let u = &*u;
            with_u_packs(|packs| {
                // Each U_t packed once for every block of tiles (where products pack A per call).
                let shared_u = packs.share(a2, cout, cin, |t| MatRef::new(u, t * cin, a2 * cin, 1));
                let bias = wts.bias.map(|b| &b[g * cout..(g + 1) * cout]);
                for b in 0..geo.batch {
                    let first = (b * geo.groups + g) * cout * positions;
                    let out = &mut y[first..first + cout * positions];
                    let channels = x.offset + b * x.sb + g * cin * x.sc;
                    for t0 in (0..tiling.count).step_by(tiling.block) {
                        let nt = tiling.block.min(tiling.count - t0);
                        let (sources, targets) = tables(geo, x, &tiling, t0, nt);
                        // Every patch element read lies in x (the channels' extent fits, and the
                        // last channel of this batch and group starts inside x's data).
                        let last = channels + (cin - 1) * x.sc;
                        assert!(
                            sources.iter().all(|&s| s < 0 || last + (s as usize) < x.data.len()),
                            "patch outside x"
                        );
                        assert!(targets.iter().all(|&t| t < 0 || (t as usize) < positions), "tile outside y");
                        let (v, prods) = block[..a2 * (cin + cout) * nt].split_at_mut(a2 * cin * nt);
                        let buffers = || (vec![0f32; a2 * nt], vec![0f32; a2 * nt]);
                        v.par_chunks_mut(a2 * nt).enumerate().for_each_init(buffers, |(d, r), (ci, v)| {
                            // SAFETY: the table's entries are inside x from this channel (asserted).
                            unsafe { transform_patches(f, x.data, channels + ci * x.sc, &sources, v, d, r) }
                        });
                        let prods_at = SharedMut(prods.as_mut_ptr());
                        (0..a2).into_par_iter().for_each(|t| {
                            // M_t = U_t · V_t with U [Cout][t][Cin], V [Cin][t][tiles], M [Cout][t][tiles].
                            let lhs = &shared_u[t];
                            let rhs = MatRef::new(v, t * nt, a2 * nt, 1);
                            let dst = MatMut { ptr: prods_at.add(t * nt), rs: a2 * nt, cs: 1 };
                            // SAFETY: `dst` is column block t of every row of `prods` (Cout rows of
                            // α²·nt), written by this task only; `prods` outlives the loop and does
                            // not overlap `u` or `v`.
                            unsafe { gemm_shared_a(nt, dst, lhs, rhs, 1.0, false, Threads::Single) };
                        });
                        let buffers = || (vec![0f32; f.alpha * f.m * nt], vec![0f32; f.m * f.m * nt]);
                        let planes = prods.par_chunks(a2 * nt).zip(out.par_chunks_mut(positions)).enumerate();
                        planes.for_each_init(buffers, |(r, tiles), (co, (prod, plane))| {
                            let bias = bias.map_or(0.0, |b| b[co]);
                            // SAFETY: the table's entries are inside the plane (asserted).
                            unsafe { transform_products(f, prod, bias, &targets, plane, r, tiles) }
                        });
                    }
                }
            });
        }
    });
}

/// Runs `f` on the process-wide buffers for the transformed weights packed for the products
/// (kept between calls like the shared scratch, at the largest size asked for: 54 MiB at 512
/// channels with F(4, 3) on AMX, nothing elsewhere), or on fresh ones while another call
/// holds them.
fn with_u_packs<R>(f: impl FnOnce(&mut APacks) -> R) -> R {
    static PACKS: Mutex<APacks> = Mutex::new(APacks::new());
    match PACKS.try_lock() {
        Ok(mut held) => f(&mut held),
        // A panic while they were held leaves packs that are overwritten anyway.
        Err(TryLockError::Poisoned(p)) => f(&mut p.into_inner()),
        Err(TryLockError::WouldBlock) => f(&mut APacks::new()),
    }
}

/// Floats of scratch for `winograd`: the transformed weights of one group, then one block's
/// transformed patches and products.
fn scratch_floats(geo: &Geometry, f: &Transforms) -> usize {
    let a2 = f.alpha * f.alpha;
    a2 * geo.cout_g * geo.cin_g + a2 * (geo.cin_g + geo.cout_g) * Tiling::new(geo, f).block
}

/// For tiles `t0..t0 + nt`: where each patch element is read (offset from a channel's first
/// element, or [`OUTSIDE`] for zero padding), `[α·α][nt]`; and where each output element of a
/// tile goes in an output plane (or [`OUTSIDE`] past its edge), `[m·m][nt]`.
fn tables(geo: &Geometry, x: &Input<'_>, tiling: &Tiling, t0: usize, nt: usize) -> (Vec<i32>, Vec<i32>) {
    let (m, alpha) = (tiling.m, tiling.alpha);
    let out = geo.sp.out_dims;
    let pad = geo.sp.pad;
    let mut sources = vec![OUTSIDE; alpha * alpha * nt];
    let mut targets = vec![OUTSIDE; m * m * nt];
    for n in 0..nt {
        let (z, oy, ox) = tiling.origin(t0 + n);
        for i in 0..alpha {
            let row = geo.source(1, (oy + i) as isize - pad[1] as isize);
            for j in 0..alpha {
                let col = geo.source(2, (ox + j) as isize - pad[2] as isize);
                if let (Some(r), Some(c)) = (row, col) {
                    // In i32: `choose` checked that a channel's extent fits.
                    sources[(i * alpha + j) * nt + n] = (z * x.s[0] + r * x.s[1] + c * x.s[2]) as i32;
                }
            }
        }
        for i in 0..m {
            for j in 0..m {
                if oy + i < out[1] && ox + j < out[2] {
                    targets[(i * m + j) * nt + n] = ((z * out[1] + oy + i) * out[2] + ox + j) as i32;
                }
            }
        }
    }
    (sources, targets)
}

/// `U[co][t][ci] = (G g Gᵀ)[t]` for the kernels g of `w` (`[Cout][Cin][3·3]`).
fn transform_weights(f: &Transforms, w: &[f32], cin: usize, u: &mut [f32]) {
    let a2 = f.alpha * f.alpha;
    let buffers = || (vec![0f32; 9 * cin], vec![0f32; 3 * f.alpha * cin]);
    u.par_chunks_mut(a2 * cin).zip(w.par_chunks(9 * cin)).for_each_init(buffers, |(taps, gg), (u, w)| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { transform_kernels_avx512(f, w, u, taps, gg) };
        }
        transform_kernels(f, w, u, taps, gg)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_kernels_avx512(f: &Transforms, w: &[f32], u: &mut [f32], taps: &mut [f32], gg: &mut [f32]) {
    transform_kernels(f, w, u, taps, gg)
}

/// One output channel's kernels `w` (`[Cin][3·3]`) into `u` (`[α·α][Cin]`), through `taps`
/// (`[3·3][Cin]`) and `gg` (`[α·3][Cin]`, G g), vectorised over the input channels.
#[inline(always)]
fn transform_kernels(f: &Transforms, w: &[f32], u: &mut [f32], taps: &mut [f32], gg: &mut [f32]) {
    let cin = w.len() / 9;
    for (ci, kernel) in w.chunks_exact(9).enumerate() {
        for (k, &value) in kernel.iter().enumerate() {
            taps[k * cin + ci] = value;
        }
    }
    let tap = |a: usize, b: usize| &taps[(a * 3 + b) * cin..][..cin];
    for i in 0..f.alpha {
        for b in 0..3 {
            combine(&mut gg[(i * 3 + b) * cin..][..cin], (0..3).map(|a| (f.g[i * 3 + a], tap(a, b))));
        }
    }
    for i in 0..f.alpha {
        for j in 0..f.alpha {
            let terms = (0..3).map(|b| (f.g[j * 3 + b], &gg[(i * 3 + b) * cin..][..cin]));
            combine(&mut u[(i * f.alpha + j) * cin..][..cin], terms);
        }
    }
}

/// `V[t][n] = (Bᵀ d B)[t]` for the patches d of one channel (at `base` in `data`, elements at
/// `base + sources[..]`) over the block's tiles; `v`, `d` and `r` are `[α·α][tiles]` (`d` and
/// `r` scratch).
///
/// # Safety
/// `base + s < data.len()` for every entry `s ≥ 0` of `sources`.
unsafe fn transform_patches(
    f: &Transforms,
    data: &[f32],
    base: usize,
    sources: &[i32],
    v: &mut [f32],
    d: &mut [f32],
    r: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { transform_patches_avx512(f, data, base, sources, v, d, r) };
    }
    gather(d, data, base, sources);
    patch_transform(f, d, r, v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_patches_avx512(
    f: &Transforms,
    data: &[f32],
    base: usize,
    sources: &[i32],
    v: &mut [f32],
    d: &mut [f32],
    r: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (chunks, rest) = (sources.len() / 16, sources.len() % 16);
    let at = data.as_ptr().wrapping_add(base);
    for c in 0..chunks {
        // SAFETY: 16 table entries and 16 floats of `d` at 16·c; the gathered lanes are the
        // entries ≥ 0, each inside `data` (the caller's promise); the others are zero.
        unsafe {
            let idx = _mm512_loadu_si512(sources.as_ptr().add(16 * c) as *const _);
            let inside = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
            let values = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), inside, idx, at);
            _mm512_storeu_ps(d.as_mut_ptr().add(16 * c), values);
        }
    }
    gather(&mut d[16 * chunks..16 * chunks + rest], data, base, &sources[16 * chunks..]);
    patch_transform(f, d, r, v);
}

/// `d[k] = data[base + sources[k]]`, or 0 where the source is [`OUTSIDE`].
#[inline(always)]
fn gather(d: &mut [f32], data: &[f32], base: usize, sources: &[i32]) {
    for (d, &s) in d.iter_mut().zip(sources) {
        *d = if s < 0 { 0.0 } else { data[base + s as usize] };
    }
}

/// `v = Bᵀ d B` per tile: `Bᵀ` applied to the patches' rows (`r[i][j'] = Σ_j Bᵀ[j'][j]
/// d[i][j]`), then to their columns; all `[α·α][tiles]`.
#[inline(always)]
fn patch_transform(f: &Transforms, d: &[f32], r: &mut [f32], v: &mut [f32]) {
    let alpha = f.alpha;
    let nt = v.len() / (alpha * alpha);
    for i in 0..alpha {
        for jt in 0..alpha {
            let r = &mut r[(i * alpha + jt) * nt..][..nt];
            combine(r, (0..alpha).map(|j| (f.bt[jt * alpha + j], &d[(i * alpha + j) * nt..][..nt])));
        }
    }
    for it in 0..alpha {
        for jt in 0..alpha {
            let v = &mut v[(it * alpha + jt) * nt..][..nt];
            combine(v, (0..alpha).map(|i| (f.bt[it * alpha + i], &r[(i * alpha + jt) * nt..][..nt])));
        }
    }
}

/// `out = Σ c·term` over the terms with a nonzero coefficient, in order (the first one sets
/// `out`: the same value as adding it to zero).
#[inline(always)]
fn combine<'a>(out: &mut [f32], terms: impl Iterator<Item = (f32, &'a [f32])>) {
    let mut first = true;
    for (c, term) in terms.filter(|&(c, _)| c != 0.0) {
        let pairs = out.iter_mut().zip(term);
        match (first, c) {
            (true, 1.0) => pairs.for_each(|(o, &t)| *o = t),
            (true, -1.0) => pairs.for_each(|(o, &t)| *o = -t),
            (true, _) => pairs.for_each(|(o, &t)| *o = c * t),
            (false, 1.0) => pairs.for_each(|(o, &t)| *o += t),
            (false, -1.0) => pairs.for_each(|(o, &t)| *o -= t),
            (false, _) => pairs.for_each(|(o, &t)| *o += c * t),
        }
        first = false;
    }
    if first {
        out.fill(0.0);
    }
}

/// One output channel's tiles: `Y = Aᵀ M A + bias` from its products `prod` (`[α·α][tiles]`),
/// written to `plane` at `targets`; `r` (`[α·m][tiles]`) and `tiles` (`[m·m][tiles]`) are
/// scratch.
///
/// # Safety
/// `t < plane.len()` for every entry `t ≥ 0` of `targets`, and no two such entries are equal.
unsafe fn transform_products(
    f: &Transforms,
    prod: &[f32],
    bias: f32,
    targets: &[i32],
    plane: &mut [f32],
    r: &mut [f32],
    tiles: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { transform_products_avx512(f, prod, bias, targets, plane, r, tiles) };
    }
    product_transform(f, prod, r, tiles);
    scatter(plane, tiles, bias, targets);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_products_avx512(
    f: &Transforms,
    prod: &[f32],
    bias: f32,
    targets: &[i32],
    plane: &mut [f32],
    r: &mut [f32],
    tiles: &mut [f32],
) {
    use std::arch::x86_64::*;
    product_transform(f, prod, r, tiles);
    let (chunks, rest) = (targets.len() / 16, targets.len() % 16);
    let b = _mm512_set1_ps(bias);
    for c in 0..chunks {
        // SAFETY: 16 table entries and 16 values at 16·c; the scattered lanes are the entries
        // ≥ 0, each inside `plane` and distinct (the caller's promise).
        unsafe {
            let idx = _mm512_loadu_si512(targets.as_ptr().add(16 * c) as *const _);
            let inside = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
            let values = _mm512_add_ps(_mm512_loadu_ps(tiles.as_ptr().add(16 * c)), b);
            _mm512_mask_i32scatter_ps::<4>(plane.as_mut_ptr(), inside, idx, values);
        }
    }
    scatter(plane, &tiles[16 * chunks..16 * chunks + rest], bias, &targets[16 * chunks..]);
}

/// `tiles = Aᵀ M A` per tile: `Aᵀ` applied to the products' rows, then to their columns.
#[inline(always)]
fn product_transform(f: &Transforms, prod: &[f32], r: &mut [f32], tiles: &mut [f32]) {
    let (m, alpha) = (f.m, f.alpha);
    let nt = tiles.len() / (m * m);
    for i in 0..alpha {
        for jt in 0..m {
            let r = &mut r[(i * m + jt) * nt..][..nt];
            combine(r, (0..alpha).map(|j| (f.at[jt * alpha + j], &prod[(i * alpha + j) * nt..][..nt])));
        }
    }
    for it in 0..m {
        for jt in 0..m {
            let tile = &mut tiles[(it * m + jt) * nt..][..nt];
            combine(tile, (0..alpha).map(|i| (f.at[it * alpha + i], &r[(i * m + jt) * nt..][..nt])));
        }
    }
}

/// `plane[targets[k]] = values[k] + bias` where the target is not [`OUTSIDE`].
#[inline(always)]
fn scatter(plane: &mut [f32], values: &[f32], bias: f32, targets: &[i32]) {
    for (&value, &t) in values.iter().zip(targets) {
        if t >= 0 {
            plane[t as usize] = value + bias;
        }
    }
}

/// The algorithm for a convolution of input `x` ([`pick`]), unless its shape or x's strides
/// rule Winograd out, or `ORRERY_WINOGRAD=0` turns it off (for results bit-identical to the
/// direct convolution).
pub(super) fn choose(geo: &Geometry, x: &Input<'_>) -> Option<&'static Transforms> {
    let sp = &geo.sp;
    // The patch and tile tables hold offsets within one channel's input or output as i32.
    let extent = (0..3).map(|a| sp.in_dims[a].saturating_sub(1) * x.s[a]).sum::<usize>();
    let small = extent < i32::MAX as usize && sp.out_volume() < i32::MAX as usize;
    if small && enabled() {
        pick(geo)
    } else {
        None
    }
}

fn enabled() -> bool {
    std::env::var_os("ORRERY_WINOGRAD").is_none_or(|v| v != "0")
}

/// F(4, 3) or F(2, 3) for a 3 × 3 spatial kernel (1 in time) with stride and dilation 1 and no
/// padding in time, with enough channels for the GEMMs to outweigh the transforms and enough
/// tiles to amortise the transformed weights; F(4, 3) first (4× fewer multiplications, against
/// F(2, 3)'s 2.25×), and F(2, 3) not where products run on AMX.
pub(super) fn pick(geo: &Geometry) -> Option<&'static Transforms> {
    let sp = &geo.sp;
    let applies = sp.kernel == [1, 3, 3]
        && sp.stride == [1; 3]
        && sp.dilation == [1; 3]
        && sp.pad[0] == 0
        && sp.out_dims[0] == sp.in_dims[0]
        && geo.cin_g >= MIN_CHANNELS
        && geo.cout_g >= MIN_CHANNELS;
    let tiles = |f: &Transforms| sp.out_dims[0] * sp.out_dims[1].div_ceil(f.m) * sp.out_dims[2].div_ceil(f.m);
    // Where products split their A operand into bf16 parts on every call (AMX), the α²
    // transformed weights are split per call while the direct convolution reads weights
    // packed once (`weight_packs`). F(2, 3) then loses: at 512 channels × 5 × 16 × 16 (320
    // tiles) it took 15.6 ms against 13.5 ms direct with the weights split per call (less with
    // them packed), and with more tiles F(4, 3) applies first (8.9 ms against 14.0 ms direct
    // at 256 channels × 5 × 32 × 32, 320 tiles).
    let algorithms: &[&'static Transforms] = if products_on_amx() { &[&F4] } else { &[&F4, &F2] };
    algorithms.iter().copied().find(|&f| applies && tiles(f) >= MIN_TILES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::test_values as values;
    use orrery_ir::{ConvPadMode, ConvParams};

    /// A 3-d convolution's parameters: spatial stride `stride`, padding `pad` = [time, space]
    /// on both sides, zero padding, dilation 1.
    fn params(stride: usize, pad: [usize; 2], groups: usize, has_bias: bool) -> ConvParams {
        ConvParams {
            stride: vec![1, stride, stride],
            dilation: vec![1; 3],
            padding: vec![(pad[0], pad[0]), (pad[1], pad[1]), (pad[1], pad[1])],
            pad_mode: ConvPadMode::Zeros,
            groups,
            has_bias,
        }
    }

    /// One case: x `[batch, groups·cin, frames, h, w]`, a `[groups·cout, cin, 1, 3, 3]` kernel,
    /// spatial padding `pad` on both sides.
    struct Case {
        batch: usize,
        groups: usize,
        cin: usize,
        cout: usize,
        frames: usize,
        h: usize,
        w: usize,
        pad: usize,
        replicate: bool,
        bias: bool,
        /// x stored channels-last (`[b, z, y, x, c]`), read through strides.
        channels_last: bool,
    }

    /// Largest |winograd − reference| / largest |reference| for one case and algorithm, the
    /// reference a float64 direct convolution of the same f32 values.
    fn relative_error(c: &Case, f: &Transforms, seed: u64) -> f64 {
        let cx = c.groups * c.cin;
        let co = c.groups * c.cout;
        let (oh, ow) = ((c.h + 2 * c.pad) - 2, (c.w + 2 * c.pad) - 2);
        let x_dims = [c.batch, cx, c.frames, c.h, c.w];
        let w_dims = [co, c.cin, 1, 3, 3];
        let y_dims = [c.batch, co, c.frames, oh, ow];
        let mut params = params(1, [0, c.pad], c.groups, c.bias);
        params.pad_mode = if c.replicate { ConvPadMode::Replicate } else { ConvPadMode::Zeros };
        let geo = Geometry::new(&x_dims, &w_dims, &y_dims, &params);
        let data = values(seed, x_dims.iter().product());
        let w = values(seed + 1, w_dims.iter().product());
        let bias = values(seed + 2, co);
        // Strides of the logical [b, c, z, y, x] element in `data`.
        let (sb, sc, s) = if c.channels_last {
            (c.frames * c.h * c.w * cx, 1, [c.h * c.w * cx, c.w * cx, cx])
        } else {
            (cx * c.frames * c.h * c.w, c.frames * c.h * c.w, [c.h * c.w, c.w, 1])
        };
        let input = Input { data: &data, offset: 0, sb, sc, s };
        let weights = Weights { w: &w, bias: c.bias.then_some(&bias[..]) };
        let mut y = vec![f32::NAN; y_dims.iter().product()];
        winograd(&geo, &input, &weights, &mut y, f);

        let mut reference = vec![0f64; y.len()];
        for b in 0..c.batch {
            for o in 0..co {
                let g = o / c.cout;
                for z in 0..c.frames {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut sum = if c.bias { bias[o] as f64 } else { 0.0 };
                            for i in 0..c.cin {
                                let ch = g * c.cin + i;
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let (Some(r), Some(q)) = (
                                            geo.source(1, (oy + ky) as isize - c.pad as isize),
                                            geo.source(2, (ox + kx) as isize - c.pad as isize),
                                        ) else {
                                            continue;
                                        };
                                        let xv = data[b * sb + ch * sc + z * s[0] + r * s[1] + q * s[2]];
                                        let wv = w[((o * c.cin + i) * 3 + ky) * 3 + kx];
                                        sum += xv as f64 * wv as f64;
                                    }
                                }
                            }
                            reference[(((b * co + o) * c.frames + z) * oh + oy) * ow + ox] = sum;
                        }
                    }
                }
            }
        }
        let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
        y.iter().zip(&reference).fold(0f64, |m, (&a, &r)| m.max((a as f64 - r).abs())) / scale
    }

    #[test]
    fn both_algorithms_match_a_float64_convolution() {
        let case = |batch, groups, cin, cout, (frames, h, w), pad, replicate, bias, channels_last| Case {
            batch,
            groups,
            cin,
            cout,
            frames,
            h,
            w,
            pad,
            replicate,
            bias,
            channels_last,
        };
        let cases = [
            // The tokenizer's shape in small: zero padding 1, tiles cut by the plane's edges.
            case(1, 1, 8, 6, (2, 7, 5), 1, false, true, false),
            // One pixel, padded: a single tile mostly outside the input.
            case(1, 1, 3, 2, (1, 1, 1), 1, false, false, false),
            // No padding (outputs smaller than the input), batch and groups.
            case(2, 2, 3, 5, (3, 9, 13), 0, false, true, false),
            // Padding 2 with replicas, read through channels-last strides.
            case(1, 1, 4, 4, (2, 6, 11), 2, true, false, true),
            case(2, 3, 2, 3, (1, 10, 3), 1, true, true, true),
            // Many tiles: several blocks per (batch, group).
            case(1, 1, 4, 4, (3, 40, 40), 1, false, true, false),
            // More channels, so each product sums a longer row.
            case(1, 1, 48, 40, (1, 12, 12), 1, false, true, false),
            case(1, 1, 512, 64, (1, 8, 8), 1, false, true, false),
        ];
        for (i, c) in cases.iter().enumerate() {
            for f in [&F2, &F4] {
                let err = relative_error(c, f, 10 * i as u64);
                assert!(err <= 1e-5, "case {i}, F({}, 3): relative error {err:e}", f.m);
            }
        }
    }

    #[test]
    fn blocks_follow_the_shape() {
        // Several blocks for the many-tile case above (3 × 20 × 20 tiles of F(2, 3)).
        let params = params(1, [0, 1], 1, false);
        let geo = Geometry::new(&[1, 4, 3, 40, 40], &[4, 4, 1, 3, 3], &[1, 4, 3, 40, 40], &params);
        let tiling = Tiling::new(&geo, &F2);
        assert_eq!((tiling.count, tiling.block), (1200, 1024));
        // The tokenizer's 512 channels: F(4, 3) blocks of 112 tiles (16 MiB of block scratch).
        let geo = Geometry::new(&[1, 512, 17, 64, 64], &[512, 512, 1, 3, 3], &[1, 512, 17, 64, 64], &params);
        assert_eq!(Tiling::new(&geo, &F4).block, 112);
    }

    #[test]
    fn the_algorithm_follows_channels_and_tiles() {
        let geo = |c: usize, (t, h, w): (usize, usize, usize), kernel: [usize; 3], stride: usize| {
            let params = params(stride, [kernel[0] / 2, 1], 1, false);
            let out = [1, c, t, h.div_ceil(stride), w.div_ceil(stride)];
            Geometry::new(&[1, c, t, h, w], &[c, c, kernel[0], kernel[1], kernel[2]], &out, &params)
        };
        let m = |g: &Geometry| pick(g).map(|f| f.m);
        assert_eq!(m(&geo(512, (17, 64, 64), [1, 3, 3], 1)), Some(4));
        // 80 tiles of F(4, 3), 320 of F(2, 3), which is not used on AMX.
        let f2 = if products_on_amx() { None } else { Some(2) };
        assert_eq!(m(&geo(256, (5, 16, 16), [1, 3, 3], 1)), f2);
        assert_eq!(m(&geo(256, (5, 32, 32), [1, 3, 3], 1)), Some(4), "320 tiles of F(4, 3)");
        assert_eq!(m(&geo(512, (3, 8, 8), [1, 3, 3], 1)), None, "48 tiles");
        assert_eq!(m(&geo(16, (17, 64, 64), [1, 3, 3], 1)), None, "too few channels");
        assert_eq!(m(&geo(64, (5, 32, 32), [1, 3, 3], 2)), None, "strided");
        assert_eq!(m(&geo(64, (5, 32, 32), [3, 3, 3], 1)), None, "3-d kernel");
        let g = geo(512, (17, 64, 64), [1, 3, 3], 1);
        assert_eq!(scratch_floats(&g, &F4), 36 * 512 * 512 + 36 * 1024 * 112);
    }
}
