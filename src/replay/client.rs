//! The processes a script drives: the replay process itself, and forked children ("clients").
//!
//! Memory of every client is reached with process_vm_readv/writev ([`ProcessMemory`]), so the
//! runner reads and writes a child's structs without its help. A child only runs what must happen
//! in its own process: mmap, open, close and, against a real node, ioctl. Against the in-process
//! daemon the runner issues the child's ioctls itself, with the child's memory as caller memory.

use super::script::{BufProt, BufferSpec, Fill, Node};
use crate::caller::{CallerMemory, ProcessMemory};
use crate::narrow::usize_from;
use crate::service::{NodeKind, OpenFile, Service};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

/// Where ioctls go.
#[derive(Clone)]
pub enum Mode {
    /// Real syscalls on the nodes at these paths.
    Real { iommu: PathBuf, vfio: PathBuf },
    /// Straight into a daemon in this process.
    InProcess(Arc<dyn Service>),
}

/// A buffer of a client.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u64,
    /// The memfd behind the buffer, as a descriptor number of the client's process.
    pub fd: Option<i32>,
}

/// An open node of a client.
#[derive(Clone)]
pub enum Handle {
    /// A descriptor of the replay process.
    Fd(Arc<OwnedFd>),
    /// A descriptor number in a child's process.
    ChildFd(i32),
    /// A file of the in-process daemon, released when the last client lets go of it.
    InProc(Arc<InProcFile>),
}

pub struct InProcFile(Arc<dyn OpenFile>);

impl Drop for InProcFile {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One client: a process, its open nodes and its buffers.
pub struct Client {
    proc_: Proc,
    pub handles: HashMap<String, Handle>,
    pub buffers: HashMap<String, Buf>,
    /// Where structs are built (64 KiB); arrays go to its second half.
    pub scratch: u64,
}

pub const SCRATCH: u64 = 64 * 1024;

enum Proc {
    Local(Local),
    Child(Child),
}

/// Mappings of the replay process, unmapped when the client goes.
#[derive(Default)]
struct Local {
    maps: Vec<(u64, u64)>,
    memfds: Vec<OwnedFd>,
}

impl Drop for Local {
    fn drop(&mut self) {
        for &(addr, len) in &self.maps {
            crate::sys::mem::unmap_guarded(addr, len);
        }
    }
}

struct Child {
    pid: i32,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
}

#[derive(Serialize, Deserialize)]
enum Req {
    Alloc {
        size: u64,
        memfd: bool,
        fill: Fill,
        prot: BufProt,
    },
    Free {
        addr: u64,
        len: u64,
    },
    Open {
        path: PathBuf,
    },
    Close {
        fd: i32,
    },
    Ioctl {
        fd: i32,
        cmd: u32,
        arg: u64,
    },
    Read {
        fd: i32,
        size: u64,
    },
    Write {
        fd: i32,
        bytes: Vec<u8>,
    },
    Protect {
        addr: u64,
        len: u64,
        prot: BufProt,
    },
    Exit,
}

#[derive(Serialize, Deserialize)]
enum Resp {
    Buf { addr: u64, fd: Option<i32> },
    Ret(i64),
    Bytes(Vec<u8>),
    Errno(i32),
    Error(String),
    Done,
}

impl Child {
    fn call(&mut self, req: &Req) -> Result<Resp, String> {
        let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
        line.push('\n');
        self.to
            .write_all(line.as_bytes())
            .map_err(|e| format!("client process {}: {e}", self.pid))?;
        let mut answer = String::new();
        match self.from.read_line(&mut answer) {
            Ok(n) if n > 0 => serde_json::from_str(&answer).map_err(|e| e.to_string()),
            _ => Err(format!("client process {} is gone", self.pid)),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.call(&Req::Exit);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
    }
}

impl Client {
    /// The replay process itself.
    pub fn local() -> Result<Self, String> {
        let mut c = Client {
            proc_: Proc::Local(Local::default()),
            handles: HashMap::new(),
            buffers: HashMap::new(),
            scratch: 0,
        };
        c.scratch = c.alloc(&scratch_spec())?.addr;
        Ok(c)
    }

