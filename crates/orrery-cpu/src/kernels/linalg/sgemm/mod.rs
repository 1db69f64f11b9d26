//! orrery's own f32 GEMM for x86-64 CPUs with AVX-512 (the `gemm` crate runs elsewhere).
//!
//! The blocked scheme of BLIS, in row-major terms: C is computed in 6 × 64 register tiles
//! (`kernel.rs`, 24 accumulators: 4 vectors of B times 6 broadcast values of A per step of
//! k). k is cut into passes of [`KC`]; per pass, B is packed in blocks of [`NB`] columns
//! (`pack.rs`, 1 MiB, L2-resident) and each 6-row panel of A stays in L1 while the block's
//! 64-column panels stream past. A is read in place when its rows or its k steps are adjacent
//! (activations, weights as stored) and packed in blocks of [`MB`] rows otherwise.
//!
//! Where the CPU has AMX, `amx.rs` runs every product of the process instead (same passes,
//! same error as f32 FMAs, other bits): f32 operands split into bf16 parts on tiles.
//!
//! Determinism: k is cut into passes of [`KC`] whatever the other sizes, each pass's partial
//! sum is accumulated in order by one FMA per step and added to C in pass order, and
//! threads split the rows or the columns of C only. So every output element has the same
//! bits whatever the thread count, the matrix's size in m and n, or the tile it falls in:
//! a slice of C's rows or columns computed alone equals the same slice of the whole product.

mod amx;
mod kernel;
mod pack;

pub(crate) use pack::{Bf16Rows, Strided};

use super::blas::{GatheredB, Threads};
use kernel::{APanel, Tile};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows of the register tile (broadcast from A).
pub(super) const MR: usize = 6;
/// 16-lane vectors of B per register-tile row.
pub(super) const NV: usize = 4;
/// Columns of the register tile.
pub(super) const NR: usize = 16 * NV;
/// Steps of k per pass: an A panel (6 KiB) and the B panel in use (64 KiB, streamed) per tile.
pub(super) const KC: usize = 256;
/// Columns of B packed at a time: 256 × 1024 floats, 1 MiB, about half an L2.
const NB: usize = 1024;
/// Rows of A packed at a time when it cannot be read in place: 1008 × 256 floats, about
/// 1 MiB. B is packed again for each block.
const MB: usize = 168 * MR;
/// Column panels each part of a column split gets at least.
const SPLIT_PANELS: usize = 4;
/// Rows of C each part of a row split starts on: whole row tiles of both kernels (6 rows
/// here, 32 on AMX, where A may be packed ahead in panels of 32 rows).
const ROW_BLOCK: usize = 96;
/// Below this many multiply-adds a product runs on one thread even when it may use more.
const MIN_SPLIT_WORK: usize = 1 << 21;

/// True when products run here: the CPU has AVX-512F and `ORRERY_GEMM` is not `crate`
/// (which selects the `gemm` crate, for comparisons).
pub(crate) fn available() -> bool {
    static USE: OnceLock<bool> = OnceLock::new();
    *USE.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f") && std::env::var("ORRERY_GEMM").map_or(true, |v| v != "crate")
    })
}

/// True when this process's products run on AMX (`amx.rs`).
pub(crate) fn on_amx() -> bool {
    amx::available()
}

/// C, a strided output behind a raw pointer.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub c: *mut f32,
    pub rs: usize,
    pub cs: usize,
}

impl Out {
    fn at(self, i: usize, j: usize) -> Out {
        Out { c: self.c.wrapping_add(i * self.rs + j * self.cs), ..self }
    }
}

/// Where B comes from: read through its strides (and packed block by block), or packed ahead.
#[derive(Clone, Copy)]
enum BSource<'a> {
    Strided(Strided),
    /// A bf16 weight as stored, widened while packing.
    Bf16Rows(Bf16Rows),
    /// Packed ahead, from column `j0` on (a whole number of panels).
    Packed {
        b: &'a PackedB,
        j0: usize,
    },
    /// Written by a source block by block while packing, from column `j0` on.
    Gathered {
        source: &'a dyn GatheredB,
        j0: usize,
    },
}

