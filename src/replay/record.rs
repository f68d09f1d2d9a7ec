//! Session recording: an [`IoctlObserver`] that writes each context's ioctls, with their results,
//! as a replayable script when the context is released (`uiommufd serve --record DIR`).
//!
//! Each ioctl's struct is read through the caller's memory before and after the call. Pointers are
//! turned back into named buffers: every pointer use notes the range it covers (as far as it is
//! readable); overlapping ranges merge into one buffer, declared at the top of the script, and
//! pointers become `&buffer+offset`. An unreadable pointer becomes a `prot: none` buffer (or the
//! literal value below 64 KiB) so that the replay fails the same way. IDs and automatically
//! allocated IOVAs returned by the daemon are saved in variables and referenced by later calls.

mod device;
mod objfd;
mod render;

use super::layout::{self, ArgKind, IoctlDef, Role, RANGE_SIZE};
use super::script::to_hex;
use crate::caller::CallerMemory;
use crate::dispatch::daemon::{BoundHandle, HandleIo, IoctlObserver};
use crate::dispatch::NodeKind;
use crate::narrow::{low_u32, usize_from};
use crate::objects::Context;
use nix::errno::Errno;
use objfd::FdOp;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use uiommufd_uapi::iommufd::{
    IOMMU_IOAS_COPY, IOMMU_IOAS_MAP, IOMMU_IOAS_MAP_FILE, IOMMU_IOAS_MAP_FIXED_IOVA,
};

const PAGE: u64 = 4096;
/// Largest struct (with trailing bytes) and pointer extent the recorder copies or follows.
const MAX_STRUCT: usize = 64 * 1024;
const MAX_EXTENT: u64 = 1 << 30;
/// Most bytes kept of an unknown ioctl's argument (what a replay step can build).
const MAX_UNKNOWN: usize = 32 * 1024;
const MAX_RANGES: u64 = 4096;
/// Pointers below this are never mappable (mmap_min_addr): recorded literally.
const LOW: u64 = 0x10000;

/// Writes one script per context into a directory.
pub struct Recorder {
    dir: PathBuf,
    sessions: Mutex<HashMap<u64, Session>>,
    /// Device files bound through a recorded BIND: (context, the device's name in its script).
    device_files: Mutex<HashMap<u64, (u64, DeviceRef)>>,
    /// Open files bound as object fds whose creation the script issues (by the file's context):
    /// (the context the object is in, the fd's name in its script).
    object_files: Mutex<HashMap<u64, (u64, String)>>,
}

struct Session {
    node: NodeKind,
    calls: Vec<Call>,
    /// Set when this open became an object's fd (`uiommufd launch`): its steps are in the
    /// script of the context the object is in.
    object_fd: bool,
    /// A UIOMMUFD_HANDLE_BIND of this file failed: it stays a context, written unless it made
    /// no call at all (the launcher's fresh file for an object that was refused).
    failed_bind: bool,
    /// Object fds made in this context so far (they are named `objfd1`, `objfd2`, ...).
    object_fds: usize,
    /// Bytes the calls kept so far; past [`MAX_SESSION_BYTES`] the rest of the session is not
    /// recorded (the script says so), so a client cannot grow the daemon without bound.
    bytes: usize,
    cut: bool,
}

/// Most bytes of structs and caller data one recorded session keeps.
const MAX_SESSION_BYTES: usize = 64 << 20;
/// What a call costs against [`MAX_SESSION_BYTES`] besides its data: a session of calls that
/// carry no bytes (failed binds, say) is bounded too.
const CALL_OVERHEAD: usize = 64;

impl Session {
    fn new(node: NodeKind) -> Self {
        Self {
            node,
            calls: Vec::new(),
            object_fd: false,
            failed_bind: false,
            object_fds: 0,
            bytes: 0,
            cut: false,
        }
    }

    /// Whether its script is written at release: not an object fd's (those steps are in their
    /// context's script), nor the empty session of a file whose bind was refused.
    fn is_written(&self) -> bool {
        !(self.object_fd || self.failed_bind && self.calls.is_empty())
    }