    /// The client's memory as the daemon sees it.
    pub fn mem(&self) -> Result<ProcessMemory, String> {
        match &self.proc_ {
            Proc::Local(_) => Ok(ProcessMemory::current()),
            Proc::Child(c) => {
                ProcessMemory::new(c.pid).map_err(|e| format!("client process {}: {e}", c.pid))
            }
        }
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), String> {
        self.mem()?
            .write(addr, bytes)
            .map_err(|e| format!("cannot write {} bytes at {addr:#x}: {e}", bytes.len()))
    }

    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        self.mem()?
            .read(addr, &mut buf)
            .map_err(|e| format!("cannot read {len} bytes at {addr:#x}: {e}"))?;
        Ok(buf)
    }

    /// As much of `len` bytes at `addr` as can be read: the whole, or up to the first page that
    /// cannot be (unmapped or PROT_NONE).
    pub fn read_prefix(&self, addr: u64, len: usize) -> Vec<u8> {
        if let Ok(all) = self.read(addr, len) {
            return all;
        }
        let mut out = Vec::new();
        let mut at = addr;
        while out.len() < len {
            let chunk = usize_from(4096 - at % 4096).min(len - out.len());
            match self.read(at, chunk) {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => break,
            }
            at = at.wrapping_add(chunk as u64);
        }
        out
    }

    pub fn alloc(&mut self, spec: &BufferSpec) -> Result<Buf, String> {
        match &mut self.proc_ {
            Proc::Local(l) => {
                let (addr, fd) = map_buffer(spec)?;
                l.maps.push((addr, mapped_len(spec.size)));
                let raw = fd.as_ref().map(|f| f.as_raw_fd());
                l.memfds.extend(fd);
                Ok(Buf {
                    addr,
                    len: spec.size,
                    fd: raw,
                })
            }
            Proc::Child(c) => match c.call(&Req::Alloc {
                size: spec.size,
                memfd: spec.memfd,
                fill: spec.fill,
                prot: spec.prot,
            })? {
                Resp::Buf { addr, fd } => Ok(Buf {
                    addr,
                    len: spec.size,
                    fd,
                }),
                Resp::Error(e) => Err(e),
                _ => Err("unexpected answer from a client process".into()),
            },
        }
    }

    /// Sets the protection of `len` bytes at `addr`: whole pages inside one of the buffers.
    pub fn protect(&mut self, addr: u64, len: u64, prot: BufProt) -> Result<(), String> {
        let inside = self.buffers.values().any(|b| {
            addr >= b.addr
                && addr
                    .checked_add(len)
                    .is_some_and(|end| end <= b.addr + b.len.next_multiple_of(4096))
        });
        if !inside || !addr.is_multiple_of(4096) || len == 0 || !len.is_multiple_of(4096) {
            return Err(format!(
                "protect {addr:#x}+{len:#x}: not whole pages of one buffer"
            ));
        }
        match &mut self.proc_ {
            Proc::Local(_) => protect_pages(addr, len, prot),
            Proc::Child(c) => match c.call(&Req::Protect { addr, len, prot })? {
                Resp::Done => Ok(()),
                Resp::Error(e) => Err(e),
                _ => Err("unexpected answer from a client process".into()),
            },
        }
    }

    pub fn free(&mut self, buf: Buf) -> Result<(), String> {
        match &mut self.proc_ {
            Proc::Local(l) => {
                if let Some(i) = l.maps.iter().position(|&(a, _)| a == buf.addr) {
                    let (addr, len) = l.maps.swap_remove(i);
                    crate::sys::mem::unmap_guarded(addr, len);
                }
                Ok(())
            }
            Proc::Child(c) => c
                .call(&Req::Free {
                    addr: buf.addr,
                    len: buf.len,
                })
                .map(|_| ()),
        }
    }

    pub fn open(&mut self, mode: &Mode, node: &Node) -> Result<Result<Handle, Errno>, String> {
        match mode {
            Mode::InProcess(svc) => {
                let kind = match node {
                    Node::Iommu => NodeKind::Iommu,
                    Node::Vfio => NodeKind::VfioContainer,
                    Node::Device(name) => NodeKind::Device(name.clone()),
                };
                Ok(svc
                    .open(&kind)
                    .map(|f| Handle::InProc(Arc::new(InProcFile(f)))))
            }
            Mode::Real { iommu, vfio } => {
                let path = match node {
                    Node::Iommu => iommu.clone(),
                    Node::Vfio => vfio.clone(),
                    Node::Device(name) => iommu
                        .parent()
                        .unwrap_or(std::path::Path::new("/"))
                        .join("vfio/devices")
                        .join(name),
                };
                match &mut self.proc_ {
                    Proc::Local(_) => Ok(open_path(&path).map(|f| Handle::Fd(Arc::new(f)))),
                    Proc::Child(c) => match c.call(&Req::Open { path })? {
                        Resp::Ret(fd) => Ok(Ok(Handle::ChildFd(
                            i32::try_from(fd).map_err(|_| "a client process answered a bad fd")?,
                        ))),
                        Resp::Errno(e) => Ok(Err(Errno::from_raw(e))),
                        _ => Err("unexpected answer from a client process".into()),
                    },
                }
            }
        }
    }

