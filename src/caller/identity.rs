//! Process identity bound at map time, and the caller's credentials as `capable()` sees them.
//!
//! # Design
//!
//! An IOAS area keeps the memory of the process that mapped it for as long as it lives: pins,
//! selftest accesses and device DMA reach it long after the MAP request was answered. A pid number
//! cannot name that memory: once the process exits its number is handed to somebody else, and
//! once it execs (say a setuid-root program) the number names a new address space. So the
//! identity is bound while the request is held: the daemon has read the FUSE request and the
//! calling thread waits for the answer uninterruptibly, so its thread id is stable and no other
//! thread of its process can finish an exec (de_thread waits for every other thread). Files
//! opened under `/proc/<tid>` during the request therefore reach the caller, and stay bound to
//! what they were opened on:
//!
//! - `mem` (read/write), `pagemap` and `maps` capture the address space (mm) at open time; after
//!   an exec or exit they read 0 bytes, never the new program's memory;
//! - a directory fd of `/proc/<tgid>` is bound to the process (struct pid), not to its number:
//!   `limits` is read through it (RLIMIT_MEMLOCK as the process has it now, no CAP_SYS_RESOURCE
//!   needed), and it goes dead with the process;
//! - a pidfd tells whether the process is still alive.
//!
//! [`ProcessHandle`] holds these; everything that touches an area's memory after its request
//! goes through one, never through a pid number. (One thread id is used: to wait for a page that
//! a userfaultfd has not served, through a caller held in the request being served; see
//! [`super::RequestCaller`].) Once the process or its address space is gone the handle is
//! *retired*: its files are closed and every later access is EFAULT.
//!
//! Handles are shared so that a client cannot make the daemon hold unbounded files: one handle
//! per (process, program) daemon-wide, found through a registry of weak references keyed by
//! tgid, and reused only while the process is alive, its bound address space is alive, and the
//! caller's auxiliary vector (per program image: random stack/vDSO addresses, AT_SECURE, the
//! uids) is the one seen at bind time — an exec in between is noticed even when a CLONE_VM
//! sibling keeps the old address space alive. Each context keeps the handles it uses alive and
//! may hold at most [`MAX_PROCESSES_PER_CONTEXT`] of them (ENOMEM beyond, as the kernel answers
//! when a resource runs out); retired handles hold no files and do not count.
//!
//! Capabilities are honoured only for a thread whose credentials live in the daemon's own
//! (normally the initial) user namespace, as `capable()` asks about the initial namespace: a
//! process that ran `unshare -U -r` has every capability in its own namespace and none here.

use super::user_counts::{UserCounts, UserSlot};
use super::CallerMemory;
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Distinct live process handles one context may hold (ENOMEM beyond).
pub const MAX_PROCESSES_PER_CONTEXT: usize = 64;
/// Bound processes (five daemon fds each) one user may have at once, over all contexts: a user
/// starting many short-lived processes that map memory must not fill the daemon's fd table.
pub const MAX_BOUND_PER_USER: usize = 256;
/// Share of the daemon's fd limit that bound processes of all users together may use (1/4).
const BOUND_FD_SHARE: u64 = 4;
/// Daemon fds one bound process holds (mem, pagemap, maps, /proc dir, pidfd).
pub const FDS_PER_BOUND: u64 = 5;

/// Bound processes alive, per uid of the thread that bound them, and in all.
static BOUND_COUNT: UserCounts = UserCounts::new();

/// One bound process counted against its user and the daemon (released on drop).
type BoundSlot = UserSlot;

fn bound_daemon_cap() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / BOUND_FD_SHARE / FDS_PER_BOUND).unwrap_or(usize::MAX)
}

/// A slot for `uid`, or None at a cap.
fn try_take_bound(uid: u32) -> Option<BoundSlot> {
    BOUND_COUNT.take(uid, MAX_BOUND_PER_USER, bound_daemon_cap())
}

/// A slot for `uid`; at a cap, first lets go of bound processes that are gone, then ENOMEM.
fn take_bound(uid: u32) -> Result<BoundSlot, Errno> {
    if let Some(s) = try_take_bound(uid) {
        return Ok(s);
    }
    let held: Vec<Arc<ProcessHandle>> = REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for h in held {
        // Probing retires a handle whose process exited or exec'd.
        h.alive();
    }
    try_take_bound(uid).ok_or(Errno::ENOMEM)
}

/// Bound processes of user `uid` alive now (tests and status).
pub fn bound_of_user(uid: u32) -> usize {
    BOUND_COUNT.of_user(uid)
}

const PAGE_SIZE: u64 = 4096;

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

/// The files bound to one process and its address space.
#[derive(Debug)]
struct Bound {
    mem: File,
    pagemap: File,
    /// Asked with PROCMAP_QUERY (or, before Linux 6.11, its text re-read from offset 0);
    /// serialised so that concurrent users do not share the seq_file's state.
    maps: Mutex<File>,
    /// `/proc/<tgid>`, bound to the process itself.
    proc_dir: OwnedFd,
    pidfd: OwnedFd,
    /// Counts these files against the binding user and the daemon.
    _slot: BoundSlot,
}