    /// Keeps `c` unless the session is past its size cap (then it is cut: nothing more is kept).
    /// True when kept.
    fn keep(&mut self, ctx: u64, c: Call) -> bool {
        let kept = CALL_OVERHEAD
            + c.before.as_ref().map_or(0, Vec::len)
            + c.after.as_ref().map_or(0, Vec::len)
            + c.data.iter().map(|(_, d)| d.len()).sum::<usize>()
            + c.fd_op.as_ref().map_or(0, |(_, op)| op.bytes());
        self.bytes = self.bytes.saturating_add(kept);
        if self.bytes > MAX_SESSION_BYTES {
            if !self.cut {
                crate::warn_limited!(
                    ctx,
                    "recorded session past its size cap; the rest is not recorded"
                );
            }
            self.cut = true;
        }
        if self.cut {
            return false;
        }
        self.calls.push(c);
        true
    }
}

/// One pointer use: where, and how many bytes from there were readable (0: none).
#[derive(Clone, Copy)]
struct PtrUse {
    addr: u64,
    readable: u64,
}

struct Call {
    cmd: u32,
    arg: u64,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
    result: Result<i64, Errno>,
    /// Pointer fields (by name), the arg (under "" when unreadable, "@" when partly readable) and
    /// accesses outside the struct (under "*").
    ptrs: Vec<(&'static str, PtrUse)>,
    ranges_in: Option<Vec<(u64, u64)>>,
    ranges_out: Option<Vec<(u64, u64)>>,
    /// Size of the file behind an IOAS_MAP_FILE fd.
    file_size: Option<u64>,
    /// Caller memory the daemon reads that the script must write first (partly readable arrays,
    /// data behind pointers).
    data: Vec<(u64, Vec<u8>)>,
    /// The first page of each caller access that failed, with its protection then: the replay
    /// protects it the same way for this call, so the call fails the same way.
    faults: Vec<(u64, PageProt)>,
    /// Not an ioctl: the object (ID, kind) an fd-returning ioctl made through `uiommufd launch`
    /// that the script cannot issue itself.
    object_fd: Option<(u32, String)>,
    /// The fd-returning ioctl made through `uiommufd launch`, rebuilt from what the launcher
    /// passed on: the name its returned fd gets in the script.
    fd_as: Option<String>,
    /// Not an ioctl: a read, write or close of an object fd (by its name in the script).
    fd_op: Option<(String, FdOp)>,
    /// The ioctl went to this device node, not to the context's fd.
    device: Option<DeviceRef>,
    /// Not an ioctl: the device node of this name was closed.
    device_closed: Option<String>,
}

/// A device node a session used: its node name (`vfio/devices/NODE`) and its open's name in the
/// script (the node name made a variable-like name, unique in the session).
#[derive(Clone, PartialEq, Eq)]
struct DeviceRef {
    node: String,
    handle: String,
}

/// What a faulting page allowed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PageProt {
    /// Unmapped or PROT_NONE.
    None,
    ReadOnly,
}

/// Most failed accesses kept per call (an ioctl stops at its first fault; a few suffice).
const MAX_FAULTS: usize = 8;

/// Caller memory as the ioctl sees it, noting what it reads from its argument onwards and every
/// access that failed.
struct Watched<'m> {
    mem: &'m dyn CallerMemory,
    arg: u64,
    /// End of the farthest read that started inside `[arg, arg + MAX_STRUCT)`.
    arg_read_end: std::sync::atomic::AtomicU64,
    failed: Mutex<Vec<(u64, u64, bool)>>,
    /// Every successful access: where, how long, and for reads the bytes (while the call's
    /// budget of [`MAX_CAPTURE`] lasts).
    touched: Mutex<Touched>,
}

/// Caller memory one call accessed, for the buffers and the data a replay must set up.
#[derive(Default)]
struct Touched {
    accesses: Vec<(u64, u64, Option<Vec<u8>>)>,
    captured: usize,
}

