//! Layout pins for the iommufd uAPI structs, generated from the Linux 7.2 C
//! headers (gcc, x86_64): sizes, alignments, field offsets, ioctl numbers and
//! constants as literal values.

use std::mem::{align_of, offset_of, size_of};

use uiommufd_uapi::{iommufd, selftest, vfio};

#[test]
fn iommufd_struct_layouts() {
    assert_eq!(size_of::<iommufd::iommu_destroy>(), 8);
    assert_eq!(align_of::<iommufd::iommu_destroy>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_destroy, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_destroy, id), 4);
    assert_eq!(size_of::<iommufd::iommu_ioas_alloc>(), 12);
    assert_eq!(align_of::<iommufd::iommu_ioas_alloc>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_alloc, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_ioas_alloc, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_alloc, out_ioas_id), 8);
    assert_eq!(size_of::<iommufd::iommu_iova_range>(), 16);
    assert_eq!(align_of::<iommufd::iommu_iova_range>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_iova_range, start), 0);
    assert_eq!(offset_of!(iommufd::iommu_iova_range, last), 8);
    assert_eq!(size_of::<iommufd::iommu_ioas_iova_ranges>(), 32);
    assert_eq!(align_of::<iommufd::iommu_ioas_iova_ranges>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_iova_ranges, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_ioas_iova_ranges, ioas_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_iova_ranges, num_iovas), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_iova_ranges, reserved), 12);
    assert_eq!(
        offset_of!(iommufd::iommu_ioas_iova_ranges, allowed_iovas),
        16
    );
    assert_eq!(
        offset_of!(iommufd::iommu_ioas_iova_ranges, out_iova_alignment),
        24
    );
    assert_eq!(size_of::<iommufd::iommu_ioas_allow_iovas>(), 24);
    assert_eq!(align_of::<iommufd::iommu_ioas_allow_iovas>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_allow_iovas, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_ioas_allow_iovas, ioas_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_allow_iovas, num_iovas), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_allow_iovas, reserved), 12);
    assert_eq!(
        offset_of!(iommufd::iommu_ioas_allow_iovas, allowed_iovas),
        16
    );
    assert_eq!(size_of::<iommufd::iommu_ioas_map>(), 40);
    assert_eq!(align_of::<iommufd::iommu_ioas_map>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map, ioas_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map, reserved), 12);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map, user_va), 16);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map, length), 24);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map, iova), 32);
    assert_eq!(size_of::<iommufd::iommu_ioas_map_file>(), 40);
    assert_eq!(align_of::<iommufd::iommu_ioas_map_file>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map_file, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map_file, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map_file, ioas_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map_file, fd), 12);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map_file, start), 16);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map_file, length), 24);
    assert_eq!(offset_of!(iommufd::iommu_ioas_map_file, iova), 32);
    assert_eq!(size_of::<iommufd::iommu_ioas_copy>(), 40);
    assert_eq!(align_of::<iommufd::iommu_ioas_copy>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_copy, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_ioas_copy, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_copy, dst_ioas_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_copy, src_ioas_id), 12);
    assert_eq!(offset_of!(iommufd::iommu_ioas_copy, length), 16);
    assert_eq!(offset_of!(iommufd::iommu_ioas_copy, dst_iova), 24);
    assert_eq!(offset_of!(iommufd::iommu_ioas_copy, src_iova), 32);
    assert_eq!(size_of::<iommufd::iommu_ioas_unmap>(), 24);
    assert_eq!(align_of::<iommufd::iommu_ioas_unmap>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_unmap, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_ioas_unmap, ioas_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_unmap, iova), 8);
    assert_eq!(offset_of!(iommufd::iommu_ioas_unmap, length), 16);
    assert_eq!(size_of::<iommufd::iommu_option>(), 24);
    assert_eq!(align_of::<iommufd::iommu_option>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_option, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_option, option_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_option, op), 8);
    assert_eq!(offset_of!(iommufd::iommu_option, reserved), 10);
    assert_eq!(offset_of!(iommufd::iommu_option, object_id), 12);
    assert_eq!(offset_of!(iommufd::iommu_option, val64), 16);
    assert_eq!(size_of::<iommufd::iommu_vfio_ioas>(), 12);
    assert_eq!(align_of::<iommufd::iommu_vfio_ioas>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_vfio_ioas, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_vfio_ioas, ioas_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_vfio_ioas, op), 8);
    assert_eq!(offset_of!(iommufd::iommu_vfio_ioas, reserved), 10);
    assert_eq!(size_of::<iommufd::iommu_ioas_change_process>(), 8);
    assert_eq!(align_of::<iommufd::iommu_ioas_change_process>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_ioas_change_process, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_ioas_change_process, reserved), 4);
    assert_eq!(size_of::<iommufd::iommu_hwpt_vtd_s1>(), 24);
    assert_eq!(align_of::<iommufd::iommu_hwpt_vtd_s1>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_vtd_s1, flags), 0);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_vtd_s1, pgtbl_addr), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_vtd_s1, addr_width), 16);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_vtd_s1, reserved), 20);
    assert_eq!(size_of::<iommufd::iommu_hwpt_arm_smmuv3>(), 16);
    assert_eq!(align_of::<iommufd::iommu_hwpt_arm_smmuv3>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_arm_smmuv3, ste), 0);
    assert_eq!(size_of::<iommufd::iommu_hwpt_amd_guest>(), 32);
    assert_eq!(align_of::<iommufd::iommu_hwpt_amd_guest>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_amd_guest, dte), 0);
    assert_eq!(size_of::<iommufd::iommu_hwpt_alloc>(), 48);
    assert_eq!(align_of::<iommufd::iommu_hwpt_alloc>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, dev_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, pt_id), 12);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, out_hwpt_id), 16);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, reserved), 20);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, data_type), 24);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, data_len), 28);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, data_uptr), 32);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, fault_id), 40);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_alloc, reserved2), 44);
    assert_eq!(size_of::<iommufd::iommu_hw_info_vtd>(), 24);
    assert_eq!(align_of::<iommufd::iommu_hw_info_vtd>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_vtd, flags), 0);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_vtd, reserved), 4);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_vtd, cap_reg), 8);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_vtd, ecap_reg), 16);
    assert_eq!(size_of::<iommufd::iommu_hw_info_arm_smmuv3>(), 40);
    assert_eq!(align_of::<iommufd::iommu_hw_info_arm_smmuv3>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_arm_smmuv3, flags), 0);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_arm_smmuv3, reserved), 4);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_arm_smmuv3, idr), 8);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_arm_smmuv3, iidr), 32);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_arm_smmuv3, aidr), 36);
    assert_eq!(size_of::<iommufd::iommu_hw_info_tegra241_cmdqv>(), 8);
    assert_eq!(align_of::<iommufd::iommu_hw_info_tegra241_cmdqv>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_tegra241_cmdqv, flags), 0);
    assert_eq!(
        offset_of!(iommufd::iommu_hw_info_tegra241_cmdqv, version),
        4
    );
    assert_eq!(
        offset_of!(iommufd::iommu_hw_info_tegra241_cmdqv, log2vcmdqs),
        5
    );
    assert_eq!(
        offset_of!(iommufd::iommu_hw_info_tegra241_cmdqv, log2vsids),
        6
    );
    assert_eq!(
        offset_of!(iommufd::iommu_hw_info_tegra241_cmdqv, reserved),
        7
    );
    assert_eq!(size_of::<iommufd::iommu_hw_info_amd>(), 16);
    assert_eq!(align_of::<iommufd::iommu_hw_info_amd>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_amd, efr), 0);
    assert_eq!(offset_of!(iommufd::iommu_hw_info_amd, efr2), 8);
    assert_eq!(size_of::<iommufd::iommu_hw_info>(), 40);
    assert_eq!(align_of::<iommufd::iommu_hw_info>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, dev_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, data_len), 12);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, data_uptr), 16);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, in_data_type), 24);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, out_max_pasid_log2), 28);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, reserved), 29);
    assert_eq!(offset_of!(iommufd::iommu_hw_info, out_capabilities), 32);
    assert_eq!(size_of::<iommufd::iommu_hwpt_set_dirty_tracking>(), 16);
    assert_eq!(align_of::<iommufd::iommu_hwpt_set_dirty_tracking>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_set_dirty_tracking, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_set_dirty_tracking, flags), 4);
    assert_eq!(
        offset_of!(iommufd::iommu_hwpt_set_dirty_tracking, hwpt_id),
        8
    );
    assert_eq!(
        offset_of!(iommufd::iommu_hwpt_set_dirty_tracking, reserved),
        12
    );
    assert_eq!(size_of::<iommufd::iommu_hwpt_get_dirty_bitmap>(), 48);
    assert_eq!(align_of::<iommufd::iommu_hwpt_get_dirty_bitmap>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_get_dirty_bitmap, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_get_dirty_bitmap, hwpt_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_get_dirty_bitmap, flags), 8);
    assert_eq!(
        offset_of!(iommufd::iommu_hwpt_get_dirty_bitmap, reserved),
        12
    );
    assert_eq!(offset_of!(iommufd::iommu_hwpt_get_dirty_bitmap, iova), 16);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_get_dirty_bitmap, length), 24);
    assert_eq!(
        offset_of!(iommufd::iommu_hwpt_get_dirty_bitmap, page_size),
        32
    );
    assert_eq!(offset_of!(iommufd::iommu_hwpt_get_dirty_bitmap, data), 40);
    assert_eq!(size_of::<iommufd::iommu_hwpt_vtd_s1_invalidate>(), 24);
    assert_eq!(align_of::<iommufd::iommu_hwpt_vtd_s1_invalidate>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_vtd_s1_invalidate, addr), 0);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_vtd_s1_invalidate, npages), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_vtd_s1_invalidate, flags), 16);
    assert_eq!(
        offset_of!(iommufd::iommu_hwpt_vtd_s1_invalidate, reserved),
        20
    );
    assert_eq!(size_of::<iommufd::iommu_viommu_arm_smmuv3_invalidate>(), 16);
    assert_eq!(align_of::<iommufd::iommu_viommu_arm_smmuv3_invalidate>(), 8);
    assert_eq!(
        offset_of!(iommufd::iommu_viommu_arm_smmuv3_invalidate, cmd),
        0
    );
    assert_eq!(size_of::<iommufd::iommu_hwpt_invalidate>(), 32);
    assert_eq!(align_of::<iommufd::iommu_hwpt_invalidate>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_invalidate, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_invalidate, hwpt_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_invalidate, data_uptr), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_invalidate, data_type), 16);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_invalidate, entry_len), 20);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_invalidate, entry_num), 24);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_invalidate, reserved), 28);
    assert_eq!(size_of::<iommufd::iommu_hwpt_pgfault>(), 40);
    assert_eq!(align_of::<iommufd::iommu_hwpt_pgfault>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, flags), 0);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, dev_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, pasid), 8);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, grpid), 12);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, perm), 16);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, reserved), 20);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, addr), 24);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, length), 32);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_pgfault, cookie), 36);
    assert_eq!(size_of::<iommufd::iommu_hwpt_page_response>(), 8);
    assert_eq!(align_of::<iommufd::iommu_hwpt_page_response>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_page_response, cookie), 0);
    assert_eq!(offset_of!(iommufd::iommu_hwpt_page_response, code), 4);
    assert_eq!(size_of::<iommufd::iommu_fault_alloc>(), 16);
    assert_eq!(align_of::<iommufd::iommu_fault_alloc>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_fault_alloc, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_fault_alloc, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_fault_alloc, out_fault_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_fault_alloc, out_fault_fd), 12);
    assert_eq!(size_of::<iommufd::iommu_viommu_tegra241_cmdqv>(), 16);
    assert_eq!(align_of::<iommufd::iommu_viommu_tegra241_cmdqv>(), 8);
    assert_eq!(
        offset_of!(iommufd::iommu_viommu_tegra241_cmdqv, out_vintf_mmap_offset),
        0
    );
    assert_eq!(
        offset_of!(iommufd::iommu_viommu_tegra241_cmdqv, out_vintf_mmap_length),
        8
    );
    assert_eq!(size_of::<iommufd::iommu_viommu_alloc>(), 40);
    assert_eq!(align_of::<iommufd::iommu_viommu_alloc>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, r#type), 8);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, dev_id), 12);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, hwpt_id), 16);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, out_viommu_id), 20);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, data_len), 24);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, reserved), 28);
    assert_eq!(offset_of!(iommufd::iommu_viommu_alloc, data_uptr), 32);
    assert_eq!(size_of::<iommufd::iommu_vdevice_alloc>(), 24);
    assert_eq!(align_of::<iommufd::iommu_vdevice_alloc>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_vdevice_alloc, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_vdevice_alloc, viommu_id), 4);
    assert_eq!(offset_of!(iommufd::iommu_vdevice_alloc, dev_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_vdevice_alloc, out_vdevice_id), 12);
    assert_eq!(offset_of!(iommufd::iommu_vdevice_alloc, virt_id), 16);
    assert_eq!(size_of::<iommufd::iommufd_vevent_header>(), 8);
    assert_eq!(align_of::<iommufd::iommufd_vevent_header>(), 4);
    assert_eq!(offset_of!(iommufd::iommufd_vevent_header, flags), 0);
    assert_eq!(offset_of!(iommufd::iommufd_vevent_header, sequence), 4);
    assert_eq!(size_of::<iommufd::iommu_vevent_arm_smmuv3>(), 32);
    assert_eq!(align_of::<iommufd::iommu_vevent_arm_smmuv3>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_vevent_arm_smmuv3, evt), 0);
    assert_eq!(size_of::<iommufd::iommu_vevent_tegra241_cmdqv>(), 16);
    assert_eq!(align_of::<iommufd::iommu_vevent_tegra241_cmdqv>(), 8);
    assert_eq!(
        offset_of!(iommufd::iommu_vevent_tegra241_cmdqv, lvcmdq_err_map),
        0
    );
    assert_eq!(size_of::<iommufd::iommu_veventq_alloc>(), 32);
    assert_eq!(align_of::<iommufd::iommu_veventq_alloc>(), 4);
    assert_eq!(offset_of!(iommufd::iommu_veventq_alloc, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_veventq_alloc, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_veventq_alloc, viommu_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_veventq_alloc, r#type), 12);
    assert_eq!(offset_of!(iommufd::iommu_veventq_alloc, veventq_depth), 16);
    assert_eq!(offset_of!(iommufd::iommu_veventq_alloc, out_veventq_id), 20);
    assert_eq!(offset_of!(iommufd::iommu_veventq_alloc, out_veventq_fd), 24);
    assert_eq!(offset_of!(iommufd::iommu_veventq_alloc, reserved), 28);
    assert_eq!(size_of::<iommufd::iommu_hw_queue_alloc>(), 40);
    assert_eq!(align_of::<iommufd::iommu_hw_queue_alloc>(), 8);
    assert_eq!(offset_of!(iommufd::iommu_hw_queue_alloc, size), 0);
    assert_eq!(offset_of!(iommufd::iommu_hw_queue_alloc, flags), 4);
    assert_eq!(offset_of!(iommufd::iommu_hw_queue_alloc, viommu_id), 8);
    assert_eq!(offset_of!(iommufd::iommu_hw_queue_alloc, r#type), 12);
    assert_eq!(offset_of!(iommufd::iommu_hw_queue_alloc, index), 16);
    assert_eq!(
        offset_of!(iommufd::iommu_hw_queue_alloc, out_hw_queue_id),
        20
    );
    assert_eq!(
        offset_of!(iommufd::iommu_hw_queue_alloc, nesting_parent_iova),
        24
    );
    assert_eq!(offset_of!(iommufd::iommu_hw_queue_alloc, length), 32);
}

#[test]
fn iommufd_ioctl_numbers() {
    assert_eq!(iommufd::IOMMU_DESTROY, 0x3b80);
    assert_eq!(iommufd::IOMMU_IOAS_ALLOC, 0x3b81);
    assert_eq!(iommufd::IOMMU_IOAS_ALLOW_IOVAS, 0x3b82);
    assert_eq!(iommufd::IOMMU_IOAS_COPY, 0x3b83);
    assert_eq!(iommufd::IOMMU_IOAS_IOVA_RANGES, 0x3b84);
    assert_eq!(iommufd::IOMMU_IOAS_MAP, 0x3b85);
    assert_eq!(iommufd::IOMMU_IOAS_UNMAP, 0x3b86);
    assert_eq!(iommufd::IOMMU_OPTION, 0x3b87);
    assert_eq!(iommufd::IOMMU_VFIO_IOAS, 0x3b88);
    assert_eq!(iommufd::IOMMU_HWPT_ALLOC, 0x3b89);
    assert_eq!(iommufd::IOMMU_GET_HW_INFO, 0x3b8a);
    assert_eq!(iommufd::IOMMU_HWPT_SET_DIRTY_TRACKING, 0x3b8b);
    assert_eq!(iommufd::IOMMU_HWPT_GET_DIRTY_BITMAP, 0x3b8c);
    assert_eq!(iommufd::IOMMU_HWPT_INVALIDATE, 0x3b8d);
    assert_eq!(iommufd::IOMMU_FAULT_QUEUE_ALLOC, 0x3b8e);
    assert_eq!(iommufd::IOMMU_IOAS_MAP_FILE, 0x3b8f);
    assert_eq!(iommufd::IOMMU_VIOMMU_ALLOC, 0x3b90);
    assert_eq!(iommufd::IOMMU_VDEVICE_ALLOC, 0x3b91);
    assert_eq!(iommufd::IOMMU_IOAS_CHANGE_PROCESS, 0x3b92);
    assert_eq!(iommufd::IOMMU_VEVENTQ_ALLOC, 0x3b93);
    assert_eq!(iommufd::IOMMU_HW_QUEUE_ALLOC, 0x3b94);
}

#[test]
fn iommufd_constants() {
    assert_eq!(iommufd::IOMMUFD_TYPE, 0x3b);
    assert_eq!(iommufd::IOMMUFD_CMD_BASE, 0x80);
    assert_eq!(iommufd::IOMMUFD_CMD_DESTROY, 0x80);
    assert_eq!(iommufd::IOMMUFD_CMD_IOAS_ALLOC, 0x81);
    assert_eq!(iommufd::IOMMUFD_CMD_IOAS_ALLOW_IOVAS, 0x82);
    assert_eq!(iommufd::IOMMUFD_CMD_IOAS_COPY, 0x83);
    assert_eq!(iommufd::IOMMUFD_CMD_IOAS_IOVA_RANGES, 0x84);
    assert_eq!(iommufd::IOMMUFD_CMD_IOAS_MAP, 0x85);
    assert_eq!(iommufd::IOMMUFD_CMD_IOAS_UNMAP, 0x86);
    assert_eq!(iommufd::IOMMUFD_CMD_OPTION, 0x87);
    assert_eq!(iommufd::IOMMUFD_CMD_VFIO_IOAS, 0x88);
    assert_eq!(iommufd::IOMMUFD_CMD_HWPT_ALLOC, 0x89);
    assert_eq!(iommufd::IOMMUFD_CMD_GET_HW_INFO, 0x8a);
    assert_eq!(iommufd::IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING, 0x8b);
    assert_eq!(iommufd::IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP, 0x8c);
    assert_eq!(iommufd::IOMMUFD_CMD_HWPT_INVALIDATE, 0x8d);
    assert_eq!(iommufd::IOMMUFD_CMD_FAULT_QUEUE_ALLOC, 0x8e);
    assert_eq!(iommufd::IOMMUFD_CMD_IOAS_MAP_FILE, 0x8f);
    assert_eq!(iommufd::IOMMUFD_CMD_VIOMMU_ALLOC, 0x90);
    assert_eq!(iommufd::IOMMUFD_CMD_VDEVICE_ALLOC, 0x91);
    assert_eq!(iommufd::IOMMUFD_CMD_IOAS_CHANGE_PROCESS, 0x92);
    assert_eq!(iommufd::IOMMUFD_CMD_VEVENTQ_ALLOC, 0x93);
    assert_eq!(iommufd::IOMMUFD_CMD_HW_QUEUE_ALLOC, 0x94);
    assert_eq!(iommufd::IOMMU_IOAS_MAP_FIXED_IOVA, 0x1);
    assert_eq!(iommufd::IOMMU_IOAS_MAP_WRITEABLE, 0x2);
    assert_eq!(iommufd::IOMMU_IOAS_MAP_READABLE, 0x4);
    assert_eq!(iommufd::IOMMU_OPTION_RLIMIT_MODE, 0x0);
    assert_eq!(iommufd::IOMMU_OPTION_HUGE_PAGES, 0x1);
    assert_eq!(iommufd::IOMMU_OPTION_OP_SET, 0x0);
    assert_eq!(iommufd::IOMMU_OPTION_OP_GET, 0x1);
    assert_eq!(iommufd::IOMMU_VFIO_IOAS_GET, 0x0);
    assert_eq!(iommufd::IOMMU_VFIO_IOAS_SET, 0x1);
    assert_eq!(iommufd::IOMMU_VFIO_IOAS_CLEAR, 0x2);
    assert_eq!(iommufd::IOMMU_HWPT_ALLOC_NEST_PARENT, 0x1);
    assert_eq!(iommufd::IOMMU_HWPT_ALLOC_DIRTY_TRACKING, 0x2);
    assert_eq!(iommufd::IOMMU_HWPT_FAULT_ID_VALID, 0x4);
    assert_eq!(iommufd::IOMMU_HWPT_ALLOC_PASID, 0x8);
    assert_eq!(iommufd::IOMMU_VTD_S1_SRE, 0x1);
    assert_eq!(iommufd::IOMMU_VTD_S1_EAFE, 0x2);
    assert_eq!(iommufd::IOMMU_VTD_S1_WPE, 0x4);
    assert_eq!(iommufd::IOMMU_HWPT_DATA_NONE, 0x0);
    assert_eq!(iommufd::IOMMU_HWPT_DATA_VTD_S1, 0x1);
    assert_eq!(iommufd::IOMMU_HWPT_DATA_ARM_SMMUV3, 0x2);
    assert_eq!(iommufd::IOMMU_HWPT_DATA_AMD_GUEST, 0x3);
    assert_eq!(iommufd::IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17, 0x1);
    assert_eq!(iommufd::IOMMU_HW_INFO_TYPE_NONE, 0x0);
    assert_eq!(iommufd::IOMMU_HW_INFO_TYPE_DEFAULT, 0x0);
    assert_eq!(iommufd::IOMMU_HW_INFO_TYPE_INTEL_VTD, 0x1);
    assert_eq!(iommufd::IOMMU_HW_INFO_TYPE_ARM_SMMUV3, 0x2);
    assert_eq!(iommufd::IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV, 0x3);
    assert_eq!(iommufd::IOMMU_HW_INFO_TYPE_AMD, 0x4);
    assert_eq!(iommufd::IOMMU_HW_CAP_DIRTY_TRACKING, 0x1);
    assert_eq!(iommufd::IOMMU_HW_CAP_PCI_PASID_EXEC, 0x2);
    assert_eq!(iommufd::IOMMU_HW_CAP_PCI_PASID_PRIV, 0x4);
    assert_eq!(iommufd::IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED, 0x8);
    assert_eq!(iommufd::IOMMU_HW_INFO_FLAG_INPUT_TYPE, 0x1);
    assert_eq!(iommufd::IOMMU_HWPT_DIRTY_TRACKING_ENABLE, 0x1);
    assert_eq!(iommufd::IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR, 0x1);
    assert_eq!(iommufd::IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, 0x0);
    assert_eq!(iommufd::IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 0x1);
    assert_eq!(iommufd::IOMMU_VTD_INV_FLAGS_LEAF, 0x1);
    assert_eq!(iommufd::IOMMU_PGFAULT_FLAGS_PASID_VALID, 0x1);
    assert_eq!(iommufd::IOMMU_PGFAULT_FLAGS_LAST_PAGE, 0x2);
    assert_eq!(iommufd::IOMMU_PGFAULT_PERM_READ, 0x1);
    assert_eq!(iommufd::IOMMU_PGFAULT_PERM_WRITE, 0x2);
    assert_eq!(iommufd::IOMMU_PGFAULT_PERM_EXEC, 0x4);
    assert_eq!(iommufd::IOMMU_PGFAULT_PERM_PRIV, 0x8);
    assert_eq!(iommufd::IOMMUFD_PAGE_RESP_SUCCESS, 0x0);
    assert_eq!(iommufd::IOMMUFD_PAGE_RESP_INVALID, 0x1);
    assert_eq!(iommufd::IOMMU_VIOMMU_TYPE_DEFAULT, 0x0);
    assert_eq!(iommufd::IOMMU_VIOMMU_TYPE_ARM_SMMUV3, 0x1);
    assert_eq!(iommufd::IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV, 0x2);
    assert_eq!(iommufd::IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 0x1);
    assert_eq!(iommufd::IOMMU_VEVENTQ_TYPE_DEFAULT, 0x0);
    assert_eq!(iommufd::IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 0x1);
    assert_eq!(iommufd::IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV, 0x2);
    assert_eq!(iommufd::IOMMU_HW_QUEUE_TYPE_DEFAULT, 0x0);
    assert_eq!(iommufd::IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV, 0x1);
}

#[test]
fn anchors() {
    assert_eq!(iommufd::IOMMU_IOAS_MAP, 0x3b85);
    assert_eq!(size_of::<selftest::iommu_test_cmd>(), 72);
    assert_eq!(iommufd::io(b';', 0x80), iommufd::IOMMU_DESTROY);
}

#[test]
fn union_accessors() {
    let mut info = iommufd::iommu_hw_info::default();
    info.set_out_data_type(iommufd::IOMMU_HW_INFO_TYPE_AMD);
    assert_eq!(info.in_data_type, 4);
    assert_eq!(info.out_data_type(), 4);
    let mut dev = vfio::vfio_pci_dependent_device::default();
    dev.set_group_id(9);
    assert_eq!(dev.devid, 9);
    assert_eq!(dev.group_id(), 9);
}