/// The identity of one process (and the program image it ran) bound at map time.
#[derive(Debug)]
pub struct ProcessHandle {
    id: u64,
    tgid: i32,
    /// The auxiliary vector at bind time (identifies the program image).
    exec_id: Vec<u8>,
    /// RLIMIT_MEMLOCK (soft, bytes) at bind time: used once the process is gone (the kernel keeps
    /// charging against the last limit of a dead owner). 0 if it could not be read.
    limit_at_bind: u64,
    bound: Mutex<Option<Arc<Bound>>>,
    /// The daemon's mappings of this process's shared memory (see [`super::shared`]).
    pub(super) views: Mutex<super::shared::ViewCache>,
}

fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

fn open_at(dir: &OwnedFd, name: &str, flags: rustix::fs::OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        flags | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Errno::from_raw(e.raw_os_error()))
}

fn open_dir(path: &str) -> Result<OwnedFd, Errno> {
    use rustix::fs::OFlags;
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|_| Errno::ESRCH)
}

/// Reads a whole (small) file from its start.
fn read_all(fd: OwnedFd) -> Result<Vec<u8>, Errno> {
    read_from_start(fd, false)
}

/// A file the kernel serves from one buffer (e.g. auxv, not a seq_file): a read shorter than asked
/// is its end, so a small one takes a single read.
fn read_whole_blob(fd: OwnedFd) -> Result<Vec<u8>, Errno> {
    read_from_start(fd, true)
}

/// Reads `fd` from its start a page at a time until a read returns nothing or, with
/// `short_read_ends`, less than a page.
fn read_from_start(fd: OwnedFd, short_read_ends: bool) -> Result<Vec<u8>, Errno> {
    let f = File::from(fd);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        match f.read_at(&mut buf, out.len() as u64) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if short_read_ends && n < buf.len() {
                    return Ok(out);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(errno_of(&e)),
        }
    }
}

/// The text of `/proc/<tid>/status`, read a page at a time (two reads where a growing buffer
/// takes eight: this is on the path of every map). The open's errno when it cannot be opened
/// (ENOENT: no such thread), EIO when it is not text.
pub fn read_status(tid: i32) -> Result<String, Errno> {
    let fd = rustix::fs::open(
        format!("/proc/{tid}/status").as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Errno::from_raw(e.raw_os_error()))?;
    String::from_utf8(read_all(fd)?).map_err(|_| Errno::EIO)
}

/// The auxiliary vector of thread `tid`'s current program: changes with every exec. On the path
/// of every map: one open, one read (the kernel hands the whole vector, a few hundred bytes, to
/// one read of a page), one close.
pub(super) fn exec_identity(tid: i32) -> Result<Vec<u8>, Errno> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        format!("/proc/{tid}/auxv").as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match Errno::from_raw(e.raw_os_error()) {
        // The file's own access check (ptrace read access to the thread).
        denied @ (Errno::EACCES | Errno::EPERM) => denied,
        // No such thread (any more), or /proc/<tid> could not be reached: as before, when the
        // directory was opened on its own.
        _ => Errno::ESRCH,
    })?;
    let auxv = read_whole_blob(fd)?;
    if auxv.is_empty() {
        // A kernel thread or a process past exit_mm: nothing to bind to.
        return Err(Errno::ESRCH);
    }
    Ok(auxv)
}

/// The soft RLIMIT_MEMLOCK in bytes from the text of `/proc/<pid>/limits` (u64::MAX for
/// "unlimited"); None if the line is missing or malformed.
pub fn parse_memlock_limit(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))?;
    let soft = rest.split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

fn read_limit(dir: &OwnedFd) -> Result<u64, Errno> {
    let text = read_all(open_at(dir, "limits", rustix::fs::OFlags::RDONLY)?)?;
    parse_memlock_limit(&String::from_utf8_lossy(&text)).ok_or(Errno::EINVAL)
}

impl ProcessHandle {
    /// Binds the process of the calling thread `tid` (thread group `tgid`). Only valid while a
    /// request of that thread is held (or for the daemon itself): see the module documentation.
    pub fn open(tid: i32, tgid: i32) -> Result<Self, Errno> {
        let uid = Credentials::of_thread(tid)?.uid;
        Self::open_with(tid, tgid, exec_identity(tid)?, uid)
    }