/// Most bytes of reads kept per call (beyond, a read still shapes the buffers, without data).
const MAX_CAPTURE: usize = 64 * 1024;
const MAX_ACCESSES: usize = 256;

impl Watched<'_> {
    fn note(&self, addr: u64, len: usize, write: bool, ok: bool) {
        if !write && addr.wrapping_sub(self.arg) < MAX_STRUCT as u64 {
            let end = addr.saturating_add(len as u64);
            self.arg_read_end
                .fetch_max(end, std::sync::atomic::Ordering::Relaxed);
        }
        if !ok {
            if let Ok(mut f) = self.failed.lock() {
                if f.len() < MAX_FAULTS {
                    f.push((addr, len as u64, write));
                }
            }
        }
    }

    fn note_touched(&self, addr: u64, len: usize, read: Option<&[u8]>) {
        // The struct itself (its size word and body, read from the argument) is kept apart.
        if addr == self.arg {
            return;
        }
        let Ok(mut t) = self.touched.lock() else {
            return;
        };
        if t.accesses.len() >= MAX_ACCESSES || len == 0 {
            return;
        }
        let keep = read.filter(|b| t.captured + b.len() <= MAX_CAPTURE);
        t.captured += keep.map_or(0, <[u8]>::len);
        t.accesses
            .push((addr, len as u64, keep.map(<[u8]>::to_vec)));
    }
}

impl CallerMemory for Watched<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let r = self.mem.read(addr, buf);
        self.note(addr, buf.len(), false, r.is_ok());
        if r.is_ok() {
            self.note_touched(addr, buf.len(), Some(buf));
        }
        r
    }
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        let r = self.mem.write(addr, buf);
        self.note(addr, buf.len(), true, r.is_ok());
        if r.is_ok() {
            self.note_touched(addr, buf.len(), None);
        }
        r
    }
    fn pid(&self) -> i32 {
        self.mem.pid()
    }
    fn get_fd(&self, fd: i32) -> Result<std::os::fd::OwnedFd, Errno> {
        self.mem.get_fd(fd)
    }
    fn tid(&self) -> i32 {
        self.mem.tid()
    }
    fn credentials(&self) -> Result<crate::caller::Credentials, Errno> {
        self.mem.credentials()
    }
    fn capable(&self, cap: u32) -> bool {
        self.mem.capable(cap)
    }
}

/// The protection of each mapping of process `pid`: (start, end, readable, writable).
fn mappings(pid: i32) -> Vec<(u64, u64, bool, bool)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let perms = rest.as_bytes();
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                perms.first() == Some(&b'r'),
                perms.get(1) == Some(&b'w'),
            ))
        })
        .collect()
}

/// The first page of `[addr, addr + len)` that does not allow the access, and what it allows.
fn faulting_page(
    maps: &[(u64, u64, bool, bool)],
    addr: u64,
    len: u64,
    write: bool,
) -> Option<(u64, PageProt)> {
    let last = addr.saturating_add(len.max(1) - 1) / PAGE;
    (addr / PAGE..=last)
        .take(MAX_STRUCT / usize_from(PAGE) + 2)
        .find_map(|pg| {
            let at = pg * PAGE;
            let m = maps.iter().find(|m| at >= m.0 && at < m.1);
            match m {
                None | Some((_, _, false, _)) => Some((at, PageProt::None)),
                Some((_, _, true, false)) if write => Some((at, PageProt::ReadOnly)),
                _ => None,
            }
        })
}

impl Recorder {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            sessions: Mutex::new(HashMap::new()),
            device_files: Mutex::new(HashMap::new()),
            object_files: Mutex::new(HashMap::new()),
        })
    }

    fn path_for(&self, ctx: u64) -> PathBuf {
        self.dir
            .join(format!("uiommufd-{}-ctx{ctx}.jsonl", std::process::id()))
    }
}

