//! Products of a few rows (M ≤ [`MAX_ROWS`]) with a weight stored as rows of K, as `linear`
//! stores it: `y[i, j] = Σ_k a[i, k] · w[j, k]`. Such a product reads the weight once and does
//! little arithmetic per byte, so its speed is the memory bandwidth; a blocked GEMM spends it
//! on packing instead. Here each task streams a fixed range of weight rows once and dots every
//! weight row with each input row while the weight row sits in L1. With AVX-512 an f32 weight
//! goes two rows at a time against two input rows at a time (two weight streams in flight,
//! each input vector loaded once for both rows; 1.2× at one row, 1.6× at eight).
//!
//! Determinism: every output is one dot product accumulated in [`LANES`] lanes in index order
//! and combined in a fixed tree, whatever the thread count; the AVX-512, AVX2 and portable
//! builds round identically (fused multiply-adds everywhere, the same lanes).

use super::operand::SharedMut;
use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// The most input rows this kernel takes against an f32 weight: up to here it measured faster
/// than the blocked GEMM (2.5× at one row, even at eight); with more rows the product turns
/// compute-bound.
pub(crate) const MAX_ROWS: usize = 8;
/// The same against a bf16 weight, which the blocked GEMM would first widen whole to f32 (a
/// transient copy twice the weight's size): streaming it widened row by row stays faster up to
/// here (4096 × 4096 on 2 threads: 16 rows 2.4×, 32 rows 1.3× faster) and needs no copy.
pub(crate) const MAX_ROWS_BF16: usize = 32;

/// The most rows [`rows_times_weight`] takes for a weight of `dtype`.
pub(crate) fn max_rows(dtype: orrery_ir::DType) -> usize {
    match dtype {
        orrery_ir::DType::BF16 => MAX_ROWS_BF16,
        _ => MAX_ROWS,
    }
}
/// Weight rows (output columns) per task: fixed, never derived from the thread count.
const COLS_PER_TASK: usize = 32;
/// Partial sums per dot product: 8 AVX2 registers of 8, enough independent chains to hide the
/// FMA latency.
const LANES: usize = 64;

/// A row-major operand: row `i` is `data[offset + i·row_stride ..][..k]`.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub row_stride: usize,
}

impl Rows<'_> {
    fn row(&self, i: usize, k: usize) -> &[f32] {
        &self.data[self.offset + i * self.row_stride..][..k]
    }
}

/// The weight of a [`rows_times_weight`] product: f32 rows read in place, or bf16 rows (a
/// checkpoint's own dtype) widened one row at a time while it is in L1, so the weight is read
/// once at half the bytes and never copied whole. Widening is exact, so both give the same
/// bits.
#[derive(Clone, Copy)]
pub(super) enum WeightRows<'a> {
    F32(Rows<'a>),
    /// Dense rows of `k` bf16 values.
    Bf16(&'a [bf16]),
}

impl WeightRows<'_> {
    /// Row `j` as f32: borrowed, or widened into `scratch`.
    fn row<'s>(&'s self, j: usize, k: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        match self {
            WeightRows::F32(rows) => rows.row(j, k),
            WeightRows::Bf16(data) => {
                scratch.resize(k, 0.0);
                data[j * k..][..k].convert_to_f32_slice(scratch);
                scratch
            }
        }
    }
}

/// `y[i·n + j] = Σ_k a[i][k]·w[j][k]` for i < m, j < n (`+=` with `accumulate`); `y` is the
/// dense m × n output.
pub(super) fn rows_times_weight(
    a: Rows<'_>,
    w: WeightRows<'_>,
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    accumulate: bool,
) {
    assert!(y.len() >= m * n, "output too small");
    #[cfg(target_arch = "x86_64")]
    if let (WeightRows::F32(w), true) = (w, std::is_x86_feature_detected!("avx512f")) {
        // SAFETY: the CPU has AVX-512F (checked just above); `y` holds m × n.
        return unsafe { rows_times_f32_rows_avx512(a, w, m, n, k, y, accumulate) };
    }
    let out = SharedMut(y.as_mut_ptr());
    let tasks = n.div_ceil(COLS_PER_TASK);
    let simd = simd_available();
    (0..tasks).into_par_iter().for_each_init(Vec::new, |scratch, t| {
        let j0 = t * COLS_PER_TASK;
        for j in j0..(j0 + COLS_PER_TASK).min(n) {
            let wj = w.row(j, k, scratch);
            for i in 0..m {
                let d = dot(a.row(i, k), wj, simd);
                // SAFETY: column j belongs to this task alone; i·n + j < m·n ≤ y.len().
                unsafe {
                    let p = out.add(i * n + j);
                    *p = if accumulate { *p + d } else { d };
                }
            }
        }
    });
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn dot(a: &[f32], b: &[f32], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the CPU has AVX2 and FMA (checked by the caller).
        return unsafe { dot_avx2(a, b) };
    }
    let _ = simd;
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let full = n / LANES * LANES;
    let mut acc = [_mm256_setzero_ps(); LANES / 8];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < full {
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8r + 8 ≤ full ≤ n, inside both slices.
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i + 8 * r)), _mm256_loadu_ps(pb.add(i + 8 * r))) };
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += LANES;
    }
    // Lane l of register r is lane 8r + l of the portable loop; the tail and the combining
    // tree are shared with it.
    let mut lanes = [0f32; LANES];
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: 8 floats at 8r < LANES.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * r), *acc) };
    }
    finish_lanes(lanes, &a[full..n], &b[full..n])
}

