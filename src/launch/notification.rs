//! One intercepted system call (its id, thread and arguments), how it is answered, and reaching
//! the thread behind it. The supervisor and every handler module share these.

use crate::caller::{CallerMemory, ProcessMemory};
use crate::narrow::low_u32;
use crate::sys::seccomp::notif_id_valid;
use nix::errno::Errno;
use std::os::fd::{BorrowedFd, OwnedFd};

// The seccomp flags as the u32 words of the notification structs (libc types them u64; each is
// one low bit).
#[expect(clippy::cast_possible_truncation, reason = "a single low bit")]
pub(super) const ADDFD_FLAG_SEND: u32 = libc::SECCOMP_ADDFD_FLAG_SEND as u32;
#[expect(clippy::cast_possible_truncation, reason = "a single low bit")]
pub(super) const ADDFD_FLAG_SETFD: u32 = libc::SECCOMP_ADDFD_FLAG_SETFD as u32;
#[expect(clippy::cast_possible_truncation, reason = "a single low bit")]
pub(super) const USER_NOTIF_FLAG_CONTINUE: u32 = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;

/// How to answer one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Let the system call run as if there were no filter.
    Continue,
    /// Fail it with this errno.
    Error(Errno),
    /// Complete it with this return value.
    Value(i64),
    /// The target is gone: there is no one to answer.
    Gone,
    /// Already answered (ADDFD with SECCOMP_ADDFD_FLAG_SEND completed the call).
    Answered,
}

/// One intercepted ioctl: who issued it and with which arguments.
pub struct Notification<'a> {
    pub listener: BorrowedFd<'a>,
    pub id: u64,
    /// A thread id (not necessarily a thread-group leader).
    pub tid: i32,
    pub args: [u64; 6],
}

impl Notification<'_> {
    /// Still blocked waiting for us? After a true answer, what was read from its memory and any
    /// pidfd opened on its tid are known to belong to this very thread.
    pub(super) fn valid(&self) -> bool {
        notif_id_valid(self.listener, self.id)
    }
    pub(super) fn fd(&self) -> i32 {
        // The kernel reads the fd argument as an int: the low 32 bits.
        low_u32(self.args[0]).cast_signed()
    }
    pub(super) fn arg(&self) -> u64 {
        self.args[2]
    }
}

/// A pidfd for thread `tid` (PIDFD_THREAD, Linux 6.9+), else for its thread group.
pub fn open_pidfd(tid: i32) -> Result<OwnedFd, Errno> {
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let pid = Pid::from_raw(tid).ok_or(Errno::ESRCH)?;
    match crate::caller::identity::thread_pidfd(pid) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() != libc::EINVAL => {
            return Err(Errno::from_raw(e.raw_os_error()))
        }
        Err(_) => {}
    }
    let tgid = ProcessMemory::new(tid).map(|m| m.pid()).unwrap_or(tid);
    let pid = Pid::from_raw(tgid).ok_or(Errno::ESRCH)?;
    pidfd_open(pid, PidfdFlags::empty()).map_err(|e| Errno::from_raw(e.raw_os_error()))
}

/// The target's fd `fd`, duplicated into the supervisor.
pub fn target_fd(n: &Notification<'_>, fd: i32) -> Result<OwnedFd, Errno> {
    let pidfd = open_pidfd(n.tid)?;
    rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}
