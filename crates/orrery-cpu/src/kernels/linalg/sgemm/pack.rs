//! Packing: copies a block of A into MR-row panels and a block of B into NR-column panels,
//! each stored k-major (for every k the panel's MR or NR values side by side), so the
//! micro-kernel reads both with unit stride. Rows and columns past the block are zeros.

use super::{GatheredB, MR, NR};
use std::arch::x86_64::*;

/// A strided f32 matrix behind a raw pointer: element (i, j) is `p[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub p: *const f32,
    pub rs: usize,
    pub cs: usize,
}

impl Strided {
    /// The matrix starting at element (i, j).
    pub fn at(self, i: usize, j: usize) -> Strided {
        Strided { p: self.p.wrapping_add(i * self.rs + j * self.cs), ..self }
    }
}

/// Packs A's `rows × kc` block `a` into `rows.div_ceil(MR)` panels of `kc · MR` floats.
///
/// # Safety
/// Every element (i, k), i < rows, k < kc, of `a` is readable; `dst` holds the panels.
pub(super) unsafe fn pack_a(dst: &mut [f32], a: Strided, rows: usize, kc: usize) {
    // SAFETY: forwarded.
    unsafe { pack::<MR>(dst, a, rows, kc) }
}

/// Packs B's `kc × cols` block `b` into `cols.div_ceil(NR)` panels of `kc · NR` floats:
/// B's columns play A's rows (element (k, j) of B is element (j, k) of Bᵀ).
///
/// # Safety
/// Every element (k, j), k < kc, j < cols, of `b` is readable; `dst` holds the panels.
pub(super) unsafe fn pack_b(dst: &mut [f32], b: Strided, kc: usize, cols: usize) {
    let transposed = Strided { p: b.p, rs: b.cs, cs: b.rs };
    // SAFETY: forwarded.
    unsafe { pack::<NR>(dst, transposed, cols, kc) }
}

/// Packs B's rows `k0..k0 + kc`, columns `j0..j0 + cols`, written by `source` straight into
/// the panels (no stored B). A whole block at a time, so a source reads along its rows.
pub(super) fn pack_b_gathered(dst: &mut [f32], source: &dyn GatheredB, k0: usize, kc: usize, j0: usize, cols: usize) {
    let panels = cols.div_ceil(NR);
    if !cols.is_multiple_of(NR) {
        dst[(panels - 1) * NR * kc..panels * NR * kc].fill(0.0);
    }
    source.panels(k0, kc, j0, cols, NR, &mut dst[..panels * NR * kc]);
}

/// Panels of W rows of `m` (`rows × kc`): panel q, step k, lane r holds m(q·W + r, k).
unsafe fn pack<const W: usize>(dst: &mut [f32], m: Strided, rows: usize, kc: usize) {
    for (q, panel) in dst.chunks_exact_mut(W * kc).take(rows.div_ceil(W)).enumerate() {
        let live = W.min(rows - q * W);
        let src = m.at(q * W, 0);
        if live < W {
            panel.fill(0.0);
        }
        if src.rs == 1 && live == W && W.is_multiple_of(16) {
            // SAFETY: AVX-512F (the module runs only with it); the W rows are readable.
            unsafe { copy_steps::<W>(panel, src, kc) };
        } else if src.rs == 1 {
            // The panel's rows are adjacent in memory: one contiguous run per step.
            for (k, step) in panel.chunks_exact_mut(W).enumerate() {
                // SAFETY: elements (0..live, k) are readable (caller).
                let run = unsafe { std::slice::from_raw_parts(src.p.add(k * src.cs), live) };
                step[..live].copy_from_slice(run);
            }
        } else if src.cs == 1 && W.is_multiple_of(16) {
            // Rows contiguous over k (a `linear` weight, keys for attention scores): transpose
            // 16 × 16 blocks in registers.
            // SAFETY: AVX-512F (the module runs only with it); rows 0..live are readable.
            unsafe { transpose_rows::<W, _>(panel, src, live, kc) };
        } else if live == W {
            // Neither stride is 1: W strided reads per step, one contiguous write.
            for (k, step) in panel.chunks_exact_mut(W).take(kc).enumerate() {
                for (r, v) in step.iter_mut().enumerate() {
                    // SAFETY: element (r, k) is readable (caller).
                    *v = unsafe { *src.p.add(r * src.rs + k * src.cs) };
                }
            }
        } else {
            for (k, step) in panel.chunks_exact_mut(W).take(kc).enumerate() {
                for (r, v) in step.iter_mut().enumerate().take(live) {
                    // SAFETY: element (r, k) is readable (caller).
                    *v = unsafe { *src.p.add(r * src.rs + k * src.cs) };
                }
            }
        }
    }
}

