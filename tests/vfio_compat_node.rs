//! VFIO type1 container compatibility through the real nodes: a DPDK-like container flow on
//! `vfio/vfio` and on `iommu`, v1 and v2, mixing IOMMU_IOAS_* and VFIO_IOMMU_* on one fd.

mod support;

use std::fs::File;
use support::{ioas_alloc, ioctl, ioctl_raw, open_node, DaemonProcess};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::vfio::*;

fn vfio_ioas(f: &File, op: u16, id: u32) -> Result<u32, i32> {
    let mut cmd = iommu_vfio_ioas {
        size: std::mem::size_of::<iommu_vfio_ioas>() as u32,
        ioas_id: id,
        op,
        reserved: 0,
    };
    ioctl(f, IOMMU_VFIO_IOAS, &mut cmd).map(|_| cmd.ioas_id)
}

fn map_dma(f: &File, vaddr: u64, iova: u64, size: u64) -> Result<i32, i32> {
    let mut m = vfio_iommu_type1_dma_map {
        argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr,
        iova,
        size,
    };
    ioctl(f, VFIO_IOMMU_MAP_DMA, &mut m)
}

fn unmap_dma(f: &File, flags: u32, iova: u64, size: u64) -> Result<u64, i32> {
    let mut u = vfio_iommu_type1_dma_unmap {
        argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
        flags,
        iova,
        size,
    };
    ioctl(f, VFIO_IOMMU_UNMAP_DMA, &mut u).map(|_| u.size)
}

/// Walks GET_INFO's capability chain: (pgsizes, iova ranges, dma_avail).
fn get_info(f: &File) -> (u64, Vec<(u64, u64)>, Option<u32>) {
    let base = std::mem::size_of::<vfio_iommu_type1_info>();
    let mut small = vfio_iommu_type1_info {
        argsz: base as u32,
        ..Default::default()
    };
    ioctl(f, VFIO_IOMMU_GET_INFO, &mut small).unwrap();
    assert!(
        small.argsz as usize > base,
        "caps need more room: {}",
        small.argsz
    );
    assert_eq!(small.cap_offset, 0, "no caps written when they do not fit");
    let mut buf = vec![0u64; (small.argsz as usize).div_ceil(8)];
    let bytes: &mut [u8] =
        // SAFETY: a u64 buffer viewed as bytes; same allocation, length in bytes.
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, buf.len() * 8) };
    bytes[..4].copy_from_slice(&small.argsz.to_ne_bytes());
    ioctl_raw(f, VFIO_IOMMU_GET_INFO, bytes.as_mut_ptr() as u64).unwrap();
    let rd32 = |b: &[u8], o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    let rd64 = |b: &[u8], o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
    let flags = rd32(bytes, 4);
    assert_eq!(flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    let pgsizes = rd64(bytes, 8);
    let mut off = rd32(bytes, 16) as usize;
    let (mut ranges, mut avail) = (Vec::new(), None);
    let mut hops = 0;
    while off != 0 {
        hops += 1;
        assert!(hops < 8, "capability chain loops");
        let id = u16::from_ne_bytes(bytes[off..off + 2].try_into().unwrap());
        match id {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let n = rd32(bytes, off + 8) as usize;
                for i in 0..n {
                    let e = off + 16 + i * 16;
                    ranges.push((rd64(bytes, e), rd64(bytes, e + 8)));
                }
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => avail = Some(rd32(bytes, off + 8)),
            other => panic!("unexpected cap {other}"),
        }
        off = rd32(bytes, off + 4) as usize;
    }
    (pgsizes, ranges, avail)
}

