//! iommufd selftest uAPI (`drivers/iommu/iommufd/iommufd_test.h`, Linux 7.2).
//!
//! `IOMMU_TEST_CMD` drives the kernel's mock IOMMU driver from the
//! `tools/testing/selftests/iommu` programs. Its per-op arguments live in an
//! anonymous union; here the union is [`iommu_test_cmd::payload`], a 48-byte
//! array, and each union member is a separate `iommu_test_cmd_<member>` struct
//! read and written with [`iommu_test_cmd::payload`] /
//! [`iommu_test_cmd::set_payload`].

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::iommufd::{io, IOMMUFD_CMD_BASE, IOMMUFD_TYPE};

pub const IOMMU_TEST_OP_ADD_RESERVED: u32 = 1;
pub const IOMMU_TEST_OP_MOCK_DOMAIN: u32 = 2;
pub const IOMMU_TEST_OP_MD_CHECK_MAP: u32 = 3;
pub const IOMMU_TEST_OP_MD_CHECK_REFS: u32 = 4;
pub const IOMMU_TEST_OP_CREATE_ACCESS: u32 = 5;
pub const IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: u32 = 6;
pub const IOMMU_TEST_OP_ACCESS_PAGES: u32 = 7;
pub const IOMMU_TEST_OP_ACCESS_RW: u32 = 8;
pub const IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: u32 = 9;
pub const IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: u32 = 10;
pub const IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: u32 = 11;
pub const IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: u32 = 12;
pub const IOMMU_TEST_OP_DIRTY: u32 = 13;
pub const IOMMU_TEST_OP_MD_CHECK_IOTLB: u32 = 14;
pub const IOMMU_TEST_OP_TRIGGER_IOPF: u32 = 15;
pub const IOMMU_TEST_OP_DEV_CHECK_CACHE: u32 = 16;
pub const IOMMU_TEST_OP_TRIGGER_VEVENT: u32 = 17;
pub const IOMMU_TEST_OP_PASID_ATTACH: u32 = 18;
pub const IOMMU_TEST_OP_PASID_REPLACE: u32 = 19;
pub const IOMMU_TEST_OP_PASID_DETACH: u32 = 20;
pub const IOMMU_TEST_OP_PASID_CHECK_HWPT: u32 = 21;
pub const IOMMU_TEST_OP_DMABUF_GET: u32 = 22;
pub const IOMMU_TEST_OP_DMABUF_REVOKE: u32 = 23;

/// Mock page-table format: the default one.
pub const MOCK_IOMMUPT_DEFAULT: u32 = 0;
/// Mock page-table format: with huge pages.
pub const MOCK_IOMMUPT_HUGE: u32 = 1;

/// First IOVA of the default mock domain's aperture.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// Last IOVA (inclusive) of the default mock domain's aperture.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
/// Page size of the default mock domain.
pub const MOCK_PAGE_SIZE: u64 = 2048;
/// Huge page size of the mock domain.
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_PAGE_SIZE;

/// `create_access.flags`: the access may write.
pub const MOCK_FLAGS_ACCESS_WRITE: u32 = 1 << 0;
/// `create_access.flags`: fuzzing mode, IOVAs are not checked.
pub const MOCK_FLAGS_ACCESS_SYZ: u32 = 1 << 16;
/// `access_rw.flags`: write instead of read.
pub const MOCK_ACCESS_RW_WRITE: u32 = 1 << 0;
/// `access_rw.flags`: take the slow (page-by-page) path.
pub const MOCK_ACCESS_RW_SLOW_PATH: u32 = 1 << 2;
/// `create_access.flags`: the access pins pages (needs `unmap` callbacks).
pub const MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: u32 = 1 << 0;
/// `mock_domain_flags.dev_flags`: the mock device has no dirty tracking.
pub const MOCK_FLAGS_DEVICE_NO_DIRTY: u32 = 1 << 0;
/// `mock_domain_flags.dev_flags`: the mock device supports PASID.
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;

pub const MOCK_NESTED_DOMAIN_IOTLB_ID_MAX: u32 = 3;
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: u32 = 4;
pub const MOCK_DEV_CACHE_ID_MAX: u32 = 3;
pub const MOCK_DEV_CACHE_NUM: u32 = 4;

/// PASID kept aside for the PASID-replace test.
pub const IOMMU_TEST_PASID_RESERVED: u32 = 1024;
/// PASID width of the mock device and IOMMU.
pub const MOCK_PASID_WIDTH: u32 = 20;

