//! The daemon's own view of a caller's shared memory, for IOMMU drivers that pin by themselves.
//!
//! A kernel VFIO type1 container pins the pages of the *calling* process's addresses
//! (VFIO_IOMMU_MAP_DMA takes a virtual address). To hand it a client's memory the daemon maps the
//! same pages into itself: the file behind the client's VMA is reopened through
//! `/proc/<tgid>/map_files/<start>-<end>` of the bound process and mapped MAP_SHARED at the VMA's
//! file offset. That reaches exactly the client's pages only for shared mappings of shmem or
//! hugetlbfs files (memfd, POSIX shm, MAP_SHARED|MAP_ANONYMOUS, hugetlbfs):
//! - private anonymous memory has no file at all, and a private mapping of a file shows the
//!   file's pages, not the client's copy-on-write copies: both are refused (EOPNOTSUPP);
//! - other files are refused too: the kernel would fault their pages in through their file
//!   system, and a FUSE file system served by the client could stall the daemon.
//!
//! The daemon never dereferences these mappings (a client can truncate the file: a touch past
//! the end would be SIGBUS); it only hands their addresses to the kernel, whose pinning of a page
//! past the end fails with EFAULT.
//!
//! Mapping a VMA costs one page fault per page when the kernel first pins through it, so a
//! mapping is kept while any user holds it, and the last few released are kept idle
//! ([`IDLE_KEPT`]) for the common map/unmap/map cycle of the same buffer. Idle mappings hold the
//! client's file open (its pages stay allocated) until they are pushed out or the process handle
//! goes with its context.

use super::identity::{ProcessHandle, Vma};
use nix::errno::Errno;
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::{Arc, Weak};

/// Mappings kept after their last user is gone, per process handle.
pub const IDLE_KEPT: usize = 4;

/// One MAP_SHARED mapping made by the daemon; unmapped when dropped.
#[derive(Debug)]
pub struct DaemonMapping {
    addr: usize,
    len: usize,
}

impl DaemonMapping {
    /// Maps `len` bytes of `fd` at `offset` shared, readable and (with `write`) writable.
    pub fn map_file(fd: impl AsFd, offset: u64, len: u64, write: bool) -> Result<Self, Errno> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len_nz = std::num::NonZeroUsize::new(len as usize).ok_or(Errno::EINVAL)?;
        let mut prot = ProtFlags::PROT_READ;
        if write {
            prot |= ProtFlags::PROT_WRITE;
        }
        let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
        // SAFETY: a fresh mapping chosen by the kernel (no address hint); nothing in the daemon
        // aliases it, and it is never dereferenced by the daemon (see the module documentation).
        let p = unsafe { mmap(None, len_nz, prot, MapFlags::MAP_SHARED, fd, offset)? };
        Ok(Self {
            addr: p.as_ptr() as usize,
            len: len as usize,
        })
    }

    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DaemonMapping {
    fn drop(&mut self) {
        if let Some(p) = std::ptr::NonNull::new(self.addr as *mut libc::c_void) {
            // SAFETY: the mapping was made by `map_file` with this length and is owned by `self`
            // alone; nothing refers to it once the last Arc is dropped.
            let _ = unsafe { nix::sys::mman::munmap(p, self.len) };
        }
    }
}

/// Bytes `[offset, offset + len)` of a daemon mapping.
#[derive(Debug, Clone)]
pub struct SharedRange {
    pub mapping: Arc<DaemonMapping>,
    pub offset: u64,
    pub len: u64,
}

impl SharedRange {
    /// The daemon address of the range's first byte.
    pub fn addr(&self) -> u64 {
        self.mapping.addr() + self.offset
    }
}

/// What identifies a VMA's pages: its range, file and offset, and the access it was mapped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ViewKey {
    start: u64,
    end: u64,
    dev: (u32, u32),
    inode: u64,
    offset: u64,
    write: bool,
}

/// The daemon mappings of one process's VMAs.
#[derive(Debug, Default)]
pub struct ViewCache {
    live: HashMap<ViewKey, Weak<DaemonMapping>>,
    idle: VecDeque<(ViewKey, Arc<DaemonMapping>)>,
}

impl ViewCache {
    fn get(&mut self, key: &ViewKey) -> Option<Arc<DaemonMapping>> {
        if let Some(pos) = self.idle.iter().position(|(k, _)| k == key) {
            return self.idle.remove(pos).map(|(_, m)| m);
        }
        let m = self.live.get(key).and_then(Weak::upgrade);
        if m.is_none() {
            self.live.remove(key);
        }
        m
    }

