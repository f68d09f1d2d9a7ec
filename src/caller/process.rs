//! process_vm_readv/writev + pidfd_getfd on a caller's thread id.

use super::{CallerMemory, Credentials};
use crate::narrow::usize_from;
use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::OwnedFd;

/// The memory of one caller, addressed through its thread id (the FUSE header's `pid`).
///
/// Most requests only copy their argument in and out (process_vm works on the thread id); the
/// thread group and credentials, which cost a read of `/proc/<tid>/status`, are read on first
/// use only.
#[derive(Debug, Clone)]
pub struct ProcessMemory {
    tid: i32,
    /// From one status read, on first need.
    status: std::sync::OnceLock<Option<ThreadStatus>>,
}

/// (thread group id, (real uid, CapEff) if they parsed).
type ThreadStatus = (i32, Option<(u32, u64)>);

impl ProcessMemory {
    /// Memory of the thread `tid`. Fails with ESRCH when the thread is invisible (tid 0); a thread
    /// gone meanwhile makes the accesses fail.
    pub fn new(tid: i32) -> Result<Self, Errno> {
        if tid <= 0 {
            return Err(Errno::ESRCH);
        }
        Ok(Self {
            tid,
            status: std::sync::OnceLock::new(),
        })
    }

    /// The daemon's own memory, through the same syscalls (used by in-process tests and replay).
    pub fn current() -> Self {
        let pid = std::process::id() as i32;
        Self {
            tid: pid,
            status: std::sync::OnceLock::from(Some((pid, None))),
        }
    }

    fn status(&self) -> Option<ThreadStatus> {
        *self.status.get_or_init(|| {
            if let Some((tgid, uid, cap_eff)) = super::identity::thread_status(self.tid) {
                return Some((tgid, Some((uid, cap_eff))));
            }
            let status = super::identity::read_status(self.tid).ok()?;
            let tgid = thread_group_of(&status).ok()?;
            Some((tgid, super::identity::parse_status_creds(&status)))
        })
    }

    /// The thread group, or the thread itself when it is gone (every later use then fails).
    fn tgid(&self) -> i32 {
        self.status().map_or(self.tid, |s| s.0)
    }
}

/// The Tgid line of /proc/<tid>/status: the FUSE header names a thread, pins belong to its process.
fn thread_group_of(status: &str) -> Result<i32, Errno> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(Errno::ESRCH)
}

/// Largest piece handed to one process_vm call; the kernel caps iovec lengths at MAX_RW_COUNT anyway.
const MAX_CHUNK: usize = 1 << 30;

/// Runs `op` over `len` bytes at remote `addr` in pieces of at most [`MAX_CHUNK`]: `op` gets the
/// remote address and the range of the local buffer, and returns the bytes it moved. A piece
/// that moves nothing, or fails, is EFAULT (ESRCH when the process is gone).
fn in_chunks(
    addr: u64,
    len: usize,
    mut op: impl FnMut(usize, std::ops::Range<usize>) -> nix::Result<usize>,
) -> Result<(), Errno> {
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(MAX_CHUNK);
        let base = addr.checked_add(done as u64).ok_or(Errno::EFAULT)?;
        match op(usize_from(base), done..done + n) {
            Ok(0) => return Err(Errno::EFAULT),
            Ok(moved) => done += moved,
            Err(Errno::ESRCH) => return Err(Errno::ESRCH),
            Err(_) => return Err(Errno::EFAULT),
        }
    }
    Ok(())
}

/// process_vm_readv of `buf.len()` bytes at `addr` in process (or thread) `pid`.
pub fn vm_read(pid: Pid, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    in_chunks(addr, buf.len(), |base, r| {
        let remote = [RemoteIoVec { base, len: r.len() }];
        process_vm_readv(pid, &mut [IoSliceMut::new(&mut buf[r])], &remote)
    })
}

/// process_vm_writev of `buf` to `addr` in process (or thread) `pid`.
pub fn vm_write(pid: Pid, addr: u64, buf: &[u8]) -> Result<(), Errno> {
    in_chunks(addr, buf.len(), |base, r| {
        let remote = [RemoteIoVec { base, len: r.len() }];
        process_vm_writev(pid, &[IoSlice::new(&buf[r])], &remote)
    })
}

impl CallerMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        vm_read(Pid::from_raw(self.tid), addr, buf)
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        vm_write(Pid::from_raw(self.tid), addr, buf)
    }

    fn pid(&self) -> i32 {
        self.tgid()
    }

    /// From the calling *thread's* table (a thread created without CLONE_FILES has its own).
    fn get_fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        super::identity::get_thread_fd(self.tid, self.tgid(), fd)
    }

    fn tid(&self) -> i32 {
        self.tid
    }

    fn credentials(&self) -> Result<Credentials, Errno> {
        match self.status().and_then(|s| s.1) {
            Some((uid, cap_eff)) => Ok(Credentials {
                uid,
                cap_eff,
                // No capability to honour: no need to look at the namespace.
                initial_userns: cap_eff != 0 && super::identity::thread_in_daemon_userns(self.tid),
            }),
            None => Credentials::of_thread(self.tid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_own_memory() {
        let mem = ProcessMemory::current();
        let src = [1u8, 2, 3, 4, 5];
        let mut dst = [0u8; 5];
        mem.read(src.as_ptr() as u64, &mut dst).unwrap();
        assert_eq!(src, dst);
        let mut target = vec![0u8; 3];
        mem.write(target.as_mut_ptr() as u64, &[9, 8, 7]).unwrap();
        assert_eq!(std::hint::black_box(&target)[..], [9, 8, 7]);
    }

    #[test]
    fn bad_pointer_is_efault() {
        let mem = ProcessMemory::current();
        let mut buf = [0u8; 8];
        assert_eq!(mem.read(8, &mut buf), Err(Errno::EFAULT));
        assert_eq!(mem.write(u64::MAX - 3, &buf), Err(Errno::EFAULT));
    }

    #[test]
    fn tid_zero_is_refused() {
        assert_eq!(ProcessMemory::new(0).unwrap_err(), Errno::ESRCH);
    }

    #[test]
    fn fetches_own_fd() {
        let mem = ProcessMemory::current();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let dup = mem.get_fd(file.as_raw_fd()).unwrap();
        assert_ne!(dup.as_raw_fd(), file.as_raw_fd());
        assert_eq!(mem.get_fd(-1).unwrap_err(), Errno::EBADF);
    }
}