impl IoctlObserver for Recorder {
    fn open(&self, ctx: &Context, node: &NodeKind) {
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(ctx.id, Session::new(node.clone()));
        }
    }

    fn ioctl(
        &self,
        ctx: &Context,
        cmd: u32,
        arg: u64,
        mem: &dyn CallerMemory,
        call: &mut dyn FnMut(&dyn CallerMemory) -> Result<i64, Errno>,
    ) -> Result<i64, Errno> {
        let def = layout::by_cmd(cmd);
        let mut c = Call::new(cmd, arg);
        let is_struct = def.is_none_or(|d| d.kind == ArgKind::Struct);
        if is_struct {
            capture_before(&mut c, def, mem);
        }
        let watched = Watched {
            mem,
            arg,
            arg_read_end: std::sync::atomic::AtomicU64::new(arg),
            failed: Mutex::new(Vec::new()),
            touched: Mutex::new(Touched::default()),
        };
        c.result = call(&watched);
        let touched = watched.touched.into_inner().unwrap_or_default();
        note_outside_struct(&mut c, touched);
        let failed = watched.failed.into_inner().unwrap_or_default();
        if !failed.is_empty() {
            let maps = mappings(mem.pid());
            for (addr, len, write) in failed {
                if let Some(f) = faulting_page(&maps, addr, len, write) {
                    if !c.faults.contains(&f) {
                        c.faults.push(f);
                    }
                }
            }
        }
        if def.is_none() {
            let read = watched.arg_read_end.into_inner() - arg;
            trim_unknown(&mut c, read);
        }
        if let Some(b) = &c.before {
            let mut after = vec![0u8; b.len()];
            if mem.read(arg, &mut after).is_ok() {
                if let Some(d) = def {
                    c.ranges_out = ranges_out(d, b, &after, mem);
                }
                c.after = Some(after);
            }
        }
        let result = c.result;
        self.push_call(ctx.id, c);
        result
    }

    fn release(&self, ctx: &Context) {
        let session = self
            .sessions
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&ctx.id));
        if let Some(s) = session.filter(Session::is_written) {
            let path = self.path_for(ctx.id);
            if let Err(e) = std::fs::write(&path, render::render(ctx.id, &s)) {
                tracing::warn!(path = %path.display(), %e, "cannot write the recorded session");
            } else {
                tracing::info!(path = %path.display(), calls = s.calls.len(), "session recorded");
            }
        }
    }
    fn device_ioctl(
        &self,
        device: &str,
        file: u64,
        cmd: u32,
        arg: u64,
        mem: &dyn CallerMemory,
        call: &mut dyn FnMut(&dyn CallerMemory) -> Result<i64, Errno>,
        bound_context: &dyn Fn() -> Option<u64>,
    ) -> Result<i64, Errno> {
        self.record_device_ioctl(device, file, cmd, arg, mem, call, bound_context)
    }

    fn device_release(&self, file: u64) {
        self.record_device_release(file);
    }

    fn handle_bound(&self, file_ctx: u64, origin: u64, bound: &BoundHandle) {
        self.record_handle_bound(file_ctx, origin, bound);
    }

    fn handle_io(&self, file_ctx: u64, io: HandleIo<'_>) {
        self.record_handle_io(file_ctx, io);
    }
}

impl Recorder {
    /// Appends `c` to context `ctx`'s session, within the session's size cap.
    fn push_call(&self, ctx: u64, c: Call) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(s) = s.get_mut(&ctx) {
                s.keep(ctx, c);
            }
        }
    }
}

impl Call {
    /// An ioctl `cmd` on `arg`, nothing noted yet.
    fn new(cmd: u32, arg: u64) -> Self {
        Call {
            cmd,
            arg,
            before: None,
            after: None,
            result: Ok(0),
            ptrs: Vec::new(),
            ranges_in: None,
            ranges_out: None,
            file_size: None,
            data: Vec::new(),
            faults: Vec::new(),
            object_fd: None,
            fd_as: None,
            fd_op: None,
            device: None,
            device_closed: None,
        }
    }

