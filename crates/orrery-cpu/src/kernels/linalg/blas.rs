//! The one entry point of every f32 product: orrery's own GEMM (`sgemm/`) on CPUs with
//! AVX-512, the `gemm` crate elsewhere.
//!
//! Determinism: both split the k dimension into blocks that never depend on the thread count;
//! `sgemm` cuts k into fixed blocks and nothing else changes an element's arithmetic (see its
//! module). `gemm` splits the k dimension into blocks whose size depends on the matrix
//! sizes and the cache sizes only, and its threads split m and n; every output element is
//! accumulated over k in the same order whatever the thread count (checked by the
//! `determinism` tests). Callers also pick [`Threads`] from problem sizes, never from the
//! number of threads.

use gemm::Parallelism;
use rayon::prelude::*;

/// A read-only strided matrix: element (i, j) is `data[offset + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    pub fn new(data: &'a [f32], offset: usize, rs: usize, cs: usize) -> MatRef<'a> {
        MatRef { data, offset, rs, cs }
    }

    /// Panics when a `rows × cols` matrix would read outside `data` (a kernel bug, not a data
    /// condition), which makes the raw-pointer GEMM call below sound.
    fn ptr(&self, rows: usize, cols: usize) -> *const f32 {
        assert!(fits(self.data.len(), self.offset, rows, cols, self.rs, self.cs), "matrix view out of bounds");
        self.data.as_ptr().wrapping_add(self.offset)
    }
}

/// A mutable strided matrix over a raw pointer (so that parallel tasks can own disjoint
/// blocks of one output buffer).
#[derive(Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: usize,
    pub cs: usize,
}

impl MatMut {
    /// A dense row-major `rows × cols` block at the start of `data`.
    pub fn dense(data: &mut [f32], rows: usize, cols: usize) -> MatMut {
        assert!(fits(data.len(), 0, rows, cols, cols, 1), "output block out of bounds");
        MatMut { ptr: data.as_mut_ptr(), rs: cols, cs: 1 }
    }
}

/// The own GEMM's views of the same matrices.
#[cfg(target_arch = "x86_64")]
mod own {
    use super::super::sgemm::{Out, Strided};
    use super::{MatMut, MatRef};

    impl MatRef<'_> {
        /// The `rows × cols` matrix as the own GEMM reads it (bounds checked as [`MatRef::ptr`]).
        pub(in super::super) fn strided(&self, rows: usize, cols: usize) -> Strided {
            Strided { p: self.ptr(rows, cols), rs: self.rs, cs: self.cs }
        }
    }

    impl MatMut {
        pub(in super::super) fn out(self) -> Out {
            Out { c: self.ptr, rs: self.rs, cs: self.cs }
        }
    }
}

fn fits(len: usize, offset: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || offset + (rows - 1) * rs + (cols - 1) * cs < len
}

/// How one GEMM may use threads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Threads {
    /// On the calling thread (inside an already parallel task).
    Single,
    /// Split over m and n in the current rayon pool.
    Pool,
}

/// `dst = scale · lhs · rhs` (m×k times k×n), or `dst += scale · lhs · rhs` with `accumulate`.
///
/// # Safety
/// `dst` must be valid for writes of every element (i, j), i < m, j < n, through its strides,
/// must not overlap `lhs` or `rhs`, and no other thread may access those elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        let (a, b) = (lhs.strided(m, k), rhs.strided(k, n));
        // SAFETY: AVX-512F is present; operand bounds are checked by `strided`; the caller
        // guarantees dst.
        return unsafe { super::sgemm::sgemm(m, n, k, dst.out(), a, b, scale, accumulate, threads) };
    }
    let parallelism = match threads {
        Threads::Single => Parallelism::None,
        Threads::Pool => Parallelism::Rayon(rayon::current_num_threads()),
    };
    let (lhs_ptr, rhs_ptr) = (lhs.ptr(m, k), rhs.ptr(k, n));
    // gemm computes dst := alpha·dst + beta·lhs·rhs, reading dst only when asked to.
    // SAFETY: operand bounds are checked above; the caller guarantees dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs_ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs_ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A B operand that is never stored whole: the own GEMM asks for it a block at a time while
/// packing (a convolution's receptive fields, gathered straight from the input).
pub(crate) trait GatheredB: Sync {
    /// Writes B's rows `k0 .. k0 + count`, columns `j0 .. j0 + width`, as consecutive panels of
    /// `panel` columns, each row-major: element `(k0 + i, j0 + j)` goes to
    /// `dst[(j / panel)·panel·count + i·panel + j % panel]` (`panel ≥ width`: one row-major
    /// block). Elements past `width` in the last panel are left alone.
    fn panels(&self, k0: usize, count: usize, j0: usize, width: usize, panel: usize, dst: &mut [f32]);
}

