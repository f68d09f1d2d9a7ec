//! The readers of one session: a few threads on the session's device fd, each reading a message,
//! handling it and writing its answer (as libfuse's multi-threaded loop does), so that a request
//! is answered on the thread that read it, with no hand-off to another thread.
//!
//! A request may wait on its caller for as long as the caller likes (see `pool`), so a reader
//! handles a service request ([`Lane::User`]) in place only when both hold:
//! - another reader is left waiting for the next message: one is idle in read(2), or the reader
//!   starts one now (at most [`MAX_READERS`]). The reader that takes the last idle one is the one
//!   that starts the next, so however many readers wait on their callers, one always reads: new
//!   requests, and the daemon's own queries that requests in flight depend on
//!   (`caller::context_query`), are still seen;
//! - the user is under its share ([`Pool::run_in_place`]): requests in place and on the pool's
//!   workers count together, so a stalled user holds at most its share of all those threads.
//!
//! Otherwise the request goes to the pool as before (queued in its user's lane; ENOMEM past the
//! user's byte cap), and the reader goes back to reading. A reader that finds `SPARE_READERS` (4)
//! others idle after answering ends, so the set shrinks again after a burst.
//!
//! Stopping: a reader blocked in read(2) wakes only for a message, the end of the connection or
//! a signal. [`Readers::stop`] raises the stop flag and interrupts every reader still in read
//! with a signal whose handler does nothing, installed without SA_RESTART (so read fails with
//! EINTR), again until each has left; a reader busy with a request leaves once it answered.
//!
//! [`Pool::run_in_place`]: super::pool::Pool::run_in_place

