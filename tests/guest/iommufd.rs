//! The client side of uiommufd: an iommufd (/dev/iommu) and a VFIO device node bound to it.

use crate::edu::Device;
use crate::sys::{ctx, ioctl_ptr, open_rw, Res};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::vfio::*;

pub struct Iommufd {
    pub file: File,
}

impl Iommufd {
    pub fn open(path: &str) -> Res<Self> {
        Ok(Self {
            file: open_rw(path)?,
        })
    }

    pub fn ioas_alloc(&self) -> Res<u32> {
        let mut a = iommu_ioas_alloc {
            size: size_of::<iommu_ioas_alloc>() as u32,
            ..Default::default()
        };
        ioctl_ptr(&self.file, IOMMU_IOAS_ALLOC, &mut a).map_err(ctx("IOMMU_IOAS_ALLOC"))?;
        Ok(a.out_ioas_id)
    }

    /// IOMMU_IOAS_MAP, readable and writeable, at the fixed `iova`.
    pub fn map(&self, ioas: u32, user_va: u64, length: u64, iova: u64) -> Res<()> {
        self.try_map(ioas, user_va, length, iova)
            .map_err(ctx("IOMMU_IOAS_MAP"))
    }

    /// [`Self::map`] with the bare errno.
    pub fn try_map(&self, ioas: u32, user_va: u64, length: u64, iova: u64) -> Result<(), Errno> {
        let mut m = iommu_ioas_map {
            size: size_of::<iommu_ioas_map>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            user_va,
            length,
            iova,
            ..Default::default()
        };
        ioctl_ptr(&self.file, IOMMU_IOAS_MAP, &mut m).map(|_| ())
    }

    /// IOMMU_IOAS_UNMAP; fails unless exactly `length` bytes were unmapped.
    pub fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Res<()> {
        let mut u = iommu_ioas_unmap {
            size: size_of::<iommu_ioas_unmap>() as u32,
            ioas_id: ioas,
            iova,
            length,
        };
        ioctl_ptr(&self.file, IOMMU_IOAS_UNMAP, &mut u).map_err(ctx("IOMMU_IOAS_UNMAP"))?;
        if u.length != length {
            return Err(format!(
                "IOMMU_IOAS_UNMAP unmapped {:#x} of {length:#x}",
                u.length
            ));
        }
        Ok(())
    }

    /// IOMMU_IOAS_IOVA_RANGES: the usable ranges `[start, last]` (asks for the count first, as
    /// the kernel answers EMSGSIZE with the count when the array is too small).
    pub fn iova_ranges(&self, ioas: u32) -> Res<Vec<(u64, u64)>> {
        let mut q = iommu_ioas_iova_ranges {
            size: size_of::<iommu_ioas_iova_ranges>() as u32,
            ioas_id: ioas,
            ..Default::default()
        };
        match ioctl_ptr(&self.file, IOMMU_IOAS_IOVA_RANGES, &mut q) {
            Ok(_) | Err(Errno::EMSGSIZE) => {}
            Err(e) => return Err(format!("IOMMU_IOAS_IOVA_RANGES (count): {e}")),
        }
        let mut v = vec![iommu_iova_range::default(); q.num_iovas as usize];
        q.allowed_iovas = v.as_mut_ptr() as u64;
        ioctl_ptr(&self.file, IOMMU_IOAS_IOVA_RANGES, &mut q)
            .map_err(ctx("IOMMU_IOAS_IOVA_RANGES"))?;
        v.truncate(q.num_iovas as usize);
        Ok(v.iter().map(|r| (r.start, r.last)).collect())
    }

    /// IOMMU_IOAS_COPY, readable and writeable, at the fixed `dst_iova`.
    pub fn copy(&self, dst: u32, dst_iova: u64, src: u32, src_iova: u64, length: u64) -> Res<()> {
        let mut c = iommu_ioas_copy {
            size: size_of::<iommu_ioas_copy>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            dst_ioas_id: dst,
            src_ioas_id: src,
            length,
            dst_iova,
            src_iova,
        };
        ioctl_ptr(&self.file, IOMMU_IOAS_COPY, &mut c).map_err(ctx("IOMMU_IOAS_COPY"))?;
        Ok(())
    }

