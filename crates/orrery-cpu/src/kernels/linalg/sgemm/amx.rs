//! f32 products on AMX tiles (Intel Sapphire Rapids and later), as accurate as f32 FMAs.
//!
//! AMX multiplies bf16 (8 significant bits) and sums in f32, at 16 times the f32 FMA rate of
//! AVX-512 per core. An f32 value splits exactly into three bf16 parts, each rounded to
//! nearest even from what the parts before it left: `x = x₁ + x₂ + x₃` with
//! `|x₂| ≤ 2⁻⁸|x|` and `|x₃| ≤ 2⁻¹⁶|x|`. Of the nine products of parts, the six of weight
//! 2⁻¹⁶ of `|a·b|` or more (`a₁b₁, a₂b₁, a₃b₁, a₁b₂, a₂b₂, a₁b₃`) are computed, each exactly,
//! and summed in f32 by `tdpbf16ps`; the three left out (`a₂b₃, a₃b₂, a₃b₃`) weigh at most
//! 2⁻²³ of `|a·b|` together, about one f32 rounding. So a product's error stays that of an
//! f32 dot product (tested against f64 on random shapes at 1e-6 of `Σ|a||b|`, `tests.rs`).
//!
//! Departures from f32 FMAs, all outside finite normal numbers: a non-finite operand (Inf or
//! NaN) makes every element it reaches NaN (its lower parts would multiply Inf by 0), and
//! parts below f32's normal range (operands under 2⁻¹⁰⁹ or so) count as 0, as AMX reads them.
//!
//! Layout. C is computed in 32 × 32 blocks, four 16 × 16 f32 tiles (tmm0–3). A is packed in
//! panels of 32 rows and B in panels of 32 columns, per block of 32 steps of k: three parts
//! of two 1 KiB tiles each, A's tiles row-major (16 rows × 32 bf16 of k), B's in the pair
//! layout `tdpbf16ps` reads (16 rows of k pairs × 16 columns). Per 32 steps of k a block
//! takes 24 `tdpbf16ps` and 18 tile loads (an A tile's reloads hit L1); each A panel meets
//! every B panel of the L2-resident block in turn. Measured in C on this kind of core
//! (`tools/bench/amx_sweep.c`): 2.0 TFLOP/s bf16 with both operands in cache, 2.5 without
//! the tile stores that end each pass, 1.7 with A from L3 (the tiles reach 3.5 from
//! registers).
//!
//! Packing. Row-major B is split straight from its rows (`pack_b_rows`); other B is staged
//! first as the AVX-512 kernel's f32 panels. The threads of a column split would each split
//! all of A: they split it once together instead, each its own rows (`pack_a_shared`), and
//! each sweeps the rows it split first, while they are still in its caches (`gemm512`: the
//! two together 1.10× in-process, BENCHMARKS.md).
//!
//! Determinism: as in the AVX-512 kernel (with passes of its own length), k is cut into
//! passes of [`KC`] whatever the sizes, every element of a pass is summed over its k blocks
//! and parts in one fixed order, and the pass's sum is added to C in pass order, so the bits
//! of an element depend on its row of A, its column of B and k only.

use super::{BSource, Out, Product};
use rayon::prelude::*;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows and columns of a C block (two tiles each way).
const BLOCK: usize = 32;
/// Steps of k per tile: 32 bf16, one 64-byte tile row.
const KB: usize = 32;
/// bf16 parts of an f32 value.
const PARTS: usize = 3;
/// bf16 elements of one 16 × 32 tile.
const TILE: usize = 512;
/// bf16 elements of a 32-row (or 32-column) panel per k block: every part's two tiles.
const PANEL_STEP: usize = PARTS * 2 * TILE;
/// Steps of k per pass: an A panel is 96 KiB of tiles. Twice the AVX-512 kernel's: each pass
/// ends by storing every C block's tiles, which waits for their sums (against 256, in-process
/// A/B: T5 encoder 1.07×, DiT 1.07×, GEMM 1024³ 1.24×, VAE decode 1.04×).
const KC: usize = 512;
/// Columns of B packed at a time: 512 steps × 256 columns × 3 parts, 768 KiB, in L2.
const NB: usize = 256;
/// Rows of A packed at a time (12 MiB of panels at 512 steps, from L3 either way); B is
/// packed again for each such block (against 1024 rows: `gemm4096` 1.06×, 8192 × 4096²
/// 1.07×).
const MB: usize = 4096;

