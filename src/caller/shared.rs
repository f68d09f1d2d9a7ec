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
use crate::sys::mem::Mapping;
use nix::errno::Errno;
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// Mappings kept after their last user is gone, per process handle.
pub const IDLE_KEPT: usize = 4;

/// One MAP_SHARED mapping made by the daemon; unmapped when dropped.
#[derive(Debug)]
pub struct DaemonMapping {
    // Dropped before the slot: the count goes down once the mapping is gone.
    mapping: Mapping,
    _slot: LiveSlot,
}

/// One of [`MAX_LIVE_MAPPINGS`], given back when dropped.
#[derive(Debug)]
struct LiveSlot;

impl LiveSlot {
    fn take() -> Result<Self, Errno> {
        if LIVE_MAPPINGS.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE_MAPPINGS {
            LIVE_MAPPINGS.fetch_sub(1, Ordering::Relaxed);
            return Err(Errno::ENOMEM);
        }
        Ok(Self)
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        LIVE_MAPPINGS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DaemonMapping {
    /// Maps `len` bytes of `fd` at `offset` shared, readable and (with `write`) writable.
    pub fn map_file(fd: impl AsFd, offset: u64, len: u64, write: bool) -> Result<Self, Errno> {
        use nix::sys::mman::{MapFlags, ProtFlags};
        let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        let len_nz = std::num::NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        let mut prot = ProtFlags::PROT_READ;
        if write {
            prot |= ProtFlags::PROT_WRITE;
        }
        let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let slot = LiveSlot::take()?;
        // No reservation: hugetlb pages are reserved by whoever faults them (the client's own
        // mapping), not for the whole window here.
        let flags = MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE;
        // Never dereferenced by the daemon (see the module documentation).
        let mapping = Mapping::file(fd, offset, len_nz, prot, flags)?;
        Ok(Self {
            mapping,
            _slot: slot,
        })
    }

    pub fn addr(&self) -> u64 {
        self.mapping.addr() as u64
    }

    pub fn len(&self) -> u64 {
        self.mapping.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }
}

/// Daemon mappings of clients' memory alive now, over the whole daemon.
static LIVE_MAPPINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// At most this many (a quarter of the default vm.max_map_count): past it, ENOMEM.
pub const MAX_LIVE_MAPPINGS: u64 = 16384;

/// Daemon mappings of clients' memory alive now (tests, status).
pub fn live_mappings() -> u64 {
    LIVE_MAPPINGS.load(std::sync::atomic::Ordering::Relaxed)
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

/// What identifies a daemon mapping: the VMA (range, file, offset), the window of it that is
/// mapped, and the access it was mapped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ViewKey {
    start: u64,
    end: u64,
    dev: (u32, u32),
    inode: u64,
    offset: u64,
    /// `[win_start, win_end)`: the part of the VMA mapped (user addresses).
    win_start: u64,
    win_end: u64,
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
        let lo = vma.start.max(start);
        let hi = vma.end.min(end);
        // Only the part asked for (whole pages of the VMA's page size) is mapped: the daemon's
        // address space grows with what clients pin, not with how large their VMAs are.
        let ps = vma.page_size.max(4096);
        let win_start = (lo - lo % ps).max(vma.start);
        let win_end = hi
            .checked_next_multiple_of(ps)
            .unwrap_or(vma.end)
            .min(vma.end);
        let mapping = vma_mapping(handle, vma, win_start, win_end, write)?;
        out.push((
            SharedRange {
                mapping: mapping.1.clone(),
                offset: lo - win_start,
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
    win_start: u64,
    win_end: u64,
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
        win_start,
        win_end,
        write,
    };
    let mut cache = handle.views.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok((key, m));
    }
    if !super::files::dev_is_pinnable(vma.dev, handle.tgid()) {
        return Err(Ok(Unshareable::FileKind { start, end }));
    }
    // The cache lock is held across the opens and the mmap: they concern only the daemon's /proc
    // view, its own address space and a shmem/hugetlbfs file (checked before the real open).
    let path = handle.open_vma_path(start, end).map_err(|e| match e {
        Errno::ENOENT => Ok(Unshareable::Private { start, end }),
        e => Err(e),
    })?;
    // The VMA may have been replaced between the query and the open.
    let st = rustix::fs::statx(
        &path,
        c"",
        rustix::fs::AtFlags::EMPTY_PATH | rustix::fs::AtFlags::STATX_DONT_SYNC,
        rustix::fs::StatxFlags::INO,
    )
    .map_err(|e| Err(Errno::from_raw(e.raw_os_error())))?;
    if (st.stx_dev_major, st.stx_dev_minor) != vma.dev || st.stx_ino != vma.inode {
        return Err(Err(Errno::EFAULT));
    }
    let flags = if write {
        rustix::fs::OFlags::RDWR
    } else {
        rustix::fs::OFlags::RDONLY
    };
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&path)),
        flags | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Err(Errno::from_raw(e.raw_os_error())))?;
    let info = super::files::inspect_file(fd.as_fd(), handle.tgid()).map_err(Err)?;
    if info.dev() != vma.dev || info.inode() != vma.inode {
        return Err(Err(Errno::EFAULT));
    }
    use super::files::FileKind;
    if !matches!(info.kind, FileKind::Shmem | FileKind::Hugetlb(_)) {
        return Err(Ok(Unshareable::FileKind { start, end }));
    }
    let m = DaemonMapping::map_file(
        &fd,
        vma.offset + (win_start - vma.start),
        win_end - win_start,
        write,
    )
    .map_err(Err)?;
    let m = Arc::new(m);
    cache.put(key, &m);
    Ok((key, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mem::Mapping;
    use nix::sys::mman::{MapFlags, ProtFlags};
    use std::num::NonZeroUsize;

    const LEN: usize = 64 * 1024;

    fn rw() -> ProtFlags {
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
    }

    #[test]
    fn a_shared_memfd_is_reached_through_one_kept_mapping() {
        let h = Arc::new(ProcessHandle::current().unwrap());
        let fd =
            nix::sys::memfd::memfd_create(c"view", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&fd, LEN as i64).unwrap();
        let len = NonZeroUsize::new(LEN).unwrap();
        let m = Mapping::file(&fd, 0, len, rw(), MapFlags::MAP_SHARED).unwrap();
        let va = m.addr() as u64;
        nix::sys::uio::pwrite(&fd, &[0x5a], 4096).unwrap();
        let r = shared_ranges(&h, va + 4096, va + 2 * 4096, true).unwrap();
        assert_eq!(r.len(), 1);
        let (range, _hold) = &r[0];
        // Only the page asked for is mapped.
        assert_eq!((range.offset, range.len), (0, 4096));
        assert_eq!(range.mapping.len(), 4096);
        assert_ne!(
            range.addr(),
            va + 4096,
            "the daemon's own mapping, not the caller's"
        );
        let mut seen = [0u8];
        h.read(range.addr(), &mut seen).unwrap();
        assert_eq!(seen, [0x5a]);
        let first = range.mapping.addr();
        drop(r);
        // Released mappings stay idle and are found again.
        let again = shared_ranges(&h, va + 4096, va + 2 * 4096, true).unwrap();
        assert_eq!(again[0].0.mapping.addr(), first);
        drop(again);
    }

    #[test]
    fn the_daemon_maps_what_is_asked_not_the_whole_vma() {
        let h = Arc::new(ProcessHandle::current().unwrap());
        const HUGE: usize = 1 << 40;
        let len = NonZeroUsize::new(HUGE).unwrap();
        let m =
            Mapping::anonymous(len, rw(), MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE).unwrap();
        let va = m.addr() as u64;
        let r = shared_ranges(&h, va + (1 << 30), va + (1 << 30) + 4096, true).unwrap();
        let daemon_len = r[0].0.mapping.len();
        drop(r);
        drop(m);
        assert_eq!(daemon_len, 4096);
    }

    #[test]
    fn private_memory_is_refused() {
        let h = Arc::new(ProcessHandle::current().unwrap());
        let len = NonZeroUsize::new(LEN).unwrap();
        let m = Mapping::anonymous(len, rw(), MapFlags::MAP_PRIVATE).unwrap();
        let va = m.addr() as u64;
        match shared_ranges(&h, va, va + LEN as u64, true) {
            Err(Ok(Unshareable::Private { start, .. })) => assert_eq!(start, va),
            other => panic!("expected Private, got {:?}", other.map(|v| v.len())),
        }
        // A hole in the range is EFAULT.
        drop(m);
        assert!(matches!(
            shared_ranges(&h, va, va + LEN as u64, true),
            Err(Err(Errno::EFAULT))
        ));
    }
}
