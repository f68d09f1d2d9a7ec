//! What the script language knows about each ioctl — the uAPI crate's descriptor table
//! ([`uiommufd_uapi::table`], the same one the daemon dispatches by) — and its symbolic constants
//! and errno names.

use nix::errno::Errno;
use std::mem::size_of;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::vfio::*;

// The ioctls themselves (number, struct, fields and their roles) are the uAPI's one table.
use uiommufd_uapi::selftest::*;
pub use uiommufd_uapi::table::{by_cmd, ioctls, ArgKind, Field, IoctlDesc as IoctlDef, Role};

/// An ioctl by kernel name, or an `IOMMU_TEST_CMD` op by its op name ([`test_ops`]).
pub fn by_name(name: &str) -> Option<&'static IoctlDef> {
    uiommufd_uapi::table::by_name(name)
        .or_else(|| test_ops().iter().find(|d| d.name == name))
        .or_else(|| device_ops().iter().find(|d| d.name == name))
}

/// The iommufd ioctls of a VFIO device node (cdev), by number: script-level descriptors (the
/// daemon's table serves `/dev/iommu`, these go to a device file), so that a recorded session
/// can name a device's BIND/ATTACH/DETACH and their IDs.
pub fn device_op(cmd: u32) -> Option<&'static IoctlDef> {
    device_ops().iter().find(|d| d.cmd == cmd)
}

/// See [`device_op`].
pub fn device_ops() -> &'static [IoctlDef] {
    static OPS: std::sync::OnceLock<Vec<IoctlDef>> = std::sync::OnceLock::new();
    OPS.get_or_init(|| {
        let f = |name, off, width, role| Field {
            name,
            off,
            width,
            role,
        };
        let def = |name, cmd, size, min_size, fields| IoctlDef {
            name,
            cmd,
            kind: ArgKind::Struct,
            size,
            min_size,
            fields,
        };
        vec![
            def(
                "VFIO_DEVICE_BIND_IOMMUFD",
                VFIO_DEVICE_BIND_IOMMUFD,
                size_of::<vfio_device_bind_iommufd>(),
                16,
                vec![
                    f("argsz", 0, 4, Role::Size),
                    f("flags", 4, 4, Role::Int),
                    f("iommufd", 8, 4, Role::Fd),
                    f("out_devid", 12, 4, Role::OutId),
                    f("token_uuid_ptr", 16, 8, Role::Int),
                ],
            ),
            def(
                "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                size_of::<vfio_device_attach_iommufd_pt>(),
                12,
                vec![
                    f("argsz", 0, 4, Role::Size),
                    f("flags", 4, 4, Role::Int),
                    f("pt_id", 8, 4, Role::Id),
                    f("pasid", 12, 4, Role::Int),
                ],
            ),
            def(
                "VFIO_DEVICE_DETACH_IOMMUFD_PT",
                VFIO_DEVICE_DETACH_IOMMUFD_PT,
                size_of::<vfio_device_detach_iommufd_pt>(),
                8,
                vec![
                    f("argsz", 0, 4, Role::Size),
                    f("flags", 4, 4, Role::Int),
                    f("pasid", 8, 4, Role::Int),
                ],
            ),
        ]
    })
}

/// The descriptor a call's bytes are best described by: the `IOMMU_TEST_CMD` op alias for its
/// `op` word when there is one, otherwise the table's.
pub fn refine(def: &'static IoctlDef, bytes: &[u8]) -> &'static IoctlDef {
    if def.cmd != IOMMU_TEST_CMD {
        return def;
    }
    let op = def.field("op").map(|f| crate::replay::exec::get(bytes, *f));
    test_ops()
        .iter()
        .find(|d| Some(test_op_of(d)) == op)
        .unwrap_or(def)
}

/// The op an alias presets.
pub fn test_op_of(d: &IoctlDef) -> u64 {
    TEST_OPS
        .iter()
        .find(|(name, ..)| *name == d.name)
        .map_or(0, |(_, op, _)| u64::from(*op))
}

/// Payload fields of an op: name, offset in the union, width, role.
type PayloadFields = &'static [(&'static str, usize, usize, Role)];

