//! `/dev/iommu` uAPI (`include/uapi/linux/iommufd.h`, Linux 7.2).
//!
//! Every command is `_IO(';', IOMMUFD_CMD_*)`: the argument is a pointer to a
//! struct whose first `u32` is its `size`, so the struct may grow over time.
//! Struct and field names follow the kernel; `__reserved` fields are named
//! `reserved` (and `reserved2`). Page-table, hardware-info, fault, vIOMMU and
//! event-queue structs live in the private `hwpt` submodule and are
//! re-exported here.

mod hwpt;
pub use hwpt::*;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The ioctl "type" byte shared by iommufd and VFIO.
pub const IOMMUFD_TYPE: u8 = b';';

/// `_IO(ty, nr)`: no direction and no size bits are encoded.
pub const fn io(ty: u8, nr: u32) -> u32 {
    ((ty as u32) << 8) | (nr & 0xff)
}

/// First iommufd command number.
pub const IOMMUFD_CMD_BASE: u32 = 0x80;
pub const IOMMUFD_CMD_DESTROY: u32 = IOMMUFD_CMD_BASE;
pub const IOMMUFD_CMD_IOAS_ALLOC: u32 = 0x81;
pub const IOMMUFD_CMD_IOAS_ALLOW_IOVAS: u32 = 0x82;
pub const IOMMUFD_CMD_IOAS_COPY: u32 = 0x83;
pub const IOMMUFD_CMD_IOAS_IOVA_RANGES: u32 = 0x84;
pub const IOMMUFD_CMD_IOAS_MAP: u32 = 0x85;
pub const IOMMUFD_CMD_IOAS_UNMAP: u32 = 0x86;
pub const IOMMUFD_CMD_OPTION: u32 = 0x87;
pub const IOMMUFD_CMD_VFIO_IOAS: u32 = 0x88;
pub const IOMMUFD_CMD_HWPT_ALLOC: u32 = 0x89;
pub const IOMMUFD_CMD_GET_HW_INFO: u32 = 0x8a;
pub const IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: u32 = 0x8b;
pub const IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: u32 = 0x8c;
pub const IOMMUFD_CMD_HWPT_INVALIDATE: u32 = 0x8d;
pub const IOMMUFD_CMD_FAULT_QUEUE_ALLOC: u32 = 0x8e;
pub const IOMMUFD_CMD_IOAS_MAP_FILE: u32 = 0x8f;
pub const IOMMUFD_CMD_VIOMMU_ALLOC: u32 = 0x90;
pub const IOMMUFD_CMD_VDEVICE_ALLOC: u32 = 0x91;
pub const IOMMUFD_CMD_IOAS_CHANGE_PROCESS: u32 = 0x92;
pub const IOMMUFD_CMD_VEVENTQ_ALLOC: u32 = 0x93;
pub const IOMMUFD_CMD_HW_QUEUE_ALLOC: u32 = 0x94;

pub const IOMMU_DESTROY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);
pub const IOMMU_IOAS_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);
pub const IOMMU_IOAS_ALLOW_IOVAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
pub const IOMMU_IOAS_COPY: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY);
pub const IOMMU_IOAS_IOVA_RANGES: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES);
pub const IOMMU_IOAS_MAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);
pub const IOMMU_IOAS_UNMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);
pub const IOMMU_OPTION: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION);
pub const IOMMU_VFIO_IOAS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS);
pub const IOMMU_HWPT_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC);
pub const IOMMU_GET_HW_INFO: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO);
pub const IOMMU_HWPT_SET_DIRTY_TRACKING: u32 =
    io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING);
pub const IOMMU_HWPT_GET_DIRTY_BITMAP: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP);
pub const IOMMU_HWPT_INVALIDATE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE);
pub const IOMMU_FAULT_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC);
pub const IOMMU_IOAS_MAP_FILE: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE);
pub const IOMMU_VIOMMU_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC);
pub const IOMMU_VDEVICE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC);
pub const IOMMU_IOAS_CHANGE_PROCESS: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS);
pub const IOMMU_VEVENTQ_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC);
pub const IOMMU_HW_QUEUE_ALLOC: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC);

