//! Hardware page tables, hardware info, dirty tracking, invalidation, I/O
//! page faults, vIOMMU/vDEVICE, virtual event queues and hardware queues.
//!
//! `__aligned_le64` fields are plain `u64` holding little-endian values.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// HWPT alloc flag: the HWPT may be the parent of a nested HWPT.
pub const IOMMU_HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
/// HWPT alloc flag: the domain must support dirty tracking.
pub const IOMMU_HWPT_ALLOC_DIRTY_TRACKING: u32 = 1 << 1;
/// HWPT alloc flag: `fault_id` is valid; faults are reported to it.
pub const IOMMU_HWPT_FAULT_ID_VALID: u32 = 1 << 2;
/// HWPT alloc flag: the domain may be attached to a PASID.
pub const IOMMU_HWPT_ALLOC_PASID: u32 = 1 << 3;

/// VT-d stage-1 flag: supervisor requests.
pub const IOMMU_VTD_S1_SRE: u64 = 1 << 0;
/// VT-d stage-1 flag: extended access flag enable.
pub const IOMMU_VTD_S1_EAFE: u64 = 1 << 1;
/// VT-d stage-1 flag: write protect enable.
pub const IOMMU_VTD_S1_WPE: u64 = 1 << 2;

/// Driver data for `IOMMU_HWPT_DATA_VTD_S1`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_vtd_s1 {
    pub flags: u64,
    pub pgtbl_addr: u64,
    pub addr_width: u32,
    pub reserved: u32,
}

/// Driver data for `IOMMU_HWPT_DATA_ARM_SMMUV3`: a guest stream table entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_arm_smmuv3 {
    pub ste: [u64; 2],
}

/// Driver data for `IOMMU_HWPT_DATA_AMD_GUEST`: a guest device table entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_amd_guest {
    pub dte: [u64; 4],
}

pub const IOMMU_HWPT_DATA_NONE: u32 = 0;
pub const IOMMU_HWPT_DATA_VTD_S1: u32 = 1;
pub const IOMMU_HWPT_DATA_ARM_SMMUV3: u32 = 2;
pub const IOMMU_HWPT_DATA_AMD_GUEST: u32 = 3;

/// `IOMMU_HWPT_ALLOC`: allocate a hardware page table for a device.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_alloc {
    pub size: u32,
    pub flags: u32,
    pub dev_id: u32,
    pub pt_id: u32,
    pub out_hwpt_id: u32,
    pub reserved: u32,
    pub data_type: u32,
    pub data_len: u32,
    pub data_uptr: u64,
    pub fault_id: u32,
    pub reserved2: u32,
}

/// VT-d hw-info flag: erratum 772415 (SPR17) is present.
pub const IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17: u32 = 1 << 0;

/// Hardware info for `IOMMU_HW_INFO_TYPE_INTEL_VTD`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hw_info_vtd {
    pub flags: u32,
    pub reserved: u32,
    pub cap_reg: u64,
    pub ecap_reg: u64,
}

/// Hardware info for `IOMMU_HW_INFO_TYPE_ARM_SMMUV3`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hw_info_arm_smmuv3 {
    pub flags: u32,
    pub reserved: u32,
    pub idr: [u32; 6],
    pub iidr: u32,
    pub aidr: u32,
}

/// Hardware info for `IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hw_info_tegra241_cmdqv {
    pub flags: u32,
    pub version: u8,
    pub log2vcmdqs: u8,
    pub log2vsids: u8,
    pub reserved: u8,
}

/// Hardware info for `IOMMU_HW_INFO_TYPE_AMD`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hw_info_amd {
    pub efr: u64,
    pub efr2: u64,
}

pub const IOMMU_HW_INFO_TYPE_NONE: u32 = 0;
pub const IOMMU_HW_INFO_TYPE_DEFAULT: u32 = 0;
pub const IOMMU_HW_INFO_TYPE_INTEL_VTD: u32 = 1;
pub const IOMMU_HW_INFO_TYPE_ARM_SMMUV3: u32 = 2;
pub const IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV: u32 = 3;
pub const IOMMU_HW_INFO_TYPE_AMD: u32 = 4;

