//! File descriptors: taking ownership of fds the kernel just installed, duplicating, comparing.

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
}
