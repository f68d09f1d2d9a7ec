//! Layout pins for the VFIO uAPI structs, generated from the Linux 7.2 C
//! headers (gcc, x86_64): sizes, alignments, field offsets, ioctl numbers and
//! constants as literal values.

use std::mem::{align_of, offset_of, size_of};

use uiommufd_uapi::vfio;

#[test]
fn vfio_struct_layouts() {
    assert_eq!(size_of::<vfio::vfio_info_cap_header>(), 8);
    assert_eq!(align_of::<vfio::vfio_info_cap_header>(), 4);
    assert_eq!(offset_of!(vfio::vfio_info_cap_header, id), 0);
    assert_eq!(offset_of!(vfio::vfio_info_cap_header, version), 2);
    assert_eq!(offset_of!(vfio::vfio_info_cap_header, next), 4);
    assert_eq!(size_of::<vfio::vfio_group_status>(), 8);
    assert_eq!(align_of::<vfio::vfio_group_status>(), 4);
    assert_eq!(offset_of!(vfio::vfio_group_status, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_group_status, flags), 4);
    assert_eq!(size_of::<vfio::vfio_device_info>(), 24);
    assert_eq!(align_of::<vfio::vfio_device_info>(), 4);
    assert_eq!(offset_of!(vfio::vfio_device_info, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_device_info, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_device_info, num_regions), 8);
    assert_eq!(offset_of!(vfio::vfio_device_info, num_irqs), 12);
    assert_eq!(offset_of!(vfio::vfio_device_info, cap_offset), 16);
    assert_eq!(offset_of!(vfio::vfio_device_info, pad), 20);
    assert_eq!(size_of::<vfio::vfio_region_info>(), 32);
    assert_eq!(align_of::<vfio::vfio_region_info>(), 8);
    assert_eq!(offset_of!(vfio::vfio_region_info, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_region_info, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_region_info, index), 8);
    assert_eq!(offset_of!(vfio::vfio_region_info, cap_offset), 12);
    assert_eq!(offset_of!(vfio::vfio_region_info, size), 16);
    assert_eq!(offset_of!(vfio::vfio_region_info, offset), 24);
    assert_eq!(size_of::<vfio::vfio_region_sparse_mmap_area>(), 16);
    assert_eq!(align_of::<vfio::vfio_region_sparse_mmap_area>(), 8);
    assert_eq!(offset_of!(vfio::vfio_region_sparse_mmap_area, offset), 0);
    assert_eq!(offset_of!(vfio::vfio_region_sparse_mmap_area, size), 8);
    assert_eq!(size_of::<vfio::vfio_region_info_cap_sparse_mmap>(), 16);
    assert_eq!(align_of::<vfio::vfio_region_info_cap_sparse_mmap>(), 8);
    assert_eq!(
        offset_of!(vfio::vfio_region_info_cap_sparse_mmap, header),
        0
    );
    assert_eq!(
        offset_of!(vfio::vfio_region_info_cap_sparse_mmap, nr_areas),
        8
    );
    assert_eq!(
        offset_of!(vfio::vfio_region_info_cap_sparse_mmap, reserved),
        12
    );
    assert_eq!(size_of::<vfio::vfio_region_info_cap_type>(), 16);
    assert_eq!(align_of::<vfio::vfio_region_info_cap_type>(), 4);
    assert_eq!(offset_of!(vfio::vfio_region_info_cap_type, header), 0);
    assert_eq!(offset_of!(vfio::vfio_region_info_cap_type, r#type), 8);
    assert_eq!(offset_of!(vfio::vfio_region_info_cap_type, subtype), 12);
    assert_eq!(size_of::<vfio::vfio_irq_info>(), 16);
    assert_eq!(align_of::<vfio::vfio_irq_info>(), 4);
    assert_eq!(offset_of!(vfio::vfio_irq_info, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_irq_info, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_irq_info, index), 8);
    assert_eq!(offset_of!(vfio::vfio_irq_info, count), 12);
    assert_eq!(size_of::<vfio::vfio_irq_set>(), 20);
    assert_eq!(align_of::<vfio::vfio_irq_set>(), 4);
    assert_eq!(offset_of!(vfio::vfio_irq_set, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_irq_set, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_irq_set, index), 8);
    assert_eq!(offset_of!(vfio::vfio_irq_set, start), 12);
    assert_eq!(offset_of!(vfio::vfio_irq_set, count), 16);
    assert_eq!(size_of::<vfio::vfio_pci_dependent_device>(), 8);
    assert_eq!(align_of::<vfio::vfio_pci_dependent_device>(), 4);
    assert_eq!(offset_of!(vfio::vfio_pci_dependent_device, devid), 0);
    assert_eq!(offset_of!(vfio::vfio_pci_dependent_device, segment), 4);
    assert_eq!(offset_of!(vfio::vfio_pci_dependent_device, bus), 6);
    assert_eq!(offset_of!(vfio::vfio_pci_dependent_device, devfn), 7);
    assert_eq!(size_of::<vfio::vfio_pci_hot_reset_info>(), 12);
    assert_eq!(align_of::<vfio::vfio_pci_hot_reset_info>(), 4);
    assert_eq!(offset_of!(vfio::vfio_pci_hot_reset_info, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_pci_hot_reset_info, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_pci_hot_reset_info, count), 8);
    assert_eq!(size_of::<vfio::vfio_pci_hot_reset>(), 12);
    assert_eq!(align_of::<vfio::vfio_pci_hot_reset>(), 4);
    assert_eq!(offset_of!(vfio::vfio_pci_hot_reset, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_pci_hot_reset, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_pci_hot_reset, count), 8);
    assert_eq!(size_of::<vfio::vfio_device_feature>(), 8);
    assert_eq!(align_of::<vfio::vfio_device_feature>(), 4);
    assert_eq!(offset_of!(vfio::vfio_device_feature, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_device_feature, flags), 4);
    assert_eq!(size_of::<vfio::vfio_device_bind_iommufd>(), 24);
    assert_eq!(align_of::<vfio::vfio_device_bind_iommufd>(), 8);
    assert_eq!(offset_of!(vfio::vfio_device_bind_iommufd, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_device_bind_iommufd, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_device_bind_iommufd, iommufd), 8);
    assert_eq!(offset_of!(vfio::vfio_device_bind_iommufd, out_devid), 12);
    assert_eq!(
        offset_of!(vfio::vfio_device_bind_iommufd, token_uuid_ptr),
        16
    );
    assert_eq!(size_of::<vfio::vfio_device_attach_iommufd_pt>(), 16);
    assert_eq!(align_of::<vfio::vfio_device_attach_iommufd_pt>(), 4);
    assert_eq!(offset_of!(vfio::vfio_device_attach_iommufd_pt, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_device_attach_iommufd_pt, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_device_attach_iommufd_pt, pt_id), 8);
    assert_eq!(offset_of!(vfio::vfio_device_attach_iommufd_pt, pasid), 12);
    assert_eq!(size_of::<vfio::vfio_device_detach_iommufd_pt>(), 12);
    assert_eq!(align_of::<vfio::vfio_device_detach_iommufd_pt>(), 4);
    assert_eq!(offset_of!(vfio::vfio_device_detach_iommufd_pt, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_device_detach_iommufd_pt, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_device_detach_iommufd_pt, pasid), 8);
    assert_eq!(size_of::<vfio::vfio_iommu_type1_info>(), 24);
    assert_eq!(align_of::<vfio::vfio_iommu_type1_info>(), 8);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_info, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_info, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_info, iova_pgsizes), 8);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_info, cap_offset), 16);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_info, pad), 20);
    assert_eq!(size_of::<vfio::vfio_iova_range>(), 16);
    assert_eq!(align_of::<vfio::vfio_iova_range>(), 8);
    assert_eq!(offset_of!(vfio::vfio_iova_range, start), 0);
    assert_eq!(offset_of!(vfio::vfio_iova_range, end), 8);
    assert_eq!(size_of::<vfio::vfio_iommu_type1_info_cap_iova_range>(), 16);
    assert_eq!(align_of::<vfio::vfio_iommu_type1_info_cap_iova_range>(), 8);
    assert_eq!(
        offset_of!(vfio::vfio_iommu_type1_info_cap_iova_range, header),
        0
    );
    assert_eq!(
        offset_of!(vfio::vfio_iommu_type1_info_cap_iova_range, nr_iovas),
        8
    );
    assert_eq!(
        offset_of!(vfio::vfio_iommu_type1_info_cap_iova_range, reserved),
        12
    );
    assert_eq!(size_of::<vfio::vfio_iommu_type1_info_cap_migration>(), 32);
    assert_eq!(align_of::<vfio::vfio_iommu_type1_info_cap_migration>(), 8);
    assert_eq!(
        offset_of!(vfio::vfio_iommu_type1_info_cap_migration, header),
        0
    );
    assert_eq!(
        offset_of!(vfio::vfio_iommu_type1_info_cap_migration, flags),
        8
    );
    assert_eq!(
        offset_of!(vfio::vfio_iommu_type1_info_cap_migration, pgsize_bitmap),
        16
    );
    assert_eq!(
        offset_of!(
            vfio::vfio_iommu_type1_info_cap_migration,
            max_dirty_bitmap_size
        ),
        24
    );
    assert_eq!(size_of::<vfio::vfio_iommu_type1_info_dma_avail>(), 12);
    assert_eq!(align_of::<vfio::vfio_iommu_type1_info_dma_avail>(), 4);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_info_dma_avail, header), 0);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_info_dma_avail, avail), 8);
    assert_eq!(size_of::<vfio::vfio_iommu_type1_dma_map>(), 32);
    assert_eq!(align_of::<vfio::vfio_iommu_type1_dma_map>(), 8);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_map, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_map, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_map, vaddr), 8);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_map, iova), 16);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_map, size), 24);
    assert_eq!(size_of::<vfio::vfio_bitmap>(), 24);
    assert_eq!(align_of::<vfio::vfio_bitmap>(), 8);
    assert_eq!(offset_of!(vfio::vfio_bitmap, pgsize), 0);
    assert_eq!(offset_of!(vfio::vfio_bitmap, size), 8);
    assert_eq!(offset_of!(vfio::vfio_bitmap, data), 16);
    assert_eq!(size_of::<vfio::vfio_iommu_type1_dma_unmap>(), 24);
    assert_eq!(align_of::<vfio::vfio_iommu_type1_dma_unmap>(), 8);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_unmap, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_unmap, flags), 4);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_unmap, iova), 8);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dma_unmap, size), 16);
    assert_eq!(size_of::<vfio::vfio_iommu_type1_dirty_bitmap>(), 8);
    assert_eq!(align_of::<vfio::vfio_iommu_type1_dirty_bitmap>(), 4);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dirty_bitmap, argsz), 0);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dirty_bitmap, flags), 4);
    assert_eq!(size_of::<vfio::vfio_iommu_type1_dirty_bitmap_get>(), 40);
    assert_eq!(align_of::<vfio::vfio_iommu_type1_dirty_bitmap_get>(), 8);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dirty_bitmap_get, iova), 0);
    assert_eq!(offset_of!(vfio::vfio_iommu_type1_dirty_bitmap_get, size), 8);
    assert_eq!(
        offset_of!(vfio::vfio_iommu_type1_dirty_bitmap_get, bitmap),
        16
    );
}

