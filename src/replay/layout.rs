//! What the script language knows about each ioctl — the uAPI crate's descriptor table
//! ([`uiommufd_uapi::table`], the same one the daemon dispatches by) — and its symbolic constants
//! and errno names.

use nix::errno::Errno;
use std::mem::size_of;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::vfio::*;

// The ioctls themselves (number, struct, fields and their roles) are the uAPI's one table.
pub use uiommufd_uapi::table::{
    by_cmd, by_name, ioctls, ArgKind, Field, IoctlDesc as IoctlDef, Role,
};

/// Symbolic constants usable in expressions.
pub const CONSTANTS: &[(&str, u64)] = &[
    ("U64_MAX", u64::MAX),
    ("U32_MAX", u32::MAX as u64),
    ("U16_MAX", u16::MAX as u64),
    ("PAGE_SIZE", 4096),
    (
        "IOMMU_IOAS_MAP_FIXED_IOVA",
        IOMMU_IOAS_MAP_FIXED_IOVA as u64,
    ),
    ("IOMMU_IOAS_MAP_WRITEABLE", IOMMU_IOAS_MAP_WRITEABLE as u64),
    ("IOMMU_IOAS_MAP_READABLE", IOMMU_IOAS_MAP_READABLE as u64),
    ("IOMMU_OPTION_RLIMIT_MODE", IOMMU_OPTION_RLIMIT_MODE as u64),
    ("IOMMU_OPTION_HUGE_PAGES", IOMMU_OPTION_HUGE_PAGES as u64),
    ("IOMMU_OPTION_OP_SET", IOMMU_OPTION_OP_SET as u64),
    ("IOMMU_OPTION_OP_GET", IOMMU_OPTION_OP_GET as u64),
    ("IOMMU_VFIO_IOAS_GET", IOMMU_VFIO_IOAS_GET as u64),
    ("IOMMU_VFIO_IOAS_SET", IOMMU_VFIO_IOAS_SET as u64),
    ("IOMMU_VFIO_IOAS_CLEAR", IOMMU_VFIO_IOAS_CLEAR as u64),
    ("VFIO_API_VERSION", VFIO_API_VERSION as u64),
    ("VFIO_TYPE1_IOMMU", VFIO_TYPE1_IOMMU as u64),
    ("VFIO_SPAPR_TCE_IOMMU", VFIO_SPAPR_TCE_IOMMU as u64),
    ("VFIO_TYPE1v2_IOMMU", VFIO_TYPE1v2_IOMMU as u64),
    ("VFIO_DMA_CC_IOMMU", VFIO_DMA_CC_IOMMU as u64),
    ("VFIO_EEH", VFIO_EEH as u64),
    ("VFIO_TYPE1_NESTING_IOMMU", VFIO_TYPE1_NESTING_IOMMU as u64),
    ("VFIO_SPAPR_TCE_v2_IOMMU", VFIO_SPAPR_TCE_v2_IOMMU as u64),
    ("VFIO_NOIOMMU_IOMMU", VFIO_NOIOMMU_IOMMU as u64),
    ("VFIO_UNMAP_ALL", VFIO_UNMAP_ALL as u64),
    ("VFIO_UPDATE_VADDR", VFIO_UPDATE_VADDR as u64),
    ("VFIO_IOMMU_INFO_PGSIZES", VFIO_IOMMU_INFO_PGSIZES as u64),
    ("VFIO_IOMMU_INFO_CAPS", VFIO_IOMMU_INFO_CAPS as u64),
    ("VFIO_DMA_MAP_FLAG_READ", VFIO_DMA_MAP_FLAG_READ as u64),
    ("VFIO_DMA_MAP_FLAG_WRITE", VFIO_DMA_MAP_FLAG_WRITE as u64),
    ("VFIO_DMA_MAP_FLAG_VADDR", VFIO_DMA_MAP_FLAG_VADDR as u64),
    (
        "VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP",
        VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP as u64,
    ),
    ("VFIO_DMA_UNMAP_FLAG_ALL", VFIO_DMA_UNMAP_FLAG_ALL as u64),
    (
        "VFIO_DMA_UNMAP_FLAG_VADDR",
        VFIO_DMA_UNMAP_FLAG_VADDR as u64,
    ),
];

pub fn constant(name: &str) -> Option<u64> {
    CONSTANTS.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

/// The errno with this name ("ENOENT"), from the platform's errno list.
pub fn errno_by_name(name: &str) -> Option<Errno> {
    (1..4096)
        .map(Errno::from_raw)
        .find(|e| *e != Errno::UnknownErrno && errno_name(*e) == name)
}

/// The name of an errno ("ENOENT"); numeric for errnos the platform does not name.
pub fn errno_name(e: Errno) -> String {
    if e == Errno::UnknownErrno {
        return "EUNKNOWN".into();
    }
    format!("{e:?}")
}

/// The element of the nested IOVA-range arrays.
pub const RANGE_SIZE: usize = size_of::<iommu_iova_range>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_round_trip() {
        assert_eq!(errno_by_name("ENOENT"), Some(Errno::ENOENT));
        assert_eq!(errno_by_name("EOPNOTSUPP"), Some(Errno::EOPNOTSUPP));
        assert_eq!(errno_by_name("EBOGUS"), None);
        assert_eq!(errno_name(Errno::E2BIG), "E2BIG");
    }
}
