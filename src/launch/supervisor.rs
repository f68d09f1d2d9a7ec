//! The supervisor: receives the filter's notifications and answers each one.
//!
//! Every notification gets exactly one answer, whatever fails: `CONTINUE` (the target's ioctl then
//! runs for real, and the daemon or the kernel validates it as usual) when the supervisor cannot or
//! need not take over, an errno when it took over and failed, or a value when it succeeded.

use super::notification::{
    open_pidfd, Notification, Reply, ADDFD_FLAG_SEND, USER_NOTIF_FLAG_CONTINUE,
};
use crate::caller::{CallerMemory, ProcessMemory};
use crate::dispatch::private_abi::{
    uiommufd_handle_bind, UIOMMUFD_HANDLE_BIND, UIOMMUFD_HANDLE_FAULT_QUEUE,
    UIOMMUFD_HANDLE_TEST_ACCESS, UIOMMUFD_HANDLE_TEST_DMABUF, UIOMMUFD_HANDLE_VEVENTQ,
};
use crate::narrow::{low_u32, struct_size};
use crate::sys::seccomp::{notif_addfd, notif_recv, notif_send};
use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use uiommufd_uapi::iommufd::{
    iommu_fault_alloc, iommu_veventq_alloc, IOMMU_FAULT_QUEUE_ALLOC, IOMMU_VEVENTQ_ALLOC,
};
use uiommufd_uapi::selftest::{
    iommu_test_cmd, iommu_test_cmd_create_access, iommu_test_cmd_dmabuf_get, IOMMU_TEST_CMD,
    IOMMU_TEST_OP_CREATE_ACCESS, IOMMU_TEST_OP_DMABUF_GET,
};
use zerocopy::{FromBytes, IntoBytes};