/// [`rows_times_weight`] for an f32 weight on AVX-512: two weight rows and two input rows at a
/// time (an odd last one paired with itself), so two weight streams are in flight and each
/// input vector is loaded once for both weight rows. Same tasks and bits as the other builds.
///
/// # Safety
/// The CPU supports AVX-512F; `y` holds at least m × n values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_times_f32_rows_avx512(
    a: Rows<'_>,
    w: Rows<'_>,
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    accumulate: bool,
) {
    let out = SharedMut(y.as_mut_ptr());
    (0..n.div_ceil(COLS_PER_TASK)).into_par_iter().for_each(|t| {
        let (j0, j_end) = (t * COLS_PER_TASK, ((t + 1) * COLS_PER_TASK).min(n));
        for j in (j0..j_end).step_by(2) {
            let js = [j, (j + 1).min(j_end - 1)];
            for i in (0..m).step_by(2) {
                let is = [i, (i + 1).min(m - 1)];
                // SAFETY: AVX-512F (caller); every row is k long.
                let d = unsafe { dots_2x2(is.map(|i| a.row(i, k)), js.map(|j| w.row(j, k))) };
                // The distinct (row, column) pairs: a row or column paired with itself once.
                let pairs = is.iter().enumerate().take(1 + usize::from(is[1] != is[0])).flat_map(|(ii, &i)| {
                    js.iter().enumerate().take(1 + usize::from(js[1] != js[0])).map(move |(jj, &j)| (i, j, d[ii][jj]))
                });
                for (i, j, d) in pairs {
                    // SAFETY: column j belongs to this task alone; i·n + j < m·n ≤ y.len().
                    unsafe {
                        let p = out.add(i * n + j);
                        *p = if accumulate { *p + d } else { d };
                    }
                }
            }
        }
    });
}

/// The four dot products of two input rows with two weight rows (all of one length), each
/// with the lanes of [`dot_lanes`]: lane `16r + l` of the portable loop is lane `l` of
/// register `r`, so every product has the portable bits.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_2x2(a: [&[f32]; 2], w: [&[f32]; 2]) -> [[f32; 2]; 2] {
    use std::arch::x86_64::*;
    const REGS: usize = LANES / 16;
    let n = a[0].len();
    debug_assert!(a.iter().chain(&w).all(|r| r.len() == n));
    let full = n / LANES * LANES;
    let mut acc = [[[_mm512_setzero_ps(); REGS]; 2]; 2];
    let mut at = 0;
    while at < full {
        // SAFETY: at + 16r + 16 ≤ full ≤ n, inside every row.
        let wv: [[__m512; REGS]; 2] = std::array::from_fn(|j| {
            std::array::from_fn(|r| unsafe { _mm512_loadu_ps(w[j].as_ptr().add(at + 16 * r)) })
        });
        for (row, ai) in acc.iter_mut().zip(&a) {
            for r in 0..REGS {
                // SAFETY: as above.
                let av = unsafe { _mm512_loadu_ps(ai.as_ptr().add(at + 16 * r)) };
                for (out, wj) in row.iter_mut().zip(&wv) {
                    out[r] = _mm512_fmadd_ps(av, wj[r], out[r]);
                }
            }
        }
        at += LANES;
    }
    let mut d = [[0f32; 2]; 2];
    for (i, row) in acc.iter().enumerate() {
        for (j, regs) in row.iter().enumerate() {
            let mut lanes = [0f32; LANES];
            for (r, v) in regs.iter().enumerate() {
                // SAFETY: 16 floats at 16r < LANES.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr().add(16 * r), *v) };
            }
            d[i][j] = finish_lanes(lanes, &a[i][full..], &w[j][full..]);
        }
    }
    d
}

