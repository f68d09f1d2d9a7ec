//! Every raw system call of the replay client, each with why it is sound: buffers with a guard
//! page, their protection and release, the raw ioctl a script step issues, and the forked
//! client's fd and exit handling.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Where buffers start: an odd multiple of this (its lowest set bit, exactly). The IOVA an
/// IOMMU_IOAS_MAP without FIXED_IOVA gets is aligned like its user address (the kernel's rule, and
/// ours), so with ASLR's placement two runs of one script would get different IOVAs.
pub const BUFFER_PLACEMENT: u64 = 1 << 20;

/// Reserves `len` bytes (PROT_NONE) at an odd multiple of [`BUFFER_PLACEMENT`].
pub fn reserve_placed(len: usize) -> Result<*mut libc::c_void, Errno> {
    let slack = 3 * BUFFER_PLACEMENT as usize;
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
    let base = p as u64;
    let step = 2 * BUFFER_PLACEMENT;
    let start = (base + BUFFER_PLACEMENT).next_multiple_of(step) - BUFFER_PLACEMENT;
    let head = (start - base) as usize;
    let tail = slack - head;
    if head > 0 {
        // SAFETY: the part of the reservation above that lies before the placed buffer.
        unsafe { libc::munmap(p, head) };
    }
    // SAFETY: the part of the reservation above that lies after the placed buffer.
    unsafe { libc::munmap((start as usize + len) as *mut libc::c_void, tail) };
    Ok(start as *mut libc::c_void)
}

/// Maps `len` bytes (a fresh private anonymous mapping, or `memfd`'s pages shared) followed by a
/// PROT_NONE guard page, so that "the end of a buffer" is a fault, at an odd multiple of
/// [`BUFFER_PLACEMENT`]. Returns the address.
pub fn map_guarded(len: usize, memfd: Option<BorrowedFd<'_>>) -> Result<u64, Errno> {
    let rounded = len.next_multiple_of(4096);
    let p = reserve_placed(rounded + 4096)?;
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

/// Releases a mapping made by [`map_guarded`] (`len` including its guard page).
pub fn unmap(addr: u64, len: u64) {
    // SAFETY: callers pass a mapping this process made with map_guarded and no longer names.
    unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
}

/// Sets the protection of `len` bytes (whole pages) inside a mapping made by [`map_guarded`].
pub fn protect(addr: u64, len: usize, prot: libc::c_int) -> Result<(), Errno> {
    // SAFETY: changes the protection of a mapping of this process that nothing in Rust
    // references (the replay client reaches it only through system calls).
    Errno::result(unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) }).map(drop)
}

/// The ioctl a script step issues, its argument passed as given.
pub fn raw_ioctl(fd: RawFd, cmd: u32, arg: u64) -> Result<i64, Errno> {
    // SAFETY: iommufd and VFIO container ioctls touch memory only through `arg`, and only in the
    // daemon, which reads and writes it with process_vm_*: a bad pointer is EFAULT, never UB here.
    let rc = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) };
    Errno::result(rc).map(i64::from)
}

/// Forks the client. The caller must be single-threaded.
pub fn fork() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: the replay process is single-threaded when it forks (the runner starts no
    // threads); the child only runs the client loop and leaves through [`exit_child`].
    unsafe { nix::unistd::fork() }
}

/// Takes ownership of an fd inherited across the fork, to close it.
pub fn adopt_inherited(fd: RawFd) -> OwnedFd {
    // SAFETY: the forked client calls this only for fds open in it and named by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Leaves the forked client without running the parent's atexit handlers or destructors.
pub fn exit_child() -> ! {
    // SAFETY: _exit ends this (forked, single-threaded) process at once; nothing runs after it.
    unsafe { libc::_exit(0) }
}