/// The operands of one product, shareable by the threads that split it.
#[derive(Clone, Copy)]
struct Product<'a> {
    c: Out,
    a: Strided,
    /// A packed ahead, from its row `.1` on (a multiple of [`ROW_BLOCK`]), where products
    /// would pack it (AMX); products read `a` otherwise.
    a_packed: Option<(&'a PackedA, usize)>,
    b: BSource<'a>,
    scale: f32,
    add: bool,
}

impl Product<'_> {
    /// The columns from j0 on (B read through its strides).
    fn columns_from(self, j0: usize) -> Self {
        let b = match self.b {
            BSource::Strided(b) => BSource::Strided(b.at(0, j0)),
            BSource::Bf16Rows(b) => BSource::Bf16Rows(b.at(0, j0)),
            BSource::Gathered { source, j0: from } => BSource::Gathered { source, j0: from + j0 },
            BSource::Packed { b, j0: from } => BSource::Packed { b, j0: from + j0 },
        };
        Product { c: self.c.at(0, j0), b, ..self }
    }

    fn rows_from(self, i0: usize) -> Self {
        let a_packed = self.a_packed.map(|(a, from)| (a, from + i0));
        Product { c: self.c.at(i0, 0), a: self.a.at(i0, 0), a_packed, ..self }
    }
}

// SAFETY: the threads that share a `Product` read A and B and write disjoint blocks of C.
unsafe impl Send for Product<'_> {}
unsafe impl Sync for Product<'_> {}
// SAFETY: the threads that pack passes of one B read it only.
unsafe impl Send for BSource<'_> {}
unsafe impl Sync for BSource<'_> {}

/// `C = scale · A·B` (m×k times k×n), or `C += scale · A·B` when `add`.
///
/// # Safety
/// The CPU supports AVX-512F ([`available`]); every element of A (m×k) and B (k×n) is
/// readable through its strides; every element of C (m×n) is writable, overlaps neither
/// operand, and no other thread touches it meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: Out,
    a: Strided,
    b: Strided,
    scale: f32,
    add: bool,
    threads: Threads,
) {
    // SAFETY: forwarded.
    unsafe { split(m, n, k, Product { c, a, a_packed: None, b: BSource::Strided(b), scale, add }, threads) }
}

/// [`sgemm`] with A also packed ahead (`a_packed`, made from `a` by [`PackedA::pack`]), for
/// the products that share one A: the same bits.
///
/// # Safety
/// As [`sgemm`]; `a_packed` holds A (`m × k`).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_packed_a(
    m: usize,
    n: usize,
    k: usize,
    c: Out,
    a: Strided,
    a_packed: &PackedA,
    b: Strided,
    scale: f32,
    add: bool,
    threads: Threads,
) {
    assert!(a_packed.m == m && a_packed.k == k, "A packed as {}×{}, used as {m}×{k}", a_packed.m, a_packed.k);
    let product = Product { c, a, a_packed: Some((a_packed, 0)), b: BSource::Strided(b), scale, add };
    // SAFETY: forwarded.
    unsafe { split(m, n, k, product, threads) }
}

/// [`sgemm`] with B the transpose of a bf16 matrix read as stored (`linear`'s weight), widened
/// exactly while it is packed: the bits of [`sgemm`] on the widened f32 matrix, with no
/// widened copy.
///
/// # Safety
/// As [`sgemm`], with B's element (k, j) at `b.p[j·b.rs + k]`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    c: Out,
    a: Strided,
    b: Bf16Rows,
    scale: f32,
    add: bool,
    threads: Threads,
) {
    // SAFETY: forwarded.
    unsafe { split(m, n, k, Product { c, a, a_packed: None, b: BSource::Bf16Rows(b), scale, add }, threads) }
}

