#![allow(dead_code)]
//! VFIO container ioctls against a fake iommufd context: the flows a type1 user (DPDK, QEMU) goes
//! through, type1 v1 splitting, the capability chain protocol and the errno of bad input.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use nix::errno::Errno;
use uiommufd_compat_vfio::{vfio_ioctl, CompatHost};
use uiommufd_uapi::vfio::*;
use zerocopy::{FromBytes, IntoBytes};

pub const BASE: u64 = 0x7f00_0000_0000;
pub const MEM_SIZE: usize = 0x1_0000;
pub const IOAS: u32 = 7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Map {
        iova: u64,
        va: u64,
        len: u64,
        read: bool,
        write: bool,
    },
    Unmap {
        iova: u64,
        len: u64,
    },
    UnmapAll,
    Cut(Vec<u64>),
    DisableLargePages,
}

/// A context with one optional compat IOAS whose areas are a plain interval map.
pub struct Fake {
    pub mem: RefCell<Vec<u8>>,
    pub ioas: Cell<Option<u32>>,
    /// first IOVA → last IOVA
    pub areas: RefCell<BTreeMap<u64, u64>>,
    pub large_pages_disabled: Cell<bool>,
    pub disable_error: Cell<Option<Errno>>,
    pub alignment: Cell<u64>,
    pub pgsize_bitmap: Cell<u64>,
    pub usable: RefCell<Vec<(u64, u64)>>,
    pub coherent: Cell<bool>,
    /// Makes every write to caller memory fault (reads still work).
    pub write_fault: Cell<bool>,
    pub calls: RefCell<Vec<Call>>,
}

impl Fake {
    pub fn new() -> Self {
        Fake {
            mem: RefCell::new(vec![0xa5; MEM_SIZE]),
            ioas: Cell::new(Some(IOAS)),
            areas: RefCell::new(BTreeMap::new()),
            large_pages_disabled: Cell::new(false),
            disable_error: Cell::new(None),
            alignment: Cell::new(1),
            pgsize_bitmap: Cell::new(u64::MAX),
            usable: RefCell::new(vec![(0, 0xfedf_ffff), (0xfef0_0000, u64::MAX)]),
            coherent: Cell::new(true),
            write_fault: Cell::new(false),
            calls: RefCell::new(Vec::new()),
        }
    }

    pub fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
        let off = addr.checked_sub(BASE).ok_or(Errno::EFAULT)? as usize;
        let end = off.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > MEM_SIZE {
            return Err(Errno::EFAULT);
        }
        Ok(off..end)
    }

    pub fn put<T: IntoBytes + zerocopy::Immutable>(&self, off: u64, v: &T) -> u64 {
        let bytes = v.as_bytes();
        let r = self.range(BASE + off, bytes.len()).unwrap();
        self.mem.borrow_mut()[r].copy_from_slice(bytes);
        BASE + off
    }

    pub fn get<T: FromBytes>(&self, off: u64) -> T {
        let r = self.range(BASE + off, size_of::<T>()).unwrap();
        T::read_from_bytes(&self.mem.borrow()[r]).unwrap()
    }

    pub fn bytes(&self, off: u64, len: usize) -> Vec<u8> {
        self.mem.borrow()[off as usize..off as usize + len].to_vec()
    }

    pub fn areas(&self) -> Vec<(u64, u64)> {
        self.areas.borrow().iter().map(|(&a, &b)| (a, b)).collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }

    pub fn check(&self, ioas: u32) {
        assert_eq!(
            Some(ioas),
            self.ioas.get(),
            "host called with a foreign IOAS"
        );
    }

    pub fn unmap_range(&self, start: u64, last: u64) -> Result<u64, (Errno, u64)> {
        let mut unmapped = 0;
        let hits: Vec<(u64, u64)> = self
            .areas
            .borrow()
            .iter()
            .filter(|(&a, &l)| a <= last && l >= start)
            .map(|(&a, &l)| (a, l))
            .collect();
        for (a, l) in hits {
            if a < start || l > last {
                return Err((Errno::ENOENT, unmapped));
            }
            self.areas.borrow_mut().remove(&a);
            unmapped += l - a + 1;
        }
        Ok(unmapped)
    }
}