    /// Whether the call accessed `addr` outside its struct (an integer field holding it is a
    /// pointer).
    fn points_outside_struct(&self, addr: u64) -> bool {
        self.ptrs
            .iter()
            .any(|(n, p)| *n == "*" && addr >= p.addr && addr - p.addr < p.readable)
    }

    /// A marker for an object made with an fd through `uiommufd launch`: the program's ioctl went
    /// to the launcher, which had the daemon bind the object to a fresh open file.
    fn object_fd(object_id: u32, what: &str) -> Self {
        Call {
            object_fd: Some((object_id, what.to_string())),
            ..Call::new(0, 0)
        }
    }
}

/// Caller memory the call accessed outside its struct (through pointers, including ones the
/// table knows only as integers: HWPT_INVALIDATE's `data_uptr`, GET_DIRTY_BITMAP's `data`, a test
/// op's `uptr`): each range shapes a buffer, and what was read is written there before the replayed
/// call (driver data, invalidation entries), so the replay reads the same bytes.
fn note_outside_struct(c: &mut Call, touched: Touched) {
    let struct_end = c
        .arg
        .saturating_add(c.before.as_ref().map_or(0, |b| b.len() as u64));
    for (addr, len, bytes) in touched.accesses {
        if addr >= c.arg && addr.saturating_add(len) <= struct_end {
            continue;
        }
        c.ptrs.push((
            "*",
            PtrUse {
                addr,
                readable: len,
            },
        ));
        if let Some(b) = bytes {
            if !c.data.iter().any(|(a, d)| *a == addr && *d == b) {
                c.data.push((addr, b));
            }
        }
    }
}

fn readable(mem: &dyn CallerMemory, addr: u64) -> bool {
    mem.read(addr, &mut [0u8]).is_ok()
}

/// How many bytes from `addr` (up to `len`) are readable, assuming a readable prefix.
fn probe(mem: &dyn CallerMemory, addr: u64, len: u64) -> PtrUse {
    let len = len.clamp(1, MAX_EXTENT);
    if !readable(mem, addr) {
        return PtrUse { addr, readable: 0 };
    }
    let end = addr.saturating_add(len);
    if readable(mem, end - 1) {
        return PtrUse {
            addr,
            readable: len,
        };
    }
    // Binary search for the first unreadable page after `addr`.
    let (mut lo, mut hi) = (addr / PAGE + 1, (end - 1) / PAGE);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if readable(mem, mid * PAGE) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    PtrUse {
        addr,
        readable: lo * PAGE - addr,
    }
}

/// How many bytes from `addr` (up to `len`, a few pages) are readable, page by page: unlike
/// [`probe`], right even when readable memory follows the first hole.
fn readable_prefix(mem: &dyn CallerMemory, addr: u64, len: u64) -> PtrUse {
    let end = addr.saturating_add(len);
    let mut at = addr;
    while at < end && readable(mem, at) {
        at = (at / PAGE + 1) * PAGE;
    }
    PtrUse {
        addr,
        readable: at.min(end) - addr,
    }
}

fn read_ranges(mem: &dyn CallerMemory, ptr: u64, n: u64) -> Option<Vec<(u64, u64)>> {
    let mut raw = vec![0u8; (n.min(MAX_RANGES) as usize) * RANGE_SIZE];
    mem.read(ptr, &mut raw).ok()?;
    Some(
        raw.chunks_exact(RANGE_SIZE)
            .map(|c| (ne(&c[..8]), ne(&c[8..])))
            .collect(),
    )
}

fn ne(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_ne_bytes(a)
}