/// [`sgemm`] with B written by `source` block by block as it is packed (an implicit im2col),
/// and A perhaps packed ahead (`a_packed`, made from `a` by [`PackedA::pack`]): the bits of
/// [`sgemm`] on the stored B.
///
/// # Safety
/// As [`sgemm`], with `source` answering every block of rows and columns inside `k × n`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_gathered(
    m: usize,
    n: usize,
    k: usize,
    c: Out,
    a: Strided,
    a_packed: Option<&PackedA>,
    source: &dyn GatheredB,
    add: bool,
    threads: Threads,
) {
    if let Some(packed) = a_packed {
        assert!(packed.m == m && packed.k == k, "A packed as {}×{}, used as {m}×{k}", packed.m, packed.k);
    }
    let a_packed = a_packed.map(|a| (a, 0));
    let product = Product { c, a, a_packed, b: BSource::Gathered { source, j0: 0 }, scale: 1.0, add };
    // SAFETY: forwarded.
    unsafe { split(m, n, k, product, threads) }
}

/// Splits C's rows or columns over the threads `threads` allows.
unsafe fn split(m: usize, n: usize, k: usize, product: Product<'_>, threads: Threads) {
    let parts = match threads {
        Threads::Single => 1,
        Threads::Pool => rayon::current_num_threads(),
    };
    if parts <= 1 || m * n * k < MIN_SPLIT_WORK {
        // SAFETY: forwarded.
        return unsafe { single(m, n, k, product) };
    }
    // Each part packs its own columns of B (unless packed ahead) and, unless A is read in
    // place, its own rows of A: a row split packs B once per part, a column split A (on AMX,
    // where A is always split into tiles, the parts of a column split share that work instead
    // for an A up to SHARED_A_BYTES: `shares_a`). So with A in place (or no bigger than B) the
    // columns are split, while every part still gets a few panels of them; otherwise the side
    // with more tiles. (Against splitting the side with more tiles, in-process A/B, 2 threads:
    // T5 encoder 1.04×, DiT 1.03×, linear 512×1024×4096 1.08×, GEMM 512³–4096³ 1.01–1.05×,
    // VAE decode 1.01×.)
    let a_in_place = product.a.cs == 1 || product.a.rs == 1;
    let wide = n.div_ceil(NR) >= SPLIT_PANELS * parts && (a_in_place || m <= n);
    if wide || n.div_ceil(NR) >= m.div_ceil(MR) {
        let width = n.div_ceil(parts).next_multiple_of(NR);
        let columns = |product: Product<'_>| {
            (0..n.div_ceil(width)).into_par_iter().for_each(|p| {
                let (j0, cols) = (p * width, width.min(n - p * width));
                let part = product.columns_from(j0);
                // SAFETY: each part writes its own columns of C.
                unsafe { single(m, cols, k, part) };
            })
        };
        if product.a_packed.is_some() || !shares_a(m, k) {
            return columns(product);
        }
        // On AMX each part would split all of A into tiles: the parts split it once, each its
        // own rows, and read that. (The buffer is taken out of its cell, so a product this
        // thread runs meanwhile, stolen from the pool, packs its own.)
        let mut packed = SHARED_A.take();
        (packed.m, packed.k) = (m, k);
        // SAFETY: A (caller); AMX ([`shares_a`]).
        packed.packers = unsafe { packed.split.pack_a_shared(m, k, product.a, parts) };
        columns(Product { a_packed: Some((&packed, 0)), ..product });
        SHARED_A.set(packed);
    } else {
        let height = m.div_ceil(parts).next_multiple_of(ROW_BLOCK);
        (0..m.div_ceil(height)).into_par_iter().for_each(|p| {
            let (i0, rows) = (p * height, height.min(m - p * height));
            let part = product.rows_from(i0);
            // SAFETY: each part writes its own rows of C.
            unsafe { single(rows, n, k, part) };
        });
    }
}

/// Bytes of tiles up to which the threads of a column split on AMX split A once together
/// (the most a thread's own A block holds: [`amx`]'s 4096 rows × 512 steps).
const SHARED_A_BYTES: usize = 12 << 20;

/// True when the threads of a column split split A (`m × k`) together first: on AMX, for an A
/// of at least two row panels whose splitting is worth a second handoff to the threads.
fn shares_a(m: usize, k: usize) -> bool {
    amx::available() && m >= 64 && m * k >= 1 << 16 && amx::Split::bytes_for(m, k) <= SHARED_A_BYTES
}

