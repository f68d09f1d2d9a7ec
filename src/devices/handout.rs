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
//!
//! The same socket serves the legacy container path ([`super::legacy_group`]): "join this group
//! file to the context of this compat node file" and "take this group out again", with the files
//! as the proof (the node file names the context; a group file can be open only once).

use super::legacy_group::LegacyGroups;
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

/// The request byte: "the kernel fd of the device this node file is bound through" (one fd:
/// the node file).
pub const REQUEST_DEVICE_FD: u8 = b'D';
/// "Join this group to this container node" (two fds: the node file, the group file).
pub const REQUEST_SET_CONTAINER: u8 = b'G';
/// "Take this group out of its container" (one fd: the group file).
pub const REQUEST_UNSET_CONTAINER: u8 = b'U';
/// How long one client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The abstract socket name for the daemon serving `mount`.
pub fn socket_name(mount: &Path) -> String {
    format!("uiommufd-devices:{}", mount.display())
}

/// What the hand-out socket serves.
pub struct HandOut {
    pub mount: PathBuf,
    pub devices: HashMap<String, Arc<VfioPci>>,
    pub groups: Arc<LegacyGroups>,
}

/// Serves hand-out requests on a thread of its own until the process ends. Logs and gives up if
/// the name is taken (then programs under the launcher keep the node files: no mmap, TCG only;
/// and their own VFIO groups cannot join the compat node).
pub fn serve(h: HandOut) {
    let name = socket_name(&h.mount);
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
            let h = h;
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => answer(c, &h),
                    Err(e) => crate::warn_limited!(%e, "device hand-out accept failed"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(%e, "cannot start the device hand-out thread");
    }
}

/// One request: receive it, answer with an errno word and, for a device, the fd.
fn answer(conn: UnixStream, h: &HandOut) {
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = conn.set_write_timeout(Some(REQUEST_TIMEOUT));
    let uid = match nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
    {
        Ok(c) => c.uid(),
        Err(_) => return,
    };
    let result = receive(&conn).and_then(|(req, mut fds)| match (req, fds.len()) {
        (REQUEST_DEVICE_FD, 1) => device_fd(fds[0].as_fd(), uid, &h.mount, &h.devices).map(Some),
        (REQUEST_SET_CONTAINER, 2) => {
            let group = fds.pop().expect("two fds");
            h.groups.set_container(fds[0].as_fd(), group).map(|()| None)
        }
        (REQUEST_UNSET_CONTAINER, 1) => h.groups.unset_container(fds[0].as_fd()).map(|()| None),
        _ => Err(Errno::EINVAL),
    });
    let (word, fd) = match &result {
        Ok(fd) => (0i32, fd.as_ref().map(|f| f.as_raw_fd())),
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
    match result {
        // "Not a group the daemon took": the kernel answers the program instead.
        Err(Errno::ENOENT) => tracing::debug!(uid, "hand-out: no such group here"),
        Err(e) => crate::warn_limited!(uid, %e, "hand-out request refused"),
        Ok(_) => {}
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

/// The request byte and its fds.
fn receive(conn: &UnixStream) -> Result<(u8, Vec<OwnedFd>), Errno> {
    let mut byte = [0u8; 1];
    let (n, fds) = recv_with_fds(conn, &mut byte)?;
    if n != 1 {
        return Err(Errno::EINVAL);
    }
    Ok((byte[0], fds))
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