/// The `IOMMU_TEST_CMD` ops a script can name, with the union member's fields (the kernel's
/// member names; a member field that would clash with the header's `id` is named after its
/// member, `iotlb_id` / `cache_id`). The fault and vEVENT triggers name a device and feed the
/// queues a script reads through their fds (`"as"` of IOMMU_FAULT_QUEUE_ALLOC / VEVENTQ_ALLOC).
/// Ops that return or take an access or dma-buf fd are left out.
const TEST_OPS: &[(&str, u32, PayloadFields)] = &[
    (
        "IOMMU_TEST_OP_ADD_RESERVED",
        IOMMU_TEST_OP_ADD_RESERVED,
        &[("start", 0, 8, Role::Iova), ("length", 8, 8, Role::Int)],
    ),
    (
        "IOMMU_TEST_OP_MOCK_DOMAIN",
        IOMMU_TEST_OP_MOCK_DOMAIN,
        &[
            ("out_stdev_id", 0, 4, Role::OutId),
            ("out_hwpt_id", 4, 4, Role::OutId),
            ("out_idev_id", 8, 4, Role::OutId),
        ],
    ),
    (
        "IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS",
        IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
        &[
            ("out_stdev_id", 0, 4, Role::OutId),
            ("out_hwpt_id", 4, 4, Role::OutId),
            ("out_idev_id", 8, 4, Role::OutId),
            ("dev_flags", 12, 4, Role::Int),
        ],
    ),
    (
        "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE",
        IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
        &[("pt_id", 0, 4, Role::Id)],
    ),
    (
        "IOMMU_TEST_OP_MD_CHECK_MAP",
        IOMMU_TEST_OP_MD_CHECK_MAP,
        &[
            ("iova", 0, 8, Role::Iova),
            ("length", 8, 8, Role::Int),
            ("uptr", 16, 8, Role::Ptr { len: "length" }),
        ],
    ),
    (
        "IOMMU_TEST_OP_MD_CHECK_REFS",
        IOMMU_TEST_OP_MD_CHECK_REFS,
        &[
            ("length", 0, 8, Role::Int),
            ("uptr", 8, 8, Role::Ptr { len: "length" }),
            ("refs", 16, 4, Role::Int),
        ],
    ),
    (
        "IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT",
        IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT,
        &[("limit", 0, 4, Role::Int)],
    ),
    (
        "IOMMU_TEST_OP_DIRTY",
        IOMMU_TEST_OP_DIRTY,
        &[
            ("flags", 0, 4, Role::Int),
            ("iova", 8, 8, Role::Iova),
            ("length", 16, 8, Role::Int),
            ("page_size", 24, 8, Role::Int),
            ("uptr", 32, 8, Role::Int),
            ("out_nr_dirty", 40, 8, Role::Int),
        ],
    ),
    (
        "IOMMU_TEST_OP_MD_CHECK_IOTLB",
        IOMMU_TEST_OP_MD_CHECK_IOTLB,
        &[("iotlb_id", 0, 4, Role::Int), ("iotlb", 4, 4, Role::Int)],
    ),
    (
        "IOMMU_TEST_OP_DEV_CHECK_CACHE",
        IOMMU_TEST_OP_DEV_CHECK_CACHE,
        &[("cache_id", 0, 4, Role::Int), ("cache", 4, 4, Role::Int)],
    ),
    (
        "IOMMU_TEST_OP_TRIGGER_IOPF",
        IOMMU_TEST_OP_TRIGGER_IOPF,
        &[
            ("dev_id", 0, 4, Role::Id),
            ("pasid", 4, 4, Role::Int),
            ("grpid", 8, 4, Role::Int),
            ("perm", 12, 4, Role::Int),
            ("addr", 16, 8, Role::Int),
        ],
    ),
    (
        "IOMMU_TEST_OP_TRIGGER_VEVENT",
        IOMMU_TEST_OP_TRIGGER_VEVENT,
        &[("dev_id", 0, 4, Role::Id)],
    ),
    (
        "IOMMU_TEST_OP_PASID_ATTACH",
        IOMMU_TEST_OP_PASID_ATTACH,
        &[("pasid", 0, 4, Role::Int), ("pt_id", 4, 4, Role::Id)],
    ),
    (
        "IOMMU_TEST_OP_PASID_REPLACE",
        IOMMU_TEST_OP_PASID_REPLACE,
        &[("pasid", 0, 4, Role::Int), ("pt_id", 4, 4, Role::Id)],
    ),
    (
        "IOMMU_TEST_OP_PASID_DETACH",
        IOMMU_TEST_OP_PASID_DETACH,
        &[("pasid", 0, 4, Role::Int)],
    ),
    (
        "IOMMU_TEST_OP_PASID_CHECK_HWPT",
        IOMMU_TEST_OP_PASID_CHECK_HWPT,
        &[("pasid", 0, 4, Role::Int), ("hwpt_id", 4, 4, Role::Id)],
    ),
];

/// Offset of the payload union in `iommu_test_cmd`.
const PAYLOAD_AT: usize = std::mem::offset_of!(iommu_test_cmd, payload);