type Handler = fn(&Notification<'_>) -> Reply;

/// The intercepted ioctl numbers and their handlers; the filter is built from this list.
pub const HANDLERS: &[(u32, Handler)] = &[
    (IOMMU_TEST_CMD, test_cmd),
    (IOMMU_FAULT_QUEUE_ALLOC, fault_queue_alloc),
    (IOMMU_VEVENTQ_ALLOC, veventq_alloc),
    (
        uiommufd_uapi::vfio::VFIO_DEVICE_BIND_IOMMUFD,
        super::device::bind,
    ),
    (
        uiommufd_uapi::vfio::VFIO_DEVICE_ATTACH_IOMMUFD_PT,
        super::device::attach_detach,
    ),
    (
        uiommufd_uapi::vfio::VFIO_DEVICE_DETACH_IOMMUFD_PT,
        super::device::attach_detach,
    ),
    (
        uiommufd_uapi::vfio::VFIO_GROUP_SET_CONTAINER,
        super::group::set_container,
    ),
    (
        uiommufd_uapi::vfio::VFIO_GROUP_UNSET_CONTAINER,
        super::group::unset_container,
    ),
];

/// Answers notifications until the listener fails (it is then dropped, which fails every pending
/// and future intercepted ioctl with ENOSYS). Opens are answered from `redirects`.
pub fn run(listener: OwnedFd, redirects: &super::open::Redirects) {
    loop {
        let notif = match notif_recv(listener.as_fd()) {
            Ok(n) => n,
            // EINTR: a signal; ENOENT: the target died between notifying and our RECV.
            Err(Errno::EINTR | Errno::ENOENT) => continue,
            Err(e) => {
                tracing::warn!(%e, "SECCOMP_IOCTL_NOTIF_RECV failed; the supervisor stops");
                return;
            }
        };
        let n = Notification {
            listener: listener.as_fd(),
            id: notif.id,
            tid: notif.pid as i32,
            args: notif.data.args,
        };
        let reply = dispatch(&n, notif.data.nr as i64, redirects);
        tracing::debug!(id = n.id, tid = n.tid, ?reply, "notification handled");
        respond(&n, reply);
    }
}

fn dispatch(n: &Notification<'_>, nr: i64, redirects: &super::open::Redirects) -> Reply {
    if nr == libc::SYS_read {
        return super::zero_read::answer(n);
    }
    if let Some(path_arg) = super::open::path_arg(nr) {
        return redirects.answer(n, path_arg);
    }
    if nr != libc::SYS_ioctl {
        return Reply::Continue;
    }
    // The kernel reads the ioctl number as an unsigned int.
    let request = low_u32(n.args[1]);
    match HANDLERS.iter().find(|(num, _)| *num == request) {
        Some((_, handler)) => handler(n),
        None => Reply::Continue,
    }
}

fn respond(n: &Notification<'_>, reply: Reply) {
    let (val, error, flags) = match reply {
        Reply::Continue => (0, 0, USER_NOTIF_FLAG_CONTINUE),
        Reply::Error(e) => (0, -(e as i32), 0),
        Reply::Value(v) => (v, 0, 0),
        Reply::Gone | Reply::Answered => return,
    };
    match notif_send(n.listener, n.id, val, error, flags) {
        Ok(()) => {}
        Err(Errno::ENOENT) => tracing::debug!(id = n.id, "target gone before the answer"),
        Err(e) => tracing::warn!(id = n.id, %e, ?reply, "SECCOMP_IOCTL_NOTIF_SEND failed"),
    }
}

/// Size of the `iommu_test_cmd` header (size, op, id, reserved): the union starts here.
const TEST_CMD_HEADER: usize = std::mem::offset_of!(iommu_test_cmd, payload);

/// IOMMU_TEST_CMD: takes over IOMMU_TEST_OP_CREATE_ACCESS, lets every other op through.
fn test_cmd(n: &Notification<'_>) -> Reply {
    let mem = match ProcessMemory::new(n.tid) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(tid = n.tid, %e, "caller not visible; continue");
            return Reply::Continue;
        }
    };
    let mut header = [0u32; TEST_CMD_HEADER / 4];
    if let Err(e) = mem.read(n.arg(), header.as_mut_bytes()) {
        tracing::debug!(tid = n.tid, %e, "cannot read the iommu_test_cmd header; continue");
        return Reply::Continue;
    }
    let [size, op, id, _reserved] = header;
    // Both union members taken over are 8 bytes.
    let min = TEST_CMD_HEADER + std::mem::size_of::<iommu_test_cmd_create_access>();
    let max = std::mem::size_of::<iommu_test_cmd>();
    let taken = matches!(op, IOMMU_TEST_OP_CREATE_ACCESS | IOMMU_TEST_OP_DMABUF_GET);
    if !taken || (size as usize) < min || size as usize > max {
        tracing::debug!(
            op,
            size,
            "not a CREATE_ACCESS or DMABUF_GET the supervisor takes; continue"
        );
        return Reply::Continue;
    }
    let payload_addr = n.arg() + TEST_CMD_HEADER as u64;
    if op == IOMMU_TEST_OP_DMABUF_GET {
        return dmabuf_get(n, &mem, payload_addr);
    }
    let mut payload = iommu_test_cmd_create_access::default();
    if let Err(e) = mem.read(payload_addr, payload.as_mut_bytes()) {
        tracing::debug!(tid = n.tid, %e, "cannot read create_access; continue");
        return Reply::Continue;
    }
    tracing::debug!(
        tid = n.tid,
        fd = n.fd(),
        ioas = id,
        flags = payload.flags,
        "CREATE_ACCESS"
    );
    let args = [id, payload.flags, 0, 0];
    let (_, newfd) = match new_object_fd(n, UIOMMUFD_HANDLE_TEST_ACCESS, args) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let out = std::mem::offset_of!(iommu_test_cmd_create_access, out_access_fd) as u64;
    write_out(
        n,
        &mem,
        payload_addr + out,
        (newfd as u32).as_bytes(),
        newfd,
    )
}

/// DMABUF_GET: a dma-buf handle, installed in the target as the ioctl's return value.
fn dmabuf_get(n: &Notification<'_>, mem: &ProcessMemory, payload_addr: u64) -> Reply {
    let mut p = iommu_test_cmd_dmabuf_get::default();
    if let Err(e) = mem.read(payload_addr, p.as_mut_bytes()) {
        tracing::debug!(tid = n.tid, %e, "cannot read dmabuf_get; continue");
        return Reply::Continue;
    }
    tracing::debug!(
        tid = n.tid,
        length = p.length,
        flags = p.open_flags,
        "DMABUF_GET"
    );
    let (buf, _) = match bind_new_handle(n, UIOMMUFD_HANDLE_TEST_DMABUF, [p.length, 0, 0, 0]) {
        Ok(bound) => bound,
        Err(reply) => return reply,
    };
    let cloexec = p.open_flags & libc::O_CLOEXEC as u32;
    // ADDFD_FLAG_SEND installs the fd and completes the ioctl with its number in one step.
    match notif_addfd(n.listener, n.id, buf.as_fd(), ADDFD_FLAG_SEND, cloexec) {
        Ok(fd) => {
            tracing::debug!(tid = n.tid, newfd = fd, "dma-buf fd returned to the target");
            Reply::Answered
        }
        Err(Errno::ENOENT) => Reply::Gone,
        Err(e) => {
            tracing::warn!(tid = n.tid, %e, "SECCOMP_IOCTL_NOTIF_ADDFD (send) failed");
            Reply::Error(e)
        }
    }
}