/// True when products run on the own GEMM (`sgemm`), which can read bf16 weights and gathered
/// operands while packing.
fn own_gemm() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::sgemm::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// True when products run on AMX tiles, splitting each operand they pack into bf16 parts
/// (see `sgemm/amx.rs`): an A operand, read in place by the AVX-512 kernel, is split on every
/// call unless packed ahead.
pub(crate) fn products_on_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::sgemm::available() && super::sgemm::on_amx();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// True when [`gemm_gathered`] runs here (the own GEMM); otherwise callers build B themselves.
pub(crate) fn gathers_while_packing() -> bool {
    own_gemm()
}

/// `dst = lhs · B` (m×k times k×n), or `dst += …` with `accumulate`, with B written by `rhs`
/// block by block as it is packed, and `lhs` read from `lhs_packed` when given (`lhs` packed
/// ahead): the bits of [`gemm()`] on the stored B.
///
/// # Safety
/// [`gathers_while_packing`] holds; `dst` as for [`gemm()`]; `rhs` answers every block of rows
/// and columns inside `k × n`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_gathered(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    lhs: MatRef<'_>,
    lhs_packed: Option<&PackedWeightA>,
    rhs: &dyn GatheredB,
    accumulate: bool,
    threads: Threads,
) {
    assert!(gathers_while_packing(), "gathered products need the own GEMM");
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512F is present (asserted); `strided` checks A's bounds; the caller
        // guarantees dst and the rows of B.
        let packed = lhs_packed.map(|p| &p.packed);
        unsafe { super::sgemm::sgemm_gathered(m, n, k, dst.out(), lhs.strided(m, k), packed, rhs, accumulate, threads) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("asserted above: {:?}", (lhs.rs, dst.rs, accumulate, threads, k, lhs_packed))
}

/// True when products read a bf16 `[N, K]` weight as stored ([`gemm_bf16_weight`]), widening it
/// while packing; otherwise callers widen it into an f32 copy first.
pub(crate) fn reads_bf16_weights() -> bool {
    own_gemm()
}

/// `dst = lhs · wᵀ` (m×k times the transpose of n rows of `w`, each k long, starting at row
/// `first_row` of the dense row-major bf16 matrix `w`), or `dst += …` with `accumulate`: the
/// bits of [`gemm()`] on the widened weight.
///
/// # Safety
/// [`reads_bf16_weights`] holds; `dst` as for [`gemm()`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_bf16_weight(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    lhs: MatRef<'_>,
    w: &[half::bf16],
    first_row: usize,
    accumulate: bool,
    threads: Threads,
) {
    assert!(reads_bf16_weights(), "bf16 weights are widened before products on this CPU");
    assert!((first_row + n) * k <= w.len(), "weight rows out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let b = super::sgemm::Bf16Rows { p: w[first_row * k..].as_ptr() as *const u16, rs: k };
        // SAFETY: AVX-512F is present (asserted); both operands are in bounds (checked above
        // and by `strided`); the caller guarantees dst. `bf16` is a transparent u16.
        unsafe { super::sgemm::sgemm_bf16(m, n, k, dst.out(), lhs.strided(m, k), b, 1.0, accumulate, threads) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("asserted above: {:?}", (lhs.rs, dst.rs, accumulate, threads))
}

/// A B operand several products on one thread share (attention's key and value blocks, read
/// by every block of queries): packed once for the own GEMM, or kept as a view for `gemm`,
/// which packs per call.
#[derive(Default)]
pub(crate) struct SharedB<'a> {
    view: Option<MatRef<'a>>,
    k: usize,
    n: usize,
    #[cfg(target_arch = "x86_64")]
    packed: super::sgemm::PackedB,
}

impl<'a> SharedB<'a> {
    /// Makes this the `k × n` matrix `b` (replacing what it held).
    pub fn set(&mut self, k: usize, n: usize, b: MatRef<'a>) {
        // The view's bounds are checked where it is read (`strided` here, or `gemm`).
        (self.view, self.k, self.n) = (Some(b), k, n);
        #[cfg(target_arch = "x86_64")]
        if super::sgemm::available() {
            // SAFETY: AVX-512F is present; `strided` checks the bounds.
            unsafe { self.packed.pack(k, n, b.strided(k, n)) };
        }
    }
}

/// Buffers for A operands packed once and shared by several products, kept by their owner
/// between calls (a Winograd convolution's transformed weights).
pub(crate) struct APacks {
    #[cfg(target_arch = "x86_64")]
    packs: Vec<super::sgemm::PackedA>,
}

impl APacks {
    pub const fn new() -> APacks {
        APacks {
            #[cfg(target_arch = "x86_64")]
            packs: Vec::new(),
        }
    }

    /// The `m × k` matrices `a(0) .. a(count - 1)`, each packed into these buffers (in
    /// parallel) where products would pack A on every call (AMX), else kept as views.
    pub fn share<'a>(
        &'a mut self,
        count: usize,
        m: usize,
        k: usize,
        a: impl Fn(usize) -> MatRef<'a> + Sync,
    ) -> Vec<SharedA<'a>> {
        #[cfg(target_arch = "x86_64")]
        if super::sgemm::available() && super::sgemm::PackedA::bytes_for(m, k) > 0 {
            self.packs.resize_with(count.max(self.packs.len()), Default::default);
            let packs = &mut self.packs[..count];
            packs.par_iter_mut().enumerate().for_each(|(i, pack)| {
                // SAFETY: AVX-512F is present; `strided` checks the bounds.
                unsafe { pack.pack(m, k, a(i).strided(m, k)) };
            });
            return packs
                .iter()
                .enumerate()
                .map(|(i, pack)| SharedA { view: a(i), m, k, packed: Some(pack) })
                .collect();
        }
        (0..count)
            .map(|i| SharedA {
                view: a(i),
                m,
                k,
                #[cfg(target_arch = "x86_64")]
                packed: None,
            })
            .collect()
    }
}

