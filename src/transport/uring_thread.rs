//! One ring thread of a CPU's queue (see `uring`): its ring, its one entry, its mailbox.

use super::{lock, CpuQueue};
use crate::sys::uring::{BufferId, BufferSetId, Ring};
use crate::transport::handler::{Handler, Lane};
use crate::transport::session::submit_user;
use crate::transport::wire::{self, ring, RingCmdReq, RingEntInOut};
use nix::errno::Errno;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use zerocopy::{FromBytes, IntoBytes};

/// The payload buffer: the kernel wants at least max(8 KiB, max_write, max_pages pages).
const PAYLOAD_SIZE: usize = wire::MAX_WRITE as usize;
/// user_data of the entry's commands and of the mailbox's eventfd read.
const ENTRY: u64 = 0;
const MAILBOX: u64 = 1;
/// REGISTER says EAGAIN until the INIT reply is in; retried this often, this far apart.
const REGISTER_ATTEMPTS: u32 = 5000;
const REGISTER_RETRY: Duration = Duration::from_millis(1);

/// The answer from a pool worker to the ring thread whose request it ran, and the stop signal.
pub(super) struct Mailbox {
    state: Mutex<MailboxState>,
    /// An eventfd the ring thread keeps a read on.
    wake: OwnedFd,
}

#[derive(Default)]
struct MailboxState {
    /// The worker's answer (None: the request owes none).
    answer: Option<Option<Vec<u8>>>,
    stop: bool,
}

impl Mailbox {
    pub(super) fn new() -> io::Result<Self> {
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        Ok(Self {
            state: Mutex::default(),
            wake,
        })
    }

    fn post(&self, answer: Option<Vec<u8>>) {
        lock(&self.state).answer = Some(answer);
        self.wake();
    }

    pub(super) fn stop(&self) {
        lock(&self.state).stop = true;
        self.wake();
    }

    fn wake(&self) {
        // An eventfd write only fails when the counter would overflow: the thread is woken then.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    /// REGISTER submitted (no request yet).
    Registering,
    /// With the kernel, waiting for a request.
    Waiting,
    /// A request is being answered (here or on the pool).
    Busy,
    /// Ended (connection gone, or the kernel refused it).
    Ended,
}

/// Runs one ring thread of `queue`: pins it, registers its entry, tells `started`, serves.
pub(super) fn run(
    queue: Arc<CpuQueue>,
    mailbox: Arc<Mailbox>,
    started: &mpsc::Sender<io::Result<()>>,
) {
    if let Err(e) = super::pin_to_cpu(usize::from(queue.qid)) {
        // An offline CPU: its queue still has to exist (the kernel counts possible CPUs), and
        // only callers on that CPU use it, so run it wherever the scheduler likes.
        tracing::debug!(qid = queue.qid, error = %e, "io_uring ring thread not pinned");
    }
    let mut t = match RingThread::new(queue.clone(), mailbox) {
        Ok(t) => t,
        Err(e) => {
            queue.budget().end_one(true);
            let _ = started.send(Err(e));
            return;
        }
    };
    let r = t.start();
    let ok = r.is_ok();
    let _ = started.send(r);
    let failed = if ok { t.serve() } else { None };
    // The ring goes first, before any other syscall (logging included): the ring does not defer
    // the kernel's task work, so a request handed to an entry still with the kernel would be
    // copied in at this thread's next return to userspace and then never answered; once the
    // ring is closed, it is cancelled instead (the caller sees an error). The io-uring crate
    // unmaps the ring's memory just before closing it: those few syscalls are the window left.
    t.close_and_leave();
    if let Some(e) = failed {
        tracing::error!(qid = queue.qid, error = %e, "io_uring ring thread failed");
        let errno = e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
        queue.replace_failed(errno);
    }
}

struct RingThread {
    /// Owns every buffer the kernel writes (the entry's and the wake buffer).
    ring: Ring,
    queue: Arc<CpuQueue>,
    mailbox: Arc<Mailbox>,
    header: BufferId,
    payload: BufferId,
    /// Header then payload: what REGISTER points the kernel at.
    buffers: BufferSetId,
    /// The 8 bytes the mailbox's eventfd read lands in.
    wake_buf: BufferId,
    state: EntryState,
    commit_id: u64,
    register_attempts: u32,
    /// Whether this thread counts as idle in its CPU's budget.
    idle: bool,
    /// The owner whose request (one that may wait) this thread holds.
    held_by: Option<u32>,
    /// Completions reaped while starting, for `serve` to take first.
    early: Vec<(u64, i32)>,
}

impl RingThread {
    fn new(queue: Arc<CpuQueue>, mailbox: Arc<Mailbox>) -> io::Result<Self> {
        // Two submissions at most in flight (the entry's command, the mailbox read).
        let mut ring = Ring::new(2, 4)?;
        let header = ring.buffer(ring::HEADER_SIZE);
        let payload = ring.buffer(PAYLOAD_SIZE);
        let buffers = ring.buffer_set(&[header, payload]);
        let wake_buf = ring.buffer(8);
        Ok(Self {
            ring,
            queue,
            mailbox,
            header,
            payload,
            buffers,
            wake_buf,
            state: EntryState::Registering,
            commit_id: 0,
            register_attempts: 0,
            idle: true,
            held_by: None,
            early: Vec::new(),
        })
    }

