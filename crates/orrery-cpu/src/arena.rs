//! The activation arena: one anonymous mapping per session, in which each kernel writes its
//! output at the byte offset the memory plan gave it.
//!
//! Fresh heap buffers cost a page fault per 4 KiB on first touch, and glibc maps every request
//! of 32 MiB or more afresh and unmaps it on free, so a transformer paid those faults again in
//! every layer (the DiT of BENCHMARKS.md took 32,000 per run). The plan already places every
//! value so that values live at the same time never overlap; writing there touches each page
//! of the arena once per session.
//!
//! Soundness does not rest on the plan: the arena lends each range to one [`ArenaValues`] at a
//! time and refuses a range that overlaps one still lent (a caller still holding last run's
//! output, say). The runtime then lets that kernel allocate as before.

use memmap2::{MmapOptions, MmapRaw, UncheckedAdvice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Zeroed memory for a plan's activations, lent out in disjoint byte ranges.
pub struct Arena {
    map: MmapRaw,
    bytes: usize,
    /// The ranges lent out, `(start, end)` in bytes, sorted and disjoint.
    lent: Mutex<Vec<(usize, usize)>>,
    /// Set by [`Arena::retire`]: pages go back to the OS as their ranges do.
    retired: AtomicBool,
}

impl Arena {
    /// A new arena of `bytes` (more than zero), mapped but not yet touched: its pages cost
    /// memory once a kernel writes them.
    pub fn new(bytes: usize) -> std::io::Result<Arc<Arena>> {
        if bytes == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "an arena of zero bytes"));
        }
        // Anonymous pages read as zero, so every f32 in the arena is initialised from the start.
        let map = MmapRaw::from(MmapOptions::new().len(bytes).map_anon()?);
        Ok(Arc::new(Arena { map, bytes, lent: Mutex::new(Vec::new()), retired: AtomicBool::new(false) }))
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The `len` f32 values at byte `offset`, lent until the returned value drops; `None` when
    /// the range is out of bounds, misaligned, empty, or overlaps a range still lent.
    pub fn lend(self: &Arc<Arena>, offset: usize, len: usize) -> Option<ArenaValues> {
        let end = offset.checked_add(len.checked_mul(size_of::<f32>())?)?;
        if len == 0 || end > self.bytes || !offset.is_multiple_of(align_of::<f32>()) {
            return None;
        }
        let mut lent = self.lent.lock().expect("arena poisoned");
        // Sorted and disjoint: the first range ending after `offset` is the only candidate.
        let at = lent.partition_point(|&(_, e)| e <= offset);
        if lent.get(at).is_some_and(|&(s, _)| s < end) {
            return None;
        }
        lent.insert(at, (offset, end));
        Some(ArenaValues { arena: self.clone(), offset, len })
    }

    /// Bytes lent out now.
    pub fn lent_bytes(&self) -> usize {
        self.lent.lock().expect("arena poisoned").iter().map(|(s, e)| e - s).sum()
    }

    /// Returns the pages no lent range touches to the OS (they read as zero when next used),
    /// now and as each lent range comes back. A session does this when it is dropped while
    /// outputs in the arena live on (a caller's results, a chunk's carried state): those keep
    /// the mapping, but only their own pages stay resident, and only while they live.
    pub fn retire(&self) {
        let lent = self.lent.lock().expect("arena poisoned");
        self.retired.store(true, Ordering::Relaxed);
        let mut free_from = 0;
        for &(start, end) in lent.iter().chain(std::iter::once(&(self.bytes, self.bytes))) {
            self.release(free_from, start);
            free_from = end;
        }
    }

    /// Returns the whole pages within the unlent bytes `[from, to)` to the OS (a page shared
    /// with a lent range keeps its contents).
    fn release(&self, from: usize, to: usize) {
        let page = page_size();
        let (from, to) = (from.next_multiple_of(page), to / page * page);
        if to > from {
            // SAFETY: no lent range, hence no reference, covers [from, to); its values become
            // zeros, which are valid f32s. Failure only leaves the pages resident.
            let _ = unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, from, to - from) };
        }
    }

    fn give_back(&self, offset: usize) {
        let mut lent = self.lent.lock().expect("arena poisoned");
        let Ok(at) = lent.binary_search_by_key(&offset, |&(s, _)| s) else { return };
        lent.remove(at);
        if self.retired.load(Ordering::Relaxed) {
            // The gap the range leaves between its lent neighbours.
            let from = at.checked_sub(1).map_or(0, |i| lent[i].1);
            let to = lent.get(at).map_or(self.bytes, |r| r.0);
            self.release(from, to);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// `len` f32 values in an [`Arena`], which lends their range to this value alone until it
/// drops.
pub struct ArenaValues {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
}

impl ArenaValues {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte offset in the arena.
    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: the range is in bounds, aligned and initialised (`Arena::lend`, `Arena::new`),
        // and lent to `self` alone, so only `self`'s borrows reach it.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as `as_slice`, and `&mut self` excludes every other borrow of the range.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }

    fn ptr(&self) -> *mut f32 {
        // SAFETY: `offset` is within the mapping (`Arena::lend`).
        unsafe { self.arena.map.as_mut_ptr().add(self.offset).cast() }
    }

    /// Whether these values are in `arena`.
    pub fn is_in(&self, arena: &Arc<Arena>) -> bool {
        Arc::ptr_eq(&self.arena, arena)
    }
}

impl Drop for ArenaValues {
    fn drop(&mut self) {
        self.arena.give_back(self.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_lent_once_and_come_back_on_drop() {
        let arena = Arena::new(1 << 16).unwrap();
        let mut a = arena.lend(0, 1024).expect("free");
        assert!(a.as_slice().iter().all(|&v| v == 0.0), "fresh pages are zero");
        a.as_mut_slice().fill(3.0);
        assert!(arena.lend(4092, 2).is_none(), "overlaps the end of `a`");
        assert!(arena.lend(0, 1).is_none(), "overlaps the start of `a`");
        let b = arena.lend(4096, 16).expect("just after `a`");
        assert!(arena.lend(4096 + 60, 1).is_none(), "the last element of `b`");
        assert_eq!(arena.lent_bytes(), 4096 + 64);
        drop(a);
        let again = arena.lend(0, 1024).expect("given back");
        assert!(again.as_slice().iter().all(|&v| v == 3.0), "stale values stay");
        drop((again, b));
        assert_eq!(arena.lent_bytes(), 0);
    }

    #[test]
    fn out_of_bounds_misaligned_and_empty_ranges_are_refused() {
        let arena = Arena::new(4096).unwrap();
        assert!(arena.lend(4096 - 4, 2).is_none());
        assert!(arena.lend(usize::MAX - 3, 1).is_none());
        assert!(arena.lend(2, 1).is_none());
        assert!(arena.lend(0, 0).is_none());
        assert!(arena.lend(4096 - 4, 1).is_some());
        assert!(Arena::new(0).is_err());
    }

    #[test]
    fn a_retired_arena_releases_every_page_nothing_lent_touches() {
        let page = page_size();
        let arena = Arena::new(4 * page).unwrap();
        let floats = page / 4;
        let mut all = arena.lend(0, 4 * floats).unwrap();
        all.as_mut_slice().fill(1.0);
        drop(all);
        // Lent: the end of page 0 and the start of page 1 (so both stay), and page 3.
        let kept = arena.lend(page - 8, 4).unwrap();
        let last = arena.lend(3 * page, floats).unwrap();
        arena.retire();
        assert!(kept.as_slice().iter().all(|&v| v == 1.0));
        assert!(last.as_slice().iter().all(|&v| v == 1.0));
        let peek = |what: &str, want: &[f32]| {
            // A 4-byte range in each page, lent and given back at once (the arena is retired,
            // so giving it back releases its page when nothing else is lent there).
            for (p, &want) in want.iter().enumerate() {
                let probe = arena.lend(p * page + 16, 1).unwrap();
                assert_eq!(probe.as_slice()[0], want, "{what}: page {p}");
            }
        };
        peek("retired", &[1.0, 1.0, 0.0]);
        drop(last);
        // Page 3 came back: released. Pages 0 and 1 still hold `kept`.
        peek("page 3 back", &[1.0, 1.0, 0.0, 0.0]);
        drop(kept);
        peek("all back", &[0.0, 0.0, 0.0, 0.0]);
    }
}
