//! Faulting a caller's page in the way the kernel's pin does: waiting for a page that a
//! userfaultfd has yet to serve, while the caller is held in its request.
//!
//! A read through a bound `mem` file never waits for such a page: the kernel tells the
//! userfaultfd's handler and fails the read at once (EIO). The kernel's own pin of the same page
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

use super::identity::{exec_identity, ProcessHandle};
use super::{CallerMemory, ProcessMemory};
use nix::errno::Errno;
use nix::unistd::Pid;
use std::cell::Cell;
use std::marker::PhantomData;

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

    /// The held caller's thread id, if it is a thread of the process bound as `handle` (by
    /// number only: [`ProcessHandle::fault_in`] checks the rest).
    fn of(handle: &ProcessHandle) -> Option<i32> {
        let tid = SERVING.with(Cell::get)?;
        let tgid = ProcessMemory::new(tid).ok()?.pid();
        (tgid == handle.tgid()).then_some(tid)
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
        let Some(tid) = RequestCaller::of(self) else {
            return through_mem;
        };
        if !self.alive() || exec_identity(tid).ok().as_deref() != Some(self.exec_id()) {
            return through_mem;
        }
        super::vm_read(Pid::from_raw(tid), addr, &mut byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::uffd::UnservedPage;

    fn this_thread() -> i32 {
        rustix::thread::gettid().as_raw_nonzero().get()
    }

    /// The mark is per daemon thread, names one process, and nests.
    #[test]
    fn the_mark_names_one_process_on_one_thread_and_nests() {
        let h = ProcessHandle::current().unwrap();
        assert_eq!(RequestCaller::of(&h), None);
        {
            let me = ProcessMemory::new(this_thread()).unwrap();
            let _outer = RequestCaller::enter(&me);
            assert_eq!(RequestCaller::of(&h), Some(this_thread()));
            {
                // A caller of another process (pid 1) is no thread of `h`'s process.
                let init = ProcessMemory::new(1).unwrap();
                let _inner = RequestCaller::enter(&init);
                assert_eq!(RequestCaller::of(&h), None);
            }
            assert_eq!(RequestCaller::of(&h), Some(this_thread()));
            let elsewhere = std::thread::scope(|s| s.spawn(|| RequestCaller::of(&h)).join());
            assert_eq!(elsewhere.unwrap(), None);
        }
        assert_eq!(RequestCaller::of(&h), None);
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
