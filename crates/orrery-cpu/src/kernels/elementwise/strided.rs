//! Typed access to strided views, and the broadcasting walk that every elementwise-shaped
//! kernel (binary ops, comparisons, `where`, casts, dense copies) is built on.
//!
//! The walk splits the output into chunks of a fixed number of elements (whole inner rows when
//! rows are short), so the same work items exist whatever the pool size (elementwise results
//! would not depend on the split anyway). Loops over dense runs are plain slice loops, which
//! the compiler vectorises.

use crate::output::{output, Output};
use crate::recycle::output_of;
use crate::{Buffer, CpuError, CpuTensor, Element};
use half::{bf16, f16};
use orrery_ir::{DType, Op};
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

/// Elements per parallel work item. A constant, never derived from the thread count, so that
/// any per-chunk computation is identical for 1 or N threads.
pub(in crate::kernels) const CHUNK: usize = 16 * 1024;

/// A Rust type that stores the elements of some dtype; `u8` stores both u8 and bool.
pub(in crate::kernels) trait Scalar: Copy + Default + PartialOrd + Send + Sync + 'static {
    /// The whole buffer as a typed slice; views index it with their own offset and strides.
    fn buffer_slice(buf: &Buffer) -> Option<&[Self]>;
    /// Wraps dense data as a buffer of `dtype` (which tells u8 from bool).
    fn into_buffer(v: Vec<Self>, dtype: DType) -> Buffer;
    /// A float constant (such as a pad value) converted with the cast rules.
    fn from_constant(v: f64, dtype: DType) -> Self;
}

macro_rules! scalar_via_element {
    ($t:ty, $conv:expr) => {
        impl Scalar for $t {
            fn buffer_slice(buf: &Buffer) -> Option<&[Self]> {
                <$t as Element>::slice(buf)
            }
            fn into_buffer(v: Vec<Self>, _dtype: DType) -> Buffer {
                <$t as Element>::into_buffer(v)
            }
            fn from_constant(v: f64, _dtype: DType) -> Self {
                let conv: fn(f64) -> $t = $conv;
                conv(v)
            }
        }
    };
}
scalar_via_element!(f32, |v| v as f32);
scalar_via_element!(f16, |v| f16::from_f32(v as f32));
scalar_via_element!(bf16, |v| bf16::from_f32(v as f32));
scalar_via_element!(i64, |v| v as i64);
scalar_via_element!(i32, |v| v as i64 as i32);

impl Scalar for u8 {
    fn buffer_slice(buf: &Buffer) -> Option<&[Self]> {
        match buf {
            Buffer::Bool(v) => Some(v),
            _ => <u8 as Element>::slice(buf),
        }
    }
    fn into_buffer(v: Vec<Self>, dtype: DType) -> Buffer {
        if dtype == DType::Bool {
            Buffer::Bool(v)
        } else {
            Buffer::U8(v)
        }
    }
    fn from_constant(v: f64, dtype: DType) -> Self {
        if dtype == DType::Bool {
            u8::from(v != 0.0)
        } else {
            v as i64 as u8
        }
    }
}

/// Runs `$body` with `$T` naming the Rust type that stores `$dtype`'s elements.
macro_rules! with_scalar_type {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            orrery_ir::DType::F32 => {
                type $T = f32;
                $body
            }
            orrery_ir::DType::F16 => {
                type $T = half::f16;
                $body
            }
            orrery_ir::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            orrery_ir::DType::I64 => {
                type $T = i64;
                $body
            }
            orrery_ir::DType::I32 => {
                type $T = i32;
                $body
            }
            orrery_ir::DType::U8 | orrery_ir::DType::Bool => {
                type $T = u8;
                $body
            }
        }
    };
}
pub(in crate::kernels) use with_scalar_type;

/// The whole buffer behind `t` as `T`s, or `None` when `T` does not store `t`'s dtype.
pub(in crate::kernels) fn buffer_of<T: Scalar>(t: &CpuTensor) -> Option<&[T]> {
    T::buffer_slice(t.buffer())
}