    pub fn close(&mut self, h: Handle) -> Result<(), String> {
        match (h, &mut self.proc_) {
            (Handle::ChildFd(fd), Proc::Child(c)) => c.call(&Req::Close { fd }).map(|_| ()),
            _ => Ok(()),
        }
    }

    pub fn ioctl(&mut self, h: &Handle, cmd: u32, arg: u64) -> Result<Result<i64, Errno>, String> {
        match h {
            Handle::Fd(fd) => Ok(ioctl_script(fd.as_raw_fd(), cmd, arg)),
            Handle::InProc(f) => Ok(f.0.ioctl(cmd, arg, &self.mem()?)),
            Handle::ChildFd(fd) => match &mut self.proc_ {
                Proc::Child(c) => match c.call(&Req::Ioctl { fd: *fd, cmd, arg })? {
                    Resp::Ret(r) => Ok(Ok(r)),
                    Resp::Errno(e) => Ok(Err(Errno::from_raw(e))),
                    _ => Err("unexpected answer from a client process".into()),
                },
                Proc::Local(_) => Err("descriptor of another process".into()),
            },
        }
    }

    /// read(2) of up to `size` bytes on an open.
    pub fn read_fd(&mut self, h: &Handle, size: u64) -> Result<Result<Vec<u8>, Errno>, String> {
        match h {
            Handle::Fd(fd) => Ok(read_script(fd.as_raw_fd(), usize_from(size))),
            Handle::InProc(f) => Ok(f.0.read(0, low_size(size), &self.mem()?)),
            Handle::ChildFd(fd) => match self.child()?.call(&Req::Read { fd: *fd, size })? {
                Resp::Bytes(b) => Ok(Ok(b)),
                Resp::Errno(e) => Ok(Err(Errno::from_raw(e))),
                _ => Err("unexpected answer from a client process".into()),
            },
        }
    }

    /// write(2) of `bytes` on an open; the bytes written.
    pub fn write_fd(&mut self, h: &Handle, bytes: &[u8]) -> Result<Result<i64, Errno>, String> {
        match h {
            Handle::Fd(fd) => Ok(write_script(fd.as_raw_fd(), bytes)),
            Handle::InProc(f) => Ok(f.0.write(0, bytes, &self.mem()?).map(i64::from)),
            Handle::ChildFd(fd) => {
                let req = Req::Write {
                    fd: *fd,
                    bytes: bytes.to_vec(),
                };
                match self.child()?.call(&req)? {
                    Resp::Ret(r) => Ok(Ok(r)),
                    Resp::Errno(e) => Ok(Err(Errno::from_raw(e))),
                    _ => Err("unexpected answer from a client process".into()),
                }
            }
        }
    }

    /// The open behind fd number `fd`, which a call of this client just returned (an object fd).
    /// A number that cannot be a new fd (the standard streams, or one of this client's own
    /// opens: a script saying `"ret"` of an ioctl that returns no fd) is refused, so no fd gets
    /// two owners.
    pub fn returned_fd(&self, mode: &Mode, fd: u64) -> Result<Handle, String> {
        let n = i32::try_from(fd).map_err(|_| format!("{fd:#x} is no fd"))?;
        let owned = self.handles.values().any(|h| match h {
            Handle::Fd(f) => f.as_raw_fd() == n,
            Handle::ChildFd(c) => *c == n,
            Handle::InProc(_) => false,
        });
        if n <= 2 || owned {
            return Err(format!("fd {n} is not a new fd of this call"));
        }
        match (mode, &self.proc_) {
            (Mode::InProcess(_), _) => {
                Err("an in-process daemon returns no fds (run against a node)".into())
            }
            (Mode::Real { .. }, Proc::Local(_)) => crate::sys::fd::adopt_returned(n)
                .map(|f| Handle::Fd(Arc::new(f)))
                .map_err(|e| format!("fd {n} returned: {e}")),
            (Mode::Real { .. }, Proc::Child(_)) => Ok(Handle::ChildFd(n)),
        }
    }

