//! FUSE over io_uring: one queue thread per possible CPU, pinned to that CPU.
//!
//! The kernel (≥ 6.14, CONFIG_FUSE_IO_URING, the fuse module's `enable_uring` set) offers it in
//! INIT; once our reply accepts it and every CPU's queue has an entry registered, each request
//! goes to the queue of the CPU its caller runs on, so the caller is answered on its own CPU
//! without waking another (FACTS: ~16 µs both ways vs 15.7 / 84.9 µs for libfuse3 over
//! /dev/fuse). INIT, FORGET, INTERRUPT and notifications stay on /dev/fuse (`session`).
//!
//! Each queue owns a ring (IORING_SETUP_SQE128) with [`QUEUE_DEPTH`] entries, each with a header
//! buffer (`wire::ring`) and a payload buffer, handed to the kernel with URING_CMD REGISTER and
//! re-armed with COMMIT_AND_FETCH, which also carries the previous request's reply.
//!
//! Entries held by the pool: a request handed to the pool keeps its entry until the worker's
//! reply is committed, and a worker may itself wait for an inline answer on the same queue (the
//! daemon's own context query, `caller::context_query`, goes to the queue of the CPU the worker
//! runs on). So a queue never lets pooled requests hold all but [`FREE_ENTRIES`] of its entries:
//! when they would, it registers another entry (REGISTER works at any time after INIT), up to
//! [`MAX_ENTRIES`]. At that cap, and when one owner (a uid with its subordinate ids) already holds
//! [`OWNER_ENTRIES`] of the queue, a new pooled request is answered ENOMEM at once, as when the
//! pool's byte cap refuses it, except RELEASE, which is answered at once and torn down on the pool
//! afterwards (the kernel waits for nothing in its answer, and refusing it would leak a context).
//! Inline requests always find an entry: no number of stalled or slow pooled requests can wedge a
//! queue. Entries cannot be unregistered; a queue keeps the ones it grew until the connection ends.
//!
//! Requests of the inline lane are answered on the queue thread. Requests that may block
//! ([`Lane::User`]) go to the transport's worker pool (unlike /dev/fuse, whose readers handle them
//! in place: a queue thread that waits on a caller would stall every other request of its CPU,
//! and no other thread may enter its ring to take over); the worker posts
//! the reply to the queue's mailbox (a list under a mutex plus an eventfd the ring reads), and the
//! queue thread commits it. So only the queue thread ever touches its ring: no lock around the
//! submission queue on the hot inline path, and no second thread entering a ring that another is
//! waiting in. The price is one eventfd wake-up per pooled request; while the pool has it, the
//! entry is held, which is why a queue has several.
//!
//! Teardown: the kernel ends every entry with -ENOTCONN when the connection goes (unmount, abort);
//! a queue whose entries all ended stops. [`Queues::stop`] (the transport's shutdown, after the
//! pool drained) tells each queue through its mailbox; closing a ring cancels its commands.

use super::handler::{Handler, Lane};
use super::session::{submit_user, Pools};
use super::stats::TransportStats;
use super::wire::{self, ring, RingCmdReq, RingEntInOut};
use crate::sys::uring::{BufferId, BufferSetId, FuseDevice, Ring};
use nix::errno::Errno;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use zerocopy::IntoBytes;

/// Entries a queue starts with. Payload buffers are allocated zeroed and so stay unbacked until a
/// message uses them (most touch one page).
pub const QUEUE_DEPTH: usize = 8;
/// Entries of every queue that pooled requests never hold: inline requests always find one.
pub const FREE_ENTRIES: usize = 2;
/// Most entries one queue registers. Each payload buffer is `PAYLOAD_SIZE` of address space (the
/// kernel refuses smaller ones), backed only as far as messages used it.
pub const MAX_ENTRIES: usize = 512;
/// Most entries of one queue that one owner's pooled requests hold: a user stalling its own
/// requests on one CPU leaves the rest of the cap to the others.
pub const OWNER_ENTRIES: usize = MAX_ENTRIES / 4;
/// The payload buffer: the kernel wants at least max(8 KiB, max_write, max_pages pages).
const PAYLOAD_SIZE: usize = wire::MAX_WRITE as usize;
/// user_data of the mailbox's eventfd read (entries use their index).
const MAILBOX: u64 = u64::MAX;
/// REGISTER says EAGAIN until the INIT reply is in; retried this often, this far apart.
const REGISTER_ATTEMPTS: u32 = 5000;
const REGISTER_RETRY: Duration = Duration::from_millis(1);

