//! One session: a /dev/fuse or /dev/cuse fd read by the session's [`Readers`] (blocking threads
//! that read, handle and answer), and the worker [`Pools`] requests go to when they cannot be
//! handled in place. Each reply goes out whole with one write(2), from whichever thread produced
//! it.

use super::handler::Handler;
use super::pool::{InPlace, Job, Pool, PoolConfig};
use super::readers::Readers;
use super::wire;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// A /dev/fuse or /dev/cuse file descriptor, blocking: its readers are threads.
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// Opens `path` (/dev/fuse or /dev/cuse).
    pub fn open_device(path: &Path) -> io::Result<OwnedFd> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        Ok(OwnedFd::from(file))
    }

    /// Wraps an open device fd. A /dev/fuse fd must be mounted before it is read: until then
    /// read(2) fails (EPERM).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A channel of its own onto this one's FUSE connection (FUSE_DEV_IOC_CLONE, as libfuse's
    /// multi-threaded loop gives each thread): requests still come from the connection's one
    /// input queue, but each clone keeps its own list of requests being processed (its own lock),
    /// and a request read on a clone is answered on it. EINVAL for /dev/cuse, whose connections
    /// cannot be cloned this way.
    pub fn clone_session(&self) -> io::Result<Self> {
        /// `_IOR(229, 0, uint32_t)`.
        const FUSE_DEV_IOC_CLONE: u32 = 0x8004_E500;
        let fd = Self::open_device(Path::new(super::DEV_FUSE))?;
        let mut session = u32::try_from(self.fd.as_raw_fd()).map_err(|_| io::Error::other("fd"))?;
        crate::sys::ioctl::ioctl_struct(fd.as_fd(), FUSE_DEV_IOC_CLONE, &mut session)?;
        Ok(Self { fd })
    }

    /// Reads one whole message into `buf`, waiting for one.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        rustix::io::read(self.fd.as_fd(), buf).map_err(io::Error::from)
    }

    /// Writes one reply with a single write(2). Writes to the device never wait for space.
    pub fn write(&self, reply: &[u8]) -> io::Result<()> {
        loop {
            match rustix::io::write(self.fd.as_fd(), reply) {
                Ok(n) if n == reply.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "short reply write: {n} of {}",
                        reply.len()
                    )))
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

pub(super) fn send(chan: &Channel, reply: Option<Vec<u8>>) {
    let Some(reply) = reply else { return };
    if let Err(e) = chan.write(&reply) {
        // ENOENT: the request was interrupted or the connection aborted; nobody waits for it any more.
        if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::ENODEV) {
            tracing::debug!(error = %e, "reply dropped");
        } else {
            crate::warn_limited!(error = %e, "writing a reply");
        }
    }
}

/// Why a session's read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// `stop` was raised.
    Stopped,
    /// The kernel closed the connection (unmounted or aborted).
    Disconnected,
}

/// The worker pools every session of a transport hands requests to.
pub struct Pools {
    /// OPEN, READ, WRITE, IOCTL and RELEASE: fair per user id (see [`Pool`]).
    pub requests: Pool,
    /// Subordinate uid ranges (/etc/subuid) and whom they belong to.
    owners: SubordinateIds,
}

pub use crate::caller::subids::SubordinateIds;

impl Pools {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            owners: SubordinateIds::load(),
            requests: Pool::new("uiommufd-worker", PoolConfig::requests())?,
        })
    }

    /// Whose share of the pool a request from `uid` uses.
    pub fn owner_of(&self, uid: u32) -> u32 {
        self.owners.owner_of(uid)
    }

    /// A turn to run a request of `uid` in place, within its owner's share (see [`Pool::run_in_place`]).
    pub fn run_in_place(&self, uid: u32) -> Option<InPlace> {
        self.requests.run_in_place(self.owner_of(uid))
    }

    /// Waits for the pool to go idle, at most `timeout`. True if it did.
    pub fn drain(&self, timeout: std::time::Duration) -> bool {
        self.requests.drain(timeout)
    }
}

/// Serves `chan` until `stop` turns true or the kernel ends the connection, on the session's
/// [`Readers`]. Requests still running on the pools are waited for by the transport's shutdown,
/// with a deadline.
pub async fn serve(
    chan: Arc<Channel>,
    handler: Arc<Handler>,
    pools: Arc<Pools>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<SessionEnd> {
    let readers = Arc::new(Readers::start(chan, handler, pools)?);
    let end = tokio::select! {
        // A dropped sender stops the session too.
        _ = stop.wait_for(|s| *s) => Ok(SessionEnd::Stopped),
        end = readers.ended() => end,
    };
    // The readers left after a disconnect end on their own; stop them all the same.
    let r = readers.clone();
    tokio::task::spawn_blocking(move || r.stop())
        .await
        .map_err(io::Error::other)?;
    end
}

/// Queues a [`Lane::User`](super::handler::Lane::User) message on the request pool; `answer` gets its reply on the worker.
/// False when the user's share of the queue is full: the caller answers ENOMEM at once.
pub fn submit_user(
    pools: &Pools,
    handler: &Arc<Handler>,
    uid: u32,
    msg: &[u8],
    answer: impl FnOnce(Option<Vec<u8>>) + Send + 'static,
) -> bool {
    let key = pools.owner_of(uid);
    // A RELEASE is never refused (its file's context would leak): it weighs nothing against the
    // byte cap, and releases are bounded by the files open anyway.
    let release = wire::peek_header(msg).is_some_and(|h| h.opcode == wire::opcode::RELEASE);
    let weight = if release { 0 } else { msg.len() };
    let (h, owned) = (handler.clone(), msg.to_vec());
    let job: Job = Box::new(move || answer(h.handle_guarded(&owned)));
    if pools.requests.submit(key, weight, job).is_err() {
        crate::warn_limited!(
            uid,
            "a user's queued requests exceed their share; answered ENOMEM"
        );
        return false;
    }
    true
}
