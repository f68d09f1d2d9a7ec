//! The worker pool that runs requests which call into the service.
//!
//! A request may wait on its caller: process_vm on memory behind the caller's own userfaultfd or
//! FUSE file can block for as long as the caller likes. So the pool is built for callers that try:
//! - a fixed number of threads, started once: no number of concurrent requests makes the daemon
//!   spawn more (the old design grew up to tokio's 512 blocking threads and then starved);
//! - requests queue per user id (the FUSE header's uid) and at most [`PoolConfig::per_user`] of
//!   one user run at once, users taken round-robin: one user's stalled requests hold only that
//!   user's share of the threads, everyone else keeps being served;
//! - a session's readers run a request in place only within the same per-user share
//!   ([`Pool::run_in_place`]), so the share bounds a user's requests on readers and workers
//!   together;
//! - the reader never waits for the pool (it must stay free to answer the daemon's own queries and
//!   to see new requests), so the queue is bounded by the kernel instead: every queued request is a
//!   client thread blocked in a syscall, carrying at most one message of `MAX_WRITE` bytes; and
//!   the bytes one user may have queued are capped ([`PoolConfig::queued_bytes_per_user`]): past
//!   that, [`Pool::submit`] refuses and the request is answered ENOMEM at once;
//! - a panic in a job is caught by the job's own wrapper (see `session`); a worker never dies.
//!
//! [`Pool::drain`] waits, with a deadline, for the queue to empty at shutdown: requests stuck on a
//! client must not keep SIGTERM from completing.

use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Sizes of a pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Worker threads.
    pub threads: usize,
    /// Jobs of one key (user id) running at once.
    pub per_user: usize,
    /// Message bytes one key may have waiting in its queue (beyond one message).
    pub queued_bytes_per_user: usize,
}

impl PoolConfig {
    /// The request pool: enough threads that a few stalled users leave plenty for the rest.
    pub fn requests() -> Self {
        Self {
            threads: 32,
            per_user: 8,
            queued_bytes_per_user: 16 << 20,
        }
    }
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<(Job, usize)>,
    queued_bytes: usize,
    running: usize,
    /// In `State::ready` (has a queued job and room to run it).
    scheduled: bool,
}

#[derive(Default)]
struct State {
    lanes: FxHashMap<u32, Lane>,
    /// Keys with a job that may start now, in round-robin order.
    ready: VecDeque<u32>,
    queued: usize,
    running: usize,
    stopping: bool,
    /// Threads in [`Pool::drain`]: only then is going idle worth a wake-up (a syscall).
    draining: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Workers wait here for `ready`.
    work: Condvar,
    /// `drain` waits here for the pool to go idle.
    idle: Condvar,
    per_user: usize,
    queued_bytes_per_user: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Jobs run outside the lock and catch their panics; a poisoned lock still holds consistent
        // counters, so carry on rather than stop serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn schedule(&self, st: &mut State, key: u32) {
        let per_user = self.per_user;
        if let Some(lane) = st.lanes.get_mut(&key) {
            if !lane.scheduled && !lane.queue.is_empty() && lane.running < per_user {
                lane.scheduled = true;
                st.ready.push_back(key);
                self.work.notify_one();
            }
        }
    }
}

impl Shared {
    /// Counts one job of `key` (on a worker or run in place) as ended.
    fn finish(&self, key: u32) {
        let mut st = self.lock();
        st.running = st.running.saturating_sub(1);
        let remove = match st.lanes.get_mut(&key) {
            Some(lane) => {
                lane.running = lane.running.saturating_sub(1);
                lane.running == 0 && lane.queue.is_empty()
            }
            None => false,
        };
        if remove {
            st.lanes.remove(&key);
        } else {
            self.schedule(&mut st, key);
        }
        if st.queued + st.running == 0 && st.draining > 0 {
            self.idle.notify_all();
        }
    }
}

/// A job of one key counted as running although no worker runs it: the thread that holds this
/// runs it in place (a session's reader). Ends on drop.
pub struct InPlace {
    shared: Arc<Shared>,
    key: u32,
}

impl Drop for InPlace {
    fn drop(&mut self) {
        self.shared.finish(self.key);
    }
}

/// A fixed set of threads serving per-key fair queues.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// Starts `cfg.threads` workers named `name`.
    pub fn new(name: &str, cfg: PoolConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            per_user: cfg.per_user.max(1),
            queued_bytes_per_user: cfg.queued_bytes_per_user,
        });
        let mut threads = Vec::with_capacity(cfg.threads);
        for _ in 0..cfg.threads.max(1) {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || worker(&s));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let pool = Self { shared, threads };
                    drop(pool);
                    return Err(e);
                }
            }
        }
        Ok(Self { shared, threads })
    }

    /// Queues `job`, which carries `bytes` of request data, in the lane of `key`. Never blocks.
    /// Gives the job back when that lane already holds its share of queued bytes.
    pub fn submit(&self, key: u32, bytes: usize, job: Job) -> Result<(), Job> {
        let limit = self.shared.queued_bytes_per_user;
        let mut st = self.shared.lock();
        let lane = st.lanes.entry(key).or_default();
        // A weightless job (a RELEASE) is never refused.
        if bytes > 0 && !lane.queue.is_empty() && lane.queued_bytes.saturating_add(bytes) > limit {
            return Err(job);
        }
        lane.queue.push_back((job, bytes));
        lane.queued_bytes += bytes;
        st.queued += 1;
        self.shared.schedule(&mut st, key);
        Ok(())
    }

    /// Counts a job of `key` as running, to be run by the caller in place, when the key has
    /// nothing queued and is under its share of running jobs ([`PoolConfig::per_user`], jobs in
    /// place included): the same limit as on the workers, so one user's stalled jobs hold at most
    /// its share of all the threads that run jobs. None: submit it instead.
    pub fn run_in_place(&self, key: u32) -> Option<InPlace> {
        let mut st = self.shared.lock();
        if st.stopping {
            return None;
        }
        let lane = st.lanes.entry(key).or_default();
        if !lane.queue.is_empty() || lane.running >= self.shared.per_user {
            if lane.running == 0 && lane.queue.is_empty() {
                st.lanes.remove(&key);
            }
            return None;
        }
        lane.running += 1;
        st.running += 1;
        Some(InPlace {
            shared: self.shared.clone(),
            key,
        })
    }

    /// Jobs queued and running.
    pub fn load(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.queued, st.running)
    }

    /// Waits until nothing is queued or running, at most `timeout`. True if the pool went idle.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        st.draining += 1;
        while st.queued + st.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.draining -= 1;
                return false;
            }
            st = self
                .shared
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.draining -= 1;
        true
    }
}

