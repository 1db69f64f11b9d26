//! glibc's allocator, set up for a process whose big buffers are allocated and freed by
//! different worker threads.
//!
//! By default glibc gives threads their own malloc arenas (up to 8 per core), and memory freed
//! into one arena is reused only by the threads that allocate from it. The kernels run on
//! rayon's workers, whichever picks the job up, so a chunked decode kept freed activations in
//! several arenas at once: the real-size decode of BENCHMARKS.md peaked at 4.44 GiB with the
//! default arenas and at 3.82–3.85 GiB with one (its wall time, 273 and 302 s against 291 s,
//! within the host's noise).
//! `MALLOC_ARENA_MAX`, when set, is the user's choice and is left alone.

/// One malloc arena for the whole process, unless `MALLOC_ARENA_MAX` says otherwise. Call it
/// before any thread starts.
pub fn use_one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        /// glibc's `M_ARENA_MAX` (malloc.h).
        const M_ARENA_MAX: std::ffi::c_int = -8;
        // SAFETY: mallopt only changes the allocator's settings; with no other thread running
        // yet nothing allocates concurrently. A refusal (return 0) leaves the defaults.
        unsafe { mallopt(M_ARENA_MAX, 1) };
    }
}