/// One descriptor per [`TEST_OPS`] entry: `IOMMU_TEST_CMD`'s number, size and header fields, then
/// the op's payload fields at their offsets. Script-level names only: the uAPI table (which the
/// daemon dispatches by) keeps one descriptor per number.
pub fn test_ops() -> &'static [IoctlDef] {
    static OPS: std::sync::OnceLock<Vec<IoctlDef>> = std::sync::OnceLock::new();
    OPS.get_or_init(|| {
        let base = uiommufd_uapi::table::by_name("IOMMU_TEST_CMD").expect("in the table");
        TEST_OPS
            .iter()
            .map(|(name, _, payload)| {
                let mut fields = base.fields.clone();
                fields.extend(payload.iter().map(|&(name, off, width, role)| Field {
                    name,
                    off: PAYLOAD_AT + off,
                    width,
                    role,
                }));
                IoctlDef {
                    name,
                    cmd: base.cmd,
                    kind: base.kind,
                    size: base.size,
                    min_size: base.min_size,
                    fields,
                }
            })
            .collect()
    })
}

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
    (
        "IOMMU_HWPT_ALLOC_NEST_PARENT",
        IOMMU_HWPT_ALLOC_NEST_PARENT as u64,
    ),
    (
        "IOMMU_HWPT_ALLOC_DIRTY_TRACKING",
        IOMMU_HWPT_ALLOC_DIRTY_TRACKING as u64,
    ),
    (
        "IOMMU_HWPT_FAULT_ID_VALID",
        IOMMU_HWPT_FAULT_ID_VALID as u64,
    ),
    ("IOMMU_HWPT_ALLOC_PASID", IOMMU_HWPT_ALLOC_PASID as u64),
    ("IOMMU_HWPT_DATA_NONE", IOMMU_HWPT_DATA_NONE as u64),
    ("IOMMU_HWPT_DATA_SELFTEST", IOMMU_HWPT_DATA_SELFTEST as u64),
    (
        "IOMMU_HW_INFO_TYPE_SELFTEST",
        IOMMU_HW_INFO_TYPE_SELFTEST as u64,
    ),
    (
        "IOMMU_HW_INFO_FLAG_INPUT_TYPE",
        IOMMU_HW_INFO_FLAG_INPUT_TYPE as u64,
    ),
    (
        "IOMMU_HWPT_DIRTY_TRACKING_ENABLE",
        IOMMU_HWPT_DIRTY_TRACKING_ENABLE as u64,
    ),
    (
        "IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR",
        IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR as u64,
    ),
    (
        "IOMMU_HWPT_INVALIDATE_DATA_SELFTEST",
        IOMMU_HWPT_INVALIDATE_DATA_SELFTEST as u64,
    ),
    (
        "IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID",
        IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID as u64,
    ),
    (
        "IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST",
        IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST as u64,
    ),
    (
        "IOMMU_TEST_INVALIDATE_FLAG_ALL",
        IOMMU_TEST_INVALIDATE_FLAG_ALL as u64,
    ),
    ("IOMMU_TEST_IOTLB_DEFAULT", IOMMU_TEST_IOTLB_DEFAULT as u64),
    (
        "IOMMU_TEST_DEV_CACHE_DEFAULT",
        IOMMU_TEST_DEV_CACHE_DEFAULT as u64,
    ),
    (
        "IOMMU_VIOMMU_TYPE_SELFTEST",
        IOMMU_VIOMMU_TYPE_SELFTEST as u64,
    ),
    (
        "IOMMU_VIOMMU_TYPE_DEFAULT",
        IOMMU_VIOMMU_TYPE_DEFAULT as u64,
    ),
    (
        "IOMMU_VEVENTQ_TYPE_SELFTEST",
        IOMMU_VEVENTQ_TYPE_SELFTEST as u64,
    ),
    ("IOMMU_PGFAULT_PERM_READ", IOMMU_PGFAULT_PERM_READ as u64),
    ("IOMMU_PGFAULT_PERM_WRITE", IOMMU_PGFAULT_PERM_WRITE as u64),
    (
        "IOMMUFD_PAGE_RESP_SUCCESS",
        IOMMUFD_PAGE_RESP_SUCCESS as u64,
    ),
    (
        "IOMMUFD_PAGE_RESP_INVALID",
        IOMMUFD_PAGE_RESP_INVALID as u64,
    ),
    (
        "IOMMU_HW_QUEUE_TYPE_SELFTEST",
        IOMMU_HW_QUEUE_TYPE_SELFTEST as u64,
    ),
    (
        "MOCK_FLAGS_DEVICE_NO_DIRTY",
        MOCK_FLAGS_DEVICE_NO_DIRTY as u64,
    ),
    ("MOCK_FLAGS_DEVICE_PASID", MOCK_FLAGS_DEVICE_PASID as u64),
    ("MOCK_APERTURE_START", MOCK_APERTURE_START),
    ("MOCK_PAGE_SIZE", MOCK_PAGE_SIZE),
    ("MOCK_IOMMUPT_HUGE", MOCK_IOMMUPT_HUGE as u64),
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
