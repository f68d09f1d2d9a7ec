//! UIOMMUFD_HANDLE_BIND (object fds): a file already in use, the struct's size, the selftest
//! kinds on a daemon without the selftest, the iommufd fd (EBADF when not open, EBADFD when not a
//! context of this daemon), then the kind and the object's own checks in the context the fd
//! names. A failed copy-out leaves no object behind.

use super::*;
use crate::dispatch::daemon::ContextHold;
use crate::dispatch::extensions::production_extensions;
use crate::dispatch::handles::Handle;
use crate::dispatch::private_abi::*;

/// The fd number the tests' resolver knows as the bench's context.
const OWN_FD: i32 = 5;
/// An fd number of a file that is open but no context of this daemon.
const OTHER_FILE_FD: i32 = 6;

pub(super) fn req(kind: u32, arg0: u32, arg1: u32) -> uiommufd_handle_bind {
    uiommufd_handle_bind {
        size: sz::<uiommufd_handle_bind>(),
        kind,
        iommufd: OWN_FD,
        arg0,
        arg1,
        ..Default::default()
    }
}

/// Binds with `r` at [`ARG`] as file `file_id`; the fd [`OWN_FD`] names `ctx_id`.
pub(super) fn bind(
    b: &Bench,
    file_id: u64,
    r: &uiommufd_handle_bind,
    ctx_id: u64,
) -> Result<Handle, Errno> {
    b.mem.set(ARG, r.as_bytes());
    let resolve = |fd: i32| -> Result<ContextHold, Errno> {
        match fd {
            OWN_FD => b.daemon.hold_context(ctx_id).ok_or(Errno::EBADFD),
            OTHER_FILE_FD => Err(Errno::EBADFD),
            _ => Err(Errno::EBADF),
        }
    };
    b.daemon.bind_handle_with(file_id, ARG, &b.mem, &resolve)
}

/// File ids for a daemon's handle registry (ids as a served node's files would have).
pub(super) fn file_id(n: u64) -> u64 {
    0x7e57_0000_0000 + n
}

#[test]
fn the_open_file_answers_before_the_struct_is_looked_at() {
    let (b, file) = Bench::opened(daemon_extensions());
    let bind_nr = UIOMMUFD_HANDLE_BIND;
    let mut r = req(0xff, 0, 0);
    r.size = 8;
    b.mem.set(ARG, r.as_bytes());
    assert_eq!(file.ioctl(bind_nr, ARG, &b.mem), Err(Errno::EINVAL), "size");
    r.size = sz::<uiommufd_handle_bind>();
    b.mem.set(ARG, r.as_bytes());
    assert_eq!(
        file.ioctl(bind_nr, ARG, &b.mem),
        Err(Errno::EBADF),
        "the fake caller has no fds: the fd, before the unknown kind"
    );
    assert_eq!(file.ioctl(bind_nr, UNMAPPED, &b.mem), Err(Errno::EFAULT));
    // A file with objects is a context in use.
    b.ioas();
    r.size = 8;
    b.mem.set(ARG, r.as_bytes());
    assert_eq!(file.ioctl(bind_nr, ARG, &b.mem), Err(Errno::EBUSY));
}

#[test]
fn size_then_selftest_kinds_then_the_fd_then_the_kind() {
    let (b, _file) = Bench::opened(production_extensions());
    let ctx = b.ctx.id;
    let mut r = req(UIOMMUFD_HANDLE_TEST_ACCESS, NO_ID, 0);
    r.iommufd = 99;
    r.size += 4;
    assert_eq!(
        bind(&b, file_id(1), &r, ctx).err(),
        Some(Errno::EINVAL),
        "size first"
    );
    r.size -= 4;
    assert_eq!(
        bind(&b, file_id(1), &r, ctx).err(),
        Some(Errno::ENOTTY),
        "no selftest: as IOMMU_TEST_CMD, before the fd"
    );
    r.kind = UIOMMUFD_HANDLE_TEST_DMABUF;
    assert_eq!(bind(&b, file_id(1), &r, ctx).err(), Some(Errno::ENOTTY));
    r.kind = 0xff;
    assert_eq!(
        bind(&b, file_id(1), &r, ctx).err(),
        Some(Errno::EBADF),
        "fd before kind"
    );
    r.iommufd = OTHER_FILE_FD;
    assert_eq!(bind(&b, file_id(1), &r, ctx).err(), Some(Errno::EBADFD));
    r.iommufd = OWN_FD;
    assert_eq!(
        bind(&b, file_id(1), &r, ctx).err(),
        Some(Errno::EINVAL),
        "unknown kind"
    );
    assert_eq!(
        bind(&b, file_id(1), &r, ctx + 1000).err(),
        Some(Errno::EBADFD),
        "a context that is gone"
    );
    assert_eq!(b.ctx.num_objects(), 0);
}

#[test]
fn fault_queue_handles() {
    let (b, _file) = Bench::opened(daemon_extensions());
    let ctx = b.ctx.id;
    let r = req(UIOMMUFD_HANDLE_FAULT_QUEUE, 1, 0);
    assert_eq!(
        bind(&b, file_id(10), &r, ctx).err(),
        Some(Errno::EOPNOTSUPP),
        "flags"
    );
    let r = req(UIOMMUFD_HANDLE_FAULT_QUEUE, 0, 0);
    let h = bind(&b, file_id(10), &r, ctx).unwrap();
    let id = b.at::<uiommufd_handle_bind>(ARG).out_object_id;
    assert_eq!(b.ctx.get(id).unwrap().type_name(), "fault");
    assert!(b.daemon.handles().release_may_free(ctx, id));
    assert_eq!(b.ctx.destroy(id), Err(Errno::EBUSY), "the fd holds it");
    h.release(file_id(10));
    assert!(!b.daemon.handles().release_may_free(ctx, id));
    assert_eq!(b.ctx.destroy(id), Ok(()));
}

