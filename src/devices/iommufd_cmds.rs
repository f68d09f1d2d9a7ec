//! IOMMU_GET_HW_INFO and IOMMU_HWPT_ALLOC for bound devices, as the kernel answers them for a
//! device whose IOMMU driver has no `hw_info` op and no driver-specific HWPT data: hardware info
//! type NONE, and paging HWPTs on an IOAS with a domain the device's backend makes.

use crate::dispatch::Ucmd;
use crate::objects::{HwptPaging, Object};
use nix::errno::Errno;
use uiommufd_uapi::iommufd::*;

/// Zero-fills `len` bytes of caller memory (clear_user).
fn clear(u: &Ucmd, addr: u64, len: u64) -> Result<(), Errno> {
    let zeros = vec![0u8; len.min(1 << 16) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        let at = addr.checked_add(done).ok_or(Errno::EFAULT)?;
        u.mem.write(at, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}

pub fn get_hw_info(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_hw_info = u.cmd();
    if cmd.flags & !IOMMU_HW_INFO_FLAG_INPUT_TYPE != 0 || cmd.reserved != [0; 3] {
        return Err(Errno::EOPNOTSUPP);
    }
    u.ctx.get_device(cmd.dev_id)?;
    clear(u, cmd.data_uptr, u64::from(cmd.data_len))?;
    cmd.data_len = 0;
    cmd.in_data_type = IOMMU_HW_INFO_TYPE_NONE;
    // No dirty tracking, no PASID, and no ATS behind a software IOMMU.
    cmd.out_capabilities = IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED;
    cmd.out_max_pasid_log2 = 0;
    u.respond(&cmd)
}

pub fn hwpt_alloc(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_hwpt_alloc = u.cmd();
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if (cmd.data_type == IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0) {
        return Err(Errno::EINVAL);
    }
    let device = u.ctx.get_device(cmd.dev_id)?;
    match u.ctx.get(cmd.pt_id).map_err(|_| Errno::EINVAL)? {
        Object::Ioas(_) => {}
        // Nested HWPTs and vIOMMUs need driver data a software IOMMU does not define.
        Object::Ext(_) => return Err(Errno::EOPNOTSUPP),
        _ => return Err(Errno::EINVAL),
    }
    if cmd.data_type != IOMMU_HWPT_DATA_NONE || cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let valid = IOMMU_HWPT_ALLOC_NEST_PARENT
        | IOMMU_HWPT_ALLOC_DIRTY_TRACKING
        | IOMMU_HWPT_FAULT_ID_VALID
        | IOMMU_HWPT_ALLOC_PASID;
    if cmd.flags & !valid != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let domain = device.backend.alloc_domain(cmd.flags)?;
    let (id, _) = HwptPaging::alloc(u.ctx, cmd.pt_id, domain, cmd.flags, false)?;
    cmd.out_hwpt_id = id;
    if let Err(e) = u.respond(&cmd) {
        let _ = u.ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}
