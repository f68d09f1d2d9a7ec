//! The type1 container as the domain uses it (map, unmap): [`Container`]; [`KernelContainer`] is
//! the real one (its ioctls in [`crate::sys::vfio`]) and the tests use a model of type1's rules
//! instead ([`super::fake::FakeContainer`]).

use crate::backends::Prot;
use crate::narrow::struct_size;
use crate::sys::vfio::{ioctl_buf, ioctl_struct};
use nix::errno::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use uiommufd_uapi::vfio::*;
use zerocopy::FromBytes;

/// A kernel type1 v2 IOMMU container, or a model of one.
pub trait Container: Send + Sync + std::fmt::Debug {
    /// VFIO_IOMMU_MAP_DMA of `size` bytes of the daemon's memory at `vaddr` to `iova`.
    fn map_dma(&self, iova: u64, vaddr: u64, size: u64, prot: Prot) -> Result<(), Errno>;
    /// VFIO_IOMMU_UNMAP_DMA of whole mappings inside `[iova, iova + size)`; returns bytes unmapped.
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64, Errno>;
    /// VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_ALL; returns bytes unmapped.
    fn unmap_all(&self) -> Result<u64, Errno>;
}

/// What VFIO_IOMMU_GET_INFO tells about a type1 container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Type1Info {
    /// Supported IO page sizes (bitmap).
    pub pgsizes: u64,
    /// Usable IOVA ranges `[start, end]` (inclusive); empty when the kernel gives none.
    pub ranges: Vec<(u64, u64)>,
    /// Mappings still available (`dma_entry_limit` minus those in use), when reported.
    pub dma_avail: Option<u32>,
}

/// VFIO_IOMMU_GET_INFO with its capability chain.
pub fn container_info(container: BorrowedFd<'_>) -> Result<Type1Info, Errno> {
    let mut buf = vec![0u8; size_of::<vfio_iommu_type1_info>()];
    for _ in 0..2 {
        // The struct's size, then the kernel's own (u32) argsz.
        let argsz = u32::try_from(buf.len()).map_err(|_| Errno::EIO)?;
        buf[..4].copy_from_slice(&argsz.to_ne_bytes());
        ioctl_buf(container, VFIO_IOMMU_GET_INFO, &mut buf)?;
        let (info, _) = vfio_iommu_type1_info::read_from_prefix(&buf).map_err(|_| Errno::EIO)?;
        if info.argsz as usize > buf.len() {
            buf = vec![0u8; info.argsz as usize];
            continue;
        }
        return Ok(parse_type1_info(&buf));
    }
    Err(Errno::EIO)
}

/// Parses a VFIO_IOMMU_GET_INFO answer (header and capability chain).
pub fn parse_type1_info(buf: &[u8]) -> Type1Info {
    let Ok((info, _)) = vfio_iommu_type1_info::read_from_prefix(buf) else {
        return Type1Info::default();
    };
    let mut out = Type1Info {
        pgsizes: if info.flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
            info.iova_pgsizes
        } else {
            0
        },
        ..Default::default()
    };
    if info.flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return out;
    }
    let mut off = info.cap_offset as usize;
    // Each step moves forward; a malformed chain ends the walk.
    let mut steps = 0;
    while off != 0 && off < buf.len() && steps < 64 {
        steps += 1;
        let Ok((hdr, _)) = vfio_info_cap_header::read_from_prefix(&buf[off..]) else {
            break;
        };
        match hdr.id {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                if let Ok((cap, rest)) =
                    vfio_iommu_type1_info_cap_iova_range::read_from_prefix(&buf[off..])
                {
                    for k in 0..cap.nr_iovas as usize {
                        let at = k * size_of::<vfio_iova_range>();
                        match rest
                            .get(at..)
                            .and_then(|r| vfio_iova_range::read_from_prefix(r).ok())
                        {
                            Some((r, _)) => out.ranges.push((r.start, r.end)),
                            None => break,
                        }
                    }
                }
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                if let Ok((cap, _)) = vfio_iommu_type1_info_dma_avail::read_from_prefix(&buf[off..])
                {
                    out.dma_avail = Some(cap.avail);
                }
            }
            _ => {}
        }
        if (hdr.next as usize) <= off {
            break;
        }
        off = hdr.next as usize;
    }
    out
}

