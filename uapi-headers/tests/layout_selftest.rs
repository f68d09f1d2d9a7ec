//! Layout pins for the iommufd selftest uAPI structs, generated from the Linux 7.2 C
//! headers (gcc, x86_64): sizes, alignments, field offsets, ioctl numbers and
//! constants as literal values.

use std::mem::{align_of, offset_of, size_of};

use uiommufd_uapi::selftest;

#[test]
fn selftest_struct_layouts() {
    assert_eq!(size_of::<selftest::iommu_test_cmd>(), 72);
    assert_eq!(align_of::<selftest::iommu_test_cmd>(), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd, size), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd, op), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd, id), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd, reserved), 12);
    assert_eq!(offset_of!(selftest::iommu_test_cmd, payload), 16);
    assert_eq!(offset_of!(selftest::iommu_test_cmd, last), 64);
    assert_eq!(size_of::<selftest::iommu_test_cmd_add_reserved>(), 16);
    assert_eq!(align_of::<selftest::iommu_test_cmd_add_reserved>(), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_add_reserved, start), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_add_reserved, length), 8);
    assert_eq!(size_of::<selftest::iommu_test_cmd_mock_domain>(), 12);
    assert_eq!(align_of::<selftest::iommu_test_cmd_mock_domain>(), 4);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_mock_domain, out_stdev_id),
        0
    );
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_mock_domain, out_hwpt_id),
        4
    );
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_mock_domain, out_idev_id),
        8
    );
    assert_eq!(size_of::<selftest::iommu_test_cmd_mock_domain_flags>(), 16);
    assert_eq!(align_of::<selftest::iommu_test_cmd_mock_domain_flags>(), 4);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_mock_domain_flags, out_stdev_id),
        0
    );
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_mock_domain_flags, out_hwpt_id),
        4
    );
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_mock_domain_flags, out_idev_id),
        8
    );
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_mock_domain_flags, dev_flags),
        12
    );
    assert_eq!(size_of::<selftest::iommu_test_cmd_mock_domain_replace>(), 4);
    assert_eq!(
        align_of::<selftest::iommu_test_cmd_mock_domain_replace>(),
        4
    );
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_mock_domain_replace, pt_id),
        0
    );
    assert_eq!(size_of::<selftest::iommu_test_cmd_check_map>(), 24);
    assert_eq!(align_of::<selftest::iommu_test_cmd_check_map>(), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_map, iova), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_map, length), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_map, uptr), 16);
    assert_eq!(size_of::<selftest::iommu_test_cmd_check_refs>(), 24);
    assert_eq!(align_of::<selftest::iommu_test_cmd_check_refs>(), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_refs, length), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_refs, uptr), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_refs, refs), 16);
    assert_eq!(size_of::<selftest::iommu_test_cmd_create_access>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_cmd_create_access>(), 4);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_create_access, out_access_fd),
        0
    );
    assert_eq!(offset_of!(selftest::iommu_test_cmd_create_access, flags), 4);
    assert_eq!(
        size_of::<selftest::iommu_test_cmd_destroy_access_pages>(),
        4
    );
    assert_eq!(
        align_of::<selftest::iommu_test_cmd_destroy_access_pages>(),
        4
    );
    assert_eq!(
        offset_of!(
            selftest::iommu_test_cmd_destroy_access_pages,
            access_pages_id
        ),
        0
    );
    assert_eq!(size_of::<selftest::iommu_test_cmd_access_pages>(), 32);
    assert_eq!(align_of::<selftest::iommu_test_cmd_access_pages>(), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_access_pages, flags), 0);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_access_pages, out_access_pages_id),
        4
    );
    assert_eq!(offset_of!(selftest::iommu_test_cmd_access_pages, iova), 8);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_access_pages, length),
        16
    );
    assert_eq!(offset_of!(selftest::iommu_test_cmd_access_pages, uptr), 24);
    assert_eq!(size_of::<selftest::iommu_test_cmd_access_rw>(), 32);
    assert_eq!(align_of::<selftest::iommu_test_cmd_access_rw>(), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_access_rw, iova), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_access_rw, length), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_access_rw, uptr), 16);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_access_rw, flags), 24);
    assert_eq!(size_of::<selftest::iommu_test_cmd_memory_limit>(), 4);
    assert_eq!(align_of::<selftest::iommu_test_cmd_memory_limit>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_memory_limit, limit), 0);
    assert_eq!(size_of::<selftest::iommu_test_cmd_access_replace_ioas>(), 4);
    assert_eq!(
        align_of::<selftest::iommu_test_cmd_access_replace_ioas>(),
        4
    );
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_access_replace_ioas, ioas_id),
        0
    );
    assert_eq!(size_of::<selftest::iommu_test_cmd_dirty>(), 48);
    assert_eq!(align_of::<selftest::iommu_test_cmd_dirty>(), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_dirty, flags), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_dirty, iova), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_dirty, length), 16);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_dirty, page_size), 24);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_dirty, uptr), 32);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_dirty, out_nr_dirty), 40);
    assert_eq!(size_of::<selftest::iommu_test_cmd_check_iotlb>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_cmd_check_iotlb>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_iotlb, id), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_iotlb, iotlb), 4);
    assert_eq!(size_of::<selftest::iommu_test_cmd_trigger_iopf>(), 24);
    assert_eq!(align_of::<selftest::iommu_test_cmd_trigger_iopf>(), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_trigger_iopf, dev_id), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_trigger_iopf, pasid), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_trigger_iopf, grpid), 8);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_trigger_iopf, perm), 12);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_trigger_iopf, addr), 16);
    assert_eq!(size_of::<selftest::iommu_test_cmd_check_dev_cache>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_cmd_check_dev_cache>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_check_dev_cache, id), 0);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_check_dev_cache, cache),
        4
    );
    assert_eq!(size_of::<selftest::iommu_test_cmd_trigger_vevent>(), 4);
    assert_eq!(align_of::<selftest::iommu_test_cmd_trigger_vevent>(), 4);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_trigger_vevent, dev_id),
        0
    );
    assert_eq!(size_of::<selftest::iommu_test_cmd_pasid_attach>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_cmd_pasid_attach>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_pasid_attach, pasid), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_pasid_attach, pt_id), 4);
    assert_eq!(size_of::<selftest::iommu_test_cmd_pasid_replace>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_cmd_pasid_replace>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_pasid_replace, pasid), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_pasid_replace, pt_id), 4);
    assert_eq!(size_of::<selftest::iommu_test_cmd_pasid_detach>(), 4);
    assert_eq!(align_of::<selftest::iommu_test_cmd_pasid_detach>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_pasid_detach, pasid), 0);
    assert_eq!(size_of::<selftest::iommu_test_cmd_pasid_check>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_cmd_pasid_check>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_pasid_check, pasid), 0);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_pasid_check, hwpt_id), 4);
    assert_eq!(size_of::<selftest::iommu_test_cmd_dmabuf_get>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_cmd_dmabuf_get>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_cmd_dmabuf_get, length), 0);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_dmabuf_get, open_flags),
        4
    );
    assert_eq!(size_of::<selftest::iommu_test_cmd_dmabuf_revoke>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_cmd_dmabuf_revoke>(), 4);
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_dmabuf_revoke, dmabuf_fd),
        0
    );
    assert_eq!(
        offset_of!(selftest::iommu_test_cmd_dmabuf_revoke, revoked),
        4
    );
    assert_eq!(size_of::<selftest::iommu_test_hw_info>(), 8);
    assert_eq!(align_of::<selftest::iommu_test_hw_info>(), 4);
    assert_eq!(offset_of!(selftest::iommu_test_hw_info, flags), 0);
    assert_eq!(offset_of!(selftest::iommu_test_hw_info, test_reg), 4);
    assert_eq!(size_of::<selftest::iommu_hwpt_selftest>(), 8);
    assert_eq!(align_of::<selftest::iommu_hwpt_selftest>(), 4);
    assert_eq!(offset_of!(selftest::iommu_hwpt_selftest, iotlb), 0);
    assert_eq!(offset_of!(selftest::iommu_hwpt_selftest, pagetable_type), 4);
    assert_eq!(size_of::<selftest::iommu_hwpt_invalidate_selftest>(), 8);
    assert_eq!(align_of::<selftest::iommu_hwpt_invalidate_selftest>(), 4);
    assert_eq!(
        offset_of!(selftest::iommu_hwpt_invalidate_selftest, flags),
        0
    );
    assert_eq!(
        offset_of!(selftest::iommu_hwpt_invalidate_selftest, iotlb_id),
        4
    );
    assert_eq!(size_of::<selftest::iommu_viommu_selftest>(), 24);
    assert_eq!(align_of::<selftest::iommu_viommu_selftest>(), 8);
    assert_eq!(offset_of!(selftest::iommu_viommu_selftest, in_data), 0);
    assert_eq!(offset_of!(selftest::iommu_viommu_selftest, out_data), 4);
    assert_eq!(
        offset_of!(selftest::iommu_viommu_selftest, out_mmap_offset),
        8
    );
    assert_eq!(
        offset_of!(selftest::iommu_viommu_selftest, out_mmap_length),
        16
    );
    assert_eq!(size_of::<selftest::iommu_viommu_invalidate_selftest>(), 12);
    assert_eq!(align_of::<selftest::iommu_viommu_invalidate_selftest>(), 4);
    assert_eq!(
        offset_of!(selftest::iommu_viommu_invalidate_selftest, flags),
        0
    );
    assert_eq!(
        offset_of!(selftest::iommu_viommu_invalidate_selftest, vdev_id),
        4
    );
    assert_eq!(
        offset_of!(selftest::iommu_viommu_invalidate_selftest, cache_id),
        8
    );
    assert_eq!(size_of::<selftest::iommu_viommu_event_selftest>(), 4);
    assert_eq!(align_of::<selftest::iommu_viommu_event_selftest>(), 4);
    assert_eq!(
        offset_of!(selftest::iommu_viommu_event_selftest, virt_id),
        0
    );
}