thread_local! {
    /// The A split by [`shares_a`]'s products, kept by the thread that starts them.
    static SHARED_A: std::cell::Cell<PackedA> = std::cell::Cell::new(PackedA::default());
}

/// One thread's product.
unsafe fn single(m: usize, n: usize, k: usize, p: Product<'_>) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !p.add {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside C.
                    unsafe { *p.c.at(i, j).c = 0.0 };
                }
            }
        }
        return;
    }
    if amx::available() {
        // SAFETY: forwarded; AMX is available.
        return unsafe { amx::single(m, n, k, p) };
    }
    // A is read in place when its rows or its steps are adjacent: a whole panel then needs no
    // copy (only a last, partial panel is packed, with zero rows). Otherwise A is packed in
    // blocks of MB rows, and B again for each block.
    let in_place = p.a.cs == 1 || p.a.rs == 1;
    let block_rows = if in_place { m } else { MB.min(m) };
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let kc_max = KC.min(k);
        let a_len = if in_place { MR } else { block_rows.next_multiple_of(MR) } * kc_max;
        let b_len = if matches!(p.b, BSource::Packed { .. }) { 0 } else { NB.min(n.next_multiple_of(NR)) * kc_max };
        let (a_buf, b_buf) = scratch.split(a_len, b_len);
        for i0 in (0..m).step_by(block_rows) {
            let mb = block_rows.min(m - i0);
            for (pass, k0) in (0..k).step_by(KC).enumerate() {
                let kc = KC.min(k - k0);
                // SAFETY: the block lies inside A (caller).
                let a = unsafe { APass::prepare(a_buf, p.a.at(i0, k0), mb, kc, in_place) };
                let add = p.add || pass > 0;
                for j0 in (0..n).step_by(NB) {
                    let nb = NB.min(n - j0);
                    let b_panels: &[f32] = match p.b {
                        // NB and `from` are whole numbers of panels: columns from + j0.. start
                        // panel (from + j0) / NR.
                        BSource::Packed { b, j0: from } => &b.pass(pass)[(from + j0) * kc..],
                        source => {
                            // SAFETY: the block lies inside B (caller).
                            unsafe { stage_b(b_buf, source, k0, kc, j0, nb) };
                            b_buf
                        }
                    };
                    // SAFETY: AVX-512F and the tiles (caller); both operands hold kc steps.
                    unsafe { sweep(&a, mb, b_panels, nb, p.c.at(i0, j0), p.scale, add) };
                }
            }
        }
    });
}

/// Packs B's block of rows `k0..k0 + kc`, columns `j0..j0 + nb` into `dst` as NR-column f32
/// panels, from any source but one packed ahead.
///
/// # Safety
/// AVX-512F; the block lies inside B.
unsafe fn stage_b(dst: &mut [f32], b: BSource<'_>, k0: usize, kc: usize, j0: usize, nb: usize) {
    match b {
        // SAFETY: forwarded.
        BSource::Strided(b) => unsafe { pack::pack_b(dst, b.at(k0, j0), kc, nb) },
        // SAFETY: forwarded.
        BSource::Bf16Rows(b) => unsafe { pack::pack_b_bf16(dst, b.at(k0, j0), kc, nb) },
        BSource::Gathered { source, j0: from } => pack::pack_b_gathered(dst, source, k0, kc, from + j0, nb),
        BSource::Packed { .. } => unreachable!("packed-ahead panels are read in place"),
    }
}

/// One pass (kc steps) of a block of A's rows, as MR-row panels read in place or packed.
struct APass<'a> {
    block: Strided,
    packed: &'a [f32],
    in_place: bool,
    /// Panels read in place (all whole ones when `in_place`).
    whole: usize,
    kc: usize,
}

