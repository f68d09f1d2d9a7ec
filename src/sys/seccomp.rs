//! The seccomp user-notify listener: installing a filter with one, and its ioctls.

use libc::{sock_filter, sock_fprog};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Sets `PR_SET_NO_NEW_PRIVS` and installs `prog` on the calling thread with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`; returns the listener (close-on-exec).
///
/// The filter stays on the calling thread for its lifetime and is inherited by every process it
/// forks afterwards, through execve.
pub fn install_filter(prog: &[sock_filter]) -> Result<OwnedFd, Errno> {
    nix::sys::prctl::set_no_new_privs()?;
    let fprog = sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| Errno::EINVAL)?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) only reads `fprog` and the `len` instructions it
    // points to, both alive for the call; the kernel validates the program itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const sock_fprog,
        )
    };
    let fd = RawFd::try_from(Errno::result(rc)?).map_err(|_| Errno::EOVERFLOW)?;
    // SAFETY: with NEW_LISTENER a successful seccomp() returns a new fd that nothing else owns.
    let listener = unsafe { OwnedFd::from_raw_fd(fd) };
    // The kernel already makes it O_CLOEXEC; say so explicitly, the target must never inherit it.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(listener)
}

/// One ioctl on the listener whose argument is one `T`, read or written in place. Private: each
/// caller below pairs a command with the struct its number encodes.
fn listener_ioctl<T>(
    listener: BorrowedFd<'_>,
    cmd: libc::c_ulong,
    arg: &mut T,
) -> Result<libc::c_int, Errno> {
    // SAFETY: the listener commands read or write one struct of the size encoded in their
    // number, and each caller passes the `T` of its command, alive and exclusively borrowed for
    // the call; an fd that is no listener answers ENOTTY (or EBADF).
    Errno::result(unsafe { libc::ioctl(listener.as_raw_fd(), cmd, arg as *mut T) })
}

/// SECCOMP_IOCTL_NOTIF_RECV: blocks until a notification arrives.
pub fn notif_recv(listener: BorrowedFd<'_>) -> Result<libc::seccomp_notif, Errno> {
    // SAFETY: seccomp_notif is plain integers; all-zero is valid and is what RECV requires.
    let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    let rc = listener_ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif);
    rc.map(|_| notif)
}

/// SECCOMP_IOCTL_NOTIF_SEND: completes notification `id`. ENOENT when the target is gone.
pub fn notif_send(
    listener: BorrowedFd<'_>,
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
) -> Result<(), Errno> {
    let mut resp = libc::seccomp_notif_resp {
        id,
        val,
        error,
        flags,
    };
    let rc = listener_ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp);
    rc.map(drop)
}

/// SECCOMP_IOCTL_NOTIF_ID_VALID: is the target of notification `id` still waiting for our answer?
/// Once true after reading its memory, the tid it named still is that same (blocked) thread.
pub fn notif_id_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    let mut id = id;
    let rc = listener_ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id);
    rc == Ok(0)
}

/// SECCOMP_IOCTL_NOTIF_ADDFD: installs a reference to `src` in the target of notification `id` at
/// its lowest free fd number, with `newfd_flags` (O_CLOEXEC); returns that number.
pub fn notif_addfd(
    listener: BorrowedFd<'_>,
    id: u64,
    src: BorrowedFd<'_>,
    flags: u32,
    newfd_flags: u32,
) -> Result<RawFd, Errno> {
    notif_addfd_at(listener, id, src, flags, 0, newfd_flags)
}

/// SECCOMP_IOCTL_NOTIF_ADDFD with `newfd`: with SECCOMP_ADDFD_FLAG_SETFD in `flags` the target's
/// fd `newfd` is replaced by `src` (an open file there is closed, as dup2 does); without it
/// `newfd` must be 0.
pub fn notif_addfd_at(
    listener: BorrowedFd<'_>,
    id: u64,
    src: BorrowedFd<'_>,
    flags: u32,
    newfd: i32,
    newfd_flags: u32,
) -> Result<RawFd, Errno> {
    let mut addfd = libc::seccomp_notif_addfd {
        id,
        flags,
        srcfd: src.as_raw_fd() as u32,
        newfd: newfd as u32,
        newfd_flags,
    };
    // The source fd is borrowed, so it stays open during the call.
    listener_ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_file_that_is_no_listener_answers_enotty() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = null.as_fd();
        assert_eq!(notif_send(fd, 1, 0, 0, 0), Err(Errno::ENOTTY));
        assert!(!notif_id_valid(fd, 1));
        assert_eq!(notif_addfd(fd, 1, fd, 0, 0), Err(Errno::ENOTTY));
        assert_eq!(notif_recv(fd).unwrap_err(), Errno::ENOTTY);
    }
}
