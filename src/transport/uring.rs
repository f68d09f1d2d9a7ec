//! FUSE over io_uring: ring threads pinned per possible CPU, each answering its requests in place.
//!
//! The kernel (≥ 6.14, CONFIG_FUSE_IO_URING, the fuse module's `enable_uring` set) offers it in
//! INIT; once our reply accepts it and every CPU's queue has an entry registered, each request
//! goes to the queue of the CPU its caller runs on, so the caller is answered on its own CPU
//! without waking another (FACTS: ~16 µs both ways vs 15.7 / 84.9 µs for libfuse3 over
//! /dev/fuse). INIT, FORGET, INTERRUPT and notifications stay on /dev/fuse (`session`).
//!
//! # One entry per thread
//!
//! Each ring thread ([`uring_thread`]) owns a ring (IORING_SETUP_SQE128) with exactly one entry: a
//! header buffer (`wire::ring`) and a payload buffer, handed to the kernel with URING_CMD
//! REGISTER and re-armed with COMMIT_AND_FETCH, which also carries the answer. A CPU's queue is
//! served by a set of such threads ([`CpuQueue`]), [`INITIAL_THREADS`] to begin with. The kernel
//! hands a request to an available entry (the one made available last first), and a request's
//! completion can only be reaped by the thread that armed the entry. With one entry per thread, a
//! thread busy with a request has nothing else the kernel could give it: a thread that waits on
//! its caller (a userfaultfd page, a FUSE-backed mapping) holds back only its own request, while
//! the CPU's other threads keep answering.
//!
//! So requests are handled in place, as the /dev/fuse readers do: a request that may wait on its
//! caller ([`Lane::User`]) is handled on the ring thread only while another thread of the CPU is
//! idle (or one is started now) and its user is under its share of the pool
//! (`Pools::run_in_place`); otherwise it goes to the user's pool lane, and the thread waits for the
//! worker's answer in its mailbox (an eventfd read on its ring). Requests that cannot wait
//! ([`Lane::Inline`]) are always answered in place.
//!
//! A thread submits its COMMIT_AND_FETCH and returns to userspace before it waits
//! (`Ring::submit_then_wait`): a caller on the same CPU, woken by the answer, runs then and its
//! next request only queues task work for the entry, which runs on the thread's way back (the ring
//! does not defer it); so the thread finds the request without sleeping and being woken for it
//! (docs/benchmarks.md).
//!
//! # Limits, and the queued-request wedge
//!
//! A CPU has at most [`MAX_THREADS`]. Requests that may wait hold at most `MAX_THREADS -`
//! [`FREE_THREADS`] of them, at most [`OWNER_THREADS`] for one owner (a uid with its subordinate
//! ids); past that such a request is answered ENOMEM at once (a RELEASE is answered at once and
//! torn down on the pool: its answer carries nothing and refusing it would leak a context). The
//! free threads answer inline requests only, which never wait, so no number of stalled callers
//! wedges a CPU.
//!
//! When no entry of a CPU is available, the kernel queues the request and gives it out only when
//! an entry commits an answer: an entry registered later is merely made available. If the threads
//! holding every entry then waited for that queued request (the daemon's own context query,
//! `caller::context_query`, goes to the queue of the CPU asking), nothing would commit again. So
//! every thread started after the first ones is followed by a poke: a short-lived thread moves to
//! that CPU and asks for the mount root's attributes (a forced GETATTR, answered in place), which
//! lands on an available entry, whose commit fetches what was queued. Pokes run side by side: a
//! poke can itself be queued (another request took the new entry first), and if that request
//! holds its thread, the thread started for it brings the next poke.
//!
//! Threads never end while the connection lives (closing a ring would cancel a request the kernel
//! just gave its entry). Teardown: the kernel ends every entry with -ENOTCONN when the connection
//! goes (unmount, abort), and its thread ends; [`Queues::stop`] (the transport's shutdown, after the
//! pool drained) tells each thread through its mailbox.

#[path = "uring_thread.rs"]
mod uring_thread;

use super::handler::Handler;
use super::session::Pools;
use super::stats::TransportStats;
use crate::sys::uring::FuseDevice;
use nix::errno::Errno;
use rustc_hash::FxHashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uring_thread::Mailbox;

/// Ring threads a CPU starts with: one answers in place while the other waits for the next request.
pub const INITIAL_THREADS: usize = 2;
/// Most ring threads of one CPU (each has one entry with a `PAYLOAD_SIZE` buffer, backed only as
/// far as messages used it).
pub const MAX_THREADS: usize = 256;
/// Ring threads of a CPU that requests which may wait never hold.
pub const FREE_THREADS: usize = 2;
/// Most ring threads of one CPU that one owner's requests hold (in place or on the pool).
pub const OWNER_THREADS: usize = MAX_THREADS / 4;
/// Replacements one CPU starts for entries the kernel ended with an error (not the connection's
/// end): a kernel that keeps refusing entries must not make the daemon spin.
const MAX_REPLACEMENTS: usize = 16;
/// How long [`Queues::stop`] waits for ring threads, and how often it looks.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_POLL: Duration = Duration::from_millis(5);