    fn put(&mut self, key: ViewKey, m: &Arc<DaemonMapping>) {
        if self.live.len() >= 64 && self.live.len().is_power_of_two() {
            self.live.retain(|_, w| w.strong_count() > 0);
        }
        self.live.insert(key, Arc::downgrade(m));
    }

    /// Keeps `m` (just released by a user) as one of the idle mappings.
    fn keep_idle(&mut self, key: ViewKey, m: Arc<DaemonMapping>) {
        self.idle.retain(|(k, _)| *k != key);
        self.idle.push_back((key, m));
        while self.idle.len() > IDLE_KEPT {
            self.idle.pop_front();
        }
    }
}

/// A user's hold on one daemon mapping: on drop the mapping joins the idle ones.
#[derive(Debug)]
pub struct ViewHold {
    handle: Weak<ProcessHandle>,
    key: ViewKey,
    mapping: Option<Arc<DaemonMapping>>,
}

impl Drop for ViewHold {
    fn drop(&mut self) {
        let (Some(m), Some(h)) = (self.mapping.take(), self.handle.upgrade()) else {
            return;
        };
        // Only the last user parks it (the cache's own reference is weak).
        if Arc::strong_count(&m) == 1 {
            h.views
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keep_idle(self.key, m);
        }
    }
}

/// Why a range cannot be reached through a daemon mapping (for the caller's log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unshareable {
    /// MAP_PRIVATE memory (anonymous or of a file).
    Private { start: u64, end: u64 },
    /// A shared mapping of a file that is neither shmem nor hugetlbfs.
    FileKind { start: u64, end: u64 },
}

/// Daemon mappings of `[start, end)` of `handle`'s address space, one range per VMA, with the
/// holds that keep them. EFAULT for holes or missing permissions; `Err(Ok(why))` when the memory
/// is not shared memory the daemon can map.
#[allow(clippy::type_complexity)]
pub fn shared_ranges(
    handle: &Arc<ProcessHandle>,
    start: u64,
    end: u64,
    write: bool,
) -> Result<Vec<(SharedRange, ViewHold)>, Result<Unshareable, Errno>> {
    let vmas = handle.vmas_in(start, end).map_err(Err)?;
    super::identity::check_vmas(&vmas, start, end, write).map_err(Err)?;
    let mut out = Vec::with_capacity(vmas.len());
    for vma in vmas.iter().filter(|v| v.end > start && v.start < end) {
        let mapping = vma_mapping(handle, vma, write)?;
        let lo = vma.start.max(start);
        let hi = vma.end.min(end);
        out.push((
            SharedRange {
                mapping: mapping.1.clone(),
                offset: lo - vma.start,
                len: hi - lo,
            },
            ViewHold {
                handle: Arc::downgrade(handle),
                key: mapping.0,
                mapping: Some(mapping.1),
            },
        ));
    }
    Ok(out)
}

fn vma_mapping(
    handle: &Arc<ProcessHandle>,
    vma: &Vma,
    write: bool,
) -> Result<(ViewKey, Arc<DaemonMapping>), Result<Unshareable, Errno>> {
    let (start, end) = (vma.start, vma.end);
    if vma.private {
        return Err(Ok(Unshareable::Private { start, end }));
    }
    let key = ViewKey {
        start,
        end,
        dev: vma.dev,
        inode: vma.inode,
        offset: vma.offset,
        write,
    };
    let mut cache = handle.views.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok((key, m));
    }
    if !crate::iopt::source::dev_is_pinnable(vma.dev, handle.tgid()) {
        return Err(Ok(Unshareable::FileKind { start, end }));
    }
    // The cache lock is held across the open and mmap: they concern only the daemon's /proc
    // view and its own address space, never a client's file system (the kind is checked first).
    let fd = handle
        .open_vma_file(start, end, write)
        .map_err(|e| match e {
            Errno::ENOENT => Ok(Unshareable::Private { start, end }),
            e => Err(e),
        })?;
    let info = crate::iopt::source::inspect_file(fd.as_fd(), handle.tgid()).map_err(Err)?;
    // The VMA may have been replaced between the query and the open.
    if info.dev() != vma.dev || info.inode() != vma.inode {
        return Err(Err(Errno::EFAULT));
    }
    use crate::iopt::source::FileKind;
    if !matches!(info.kind, FileKind::Shmem | FileKind::Hugetlb(_)) {
        return Err(Ok(Unshareable::FileKind { start, end }));
    }
    let m = Arc::new(DaemonMapping::map_file(&fd, vma.offset, end - start, write).map_err(Err)?);
    cache.put(key, &m);
    Ok((key, m))
}