/// The whole buffer behind `t` as `T`s, or an error naming `op` when the buffer does not hold
/// the dtype the op expects (a tensor that does not match its declared type).
pub(in crate::kernels) fn typed<'a, T: Scalar>(op: &Op, t: &'a CpuTensor) -> Result<&'a [T], CpuError> {
    buffer_of::<T>(t).ok_or_else(|| {
        CpuError::kernel(op, format!("input of dtype {} is not held in the buffer type the kernel needs", t.dtype()))
    })
}

/// A tensor built from dense row-major data.
pub(in crate::kernels) fn tensor_from<T: Scalar>(shape: &[usize], dtype: DType, data: Vec<T>) -> CpuTensor {
    CpuTensor::from_buffer(shape.to_vec(), T::into_buffer(data, dtype))
}

/// [`tensor_from`] for a kernel's output, wherever it was written.
pub(in crate::kernels) fn tensor_from_output<T: Scalar>(shape: &[usize], dtype: DType, data: Output<T>) -> CpuTensor {
    CpuTensor::from_buffer(shape.to_vec(), data.into_buffer(|v| T::into_buffer(v, dtype)))
}

/// The elements of `t` in row-major order: borrowed when the view is dense, otherwise copied
/// in parallel. `None` when `T` does not store `t`'s dtype.
pub(in crate::kernels) fn dense<T: Scalar>(t: &CpuTensor) -> Option<Cow<'_, [T]>> {
    let all = buffer_of::<T>(t)?;
    if t.is_contiguous() {
        return all.get(t.offset()..t.offset() + t.numel()).map(Cow::Borrowed);
    }
    // Every element is copied below.
    let mut out = output_of::<T>(t.numel());
    copy_dense(t, all, &mut out);
    Some(Cow::Owned(out))
}

/// Copies the elements of `t` (whose whole buffer is `all`) to `out`, dense row-major.
fn copy_dense<T: Scalar>(t: &CpuTensor, all: &[T], out: &mut [T]) {
    let walk = Broadcast::new(t.shape(), [t]);
    if !walk.copy_transposed(all, out) {
        walk.par_segments(out, |dst, _, [o], [s]| copy_strided(dst, all, o, s));
    }
}

/// A dense tensor with `t`'s values: `t` itself when dense already, else a copy that is the
/// kernel's output ([`output_copy`]).
pub(in crate::kernels) fn densified(t: &CpuTensor) -> CpuTensor {
    if t.is_contiguous() {
        return t.clone();
    }
    output_copy(t).unwrap_or_else(|| t.contiguous())
}

/// A dense copy of `t` that is the kernel's output (in its arena slot when one is offered);
/// `None` for buffers the typed walk cannot read (mapped bytes).
pub(crate) fn output_copy(t: &CpuTensor) -> Option<CpuTensor> {
    with_scalar_type!(t.dtype(), T => buffer_of::<T>(t).map(|all| {
        // Every element is copied.
        let mut out = output::<T>(t.numel());
        copy_dense(t, all, &mut out);
        tensor_from_output(t.shape(), t.dtype(), out)
    }))
}

/// A dense parallel copy of a strided view over an owned buffer; `None` for buffers the
/// typed walk cannot read (mapped bytes), which `CpuTensor::contiguous` copies itself.
pub(crate) fn dense_copy(t: &CpuTensor) -> Option<CpuTensor> {
    with_scalar_type!(t.dtype(), T => dense::<T>(t).map(|data| tensor_from(t.shape(), t.dtype(), data.into_owned())))
}

/// `f` of every element of the view `x` (whose whole buffer is `src`), dense row-major,
/// computed in parallel.
pub(in crate::kernels) fn map_view<S: Copy + Sync, D: Copy + Default + Send + 'static>(
    x: &CpuTensor,
    src: &[S],
    f: impl Fn(S) -> D + Sync,
) -> Output<D> {
    // Every element is written below.
    let mut out = output::<D>(x.numel());
    Broadcast::new(x.shape(), [x]).par_segments(&mut out, |dst, _, [start], [stride]| {
        if stride == 1 {
            map_dense(dst, &src[start..start + dst.len()], &f);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = f(src[start + i * stride]);
            }
        }
    });
    out
}

