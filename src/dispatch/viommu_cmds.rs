//! vIOMMU commands: IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC, the vIOMMU branches of
//! IOMMU_HWPT_ALLOC (nested HWPT on a vIOMMU), IOMMU_HWPT_INVALIDATE (vIOMMU cache
//! invalidation) and IOMMU_HW_QUEUE_ALLOC. Only the mock driver (IOMMU_VIOMMU_TYPE_SELFTEST) has a
//! vIOMMU.

use super::hwpt_cmds::{copy_struct, copy_struct_zero_tail};
use super::selftest::mock_of_device;
use super::selftest::mockdev::{as_mock, MockDev};
use super::ucmd::Ucmd;
use crate::backends::mock::MockNested;
use crate::objects::viommu::{HwQueue, Vdevice, Viommu, ViommuNested};
use nix::errno::Errno;
use std::mem::size_of;
use std::sync::Arc;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;

pub fn viommu_alloc(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_viommu_alloc = u.cmd();
    let ctx = u.ctx;
    if cmd.flags != 0 || cmd.r#type == IOMMU_VIOMMU_TYPE_DEFAULT {
        return Err(Errno::EOPNOTSUPP);
    }
    ctx.get_device(cmd.dev_id)?;
    // Only the mock driver implements vIOMMUs, and only of its own type.
    if mock_of_device(ctx, cmd.dev_id).is_err() || cmd.r#type != IOMMU_VIOMMU_TYPE_SELFTEST {
        return Err(Errno::EOPNOTSUPP);
    }
    let hwpt = ctx.get_hwpt_paging(cmd.hwpt_id)?;
    if hwpt.flags & IOMMU_HWPT_ALLOC_NEST_PARENT == 0 {
        return Err(Errno::EINVAL);
    }
    if as_mock(&hwpt.domain).is_none() {
        return Err(Errno::EINVAL);
    }
    if cmd.data_len != 0 {
        // The mock's driver data asks for an mmap of the iommufd file (a loopback page), which
        // this daemon cannot offer through FUSE; refuse rather than hand out a dead offset.
        let min = size_of::<u32>(); // up to `in_data`
        let _: iommu_viommu_selftest = copy_struct(u, cmd.data_uptr, cmd.data_len, min)?;
        return Err(Errno::EOPNOTSUPP);
    }
    let (id, _) = Viommu::alloc(ctx, cmd.r#type, cmd.hwpt_id, hwpt, Box::new(()))?;
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
    let viommu = ctx.get_ext_as::<Viommu>(cmd.viommu_id)?;
    ctx.get_device(cmd.dev_id)?;
    // The device must sit behind the vIOMMU's IOMMU instance: the mock one.
    let (_, mock) = mock_of_device(ctx, cmd.dev_id).map_err(|_| Errno::EINVAL)?;
    let (id, _) = Vdevice::alloc(
        ctx,
        cmd.viommu_id,
        viommu,
        cmd.dev_id,
        cmd.virt_id,
        mock as Arc<dyn std::any::Any + Send + Sync>,
    )?;
    cmd.out_vdevice_id = id;
    if let Err(e) = u.respond(&cmd) {
        let _ = ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

/// IOMMU_HW_QUEUE_ALLOC: a hardware queue of a vIOMMU over guest memory at an IOVA of its
/// nest-parent IOAS. The mock takes IOMMU_HW_QUEUE_TYPE_SELFTEST queues, indexes below
/// IOMMU_TEST_HW_QUEUE_MAX allocated in order; each one depends on the queue of the index below.
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
    let viommu = ctx.get_ext_as::<Viommu>(cmd.viommu_id)?;
    if viommu.viommu_type != IOMMU_VIOMMU_TYPE_SELFTEST
        || cmd.r#type != IOMMU_HW_QUEUE_TYPE_SELFTEST
    {
        return Err(Errno::EOPNOTSUPP);
    }
    let index = cmd.index;
    let (id, _) = HwQueue::alloc(
        ctx,
        cmd.viommu_id,
        viommu,
        cmd.r#type,
        index,
        cmd.nesting_parent_iova,
        cmd.length,
        |queues, _base_pa| {
            if index >= IOMMU_TEST_HW_QUEUE_MAX {
                return Err(Errno::EINVAL);
            }
            if queues.contains_key(&index) {
                return Err(Errno::EEXIST);
            }
            if index == 0 {
                return Ok(None);
            }
            queues
                .get(&(index - 1))
                .copied()
                .map(Some)
                .ok_or(Errno::EIO)
        },
    )?;
    cmd.out_hw_queue_id = id;
    if let Err(e) = u.respond(&cmd) {
        let _ = ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

/// IOMMU_HWPT_ALLOC with a vIOMMU as `pt_id`: a mock nested HWPT on the vIOMMU. Returns the new
/// object's id (the caller finishes the command).
pub fn alloc_nested_on_viommu(
    u: &Ucmd,
    cmd: &iommu_hwpt_alloc,
    viommu: Arc<Viommu>,
) -> Result<u32, Errno> {
    let ctx = u.ctx;
    if mock_of_device(ctx, cmd.dev_id).is_err() {
        return Err(Errno::EINVAL);
    }
    let flags = cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID;
    if flags & !IOMMU_HWPT_ALLOC_PASID != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if cmd.data_type != IOMMU_HWPT_DATA_SELFTEST {
        return Err(Errno::EOPNOTSUPP);
    }
    let cfg: iommu_hwpt_selftest = copy_struct(u, cmd.data_uptr, cmd.data_len, size_of::<u32>())?;
    let (id, _) = ViommuNested::alloc(
        ctx,
        cmd.pt_id,
        viommu,
        Box::new(MockNested::new(cfg.iotlb)),
        cmd.flags,
    )?;
    Ok(id)
}

/// The vIOMMU branch of IOMMU_HWPT_INVALIDATE (the mock's device cache invalidation); `done`
/// counts the entries handled before an error. The whole array is read before any entry runs.
pub fn viommu_invalidate(
    u: &Ucmd,
    cmd: &iommu_hwpt_invalidate,
    viommu: &Viommu,
    done: &mut u32,
) -> Result<(), Errno> {
    if cmd.entry_num == 0 && cmd.data_type == IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST {
        return Ok(());
    }
    if cmd.data_type != IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST || cmd.entry_num == 0 {
        return Err(Errno::EINVAL);
    }
    // Grows with what was really read: entry_num is the caller's word (up to 4G entries).
    let mut reqs = Vec::with_capacity((cmd.entry_num as usize).min(4096));
    for i in 0..cmd.entry_num {
        let addr = cmd
            .data_uptr
            .checked_add(i as u64 * cmd.entry_len as u64)
            .ok_or(Errno::EFAULT)?;
        let r: iommu_viommu_invalidate_selftest = copy_struct_zero_tail(u, addr, cmd.entry_len, 0)?;
        reqs.push(r);
    }
    for r in reqs {
        if r.flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if r.cache_id > MOCK_DEV_CACHE_ID_MAX {
            return Err(Errno::EINVAL);
        }
        let vdev_obj = viommu
            .vdevs
            .lock()
            .unwrap()
            .get(&(r.vdev_id as u64))
            .copied()
            .ok_or(Errno::EINVAL)?;
        let vdev = u
            .ctx
            .get_ext_as::<Vdevice>(vdev_obj)
            .map_err(|_| Errno::EINVAL)?;
        let mock = vdev
            .data
            .clone()
            .downcast::<MockDev>()
            .map_err(|_| Errno::EINVAL)?;
        if r.flags & IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
            mock.invalidate_cache(None);
        } else {
            mock.invalidate_cache(Some(r.cache_id));
        }
        *done += 1;
    }
    Ok(())
}

/// The nested-on-vIOMMU branch of IOMMU_HWPT_INVALIDATE (the mock's stage-1 IOTLB).
pub fn viommu_nested_invalidate(
    u: &Ucmd,
    cmd: &iommu_hwpt_invalidate,
    nested: &ViommuNested,
    done: &mut u32,
) -> Result<(), Errno> {
    let Some(mock) = nested.data.downcast_ref::<MockNested>() else {
        return Err(Errno::EOPNOTSUPP);
    };
    super::hwpt_cmds::invalidate_nested(u, cmd, mock, done)
}