fn capture_before(c: &mut Call, def: Option<&IoctlDef>, mem: &dyn CallerMemory) {
    let mut size = [0u8; 4];
    if mem.read(c.arg, &mut size).is_err() {
        c.ptrs.push((
            "",
            PtrUse {
                addr: c.arg,
                readable: 0,
            },
        ));
        return;
    }
    let Some(d) = def else {
        // Unknown to the table: keep what the daemon may read (trimmed after the call).
        let p = readable_prefix(mem, c.arg, MAX_UNKNOWN as u64);
        let mut b = vec![0u8; usize_from(p.readable)];
        if mem.read(c.arg, &mut b).is_ok() {
            if p.readable < MAX_UNKNOWN as u64 {
                c.ptrs.push(("@", p));
            }
            c.before = Some(b);
        }
        return;
    };
    let user = u32::from_ne_bytes(size) as usize;
    let want = d.size.max(user).min(MAX_STRUCT);
    let mut b = vec![0u8; want];
    if mem.read(c.arg, &mut b).is_err() {
        // The struct runs into unmapped memory: keep what is readable and where it sits.
        let p = probe(mem, c.arg, want as u64);
        c.ptrs.push(("@", p));
        note_struct_end(c, p.readable);
        b = vec![0u8; usize_from(p.readable)];
        if mem.read(c.arg, &mut b).is_err() {
            return;
        }
        b.resize(d.size, 0);
    }
    for f in &d.fields {
        let v = super::exec::get(&b, *f);
        match f.role {
            Role::Ptr { len } => {
                let n = d.field(len).map_or(0, |lf| super::exec::get(&b, *lf));
                c.ptrs.push((f.name, probe(mem, v, n)));
            }
            Role::Ranges { count, input } => {
                let n = d.field(count).map_or(0, |cf| super::exec::get(&b, *cf));
                if input && n > 0 {
                    c.ranges_in = read_ranges(mem, v, n);
                }
                if n > 0 && c.ranges_in.is_none() {
                    let len = n.min(MAX_RANGES) * RANGE_SIZE as u64;
                    let p = probe(mem, v, len);
                    c.ptrs.push((f.name, p));
                    let mut prefix = vec![0u8; usize_from(p.readable.min(len))];
                    if input && !prefix.is_empty() && mem.read(v, &mut prefix).is_ok() {
                        c.data.push((v, prefix));
                    }
                }
            }
            Role::Fd => {
                if let Ok(fd) = mem.get_fd(low_u32(v).cast_signed()) {
                    c.file_size = rustix::fs::fstat(&fd).ok().map(|st| st.st_size as u64);
                }
            }
            _ => {}
        }
    }
    c.before = Some(b);
}

/// Cuts an unknown ioctl's bytes to what its call may read: what the daemon read, or what the
/// size word says (a kernel that knows the number reads that much), at least the size word. A
/// struct that runs into unreadable memory keeps its place there ("at"), so it faults the same.
fn trim_unknown(c: &mut Call, daemon_read: u64) {
    let Some(b) = &mut c.before else { return };
    let size_word = b
        .get(..4)
        .map_or(0, |w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64);
    let want = usize_from(daemon_read.max(size_word.min(MAX_UNKNOWN as u64)).max(4));
    if want <= b.len() {
        b.truncate(want);
        c.ptrs.retain(|(n, _)| *n != "@");
    } else {
        let readable = b.len() as u64;
        note_struct_end(c, readable);
    }
}

/// The struct at the call's argument is readable for `readable` bytes only: the page after them
/// must be unreadable in the replay too (a guard page, or a hole in a buffer used elsewhere).
fn note_struct_end(c: &mut Call, readable: u64) {
    let page = c.arg.saturating_add(readable).next_multiple_of(PAGE);
    if !c.faults.contains(&(page, PageProt::None)) {
        c.faults.push((page, PageProt::None));
    }
}

fn ranges_out(
    d: &IoctlDef,
    before: &[u8],
    after: &[u8],
    mem: &dyn CallerMemory,
) -> Option<Vec<(u64, u64)>> {
    let f = d
        .fields
        .iter()
        .find(|f| matches!(f.role, Role::Ranges { input: false, .. }))?;
    let Role::Ranges { count, .. } = f.role else {
        return None;
    };
    let cf = *d.field(count)?;
    let n = super::exec::get(before, cf).min(super::exec::get(after, cf));
    read_ranges(mem, super::exec::get(before, *f), n)
}
