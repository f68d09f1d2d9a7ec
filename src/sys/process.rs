//! Processes: forking the replay client and leaving it, and what a spawned child does between
//! fork and exec.

use nix::sys::signal::SigSet;
use std::os::unix::process::CommandExt;

/// Forks. The caller must be single-threaded (the replay runner, which starts no threads; the
/// child only runs the client loop and leaves through [`exit_child`]).
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: the replay process is single-threaded when it forks (the runner starts no
    // threads), so the child inherits no lock held by another thread; the child only runs the
    // client loop and leaves through [`exit_child`].
    unsafe { nix::unistd::fork() }
}

/// Leaves a forked child without running the parent's atexit handlers or destructors.
pub fn exit_child() -> ! {
    // SAFETY: _exit ends this (forked, single-threaded) process at once; nothing runs after it.
    unsafe { libc::_exit(0) }
}

/// Has `command`'s child unblock `signals` between fork and exec (the launcher blocks them on
/// every thread of its own).
pub fn unblock_signals_in_child(command: &mut std::process::Command, signals: SigSet) {
    // SAFETY: the hook runs in the child between fork and exec and only calls pthread_sigmask,
    // which is async-signal-safe; it touches no lock or allocation of the parent.
    unsafe {
        command.pre_exec(move || signals.thread_unblock().map_err(std::io::Error::from));
    }
}

/// Has `command`'s child drop capability `cap` from its bounding set (when it may: EPERM without
/// CAP_SETPCAP means it had nothing to lose) and limit its address space to `address_space`
/// bytes, between fork and exec (tests that must be charged as an uncapped caller).
#[cfg(test)]
pub fn uncap_and_limit_child(command: &mut std::process::Command, cap: u32, address_space: u64) {
    let limit_child = move || {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        let limit = libc::rlimit {
            rlim_cur: address_space,
            rlim_max: address_space,
        };
        // SAFETY: setrlimit reads `limit`, a live local.
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec and only makes prctl and setrlimit calls,
    // which are async-signal-safe; it touches no memory of the parent.
    unsafe { command.pre_exec(limit_child) };
}
