//! vIOMMU commands: IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC, the vIOMMU branches of
//! IOMMU_HWPT_ALLOC (nested HWPT on a vIOMMU), IOMMU_HWPT_INVALIDATE (vIOMMU cache
//! invalidation, in [`super::hwpt_cmds`]) and IOMMU_HW_QUEUE_ALLOC. The device's IOMMU driver
//! makes the vIOMMU ([`crate::objects::DeviceBackend::viommu_alloc`]); the vIOMMU's driver
//! ([`crate::objects::ViommuDriver`]) makes its nested domains and queues.

use super::ucmd::Ucmd;
use crate::objects::viommu::{HwQueue, Vdevice, Viommu, ViommuNested};
use crate::objects::{Device, UserData};
use nix::errno::Errno;
use std::sync::Arc;
use uiommufd_uapi::iommufd::*;

pub fn viommu_alloc(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_viommu_alloc = u.cmd();
    let ctx = u.ctx;
    if cmd.flags != 0 || cmd.r#type == IOMMU_VIOMMU_TYPE_DEFAULT {
        return Err(Errno::EOPNOTSUPP);
    }
    let device = ctx.get_device(cmd.dev_id)?;
    let driver = &device.backend;
    if !driver.viommu_type(cmd.r#type) {
        return Err(Errno::EOPNOTSUPP);
    }
    let hwpt = ctx.get_hwpt_paging(cmd.hwpt_id)?;
    if hwpt.flags & IOMMU_HWPT_ALLOC_NEST_PARENT == 0 {
        return Err(Errno::EINVAL);
    }
    if !driver.owns_domain(&hwpt.domain) {
        return Err(Errno::EINVAL);
    }
    let data = UserData::new(u.mem, cmd.r#type, cmd.data_uptr, cmd.data_len);
    let vdriver = driver.viommu_alloc(cmd.r#type, &hwpt, &data)?;
    let iommu = driver.iommu_instance();
    let (id, _) = Viommu::alloc(ctx, cmd.r#type, iommu, cmd.hwpt_id, hwpt, vdriver)?;
    cmd.out_viommu_id = id;
    if let Err(e) = u.respond(&cmd) {
        let _ = ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

pub fn vdevice_alloc(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_vdevice_alloc = u.cmd();
    let ctx = u.ctx;
    let viommu = ctx.get_as::<Viommu>(cmd.viommu_id)?;
    let device = ctx.get_device(cmd.dev_id)?;
    // The device must sit behind the vIOMMU's IOMMU instance.
    if !viommu.serves(&device) {
        return Err(Errno::EINVAL);
    }
    let (id, _) = Vdevice::alloc(ctx, cmd.viommu_id, viommu, cmd.dev_id, cmd.virt_id)?;
    cmd.out_vdevice_id = id;
    if let Err(e) = u.respond(&cmd) {
        let _ = ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

/// IOMMU_HW_QUEUE_ALLOC: a hardware queue of a vIOMMU over guest memory at an IOVA of its
/// nest-parent IOAS. The vIOMMU's driver says which queue types it has and sets the queue up.
pub fn hw_queue_alloc(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_hw_queue_alloc = u.cmd();
    let ctx = u.ctx;
    if cmd.flags != 0 || cmd.r#type == IOMMU_HW_QUEUE_TYPE_DEFAULT {
        return Err(Errno::EOPNOTSUPP);
    }
    if cmd.length == 0 {
        return Err(Errno::EINVAL);
    }
    if cmd
        .nesting_parent_iova
        .checked_add(cmd.length - 1)
        .is_none()
    {
        return Err(Errno::EOVERFLOW);
    }
    let viommu = ctx.get_as::<Viommu>(cmd.viommu_id)?;
    if !viommu.driver.hw_queue_type(cmd.r#type) {
        return Err(Errno::EOPNOTSUPP);
    }
    let index = cmd.index;
    let vdriver = viommu.clone();
    let (id, _) = HwQueue::alloc(
        ctx,
        cmd.viommu_id,
        viommu,
        cmd.r#type,
        index,
        cmd.nesting_parent_iova,
        cmd.length,
        |queues, base_pa| vdriver.driver.hw_queue_init(queues, index, base_pa),
    )?;
    cmd.out_hw_queue_id = id;
    if let Err(e) = u.respond(&cmd) {
        let _ = ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

/// IOMMU_HWPT_ALLOC with a vIOMMU as `pt_id`: a nested HWPT on the vIOMMU, for `device` (which
/// must sit behind the vIOMMU's IOMMU instance). Returns the new object's id (the caller finishes
/// the command).
pub fn alloc_nested_on_viommu(
    u: &Ucmd,
    cmd: &iommu_hwpt_alloc,
    device: &Device,
    data: &UserData,
    viommu: Arc<Viommu>,
) -> Result<u32, Errno> {
    if !viommu.serves(device) {
        return Err(Errno::EINVAL);
    }
    let flags = cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID;
    if flags & !IOMMU_HWPT_ALLOC_PASID != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let nested = viommu.driver.alloc_domain_nested(flags, data)?;
    let (id, _) = ViommuNested::alloc(u.ctx, cmd.pt_id, viommu, nested, cmd.flags)?;
    Ok(id)
}
