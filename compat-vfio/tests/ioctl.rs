//! VFIO container ioctls against a fake iommufd context: the flows a type1 user (DPDK, QEMU) goes
//! through, type1 v1 splitting, the capability chain protocol and the errno of bad input.

mod common;

use common::*;
use nix::errno::Errno;
use uiommufd_compat_vfio::vfio_ioctl;
use uiommufd_uapi::vfio::*;
use zerocopy::IntoBytes;

#[test]
fn api_version_and_extensions() {
    let h = Fake::new();
    assert_eq!(ioctl(&h, VFIO_GET_API_VERSION, 0), Ok(0));
    let expect = [
        (VFIO_TYPE1_IOMMU, 1),
        (VFIO_SPAPR_TCE_IOMMU, 0),
        (VFIO_TYPE1v2_IOMMU, 1),
        (VFIO_DMA_CC_IOMMU, 1),
        (VFIO_EEH, 0),
        (VFIO_TYPE1_NESTING_IOMMU, 0),
        (VFIO_SPAPR_TCE_v2_IOMMU, 0),
        (VFIO_NOIOMMU_IOMMU, 0),
        (VFIO_UNMAP_ALL, 1),
        (VFIO_UPDATE_VADDR, 0),
        (0, 0),
        (11, 0),
        (u64::MAX as u32, 0),
    ];
    for (ext, want) in expect {
        assert_eq!(
            ioctl(&h, VFIO_CHECK_EXTENSION, u64::from(ext)),
            Ok(want),
            "extension {ext}"
        );
    }
    // The argument is the full unsigned long: no truncation to 32 bits.
    assert_eq!(
        ioctl(
            &h,
            VFIO_CHECK_EXTENSION,
            (1 << 32) | u64::from(VFIO_TYPE1_IOMMU)
        ),
        Ok(0)
    );
    h.coherent.set(false);
    assert_eq!(
        ioctl(&h, VFIO_CHECK_EXTENSION, u64::from(VFIO_DMA_CC_IOMMU)),
        Ok(0)
    );
    // Without a compat IOAS the cache coherency query fails like the kernel's (ENODEV); the
    // others do not need an IOAS.
    h.ioas.set(None);
    assert_eq!(
        ioctl(&h, VFIO_CHECK_EXTENSION, u64::from(VFIO_DMA_CC_IOMMU)),
        Err(Errno::ENODEV)
    );
    assert_eq!(
        ioctl(&h, VFIO_CHECK_EXTENSION, u64::from(VFIO_TYPE1v2_IOMMU)),
        Ok(1)
    );
    assert_eq!(ioctl(&h, VFIO_GET_API_VERSION, 0), Ok(0));
}

#[test]
fn not_container_ioctls() {
    let h = Fake::new();
    for cmd in [
        VFIO_IOMMU_DIRTY_PAGES,
        VFIO_IOMMU_ENABLE,
        VFIO_IOMMU_DISABLE,
        VFIO_GROUP_GET_STATUS,
        VFIO_DEVICE_GET_INFO,
        0,
        0x3b80,
    ] {
        assert!(vfio_ioctl(&h, cmd, BASE).is_none(), "cmd {cmd:#x}");
    }
}

