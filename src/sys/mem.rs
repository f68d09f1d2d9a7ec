//! Memory mappings of the daemon's own address space: owned mappings that are only ever reached
//! through system calls (never as Rust memory), and the replay client's placed, guarded buffers.

use nix::errno::Errno;
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// A mapping at an address the kernel chose, unmapped when dropped. It hands out its address,
/// never a reference: its pages are reached through system calls only (madvise, pagemap,
/// process_vm_*, an ioctl handing the address to the kernel), so nothing in Rust aliases them and
/// a client truncating a mapped file cannot make the daemon fault.
#[derive(Debug)]
pub struct Mapping {
    // An address rather than a pointer: the mapping moves freely between threads.
    addr: usize,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset`. `flags` must not hold MAP_FIXED (EINVAL).
    pub fn file(
        fd: impl AsFd,
        offset: libc::off_t,
        len: NonZeroUsize,
        prot: ProtFlags,
        flags: MapFlags,
    ) -> Result<Self, Errno> {
        if flags.intersects(MapFlags::MAP_FIXED | MapFlags::MAP_FIXED_NOREPLACE) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a fresh mapping at an address of the kernel's choosing (no hint, no MAP_FIXED)
        // replaces nothing and aliases no Rust object; `Mapping` never hands out a reference.
        let p = unsafe { nix::sys::mman::mmap(None, len, prot, flags, fd, offset)? };
        Ok(Self::adopt(p, len))
    }

    /// A fresh anonymous mapping of `len` bytes. `flags` must not hold MAP_FIXED (EINVAL).
    pub fn anonymous(len: NonZeroUsize, prot: ProtFlags, flags: MapFlags) -> Result<Self, Errno> {
        if flags.intersects(MapFlags::MAP_FIXED | MapFlags::MAP_FIXED_NOREPLACE) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: as in `file`: a new mapping where the kernel chooses, aliasing nothing.
        let p = unsafe { nix::sys::mman::mmap_anonymous(None, len, prot, flags)? };
        Ok(Self::adopt(p, len))
    }

    fn adopt(p: NonNull<libc::c_void>, len: NonZeroUsize) -> Self {
        Self {
            addr: p.as_ptr() as usize,
            len: len.get(),
        }
    }

    /// The address of the first byte.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// The length in bytes (never 0).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: a mapping has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of `[offset, offset + len)` of the mapping; EINVAL past its end.
    fn inside(&self, offset: usize, len: usize) -> Result<NonNull<libc::c_void>, Errno> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => return Err(Errno::EINVAL),
        }
        NonNull::new((self.addr + offset) as *mut libc::c_void).ok_or(Errno::EINVAL)
    }

    /// madvise on `[offset, offset + len)` of the mapping (EINVAL past its end).
    pub fn advise(&self, offset: usize, len: usize, advice: MmapAdvise) -> Result<(), Errno> {
        let p = self.inside(offset, len)?;
        // SAFETY: the range lies inside this mapping, whose pages no Rust reference names (see
        // the type's documentation): whatever the advice does to their contents is unobserved.
        unsafe { nix::sys::mman::madvise(p, len, advice) }
    }

    /// mprotect on `[offset, offset + len)` of the mapping (EINVAL past its end).
    pub fn protect(&self, offset: usize, len: usize, prot: ProtFlags) -> Result<(), Errno> {
        let p = self.inside(offset, len)?;
        // SAFETY: as in `advise`: no Rust reference into the mapping is affected.
        unsafe { nix::sys::mman::mprotect(p, len, prot) }
    }

    /// Keeps the mapping for the rest of the process; returns its address.
    pub fn leak(self) -> usize {
        let addr = self.addr;
        std::mem::forget(self);
        addr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(p) = NonNull::new(self.addr as *mut libc::c_void) {
            // SAFETY: the mapping was made by this type with this length and is owned by `self`
            // alone, unmapped once here; nothing refers to its pages.
            let _ = unsafe { nix::sys::mman::munmap(p, self.len) };
        }
    }
}

/// Reserves `len` bytes (PROT_NONE) at an odd multiple of `placement` (a power of two); returns
/// the address.
fn reserve_placed(len: usize, placement: usize) -> Result<*mut libc::c_void, Errno> {
    let slack = 3 * placement;
    // SAFETY: a new reservation at an address the kernel picks; nothing aliases it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + slack,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    let base = p as usize;
    let step = 2 * placement;
    let start = (base + placement).next_multiple_of(step) - placement;
    let head = start - base;
    let tail = slack - head;
    if head > 0 {
        // SAFETY: the part of the reservation above that lies before the placed buffer.
        unsafe { libc::munmap(p, head) };
    }
    // SAFETY: the part of the reservation above that lies after the placed buffer.
    unsafe { libc::munmap((start + len) as *mut libc::c_void, tail) };
    Ok(start as *mut libc::c_void)
}

/// Maps `len` bytes (a fresh private anonymous mapping, or `memfd`'s pages shared) followed by a
/// PROT_NONE guard page, so that "the end of a buffer" is a fault, at an odd multiple of
/// `placement` (a power of two). Returns the address. The buffer is reached only through system
/// calls and released with [`unmap_guarded`].
pub fn map_guarded(
    len: usize,
    memfd: Option<BorrowedFd<'_>>,
    placement: usize,
) -> Result<u64, Errno> {
    let rounded = len.next_multiple_of(4096);
    let p = reserve_placed(rounded + 4096, placement)?;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let ok = match memfd {
        // SAFETY: replaces the front of the reservation made above with the memfd's pages.
        Some(f) => unsafe {
            libc::mmap(
                p,
                len,
                rw,
                libc::MAP_SHARED | libc::MAP_FIXED,
                f.as_raw_fd(),
                0,
            ) == p
        },
        // SAFETY: opens up the front of the reservation made above.
        None => unsafe { libc::mprotect(p, rounded, rw) == 0 },
    };
    if !ok {
        let e = Errno::last();
        // SAFETY: undoes the reservation made above.
        unsafe { libc::munmap(p, rounded + 4096) };
        return Err(e);
    }
    Ok(p as u64)
}

/// Releases a buffer made by [`map_guarded`] (`len` including its guard page).
pub fn unmap_guarded(addr: u64, len: u64) {
    // SAFETY: callers pass a buffer this process made with map_guarded and no longer names;
    // such buffers are only ever reached through system calls, never as Rust memory.
    unsafe { libc::munmap(addr as *mut libc::c_void, crate::narrow::usize_from(len)) };
}

/// Sets the protection of `len` bytes (whole pages) inside a buffer made by [`map_guarded`].
pub fn protect_guarded(addr: u64, len: usize, prot: libc::c_int) -> Result<(), Errno> {
    // SAFETY: changes the protection of a buffer of this process that nothing in Rust
    // references (the replay client reaches it only through system calls).
    Errno::result(unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) }).map(drop)
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;

    fn rw() -> ProtFlags {
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
    }

    fn page() -> NonZeroUsize {
        NonZeroUsize::new(4096).unwrap()
    }

    /// Whether `addr` is mapped in this process (mincore answers ENOMEM for a hole).
    fn mapped(addr: usize) -> bool {
        let mut v = [0u8; 1];
        // SAFETY: mincore writes one byte per page into `v`; it only inspects the page tables.
        unsafe { libc::mincore(addr as *mut libc::c_void, 4096, v.as_mut_ptr()) == 0 }
    }

    /// Whether this process maps the memfd named `name` anywhere (no other code maps it).
    fn maps_memfd(name: &str) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|l| l.contains(&format!("/memfd:{name} ")))
    }

    fn memfd(name: &std::ffi::CStr) -> std::os::fd::OwnedFd {
        let f = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&f, 8192).unwrap();
        f
    }

    #[test]
    fn a_mapping_goes_with_its_owner() {
        let f = memfd(c"sys-mem-owner");
        let m = Mapping::file(&f, 4096, page(), rw(), MapFlags::MAP_SHARED).unwrap();
        assert_eq!((m.len(), m.addr() % 4096), (4096, 0));
        assert!(mapped(m.addr()) && maps_memfd("sys-mem-owner"));
        drop(m);
        assert!(!maps_memfd("sys-mem-owner"));
        let m = Mapping::anonymous(page(), rw(), MapFlags::MAP_PRIVATE).unwrap();
        assert!(mapped(m.leak()));
    }

    #[test]
    fn fixed_placements_and_ranges_past_the_end_are_refused() {
        let f = memfd(c"sys-mem-refused");
        for fixed in [MapFlags::MAP_FIXED, MapFlags::MAP_FIXED_NOREPLACE] {
            let flags = MapFlags::MAP_SHARED | fixed;
            assert_eq!(
                Mapping::file(&f, 0, page(), rw(), flags).unwrap_err(),
                Errno::EINVAL
            );
            assert_eq!(
                Mapping::anonymous(page(), rw(), flags).unwrap_err(),
                Errno::EINVAL
            );
        }
        let m = Mapping::file(&f, 0, page(), rw(), MapFlags::MAP_SHARED).unwrap();
        let populate = MmapAdvise::MADV_POPULATE_WRITE;
        m.advise(0, 4096, populate).unwrap();
        assert_eq!(m.advise(4096, 1, populate), Err(Errno::EINVAL));
        assert_eq!(m.advise(usize::MAX, 2, populate), Err(Errno::EINVAL));
        assert_eq!(m.protect(1, 4096, ProtFlags::PROT_NONE), Err(Errno::EINVAL));
        m.protect(0, 4096, ProtFlags::PROT_READ).unwrap();
        // The kernel's own errors come back: an unaligned offset into the file.
        assert_eq!(
            Mapping::file(&f, 1, page(), rw(), MapFlags::MAP_SHARED).unwrap_err(),
            Errno::EINVAL
        );
        // A read-only file cannot be mapped shared and writable.
        let ro = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(
            Mapping::file(&ro, 0, page(), rw(), MapFlags::MAP_SHARED).unwrap_err(),
            Errno::EACCES
        );
    }

    #[test]
    fn guarded_buffers_are_placed_and_guarded() {
        let placement = 1 << 20;
        let addr = map_guarded(5000, None, placement).unwrap();
        assert_eq!(addr as usize % (2 * placement), placement);
        // The guard page is mapped (PROT_NONE) right after the rounded buffer.
        assert!(mapped(addr as usize + 4096) && mapped(addr as usize + 8192));
        protect_guarded(addr, 4096, libc::PROT_READ).unwrap();
        unmap_guarded(addr, 12288);
        let f = memfd(c"sys-mem-guarded");
        let addr = map_guarded(4096, Some(std::os::fd::AsFd::as_fd(&f)), placement).unwrap();
        assert!(maps_memfd("sys-mem-guarded"));
        unmap_guarded(addr, 8192);
        assert!(!maps_memfd("sys-mem-guarded"));
    }
}