/// `dst[i] = f(src[i])`, with the loop compiled for AVX-512 or AVX2 when the CPU has it.
/// Transcendental functions (exp, gelu) are compute-bound, and twice the vector width nearly
/// halves their time. Every operation is an IEEE operation without contraction, so every
/// version gives the same bits.
#[inline(always)]
pub(super) fn map_dense<S: Copy, D>(dst: &mut [D], src: &[S], f: &impl Fn(S) -> D) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        unsafe { map_dense_avx512(dst, src, f) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { map_dense_avx2(dst, src, f) };
        return;
    }
    map_dense_portable(dst, src, f);
}

#[inline(always)]
fn map_dense_portable<S: Copy, D>(dst: &mut [D], src: &[S], f: &impl Fn(S) -> D) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn map_dense_avx2<S: Copy, D>(dst: &mut [D], src: &[S], f: &impl Fn(S) -> D) {
    map_dense_portable(dst, src, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn map_dense_avx512<S: Copy, D>(dst: &mut [D], src: &[S], f: &impl Fn(S) -> D) {
    map_dense_portable(dst, src, f);
}

/// `dst[i] = f(a[i], b[i])`, in an AVX-512 or AVX2 copy of the loop where the CPU has it.
#[inline(always)]
pub(super) fn zip_dense<A: Copy, B: Copy, D>(dst: &mut [D], a: &[A], b: &[B], f: &impl Fn(A, B) -> D) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        unsafe { zip_dense_avx512(dst, a, b, f) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { zip_dense_avx2(dst, a, b, f) };
        return;
    }
    zip_dense_portable(dst, a, b, f);
}

#[inline(always)]
fn zip_dense_portable<A: Copy, B: Copy, D>(dst: &mut [D], a: &[A], b: &[B], f: &impl Fn(A, B) -> D) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn zip_dense_avx2<A: Copy, B: Copy, D>(dst: &mut [D], a: &[A], b: &[B], f: &impl Fn(A, B) -> D) {
    zip_dense_portable(dst, a, b, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn zip_dense_avx512<A: Copy, B: Copy, D>(dst: &mut [D], a: &[A], b: &[B], f: &impl Fn(A, B) -> D) {
    zip_dense_portable(dst, a, b, f);
}

/// `f(a, b)` over the broadcast shape `dims`, dense row-major, computed in parallel. `xa` and
/// `xb` are the whole buffers of the views `a` and `b`. Same-shape dense operands and row
/// broadcasts (one side stride 0) get loops the compiler vectorises.
pub(in crate::kernels) fn zip_broadcast<A: Copy + Sync, B: Copy + Sync, D: Copy + Default + Send + 'static>(
    dims: &[usize],
    (a, xa): (&CpuTensor, &[A]),
    (b, xb): (&CpuTensor, &[B]),
    f: impl Fn(A, B) -> D + Sync,
) -> Output<D> {
    // Every element is written below.
    let mut out = output::<D>(dims.iter().product());
    Broadcast::new(dims, [a, b]).par_segments(&mut out, |dst, _, [oa, ob], [sa, sb]| {
        let n = dst.len();
        match (sa, sb) {
            (1, 1) => {
                for ((d, &x), &y) in dst.iter_mut().zip(&xa[oa..oa + n]).zip(&xb[ob..ob + n]) {
                    *d = f(x, y);
                }
            }
            (1, 0) => {
                let y = xb[ob];
                for (d, &x) in dst.iter_mut().zip(&xa[oa..oa + n]) {
                    *d = f(x, y);
                }
            }
            (0, 1) => {
                let x = xa[oa];
                for (d, &y) in dst.iter_mut().zip(&xb[ob..ob + n]) {
                    *d = f(x, y);
                }
            }
            _ => {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = f(xa[oa + i * sa], xb[ob + i * sb]);
                }
            }
        }
    });
    out
}

/// `dst[i] = src[start + i·stride]`.
pub(in crate::kernels) fn copy_strided<T: Copy>(dst: &mut [T], src: &[T], start: usize, stride: usize) {
    if stride == 1 {
        dst.copy_from_slice(&src[start..start + dst.len()]);
    } else {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = src[start + i * stride];
        }
    }
}

