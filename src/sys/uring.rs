//! io_uring for the FUSE queues: a ring that owns every buffer the kernel may write through it.
//!
//! Submissions name only buffers of the ring itself ([`BufferId`], [`BufferSetId`]); a buffer is
//! lent to the kernel from the submission that names it until that submission's completion is
//! reaped ([`Ring::complete`]), and Rust code reaches its bytes only while it is not lent. The
//! buffers are freed after the ring is closed (field order), which cancels its commands. Ring
//! commands go only to a checked /dev/fuse ([`FuseDevice`]), whose commands carry no address of
//! their own.

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// Bytes of an SQE128's command area (IORING_OP_URING_CMD).
pub const CMD_AREA: usize = 80;
/// Offset of `len` in an SQE (the io-uring crate's URING_CMD builder cannot set it).
const SQE_LEN_OFFSET: usize = 24;

/// The misc device numbers of /dev/fuse.
const FUSE_MAJOR: u32 = 10;
const FUSE_MINOR: u32 = 229;

/// An open /dev/fuse file (checked by its device numbers): the only target of
/// [`Ring::push_fuse_cmd`], whose commands make the kernel follow no address but the iovec array
/// the ring passes.
#[derive(Debug)]
pub struct FuseDevice(OwnedFd);

impl FuseDevice {
    /// `fd` if it is /dev/fuse (the character device 10:229), else EINVAL.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let st = rustix::fs::fstat(&fd)?;
        let is_char = rustix::fs::FileType::from_raw_mode(st.st_mode)
            == rustix::fs::FileType::CharacterDevice;
        let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        if !is_char || (major, minor) != (FUSE_MAJOR, FUSE_MINOR) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(Self(fd))
    }
}

impl AsFd for FuseDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// One buffer of a [`Ring`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferId(usize);

/// Buffers of a [`Ring`] handed to the kernel together, as an iovec array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSetId(usize);

/// Memory the kernel writes while it is lent. Held through a raw pointer, so no Rust reference
/// to it lives across a submission.
struct KernelBuffer {
    ptr: NonNull<[u8]>,
    /// Named by a submission whose completion is not reaped yet.
    lent: bool,
}

impl KernelBuffer {
    /// Zeroed, so its pages stay unbacked until a message uses them.
    fn new(len: usize) -> Self {
        let b = vec![0u8; len].into_boxed_slice();
        Self {
            ptr: NonNull::from(Box::leak(b)),
            lent: false,
        }
    }

    fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr().cast::<libc::c_void>(),
            iov_len: self.ptr.len(),
        }
    }

    fn bytes(&mut self) -> Option<&mut [u8]> {
        if self.lent {
            return None;
        }
        // SAFETY: the pointer comes from a leaked Box of this length and stays valid until drop;
        // `&mut self` makes this the only reference, and the kernel has no submission naming the
        // buffer (not lent), so it does not write here while the slice lives.
        Some(unsafe { self.ptr.as_mut() })
    }
}

impl Drop for KernelBuffer {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::leak in `new` and is freed only here, once; a buffer
        // is dropped only when no submission in flight names it (`Ring`'s drop leaks them all
        // otherwise), so the kernel does not write here afterwards.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

struct BufferSet {
    members: Vec<usize>,
    /// What the kernel reads at a command carrying the set's address.
    iov: Box<[libc::iovec]>,
}

/// A ring of 128-byte SQEs (IORING_SETUP_SQE128) and the buffers its submissions name.
pub struct Ring {
    // Dropped first: closing the ring cancels the commands that name the buffers below.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    buffers: Vec<KernelBuffer>,
    sets: Vec<BufferSet>,
    /// What each submission in flight lent, by its user_data (a few at most: a short list).
    lent: Vec<(u64, Lent)>,
}

/// What one submission lends the kernel.
#[derive(Debug, Clone, Copy)]
enum Lent {
    Buffer(usize),
    Set(usize),
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closing a ring cancels its commands only later (the kernel's ring exit runs on a
        // workqueue, and a forked copy of the fd keeps it open): buffers still lent may be
        // written after this. Those are left to the process rather than freed under the kernel.
        if !self.lent.is_empty() {
            for b in self.buffers.drain(..) {
                std::mem::forget(b);
            }
            for s in self.sets.drain(..) {
                std::mem::forget(s);
            }
        }
    }
}

impl Ring {
    /// A ring with room for `sq_entries` submissions and `cq_entries` completions, used only by
    /// the thread that creates it (IORING_SETUP_SINGLE_ISSUER).
    ///
    /// Not DEFER_TASKRUN: the kernel's work for the ring (e.g. copying a FUSE request into the
    /// entry's buffers) then runs on the thread's way back to userspace from any syscall, so
    /// [`Ring::submit_then_wait`] finds a completion that came in while the thread was
    /// preempted without a second syscall; deferred, only an enter that waits would run it.
    pub fn new(sq_entries: u32, cq_entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_single_issuer()
            .build(sq_entries)?;
        Ok(Self {
            ring,
            buffers: Vec::new(),
            sets: Vec::new(),
            lent: Vec::new(),
        })
    }