/// `IOMMU_DESTROY`: drop the object with ID `id`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_destroy {
    pub size: u32,
    pub id: u32,
}

/// `IOMMU_IOAS_ALLOC`: create an empty I/O address space.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_ioas_alloc {
    pub size: u32,
    pub flags: u32,
    pub out_ioas_id: u32,
}

/// An inclusive IOVA interval `[start, last]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_iova_range {
    pub start: u64,
    pub last: u64,
}

/// `IOMMU_IOAS_IOVA_RANGES`: report the usable IOVA ranges of an IOAS.
///
/// `allowed_iovas` points to `num_iovas` [`iommu_iova_range`] entries.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_ioas_iova_ranges {
    pub size: u32,
    pub ioas_id: u32,
    pub num_iovas: u32,
    pub reserved: u32,
    pub allowed_iovas: u64,
    pub out_iova_alignment: u64,
}

/// `IOMMU_IOAS_ALLOW_IOVAS`: restrict automatic IOVA allocation to a set of
/// ranges (`allowed_iovas` points to `num_iovas` [`iommu_iova_range`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_ioas_allow_iovas {
    pub size: u32,
    pub ioas_id: u32,
    pub num_iovas: u32,
    pub reserved: u32,
    pub allowed_iovas: u64,
}

/// Map flag: use the caller-supplied `iova` instead of allocating one.
pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
/// Map flag: the device may write the range.
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
/// Map flag: the device may read the range.
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// `IOMMU_IOAS_MAP`: map user memory `[user_va, user_va + length)` into an IOAS.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_ioas_map {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub reserved: u32,
    pub user_va: u64,
    pub length: u64,
    pub iova: u64,
}

/// `IOMMU_IOAS_MAP_FILE`: map `length` bytes of file `fd` from offset `start`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_ioas_map_file {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub fd: i32,
    pub start: u64,
    pub length: u64,
    pub iova: u64,
}

/// `IOMMU_IOAS_COPY`: duplicate a mapping of one IOAS into another.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_ioas_copy {
    pub size: u32,
    pub flags: u32,
    pub dst_ioas_id: u32,
    pub src_ioas_id: u32,
    pub length: u64,
    pub dst_iova: u64,
    pub src_iova: u64,
}

/// `IOMMU_IOAS_UNMAP`: remove mappings; `length` returns the bytes unmapped.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_ioas_unmap {
    pub size: u32,
    pub ioas_id: u32,
    pub iova: u64,
    pub length: u64,
}

/// Option: how pinned pages are charged against `RLIMIT_MEMLOCK`.
pub const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
/// Option: whether an IOAS may use huge pages.
pub const IOMMU_OPTION_HUGE_PAGES: u32 = 1;
/// Option op: write `val64`.
pub const IOMMU_OPTION_OP_SET: u16 = 0;
/// Option op: read into `val64`.
pub const IOMMU_OPTION_OP_GET: u16 = 1;

/// `IOMMU_OPTION`: get or set a global or per-object option.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_option {
    pub size: u32,
    pub option_id: u32,
    pub op: u16,
    pub reserved: u16,
    pub object_id: u32,
    pub val64: u64,
}

/// VFIO compat op: report the IOAS used by the type1 container emulation.
pub const IOMMU_VFIO_IOAS_GET: u16 = 0;
/// VFIO compat op: set the IOAS used by the type1 container emulation.
pub const IOMMU_VFIO_IOAS_SET: u16 = 1;
/// VFIO compat op: forget the compat IOAS.
pub const IOMMU_VFIO_IOAS_CLEAR: u16 = 2;

/// `IOMMU_VFIO_IOAS`: manage the IOAS backing the VFIO container compat layer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_vfio_ioas {
    pub size: u32,
    pub ioas_id: u32,
    pub op: u16,
    pub reserved: u16,
}

/// `IOMMU_IOAS_CHANGE_PROCESS`: move pinned-page accounting to the caller.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_ioas_change_process {
    pub size: u32,
    pub reserved: u32,
}
