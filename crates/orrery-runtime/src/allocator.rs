//! glibc's allocator, set up for a process whose big buffers are allocated and freed by
//! different worker threads, and whose activations live in a session's arena.
//!
//! **One malloc arena.** By default glibc gives threads their own malloc arenas (up to 8 per
//! core), and memory freed into one arena is reused only by the threads that allocate from it.
//! The kernels run on rayon's workers, whichever picks the job up, so a chunked decode kept
//! freed activations in several arenas at once: the real-size decode of BENCHMARKS.md peaked
//! at 4.44 GiB with the default arenas and at 3.82–3.85 GiB with one (its wall time, 273 and
//! 302 s against 291 s, within the host's noise).
//!
//! **Fixed mmap and trim thresholds.** glibc maps every request above its mmap threshold
//! afresh and unmaps it on free, and returns the top of the heap to the OS past its trim
//! threshold. Both start at 128 KiB and rise only when a mapped buffer is freed (up to 32 MiB
//! and twice that). Kernel outputs used to be such buffers; with outputs in the session's
//! arena nothing raises them, so every kernel's scratch above 128 KiB (attention's packed key
//! blocks, say) was mapped, faulted in and unmapped again each call: `attn8x128_1024` took
//! 3,200 page faults a run and ran 0.81× as fast. Setting them where glibc's own adjustment
//! used to end (32 MiB, 64 MiB) gives that steady state from the start.
//!
//! Environment variables the user set (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_`) are left alone.

/// The mmap threshold: requests of this size or more are mapped afresh.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// The trim threshold: free memory at the top of the heap kept for reuse.
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Sets glibc's allocator up as the module says, where the user has not. Call it before any
/// thread starts (a binary's `main`).
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // glibc's parameter numbers (malloc.h).
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        const M_ARENA_MAX: std::ffi::c_int = -8;
        for (env, param, value) in [
            ("MALLOC_ARENA_MAX", M_ARENA_MAX, 1),
            ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ] {
            if std::env::var_os(env).is_none() {
                // SAFETY: mallopt only changes the allocator's settings; with no other thread
                // running yet nothing allocates concurrently. A refusal (return 0) leaves the
                // default.
                unsafe { mallopt(param, value) };
            }
        }
    }
}