/// True when the CPU has AMX-TILE, AMX-BF16, AVX-512BW and AVX512-BF16, the kernel lets this
/// process use the tile registers (Linux asks each process to request them), and
/// `ORRERY_GEMM` is not `avx512` (which keeps every product on the AVX-512 kernel, for
/// comparisons).
pub(crate) fn available() -> bool {
    static USE: OnceLock<bool> = OnceLock::new();
    *USE.get_or_init(|| {
        if std::env::var("ORRERY_GEMM").is_ok_and(|v| v == "avx512") {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        amx_bf16
            && amx_tile
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512bf16")
            && request_tile_data()
    })
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
/// without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call; it reads no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The tile configuration (palette 1): tmm0–7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Configures this thread's tiles, runs `f`, and releases them (so a context switch does not
/// save 8 KiB of tile data).
///
/// # Safety
/// [`available`] is true.
unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    let mut config = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], bytes_per_row: [0; 16], rows: [0; 16] };
    config.bytes_per_row[..8].fill(64);
    config.rows[..8].fill(16);
    // SAFETY: AMX is available and permitted (caller); the configuration is valid.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    let result = f();
    // SAFETY: as above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    result
}

thread_local! {
    /// Each thread's packed A and B blocks and its f32 staging block for B, kept between
    /// products: up to 12 MiB of A (a product of 4096 rows or more), 768 KiB of B and 512 KiB
    /// of staging.
    static SCRATCH: RefCell<(Vec<u16>, Vec<u16>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// One thread's product on AMX, B from any source (staged as the AVX-512 kernel's f32 panels,
/// or read from them when packed ahead, then split into parts).
///
/// # Safety
/// As `sgemm::single`, and [`available`] is true.
pub(super) unsafe fn single(m: usize, n: usize, k: usize, p: Product<'_>) {
    SCRATCH.with(|scratch| {
        let (a_buf, b_buf, staging) = &mut *scratch.borrow_mut();
        let kc_max = KC.min(k).next_multiple_of(KB);
        // The first of A's rows this thread split, where the threads split A together: its
        // sweeps start there, while those panels are still in its caches.
        let packed_here = p.a_packed.and_then(|(a, from)| Some(a.rows_packed_here()?.saturating_sub(from)));
        let block_rows = MB.min(m);
        // A packed ahead is read as it is: no A block.
        let a_rows = if p.a_packed.is_some() { 0 } else { block_rows };
        // B packed ahead is read split already: no staging, no B block.
        let nb_max = if matches!(p.b, BSource::Packed { .. }) { 0 } else { NB.min(n).next_multiple_of(super::NR) };
        let a_buf = aligned(a_buf, a_rows.div_ceil(BLOCK) * panel_len(kc_max));
        let b_buf = aligned(b_buf, nb_max.div_ceil(BLOCK) * panel_len(kc_max));
        if staging.len() < nb_max * KC.min(k) {
            staging.resize(nb_max * KC.min(k), 0.0);
        }
        // SAFETY: available (caller).
        unsafe {
            with_tiles(|| {
                for i0 in (0..m).step_by(block_rows) {
                    let mb = block_rows.min(m - i0);
                    for (pass, k0) in (0..k).step_by(KC).enumerate() {
                        let kc = KC.min(k - k0);
                        let (a_panels, first): (&[u16], usize) = match p.a_packed {
                            // MB and `from` are whole numbers of panels.
                            Some((a, from)) => {
                                let first = packed_here.map_or(0, |r| r.saturating_sub(i0) / BLOCK);
                                (&a.split.pass(pass)[(from + i0) / BLOCK * panel_len(kc)..], first)
                            }
                            None => {
                                // SAFETY: the block lies inside A (caller).
                                pack_a(a_buf, p.a.at(i0, k0), mb, kc);
                                (a_buf, 0)
                            }
                        };
                        let add = p.add || pass > 0;
                        for j0 in (0..n).step_by(NB) {
                            let nb = NB.min(n - j0);
                            let panels: &[u16] = match p.b {
                                // NB and `from` are whole numbers of panels: columns from + j0..
                                // start panel (from + j0) / 32.
                                BSource::Packed { b, j0: from } => {
                                    &b.split.pass(pass)[(from + j0) / BLOCK * panel_len(kc)..]
                                }
                                // Rows of B adjacent over its columns: split straight from B.
                                BSource::Strided(b) if b.cs == 1 => {
                                    // SAFETY: the block lies inside B (caller).
                                    pack_b_rows(b_buf, b.at(k0, j0), kc, nb);
                                    b_buf
                                }
                                source => {
                                    // SAFETY: the block lies inside B (caller).
                                    super::stage_b(staging, source, k0, kc, j0, nb);
                                    pack_b(b_buf, staging, kc, nb);
                                    b_buf
                                }
                            };
                            sweep(a_panels, mb, first, panels, nb, kc, p.c.at(i0, j0), p.scale, add);
                        }
                    }
                }
            })
        }
    });
}

/// bf16 elements of a 32-row (or 32-column) panel over a pass of `kc` steps.
fn panel_len(kc: usize) -> usize {
    kc.div_ceil(KB) * PANEL_STEP
}

/// An operand packed ahead ([`super::PackedB`], [`super::PackedA`]): its tile panels pass by
/// pass, each pass `KC` steps (fewer in the last), made by the per-product packers so that a
/// product reading them has the bits of one packing the operand itself.
#[derive(Default)]
pub(super) struct Split {
    data: Vec<u16>,
    offset: usize,
    /// bf16 elements of one whole pass.
    pass_len: usize,
}

impl Split {
    /// Packs the `k × n` matrix `source` as B: f32 panels staged block by block, then split.
    pub(super) fn pack_b(&mut self, k: usize, n: usize, source: BSource<'_>) {
        self.fill(n, k, |k0, kc, dst| {
            STAGING.with(|staging| {
                let mut staging = staging.borrow_mut();
                let nb_max = NB.min(n).next_multiple_of(super::NR);
                if staging.len() < nb_max * kc {
                    staging.resize(nb_max * kc, 0.0);
                }
                for j0 in (0..n).step_by(NB) {
                    let nb = NB.min(n - j0);
                    // SAFETY: AVX-512F and the block lies inside B (the packer's caller).
                    unsafe { super::stage_b(&mut staging, source, k0, kc, j0, nb) };
                    // SAFETY: AVX-512BW and AVX512-BF16 ([`available`], checked by the caller).
                    unsafe { pack_b(&mut dst[j0 / BLOCK * panel_len(kc)..], &staging, kc, nb) };
                }
            });
        });
    }

    /// Packs the `m × k` matrix `a` as A.
    ///
    /// # Safety
    /// Every element (i, j), i < m, j < k, of `a` is readable; AVX-512BW and AVX512-BF16
    /// ([`available`]).
    pub(super) unsafe fn pack_a(&mut self, m: usize, k: usize, a: super::Strided) {
        let a = SyncStrided(a);
        // SAFETY: each pass lies inside A; AVX-512BW and AVX512-BF16 (caller).
        self.fill(m, k, |k0, kc, dst| unsafe { pack_a(dst, a.at(0, k0), m, kc) });
    }

    /// Packs the `m × k` matrix `a` as A on `parts` threads, each its own rows of every
    /// pass (for a product whose threads split C's columns, which would each pack all of A).
    /// Returns, per part, the pool thread that packed it and its first row.
    ///
    /// # Safety
    /// As [`Split::pack_a`].
    pub(super) unsafe fn pack_a_shared(
        &mut self,
        m: usize,
        k: usize,
        a: super::Strided,
        parts: usize,
    ) -> Vec<(Option<usize>, usize)> {
        let (a, pass_len) = (SyncStrided(a), self.size(m, k));
        let data = SyncPanels(self.data[self.offset..].as_mut_ptr());
        let height = m.div_ceil(parts).next_multiple_of(BLOCK);
        (0..m.div_ceil(height))
            .into_par_iter()
            .map(|part| {
                let (i0, rows) = (part * height, height.min(m - part * height));
                for (pass, k0) in (0..k).step_by(KC).enumerate() {
                    let (kc, panel) = (KC.min(k - k0), panel_len(KC.min(k - k0)));
                    // SAFETY: rows i0.. of this pass: whole panels (i0 is a multiple of BLOCK) that
                    // no other part writes, inside the sized data.
                    let dst = unsafe { data.slice(pass * pass_len + i0 / BLOCK * panel, rows.div_ceil(BLOCK) * panel) };
                    // SAFETY: those rows and steps lie inside A; AVX-512BW and AVX512-BF16
                    // (caller).
                    unsafe { pack_a(dst, a.at(i0, k0), rows, kc) };
                }
                (rayon::current_thread_index(), i0)
            })
            .collect()
    }

    /// Sizes the panels of `lines` rows (or columns) over `k` steps; returns a pass's length.
    fn size(&mut self, lines: usize, k: usize) -> usize {
        self.pass_len = lines.div_ceil(BLOCK) * panel_len(KC.min(k));
        self.offset = aligned_offset(&mut self.data, k.div_ceil(KC) * self.pass_len);
        self.pass_len
    }

    /// Sizes the panels of `lines` rows (or columns) over `k` steps and has `pack_pass(k0,
    /// kc, dst)` pack each pass, in parallel when there are several.
    fn fill(&mut self, lines: usize, k: usize, pack_pass: impl Fn(usize, usize, &mut [u16]) + Sync) {
        self.size(lines, k);
        let passes = k.div_ceil(KC);
        let data = &mut self.data[self.offset..][..passes * self.pass_len];
        let one = |(pass, dst): (usize, &mut [u16])| pack_pass(pass * KC, KC.min(k - pass * KC), dst);
        if passes > 1 {
            data.par_chunks_mut(self.pass_len).enumerate().for_each(one);
        } else {
            data.chunks_mut(self.pass_len).enumerate().for_each(one);
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.data.capacity() * 2
    }

    /// Bytes the panels of `lines` rows (or columns) over `k` steps hold (at least).
    pub(super) fn bytes_for(lines: usize, k: usize) -> usize {
        (k.div_ceil(KC) * lines.div_ceil(BLOCK) * panel_len(KC.min(k)) + 32) * 2
    }

    /// Pass `pass`'s panels.
    fn pass(&self, pass: usize) -> &[u16] {
        &self.data[self.offset + pass * self.pass_len..]
    }
}

/// A, read by the threads packing its passes.
struct SyncStrided(super::Strided);
// SAFETY: the threads only read A.
unsafe impl Sync for SyncStrided {}

impl SyncStrided {
    // A method, so closures capture the whole (`Sync`) wrapper.
    fn at(&self, i: usize, j: usize) -> super::Strided {
        self.0.at(i, j)
    }
}

/// The panels [`Split::pack_a_shared`]'s threads write, each its own.
struct SyncPanels(*mut u16);
// SAFETY: the threads write disjoint ranges.
unsafe impl Sync for SyncPanels {}

impl SyncPanels {
    /// `len` elements from `at` on.
    ///
    /// # Safety
    /// They lie inside the panels, and no one else uses them meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [u16] {
        // SAFETY: caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

thread_local! {
    /// Each thread's f32 staging block for packing B ahead (kept apart from [`SCRATCH`], which
    /// a product holds while it runs).
    static STAGING: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `len` elements of `buf` starting on a 64-byte boundary (tile rows then lie in one cache
/// line each).
fn aligned(buf: &mut Vec<u16>, len: usize) -> &mut [u16] {
    let offset = aligned_offset(buf, len);
    &mut buf[offset..offset + len]
}

/// Grows `buf` to hold `len` elements from a 64-byte boundary on; returns where that starts.
fn aligned_offset(buf: &mut Vec<u16>, len: usize) -> usize {
    if buf.len() < len + 32 {
        *buf = vec![0; len + 32];
    }
    buf.as_ptr().align_offset(64).min(31)
}

/// Every 32 × 32 block of a `rows × cols` block of C from packed panels over one pass, A's
/// panels from panel `first` on and then those before it (the blocks of a pass are
/// independent: any order gives the same bits).
///
/// # Safety
/// Tiles configured; the block of C is this thread's.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn sweep(
    a: &[u16],
    rows: usize,
    first: usize,
    b: &[u16],
    cols: usize,
    kc: usize,
    c: Out,
    scale: f32,
    add: bool,
) {
    let panel = panel_len(kc);
    let mut acc = Accumulator([0.0; BLOCK * BLOCK]);
    let panels = rows.div_ceil(BLOCK);
    for ip in (first..panels).chain(0..first.min(panels)) {
        let a_panel = &a[ip * panel..][..panel];
        for jp in 0..cols.div_ceil(BLOCK) {
            let b_panel = &b[jp * panel..][..panel];
            let (live_rows, live_cols) = (BLOCK.min(rows - ip * BLOCK), BLOCK.min(cols - jp * BLOCK));
            let at = c.at(ip * BLOCK, jp * BLOCK);
            if scale == 1.0 && !add && c.cs == 1 && live_rows == BLOCK && live_cols == BLOCK {
                // The sums are C's values: the tiles store straight into C.
                // SAFETY: tiles configured (caller); both panels hold kc / KB blocks; the
                // block of C is a whole 32 × 32 one, this thread's, rows `c.rs` apart.
                unsafe { block(kc.div_ceil(KB), a_panel.as_ptr(), b_panel.as_ptr(), at.c, c.rs * 4) };
                continue;
            }
            // SAFETY: tiles configured (caller); both panels hold kc / KB blocks.
            unsafe { block(kc.div_ceil(KB), a_panel.as_ptr(), b_panel.as_ptr(), acc.0.as_mut_ptr(), BLOCK * 4) };
            // SAFETY: the block lies inside this thread's C (caller).
            unsafe { store(&acc, at, live_rows, live_cols, scale, add) };
        }
    }
}

/// A 32 × 32 block of f32 sums, row-major, aligned for tile stores.
#[repr(C, align(64))]
struct Accumulator([f32; BLOCK * BLOCK]);

/// Stores the pass's products of one A panel and one B panel over `blocks` k blocks as 32
/// rows of 32 floats, `row_bytes` apart, at `out` (the accumulator, or C itself when the sums
/// are C's values).
///
/// # Safety
/// Tiles configured; both panels hold `blocks` k blocks; the rows at `out` are writable.
#[inline]
unsafe fn block(blocks: usize, a: *const u16, b: *const u16, out: *mut f32, row_bytes: usize) {
    // SAFETY: the tiles are configured (caller).
    unsafe { asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem)) };
    for kb in 0..blocks {
        // Part p's tiles start at byte (2p)·1024 (rows 0–15 or columns 0–15) and
        // (2p + 1)·1024 (16–31). tmm4/5: A's row tiles; tmm6/7: B's column tiles. The
        // products run grouped by B's part, so each B tile is loaded once per k block:
        // a₁b₁, a₂b₁, a₃b₁, then a₁b₂, a₂b₂, then a₁b₃.
        // SAFETY: block kb's 6 KiB of each panel are readable (caller).
        unsafe {
            let (a, b) = (a.add(kb * PANEL_STEP), b.add(kb * PANEL_STEP));
            asm!(
                "tileloadd tmm6, [{b} + {s}]",
                "tileloadd tmm7, [{b} + {s} + 1024]",
                "tileloadd tmm4, [{a} + {s}]",
                "tileloadd tmm5, [{a} + {s} + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{a} + {s} + 2048]",
                "tileloadd tmm5, [{a} + {s} + 3072]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{a} + {s} + 4096]",
                "tileloadd tmm5, [{a} + {s} + 5120]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{b} + {s} + 2048]",
                "tileloadd tmm7, [{b} + {s} + 3072]",
                "tileloadd tmm4, [{a} + {s}]",
                "tileloadd tmm5, [{a} + {s} + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{a} + {s} + 2048]",
                "tileloadd tmm5, [{a} + {s} + 3072]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{b} + {s} + 4096]",
                "tileloadd tmm7, [{b} + {s} + 5120]",
                "tileloadd tmm4, [{a} + {s}]",
                "tileloadd tmm5, [{a} + {s} + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a = in(reg) a,
                b = in(reg) b,
                s = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
    }
    // SAFETY: `out` holds 32 rows of 32 floats, `row_bytes` apart (caller).
    unsafe {
        let lower = out.byte_add(16 * row_bytes);
        asm!(
            "tilestored [{c} + {s}], tmm0",
            "tilestored [{c} + {s} + 64], tmm1",
            "tilestored [{l} + {s}], tmm2",
            "tilestored [{l} + {s} + 64], tmm3",
            c = in(reg) out,
            l = in(reg) lower,
            s = in(reg) row_bytes,
            options(nostack),
        );
    }
}

/// `C = scale · acc` (or `C += scale · acc` when `add`) over the live part of a block.
///
/// # Safety
/// AVX-512F; the `rows × cols` elements at `c` are this thread's.
#[target_feature(enable = "avx512f")]
unsafe fn store(acc: &Accumulator, c: Out, rows: usize, cols: usize, scale: f32, add: bool) {
    if c.cs != 1 {
        for i in 0..rows {
            for j in 0..cols {
                // SAFETY: (i, j) is inside the block (caller).
                unsafe {
                    let p = c.c.add(i * c.rs + j * c.cs);
                    let v = acc.0[i * BLOCK + j];
                    *p = if add { v.mul_add(scale, *p) } else { v * scale };
                }
            }
        }
        return;
    }
    let s = _mm512_set1_ps(scale);
    for i in 0..rows {
        for h in 0..BLOCK / 16 {
            let live = cols.saturating_sub(16 * h).min(16);
            let mask = ((1u32 << live) - 1) as __mmask16;
            // SAFETY: masked lanes are neither read nor written; the rest is the block.
            unsafe {
                let p = c.c.add(i * c.rs + 16 * h);
                let v = _mm512_loadu_ps(acc.0.as_ptr().add(i * BLOCK + 16 * h));
                let v = if add { _mm512_fmadd_ps(v, s, _mm512_maskz_loadu_ps(mask, p)) } else { _mm512_mul_ps(v, s) };
                _mm512_mask_storeu_ps(p, mask, v);
            }
        }
    }
}

/// The three bf16 parts of 32 f32 values (`lo`'s 16, then `hi`'s), each part 32 bf16 in that
/// order. `vcvtne2ps2bf16` rounds to nearest even; a non-finite value leaves a NaN among its
/// parts (Inf − Inf), so every output it reaches is NaN; parts below f32's normal range are 0
/// (the instruction reads subnormal values as 0, as the tiles would).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
fn split(lo: __m512, hi: __m512) -> [__m512i; PARTS] {
    // The f32 values of 16 bf16 words.
    let widen = |words: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(words)));
    let rest = |x: __m512i, lo: __m512, hi: __m512| {
        let (x_lo, x_hi) = (_mm512_castsi512_si256(x), _mm512_extracti64x4_epi64::<1>(x));
        (_mm512_sub_ps(lo, widen(x_lo)), _mm512_sub_ps(hi, widen(x_hi)))
    };
    // SAFETY (each transmute): __m512bh and __m512i are both 64 bytes of plain bits.
    let x1: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
    let (r1_lo, r1_hi) = rest(x1, lo, hi);
    let x2: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(r1_hi, r1_lo)) };
    // The rest has at most 8 significant bits: its conversion is exact.
    let (r2_lo, r2_hi) = rest(x2, r1_lo, r1_hi);
    let x3: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(r2_hi, r2_lo)) };
    [x1, x2, x3]
}

