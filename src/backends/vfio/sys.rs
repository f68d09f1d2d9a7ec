//! Every VFIO ioctl the type1 backend issues, in one place: the container (`/dev/vfio/vfio`),
//! group (`/dev/vfio/<n>`) and device fd calls, each with the reason it is sound.
//!
//! [`Container`] is the part the domain uses (map, unmap); [`KernelContainer`] is the real one and
//! the tests use a model of type1's rules instead ([`super::fake::FakeContainer`]).

use crate::backends::Prot;
use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use uiommufd_uapi::vfio::*;
use zerocopy::{FromBytes, IntoBytes};

/// A kernel type1 v2 IOMMU container, or a model of one.
pub trait Container: Send + Sync + std::fmt::Debug {
    /// VFIO_IOMMU_MAP_DMA of `size` bytes of the daemon's memory at `vaddr` to `iova`.
    fn map_dma(&self, iova: u64, vaddr: u64, size: u64, prot: Prot) -> Result<(), Errno>;
    /// VFIO_IOMMU_UNMAP_DMA of whole mappings inside `[iova, iova + size)`; returns bytes unmapped.
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64, Errno>;
    /// VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_ALL; returns bytes unmapped.
    fn unmap_all(&self) -> Result<u64, Errno>;
}

fn check(rc: libc::c_int) -> Result<libc::c_int, Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

/// An ioctl whose argument is a plain integer (or none).
fn ioctl_int(fd: BorrowedFd<'_>, cmd: u32, arg: libc::c_ulong) -> Result<libc::c_int, Errno> {
    // SAFETY: these VFIO commands take their argument by value; the kernel dereferences nothing.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(cmd), arg) })
}

/// An ioctl on a buffer that starts with its `argsz` (the buffer is the whole argument).
pub fn ioctl_buf(fd: BorrowedFd<'_>, cmd: u32, buf: &mut [u8]) -> Result<libc::c_int, Errno> {
    if buf.len() < 4 || u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize > buf.len() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the kernel reads and writes at most `argsz` bytes of the argument, and argsz (its
    // first word) was just checked not to exceed the buffer's length.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(cmd), buf.as_mut_ptr()) })
}

/// An ioctl on one argsz struct of this crate's uAPI.
fn ioctl_struct<T: IntoBytes + FromBytes>(
    fd: BorrowedFd<'_>,
    cmd: u32,
    v: &mut T,
) -> Result<libc::c_int, Errno> {
    ioctl_buf(fd, cmd, v.as_mut_bytes())
}

/// Opens `/dev/vfio/vfio` and checks it speaks the VFIO API with type1 v2.
pub fn open_container() -> Result<OwnedFd, Errno> {
    let fd = open_path("/dev/vfio/vfio")?;
    let version = ioctl_int(as_fd(&fd), VFIO_GET_API_VERSION, 0)?;
    if version != VFIO_API_VERSION as i32 {
        return Err(Errno::EPROTO);
    }
    if ioctl_int(
        as_fd(&fd),
        VFIO_CHECK_EXTENSION,
        libc::c_ulong::from(VFIO_TYPE1v2_IOMMU),
    )? != 1
    {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(fd)
}

fn as_fd(fd: &OwnedFd) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

/// Opens `path` read-write, close-on-exec.
pub fn open_path(path: &str) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// VFIO_GROUP_GET_STATUS: the group's flags (VFIO_GROUP_FLAGS_VIABLE, ..._CONTAINER_SET).
pub fn group_status(group: BorrowedFd<'_>) -> Result<u32, Errno> {
    let mut st = vfio_group_status {
        argsz: size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    ioctl_struct(group, VFIO_GROUP_GET_STATUS, &mut st)?;
    Ok(st.flags)
}

/// VFIO_GROUP_SET_CONTAINER.
pub fn group_set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> Result<(), Errno> {
    let raw: libc::c_int = container.as_raw_fd();
    // SAFETY: the command reads one int through the pointer, which points at `raw` on our stack.
    check(unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            libc::c_ulong::from(VFIO_GROUP_SET_CONTAINER),
            &raw as *const libc::c_int,
        )
    })?;
    Ok(())
}

/// VFIO_GROUP_UNSET_CONTAINER: EBUSY while a device fd of the group is open.
pub fn group_unset_container(group: BorrowedFd<'_>) -> Result<(), Errno> {
    ioctl_int(group, VFIO_GROUP_UNSET_CONTAINER, 0)?;
    Ok(())
}

/// VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU), once a group is in the container.
pub fn set_type1v2(container: BorrowedFd<'_>) -> Result<(), Errno> {
    ioctl_int(
        container,
        VFIO_SET_IOMMU,
        libc::c_ulong::from(VFIO_TYPE1v2_IOMMU),
    )?;
    Ok(())
}

/// VFIO_GROUP_GET_DEVICE_FD for the device named `name` (its PCI address).
pub fn group_device_fd(group: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the command reads a NUL-terminated string, which `name` is, and returns a new fd.
    let fd = check(unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            libc::c_ulong::from(VFIO_GROUP_GET_DEVICE_FD),
            name.as_ptr(),
        )
    })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// VFIO_DEVICE_RESET.
pub fn device_reset(device: BorrowedFd<'_>) -> Result<(), Errno> {
    ioctl_int(device, VFIO_DEVICE_RESET, 0)?;
    Ok(())
}

/// VFIO_DEVICE_GET_INFO.
pub fn device_info(device: BorrowedFd<'_>) -> Result<vfio_device_info, Errno> {
    let mut info = vfio_device_info {
        argsz: size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    ioctl_struct(device, VFIO_DEVICE_GET_INFO, &mut info)?;
    Ok(info)
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
        let argsz = buf.len() as u32;
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
        as_fd(&self.fd)
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
            argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
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
            argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        ioctl_struct(self.fd(), VFIO_IOMMU_UNMAP_DMA, &mut u)?;
        Ok(u.size)
    }

    fn unmap_all(&self) -> Result<u64, Errno> {
        let mut u = vfio_iommu_type1_dma_unmap {
            argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
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

    #[test]
    fn argsz_beyond_the_buffer_is_refused_before_the_kernel() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let mut buf = vec![0u8; 8];
        buf[..4].copy_from_slice(&64u32.to_ne_bytes());
        assert_eq!(
            ioctl_buf(f.as_fd(), VFIO_DEVICE_GET_INFO, &mut buf),
            Err(Errno::EINVAL)
        );
    }
}
