//! `read(fd, buf, 0)`: FUSE and CUSE answer a zero-length read themselves (0) without asking the
//! server, while the kernel's iommufd files answer EINVAL (an iommufd or an access fd takes no
//! reads, a vEVENT queue wants at least a header). For an fd of a uiommufd node the supervisor asks
//! the daemon (UIOMMUFD_ZERO_READ) and gives that answer; every other zero-length read continues.

use super::notification::{open_pidfd, Notification, Reply};
use crate::dispatch::private_abi::{uiommufd_zero_read, UIOMMUFD_ZERO_READ};
use crate::narrow::struct_size;
use nix::errno::Errno;
use std::os::fd::{AsFd, BorrowedFd};

/// A file the private query may be sent to: a regular file of a FUSE mount or a character device
/// (CUSE); anything else never gets an ioctl from us.
fn may_be_a_node(file: BorrowedFd<'_>) -> bool {
    let Ok(st) = nix::sys::stat::fstat(file) else {
        return false;
    };
    match st.st_mode & libc::S_IFMT {
        libc::S_IFCHR => true,
        libc::S_IFREG => nix::sys::statfs::fstatfs(file)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC),
        _ => false,
    }
}

pub fn answer(n: &Notification<'_>) -> Reply {
    let Ok(pidfd) = open_pidfd(n.tid) else {
        return Reply::Continue;
    };
    if !n.valid() {
        return Reply::Gone;
    }
    let Ok(file) =
        rustix::process::pidfd_getfd(&pidfd, n.fd(), rustix::process::PidfdGetfdFlags::empty())
    else {
        return Reply::Continue;
    };
    if !may_be_a_node(file.as_fd()) {
        return Reply::Continue;
    }
    let mut q = uiommufd_zero_read {
        size: struct_size::<uiommufd_zero_read>(),
        out_errno: 0,
    };
    if crate::sys::ioctl::ioctl_struct(file.as_fd(), UIOMMUFD_ZERO_READ, &mut q).is_err() {
        return Reply::Continue;
    }
    tracing::debug!(
        tid = n.tid,
        fd = n.fd(),
        errno = q.out_errno,
        "zero-length read answered"
    );
    match q.out_errno {
        0 => Reply::Value(0),
        e => Reply::Error(Errno::from_raw(e as i32)),
    }
}
