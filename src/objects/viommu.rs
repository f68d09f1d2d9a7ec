//! vIOMMU objects (IOMMU_VIOMMU_ALLOC), their virtual devices (IOMMU_VDEVICE_ALLOC) and the
//! nested HWPTs allocated on a vIOMMU.
//!
//! A vIOMMU sits on a nest-parent paging HWPT (which gains a user); each vDEVICE ties one device
//! to a virtual ID of one vIOMMU (which gains a user). The driver's part is a [`ViommuDriver`],
//! as a nested HWPT's is a [`NestedDomain`]. Destroying a device destroys its vDEVICE
//! too and leaves the vDEVICE's ID as a tombstone.
//!
//! A hardware queue (IOMMU_HW_QUEUE_ALLOC) reads guest memory at an IOVA of the vIOMMU's IOAS:
//! an internal access pins that range and locks it, so IOAS_UNMAP of it is EBUSY while the queue
//! lives.

use super::{
    Access, AccessOps, Context, Device, Extension, HwptPaging, NestedDomain, ObjectUser,
    ViommuDriver,
};
use crate::iopt::PAGE_SIZE;
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A vIOMMU instance.
pub struct Viommu {
    pub viommu_type: u32,
    /// The IOMMU instance it was made on (see [`super::DeviceBackend::iommu_instance`]).
    pub iommu: Option<u64>,
    pub hwpt_id: u32,
    pub hwpt: Arc<HwptPaging>,
    /// The vIOMMU is a user of its nest parent.
    hwpt_user: ObjectUser,
    /// virt_id → vDEVICE object id.
    pub vdevs: Mutex<BTreeMap<u64, u32>>,
    /// Hardware queue index → HW_QUEUE object id.
    pub hw_queues: Mutex<BTreeMap<u32, u32>>,
    /// The driver's vIOMMU.
    pub driver: Box<dyn ViommuDriver>,
    /// vEVENT queues by type (at most one each).
    pub veventqs: Mutex<BTreeMap<u32, std::sync::Weak<super::veventq::VeventQueue>>>,
}

impl Viommu {
    /// Creates the vIOMMU on the paging HWPT `hwpt_id`, which gains a user.
    pub fn alloc(
        ctx: &Context,
        viommu_type: u32,
        iommu: Option<u64>,
        hwpt_id: u32,
        hwpt: Arc<HwptPaging>,
        driver: Box<dyn ViommuDriver>,
    ) -> Result<(u32, Arc<Viommu>), Errno> {
        let v = Arc::new(Viommu {
            viommu_type,
            iommu,
            hwpt_id,
            hwpt,
            hwpt_user: ctx.take_user(hwpt_id)?,
            vdevs: Mutex::new(BTreeMap::new()),
            hw_queues: Mutex::new(BTreeMap::new()),
            driver,
            veventqs: Mutex::new(BTreeMap::new()),
        });
        let id = ctx.insert(super::Object::from(v.clone()))?;
        Ok((id, v))
    }

    /// Whether `device` sits behind the IOMMU instance the vIOMMU was made on.
    pub fn serves(&self, device: &Device) -> bool {
        self.iommu.is_some() && device.backend.iommu_instance() == self.iommu
    }
}

