//! File descriptors: taking ownership of fds the kernel just installed, duplicating, comparing,
//! and a private fd table for a thread.

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Most fds one SCM_RIGHTS message carries (the kernel's SCM_MAX_FD).
pub const SCM_MAX_FD: usize = 253;

/// Whether `a` and `b` are the same open file (kcmp KCMP_FILE on two fds of this process).
pub fn same_open_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    let pid = std::process::id();
    // SAFETY: kcmp compares two kernel file objects named by our own pid and fds; it reads and
    // writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            0, // KCMP_FILE
            a.as_raw_fd(),
            b.as_raw_fd(),
        )
    };
    rc == 0
}

/// F_DUPFD_CLOEXEC from fd 0 up: a new fd for the open file of `fd`.
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let dup = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Gives the calling thread a private fd table in which only `keep` stays open (close_range
/// with CLOSE_RANGE_UNSHARE, Linux 5.9). The process's other fds then no longer depend on this
/// thread: once every other thread has ended they are closed even while this one still waits,
/// say on a FUSE request to a mount its own process serves, which that close then aborts. The
/// standard streams go too (a daemon started with them closed may hold /dev/fuse there), so the
/// thread's log lines are lost. The other fds are closed for this thread only: it must not use
/// them afterwards, nor drop what owns them.
pub fn private_fd_table_keeping(keep: BorrowedFd<'_>) -> Result<(), Errno> {
    let keep = u32::try_from(keep.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    // SAFETY: close_range takes integers only. With CLOSE_RANGE_UNSHARE it first gives this
    // thread its own copy of the fd table and closes the range in that copy, so every fd of the
    // process stays open for the other threads and what owns it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            keep.saturating_add(1),
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    Errno::result(rc)?;
    if keep > 0 {
        // SAFETY: as above; the table is already this thread's own.
        Errno::result(unsafe { libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32) })?;
    }
    Ok(())
}

/// One message on `conn` into `buf`: the bytes read and the fds that came with it. The control
/// buffer has room for as many fds as one message can carry (SCM_MAX_FD), so none is installed
/// without being owned (and closed) here.
pub fn recv_with_fds(conn: &UnixStream, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), Errno> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(r) = c {
            // SAFETY: the kernel just installed these fds in our table for this message; each is
            // owned once here.
            fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((msg.bytes, fds))
}

/// Takes ownership of an fd inherited across a fork, to close it. Only for fds open in this
/// process and named by nothing else (the forked replay client's copies of the parent's fds).
pub fn adopt_inherited(fd: RawFd) -> OwnedFd {
    // SAFETY: the forked client calls this only for fds open in it and named by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Takes ownership of `fd`, which a call just returned into this process (an object fd of an
/// iommufd ioctl); EBADF when no such fd is open.
pub fn adopt_returned(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_GETFD only asks for the fd's flags.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the fd is open (checked above) and was just handed to this process by the call
    // that returned it; nothing else names it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::os::fd::AsFd;

    #[test]
    fn duplicates_are_the_same_open_file() {
        let a = std::fs::File::open("/dev/null").unwrap();
        let b = std::fs::File::open("/dev/null").unwrap();
        let dup = dup_cloexec(a.as_fd()).unwrap();
        assert_ne!(dup.as_raw_fd(), a.as_raw_fd());
        assert!(same_open_file(a.as_fd(), dup.as_fd()));
        assert!(!same_open_file(a.as_fd(), b.as_fd()));
        let flags = nix::fcntl::fcntl(&dup, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn fds_sent_along_are_received_owned() {
        let (tx, rx) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let raw = [f.as_raw_fd(), f.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(
            tx.as_raw_fd(),
            &[std::io::IoSlice::new(b"x")],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut buf = [0u8; 4];
        let (n, fds) = recv_with_fds(&rx, &mut buf).unwrap();
        assert_eq!((n, &buf[..1], fds.len()), (1, &b"x"[..], 2));
        assert!(fds.iter().all(|g| same_open_file(g.as_fd(), f.as_fd())));
        drop(tx);
        assert_eq!(recv_with_fds(&rx, &mut buf).unwrap().0, 0);
    }

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only asks for the flags of a number in this thread's table.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// A thread with a private table keeps its fd, loses the others (the standard streams too),
    /// and no longer holds the process's files open: a pipe's write end closed by the process
    /// reads as EOF in the thread, while the process's own fds are untouched.
    #[test]
    fn a_private_table_keeps_one_fd_and_holds_no_other_open() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        let (r_raw, other_raw) = (r.as_raw_fd(), other.as_raw_fd());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // Only the raw number crosses: nothing owned is dropped in the private table but `r`.
            private_fd_table_keeping(r.as_fd()).unwrap();
            let other_gone = !is_open(other_raw) && !is_open(2);
            ready_tx.send(other_gone).unwrap();
            closed_rx.recv().unwrap();
            let mut b = [0u8; 1];
            let n = nix::unistd::read(&r, &mut b);
            // `r` was moved here; this table's copy is closed with it.
            (n, r_raw)
        });
        assert!(
            ready_rx.recv().unwrap(),
            "other fds stay open in the thread"
        );
        // The process still has both.
        assert!(nix::fcntl::fcntl(&other, nix::fcntl::FcntlArg::F_GETFD).is_ok());
        assert!(is_open(r_raw));
        drop(w);
        closed_tx.send(()).unwrap();
        let (n, _) = thread.join().unwrap();
        assert_eq!(
            n,
            Ok(0),
            "the write end closed by the process is closed for the thread"
        );
        // The process's copy of the read end is still open (the thread closed its own copy):
        // adopted here to be closed once.
        let r_again = adopt_returned(r_raw).unwrap();
        drop(r_again);
    }
}
