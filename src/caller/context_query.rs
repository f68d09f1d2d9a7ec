//! "Which context are you": a private ioctl the daemon issues on a duplicate of a caller's iommufd
//! fd. The kernel delivers it, like any ioctl on our node, to the `IommuFile` (dispatch) of that open file,
//! which answers its context id. Only the daemon's own process gets an answer, and only when the
//! argument carries this process's random key, so neither clients nor foreign files can fake one.
//!
//! The request from the daemon to itself does not deadlock: [`crate::service::OpenFile::inline_ioctl`] makes
//! the transport answer it on its reading thread, which never waits for a worker, while the asking
//! worker waits. It costs no pool thread, so any number of concurrent binds cannot exhaust the pool.

use super::{read_struct, write_struct, CallerMemory};
use nix::errno::Errno;
use std::hash::{BuildHasher, Hasher};
use std::os::fd::BorrowedFd;
use std::sync::OnceLock;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `_IO(';', 0xff)`: past every iommufd and VFIO number.
pub const IOCTL: u32 = uiommufd_uapi::iommufd::io(b';', 0xff);

#[repr(C)]
#[derive(Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Query {
    key: u64,
    ctx_id: u64,
}

fn key() -> u64 {
    static KEY: OnceLock<u64> = OnceLock::new();
    *KEY.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() | 1
    })
}

/// The answering side (in [`super::IommuFile`]).
pub fn answer(ctx_id: u64, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
    if mem.pid() != std::process::id() as i32 {
        return Err(Errno::ENOTTY);
    }
    let mut q: Query = read_struct(mem, arg)?;
    if q.key != key() {
        return Err(Errno::ENOTTY);
    }
    q.ctx_id = ctx_id;
    write_struct(mem, arg, &q)?;
    Ok(0)
}

/// The context nodes the transport serves: in the FUSE mount, `iommu` and `vfio/vfio` (the
/// mount's `st_dev` and the file's inode number), and each CUSE node (its `st_rdev`). Only
/// opens of these answer the query inline; anything else (status, device nodes) is never
/// asked, so no asking worker can wait for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnNode {
    MountFile { dev: u64, ino: u64 },
    CharDevice { rdev: u64 },
}

fn own_nodes() -> &'static std::sync::RwLock<Vec<OwnNode>> {
    static OWN: OnceLock<std::sync::RwLock<Vec<OwnNode>>> = OnceLock::new();
    OWN.get_or_init(Default::default)
}

/// Called by the transport once a mount or CUSE node serves: only such files are ever asked.
pub fn register_own_node(node: OwnNode) {
    let mut own = own_nodes().write().unwrap_or_else(|p| p.into_inner());
    if !own.contains(&node) {
        own.push(node);
    }
}

/// Closes the daemon's duplicate of a client's fd. Closing the last reference to a CUSE node
/// file waits for our own RELEASE answer (CUSE releases synchronously), which runs in the
/// opener's pool lane: a worker must never wait for that, so such closes happen on a thread
/// of their own. Everything else (FUSE files release asynchronously and are opened with
/// FOPEN_NOFLUSH) is closed right here.
pub fn close_dup(file: std::os::fd::OwnedFd) {
    use std::os::fd::AsFd;
    if !matches!(own_node(file.as_fd()), Some(OwnNode::CharDevice { .. })) {
        return;
    }
    static CLOSER: OnceLock<
        Option<std::sync::Mutex<std::sync::mpsc::Sender<std::os::fd::OwnedFd>>>,
    > = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<std::os::fd::OwnedFd>();
        std::thread::Builder::new()
            .name("uiommufd-closer".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| std::sync::Mutex::new(tx))
    });
    match closer {
        Some(tx) => {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(file);
        }
        // No thread could be started: closing here is the only way left.
        None => drop(file),
    }
}

/// A duplicate of a client's fd that goes through [`close_dup`] however it is dropped.
pub struct ClientDup(Option<std::os::fd::OwnedFd>);

impl ClientDup {
    pub fn new(file: std::os::fd::OwnedFd) -> Self {
        Self(Some(file))
    }

    /// The fd itself, for keeping (only for files that cannot be our own nodes).
    pub fn into_inner(mut self) -> std::os::fd::OwnedFd {
        self.0.take().expect("ClientDup holds its fd until dropped")
    }
}

impl std::os::fd::AsFd for ClientDup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0
            .as_ref()
            .expect("ClientDup holds its fd until dropped")
            .as_fd()
    }
}

impl Drop for ClientDup {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            close_dup(f);
        }
    }
}

/// Which of the transport's context nodes `file` is, if any. Only such a file is ever sent
/// an ioctl: the daemon is root and the fd is the client's, and an ioctl on any other file
/// (another FUSE filesystem, some character device) would be root acting for the client on a
/// file the daemon has no business with.
fn own_node(file: BorrowedFd<'_>) -> Option<OwnNode> {
    let st = nix::sys::stat::fstat(file).ok()?;
    let own = own_nodes().read().unwrap_or_else(|p| p.into_inner());
    let fmt = st.st_mode & libc::S_IFMT;
    own.iter().copied().find(|n| match *n {
        OwnNode::MountFile { dev, ino } => {
            fmt == libc::S_IFREG && st.st_dev == dev && st.st_ino == ino
        }
        OwnNode::CharDevice { rdev } => fmt == libc::S_IFCHR && st.st_rdev == rdev,
    })
}

/// The asking side: the id of the context `file` was opened as, EBADFD for any other file.
pub fn ask(file: BorrowedFd<'_>) -> Result<u64, Errno> {
    if own_node(file).is_none() {
        return Err(Errno::EBADFD);
    }
    let mut q = Query {
        key: key(),
        ctx_id: 0,
    };
    // The ioctl number is private to this daemon; other drivers answer ENOTTY.
    let r = crate::sys::ioctl::ioctl_struct(file, IOCTL, &mut q);
    if r != Ok(0) || q.ctx_id == 0 {
        return Err(Errno::EBADFD);
    }
    Ok(q.ctx_id)
}