impl<'a> APass<'a> {
    /// Packs what cannot be read in place into `buf`.
    ///
    /// # Safety
    /// Elements (i, k), i < rows, k < kc, of `block` are readable.
    unsafe fn prepare(buf: &'a mut [f32], block: Strided, rows: usize, kc: usize, in_place: bool) -> APass<'a> {
        let whole = if in_place { rows / MR } else { 0 };
        if whole * MR < rows {
            // SAFETY: forwarded.
            unsafe { pack::pack_a(buf, block.at(whole * MR, 0), rows - whole * MR, kc) };
        }
        APass { block, packed: buf, in_place, whole, kc }
    }

    fn panel(&self, ip: usize) -> APanel {
        if ip < self.whole {
            let at = self.block.at(ip * MR, 0);
            APanel { p: at.p, rs: at.rs, ks: at.cs }
        } else {
            let at = (ip - self.whole) * MR * self.kc;
            debug_assert!(!self.in_place || ip == self.whole);
            APanel { p: self.packed[at..].as_ptr(), rs: 1, ks: MR }
        }
    }
}

/// `rows` rows of A (one pass) times the packed panels of `cols` columns of B, into the
/// block of C at `c`. Each A panel stays in L1 while B's panels stream from L2.
///
/// # Safety
/// AVX-512F; the block of C is this thread's; `b_panels` holds `cols.div_ceil(NR)` panels.
unsafe fn sweep(a: &APass<'_>, rows: usize, b_panels: &[f32], cols: usize, c: Out, scale: f32, add: bool) {
    let kc = a.kc;
    for ip in 0..rows.div_ceil(MR) {
        let (panel, live) = (a.panel(ip), MR.min(rows - ip * MR));
        for (jp, b_panel) in b_panels.chunks_exact(NR * kc).take(cols.div_ceil(NR)).enumerate() {
            let at = c.at(ip * MR, jp * NR);
            let tile = Tile { c: at.c, rs: at.rs, cs: at.cs, rows: live, cols: NR.min(cols - jp * NR) };
            // SAFETY: forwarded; the tile lies inside the block.
            unsafe { kernel::tile(kc, panel, b_panel.as_ptr(), tile, scale, add) };
        }
    }
}

/// B packed once for several products that share it (attention's keys and values, read by
/// every block of queries; a `linear` weight, read by every call): the kernel's panels, pass
/// by pass, `KC` steps each (fewer in the last pass).
#[derive(Default)]
pub(crate) struct PackedB {
    /// The AVX-512 kernel's f32 panels; empty where products run on AMX.
    data: Vec<f32>,
    /// The panels split for AMX tiles where products run there (split once here rather than
    /// by every product that reads them); empty elsewhere.
    split: amx::Split,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs the `k × n` matrix `b`, reusing this buffer.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; every element (i, j), i < k, j < n, of `b` is readable.
    pub(crate) unsafe fn pack(&mut self, k: usize, n: usize, b: Strided) {
        // SAFETY: forwarded.
        unsafe { self.pack_source(k, n, BSource::Strided(b)) }
    }

    /// [`PackedB::pack`] for B the transpose of a bf16 matrix read as stored (`linear`'s
    /// weight), widened exactly: the panels of the widened f32 matrix.
    ///
    /// # Safety
    /// As [`PackedB::pack`], with B's element (k, j) at `b.p[j·b.rs + k]`.
    pub(crate) unsafe fn pack_bf16(&mut self, k: usize, n: usize, b: Bf16Rows) {
        // SAFETY: forwarded.
        unsafe { self.pack_source(k, n, BSource::Bf16Rows(b)) }
    }

    /// Packs B from `source` through the per-product packers, so a product reading these
    /// panels has the bits of one packing B itself. Passes are packed in parallel when there
    /// are several (a weight packed once).
    unsafe fn pack_source(&mut self, k: usize, n: usize, source: BSource<'_>) {
        (self.k, self.n) = (k, n);
        if amx::available() {
            self.data = Vec::new();
            return self.split.pack_b(k, n, source);
        }
        let width = n.next_multiple_of(NR);
        self.data.resize(k * width, 0.0);
        let pack_pass = |(pass, dst): (usize, &mut [f32])| {
            let k0 = pass * KC;
            // SAFETY: AVX-512F and the operand (caller); pass k0's panels fill `dst`.
            unsafe { stage_b(dst, source, k0, KC.min(k - k0), 0, n) };
        };
        if k > KC {
            self.data.par_chunks_mut(KC * width).enumerate().for_each(pack_pass);
        } else {
            self.data.chunks_mut(KC * width).enumerate().for_each(pack_pass);
        }
    }

