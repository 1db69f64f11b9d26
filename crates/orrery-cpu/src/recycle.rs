//! f32 buffers recycled from the values a run frees to the outputs of its later kernels, for
//! runs without an activation arena ([`crate::Arena`], which the runtime uses by default).
//!
//! A fresh large output costs page faults and zeroing on first touch (1.9 µs per 4 KiB page
//! on the machines of BENCHMARKS.md), and a transformer allocates the same few sizes again in
//! every layer. The runtime gives each value it frees to its session's [`Recycler`] and
//! installs the recycler around every kernel; the kernels that make large outputs (products,
//! attention, epilogues, fused programs, norms, convolutions, concatenations and dense copies
//! of views) take their output from it when a freed buffer of exactly the size is on its
//! shelf. A recycled buffer holds stale values, so those kernels write
//! every element of their output before anything reads it. The runtime gives the shelf only
//! the room its plan leaves: before each kernel, the plan's peak of live activation bytes less
//! those live and the kernel's output ([`Recycler::fit`]), so the shelf, the live values and
//! the output being made never hold more than the plan's peak, which is what a memory budget
//! was checked against. The oldest buffers go first, and the shelf is emptied after each run,
//! so between runs the memory is returned as before.

use crate::{Buffer, CpuTensor};
use std::any::{Any, TypeId};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Buffers smaller than this are left to the allocator (they fault little and are cheap to
/// zero; keeping them would only lengthen the shelf).
const MIN_RECYCLED_BYTES: usize = 256 << 10;

/// A shelf of freed f32 buffers, shared by the threads of one session.
#[derive(Default)]
pub struct Recycler {
    shelf: Mutex<Shelf>,
    /// Bytes of outputs served from the shelf since [`Recycler::clear`].
    served: AtomicU64,
}

#[derive(Default)]
struct Shelf {
    buffers: Vec<Vec<f32>>,
    bytes: usize,
}

impl Shelf {
    fn fit(&mut self, room: usize) {
        while self.bytes > room {
            let oldest = self.buffers.remove(0);
            self.bytes -= oldest.len() * size_of::<f32>();
        }
    }
}

impl Recycler {
    /// Takes a value the run no longer needs: its f32 buffer goes on the shelf when this
    /// was the last reference to it (views, weights and caller-held inputs never are), the
    /// oldest buffers leaving until the shelf holds at most `room` bytes.
    pub fn give(&self, t: CpuTensor, room: usize) {
        let Ok(Buffer::F32(v)) = Arc::try_unwrap(t.into_buffer()) else { return };
        let bytes = v.len() * size_of::<f32>();
        if bytes < MIN_RECYCLED_BYTES || bytes > room {
            return;
        }
        let mut shelf = self.shelf.lock().expect("recycler poisoned");
        shelf.fit(room - bytes);
        shelf.bytes += bytes;
        shelf.buffers.push(v);
    }

    /// Drops the oldest buffers until the shelf holds at most `room` bytes.
    pub fn fit(&self, room: usize) {
        self.shelf.lock().expect("recycler poisoned").fit(room);
    }

    /// Drops every buffer on the shelf; returns the bytes of outputs it served since the
    /// last clear.
    pub fn clear(&self) -> u64 {
        let mut shelf = self.shelf.lock().expect("recycler poisoned");
        shelf.buffers = Vec::new();
        shelf.bytes = 0;
        self.served.swap(0, Ordering::Relaxed)
    }

    /// Bytes on the shelf.
    pub fn bytes(&self) -> usize {
        self.shelf.lock().expect("recycler poisoned").bytes
    }

    /// Runs `f` with this recycler serving the outputs of the kernels it runs on this thread.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Recycler);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self as *const Recycler)));
        f()
    }

    fn take(&self, len: usize) -> Option<Vec<f32>> {
        let mut shelf = self.shelf.lock().expect("recycler poisoned");
        let at = shelf.buffers.iter().rposition(|v| v.len() == len)?;
        let v = shelf.buffers.remove(at);
        shelf.bytes -= len * size_of::<f32>();
        self.served.fetch_add((len * size_of::<f32>()) as u64, Ordering::Relaxed);
        Some(v)
    }
}

thread_local! {
    /// The recycler installed on this thread ([`Recycler::install`]), or null.
    static CURRENT: Cell<*const Recycler> = const { Cell::new(std::ptr::null()) };
}

/// A buffer of `len` f32 values for a kernel's output: a recycled one when the installed
/// recycler has one of exactly that length, holding arbitrary (stale) values, else a new
/// zeroed one. The caller writes every element before it is read.
pub(crate) fn output_f32(len: usize) -> Vec<f32> {
    recycled(len).unwrap_or_else(|| vec![0.0; len])
}