/// Installs `file` in the target (from then on the object lives as long as the fd there);
/// `Err` is the answer to give the notification.
fn hand_over(n: &Notification<'_>, file: OwnedFd) -> Result<i32, Reply> {
    match notif_addfd(n.listener, n.id, file.as_fd(), 0, libc::O_CLOEXEC as u32) {
        Ok(fd) => {
            tracing::debug!(tid = n.tid, newfd = fd, "object fd installed in the target");
            Ok(fd)
        }
        Err(Errno::ENOENT) => {
            tracing::debug!(
                tid = n.tid,
                "target gone before ADDFD; the object is dropped"
            );
            Err(Reply::Gone)
        }
        Err(e) => {
            tracing::warn!(tid = n.tid, %e, "SECCOMP_IOCTL_NOTIF_ADDFD failed");
            Err(Reply::Error(e))
        }
    }
}

/// Writes the command's outputs back into the target: success, or EFAULT (the kernel would put
/// the unused fd back; a supervisor cannot close an fd in its target, so `newfd` leaks there).
fn write_out(
    n: &Notification<'_>,
    mem: &ProcessMemory,
    addr: u64,
    bytes: &[u8],
    newfd: i32,
) -> Reply {
    match mem.write(addr, bytes) {
        Ok(()) => Reply::Value(0),
        Err(e) => {
            tracing::warn!(tid = n.tid, %e, newfd, "cannot write the outputs; fd {newfd} leaks in the target");
            Reply::Error(Errno::EFAULT)
        }
    }
}

/// IOMMU_FAULT_QUEUE_ALLOC: a fault queue object and its fd. Only the exact 7.2 struct size is
/// taken over; any other size continues to the daemon, which validates it (and, having no way to
/// hand out the fd itself, answers EOPNOTSUPP where the size is acceptable).
fn fault_queue_alloc(n: &Notification<'_>) -> Reply {
    let (mem, mut cmd) = match caller_arg::<iommu_fault_alloc>(n) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    if cmd.size as usize != std::mem::size_of::<iommu_fault_alloc>() {
        tracing::debug!(
            size = cmd.size,
            "not a FAULT_QUEUE_ALLOC the supervisor takes; continue"
        );
        return Reply::Continue;
    }
    tracing::debug!(
        tid = n.tid,
        fd = n.fd(),
        flags = cmd.flags,
        "FAULT_QUEUE_ALLOC"
    );
    let (fault_id, newfd) =
        match new_object_fd(n, UIOMMUFD_HANDLE_FAULT_QUEUE, [cmd.flags, 0, 0, 0]) {
            Ok(v) => v,
            Err(reply) => return reply,
        };
    cmd.out_fault_id = fault_id;
    cmd.out_fault_fd = newfd as u32;
    let out = std::mem::offset_of!(iommu_fault_alloc, out_fault_id);
    write_out(n, &mem, n.arg() + out as u64, &cmd.as_bytes()[out..], newfd)
}

