//! MatMul and Linear: strided GEMM calls, no operand copies for f32 views.

use super::blas::{
    gemm, gemm_bf16_weight, gemm_packed_weight, reads_bf16_weights, MatMut, MatRef, PackedWeight, Threads,
    PACKED_PANEL_COLUMNS,
};
use super::gemv::{max_rows, rows_times_weight, Rows, WeightRows, MAX_ROWS};
use super::operand::{broadcast_strides_to, index_offsets, F32Operand, SharedMut};
use crate::output::{Output, OutputBuffer};
use crate::CpuTensor;
use half::bf16;
use orrery_ir::{DType, TensorType};
use rayon::prelude::*;
use std::sync::Arc;

/// Per-matrix work (m·n·k) from which one GEMM is worth splitting over threads; below it the
/// batch is split instead (one single-threaded GEMM per task).
const SPLIT_ONE_GEMM_WORK: usize = 1 << 21;

/// (row stride, column stride) of the trailing matrix of a view, transposed when asked.
fn matrix_strides(strides: &[usize], transpose: bool) -> (usize, usize) {
    let r = strides.len();
    if transpose {
        (strides[r - 1], strides[r - 2])
    } else {
        (strides[r - 2], strides[r - 1])
    }
}

/// The GEMMs of one MatMul or Linear: `count()` products of an m×k by a k×n matrix, product
/// `i` into the dense m×n block at `i·m·n` of the row-major output, plus Linear's bias row.
struct Gemms {
    a: F32Operand,
    b: F32Operand,
    /// A bf16 `linear` weight `[N, K]` kept as stored (then `b` is empty) for the few-rows
    /// path, and for the GEMM where it packs bf16 ([`reads_bf16_weights`]): widening it whole
    /// would double its bytes for the length of the call.
    b_bf16: Option<CpuTensor>,
    /// A `linear` weight packed once and kept with it ([`crate::weight_packs`]): read instead
    /// of `b` or `b_bf16` by the GEMM (the few-rows path reads the weight as stored).
    b_packed: Option<Arc<PackedWeight>>,
    bias: Option<F32Operand>,
    m: usize,
    n: usize,
    k: usize,
    a_offsets: Vec<usize>,
    b_offsets: Vec<usize>,
    a_strides: (usize, usize),
    b_strides: (usize, usize),
}

impl Gemms {
    /// Batched `a · b` with broadcast batch dims. Transposes, permutations and broadcasts of
    /// f32 operands are absorbed into GEMM strides; f16/bf16 `b` is widened once.
    fn matmul(a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool, out: &TensorType) -> Gemms {
        let (a, b) = (F32Operand::strided(a), F32Operand::strided(b));
        let od = out.shape.dims();
        let r = od.len();
        let (m, n) = (od[r - 2], od[r - 1]);
        let (ra, rb) = (a.shape.len(), b.shape.len());
        let k = if ta { a.shape[ra - 2] } else { a.shape[ra - 1] };
        let batch = &od[..r - 2];
        let a_offsets =
            index_offsets(batch, &broadcast_strides_to(&a.shape[..ra - 2], &a.strides[..ra - 2], batch), a.offset);
        let b_offsets =
            index_offsets(batch, &broadcast_strides_to(&b.shape[..rb - 2], &b.strides[..rb - 2], batch), b.offset);
        let (a_strides, b_strides) = (matrix_strides(&a.strides, ta), matrix_strides(&b.strides, tb));
        Gemms { a, b, b_bf16: None, b_packed: None, m, n, k, a_offsets, b_offsets, a_strides, b_strides, bias: None }
    }

    /// torch `linear`: every leading row of x times `wᵀ`. x's leading dims are read through
    /// one stride when its layout allows (else x is made dense once); w `[N, K]` is read
    /// transposed through its strides.
    fn linear(x: &CpuTensor, w: &CpuTensor, bias: Option<&CpuTensor>, out: &TensorType) -> Gemms {
        let (n, k) = (w.shape()[0], w.shape()[1]);
        let rows = out.shape.numel() / n.max(1);
        let lead = x.shape().len() - 1;
        let strided = F32Operand::strided(x);
        let (x, row_stride) = match strided.collapsed_stride(0..lead) {
            Some(s) => (strided, s),
            None => (F32Operand::dense(x), k),
        };
        let bias = bias.map(F32Operand::dense);
        let a_strides = (row_stride, x.strides[lead]);
        let streamed = rows <= max_rows(w.dtype()) && a_strides.1 == 1;
        // Packed only for the GEMM: the few-rows path streams the weight as stored.
        let b_packed = w.packs().filter(|_| !streamed).and_then(|packs| packs.linear(w));
        if w.dtype() == DType::BF16 && (streamed || reads_bf16_weights()) && w.data::<bf16>().is_some() {
            let b = F32Operand::empty();
            let (a_offsets, b_offsets) = (vec![x.offset], vec![0]);
            let b_bf16 = Some(w.clone());
            let b_strides = (1, k);
            return Gemms {
                a: x,
                b,
                b_bf16,
                b_packed,
                bias,
                m: rows,
                n,
                k,
                a_offsets,
                b_offsets,
                a_strides,
                b_strides,
            };
        }
        let w = F32Operand::strided(w);
        let (a_offsets, b_offsets) = (vec![x.offset], vec![w.offset]);
        let b_strides = (w.strides[1], w.strides[0]);
        Gemms { a: x, b: w, b_bf16: None, b_packed, bias, m: rows, n, k, a_offsets, b_offsets, a_strides, b_strides }
    }