/// A buffer of `len` f32 values from the installed recycler's shelf, if it holds one.
pub(crate) fn recycled(len: usize) -> Option<Vec<f32>> {
    let current = CURRENT.with(Cell::get);
    // SAFETY: a non-null pointer was installed by `Recycler::install`, whose borrow of the
    // recycler outlives the call it wraps, and is restored when that call returns.
    (!current.is_null() && len * size_of::<f32>() >= MIN_RECYCLED_BYTES)
        .then(|| unsafe { &*current }.take(len))
        .flatten()
}

/// [`output_f32`] for a buffer of any element type: from the shelf when `T` is `f32`, else new
/// and filled with `T::default()`. The caller writes every element before it is read.
pub(crate) fn output_of<T: Clone + Default + 'static>(len: usize) -> Vec<T> {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        let v: Box<dyn Any> = Box::new(output_f32(len));
        *v.downcast::<Vec<T>>().expect("T is f32")
    } else {
        vec![T::default(); len]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const BIG: usize = MIN_RECYCLED_BYTES / 4;

    /// A recycler whose shelf holds one freed `BIG`-float buffer, and that buffer's address.
    pub(crate) fn shelf_with_one_buffer() -> (Recycler, *const f32) {
        let r = Recycler::default();
        let t = CpuTensor::from_vec(vec![BIG], vec![7f32; BIG]);
        let ptr = t.data::<f32>().unwrap().as_ptr();
        r.give(t, usize::MAX);
        (r, ptr)
    }

    #[test]
    fn freed_buffers_serve_outputs_of_their_size_only_while_installed() {
        let (r, ptr) = shelf_with_one_buffer();
        assert_eq!(r.bytes(), BIG * 4);
        let fresh = output_f32(BIG);
        assert_ne!(fresh.as_ptr(), ptr, "not installed: a new buffer");
        r.install(|| {
            assert!(output_f32(BIG + 1).iter().all(|&v| v == 0.0), "another size: a new, zeroed buffer");
            let got = output_f32(BIG);
            assert_eq!(got.as_ptr(), ptr, "the freed buffer");
        });
        assert_eq!(r.bytes(), 0);
        assert_eq!(r.clear(), (BIG * 4) as u64, "served once");
    }

    #[test]
    fn only_f32_outputs_come_from_the_shelf() {
        let (r, ptr) = shelf_with_one_buffer();
        r.install(|| {
            assert!(output_of::<i64>(BIG / 2).iter().all(|&v| v == 0), "another type: new, default-filled");
            assert_eq!(r.bytes(), BIG * 4, "the f32 buffer stays");
            let got = output_of::<f32>(BIG);
            assert_eq!(got.as_ptr(), ptr, "f32: the freed buffer");
        });
    }

    #[test]
    fn shared_small_and_excess_buffers_are_not_kept() {
        let (r, room) = (Recycler::default(), 3 * BIG * 4);
        let t = CpuTensor::from_vec(vec![BIG], vec![1f32; BIG]);
        let view = t.reshape(&[1, BIG]);
        r.give(t, room);
        assert_eq!(r.bytes(), 0, "a view still holds it");
        r.give(view, room);
        assert_eq!(r.bytes(), BIG * 4, "the last reference");
        r.give(CpuTensor::from_vec(vec![16], vec![1f32; 16]), room);
        assert_eq!(r.bytes(), BIG * 4, "small buffers are left to the allocator");
        r.give(CpuTensor::from_vec(vec![BIG], vec![3f32; BIG]), BIG * 4 - 1);
        assert_eq!(r.bytes(), BIG * 4, "no room for it");
        for _ in 0..3 {
            r.give(CpuTensor::from_vec(vec![BIG], vec![1f32; BIG]), room);
        }
        assert_eq!(r.bytes(), 3 * BIG * 4, "the room holds");
        r.give(CpuTensor::from_vec(vec![BIG], vec![2f32; BIG]), BIG * 4);
        assert_eq!(r.bytes(), BIG * 4, "less room: the oldest leave");
        r.install(|| assert!(output_f32(BIG).iter().all(|&v| v == 2.0), "the newest stayed"));
        for v in [4f32, 5.0] {
            r.give(CpuTensor::from_vec(vec![BIG], vec![v; BIG]), room);
        }
        r.fit(BIG * 4 + 1);
        assert_eq!(r.bytes(), BIG * 4, "fit: the oldest leave");
        r.install(|| assert!(output_f32(BIG).iter().all(|&v| v == 5.0), "the newest stayed"));
        r.clear();
        assert_eq!(r.bytes(), 0);
    }
}