#[test]
fn dpdk_like_flow_type1v2() {
    let h = Fake::new();
    let n = h.usable.borrow().len() as u64;
    h.pgsize_bitmap.set(0x4020_1000); // 4K | 2M | 1G
    h.alignment.set(4096);

    assert_eq!(ioctl(&h, VFIO_GET_API_VERSION, 0), Ok(0));
    assert_eq!(
        ioctl(&h, VFIO_CHECK_EXTENSION, u64::from(VFIO_TYPE1v2_IOMMU)),
        Ok(1)
    );
    assert_eq!(
        ioctl(&h, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1v2_IOMMU)),
        Ok(0)
    );
    assert!(!h.large_pages_disabled.get());
    assert!(h.calls().is_empty());

    // First GET_INFO with just the struct: learn the size, no caps written.
    let arg = h.put(0, &info_arg(INFO_SIZE as u32));
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Ok(0));
    let info: vfio_iommu_type1_info = h.get(0);
    assert_eq!(u64::from(info.argsz), full_size(n));
    assert_eq!(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    assert_eq!(info.iova_pgsizes, 0x4020_1000);
    assert_eq!(info.cap_offset, 0);
    assert_eq!(info.pad, 0);
    assert!(
        h.bytes(INFO_SIZE, 256).iter().all(|&b| b == 0xa5),
        "caps written without room"
    );

    // Second with the size learnt: walk the chain.
    let arg = h.put(0, &info_arg(info.argsz));
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Ok(0));
    let info: vfio_iommu_type1_info = h.get(0);
    assert_eq!(u64::from(info.argsz), full_size(n));
    assert_eq!(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    assert_eq!(info.cap_offset, INFO_SIZE as u32);

    let mut seen = Vec::new();
    let mut off = u64::from(info.cap_offset);
    while off != 0 {
        assert_eq!(off % 8, 0, "caps are 8-byte aligned");
        let hdr: vfio_info_cap_header = h.get(off);
        assert_eq!(hdr.version, 1);
        match hdr.id {
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                assert_eq!(off, DMA_AVAIL_OFF);
                let cap: vfio_iommu_type1_info_dma_avail = h.get(off);
                assert_eq!(cap.avail, u32::MAX);
                assert_eq!(u64::from(hdr.next), IOVA_CAP_OFF);
                // Padding after the 12-byte cap is not written.
                assert_eq!(h.bytes(off + 12, 4), vec![0xa5; 4]);
            }
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                assert_eq!(off, IOVA_CAP_OFF);
                let cap: vfio_iommu_type1_info_cap_iova_range = h.get(off);
                assert_eq!(u64::from(cap.nr_iovas), n);
                assert_eq!(cap.reserved, 0);
                let ranges: Vec<(u64, u64)> = (0..n)
                    .map(|i| {
                        let r: vfio_iova_range = h.get(off + 16 + 16 * i);
                        (r.start, r.end)
                    })
                    .collect();
                assert_eq!(ranges, *h.usable.borrow());
                assert_eq!(hdr.next, 0);
            }
            id => panic!("unexpected cap {id}"),
        }
        seen.push(hdr.id);
        off = u64::from(hdr.next);
    }
    assert_eq!(
        seen,
        [
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
        ]
    );
    // Nothing beyond argsz.
    assert_eq!(h.bytes(full_size(n), 64), vec![0xa5; 64]);

    // MAP_DMA: read/write flags become the map's prot, fixed IOVA.
    let buf_va = 0x7f12_3400_0000;
    let arg = h.put(0x1000, &map_arg(RW, buf_va, 0x10_0000, 0x20_0000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Ok(0));
    let arg = h.put(
        0x1000,
        &map_arg(
            VFIO_DMA_MAP_FLAG_READ,
            buf_va + 0x20_0000,
            0x30_0000,
            0x1000,
        ),
    );
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Ok(0));
    let arg = h.put(0x1000, &map_arg(0, buf_va + 0x40_0000, 0x40_0000, 0x1000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Ok(0));
    // A larger argsz is accepted (extension space).
    let mut m = map_arg(
        VFIO_DMA_MAP_FLAG_WRITE,
        buf_va + 0x50_0000,
        0x50_0000,
        0x1000,
    );
    m.argsz = 64;
    let arg = h.put(0x1000, &m);
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Ok(0));
    assert_eq!(
        h.calls(),
        [
            Call::Map {
                iova: 0x10_0000,
                va: buf_va,
                len: 0x20_0000,
                read: true,
                write: true
            },
            Call::Map {
                iova: 0x30_0000,
                va: buf_va + 0x20_0000,
                len: 0x1000,
                read: true,
                write: false
            },
            Call::Map {
                iova: 0x40_0000,
                va: buf_va + 0x40_0000,
                len: 0x1000,
                read: false,
                write: false
            },
            Call::Map {
                iova: 0x50_0000,
                va: buf_va + 0x50_0000,
                len: 0x1000,
                read: false,
                write: true
            },
        ]
    );
    // Host errors pass through.
    let arg = h.put(0x1000, &map_arg(RW, buf_va, 0x10_0000, 0x1000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Err(Errno::EEXIST));
    h.calls();

    // UNMAP_DMA: size written back = bytes unmapped; no cuts in v2.
    let arg = h.put(0x2000, &unmap_arg(0, 0x10_0000, 0x20_0000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Ok(0));
    let u: vfio_iommu_type1_dma_unmap = h.get(0x2000);
    assert_eq!(
        (u.argsz, u.flags, u.iova, u.size),
        (24, 0, 0x10_0000, 0x20_0000)
    );
    assert_eq!(
        h.calls(),
        [Call::Unmap {
            iova: 0x10_0000,
            len: 0x20_0000
        }]
    );

    // UNMAP_ALL: the rest.
    let arg = h.put(0x2000, &unmap_arg(VFIO_DMA_UNMAP_FLAG_ALL, 0, 0));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Ok(0));
    let u: vfio_iommu_type1_dma_unmap = h.get(0x2000);
    assert_eq!(
        (u.flags, u.iova, u.size),
        (VFIO_DMA_UNMAP_FLAG_ALL, 0, 0x3000)
    );
    assert_eq!(h.calls(), [Call::UnmapAll]);
    assert!(h.areas().is_empty());

    // UNMAP_ALL of nothing: size 0.
    let arg = h.put(0x2000, &unmap_arg(VFIO_DMA_UNMAP_FLAG_ALL, 0, 0));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Ok(0));
    assert_eq!(h.get::<vfio_iommu_type1_dma_unmap>(0x2000).size, 0);
}