    /// A new zeroed buffer of `len` bytes, kept until the ring goes.
    pub fn buffer(&mut self, len: usize) -> BufferId {
        self.buffers.push(KernelBuffer::new(len));
        BufferId(self.buffers.len() - 1)
    }

    /// A set of this ring's buffers, in this order (unknown ids are left out).
    pub fn buffer_set(&mut self, members: &[BufferId]) -> BufferSetId {
        let members: Vec<usize> = members
            .iter()
            .map(|b| b.0)
            .filter(|&b| b < self.buffers.len())
            .collect();
        let iov = members.iter().map(|&b| self.buffers[b].iovec()).collect();
        self.sets.push(BufferSet { members, iov });
        BufferSetId(self.sets.len() - 1)
    }

    /// The bytes of buffer `id`; None while the kernel has it (or for an unknown id).
    pub fn bytes(&mut self, id: BufferId) -> Option<&mut [u8]> {
        self.buffers.get_mut(id.0)?.bytes()
    }

    /// The bytes of two different buffers at once; None as for [`Ring::bytes`] or when `a == b`.
    pub fn bytes_pair(&mut self, a: BufferId, b: BufferId) -> Option<(&mut [u8], &mut [u8])> {
        if a.0 == b.0 || a.0.max(b.0) >= self.buffers.len() {
            return None;
        }
        let (low, high) = self.buffers.split_at_mut(a.0.max(b.0));
        let (first, second) = (low[a.0.min(b.0)].bytes()?, high[0].bytes()?);
        Some(if a.0 < b.0 {
            (first, second)
        } else {
            (second, first)
        })
    }

    /// Queues a read(2) of `fd` into all of buffer `buf`, completed under `user_data`.
    pub fn push_read(
        &mut self,
        fd: BorrowedFd<'_>,
        buf: BufferId,
        user_data: u64,
    ) -> io::Result<()> {
        let Some(iov) = self.buffers.get(buf.0).map(KernelBuffer::iovec) else {
            return Err(io::Error::other("unknown buffer"));
        };
        let lent = Lent::Buffer(buf.0);
        self.check_free(user_data, lent)?;
        let len = u32::try_from(iov.iov_len).map_err(|_| io::Error::other("buffer too long"))?;
        let sqe = opcode::Read::new(types::Fd(fd.as_raw_fd()), iov.iov_base.cast::<u8>(), len)
            .build()
            .user_data(user_data);
        self.push(&sqe.into(), user_data, lent)
    }

    /// Queues an IORING_OP_URING_CMD `cmd_op` on the FUSE connection `fuse` with `cmd` (a FUSE
    /// ring command request: plain integers, no address the kernel follows) in its command
    /// area, lending the buffers of `set`. With `pass_iovecs`, the SQE's `addr` and `len` name
    /// the set's iovec array (REGISTER); else the kernel uses the buffers it was given before.
    pub fn push_fuse_cmd(
        &mut self,
        fuse: &FuseDevice,
        cmd_op: u32,
        cmd: &[u8],
        user_data: u64,
        (set, pass_iovecs): (BufferSetId, bool),
    ) -> io::Result<()> {
        let Some(s) = self.sets.get(set.0) else {
            return Err(io::Error::other("unknown buffer set"));
        };
        if cmd.len() > CMD_AREA {
            return Err(io::Error::other(
                "command larger than the SQE's command area",
            ));
        }
        let lent = Lent::Set(set.0);
        let iov = if pass_iovecs {
            let count = u32::try_from(s.iov.len()).map_err(|_| io::Error::other("set too big"))?;
            Some((s.iov.as_ptr() as u64, count))
        } else {
            None
        };
        self.check_free(user_data, lent)?;
        let sqe = uring_cmd(fuse.as_fd().as_raw_fd(), cmd_op, cmd, user_data, iov);
        self.push(&sqe, user_data, lent)
    }