/// Element `i` goes to lane `i % LANES` (a fused multiply-add), then the lanes combine in a
/// fixed pairwise tree.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    finish_lanes(acc, ar, br)
}

/// Adds the tail (fewer than [`LANES`] elements, element `l` to lane `l`) and combines the
/// lanes in a fixed pairwise tree.
#[inline(always)]
fn finish_lanes(mut acc: [f32; LANES], ar: &[f32], br: &[f32]) -> f32 {
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] = x.mul_add(*y, acc[l]);
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0).collect()
    }

    #[test]
    fn matches_a_float64_product_on_awkward_shapes() {
        for (m, n, k) in [(1, 1, 1), (1, 33, 7), (3, 65, 100), (16, 40, 257), (5, 1, 1024)] {
            let (a, w) = (values(m * (k + 3), 1), values(n * k, 2));
            // a rows padded to k + 3 (a strided operand), w dense.
            let ar = Rows { data: &a, offset: 0, row_stride: k + 3 };
            let wr = WeightRows::F32(Rows { data: &w, offset: 0, row_stride: k });
            let mut y = vec![0f32; m * n];
            rows_times_weight(ar, wr, m, n, k, &mut y, false);
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k).map(|p| a[i * (k + 3) + p] as f64 * w[j * k + p] as f64).sum();
                    let bound = 1e-5 * (0..k).map(|p| (a[i * (k + 3) + p] * w[j * k + p]).abs() as f64).sum::<f64>();
                    assert!((y[i * n + j] as f64 - exact).abs() <= bound.max(1e-7), "{m}x{n}x{k} at {i},{j}");
                }
            }
            // Accumulating adds onto what is there.
            let before = y.clone();
            rows_times_weight(ar, wr, m, n, k, &mut y, true);
            for (after, b) in y.iter().zip(&before) {
                assert_eq!(*after, b + b);
            }
        }
    }

    #[test]
    fn bf16_weights_up_to_their_row_limit_match_a_float64_product() {
        for (m, n, k) in [(9, 17, 33), (16, 40, 257), (MAX_ROWS_BF16, 5, 130)] {
            let a = values(m * k, 5);
            let w: Vec<bf16> = values(n * k, 6).iter().map(|&v| bf16::from_f32(v)).collect();
            let mut y = vec![0f32; m * n];
            let ar = Rows { data: &a, offset: 0, row_stride: k };
            rows_times_weight(ar, WeightRows::Bf16(&w), m, n, k, &mut y, false);
            for i in 0..m {
                for j in 0..n {
                    let term = |p: usize| a[i * k + p] as f64 * w[j * k + p].to_f64();
                    let exact: f64 = (0..k).map(term).sum();
                    let bound = 1e-5 * (0..k).map(|p| term(p).abs()).sum::<f64>();
                    assert!((y[i * n + j] as f64 - exact).abs() <= bound.max(1e-7), "{m}x{n}x{k} at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn every_output_has_the_portable_dot_bits() {
        // Odd row and column counts pair a last row or column with itself.
        for (m, n, k) in [(1, 1, 1), (1, 33, 130), (3, 65, 64), (8, 31, 257), (2, 2, 1000)] {
            let (a, w) = (values(m * k, 7), values(n * k, 8));
            let mut y = vec![0f32; m * n];
            let ar = Rows { data: &a, offset: 0, row_stride: k };
            rows_times_weight(ar, WeightRows::F32(Rows { data: &w, offset: 0, row_stride: k }), m, n, k, &mut y, false);
            for i in 0..m {
                for j in 0..n {
                    let want = dot_lanes(&a[i * k..][..k], &w[j * k..][..k]);
                    assert_eq!(y[i * n + j].to_bits(), want.to_bits(), "{m}x{n}x{k} at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn simd_and_portable_round_identically() {
        let (a, b) = (values(1000, 3), values(1000, 4));
        for len in [0, 1, 31, 63, 64, 65, 1000] {
            assert_eq!(
                dot(&a[..len], &b[..len], simd_available()).to_bits(),
                dot_lanes(&a[..len], &b[..len]).to_bits()
            );
        }
    }
}