/// IOMMU_VEVENTQ_ALLOC: a vEVENT queue object and its fd. As for FAULT_QUEUE_ALLOC, only the
/// exact 7.2 struct with a zero reserved field is taken over; the daemon validates the rest.
fn veventq_alloc(n: &Notification<'_>) -> Reply {
    let (mem, mut cmd) = match caller_arg::<iommu_veventq_alloc>(n) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    if cmd.size as usize != std::mem::size_of::<iommu_veventq_alloc>() || cmd.reserved != 0 {
        tracing::debug!(
            size = cmd.size,
            "not a VEVENTQ_ALLOC the supervisor takes; continue"
        );
        return Reply::Continue;
    }
    tracing::debug!(
        tid = n.tid,
        viommu = cmd.viommu_id,
        depth = cmd.veventq_depth,
        "VEVENTQ_ALLOC"
    );
    let args = [cmd.flags, cmd.viommu_id, cmd.r#type, cmd.veventq_depth];
    let (veventq_id, newfd) = match new_object_fd(n, UIOMMUFD_HANDLE_VEVENTQ, args) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    cmd.out_veventq_id = veventq_id;
    cmd.out_veventq_fd = newfd as u32;
    let from = std::mem::offset_of!(iommu_veventq_alloc, out_veventq_id);
    let to = std::mem::offset_of!(iommu_veventq_alloc, reserved);
    write_out(
        n,
        &mem,
        n.arg() + from as u64,
        &cmd.as_bytes()[from..to],
        newfd,
    )
}

/// The caller's memory and the `T` its ioctl argument points to; `Err(Continue)` when either is
/// out of reach (the daemon then sees the ioctl and answers it).
fn caller_arg<T: FromBytes + IntoBytes + Default>(
    n: &Notification<'_>,
) -> Result<(ProcessMemory, T), Reply> {
    let mem = ProcessMemory::new(n.tid).map_err(|e| {
        tracing::debug!(tid = n.tid, %e, "caller not visible; continue");
        Reply::Continue
    })?;
    let mut v = T::default();
    mem.read(n.arg(), v.as_mut_bytes()).map_err(|e| {
        tracing::debug!(tid = n.tid, %e, "cannot read the ioctl argument; continue");
        Reply::Continue
    })?;
    Ok((mem, v))
}

/// A new object of `kind` bound to a fresh open of the node and installed in the target: its
/// object ID and the target's fd number.
fn new_object_fd(n: &Notification<'_>, kind: u32, args: [u32; 4]) -> Result<(u32, i32), Reply> {
    let (file, object_id) = bind_new_handle(n, kind, args)?;
    Ok((object_id, hand_over(n, file)?))
}

/// Opens the target's iommufd node again and binds a new handle of `kind` to that fresh file in
/// the target's iommufd context. `Err` is the answer to give the notification.
fn bind_new_handle(
    n: &Notification<'_>,
    kind: u32,
    [arg0, arg1, arg2, arg3]: [u32; 4],
) -> Result<(OwnedFd, u32), Reply> {
    let pidfd = open_pidfd(n.tid).map_err(|e| {
        tracing::debug!(tid = n.tid, %e, "pidfd_open failed; continue");
        Reply::Continue
    })?;
    // The memory read above and the pidfd both belong to the thread still blocked in the ioctl.
    if !n.valid() {
        tracing::debug!(tid = n.tid, "target gone");
        return Err(Reply::Gone);
    }
    // A bad fd (or one we may not take): the real ioctl gives the kernel's own answer (EBADF…).
    let iommufd =
        rustix::process::pidfd_getfd(&pidfd, n.fd(), rustix::process::PidfdGetfdFlags::empty())
            .map_err(|e| {
                tracing::debug!(tid = n.tid, fd = n.fd(), %e, "pidfd_getfd failed; continue");
                Reply::Continue
            })?;
    drop(pidfd);
    // /proc/self/fd/<dup> names the very file the target passed (a racing close or dup2 in the
    // target cannot swap it), and opening it opens the node afresh: a new open served by the daemon.
    let path = format!("/proc/self/fd/{}", iommufd.as_raw_fd());
    let fresh: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map(Into::into)
        .map_err(|e| {
            tracing::debug!(tid = n.tid, fd = n.fd(), %e, "cannot reopen the node; continue");
            Reply::Continue
        })?;
    let mut bind = uiommufd_handle_bind {
        size: struct_size::<uiommufd_handle_bind>(),
        kind,
        iommufd: iommufd.as_raw_fd(),
        arg0,
        arg1,
        arg2,
        arg3,
        ..Default::default()
    };
    if let Err(e) = crate::sys::ioctl::ioctl_struct(fresh.as_fd(), UIOMMUFD_HANDLE_BIND, &mut bind)
    {
        tracing::debug!(tid = n.tid, %e, "UIOMMUFD_HANDLE_BIND failed; errno relayed");
        return Err(Reply::Error(e));
    }
    tracing::debug!(tid = n.tid, object = bind.out_object_id, "handle bound");
    Ok((fresh, bind.out_object_id))
}