    fn count(&self) -> usize {
        self.a_offsets.len()
    }

    /// Rows `r0..r0 + rows`, columns `c0..c0 + cols` of product `i` into `dst` (`+=` with
    /// `accumulate`).
    ///
    /// # Safety
    /// `dst` as for [`gemm()`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        &self,
        i: usize,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        dst: MatMut,
        accumulate: bool,
        threads: Threads,
    ) {
        let (a0, a1) = self.a_strides;
        let lhs = MatRef::new(self.a.data(), self.a_offsets[i] + r0 * a0, a0, a1);
        if let Some(w) = self.b_packed.as_deref().filter(|_| c0.is_multiple_of(PACKED_PANEL_COLUMNS)) {
            // SAFETY: forwarded.
            return unsafe { gemm_packed_weight(rows, cols, c0, dst, lhs, w, accumulate, threads) };
        }
        if let Some(w) = self.b_bf16.as_ref().and_then(|w| w.data::<bf16>()) {
            // SAFETY: forwarded; `b_bf16` outside the few-rows path implies reads_bf16_weights.
            return unsafe { gemm_bf16_weight(rows, cols, self.k, dst, lhs, w, c0, accumulate, threads) };
        }
        let (b0, b1) = self.b_strides;
        let rhs = MatRef::new(self.b.data(), self.b_offsets[i] + c0 * b1, b0, b1);
        // SAFETY: forwarded.
        unsafe { gemm(rows, cols, self.k, dst, lhs, rhs, 1.0, accumulate, threads) }
    }

    /// True for a few rows against a weight whose columns are contiguous in k (`linear`'s
    /// `[N, K]` weight): the product is memory-bound and streams the weight once
    /// ([`rows_times_weight`]) instead of packing it.
    fn streams_weight(&self) -> bool {
        let most = if self.b_bf16.is_some() { max_rows(DType::BF16) } else { MAX_ROWS };
        self.m <= most && self.k > 0 && self.a_strides.1 == 1 && self.b_strides.0 == 1
    }

    fn bias(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(F32Operand::dense_slice)
    }

    /// Elements of the dense output: every product's m × n block.
    fn output_len(&self) -> usize {
        self.count() * self.m * self.n
    }

    /// The dense output, every product computed, in a buffer written before it is read
    /// ([`OutputBuffer`]: recycled, or new and not zeroed).
    fn output(&self) -> Output {
        let mut y = OutputBuffer::new(self.output_len());
        // SAFETY: `y` holds the output's elements, all written by `run`.
        unsafe {
            self.run(y.ptr());
            y.assume_written()
        }
    }

    /// [`Gemms::output`], then `epilogue` over it.
    fn output_with<E: Epilogue>(&self, epilogue: &E) -> Output {
        let mut y = OutputBuffer::new(self.output_len());
        // SAFETY: `y` holds the output's elements, all written by `run_with_epilogue`.
        unsafe {
            self.run_with_epilogue(y.ptr(), epilogue);
            y.assume_written()
        }
    }

    /// Computes every product into the dense output at `y` (the bias pre-fills it and the
    /// GEMM accumulates). Every element is written, through the pointer, before any is read:
    /// the output may hold anything, or be unwritten memory, before.
    ///
    /// # Safety
    /// `y` is valid for [`Gemms::output_len`] elements, which nothing else accesses during
    /// the call.
    unsafe fn run(&self, y: SharedMut) {
        let (m, n, k) = (self.m, self.n, self.k);
        if m * n == 0 {
            return;
        }
        let len = self.output_len();
        if let Some(bias) = self.bias() {
            for row in 0..len / n {
                // SAFETY: row `row` of the output lies inside it (caller).
                unsafe { std::ptr::copy_nonoverlapping(bias.as_ptr(), y.add(row * n), n) };
            }
        } else if k == 0 {
            // SAFETY: as above.
            return unsafe { std::ptr::write_bytes(y.add(0), 0, len) };
        }
        let accumulate = self.bias.is_some();
        if self.streams_weight() {
            for bi in 0..self.count() {
                // SAFETY: product `bi`'s block lies inside the output (caller); it is
                // written (bias or zeros) before the slice covers it. A few rows: small.
                let dst = unsafe {
                    if !accumulate {
                        std::ptr::write_bytes(y.add(bi * m * n), 0, m * n);
                    }
                    std::slice::from_raw_parts_mut(y.add(bi * m * n), m * n)
                };
                let a = Rows { data: self.a.data(), offset: self.a_offsets[bi], row_stride: self.a_strides.0 };
                let w = match self.b_bf16.as_ref().and_then(|w| w.data::<bf16>()) {
                    Some(data) => WeightRows::Bf16(data),
                    None => WeightRows::F32(Rows {
                        data: self.b.data(),
                        offset: self.b_offsets[bi],
                        row_stride: self.b_strides.1,
                    }),
                };
                rows_times_weight(a, w, m, n, k, dst, accumulate);
            }
            return;
        }
        let one = |bi: usize, threads: Threads| {
            let dst = MatMut { ptr: y.add(bi * m * n), rs: n, cs: 1 };
            // SAFETY: `dst` is this product's own dense m×n block of the output (caller).
            unsafe { self.product(bi, (0, m), (0, n), dst, accumulate, threads) };
        };
        if self.count() == 1 || m * n * k >= SPLIT_ONE_GEMM_WORK {
            (0..self.count()).for_each(|bi| one(bi, Threads::Pool));
        } else {
            (0..self.count()).into_par_iter().for_each(|bi| one(bi, Threads::Single));
        }
    }

    /// Like [`Gemms::run`] (every element written before it is read), then `epilogue` over
    /// every output element, tile by tile while the tile is in cache. See [`TILE_ROWS`] for
    /// why the tiling leaves the bits unchanged.
    ///
    /// # Safety
    /// As for [`Gemms::run`].
    unsafe fn run_with_epilogue<E: Epilogue>(&self, y: SharedMut, epilogue: &E) {
        let (m, n, k) = (self.m, self.n, self.k);
        if m * n == 0 {
            return;
        }
        let (rows, cols) = (blocks(m, TILE_ROWS), blocks(n, TILE_COLS));
        // Big products run as one GEMM over all threads and the epilogue as a second pass:
        // tiling them repacks the weight panel once per row tile (gemm has no epilogue hook),
        // which measured slower than the extra pass on a Cosmos DiT block at 2048 tokens
        // (whole block 641 ms tiled vs 605 ms untiled, medians of 9, noisy machine).
        // A row program needs its segments whole in every run it is given: tile columns must
        // start on segment boundaries and each output row hold whole segments.
        let align = epilogue.alignment();
        let rows_aligned = n.is_multiple_of(align);
        let tiled = general_gemm(m, n, k)
            && general_gemm(rows[0].1, cols[0].1, k)
            && m * n * k < SPLIT_ONE_GEMM_WORK
            && rows_aligned
            && TILE_COLS.is_multiple_of(align);
        if self.streams_weight() || (!tiled && (self.count() == 1 || !rows_aligned)) {
            // One GEMM over all threads, then the epilogue in parallel chunks (a second pass).
            // SAFETY: forwarded; once run, every element is written.
            unsafe {
                self.run(y);
                apply_epilogue_pass(std::slice::from_raw_parts_mut(y.add(0), self.output_len()), epilogue);
            }
            return;
        }
        let (rows, cols) = if tiled { (rows, cols) } else { (vec![(0, m)], vec![(0, n)]) };
        let mut tiles = Vec::with_capacity(self.count() * rows.len() * cols.len());
        for bi in 0..self.count() {
            for &r in &rows {
                tiles.extend(cols.iter().map(|&c| (bi, r, c)));
            }
        }
        let bias = self.bias();
        tiles.par_iter().for_each(|&(bi, (r0, tr), (c0, tc))| {
            let start = bi * m * n + r0 * n + c0;
            // SAFETY (for every write, slice and the GEMM below): tiles are disjoint blocks of
            // the output, which outlives this parallel loop; row `r` of this tile is the `tc`
            // elements at `start + r·n`. A row is sliced only once the GEMM has written it.
            let row = |r: usize| unsafe { std::slice::from_raw_parts_mut(y.add(start + r * n), tc) };
            if let Some(bias) = bias {
                for r in 0..tr {
                    unsafe { std::ptr::copy_nonoverlapping(bias[c0..].as_ptr(), y.add(start + r * n), tc) };
                }
            }
            let dst = MatMut { ptr: y.add(start), rs: n, cs: 1 };
            unsafe { self.product(bi, (r0, tr), (c0, tc), dst, bias.is_some(), Threads::Single) };
            let mut scratch = epilogue.scratch(tc);
            for r in 0..tr {
                epilogue.apply(start + r * n, row(r), &mut scratch);
            }
        });
    }
}