/// Capability: the IOMMU can track dirty IOVAs.
pub const IOMMU_HW_CAP_DIRTY_TRACKING: u64 = 1 << 0;
/// Capability: PCI PASID execute permission supported.
pub const IOMMU_HW_CAP_PCI_PASID_EXEC: u64 = 1 << 1;
/// Capability: PCI PASID privileged mode supported.
pub const IOMMU_HW_CAP_PCI_PASID_PRIV: u64 = 1 << 2;
/// Capability: the device must not use ATS.
pub const IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED: u64 = 1 << 3;

/// `IOMMU_GET_HW_INFO` flag: `in_data_type` selects the requested type.
pub const IOMMU_HW_INFO_FLAG_INPUT_TYPE: u32 = 1 << 0;

/// `IOMMU_GET_HW_INFO`: query the IOMMU behind a bound device.
///
/// The kernel has a `u32` union `{ in_data_type; out_data_type; }` at offset
/// 24; it is the single field `in_data_type` here, with
/// [`out_data_type`](Self::out_data_type) accessors for the output meaning.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hw_info {
    pub size: u32,
    pub flags: u32,
    pub dev_id: u32,
    pub data_len: u32,
    pub data_uptr: u64,
    pub in_data_type: u32,
    pub out_max_pasid_log2: u8,
    pub reserved: [u8; 3],
    pub out_capabilities: u64,
}

impl iommu_hw_info {
    /// The union read as its output member.
    pub const fn out_data_type(&self) -> u32 {
        self.in_data_type
    }

    /// Write the union as its output member.
    pub fn set_out_data_type(&mut self, ty: u32) {
        self.in_data_type = ty;
    }
}

/// Dirty-tracking flag: enable (absent: disable).
pub const IOMMU_HWPT_DIRTY_TRACKING_ENABLE: u32 = 1;

/// `IOMMU_HWPT_SET_DIRTY_TRACKING`: start or stop dirty tracking on a HWPT.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_set_dirty_tracking {
    pub size: u32,
    pub flags: u32,
    pub hwpt_id: u32,
    pub reserved: u32,
}

/// Dirty-bitmap flag: read without clearing the dirty bits.
pub const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: u32 = 1;

/// `IOMMU_HWPT_GET_DIRTY_BITMAP`: read (and clear) dirty bits of an IOVA range
/// into the user bitmap at `data`, one bit per `page_size`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_get_dirty_bitmap {
    pub size: u32,
    pub hwpt_id: u32,
    pub flags: u32,
    pub reserved: u32,
    pub iova: u64,
    pub length: u64,
    pub page_size: u64,
    pub data: u64,
}

pub const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: u32 = 0;
pub const IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: u32 = 1;

/// VT-d invalidation flag: leaf entries only.
pub const IOMMU_VTD_INV_FLAGS_LEAF: u32 = 1 << 0;

/// One VT-d stage-1 invalidation request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_vtd_s1_invalidate {
    pub addr: u64,
    pub npages: u64,
    pub flags: u32,
    pub reserved: u32,
}

/// One SMMUv3 invalidation command (two little-endian words).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_viommu_arm_smmuv3_invalidate {
    pub cmd: [u64; 2],
}

/// `IOMMU_HWPT_INVALIDATE`: an array of `entry_num` requests of `entry_len`
/// bytes each at `data_uptr`; `entry_num` returns how many were handled.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_invalidate {
    pub size: u32,
    pub hwpt_id: u32,
    pub data_uptr: u64,
    pub data_type: u32,
    pub entry_len: u32,
    pub entry_num: u32,
    pub reserved: u32,
}

