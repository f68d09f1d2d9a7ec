//! Handing a bound real device's kernel fd to the program that bound it (`uiommufd launch`).
//!
//! Through a FUSE or CUSE node a real device has no mmap of its BARs, and KVM refuses a file that
//! is not a kernel VFIO file. Under the launcher the supervisor binds the device through the
//! program's node file, then asks here for the kernel's device fd and installs it in the program
//! in place of the node file: regions, mmap, interrupts and reset then go straight to the kernel,
//! and only BIND/ATTACH/DETACH (which a kernel without CONFIG_IOMMUFD lacks) come to the daemon.
//!
//! The request travels over an abstract unix socket named after the mount
//! ([`socket_name`]), with the node file itself as the proof (SCM_RIGHTS): the daemon checks
//! that it is a file of its own mount, of a real device, and the very open file the device is
//! bound through (an inline query only the daemon can ask), and only then sends a duplicate of
//! the binding's kernel device fd.
//!
//! A kernel file given out cannot be taken back. So a device handed out to a user stays with that
//! user for the daemon's life: binds from other users are EPERM (as a kernel's VFIO group is
//! busy while any of its device files is open). Anyone can connect to the socket; what decides is
//! the proof.

use super::vfio_pci::VfioPci;
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The request byte: "the kernel fd of the device this node file is bound through".
pub const REQUEST_DEVICE_FD: u8 = b'D';
/// How long one client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The abstract socket name for the daemon serving `mount`.
pub fn socket_name(mount: &Path) -> String {
    format!("uiommufd-devices:{}", mount.display())
}

/// Serves hand-out requests on a thread of its own until the process ends. Logs and gives up if
/// the name is taken (then programs under the launcher keep the node file: no mmap, TCG only).
pub fn serve(mount: PathBuf, devices: HashMap<String, Arc<VfioPci>>) {
    if devices.is_empty() {
        return;
    }
    let name = socket_name(&mount);
    let listener = match SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|a| UnixListener::bind_addr(&a))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%e, name, "cannot listen for device hand-outs; `uiommufd launch` programs keep the node files");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("uiommufd-handout".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => answer(c, &mount, &devices),
                    Err(e) => crate::warn_limited!(%e, "device hand-out accept failed"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(%e, "cannot start the device hand-out thread");
    }
}

/// One request: receive the node file, answer with an errno word and, on success, the fd.
fn answer(conn: UnixStream, mount: &Path, devices: &HashMap<String, Arc<VfioPci>>) {
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = conn.set_write_timeout(Some(REQUEST_TIMEOUT));
    let uid = match nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
    {
        Ok(c) => c.uid(),
        Err(_) => return,
    };
    let result = receive(&conn).and_then(|(req, node)| {
        if req != REQUEST_DEVICE_FD {
            return Err(Errno::EINVAL);
        }
        device_fd(node.as_fd(), uid, mount, devices)
    });
    let (word, fd) = match &result {
        Ok(fd) => (0i32, Some(fd.as_raw_fd())),
        Err(e) => (*e as i32, None),
    };
    let bytes = word.to_ne_bytes();
    let iov = [IoSlice::new(&bytes)];
    let fds: Vec<i32> = fd.into_iter().collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    if let Err(e) = sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
        crate::warn_limited!(%e, "device hand-out answer failed");
    }
    if let Err(e) = result {
        crate::warn_limited!(uid, %e, "device hand-out refused");
    }
}

/// One message on `conn` into `buf`: the bytes read and the fds that came with it (at most two
/// are accepted; more are closed by the kernel as truncated).
pub fn recv_with_fds(conn: &UnixStream, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), Errno> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(r) = c {
            // SAFETY: the kernel just installed these fds in our table for this message; each is
            // owned once here.
            fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((msg.bytes, fds))
}

/// The request byte and exactly one fd.
fn receive(conn: &UnixStream) -> Result<(u8, OwnedFd), Errno> {
    let mut byte = [0u8; 1];
    let (n, mut fds) = recv_with_fds(conn, &mut byte)?;
    if n != 1 || fds.len() != 1 {
        return Err(Errno::EINVAL);
    }
    Ok((byte[0], fds.pop().expect("one fd")))
}

/// Checks the proof and returns a duplicate of the bound device's kernel fd.
fn device_fd(
    node: BorrowedFd<'_>,
    uid: u32,
    mount: &Path,
    devices: &HashMap<String, Arc<VfioPci>>,
) -> Result<OwnedFd, Errno> {
    let st = nix::sys::stat::fstat(node)?;
    let mount_dev = nix::sys::stat::stat(mount)?.st_dev;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_dev != mount_dev {
        return Err(Errno::EBADF);
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", node.as_raw_fd()))
        .map_err(|_| Errno::EBADF)?;
    let name = path
        .strip_prefix(mount.join("vfio/devices"))
        .map_err(|_| Errno::EBADF)?
        .to_str()
        .ok_or(Errno::EBADF)?;
    let device = devices.get(name).ok_or(Errno::ENODEV)?;
    let file = super::vfio_pci::query_file_id(node)?;
    device.hand_out(file, uid)
}