/// Which entries of one queue pooled requests hold, and how many entries it should have.
#[derive(Debug, Default)]
struct EntryBudget {
    /// Entries made (registered or registering), ended ones included.
    made: usize,
    ended: usize,
    /// Entries whose request is on the pool.
    held: usize,
    held_by_owner: HashMap<u32, usize>,
}

impl EntryBudget {
    fn free(&self) -> usize {
        self.made - self.ended - self.held
    }

    /// Whether `owner` may hold one more entry with a pooled request.
    fn may_hold(&self, owner: u32) -> bool {
        let owners = self.held_by_owner.get(&owner).copied().unwrap_or(0);
        owners < OWNER_ENTRIES && (self.free() > FREE_ENTRIES || self.made < MAX_ENTRIES)
    }

    fn hold(&mut self, owner: u32) {
        self.held += 1;
        *self.held_by_owner.entry(owner).or_default() += 1;
    }

    fn unhold(&mut self, owner: u32) {
        self.held -= 1;
        if let Some(n) = self.held_by_owner.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.held_by_owner.remove(&owner);
            }
        }
    }

    /// Entries to register so that [`FREE_ENTRIES`] stay free, within the cap.
    fn missing(&self) -> usize {
        FREE_ENTRIES
            .saturating_sub(self.free())
            .min(MAX_ENTRIES.saturating_sub(self.made))
    }
}

/// The CPUs the kernel makes a queue for: every possible CPU (`/sys/devices/system/cpu/possible`,
/// e.g. `0-3` or `0,2-5`): the count is the highest index + 1.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse the possible CPUs {text:?}"),
        )
    })
}

fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut highest = None;
    for part in text.trim().split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        highest = highest.max(Some(last));
    }
    highest.map(|h| h + 1)
}

/// Replies from pool workers to one queue thread.
struct Mailbox {
    state: Mutex<MailboxState>,
    /// An eventfd the queue thread keeps a read on.
    wake: OwnedFd,
}

#[derive(Default)]
struct MailboxState {
    replies: Vec<(usize, Option<Vec<u8>>)>,
    stop: bool,
}

