//! Faulting a caller's page in the way the kernel's pin does: waiting for a page that a
//! userfaultfd has yet to serve, while the caller is held in its request.
//!
//! A read through a bound `mem` file never waits for such a page: the kernel fails it at once
//! (EIO) without telling the userfaultfd's handler. The kernel's own pin of the same page
//! (iommufd's IOAS_MAP, run in the caller's context) waits until the handler has served it, as
//! QEMU's postcopy migration expects of guest memory. process_vm_readv waits the same way, but
//! reaches a process through a thread id, which the identity design refuses for memory reached
//! after a request (see [`super::identity`]).
//!
//! Within a request it is safe for the one thread that issued it: that thread waits for the
//! answer (uninterruptibly, once the daemon has read the request), so its id names it and an exec
//! of its process cannot finish. [`RequestCaller`] marks that thread for as long as the daemon
//! thread serves the request (whatever the request: an attach pins areas mapped earlier);
//! [`ProcessHandle::fault_in`] waits through it only for a handle of the same process, and only
//! after checking that the process still has the bound address space and the thread still runs
//! the bound program. The transport marks the caller of every FUSE and CUSE ioctl.
//!
//! The kernel's pin gives up when its caller is killed; process_vm_readv only when the *daemon*
//! is. And a killed caller never lets go of its userfaultfd by itself: its last thread waits
//! for the daemon's answer, keeping its fd table (and so the userfaultfd) open, so the page would
//! never come. So the waiting read runs on a thread of its own while the request's thread looks
//! every [`KILL_CHECK`] for SIGKILL pending on the caller and then answers EINTR (as the kernel's
//! pin fails); the caller then ends, its userfaultfd closes, and the read returns. Such threads
//! are capped per user (subordinate ids counting as their owner) and in all ([`WAITS_PER_USER`],
//! [`WAITS_TOTAL`]): one whose userfaultfd
//! lives on elsewhere unserved waits until the daemon ends; beyond the cap a fault-in that would
//! wait is EFAULT at once.

use super::identity::{exec_identity, ProcessHandle};
use super::user_counts::UserCounts;
use super::{CallerMemory, ProcessMemory};
use nix::errno::Errno;
use nix::unistd::Pid;
use std::cell::Cell;
use std::marker::PhantomData;
use std::time::Duration;

/// How often a request waiting for its caller's page looks for SIGKILL pending on the caller.
pub const KILL_CHECK: Duration = Duration::from_millis(50);
/// Threads waiting for a page of one user's callers at once.
pub const WAITS_PER_USER: usize = 16;
/// Threads waiting for a page of any caller at once.
pub const WAITS_TOTAL: usize = 256;

/// Waiting threads alive, per uid of their caller, and in all.
static WAITS: UserCounts = UserCounts::new();

thread_local! {
    /// Thread id of the caller whose request this daemon thread serves.
    static SERVING: Cell<Option<i32>> = const { Cell::new(None) };
}

/// While alive: the caller behind `mem` waits in the request this daemon thread is serving.
/// Dropped on the thread that made it (not `Send`). Costs no syscall: what the caller is, is
/// looked up only when a fault-in needs it.
#[must_use = "the caller is marked only while the guard lives"]
pub struct RequestCaller {
    previous: Option<i32>,
    _this_thread: PhantomData<*const ()>,
}

impl RequestCaller {
    /// Marks the thread behind `mem` as the caller held by the request being served.
    pub fn enter(mem: &dyn CallerMemory) -> Self {
        let previous = SERVING.with(|s| s.replace(Some(mem.tid())));
        Self {
            previous,
            _this_thread: PhantomData,
        }
    }

    /// The held caller (thread id and its memory), if it is a thread of the process bound as
    /// `handle` (by number only: [`ProcessHandle::fault_in`] checks the rest).
    fn of(handle: &ProcessHandle) -> Option<(i32, ProcessMemory)> {
        let tid = SERVING.with(Cell::get)?;
        let mem = ProcessMemory::new(tid).ok()?;
        (mem.pid() == handle.tgid()).then_some((tid, mem))
    }
}

impl Drop for RequestCaller {
    fn drop(&mut self) {
        SERVING.with(|s| s.set(self.previous));
    }
}