/// Rows of A fetched ahead of the one being packed.
const AHEAD: usize = 4;

/// Packs A's `rows × kc` block into panels of 32 rows: per k block, per part, two row tiles,
/// each row 32 bf16 of consecutive k. Rows and steps past the block are zeros.
///
/// # Safety
/// Every element (i, k), i < rows, k < kc, of `a` is readable; AVX-512BW and AVX512-BF16
/// ([`available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_a(dst: &mut [u16], a: super::Strided, rows: usize, kc: usize) {
    let (blocks, panel) = (kc.div_ceil(KB), panel_len(kc));
    let mut values = [0f32; KB];
    for r in 0..rows.next_multiple_of(BLOCK) {
        let (ip, row) = (r / BLOCK, r % BLOCK);
        if a.cs == 1 && r + AHEAD < rows {
            // Each row's run is a new stream (a row's pass is 1 KiB, rows lie a whole row of A
            // apart): fetch a few rows ahead so the loads below do not wait on memory.
            for step in (0..kc).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(a.p.wrapping_add((r + AHEAD) * a.rs + step) as *const i8);
            }
        }
        for kb in 0..blocks {
            let steps = KB.min(kc - kb * KB);
            let (lo, hi) = if r >= rows {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            } else if a.cs == 1 {
                let p = a.p.wrapping_add(r * a.rs + kb * KB);
                let mask = |from: usize| ((1u32 << steps.saturating_sub(from).min(16)) - 1) as __mmask16;
                // SAFETY: masked lanes are not read; the rest lie inside the row (caller).
                unsafe { (_mm512_maskz_loadu_ps(mask(0), p), _mm512_maskz_loadu_ps(mask(16), p.wrapping_add(16))) }
            } else {
                values.fill(0.0);
                for (s, v) in values.iter_mut().take(steps).enumerate() {
                    // SAFETY: element (r, kb·KB + s) is readable (caller).
                    *v = unsafe { *a.p.add(r * a.rs + (kb * KB + s) * a.cs) };
                }
                // SAFETY: `values` holds 32 floats.
                unsafe { (_mm512_loadu_ps(values.as_ptr()), _mm512_loadu_ps(values.as_ptr().add(16))) }
            };
            for (part, words) in split(lo, hi).into_iter().enumerate() {
                let at = ip * panel + kb * PANEL_STEP + (2 * part + row / 16) * TILE + (row % 16) * KB;
                // SAFETY: the panel's tile row lies inside `dst` (sized by the caller).
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(at) as *mut _, words) };
            }
        }
    }
}

