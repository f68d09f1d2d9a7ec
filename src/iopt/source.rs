//! Page sources: a caller's anonymous memory (through its bound process handle), a file the daemon maps itself, and
//! a plain in-memory buffer for tests.

use super::pages::{PageSource, PAGE_SIZE};
use crate::caller::identity::{check_vmas, Vma};
use crate::caller::ProcessHandle;
use nix::errno::Errno;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Physical address of each page in `[vaddr, vaddr + count * PAGE_SIZE)` of `pid`, from its pagemap.
/// A page that is not present maps to EFAULT. As root the frame numbers are real.
pub fn pagemap_paddrs(pid: &str, vaddr: u64, count: u64) -> Result<Vec<u64>, Errno> {
    entries_to_paddrs(pagemap_entries(pid, vaddr, count)?)
}

/// Physical addresses from raw pagemap entries; EFAULT for a page that is not present.
fn entries_to_paddrs(entries: Vec<u64>) -> Result<Vec<u64>, Errno> {
    entries
        .into_iter()
        .map(|entry| {
            if entry & PM_PRESENT == 0 {
                return Err(Errno::EFAULT);
            }
            Ok((entry & PM_PFN_MASK) * PAGE_SIZE)
        })
        .collect()
}

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_FILE_OR_SHARED_ANON: u64 = 1 << 61;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// The raw pagemap entries of `count` pages of `pid` from `vaddr`.
fn pagemap_entries(pid: &str, vaddr: u64, count: u64) -> Result<Vec<u64>, Errno> {
    let mut f = std::fs::File::open(format!("/proc/{pid}/pagemap")).map_err(|_| Errno::EFAULT)?;
    f.seek(SeekFrom::Start(vaddr / PAGE_SIZE * 8))
        .map_err(|_| Errno::EFAULT)?;
    let mut raw = vec![0u8; count as usize * 8];
    f.read_exact(&mut raw).map_err(|_| Errno::EFAULT)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect())
}

/// A range of a caller's anonymous memory, starting at the page-aligned user address `uva`,
/// reached only through the process identity bound when it was mapped (see
/// [`crate::caller::identity`]): once that process has exec'd or gone every access is EFAULT.
#[derive(Debug)]
pub struct ProcessSource {
    process: Arc<ProcessHandle>,
    uva: u64,
}

impl ProcessSource {
    pub fn new(process: Arc<ProcessHandle>, uva: u64) -> Self {
        debug_assert_eq!(uva % PAGE_SIZE, 0);
        Self { process, uva }
    }

    pub fn process(&self) -> &Arc<ProcessHandle> {
        &self.process
    }

    /// A long-term pin (read-only too) of a page-cache page mapped into a private writable VMA unshares
    /// it first (the kernel's GUP breaks the COW up front), so that a later write by the process
    /// cannot move it to another frame behind the IOMMU's back. From userspace the same COW break is
    /// a write of the byte just read back into the page: only pages whose pagemap entry says "file
    /// page" inside a VMA that is both MAP_PRIVATE and writable are touched; shared or read-only
    /// mappings are never written. Returns whether any page was written.
    ///
    /// Race: the byte is read and written back in two steps; a store by another thread of the
    /// caller to that very byte in between would be lost. A thread storing into a range while it
    /// is being mapped for DMA already races with the DMA itself, so this is accepted.
    fn unshare(&self, vmas: &[Vma], start: u64, entries: &mut [u64]) -> Result<bool, Errno> {
        let mut wrote = false;
        for (k, entry) in entries.iter().enumerate() {
            if *entry & PM_PRESENT == 0 || *entry & PM_FILE_OR_SHARED_ANON == 0 {
                continue;
            }
            let addr = start + k as u64 * PAGE_SIZE;
            let cow = vmas
                .iter()
                .any(|v| v.start <= addr && addr < v.end && v.private && v.write);
            if !cow {
                continue;
            }
            let mut byte = [0u8; 1];
            self.process.read(addr, &mut byte)?;
            // The VMA was just seen private and writable.
            self.process.write_unchecked(addr, &byte)?;
            wrote = true;
        }
        Ok(wrote)
    }
}

