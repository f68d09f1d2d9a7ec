//! The dmacopy device behind a VFIO cdev node: binding to an iommufd context, attaching to a page
//! table, and the vfio-pci device API (info, regions, interrupts, reset) over the register model.
//!
//! State is per device and shared by every open of its node; like the kernel's cdev path, only one
//! open file can be bound at a time, and every other ioctl, read or write needs the binding
//! (EINVAL before it). The binding holds the context (a `ContextHold`), as the kernel holds a
//! reference on the iommufd file: the context stays open until the device is unbound (its file
//! closed). The caller's iommufd fd is fetched only to find the context and closed right away: a
//! file of the daemon's own node held by the daemon would make its death wait on itself.
//!
//! Locks: `binding` is taken before `access`; `hw` is never held while calling into the context.

use super::cdev::CdevBinding;
use super::config::{Config, BAR0_SIZE, CONFIG_SIZE};
pub use super::context::{ContextHold, ContextResolver};
use super::domain::{SoftDomain, SOFT_APERTURE, SOFT_PGSIZE_BITMAP};
use super::irq::{self, Irqs};
use super::regs::{Dma, Regs, REGS_SIZE};
use crate::backends::Domain;
use crate::caller::CallerMemory;
use crate::objects::{Access, AccessOps, Context, Device, DeviceBackend, Ioas, Object};
use crate::service::OpenFile;
use nix::errno::Errno;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use uiommufd_uapi::iommufd::{IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HWPT_ALLOC_PASID};
use uiommufd_uapi::vfio::*;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Region offsets in the device file, as vfio-pci: the index in bits 40 and up.
pub const REGION_SHIFT: u32 = 40;

pub fn region_offset(index: u32) -> u64 {
    u64::from(index) << REGION_SHIFT
}

/// Register and interrupt state of the device.
#[derive(Default)]
struct Hw {
    regs: Regs,
    config: Config,
    irqs: Irqs,
}

impl Hw {
    fn intx_asserted(&self) -> bool {
        self.regs.status & super::regs::STATUS_DONE != 0
    }

    fn reset(&mut self) {
        self.regs = Regs::default();
        self.config = Config::new();
    }
}

/// One dmacopy device.
pub struct DmaCopy {
    name: String,
    cdev: CdevBinding,
    hw: Mutex<Hw>,
    access: Mutex<Option<Arc<Access>>>,
    next_file: AtomicU64,
}

impl DmaCopy {
    pub fn new(name: &str, resolver: Arc<dyn ContextResolver>) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            cdev: CdevBinding::new(name, resolver),
            hw: Mutex::new(Hw::default()),
            access: Mutex::new(None),
            next_file: AtomicU64::new(1),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new open file of the device node.
    pub fn open(self: &Arc<Self>) -> Arc<dyn OpenFile> {
        Arc::new(DmaCopyFile {
            dev: self.clone(),
            id: self.next_file.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The context id and device object id of the current binding.
    pub fn bound_to(&self) -> Option<(u64, u32)> {
        self.cdev.bound_to()
    }

    fn bound(&self, file: u64) -> Result<(Arc<Context>, Arc<Device>), Errno> {
        self.cdev.bound(file)
    }

    /// The device's page table changed: move the access along.
    fn set_ioas(&self, ctx: &Context, ioas: Option<Arc<Ioas>>) {
        let old = self.access.lock().unwrap().take();
        if let Some(old) = old {
            old.detach();
        }
        let Some(ioas) = ioas else {
            return;
        };
        let Some(id) = ctx.objects_of_type("ioas").into_iter().find_map(|(id, o)| {
            matches!(&o, Object::Ioas(i) if Arc::ptr_eq(i, &ioas)).then_some(id)
        }) else {
            crate::warn_limited!(device = self.name, "attached IOAS not found in its context");
            return;
        };
        let access = Access::new(Arc::new(NoPins), false);
        match access.attach(ctx, id) {
            Ok(()) => *self.access.lock().unwrap() = Some(access),
            Err(e) => crate::warn_limited!(device = self.name, %e, "cannot attach the DMA access"),
        }
    }

    fn bind(self: &Arc<Self>, file: u64, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        let backend = |ctx: &Arc<Context>| -> Result<Arc<dyn DeviceBackend>, Errno> {
            Ok(Arc::new(Port {
                dev: Arc::downgrade(self),
                ctx: Arc::downgrade(ctx),
                name: self.name.clone(),
            }))
        };
        self.cdev
            .bind(file, arg, mem, backend, || self.hw.lock().unwrap().reset())
    }

    /// Unbinds if `file` holds the binding (its release).
    fn unbind(&self, file: u64) {
        self.cdev.unbind(
            file,
            || {},
            || {
                let mut hw = self.hw.lock().unwrap();
                hw.irqs.clear();
                hw.reset();
            },
        );
    }
}

/// The emulated device as the objects layer sees it.
struct Port {
    dev: Weak<DmaCopy>,
    ctx: Weak<Context>,
    name: String,
}

impl DeviceBackend for Port {
    fn alloc_domain(&self, flags: u32) -> Result<Arc<dyn Domain>, Errno> {
        // No dirty tracking, no fault reporting.
        if flags & !(IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_PASID) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(Arc::new(SoftDomain::new()))
    }

    fn domain_compatible(&self, domain: &Arc<dyn Domain>) -> bool {
        domain.pgsize_bitmap() == SOFT_PGSIZE_BITMAP
            && domain.aperture() == SOFT_APERTURE
            && domain.backing() == crate::backends::Backing::Frames
    }

    /// Only page tables of this driver's kind (EINVAL for another driver's domain, as the
    /// kernel).
    fn attached(&self, ioas: Option<Arc<Ioas>>) {
        if let (Some(dev), Some(ctx)) = (self.dev.upgrade(), self.ctx.upgrade()) {
            dev.set_ioas(&ctx, ioas);
        }
    }

    fn name(&self) -> String {
        format!("dmacopy:{}", self.name)
    }
}

/// The device never pins: every byte goes through `Access::rw`.
struct NoPins;

impl AccessOps for NoPins {
    fn unmap(&self, _access: &Access, _iova: u64, _length: u64) {}
}

/// DMA through an access.
struct AccessDma<'a>(&'a Access);

impl Dma for AccessDma<'_> {
    fn check(&self, iova: u64, len: u64, write: bool) -> bool {
        let Some(ioas) = self.0.ioas() else {
            return false;
        };
        let Some(last) = iova.checked_add(len - 1) else {
            return false;
        };
        let iopt = ioas.iopt_read();
        iopt.contiguous_keys(iova, last).is_ok_and(|keys| {
            keys.iter().all(|&k| {
                iopt.area(k).is_some_and(|a| {
                    !a.prevent_access && if write { a.prot.write } else { a.prot.read }
                })
            })
        })
    }

    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.0.rw(iova, buf, false)
    }

