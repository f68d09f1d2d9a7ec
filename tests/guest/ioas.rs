//! dma-tests beyond one IOAS_MAP: what the IOMMU behind the device looks like (GET_HW_INFO, the
//! reserved MSI window in IOVA_RANGES) and the other ways into an IOAS (IOAS_COPY,
//! IOAS_MAP_FILE), each proven by an edu DMA.

use crate::edu::EDU_BUF_LEN;
use crate::iommufd::{Bound, Iommufd};
use crate::report::Report;
use crate::sys::{compare, pattern, Buffer, Res, MIB};
use crate::{no_write_at, roundtrip, Nodes, BUF_LEN, IOVA};
use nix::errno::Errno;
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use std::fs::File;
use std::os::unix::fs::FileExt;
use uiommufd_uapi::iommufd::*;

/// The interrupt window x86 IOMMUs reserve (MSI writes, never DMA).
const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// The device's PCI address: the node's file name.
fn bdf(n: &Nodes) -> &str {
    n.dev.rsplit('/').next().unwrap_or(&n.dev)
}

/// A hex register of the device's VT-d unit in sysfs (`cap`, `ecap`).
fn sysfs_vtd_reg(bdf: &str, name: &str) -> Res<u64> {
    let path = format!("/sys/bus/pci/devices/{bdf}/iommu/intel-iommu/{name}");
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .map_err(|e| format!("{path}: {:?}: {e}", s.trim()))
}

/// IOMMU_GET_HW_INFO of the bound device: VT-d data equal to the unit's registers in sysfs, no
/// dirty tracking (type1 has none).
pub fn hw_info(r: &mut Report, n: &Nodes) {
    let fd = step!(r, "hwinfo-open", Iommufd::open(&n.iommu));
    let b = step!(r, "hwinfo-bind", Bound::open(&n.dev, &fd, None));
    // More room than iommu_hw_info_vtd needs: the answer says how much is meaningful, the
    // rest comes back zeroed.
    let mut data = [0xaau8; 64];
    let h = step!(r, "hwinfo", fd.hw_info(b.dev_id, &mut data));
    println!(
        "hwinfo: type {} data_len {} capabilities {:#x} max_pasid_log2 {} data {:02x?}",
        h.out_data_type(),
        h.data_len,
        h.out_capabilities,
        h.out_max_pasid_log2,
        &data[..24]
    );
    step!(
        r,
        "hwinfo-type-intel-vtd",
        if h.out_data_type() == IOMMU_HW_INFO_TYPE_INTEL_VTD {
            Ok(())
        } else {
            Err(format!(
                "out_data_type {}, expected {IOMMU_HW_INFO_TYPE_INTEL_VTD}",
                h.out_data_type()
            ))
        }
    );
    let len = size_of::<iommu_hw_info_vtd>();
    step!(
        r,
        "hwinfo-data-len",
        if h.data_len as usize == len && data[len..].iter().all(|&b| b == 0) {
            Ok(())
        } else {
            Err(format!(
                "data_len {} (expected {len}), bytes {len}.. of the 64-byte buffer {:02x?} (expected zeroed)",
                h.data_len,
                &data[len..]
            ))
        }
    );
    let vtd = step!(
        r,
        "hwinfo-vtd-data",
        <iommu_hw_info_vtd as zerocopy::FromBytes>::read_from_prefix(&data)
            .map(|(v, _)| v)
            .map_err(|_| "short data".to_string())
    );
    let want = step!(
        r,
        "hwinfo-sysfs",
        sysfs_vtd_reg(bdf(n), "cap").and_then(|c| Ok((c, sysfs_vtd_reg(bdf(n), "ecap")?)))
    );
    step!(
        r,
        "hwinfo-cap-ecap-match-sysfs",
        if (vtd.cap_reg, vtd.ecap_reg) == want && vtd.flags == 0 {
            Ok(())
        } else {
            Err(format!(
                "cap {:#x} ecap {:#x} flags {:#x}; sysfs cap {:#x} ecap {:#x}",
                vtd.cap_reg, vtd.ecap_reg, vtd.flags, want.0, want.1
            ))
        }
    );
    step!(
        r,
        "hwinfo-no-dirty-tracking",
        if h.out_capabilities & IOMMU_HW_CAP_DIRTY_TRACKING == 0 {
            Ok(())
        } else {
            Err(format!(
                "out_capabilities {:#x} has DIRTY_TRACKING",
                h.out_capabilities
            ))
        }
    );
}

