//! VFIO uAPI (`include/uapi/linux/vfio.h`, Linux 7.2): the container (type1
//! IOMMU), group and device ioctls that a VFIO compat layer on iommufd needs.
//!
//! Argument structs start with `argsz`. Structs that end in a C flexible
//! array (`data[]`, `devices[]`, ...) are the fixed header only; the trailing
//! entries follow at `size_of::<header>()` in the caller's buffer.

#![allow(non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::iommufd::io;

pub const VFIO_API_VERSION: u32 = 0;

pub const VFIO_TYPE1_IOMMU: u32 = 1;
pub const VFIO_SPAPR_TCE_IOMMU: u32 = 2;
pub const VFIO_TYPE1v2_IOMMU: u32 = 3;
/// Extension: DMA is cache coherent.
pub const VFIO_DMA_CC_IOMMU: u32 = 4;
pub const VFIO_EEH: u32 = 5;
/// Retired nesting extension; 7.2 names it `__VFIO_RESERVED_TYPE1_NESTING_IOMMU`.
pub const VFIO_TYPE1_NESTING_IOMMU: u32 = 6;
pub const VFIO_SPAPR_TCE_v2_IOMMU: u32 = 7;
/// Extension: no IOMMU at all (unsafe mode).
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;
/// Extension: `VFIO_DMA_UNMAP_FLAG_ALL` is supported.
pub const VFIO_UNMAP_ALL: u32 = 9;
/// Extension: `VFIO_DMA_MAP_FLAG_VADDR` / `VFIO_DMA_UNMAP_FLAG_VADDR` are supported.
pub const VFIO_UPDATE_VADDR: u32 = 10;

/// ioctl type byte of VFIO (shared with iommufd).
pub const VFIO_TYPE: u8 = b';';
/// First VFIO ioctl number.
pub const VFIO_BASE: u32 = 100;

pub const VFIO_GET_API_VERSION: u32 = io(VFIO_TYPE, VFIO_BASE);
pub const VFIO_CHECK_EXTENSION: u32 = io(VFIO_TYPE, VFIO_BASE + 1);
pub const VFIO_SET_IOMMU: u32 = io(VFIO_TYPE, VFIO_BASE + 2);
pub const VFIO_GROUP_GET_STATUS: u32 = io(VFIO_TYPE, VFIO_BASE + 3);
pub const VFIO_GROUP_SET_CONTAINER: u32 = io(VFIO_TYPE, VFIO_BASE + 4);
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = io(VFIO_TYPE, VFIO_BASE + 5);
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = io(VFIO_TYPE, VFIO_BASE + 6);
pub const VFIO_DEVICE_GET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 7);
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 8);
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 9);
pub const VFIO_DEVICE_SET_IRQS: u32 = io(VFIO_TYPE, VFIO_BASE + 10);
pub const VFIO_DEVICE_RESET: u32 = io(VFIO_TYPE, VFIO_BASE + 11);
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 12);
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = io(VFIO_TYPE, VFIO_BASE + 13);
pub const VFIO_DEVICE_QUERY_GFX_PLANE: u32 = io(VFIO_TYPE, VFIO_BASE + 14);
pub const VFIO_DEVICE_GET_GFX_DMABUF: u32 = io(VFIO_TYPE, VFIO_BASE + 15);
pub const VFIO_DEVICE_IOEVENTFD: u32 = io(VFIO_TYPE, VFIO_BASE + 16);
pub const VFIO_DEVICE_FEATURE: u32 = io(VFIO_TYPE, VFIO_BASE + 17);
pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = io(VFIO_TYPE, VFIO_BASE + 18);
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = io(VFIO_TYPE, VFIO_BASE + 19);
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u32 = io(VFIO_TYPE, VFIO_BASE + 20);
/// Container ioctl; shares its number with `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`.
pub const VFIO_IOMMU_GET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 12);
pub const VFIO_IOMMU_MAP_DMA: u32 = io(VFIO_TYPE, VFIO_BASE + 13);
pub const VFIO_IOMMU_UNMAP_DMA: u32 = io(VFIO_TYPE, VFIO_BASE + 14);
pub const VFIO_IOMMU_ENABLE: u32 = io(VFIO_TYPE, VFIO_BASE + 15);
pub const VFIO_IOMMU_DISABLE: u32 = io(VFIO_TYPE, VFIO_BASE + 16);
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = io(VFIO_TYPE, VFIO_BASE + 17);

/// Header of every capability in an info chain; `next` is the offset of the
/// following one from the start of the info struct (0 ends the chain).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_info_cap_header {
    pub id: u16,
    pub version: u16,
    pub next: u32,
}

pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

/// `VFIO_GROUP_GET_STATUS`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_group_status {
    pub argsz: u32,
    pub flags: u32,
}

pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
pub const VFIO_DEVICE_FLAGS_PLATFORM: u32 = 1 << 2;
pub const VFIO_DEVICE_FLAGS_AMBA: u32 = 1 << 3;
pub const VFIO_DEVICE_FLAGS_CCW: u32 = 1 << 4;
pub const VFIO_DEVICE_FLAGS_AP: u32 = 1 << 5;
pub const VFIO_DEVICE_FLAGS_FSL_MC: u32 = 1 << 6;
pub const VFIO_DEVICE_FLAGS_CAPS: u32 = 1 << 7;
pub const VFIO_DEVICE_FLAGS_CDX: u32 = 1 << 8;

/// `VFIO_DEVICE_GET_INFO`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_device_info {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
    pub pad: u32,
}

pub const VFIO_DEVICE_API_PCI_STRING: &str = "vfio-pci";
pub const VFIO_DEVICE_INFO_CAP_ZPCI_BASE: u16 = 1;
pub const VFIO_DEVICE_INFO_CAP_ZPCI_GROUP: u16 = 2;
pub const VFIO_DEVICE_INFO_CAP_ZPCI_UTIL: u16 = 3;
pub const VFIO_DEVICE_INFO_CAP_ZPCI_PFIP: u16 = 4;
pub const VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP: u16 = 5;

pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// `VFIO_DEVICE_GET_REGION_INFO`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_region_info {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;
pub const VFIO_REGION_INFO_CAP_NVLINK2_SSATGT: u16 = 4;
pub const VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD: u16 = 5;

/// One mmap-able window of a region.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_region_sparse_mmap_area {
    pub offset: u64,
    pub size: u64,
}

/// Sparse-mmap capability header; `nr_areas` [`vfio_region_sparse_mmap_area`] follow.
///
/// 8-byte aligned like C, whose trailing [`vfio_region_sparse_mmap_area`] array raises the alignment.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_region_info_cap_sparse_mmap {
    pub header: vfio_info_cap_header,
    pub nr_areas: u32,
    pub reserved: u32,
}

/// Region type capability.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_region_info_cap_type {
    pub header: vfio_info_cap_header,
    pub r#type: u32,
    pub subtype: u32,
}

pub const VFIO_REGION_TYPE_PCI_VENDOR_TYPE: u32 = 1 << 31;
pub const VFIO_REGION_TYPE_PCI_VENDOR_MASK: u32 = 0xffff;
pub const VFIO_REGION_TYPE_GFX: u32 = 1;
pub const VFIO_REGION_TYPE_CCW: u32 = 2;
pub const VFIO_REGION_TYPE_MIGRATION_DEPRECATED: u32 = 3;

pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// `VFIO_DEVICE_GET_IRQ_INFO`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_irq_info {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
pub const VFIO_IRQ_SET_DATA_TYPE_MASK: u32 =
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
pub const VFIO_IRQ_SET_ACTION_TYPE_MASK: u32 =
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

/// `VFIO_DEVICE_SET_IRQS` header; `count` data items (u8 or s32) follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_irq_set {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
}

pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
pub const VFIO_PCI_BAR1_REGION_INDEX: u32 = 1;
pub const VFIO_PCI_BAR2_REGION_INDEX: u32 = 2;
pub const VFIO_PCI_BAR3_REGION_INDEX: u32 = 3;
pub const VFIO_PCI_BAR4_REGION_INDEX: u32 = 4;
pub const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;
/// Fixed PCI region count; higher indexes are device specific.
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;

pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

/// `devid` value: the device is owned by the caller but has no ID here.
pub const VFIO_PCI_DEVID_OWNED: u32 = 0;
/// `devid` value: the device is not owned by the caller (-1).
pub const VFIO_PCI_DEVID_NOT_OWNED: u32 = u32::MAX;

/// One device affected by a hot reset.
///
/// C has a `u32` union `{ group_id; devid; }` first; it is the field `devid`
/// here with [`group_id`](Self::group_id) accessors for the group meaning.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_pci_dependent_device {
    pub devid: u32,
    pub segment: u16,
    pub bus: u8,
    pub devfn: u8,
}

impl vfio_pci_dependent_device {
    /// The union read as a group ID.
    pub const fn group_id(&self) -> u32 {
        self.devid
    }

    /// Write the union as a group ID.
    pub fn set_group_id(&mut self, group_id: u32) {
        self.devid = group_id;
    }
}

/// Hot-reset info: entries are device IDs instead of group IDs.
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID: u32 = 1 << 0;
/// Hot-reset info: every affected device is owned by the caller.
pub const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED: u32 = 1 << 1;

