//! The handlers the daemon plugs into the table's extension slots (devices, HWPTs, selftest).

use super::hwpt_cmds;
use super::ioas_cmds;
use super::selftest;
use super::table::Extensions;
use super::viommu_cmds;

/// Extensions of `uiommufd serve`.
pub fn daemon_extensions() -> Extensions {
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
        test_cmd: selftest::test_cmd,
    }
}