/// The selftest ioctl: `_IO(';', IOMMUFD_CMD_BASE + 32)`.
pub const IOMMU_TEST_CMD: u32 = io(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32);

/// Size in bytes of the per-op union inside [`iommu_test_cmd`].
pub const IOMMU_TEST_CMD_PAYLOAD_LEN: usize = 48;

/// Argument of `IOMMU_TEST_CMD` (72 bytes, 8-byte aligned).
///
/// The kernel's anonymous union sits at offset 16 and is 48 bytes long (its
/// largest member is `dirty`); it is `payload` here. C also leaves 4 bytes of
/// tail padding after `last`, made explicit as `__pad`.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd {
    pub size: u32,
    pub op: u32,
    pub id: u32,
    pub reserved: u32,
    pub payload: [u8; IOMMU_TEST_CMD_PAYLOAD_LEN],
    pub last: u32,
    pub __pad: u32,
}

impl Default for iommu_test_cmd {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl iommu_test_cmd {
    /// Read the union as `T` (one of the `iommu_test_cmd_*` structs).
    /// `None` if `T` is larger than the union.
    pub fn payload<T: FromBytes>(&self) -> Option<T> {
        T::read_from_prefix(&self.payload).ok().map(|(v, _)| v)
    }

    /// Write `v` at the start of the union, leaving the remaining bytes as
    /// they are. Returns `false` (and writes nothing) if `T` does not fit.
    pub fn set_payload<T: IntoBytes + Immutable>(&mut self, v: &T) -> bool {
        v.write_to_prefix(&mut self.payload).is_ok()
    }
}

/// Union member for `IOMMU_TEST_OP_ADD_RESERVED`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_add_reserved {
    pub start: u64,
    pub length: u64,
}

/// Union member for `IOMMU_TEST_OP_MOCK_DOMAIN`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_mock_domain {
    pub out_stdev_id: u32,
    pub out_hwpt_id: u32,
    /// The ID of the regular iommufd device bind object.
    pub out_idev_id: u32,
}

/// Union member for `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_mock_domain_flags {
    pub out_stdev_id: u32,
    pub out_hwpt_id: u32,
    pub out_idev_id: u32,
    /// `MOCK_FLAGS_DEVICE_*`.
    pub dev_flags: u32,
}

/// Union member for `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_mock_domain_replace {
    pub pt_id: u32,
}

/// Union member for `IOMMU_TEST_OP_MD_CHECK_MAP`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_check_map {
    pub iova: u64,
    pub length: u64,
    pub uptr: u64,
}

/// Union member for `IOMMU_TEST_OP_MD_CHECK_REFS` (4 bytes C tail padding made explicit).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_check_refs {
    pub length: u64,
    pub uptr: u64,
    pub refs: u32,
    pub __pad: u32,
}

/// Union member for `IOMMU_TEST_OP_CREATE_ACCESS`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_create_access {
    pub out_access_fd: u32,
    pub flags: u32,
}

/// Union member for `IOMMU_TEST_OP_DESTROY_ACCESS_PAGES`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_destroy_access_pages {
    pub access_pages_id: u32,
}

/// Union member for `IOMMU_TEST_OP_ACCESS_PAGES`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_access_pages {
    pub flags: u32,
    pub out_access_pages_id: u32,
    pub iova: u64,
    pub length: u64,
    pub uptr: u64,
}

/// Union member for `IOMMU_TEST_OP_ACCESS_RW` (4 bytes C tail padding made explicit).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_access_rw {
    pub iova: u64,
    pub length: u64,
    pub uptr: u64,
    pub flags: u32,
    pub __pad: u32,
}

/// Union member for `IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_memory_limit {
    pub limit: u32,
}

/// Union member for `IOMMU_TEST_OP_ACCESS_REPLACE_IOAS`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_access_replace_ioas {
    pub ioas_id: u32,
}

/// Union member for `IOMMU_TEST_OP_DIRTY` (4 bytes C padding after `flags`
/// made explicit). The largest member: it sets the union's size.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_dirty {
    pub flags: u32,
    pub __pad: u32,
    pub iova: u64,
    pub length: u64,
    pub page_size: u64,
    pub uptr: u64,
    pub out_nr_dirty: u64,
}

/// Union member for `IOMMU_TEST_OP_MD_CHECK_IOTLB`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_check_iotlb {
    pub id: u32,
    pub iotlb: u32,
}

/// Union member for `IOMMU_TEST_OP_TRIGGER_IOPF`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_trigger_iopf {
    pub dev_id: u32,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub addr: u64,
}

