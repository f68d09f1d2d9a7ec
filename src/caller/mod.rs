//! Caller memory: the layer that reads and writes the address space of the process that issued an
//! ioctl, and fetches file descriptors from its fd table.
//!
//! Every ioctl argument reaches the daemon as a bare pointer (iommufd ioctls carry no size in their
//! number), so all copies go through [`CallerMemory`]. [`ProcessMemory`] uses process_vm_readv/writev
//! on the caller's thread id; in-process users (unit tests, `replay --in-process`) use
//! [`ProcessMemory::current`], the same code path aimed at the daemon's own pid, so bad pointers still
//! come back as EFAULT instead of crashing.

mod process;

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

/// The effective capability set of process `pid` (0 if it cannot be read).
pub fn effective_capabilities(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Whether process `pid` has capability `cap` in its effective set, as `capable()` would ask.
pub fn has_capability(pid: i32, cap: u32) -> bool {
    effective_capabilities(pid) & (1u64 << cap) != 0
}
