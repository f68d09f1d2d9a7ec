//! Real devices under the launcher: the program gets the kernel's device fd.
//!
//! When the program binds a uiommufd device node (VFIO_DEVICE_BIND_IOMMUFD on a file of a
//! uiommufd mount's `vfio/devices/`), the supervisor binds it itself through a duplicate of that
//! node file, asks the daemon for the kernel device fd over the daemon's hand-out socket
//! ([`crate::devices::handout`], with the node file as proof) and puts the kernel fd in the
//! program's table at the same number (SECCOMP_IOCTL_NOTIF_ADDFD with SETFD). From then on
//! regions, mmap of BARs, interrupts and reset go straight to the kernel (and KVM accepts the
//! file); ATTACH_IOMMUFD_PT and DETACH_IOMMUFD_PT, which a kernel without CONFIG_IOMMUFD lacks,
//! are recognised on that kernel file (kcmp) and forwarded through the node file the supervisor
//! keeps, which also keeps the binding until the launcher exits.
//!
//! Whatever goes wrong after the bind leaves the program with the node file (pread/pwrite of
//! regions, no mmap): a working device, only slower.

use super::notification::{target_fd, Notification, Reply, ADDFD_FLAG_SETFD};
use crate::caller::{CallerMemory, ProcessMemory};
use crate::narrow::{low_u32, struct_size};
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::PathBuf;
use std::sync::Mutex;
use uiommufd_uapi::vfio::*;
use zerocopy::IntoBytes;

/// A kernel device fd installed in the program, with the node file whose binding it uses.
struct Installed {
    node: OwnedFd,
    kernel: OwnedFd,
}

static INSTALLED: Mutex<Vec<Installed>> = Mutex::new(Vec::new());

/// FUSE's file system magic.
pub(super) const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// The mount of a uiommufd device node file: `<mount>/vfio/devices/<name>` on FUSE.
fn node_mount(file: BorrowedFd<'_>) -> Option<PathBuf> {
    let fs = nix::sys::statfs::fstatfs(file).ok()?;
    if fs.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let dir = path.parent()?;
    if !dir.ends_with("vfio/devices") {
        return None;
    }
    Some(dir.parent()?.parent()?.to_path_buf())
}

/// Sends request `req` with `fds` to the daemon serving `mount` ([`crate::devices::handout`]):
/// its answer, with the fd that came with it.
pub(super) fn ask_daemon(
    mount: &std::path::Path,
    req: u8,
    fds: &[BorrowedFd<'_>],
) -> Result<Option<OwnedFd>, Errno> {
    let name = crate::devices::handout::socket_name(mount);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let conn = UnixStream::connect_addr(&addr)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    // Only the root daemon may answer: anyone can bind an abstract name first.
    let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)?;
    if peer.uid() != 0 {
        return Err(Errno::EPERM);
    }
    let timeout = Some(std::time::Duration::from_secs(5));
    let _ = conn.set_read_timeout(timeout);
    let _ = conn.set_write_timeout(timeout);
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(&[req])],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    let mut word = [0u8; 4];
    let (n, mut got) = crate::sys::fd::recv_with_fds(&conn, &mut word)?;
    if n != 4 || got.len() > 1 {
        return Err(Errno::EPROTO);
    }
    match i32::from_ne_bytes(word) {
        0 => Ok(got.pop()),
        e => Err(Errno::from_raw(e)),
    }
}

/// Asks the daemon serving `mount` for the kernel fd of the device bound through `node`.
fn request_kernel_fd(mount: &std::path::Path, node: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    ask_daemon(mount, crate::devices::handout::REQUEST_DEVICE_FD, &[node])?.ok_or(Errno::EPROTO)
}