#[test]
fn type1v1_disables_large_pages_and_cuts() {
    let h = Fake::new();
    assert_eq!(
        ioctl(&h, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1_IOMMU)),
        Ok(0)
    );
    assert_eq!(h.calls(), [Call::DisableLargePages]);
    assert!(h.large_pages_disabled.get());

    let arg = h.put(0x1000, &map_arg(RW, 0x7f00_0010_0000, 0x10000, 0x40000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Ok(0));
    h.calls();

    // Unmap from the middle: cut at the range's last byte, then just before its start.
    let arg = h.put(0x2000, &unmap_arg(0, 0x20000, 0x10000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Ok(0));
    assert_eq!(
        h.calls(),
        [
            Call::Cut(vec![0x2ffff, 0x1ffff]),
            Call::Unmap {
                iova: 0x20000,
                len: 0x10000
            }
        ]
    );
    assert_eq!(h.get::<vfio_iommu_type1_dma_unmap>(0x2000).size, 0x10000);
    assert_eq!(h.areas(), [(0x10000, 0x1ffff), (0x30000, 0x4ffff)]);

    // At IOVA 0 only the last byte is cut.
    let arg = h.put(0x1000, &map_arg(RW, 0x7f00_0000_0000, 0, 0x4000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Ok(0));
    h.calls();
    let arg = h.put(0x2000, &unmap_arg(0, 0, 0x1000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Ok(0));
    assert_eq!(
        h.calls(),
        [
            Call::Cut(vec![0xfff]),
            Call::Unmap {
                iova: 0,
                len: 0x1000
            }
        ]
    );
    assert_eq!(h.get::<vfio_iommu_type1_dma_unmap>(0x2000).size, 0x1000);

    // The IOVAs wrap like unsigned long: size 0 cuts at iova - 1 twice, then the unmap fails.
    let arg = h.put(0x2000, &unmap_arg(0, 0x30000, 0));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::EINVAL));
    assert_eq!(
        h.calls(),
        [
            Call::Cut(vec![0x2ffff, 0x2ffff]),
            Call::Unmap {
                iova: 0x30000,
                len: 0
            }
        ]
    );
    let arg = h.put(0x2000, &unmap_arg(0, 0, 0));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::EINVAL));
    assert_eq!(
        h.calls(),
        [Call::Cut(vec![u64::MAX]), Call::Unmap { iova: 0, len: 0 }]
    );

    // UNMAP_ALL does not cut.
    let arg = h.put(0x2000, &unmap_arg(VFIO_DMA_UNMAP_FLAG_ALL, 0, 0));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Ok(0));
    assert_eq!(h.calls(), [Call::UnmapAll]);
    assert_eq!(
        h.get::<vfio_iommu_type1_dma_unmap>(0x2000).size,
        0x3000 + 0x10000 + 0x20000
    );

    // v2 after v1 does not re-enable large pages (the kernel never does either).
    assert_eq!(
        ioctl(&h, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1v2_IOMMU)),
        Ok(0)
    );
    assert!(h.calls().is_empty());
}

