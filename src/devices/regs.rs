//! The dmacopy register file (I/O BAR0, 32 bytes, little-endian 32-bit registers) and its copy
//! engine.
//!
//! | offset | register | access |
//! |--------|----------|--------|
//! | 0x00 | ID, reads [`ID_VALUE`] (`"moiu"` in memory, 0x75696f6d) | RO |
//! | 0x04 | STATUS: bit 0 busy, bit 1 error, bit 2 done (INTx asserted while set) | write 1s to clear |
//! | 0x08 / 0x0c | source IOVA low / high | RW |
//! | 0x10 / 0x14 | destination IOVA low / high | RW |
//! | 0x18 | length in bytes | RW |
//! | 0x1c | command: writing bit 0 copies `length` bytes from source to destination | WO, reads 0 |
//!
//! Registers are byte-addressable: an access of any width at any offset inside the BAR applies
//! byte by byte. A copy runs to completion inside the write that starts it, so busy is never seen
//! set. Before moving anything the engine checks that the whole source range is mapped readable
//! and the whole destination range mapped writable in the IOAS; otherwise (or with bus mastering
//! disabled) it sets the error bit and writes nothing. Every completion sets done and raises the
//! device's interrupt.

use crate::narrow::{low_u32, usize_from};
use nix::errno::Errno;

pub const REG_ID: usize = 0x00;
pub const REG_STATUS: usize = 0x04;
pub const REG_SRC_LO: usize = 0x08;
pub const REG_SRC_HI: usize = 0x0c;
pub const REG_DST_LO: usize = 0x10;
pub const REG_DST_HI: usize = 0x14;
pub const REG_LEN: usize = 0x18;
pub const REG_CMD: usize = 0x1c;
/// Bytes of the register file.
pub const REGS_SIZE: usize = 0x20;

pub const ID_VALUE: u32 = 0x7569_6f6d;
pub const STATUS_BUSY: u32 = 1 << 0;
pub const STATUS_ERROR: u32 = 1 << 1;
pub const STATUS_DONE: u32 = 1 << 2;
pub const CMD_COPY: u32 = 1 << 0;

/// Bounce buffer size of the copy engine.
const CHUNK: usize = 1 << 20;

/// DMA by IOVA through the IOAS the device is attached to.
pub trait Dma {
    /// Whether `[iova, iova + len)` is entirely mapped with the needed permission.
    fn check(&self, iova: u64, len: u64, write: bool) -> bool;
    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno>;
    fn write(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno>;
}

/// The register state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Regs {
    pub status: u32,
    pub src: u64,
    pub dst: u64,
    pub len: u32,
}

impl Regs {
    fn image(&self) -> [u8; REGS_SIZE] {
        let mut b = [0u8; REGS_SIZE];
        let mut put = |off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(REG_ID, ID_VALUE);
        put(REG_STATUS, self.status);
        put(REG_SRC_LO, low_u32(self.src));
        put(REG_SRC_HI, (self.src >> 32) as u32);
        put(REG_DST_LO, low_u32(self.dst));
        put(REG_DST_HI, (self.dst >> 32) as u32);
        put(REG_LEN, self.len);
        put(REG_CMD, 0);
        b
    }

    /// Reads `out.len()` bytes at `off`; the range must lie inside the register file.
    pub fn read(&self, off: usize, out: &mut [u8]) {
        let img = self.image();
        out.copy_from_slice(&img[off..off + out.len()]);
    }

    /// Applies a write of `data` at `off` (inside the register file). Returns whether it started a
    /// copy (the command register's bit 0 written as 1).
    pub fn write(&mut self, off: usize, data: &[u8]) -> bool {
        let mut img = self.image();
        let mut command = false;
        for (i, &v) in data.iter().enumerate() {
            let pos = off + i;
            match pos {
                REG_ID..=0x03 => {}
                REG_STATUS..=0x07 => img[pos] &= !v,
                REG_CMD => command |= u32::from(v) & CMD_COPY != 0,
                0x1d..=0x1f => {}
                _ => img[pos] = v,
            }
        }
        let word =
            |off: usize| u32::from_le_bytes([img[off], img[off + 1], img[off + 2], img[off + 3]]);
        self.status = word(REG_STATUS);
        self.src = u64::from(word(REG_SRC_LO)) | u64::from(word(REG_SRC_HI)) << 32;
        self.dst = u64::from(word(REG_DST_LO)) | u64::from(word(REG_DST_HI)) << 32;
        self.len = word(REG_LEN);
        command
    }

    /// Runs the copy the registers describe; sets error and/or done in STATUS.
    pub fn run_copy(&mut self, dma: Option<&dyn Dma>, bus_master: bool) {
        self.status |= STATUS_BUSY;
        let ok = match dma {
            Some(dma) if bus_master => copy(dma, self.src, self.dst, u64::from(self.len)),
            _ => false,
        };
        self.status &= !STATUS_BUSY;
        if !ok {
            self.status |= STATUS_ERROR;
        }
        self.status |= STATUS_DONE;
    }
}

