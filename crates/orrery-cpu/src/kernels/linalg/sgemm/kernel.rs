//! The AVX-512 micro-kernel: one MR × NR tile of C from an MR-row panel of A and an NR-column
//! panel of B, both packed k-major (`pack.rs`), the 24 accumulators held in registers.

use super::{MR, NR, NV};
use std::arch::x86_64::*;

/// One MR-row panel of A over kc steps: A's element (i, step) is `p[i·rs + step·ks]`, read
/// in place (a full panel of a matrix with a unit stride) or packed (`rs = 1`, `ks = MR`).
#[derive(Clone, Copy)]
pub(super) struct APanel {
    pub p: *const f32,
    pub rs: usize,
    pub ks: usize,
}

/// Where a tile goes: `rows × cols` (at most MR × NR) elements at `c`, with strides `rs`, `cs`.
#[derive(Clone, Copy)]
pub(super) struct Tile {
    pub c: *mut f32,
    pub rs: usize,
    pub cs: usize,
    pub rows: usize,
    pub cols: usize,
}

/// `tile = scale · Ã·B̃` over `kc` packed steps, or `tile += scale · Ã·B̃` when `add`.
///
/// Every element is accumulated over k in order with one FMA per step, whatever the tile's
/// position or size (padding rows and columns are computed and dropped), so an element's bits
/// depend on its row of A, its column of B and k only.
///
/// # Safety
/// The CPU supports AVX-512F; `a` has kc readable steps and `b` holds `kc · NR` floats; every
/// element of the tile is valid for reads and writes and touched by no other thread.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile(kc: usize, a: APanel, b: *const f32, tile: Tile, scale: f32, add: bool) {
    // The tile's lines of C arrive while the products run (they are read or written at the end).
    if tile.cs == 1 {
        for i in 0..tile.rows {
            for h in 0..NV {
                _mm_prefetch::<_MM_HINT_T0>(tile.c.wrapping_add(i * tile.rs + 16 * h) as *const i8);
            }
        }
    }
    // The two common layouts (packed panels, rows read in place) get their strides as constants, so the addresses of
    // A's values are fixed offsets from one or MR pointers instead of a chain of additions.
    // SAFETY: forwarded from the caller.
    let acc = unsafe {
        if a.rs == 1 && a.ks == MR {
            products(kc, Packed(a.p), b)
        } else if a.ks == 1 {
            products(kc, RowsInPlace { p: a.p, rs: a.rs }, b)
        } else {
            products(kc, a, b)
        }
    };
    // SAFETY: forwarded from the caller.
    unsafe { store(&acc, tile, scale, add) }
}

/// How a layout of an A panel addresses its value (row i, step u) from the panel's start.
trait ALayout: Copy {
    /// # Safety
    /// (i, u) lies inside the panel.
    unsafe fn value(self, i: usize, u: usize) -> f32;
    /// The panel less its first `steps` steps.
    fn advance(self, steps: usize) -> Self;
}

/// A packed panel: MR values per step.
#[derive(Clone, Copy)]
struct Packed(*const f32);

impl ALayout for Packed {
    #[inline(always)]
    unsafe fn value(self, i: usize, u: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe { *self.0.add(u * MR + i) }
    }
    #[inline(always)]
    fn advance(self, steps: usize) -> Self {
        Packed(self.0.wrapping_add(steps * MR))
    }
}

/// Rows read in place, their steps adjacent.
#[derive(Clone, Copy)]
struct RowsInPlace {
    p: *const f32,
    rs: usize,
}

impl ALayout for RowsInPlace {
    #[inline(always)]
    unsafe fn value(self, i: usize, u: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe { *self.p.add(i * self.rs + u) }
    }
    #[inline(always)]
    fn advance(self, steps: usize) -> Self {
        RowsInPlace { p: self.p.wrapping_add(steps), ..self }
    }
}

impl ALayout for APanel {
    #[inline(always)]
    unsafe fn value(self, i: usize, u: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe { *self.p.add(i * self.rs + u * self.ks) }
    }
    #[inline(always)]
    fn advance(self, steps: usize) -> Self {
        APanel { p: self.p.wrapping_add(steps * self.ks), ..self }
    }
}

/// The MR × NR products over `kc` steps, each element accumulated over k in order with one
/// FMA per step.
///
/// # Safety
/// AVX-512F; `a` has kc readable steps and `b` holds `kc · NR` floats.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn products<A: ALayout>(kc: usize, mut a: A, mut b: *const f32) -> [[__m512; NV]; MR] {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    // One step: NV vectors of B, MR broadcasts of A, MR · NV FMAs.
    let step = |acc: &mut [[__m512; NV]; MR], a: A, u: usize, b: *const f32| {
        // SAFETY: the packed panels hold kc steps of MR and NR floats.
        unsafe {
            let mut bv = [_mm512_setzero_ps(); NV];
            // No software prefetch: B's panels come from the L2-resident block, which the
            // core's own prefetchers stream (prefetching eight steps ahead measured 4–7% slower
            // on the GEMMs and models than none, BENCHMARKS.md).
            for (h, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(b.add(16 * h));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(a.value(i, u));
                for (h, r) in row.iter_mut().enumerate() {
                    *r = _mm512_fmadd_ps(ai, bv[h], *r);
                }
            }
        }
    };
    for _ in 0..kc / 4 {
        for u in 0..4 {
            // SAFETY: step u of the next four lies inside the panels.
            step(&mut acc, a, u, unsafe { b.add(u * NR) });
        }
        a = a.advance(4);
        b = b.wrapping_add(4 * NR);
    }
    for _ in 0..kc % 4 {
        step(&mut acc, a, 0, b);
        a = a.advance(1);
        b = b.wrapping_add(NR);
    }
    acc
}

#[target_feature(enable = "avx512f")]
unsafe fn store(acc: &[[__m512; NV]; MR], t: Tile, scale: f32, add: bool) {
    let s = _mm512_set1_ps(scale);
    if t.cs == 1 {
        let full = |from: usize| -> __mmask16 {
            let n = t.cols.saturating_sub(from).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        for (i, row) in acc.iter().enumerate() {
            // Constant trip count with a run-time test keeps the accumulators in registers.
            if i < t.rows {
                for (h, &value) in row.iter().enumerate() {
                    let mask = full(16 * h);
                    // SAFETY: masked lanes are neither read nor written; the rest is the tile.
                    unsafe {
                        let p = t.c.add(i * t.rs + 16 * h);
                        let v = if add {
                            _mm512_fmadd_ps(value, s, _mm512_maskz_loadu_ps(mask, p))
                        } else {
                            _mm512_mul_ps(value, s)
                        };
                        _mm512_mask_storeu_ps(p, mask, v);
                    }
                }
            }
        }
        return;
    }
    let mut values = [0f32; MR * NR];
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: `values` holds MR rows of NR floats.
        unsafe {
            for (h, v) in row.iter().enumerate() {
                _mm512_storeu_ps(values.as_mut_ptr().add(i * NR + 16 * h), *v);
            }
        }
    }
    for i in 0..t.rows {
        for j in 0..t.cols {
            // SAFETY: (i, j) is inside the tile.
            unsafe {
                let p = t.c.add(i * t.rs + j * t.cs);
                let v = values[i * NR + j];
                *p = if add { v.mul_add(scale, *p) } else { v * scale };
            }
        }
    }
}
