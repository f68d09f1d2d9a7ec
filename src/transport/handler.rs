//! The message handler: one kernel message in, at most one reply out.
//!
//! [`Handler::handle`] is a plain synchronous function over bytes, shared by FUSE and CUSE sessions, so
//! it can be tested by feeding it constructed kernel messages. Per-open state is keyed by the file
//! handle we hand out at OPEN (RELEASE arrives with pid 0); the caller's memory is reached through a
//! [`CallerResolver`] built from the header's `pid` (a thread id).

use super::tree::{self, Node, Tree};
use super::wire::{self, opcode, Request, WireError};
use super::{with_transport_status, TransportStats};
use crate::caller::{CallerMemory, ProcessMemory};
use crate::service::{NodeKind, OpenFile, Service};
use nix::errno::Errno;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use zerocopy::IntoBytes;

/// Turns a request's `pid` (a thread id) into access to that caller's memory.
pub trait CallerResolver: Send + Sync {
    fn caller(&self, tid: u32) -> Result<Box<dyn CallerMemory>, Errno>;
}

/// The real resolver: process_vm_readv/writev on the thread (see [`ProcessMemory`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCallers;

impl CallerResolver for ProcessCallers {
    fn caller(&self, tid: u32) -> Result<Box<dyn CallerMemory>, Errno> {
        let tid = i32::try_from(tid).map_err(|_| Errno::ESRCH)?;
        Ok(Box::new(ProcessMemory::new(tid)?))
    }
}

/// What a session serves.
#[derive(Debug, Clone)]
pub enum Role {
    /// A FUSE filesystem with the static tree.
    Fuse(Tree),
    /// One CUSE character device; every OPEN is of `node`.
    Cuse { node: NodeKind, devname: String },
}

/// Where [`Handler::lane`] sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Inline,
    User(u32),
}

enum Handle {
    File(Arc<dyn OpenFile>),
    /// The status text, snapshotted at open so that a reader sees one consistent version.
    Status(Arc<[u8]>),
    Dir,
}

/// Cache timeout of names and attributes of the static nodes, in seconds.
const STATIC_TTL: u64 = 3600;

/// The answer of one operation before framing.
enum Answer {
    Data(Vec<u8>),
    Empty,
    NoReply,
}

/// Shared state of one session (one /dev/fuse or /dev/cuse fd).
pub struct Handler {
    role: Role,
    service: Arc<dyn Service>,
    callers: Arc<dyn CallerResolver>,
    handles: Mutex<FxHashMap<u64, Handle>>,
    /// The uid that opened each handle: its RELEASE runs in that user's lane (RELEASE itself
    /// carries no credentials), so a user whose requests are stuck delays only its own releases.
    openers: Mutex<FxHashMap<u64, u32>>,
    next_fh: AtomicU64,
    ready: watch::Sender<bool>,
    /// Whether INIT may accept FUSE over io_uring (set before the session starts).
    uring_wanted: AtomicBool,
    /// INIT offered FUSE_OVER_IO_URING.
    uring_offered: AtomicBool,
    /// Our INIT reply accepted it: requests move to the rings once every queue is registered.
    uring_negotiated: AtomicBool,
    /// The counters of the transport this session belongs to (for the status file).
    stats: Arc<TransportStats>,
}

impl Handler {
    pub fn new(role: Role, service: Arc<dyn Service>, callers: Arc<dyn CallerResolver>) -> Self {
        Self {
            role,
            service,
            callers,
            handles: Mutex::default(),
            openers: Mutex::default(),
            next_fh: AtomicU64::new(1),
            ready: watch::channel(false).0,
            uring_wanted: AtomicBool::new(false),
            uring_offered: AtomicBool::new(false),
            uring_negotiated: AtomicBool::new(false),
            stats: Arc::default(),
        }
    }

    /// Counts into (and reports in the status file) the counters of the transport it serves;
    /// a handler made by [`Handler::new`] alone has counters of its own.
    pub fn with_stats(self, stats: Arc<TransportStats>) -> Self {
        Self { stats, ..self }
    }

    /// Lets INIT accept FUSE over io_uring when the kernel offers it (FUSE sessions only).
    pub fn want_uring(&self, want: bool) {
        self.uring_wanted.store(want, Ordering::SeqCst);
    }

