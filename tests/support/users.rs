//! Unprivileged test users and running code as them in a forked child.
//!
//! The daemon is root and its nodes face every local user, so trust-boundary tests act as plain
//! users. The users are created on first use (`useradd --system`); without root or useradd the
//! tests cannot run, which fails the run under `CI=true` and skips elsewhere ([`super::require`]).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn lookup(name: &str) -> Option<TestUser> {
    let u = nix::unistd::User::from_name(name).ok()??;
    Some(TestUser {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

/// Whether the tests may create users and drop privileges (root).
pub fn can_switch_users() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The test user `name`, created if missing. None when that is impossible (not root, no useradd);
/// callers decide whether that fails the run ([`super::require`]).
pub fn test_user(name: &str) -> Option<TestUser> {
    if let Some(u) = lookup(name) {
        return Some(u);
    }
    if !can_switch_users() {
        return None;
    }
    let out = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .ok()?;
    if !out.status.success() && lookup(name).is_none() {
        eprintln!(
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    lookup(name)
}

/// Runs `f` in a forked child as `user` (no supplementary groups, no capabilities) and returns
/// its exit code, or None when it did not end within `timeout` (it is killed then). The caller
/// must not have other threads doing allocation while forking (the trust-boundary test binary is
/// single-threaded; the spawned daemons are separate processes).
pub fn run_as(user: &TestUser, timeout: Duration, f: impl FnOnce() -> i32) -> Option<i32> {
    run_forked(Some(user), timeout, f)
}

/// [`run_as`] without changing user (a root client in its own process).
pub fn run_forked(
    user: Option<&TestUser>,
    timeout: Duration,
    f: impl FnOnce() -> i32,
) -> Option<i32> {
    // SAFETY: fork has no memory-safety preconditions; the child only runs `f` and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Some(u) = user {
                drop_to(u);
            }
            f()
        }))
        .unwrap_or(101);
        // SAFETY: ends the forked child without running the parent's exit handlers twice.
        unsafe { libc::_exit(code) };
    }
    wait_child(pid, Instant::now() + timeout)
}

/// Reaps child `pid`: its exit code (128 + signal number when killed), or None when it did not
/// end by `deadline` (it is killed and reaped then).
pub fn wait_child(pid: i32, deadline: Instant) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
        if Instant::now() >= deadline {
            // SAFETY: kills our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // Reaped if it dies within 5 s more; a child stuck in an uninterruptible wait (a
            // FUSE request nobody answers) is left behind rather than hanging the test.
            let until = Instant::now() + Duration::from_secs(5);
            // SAFETY: reaps our own child; `status` is a live local.
            while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0
                && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Drops this (forked, single-threaded) process to `u`.
pub fn drop_to_user(u: &TestUser) {
    drop_to(u)
}

fn drop_to(u: &TestUser) {
    nix::unistd::setgroups(&[]).expect("setgroups");
    nix::unistd::setgid(nix::unistd::Gid::from_raw(u.gid)).expect("setgid");
    nix::unistd::setuid(nix::unistd::Uid::from_raw(u.uid)).expect("setuid");
}

/// errno of opening `path` read-write (0 when it opens).
pub fn open_errno(path: &std::path::Path) -> i32 {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}