    /// `uid`: the real uid of the binding thread, whose share of bound processes this takes.
    fn open_with(tid: i32, tgid: i32, exec_id: Vec<u8>, uid: u32) -> Result<Self, Errno> {
        use rustix::fs::OFlags;
        if tid <= 0 || tgid <= 0 {
            return Err(Errno::ESRCH);
        }
        let slot = take_bound(uid)?;
        let thread_dir = open_dir(&format!("/proc/{tid}"))?;
        let mem = File::from(open_at(&thread_dir, "mem", OFlags::RDWR)?);
        let pagemap = File::from(open_at(&thread_dir, "pagemap", OFlags::RDONLY)?);
        let maps = File::from(open_at(&thread_dir, "maps", OFlags::RDONLY)?);
        let proc_dir = open_dir(&format!("/proc/{tgid}"))?;
        let pid = rustix::process::Pid::from_raw(tgid).ok_or(Errno::ESRCH)?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|e| Errno::from_raw(e.raw_os_error()))?;
        let limit_at_bind = read_limit(&proc_dir).unwrap_or(0);
        Ok(Self {
            id: NEXT_HANDLE.fetch_add(1, Ordering::Relaxed),
            tgid,
            exec_id,
            limit_at_bind,
            bound: Mutex::new(Some(Arc::new(Bound {
                mem,
                pagemap,
                maps: Mutex::new(maps),
                proc_dir,
                pidfd,
                _slot: slot,
            }))),
            views: Mutex::new(Default::default()),
        })
    }

    /// The daemon's own process (in-process tests and replay).
    pub fn current() -> Result<Self, Errno> {
        let pid = std::process::id() as i32;
        Self::open(pid, pid)
    }

    /// Unique for the daemon's lifetime: the key of per-process (RLIMIT process mode) charges.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The thread group id the process had when bound (for logs; never used to reach it).
    pub fn tgid(&self) -> i32 {
        self.tgid
    }

    /// The auxiliary vector the bound program had.
    pub(super) fn exec_id(&self) -> &[u8] {
        &self.exec_id
    }

    fn bound(&self) -> Result<Arc<Bound>, Errno> {
        self.bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Errno::EFAULT)
    }

    /// Closes the files: the process or its address space is gone for good.
    pub fn retire(&self) {
        let taken = self.bound.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }

    pub fn is_retired(&self) -> bool {
        self.bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Whether the process is alive and still has the address space it was bound with (a dead
    /// address space reads 0 bytes; a live one gives EIO or data at address 0). Retires the
    /// handle when not.
    pub fn alive(&self) -> bool {
        let Ok(b) = self.bound() else {
            return false;
        };
        let mut pfd = [nix::poll::PollFd::new(
            b.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let exited = match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO) {
            Ok(n) => n > 0,
            Err(_) => true,
        };
        let mm_dead = !exited && matches!(b.mem.read_at(&mut [0u8; 1], 0), Ok(0));
        if exited || mm_dead {
            drop(b);
            self.retire();
            return false;
        }
        true
    }

    /// Reads `buf.len()` bytes at `addr` of the bound address space. EFAULT on any hole, and
    /// once the process has exec'd or gone.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let b = self.bound()?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            match b.mem.read_at(&mut buf[done..], at) {
                Ok(0) => return self.gone(b),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Errno::EFAULT),
            }
        }
        Ok(())
    }

    /// Writes `data` at `addr`, only where the VMAs are writable (the mem file would otherwise
    /// force its way into read-only private mappings). EFAULT like [`Self::read`].
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if data.is_empty() {
            return Ok(());
        }
        let end = addr.checked_add(data.len() as u64).ok_or(Errno::EFAULT)?;
        let vmas = self.vmas_in(addr, end)?;
        check_vmas(&vmas, addr, end, true)?;
        self.write_unchecked(addr, data)
    }

    /// Writes without looking at the VMAs (the caller checked them).
    pub fn write_unchecked(&self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let b = self.bound()?;
        let mut done = 0usize;
        while done < data.len() {
            let at = addr.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            match b.mem.write_at(&data[done..], at) {
                Ok(0) => return self.gone(b),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Errno::EFAULT),
            }
        }
        Ok(())
    }

    /// A 0-byte transfer: the address space went away (exec or exit) — retire, EFAULT.
    fn gone<T>(&self, b: Arc<Bound>) -> Result<T, Errno> {
        drop(b);
        self.retire();
        Err(Errno::EFAULT)
    }

    /// Raw pagemap entries of `count` pages from the page-aligned `vaddr`.
    pub fn pagemap(&self, vaddr: u64, count: u64) -> Result<Vec<u64>, Errno> {
        let b = self.bound()?;
        let len = usize::try_from(count.checked_mul(8).ok_or(Errno::EFAULT)?)
            .map_err(|_| Errno::EFAULT)?;
        let mut raw = vec![0u8; len];
        let mut done = 0usize;
        let base = vaddr / PAGE_SIZE * 8;
        while done < len {
            match b.pagemap.read_at(&mut raw[done..], base + done as u64) {
                Ok(0) => return self.gone(b),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Errno::EFAULT),
            }
        }
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
            .collect())
    }

    /// The VMAs of the bound address space that meet `[start, end)`, in order: one
    /// PROCMAP_QUERY ioctl per VMA (Linux 6.11), or the maps text on older kernels.
    pub fn vmas_in(&self, start: u64, end: u64) -> Result<Vec<Vma>, Errno> {
        let b = self.bound()?;
        let maps = b.maps.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut cur = start;
        while cur < end {
            match procmap_query(&maps, cur) {
                Ok(Some(vma)) if vma.start < end => {
                    cur = vma.end;
                    out.push(vma);
                }
                Ok(_) => break,
                Err(Errno::ENOTTY | Errno::EINVAL) => {
                    let text = read_seq(&maps)?;
                    drop(maps);
                    if text.is_empty() {
                        // Every live address space has VMAs: this one is gone.
                        return self.gone(b);
                    }
                    return Ok(parse_maps(&String::from_utf8_lossy(&text))
                        .into_iter()
                        .filter(|v| v.end > start && v.start < end)
                        .collect());
                }
                Err(_) => {
                    drop(maps);
                    return self.gone(b);
                }
            }
        }
        Ok(out)
    }

    /// An O_PATH handle on the file behind the VMA `[start, end)`, through
    /// `/proc/<tgid>/map_files` of the bound process (needs CAP_SYS_ADMIN or
    /// CAP_CHECKPOINT_RESTORE, which the daemon has). O_PATH runs no file system open: a file
    /// system served by the client cannot stall the daemon here.
    pub(super) fn open_vma_path(&self, start: u64, end: u64) -> Result<OwnedFd, Errno> {
        use rustix::fs::OFlags;
        let b = self.bound()?;
        open_at(
            &b.proc_dir,
            &format!("map_files/{start:x}-{end:x}"),
            OFlags::PATH,
        )
    }

    /// Every VMA of the bound address space now.
    pub fn vmas(&self) -> Result<Vec<Vma>, Errno> {
        self.vmas_in(0, u64::MAX)
    }

    /// The process's soft RLIMIT_MEMLOCK in bytes now (u64::MAX for unlimited). Fails closed:
    /// 0 when it cannot be read while the process lives; the limit seen at bind time once the
    /// process is gone.
    pub fn memlock_limit(&self) -> u64 {
        match self.bound() {
            Ok(b) => match read_limit(&b.proc_dir) {
                Ok(v) => v,
                Err(Errno::ESRCH | Errno::ENOENT) => self.limit_at_bind,
                Err(_) => 0,
            },
            Err(_) => self.limit_at_bind,
        }
    }
}