/// Which threads of one CPU are idle, and which hold requests that may wait.
#[derive(Debug, Default)]
struct Budget {
    /// Threads started and not ended.
    live: usize,
    /// Threads whose entry waits with the kernel (starting ones included).
    idle: usize,
    /// Threads holding a request that may wait.
    held: usize,
    held_by_owner: FxHashMap<u32, usize>,
    replacements: usize,
    stopping: bool,
}

impl Budget {
    /// A thread took a request: how many others are idle now.
    fn take(&mut self) -> usize {
        self.idle = self.idle.saturating_sub(1);
        self.idle
    }

    fn give_back(&mut self) {
        self.idle += 1;
    }

    /// Whether `owner` may hold one more thread with a request that may wait.
    fn may_hold(&self, owner: u32) -> bool {
        let owners = self.held_by_owner.get(&owner).copied().unwrap_or(0);
        owners < OWNER_THREADS && self.held < MAX_THREADS - FREE_THREADS
    }

    fn hold(&mut self, owner: u32) {
        self.held += 1;
        *self.held_by_owner.entry(owner).or_default() += 1;
    }

    fn unhold(&mut self, owner: u32) {
        self.held = self.held.saturating_sub(1);
        if let Some(n) = self.held_by_owner.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.held_by_owner.remove(&owner);
            }
        }
    }

    /// Counts a thread about to start (idle from the start); false when stopping or at the cap.
    fn start_one(&mut self) -> bool {
        if self.stopping || self.live >= MAX_THREADS {
            return false;
        }
        self.live += 1;
        self.idle += 1;
        true
    }

    /// A thread ended (`was_idle`: its entry was with the kernel) or failed to start.
    fn end_one(&mut self, was_idle: bool) {
        self.live = self.live.saturating_sub(1);
        if was_idle {
            self.idle = self.idle.saturating_sub(1);
        }
    }
}

/// What every ring thread of a connection shares.
struct Shared {
    fd: Arc<FuseDevice>,
    handler: Arc<Handler>,
    pools: Arc<Pools>,
    stats: Arc<TransportStats>,
    /// The mount's root (O_PATH), which a poke asks about (see the module comment): held from the
    /// start, so a lazy unmount at shutdown or a mount over it does not divert pokes. Shared
    /// with each poke thread on its own: a poke holds nothing else of the connection.
    root: Arc<OwnedFd>,
}

/// The ring threads of one CPU's queue.
struct CpuQueue {
    qid: u16,
    shared: Arc<Shared>,
    budget: Mutex<Budget>,
    /// Each thread's mailbox and handle, for [`Queues::stop`].
    threads: Mutex<Vec<(Arc<Mailbox>, std::thread::JoinHandle<()>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing that can panic runs under these locks but for allocation; carry on when poisoned.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CpuQueue {
    fn budget(&self) -> MutexGuard<'_, Budget> {
        lock(&self.budget)
    }

    /// Starts one more ring thread and waits until its entry is registered; true if it started.
    /// Every thread but the first ones is followed by a poke of this CPU's queue.
    fn start_thread(self: &Arc<Self>, first: bool) -> io::Result<bool> {
        if !self.budget().start_one() {
            return Ok(false);
        }
        let mailbox = match Mailbox::new() {
            Ok(m) => Arc::new(m),
            Err(e) => {
                self.budget().end_one(true);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel();
        let (queue, mb) = (self.clone(), mailbox.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("uiommufd-ring{}", self.qid))
            .spawn(move || uring_thread::run(queue, mb, &tx));
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                self.budget().end_one(true);
                return Err(e);
            }
        };
        let started = rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("ring thread ended at start")));
        {
            let mut threads = lock(&self.threads);
            if self.budget().stopping {
                mailbox.stop();
            }
            threads.push((mailbox, handle));
        }
        // A thread that failed to start counted itself out.
        started?;
        if !first {
            self.shared.stats.count_extra_entry();
            tracing::debug!(qid = self.qid, "io_uring: one more ring thread");
            self.poke();
        }
        Ok(true)
    }

    /// Pokes this CPU's queue from a short-lived thread (see the module comment).
    fn poke(self: &Arc<Self>) {
        if self.budget().stopping {
            return;
        }
        let (root, qid) = (self.shared.root.clone(), self.qid);
        let poker = std::thread::Builder::new()
            .name(format!("uiommufd-poke{qid}"))
            .spawn(move || poke(root, qid));
        if let Err(e) = poker {
            crate::warn_limited!(qid = self.qid, error = %e, "io_uring: starting a poke");
        }
    }

    /// Starts a thread when none of this CPU is idle; true when one is idle now.
    fn ensure_idle(self: &Arc<Self>, idle_others: usize) -> bool {
        if idle_others > 0 {
            return true;
        }
        match self.start_thread(false) {
            Ok(started) => started,
            Err(e) => {
                crate::warn_limited!(qid = self.qid, error = %e, "starting a ring thread");
                false
            }
        }
    }

    /// Replaces a thread whose entry the kernel ended with an error (not one that refuses every
    /// entry: io_uring turned off for the connection, or its abort), a bounded number of times.
    fn replace_failed(self: &Arc<Self>, error: Errno) {
        if matches!(
            error,
            Errno::EOPNOTSUPP | Errno::ECONNABORTED | Errno::ENOTCONN
        ) {
            return;
        }
        let replace = {
            let mut b = self.budget();
            let go = b.idle == 0 && b.replacements < MAX_REPLACEMENTS && !b.stopping;
            b.replacements += usize::from(go);
            go
        };
        if replace {
            self.ensure_idle(0);
        }
    }
}

