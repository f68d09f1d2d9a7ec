//! One session: a nonblocking /dev/fuse or /dev/cuse fd read on tokio, one task per request.
//!
//! The reader copies each message out of a reusable buffer; requests that call the service run on
//! the transport's worker [`Pools`] (handlers are synchronous and may wait on their caller), the
//! rest inline on the reader, which never waits for a worker. Each reply goes out whole with one
//! write(2), from whichever thread produced it.

use super::handler::{Handler, Lane};
use super::pool::{Job, Pool, PoolConfig};
use super::wire;
use nix::errno::Errno;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// A /dev/fuse or /dev/cuse file descriptor registered with tokio.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// Opens `path` (/dev/fuse or /dev/cuse) nonblocking, not yet registered with tokio.
    pub fn open_device(path: &Path) -> io::Result<OwnedFd> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(OwnedFd::from(file))
    }

    /// Registers an open device fd with tokio. A /dev/fuse fd must be mounted first: before that its
    /// poll answers EPOLLERR without joining the wait queue, so epoll would never see a request.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the OwnedFd is a valid open descriptor that AsyncFd owns from here on; nothing else
        // closes or replaces it while it is registered (AsyncFd deregisters before dropping it).
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Self { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Reads one whole message into `buf`.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref().as_fd(), &mut *buf).map_err(io::Error::from)
            }) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one reply with a single write(2). Writes to the device never wait for space.
    pub fn write(&self, reply: &[u8]) -> io::Result<()> {
        loop {
            match rustix::io::write(self.fd.get_ref().as_fd(), reply) {
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

fn send(chan: &Channel, reply: Option<Vec<u8>>) {
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

    /// Waits for the pool to go idle, at most `timeout`. True if it did.
    pub fn drain(&self, timeout: std::time::Duration) -> bool {
        self.requests.drain(timeout)
    }
}

/// Serves `chan` until `stop` turns true or the kernel ends the connection. Requests still running
/// on the pools are waited for by the transport's shutdown, with a deadline.
pub async fn serve(
    chan: Arc<Channel>,
    handler: Arc<Handler>,
    pools: Arc<Pools>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<SessionEnd> {
    let mut buf = vec![0u8; wire::BUFFER_SIZE];
    loop {
        if *stop.borrow() {
            return Ok(SessionEnd::Stopped);
        }
        let n = tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return Ok(SessionEnd::Stopped);
                }
                continue;
            }
            r = chan.read(&mut buf) => r,
        };
        let n = match n {
            Ok(0) => return Ok(SessionEnd::Disconnected),
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                Some(libc::ENODEV) => return Ok(SessionEnd::Disconnected),
                // The kernel dropped the request between poll and read (interrupted caller).
                Some(libc::ENOENT) => continue,
                _ => return Err(e),
            },
        };
        let msg = &buf[..n];
        match handler.lane(msg) {
            Lane::Inline => send(&chan, handler.handle_guarded(msg)),
            Lane::User(uid) => {
                let c = chan.clone();
                if !submit_user(&pools, &handler, uid, msg, move |reply| send(&c, reply)) {
                    send(&chan, Handler::refuse(msg, Errno::ENOMEM));
                }
            }
        }
    }
}

/// Queues a [`Lane::User`] message on the request pool; `answer` gets its reply on the worker.
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