/// Reads a seq_file from its start to its end.
fn read_seq(f: &File) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read_at(&mut buf, out.len() as u64) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Errno::EFAULT),
        }
    }
}

/// `struct procmap_query` of the PROCMAP_QUERY ioctl on a maps file (uapi linux/fs.h).
#[repr(C)]
#[derive(Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u32 = 0xc068_6611;
const PROCMAP_QUERY_VMA_READABLE: u64 = 0x01;
const PROCMAP_QUERY_VMA_WRITABLE: u64 = 0x02;
const PROCMAP_QUERY_VMA_SHARED: u64 = 0x08;
const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;

/// The VMA covering `addr` or the next one above it; None past the last. ESRCH once the
/// address space is gone, ENOTTY on kernels without the ioctl.
fn procmap_query(maps: &File, addr: u64) -> Result<Option<Vma>, Errno> {
    use std::os::fd::AsFd;
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_flags: PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
        query_addr: addr,
        ..Default::default()
    };
    // The name and build-id buffers are not asked for (sizes 0, addresses 0): the kernel reads
    // and writes `q` only.
    match crate::sys::ioctl::ioctl_struct(maps.as_fd(), PROCMAP_QUERY, &mut q) {
        Ok(_) => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(Some(Vma {
        start: q.vma_start,
        end: q.vma_end,
        read: q.vma_flags & PROCMAP_QUERY_VMA_READABLE != 0,
        write: q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE != 0,
        private: q.vma_flags & PROCMAP_QUERY_VMA_SHARED == 0,
        offset: q.vma_offset,
        dev: (q.dev_major, q.dev_minor),
        inode: q.inode,
        page_size: q.vma_page_size.max(4096),
    }))
}

/// A VMA of `/proc/<pid>/maps`: `[start, end)` and its permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    /// MAP_PRIVATE (copy-on-write) rather than MAP_SHARED.
    pub private: bool,
    /// Offset in the mapped file of `start` (bytes; 0 for anonymous memory).
    pub offset: u64,
    /// Device (major, minor) and inode of the mapped file ((0, 0) and 0 for anonymous memory).
    pub dev: (u32, u32),
    pub inode: u64,
    /// The VMA's page size (a huge page size for hugetlbfs; 4096 where the maps text is all
    /// there is).
    pub page_size: u64,
}

/// Parses the text of a maps file.
pub fn parse_maps(maps: &str) -> Vec<Vma> {
    maps.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let range = it.next()?;
            let perms = it.next()?.as_bytes();
            let (s, e) = range.split_once('-')?;
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let (major, minor) = it.next()?.split_once(':')?;
            Some(Vma {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                read: perms.first() == Some(&b'r'),
                write: perms.get(1) == Some(&b'w'),
                private: perms.get(3) == Some(&b'p'),
                offset,
                dev: (
                    u32::from_str_radix(major, 16).ok()?,
                    u32::from_str_radix(minor, 16).ok()?,
                ),
                inode: it.next()?.parse().ok()?,
                page_size: 4096,
            })
        })
        .collect()
}

/// Checks that `[start, end)` is fully covered by VMAs with the needed permissions (EFAULT).
pub fn check_vmas(vmas: &[Vma], start: u64, end: u64, write: bool) -> Result<(), Errno> {
    let mut cur = start;
    for vma in vmas.iter().filter(|v| v.end > start && v.start < end) {
        if vma.start > cur || !vma.read || (write && !vma.write) {
            return Err(Errno::EFAULT);
        }
        cur = vma.end;
        if cur >= end {
            return Ok(());
        }
    }
    if cur >= end {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    }
}

/// The process handles one context uses (see the module documentation).
#[derive(Debug, Default)]
pub struct ProcessHandles {
    held: Mutex<Vec<Arc<ProcessHandle>>>,
}

/// Every handle alive anywhere in the daemon, for sharing across contexts.
static REGISTRY: Mutex<Vec<Weak<ProcessHandle>>> = Mutex::new(Vec::new());

fn registry_candidates(tgid: i32, exec_id: &[u8]) -> Vec<Arc<ProcessHandle>> {
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|w| w.strong_count() > 0);
    reg.iter()
        .filter_map(Weak::upgrade)
        .filter(|h| h.tgid == tgid && h.exec_id == exec_id && !h.is_retired())
        .collect()
}

