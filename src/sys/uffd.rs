//! userfaultfd, for tests (unit and integration): an anonymous page whose first touch waits
//! until the test serves it, as QEMU's postcopy migration serves guest memory.

use super::fd::adopt_returned;
use super::ioctl::ioctl_struct;
use super::mem::Mapping;
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const PAGE: usize = 4096;
const UFFD_API: u64 = 0xaa;
/// _IOWR(0xAA, 0x3F, struct uffdio_api) (24 bytes).
const UFFDIO_API: u32 = 0xc018_aa3f;
/// _IOWR(0xAA, 0x00, struct uffdio_register) (32 bytes).
const UFFDIO_REGISTER: u32 = 0xc020_aa00;
/// _IOWR(0xAA, 0x03, struct uffdio_copy) (40 bytes).
const UFFDIO_COPY: u32 = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// One private anonymous page registered (missing mode) with a non-blocking userfaultfd.
pub struct UnservedPage {
    uffd: OwnedFd,
    page: Mapping,
}

impl UnservedPage {
    /// Errno of userfaultfd(2) when this process may not have one.
    pub fn new() -> Result<Self, Errno> {
        // SAFETY: userfaultfd(2) takes flags only and returns a new fd or -1.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        let raw = i32::try_from(Errno::result(raw)?).map_err(|_| Errno::EBADF)?;
        let uffd = adopt_returned(raw)?;
        let len = NonZeroUsize::new(PAGE).expect("page size");
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let page = Mapping::anonymous(len, rw, MapFlags::MAP_PRIVATE)?;
        let mut api = [UFFD_API, 0, 0];
        ioctl_struct(uffd.as_fd(), UFFDIO_API, &mut api)?;
        let mut register = [
            page.addr() as u64,
            PAGE as u64,
            UFFDIO_REGISTER_MODE_MISSING,
            0,
        ];
        ioctl_struct(uffd.as_fd(), UFFDIO_REGISTER, &mut register)?;
        Ok(Self { uffd, page })
    }

    pub fn addr(&self) -> u64 {
        self.page.addr() as u64
    }

    /// The address of the next page fault reported, waiting at most `timeout_ms`; None when
    /// none came (a read through /proc/<pid>/mem, for one, fails without reporting).
    pub fn next_fault(&self, timeout_ms: u16) -> Option<u64> {
        let mut fds = [nix::poll::PollFd::new(
            self.uffd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(timeout_ms)) != Ok(1) {
            return None;
        }
        // struct uffd_msg: the event, then for a page fault its flags and address.
        let mut msg = [0u8; 32];
        let n = nix::unistd::read(&self.uffd, &mut msg).ok()?;
        (n == msg.len() && msg[0] == UFFD_EVENT_PAGEFAULT)
            .then(|| u64::from_ne_bytes(msg[16..24].try_into().expect("8 bytes")))
    }

    /// Serves the page, filled with `fill`: whoever waits for it goes on.
    pub fn serve(&self, fill: u8) -> Result<(), Errno> {
        let source = vec![fill; PAGE];
        let mut copy = [self.addr(), source.as_ptr() as u64, PAGE as u64, 0, 0];
        // SAFETY: UFFDIO_COPY reads the page at `source` (live and 4096 bytes long until the
        // call returns) and reads and writes the struct; it fills the registered page, which
        // nothing in this process holds a reference into.
        let rc = unsafe {
            libc::ioctl(
                self.uffd.as_raw_fd(),
                libc::c_ulong::from(UFFDIO_COPY),
                copy.as_mut_ptr(),
            )
        };
        Errno::result(rc).map(drop)
    }
}