/// A kernel container with one or more groups in it, set to type1 v2.
#[derive(Debug)]
pub struct KernelContainer {
    fd: OwnedFd,
}

impl KernelContainer {
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Container for KernelContainer {
    fn map_dma(&self, iova: u64, vaddr: u64, size: u64, prot: Prot) -> Result<(), Errno> {
        let mut flags = 0;
        if prot.read {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if prot.write {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let mut m = vfio_iommu_type1_dma_map {
            argsz: struct_size::<vfio_iommu_type1_dma_map>(),
            flags,
            vaddr,
            iova,
            size,
        };
        ioctl_struct(self.fd(), VFIO_IOMMU_MAP_DMA, &mut m)?;
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64, Errno> {
        let mut u = vfio_iommu_type1_dma_unmap {
            argsz: struct_size::<vfio_iommu_type1_dma_unmap>(),
            flags: 0,
            iova,
            size,
        };
        ioctl_struct(self.fd(), VFIO_IOMMU_UNMAP_DMA, &mut u)?;
        Ok(u.size)
    }

    fn unmap_all(&self) -> Result<u64, Errno> {
        let mut u = vfio_iommu_type1_dma_unmap {
            argsz: struct_size::<vfio_iommu_type1_dma_unmap>(),
            flags: VFIO_DMA_UNMAP_FLAG_ALL,
            iova: 0,
            size: 0,
        };
        ioctl_struct(self.fd(), VFIO_IOMMU_UNMAP_DMA, &mut u)?;
        Ok(u.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn info_with_caps() -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let hdr = vfio_iommu_type1_info {
            argsz: 256,
            flags: VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS,
            iova_pgsizes: 0x4020_1000,
            cap_offset: 32,
            pad: 0,
        };
        buf[..size_of::<vfio_iommu_type1_info>()].copy_from_slice(hdr.as_bytes());
        let cap = vfio_iommu_type1_info_cap_iova_range {
            header: vfio_info_cap_header {
                id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
                version: 1,
                next: 96,
            },
            nr_iovas: 2,
            reserved: 0,
        };
        let n = size_of::<vfio_iommu_type1_info_cap_iova_range>();
        buf[32..32 + n].copy_from_slice(cap.as_bytes());
        let ranges = [
            vfio_iova_range {
                start: 0,
                end: 0xfedf_ffff,
            },
            vfio_iova_range {
                start: 0xfef0_0000,
                end: 0xffff_ffff_ffff,
            },
        ];
        buf[32 + n..32 + n + 32].copy_from_slice(ranges.as_bytes());
        let avail = vfio_iommu_type1_info_dma_avail {
            header: vfio_info_cap_header {
                id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
                version: 1,
                next: 0,
            },
            avail: 65535,
        };
        let m = size_of::<vfio_iommu_type1_info_dma_avail>();
        buf[96..96 + m].copy_from_slice(avail.as_bytes());
        buf
    }

    #[test]
    fn type1_info_chain() {
        let info = parse_type1_info(&info_with_caps());
        assert_eq!(info.pgsizes, 0x4020_1000);
        assert_eq!(
            info.ranges,
            vec![(0, 0xfedf_ffff), (0xfef0_0000, 0xffff_ffff_ffff)]
        );
        assert_eq!(info.dma_avail, Some(65535));
    }

    #[test]
    fn malformed_chains_end_the_walk() {
        let mut buf = info_with_caps();
        // A chain pointing back at itself.
        buf[32 + 4..32 + 8].copy_from_slice(&32u32.to_ne_bytes());
        let info = parse_type1_info(&buf);
        assert_eq!(info.ranges.len(), 2);
        assert_eq!(info.dma_avail, None);
        // A range count beyond the buffer.
        let mut buf = info_with_caps();
        buf[32 + 8..32 + 12].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_type1_info(&buf).ranges.len() <= 256 / 16);
        assert_eq!(parse_type1_info(&[0u8; 3]), Type1Info::default());
    }
}
