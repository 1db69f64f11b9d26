//! Where a kernel's output is written: the range of the session's arena that the memory plan
//! gave it ([`with_output_slot`]), a buffer recycled from a value freed earlier in the run
//! ([`crate::Recycler`]), or new memory.
//!
//! Kernels take their output through [`output`], [`OutputBuffer`] or [`fill_output_chunks`],
//! once per kernel and for the output itself, not for scratch: the first request of the
//! slot's length takes the slot. The memory may hold stale values, so the kernel writes every
//! element before anything reads it.

use crate::arena::ArenaValues;
use crate::kernels::linalg::operand::SharedMut;
use crate::recycle::{output_of, recycled};
use crate::{Buffer, CpuTensor, Element};
use rayon::prelude::*;
use std::any::TypeId;
use std::cell::Cell;
use std::ops::{Deref, DerefMut};

thread_local! {
    /// The arena range offered to the kernel running on this thread ([`with_output_slot`]).
    static SLOT: Cell<Option<ArenaValues>> = const { Cell::new(None) };
}

/// Runs `f` (one kernel) with `slot` offered as the memory of its output: the first output
/// request of `slot`'s length that `f` makes on this thread is served from it. A slot not
/// taken goes back to its arena when `f` returns.
pub fn with_output_slot<R>(slot: ArenaValues, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<ArenaValues>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SLOT.with(|s| s.set(self.0.take()));
        }
    }
    let _restore = Restore(SLOT.with(|s| s.replace(Some(slot))));
    f()
}

/// The offered slot, when it holds exactly `len` f32 values.
fn slot(len: usize) -> Option<ArenaValues> {
    SLOT.with(|s| match s.take() {
        Some(values) if values.len() == len => Some(values),
        other => {
            s.set(other);
            None
        }
    })
}

/// A kernel's output values: in its arena slot, or in a `Vec`.
pub(crate) enum Output<T: Copy + 'static = f32> {
    Heap(Vec<T>),
    /// Only when `T` is `f32`.
    Arena(ArenaValues),
}

impl<T: Copy + 'static> Output<T> {
    /// The values in a `Vec` (a copy of arena values).
    pub(crate) fn into_vec(self) -> Vec<T> {
        match self {
            Output::Heap(v) => v,
            Output::Arena(_) => self.to_vec(),
        }
    }

    /// The buffer holding these values (`heap` wraps a `Vec`).
    pub(crate) fn into_buffer(self, heap: impl FnOnce(Vec<T>) -> Buffer) -> Buffer {
        match self {
            Output::Heap(v) => heap(v),
            Output::Arena(values) => Buffer::Arena(values),
        }
    }
}

/// Arena values are f32: an `Output<T>` holds them only when `T` is `f32`.
fn assert_f32<T: 'static>() {
    assert_eq!(TypeId::of::<T>(), TypeId::of::<f32>(), "arena outputs are f32");
}

impl<T: Element> Output<T> {
    /// The tensor of `shape` over these values.
    pub(crate) fn into_tensor(self, shape: Vec<usize>) -> CpuTensor {
        CpuTensor::from_buffer(shape, self.into_buffer(T::into_buffer))
    }
}

impl<T: Copy + 'static> Deref for Output<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Output::Heap(v) => v,
            Output::Arena(values) => {
                assert_f32::<T>();
                // SAFETY: `T` is `f32`.
                unsafe { std::slice::from_raw_parts(values.as_slice().as_ptr().cast(), values.len()) }
            }
        }
    }
}

impl<T: Copy + 'static> DerefMut for Output<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Output::Heap(v) => v,
            Output::Arena(values) => {
                assert_f32::<T>();
                let len = values.len();
                // SAFETY: `T` is `f32`, and the slice reborrows the exclusive borrow of `values`.
                unsafe { std::slice::from_raw_parts_mut(values.as_mut_slice().as_mut_ptr().cast(), len) }
            }
        }
    }
}