/// Packs B's `kc × cols` block, staged as f32 panels of `super::NR` columns (k-major), into
/// panels of 32 columns (see [`pack_b_with`]).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_b(dst: &mut [u16], staged: &[f32], kc: usize, cols: usize) {
    const W: usize = super::NR;
    pack_b_with(dst, kc, cols, |k, col| {
        // SAFETY: staged panel col / W holds kc steps of W floats, zeros past `cols`.
        unsafe { _mm512_loadu_ps(staged.as_ptr().add((col / W) * W * kc + k * W + col % W)) }
    })
}

/// Packs B's `kc × cols` block read straight from B's rows (`b.cs == 1`): the panels
/// [`pack_b`] makes from the same block staged, without staging it (one copy of B fewer).
///
/// # Safety
/// Every element (k, j), k < kc, j < cols, of `b` is readable, and `b.cs == 1`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b_rows(dst: &mut [u16], b: super::Strided, kc: usize, cols: usize) {
    debug_assert_eq!(b.cs, 1);
    pack_b_with(dst, kc, cols, |k, col| {
        if col == 0 && k + AHEAD < kc {
            // Each pair of rows is a new stream: fetch a few rows ahead, as `pack_a` does.
            for j in (0..cols).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(b.p.wrapping_add((k + AHEAD) * b.rs + j) as *const i8);
            }
        }
        let live = cols.saturating_sub(col).min(16);
        // SAFETY: masked lanes are not read; the rest lie inside the block (caller).
        unsafe { _mm512_maskz_loadu_ps(((1u32 << live) - 1) as __mmask16, b.p.wrapping_add(k * b.rs + col)) }
    })
}