#[test]
fn vfio_ioctl_numbers() {
    assert_eq!(vfio::VFIO_GET_API_VERSION, 0x3b64);
    assert_eq!(vfio::VFIO_CHECK_EXTENSION, 0x3b65);
    assert_eq!(vfio::VFIO_SET_IOMMU, 0x3b66);
    assert_eq!(vfio::VFIO_GROUP_GET_STATUS, 0x3b67);
    assert_eq!(vfio::VFIO_GROUP_SET_CONTAINER, 0x3b68);
    assert_eq!(vfio::VFIO_GROUP_UNSET_CONTAINER, 0x3b69);
    assert_eq!(vfio::VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
    assert_eq!(vfio::VFIO_DEVICE_GET_INFO, 0x3b6b);
    assert_eq!(vfio::VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
    assert_eq!(vfio::VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d);
    assert_eq!(vfio::VFIO_DEVICE_SET_IRQS, 0x3b6e);
    assert_eq!(vfio::VFIO_DEVICE_RESET, 0x3b6f);
    assert_eq!(vfio::VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b70);
    assert_eq!(vfio::VFIO_DEVICE_PCI_HOT_RESET, 0x3b71);
    assert_eq!(vfio::VFIO_DEVICE_QUERY_GFX_PLANE, 0x3b72);
    assert_eq!(vfio::VFIO_DEVICE_GET_GFX_DMABUF, 0x3b73);
    assert_eq!(vfio::VFIO_DEVICE_IOEVENTFD, 0x3b74);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE, 0x3b75);
    assert_eq!(vfio::VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
    assert_eq!(vfio::VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
    assert_eq!(vfio::VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78);
    assert_eq!(vfio::VFIO_IOMMU_GET_INFO, 0x3b70);
    assert_eq!(vfio::VFIO_IOMMU_MAP_DMA, 0x3b71);
    assert_eq!(vfio::VFIO_IOMMU_UNMAP_DMA, 0x3b72);
    assert_eq!(vfio::VFIO_IOMMU_ENABLE, 0x3b73);
    assert_eq!(vfio::VFIO_IOMMU_DISABLE, 0x3b74);
    assert_eq!(vfio::VFIO_IOMMU_DIRTY_PAGES, 0x3b75);
}

#[test]
fn vfio_constants() {
    assert_eq!(vfio::VFIO_API_VERSION, 0x0);
    assert_eq!(vfio::VFIO_TYPE1_IOMMU, 0x1);
    assert_eq!(vfio::VFIO_SPAPR_TCE_IOMMU, 0x2);
    assert_eq!(vfio::VFIO_TYPE1v2_IOMMU, 0x3);
    assert_eq!(vfio::VFIO_DMA_CC_IOMMU, 0x4);
    assert_eq!(vfio::VFIO_EEH, 0x5);
    assert_eq!(vfio::VFIO_TYPE1_NESTING_IOMMU, 0x6);
    assert_eq!(vfio::VFIO_SPAPR_TCE_v2_IOMMU, 0x7);
    assert_eq!(vfio::VFIO_NOIOMMU_IOMMU, 0x8);
    assert_eq!(vfio::VFIO_UNMAP_ALL, 0x9);
    assert_eq!(vfio::VFIO_UPDATE_VADDR, 0xa);
    assert_eq!(vfio::VFIO_TYPE, 0x3b);
    assert_eq!(vfio::VFIO_BASE, 0x64);
    assert_eq!(vfio::VFIO_GROUP_FLAGS_VIABLE, 0x1);
    assert_eq!(vfio::VFIO_GROUP_FLAGS_CONTAINER_SET, 0x2);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_RESET, 0x1);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_PCI, 0x2);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_PLATFORM, 0x4);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_AMBA, 0x8);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_CCW, 0x10);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_AP, 0x20);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_FSL_MC, 0x40);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_CAPS, 0x80);
    assert_eq!(vfio::VFIO_DEVICE_FLAGS_CDX, 0x100);
    assert_eq!(vfio::VFIO_DEVICE_INFO_CAP_ZPCI_BASE, 0x1);
    assert_eq!(vfio::VFIO_DEVICE_INFO_CAP_ZPCI_GROUP, 0x2);
    assert_eq!(vfio::VFIO_DEVICE_INFO_CAP_ZPCI_UTIL, 0x3);
    assert_eq!(vfio::VFIO_DEVICE_INFO_CAP_ZPCI_PFIP, 0x4);
    assert_eq!(vfio::VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP, 0x5);
    assert_eq!(vfio::VFIO_REGION_INFO_FLAG_READ, 0x1);
    assert_eq!(vfio::VFIO_REGION_INFO_FLAG_WRITE, 0x2);
    assert_eq!(vfio::VFIO_REGION_INFO_FLAG_MMAP, 0x4);
    assert_eq!(vfio::VFIO_REGION_INFO_FLAG_CAPS, 0x8);
    assert_eq!(vfio::VFIO_REGION_INFO_CAP_SPARSE_MMAP, 0x1);
    assert_eq!(vfio::VFIO_REGION_INFO_CAP_TYPE, 0x2);
    assert_eq!(vfio::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 0x3);
    assert_eq!(vfio::VFIO_REGION_INFO_CAP_NVLINK2_SSATGT, 0x4);
    assert_eq!(vfio::VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD, 0x5);
    assert_eq!(vfio::VFIO_REGION_TYPE_PCI_VENDOR_TYPE, 0x80000000);
    assert_eq!(vfio::VFIO_REGION_TYPE_PCI_VENDOR_MASK, 0xffff);
    assert_eq!(vfio::VFIO_REGION_TYPE_GFX, 0x1);
    assert_eq!(vfio::VFIO_REGION_TYPE_CCW, 0x2);
    assert_eq!(vfio::VFIO_REGION_TYPE_MIGRATION_DEPRECATED, 0x3);
    assert_eq!(vfio::VFIO_IRQ_INFO_EVENTFD, 0x1);
    assert_eq!(vfio::VFIO_IRQ_INFO_MASKABLE, 0x2);
    assert_eq!(vfio::VFIO_IRQ_INFO_AUTOMASKED, 0x4);
    assert_eq!(vfio::VFIO_IRQ_INFO_NORESIZE, 0x8);
    assert_eq!(vfio::VFIO_IRQ_SET_DATA_NONE, 0x1);
    assert_eq!(vfio::VFIO_IRQ_SET_DATA_BOOL, 0x2);
    assert_eq!(vfio::VFIO_IRQ_SET_DATA_EVENTFD, 0x4);
    assert_eq!(vfio::VFIO_IRQ_SET_ACTION_MASK, 0x8);
    assert_eq!(vfio::VFIO_IRQ_SET_ACTION_UNMASK, 0x10);
    assert_eq!(vfio::VFIO_IRQ_SET_ACTION_TRIGGER, 0x20);
    assert_eq!(vfio::VFIO_IRQ_SET_DATA_TYPE_MASK, 0x7);
    assert_eq!(vfio::VFIO_IRQ_SET_ACTION_TYPE_MASK, 0x38);
    assert_eq!(vfio::VFIO_PCI_BAR0_REGION_INDEX, 0x0);
    assert_eq!(vfio::VFIO_PCI_BAR1_REGION_INDEX, 0x1);
    assert_eq!(vfio::VFIO_PCI_BAR2_REGION_INDEX, 0x2);
    assert_eq!(vfio::VFIO_PCI_BAR3_REGION_INDEX, 0x3);
    assert_eq!(vfio::VFIO_PCI_BAR4_REGION_INDEX, 0x4);
    assert_eq!(vfio::VFIO_PCI_BAR5_REGION_INDEX, 0x5);
    assert_eq!(vfio::VFIO_PCI_ROM_REGION_INDEX, 0x6);
    assert_eq!(vfio::VFIO_PCI_CONFIG_REGION_INDEX, 0x7);
    assert_eq!(vfio::VFIO_PCI_VGA_REGION_INDEX, 0x8);
    assert_eq!(vfio::VFIO_PCI_NUM_REGIONS, 0x9);
    assert_eq!(vfio::VFIO_PCI_INTX_IRQ_INDEX, 0x0);
    assert_eq!(vfio::VFIO_PCI_MSI_IRQ_INDEX, 0x1);
    assert_eq!(vfio::VFIO_PCI_MSIX_IRQ_INDEX, 0x2);
    assert_eq!(vfio::VFIO_PCI_ERR_IRQ_INDEX, 0x3);
    assert_eq!(vfio::VFIO_PCI_REQ_IRQ_INDEX, 0x4);
    assert_eq!(vfio::VFIO_PCI_NUM_IRQS, 0x5);
    assert_eq!(vfio::VFIO_PCI_DEVID_OWNED, 0x0);
    assert_eq!(vfio::VFIO_PCI_DEVID_NOT_OWNED, 0xffffffff);
    assert_eq!(vfio::VFIO_PCI_HOT_RESET_FLAG_DEV_ID, 0x1);
    assert_eq!(vfio::VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED, 0x2);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_MASK, 0xffff);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_GET, 0x10000);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_SET, 0x20000);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_PROBE, 0x40000);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, 0x0);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_MIGRATION, 0x1);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 0x2);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, 0x3);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, 0x4);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, 0x5);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 0x6);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, 0x7);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, 0x8);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, 0x9);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_BUS_MASTER, 0xa);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_DMA_BUF, 0xb);
    assert_eq!(vfio::VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2, 0xc);
    assert_eq!(vfio::VFIO_DEVICE_BIND_FLAG_TOKEN, 0x1);
    assert_eq!(vfio::VFIO_DEVICE_ATTACH_PASID, 0x1);
    assert_eq!(vfio::VFIO_DEVICE_DETACH_PASID, 0x1);
    assert_eq!(vfio::VFIO_IOMMU_INFO_PGSIZES, 0x1);
    assert_eq!(vfio::VFIO_IOMMU_INFO_CAPS, 0x2);
    assert_eq!(vfio::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 0x1);
    assert_eq!(vfio::VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 0x2);
    assert_eq!(vfio::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 0x3);
    assert_eq!(vfio::VFIO_DMA_MAP_FLAG_READ, 0x1);
    assert_eq!(vfio::VFIO_DMA_MAP_FLAG_WRITE, 0x2);
    assert_eq!(vfio::VFIO_DMA_MAP_FLAG_VADDR, 0x4);
    assert_eq!(vfio::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 0x1);
    assert_eq!(vfio::VFIO_DMA_UNMAP_FLAG_ALL, 0x2);
    assert_eq!(vfio::VFIO_DMA_UNMAP_FLAG_VADDR, 0x4);
    assert_eq!(vfio::VFIO_IOMMU_DIRTY_PAGES_FLAG_START, 0x1);
    assert_eq!(vfio::VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, 0x2);
    assert_eq!(vfio::VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, 0x4);
}