/// Walks a contiguous output of some shape together with `N` input views broadcast to it.
///
/// Dims of size 1 are dropped and adjacent dims that every input steps through uniformly are
/// merged, so a dense same-shape operation becomes one long run and a row broadcast becomes
/// rows with a stride-0 operand.
pub(in crate::kernels) struct Broadcast<const N: usize> {
    /// Merged output dims, outermost first; the last one is the inner run.
    dims: Vec<usize>,
    /// Per input, its element stride along each merged dim (0 where it is broadcast).
    strides: [Vec<usize>; N],
    /// Per input, the buffer offset of its first element.
    offsets: [usize; N],
}

impl Broadcast<1> {
    /// Copies the walked view into `out` when it is a transpose of its last two merged dims
    /// (innermost strided, the one before it of stride 1), in square tiles so that reads and
    /// writes both stay within a few cache lines; element by element, every read would touch
    /// a new line. Returns false (copying nothing) for any other layout.
    fn copy_transposed<T: Copy + Send + Sync>(&self, src: &[T], out: &mut [T]) -> bool {
        const TILE: usize = 32;
        let k = self.dims.len();
        let strides = &self.strides[0];
        if k < 2 || strides[k - 1] == 1 || strides[k - 2] != 1 || self.dims[k - 2] < TILE / 4 || out.is_empty() {
            return false;
        }
        let (rows, cols, col_stride) = (self.dims[k - 2], self.dims[k - 1], strides[k - 1]);
        // Tasks are (plane, block of TILE rows, block of columns): a few rows over many columns
        // (a [L, L, H] table read heads-first) still make many tasks. Each holds about
        // TASK_ELEMENTS, a whole number of tiles; none depends on the thread count.
        const TASK_ELEMENTS: usize = 1 << 15;
        let block_rows = TILE.min(rows);
        let block_cols = (TASK_ELEMENTS / block_rows).next_multiple_of(TILE).min(cols.next_multiple_of(TILE));
        let (row_blocks, col_blocks) = (rows.div_ceil(TILE), cols.div_ceil(block_cols));
        let planes = out.len() / (rows * cols);
        struct Dst<T>(*mut T);
        // SAFETY: tasks write disjoint elements of `out`, which outlives the parallel loop.
        unsafe impl<T: Send> Send for Dst<T> {}
        unsafe impl<T: Send> Sync for Dst<T> {}
        let dst = Dst(out.as_mut_ptr());
        (0..planes * row_blocks * col_blocks).into_par_iter().for_each(|task| {
            let dst = &dst;
            let (o, rb, cb) = (task / (row_blocks * col_blocks), task / col_blocks % row_blocks, task % col_blocks);
            let mut rest = o;
            let mut base = self.offsets[0];
            for axis in (0..k - 2).rev() {
                base += rest % self.dims[axis] * strides[axis];
                rest /= self.dims[axis];
            }
            let (r0, r1) = (rb * TILE, rows.min(rb * TILE + TILE));
            let (c_start, c_end) = (cb * block_cols, cols.min(cb * block_cols + block_cols));
            for c0 in (c_start..c_end).step_by(TILE) {
                let c1 = c_end.min(c0 + TILE);
                for r in r0..r1 {
                    // SAFETY: row r, columns c0..c1 of plane o are this task's alone.
                    let row = unsafe { std::slice::from_raw_parts_mut(dst.0.add((o * rows + r) * cols + c0), c1 - c0) };
                    for (j, d) in row.iter_mut().enumerate() {
                        *d = src[base + r + (c0 + j) * col_stride];
                    }
                }
            }
        });
        true
    }
}