fn container_flow(f: &File, v2: bool) {
    assert_eq!(
        ioctl_raw(f, VFIO_GET_API_VERSION, 0),
        Ok(VFIO_API_VERSION as i32)
    );
    for (ext, want) in [
        (VFIO_TYPE1_IOMMU, 1),
        (VFIO_TYPE1v2_IOMMU, 1),
        (VFIO_UNMAP_ALL, 1),
        (VFIO_TYPE1_NESTING_IOMMU, 0),
        (VFIO_UPDATE_VADDR, 0),
    ] {
        assert_eq!(
            ioctl_raw(f, VFIO_CHECK_EXTENSION, ext as u64),
            Ok(want),
            "extension {ext}"
        );
    }
    // No compat IOAS yet: SET_IOMMU fails like VFIO without a group.
    assert_eq!(
        ioctl_raw(f, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU as u64),
        Err(libc::ENODEV)
    );
    let ioas = ioas_alloc(f);
    vfio_ioas(f, IOMMU_VFIO_IOAS_SET, ioas).unwrap();
    assert_eq!(vfio_ioas(f, IOMMU_VFIO_IOAS_GET, 0), Ok(ioas));
    assert_eq!(ioctl_raw(f, VFIO_SET_IOMMU, 12345), Err(libc::EINVAL));
    let ty = if v2 {
        VFIO_TYPE1v2_IOMMU
    } else {
        VFIO_TYPE1_IOMMU
    };
    ioctl_raw(f, VFIO_SET_IOMMU, ty as u64).unwrap();

    let (pgsizes, ranges, avail) = get_info(f);
    assert_ne!(pgsizes, 0);
    assert_eq!(ranges, vec![(0, u64::MAX)]);
    assert!(avail.is_some());

    let buf = vec![7u8; 64 * 1024];
    let va = buf.as_ptr() as u64 & !0xfff;
    map_dma(f, va + 4096, 1 << 20, 32 * 1024).unwrap();
    // The same mapping is visible to IOMMU_IOAS_* on the IOAS behind the container.
    let mut ranges_cmd = iommu_ioas_iova_ranges {
        size: std::mem::size_of::<iommu_ioas_iova_ranges>() as u32,
        ioas_id: ioas,
        ..Default::default()
    };
    assert_eq!(
        ioctl(f, IOMMU_IOAS_IOVA_RANGES, &mut ranges_cmd),
        Err(libc::EMSGSIZE)
    );
    let mut copy = iommu_ioas_copy {
        size: std::mem::size_of::<iommu_ioas_copy>() as u32,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
        dst_ioas_id: ioas,
        src_ioas_id: ioas,
        length: 4096,
        dst_iova: 1 << 30,
        src_iova: 1 << 20,
    };
    ioctl(f, IOMMU_IOAS_COPY, &mut copy).unwrap();

    if v2 {
        // type1 v2: no splitting — unmapping part of a mapping fails.
        assert_eq!(unmap_dma(f, 0, 1 << 20, 4096), Err(libc::ENOENT));
    } else {
        // type1 v1: the area is split at the unmap boundaries.
        assert_eq!(unmap_dma(f, 0, (1 << 20) + 8192, 4096), Ok(4096));
    }
    // Bad inputs: small argsz, unknown flags, UNMAP_ALL with a range.
    let mut bad = vfio_iommu_type1_dma_map {
        argsz: 8,
        ..Default::default()
    };
    assert_eq!(ioctl(f, VFIO_IOMMU_MAP_DMA, &mut bad), Err(libc::EINVAL));
    assert_eq!(unmap_dma(f, 1 << 7, 0, 0), Err(libc::EINVAL));
    assert_eq!(
        unmap_dma(f, VFIO_DMA_UNMAP_FLAG_ALL, 4096, 0),
        Err(libc::EINVAL)
    );
    let total = if v2 {
        32 * 1024 + 4096
    } else {
        32 * 1024 - 4096 + 4096
    };
    assert_eq!(unmap_dma(f, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0), Ok(total));
    assert_eq!(unmap_dma(f, VFIO_DMA_UNMAP_FLAG_ALL, 0, 0), Ok(0));
    vfio_ioas(f, IOMMU_VFIO_IOAS_CLEAR, 0).unwrap();
    assert_eq!(vfio_ioas(f, IOMMU_VFIO_IOAS_GET, 0), Err(libc::ENODEV));
}

#[test]
fn container_flow_v2_on_vfio_node() {
    let d = DaemonProcess::start(&[]);
    let f = open_node(&d.node("vfio/vfio"));
    container_flow(&f, true);
    drop(f);
    let s = d.wait_idle();
    assert_eq!(s["objects"], 0, "{s}");
}

#[test]
fn container_flow_v1_on_iommu_node() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    container_flow(&f, false);
    drop(f);
    let s = d.wait_idle();
    assert_eq!(s["objects"], 0, "{s}");
}