/// A whole panel whose rows are adjacent (B's rows, `cs = 1`): W/16 vector copies per step,
/// inline (a `memcpy` call per 256-byte step costs more than the copy).
#[target_feature(enable = "avx512f")]
unsafe fn copy_steps<const W: usize>(panel: &mut [f32], src: Strided, kc: usize) {
    for (k, step) in panel.chunks_exact_mut(W).take(kc).enumerate() {
        for h in 0..W / 16 {
            // SAFETY: elements (16h..16h + 16, k) are readable (caller); `step` holds W floats.
            unsafe {
                let from = src.p.add(k * src.cs + 16 * h);
                _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(4 * src.cs) as *const i8);
                _mm512_storeu_ps(step.as_mut_ptr().add(16 * h), _mm512_loadu_ps(from));
            }
        }
    }
}

/// Rows that are contiguous over k, read 16 steps at a time as f32 lanes.
trait RowRuns: Copy {
    /// Steps `k0..k0 + steps` (at most 16) of row `row`, zeros past them.
    ///
    /// # Safety
    /// AVX-512F; those elements are readable.
    unsafe fn load(self, row: usize, k0: usize, steps: usize) -> __m512;
    /// The address of step `k0` of row `row`, for prefetching (may lie outside the matrix).
    fn line(self, row: usize, k0: usize) -> *const i8;
}

impl RowRuns for Strided {
    #[inline(always)]
    unsafe fn load(self, row: usize, k0: usize, steps: usize) -> __m512 {
        let mask = ((1u32 << steps) - 1) as __mmask16;
        // SAFETY: forwarded (caller); masked lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(mask, self.p.add(row * self.rs + k0)) }
    }

    fn line(self, row: usize, k0: usize) -> *const i8 {
        self.p.wrapping_add(row * self.rs + k0) as *const i8
    }
}

impl RowRuns for Bf16Rows {
    #[inline(always)]
    unsafe fn load(self, row: usize, k0: usize, steps: usize) -> __m512 {
        let from = self.p.wrapping_add(row * self.rs + k0);
        // SAFETY: forwarded (caller); a short run goes through a zero-padded copy.
        let halves = unsafe {
            if steps == 16 {
                _mm256_loadu_si256(from as *const __m256i)
            } else {
                let mut tail = [0u16; 16];
                std::ptr::copy_nonoverlapping(from, tail.as_mut_ptr(), steps);
                _mm256_loadu_si256(tail.as_ptr() as *const __m256i)
            }
        };
        // bf16 is the high half of an f32: widening is a 16-bit shift, exact.
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }

    fn line(self, row: usize, k0: usize) -> *const i8 {
        self.p.wrapping_add(row * self.rs + k0) as *const i8
    }
}

/// Panel steps from rows that are contiguous over k (a `linear` weight, keys for attention
/// scores): for each group of 16 rows and 16 steps, 16 row loads, a register transpose, and
/// 16 stores of 16 lanes.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_rows<const W: usize, R: RowRuns>(panel: &mut [f32], src: R, live: usize, kc: usize) {
    assert!(panel.len() >= W * kc);
    for g in 0..live.div_ceil(16) {
        let rows = (live - 16 * g).min(16);
        for k0 in (0..kc).step_by(16) {
            let steps = (kc - k0).min(16);
            let mut r = [_mm512_setzero_ps(); 16];
            // The next group's lines at these steps: rows are far apart, and each run is only
            // kc long, too short for the hardware prefetcher to follow 16 rows at once.
            for x in 0..16 {
                _mm_prefetch::<_MM_HINT_T0>(src.line(16 * (g + 1) + x, k0));
            }
            for (x, v) in r.iter_mut().enumerate().take(rows) {
                // SAFETY: row 16g + x < live, steps k0..k0 + steps are readable (caller).
                *v = unsafe { src.load(16 * g + x, k0, steps) };
            }
            transpose16(&mut r);
            for (c, v) in r.iter().enumerate().take(steps) {
                // SAFETY: step k0 + c < kc, lanes 16g..16g + 16 ≤ W: inside the panel.
                unsafe { _mm512_storeu_ps(panel.as_mut_ptr().add((k0 + c) * W + 16 * g), *v) };
            }
        }
    }
}