/// Whether `[a, b]` and `[c, d]` share an address.
fn overlaps((a, b): (u64, u64), (c, d): (u64, u64)) -> bool {
    a <= d && c <= b
}

fn show(ranges: &[(u64, u64)]) -> String {
    let v: Vec<String> = ranges
        .iter()
        .map(|(s, l)| format!("{s:#x}-{l:#x}"))
        .collect();
    v.join(" ")
}

/// With the device attached, IOVA_RANGES has a hole over the MSI window and a fixed map there
/// is refused with EINVAL; before the attach the window is usable (it is the device's reserved
/// region, not the IOAS's).
pub fn msi_window(r: &mut Report, n: &Nodes) {
    let fd = step!(r, "msi-open", Iommufd::open(&n.iommu));
    let ioas = step!(r, "msi-ioas", fd.ioas_alloc());
    let before = step!(r, "msi-ranges-before-attach", fd.iova_ranges(ioas));
    println!("msi: IOVA ranges before the attach: {}", show(&before));
    step!(
        r,
        "msi-window-usable-before-attach",
        if before
            .iter()
            .any(|&(s, l)| s <= MSI_WINDOW.0 && l >= MSI_WINDOW.1)
        {
            Ok(())
        } else {
            Err(format!("no range covers the MSI window: {}", show(&before)))
        }
    );
    let b = step!(r, "msi-bind", Bound::open(&n.dev, &fd, None));
    step!(r, "msi-attach", b.attach(ioas));
    let after = step!(r, "msi-ranges-after-attach", fd.iova_ranges(ioas));
    println!("msi: IOVA ranges with the device: {}", show(&after));
    step!(
        r,
        "msi-window-is-a-hole",
        if after.is_empty() {
            Err("no usable range at all".into())
        } else if let Some(&x) = after.iter().find(|&&x| overlaps(x, MSI_WINDOW)) {
            Err(format!(
                "range {:#x}-{:#x} overlaps the MSI window: {}",
                x.0,
                x.1,
                show(&after)
            ))
        } else if !after
            .iter()
            .any(|&(s, l)| s <= IOVA && l >= IOVA + BUF_LEN as u64)
        {
            Err(format!(
                "the DMA buffer's IOVA {IOVA:#x} is not usable: {}",
                show(&after)
            ))
        } else if !after.iter().any(|&(s, _)| s > MSI_WINDOW.1) {
            Err(format!("nothing usable above the window: {}", show(&after)))
        } else {
            Ok(())
        }
    );
    let buf = step!(r, "msi-buffer", Buffer::shared(BUF_LEN));
    step!(
        r,
        "msi-map-in-window-einval",
        match fd.try_map(ioas, buf.addr(), 0x1000, MSI_WINDOW.0) {
            Err(Errno::EINVAL) => Ok(()),
            Err(e) => Err(format!(
                "IOMMU_IOAS_MAP at {:#x}: {e}, expected EINVAL",
                MSI_WINDOW.0
            )),
            Ok(()) => Err(format!(
                "IOMMU_IOAS_MAP at {:#x} succeeded, expected EINVAL",
                MSI_WINDOW.0
            )),
        }
    );
}