impl ProcessHandle {
    /// Makes the page holding `addr` present, as a read of it by the process would. EFAULT
    /// when it cannot be had (a hole, a page past the end of its file, the process gone).
    pub fn fault_in(&self, addr: u64) -> Result<(), Errno> {
        let mut byte = [0u8; 1];
        let through_mem = self.read(addr, &mut byte);
        if through_mem != Err(Errno::EFAULT) {
            return through_mem;
        }
        // Possibly a page a userfaultfd has not served yet: wait for it through the held
        // caller, if there is one and it still runs the program this handle was bound to.
        let Some((tid, mem)) = RequestCaller::of(self) else {
            return through_mem;
        };
        if !self.alive() || exec_identity(tid).ok().as_deref() != Some(self.exec_id()) {
            return through_mem;
        }
        let Ok(uid) = mem.credentials().map(|c| c.uid) else {
            return through_mem;
        };
        // Subordinate ids count as their owner, as for every per-user share.
        static OWNERS: std::sync::OnceLock<super::subids::SubordinateIds> =
            std::sync::OnceLock::new();
        let uid = OWNERS
            .get_or_init(super::subids::SubordinateIds::load)
            .owner_of(uid);
        let Some(slot) = WAITS.take(uid, WAITS_PER_USER, WAITS_TOTAL) else {
            crate::warn_limited!(uid, "fault-in: too many waits for unserved pages; EFAULT");
            return through_mem;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("uiommufd-pagewait".into())
            .spawn(move || {
                let _slot = slot;
                let mut byte = [0u8; 1];
                // The thread id must name the held thread when the read starts: an EINTR
                // answer (after which the thread may end and its id be reused) waits for this
                // word. Only the few instructions between it and the syscall remain open.
                let _ = tx.send(Wait::Reading);
                let _ = tx.send(Wait::Read(super::vm_read(
                    Pid::from_raw(tid),
                    addr,
                    &mut byte,
                )));
            });
        if spawned.is_err() {
            return Err(Errno::ENOMEM);
        }
        let mut reading = false;
        loop {
            match rx.recv_timeout(KILL_CHECK) {
                Ok(Wait::Reading) => reading = true,
                Ok(Wait::Read(read)) => return read.map_err(|_| Errno::EFAULT),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(Errno::EFAULT),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if reading && being_killed(tid) => {
                    return Err(Errno::EINTR)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// What the thread waiting for a page tells the request's thread.
enum Wait {
    /// About to read through the held caller's thread id.
    Reading,
    Read(Result<(), Errno>),
}

/// Whether thread `tid` has SIGKILL pending (its process is being killed), or is gone. A status
/// that cannot be read for another reason (no fd or memory left) says neither.
fn being_killed(tid: i32) -> bool {
    match super::identity::read_status(tid) {
        Ok(status) => killed_in_status(&status),
        Err(e) => matches!(e, Errno::ENOENT | Errno::ESRCH),
    }
}

/// SIGKILL in the SigPnd (thread) or ShdPnd (process) mask of a `/proc/<tid>/status` text.
fn killed_in_status(status: &str) -> bool {
    let kill = 1u64 << (libc::SIGKILL - 1);
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .any(|mask| u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & kill != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::uffd::UnservedPage;

    fn this_thread() -> i32 {
        rustix::thread::gettid().as_raw_nonzero().get()
    }

    fn held_tid(h: &ProcessHandle) -> Option<i32> {
        RequestCaller::of(h).map(|(tid, _)| tid)
    }

    /// The mark is per daemon thread, names one process, and nests.
    #[test]
    fn the_mark_names_one_process_on_one_thread_and_nests() {
        let h = ProcessHandle::current().unwrap();
        assert_eq!(held_tid(&h), None);
        {
            let me = ProcessMemory::new(this_thread()).unwrap();
            let _outer = RequestCaller::enter(&me);
            assert_eq!(held_tid(&h), Some(this_thread()));
            {
                // A caller of another process (pid 1) is no thread of `h`'s process.
                let init = ProcessMemory::new(1).unwrap();
                let _inner = RequestCaller::enter(&init);
                assert_eq!(held_tid(&h), None);
            }
            assert_eq!(held_tid(&h), Some(this_thread()));
            let elsewhere = std::thread::scope(|s| s.spawn(|| held_tid(&h)).join());
            assert_eq!(elsewhere.unwrap(), None);
        }
        assert_eq!(held_tid(&h), None);
    }

    /// A page its userfaultfd has not served: without a held caller the fault-in gives up at
    /// once (and its handler never hears of it); with one it waits until the page is served.
    #[test]
    fn an_unserved_page_is_waited_for_only_through_a_held_caller() {
        let stall = match UnservedPage::new() {
            Ok(p) => p,
            Err(e) => {
                assert_ne!(
                    std::env::var("CI").as_deref(),
                    Ok("true"),
                    "userfaultfd: {e}"
                );
                eprintln!("skipped: userfaultfd: {e}");
                return;
            }
        };
        let h = ProcessHandle::current().unwrap();
        assert_eq!(h.fault_in(stall.addr()), Err(Errno::EFAULT));
        assert_eq!(
            stall.next_fault(0),
            None,
            "a read through mem told the handler"
        );
        {
            // A held caller of another process (pid 1) is no way into this one.
            let init = ProcessMemory::new(1).unwrap();
            let _held = RequestCaller::enter(&init);
            assert_eq!(h.fault_in(stall.addr()), Err(Errno::EFAULT));
            assert_eq!(stall.next_fault(0), None, "waited through another process");
        }
        std::thread::scope(|s| {
            let server = s.spawn(|| {
                let fault = stall.next_fault(20_000);
                stall.serve(0x5a).unwrap();
                fault
            });
            let me = ProcessMemory::new(this_thread()).unwrap();
            let _held = RequestCaller::enter(&me);
            assert_eq!(h.fault_in(stall.addr()), Ok(()));
            assert_eq!(
                server.join().unwrap(),
                Some(stall.addr()),
                "the fault waited for"
            );
        });
        let mut byte = [0u8; 1];
        assert_eq!(h.read(stall.addr(), &mut byte), Ok(()));
        assert_eq!(byte, [0x5a]);
    }

    #[test]
    fn sigkill_pending_is_read_from_either_mask() {
        let status = |sig: &str, shd: &str| format!("Name:\tx\nSigPnd:\t{sig}\nShdPnd:\t{shd}\n");
        assert!(!killed_in_status(&status(
            "0000000000000000",
            "0000000000000000"
        )));
        assert!(killed_in_status(&status(
            "0000000000000100",
            "0000000000000000"
        )));
        assert!(killed_in_status(&status(
            "0000000000000000",
            "0000000000000100"
        )));
        // SIGTERM, SIGINT, SIGSTOP: not a kill.
        assert!(!killed_in_status(&status(
            "0000000000004002",
            "0000000000020000"
        )));
        assert!(!being_killed(this_thread()));
        assert!(being_killed(i32::MAX));
    }

    #[test]
    fn waits_are_capped_per_user_and_released() {
        let take = |uid| WAITS.take(uid, WAITS_PER_USER, WAITS_TOTAL);
        // A uid no other test uses.
        let uid = 0xfff0_0001;
        let held: Vec<_> = (0..WAITS_PER_USER).filter_map(|_| take(uid)).collect();
        assert_eq!(held.len(), WAITS_PER_USER);
        assert!(take(uid).is_none());
        let other = take(uid + 1);
        assert!(other.is_some(), "another user still gets one");
        drop(held);
        assert!(take(uid).is_some());
    }

    /// A present page faults in through `mem`; a hole is EFAULT with or without a held caller.
    #[test]
    fn holes_are_efault_with_and_without_a_held_caller() {
        let h = ProcessHandle::current().unwrap();
        let page = vec![1u8; 4096];
        assert_eq!(h.fault_in(page.as_ptr() as u64), Ok(()));
        assert_eq!(h.fault_in(8), Err(Errno::EFAULT));
        let me = ProcessMemory::new(this_thread()).unwrap();
        let _held = RequestCaller::enter(&me);
        assert_eq!(h.fault_in(8), Err(Errno::EFAULT));
        assert_eq!(h.fault_in(page.as_ptr() as u64), Ok(()));
    }
}