    /// Whether INIT offered FUSE over io_uring, and whether our reply took it (valid once ready).
    pub fn uring(&self) -> (bool, bool) {
        (
            self.uring_offered.load(Ordering::SeqCst),
            self.uring_negotiated.load(Ordering::SeqCst),
        )
    }

    /// True once INIT (or CUSE_INIT) was answered.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// A receiver that turns true once INIT/CUSE_INIT was answered.
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Number of open files (service files, status, dirs) currently held.
    pub fn open_handles(&self) -> usize {
        self.lock().len()
    }

    /// Where a message is handled: inline on the reader (no service call, or one of the daemon's
    /// own queries), or on the workers in the lane of the caller's uid (for RELEASE, the uid that
    /// opened the file).
    pub fn lane(&self, msg: &[u8]) -> Lane {
        let Some(h) = wire::peek_header(msg) else {
            return Lane::Inline;
        };
        match h.opcode {
            opcode::RELEASE => Lane::User(self.opener_of(msg)),
            opcode::OPEN | opcode::READ | opcode::WRITE => Lane::User(h.uid),
            opcode::IOCTL if self.ioctl_is_inline(msg) => Lane::Inline,
            opcode::IOCTL => Lane::User(h.uid),
            _ => Lane::Inline,
        }
    }

    fn opener_of(&self, msg: &[u8]) -> u32 {
        let fh = wire::parse(msg)
            .ok()
            .and_then(|r| r.arg::<wire::ReleaseIn>().ok())
            .map(|r| r.fh);
        let openers = self.openers.lock().unwrap_or_else(|p| p.into_inner());
        fh.and_then(|fh| openers.get(&fh).copied()).unwrap_or(0)
    }

    fn ioctl_is_inline(&self, msg: &[u8]) -> bool {
        let Ok(req) = wire::parse(msg) else {
            return false;
        };
        let Ok(a) = req.arg::<wire::IoctlIn>() else {
            return false;
        };
        matches!(self.lock().get(&a.fh), Some(Handle::File(f)) if f.inline_ioctl(a.cmd))
    }

    /// The answer `errno` to a message without handling it (None for messages that take none).
    pub fn refuse(msg: &[u8], errno: Errno) -> Option<Vec<u8>> {
        let h = wire::peek_header(msg)?;
        (!no_reply(h.opcode)).then(|| wire::reply_err(h.unique, errno as i32))
    }