use super::handler::{Handler, Lane};
use super::pool::InPlace;
use super::session::{send, submit_user, Channel, Pools, SessionEnd};
use super::wire;
use crate::sys::signal::{self, ThreadId};
use nix::errno::Errno;
use rustc_hash::FxHashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Readers a session starts with: one reads while the other handles a request in place.
pub const INITIAL_READERS: usize = 2;
/// Most readers of one session; past them requests that may wait go to the pool.
pub const MAX_READERS: usize = 16;
/// A reader that finds this many others idle after answering ends. Not fewer: a client answered
/// on the reader's CPU often sends its next request before that reader is back in read(2), so
/// another reader takes it and, finding none idle, starts one; ending readers sooner than this
/// would start and end a thread every few requests.
const SPARE_READERS: usize = 4;
/// How often [`Readers::stop`] interrupts readers still in read(2), and for how long at most.
const STOP_RETRY: Duration = Duration::from_millis(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Registry {
    /// Readers in (or about to enter) read(2), by id, with their thread to interrupt at stop.
    reading: FxHashMap<u64, ThreadId>,
    /// Readers started that have not read yet (counted as idle).
    starting: usize,
    live: usize,
    next_id: u64,
    stopping: bool,
}

impl Registry {
    fn idle(&self) -> usize {
        self.reading.len() + self.starting
    }
}

struct Shared {
    chan: Arc<Channel>,
    handler: Arc<Handler>,
    pools: Arc<Pools>,
    registry: Mutex<Registry>,
    /// A reader left `reading` or ended ([`Readers::stop`] waits on it).
    left: Condvar,
    /// How the session ended, once it did (the first reader to see it tells).
    end: Mutex<Option<io::Result<SessionEnd>>>,
    ended: Notify,
}

/// The reader threads of one session.
pub struct Readers {
    shared: Arc<Shared>,
}

impl Readers {
    /// Starts [`INITIAL_READERS`] readers on `chan` (a blocking fd).
    pub fn start(chan: Arc<Channel>, handler: Arc<Handler>, pools: Arc<Pools>) -> io::Result<Self> {
        install_wake_handler()?;
        let shared = Arc::new(Shared {
            chan,
            handler,
            pools,
            registry: Mutex::new(Registry::default()),
            left: Condvar::new(),
            end: Mutex::new(None),
            ended: Notify::new(),
        });
        for _ in 0..INITIAL_READERS {
            if !shared.start_reader() {
                let readers = Self { shared };
                readers.stop();
                return Err(io::Error::other("starting the session's reader threads"));
            }
        }
        Ok(Self { shared })
    }

    /// Resolves when the kernel ended the connection (or reading failed).
    pub async fn ended(&self) -> io::Result<SessionEnd> {
        loop {
            let notified = self.shared.ended.notified();
            if let Some(end) = lock(&self.shared.end).take() {
                return end;
            }
            notified.await;
        }
    }

    /// Stops every reader: those in read(2) are interrupted and waited for (at most
    /// `STOP_TIMEOUT`); those busy with a request end once it is answered.
    pub fn stop(&self) {
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut reg = lock(&self.shared.registry);
        reg.stopping = true;
        while reg.idle() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    readers = reg.reading.len(),
                    "session readers did not leave read(2) when interrupted"
                );
                return;
            }
            for &thread in reg.reading.values() {
                // A reader removes itself from `reading` (under this lock, held here) before its
                // thread can end, so `thread` names a live reader.
                if let Err(e) = signal::interrupt_thread(thread, wake_signal()) {
                    tracing::warn!(error = %e, "interrupting a session reader");
                }
            }
            reg = self
                .shared
                .left
                .wait_timeout(reg, STOP_RETRY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Readers alive (busy ones included).
    pub fn live(&self) -> usize {
        lock(&self.shared.registry).live
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing that can panic runs under these locks but for allocation; carry on when poisoned.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Starts one more reader unless stopping or at [`MAX_READERS`]. True if it started.
    fn start_reader(self: &Arc<Self>) -> bool {
        let id = {
            let mut reg = lock(&self.registry);
            if reg.stopping || reg.live >= MAX_READERS {
                return false;
            }
            reg.live += 1;
            reg.starting += 1;
            reg.next_id += 1;
            reg.next_id
        };
        // Each reader reads and answers on a clone of the session's fd where it can be cloned
        // (FUSE; CUSE keeps the one fd).
        let chan = match self.chan.clone_session() {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::debug!(error = %e, "session reader on the shared fd");
                self.chan.clone()
            }
        };
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("uiommufd-reader".into())
            .spawn(move || shared.read_loop(id, &chan));
        if let Err(e) = spawned {
            crate::warn_limited!(error = %e, "starting a session reader");
            let mut reg = lock(&self.registry);
            reg.live -= 1;
            reg.starting -= 1;
            return false;
        }
        true
    }

    fn read_loop(self: Arc<Self>, id: u64, chan: &Arc<Channel>) {
        let mut buf = vec![0u8; wire::BUFFER_SIZE];
        let mut first = true;
        loop {
            if !self.enter_read(id, std::mem::take(&mut first)) {
                break;
            }
            let r = chan.read(&mut buf);
            let idle_others = self.leave_read(id);
            let n = match r {
                Ok(0) => {
                    self.report(Ok(SessionEnd::Disconnected));
                    break;
                }
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENODEV) => {
                        self.report(Ok(SessionEnd::Disconnected));
                        break;
                    }
                    // Interrupted (perhaps by `stop`), or the kernel dropped the request
                    // between wake-up and read (an interrupted caller).
                    Some(libc::EINTR | libc::ENOENT) => continue,
                    _ => {
                        self.report(Err(e));
                        break;
                    }
                },
            };
            self.dispatch(chan, &buf[..n], idle_others);
            if self.is_spare() {
                break;
            }
        }
        let mut reg = lock(&self.registry);
        reg.live -= 1;
        if reg.stopping {
            self.left.notify_all();
        }
    }

    /// Registers this reader as about to read (`first`: no longer starting); false when stopping.
    fn enter_read(&self, id: u64, first: bool) -> bool {
        let mut reg = lock(&self.registry);
        if first {
            reg.starting -= 1;
            if reg.stopping {
                self.left.notify_all();
            }
        }
        if reg.stopping {
            return false;
        }
        reg.reading.insert(id, signal::this_thread());
        true
    }

    /// Unregisters this reader after read(2); returns how many others are idle.
    fn leave_read(&self, id: u64) -> usize {
        let mut reg = lock(&self.registry);
        reg.reading.remove(&id);
        if reg.stopping {
            self.left.notify_all();
        }
        reg.idle()
    }

    /// Whether this reader should end: stopping, or enough others idle.
    fn is_spare(&self) -> bool {
        let reg = lock(&self.registry);
        reg.stopping || (reg.idle() >= SPARE_READERS && reg.live > INITIAL_READERS)
    }

    fn report(&self, end: io::Result<SessionEnd>) {
        let mut slot = lock(&self.end);
        if slot.is_none() {
            *slot = Some(end);
            self.ended.notify_one();
        }
    }

    /// Handles `msg`, read on `chan`, whose answer goes back on `chan` (a request is answered on
    /// the clone that read it).
    fn dispatch(self: &Arc<Self>, chan: &Arc<Channel>, msg: &[u8], idle_others: usize) {
        match self.handler.lane(msg) {
            Lane::Inline => send(chan, self.handler.handle_guarded(msg)),
            Lane::User(uid) => {
                if let Some(turn) = self.in_place(uid, idle_others) {
                    let reply = self.handler.handle_guarded(msg);
                    // The share is given back before the answer is out: whoever sees the answer
                    // sees the share free.
                    drop(turn);
                    send(chan, reply);
                    return;
                }
                let c = chan.clone();
                if !submit_user(&self.pools, &self.handler, uid, msg, move |r| send(&c, r)) {
                    send(chan, Handler::refuse(msg, Errno::ENOMEM));
                }
            }
        }
    }

    /// A turn to handle a request of `uid` here: within the user's share, and with another
    /// reader left reading (`idle_others` when this one left read(2), else one started now).
    fn in_place(self: &Arc<Self>, uid: u32, idle_others: usize) -> Option<InPlace> {
        let turn = self.pools.run_in_place(uid)?;
        (idle_others > 0 || self.start_reader()).then_some(turn)
    }
}

/// The signal that interrupts a reader's read(2) at stop: one of the real-time signals, which
/// nothing else in the daemon uses.
fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// Installs the do-nothing handler of [`wake_signal`] once, without SA_RESTART.
fn install_wake_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), Errno>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| signal::install_noop_handler(wake_signal()));
    r.map_err(io::Error::from)
}

#[cfg(test)]
#[path = "readers_tests.rs"]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod session_tests;