impl PageSource for ProcessSource {
    fn pin(&self, first: u64, count: u64, write: bool) -> Result<Vec<u64>, Errno> {
        let start = self
            .uva
            .checked_add(first.checked_mul(PAGE_SIZE).ok_or(Errno::EFAULT)?)
            .ok_or(Errno::EFAULT)?;
        let end = start
            .checked_add(count.checked_mul(PAGE_SIZE).ok_or(Errno::EFAULT)?)
            .ok_or(Errno::EFAULT)?;
        let vmas = self.process.vmas_in(start, end)?;
        check_vmas(&vmas, start, end, write)?;
        // Fault in (as pinning does) only the pages that are not resident yet, one byte each.
        let mut entries = self.process.pagemap(start, count)?;
        let mut faulted = false;
        let mut byte = [0u8; 1];
        for (k, entry) in entries.iter().enumerate() {
            if *entry & PM_PRESENT == 0 {
                self.process.read(start + k as u64 * PAGE_SIZE, &mut byte)?;
                faulted = true;
            }
        }
        if faulted {
            entries = self.process.pagemap(start, count)?;
        }
        if self.unshare(&vmas, start, &mut entries)? {
            entries = self.process.pagemap(start, count)?;
        }
        entries_to_paddrs(entries)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let addr = self.uva.checked_add(offset).ok_or(Errno::EFAULT)?;
        self.process.read(addr, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let addr = self.uva.checked_add(offset).ok_or(Errno::EFAULT)?;
        self.process.write(addr, data)
    }

    fn address_hint(&self) -> u64 {
        self.uva
    }
}

/// A file (memfd, hugetlbfs, …) mapped shared into the daemon; `start` is the page-aligned file
/// offset of the mapping.
#[derive(Debug)]
pub struct FileSource {
    _file: OwnedFd,
    map: NonNull<u8>,
    len: usize,
    start: u64,
}

// SAFETY: the mapping is owned by this value and only accessed through copies; a shared file mapping
// may be used from any thread.
unsafe impl Send for FileSource {}
// SAFETY: as above; concurrent copies into a MAP_SHARED mapping are the same races DMA has.
unsafe impl Sync for FileSource {}

impl FileSource {
    /// Maps `len` bytes of `file` at page-aligned `start`. Errors follow mmap's errno.
    pub fn new(file: OwnedFd, start: u64, len: u64, writable: bool) -> Result<Self, Errno> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        let size = std::num::NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        let mut prot = ProtFlags::PROT_READ;
        if writable {
            prot |= ProtFlags::PROT_WRITE;
        }
        let offset = i64::try_from(start).map_err(|_| Errno::EOVERFLOW)?;
        // SAFETY: a fresh shared mapping at an address of the kernel's choosing aliases no Rust object.
        let ptr = unsafe { mmap(None, size, prot, MapFlags::MAP_SHARED, &file, offset)? };
        Ok(Self {
            _file: file,
            map: ptr.cast(),
            len,
            start,
        })
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize, Errno> {
        let off = usize::try_from(offset).map_err(|_| Errno::EFAULT)?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(off),
            _ => Err(Errno::EFAULT),
        }
    }

    pub fn file_start(&self) -> u64 {
        self.start
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        // SAFETY: `map`/`len` describe the mapping created in `new`, unmapped exactly once here.
        let _ = unsafe { nix::sys::mman::munmap(self.map.cast(), self.len) };
    }
}

impl PageSource for FileSource {
    fn pin(&self, first: u64, count: u64, _write: bool) -> Result<Vec<u64>, Errno> {
        let off = self.check(first * PAGE_SIZE, (count * PAGE_SIZE) as usize)?;
        for k in 0..count as usize {
            // SAFETY: `off + k * PAGE_SIZE` lies inside the mapping (checked above); a volatile read
            // faults the page in without creating a reference to shared memory.
            unsafe { std::ptr::read_volatile(self.map.as_ptr().add(off + k * PAGE_SIZE as usize)) };
        }
        let vaddr = self.map.as_ptr() as u64 + off as u64;
        pagemap_paddrs("self", vaddr, count)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let off = self.check(offset, buf.len())?;
        // SAFETY: the source range is inside the mapping (checked) and does not overlap `buf`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let off = self.check(offset, data.len())?;
        // SAFETY: the destination range is inside the (writable when mapped writable) mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_ptr().add(off), data.len())
        };
        Ok(())
    }

    fn is_file(&self) -> bool {
        true
    }

    fn address_hint(&self) -> u64 {
        self.start
    }
}

/// An in-memory backing with made-up physical addresses (unit and property tests, benchmarks).
#[derive(Debug)]
pub struct MemorySource {
    data: Mutex<Vec<u8>>,
    hint: u64,
}

impl MemorySource {
    /// `len` zero bytes pretending to live at user address `hint`.
    pub fn new(len: usize, hint: u64) -> Self {
        Self {
            data: Mutex::new(vec![0; len]),
            hint,
        }
    }
}

impl PageSource for MemorySource {
    fn pin(&self, first: u64, count: u64, _write: bool) -> Result<Vec<u64>, Errno> {
        let len = self.data.lock().unwrap().len() as u64;
        if (first + count) * PAGE_SIZE > len.next_multiple_of(PAGE_SIZE) {
            return Err(Errno::EFAULT);
        }
        Ok((first..first + count)
            .map(|i| (self.hint / PAGE_SIZE + i) * PAGE_SIZE)
            .collect())
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let data = self.data.lock().unwrap();
        let off = offset as usize;
        let src = data.get(off..off + buf.len()).ok_or(Errno::EFAULT)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, offset: u64, src: &[u8]) -> Result<(), Errno> {
        let mut data = self.data.lock().unwrap();
        let off = offset as usize;
        let dst = data.get_mut(off..off + src.len()).ok_or(Errno::EFAULT)?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn address_hint(&self) -> u64 {
        self.hint
    }
}

/// One import of a dma-buf into an IOAS (IOAS_MAP_FILE on a dma-buf fd): a window onto the
/// exporter's memory that goes dead for good once the exporter revokes it, as the kernel's
/// import does (a later map imports afresh).
#[derive(Debug)]
pub struct DmabufImport {
    memory: Arc<FileSource>,
    /// Page-aligned byte offset of this import inside the exporter's memory.
    start: u64,
    revoked: std::sync::atomic::AtomicBool,
}

impl DmabufImport {
    pub fn new(memory: Arc<FileSource>, start: u64) -> Self {
        Self {
            memory,
            start,
            revoked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn revoke(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn live(&self) -> Result<(), Errno> {
        if self.revoked() {
            Err(Errno::ENODEV)
        } else {
            Ok(())
        }
    }
}

impl PageSource for DmabufImport {
    fn pin(&self, first: u64, count: u64, write: bool) -> Result<Vec<u64>, Errno> {
        self.live()?;
        self.memory
            .pin(self.start / PAGE_SIZE + first, count, write)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.live()?;
        self.memory.read(self.start + offset, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.live()?;
        self.memory.write(self.start + offset, data)
    }

    fn address_hint(&self) -> u64 {
        0
    }

    fn revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn is_dmabuf(&self) -> bool {
        true
    }
}