impl Mailbox {
    fn new() -> io::Result<Self> {
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        Ok(Self {
            state: Mutex::new(MailboxState::default()),
            wake,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn post(&self, entry: usize, reply: Option<Vec<u8>>) {
        self.lock().replies.push((entry, reply));
        self.wake();
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake();
    }

    fn wake(&self) {
        // An eventfd write only fails when the counter would overflow: the thread is woken then.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// The running queues of one FUSE connection.
pub struct Queues {
    queues: Vec<(Arc<Mailbox>, Option<std::thread::JoinHandle<()>>)>,
}

impl Queues {
    /// Starts one queue per possible CPU on `fd` (the connection's /dev/fuse fd, or a duplicate)
    /// and submits every entry's REGISTER. Returns once each queue is set up; the kernel moves
    /// requests to the rings when the last queue's first entry is registered.
    /// `stats` counts the requests and the entries grown.
    pub fn start(
        fd: OwnedFd,
        handler: Arc<Handler>,
        pools: Arc<Pools>,
        stats: Arc<TransportStats>,
    ) -> io::Result<Self> {
        let cpus = possible_cpus()?;
        let qids = u16::try_from(cpus).map_err(|_| io::Error::other("too many CPUs"))?;
        let fd = Arc::new(FuseDevice::new(fd)?);
        let mut queues = Self { queues: Vec::new() };
        for qid in 0..qids {
            let mailbox = Arc::new(Mailbox::new()?);
            let (tx, rx) = mpsc::channel();
            let ctx = QueueContext {
                qid,
                fd: fd.clone(),
                handler: handler.clone(),
                pools: pools.clone(),
                mailbox: mailbox.clone(),
                stats: stats.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("uiommufd-ring{qid}"))
                .spawn(move || run_queue(ctx, &tx))?;
            queues.queues.push((mailbox, Some(thread)));
            rx.recv()
                .map_err(|_| io::Error::other(format!("io_uring queue {qid} ended at start")))??;
        }
        Ok(queues)
    }

    /// Number of queues (one per possible CPU).
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Tells every queue thread to end and waits for them. Replies posted after this are dropped
    /// (their callers get an error when the connection ends).
    pub fn stop(&mut self) {
        for (mailbox, _) in &self.queues {
            mailbox.stop();
        }
        for (_, thread) in &mut self.queues {
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        self.stop();
    }
}

struct QueueContext {
    qid: u16,
    fd: Arc<FuseDevice>,
    handler: Arc<Handler>,
    pools: Arc<Pools>,
    mailbox: Arc<Mailbox>,
    stats: Arc<TransportStats>,
}

fn run_queue(ctx: QueueContext, started: &mpsc::Sender<io::Result<()>>) {
    let cpu = usize::from(ctx.qid);
    if let Err(e) = pin_to_cpu(cpu) {
        // An offline CPU: its queue still has to exist (the kernel counts possible CPUs), and
        // only callers on that CPU use it, so run it wherever the scheduler likes.
        tracing::debug!(cpu, error = %e, "io_uring queue not pinned");
    }
    let mut q = match Queue::new(ctx) {
        Ok(q) => q,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let r = q.start();
    let ok = r.is_ok();
    let _ = started.send(r);
    if ok {
        q.run();
    }
}

fn pin_to_cpu(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    /// REGISTER submitted (no request yet).
    Registering,
    /// With the kernel, waiting for a request.
    Waiting,
    /// A request is being answered (inline or on the pool).
    Busy,
    /// Ended (connection gone, or the kernel refused it).
    Ended,
}

/// One ring entry: its buffers are the ring's (see `sys::uring`), lent to the kernel from each
/// REGISTER or COMMIT_AND_FETCH until its completion.
struct Entry {
    header: BufferId,
    payload: BufferId,
    /// Header then payload: what REGISTER points the kernel at.
    buffers: BufferSetId,
    commit_id: u64,
    state: EntryState,
    register_attempts: u32,
    /// The owner whose pooled request holds the entry.
    held_by: Option<u32>,
}

impl Entry {
    fn new(ring: &mut Ring) -> Self {
        let header = ring.buffer(ring::HEADER_SIZE);
        let payload = ring.buffer(PAYLOAD_SIZE);
        Self {
            header,
            payload,
            buffers: ring.buffer_set(&[header, payload]),
            commit_id: 0,
            state: EntryState::Registering,
            register_attempts: 0,
            held_by: None,
        }
    }
}

struct Queue {
    /// Owns every buffer the kernel writes (entries' and the wake buffer).
    ring: Ring,
    ctx: QueueContext,
    entries: Vec<Entry>,
    budget: EntryBudget,
    /// The 8 bytes the mailbox's eventfd read lands in.
    wake_buf: BufferId,
}

/// Ring slots for `n` (a power of two, at least `n`); `n` is a small constant.
fn ring_size(n: usize) -> u32 {
    u32::try_from(n.next_power_of_two()).unwrap_or(u32::MAX)
}

impl Queue {
    fn new(ctx: QueueContext) -> io::Result<Self> {
        // Room for a completion of every entry a queue may grow and of the mailbox.
        let mut ring = Ring::new(ring_size(QUEUE_DEPTH + 1), ring_size(MAX_ENTRIES + 1))?;
        let entries: Vec<Entry> = (0..QUEUE_DEPTH).map(|_| Entry::new(&mut ring)).collect();
        let wake_buf = ring.buffer(8);
        let budget = EntryBudget {
            made: entries.len(),
            ..Default::default()
        };
        Ok(Self {
            ring,
            ctx,
            entries,
            budget,
            wake_buf,
        })
    }

    /// Arms the mailbox and registers every entry.
    fn start(&mut self) -> io::Result<()> {
        self.arm_mailbox()?;
        for i in 0..self.entries.len() {
            self.register(i)?;
        }
        self.ring.submit()?;
        Ok(())
    }

    fn arm_mailbox(&mut self) -> io::Result<()> {
        let wake = self.ctx.mailbox.wake.as_fd();
        self.ring.push_read(wake, self.wake_buf, MAILBOX)
    }

    fn register(&mut self, i: usize) -> io::Result<()> {
        let e = &mut self.entries[i];
        e.state = EntryState::Registering;
        e.register_attempts += 1;
        let req = RingCmdReq {
            qid: self.ctx.qid,
            ..Default::default()
        };
        let (cmd, set) = (req.as_bytes(), (e.buffers, true));
        self.ring
            .push_fuse_cmd(&self.ctx.fd, ring::CMD_REGISTER, cmd, i as u64, set)
    }

    fn run(&mut self) {
        let mut done: Vec<(u64, i32)> = Vec::with_capacity(QUEUE_DEPTH + 1);
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is full, or the kernel is short of memory for a moment:
                // reaping the completions below makes room; giving up would strand this CPU's
                // callers.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    crate::warn_limited!(qid = self.ctx.qid, error = %e, "io_uring submit deferred");
                    std::thread::yield_now();
                }
                Err(e) => {
                    tracing::error!(qid = self.ctx.qid, error = %e, "io_uring queue failed");
                    return;
                }
            }
            self.ring.complete(&mut done);
            for (user_data, res) in done.drain(..) {
                let go_on = if user_data == MAILBOX {
                    self.on_mailbox(res)
                } else {
                    self.on_entry(crate::narrow::usize_from(user_data), res)
                };
                if let Err(e) = go_on {
                    tracing::error!(qid = self.ctx.qid, error = %e, "io_uring queue failed");
                    return;
                }
            }
            if self.ctx.mailbox.lock().stop {
                tracing::debug!(
                    qid = self.ctx.qid,
                    total_requests = self.ctx.stats.ring_requests(),
                    "io_uring queue stopped"
                );
                return;
            }
            if self.entries.iter().all(|e| e.state == EntryState::Ended) {
                tracing::debug!(qid = self.ctx.qid, "io_uring queue: connection ended");
                return;
            }
        }
    }

    fn on_mailbox(&mut self, res: i32) -> io::Result<()> {
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        let replies = std::mem::take(&mut self.ctx.mailbox.lock().replies);
        for (i, reply) in replies {
            self.commit(i, reply)?;
        }
        self.arm_mailbox()
    }

    fn on_entry(&mut self, i: usize, res: i32) -> io::Result<()> {
        let Some(e) = self.entries.get_mut(i) else {
            return Err(io::Error::other(format!("completion for no entry ({i})")));
        };
        let state = e.state;
        match res {
            r if r >= 0 => {}
            r if -r == libc::EAGAIN
                && state == EntryState::Registering
                && e.register_attempts < REGISTER_ATTEMPTS =>
            {
                // The INIT reply is not in yet: the kernel is at most a moment away from it.
                std::thread::sleep(REGISTER_RETRY);
                return self.register(i);
            }
            r if -r == libc::ENOTCONN => {
                self.end(i);
                return Ok(());
            }
            r => {
                self.end(i);
                crate::warn_limited!(
                    qid = self.ctx.qid,
                    entry = i,
                    was = ?state,
                    error = %Errno::from_raw(-r),
                    "io_uring entry ended by the kernel"
                );
                // A replacement, so that inline requests still find an entry (up to the cap).
                return self.keep_entries_free();
            }
        }
        e.state = EntryState::Busy;
        self.ctx.stats.count_ring_request();
        let Some((header, payload)) = self.ring.bytes_pair(e.header, e.payload) else {
            return Err(still_lent(i));
        };
        let (msg, ent) = match wire::ring_request(header, payload) {
            Ok(m) => m,
            Err(err) => {
                let unique = wire::peek_header(header).map_or(0, |h| h.unique);
                e.commit_id = unique;
                crate::warn_limited!(error = %err, "malformed io_uring request");
                return self.commit(i, Some(wire::reply_err(unique, Errno::EIO as i32)));
            }
        };
        e.commit_id = ent.commit_id;
        match self.ctx.handler.lane(&msg) {
            Lane::Inline => {
                let reply = self.ctx.handler.handle_guarded(&msg);
                self.commit(i, reply)
            }
            Lane::User(uid) => self.hand_to_pool(i, uid, &msg),
        }
    }

    /// Hands entry `i`'s request to the pool, keeping [`FREE_ENTRIES`] of the queue free.
    fn hand_to_pool(&mut self, i: usize, uid: u32, msg: &[u8]) -> io::Result<()> {
        let owner = self.ctx.pools.owner_of(uid);
        if !self.budget.may_hold(owner) {
            let release = wire::peek_header(msg).is_some_and(|h| h.opcode == wire::opcode::RELEASE);
            crate::warn_limited!(
                qid = self.ctx.qid,
                uid,
                entries = self.budget.made,
                held_by_owner = ?self.budget.held_by_owner.get(&owner),
                "io_uring queue: pooled requests hold their share of its entries; answered at once"
            );
            if release {
                // Its answer carries nothing: answer now, tear down on the pool.
                let unique = self.entries[i].commit_id;
                submit_user(&self.ctx.pools, &self.ctx.handler, uid, msg, |_| ());
                return self.commit(i, Some(wire::reply(unique, 0, &[])));
            }
            return self.commit(i, Handler::refuse(msg, Errno::ENOMEM));
        }
        let mailbox = self.ctx.mailbox.clone();
        let posted = submit_user(&self.ctx.pools, &self.ctx.handler, uid, msg, {
            move |reply| mailbox.post(i, reply)
        });
        if !posted {
            return self.commit(i, Handler::refuse(msg, Errno::ENOMEM));
        }
        self.budget.hold(owner);
        self.entries[i].held_by = Some(owner);
        self.keep_entries_free()
    }

    /// Registers new entries while fewer than [`FREE_ENTRIES`] are free (up to the cap).
    fn keep_entries_free(&mut self) -> io::Result<()> {
        for _ in 0..self.budget.missing() {
            self.entries.push(Entry::new(&mut self.ring));
            self.budget.made += 1;
            self.ctx.stats.count_extra_entry();
            tracing::debug!(
                qid = self.ctx.qid,
                entries = self.entries.len(),
                "io_uring queue: one more entry (pooled requests hold the others)"
            );
            self.register(self.entries.len() - 1)?;
        }
        Ok(())
    }

    /// Entry `i` will carry no more requests.
    fn end(&mut self, i: usize) {
        let e = &mut self.entries[i];
        if e.state == EntryState::Ended {
            return;
        }
        e.state = EntryState::Ended;
        if let Some(owner) = e.held_by.take() {
            self.budget.unhold(owner);
        }
        self.budget.ended += 1;
    }

    /// Puts `reply` in entry `i` and re-arms it with COMMIT_AND_FETCH.
    fn commit(&mut self, i: usize, reply: Option<Vec<u8>>) -> io::Result<()> {
        let Some(e) = self.entries.get_mut(i) else {
            return Err(io::Error::other(format!("reply for no entry ({i})")));
        };
        if e.state != EntryState::Busy {
            return Ok(());
        }
        if let Some(owner) = e.held_by.take() {
            self.budget.unhold(owner);
        }
        let out_len = std::mem::size_of::<wire::OutHeader>();
        // A request on the ring always owes a reply (FORGET and INTERRUPT stay on /dev/fuse).
        let mut reply = reply.unwrap_or_else(|| wire::reply_err(e.commit_id, Errno::ENOSYS as i32));
        if reply.len() < out_len || reply.len() - out_len > PAYLOAD_SIZE {
            crate::warn_limited!(len = reply.len(), "reply does not fit a ring entry");
            reply = wire::reply_err(e.commit_id, Errno::EIO as i32);
        }
        let (out, args) = reply.split_at(out_len);
        let Some((header, payload)) = self.ring.bytes_pair(e.header, e.payload) else {
            return Err(still_lent(i));
        };
        payload[..args.len()].copy_from_slice(args);
        header[..out_len].copy_from_slice(out);
        let ent = RingEntInOut {
            commit_id: e.commit_id,
            // The payload buffer bounds `args` far below 4 GiB.
            payload_sz: u32::try_from(args.len()).map_err(|_| io::Error::from(Errno::EOVERFLOW))?,
            ..Default::default()
        };
        header[ring::ENT_IN_OUT..ring::HEADER_SIZE].copy_from_slice(ent.as_bytes());
        e.state = EntryState::Waiting;
        let req = RingCmdReq {
            commit_id: e.commit_id,
            qid: self.ctx.qid,
            ..Default::default()
        };
        let (cmd, set) = (req.as_bytes(), (e.buffers, false));
        let op = ring::CMD_COMMIT_AND_FETCH;
        self.ring
            .push_fuse_cmd(&self.ctx.fd, op, cmd, i as u64, set)
    }
}

/// A queue found entry `i`'s buffers with the kernel while it owns the entry: a bookkeeping bug.
fn still_lent(i: usize) -> io::Error {
    io::Error::other(format!("entry {i}'s buffers are still with the kernel"))
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;

    #[test]
    fn possible_cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0,2-5"), Some(6));
        assert_eq!(parse_cpu_list("x"), None);
        assert!(possible_cpus().unwrap() >= 1);
    }

    /// What a queue does with its budget: hold, then register what is missing.
    fn hold(b: &mut EntryBudget, owner: u32) -> bool {
        if !b.may_hold(owner) {
            return false;
        }
        b.hold(owner);
        b.made += b.missing();
        true
    }

    #[test]
    fn pooled_requests_always_leave_free_entries() {
        let mut b = EntryBudget {
            made: QUEUE_DEPTH,
            ..Default::default()
        };
        for n in 1..=QUEUE_DEPTH - FREE_ENTRIES {
            assert!(hold(&mut b, n as u32));
            assert_eq!(b.made, QUEUE_DEPTH, "no new entry while enough are free");
        }
        // From here each held entry brings a new one, per owner up to its share.
        let owners = (MAX_ENTRIES - FREE_ENTRIES) / OWNER_ENTRIES + 1;
        for owner in 100..100 + owners as u32 {
            while hold(&mut b, owner) {
                assert_eq!(b.free(), FREE_ENTRIES);
            }
            let share = b.held_by_owner[&owner];
            assert!(share == OWNER_ENTRIES || b.made == MAX_ENTRIES, "{b:?}");
        }
        // At the cap: nobody holds more, the free entries stay free.
        assert_eq!(b.made, MAX_ENTRIES);
        assert_eq!(b.free(), FREE_ENTRIES);
        assert!(!b.may_hold(7));
        // An answer frees an entry for the next pooled request, without a new one.
        b.unhold(100);
        assert!(hold(&mut b, 7));
        assert_eq!((b.made, b.free()), (MAX_ENTRIES, FREE_ENTRIES));
        // Ended entries are not free: the queue replaces them within the cap.
        let mut b = EntryBudget {
            made: QUEUE_DEPTH,
            ended: QUEUE_DEPTH - 1,
            ..Default::default()
        };
        assert_eq!(b.missing(), 1);
        assert!(hold(&mut b, 1));
        assert_eq!(b.free(), FREE_ENTRIES);
    }
}