/// IOAS_COPY of a mapping of IOAS A (no device) into IOAS B (device attached): the DMA through
/// B reaches the buffer; after the unmap in B it does not, while A still holds the mapping.
pub fn ioas_copy(r: &mut Report, n: &Nodes) {
    /// Where the buffer sits in A: not where B gets it, so a copy that kept A's IOVA shows.
    const SRC_IOVA: u64 = 0x80_0000;
    let fd = step!(r, "copy-open", Iommufd::open(&n.iommu));
    let a = step!(r, "copy-ioas-a", fd.ioas_alloc());
    let bb = step!(r, "copy-ioas-b", fd.ioas_alloc());
    let buf = step!(r, "copy-buffer", Buffer::shared(BUF_LEN));
    step!(
        r,
        "copy-map-in-a",
        fd.map(a, buf.addr(), BUF_LEN as u64, SRC_IOVA)
    );
    let b = step!(r, "copy-bind", Bound::open(&n.dev, &fd, None));
    step!(r, "copy-attach-b", b.attach(bb));
    step!(
        r,
        "copy-a-to-b",
        fd.copy(bb, IOVA, a, SRC_IOVA, BUF_LEN as u64)
    );
    let dev = step!(r, "copy-regions", b.edu());
    step!(
        r,
        "copy-dma-through-b",
        roundtrip(&dev, &buf, IOVA, 0x1000, 0x11000, 0x71)
    );
    step!(r, "copy-unmap-b", fd.unmap(bb, IOVA, BUF_LEN as u64));
    step!(
        r,
        "copy-unmapped-no-write",
        no_write_at(&dev, &buf, IOVA, 0x30000)
    );
    step!(
        r,
        "copy-a-still-mapped",
        fd.unmap(a, SRC_IOVA, BUF_LEN as u64)
    );
}

/// IOAS_MAP_FILE of a memfd this process never maps: edu reads what pwrite put in the file and
/// writes it back where pread finds it, also through a window that starts inside the file.
pub fn map_file(r: &mut Report, n: &Nodes) {
    const FILE_LEN: u64 = 4 * MIB as u64;
    /// The second window: file offset 2 MiB onwards, at this IOVA.
    const WIN_START: u64 = 2 * MIB as u64;
    const WIN_IOVA: u64 = 0x40_0000;
    let memfd = step!(
        r,
        "mapfile-memfd",
        memfd_create("vfio_dma_file", MemfdFlags::CLOEXEC)
            .and_then(|fd| ftruncate(&fd, FILE_LEN).map(|()| File::from(fd)))
            .map_err(|e| format!("memfd: {e}"))
    );
    let p = pattern(0x81, EDU_BUF_LEN);
    step!(
        r,
        "mapfile-pwrite",
        memfd
            .write_all_at(&p, 0x1000)
            .map_err(|e| format!("pwrite: {e}"))
    );
    let fd = step!(r, "mapfile-open", Iommufd::open(&n.iommu));
    let ioas = step!(r, "mapfile-ioas", fd.ioas_alloc());
    let b = step!(r, "mapfile-bind", Bound::open(&n.dev, &fd, None));
    step!(r, "mapfile-attach", b.attach(ioas));
    step!(
        r,
        "mapfile-map",
        fd.map_file(ioas, &memfd, 0, WIN_START, IOVA)
    );
    step!(
        r,
        "mapfile-map-at-offset",
        fd.map_file(ioas, &memfd, WIN_START, FILE_LEN - WIN_START, WIN_IOVA)
    );
    let dev = step!(r, "mapfile-regions", b.edu());
    let pread = |off: u64| -> Res<Vec<u8>> {
        let mut v = vec![0; EDU_BUF_LEN];
        memfd
            .read_exact_at(&mut v, off)
            .map_err(|e| format!("pread at {off:#x}: {e}"))?;
        Ok(v)
    };
    step!(
        r,
        "mapfile-dma-roundtrip",
        dev.dma(IOVA + 0x1000, EDU_BUF_LEN, false)
            .and_then(|()| dev.dma(IOVA + 0x10000, EDU_BUF_LEN, true))
            .and_then(|()| compare("file at 0x10000", &pread(0x10000)?, &p))
    );
    step!(
        r,
        "mapfile-dma-at-offset",
        dev.dma(WIN_IOVA + 0x3000, EDU_BUF_LEN, true)
            .and_then(|()| compare("file at 2 MiB + 0x3000", &pread(WIN_START + 0x3000)?, &p))
    );
    step!(r, "mapfile-unmap", fd.unmap(ioas, IOVA, WIN_START));
}