/// An A operand several products share ([`APacks::share`]): packed, or a view.
pub(crate) struct SharedA<'a> {
    view: MatRef<'a>,
    m: usize,
    k: usize,
    #[cfg(target_arch = "x86_64")]
    packed: Option<&'a super::sgemm::PackedA>,
}

/// [`gemm()`] with a shared `lhs` (its `m × k`; `rhs` is `k × n`, `dst` `m × n`): the same bits
/// as [`gemm()`] on the matrix it was made from.
///
/// # Safety
/// As [`gemm()`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_shared_a(
    n: usize,
    dst: MatMut,
    lhs: &SharedA<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    let (m, k) = (lhs.m, lhs.k);
    #[cfg(target_arch = "x86_64")]
    if let Some(packed) = lhs.packed {
        if m == 0 || n == 0 {
            return;
        }
        let (a, b) = (lhs.view.strided(m, k), rhs.strided(k, n));
        // SAFETY: a pack exists only where the own GEMM runs (AVX-512F); bounds are checked
        // by `strided`; the caller guarantees dst.
        return unsafe { super::sgemm::sgemm_packed_a(m, n, k, dst.out(), a, packed, b, scale, accumulate, threads) };
    }
    // SAFETY: forwarded.
    unsafe { gemm(m, n, k, dst, lhs.view, rhs, scale, accumulate, threads) }
}

/// [`gemm()`] on the calling thread with a shared `rhs` (its `k × n`; `dst` is `m × n`): the
/// same bits as [`gemm()`] on the matrix it was made from.
///
/// # Safety
/// As [`gemm()`].
pub(crate) unsafe fn gemm_shared(
    m: usize,
    dst: MatMut,
    lhs: MatRef<'_>,
    rhs: &SharedB<'_>,
    scale: f32,
    accumulate: bool,
) {
    let Some(view) = rhs.view else { return };
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::available() {
        if m == 0 || rhs.n == 0 {
            return;
        }
        let a = lhs.strided(m, rhs.k);
        // SAFETY: AVX-512F is present; `lhs` is checked by `strided`, `rhs` when it was set;
        // the caller guarantees dst.
        return unsafe {
            super::sgemm::sgemm_packed(m, rhs.n, 0, dst.out(), a, &rhs.packed, scale, accumulate, Threads::Single)
        };
    }
    // SAFETY: forwarded.
    unsafe { gemm(m, rhs.n, rhs.k, dst, lhs, view, scale, accumulate, Threads::Single) }
}

/// Columns of a packed weight's panels: a product may start at any multiple of it.
pub(crate) const PACKED_PANEL_COLUMNS: usize = 64;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(PACKED_PANEL_COLUMNS == super::sgemm::NR);

/// A `linear` weight `[N, K]` packed once as B = wᵀ for the own GEMM (kept by
/// [`crate::weight_packs`]).
pub(crate) struct PackedWeight {
    n: usize,
    k: usize,
    /// What the pack holds, as [`PackedWeight::bytes_for`] counted it.
    bytes: usize,
    #[cfg(target_arch = "x86_64")]
    packed: super::sgemm::PackedB,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight([{}, {}], {} bytes)", self.n, self.k, self.bytes)
    }
}