impl Extension for Viommu {
    fn type_name(&self) -> &'static str {
        "viommu"
    }

    fn destroy(&self, _ctx: &Context) {
        self.hwpt_user.release();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A virtual device: `dev_id` seen as `virt_id` by the guest behind vIOMMU `viommu_id`.
pub struct Vdevice {
    pub viommu_id: u32,
    pub viommu: Arc<Viommu>,
    /// The vDEVICE is a user of its vIOMMU.
    viommu_user: ObjectUser,
    pub dev_id: u32,
    pub device: Arc<Device>,
    pub virt_id: u64,
}

impl Vdevice {
    /// Creates the vDEVICE; EEXIST when `virt_id` is taken on the vIOMMU or `dev_id` already has
    /// a vDEVICE. The vIOMMU gains a user.
    pub fn alloc(
        ctx: &Context,
        viommu_id: u32,
        viommu: Arc<Viommu>,
        dev_id: u32,
        virt_id: u64,
    ) -> Result<(u32, Arc<Vdevice>), Errno> {
        let taken = ctx
            .objects_of::<Vdevice>()
            .into_iter()
            .any(|(_, v)| v.dev_id == dev_id);
        if taken {
            return Err(Errno::EEXIST);
        }
        let device = ctx.get_device(dev_id)?;
        let mut vdevs = viommu.vdevs.lock().unwrap();
        if vdevs.contains_key(&virt_id) {
            return Err(Errno::EEXIST);
        }
        let v = Arc::new(Vdevice {
            viommu_id,
            viommu: viommu.clone(),
            viommu_user: ctx.take_user(viommu_id)?,
            dev_id,
            device,
            virt_id,
        });
        let id = ctx.insert(super::Object::from(v.clone()))?;
        vdevs.insert(virt_id, id);
        Ok((id, v))
    }
}

impl Extension for Vdevice {
    fn type_name(&self) -> &'static str {
        "vdevice"
    }

    fn destroy(&self, _ctx: &Context) {
        self.viommu.vdevs.lock().unwrap().remove(&self.virt_id);
        self.viommu_user.release();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Device destroy hook: destroys the vDEVICE of `device`, if any, leaving its ID as a tombstone.
/// Whether `device` has a vDEVICE on `viommu`.
pub fn has_vdevice(ctx: &Context, viommu: &Viommu, device: &Device) -> bool {
    let ids: Vec<u32> = viommu.vdevs.lock().unwrap().values().copied().collect();
    ids.into_iter().any(|id| {
        ctx.get_as::<Vdevice>(id)
            .is_ok_and(|v| std::ptr::eq(Arc::as_ptr(&v.device), device))
    })
}

/// The vDEVICE `device` has on any vIOMMU.
pub fn vdevice_of(ctx: &Context, device: &Device) -> Option<Arc<Vdevice>> {
    ctx.objects_of::<Vdevice>()
        .into_iter()
        .map(|(_, v)| v)
        .find(|v| std::ptr::eq(Arc::as_ptr(&v.device), device))
}

pub fn destroy_vdevices_of(ctx: &Context, device: &Device) {
    for (id, v) in ctx.objects_of::<Vdevice>() {
        if std::ptr::eq(Arc::as_ptr(&v.device), device) {
            if let Err(err) = ctx.destroy_tombstone(id) {
                crate::warn_limited!(ctx = ctx.id, id, %err, "vDEVICE of a destroyed device kept");
            }
        }
    }
}

/// The internal access of a hardware queue: its pins are locked, so it never has to release them.
struct QueueAccessOps;

impl AccessOps for QueueAccessOps {
    fn unmap(&self, _access: &Access, _iova: u64, _length: u64) {}
}

/// A hardware queue of a vIOMMU, reading guest memory at `[base_addr, base_addr + length)` of
/// the vIOMMU's IOAS.
pub struct HwQueue {
    pub viommu_id: u32,
    pub viommu: Arc<Viommu>,
    /// The queue is a user of its vIOMMU.
    viommu_user: ObjectUser,
    pub queue_type: u32,
    pub index: u32,
    pub base_addr: u64,
    pub length: u64,
    /// The queue of the index below, which cannot be destroyed before this one.
    pub prev: Option<u32>,
    /// The queue is a user of `prev`.
    prev_user: Option<ObjectUser>,
    access: Arc<Access>,
    /// The internal access's own ID, held by the queue: the kernel gives it one right after the
    /// queue's, so IDs handed out later are the kernel's too (IOMMU_DESTROY of it is EBUSY).
    access_id: Mutex<Option<(u32, ObjectUser)>>,
    /// The queue's own ID, once inserted: its destroy takes its index out of the vIOMMU only
    /// while the index is still its own.
    own_id: std::sync::OnceLock<u32>,
    /// The page-aligned pinned range.
    pin: (u64, u64),
}

/// The page-aligned range `[iova, iova + length)` covers: ERANGE if rounding overflows.
fn queue_pin_range(iova: u64, length: u64) -> Result<(u64, u64), Errno> {
    let aligned = iova & !(PAGE_SIZE - 1);
    let len = (iova - aligned)
        .checked_add(length)
        .and_then(|l| l.checked_add(PAGE_SIZE - 1))
        .ok_or(Errno::ERANGE)?;
    Ok((aligned, len & !(PAGE_SIZE - 1)))
}

impl HwQueue {
    /// Pins and locks the queue's memory through an internal access on the vIOMMU's IOAS, then
    /// asks `init` (the driver; given the queue slots and the physical address of `base_addr`)
    /// for the queue this one depends on. The vIOMMU and that queue gain a user.
    #[allow(clippy::too_many_arguments)]
    pub fn alloc(
        ctx: &Context,
        viommu_id: u32,
        viommu: Arc<Viommu>,
        queue_type: u32,
        index: u32,
        base_addr: u64,
        length: u64,
        init: impl FnOnce(&BTreeMap<u32, u32>, u64) -> Result<Option<u32>, Errno>,
    ) -> Result<(u32, Arc<HwQueue>), Errno> {
        let pin = queue_pin_range(base_addr, length)?;
        let access = Access::new(Arc::new(QueueAccessOps), true);
        access.attach(ctx, viommu.hwpt.ioas_id)?;
        let undo_attach = |e: Errno| {
            access.detach();
            e
        };
        let ioas = access.ioas().ok_or(Errno::ENOENT).map_err(undo_attach)?;
        // The pagetable lock must be gone before an undo takes it again.
        let pinned = ioas.iopt().access_pin_locked(pin.0, pin.1, false, true);
        let paddrs = pinned.map_err(undo_attach)?;
        let undo = |e: Errno| {
            ioas.iopt().access_unpin_locked(pin.0, pin.1, true);
            access.detach();
            e
        };
        // The hardware reads the queue by physical address: its pages must be contiguous (where
        // the addresses are known).
        let known = paddrs.iter().all(|&p| p != 0);
        if known && paddrs.windows(2).any(|w| w[1] != w[0] + PAGE_SIZE) {
            return Err(undo(Errno::EFAULT));
        }
        let base_pa = paddrs.first().map_or(0, |p| p + (base_addr - pin.0));
        let mut queues = viommu.hw_queues.lock().unwrap();
        let prev = init(&queues, base_pa).map_err(undo)?;
        let viommu_user = ctx.take_user(viommu_id).map_err(undo)?;
        let prev_user = prev.map(|p| ctx.take_user(p)).transpose().map_err(undo)?;
        let q = Arc::new(HwQueue {
            viommu_id,
            viommu: viommu.clone(),
            viommu_user,
            prev_user,
            queue_type,
            index,
            base_addr,
            length,
            prev,
            access: access.clone(),
            access_id: Mutex::new(None),
            own_id: std::sync::OnceLock::new(),
            pin,
        });
        let id = ctx.insert(super::Object::from(q.clone())).map_err(undo)?;
        let _ = q.own_id.set(id);
        match ctx.insert_held(super::Object::Access(access)) {
            Ok(held) => *q.access_id.lock().unwrap() = Some(held),
            Err(e) => {
                // The queue's destroy undoes the pin and the users (and takes the queues lock).
                drop(queues);
                let _ = ctx.destroy(id);
                return Err(e);
            }
        }
        queues.insert(index, id);
        Ok((id, q))
    }
}

impl Extension for HwQueue {
    fn type_name(&self) -> &'static str {
        "hw_queue"
    }

    fn destroy(&self, ctx: &Context) {
        {
            let mut queues = self.viommu.hw_queues.lock().unwrap();
            if self
                .own_id
                .get()
                .is_some_and(|id| queues.get(&self.index) == Some(id))
            {
                queues.remove(&self.index);
            }
        }
        if let Some(prev) = &self.prev_user {
            prev.release();
        }
        if let Some(ioas) = self.access.ioas() {
            ioas.iopt()
                .access_unpin_locked(self.pin.0, self.pin.1, true);
        }
        self.access.detach();
        let access_id = self.access_id.lock().unwrap().take();
        if let Some((id, user)) = access_id {
            drop(user);
            let _ = ctx.destroy(id);
        }
        self.viommu_user.release();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A nested HWPT allocated on a vIOMMU (its stage-2 is the vIOMMU's HWPT); the vIOMMU gains a
/// user.
pub struct ViommuNested {
    pub viommu_id: u32,
    pub viommu: Arc<Viommu>,
    /// The nested HWPT is a user of its vIOMMU.
    viommu_user: ObjectUser,
    /// The driver's stage-1 domain.
    pub domain: Box<dyn NestedDomain>,
    pub flags: u32,
    /// Where I/O page faults of devices attached here go.
    pub fault: super::fault::FaultLink,
}

impl ViommuNested {
    pub fn alloc(
        ctx: &Context,
        viommu_id: u32,
        viommu: Arc<Viommu>,
        domain: Box<dyn NestedDomain>,
        flags: u32,
    ) -> Result<(u32, Arc<ViommuNested>), Errno> {
        let h = Arc::new(ViommuNested {
            viommu_id,
            viommu,
            viommu_user: ctx.take_user(viommu_id)?,
            domain,
            flags,
            fault: Default::default(),
        });
        let id = ctx.insert(super::Object::from(h.clone()))?;
        Ok((id, h))
    }
}

impl Extension for ViommuNested {
    fn type_name(&self) -> &'static str {
        "hwpt_nested"
    }

    fn destroy(&self, _ctx: &Context) {
        self.fault.release();
        self.viommu_user.release();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