    fn child(&mut self) -> Result<&mut Child, String> {
        match &mut self.proc_ {
            Proc::Child(c) => Ok(c),
            Proc::Local(_) => Err("descriptor of another process".into()),
        }
    }

    /// Forks a child client that inherits this client's memory, buffers and open nodes.
    pub fn fork(&self) -> Result<Client, String> {
        if !matches!(self.proc_, Proc::Local(_)) {
            return Err("only the main client can fork".into());
        }
        let (down_r, down_w) = nix::unistd::pipe().map_err(|e| e.to_string())?;
        let (up_r, up_w) = nix::unistd::pipe().map_err(|e| e.to_string())?;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        match crate::sys::process::fork_single_threaded().map_err(|e| e.to_string())? {
            nix::unistd::ForkResult::Child => {
                drop(down_w);
                drop(up_r);
                child_loop(down_r, up_w)
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(down_r);
                drop(up_w);
                let handles = self
                    .handles
                    .iter()
                    .map(|(k, h)| {
                        let h = match h {
                            Handle::Fd(fd) => Handle::ChildFd(fd.as_raw_fd()),
                            other => other.clone(),
                        };
                        (k.clone(), h)
                    })
                    .collect();
                Ok(Client {
                    proc_: Proc::Child(Child {
                        pid: child.as_raw(),
                        to: std::fs::File::from(down_w),
                        from: BufReader::new(std::fs::File::from(up_r)),
                    }),
                    handles,
                    buffers: self.buffers.clone(),
                    scratch: self.scratch,
                })
            }
        }
    }
}

fn scratch_spec() -> BufferSpec {
    BufferSpec {
        name: String::new(),
        size: SCRATCH,
        memfd: false,
        fill: Fill::Zero,
        prot: BufProt::ReadWrite,
    }
}

fn open_path(path: &std::path::Path) -> Result<OwnedFd, Errno> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

use crate::sys::ioctl::{ioctl_script, read_script, write_script};

fn low_size(size: u64) -> u32 {
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// Where buffers start: an odd multiple of this (its lowest set bit, exactly). The IOVA an
/// IOMMU_IOAS_MAP without FIXED_IOVA gets is aligned like its user address (the kernel's rule, and
/// ours), so with ASLR's placement two runs of one script would get different IOVAs.
pub const BUFFER_PLACEMENT: u64 = 1 << 20;

/// The length of a buffer's mapping with its guard page.
fn mapped_len(size: u64) -> u64 {
    size.next_multiple_of(4096) + 4096
}

/// The mprotect flags of a buffer protection.
fn prot_flags(prot: BufProt) -> libc::c_int {
    match prot {
        BufProt::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        BufProt::ReadOnly => libc::PROT_READ,
        BufProt::None => libc::PROT_NONE,
    }
}

/// Sets the protection of pages of a buffer of this process (checked by the caller).
fn protect_pages(addr: u64, len: u64, prot: BufProt) -> Result<(), String> {
    crate::sys::mem::protect_guarded(addr, usize_from(len), prot_flags(prot))
        .map_err(|e| format!("mprotect: {e}"))
}

/// Maps a buffer of this process, fills it and sets its protection.
fn map_buffer(spec: &BufferSpec) -> Result<(u64, Option<OwnedFd>), String> {
    let len = usize_from(spec.size);
    let memfd = if spec.memfd {
        let fd = rustix::fs::memfd_create("uiommufd-replay", rustix::fs::MemfdFlags::empty())
            .map_err(|e| format!("memfd_create: {e}"))?;
        rustix::fs::ftruncate(&fd, spec.size).map_err(|e| format!("ftruncate: {e}"))?;
        Some(fd)
    } else {
        None
    };
    let addr = crate::sys::mem::map_guarded(
        len,
        memfd.as_ref().map(|f| f.as_fd()),
        usize_from(BUFFER_PLACEMENT),
    )
    .map_err(|e| format!("mapping {len} bytes: {e}"))?;
    let fill: Option<Vec<u8>> = match spec.fill {
        Fill::Zero => None,
        Fill::Byte(b) => Some(vec![b; len]),
        Fill::Seq => Some((0..=u8::MAX).cycle().take(len).collect()),
    };
    if let Some(bytes) = fill {
        ProcessMemory::current()
            .write(addr, &bytes)
            .map_err(|e| format!("filling the buffer: {e}"))?;
    }
    if spec.prot != BufProt::ReadWrite {
        crate::sys::mem::protect_guarded(addr, len, prot_flags(spec.prot))
            .map_err(|e| format!("mprotect: {e}"))?;
    }
    Ok((addr, memfd))
}

/// The body of a forked client: serve requests until told to exit, then _exit.
fn child_loop(from: OwnedFd, to: OwnedFd) -> ! {
    let mut from = BufReader::new(std::fs::File::from(from));
    let mut to = std::fs::File::from(to);
    let mut keep: Vec<OwnedFd> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if !matches!(from.read_line(&mut line), Ok(n) if n > 0) {
            break;
        }
        let resp = match serde_json::from_str::<Req>(&line) {
            Err(e) => Resp::Error(e.to_string()),
            Ok(Req::Exit) => {
                let _ = to.write_all(b"\"Done\"\n");
                break;
            }
            Ok(Req::Alloc {
                size,
                memfd,
                fill,
                prot,
            }) => {
                let spec = BufferSpec {
                    name: String::new(),
                    size,
                    memfd,
                    fill,
                    prot,
                };
                match map_buffer(&spec) {
                    Ok((addr, fd)) => {
                        let raw = fd.as_ref().map(|f| f.as_raw_fd());
                        keep.extend(fd);
                        Resp::Buf { addr, fd: raw }
                    }
                    Err(e) => Resp::Error(e),
                }
            }
            Ok(Req::Free { addr, len }) => {
                crate::sys::mem::unmap_guarded(addr, mapped_len(len));
                Resp::Done
            }
            Ok(Req::Open { path }) => match open_path(&path) {
                Ok(fd) => {
                    let raw = fd.as_raw_fd();
                    keep.push(fd);
                    Resp::Ret(i64::from(raw))
                }
                Err(e) => Resp::Errno(e as i32),
            },
            Ok(Req::Close { fd }) => {
                if let Some(i) = keep.iter().position(|f| f.as_raw_fd() == fd) {
                    keep.swap_remove(i);
                } else {
                    // An inherited descriptor: take ownership to close it.
                    drop(crate::sys::fd::adopt_inherited(fd));
                }
                Resp::Done
            }
            Ok(Req::Protect { addr, len, prot }) => match protect_pages(addr, len, prot) {
                Ok(()) => Resp::Done,
                Err(e) => Resp::Error(e),
            },
            Ok(Req::Ioctl { fd, cmd, arg }) => match ioctl_script(fd, cmd, arg) {
                Ok(r) => Resp::Ret(r),
                Err(e) => Resp::Errno(e as i32),
            },
            Ok(Req::Read { fd, size }) => match read_script(fd, usize_from(size)) {
                Ok(b) => Resp::Bytes(b),
                Err(e) => Resp::Errno(e as i32),
            },
            Ok(Req::Write { fd, bytes }) => match write_script(fd, &bytes) {
                Ok(r) => Resp::Ret(r),
                Err(e) => Resp::Errno(e as i32),
            },
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "\"Done\"".into());
        out.push('\n');
        if to.write_all(out.as_bytes()).is_err() {
            break;
        }
    }
    crate::sys::process::exit_child()
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_at_an_odd_multiple_of_the_placement() {
        let mut c = Client::local().unwrap();
        for (i, size) in [1u64, 4096, 65536, 3 << 20].into_iter().enumerate() {
            let spec = BufferSpec {
                name: format!("b{i}"),
                size,
                memfd: i % 2 == 1,
                fill: Fill::Seq,
                prot: BufProt::ReadWrite,
            };
            let b = c.alloc(&spec).unwrap();
            assert_eq!(b.addr % (2 * BUFFER_PLACEMENT), BUFFER_PLACEMENT, "{size}");
            let n = size.min(300) as usize;
            let got = c.read(b.addr, n).unwrap();
            assert!(got.iter().enumerate().all(|(i, &x)| x == i as u8), "{size}");
            // The guard page right after the buffer is still there.
            assert!(c.read(b.addr + size.next_multiple_of(4096), 1).is_err());
        }
        assert_eq!(c.scratch % (2 * BUFFER_PLACEMENT), BUFFER_PLACEMENT);
    }
}
