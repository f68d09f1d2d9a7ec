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
use crate::caller::subids::SubordinateIds;
use crate::sys::fd::recv_with_fds;
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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
    let h = Arc::new(h);
    let in_flight = Arc::new(InFlight::new(SubordinateIds::load()));
    let spawned = std::thread::Builder::new()
        .name("uiommufd-handout".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => dispatch(c, &h, &in_flight),
                    Err(e) => crate::warn_limited!(%e, "device hand-out accept failed"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(%e, "cannot start the device hand-out thread");
    }
}

/// Requests being answered, in all and per user: each runs on a thread of its own, since one can
/// wait on files the client sent (a stat or close of a file of the client's own FUSE mount waits
/// for that server) or do long work (a legacy group's container filled with a whole IOAS).
/// Counted per owning user: a uid of someone's subordinate range (/etc/subuid) counts as that
/// user's, or one user could take a share per uid it can run as.
#[derive(Default)]
struct InFlight {
    per_owner: std::sync::Mutex<HashMap<u32, usize>>,
    owners: SubordinateIds,
}

/// Most requests answered at once, and per user.
const MAX_IN_FLIGHT: usize = 64;
const MAX_IN_FLIGHT_PER_USER: usize = 4;

impl InFlight {
    fn new(owners: SubordinateIds) -> Self {
        Self {
            per_owner: Default::default(),
            owners,
        }
    }

    /// A slot for a request from `uid`, given back when the slot drops (also if the request's
    /// thread unwinds); None over a cap.
    fn enter(self: &Arc<Self>, uid: u32) -> Option<InFlightSlot> {
        let owner = self.owners.owner_of(uid);
        let mut m = self.per_owner.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = m.values().sum();
        let mine = m.entry(owner).or_insert(0);
        if total >= MAX_IN_FLIGHT || *mine >= MAX_IN_FLIGHT_PER_USER {
            if *mine == 0 {
                m.remove(&owner);
            }
            return None;
        }
        *mine += 1;
        Some(InFlightSlot {
            flight: self.clone(),
            owner,
        })
    }
}

/// One request's share of [`InFlight`].
struct InFlightSlot {
    flight: Arc<InFlight>,
    owner: u32,
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut m = self
            .flight
            .per_owner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.owner);
            }
        }
    }
}

/// Starts answering one connection on a thread of its own, unless its user (or everyone) has too
/// many requests in flight: then the connection is closed unanswered (the launcher falls back to
/// the node file, or the join fails with EPROTO).
fn dispatch(conn: UnixStream, h: &Arc<HandOut>, in_flight: &Arc<InFlight>) {
    let Ok(uid) = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid())
    else {
        return;
    };
    let Some(slot) = in_flight.enter(uid) else {
        crate::warn_limited!(
            uid,
            "too many hand-out requests in flight; connection closed"
        );
        return;
    };
    let h = h.clone();
    let spawned = std::thread::Builder::new()
        .name("uiommufd-handout-req".into())
        .spawn(move || {
            let _slot = slot;
            answer(conn, &h);
        });
    if spawned.is_err() {
        crate::warn_limited!(uid, "cannot start a hand-out request thread");
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

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;

    /// Open fds of this process whose link names `name` (a memfd's name is unique to the test).
    fn fds_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains(name))
            })
            .count()
    }

    /// A client sending more fds than a request uses (up to what one message carries) leaves
    /// none of them open in the daemon (found by review: with room for two, the kernel installed
    /// two of three and nix refused to hand them out, so they were never closed).
    #[test]
    fn extra_fds_are_closed() {
        const NAME: &str = "uiommufd-test-handout-extra-fds";
        for count in [3usize, 16, crate::sys::fd::SCM_MAX_FD] {
            let probe = nix::sys::memfd::memfd_create(NAME, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
            let (client, daemon) = UnixStream::pair().unwrap();
            let fds = vec![probe.as_raw_fd(); count];
            sendmsg::<()>(
                client.as_raw_fd(),
                &[IoSlice::new(&[REQUEST_DEVICE_FD])],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            drop(probe);
            let got = receive(&daemon).unwrap();
            assert_eq!(got.1.len(), count);
            drop(got);
            assert_eq!(fds_named(NAME), 0, "{count} fds sent: some stayed open");
        }
    }

    #[test]
    fn requests_in_flight_are_capped_per_owner_and_in_all() {
        // uids 100000..100065 belong to user 1000 (/etc/subuid).
        let owners = SubordinateIds::parse("1000:100000:65536\n", |_| None);
        let f = Arc::new(InFlight::new(owners));
        let mut held = Vec::new();
        for i in 0..MAX_IN_FLIGHT_PER_USER as u32 {
            held.push(f.enter(1000 + (i % 2) * 99_000).expect("within the cap"));
        }
        assert!(f.enter(1000).is_none(), "a user's cap");
        assert!(
            f.enter(100_007).is_none(),
            "a subordinate uid counts as its owner"
        );
        let other = f.enter(1001).expect("another user still gets in");
        held.pop();
        held.push(f.enter(100_001).expect("a slot given back by drop"));
        drop(other);
        for uid in 2000..2000 + MAX_IN_FLIGHT as u32 {
            if let Some(s) = f.enter(uid) {
                held.push(s);
            }
        }
        assert!(f.enter(3000).is_none(), "the total cap");
        drop(held);
        assert!(
            f.per_owner.lock().unwrap().is_empty(),
            "every slot given back"
        );
    }
}
