//! The handlers the daemon plugs into the table's extension slots (devices, HWPTs, selftest).

use super::hwpt_cmds;
use super::ioas_cmds;
use super::selftest;
use super::table::Extensions;
use super::viommu_cmds;

/// Extensions of `uiommufd serve --selftest` and of in-process tests: everything, including the
/// kernel selftest's IOMMU_TEST_CMD.
pub fn daemon_extensions() -> Extensions {
    Extensions {
        test_cmd: Some(selftest::test_cmd),
        ..production_extensions()
    }
}

/// Extensions of a production `uiommufd serve`: no selftest surface (IOMMU_TEST_CMD answers
/// ENOTTY, as on a kernel built without IOMMUFD_TEST; no test accesses or dma-bufs), so that no
/// user of a shared host can drive mock devices or the selftest's raw access paths.
pub fn production_extensions() -> Extensions {
    Extensions {
        get_hw_info: hwpt_cmds::get_hw_info,
        hwpt_alloc: hwpt_cmds::hwpt_alloc,
        hwpt_set_dirty_tracking: hwpt_cmds::hwpt_set_dirty_tracking,
        hwpt_get_dirty_bitmap: hwpt_cmds::hwpt_get_dirty_bitmap,
        hwpt_invalidate: hwpt_cmds::hwpt_invalidate,
        viommu_alloc: viommu_cmds::viommu_alloc,
        vdevice_alloc: viommu_cmds::vdevice_alloc,
        hw_queue_alloc: viommu_cmds::hw_queue_alloc,
        ioas_change_process: ioas_cmds::ioas_change_process,
        test_cmd: None,
    }
}