/// A kernel's output of `len` elements, holding arbitrary values: its arena slot, a recycled
/// buffer or a new default-filled one. The caller writes every element before it is read.
pub(crate) fn output<T: Copy + Default + 'static>(len: usize) -> Output<T> {
    match slot_of::<T>(len) {
        Some(values) => Output::Arena(values),
        None => Output::Heap(output_of::<T>(len)),
    }
}

/// The offered slot, when `T` is `f32` and the slot holds `len` values.
fn slot_of<T: 'static>(len: usize) -> Option<ArenaValues> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| slot(len)).flatten()
}

/// A kernel's output of `len` f32 values that the kernel writes through [`OutputBuffer::ptr`]
/// before it reads any of them: its arena slot, a recycled buffer, or new memory that is not
/// zeroed. Zeroing new outputs up front cost the T5 encoder 8% of its time (about 80 MB a
/// run, written by the thread that called the kernel while the others waited) and the DiT 1–3%.
pub(crate) struct OutputBuffer {
    /// The slot, a recycled buffer of `len` values, or an empty one with room for `len`.
    values: Output,
    len: usize,
}

impl OutputBuffer {
    pub(crate) fn new(len: usize) -> OutputBuffer {
        let values = match slot(len) {
            Some(values) => Output::Arena(values),
            None => Output::Heap(recycled(len).unwrap_or_else(|| Vec::with_capacity(len))),
        };
        OutputBuffer { values, len }
    }

    /// The first of the `len` elements. An element not yet written must be written through
    /// this pointer before any reference covers it.
    pub(crate) fn ptr(&mut self) -> SharedMut {
        SharedMut(match &mut self.values {
            Output::Heap(v) => v.as_mut_ptr(),
            Output::Arena(values) => values.as_mut_slice().as_mut_ptr(),
        })
    }

    /// The values, once written.
    ///
    /// # Safety
    /// Every one of the `len` elements has been written through [`OutputBuffer::ptr`].
    pub(crate) unsafe fn assume_written(mut self) -> Output {
        if let Output::Heap(v) = &mut self.values {
            // SAFETY: the capacity holds `len` elements, all initialised (caller).
            unsafe { v.set_len(self.len) };
        }
        self.values
    }
}

/// New outputs of at least this many bytes are asked of the allocator zeroed: glibc maps every
/// request of 32 MiB or more afresh, and fresh pages are zero, so that costs nothing beyond the
/// page faults, where zeroing them chunk by chunk would write them twice.
const MAPPED_ZEROED_BYTES: usize = 32 << 20;