/// Fault flag: `pasid` is valid.
pub const IOMMU_PGFAULT_FLAGS_PASID_VALID: u32 = 1 << 0;
/// Fault flag: last fault of its group; it wants a response.
pub const IOMMU_PGFAULT_FLAGS_LAST_PAGE: u32 = 1 << 1;
pub const IOMMU_PGFAULT_PERM_READ: u32 = 1 << 0;
pub const IOMMU_PGFAULT_PERM_WRITE: u32 = 1 << 1;
pub const IOMMU_PGFAULT_PERM_EXEC: u32 = 1 << 2;
pub const IOMMU_PGFAULT_PERM_PRIV: u32 = 1 << 3;

/// One I/O page fault as read from a fault queue fd.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_pgfault {
    pub flags: u32,
    pub dev_id: u32,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub reserved: u32,
    pub addr: u64,
    pub length: u32,
    pub cookie: u32,
}

pub const IOMMUFD_PAGE_RESP_SUCCESS: u32 = 0;
pub const IOMMUFD_PAGE_RESP_INVALID: u32 = 1;

/// A fault response as written to a fault queue fd.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hwpt_page_response {
    pub cookie: u32,
    pub code: u32,
}

/// `IOMMU_FAULT_QUEUE_ALLOC`: create a fault queue object and its fd.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_fault_alloc {
    pub size: u32,
    pub flags: u32,
    pub out_fault_id: u32,
    pub out_fault_fd: u32,
}

pub const IOMMU_VIOMMU_TYPE_DEFAULT: u32 = 0;
pub const IOMMU_VIOMMU_TYPE_ARM_SMMUV3: u32 = 1;
pub const IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV: u32 = 2;

/// vIOMMU data for `IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV` (mmap window of the VINTF).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_viommu_tegra241_cmdqv {
    pub out_vintf_mmap_offset: u64,
    pub out_vintf_mmap_length: u64,
}

/// `IOMMU_VIOMMU_ALLOC`: create a virtual IOMMU on top of a nesting parent HWPT.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_viommu_alloc {
    pub size: u32,
    pub flags: u32,
    pub r#type: u32,
    pub dev_id: u32,
    pub hwpt_id: u32,
    pub out_viommu_id: u32,
    pub data_len: u32,
    pub reserved: u32,
    pub data_uptr: u64,
}

/// `IOMMU_VDEVICE_ALLOC`: bind a device to a vIOMMU under guest ID `virt_id`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_vdevice_alloc {
    pub size: u32,
    pub viommu_id: u32,
    pub dev_id: u32,
    pub out_vdevice_id: u32,
    pub virt_id: u64,
}

/// vEVENTQ header flag: events were dropped before this one.
pub const IOMMU_VEVENTQ_FLAG_LOST_EVENTS: u32 = 1 << 0;

/// Header preceding each event read from a vEVENTQ fd.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommufd_vevent_header {
    pub flags: u32,
    pub sequence: u32,
}

pub const IOMMU_VEVENTQ_TYPE_DEFAULT: u32 = 0;
pub const IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: u32 = 1;
pub const IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV: u32 = 2;

/// Event payload for `IOMMU_VEVENTQ_TYPE_ARM_SMMUV3`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_vevent_arm_smmuv3 {
    pub evt: [u64; 4],
}

/// Event payload for `IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_vevent_tegra241_cmdqv {
    pub lvcmdq_err_map: [u64; 2],
}

/// `IOMMU_VEVENTQ_ALLOC`: create a virtual event queue for a vIOMMU.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_veventq_alloc {
    pub size: u32,
    pub flags: u32,
    pub viommu_id: u32,
    pub r#type: u32,
    pub veventq_depth: u32,
    pub out_veventq_id: u32,
    pub out_veventq_fd: u32,
    pub reserved: u32,
}

pub const IOMMU_HW_QUEUE_TYPE_DEFAULT: u32 = 0;
pub const IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV: u32 = 1;

/// `IOMMU_HW_QUEUE_ALLOC`: give a vIOMMU a hardware queue backed by guest memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct iommu_hw_queue_alloc {
    pub size: u32,
    pub flags: u32,
    pub viommu_id: u32,
    pub r#type: u32,
    pub index: u32,
    pub out_hw_queue_id: u32,
    pub nesting_parent_iova: u64,
    pub length: u64,
}