#[test]
fn set_iommu_errors() {
    let h = Fake::new();
    for ty in [0u64, 2, 4, 6, 7, 8, 9, 10, 1 << 32 | 1] {
        assert_eq!(
            ioctl(&h, VFIO_SET_IOMMU, ty),
            Err(Errno::EINVAL),
            "type {ty}"
        );
    }
    // Host failure to disable large pages passes through.
    h.disable_error.set(Some(Errno::EINVAL));
    assert_eq!(
        ioctl(&h, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1_IOMMU)),
        Err(Errno::EINVAL)
    );
    h.disable_error.set(Some(Errno::EBUSY));
    assert_eq!(
        ioctl(&h, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1_IOMMU)),
        Err(Errno::EBUSY)
    );
    // No compat IOAS: the type check comes first.
    h.ioas.set(None);
    assert_eq!(ioctl(&h, VFIO_SET_IOMMU, 2), Err(Errno::EINVAL));
    assert_eq!(
        ioctl(&h, VFIO_SET_IOMMU, u64::from(VFIO_NOIOMMU_IOMMU)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ioctl(&h, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1_IOMMU)),
        Err(Errno::ENODEV)
    );
    assert_eq!(
        ioctl(&h, VFIO_SET_IOMMU, u64::from(VFIO_TYPE1v2_IOMMU)),
        Err(Errno::ENODEV)
    );
}

#[test]
fn get_info_pgsizes() {
    let h = Fake::new();
    let get = |h: &Fake| {
        let arg = h.put(0, &info_arg(INFO_SIZE as u32));
        ioctl(h, VFIO_IOMMU_GET_INFO, arg).unwrap();
        h.get::<vfio_iommu_type1_info>(0).iova_pgsizes
    };
    // No domain: every size from the CPU page up.
    assert_eq!(get(&h), !0xfff);
    // Sub-page sizes fold into the CPU page size.
    h.pgsize_bitmap.set(0x200 | 0x1_0000);
    assert_eq!(get(&h), 0x1000 | 0x1_0000);
    h.pgsize_bitmap.set(0x4020_1000);
    assert_eq!(get(&h), 0x4020_1000);
    // Large pages disabled raise the alignment, not the bitmap.
    h.alignment.set(4096);
    h.large_pages_disabled.set(true);
    assert_eq!(get(&h), 0x4020_1000);
    // The bitmap is never below the alignment (compared as numbers).
    h.pgsize_bitmap.set(0);
    assert_eq!(get(&h), 4096);
    h.pgsize_bitmap.set(0x800);
    h.alignment.set(0x4000);
    assert_eq!(get(&h), 0x4000);
}

#[test]
fn get_info_partial_room() {
    let h = Fake::new();
    let n = h.usable.borrow().len() as u64;
    let fresh = |argsz: u64| {
        h.mem.borrow_mut().fill(0xa5);
        h.put(0, &info_arg(argsz as u32))
    };

    // Smaller than the struct but covering iova_pgsizes: only argsz bytes come back.
    for argsz in [16u64, 20] {
        let arg = fresh(argsz);
        assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Ok(0));
        let info: vfio_iommu_type1_info = h.get(0);
        assert_eq!(u64::from(info.argsz), full_size(n));
        assert_eq!(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
        assert_eq!(info.iova_pgsizes, !0xfff);
        let untouched = h.bytes(argsz, (INFO_SIZE - argsz) as usize);
        assert_eq!(
            untouched,
            info_arg(0).as_bytes()[argsz as usize..INFO_SIZE as usize]
        );
    }

    // Room for DMA_AVAIL but not up to the IOVA cap's start: it is written, its next stays 0.
    let arg = fresh(DMA_AVAIL_OFF + 12);
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Ok(0));
    let info: vfio_iommu_type1_info = h.get(0);
    assert_eq!((u64::from(info.argsz), info.cap_offset), (full_size(n), 0));
    let cap: vfio_iommu_type1_info_dma_avail = h.get(DMA_AVAIL_OFF);
    assert_eq!(
        (
            cap.header.id,
            cap.header.version,
            cap.header.next,
            cap.avail
        ),
        (3, 1, 0, u32::MAX)
    );
    assert_eq!(h.bytes(DMA_AVAIL_OFF + 12, 64), vec![0xa5; 64]);

    // Exactly up to the IOVA cap's start: DMA_AVAIL's next already points at it, but the
    // chain is not offered (cap_offset 0) and nothing is written there.
    let arg = fresh(IOVA_CAP_OFF);
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Ok(0));
    let info: vfio_iommu_type1_info = h.get(0);
    assert_eq!((u64::from(info.argsz), info.cap_offset), (full_size(n), 0));
    assert_eq!(
        u64::from(h.get::<vfio_info_cap_header>(DMA_AVAIL_OFF).next),
        IOVA_CAP_OFF
    );
    assert_eq!(h.bytes(IOVA_CAP_OFF, 64), vec![0xa5; 64]);

    // Room for the IOVA cap's first range only: that range is written, not the header.
    let arg = fresh(IOVA_CAP_OFF + 32);
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Ok(0));
    assert_eq!(h.get::<vfio_iommu_type1_info>(0).cap_offset, 0);
    assert_eq!(h.bytes(IOVA_CAP_OFF, 16), vec![0xa5; 16]);
    let r: vfio_iova_range = h.get(IOVA_CAP_OFF + 16);
    assert_eq!((r.start, r.end), h.usable.borrow()[0]);
    assert_eq!(h.bytes(IOVA_CAP_OFF + 32, 16), vec![0xa5; 16]);

    // More room than needed: everything, argsz shrinks to the real size.
    let arg = fresh(0x400);
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Ok(0));
    let info: vfio_iommu_type1_info = h.get(0);
    assert_eq!((u64::from(info.argsz), info.cap_offset), (full_size(n), 24));
    assert_eq!(
        h.get::<vfio_iommu_type1_info_cap_iova_range>(IOVA_CAP_OFF)
            .nr_iovas,
        2
    );

    // No usable range at all: an empty IOVA cap.
    h.usable.borrow_mut().clear();
    let arg = fresh(0x400);
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Ok(0));
    let info: vfio_iommu_type1_info = h.get(0);
    assert_eq!((u64::from(info.argsz), info.cap_offset), (full_size(0), 24));
    let cap: vfio_iommu_type1_info_cap_iova_range = h.get(IOVA_CAP_OFF);
    assert_eq!((cap.header.id, cap.header.next, cap.nr_iovas), (1, 0, 0));
}