    fn write(&self, iova: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.0.rw(iova, buf, true)
    }
}

/// Reads the first `minsz` bytes of a VFIO struct (the fields vfio-pci reads); EINVAL when its
/// argsz is below `minsz`.
fn read_min<T: FromBytes + IntoBytes>(
    mem: &dyn CallerMemory,
    arg: u64,
    minsz: usize,
) -> Result<T, Errno> {
    let mut v = T::new_zeroed();
    let bytes = v.as_mut_bytes();
    mem.read(arg, &mut bytes[..minsz])?;
    let argsz = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if (argsz as usize) < minsz {
        return Err(Errno::EINVAL);
    }
    Ok(v)
}

fn write_min<T: IntoBytes + Immutable>(
    mem: &dyn CallerMemory,
    arg: u64,
    v: &T,
    n: usize,
) -> Result<(), Errno> {
    mem.write(arg, &v.as_bytes()[..n])
}

/// One open of the device node.
struct DmaCopyFile {
    dev: Arc<DmaCopy>,
    id: u64,
}

impl DmaCopyFile {
    fn get_info(&self, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        const MINSZ: usize = 16;
        let mut info: vfio_device_info = read_min(mem, arg, MINSZ)?;
        info.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
        info.num_regions = VFIO_PCI_NUM_REGIONS;
        info.num_irqs = VFIO_PCI_NUM_IRQS;
        info.cap_offset = 0;
        let n = (info.argsz as usize).min(std::mem::size_of::<vfio_device_info>());
        write_min(mem, arg, &info, n)?;
        Ok(0)
    }

    fn get_region_info(&self, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        const MINSZ: usize = 32;
        let mut info: vfio_region_info = read_min(mem, arg, MINSZ)?;
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let (size, flags) = match info.index {
            VFIO_PCI_BAR0_REGION_INDEX => (u64::from(BAR0_SIZE), rw),
            VFIO_PCI_CONFIG_REGION_INDEX => (CONFIG_SIZE as u64, rw),
            // BARs 1-5 and the expansion ROM are not implemented.
            1..=5 | VFIO_PCI_ROM_REGION_INDEX => (0, 0),
            // Not a VGA device.
            _ => return Err(Errno::EINVAL),
        };
        info.offset = region_offset(info.index);
        info.size = size;
        info.flags = flags;
        info.cap_offset = 0;
        write_min(mem, arg, &info, MINSZ)?;
        Ok(0)
    }

    fn get_irq_info(&self, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        const MINSZ: usize = 16;
        let mut info: vfio_irq_info = read_min(mem, arg, MINSZ)?;
        if info.index >= VFIO_PCI_NUM_IRQS {
            return Err(Errno::EINVAL);
        }
        info.flags = irq::info_flags(info.index).ok_or(Errno::EINVAL)?;
        info.count = irq::count(info.index);
        write_min(mem, arg, &info, MINSZ)?;
        Ok(0)
    }