#[test]
fn a_failed_copy_out_leaves_no_object() {
    use crate::dispatch::fail_nth::FailNthMemory;
    let (b, _file) = Bench::opened(daemon_extensions());
    let ctx = b.ctx.id;
    let ioas = b.ioas();
    let before = b.ctx.num_objects();
    // The struct is read (access 1), the answer written (access 2).
    let fail_write = FailNthMemory::new(crate::caller::ProcessMemory::current(), Some(2));
    let mut r = req(UIOMMUFD_HANDLE_FAULT_QUEUE, 0, 0);
    let mut buf = r;
    let mem_arg = std::ptr::addr_of_mut!(buf) as u64;
    let resolve = |_: i32| b.daemon.hold_context(ctx).ok_or(Errno::EBADFD);
    let got = b
        .daemon
        .bind_handle_with(file_id(20), mem_arg, &fail_write, &resolve);
    assert_eq!(got.err(), Some(Errno::EFAULT));
    assert!(fail_write.fired());
    assert_eq!(b.ctx.num_objects(), before, "the fault queue went again");
    r.kind = UIOMMUFD_HANDLE_TEST_ACCESS;
    r.arg0 = ioas;
    buf = r;
    let fail_write = FailNthMemory::new(crate::caller::ProcessMemory::current(), Some(2));
    let got = b
        .daemon
        .bind_handle_with(file_id(21), mem_arg, &fail_write, &resolve);
    assert_eq!(got.err(), Some(Errno::EFAULT));
    assert_eq!(std::hint::black_box(buf).out_object_id, 0);
    assert_eq!(b.ctx.num_objects(), before, "the access went again");
    assert!(
        !b.daemon.handles().release_may_free(ctx, ioas),
        "and left no handle behind"
    );
}

#[test]
fn objects_are_looked_up_in_the_context_the_fd_names() {
    let (b, _file) = Bench::opened(daemon_extensions());
    let (other, _other_file) = Bench::opened(daemon_extensions());
    let ctx = b.ctx.id;
    // An IOAS that exists only in another context (of another daemon, with the same id).
    let foreign_ioas = other.ioas();
    assert_eq!(b.ctx.num_objects(), 0);
    let r = req(UIOMMUFD_HANDLE_TEST_ACCESS, foreign_ioas, 0);
    assert_eq!(bind(&b, file_id(30), &r, ctx).err(), Some(Errno::ENOENT));
    let ioas = b.ioas();
    let r = req(UIOMMUFD_HANDLE_TEST_ACCESS, ioas, 1 << 3);
    assert_eq!(
        bind(&b, file_id(30), &r, ctx).err(),
        Some(Errno::EOPNOTSUPP),
        "flags"
    );
    let r = req(
        UIOMMUFD_HANDLE_TEST_ACCESS,
        ioas,
        MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES,
    );
    let h = bind(&b, file_id(30), &r, ctx).unwrap();
    let id = b.at::<uiommufd_handle_bind>(ARG).out_object_id;
    assert!(b.ctx.get_access(id).is_ok());
    assert!(
        other.ctx.get_access(id).is_err(),
        "made where the fd points, not elsewhere"
    );
    assert!(
        b.daemon.handles().release_may_free(ctx, ioas),
        "the access holds the IOAS"
    );
    h.release(file_id(30));
    assert!(
        b.ctx.get_access(id).is_err(),
        "closing the fd destroys the access"
    );
}

#[test]
fn veventq_handles_check_like_veventq_alloc() {
    let (b, _file) = Bench::opened(daemon_extensions());
    let ctx = b.ctx.id;
    let ioas = b.ioas();
    let (viommu, m, _) = b.viommu(ioas);
    let ty = IOMMU_VEVENTQ_TYPE_SELFTEST;
    let q = |flags, viommu_id, ty, depth| uiommufd_handle_bind {
        arg2: ty,
        arg3: depth,
        ..req(UIOMMUFD_HANDLE_VEVENTQ, flags, viommu_id)
    };
    let cases = [
        (q(1, NO_ID, ty, 0), Errno::EOPNOTSUPP, "flags"),
        (q(0, NO_ID, 0, 0), Errno::EOPNOTSUPP, "the default type"),
        (
            q(0, NO_ID, ty, 0),
            Errno::EINVAL,
            "depth 0, before the vIOMMU",
        ),
        (q(0, NO_ID, ty, 1), Errno::ENOENT, "no vIOMMU"),
        (q(0, m.dev, ty, 1), Errno::ENOENT, "a device is no vIOMMU"),
    ];
    for (r, want, what) in cases {
        assert_eq!(bind(&b, file_id(40), &r, ctx).err(), Some(want), "{what}");
    }
    let h = bind(&b, file_id(40), &q(0, viommu, ty, 2), ctx).unwrap();
    let id = b.at::<uiommufd_handle_bind>(ARG).out_object_id;
    assert_eq!(b.ctx.get(id).unwrap().type_name(), "veventq");
    assert_eq!(
        bind(&b, file_id(41), &q(0, viommu, ty, 2), ctx).err(),
        Some(Errno::EEXIST),
        "one per vIOMMU and type"
    );
    h.release(file_id(40));
}