/// Output rows per epilogue tile. A tile's GEMM is the same arithmetic as the whole matrix's
/// when both take `gemm` 0.19's general path (k split into blocks that depend on k and the
/// caches only; the m/n tiling never changes an element's order of accumulation): both at
/// least 2×2, more than 256 elements and one side above 64 ([`general_gemm`]); the remainder
/// is folded into the last tile, so no tile is smaller than the first. Otherwise the whole
/// matrix is one GEMM and the epilogue a second pass. Either way the result equals the unfused
/// GEMM's bit for bit (checked by `tests/epilogue.rs`), and tiles never depend on threads.
const TILE_ROWS: usize = 128;
/// Output columns per epilogue tile (a 128 × 512 f32 tile is 256 KiB, about an L2).
const TILE_COLS: usize = 512;
/// Output elements per task when the epilogue runs as a second pass (fixed, never derived from
/// the thread count).
const EPILOGUE_CHUNK: usize = 2048;

/// Applies `epilogue` in place over all of `y` (a base op's dense output) in parallel chunks
/// (whole segments each), with one scratch per worker reused across its chunks.
pub(crate) fn apply_epilogue_pass<E: Epilogue>(y: &mut [f32], epilogue: &E) {
    let chunk = EPILOGUE_CHUNK.div_ceil(epilogue.alignment()) * epilogue.alignment();
    y.par_chunks_mut(chunk)
        .enumerate()
        .for_each_init(|| epilogue.scratch(chunk), |scratch, (i, data)| epilogue.apply(i * chunk, data, scratch));
}