/// Transposes a 16 × 16 block held as 16 rows: row x lane c becomes row c lane x.
#[target_feature(enable = "avx512f")]
fn transpose16(r: &mut [__m512; 16]) {
    // Pairs of rows interleaved within each 128-bit lane.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Groups of four rows: u[4i + j] lane l holds rows 4i..4i + 4 of column 4l + j.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let pd = |v: __m512| _mm512_castps_pd(v);
        let ps = _mm512_castpd_ps;
        u[4 * i] = ps(_mm512_unpacklo_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
        u[4 * i + 1] = ps(_mm512_unpackhi_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
        u[4 * i + 2] = ps(_mm512_unpacklo_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
        u[4 * i + 3] = ps(_mm512_unpackhi_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
    }
    // A 4 × 4 transpose of 128-bit lanes for each j: column 4l + j gathers lane l of u[4g + j].
    for j in 0..4 {
        let (x0, x1, x2, x3) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
        let v0 = _mm512_shuffle_f32x4::<0x44>(x0, x1);
        let v1 = _mm512_shuffle_f32x4::<0xEE>(x0, x1);
        let v2 = _mm512_shuffle_f32x4::<0x44>(x2, x3);
        let v3 = _mm512_shuffle_f32x4::<0xEE>(x2, x3);
        r[j] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        r[4 + j] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        r[8 + j] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        r[12 + j] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
}

/// A bf16 matrix whose rows are contiguous (`linear`'s `[N, K]` weight as stored), read as
/// B: element (k, j) of B is `p[j·rs + k]`.
#[derive(Clone, Copy)]
pub(crate) struct Bf16Rows {
    pub p: *const u16,
    pub rs: usize,
}

impl Bf16Rows {
    /// B starting at its element (k, j).
    pub fn at(self, k: usize, j: usize) -> Bf16Rows {
        Bf16Rows { p: self.p.wrapping_add(j * self.rs + k), ..self }
    }
}

/// [`pack_b`] for a bf16 B, widened exactly while it is transposed into the panels.
///
/// # Safety
/// AVX-512F; every element (k, j), k < kc, j < cols, of `b` is readable; `dst` holds the panels.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pack_b_bf16(dst: &mut [f32], b: Bf16Rows, kc: usize, cols: usize) {
    for (q, panel) in dst.chunks_exact_mut(NR * kc).take(cols.div_ceil(NR)).enumerate() {
        let live = NR.min(cols - q * NR);
        if live < NR {
            panel.fill(0.0);
        }
        // SAFETY: forwarded; columns q·NR.. are B's rows of the panel.
        unsafe { transpose_rows::<NR, _>(panel, b.at(0, q * NR), live, kc) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packing path (unit stride along rows, along k, neither; the register transpose)
    /// against the definition, with partial panels and step counts that are not multiples of 16.
    #[test]
    fn panels_hold_the_definition_with_zeros_past_the_block() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let (rows, kc) = (NR + 23, 37);
        let data: Vec<f32> = (0..(rows + 3) * (kc + 5) * 2).map(|i| i as f32 + 0.5).collect();
        let layouts = [(kc + 5, 1), (1, rows + 3), (2 * (kc + 5), 2)];
        for (rs, cs) in layouts {
            let src = Strided { p: data.as_ptr(), rs, cs };
            let mut dst = vec![f32::NAN; rows.div_ceil(NR) * NR * kc];
            // SAFETY: the largest index read is (rows - 1)·rs + (kc - 1)·cs < data.len().
            unsafe { pack::<NR>(&mut dst, src, rows, kc) };
            for q in 0..rows.div_ceil(NR) {
                for k in 0..kc {
                    for r in 0..NR {
                        let i = q * NR + r;
                        let want = if i < rows { data[i * rs + k * cs] } else { 0.0 };
                        assert_eq!(dst[q * NR * kc + k * NR + r], want, "layout ({rs}, {cs}) row {i} step {k}");
                    }
                }
            }
        }
    }

    /// A bf16 B packs to the panels of its exact f32 widening.
    #[test]
    fn bf16_rows_pack_like_their_widened_values() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let (cols, kc, rs) = (NR + 23, 37, 41);
        let w: Vec<half::bf16> = (0..cols * rs).map(|i| half::bf16::from_f32(i as f32 * 0.37 - 100.0)).collect();
        let wide: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let mut want = vec![f32::NAN; cols.div_ceil(NR) * NR * kc];
        let mut got = want.clone();
        // SAFETY: element (k, j) is at j·rs + k < cols·rs for k < kc ≤ rs.
        unsafe {
            pack_b(&mut want, Strided { p: wide.as_ptr(), rs: 1, cs: rs }, kc, cols);
            pack_b_bf16(&mut got, Bf16Rows { p: w.as_ptr() as *const u16, rs }, kc, cols);
        }
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
