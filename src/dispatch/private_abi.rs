//! uiommufd's private ABI between `uiommufd launch` and the daemon for fd-returning operations
//! (not a kernel header, so not in the uAPI crate).
//!
//! Some iommufd operations return a new file descriptor (IOMMU_TEST_OP_CREATE_ACCESS, and in the
//! kernel IOMMU_FAULT_QUEUE_ALLOC and IOMMU_VEVENTQ_ALLOC). A FUSE or CUSE server cannot install an
//! fd in its caller, so `uiommufd launch` runs the client under a seccomp user-notify filter and
//! does it in two steps:
//!
//! 1. it opens the caller's node again (a fresh open file, served by the daemon) and issues
//!    [`UIOMMUFD_HANDLE_BIND`] on it, naming a duplicate of the caller's iommufd fd in the
//!    launcher's own fd table. The daemon creates the object in that iommufd's context and ties it
//!    to the fresh open file: closing the last reference to that file destroys the object, as
//!    closing the kernel's anonymous-inode fd does;
//! 2. it installs the fresh file in the caller (`SECCOMP_IOCTL_NOTIF_ADDFD`) and writes the new fd
//!    number into the caller's ioctl argument.
//!
//! Holding the iommufd fd is the proof of authority: whoever has it may create objects in it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `_IO(';', 0xfe)`: past every iommufd and VFIO number. Only uiommufd nodes answer it.
pub const UIOMMUFD_HANDLE_BIND: u32 = uiommufd_uapi::io(b';', 0xfe);

/// The handle is the fd of an IOMMU_TEST_OP_CREATE_ACCESS access: `arg0` = IOAS id, `arg1` =
/// the op's `flags` (MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES).
pub const UIOMMUFD_HANDLE_TEST_ACCESS: u32 = 1;

/// Argument of [`UIOMMUFD_HANDLE_BIND`].
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct uiommufd_handle_bind {
    /// `sizeof(struct uiommufd_handle_bind)`.
    pub size: u32,
    /// `UIOMMUFD_HANDLE_*`.
    pub kind: u32,
    /// An fd, in the table of the process issuing the ioctl, of the iommufd to create in.
    pub iommufd: i32,
    pub arg0: u32,
    pub arg1: u32,
    pub arg2: u32,
    pub arg3: u32,
    /// Out: the new object's ID in that iommufd.
    pub out_object_id: u32,
    pub reserved: u32,
}

/// The handle is the fd of an IOMMU_FAULT_QUEUE_ALLOC fault queue: `arg0` = the command's `flags`.
pub const UIOMMUFD_HANDLE_FAULT_QUEUE: u32 = 2;

/// The handle is the fd of an IOMMU_TEST_OP_DMABUF_GET dma-buf: `arg0` = its length in bytes.
/// It creates no iommufd object (`out_object_id` is 0).
pub const UIOMMUFD_HANDLE_TEST_DMABUF: u32 = 3;

/// The handle is the fd of an IOMMU_VEVENTQ_ALLOC vEVENT queue: `arg0` = the command's `flags`,
/// `arg1` = `viommu_id`, `arg2` = `type`, `arg3` = `veventq_depth`.
pub const UIOMMUFD_HANDLE_VEVENTQ: u32 = 4;

/// `_IO(';', 0xfd)`: what `read(fd, buf, 0)` on this open file of a uiommufd node must answer.
/// FUSE and CUSE answer a zero-length read themselves (0) without asking the server, where the
/// kernel's iommufd files answer EINVAL (no read at all, or a queue that wants a whole record);
/// `uiommufd launch` asks with this and answers the read for the daemon.
pub const UIOMMUFD_ZERO_READ: u32 = uiommufd_uapi::io(b';', 0xfd);

/// Argument of [`UIOMMUFD_ZERO_READ`].
#[repr(C)]
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct uiommufd_zero_read {
    /// `sizeof(struct uiommufd_zero_read)`.
    pub size: u32,
    /// Out: 0 (the read returns 0) or the errno it fails with.
    pub out_errno: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_fixed() {
        assert_eq!(std::mem::size_of::<uiommufd_handle_bind>(), 36);
        assert_eq!(
            std::mem::offset_of!(uiommufd_handle_bind, out_object_id),
            28
        );
        assert_eq!(UIOMMUFD_HANDLE_BIND, 0x3bfe);
        assert_eq!(std::mem::size_of::<uiommufd_zero_read>(), 8);
        assert_eq!(UIOMMUFD_ZERO_READ, 0x3bfd);
    }
}