/// Copies `len` bytes; false (and nothing written) if either range is not fully usable.
fn copy(dma: &dyn Dma, src: u64, dst: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    if src.checked_add(len - 1).is_none() || dst.checked_add(len - 1).is_none() {
        return false;
    }
    if !dma.check(src, len, false) || !dma.check(dst, len, true) {
        return false;
    }
    let mut buf = vec![0u8; usize_from(len).min(CHUNK)];
    let mut done = 0u64;
    // Overlapping ranges copy as memmove does: backwards when the destination is above the source.
    let backwards = dst > src && dst - src < len;
    while done < len {
        let n = (len - done).min(CHUNK as u64);
        let off = if backwards { len - done - n } else { done };
        let chunk = &mut buf[..usize_from(n)];
        if dma.read(src + off, chunk).is_err() {
            return false;
        }
        if dma.write(dst + off, chunk).is_err() {
            return false;
        }
        done += n;
    }
    true
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A flat memory: IOVA [base, base + len) mapped, the rest not.
    struct Flat {
        base: u64,
        mem: RefCell<Vec<u8>>,
        read_only: bool,
    }

    impl Dma for Flat {
        fn check(&self, iova: u64, len: u64, write: bool) -> bool {
            let n = self.mem.borrow().len() as u64;
            iova >= self.base && iova - self.base + len <= n && !(write && self.read_only)
        }
        fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
            let o = (iova - self.base) as usize;
            buf.copy_from_slice(&self.mem.borrow()[o..o + buf.len()]);
            Ok(())
        }
        fn write(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
            let o = (iova - self.base) as usize;
            self.mem.borrow_mut()[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    fn flat() -> Flat {
        Flat {
            base: 0x1000,
            mem: RefCell::new((0..8192u32).map(|i| i as u8).collect()),
            read_only: false,
        }
    }

    fn program(r: &mut Regs, src: u64, dst: u64, len: u32) {
        r.write(REG_SRC_LO, &src.to_le_bytes());
        r.write(REG_DST_LO, &dst.to_le_bytes());
        r.write(REG_LEN, &len.to_le_bytes());
    }

    #[test]
    fn id_and_register_bytes() {
        let mut r = Regs::default();
        let mut b = [0u8; 4];
        r.read(REG_ID, &mut b);
        assert_eq!(u32::from_le_bytes(b), ID_VALUE);
        r.write(REG_ID, &[0, 0, 0, 0]);
        r.read(REG_ID, &mut b);
        assert_eq!(u32::from_le_bytes(b), ID_VALUE);
        // Byte and half-word writes land in their register.
        r.write(REG_LEN + 1, &[0x12]);
        r.write(REG_SRC_HI, &[0x34, 0x12]);
        assert_eq!(r.len, 0x1200);
        assert_eq!(r.src, 0x1234 << 32);
        let mut all = [0u8; REGS_SIZE];
        r.read(0, &mut all);
        assert_eq!(&all[REG_CMD..], &[0, 0, 0, 0]);
    }

    #[test]
    fn copy_and_status_clear() {
        let d = flat();
        let mut r = Regs::default();
        program(&mut r, 0x1000, 0x2000, 16);
        assert!(r.write(REG_CMD, &CMD_COPY.to_le_bytes()));
        r.run_copy(Some(&d), true);
        assert_eq!(r.status, STATUS_DONE);
        assert_eq!(
            &d.mem.borrow()[0x1000..0x1010],
            &(0..16u8).collect::<Vec<_>>()[..]
        );
        r.write(REG_STATUS, &STATUS_DONE.to_le_bytes());
        assert_eq!(r.status, 0);
        assert!(!r.write(REG_CMD, &[0]));
    }

    #[test]
    fn unmapped_or_read_only_is_an_error_and_writes_nothing() {
        let mut d = flat();
        let before = d.mem.borrow().clone();
        let mut r = Regs::default();
        program(&mut r, 0x1000 + 8000, 0x1000, 500);
        r.run_copy(Some(&d), true);
        assert_eq!(r.status, STATUS_ERROR | STATUS_DONE);
        program(&mut r, 0x1000, 0x10, 4);
        r.run_copy(Some(&d), true);
        d.read_only = true;
        program(&mut r, 0x1000, 0x1100, 4);
        r.run_copy(Some(&d), true);
        program(&mut r, u64::MAX - 1, 0x1000, 4);
        r.run_copy(Some(&d), true);
        assert_eq!(*d.mem.borrow(), before);
        // No bus mastering, no DMA access: error.
        d.read_only = false;
        r.status = 0;
        program(&mut r, 0x1000, 0x1100, 4);
        r.run_copy(Some(&d), false);
        assert_eq!(r.status & STATUS_ERROR, STATUS_ERROR);
        r.status = 0;
        r.run_copy(None, true);
        assert_eq!(r.status & STATUS_ERROR, STATUS_ERROR);
        assert_eq!(*d.mem.borrow(), before);
    }

    #[test]
    fn overlapping_copy_is_memmove() {
        let d = flat();
        let expect: Vec<u8> = d.mem.borrow()[0..100].to_vec();
        let mut r = Regs::default();
        program(&mut r, 0x1000, 0x1000 + 10, 100);
        r.run_copy(Some(&d), true);
        assert_eq!(&d.mem.borrow()[10..110], &expect[..]);
        program(&mut r, 0x1000 + 10, 0x1000, 100);
        r.run_copy(Some(&d), true);
        assert_eq!(&d.mem.borrow()[0..100], &expect[..]);
        assert_eq!(r.status, STATUS_DONE);
    }
}