/// The ring threads of one FUSE connection, every CPU's.
pub struct Queues {
    cpus: Vec<Arc<CpuQueue>>,
}

impl Queues {
    /// Starts [`INITIAL_THREADS`] ring threads per possible CPU on `fd` (the connection's
    /// /dev/fuse fd, or a duplicate), each with its entry registered, then pokes every CPU once
    /// (a request queued while the last queues registered is fetched); pokes ask for `mount`'s
    /// attributes. Returns once every thread is set up; the kernel moves requests to the rings when
    /// the last queue's first entry is registered. `stats` counts the requests and the threads
    /// started beyond the first ones. Fails when the daemon may not run on every online CPU (a
    /// CPU set from systemd's AllowedCPUs=, taskset): a poke must run on the CPU it pokes.
    pub fn start(
        fd: OwnedFd,
        mount: PathBuf,
        handler: Arc<Handler>,
        pools: Arc<Pools>,
        stats: Arc<TransportStats>,
    ) -> io::Result<Self> {
        let cpus = possible_cpus()?;
        let qids = u16::try_from(cpus).map_err(|_| io::Error::other("too many CPUs"))?;
        check_affinity_covers_online_cpus()?;
        let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC;
        let root = rustix::fs::open(&mount, flags, rustix::fs::Mode::empty())?;
        let shared = Arc::new(Shared {
            fd: Arc::new(FuseDevice::new(fd)?),
            handler,
            pools,
            stats,
            root: Arc::new(root),
        });
        let mut queues = Self { cpus: Vec::new() };
        for qid in 0..qids {
            let cpu = Arc::new(CpuQueue {
                qid,
                shared: shared.clone(),
                budget: Mutex::default(),
                threads: Mutex::default(),
            });
            queues.cpus.push(cpu.clone());
            for _ in 0..INITIAL_THREADS {
                if !cpu.start_thread(true)? {
                    return Err(io::Error::other(format!(
                        "io_uring queue {qid}: no ring thread started"
                    )));
                }
            }
        }
        for cpu in &queues.cpus {
            cpu.poke();
        }
        Ok(queues)
    }