    /// EBUSY when `user_data` or one of the buffers is already with the kernel.
    fn check_free(&self, user_data: u64, lent: Lent) -> io::Result<()> {
        let in_flight = self.lent.iter().any(|&(u, _)| u == user_data);
        if in_flight || members(&self.sets, lent).any(|b| self.buffers[b].lent) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        Ok(())
    }

    /// Marks the buffers `lent` names as with the kernel or back.
    fn mark(&mut self, lent: Lent, with_kernel: bool) {
        for b in members(&self.sets, lent) {
            self.buffers[b].lent = with_kernel;
        }
    }

    /// Queues `sqe`, which names only the buffers `lent` (all free, checked by the caller).
    fn push(&mut self, sqe: &squeue::Entry128, user_data: u64, lent: Lent) -> io::Result<()> {
        loop {
            let mut sq = self.ring.submission();
            // SAFETY: the SQEs built in this module point only at buffers and iovec arrays this
            // Ring owns (kept until it is dropped, after the ring) and that are not lent, so no
            // Rust reference to them is alive; they stay lent until the completion is reaped.
            // URING_CMDs go only to /dev/fuse (`FuseDevice`), which follows no other address.
            let pushed = unsafe { sq.push(sqe) };
            drop(sq);
            if pushed.is_ok() {
                break;
            }
            // Full: hand the queued ones to the kernel to make room.
            self.ring.submit()?;
        }
        self.mark(lent, true);
        self.lent.push((user_data, lent));
        Ok(())
    }

    /// Hands the queued submissions to the kernel.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Hands the queued submissions (if any) to the kernel, then waits for a completion unless
    /// one is already in.
    ///
    /// Two steps, not one enter that submits and waits: a submission that wakes a thread on
    /// this CPU (a FUSE answer wakes its caller) lets that thread run when this one returns to
    /// userspace, and whatever the woken thread sends meanwhile (the caller's next request) is
    /// usually in by the time this one runs again, so it need not sleep and be woken for it.
    pub fn submit_then_wait(&mut self) -> io::Result<usize> {
        let submitted = if self.ring.submission().is_empty() {
            0
        } else {
            self.ring.submit()?
        };
        if self.ring.completion().is_empty() {
            self.ring.submit_and_wait(1)
        } else {
            Ok(submitted)
        }
    }

    /// Appends the completions ready (user_data, result) to `done`; their buffers come back.
    pub fn complete(&mut self, done: &mut Vec<(u64, i32)>) {
        let start = done.len();
        done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, _) in &done[start..] {
            if let Some(at) = self.lent.iter().position(|&(u, _)| u == user_data) {
                let (_, lent) = self.lent.swap_remove(at);
                self.mark(lent, false);
            }
        }
    }
}

/// The buffers `lent` names (`sets`: the ring's buffer sets).
fn members(sets: &[BufferSet], lent: Lent) -> impl Iterator<Item = usize> + '_ {
    let (one, set) = match lent {
        Lent::Buffer(b) => (Some(b), &[][..]),
        Lent::Set(s) => (None, &sets[s].members[..]),
    };
    one.into_iter().chain(set.iter().copied())
}

/// An IORING_OP_URING_CMD on `fd` with `cmd` at the start of its command area; `iov` sets `addr`
/// and `len`.
fn uring_cmd(
    fd: RawFd,
    cmd_op: u32,
    cmd: &[u8],
    user_data: u64,
    iov: Option<(u64, u32)>,
) -> squeue::Entry128 {
    let mut area = [0u8; CMD_AREA];
    area[..cmd.len()].copy_from_slice(cmd);
    let mut op = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(area);
    if let Some((addr, _)) = iov {
        op = op.addr(Some(addr));
    }
    let sqe = op.build().user_data(user_data);
    match iov {
        Some((_, len)) => with_len(sqe, len),
        None => sqe,
    }
}

/// The 128 bytes of an SQE as the kernel reads them.
fn sqe_bytes(sqe: squeue::Entry128) -> [u8; 128] {
    // SAFETY: Entry128 is #[repr(C)] over `io_uring_sqe` (64 bytes of integers and integer unions)
    // and 64 more bytes: exactly 128 bytes, no padding; any value is valid bytes.
    unsafe { std::mem::transmute::<squeue::Entry128, [u8; 128]>(sqe) }
}