    /// IOMMU_IOAS_MAP_FILE of `[start, start + length)` of `file`, readable and writeable, at
    /// the fixed `iova`.
    pub fn map_file(
        &self,
        ioas: u32,
        file: &impl AsRawFd,
        start: u64,
        length: u64,
        iova: u64,
    ) -> Res<()> {
        let mut m = iommu_ioas_map_file {
            size: size_of::<iommu_ioas_map_file>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            fd: file.as_raw_fd(),
            start,
            length,
            iova,
        };
        ioctl_ptr(&self.file, IOMMU_IOAS_MAP_FILE, &mut m).map_err(ctx("IOMMU_IOAS_MAP_FILE"))?;
        Ok(())
    }

    /// IOMMU_GET_HW_INFO of `dev_id` into `data` (its whole length offered); returns the header
    /// as answered.
    pub fn hw_info(&self, dev_id: u32, data: &mut [u8]) -> Res<iommu_hw_info> {
        let mut h = iommu_hw_info {
            size: size_of::<iommu_hw_info>() as u32,
            dev_id,
            data_len: data.len() as u32,
            data_uptr: data.as_mut_ptr() as u64,
            ..Default::default()
        };
        ioctl_ptr(&self.file, IOMMU_GET_HW_INFO, &mut h).map_err(ctx("IOMMU_GET_HW_INFO"))?;
        Ok(h)
    }

    /// A paging HWPT for `dev_id` on the IOAS `ioas`.
    pub fn hwpt_alloc(&self, dev_id: u32, ioas: u32) -> Res<u32> {
        let mut h = iommu_hwpt_alloc {
            size: size_of::<iommu_hwpt_alloc>() as u32,
            dev_id,
            pt_id: ioas,
            data_type: IOMMU_HWPT_DATA_NONE,
            ..Default::default()
        };
        ioctl_ptr(&self.file, IOMMU_HWPT_ALLOC, &mut h).map_err(ctx("IOMMU_HWPT_ALLOC"))?;
        Ok(h.out_hwpt_id)
    }
}

/// A device node of the daemon, opened and bound to an iommufd.
pub struct Bound {
    pub file: File,
    pub name: String,
    pub dev_id: u32,
}

impl Bound {
    /// Opens `path` O_RDWR and binds it to `fd` (VFIO_DEVICE_BIND_IOMMUFD). With `retry`, EBUSY
    /// is retried until the deadline (a previous owner's release may still be under way).
    pub fn open(path: &str, fd: &Iommufd, retry: Option<Duration>) -> Res<Self> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let start = Instant::now();
        loop {
            let file = open_rw(path)?;
            let mut b = vfio_device_bind_iommufd {
                argsz: size_of::<vfio_device_bind_iommufd>() as u32,
                iommufd: fd.file.as_raw_fd(),
                ..Default::default()
            };
            match ioctl_ptr(&file, VFIO_DEVICE_BIND_IOMMUFD, &mut b) {
                Ok(_) => {
                    return Ok(Self {
                        file,
                        name: name.to_string(),
                        dev_id: b.out_devid,
                    })
                }
                Err(Errno::EBUSY) if retry.is_some_and(|d| start.elapsed() < d) => {
                    drop(file);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("VFIO_DEVICE_BIND_IOMMUFD {name}: {e}")),
            }
        }
    }

    /// VFIO_DEVICE_ATTACH_IOMMUFD_PT to an IOAS or HWPT; returns the HWPT in use.
    pub fn attach(&self, pt_id: u32) -> Res<u32> {
        let mut a = vfio_device_attach_iommufd_pt {
            argsz: size_of::<vfio_device_attach_iommufd_pt>() as u32,
            pt_id,
            ..Default::default()
        };
        ioctl_ptr(&self.file, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a).map_err(|e| {
            format!(
                "VFIO_DEVICE_ATTACH_IOMMUFD_PT {} to {pt_id}: {e}",
                self.name
            )
        })?;
        Ok(a.pt_id)
    }

    /// The device's regions (GET_INFO, GET_REGION_INFO) on a dup of the node's fd (the same open
    /// file), edu checked and bus mastering on. QEMU asks for them after attaching, too.
    pub fn edu(&self) -> Res<Device> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| format!("dup {}: {e}", self.name))?;
        let dev = Device::new(file, &self.name)?;
        dev.enable_edu()?;
        Ok(dev)
    }
}