    /// Bytes held by the panels (tests check [`PackedB::bytes_for`] against it).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.data.capacity() * 4 + self.split.bytes()
    }

    /// Bytes [`PackedB::pack`] of a `k × n` matrix would hold.
    pub(crate) fn bytes_for(k: usize, n: usize) -> usize {
        if amx::available() {
            amx::Split::bytes_for(n, k)
        } else {
            k * n.next_multiple_of(NR) * 4
        }
    }

    fn pass(&self, pass: usize) -> &[f32] {
        &self.data[pass * KC * self.n.next_multiple_of(NR)..]
    }
}

/// A packed once for several products that share it (a convolution's weights, read by every
/// call; a Winograd convolution's transformed weights, read by every block of tiles): on AMX
/// the tile panels of its parts, pass by pass; elsewhere nothing, as the AVX-512 kernel reads
/// such an A in place.
#[derive(Default)]
pub(crate) struct PackedA {
    split: amx::Split,
    m: usize,
    k: usize,
    /// Which pool thread packed which rows, by first row, where threads packed it together
    /// for one product.
    packers: Vec<(Option<usize>, usize)>,
}

impl PackedA {
    /// Packs the `m × k` matrix `a`, reusing this buffer.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; every element (i, j), i < m, j < k, of `a` is readable.
    pub(crate) unsafe fn pack(&mut self, m: usize, k: usize, a: Strided) {
        (self.m, self.k) = (m, k);
        self.packers.clear();
        if amx::available() {
            // SAFETY: forwarded.
            unsafe { self.split.pack_a(m, k, a) };
        }
    }

    /// The first of the rows this thread packed, if it packed some (their panels are still in
    /// its caches).
    fn rows_packed_here(&self) -> Option<usize> {
        let here = rayon::current_thread_index()?;
        self.packers.iter().find(|(thread, _)| *thread == Some(here)).map(|&(_, row)| row)
    }

    /// Bytes [`PackedA::pack`] of an `m × k` matrix would hold.
    pub(crate) fn bytes_for(m: usize, k: usize) -> usize {
        if amx::available() {
            amx::Split::bytes_for(m, k)
        } else {
            0
        }
    }
}

/// `C = scale · A·B` (or `C += …` when `add`) with B packed ahead, over its `n` columns from
/// `j0` on (a multiple of [`NR`]): the bits of [`sgemm`] on the unpacked B.
///
/// # Safety
/// As [`sgemm`], with `b` packed by [`PackedB::pack`] (or `pack_bf16`), C `m × n`, and
/// `j0 + n` at most B's columns.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_packed(
    m: usize,
    n: usize,
    j0: usize,
    c: Out,
    a: Strided,
    b: &PackedB,
    scale: f32,
    add: bool,
    threads: Threads,
) {
    assert!(j0.is_multiple_of(NR) && j0 + n <= b.n, "columns {j0}..{} of a packed B {} wide", j0 + n, b.n);
    let product = Product { c, a, a_packed: None, b: BSource::Packed { b, j0 }, scale, add };
    // SAFETY: forwarded.
    unsafe { split(m, n, b.k, product, threads) }
}

thread_local! {
    /// Each thread's packing buffers, kept between products (at most 2 MiB).
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch(Vec::new())) };
}

struct Scratch(Vec<f32>);

impl Scratch {
    /// Two buffers of `a` and `b` floats, each starting on a 64-byte boundary.
    fn split(&mut self, a: usize, b: usize) -> (&mut [f32], &mut [f32]) {
        let a_len = a.next_multiple_of(16);
        let need = a_len + b + 16;
        if self.0.len() < need {
            self.0 = vec![0.0; need];
        }
        let offset = self.0.as_ptr().align_offset(64).min(15);
        self.0[offset..offset + a_len + b].split_at_mut(a_len)
    }
}

#[cfg(test)]
mod tests;