    fn set_irqs(&self, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        const MINSZ: usize = 20;
        let hdr: vfio_irq_set = read_min(mem, arg, MINSZ)?;
        let max = irq::count(hdr.index);
        let valid = VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if hdr.index >= VFIO_PCI_NUM_IRQS
            || hdr.count >= u32::MAX - hdr.start
            || hdr.flags & !valid != 0
            || hdr.start >= max
            || hdr.start + hdr.count > max
        {
            return Err(Errno::EINVAL);
        }
        let item = match hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE => 0,
            VFIO_IRQ_SET_DATA_BOOL => 1,
            VFIO_IRQ_SET_DATA_EVENTFD => 4,
            _ => return Err(Errno::EINVAL),
        };
        let data_size = item * hdr.count as usize;
        if item > 0 && (hdr.argsz as usize - MINSZ) < data_size {
            return Err(Errno::EINVAL);
        }
        let mut raw = vec![0u8; data_size];
        mem.read(arg + MINSZ as u64, &mut raw)?;
        let data = match item {
            0 => irq::Data::None,
            1 => irq::Data::Bool(raw),
            _ => {
                let mut fds = Vec::new();
                for c in raw.chunks_exact(4) {
                    let fd = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                    fds.push(match fd {
                        -1 => None,
                        fd if fd < 0 => return Err(Errno::EINVAL),
                        fd => {
                            let f = mem.get_fd(fd)?;
                            irq::check_eventfd(&f)?;
                            Some(f)
                        }
                    });
                }
                irq::Data::Eventfd(fds)
            }
        };
        self.dev.bound(self.id)?;
        let mut hw = self.dev.hw.lock().unwrap();
        let asserted = hw.intx_asserted();
        hw.irqs
            .set(hdr.flags, hdr.index, hdr.start, hdr.count, data, asserted)?;
        Ok(0)
    }

    /// Splits a file offset into (region index, offset inside it, bytes available).
    fn region(&self, offset: u64, len: usize) -> Result<(u32, usize, usize), Errno> {
        let index = offset >> REGION_SHIFT;
        let within = (offset & ((1u64 << REGION_SHIFT) - 1)) as usize;
        let size = match u32::try_from(index).unwrap_or(u32::MAX) {
            VFIO_PCI_BAR0_REGION_INDEX => REGS_SIZE,
            VFIO_PCI_CONFIG_REGION_INDEX => CONFIG_SIZE,
            _ => return Err(Errno::EINVAL),
        };
        if within >= size {
            return Err(Errno::EINVAL);
        }
        Ok((index as u32, within, len.min(size - within)))
    }

    fn bar_write(&self, within: usize, data: &[u8]) {
        let access = self.dev.access.lock().unwrap().clone();
        let mut hw = self.dev.hw.lock().unwrap();
        if hw.regs.write(within, data) {
            let bus_master = hw.config.bus_master();
            let dma = access.as_deref().map(AccessDma);
            hw.regs
                .run_copy(dma.as_ref().map(|d| d as &dyn Dma), bus_master);
            let intx_disabled = hw.config.intx_disabled();
            hw.irqs.raise(intx_disabled);
        }
    }
}

impl OpenFile for DmaCopyFile {
    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        if let Some(v) = self
            .dev
            .cdev
            .ioctl(self.id, cmd, arg, mem, || self.dev.bind(self.id, arg, mem))?
        {
            return Ok(v);
        }
        let r = match cmd {
            VFIO_DEVICE_GET_INFO => self.get_info(arg, mem),
            VFIO_DEVICE_GET_REGION_INFO => self.get_region_info(arg, mem),
            VFIO_DEVICE_GET_IRQ_INFO => self.get_irq_info(arg, mem),
            VFIO_DEVICE_SET_IRQS => self.set_irqs(arg, mem),
            VFIO_DEVICE_RESET => {
                self.dev.hw.lock().unwrap().reset();
                Ok(0)
            }
            // No slot or bus reset below this device.
            VFIO_DEVICE_GET_PCI_HOT_RESET_INFO | VFIO_DEVICE_PCI_HOT_RESET => Err(Errno::ENODEV),
            _ => Err(Errno::ENOTTY),
        };
        tracing::debug!(device = self.dev.name, cmd = format_args!("{cmd:#x}"), result = ?r, "device ioctl");
        r
    }

    fn read(&self, offset: u64, size: u32, _mem: &dyn CallerMemory) -> Result<Vec<u8>, Errno> {
        self.dev.bound(self.id)?;
        let (index, within, n) = self.region(offset, size as usize)?;
        let mut out = vec![0u8; n];
        let hw = self.dev.hw.lock().unwrap();
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            hw.config.read(within, &mut out, hw.intx_asserted());
        } else {
            hw.regs.read(within, &mut out);
        }
        Ok(out)
    }

    fn write(&self, offset: u64, data: &[u8], _mem: &dyn CallerMemory) -> Result<u32, Errno> {
        self.dev.bound(self.id)?;
        let (index, within, n) = self.region(offset, data.len())?;
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            self.dev.hw.lock().unwrap().config.write(within, &data[..n]);
        } else {
            self.bar_write(within, &data[..n]);
        }
        u32::try_from(n).map_err(|_| Errno::EOVERFLOW)
    }

    fn release(&self) {
        self.dev.unbind(self.id);
    }
}
