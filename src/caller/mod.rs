//! Caller memory: the layer that reads and writes the address space of the process that issued an
//! ioctl, and fetches file descriptors from its fd table.
//!
//! Every ioctl argument reaches the daemon as a bare pointer (iommufd ioctls carry no size in their
//! number), so all copies go through [`CallerMemory`]. [`ProcessMemory`] uses process_vm_readv/writev
//! on the caller's thread id; in-process users (unit tests, `replay --in-process`) use
//! [`ProcessMemory::current`], the same code path aimed at the daemon's own pid, so bad pointers still
//! come back as EFAULT instead of crashing.
//!
//! Argument copies during a request use the calling thread (its id is stable while the request
//! is held). Memory reached *after* the request (an area's pages) goes through a
//! [`ProcessHandle`] bound during the request, never through a pid number (see [`identity`]).

pub mod context_query;
#[cfg(test)]
pub(crate) mod fake;
pub mod files;
mod held;
pub mod identity;
mod process;
pub mod shared;
pub mod subids;
mod user_counts;

pub use held::RequestCaller;
pub use identity::{Credentials, ProcessHandle, ProcessHandles};
pub use process::{vm_read, vm_write, ProcessMemory};

use crate::narrow::usize_from;
use nix::errno::Errno;
use std::os::fd::OwnedFd;

/// Access to the memory and fd table of the process behind one request.
pub trait CallerMemory: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `addr`; any short read is EFAULT.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes all of `buf` at `addr`; any short write is EFAULT.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno>;
    /// The calling process (thread group) id, used for pin ownership, rlimits and page frame lookups.
    fn pid(&self) -> i32;
    /// Duplicates the caller's file descriptor `fd` into the daemon (pidfd_getfd). EBADF if it is not open.
    fn get_fd(&self, fd: i32) -> Result<OwnedFd, Errno>;
    /// The calling thread id (the FUSE header's `pid`).
    fn tid(&self) -> i32 {
        self.pid()
    }
    /// The calling thread's credentials (real uid, capabilities, user namespace).
    fn credentials(&self) -> Result<Credentials, Errno> {
        Credentials::of_thread(self.tid())
    }
    /// `capable(cap)` of the calling thread: only capabilities held in the daemon's own user
    /// namespace count.
    fn capable(&self, cap: u32) -> bool {
        self.credentials().is_ok_and(|c| c.capable(cap))
    }
}

/// Reads a plain-old-data struct from caller memory.
pub fn read_struct<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
    mem: &dyn CallerMemory,
    addr: u64,
) -> Result<T, Errno> {
    let mut value = T::new_zeroed();
    mem.read(addr, value.as_mut_bytes())?;
    Ok(value)
}

/// Writes a plain-old-data struct to caller memory.
pub fn write_struct<T: zerocopy::IntoBytes + zerocopy::Immutable>(
    mem: &dyn CallerMemory,
    addr: u64,
    value: &T,
) -> Result<(), Errno> {
    mem.write(addr, value.as_bytes())
}

/// Checks that `len` bytes of caller memory at `addr` are all zero: E2BIG at the first non-zero
/// byte, EFAULT at the first unreadable one, whichever comes first, as the kernel's
/// check_zeroed_user. Read a page at a time (faults are per page: 4 KiB chunks never straddle
/// one), so a non-zero byte before a hole is E2BIG.
pub fn check_zeroed(mem: &dyn CallerMemory, addr: u64, len: u64) -> Result<(), Errno> {
    const CHUNK: u64 = 4096;
    let mut chunk = [0u8; usize_from(CHUNK)];
    let mut at = addr;
    let end = addr.checked_add(len).ok_or(Errno::EFAULT)?;
    while at < end {
        let n = ((at / CHUNK + 1) * CHUNK).min(end) - at;
        let part = &mut chunk[..usize_from(n)];
        mem.read(at, part)?;
        if part.iter().any(|&b| b != 0) {
            return Err(Errno::E2BIG);
        }
        at += n;
    }
    Ok(())
}

/// Copies the caller's extensible struct of `user_len` bytes at `addr` into `out` (zeroed by the
/// caller) as the kernel's copy_struct_from_user: a shorter struct stays zero-extended; a longer
/// one must be zero past `out` (E2BIG), which is checked before the struct itself is read.
pub fn copy_struct_from_caller(
    mem: &dyn CallerMemory,
    addr: u64,
    user_len: usize,
    out: &mut [u8],
) -> Result<(), Errno> {
    if user_len > out.len() {
        let tail = (user_len - out.len()) as u64;
        let tail_at = addr.checked_add(out.len() as u64).ok_or(Errno::EFAULT)?;
        check_zeroed(mem, tail_at, tail)?;
    }
    let n = user_len.min(out.len());
    mem.read(addr, &mut out[..n])
}

/// Capability numbers the daemon checks on behalf of the kernel.
pub const CAP_IPC_LOCK: u32 = 14;
pub const CAP_SYS_RAWIO: u32 = 17;
pub const CAP_SYS_RESOURCE: u32 = 24;

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::fake::FakeMemory;
    use super::*;

    const PAGE: u64 = 4096;
    /// Page-aligned, as a real caller's memory is mapped.
    const BASE: u64 = 0x40_0000;

    #[test]
    fn check_zeroed_stops_at_the_first_non_zero_byte_or_fault() {
        // Three pages, the middle one unmapped.
        let mem = FakeMemory::new(BASE, 3 * PAGE as usize).with_hole(BASE + PAGE..BASE + 2 * PAGE);
        let at = BASE + 100;
        assert_eq!(check_zeroed(&mem, at, PAGE - 100), Ok(()));
        assert_eq!(check_zeroed(&mem, at, 2 * PAGE), Err(Errno::EFAULT));
        // A non-zero byte before the hole is found before the hole faults, as in the kernel's
        // check_zeroed_user (which reads a word at a time).
        mem.set(BASE + PAGE - 1, &[1]);
        assert_eq!(check_zeroed(&mem, at, 2 * PAGE), Err(Errno::E2BIG));
        assert_eq!(check_zeroed(&mem, at, 0), Ok(()));
        assert_eq!(check_zeroed(&mem, u64::MAX - 2, 8), Err(Errno::EFAULT));
    }

    #[test]
    fn copy_struct_checks_the_tail_before_reading_the_struct() {
        // A 16-byte struct at the end of an unmapped page, a tail of 8 bytes in the mapped page
        // after it: the kernel's copy_struct_from_user answers for the tail first.
        let mem = FakeMemory::new(BASE, 2 * PAGE as usize).with_hole(BASE..BASE + PAGE);
        let at = BASE + PAGE - 16;
        let mut out = [0u8; 16];
        assert_eq!(
            copy_struct_from_caller(&mem, at, 24, &mut out),
            Err(Errno::EFAULT),
            "zero tail: the struct faults"
        );
        mem.set(BASE + PAGE + 7, &[1]);
        assert_eq!(
            copy_struct_from_caller(&mem, at, 24, &mut out),
            Err(Errno::E2BIG)
        );
        assert_eq!(
            copy_struct_from_caller(&mem, u64::MAX - 8, 24, &mut out),
            Err(Errno::EFAULT),
            "a tail past the address space"
        );
    }
}