/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` header; `count`
/// [`vfio_pci_dependent_device`] follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_pci_hot_reset_info {
    pub argsz: u32,
    pub flags: u32,
    pub count: u32,
}

/// `VFIO_DEVICE_PCI_HOT_RESET` header; `count` group fds (`i32`) follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_pci_hot_reset {
    pub argsz: u32,
    pub flags: u32,
    pub count: u32,
}

/// Feature flags: low 16 bits are the feature index.
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;

/// `VFIO_DEVICE_FEATURE` header; feature data follows.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_device_feature {
    pub argsz: u32,
    pub flags: u32,
}

pub const VFIO_DEVICE_FEATURE_PCI_VF_TOKEN: u32 = 0;
pub const VFIO_DEVICE_FEATURE_MIGRATION: u32 = 1;
pub const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: u32 = 2;
pub const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: u32 = 3;
pub const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: u32 = 4;
pub const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: u32 = 5;
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_START: u32 = 6;
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: u32 = 7;
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: u32 = 8;
pub const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: u32 = 9;
pub const VFIO_DEVICE_FEATURE_BUS_MASTER: u32 = 10;
pub const VFIO_DEVICE_FEATURE_DMA_BUF: u32 = 11;
pub const VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2: u32 = 12;

/// Bind flag: `token_uuid_ptr` points to a VF token UUID.
pub const VFIO_DEVICE_BIND_FLAG_TOKEN: u32 = 1 << 0;

/// `VFIO_DEVICE_BIND_IOMMUFD`: bind a cdev device fd to an iommufd.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_device_bind_iommufd {
    pub argsz: u32,
    pub flags: u32,
    pub iommufd: i32,
    pub out_devid: u32,
    pub token_uuid_ptr: u64,
}

/// Attach flag: attach `pasid` instead of the whole device.
pub const VFIO_DEVICE_ATTACH_PASID: u32 = 1 << 0;

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attach to an IOAS or HWPT; `pt_id`
/// returns the HWPT actually used.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_device_attach_iommufd_pt {
    pub argsz: u32,
    pub flags: u32,
    pub pt_id: u32,
    pub pasid: u32,
}

/// Detach flag: detach `pasid` instead of the whole device.
pub const VFIO_DEVICE_DETACH_PASID: u32 = 1 << 0;

/// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_device_detach_iommufd_pt {
    pub argsz: u32,
    pub flags: u32,
    pub pasid: u32,
}

pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;

/// `VFIO_IOMMU_GET_INFO`; a capability chain may follow at `cap_offset`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iommu_type1_info {
    pub argsz: u32,
    pub flags: u32,
    pub iova_pgsizes: u64,
    pub cap_offset: u32,
    pub pad: u32,
}

pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
pub const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: u16 = 2;
pub const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: u16 = 3;

/// An inclusive IOVA interval `[start, end]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iova_range {
    pub start: u64,
    pub end: u64,
}

/// IOVA-range capability header; `nr_iovas` [`vfio_iova_range`] follow.
///
/// 8-byte aligned like C, whose trailing [`vfio_iova_range`] array raises the alignment.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iommu_type1_info_cap_iova_range {
    pub header: vfio_info_cap_header,
    pub nr_iovas: u32,
    pub reserved: u32,
}

/// Migration capability (4 bytes C padding after `flags` made explicit).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iommu_type1_info_cap_migration {
    pub header: vfio_info_cap_header,
    pub flags: u32,
    pub __pad: u32,
    pub pgsize_bitmap: u64,
    pub max_dirty_bitmap_size: u64,
}

/// DMA-mapping budget capability.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iommu_type1_info_dma_avail {
    pub header: vfio_info_cap_header,
    pub avail: u32,
}

pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// Map flag: only update the process address of an existing mapping.
pub const VFIO_DMA_MAP_FLAG_VADDR: u32 = 1 << 2;

/// `VFIO_IOMMU_MAP_DMA`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iommu_type1_dma_map {
    pub argsz: u32,
    pub flags: u32,
    pub vaddr: u64,
    pub iova: u64,
    pub size: u64,
}

pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
/// Unmap flag: only invalidate the process address of mappings.
pub const VFIO_DMA_UNMAP_FLAG_VADDR: u32 = 1 << 2;

/// A user dirty bitmap: one bit per `pgsize`, `size` bytes at `data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_bitmap {
    pub pgsize: u64,
    pub size: u64,
    pub data: u64,
}

/// `VFIO_IOMMU_UNMAP_DMA` header; a [`vfio_bitmap`] follows with
/// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`. `size` returns the bytes unmapped.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iommu_type1_dma_unmap {
    pub argsz: u32,
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
}

pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
pub const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

/// `VFIO_IOMMU_DIRTY_PAGES` header; a
/// [`vfio_iommu_type1_dirty_bitmap_get`] follows for `GET_BITMAP`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iommu_type1_dirty_bitmap {
    pub argsz: u32,
    pub flags: u32,
}

/// Dirty-bitmap request for an IOVA range.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct vfio_iommu_type1_dirty_bitmap_get {
    pub iova: u64,
    pub size: u64,
    pub bitmap: vfio_bitmap,
}