#[test]
fn get_info_caps_beyond_memory_fault() {
    // The struct is readable and writable but the caps the caller claims room for are not.
    let h = Fake::new();
    let off = MEM_SIZE as u64 - INFO_SIZE - 8;
    let arg = h.put(off, &info_arg(0x400));
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Err(Errno::EFAULT));
    // The struct itself is not written back.
    assert_eq!(h.get::<vfio_iommu_type1_info>(off).flags, 0xdead);
}

#[test]
fn bad_input_matrix() {
    let h = Fake::new();
    let unreadable = BASE + MEM_SIZE as u64 - 8;

    // GET_INFO
    let arg = h.put(0, &info_arg(15));
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Err(Errno::EINVAL));
    let arg = h.put(0, &info_arg(0));
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Err(Errno::EINVAL));
    assert_eq!(
        h.get::<vfio_iommu_type1_info>(0).flags,
        0xdead,
        "nothing written on error"
    );
    assert_eq!(
        ioctl(&h, VFIO_IOMMU_GET_INFO, unreadable),
        Err(Errno::EFAULT)
    );
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, 0), Err(Errno::EFAULT));

    // MAP_DMA: argsz then flags, before the IOAS.
    let mut m = map_arg(RW, BASE, 0x10000, 0x1000);
    m.argsz = 31;
    let arg = h.put(0x1000, &m);
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Err(Errno::EINVAL));
    for flags in [
        VFIO_DMA_MAP_FLAG_VADDR,
        RW | VFIO_DMA_MAP_FLAG_VADDR,
        1 << 3,
        1 << 31,
    ] {
        let arg = h.put(0x1000, &map_arg(flags, BASE, 0x10000, 0x1000));
        assert_eq!(
            ioctl(&h, VFIO_IOMMU_MAP_DMA, arg),
            Err(Errno::EINVAL),
            "flags {flags:#x}"
        );
    }
    assert_eq!(
        ioctl(&h, VFIO_IOMMU_MAP_DMA, unreadable),
        Err(Errno::EFAULT)
    );
    // Host validation: zero size.
    let arg = h.put(0x1000, &map_arg(RW, BASE, 0x10000, 0));
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Err(Errno::EINVAL));
    assert_eq!(h.calls().len(), 1);

    // UNMAP_DMA
    let mut u = unmap_arg(0, 0x10000, 0x1000);
    u.argsz = 23;
    let arg = h.put(0x2000, &u);
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::EINVAL));
    for flags in [
        VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
        VFIO_DMA_UNMAP_FLAG_VADDR,
        VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_VADDR,
        1 << 3,
    ] {
        let mut u = unmap_arg(flags, 0x10000, 0x1000);
        u.argsz = 48;
        let arg = h.put(0x2000, &u);
        assert_eq!(
            ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg),
            Err(Errno::EINVAL),
            "flags {flags:#x}"
        );
    }
    for (iova, size) in [(0x1000, 0), (0, 0x1000), (1, 1)] {
        let arg = h.put(0x2000, &unmap_arg(VFIO_DMA_UNMAP_FLAG_ALL, iova, size));
        assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::EINVAL));
        assert_eq!(
            h.get::<vfio_iommu_type1_dma_unmap>(0x2000).size,
            size,
            "not written back"
        );
    }
    assert_eq!(
        ioctl(&h, VFIO_IOMMU_UNMAP_DMA, unreadable),
        Err(Errno::EFAULT)
    );
    assert!(h.calls().is_empty());

    // No compat IOAS: ENODEV, after the argument checks.
    h.ioas.set(None);
    let arg = h.put(0, &info_arg(INFO_SIZE as u32));
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Err(Errno::ENODEV));
    let arg = h.put(0x1000, &map_arg(RW, BASE, 0x10000, 0x1000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Err(Errno::ENODEV));
    let arg = h.put(0x1000, &map_arg(1 << 5, BASE, 0x10000, 0x1000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Err(Errno::EINVAL));
    let arg = h.put(0x2000, &unmap_arg(0, 0x10000, 0x1000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::ENODEV));
    // The IOAS is needed before the UNMAP_ALL iova/size check.
    let arg = h.put(0x2000, &unmap_arg(VFIO_DMA_UNMAP_FLAG_ALL, 1, 1));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::ENODEV));
    assert_eq!(
        ioctl(&h, VFIO_IOMMU_UNMAP_DMA, unreadable),
        Err(Errno::EFAULT)
    );
}

