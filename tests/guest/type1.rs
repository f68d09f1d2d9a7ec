//! The baseline: the client's own kernel VFIO type1v2 container holding one group.

use crate::sys::{ctx, ioctl_int, ioctl_ptr, open_rw, Res};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use uiommufd_uapi::vfio::*;

pub struct Container {
    container: File,
    group: File,
}

impl Container {
    /// /dev/vfio/vfio with `group` (a /dev/vfio/N path) set into it and the type1v2 IOMMU.
    pub fn open(group: &str) -> Res<Self> {
        let container = open_rw("/dev/vfio/vfio")?;
        let v =
            ioctl_int(&container, VFIO_GET_API_VERSION, 0).map_err(ctx("VFIO_GET_API_VERSION"))?;
        if v != VFIO_API_VERSION as i32 {
            return Err(format!("VFIO_GET_API_VERSION {v}"));
        }
        let ext = ioctl_int(&container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU.into())
            .map_err(ctx("VFIO_CHECK_EXTENSION"))?;
        if ext != 1 {
            return Err(format!("VFIO_CHECK_EXTENSION(TYPE1v2) = {ext}"));
        }
        let group = open_rw(group)?;
        let mut st = vfio_group_status {
            argsz: size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        ioctl_ptr(&group, VFIO_GROUP_GET_STATUS, &mut st).map_err(ctx("VFIO_GROUP_GET_STATUS"))?;
        if st.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(format!(
                "group not viable (flags {:#x}): bind every device to vfio-pci",
                st.flags
            ));
        }
        let mut fd: i32 = container.as_raw_fd();
        ioctl_ptr(&group, VFIO_GROUP_SET_CONTAINER, &mut fd)
            .map_err(ctx("VFIO_GROUP_SET_CONTAINER"))?;
        ioctl_int(&container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU.into())
            .map_err(ctx("VFIO_SET_IOMMU"))?;
        Ok(Self { container, group })
    }

    /// The container file (to inspect what it is).
    pub fn file(&self) -> &File {
        &self.container
    }

    /// VFIO_GROUP_UNSET_CONTAINER.
    pub fn unset(&self) -> Result<i32, nix::errno::Errno> {
        ioctl_int(&self.group, VFIO_GROUP_UNSET_CONTAINER, 0)
    }

    /// VFIO_GROUP_SET_CONTAINER again (after [`Self::unset`]).
    pub fn set(&self) -> Result<(), nix::errno::Errno> {
        let mut fd: i32 = self.container.as_raw_fd();
        ioctl_ptr(&self.group, VFIO_GROUP_SET_CONTAINER, &mut fd).map(drop)
    }

    /// VFIO_GROUP_GET_DEVICE_FD for the device named `bdf` (e.g. 0000:00:06.0).
    pub fn device(&self, bdf: &str) -> Res<File> {
        let name = CString::new(bdf).map_err(|e| e.to_string())?;
        // SAFETY: the argument is a NUL-terminated string that outlives the call; the kernel only
        // reads it.
        let fd = unsafe {
            libc::ioctl(
                self.group.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD as libc::c_ulong,
                name.as_ptr(),
            )
        };
        if fd < 0 {
            return Err(format!(
                "VFIO_GROUP_GET_DEVICE_FD {bdf}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the kernel just returned this new fd to us; nothing else owns it.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    pub fn map(&self, vaddr: u64, iova: u64, size: u64) -> Res<()> {
        let mut m = vfio_iommu_type1_dma_map {
            argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        ioctl_ptr(&self.container, VFIO_IOMMU_MAP_DMA, &mut m)
            .map_err(ctx("VFIO_IOMMU_MAP_DMA"))?;
        Ok(())
    }

    pub fn unmap(&self, iova: u64, size: u64) -> Res<()> {
        let mut u = vfio_iommu_type1_dma_unmap {
            argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        ioctl_ptr(&self.container, VFIO_IOMMU_UNMAP_DMA, &mut u)
            .map_err(ctx("VFIO_IOMMU_UNMAP_DMA"))?;
        if u.size != size {
            return Err(format!(
                "VFIO_IOMMU_UNMAP_DMA unmapped {:#x} of {size:#x}",
                u.size
            ));
        }
        Ok(())
    }
}
