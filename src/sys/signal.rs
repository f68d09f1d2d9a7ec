//! Signals that interrupt a blocked thread: a do-nothing handler installed without SA_RESTART,
//! and a thread-directed kill to take a thread out of a blocking system call (EINTR).

use nix::errno::Errno;

/// A thread of this process, as the kernel names it (its tid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadId(libc::pid_t);

/// The calling thread.
pub fn this_thread() -> ThreadId {
    // SAFETY: gettid has no preconditions and touches no memory.
    ThreadId(unsafe { libc::gettid() })
}

/// Sends `signal` to `thread` of this process (tgkill, as pthread_kill does). A thread that has
/// ended is ESRCH; the caller keeps the threads it names alive, or a later thread of this process
/// that got the same tid would get the signal.
pub fn interrupt_thread(thread: ThreadId, signal: libc::c_int) -> Result<(), Errno> {
    let pid = std::process::id();
    // SAFETY: tgkill takes integers only and reads or writes no memory of ours; the signal's
    // handler is the caller's business (see `install_noop_handler`).
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, thread.0, signal) };
    Errno::result(r).map(drop)
}

extern "C" fn ignore_signal(_signal: libc::c_int) {}

/// Installs a handler that does nothing for `signal`, without SA_RESTART: a blocking system
/// call of a thread that gets it fails with EINTR.
pub fn install_noop_handler(signal: libc::c_int) -> Result<(), Errno> {
    // SAFETY: sigaction is plain data; all zeroes is a valid value (no flags, empty mask).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installs a handler that does nothing (async-signal-safe); `action` lives across the
    // call and the old action is not asked for.
    let r = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_thread_leaves_its_blocking_read() {
        let signal = libc::SIGRTMIN() + 5;
        install_noop_handler(signal).unwrap();
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (read_tx, read_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tid_tx.send(this_thread()).unwrap();
            let mut buf = [0u8; 1];
            read_tx.send(rustix::io::read(&reader, &mut buf)).unwrap();
            // Stays alive while it may still be signalled: its tid is not reused meanwhile.
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        assert_ne!(tid, this_thread());
        // The thread may not be in read(2) yet: interrupt until it leaves it.
        let read = loop {
            interrupt_thread(tid, signal).unwrap();
            if let Ok(r) = read_rx.try_recv() {
                break r;
            }
            std::thread::yield_now();
        };
        assert_eq!(read, Err(rustix::io::Errno::INTR));
        done_tx.send(()).unwrap();
        t.join().unwrap();
        drop(writer);
        assert_eq!(
            interrupt_thread(ThreadId(-1), signal),
            Err(Errno::EINVAL),
            "no such tid"
        );
    }
}