/// Union member for `IOMMU_TEST_OP_DEV_CHECK_CACHE`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_check_dev_cache {
    pub id: u32,
    pub cache: u32,
}

/// Union member for `IOMMU_TEST_OP_TRIGGER_VEVENT`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_trigger_vevent {
    pub dev_id: u32,
}

/// Union member for `IOMMU_TEST_OP_PASID_ATTACH` (`id` is the stdev ID).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_pasid_attach {
    pub pasid: u32,
    pub pt_id: u32,
}

/// Union member for `IOMMU_TEST_OP_PASID_REPLACE` (`id` is the stdev ID).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_pasid_replace {
    pub pasid: u32,
    pub pt_id: u32,
}

/// Union member for `IOMMU_TEST_OP_PASID_DETACH` (`id` is the stdev ID).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_pasid_detach {
    pub pasid: u32,
}

/// Union member for `IOMMU_TEST_OP_PASID_CHECK_HWPT` (`id` is the stdev ID).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_pasid_check {
    pub pasid: u32,
    pub hwpt_id: u32,
}

/// Union member for `IOMMU_TEST_OP_DMABUF_GET`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_dmabuf_get {
    pub length: u32,
    pub open_flags: u32,
}

/// Union member for `IOMMU_TEST_OP_DMABUF_REVOKE`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_cmd_dmabuf_revoke {
    pub dmabuf_fd: i32,
    pub revoked: u32,
}

/// `IOMMU_GET_HW_INFO` data type reported by the mock driver.
pub const IOMMU_HW_INFO_TYPE_SELFTEST: u32 = 0xfeedbeef;
/// Value the mock driver puts in [`iommu_test_hw_info::test_reg`].
pub const IOMMU_HW_INFO_SELFTEST_REGVAL: u32 = 0xdeadbeef;

/// Hardware info of the mock IOMMU.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_test_hw_info {
    pub flags: u32,
    pub test_reg: u32,
}

/// HWPT data type of mock nested domains.
pub const IOMMU_HWPT_DATA_SELFTEST: u32 = 0xdead;
/// Initial value of every mock IOTLB entry.
pub const IOMMU_TEST_IOTLB_DEFAULT: u32 = 0xbadbeef;
/// Initial value of every mock device cache entry.
pub const IOMMU_TEST_DEV_CACHE_DEFAULT: u32 = 0xbaddad;

/// HWPT alloc data for `IOMMU_HWPT_DATA_SELFTEST`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_selftest {
    /// Initial IOTLB value, normally `IOMMU_TEST_IOTLB_DEFAULT`.
    pub iotlb: u32,
    /// `MOCK_IOMMUPT_*`.
    pub pagetable_type: u32,
}

/// HWPT invalidation data type of mock nested domains.
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdeadbeef;
/// An invalidation data type the mock driver rejects.
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0xdadbeef;
/// Invalidation flag: every entry, ignoring the index.
pub const IOMMU_TEST_INVALIDATE_FLAG_ALL: u32 = 1 << 0;

/// One mock HWPT invalidation request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_invalidate_selftest {
    pub flags: u32,
    pub iotlb_id: u32,
}

/// vIOMMU type of the mock driver.
pub const IOMMU_VIOMMU_TYPE_SELFTEST: u32 = 0xdeadbeef;

/// vIOMMU alloc data of the mock driver: `out_data` echoes `in_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_viommu_selftest {
    pub in_data: u32,
    pub out_data: u32,
    pub out_mmap_offset: u64,
    pub out_mmap_length: u64,
}

/// vIOMMU invalidation data type of the mock driver.
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdeadbeef;
/// A vIOMMU invalidation data type the mock driver rejects.
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0xdadbeef;

/// One mock vIOMMU (device cache) invalidation request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_viommu_invalidate_selftest {
    pub flags: u32,
    pub vdev_id: u32,
    pub cache_id: u32,
}

/// vEVENTQ type of the mock driver.
pub const IOMMU_VEVENTQ_TYPE_SELFTEST: u32 = 0xbeefbeef;

/// Event payload of the mock driver.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_viommu_event_selftest {
    pub virt_id: u32,
}

/// Hardware queue type of the mock driver.
pub const IOMMU_HW_QUEUE_TYPE_SELFTEST: u32 = 0xdeadbeef;
/// Number of hardware queues a mock vIOMMU accepts.
pub const IOMMU_TEST_HW_QUEUE_MAX: u32 = 2;