/// A kernel's output of `len` f32 values, written by `fill(scratch, i, chunk)` for each chunk
/// `i` of `chunk_len` elements (the last may be shorter), in parallel, with one `init()`
/// scratch per worker. The buffer is the arena slot or a recycled one, or new memory that each
/// worker zeroes chunk by chunk just before filling it (in its cache then; zeroing the whole
/// output up front cost a pass over memory on one thread), or, for big outputs, zeroed memory
/// the allocator maps afresh.
pub(crate) fn fill_output_chunks<S>(
    len: usize,
    chunk_len: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Output {
    let mut out = OutputBuffer::new(len);
    // New memory, not initialised yet (the slot and recycled buffers hold stale values).
    let mut fresh = matches!(&out.values, Output::Heap(v) if v.len() < len);
    if fresh && len * size_of::<f32>() >= MAPPED_ZEROED_BYTES {
        out.values = Output::Heap(vec![0.0; len]);
        fresh = false;
    }
    let base = out.ptr();
    let chunk_len = chunk_len.max(1);
    (0..len.div_ceil(chunk_len)).into_par_iter().for_each_init(init, |scratch, i| {
        let (start, n) = (i * chunk_len, chunk_len.min(len - i * chunk_len));
        // SAFETY: chunks are disjoint parts of the buffer, which outlives the loop; memory not
        // written yet is written (zeroed) before the slice covers it.
        let chunk = unsafe {
            if fresh {
                std::ptr::write_bytes(base.add(start), 0, n);
            }
            std::slice::from_raw_parts_mut(base.add(start), n)
        };
        fill(scratch, i, chunk);
    });
    // SAFETY: every chunk was written.
    unsafe { out.assume_written() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Arena;
    use crate::recycle::tests::{shelf_with_one_buffer, BIG};

    /// Chunked outputs are whole for new small and big buffers (zeroed chunk by chunk, or
    /// mapped zeroed) and for recycled ones, whatever the chunk length.
    #[test]
    fn chunked_outputs_are_written_whole() {
        let fill = |_: &mut (), i: usize, chunk: &mut [f32]| {
            let start = i * 1000;
            chunk.iter_mut().enumerate().for_each(|(j, v)| *v = (start + j) as f32);
        };
        let check = |v: &[f32], what: &str| {
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32), "{what}");
        };
        for len in [0, 1, 999, BIG + 7, MAPPED_ZEROED_BYTES / 4 + 3] {
            check(&fill_output_chunks(len, 1000, || (), fill), &format!("new, {len} values"));
        }
        let (r, ptr) = shelf_with_one_buffer();
        r.install(|| {
            let v = fill_output_chunks(BIG, 1000, || (), fill);
            assert_eq!(v.as_ptr(), ptr, "the recycled buffer");
            check(&v, "recycled");
        });
    }

    #[test]
    fn the_first_output_of_the_slots_length_takes_it() {
        let arena = Arena::new(1 << 20).unwrap();
        let n = 1000;
        let taken = with_output_slot(arena.lend(4096, n).unwrap(), || {
            assert!(matches!(output::<f32>(n + 1), Output::Heap(_)), "another length");
            assert!(matches!(output::<i64>(n), Output::Heap(_)), "another type");
            let taken = output::<f32>(n);
            assert!(matches!(taken, Output::Arena(_)));
            assert!(matches!(output::<f32>(n), Output::Heap(_)), "taken once");
            taken
        });
        assert_eq!(arena.lent_bytes(), n * 4, "lent to the output");
        let t = taken.into_tensor(vec![n]);
        assert!(matches!(**t.buffer(), Buffer::Arena(_)));
        drop(t);
        assert_eq!(arena.lent_bytes(), 0, "given back with the tensor");
        with_output_slot(arena.lend(0, n).unwrap(), || ());
        assert_eq!(arena.lent_bytes(), 0, "an untaken slot goes back");
        assert!(matches!(output::<f32>(n), Output::Heap(_)), "no slot outside");
    }

    #[test]
    fn every_kind_of_output_fills_its_slot() {
        let arena = Arena::new(1 << 20).unwrap();
        let n = 2500;
        let fill = |_: &mut (), i: usize, chunk: &mut [f32]| {
            chunk.iter_mut().enumerate().for_each(|(j, v)| *v = (i * 1000 + j) as f32);
        };
        let mut stale = arena.lend(0, n).unwrap();
        stale.as_mut_slice().fill(f32::NAN);
        drop(stale);
        let chunked = with_output_slot(arena.lend(0, n).unwrap(), || fill_output_chunks(n, 1000, || (), fill));
        assert!(matches!(chunked, Output::Arena(_)));
        assert!(chunked.iter().enumerate().all(|(i, &x)| x == i as f32));
        let written = with_output_slot(arena.lend(n * 4, n).unwrap(), || {
            let mut y = OutputBuffer::new(n);
            let p = y.ptr();
            // SAFETY: `y` holds `n` elements, each written here.
            unsafe {
                (0..n).for_each(|i| p.add(i).write(-(i as f32)));
                y.assume_written()
            }
        });
        assert!(matches!(written, Output::Arena(_)));
        assert!(written.iter().enumerate().all(|(i, &x)| x == -(i as f32)));
    }
}