/// VFIO_DEVICE_BIND_IOMMUFD: see the module documentation.
pub fn bind(n: &Notification<'_>) -> Reply {
    let Ok(node) = target_fd(n, n.fd()) else {
        return Reply::Continue;
    };
    let Some(mount) = node_mount(node.as_fd()) else {
        return Reply::Continue;
    };
    let Ok(mem) = ProcessMemory::new(n.tid) else {
        return Reply::Continue;
    };
    let arg = n.args[2];
    let mut b = vfio_device_bind_iommufd::default();
    if mem.read(arg, &mut b.as_mut_bytes()[..16]).is_err() {
        return Reply::Continue;
    }
    // The daemon checks everything else; only the iommufd must be ours to name it.
    let iommufd = if b.iommufd >= 0 {
        match target_fd(n, b.iommufd) {
            Ok(f) => Some(f),
            Err(_) => return Reply::Error(Errno::EBADF),
        }
    } else {
        None
    };
    let mut local = b;
    local.argsz = local.argsz.min(16);
    if let Some(f) = &iommufd {
        local.iommufd = f.as_raw_fd();
    }
    let answer = crate::sys::ioctl::ioctl_vec(
        node.as_fd(),
        VFIO_DEVICE_BIND_IOMMUFD,
        local.as_bytes()[..16].to_vec(),
    );
    drop(iommufd);
    match answer {
        Ok((_, out)) => local.as_mut_bytes()[..16].copy_from_slice(&out),
        Err(e) => return Reply::Error(e),
    }
    if mem.write(arg + 12, &local.out_devid.to_ne_bytes()).is_err() {
        return Reply::Error(Errno::EFAULT);
    }
    // Bound. Now the kernel's file, in place of the node file.
    let kernel = match request_kernel_fd(&mount, node.as_fd()) {
        Ok(f) => f,
        // No hand-out socket (no real devices) or not a real device (an emulated one).
        Err(e @ (Errno::ECONNREFUSED | Errno::ENODEV)) => {
            tracing::debug!(%e, "the program keeps the node file");
            return Reply::Value(0);
        }
        Err(e) => {
            tracing::warn!(%e, "no kernel device fd from the daemon; the program keeps the node file (no mmap)");
            return Reply::Value(0);
        }
    };
    let flags = ADDFD_FLAG_SETFD;
    match crate::sys::seccomp::notif_addfd_at(
        n.listener,
        n.id,
        kernel.as_fd(),
        flags,
        n.fd(),
        libc::O_CLOEXEC as u32,
    ) {
        Ok(_) => {
            tracing::debug!(tid = n.tid, fd = n.fd(), "kernel device fd installed");
            INSTALLED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Installed { node, kernel });
            Reply::Value(0)
        }
        Err(Errno::ENOENT) => Reply::Gone,
        Err(e) => {
            tracing::warn!(%e, "SECCOMP_IOCTL_NOTIF_ADDFD(SETFD) failed; the program keeps the node file");
            Reply::Value(0)
        }
    }
}

/// ATTACH/DETACH_IOMMUFD_PT on an installed kernel device fd: forwarded through its node file.
pub fn attach_detach(n: &Notification<'_>) -> Reply {
    let Ok(target) = target_fd(n, n.fd()) else {
        return Reply::Continue;
    };
    let installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    let Some(entry) = installed
        .iter()
        .find(|e| crate::sys::fd::same_open_file(e.kernel.as_fd(), target.as_fd()))
    else {
        return Reply::Continue;
    };
    let Ok(node) = entry.node.try_clone() else {
        return Reply::Continue;
    };
    drop(installed);
    let Ok(mem) = ProcessMemory::new(n.tid) else {
        return Reply::Continue;
    };
    // The kernel reads the ioctl number as an unsigned int.
    let cmd = low_u32(n.args[1]);
    let arg = n.args[2];
    // Both structs are 16 bytes at most (attach: argsz, flags, pt_id, pasid).
    let mut buf = [0u8; 16];
    let struct_len = if cmd == VFIO_DEVICE_ATTACH_IOMMUFD_PT {
        struct_size::<vfio_device_attach_iommufd_pt>()
    } else {
        struct_size::<vfio_device_detach_iommufd_pt>()
    };
    let len = struct_len as usize;
    if mem.read(arg, &mut buf[..len]).is_err() {
        return Reply::Error(Errno::EFAULT);
    }
    let argsz = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    buf[..4].copy_from_slice(&argsz.min(struct_len).to_ne_bytes());
    let rc = match crate::sys::ioctl::ioctl_vec(node.as_fd(), cmd, buf[..len].to_vec()) {
        Ok((rc, out)) => {
            buf[..len].copy_from_slice(&out);
            rc
        }
        Err(e) => return Reply::Error(e),
    };
    buf[..4].copy_from_slice(&argsz.to_ne_bytes());
    if mem.write(arg, &buf[..len]).is_err() {
        return Reply::Error(Errno::EFAULT);
    }
    Reply::Value(i64::from(rc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_mounts_are_recognised_only_on_fuse() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(node_mount(f.as_fd()), None);
    }

    #[test]
    fn same_file_compares_open_files() {
        let a = std::fs::File::open("/dev/null").unwrap();
        let b = a.try_clone().unwrap();
        let c = std::fs::File::open("/dev/null").unwrap();
        assert!(crate::sys::fd::same_open_file(a.as_fd(), b.as_fd()));
        assert!(!crate::sys::fd::same_open_file(a.as_fd(), c.as_fd()));
    }
}