impl ProcessHandles {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle of the process behind the request `mem` is serving: a shared one if it still
    /// names the caller's process and program, else a freshly bound one. ENOMEM when the
    /// context already holds [`MAX_PROCESSES_PER_CONTEXT`] live handles.
    pub fn get(&self, mem: &dyn CallerMemory) -> Result<Arc<ProcessHandle>, Errno> {
        let tgid = mem.pid();
        let tid = mem.tid();
        let exec_id = exec_identity(tid)?;
        let same_process: Vec<Arc<ProcessHandle>> = self
            .lock()
            .iter()
            .filter(|h| h.tgid == tgid)
            .cloned()
            .collect();
        let mut found = None;
        for h in same_process {
            if h.exec_id == exec_id {
                if found.is_none() && h.alive() {
                    found = Some(h);
                }
            } else {
                // The program this handle was bound to has been replaced by an exec: probing
                // retires it (its address space reads 0 bytes) and closes its files now.
                h.alive();
            }
        }
        if let Some(h) = found {
            return Ok(h);
        }
        for h in registry_candidates(tgid, &exec_id) {
            if h.alive() {
                return self.hold(h);
            }
        }
        let uid = mem.credentials()?.uid;
        let fresh = Arc::new(ProcessHandle::open_with(tid, tgid, exec_id, uid)?);
        // A concurrent request of the same program may have bound it meanwhile: share that one.
        let chosen = {
            let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            let existing = reg
                .iter()
                .filter_map(Weak::upgrade)
                .find(|h| h.tgid == fresh.tgid && h.exec_id == fresh.exec_id && !h.is_retired());
            match existing {
                Some(h) => h,
                None => {
                    reg.push(Arc::downgrade(&fresh));
                    fresh
                }
            }
        };
        self.hold(chosen)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ProcessHandle>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `h` to the handles this context keeps, within the cap.
    fn hold(&self, h: Arc<ProcessHandle>) -> Result<Arc<ProcessHandle>, Errno> {
        let full = {
            let mut held = self.lock();
            held.retain(|x| !x.is_retired());
            if held.iter().any(|x| Arc::ptr_eq(x, &h)) {
                return Ok(h);
            }
            if held.len() < MAX_PROCESSES_PER_CONTEXT {
                held.push(h.clone());
                return Ok(h);
            }
            held.clone()
        };
        // At the cap: let go of handles whose process is gone (probed outside the lock).
        for x in &full {
            x.alive();
        }
        let mut held = self.lock();
        held.retain(|x| !x.is_retired());
        if held.iter().any(|x| Arc::ptr_eq(x, &h)) {
            return Ok(h);
        }
        if held.len() >= MAX_PROCESSES_PER_CONTEXT {
            return Err(Errno::ENOMEM);
        }
        held.push(h.clone());
        Ok(h)
    }

    /// Live handles held (inspection and tests).
    pub fn len(&self) -> usize {
        let mut held = self.lock();
        held.retain(|x| !x.is_retired());
        held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The credentials of a calling thread, as the kernel's `capable()` and `current_user()` see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Real uid (in the daemon's user namespace): the user pins are charged to.
    pub uid: u32,
    /// Effective capability set.
    pub cap_eff: u64,
    /// Whether the thread's credentials belong to the daemon's own user namespace.
    pub initial_userns: bool,
}

impl Credentials {
    /// Whether `capable(cap)` would hold: the capability is in the effective set *and* the
    /// credentials are in the daemon's user namespace.
    pub fn capable(&self, cap: u32) -> bool {
        self.initial_userns && cap < 64 && self.cap_eff & (1u64 << cap) != 0
    }

    /// Reads the credentials of thread `tid` from `/proc/<tid>` (ESRCH when it cannot).
    pub fn of_thread(tid: i32) -> Result<Self, Errno> {
        if tid <= 0 {
            return Err(Errno::ESRCH);
        }
        let dir = open_dir(&format!("/proc/{tid}"))?;
        let status = read_all(open_at(&dir, "status", rustix::fs::OFlags::RDONLY)?)?;
        let (uid, cap_eff) =
            parse_status_creds(&String::from_utf8_lossy(&status)).ok_or(Errno::ESRCH)?;
        Ok(Self {
            uid,
            cap_eff,
            initial_userns: in_daemon_userns(&dir),
        })
    }
}

/// (real uid, CapEff) from the text of a status file.
pub fn parse_status_creds(status: &str) -> Option<(u32, u64)> {
    let mut uid = None;
    let mut cap_eff = None;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            uid = v.split_whitespace().next().and_then(|s| s.parse().ok());
        } else if let Some(v) = line.strip_prefix("CapEff:") {
            cap_eff = u64::from_str_radix(v.trim(), 16).ok();
        }
    }
    Some((uid?, cap_eff?))
}