    /// [`Self::handle`], with a panic below turned into an EIO answer and one (rate-limited) log
    /// line: the caller must not wait forever for a reply that a panic swallowed.
    pub fn handle_guarded(&self, msg: &[u8]) -> Option<Vec<u8>> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(msg))) {
            Ok(reply) => reply,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let h = wire::peek_header(msg)?;
                crate::error_limited!(
                    op = wire::opcode_name(h.opcode),
                    pid = h.pid,
                    panic = what,
                    "a request panicked; answered EIO"
                );
                if no_reply(h.opcode) {
                    return None;
                }
                Some(wire::reply_err(h.unique, Errno::EIO as i32))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, Handle>> {
        // A panicking service call must not take the whole session down with a poisoned lock.
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases every open file still held (at shutdown, after in-flight requests finished).
    pub fn release_all(&self) -> usize {
        let drained: Vec<Handle> = self.lock().drain().map(|(_, h)| h).collect();
        self.openers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut n = 0;
        for h in drained {
            if let Handle::File(f) = h {
                f.release();
                n += 1;
            }
        }
        n
    }

    /// Handles one kernel message; returns the reply to write, or None when none is owed.
    pub fn handle(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let req = match wire::parse(msg) {
            Ok(r) => r,
            Err(e) => return self.malformed(msg, e),
        };
        let h = req.header;
        let mut fh = None;
        let result = self.operation(&req, &mut fh);
        let op = wire::opcode_name(h.opcode);
        match &result {
            Ok(_) => tracing::debug!(
                op,
                opcode = h.opcode,
                unique = h.unique,
                nodeid = h.nodeid,
                fh,
                pid = h.pid,
                "ok"
            ),
            Err(e) => {
                tracing::debug!(op, opcode = h.opcode, unique = h.unique, nodeid = h.nodeid, fh, pid = h.pid, error = %e, "error")
            }
        }
        match result {
            Ok(Answer::Data(d)) => Some(wire::reply(h.unique, 0, &[&d])),
            Ok(Answer::Empty) => Some(wire::reply(h.unique, 0, &[])),
            Ok(Answer::NoReply) => None,
            Err(e) => Some(wire::reply_err(h.unique, e as i32)),
        }
    }

    fn malformed(&self, msg: &[u8], e: WireError) -> Option<Vec<u8>> {
        let header = wire::peek_header(msg);
        crate::warn_limited!(error = %e, len = msg.len(), opcode = header.map(|h| h.opcode), "malformed message");
        let h = header?;
        if no_reply(h.opcode) {
            return None;
        }
        Some(wire::reply_err(h.unique, Errno::EIO as i32))
    }

    fn operation(&self, req: &Request, fh: &mut Option<u64>) -> Result<Answer, Errno> {
        let h = &req.header;
        let cuse = matches!(self.role, Role::Cuse { .. });
        if !self.is_ready() && h.opcode != opcode::INIT && h.opcode != opcode::CUSE_INIT {
            return if no_reply(h.opcode) {
                Ok(Answer::NoReply)
            } else {
                Err(Errno::EIO)
            };
        }
        match h.opcode {
            opcode::INIT if !cuse => self.init(req),
            opcode::CUSE_INIT if cuse => self.cuse_init(req),
            opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT => Ok(Answer::NoReply),
            opcode::DESTROY | opcode::FLUSH => Ok(Answer::Empty),
            opcode::OPEN => self.open(req, fh),
            opcode::RELEASE | opcode::RELEASEDIR => self.release(req, fh),
            opcode::IOCTL => self.ioctl(req, fh),
            opcode::READ => self.read(req, fh),
            opcode::WRITE => self.write(req, fh),
            _ => match &self.role {
                Role::Fuse(t) => self.fs_operation(t, req, fh),
                Role::Cuse { .. } => Err(Errno::ENOSYS),
            },
        }
    }

    /// The operations only a filesystem has.
    fn fs_operation(&self, t: &Tree, req: &Request, fh: &mut Option<u64>) -> Result<Answer, Errno> {
        let h = &req.header;
        match h.opcode {
            opcode::LOOKUP => {
                let name = req.name().map_err(wire_err)?;
                let ino = t.lookup(h.nodeid, name).ok_or(Errno::ENOENT)?;
                let attr = self.attr(t, ino)?;
                let attr_valid = attr_ttl(t, ino);
                let e = wire::EntryOut {
                    nodeid: ino,
                    generation: 1,
                    entry_valid: STATIC_TTL,
                    attr_valid,
                    attr,
                    ..Default::default()
                };
                Ok(Answer::Data(e.as_bytes().to_vec()))
            }
            opcode::GETATTR | opcode::SETATTR => {
                if h.opcode == opcode::SETATTR {
                    self.setattr(t, req)?;
                }
                let attr = self.attr(t, h.nodeid)?;
                let attr_valid = attr_ttl(t, h.nodeid);
                let a = wire::AttrOut {
                    attr_valid,
                    attr,
                    ..Default::default()
                };
                Ok(Answer::Data(a.as_bytes().to_vec()))
            }
            opcode::OPENDIR => {
                if t.node(h.nodeid) != Some(Node::Dir) {
                    return Err(Errno::ENOTDIR);
                }
                let id = self.insert(Handle::Dir);
                *fh = Some(id);
                let o = wire::OpenOut {
                    fh: id,
                    ..Default::default()
                };
                Ok(Answer::Data(o.as_bytes().to_vec()))
            }
            opcode::READDIR => {
                let r: wire::ReadIn = req.arg().map_err(wire_err)?;
                *fh = Some(r.fh);
                let mut entries = vec![
                    (h.nodeid, tree::DT_DIR, b".".as_slice()),
                    (t.parent(h.nodeid), tree::DT_DIR, b"..".as_slice()),
                ];
                entries.extend(t.children(h.nodeid).ok_or(Errno::ENOTDIR)?);
                let max = (r.size as usize).min(wire::MAX_WRITE as usize);
                let mut buf = Vec::new();
                let start = usize::try_from(r.offset).unwrap_or(usize::MAX);
                for (i, (ino, typ, name)) in entries.into_iter().enumerate().skip(start) {
                    if !wire::push_dirent(&mut buf, max, ino, i as u64 + 1, typ, name) {
                        break;
                    }
                }
                Ok(Answer::Data(buf))
            }
            opcode::STATFS => {
                let s = wire::Kstatfs {
                    bsize: 4096,
                    frsize: 4096,
                    namelen: 255,
                    ..Default::default()
                };
                Ok(Answer::Data(s.as_bytes().to_vec()))
            }
            opcode::ACCESS => t.node(h.nodeid).map(|_| Answer::Empty).ok_or(Errno::ENOENT),
            _ => Err(Errno::ENOSYS),
        }
    }

    /// chmod/chown change a service file's permissions; truncation (open with O_TRUNC) and time
    /// updates are accepted and change nothing, as on a character device.
    fn setattr(&self, t: &Tree, req: &Request) -> Result<(), Errno> {
        let s: wire::SetattrIn = req.arg().map_err(wire_err)?;
        let pick = |bit: u32, v: u32| (s.valid & bit != 0).then_some(v);
        let (mode, uid, gid) = (
            pick(wire::FATTR_MODE, s.mode),
            pick(wire::FATTR_UID, s.uid),
            pick(wire::FATTR_GID, s.gid),
        );
        if s.valid & wire::FATTR_SIZE != 0 && s.size != 0 {
            return Err(Errno::EINVAL);
        }
        if mode.is_none() && uid.is_none() && gid.is_none() {
            return t.node(req.header.nodeid).map(|_| ()).ok_or(Errno::ENOENT);
        }
        t.set_perm(req.header.nodeid, req.header.uid, mode, uid, gid)
    }

    /// The status file reports size 0: its text is built only at open, on a worker (every read
    /// is direct I/O and goes to EOF), never on the reader for a stat.
    fn attr(&self, t: &Tree, ino: u64) -> Result<wire::Attr, Errno> {
        t.attr(ino, 0).ok_or(Errno::ENOENT)
    }

    fn init(&self, req: &Request) -> Result<Answer, Errno> {
        let i: wire::InitIn = req.arg().map_err(wire_err)?;
        if i.major < wire::KERNEL_VERSION {
            tracing::error!(
                major = i.major,
                minor = i.minor,
                "kernel FUSE protocol too old"
            );
            return Err(Errno::EPROTO);
        }
        let mut out = wire::InitOut {
            major: wire::KERNEL_VERSION,
            minor: wire::KERNEL_MINOR_VERSION,
            ..Default::default()
        };
        if i.major > wire::KERNEL_VERSION {
            // The kernel re-sends INIT with our major version.
            return Ok(Answer::Data(out.as_bytes()[..8].to_vec()));
        }
        let wanted = wire::FUSE_ASYNC_READ
            | wire::FUSE_BIG_WRITES
            | wire::FUSE_MAX_PAGES
            | wire::FUSE_PARALLEL_DIROPS;
        out.max_readahead = i.max_readahead;
        out.flags = i.flags & wanted;
        out.max_background = 64;
        out.congestion_threshold = 48;
        out.max_write = wire::MAX_WRITE;
        out.time_gran = 1;
        out.max_pages = MAX_PAGES;
        let offered = i.flags & wire::FUSE_INIT_EXT != 0
            && wire::init_flags2(req.body) & wire::FUSE_OVER_IO_URING_FLAGS2 != 0;
        let take = offered && self.uring_wanted.load(Ordering::SeqCst);
        if take {
            out.flags |= wire::FUSE_INIT_EXT;
            out.flags2 = wire::FUSE_OVER_IO_URING_FLAGS2;
        }
        self.uring_offered.store(offered, Ordering::SeqCst);
        self.uring_negotiated.store(take, Ordering::SeqCst);
        tracing::info!(
            kernel_minor = i.minor,
            flags = format_args!("{:#x}", out.flags),
            io_uring_offered = offered,
            io_uring = take,
            "FUSE INIT"
        );
        self.ready.send_replace(true);
        Ok(Answer::Data(out.as_bytes().to_vec()))
    }

    fn cuse_init(&self, req: &Request) -> Result<Answer, Errno> {
        let Role::Cuse { devname, .. } = &self.role else {
            return Err(Errno::ENOSYS);
        };
        let i: wire::CuseInitIn = req.arg().map_err(wire_err)?;
        if i.major != wire::KERNEL_VERSION || i.minor < wire::CUSE_MIN_MINOR {
            tracing::error!(
                major = i.major,
                minor = i.minor,
                "unsupported CUSE protocol"
            );
            return Err(Errno::EPROTO);
        }
        let out = wire::CuseInitOut {
            major: wire::KERNEL_VERSION,
            minor: wire::KERNEL_MINOR_VERSION,
            flags: wire::CUSE_UNRESTRICTED_IOCTL,
            max_read: wire::MAX_WRITE,
            max_write: wire::MAX_WRITE,
            ..Default::default()
        };
        let mut data = out.as_bytes().to_vec();
        data.extend_from_slice(b"DEVNAME=");
        data.extend_from_slice(devname.as_bytes());
        data.push(0);
        tracing::info!(devname, "CUSE INIT");
        self.ready.send_replace(true);
        Ok(Answer::Data(data))
    }

    fn insert(&self, h: Handle) -> u64 {
        let id = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, h);
        id
    }

    fn open(&self, req: &Request, fh: &mut Option<u64>) -> Result<Answer, Errno> {
        let o: wire::OpenIn = req.arg().map_err(wire_err)?;
        let node = match &self.role {
            Role::Cuse { node, .. } => Node::Service(node.clone()),
            Role::Fuse(t) => t.node(req.header.nodeid).ok_or(Errno::ENOENT)?,
        };
        let handle = match node {
            Node::Dir => return Err(Errno::EISDIR),
            Node::Status => {
                if o.flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
                    return Err(Errno::EACCES);
                }
                Handle::Status(
                    with_transport_status(&self.stats, self.service.status())
                        .into_bytes()
                        .into(),
                )
            }
            Node::Service(kind) => Handle::File(self.service.open_from(
                &kind,
                req.header.uid,
                req.header.pid,
            )?),
        };
        let id = self.insert(handle);
        self.openers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, req.header.uid);
        *fh = Some(id);
        let out = wire::OpenOut {
            fh: id,
            // NOFLUSH: close() of a node file never waits for us. The daemon may itself hold a
            // (transient) duplicate of a client's node fd; if it dies then, its exit must not wait
            // for a FLUSH answer that only it could give.
            open_flags: wire::FOPEN_DIRECT_IO | wire::FOPEN_NOFLUSH,
            backing_id: 0,
        };
        Ok(Answer::Data(out.as_bytes().to_vec()))
    }

    fn release(&self, req: &Request, fh: &mut Option<u64>) -> Result<Answer, Errno> {
        let r: wire::ReleaseIn = req.arg().map_err(wire_err)?;
        *fh = Some(r.fh);
        let removed = self.lock().remove(&r.fh);
        self.openers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&r.fh);
        match removed {
            Some(Handle::File(f)) => f.release(),
            Some(_) => {}
            None => crate::warn_limited!(fh = r.fh, "release of an unknown file handle"),
        }
        Ok(Answer::Empty)
    }

    fn file(&self, id: u64) -> Result<Handle, Errno> {
        match self.lock().get(&id) {
            Some(Handle::File(f)) => Ok(Handle::File(f.clone())),
            Some(Handle::Status(s)) => Ok(Handle::Status(s.clone())),
            Some(Handle::Dir) => Ok(Handle::Dir),
            None => Err(Errno::EBADF),
        }
    }

    /// The caller of a request that touches its memory; pid 0 or a vanished thread is EPERM.
    fn caller(&self, req: &Request) -> Result<Box<dyn CallerMemory>, Errno> {
        let pid = req.header.pid;
        self.callers.caller(pid).map_err(|e| {
            crate::warn_limited!(
                pid,
                op = wire::opcode_name(req.header.opcode),
                error = %e,
                "request from an invisible or vanished caller refused"
            );
            Errno::EPERM
        })
    }

    fn ioctl(&self, req: &Request, fh: &mut Option<u64>) -> Result<Answer, Errno> {
        let a: wire::IoctlIn = req.arg().map_err(wire_err)?;
        *fh = Some(a.fh);
        if a.flags & wire::FUSE_IOCTL_DIR != 0 {
            return Err(Errno::ENOTTY);
        }
        let Handle::File(f) = self.file(a.fh)? else {
            return Err(Errno::ENOTTY);
        };
        let mem = self.caller(req)?;
        // The caller waits in this request: pins in it may wait for its pages through it.
        let _held = crate::caller::RequestCaller::enter(&*mem);
        // Unrestricted (CUSE) or not, the argument is used raw and no retry is ever asked for.
        let r = f.ioctl(a.cmd, a.arg, &*mem)?;
        let result = i32::try_from(r).map_err(|_| {
            crate::warn_limited!(
                cmd = format_args!("{:#x}", a.cmd),
                r,
                "ioctl result does not fit an int"
            );
            Errno::EOVERFLOW
        })?;
        let out = wire::IoctlOut {
            result,
            ..Default::default()
        };
        Ok(Answer::Data(out.as_bytes().to_vec()))
    }

    fn read(&self, req: &Request, fh: &mut Option<u64>) -> Result<Answer, Errno> {
        let r: wire::ReadIn = req.arg().map_err(wire_err)?;
        *fh = Some(r.fh);
        let size = r.size.min(wire::MAX_WRITE);
        match self.file(r.fh)? {
            Handle::Dir => Err(Errno::EISDIR),
            Handle::Status(s) => {
                let start = usize::try_from(r.offset).unwrap_or(usize::MAX).min(s.len());
                let end = start.saturating_add(size as usize).min(s.len());
                Ok(Answer::Data(s[start..end].to_vec()))
            }
            Handle::File(f) => {
                let mem = self.caller(req)?;
                let mut data = f.read(r.offset, size, &*mem)?;
                data.truncate(size as usize);
                Ok(Answer::Data(data))
            }
        }
    }

    fn write(&self, req: &Request, fh: &mut Option<u64>) -> Result<Answer, Errno> {
        let (w, tail): (wire::WriteIn, _) = req.arg_and_tail().map_err(wire_err)?;
        *fh = Some(w.fh);
        let data = tail.get(..w.size as usize).ok_or(Errno::EINVAL)?;
        match self.file(w.fh)? {
            Handle::Dir => Err(Errno::EISDIR),
            Handle::Status(_) => Err(Errno::EBADF),
            Handle::File(f) => {
                let mem = self.caller(req)?;
                let n = f.write(w.offset, data, &*mem)?;
                let out = wire::WriteOut {
                    size: n.min(w.size),
                    padding: 0,
                };
                Ok(Answer::Data(out.as_bytes().to_vec()))
            }
        }
    }
}

/// How long the kernel may cache an inode's attributes: files an hour (their mode changes only
/// through SETATTR, whose reply refreshes the cache); the status file and directories never, so
/// that a stat of the mount of a dead daemon says ENOTCONN (path walks check directory modes
/// under `default_permissions` and would otherwise keep the root's attributes cached).
fn attr_ttl(t: &Tree, ino: u64) -> u64 {
    match t.node(ino) {
        Some(Node::Service(_)) => STATIC_TTL,
        _ => 0,
    }
}

/// Opcodes the kernel expects no answer to.
fn no_reply(op: u32) -> bool {
    matches!(
        op,
        opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT
    )
}

fn wire_err(e: WireError) -> Errno {
    crate::warn_limited!(error = %e, "malformed request arguments");
    Errno::EINVAL
}

/// Pages of the largest write (INIT's max_pages), in its u16.
#[expect(
    clippy::cast_possible_truncation,
    reason = "checked at compile time just below"
)]
const MAX_PAGES: u16 = (wire::MAX_WRITE / 4096) as u16;
const _: () = assert!(wire::MAX_WRITE / 4096 <= u16::MAX as u32);

#[cfg(test)]
#[path = "handler_tests.rs"]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests;
