//! Ctrl-C during a long run: the first SIGINT raises a flag that the pipeline checks between
//! steps, so the run stops cleanly, removes what it had started to write and exits with 130; a
//! second SIGINT ends the process at once (still with 130).

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
mod sys {
    pub const SIGINT: i32 = 2;
    extern "C" {
        pub fn signal(signum: i32, handler: usize) -> usize;
        pub fn _exit(status: i32) -> !;
    }
}

#[cfg(unix)]
extern "C" fn on_sigint(_: i32) {
    // Only async-signal-safe work here: an atomic swap, and _exit.
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and ends the process.
        unsafe { sys::_exit(130) }
    }
}

/// Installs the handler (once per process is enough; later calls only return the flag).
pub fn install() -> &'static AtomicBool {
    #[cfg(unix)]
    // SAFETY: `on_sigint` only touches an atomic and calls `_exit`; `signal` with a valid
    // function pointer has no other requirements.
    unsafe {
        sys::signal(sys::SIGINT, on_sigint as extern "C" fn(i32) as usize);
    }
    &STOP
}