#[test]
fn selftest_ioctl_numbers() {
    assert_eq!(selftest::IOMMU_TEST_CMD, 0x3ba0);
}

#[test]
fn selftest_constants() {
    assert_eq!(selftest::IOMMU_TEST_OP_ADD_RESERVED, 0x1);
    assert_eq!(selftest::IOMMU_TEST_OP_MOCK_DOMAIN, 0x2);
    assert_eq!(selftest::IOMMU_TEST_OP_MD_CHECK_MAP, 0x3);
    assert_eq!(selftest::IOMMU_TEST_OP_MD_CHECK_REFS, 0x4);
    assert_eq!(selftest::IOMMU_TEST_OP_CREATE_ACCESS, 0x5);
    assert_eq!(selftest::IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, 0x6);
    assert_eq!(selftest::IOMMU_TEST_OP_ACCESS_PAGES, 0x7);
    assert_eq!(selftest::IOMMU_TEST_OP_ACCESS_RW, 0x8);
    assert_eq!(selftest::IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, 0x9);
    assert_eq!(selftest::IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, 0xa);
    assert_eq!(selftest::IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, 0xb);
    assert_eq!(selftest::IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, 0xc);
    assert_eq!(selftest::IOMMU_TEST_OP_DIRTY, 0xd);
    assert_eq!(selftest::IOMMU_TEST_OP_MD_CHECK_IOTLB, 0xe);
    assert_eq!(selftest::IOMMU_TEST_OP_TRIGGER_IOPF, 0xf);
    assert_eq!(selftest::IOMMU_TEST_OP_DEV_CHECK_CACHE, 0x10);
    assert_eq!(selftest::IOMMU_TEST_OP_TRIGGER_VEVENT, 0x11);
    assert_eq!(selftest::IOMMU_TEST_OP_PASID_ATTACH, 0x12);
    assert_eq!(selftest::IOMMU_TEST_OP_PASID_REPLACE, 0x13);
    assert_eq!(selftest::IOMMU_TEST_OP_PASID_DETACH, 0x14);
    assert_eq!(selftest::IOMMU_TEST_OP_PASID_CHECK_HWPT, 0x15);
    assert_eq!(selftest::IOMMU_TEST_OP_DMABUF_GET, 0x16);
    assert_eq!(selftest::IOMMU_TEST_OP_DMABUF_REVOKE, 0x17);
    assert_eq!(selftest::MOCK_IOMMUPT_DEFAULT, 0x0);
    assert_eq!(selftest::MOCK_IOMMUPT_HUGE, 0x1);
    assert_eq!(selftest::MOCK_APERTURE_START, 0x1000000);
    assert_eq!(selftest::MOCK_APERTURE_LAST, 0x7fffffff);
    assert_eq!(selftest::MOCK_PAGE_SIZE, 0x800);
    assert_eq!(selftest::MOCK_HUGE_PAGE_SIZE, 0x100000);
    assert_eq!(selftest::MOCK_FLAGS_ACCESS_WRITE, 0x1);
    assert_eq!(selftest::MOCK_FLAGS_ACCESS_SYZ, 0x10000);
    assert_eq!(selftest::MOCK_ACCESS_RW_WRITE, 0x1);
    assert_eq!(selftest::MOCK_ACCESS_RW_SLOW_PATH, 0x4);
    assert_eq!(selftest::MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES, 0x1);
    assert_eq!(selftest::MOCK_FLAGS_DEVICE_NO_DIRTY, 0x1);
    assert_eq!(selftest::MOCK_FLAGS_DEVICE_PASID, 0x4);
    assert_eq!(selftest::MOCK_NESTED_DOMAIN_IOTLB_ID_MAX, 0x3);
    assert_eq!(selftest::MOCK_NESTED_DOMAIN_IOTLB_NUM, 0x4);
    assert_eq!(selftest::MOCK_DEV_CACHE_ID_MAX, 0x3);
    assert_eq!(selftest::MOCK_DEV_CACHE_NUM, 0x4);
    assert_eq!(selftest::IOMMU_TEST_PASID_RESERVED, 0x400);
    assert_eq!(selftest::MOCK_PASID_WIDTH, 0x14);
    assert_eq!(selftest::IOMMU_TEST_CMD_PAYLOAD_LEN, 0x30);
    assert_eq!(selftest::IOMMU_HW_INFO_TYPE_SELFTEST, 0xfeedbeef);
    assert_eq!(selftest::IOMMU_HW_INFO_SELFTEST_REGVAL, 0xdeadbeef);
    assert_eq!(selftest::IOMMU_HWPT_DATA_SELFTEST, 0xdead);
    assert_eq!(selftest::IOMMU_TEST_IOTLB_DEFAULT, 0xbadbeef);
    assert_eq!(selftest::IOMMU_TEST_DEV_CACHE_DEFAULT, 0xbaddad);
    assert_eq!(selftest::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 0xdeadbeef);
    assert_eq!(
        selftest::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID,
        0xdadbeef
    );
    assert_eq!(selftest::IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x1);
    assert_eq!(selftest::IOMMU_VIOMMU_TYPE_SELFTEST, 0xdeadbeef);
    assert_eq!(selftest::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, 0xdeadbeef);
    assert_eq!(
        selftest::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID,
        0xdadbeef
    );
    assert_eq!(selftest::IOMMU_VEVENTQ_TYPE_SELFTEST, 0xbeefbeef);
    assert_eq!(selftest::IOMMU_HW_QUEUE_TYPE_SELFTEST, 0xdeadbeef);
    assert_eq!(selftest::IOMMU_TEST_HW_QUEUE_MAX, 0x2);
}

#[test]
fn test_cmd_payload_roundtrip() {
    use zerocopy::IntoBytes;
    let mut cmd = selftest::iommu_test_cmd {
        size: size_of::<selftest::iommu_test_cmd>() as u32,
        op: selftest::IOMMU_TEST_OP_DIRTY,
        ..Default::default()
    };
    let dirty = selftest::iommu_test_cmd_dirty {
        flags: 1,
        iova: 0x1000,
        length: 0x2000,
        page_size: 0x800,
        uptr: 0xdead_0000,
        out_nr_dirty: 7,
        ..Default::default()
    };
    assert!(cmd.set_payload(&dirty));
    let back: selftest::iommu_test_cmd_dirty = cmd.payload().unwrap();
    assert_eq!(back.iova, 0x1000);
    assert_eq!(back.out_nr_dirty, 7);
    // The union starts at byte 16 of the wire struct.
    assert_eq!(&cmd.as_bytes()[24..32], &0x1000u64.to_ne_bytes());
    // Something larger than the union does not fit.
    assert!(cmd.payload::<[u8; 49]>().is_none());
    assert!(!cmd.set_payload(&[0u8; 49]));
}