impl PackedWeight {
    /// Bytes the pack of an `[n, k]` weight holds, or `None` where products read no packs
    /// (the `gemm` crate packs per call).
    pub(crate) fn bytes_for(n: usize, k: usize) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if own_gemm() {
            return Some(super::sgemm::PackedB::bytes_for(k, n));
        }
        let _ = (n, k);
        None
    }

    /// Packs `w`, a dense `[N, K]` f32 or bf16 matrix (`None` for another dtype or where
    /// products read no packs); `bytes` is [`PackedWeight::bytes_for`]'s count.
    pub(crate) fn pack(w: &crate::CpuTensor, bytes: usize) -> Option<PackedWeight> {
        let (n, k) = (w.shape()[0], w.shape()[1]);
        #[cfg(target_arch = "x86_64")]
        if own_gemm() && w.numel() == n * k {
            let mut packed = super::sgemm::PackedB::default();
            match w.dtype() {
                orrery_ir::DType::F32 => {
                    let b = super::sgemm::Strided { p: w.data::<f32>()?.as_ptr(), rs: 1, cs: k };
                    // SAFETY: AVX-512F is present; B's element (i, j) is w[j·k + i], inside w.
                    unsafe { packed.pack(k, n, b) };
                }
                orrery_ir::DType::BF16 => {
                    let b = super::sgemm::Bf16Rows { p: w.data::<half::bf16>()?.as_ptr() as *const u16, rs: k };
                    // SAFETY: as above; `bf16` is a transparent u16.
                    unsafe { packed.pack_bf16(k, n, b) };
                }
                _ => return None,
            }
            return Some(PackedWeight { n, k, bytes, packed });
        }
        let _ = (n, k, bytes);
        None
    }

    /// `(N, K)` of the weight.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// `dst = lhs · wᵀ` over the weight's rows (B's columns) `c0 .. c0 + cols`, `c0` a multiple
/// of [`PACKED_PANEL_COLUMNS`], or `dst += …` with `accumulate`: the bits of [`gemm()`] on
/// the weight unpacked.
///
/// # Safety
/// `dst` as for [`gemm()`], `m × cols`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed_weight(
    m: usize,
    cols: usize,
    c0: usize,
    dst: MatMut,
    lhs: MatRef<'_>,
    w: &PackedWeight,
    accumulate: bool,
    threads: Threads,
) {
    if m == 0 || cols == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let a = lhs.strided(m, w.k);
        // SAFETY: a pack exists only where the own GEMM runs (AVX-512F); `strided` checks A;
        // `sgemm_packed` checks the columns; the caller guarantees dst.
        unsafe { super::sgemm::sgemm_packed(m, cols, c0, dst.out(), a, &w.packed, 1.0, accumulate, threads) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no packs are made here: {:?}", (lhs.rs, dst.rs, c0, accumulate, threads, w))
}

/// Columns `k0 .. k0 + k` of a convolution's weights `[Cout, depth]` packed once as the GEMM's
/// A where products would pack it on every call (AMX; kept by [`crate::weight_packs`]).
pub(crate) struct PackedWeightA {
    m: usize,
    k0: usize,
    k: usize,
    bytes: usize,
    #[cfg(target_arch = "x86_64")]
    packed: super::sgemm::PackedA,
}

impl std::fmt::Debug for PackedWeightA {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeightA({} rows, columns {}..{}, {} bytes)", self.m, self.k0, self.k0 + self.k, self.bytes)
    }
}

impl PackedWeightA {
    /// Bytes the pack of an `m × k` block holds, or `None` where products read A in place.
    pub(crate) fn bytes_for(m: usize, k: usize) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if own_gemm() {
            return Some(super::sgemm::PackedA::bytes_for(m, k)).filter(|&b| b > 0);
        }
        let _ = (m, k);
        None
    }

    /// Packs columns `k0 .. k0 + k` of `w`, a dense f32 matrix of `m` rows of `depth`
    /// (`None` for another dtype or where products read A in place); `bytes` is
    /// [`PackedWeightA::bytes_for`]'s count.
    pub(crate) fn pack(w: &crate::CpuTensor, m: usize, k0: usize, k: usize, bytes: usize) -> Option<PackedWeightA> {
        let data = w.data::<f32>()?;
        let depth = data.len() / m.max(1);
        assert!(m * depth == data.len() && k0 + k <= depth, "columns {k0}..{} of a {m}×{depth} weight", k0 + k);
        #[cfg(target_arch = "x86_64")]
        if Self::bytes_for(m, k).is_some() {
            let mut packed = super::sgemm::PackedA::default();
            let a = super::sgemm::Strided { p: data[k0..].as_ptr(), rs: depth, cs: 1 };
            // SAFETY: AVX-512F is present; element (i, j), i < m, j < k, is data[i·depth + k0 + j].
            unsafe { packed.pack(m, k, a) };
            return Some(PackedWeightA { m, k0, k, bytes, packed });
        }
        let _ = bytes;
        None
    }

    /// `(rows, first column, columns)` of the weight matrix packed.
    pub(crate) fn block(&self) -> (usize, usize, usize) {
        (self.m, self.k0, self.k)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}