    /// Number of queues (one per possible CPU).
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// Tells every ring thread to end and waits for them, at most [`STOP_TIMEOUT`]: a thread
    /// answering a request in place whose caller stalls it is left behind (the transport then
    /// does not tear contexts down, and the process's exit ends it). Answers posted after this
    /// are dropped (their callers get an error when the connection ends).
    pub fn stop(&mut self) {
        let deadline = Instant::now() + STOP_TIMEOUT;
        for cpu in &self.cpus {
            cpu.budget().stopping = true;
        }
        let mut left = Vec::new();
        loop {
            // Threads started while stopping was being set are in the lists too.
            for cpu in &self.cpus {
                for (mailbox, thread) in lock(&cpu.threads).drain(..) {
                    mailbox.stop();
                    left.push(thread);
                }
            }
            let (done, busy): (Vec<_>, Vec<_>) = left.into_iter().partition(|t| t.is_finished());
            for t in done {
                let _ = t.join();
            }
            left = busy;
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    threads = left.len(),
                    "io_uring ring threads still answering requests in place at stop; left behind"
                );
                return;
            }
            std::thread::sleep(STOP_POLL);
        }
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A poke of CPU `qid`'s queue: moves there and forces a GETATTR of the mount's `root`, which
/// the kernel puts on that CPU's queue. Returns with its answer, or an error once the connection
/// ends.
///
/// The GETATTR is a request to this very daemon, and once an entry has taken it the poke waits
/// uninterruptibly for the answer. Were the daemon to die (SIGKILL, a crash, a shutdown with the
/// request in a thread's entry) the answer never comes, and the connection would end only when
/// its /dev/fuse fds close, which a thread sharing the fd table keeps open: the process could
/// never finish dying and its mount would hang. So the poke first takes a private fd table
/// holding the root alone; the daemon's end then closes /dev/fuse, which ends the request.
fn poke(root: Arc<OwnedFd>, qid: u16) {
    if let Err(e) = pin_to_cpu(usize::from(qid)) {
        // An offline CPU (the start checked every online one is allowed): no caller runs there.
        tracing::debug!(qid, error = %e, "io_uring poke skipped");
        return;
    }
    // The root's Arc lives until after the table is private, so its number is valid when
    // copied; should this thread drop the last one, it closes only its own copy (the
    // daemon's copy then stays open until the process ends).
    if let Err(e) = crate::sys::fd::private_fd_table_keeping(root.as_fd()) {
        // Linux < 5.9: poked as before, from the shared table.
        tracing::debug!(qid, error = %e, "io_uring poke: no private fd table");
    }
    let flags = rustix::fs::AtFlags::STATX_FORCE_SYNC | rustix::fs::AtFlags::EMPTY_PATH;
    if let Err(e) = rustix::fs::statx(&*root, "", flags, rustix::fs::StatxFlags::BASIC_STATS) {
        tracing::debug!(qid, error = %e, "io_uring poke");
    }
}

fn pin_to_cpu(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// Fails unless a thread of the daemon can be pinned to every online CPU
/// (`/sys/devices/system/cpu/online`): not when a cpuset (systemd's AllowedCPUs=) leaves one out.
/// A narrower inherited affinity (taskset) is fine: ring threads and pokes pin themselves.
fn check_affinity_covers_online_cpus() -> io::Result<()> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    let online = parse_cpu_ranges(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse the online CPUs {text:?}"),
        )
    })?;
    // Tried on a thread of its own, which ends with whatever affinity it got.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                for &cpu in &online {
                    if pin_to_cpu(cpu).is_err() {
                        return Err(io::Error::other(format!(
                            "the daemon may not run on CPU {cpu}, which is online: io_uring needs \
                             every online CPU (a request queued on a CPU is fetched by a poke \
                             from that CPU)"
                        )));
                    }
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("checking the CPUs panicked")))
    })
}

/// Every CPU of a list such as `0-3` or `0,2-5`.
fn parse_cpu_ranges(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let first: usize = first.trim().parse().ok()?;
        let last: usize = last.trim().parse().ok()?;
        cpus.extend(first..=last);
    }
    Some(cpus)
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
    parse_cpu_ranges(text)?.into_iter().max().map(|h| h + 1)
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
        assert_eq!(parse_cpu_ranges("0,2-4\n"), Some(vec![0, 2, 3, 4]));
        check_affinity_covers_online_cpus().expect("the tests run on every CPU");
        assert!(possible_cpus().unwrap() >= 1);
    }

    /// What a ring thread does with a request that may wait: take, hold if allowed, and make
    /// sure another thread is idle.
    fn hold(b: &mut Budget, owner: u32) -> bool {
        let idle_others = b.take();
        if !b.may_hold(owner) {
            b.give_back();
            return false;
        }
        b.hold(owner);
        if idle_others == 0 {
            b.start_one();
        }
        true
    }

    #[test]
    fn held_threads_leave_free_ones_and_owners_keep_to_their_share() {
        let mut b = Budget::default();
        for _ in 0..INITIAL_THREADS {
            assert!(b.start_one());
        }
        // One owner holds its share, no more; each held thread brings a new idle one.
        while hold(&mut b, 1) {
            assert_eq!(b.idle, 1, "{b:?}");
        }
        assert_eq!(b.held_by_owner[&1], OWNER_THREADS);
        // Others fill up to the free threads, never into them.
        let mut owner = 2;
        while b.held < MAX_THREADS - FREE_THREADS {
            if !hold(&mut b, owner) {
                owner += 1;
            }
        }
        assert!(!b.may_hold(owner + 1));
        assert_eq!(b.live, MAX_THREADS - FREE_THREADS + 1);
        assert!(!b.stopping);
        // Inline requests still find idle threads, started up to the cap.
        assert_eq!(b.take(), 0);
        assert!(b.start_one());
        assert!(b.live <= MAX_THREADS);
        // An answer frees a thread for the next request.
        b.unhold(1);
        b.give_back();
        assert!(b.may_hold(7));
        b.stopping = true;
        assert!(!b.start_one(), "no thread starts while stopping");
        b.end_one(true);
        assert_eq!(b.live, MAX_THREADS - FREE_THREADS + 1);
    }
}
