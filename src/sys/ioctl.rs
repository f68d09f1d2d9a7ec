//! Ioctls whose argument is a plain-data struct, a byte buffer, or a value passed as given.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use zerocopy::{FromBytes, IntoBytes};

/// An ioctl on `fd` whose argument is the plain-data struct `arg` (read and written in place):
/// the return value or errno.
pub fn ioctl_struct<T: IntoBytes + FromBytes>(
    fd: BorrowedFd<'_>,
    cmd: u32,
    arg: &mut T,
) -> Result<i32, Errno> {
    // SAFETY: the argument is `arg`, a live exclusively borrowed struct for the whole call; the
    // commands issued through this read and write at most that struct (the size their number
    // encodes; any bit pattern is a valid `T`), and a file that does not know `cmd` fails with
    // ENOTTY.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(cmd), arg as *mut T) })
}

/// An ioctl on `fd` whose argument is `buf` (the struct's bytes, sized by the caller for `cmd`);
/// returns the return value and the buffer as the kernel left it.
pub fn ioctl_vec(fd: BorrowedFd<'_>, cmd: u32, mut buf: Vec<u8>) -> Result<(i32, Vec<u8>), Errno> {
    // SAFETY: the argument is `buf`, owned here and as long as the struct the command reads and
    // writes (the callers size it so); `fd` is open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(cmd), buf.as_mut_ptr()) };
    Errno::result(rc).map(|rc| (rc, buf))
}

/// An ioctl whose argument is a plain integer (or none): the kernel dereferences nothing.
pub fn ioctl_int(fd: BorrowedFd<'_>, cmd: u32, arg: libc::c_ulong) -> Result<i32, Errno> {
    // SAFETY: the commands issued through this take their argument by value; the kernel
    // dereferences nothing.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(cmd), arg) })
}

/// The ioctl a replay script step issues, its argument passed as given (an address in the
/// replay client's own buffers, or any value a script wants to try).
pub fn ioctl_script(fd: RawFd, cmd: u32, arg: u64) -> Result<i64, Errno> {
    // SAFETY: iommufd and VFIO container ioctls touch memory only through `arg`, and only in the
    // daemon, which reads and writes it with process_vm_*: a bad pointer is EFAULT, never UB here.
    let rc = unsafe { libc::ioctl(fd, libc::c_ulong::from(cmd), arg) };
    Errno::result(rc).map(i64::from)
}

/// The read(2) a replay script step issues on an fd number of its process: up to `size` bytes.
pub fn read_script(fd: RawFd, size: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; size];
    // SAFETY: the kernel writes at most `size` bytes into `buf`, which is that long.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), size) };
    buf.truncate(usize::try_from(Errno::result(n)?).unwrap_or(0));
    Ok(buf)
}

/// The write(2) a replay script step issues on an fd number of its process.
pub fn write_script(fd: RawFd, bytes: &[u8]) -> Result<i64, Errno> {
    // SAFETY: the kernel only reads `bytes.len()` bytes from `bytes`.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    Errno::result(n).map(|n| n as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn errors_come_back_as_the_kernels_errno() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let mut v = 0u64;
        // /dev/null knows no ioctl at all.
        assert_eq!(
            ioctl_struct(null.as_fd(), 0xc008_3b01, &mut v),
            Err(Errno::ENOTTY)
        );
        assert_eq!(
            ioctl_vec(null.as_fd(), 0xc008_3b01, vec![0; 8]),
            Err(Errno::ENOTTY)
        );
        assert_eq!(ioctl_int(null.as_fd(), 0x3b64, 0), Err(Errno::ENOTTY));
        assert_eq!(ioctl_script(-1, 0x3b64, 0), Err(Errno::EBADF));
    }

    #[test]
    fn a_struct_ioctl_fills_the_struct() {
        // FIONREAD on a pipe: one int written through the argument.
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"abc").unwrap();
        let mut n = 0i32;
        ioctl_struct(r.as_fd(), u32::try_from(libc::FIONREAD).unwrap(), &mut n).unwrap();
        assert_eq!(n, 3);
        let (_, buf) = ioctl_vec(
            r.as_fd(),
            u32::try_from(libc::FIONREAD).unwrap(),
            vec![0; 4],
        )
        .unwrap();
        assert_eq!(buf, 3i32.to_ne_bytes());
    }
}
