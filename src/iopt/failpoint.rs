//! Test-only fault injection in the spirit of the kernel's `fail_nth`: a test arms the calling
//! thread so that its n-th pass through a fallible step of the io_pagetable (a page-source pin,
//! a memlock charge, a domain map) fails with that step's natural errno. Compiled only for unit
//! tests (`cfg(test)`); production builds have no hook at all.
//!
//! The counter is per thread, so tests running in parallel on other threads never see it; the
//! in-process dispatch path runs every step of an ioctl on the calling thread.

use nix::errno::Errno;
use std::cell::Cell;

thread_local! {
    /// (fail at this hit, 1-based; 0 = disarmed, hits so far)
    static STATE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Arms the calling thread: the `nth` (1-based) step from now fails; `None` only counts.
pub fn arm(nth: Option<u64>) {
    STATE.with(|s| s.set((nth.unwrap_or(0), 0)));
}

/// Steps passed on this thread since the last [`arm`].
pub fn hits() -> u64 {
    STATE.with(|s| s.get().1)
}

/// Whether the armed step was reached (and failed).
pub fn fired() -> bool {
    STATE.with(|s| {
        let (nth, hits) = s.get();
        nth != 0 && hits >= nth
    })
}

/// One fallible step: `Err(errno)` when it is the armed one.
pub fn check(errno: Errno) -> Result<(), Errno> {
    STATE.with(|s| {
        let (nth, hits) = s.get();
        let hits = hits + 1;
        s.set((nth, hits));
        if hits == nth {
            Err(errno)
        } else {
            Ok(())
        }
    })
}
