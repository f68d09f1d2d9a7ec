//! One ioctl call in flight: the caller's struct copied in under the extensible-struct rule, and
//! the copy back of what the caller's `size` covers.

use super::handles::HandleRegistry;
use crate::caller::{copy_struct_from_caller, CallerMemory};
use crate::objects::Context;
use nix::errno::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// An iommufd command being executed.
pub struct Ucmd<'a> {
    pub ctx: &'a Context,
    /// The object fds of the daemon serving the call (fds the command names may be its handles).
    pub handles: &'a HandleRegistry,
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
        handles: &'a HandleRegistry,
        mem: &'a dyn CallerMemory,
        arg: u64,
        user_size: u32,
        kernel_size: usize,
    ) -> Result<Self, Errno> {
        let mut buf = vec![0u8; kernel_size];
        copy_struct_from_caller(mem, arg, user_size as usize, &mut buf)?;
        Ok(Self {
            ctx,
            handles,
            mem,
            arg,
            user_size,
            buf,
        })
    }

    /// A command whose struct (`buf`, zero-extended to the known size) was already read and
    /// checked.
    pub fn with_bytes(
        ctx: &'a Context,
        handles: &'a HandleRegistry,
        mem: &'a dyn CallerMemory,
        arg: u64,
        user_size: u32,
        buf: Vec<u8>,
    ) -> Self {
        Self {
            ctx,
            handles,
            mem,
            arg,
            user_size,
            buf,
        }
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

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;
    use crate::caller::fake::FakeMemory;

    const ARG: u64 = 0x10_0000;
    /// The size of the struct as this daemon knows it.
    const KNOWN: usize = 16;

    /// `len` non-zero bytes (1, 2, 3, …).
    fn pattern(len: usize) -> Vec<u8> {
        (1..=len).map(|i| i as u8).collect()
    }

    fn copy_in(mem: &FakeMemory, user_size: usize) -> Result<Vec<u8>, Errno> {
        let ctx = Context::new();
        let handles = HandleRegistry::default();
        Ucmd::copy_in(&ctx, &handles, mem, ARG, user_size as u32, KNOWN).map(|u| u.buf)
    }

    #[test]
    fn a_shorter_struct_is_zero_extended_and_nothing_past_it_is_read() {
        // Only the caller's 8 bytes exist: a read past them would fault.
        let mem = FakeMemory::with_bytes(ARG, &pattern(8));
        assert_eq!(copy_in(&mem, 8), Ok([pattern(8), vec![0; 8]].concat()));
        assert_eq!(copy_in(&mem, 0), Ok(vec![0; KNOWN]));
    }

    #[test]
    fn the_known_size_is_copied_whole() {
        let mem = FakeMemory::with_bytes(ARG, &pattern(KNOWN));
        assert_eq!(copy_in(&mem, KNOWN), Ok(pattern(KNOWN)));
    }

    #[test]
    fn a_longer_struct_with_a_zero_tail_is_accepted() {
        // A tail longer than the 4 KiB the check reads at a time.
        let tail = 5000;
        let mem = FakeMemory::new(ARG, KNOWN + tail);
        mem.set(ARG, &pattern(KNOWN));
        assert_eq!(copy_in(&mem, KNOWN + tail), Ok(pattern(KNOWN)));
    }

    #[test]
    fn a_non_zero_byte_anywhere_in_the_tail_is_e2big() {
        let tail = 5000;
        for at in [0, 1, 4095, 4096, tail - 1] {
            let mem = FakeMemory::new(ARG, KNOWN + tail);
            mem.set(ARG, &pattern(KNOWN));
            mem.set(ARG + (KNOWN + at) as u64, &[0x80]);
            assert_eq!(copy_in(&mem, KNOWN + tail), Err(Errno::E2BIG), "byte {at}");
        }
    }

    #[test]
    fn unreadable_memory_is_efault() {
        // The struct itself.
        let mem = FakeMemory::with_bytes(ARG, &pattern(KNOWN)).with_hole(ARG + 8..ARG + 9);
        assert_eq!(copy_in(&mem, KNOWN), Err(Errno::EFAULT));
        assert_eq!(copy_in(&mem, 8), Ok([pattern(8), vec![0; 8]].concat()));
        // A zero tail that runs past the caller's memory.
        let mem = FakeMemory::new(ARG, KNOWN + 8);
        assert_eq!(copy_in(&mem, KNOWN + 8), Ok(vec![0; KNOWN]));
        assert_eq!(copy_in(&mem, KNOWN + 9), Err(Errno::EFAULT));
    }

    /// A command as [`Ucmd::copy_in`] leaves it, for `respond`.
    fn ucmd<'a>(
        ctx: &'a Context,
        handles: &'a HandleRegistry,
        mem: &'a FakeMemory,
        user_size: u32,
    ) -> Ucmd<'a> {
        Ucmd {
            ctx,
            handles,
            mem,
            arg: ARG,
            user_size,
            buf: vec![0; KNOWN],
        }
    }

    #[test]
    fn respond_writes_back_only_what_the_callers_size_covers() {
        let ctx = Context::new();
        let handles = HandleRegistry::default();
        let answer = [0x11u8; KNOWN];
        for (user_size, written) in [(8, 8), (KNOWN, KNOWN), (KNOWN + 8, KNOWN), (0, 0)] {
            let mem = FakeMemory::with_bytes(ARG, &[0xee; 32]);
            ucmd(&ctx, &handles, &mem, user_size as u32)
                .respond(&answer)
                .unwrap();
            let after = mem.get(ARG, 32);
            assert_eq!(after[..written], answer[..written], "size {user_size}");
            assert!(
                after[written..].iter().all(|&b| b == 0xee),
                "size {user_size}: the caller's bytes past its struct are untouched"
            );
        }
    }

    #[test]
    fn respond_to_unwritable_memory_is_efault() {
        let ctx = Context::new();
        let handles = HandleRegistry::default();
        let mem = FakeMemory::new(ARG, KNOWN).with_hole(ARG + 12..ARG + 13);
        let u = ucmd(&ctx, &handles, &mem, KNOWN as u32);
        assert_eq!(u.respond(&[1u8; KNOWN]), Err(Errno::EFAULT));
        // A caller whose size stops before the fault gets its answer.
        let u = ucmd(&ctx, &handles, &mem, 12);
        assert_eq!(u.respond(&[1u8; KNOWN]), Ok(()));
        assert_eq!(mem.writes(), [(ARG, 12)]);
    }

    #[test]
    fn cmd_reads_the_zero_extended_struct() {
        let mem = FakeMemory::with_bytes(ARG, &pattern(4));
        let ctx = Context::new();
        let handles = HandleRegistry::default();
        let u = Ucmd::copy_in(&ctx, &handles, &mem, ARG, 4, KNOWN).unwrap();
        assert_eq!(
            u.cmd::<[u32; 4]>(),
            [u32::from_ne_bytes([1, 2, 3, 4]), 0, 0, 0]
        );
    }
}