/// Sets an SQE's `len`, which the crate's URING_CMD builder leaves 0.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    let mut raw = sqe_bytes(sqe);
    raw[SQE_LEN_OFFSET..SQE_LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: the layout of `sqe_bytes` the other way: every 128-byte pattern is a valid Entry128
    // (plain integers); only `len` changed from the value the crate built.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_sqe_carries_addr_len_and_command() {
        let cmd: Vec<u8> = (1..=24).collect();
        let raw = sqe_bytes(uring_cmd(9, 1, &cmd, 5, Some((0xdead_beef, 2))));
        assert_eq!(raw[0], opcode::UringCmd80::CODE);
        assert_eq!(i32::from_ne_bytes(raw[4..8].try_into().unwrap()), 9);
        assert_eq!(u32::from_ne_bytes(raw[8..12].try_into().unwrap()), 1);
        assert_eq!(
            u64::from_ne_bytes(raw[16..24].try_into().unwrap()),
            0xdead_beef
        );
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2);
        assert_eq!(u64::from_ne_bytes(raw[32..40].try_into().unwrap()), 5);
        assert_eq!(&raw[48..48 + 24], &cmd[..]);
        // Without iovecs: no address, no length.
        let raw = sqe_bytes(uring_cmd(9, 1, &cmd, 5, None));
        assert_eq!(&raw[16..28], &[0u8; 12]);
    }

    /// A ring where io_uring is available (a sandbox may refuse io_uring_setup).
    fn ring() -> Option<Ring> {
        Ring::new(4, 8)
            .map_err(|e| eprintln!("skipped: no io_uring ({e})"))
            .ok()
    }

    #[test]
    fn lent_buffers_are_out_of_reach_until_their_completion() {
        let Some(mut r) = ring() else { return };
        let (a, b) = (r.buffer(8), r.buffer(16));
        assert_eq!(r.bytes(a).unwrap().len(), 8);
        assert!(r.bytes_pair(a, a).is_none());
        let (bytes_b, bytes_a) = r.bytes_pair(b, a).unwrap();
        assert_eq!((bytes_b.len(), bytes_a.len()), (16, 8));
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        use std::os::fd::AsFd;
        r.push_read(efd.as_fd(), a, 7).unwrap();
        assert!(r.bytes(a).is_none(), "lent to the kernel");
        assert!(r.bytes_pair(a, b).is_none());
        assert_eq!(r.bytes(b).unwrap().len(), 16, "others stay reachable");
        // Neither the buffer nor the user_data may be named twice while in flight.
        let busy = r.push_read(efd.as_fd(), a, 8).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
        let busy = r.push_read(efd.as_fd(), b, 7).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
        assert!(r.push_read(efd.as_fd(), BufferId(99), 9).is_err());
        rustix::io::write(&efd, &0x0102_0304u64.to_ne_bytes()).unwrap();
        let mut done = Vec::new();
        while done.is_empty() {
            r.submit_then_wait().unwrap();
            r.complete(&mut done);
        }
        assert_eq!(done, vec![(7, 8)]);
        assert_eq!(r.bytes(a).unwrap(), &0x0102_0304u64.to_ne_bytes());
    }

    #[test]
    fn buffer_sets_name_their_buffers_in_order() {
        let Some(mut r) = ring() else { return };
        let (a, b) = (r.buffer(8), r.buffer(16));
        let set = r.buffer_set(&[b, a, BufferId(99)]);
        let s = &r.sets[set.0];
        assert_eq!(s.members, vec![1, 0]);
        assert_eq!(s.iov[0].iov_len, 16);
        assert_eq!(s.iov[1].iov_len, 8);
        // Not /dev/fuse: refused (the device may be missing in a sandbox).
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let refused = FuseDevice::new(efd).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EINVAL));
        let Ok(dev) = std::fs::File::open("/dev/fuse") else {
            return;
        };
        let fuse = FuseDevice::new(dev.into()).unwrap();
        let too_long = [0u8; CMD_AREA + 1];
        assert!(r
            .push_fuse_cmd(&fuse, 1, &too_long, 1, (set, true))
            .is_err());
        assert!(r.bytes(a).is_some(), "a refused command lends nothing");
    }
}
