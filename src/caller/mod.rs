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

#[cfg(test)]
pub(crate) mod fake;
pub mod identity;
mod process;
pub mod shared;

pub use identity::{Credentials, ProcessHandle, ProcessHandles};
pub use process::ProcessMemory;

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

/// Capability numbers the daemon checks on behalf of the kernel.
pub const CAP_IPC_LOCK: u32 = 14;
pub const CAP_SYS_RAWIO: u32 = 17;
pub const CAP_SYS_RESOURCE: u32 = 24;
