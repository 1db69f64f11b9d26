//! The one place that calls the `gemm` crate.
//!
//! Determinism: `gemm` splits the k dimension into blocks whose size depends on the matrix
//! sizes and the cache sizes only, and its threads split m and n; every output element is
//! accumulated over k in the same order whatever the thread count (checked by the
//! `determinism` tests). Callers also pick [`Threads`] from problem sizes, never from the
//! number of threads.

use gemm::Parallelism;

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

fn fits(len: usize, offset: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || offset + (rows - 1) * rs + (cols - 1) * cs < len
}

/// How one GEMM may use threads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Threads {
    /// On the calling thread (inside an already parallel task).
    Single,
    /// Split over m and n by `gemm` in the current rayon pool.
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
