//! Caller memory for unit tests: a run of bytes at a fixed address with unmapped holes, so a test
//! can place a struct exactly where a fault begins. The caller is this process (its pid answers
//! owner and rlimit lookups) and has no fds.

use super::CallerMemory;
use nix::errno::Errno;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

pub(crate) struct FakeMemory {
    base: u64,
    bytes: Mutex<Vec<u8>>,
    /// Addresses that fault, as an unmapped page of a real caller does.
    holes: Vec<Range<u64>>,
    /// Every successful write: (address, length).
    writes: Mutex<Vec<(u64, usize)>>,
}

impl FakeMemory {
    /// `len` zero bytes at `base`; everything outside them faults.
    pub(crate) fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: Mutex::new(vec![0; len]),
            holes: Vec::new(),
            writes: Mutex::new(Vec::new()),
        }
    }

    /// `data` at `base`.
    pub(crate) fn with_bytes(base: u64, data: &[u8]) -> Self {
        let m = Self::new(base, data.len());
        m.set(base, data);
        m
    }

    /// Makes `range` fault from now on.
    pub(crate) fn with_hole(mut self, range: Range<u64>) -> Self {
        self.holes.push(range);
        self
    }

    /// Stores `data` at `addr` as the caller would (holes included); panics outside the bytes.
    pub(crate) fn set(&self, addr: u64, data: &[u8]) {
        let at = self
            .offset(addr, data.len())
            .expect("inside the fake memory");
        self.bytes.lock().unwrap()[at..at + data.len()].copy_from_slice(data);
    }

    /// The `len` bytes at `addr` as they are now (holes included); panics outside the bytes.
    pub(crate) fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let at = self.offset(addr, len).expect("inside the fake memory");
        self.bytes.lock().unwrap()[at..at + len].to_vec()
    }

    /// The successful writes so far, (address, length) in order.
    pub(crate) fn writes(&self) -> Vec<(u64, usize)> {
        self.writes.lock().unwrap().clone()
    }

    fn offset(&self, addr: u64, len: usize) -> Option<usize> {
        let at = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = at.checked_add(len)?;
        (end <= self.bytes.lock().unwrap().len()).then_some(at)
    }

    /// Where `[addr, addr + len)` lies in the bytes, or EFAULT if any of it is outside or in a hole.
    /// Nothing at all is reachable anywhere, as with process_vm and copy_to_user.
    fn reachable(&self, addr: u64, len: usize) -> Result<usize, Errno> {
        if len == 0 {
            return Ok(0);
        }
        let at = self.offset(addr, len).ok_or(Errno::EFAULT)?;
        let end = addr + len as u64;
        if self.holes.iter().any(|h| h.start < end && addr < h.end) {
            return Err(Errno::EFAULT);
        }
        Ok(at)
    }
}

impl CallerMemory for FakeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let at = self.reachable(addr, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock().unwrap()[at..at + buf.len()]);
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        if buf.is_empty() {
            return Ok(());
        }
        let at = self.reachable(addr, buf.len())?;
        self.bytes.lock().unwrap()[at..at + buf.len()].copy_from_slice(buf);
        self.writes.lock().unwrap().push((addr, buf.len()));
        Ok(())
    }

    fn pid(&self) -> i32 {
        std::process::id() as i32
    }

    fn get_fd(&self, _fd: i32) -> Result<OwnedFd, Errno> {
        Err(Errno::EBADF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_edges_fault() {
        let m = FakeMemory::with_bytes(0x1000, &[1, 2, 3, 4, 5, 6, 7, 8]).with_hole(0x1004..0x1006);
        let mut b = [0u8; 4];
        assert_eq!(m.read(0x1000, &mut b), Ok(()));
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(m.read(0x1001, &mut b), Err(Errno::EFAULT), "into the hole");
        assert_eq!(m.read(0x1006, &mut b[..2]), Ok(()));
        assert_eq!(
            m.read(0x1006, &mut b[..3]),
            Err(Errno::EFAULT),
            "past the end"
        );
        assert_eq!(
            m.read(0xfff, &mut b[..1]),
            Err(Errno::EFAULT),
            "before the start"
        );
        assert_eq!(m.write(0x1003, &[9, 9]), Err(Errno::EFAULT));
        assert_eq!(
            m.get(0x1000, 8),
            [1, 2, 3, 4, 5, 6, 7, 8],
            "a faulting write wrote nothing"
        );
        assert_eq!(m.write(0x1006, &[9, 9]), Ok(()));
        assert_eq!(m.get(0x1006, 2), [9, 9]);
        assert_eq!(m.writes(), [(0x1006, 2)]);
        assert_eq!(m.read(0x9000, &mut []), Ok(()), "an empty read anywhere");
        assert_eq!(m.write(0x9000, &[]), Ok(()), "an empty write anywhere");
        assert_eq!(m.writes(), [(0x1006, 2)], "empty writes write nothing");
    }
}