impl CompatHost for Fake {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.mem.borrow()[r]);
        Ok(())
    }
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        if self.write_fault.get() {
            return Err(Errno::EFAULT);
        }
        let r = self.range(addr, buf.len())?;
        self.mem.borrow_mut()[r].copy_from_slice(buf);
        Ok(())
    }
    fn compat_ioas(&self) -> Result<u32, Errno> {
        self.ioas.get().ok_or(Errno::ENODEV)
    }
    fn map(
        &self,
        ioas: u32,
        iova: u64,
        va: u64,
        len: u64,
        read: bool,
        write: bool,
    ) -> Result<(), Errno> {
        self.check(ioas);
        self.calls.borrow_mut().push(Call::Map {
            iova,
            va,
            len,
            read,
            write,
        });
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
        if self.areas().iter().any(|&(a, l)| a <= last && l >= iova) {
            return Err(Errno::EEXIST);
        }
        self.areas.borrow_mut().insert(iova, last);
        Ok(())
    }
    fn unmap(&self, ioas: u32, iova: u64, len: u64) -> Result<u64, (Errno, u64)> {
        self.check(ioas);
        self.calls.borrow_mut().push(Call::Unmap { iova, len });
        if len == 0 {
            return Err((Errno::EINVAL, 0));
        }
        let last = iova.checked_add(len - 1).ok_or((Errno::EOVERFLOW, 0))?;
        self.unmap_range(iova, last)
    }
    fn unmap_all(&self, ioas: u32) -> Result<u64, (Errno, u64)> {
        self.check(ioas);
        self.calls.borrow_mut().push(Call::UnmapAll);
        self.unmap_range(0, u64::MAX)
    }
    fn cut(&self, ioas: u32, iovas: &[u64]) -> Result<(), Errno> {
        self.check(ioas);
        self.calls.borrow_mut().push(Call::Cut(iovas.to_vec()));
        for &iova in iovas {
            let hit = self
                .areas()
                .into_iter()
                .find(|&(a, l)| a <= iova && iova <= l);
            if let Some((a, l)) = hit {
                if iova != l {
                    let mut areas = self.areas.borrow_mut();
                    areas.insert(a, iova);
                    areas.insert(iova + 1, l);
                }
            }
        }
        Ok(())
    }
    fn large_pages_disabled(&self, ioas: u32) -> bool {
        self.check(ioas);
        self.large_pages_disabled.get()
    }
    fn disable_large_pages(&self, ioas: u32) -> Result<(), Errno> {
        self.check(ioas);
        self.calls.borrow_mut().push(Call::DisableLargePages);
        if let Some(e) = self.disable_error.get() {
            return Err(e);
        }
        self.large_pages_disabled.set(true);
        self.alignment.set(self.alignment.get().max(4096));
        Ok(())
    }
    fn iova_alignment(&self, ioas: u32) -> u64 {
        self.check(ioas);
        self.alignment.get()
    }
    fn domains_pgsize_bitmap(&self, ioas: u32) -> u64 {
        self.check(ioas);
        self.pgsize_bitmap.get()
    }
    fn usable_ranges(&self, ioas: u32) -> Vec<(u64, u64)> {
        self.check(ioas);
        self.usable.borrow().clone()
    }
    fn enforces_cache_coherency(&self, ioas: u32) -> bool {
        self.check(ioas);
        self.coherent.get()
    }
    fn caller_has_sys_rawio(&self) -> bool {
        true
    }
}

pub fn ioctl(h: &Fake, cmd: u32, arg: u64) -> Result<i64, Errno> {
    vfio_ioctl(h, cmd, arg).expect("a container ioctl")
}

pub fn map_arg(flags: u32, vaddr: u64, iova: u64, size: u64) -> vfio_iommu_type1_dma_map {
    vfio_iommu_type1_dma_map {
        argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags,
        vaddr,
        iova,
        size,
    }
}

pub fn unmap_arg(flags: u32, iova: u64, size: u64) -> vfio_iommu_type1_dma_unmap {
    vfio_iommu_type1_dma_unmap {
        argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
        flags,
        iova,
        size,
    }
}

pub const RW: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
pub const INFO_SIZE: u64 = size_of::<vfio_iommu_type1_info>() as u64;
pub const DMA_AVAIL_OFF: u64 = INFO_SIZE; // 24
pub const IOVA_CAP_OFF: u64 = DMA_AVAIL_OFF + 16; // dma_avail is 12 bytes, padded to 16

pub fn info_arg(argsz: u32) -> vfio_iommu_type1_info {
    vfio_iommu_type1_info {
        argsz,
        flags: 0xdead,
        iova_pgsizes: 0xbeef,
        cap_offset: 0x77,
        pad: 0x66,
    }
}

/// Needed argsz for `n` usable ranges.
pub fn full_size(n: u64) -> u64 {
    IOVA_CAP_OFF + 16 + 16 * n
}