fn userns_id_at(dir: &OwnedFd) -> Option<(u64, u64)> {
    let st = rustix::fs::statat(dir, "ns/user", rustix::fs::AtFlags::empty()).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Whether the thread whose `/proc` directory is `dir` is in the daemon's own user namespace
/// (false when that cannot be established: fail closed).
pub(super) fn in_daemon_userns(dir: &OwnedFd) -> bool {
    is_daemon_userns(userns_id_at(dir))
}

/// Whether a user namespace's (device, inode) is the daemon's own (false when unknown).
fn is_daemon_userns(theirs: Option<(u64, u64)>) -> bool {
    matches!((daemon_userns_id(), theirs), (Some(a), Some(b)) if a == b)
}

/// The daemon's own user namespace (device, inode), looked up once.
fn daemon_userns_id() -> Option<(u64, u64)> {
    static OWN: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *OWN.get_or_init(|| {
        let st = rustix::fs::stat("/proc/self/ns/user").ok()?;
        Some((st.st_dev, st.st_ino))
    })
}

/// Whether thread `tid` is in the daemon's own user namespace. (Through a pidfd,
/// PIDFD_GET_USER_NAMESPACE, measured slower here: 11.8–13.6 µs against 8.9–10.7 µs.)
/// One stat of the link's target (on the path of every map by a caller with capabilities).
pub fn thread_in_daemon_userns(tid: i32) -> bool {
    let theirs = rustix::fs::stat(format!("/proc/{tid}/ns/user").as_str())
        .ok()
        .map(|st| (st.st_dev, st.st_ino));
    is_daemon_userns(theirs)
}

/// `PIDFD_THREAD` (Linux 6.9): a pidfd naming one thread rather than its thread group.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// PIDFD_GET_INFO's argument as first published (Linux 6.13, `PIDFD_INFO_SIZE_VER0`, 64 bytes);
/// the kernel fills what it has and says which parts in `mask`.
#[repr(C)]
#[derive(Debug, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}
const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);
const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_CREDS: u64 = 1 << 1;
/// `_IOWR(PIDFS_IOCTL_MAGIC (0xFF), 11, struct pidfd_info)` with the 64-byte struct.
const PIDFD_GET_INFO: u32 = 0xC040_FF0B;

/// What [`read_status`] is read for on every map — thread `tid`'s thread group, real uid and
/// effective capabilities — from a pidfd of the thread (PIDFD_THREAD, Linux 6.9), its
/// PIDFD_GET_INFO (6.13) and capget(2), without the kernel formatting the whole status file
/// (~20 µs here). None where the kernel lacks one of them (the caller reads the status then).
pub fn thread_status(tid: i32) -> Option<(i32, u32, u64)> {
    let pid = rustix::process::Pid::from_raw(tid)?;
    let pidfd = thread_pidfd(pid).ok()?;
    let want = PIDFD_INFO_PID | PIDFD_INFO_CREDS;
    let info = pidfd_info(&pidfd, want)?;
    if info.mask & want != want || i32::try_from(info.pid).ok()? != tid {
        return None;
    }
    // capget goes by thread id: asking the pidfd again afterwards (ESRCH once its thread is gone)
    // shows the thread lived through it, so `tid` could not name another task meanwhile.
    let caps = rustix::thread::capabilities(Some(pid)).ok()?;
    pidfd_info(&pidfd, PIDFD_INFO_PID)?;
    Some((
        i32::try_from(info.tgid).ok()?,
        info.ruid,
        caps.effective.bits(),
    ))
}

/// A pidfd naming thread `pid` itself (PIDFD_THREAD; EINVAL on kernels before 6.9).
pub fn thread_pidfd(pid: rustix::process::Pid) -> rustix::io::Result<OwnedFd> {
    let flags = rustix::process::PidfdFlags::from_bits_retain(PIDFD_THREAD);
    rustix::process::pidfd_open(pid, flags)
}

/// PIDFD_GET_INFO of `pidfd` asking for `mask`; None when the kernel refuses (ESRCH once the
/// task is gone, ENOTTY before 6.13).
fn pidfd_info(pidfd: &OwnedFd, mask: u64) -> Option<PidfdInfo> {
    let mut info = PidfdInfo {
        mask,
        ..Default::default()
    };
    crate::sys::ioctl::ioctl_struct(pidfd.as_fd(), PIDFD_GET_INFO, &mut info).ok()?;
    Some(info)
}