/// Packs a `kc × cols` block of B, 16 columns of step k at a time from `load(k, col)` (zeros
/// past `cols`), into panels of 32 columns: per k block, per part, two column tiles of 16 k
/// pairs × 16 columns, each pair (k even, k odd) one 32-bit word. Steps past kc are zeros.
/// The steps run outermost, so a loader reading B's rows reads each along its length.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
fn pack_b_with(dst: &mut [u16], kc: usize, cols: usize, load: impl Fn(usize, usize) -> __m512) {
    let (blocks, panel) = (kc.div_ceil(KB), panel_len(kc));
    let step = |k: usize, col: usize| if k < kc { load(k, col) } else { _mm512_setzero_ps() };
    // Word i of 16 from step k, then word i from step k + 1: the pairs `tdpbf16ps` reads.
    let pairs = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    for kb in 0..blocks {
        for pair in 0..KB / 2 {
            let k = kb * KB + 2 * pair;
            for jp in 0..cols.div_ceil(BLOCK) {
                for tile in 0..2 {
                    let col = jp * BLOCK + 16 * tile;
                    for (part, words) in split(step(k, col), step(k + 1, col)).into_iter().enumerate() {
                        let words = _mm512_permutexvar_epi16(pairs, words);
                        let at = jp * panel + kb * PANEL_STEP + (2 * part + tile) * TILE + pair * KB;
                        // SAFETY: the tile row lies inside `dst` (sized by the caller).
                        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(at) as *mut _, words) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of 16 values, as f32.
    fn parts(values: [f32; 16]) -> [[f32; 16]; PARTS] {
        // SAFETY: AVX512-BF16 is checked by the caller; `values` holds 16 floats.
        let split = unsafe { split(_mm512_loadu_ps(values.as_ptr()), _mm512_setzero_ps()) };
        split.map(|part| {
            let mut words = [0u16; 32];
            // SAFETY: `words` holds 32 words.
            unsafe { _mm512_storeu_si512(words.as_mut_ptr() as *mut _, part) };
            std::array::from_fn(|i| f32::from_bits((words[i] as u32) << 16))
        })
    }

    /// The split as integer arithmetic on the bits would make it (round to nearest even by
    /// adding 0x7fff plus the kept part's lowest bit), for finite normal values.
    fn rounded_by_bits(values: [f32; 16]) -> [[f32; 16]; PARTS] {
        let round = |x: f32| {
            let bits = x.to_bits();
            f32::from_bits(bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
        };
        let mut out = [[0f32; 16]; PARTS];
        for (i, &x) in values.iter().enumerate() {
            let x1 = round(x);
            let x2 = round(x - x1);
            out[0][i] = x1;
            out[1][i] = x2;
            out[2][i] = x - x1 - x2;
        }
        out
    }

    fn bf16() -> bool {
        std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512bw")
    }

    /// Every finite normal value splits exactly into three bf16 values of falling weight,
    /// whatever its exponent, each rounded to nearest even (the bits integer rounding gives);
    /// ties round to even.
    #[test]
    fn parts_are_bf16_and_sum_back_exactly() {
        if !bf16() {
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4096 {
            let values: [f32; 16] = std::array::from_fn(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Any sign and mantissa, exponents 2^-100 .. 2^100.
                let exponent = 27 + (state >> 32) as u32 % 201;
                f32::from_bits((state as u32 & 0x807f_ffff) | (exponent << 23))
            });
            let [x1, x2, x3] = parts(values);
            let by_bits = rounded_by_bits(values);
            for (i, &x) in values.iter().enumerate() {
                let got = [x1[i], x2[i], x3[i]].map(f32::to_bits);
                assert_eq!(got, by_bits.map(|part| part[i].to_bits()), "{x:e}: not rounded to nearest even");
                assert_eq!(x1[i] as f64 + x2[i] as f64 + x3[i] as f64, x as f64, "{x:e} does not split exactly");
                assert!(x2[i].abs() <= x.abs() * 2f32.powi(-8) && x3[i].abs() <= x.abs() * 2f32.powi(-16), "{x:e}");
            }
        }
        // 1 + 2^-8 lies halfway between two bf16 values: it rounds to the even one, 1.
        let halfway = parts([1.0 + 2f32.powi(-8); 16]);
        assert_eq!((halfway[0][0], halfway[1][0]), (1.0, 2f32.powi(-8)));
    }

    /// A non-finite value leaves a NaN among its parts (so it reaches every output it touches
    /// as NaN, never as a finite number); a subnormal one splits into zeros, as the tiles read it.
    #[test]
    fn non_finite_values_split_into_nan() {
        if !bf16() {
            return;
        }
        let mut values = [1.5f32; 16];
        values[..4].copy_from_slice(&[f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40]);
        let [x1, x2, x3] = parts(values);
        for i in 0..3 {
            assert!([x1[i], x2[i], x3[i]].iter().any(|p| p.is_nan()), "value {}", values[i]);
        }
        assert_eq!((x1[3], x2[3], x3[3]), (0.0, 0.0, 0.0));
        assert_eq!((x1[4], x2[4], x3[4]), (1.5, 0.0, 0.0));
    }
}