    /// Arms the mailbox and registers the entry. A REGISTER the kernel refuses completes at once:
    /// that is a failed start (EAGAIN, INIT's answer not in yet, is tried again), so that no one
    /// counts on this thread to be idle.
    fn start(&mut self) -> io::Result<()> {
        self.arm_mailbox()?;
        self.register()?;
        loop {
            self.ring.submit()?;
            self.ring.complete(&mut self.early);
            let Some(at) = self
                .early
                .iter()
                .position(|&(u, res)| u == ENTRY && res < 0)
            else {
                // Registered (a request may already be in: `serve` takes it first).
                return Ok(());
            };
            let (_, res) = self.early.remove(at);
            if -res != libc::EAGAIN || self.register_attempts >= REGISTER_ATTEMPTS {
                self.state = EntryState::Ended;
                return Err(io::Error::from_raw_os_error(-res));
            }
            std::thread::sleep(REGISTER_RETRY);
            self.register()?;
        }
    }

    fn arm_mailbox(&mut self) -> io::Result<()> {
        let wake = self.mailbox.wake.as_fd();
        self.ring.push_read(wake, self.wake_buf, MAILBOX)
    }

    fn register(&mut self) -> io::Result<()> {
        self.state = EntryState::Registering;
        self.register_attempts += 1;
        let req = RingCmdReq {
            qid: self.queue.qid,
            ..Default::default()
        };
        let set = (self.buffers, true);
        let fd = &self.queue.shared.fd;
        self.ring
            .push_fuse_cmd(fd, ring::CMD_REGISTER, req.as_bytes(), ENTRY, set)
    }

    /// Serves until stopped or the entry ended; the error that ended it otherwise.
    fn serve(&mut self) -> Option<io::Error> {
        let qid = self.queue.qid;
        let mut done: Vec<(u64, i32)> = std::mem::take(&mut self.early);
        let mut first = true;
        loop {
            let r = if std::mem::take(&mut first) && !done.is_empty() {
                // Completions reaped at start: take them before waiting.
                Ok(0)
            } else {
                self.ring.submit_then_wait()
            };
            match r {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The kernel is short of memory for a moment: reaping the completions below and
                // trying again; giving up would take an entry from this CPU's callers.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    crate::warn_limited!(qid, error = %e, "io_uring submit deferred");
                    std::thread::yield_now();
                }
                Err(e) => return Some(e),
            }
            self.ring.complete(&mut done);
            for (user_data, res) in done.drain(..) {
                let go_on = if user_data == MAILBOX {
                    self.on_mailbox(res)
                } else {
                    self.on_entry(res)
                };
                if let Err(e) = go_on {
                    return Some(e);
                }
            }
            if lock(&self.mailbox.state).stop || self.state == EntryState::Ended {
                return None;
            }
        }
    }

    /// Closes the ring (see `run`), then counts this thread out of its CPU's budget.
    fn close_and_leave(self) {
        let Self {
            ring,
            queue,
            held_by,
            idle,
            ..
        } = self;
        drop(ring);
        let mut b = queue.budget();
        if let Some(owner) = held_by {
            b.unhold(owner);
        }
        b.end_one(idle);
    }

    fn on_mailbox(&mut self, res: i32) -> io::Result<()> {
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        let answer = lock(&self.mailbox.state).answer.take();
        if let Some(answer) = answer {
            self.commit(answer)?;
        }
        self.arm_mailbox()
    }

    fn on_entry(&mut self, res: i32) -> io::Result<()> {
        let state = self.state;
        match res {
            r if r >= 0 => {}
            r if -r == libc::EAGAIN
                && state == EntryState::Registering
                && self.register_attempts < REGISTER_ATTEMPTS =>
            {
                // The INIT reply is not in yet: the kernel is at most a moment away from it.
                std::thread::sleep(REGISTER_RETRY);
                return self.register();
            }
            r if -r == libc::ENOTCONN => {
                self.state = EntryState::Ended;
                return Ok(());
            }
            r => {
                // The thread ends like one that failed (`run` counts it out, closes its ring and
                // starts a replacement where one is due).
                self.state = EntryState::Ended;
                tracing::debug!(qid = self.queue.qid, was = ?state, "io_uring entry ended by the kernel");
                return Err(io::Error::from_raw_os_error(-r));
            }
        }
        self.state = EntryState::Busy;
        let shared = self.queue.shared.clone();
        shared.stats.count_ring_request();
        let idle_others = {
            self.idle = false;
            self.queue.budget().take()
        };
        let Some((header, payload)) = self.ring.bytes_pair(self.header, self.payload) else {
            return Err(still_lent());
        };
        let (msg, ent) = match wire::ring_request(header, payload) {
            Ok(m) => m,
            Err(err) => {
                // The kernel finds the entry by the commit ID it wrote, the caller by `unique`.
                let unique = wire::peek_header(header).map_or(0, |h| h.unique);
                self.commit_id = header
                    .get(ring::ENT_IN_OUT..)
                    .and_then(|b| RingEntInOut::read_from_prefix(b).ok())
                    .map_or(unique, |(ent, _)| ent.commit_id);
                crate::warn_limited!(error = %err, "malformed io_uring request");
                return self.commit(Some(wire::reply_err(unique, Errno::EIO as i32)));
            }
        };
        self.commit_id = ent.commit_id;
        match shared.handler.lane(&msg) {
            Lane::Inline => {
                let answer = shared.handler.handle_guarded(&msg);
                self.commit(answer)
            }
            Lane::User(uid) => self.serve_user(uid, &msg, idle_others),
        }
    }