/// Duplicates fd `fd` from the table of thread `tid` (its own table, which a thread created
/// without CLONE_FILES does not share with its group leader).
pub fn get_thread_fd(tid: i32, tgid: i32, fd: i32) -> Result<OwnedFd, Errno> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    let pid = rustix::process::Pid::from_raw(tid).ok_or(Errno::ESRCH)?;
    let pidfd = match thread_pidfd(pid) {
        Ok(p) => p,
        // A kernel without PIDFD_THREAD: only the group leader can be named (same table for
        // every thread that shares it).
        Err(rustix::io::Errno::INVAL) if tid == tgid => {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                .map_err(|e| Errno::from_raw(e.raw_os_error()))?
        }
        Err(e) => return Err(Errno::from_raw(e.raw_os_error())),
    };
    rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};

    #[test]
    fn exec_identity_is_the_whole_auxiliary_vector() {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let whole = std::fs::read("/proc/self/auxv").unwrap();
        assert!(!whole.is_empty());
        assert_eq!(exec_identity(tid).unwrap(), whole);
        assert_eq!(exec_identity(i32::MAX), Err(Errno::ESRCH));
    }

    /// The pidfd answer is the status file's, for the main thread and for another thread (whose
    /// thread group is the process's).
    #[test]
    fn thread_status_agrees_with_the_status_file() {
        let check = |tid: i32| {
            let Some(fast) = thread_status(tid) else {
                // Linux < 6.13: the status file is read instead (nothing to compare). This
                // project's CI kernel has PIDFD_GET_INFO, so there it must not be missing.
                assert!(
                    std::env::var_os("CI").is_none(),
                    "no PIDFD_GET_INFO under CI"
                );
                eprintln!("SKIPPED: PIDFD_GET_INFO (Linux >= 6.13) missing");
                return;
            };
            let text = read_status(tid).unwrap();
            let tgid: i32 = text
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
            let (uid, cap_eff) = parse_status_creds(&text).unwrap();
            assert_eq!(fast, (tgid, uid, cap_eff));
        };
        check(rustix::thread::gettid().as_raw_nonzero().get());
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, std::process::id() as i32);
        check(tid);
        if let Some((tgid, ..)) = thread_status(tid) {
            assert_eq!(tgid, std::process::id() as i32);
        }
        drop(done_tx);
        t.join().unwrap();
        assert_eq!(thread_status(0), None);
    }

    #[test]
    fn parses_memlock_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max locked memory         8388608              16777216             bytes     \n";
        assert_eq!(parse_memlock_limit(text), Some(8 << 20));
        let unl = "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(parse_memlock_limit(unl), Some(u64::MAX));
        assert_eq!(parse_memlock_limit("Max cpu time 1 1 seconds\n"), None);
        assert_eq!(
            parse_memlock_limit("Max locked memory  junk x bytes\n"),
            None
        );
    }

    #[test]
    fn capabilities_need_the_daemons_namespace() {
        let c = Credentials {
            uid: 0,
            cap_eff: 1 << super::super::CAP_IPC_LOCK,
            initial_userns: false,
        };
        assert!(!c.capable(super::super::CAP_IPC_LOCK));
        let c = Credentials {
            initial_userns: true,
            ..c
        };
        assert!(c.capable(super::super::CAP_IPC_LOCK));
        assert!(!c.capable(super::super::CAP_SYS_RESOURCE));
        assert!(!c.capable(99));
        assert!(thread_in_daemon_userns(std::process::id() as i32));
        assert!(
            !thread_in_daemon_userns(i32::MAX),
            "no such thread: fail closed"
        );
        assert_eq!(
            parse_status_creds("Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000004000\n"),
            Some((1000, 1 << 14))
        );
    }

    #[test]
    fn own_process_reads_writes_and_limits() {
        let h = ProcessHandle::current().unwrap();
        assert!(h.alive());
        let src = [7u8, 6, 5, 4];
        let mut dst = [0u8; 4];
        h.read(src.as_ptr() as u64, &mut dst).unwrap();
        assert_eq!(src, dst);
        let mut target = vec![0u8; 3];
        h.write(target.as_mut_ptr() as u64, &[1, 2, 3]).unwrap();
        assert_eq!(std::hint::black_box(&target)[..], [1, 2, 3]);
        assert_eq!(h.read(8, &mut dst), Err(Errno::EFAULT));
        let (cur, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).unwrap();
        let want = if cur == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            cur
        };
        assert_eq!(h.memlock_limit(), want);
    }

    #[test]
    fn vma_queries_agree_with_the_maps_text() {
        let h = ProcessHandle::current().unwrap();
        // A few private and shared, readable and writable mappings of our own.
        use nix::sys::mman::{MapFlags, ProtFlags};
        let mk = |prot, flags| {
            let len = std::num::NonZeroUsize::new(3 * 4096).unwrap();
            crate::sys::mem::Mapping::anonymous(len, prot, flags).unwrap()
        };
        let maps = [
            mk(ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE),
            mk(
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            ),
        ];
        for m in &maps {
            let start = m.addr() as u64;
            let got = h.vmas_in(start, start + 3 * 4096).unwrap();
            let text = std::fs::read_to_string("/proc/self/maps").unwrap();
            let want: Vec<Vma> = parse_maps(&text)
                .into_iter()
                .filter(|v| v.end > start && v.start < start + 3 * 4096)
                .collect();
            // (Neighbours mapped meanwhile by other tests may merge: compare what our range sees.)
            let perms = |v: &Vec<Vma>| -> Vec<(bool, bool, bool)> {
                v.iter().map(|v| (v.read, v.write, v.private)).collect()
            };
            assert_eq!(perms(&got), perms(&want));
            assert_eq!(got.len(), 1);
            assert!(got[0].start <= start && got[0].end >= start + 3 * 4096);
        }
        let shared = maps[1].addr() as u64;
        assert!(check_vmas(
            &h.vmas_in(shared, shared + 1).unwrap(),
            shared,
            shared + 1,
            true
        )
        .is_ok());
    }

    #[test]
    fn writes_refuse_read_only_mappings() {
        let h = ProcessHandle::current().unwrap();
        let m = crate::sys::mem::Mapping::anonymous(
            std::num::NonZeroUsize::new(4096).unwrap(),
            nix::sys::mman::ProtFlags::PROT_READ,
            nix::sys::mman::MapFlags::MAP_PRIVATE,
        )
        .unwrap();
        let p = m.addr() as u64;
        assert_eq!(h.write(p, &[1]), Err(Errno::EFAULT));
        let mut b = [9u8; 1];
        h.read(p, &mut b).unwrap();
        assert_eq!(b, [0]);
    }

    /// A child that is stopped until we say so; its memory is read through a handle bound
    /// while it lives, and the handle goes dead (EFAULT) when it exits or execs.
    fn child_stack_addr(pid: i32) -> u64 {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        parse_maps(&maps)
            .into_iter()
            .find(|v| v.read && v.write)
            .map(|v| v.start)
            .unwrap()
    }

    #[test]
    fn handle_dies_with_exit_and_exec() {
        for exec in [false, true] {
            let script = if exec {
                "echo up; read x; exec sleep 30"
            } else {
                "echo up; read x"
            };
            let mut child = Command::new("sh")
                .args(["-c", script])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            // The shell runs (its program image is complete) once it has spoken.
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
                &mut line,
            )
            .unwrap();
            let pid = child.id() as i32;
            let h = ProcessHandle::open(pid, pid).unwrap();
            let addr = child_stack_addr(pid);
            let mut b = [0u8; 16];
            h.read(addr, &mut b).unwrap();
            assert!(h.alive());
            drop(child.stdin.take());
            if exec {
                // Wait until the exec happened.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() != "sleep")
                {
                    assert!(std::time::Instant::now() < deadline, "no exec");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            } else {
                child.wait().unwrap();
            }
            if exec {
                // Found dead by the VMA query first.
                assert_eq!(h.vmas().unwrap_err(), Errno::EFAULT);
            }
            assert_eq!(h.read(addr, &mut b), Err(Errno::EFAULT), "exec={exec}");
            assert!(!h.alive());
            assert!(h.is_retired());
            assert_eq!(h.pagemap(addr, 1), Err(Errno::EFAULT));
            assert_eq!(h.vmas().unwrap_err(), Errno::EFAULT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    #[test]
    fn thread_fd_comes_from_the_threads_own_table() {
        use std::io::Write;
        let tgid = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // Only this thread gets a private copy of the table.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).unwrap();
            let mut f = tempfile_in_thread();
            f.write_all(b"thread").unwrap();
            let tid = nix::unistd::gettid().as_raw();
            let fd = f.as_raw_fd();
            let got = get_thread_fd(tid, tgid, fd).unwrap();
            let mut buf = [0u8; 6];
            File::from(got).read_at(&mut buf, 0).unwrap();
            tx.send((buf, fd)).unwrap();
        });
        let (buf, fd) = rx.recv().unwrap();
        t.join().unwrap();
        assert_eq!(&buf, b"thread");
        assert!(fd >= 0);
        assert_eq!(get_thread_fd(tgid, tgid, -1).unwrap_err(), Errno::EBADF);
    }

    fn tempfile_in_thread() -> File {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        File::from(fd)
    }

    #[test]
    fn handles_are_shared_and_capped() {
        let mem = super::super::ProcessMemory::current();
        let a = ProcessHandles::new();
        let b = ProcessHandles::new();
        let h1 = a.get(&mem).unwrap();
        let h2 = a.get(&mem).unwrap();
        let h3 = b.get(&mem).unwrap();
        assert!(Arc::ptr_eq(&h1, &h2));
        assert!(
            Arc::ptr_eq(&h1, &h3),
            "one handle per process across contexts"
        );
        assert_eq!(a.len(), 1);
        // A retired handle is never handed out again.
        h1.retire();
        let h4 = a.get(&mem).unwrap();
        assert!(!Arc::ptr_eq(&h1, &h4));
        assert_eq!(a.len(), 1);
        assert_ne!(h1.id(), h4.id());
    }

    /// A stand-in for the request of process `pid` (its only thread).
    struct Caller(i32);

    impl CallerMemory for Caller {
        fn read(&self, _: u64, _: &mut [u8]) -> Result<(), Errno> {
            Err(Errno::EFAULT)
        }
        fn write(&self, _: u64, _: &[u8]) -> Result<(), Errno> {
            Err(Errno::EFAULT)
        }
        fn pid(&self) -> i32 {
            self.0
        }
        fn get_fd(&self, _: i32) -> Result<OwnedFd, Errno> {
            Err(Errno::EBADF)
        }
    }

    #[test]
    fn a_context_holds_a_bounded_number_of_live_processes() {
        use std::io::BufRead;
        let mut children: Vec<std::process::Child> = (0..=MAX_PROCESSES_PER_CONTEXT)
            .map(|_| {
                let mut c = Command::new("sh")
                    .args(["-c", "echo up; read x"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut line = String::new();
                std::io::BufReader::new(c.stdout.as_mut().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                c
            })
            .collect();
        let ctx = ProcessHandles::new();
        let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
        for &pid in &pids[..MAX_PROCESSES_PER_CONTEXT] {
            ctx.get(&Caller(pid)).unwrap();
        }
        // The same processes again cost nothing new.
        ctx.get(&Caller(pids[0])).unwrap();
        let last = *pids.last().unwrap();
        assert_eq!(ctx.get(&Caller(last)).unwrap_err(), Errno::ENOMEM);
        assert_eq!(ctx.len(), MAX_PROCESSES_PER_CONTEXT);
        // One of them exits: its handle is retired and makes room.
        drop(children[0].stdin.take());
        children[0].wait().unwrap();
        let h = ctx.get(&Caller(last)).unwrap();
        assert_eq!(h.tgid(), last);
        assert_eq!(ctx.len(), MAX_PROCESSES_PER_CONTEXT);
        for c in &mut children {
            drop(c.stdin.take());
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn the_mapping_thread_may_exit() {
        // A worker thread maps, then exits; its process lives on.
        let pid = std::process::id() as i32;
        let h = std::thread::spawn(move || {
            let tid = nix::unistd::gettid().as_raw();
            ProcessHandle::open(tid, pid).unwrap()
        })
        .join()
        .unwrap();
        let src = vec![3u8; 4096];
        let mut b = [0u8; 8];
        let addr = src.as_ptr() as u64;
        // The files hold the address space, not the thread that opened them.
        assert!(h.alive());
        assert_eq!(h.vmas_in(addr, addr + 8).unwrap().len(), 1);
        h.read(addr, &mut b).unwrap();
        assert_eq!(b, [3; 8]);
        assert_eq!(h.pagemap(addr & !4095, 1).unwrap().len(), 1);
        assert!(h.alive());
    }
}