impl<const N: usize> Broadcast<N> {
    /// Each input must broadcast to `out` (the IR checked it).
    pub(in crate::kernels) fn new(out: &[usize], inputs: [&CpuTensor; N]) -> Broadcast<N> {
        let views: [CpuTensor; N] = inputs.map(|t| t.expand(out));
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: [Vec<usize>; N] = std::array::from_fn(|_| Vec::new());
        for (axis, &size) in out.iter().enumerate() {
            if size == 1 {
                continue;
            }
            let merges =
                !dims.is_empty() && (0..N).all(|k| strides[k].last() == Some(&(views[k].strides()[axis] * size)));
            if merges {
                if let Some(last) = dims.last_mut() {
                    *last *= size;
                }
                for k in 0..N {
                    if let Some(last) = strides[k].last_mut() {
                        *last = views[k].strides()[axis];
                    }
                }
            } else {
                dims.push(size);
                for k in 0..N {
                    strides[k].push(views[k].strides()[axis]);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            for s in &mut strides {
                s.push(0);
            }
        }
        Broadcast { dims, strides, offsets: views.map(|v| v.offset()) }
    }

    fn inner_len(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }

    fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Calls `f(row_offsets)` for each row in `rows` (rows = all merged dims but the inner
    /// one, row-major), in order, stepping the offsets like an odometer.
    fn for_each_row(&self, rows: Range<usize>, mut f: impl FnMut([usize; N])) {
        let outer = &self.dims[..self.dims.len() - 1];
        let mut index = vec![0; outer.len()];
        let mut rest = rows.start;
        for axis in (0..outer.len()).rev() {
            index[axis] = rest % outer[axis];
            rest /= outer[axis];
        }
        let mut offs = self.offsets;
        for (k, off) in offs.iter_mut().enumerate() {
            *off += index.iter().zip(&self.strides[k]).map(|(i, s)| i * s).sum::<usize>();
        }
        for _ in rows {
            f(offs);
            for axis in (0..outer.len()).rev() {
                index[axis] += 1;
                for (k, off) in offs.iter_mut().enumerate() {
                    *off += self.strides[k][axis];
                }
                if index[axis] < outer[axis] {
                    break;
                }
                for (k, off) in offs.iter_mut().enumerate() {
                    *off -= self.strides[k][axis] * outer[axis];
                }
                index[axis] = 0;
            }
        }
    }

    /// Fills `out` (dense, of the walked shape) in parallel. `f(dst, flat_start, offsets,
    /// inner_strides)` gets a run of the output that lies within one inner row, the flat
    /// output position of its first element, and where each input's matching elements start.
    pub(in crate::kernels) fn par_segments<O: Send>(
        &self,
        out: &mut [O],
        f: impl Fn(&mut [O], usize, [usize; N], [usize; N]) + Sync,
    ) {
        let inner = self.inner_len();
        if out.is_empty() || inner == 0 {
            return;
        }
        debug_assert_eq!(out.len(), self.numel());
        let inner_strides: [usize; N] = std::array::from_fn(|k| self.strides[k][self.dims.len() - 1]);
        let chunk_len = if inner >= CHUNK { CHUNK } else { CHUNK / inner * inner };
        out.par_chunks_mut(chunk_len).enumerate().for_each(|(ci, chunk)| {
            let start = ci * chunk_len;
            let rows = start / inner..(start + chunk.len()).div_ceil(inner);
            let mut col = start % inner;
            let mut flat = start;
            let mut remaining = chunk;
            self.for_each_row(rows, |mut offs| {
                let take = (inner - col).min(remaining.len());
                for (k, off) in offs.iter_mut().enumerate() {
                    *off += col * inner_strides[k];
                }
                let (dst, rest) = std::mem::take(&mut remaining).split_at_mut(take);
                f(dst, flat, offs, inner_strides);
                remaining = rest;
                flat += take;
                col = 0;
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::CpuTensor;

    /// Transposed views copied densely equal their elements read one by one, for shapes that
    /// make several row blocks (with a remainder), several column blocks, and several planes.
    #[test]
    fn transposed_copies_match_an_element_walk() {
        for (dims, perm) in [
            (vec![100, 100, 8], vec![2, 0, 1]),
            (vec![70, 33], vec![1, 0]),
            (vec![3, 40, 50], vec![0, 2, 1]),
            (vec![9, 5000], vec![1, 0]),
        ] {
            let n: usize = dims.iter().product();
            let t = CpuTensor::from_vec(dims.clone(), (0..n).map(|i| i as f32).collect());
            let view = t.permute(&perm);
            let want = view.to_f64_vec();
            let dense = view.contiguous();
            let got = dense.data::<f32>().expect("a dense copy");
            assert!(got.iter().zip(&want).all(|(&g, &w)| g as f64 == w), "{dims:?} permuted {perm:?}");
            let ints = CpuTensor::from_buffer(dims.clone(), crate::Buffer::I64((0..n as i64).collect()));
            let got = ints.permute(&perm).contiguous().to_f64_vec();
            assert_eq!(got, want, "i64 {dims:?} permuted {perm:?}");
        }
    }
}