/// True when `gemm` 0.19 runs an m×n×k product through its general blocked kernel, not one
/// of its small-size special cases (k ≤ 2, a vector side, ≤ 16×16 outputs, both sides ≤ 64).
fn general_gemm(m: usize, n: usize, k: usize) -> bool {
    k > 2 && m >= 2 && n >= 2 && m * n > 256 && (m > 64 || n > 64)
}

/// `len` split into `(start, size)` blocks of `block`, the last taking the remainder (one
/// block when `len ≤ block`).
fn blocks(len: usize, block: usize) -> Vec<(usize, usize)> {
    let count = (len / block).max(1);
    (0..count).map(|i| (i * block, if i + 1 == count { len - i * block } else { block })).collect()
}

/// An elementwise epilogue over a run of output positions, applied in place.
pub(crate) trait Epilogue: Sync {
    type Scratch;
    /// Per-task scratch for runs of up to `len` elements.
    fn scratch(&self, len: usize) -> Self::Scratch;
    /// Every run given to [`Epilogue::apply`] starts at a multiple of this many elements and
    /// holds a multiple of it (a row program's segments stay whole).
    fn alignment(&self) -> usize {
        1
    }
    /// Replaces `data`, the op's values at flat output positions `start..start + data.len()`,
    /// by the epilogue's results there.
    fn apply(&self, start: usize, data: &mut [f32], scratch: &mut Self::Scratch);
}

/// Batched `a · b` with broadcast batch dims. Transposes, permutations and broadcasts of f32
/// operands are absorbed into GEMM strides; f16/bf16 `b` is widened once.
pub(super) fn matmul(a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool, out: &TensorType) -> CpuTensor {
    Gemms::matmul(a, b, ta, tb, out).output().into_tensor(out.shape.dims().to_vec())
}

/// torch `linear`: every leading row of x times `wᵀ`, plus the bias. The bias pre-fills the
/// output and the GEMM accumulates.
pub(super) fn linear(x: &CpuTensor, w: &CpuTensor, bias: Option<&CpuTensor>, out: &TensorType) -> CpuTensor {
    Gemms::linear(x, w, bias, out).output().into_tensor(out.shape.dims().to_vec())
}

/// [`matmul`] followed by `epilogue`, fused tile by tile.
pub(crate) fn matmul_epilogue<E: Epilogue>(
    a: &CpuTensor,
    b: &CpuTensor,
    ta: bool,
    tb: bool,
    out: &TensorType,
    epilogue: &E,
) -> CpuTensor {
    Gemms::matmul(a, b, ta, tb, out).output_with(epilogue).into_tensor(out.shape.dims().to_vec())
}

/// [`linear`] followed by `epilogue`, fused tile by tile.
pub(crate) fn linear_epilogue<E: Epilogue>(
    x: &CpuTensor,
    w: &CpuTensor,
    bias: Option<&CpuTensor>,
    out: &TensorType,
    epilogue: &E,
) -> CpuTensor {
    Gemms::linear(x, w, bias, out).output_with(epilogue).into_tensor(out.shape.dims().to_vec())
}