#[test]
fn unmap_failure_reports_progress() {
    let h = Fake::new();
    for iova in [0x10000u64, 0x20000] {
        let arg = h.put(0x1000, &map_arg(RW, BASE, iova, 0x10000));
        assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Ok(0));
    }
    // Covers the first area whole and the second in part (v2: no cut): ENOENT after the first is
    // gone, and the bytes already unmapped are written back.
    let arg = h.put(0x2000, &unmap_arg(0, 0x10000, 0x18000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::ENOENT));
    assert_eq!(h.get::<vfio_iommu_type1_dma_unmap>(0x2000).size, 0x10000);
    assert_eq!(h.areas(), [(0x20000, 0x2ffff)]);
    // Wrapping range: EOVERFLOW from the host, size 0 written back.
    let arg = h.put(0x2000, &unmap_arg(0, 0x20000, u64::MAX));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::EOVERFLOW));
    assert_eq!(h.get::<vfio_iommu_type1_dma_unmap>(0x2000).size, 0);
    // Nothing mapped there: success, 0 bytes.
    let arg = h.put(0x2000, &unmap_arg(0, 0x80000, 0x1000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Ok(0));
    assert_eq!(h.get::<vfio_iommu_type1_dma_unmap>(0x2000).size, 0);
}

#[test]
fn write_back_fault() {
    let h = Fake::new();
    let arg = h.put(0x1000, &map_arg(RW, BASE, 0x10000, 0x10000));
    h.write_fault.set(true);
    // MAP_DMA writes nothing back.
    assert_eq!(ioctl(&h, VFIO_IOMMU_MAP_DMA, arg), Ok(0));
    // The unmap happens; failing to report it is EFAULT.
    let arg = h.put(0x2000, &unmap_arg(0, 0x10000, 0x10000));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::EFAULT));
    assert!(h.areas().is_empty());
    // EFAULT also replaces the unmap's own error.
    let arg = h.put(0x2000, &unmap_arg(0, 0x10000, 0));
    assert_eq!(ioctl(&h, VFIO_IOMMU_UNMAP_DMA, arg), Err(Errno::EFAULT));
    let arg = h.put(0, &info_arg(INFO_SIZE as u32));
    assert_eq!(ioctl(&h, VFIO_IOMMU_GET_INFO, arg), Err(Errno::EFAULT));
}