    /// A request that may wait on its caller: here when another thread of the CPU is idle and
    /// the user is under its share, else on the user's pool lane (this thread waits for the
    /// answer in its mailbox); ENOMEM when the user's (or everyone's) share of threads is held.
    fn serve_user(&mut self, uid: u32, msg: &[u8], idle_others: usize) -> io::Result<()> {
        let shared = self.queue.shared.clone();
        let owner = shared.pools.owner_of(uid);
        let allowed = {
            let mut b = self.queue.budget();
            let ok = b.may_hold(owner);
            if ok {
                b.hold(owner);
            }
            ok
        };
        if !allowed {
            crate::warn_limited!(
                qid = self.queue.qid,
                uid,
                "io_uring: requests that may wait hold their share of this CPU's ring threads; \
                 answered at once"
            );
            let release = wire::peek_header(msg).is_some_and(|h| h.opcode == wire::opcode::RELEASE);
            if release {
                // Its answer carries nothing: answer now, tear down on the pool.
                submit_user(&shared.pools, &shared.handler, uid, msg, |_| ());
                return self.commit(Some(wire::reply(self.commit_id, 0, &[])));
            }
            return self.commit(Handler::refuse(msg, Errno::ENOMEM));
        }
        self.held_by = Some(owner);
        let spare = self.queue.ensure_idle(idle_others);
        if spare {
            if let Some(turn) = shared.pools.run_in_place(uid) {
                let answer = shared.handler.handle_guarded(msg);
                // The share is given back before the answer is out: whoever sees the answer
                // sees the share free.
                drop(turn);
                return self.commit(answer);
            }
        }
        let mailbox = self.mailbox.clone();
        if !submit_user(&shared.pools, &shared.handler, uid, msg, move |answer| {
            mailbox.post(answer)
        }) {
            return self.commit(Handler::refuse(msg, Errno::ENOMEM));
        }
        Ok(())
    }

    /// Puts `answer` in the entry and re-arms it with COMMIT_AND_FETCH.
    fn commit(&mut self, answer: Option<Vec<u8>>) -> io::Result<()> {
        if self.state != EntryState::Busy {
            return Ok(());
        }
        let out_len = std::mem::size_of::<wire::OutHeader>();
        // A request on the ring always owes an answer (FORGET and INTERRUPT stay on /dev/fuse).
        let mut answer =
            answer.unwrap_or_else(|| wire::reply_err(self.commit_id, Errno::ENOSYS as i32));
        if answer.len() < out_len || answer.len() - out_len > PAYLOAD_SIZE {
            crate::warn_limited!(len = answer.len(), "answer does not fit a ring entry");
            answer = wire::reply_err(self.commit_id, Errno::EIO as i32);
        }
        let (out, args) = answer.split_at(out_len);
        let Some((header, payload)) = self.ring.bytes_pair(self.header, self.payload) else {
            return Err(still_lent());
        };
        payload[..args.len()].copy_from_slice(args);
        header[..out_len].copy_from_slice(out);
        let ent = RingEntInOut {
            commit_id: self.commit_id,
            // The payload buffer bounds `args` far below 4 GiB.
            payload_sz: u32::try_from(args.len()).map_err(|_| io::Error::from(Errno::EOVERFLOW))?,
            ..Default::default()
        };
        header[ring::ENT_IN_OUT..ring::HEADER_SIZE].copy_from_slice(ent.as_bytes());
        self.state = EntryState::Waiting;
        {
            let mut b = self.queue.budget();
            if let Some(owner) = self.held_by.take() {
                b.unhold(owner);
            }
            b.give_back();
            self.idle = true;
        }
        let req = RingCmdReq {
            commit_id: self.commit_id,
            qid: self.queue.qid,
            ..Default::default()
        };
        let (fd, set) = (&self.queue.shared.fd, (self.buffers, false));
        let op = ring::CMD_COMMIT_AND_FETCH;
        self.ring.push_fuse_cmd(fd, op, req.as_bytes(), ENTRY, set)
    }
}

/// The thread found its entry's buffers with the kernel while it owns the entry: a bookkeeping bug.
fn still_lent() -> io::Error {
    io::Error::other("the entry's buffers are still with the kernel")
}
