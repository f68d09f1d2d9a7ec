//! Opens of the kernel's node paths, answered with the daemon's nodes.
//!
//! A program that opens `/dev/vfio/vfio` by name (QEMU's `-device vfio-pci,host=BDF`) gets the
//! daemon's compat node `<mount>/vfio/vfio` instead: the kernel's container belongs to the
//! kernel's VFIO module and cannot be served by uiommufd. Where the host has no `/dev/iommu`
//! (FUSE mode), opens of it get `<mount>/iommu`, so `-object iommufd` works without `fd=`.
//!
//! The supervisor opens the node itself, with the program's access mode and O_CLOEXEC/O_NONBLOCK,
//! and installs it as the call's result (SECCOMP_ADDFD_FLAG_SEND). Only the exact absolute paths
//! are matched; every other open continues untouched. The launcher runs as the program's user, so
//! nothing is opened that the program could not open itself.

use super::notification::{Notification, Reply, ADDFD_FLAG_SEND};
use crate::caller::{CallerMemory, ProcessMemory};
use crate::narrow::low_u32;
use crate::sys::seccomp::notif_addfd;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The longest path matched, with its NUL.
const MAX_MATCHED: usize = 32;

/// Which argument of system call `nr` is the path, for the calls the filter traps as opens.
pub fn path_arg(nr: i64) -> Option<usize> {
    match nr {
        libc::SYS_openat => Some(1),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => Some(0),
        _ => None,
    }
}

/// The kernel paths answered with the daemon's nodes, and the nodes.
#[derive(Debug, Default)]
pub struct Redirects {
    table: Vec<(&'static [u8], PathBuf)>,
}

impl Redirects {
    /// The redirects the daemon at `mount` can serve now.
    pub fn for_mount(mount: &Path) -> Self {
        let mut table: Vec<(&'static [u8], PathBuf)> = Vec::new();
        let compat = mount.join("vfio/vfio");
        if compat.exists() {
            table.push((b"/dev/vfio/vfio\0", compat));
        }
        let iommu = mount.join("iommu");
        if !Path::new("/dev/iommu").exists() && iommu.exists() {
            table.push((b"/dev/iommu\0", iommu));
        }
        for (from, to) in &table {
            tracing::debug!(
                from = %String::from_utf8_lossy(&from[..from.len() - 1]),
                to = %to.display(),
                "opens redirected"
            );
        }
        Self { table }
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The node for the NUL-terminated path at the start of `bytes`, if it is one of ours.
    fn lookup(&self, bytes: &[u8]) -> Option<&Path> {
        self.table
            .iter()
            .find(|(from, _)| bytes.starts_with(from))
            .map(|(_, to)| to.as_path())
    }

    /// An open (`path_arg` is the index of its path argument): the daemon's node installed as
    /// the result, or continue.
    pub fn answer(&self, n: &Notification<'_>, path_arg: usize) -> Reply {
        let Ok(mem) = ProcessMemory::new(n.tid) else {
            return Reply::Continue;
        };
        let Some(path) = read_path(&mem, n.args[path_arg]) else {
            return Reply::Continue;
        };
        let Some(node) = self.lookup(&path) else {
            return Reply::Continue;
        };
        // The kernel reads the flags as an int: the low 32 bits.
        let flags = low_u32(n.args[path_arg + 1]).cast_signed();
        let keep = OFlag::O_ACCMODE | OFlag::O_NONBLOCK;
        let oflags = (OFlag::from_bits_truncate(flags) & keep) | OFlag::O_CLOEXEC;
        let file = match nix::fcntl::open(node, oflags, nix::sys::stat::Mode::empty()) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(node = %node.display(), %e, "cannot open the daemon's node for the program");
                return Reply::Error(e);
            }
        };
        let cloexec = (flags & libc::O_CLOEXEC) as u32;
        match notif_addfd(n.listener, n.id, file.as_fd(), ADDFD_FLAG_SEND, cloexec) {
            Ok(fd) => {
                tracing::debug!(tid = n.tid, fd, node = %node.display(), "open redirected");
                Reply::Answered
            }
            Err(Errno::ENOENT) => Reply::Gone,
            Err(e) => {
                tracing::warn!(%e, "SECCOMP_IOCTL_NOTIF_ADDFD (send) failed");
                Reply::Error(e)
            }
        }
    }
}

/// The first bytes of the path at `addr` (up to [`MAX_MATCHED`], fewer when the page it is on
/// ends sooner); None when unreadable.
fn read_path(mem: &ProcessMemory, addr: u64) -> Option<Vec<u8>> {
    let to_page_end = 4096 - (addr % 4096) as usize;
    let mut buf = vec![0u8; MAX_MATCHED];
    if mem.read(addr, &mut buf).is_ok() {
        return Some(buf);
    }
    // The path may end before an unmapped page: only what is on its own page.
    buf.truncate(to_page_end.min(MAX_MATCHED));
    mem.read(addr, &mut buf).ok().map(|()| buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_paths_match() {
        let r = Redirects {
            table: vec![(b"/dev/vfio/vfio\0", PathBuf::from("/run/u/vfio/vfio"))],
        };
        assert_eq!(
            r.lookup(b"/dev/vfio/vfio\0garbage"),
            Some(Path::new("/run/u/vfio/vfio"))
        );
        assert_eq!(r.lookup(b"/dev/vfio/vfio2\0"), None);
        assert_eq!(r.lookup(b"/dev/vfio/vfi"), None);
        assert_eq!(r.lookup(b"dev/vfio/vfio\0"), None);
        assert_eq!(r.lookup(b"/dev/vfio/12\0"), None);
    }

    #[test]
    fn a_path_before_an_inaccessible_page_is_read() {
        // Two pages, the second inaccessible: a path in the last bytes of the first is still read.
        use nix::sys::mman::{MapFlags, ProtFlags};
        let m = crate::sys::mem::Mapping::anonymous(
            std::num::NonZeroUsize::new(8192).unwrap(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
        .unwrap();
        m.protect(4096, 4096, ProtFlags::PROT_NONE).unwrap();
        let p = m.addr();
        let path = b"/dev/iommu\0";
        let at = 4096 - path.len();
        crate::caller::vm_write(nix::unistd::getpid(), (p + at) as u64, path).unwrap();
        let mem = ProcessMemory::new(std::process::id() as i32).unwrap();
        let got = read_path(&mem, p as u64 + at as u64).unwrap();
        assert_eq!(got, path);
        assert!(read_path(&mem, p as u64 + 4096).is_none());
    }
}