impl Drop for Pool {
    /// Stops the workers once their current job ends; queued jobs are dropped (their callers get
    /// an error from the kernel when the connection goes). Stuck workers are not waited for.
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.lanes.clear();
            st.ready.clear();
            st.queued = 0;
        }
        self.shared.work.notify_all();
        self.shared.idle.notify_all();
        for t in std::mem::take(&mut self.threads) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn worker(s: &Shared) {
    loop {
        let (key, job) = {
            let mut st = s.lock();
            loop {
                if st.stopping {
                    return;
                }
                if let Some(key) = st.ready.pop_front() {
                    let lane = st.lanes.get_mut(&key).expect("a ready key has a lane");
                    lane.scheduled = false;
                    let Some((job, bytes)) = lane.queue.pop_front() else {
                        continue;
                    };
                    lane.queued_bytes -= bytes;
                    lane.running += 1;
                    st.queued -= 1;
                    st.running += 1;
                    // More of this user may run beside it, behind the others already waiting.
                    s.schedule(&mut st, key);
                    break (key, job);
                }
                st = s.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A panic is caught inside the job (it owes its caller a reply); this is a last guard so
        // the counters stay right even if that wrapper itself unwinds.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        s.finish(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn cfg(threads: usize, per_user: usize) -> PoolConfig {
        PoolConfig {
            threads,
            per_user,
            queued_bytes_per_user: 1000,
        }
    }

    #[test]
    fn runs_every_job() {
        let pool = Pool::new("t", cfg(3, 2)).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..200u32 {
            let d = done.clone();
            let job: Job = Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            });
            assert!(pool.submit(i % 5, 10, job).is_ok());
        }
        assert!(pool.drain(Duration::from_secs(10)));
        assert_eq!(done.load(Ordering::SeqCst), 200);
        assert_eq!(pool.load(), (0, 0));
    }

    #[test]
    fn a_stalled_user_does_not_starve_another() {
        let pool = Pool::new("t", cfg(4, 2)).unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let started = Arc::new(AtomicUsize::new(0));
        // User 1 floods with jobs that block until released.
        for _ in 0..50 {
            let (rx, st) = (release_rx.clone(), started.clone());
            let job: Job = Box::new(move || {
                st.fetch_add(1, Ordering::SeqCst);
                let _ = rx.lock().unwrap().recv();
            });
            assert!(pool.submit(1, 10, job).is_ok());
        }
        // Its queue is full by bytes now: more is refused (but never a weightless job); another
        // user's big message is not.
        assert!(pool.submit(1, 600, Box::new(|| ())).is_err());
        assert!(pool.submit(1, 0, Box::new(|| ())).is_ok());
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || tx.send(()).unwrap());
        assert!(pool.submit(2, 5000, job).is_ok());
        rx.recv_timeout(Duration::from_secs(10))
            .expect("user 2 starved by user 1");
        // User 1 never held more than its share of the threads.
        assert!(started.load(Ordering::SeqCst) <= 2);
        assert!(!pool.drain(Duration::from_millis(1)));
        for _ in 0..50 {
            release_tx.send(()).unwrap();
        }
        assert!(pool.drain(Duration::from_secs(10)));
        assert_eq!(started.load(Ordering::SeqCst), 50);
    }

    #[test]
    fn jobs_in_place_count_against_the_users_share() {
        let pool = Pool::new("t", cfg(2, 2)).unwrap();
        let first = pool.run_in_place(1).expect("under its share");
        let second = pool.run_in_place(1).expect("under its share");
        assert!(pool.run_in_place(1).is_none(), "at its share");
        let other = pool.run_in_place(2);
        assert!(other.is_some(), "another user has its own share");
        assert_eq!(pool.load(), (0, 3));
        // A job submitted now waits for the share; once it is queued nothing of user 1 runs in
        // place before it.
        let (tx, rx) = mpsc::channel();
        assert!(pool
            .submit(1, 10, Box::new(move || tx.send(()).unwrap()))
            .is_ok());
        assert_eq!(pool.load(), (1, 3), "queued behind the share");
        assert!(pool.run_in_place(1).is_none(), "behind its queued job");
        drop(first);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the queued job starts once the share frees");
        drop((second, other));
        assert!(pool.drain(Duration::from_secs(10)));
        assert!(pool.run_in_place(1).is_some());
    }

    #[test]
    fn a_panicking_job_leaves_the_pool_working() {
        let pool = Pool::new("t", cfg(1, 1)).unwrap();
        assert!(pool
            .submit(0, 0, Box::new(|| panic!("job panics on purpose")))
            .is_ok());
        let (tx, rx) = mpsc::channel();
        assert!(pool
            .submit(0, 0, Box::new(move || tx.send(7).unwrap()))
            .is_ok());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(7));
        assert!(pool.drain(Duration::from_secs(10)));
    }
}
