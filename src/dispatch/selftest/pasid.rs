//! The PASID test ops: attach, replace and detach a mock device's PASID, and check what a PASID
//! is attached to. PASID 0 (no PASID) stands for the device's RID attachment.

use super::{get_stdev, payload, respond_payload};
use crate::dispatch::ucmd::Ucmd;
use nix::errno::Errno;
use uiommufd_uapi::selftest::*;

/// IOMMU_TEST_OP_PASID_ATTACH: on success `pt_id` is written back; a failed write undoes it.
pub fn attach(u: &Ucmd, cmd: &mut iommu_test_cmd) -> Result<(), Errno> {
    let mut p: iommu_test_cmd_pasid_attach = payload(cmd);
    let b = get_stdev(u.ctx, cmd.id)?;
    p.pt_id = b.device.pasid_attach(u.ctx, p.pasid, p.pt_id)?;
    if let Err(e) = respond_payload(u, cmd, &p) {
        b.device.pasid_detach(u.ctx, p.pasid);
        return Err(e);
    }
    Ok(())
}

/// IOMMU_TEST_OP_PASID_REPLACE.
pub fn replace(u: &Ucmd, cmd: &mut iommu_test_cmd) -> Result<(), Errno> {
    let mut p: iommu_test_cmd_pasid_replace = payload(cmd);
    let b = get_stdev(u.ctx, cmd.id)?;
    p.pt_id = b.device.pasid_replace(u.ctx, p.pasid, p.pt_id)?;
    respond_payload(u, cmd, &p)
}

/// IOMMU_TEST_OP_PASID_DETACH: detaching a PASID that has nothing attached succeeds.
pub fn detach(u: &Ucmd, cmd: &iommu_test_cmd) -> Result<(), Errno> {
    let p: iommu_test_cmd_pasid_detach = payload(cmd);
    let b = get_stdev(u.ctx, cmd.id)?;
    b.device.pasid_detach(u.ctx, p.pasid);
    Ok(())
}

/// IOMMU_TEST_OP_PASID_CHECK_HWPT: `hwpt_id` 0 checks that nothing is attached; otherwise the
/// PASID must be attached to that HWPT (ENOENT when absent, EINVAL when no HWPT or a mismatch).
pub fn check_hwpt(u: &Ucmd, cmd: &iommu_test_cmd) -> Result<(), Errno> {
    let p: iommu_test_cmd_pasid_check = payload(cmd);
    let b = get_stdev(u.ctx, cmd.id)?;
    let attached = b.device.pasid_attachment(p.pasid);
    if p.hwpt_id == 0 {
        return match attached {
            Some(_) => Err(Errno::EINVAL),
            None => Ok(()),
        };
    }
    let is_hwpt =
        u.ctx.get_hwpt_paging(p.hwpt_id).is_ok() || u.ctx.get_hwpt_nested(p.hwpt_id).is_ok();
    if !is_hwpt {
        u.ctx.get(p.hwpt_id)?;
        return Err(Errno::EINVAL);
    }
    match attached {
        Some(a) if a.hwpt_id == p.hwpt_id => Ok(()),
        _ => Err(Errno::EINVAL),
    }
}
