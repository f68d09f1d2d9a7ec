//! System helpers of the guest client: ioctls on uAPI structs, page-aligned buffers (a shared
//! memfd or private anonymous memory), `/proc/meminfo` and medians.

use nix::errno::Errno;
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::time::Duration;
use zerocopy::{FromBytes, IntoBytes};

/// A failed step, as text for the `FAIL name: why` line.
pub type Res<T> = Result<T, String>;

pub const MIB: usize = 1 << 20;

/// Labels an errno with the operation that returned it.
pub fn ctx(what: &str) -> impl FnOnce(Errno) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Opens a node O_RDWR.
pub fn open_rw(path: &str) -> Res<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))
}

/// `ioctl(fd, cmd, &mut arg)`: the argument is a uAPI struct whose `argsz`/`size` the caller set
/// to `size_of::<T>()`.
pub fn ioctl_ptr<T: IntoBytes + FromBytes>(
    fd: &impl AsFd,
    cmd: u32,
    arg: &mut T,
) -> Result<i32, Errno> {
    // SAFETY: `arg` is a live, exclusively borrowed plain-data struct for the whole call; the
    // kernel (or the daemon through process_vm_writev) writes at most its declared size, and any
    // bit pattern is a valid `T` (FromBytes).
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), cmd as libc::c_ulong, arg as *mut T) };
    Errno::result(rc)
}

/// `ioctl(fd, cmd, value)` for commands whose argument is a number, not a pointer
/// (VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).
pub fn ioctl_int(fd: &impl AsFd, cmd: u32, value: libc::c_ulong) -> Result<i32, Errno> {
    // SAFETY: the commands passed here take the argument by value and dereference nothing.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), cmd as libc::c_ulong, value) };
    Errno::result(rc)
}

/// A page-aligned read/write mapping, unmapped on drop. Kept alive across DMA so the test can
/// look at what the device wrote.
pub struct Buffer {
    ptr: NonNull<c_void>,
    len: usize,
    _memfd: Option<OwnedFd>,
}

impl Buffer {
    /// `len` bytes of a memfd mapped MAP_SHARED, every page written once (pre-faulted).
    pub fn shared(len: usize) -> Res<Self> {
        let fd = memfd_create("vfio_dma", MemfdFlags::CLOEXEC)
            .map_err(|e| format!("memfd_create: {e}"))?;
        ftruncate(&fd, len as u64).map_err(|e| format!("ftruncate: {e}"))?;
        // SAFETY: a new mapping at an address the kernel picks, of a file we own and just sized.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| format!("mmap memfd: {e}"))?;
        let b = Self::new(ptr, len, Some(fd))?;
        b.prefault();
        Ok(b)
    }

    /// `len` bytes of MAP_PRIVATE|MAP_ANONYMOUS memory, pre-faulted.
    pub fn private(len: usize) -> Res<Self> {
        // SAFETY: a new anonymous mapping at an address the kernel picks.
        let ptr = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| format!("mmap anonymous: {e}"))?;
        let b = Self::new(ptr, len, None)?;
        b.prefault();
        Ok(b)
    }

    fn new(ptr: *mut c_void, len: usize, memfd: Option<OwnedFd>) -> Res<Self> {
        let ptr = NonNull::new(ptr).ok_or("mmap returned NULL")?;
        Ok(Self {
            ptr,
            len,
            _memfd: memfd,
        })
    }

    fn prefault(&self) {
        for off in (0..self.len).step_by(4096) {
            self.fill(off, 1, 0);
        }
    }

    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Sets `[off, off + n)` to `byte`.
    pub fn fill(&self, off: usize, n: usize, byte: u8) {
        assert!(off + n <= self.len, "fill out of bounds");
        // SAFETY: in bounds of the live mapping (checked above).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().cast::<u8>().wrapping_add(off), byte, n) };
    }

    /// Writes `data` at `off`.
    pub fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len, "write out of bounds");
        // SAFETY: in bounds of the live mapping (checked above); `data` is our own memory and
        // cannot overlap a mapping we created.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().cast::<u8>().wrapping_add(off),
                data.len(),
            )
        };
    }

    /// Reads `[off, off + n)` with volatile loads (a device may have written it).
    pub fn read(&self, off: usize, n: usize) -> Vec<u8> {
        assert!(off + n <= self.len, "read out of bounds");
        let base = self.ptr.as_ptr().cast::<u8>();
        // SAFETY: every index is in bounds of the live mapping (checked above).
        (off..off + n)
            .map(|i| unsafe { std::ptr::read_volatile(base.wrapping_add(i)) })
            .collect()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in shared()/private(); no references into it
        // outlive `self`.
        let _ = unsafe { munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// A recognisable pattern: byte i is `seed + i * 7` (never all one value).
pub fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(7)))
        .collect()
}

/// Describes where two byte strings first differ.
pub fn compare(what: &str, got: &[u8], want: &[u8]) -> Res<()> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None if got.len() == want.len() => Ok(()),
        None => Err(format!("{what}: length {} != {}", got.len(), want.len())),
        Some(i) => Err(format!(
            "{what}: byte {i} is {:#04x}, expected {:#04x} ({} of {} bytes differ)",
            got[i],
            want[i],
            got.iter().zip(want).filter(|(a, b)| a != b).count(),
            want.len()
        )),
    }
}

/// MemFree of /proc/meminfo in bytes.
pub fn mem_free() -> Res<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("MemFree:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no MemFree in /proc/meminfo".into())
}

/// Bytes the daemon (the process named `uiommufd`) has locked: VFIO type1 charges every page it
/// pins to the mm of the process that mapped it (VmLck), whatever that process's capabilities.
pub fn daemon_locked() -> Res<u64> {
    for e in std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .flatten()
    {
        let dir = e.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "uiommufd" {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status"))
            .map_err(|e| format!("{}/status: {e}", dir.display()))?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| "no VmLck in the daemon's status".into());
    }
    Err("no uiommufd process".into())
}

/// poll(2) for readability with a deadline.
pub fn wait_readable(fd: &impl AsRawFd, deadline: Duration) -> Res<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, deadline.as_millis() as i32) };
    match n {
        1 => Ok(()),
        0 => Err(format!("no answer within {deadline:?}")),
        _ => Err(format!("poll: {}", Errno::last())),
    }
}

/// Median of the durations, in seconds.
pub fn median(mut d: Vec<Duration>) -> f64 {
    d.sort();
    d[d.len() / 2].as_secs_f64()
}
