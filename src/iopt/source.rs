//! Page sources: a caller's anonymous memory (through its bound process handle), a file the daemon maps itself, and
//! a plain in-memory buffer for tests.

use super::pages::{PageSource, PAGE_SIZE};
use crate::backends::VaRun;
use crate::caller::identity::{check_vmas, Vma};
use crate::caller::ProcessHandle;
use crate::narrow::usize_from;
use crate::sys::mem::Mapping;
use nix::errno::Errno;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
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
    let mut raw = vec![0u8; usize_from(count) * 8];
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
        for (k, entry) in entries.iter().enumerate() {
            if *entry & PM_PRESENT == 0 {
                self.process.fault_in(start + k as u64 * PAGE_SIZE)?;
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

    fn daemon_view(&self, offset: u64, len: u64, write: bool) -> Result<Vec<VaRun>, Errno> {
        use crate::caller::shared::{shared_ranges, Unshareable};
        let start = self.uva.checked_add(offset).ok_or(Errno::EFAULT)?;
        let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
        match shared_ranges(&self.process, start, end, write) {
            Ok(ranges) => Ok(ranges
                .into_iter()
                .map(|(r, hold)| VaRun {
                    va: r.addr(),
                    len: r.len,
                    keep: Arc::new(hold),
                })
                .collect()),
            Err(Err(e)) => Err(e),
            Err(Ok(why)) => {
                let pid = self.process.tgid();
                match why {
                    Unshareable::Private { start, end } => crate::warn_limited!(
                        pid,
                        range = format_args!("{start:#x}-{end:#x}"),
                        "private memory cannot reach a real device through uiommufd: map it \
                         MAP_SHARED (a memfd, shm or MAP_SHARED|MAP_ANONYMOUS); QEMU: -object \
                         memory-backend-memfd,id=m0,size=...,share=on -machine \
                         memory-backend=m0,aux-ram-share=on"
                    ),
                    Unshareable::FileKind { start, end } => crate::warn_limited!(
                        pid,
                        range = format_args!("{start:#x}-{end:#x}"),
                        "only shmem (memfd, shm, tmpfs) or hugetlbfs memory can reach a real \
                         device through uiommufd"
                    ),
                }
                Err(Errno::EOPNOTSUPP)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files (IOAS_MAP_FILE)
//
// The daemon never dereferences a mapping of a client's file: a client can truncate the file at
// any time, and touching a page past the new end would deliver SIGBUS to the daemon. Instead
// reads use pread(2) (short past the end), writes go through process_vm_writev(2) aimed at the
// daemon's own pid with a transient mapping as the remote side (a page past the end becomes
// EFAULT), and pins populate a transient mapping with MADV_POPULATE_READ/WRITE (EFAULT, not
// SIGBUS) before reading its frames from /proc/self/pagemap. No mapping outlives one call, so a
// client's mappings cost the daemon no entries against vm.max_map_count either.

pub use crate::caller::files::{dev_is_pinnable, inspect_file, FileInfo, FileKey, FileKind};

/// Files of clients held now (one per [`FileKey`]), over the whole daemon.
static HELD_FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
#[allow(clippy::type_complexity)]
static FILES: Mutex<Option<std::collections::HashMap<FileKey, std::sync::Weak<SharedFile>>>> =
    Mutex::new(None);

/// Number of client files the daemon holds open (tests, status).
pub fn held_files() -> u64 {
    HELD_FILES.load(std::sync::atomic::Ordering::Relaxed)
}

/// One open file, shared by every mapping of it (one daemon fd per distinct file).
#[derive(Debug)]
pub struct SharedFile {
    fd: OwnedFd,
    kind: FileKind,
    /// Registered under this key (None: a file of the daemon's own).
    key: Option<FileKey>,
}

impl SharedFile {
    /// The daemon's file for `info`: the one already held for that file if any (then `fd` is
    /// closed), else `fd`. ENOMEM when the daemon holds its share of fds already.
    pub fn share(fd: OwnedFd, info: &FileInfo) -> Result<Arc<Self>, Errno> {
        use std::sync::atomic::Ordering;
        let mut guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
        let map = guard.get_or_insert_with(Default::default);
        if let Some(f) = map.get(&info.key).and_then(std::sync::Weak::upgrade) {
            return Ok(f);
        }
        let cap = super::limits::fd_limit() / super::limits::HELD_FILES_FD_SHARE;
        if HELD_FILES.load(Ordering::Relaxed) >= cap {
            return Err(Errno::ENOMEM);
        }
        HELD_FILES.fetch_add(1, Ordering::Relaxed);
        let f = Arc::new(Self {
            fd,
            kind: info.kind,
            key: Some(info.key),
        });
        map.insert(info.key, Arc::downgrade(&f));
        Ok(f)
    }

    /// A shmem file of the daemon's own (neither shared nor counted).
    pub fn private(fd: OwnedFd) -> Arc<Self> {
        Arc::new(Self {
            fd,
            kind: FileKind::Shmem,
            key: None,
        })
    }

    fn map_align(&self) -> u64 {
        match self.kind {
            FileKind::Hugetlb(size) => size,
            _ => PAGE_SIZE,
        }
    }

    /// EINVAL unless `[off, off + len)` lies inside the file now (the kernel's memfd_pin_folios
    /// refuses a range reaching past the end of the file the same way).
    fn check_inside(&self, off: u64, len: u64) -> Result<(), Errno> {
        if self.kind == FileKind::Unsupported {
            return Err(Errno::EINVAL);
        }
        let size = nix::sys::stat::fstat(&self.fd)
            .map_err(|_| Errno::EINVAL)?
            .st_size as u64;
        match off.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// A transient shared mapping covering `[off, off + len)`; also returns where `off` is in it.
    fn map(&self, off: u64, len: u64, write: bool) -> Result<(Mapping, usize), Errno> {
        use nix::sys::mman::{MapFlags, ProtFlags};
        let align = self.map_align();
        let map_start = off - off % align;
        let map_end = off
            .checked_add(len)
            .and_then(|e| e.checked_next_multiple_of(align))
            .ok_or(Errno::EINVAL)?;
        let map_len = usize::try_from(map_end - map_start).map_err(|_| Errno::ENOMEM)?;
        let size = std::num::NonZeroUsize::new(map_len).ok_or(Errno::EINVAL)?;
        let mut prot = ProtFlags::PROT_READ;
        if write {
            prot |= ProtFlags::PROT_WRITE;
        }
        let mut flags = MapFlags::MAP_SHARED;
        if matches!(self.kind, FileKind::Hugetlb(_)) {
            // No reservation: a missing huge page fails the populate/copy, not the mmap.
            flags |= MapFlags::MAP_NORESERVE;
        }
        let offset = i64::try_from(map_start).map_err(|_| Errno::EOVERFLOW)?;
        // Only ever reached through syscalls (madvise, pagemap, process_vm_writev).
        let map = Mapping::file(&self.fd, offset, size, prot, flags)?;
        Ok((map, usize_from(off - map_start)))
    }

    /// Physical addresses of `count` pages from page-aligned file offset `off`.
    fn pin(&self, off: u64, count: u64, write: bool) -> Result<Vec<u64>, Errno> {
        let len = count.checked_mul(PAGE_SIZE).ok_or(Errno::EINVAL)?;
        self.check_inside(off, len)?;
        let (map, delta) = self.map(off, len, write)?;
        let addr = map.addr() + delta;
        let advice = if write {
            nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE
        } else {
            nix::sys::mman::MmapAdvise::MADV_POPULATE_READ
        };
        // Populating only faults pages in (a page past the end of the file is EFAULT here, never
        // a signal).
        let advised = map.advise(delta, usize_from(len), advice);
        if let Err(e) = advised {
            tracing::debug!(%e, off, len, write, "populating a file window failed");
        }
        match advised {
            Ok(()) => {}
            // Truncated between the size check and the populate, or no page to be had (a
            // hugetlbfs file without free huge pages).
            Err(Errno::EFAULT) => {
                self.check_inside(off, len)?;
                return Err(Errno::ENOMEM);
            }
            Err(Errno::ENOMEM) => return Err(Errno::ENOMEM),
            Err(_) => return Err(Errno::EFAULT),
        }
        pagemap_paddrs("self", addr as u64, count).inspect_err(|e| {
            tracing::debug!(%e, off, count, "a populated file window has pages missing in pagemap");
        })
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.check_inside(off, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = i64::try_from(off + done as u64).map_err(|_| Errno::EINVAL)?;
            match nix::sys::uio::pread(&self.fd, &mut buf[done..], pos) {
                Ok(0) => return Err(Errno::EINVAL),
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(_) => return Err(Errno::EFAULT),
            }
        }
        Ok(())
    }

    fn write_at(&self, off: u64, data: &[u8]) -> Result<(), Errno> {
        self.check_inside(off, data.len() as u64)?;
        // Not pwrite: a write past a concurrent truncation would grow the client's file again.
        let (map, delta) = self.map(off, data.len() as u64, true)?;
        let at = (map.addr() + delta) as u64;
        crate::caller::vm_write(nix::unistd::getpid(), at, data).map_err(|_| Errno::EFAULT)
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        HELD_FILES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut guard = FILES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = guard.as_mut() {
            // A new holder may have replaced the entry already; only a dead one goes.
            if map.get(&key).is_some_and(|w| w.strong_count() == 0) {
                map.remove(&key);
            }
        }
    }
}

/// A window of a file: `len` bytes from the page-aligned file offset `start`.
#[derive(Debug)]
pub struct FileSource {
    /// None when the kernel could not pin the file either ([`FileKind::Unsupported`]).
    file: Option<Arc<SharedFile>>,
    start: u64,
    len: u64,
    /// What this mapping costs its context (IOAS_MAP_FILE), returned when the last area goes.
    _charge: Option<super::limits::Charge>,
    /// The daemon's last mapping of part of the window (domains that pin by themselves), with
    /// the file offset it starts at.
    view: Mutex<Option<(Arc<crate::caller::shared::DaemonMapping>, u64)>>,
}

impl FileSource {
    /// A window onto `file` (None: an unsupported file, every use EINVAL).
    pub fn new(
        file: Option<Arc<SharedFile>>,
        start: u64,
        len: u64,
        charge: Option<super::limits::Charge>,
    ) -> Self {
        debug_assert_eq!(start % PAGE_SIZE, 0);
        Self {
            file,
            start,
            len,
            _charge: charge,
            view: Mutex::new(None),
        }
    }

    /// A window onto a shmem file of the daemon's own (the selftest's dma-buf memory).
    pub fn private(fd: OwnedFd, start: u64, len: u64) -> Self {
        Self::new(Some(SharedFile::private(fd)), start, len, None)
    }

    /// The file offset of byte `offset` of the window, if `len` bytes from there fit in it.
    fn at(&self, offset: u64, len: u64) -> Result<(&SharedFile, u64), Errno> {
        let file = self.file.as_deref().ok_or(Errno::EINVAL)?;
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok((file, self.start + offset)),
            _ => Err(Errno::EFAULT),
        }
    }

    pub fn file_start(&self) -> u64 {
        self.start
    }
}

impl PageSource for FileSource {
    fn pin(&self, first: u64, count: u64, write: bool) -> Result<Vec<u64>, Errno> {
        let offset = first.checked_mul(PAGE_SIZE).ok_or(Errno::EFAULT)?;
        let len = count.checked_mul(PAGE_SIZE).ok_or(Errno::EFAULT)?;
        let (file, off) = self.at(offset, len)?;
        file.pin(off, count, write)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let (file, off) = self.at(offset, buf.len() as u64)?;
        file.read_at(off, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let (file, off) = self.at(offset, data.len() as u64)?;
        file.write_at(off, data)
    }

    fn is_file(&self) -> bool {
        true
    }

    fn address_hint(&self) -> u64 {
        self.start
    }

    fn daemon_view(&self, offset: u64, len: u64, write: bool) -> Result<Vec<VaRun>, Errno> {
        let (file, at) = self.at(offset, len)?;
        let writable = file.key.is_none_or(|k| k.writable);
        if write && !writable {
            return Err(Errno::EPERM);
        }
        // Only the window asked for is mapped (whole pages of the file's page size): the
        // daemon's address space grows with what is pinned, not with the size of the window a
        // client named in IOAS_MAP_FILE. The last mapping is kept for the next fill.
        let align = file.map_align();
        let map_start = at - at % align;
        let map_end = (at + len)
            .checked_next_multiple_of(align)
            .ok_or(Errno::EINVAL)?;
        let mut view = self.view.lock().unwrap();
        let covers = |(m, base): &(Arc<crate::caller::shared::DaemonMapping>, u64)| {
            *base <= map_start && map_end <= *base + m.len()
        };
        if !view.as_ref().is_some_and(covers) {
            let m = crate::caller::shared::DaemonMapping::map_file(
                &file.fd,
                map_start,
                map_end - map_start,
                writable,
            )?;
            *view = Some((Arc::new(m), map_start));
        }
        let (m, base) = view.as_ref().expect("just made");
        Ok(vec![VaRun {
            va: m.addr() + (at - base),
            len,
            keep: m.clone(),
        }])
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
        let off = usize_from(offset);
        let src = data.get(off..off + buf.len()).ok_or(Errno::EFAULT)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, offset: u64, src: &[u8]) -> Result<(), Errno> {
        let mut data = self.data.lock().unwrap();
        let off = usize_from(offset);
        let dst = data.get_mut(off..off + src.len()).ok_or(Errno::EFAULT)?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn address_hint(&self) -> u64 {
        self.hint
    }

    fn daemon_view(&self, offset: u64, len: u64, _write: bool) -> Result<Vec<VaRun>, Errno> {
        let data = self.data.lock().unwrap();
        if offset
            .checked_add(len)
            .is_none_or(|e| e > data.len() as u64)
        {
            return Err(Errno::EFAULT);
        }
        // Made up like the frames: tests hand it only to container models.
        Ok(vec![VaRun {
            va: self.hint + offset,
            len,
            keep: Arc::new(()),
        }])
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
