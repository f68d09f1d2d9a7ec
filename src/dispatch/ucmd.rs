//! One ioctl call in flight: the caller's struct copied in under the extensible-struct rule, and
//! the copy back of what the caller's `size` covers.

use crate::caller::CallerMemory;
use crate::objects::Context;
use nix::errno::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// An iommufd command being executed.
pub struct Ucmd<'a> {
    pub ctx: &'a Context,
    pub mem: &'a dyn CallerMemory,
    /// The caller's pointer to its struct.
    pub arg: u64,
    /// The `size` the caller put in its struct.
    pub user_size: u32,
    /// The struct as this daemon knows it (`size` bytes of the table entry), zero-extended.
    pub buf: Vec<u8>,
}

impl<'a> Ucmd<'a> {
    /// Copies the caller's struct in: `user_size` bytes, zero-filling up to `kernel_size`;
    /// bytes beyond `kernel_size` must be zero (E2BIG). EFAULT on unreadable memory.
    pub fn copy_in(
        ctx: &'a Context,
        mem: &'a dyn CallerMemory,
        arg: u64,
        user_size: u32,
        kernel_size: usize,
    ) -> Result<Self, Errno> {
        let user = user_size as usize;
        let mut buf = vec![0u8; kernel_size];
        let n = user.min(kernel_size);
        mem.read(arg, &mut buf[..n])?;
        if user > kernel_size {
            check_zeroed(mem, arg + kernel_size as u64, (user - kernel_size) as u64)?;
        }
        Ok(Self {
            ctx,
            mem,
            arg,
            user_size,
            buf,
        })
    }

    /// The command struct.
    pub fn cmd<T: FromBytes>(&self) -> T {
        T::read_from_prefix(&self.buf)
            .map(|(v, _)| v)
            .expect("table entry size covers the command struct")
    }

    /// Writes `cmd` back to the caller, as much of it as the caller's size covers.
    pub fn respond<T: IntoBytes + Immutable>(&self, cmd: &T) -> Result<(), Errno> {
        let bytes = cmd.as_bytes();
        let n = bytes.len().min(self.user_size as usize);
        self.mem.write(self.arg, &bytes[..n])
    }
}

/// Checks that `len` bytes of caller memory at `addr` are all zero (E2BIG otherwise).
pub use crate::objects::driver::check_zeroed;
