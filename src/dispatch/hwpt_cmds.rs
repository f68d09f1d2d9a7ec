//! HWPT commands: IOMMU_HWPT_ALLOC, IOMMU_GET_HW_INFO, dirty tracking, IOMMU_HWPT_INVALIDATE.
//!
//! Paging HWPTs for mock devices are mock domains; nested HWPTs only exist on mock nest parents
//! (the mock's stage-1 IOTLB). Other devices get their backend's domain and no driver data.

use super::selftest::mock_of_device;
use super::selftest::mockdev::as_mock;
use super::ucmd::Ucmd;
use crate::backends::mock::{MockKind, MockNested};
use crate::backends::Domain;
use crate::objects::{hwpt::HwptNested, HwptPaging, Object};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::mem::size_of;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;
use zerocopy::FromBytes;

const INVALIDATE_ENTRY_NUM_MAX: u32 = 1 << 19;

/// Reads a driver struct the way iommu_copy_struct_from_user does: `len` bytes of the caller, at
/// least up to the end of the mandatory fields (`min`) and at most the struct this daemon knows
/// (EINVAL either way: unlike the ioctl structs, longer driver data is refused, not zero-checked).
pub(super) fn copy_struct<T: FromBytes + zerocopy::IntoBytes>(
    u: &Ucmd,
    uptr: u64,
    len: u32,
    min: usize,
) -> Result<T, Errno> {
    if (len as usize) < min || len as usize > size_of::<T>() {
        return Err(Errno::EINVAL);
    }
    copy_struct_zero_tail(u, uptr, len, min)
}

/// Reads an array entry the way copy_struct_from_user does (iommu_copy_struct_from_full_user_array
/// with an entry size other than the kernel's): shorter entries are zero-extended, bytes beyond
/// the struct must be zero (E2BIG); `min` bounds the length from below (EINVAL).
pub(super) fn copy_struct_zero_tail<T: FromBytes + zerocopy::IntoBytes>(
    u: &Ucmd,
    uptr: u64,
    len: u32,
    min: usize,
) -> Result<T, Errno> {
    let len = len as usize;
    if len < min {
        return Err(Errno::EINVAL);
    }
    let mut v = T::new_zeroed();
    let n = len.min(size_of::<T>());
    u.mem.read(uptr, &mut v.as_mut_bytes()[..n])?;
    if len > size_of::<T>() {
        super::ucmd::check_zeroed(
            u.mem,
            uptr + size_of::<T>() as u64,
            (len - size_of::<T>()) as u64,
        )?;
    }
    Ok(v)
}

const SELFTEST_MIN: usize = size_of::<u32>(); // up to `iotlb`

/// Links HWPT `hwpt_id` to fault queue `fault_id` (ENOENT when that is no fault queue).
fn link_fault(ctx: &crate::objects::Context, hwpt_id: u32, fault_id: u32) -> Result<(), Errno> {
    if let Ok(h) = ctx.get_hwpt_paging(hwpt_id) {
        return h.fault.set(ctx, fault_id);
    }
    if let Ok(h) = ctx.get_hwpt_nested(hwpt_id) {
        return h.fault.set(ctx, fault_id);
    }
    if let Ok(h) = ctx.get_ext_as::<crate::objects::viommu::ViommuNested>(hwpt_id) {
        return h.fault.set(ctx, fault_id);
    }
    crate::warn_limited!(
        hwpt_id,
        "IOMMU_HWPT_FAULT_ID_VALID on a HWPT that cannot report faults"
    );
    Err(Errno::EOPNOTSUPP)
}

pub fn hwpt_alloc(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_hwpt_alloc = u.cmd();
    let ctx = u.ctx;
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if (cmd.data_type == IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0) {
        return Err(Errno::EINVAL);
    }
    let device = ctx.get_device(cmd.dev_id)?;
    let mock = mock_of_device(ctx, cmd.dev_id).ok().map(|(_, m)| m);
    let pt = ctx.get(cmd.pt_id).map_err(|_| Errno::EINVAL)?;
    let id = match pt {
        Object::Ioas(_) => {
            let valid = IOMMU_HWPT_ALLOC_NEST_PARENT
                | IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                | IOMMU_HWPT_FAULT_ID_VALID
                | IOMMU_HWPT_ALLOC_PASID;
            if cmd.flags & !valid != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            let dirty_capable = mock.as_ref().is_some_and(|m| m.dirty_capable());
            if cmd.flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0 && !dirty_capable {
                return Err(Errno::EOPNOTSUPP);
            }
            if cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0
                && cmd.flags & IOMMU_HWPT_ALLOC_NEST_PARENT != 0
            {
                return Err(Errno::EOPNOTSUPP);
            }
            let dflags = cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID;
            let domain: std::sync::Arc<dyn Domain> = match &mock {
                Some(m) => {
                    let mut kind = MockKind::Normal;
                    if cmd.data_len != 0 {
                        if cmd.data_type != IOMMU_HWPT_DATA_SELFTEST {
                            return Err(Errno::EOPNOTSUPP);
                        }
                        let cfg: iommu_hwpt_selftest =
                            copy_struct(u, cmd.data_uptr, cmd.data_len, SELFTEST_MIN)?;
                        kind = MockKind::from_pagetable_type(cfg.pagetable_type)
                            .ok_or(Errno::EOPNOTSUPP)?;
                    }
                    m.alloc_paging(dflags, kind)?
                }
                None => {
                    if cmd.data_len != 0 {
                        return Err(Errno::EOPNOTSUPP);
                    }
                    device.backend.alloc_domain(dflags)?
                }
            };
            HwptPaging::alloc(ctx, cmd.pt_id, domain, cmd.flags, false)?.0
        }
        Object::Ext(ref e)
            if e.as_any()
                .downcast_ref::<crate::objects::viommu::Viommu>()
                .is_some() =>
        {
            let viommu = ctx.get_ext_as::<crate::objects::viommu::Viommu>(cmd.pt_id)?;
            super::viommu_cmds::alloc_nested_on_viommu(u, &cmd, viommu)?
        }
        Object::Ext(_) => {
            let parent = ctx.get_hwpt_paging(cmd.pt_id).map_err(|_| Errno::EINVAL)?;
            if cmd.flags & !(IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID) != 0
                || cmd.data_len == 0
                || mock.is_none()
            {
                return Err(Errno::EOPNOTSUPP);
            }
            if parent.auto_domain
                || parent.flags & IOMMU_HWPT_ALLOC_NEST_PARENT == 0
                || as_mock(&parent.domain).is_none()
            {
                return Err(Errno::EINVAL);
            }
            if cmd.data_type != IOMMU_HWPT_DATA_SELFTEST {
                return Err(Errno::EOPNOTSUPP);
            }
            let cfg: iommu_hwpt_selftest =
                copy_struct(u, cmd.data_uptr, cmd.data_len, SELFTEST_MIN)?;
            HwptNested::alloc(
                ctx,
                cmd.pt_id,
                Box::new(MockNested::new(cfg.iotlb)),
                cmd.flags,
            )?
            .0
        }
        _ => return Err(Errno::EINVAL),
    };
    if cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0 {
        if let Err(e) = link_fault(ctx, id, cmd.fault_id) {
            let _ = ctx.destroy(id);
            return Err(e);
        }
    }
    cmd.out_hwpt_id = id;
    if let Err(e) = u.respond(&cmd) {
        let _ = ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

pub fn get_hw_info(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_hw_info = u.cmd();
    if cmd.flags & !IOMMU_HW_INFO_FLAG_INPUT_TYPE != 0 || cmd.reserved != [0; 3] {
        return Err(Errno::EOPNOTSUPP);
    }
    if cmd.flags & IOMMU_HW_INFO_FLAG_INPUT_TYPE == 0 {
        cmd.in_data_type = IOMMU_HW_INFO_TYPE_DEFAULT;
    }
    let device = u.ctx.get_device(cmd.dev_id)?;
    let mock = mock_of_device(u.ctx, cmd.dev_id).ok().map(|(_, m)| m);
    let driver_info = device.backend.hw_info();
    let data: Vec<u8> = match &mock {
        Some(_) => {
            if cmd.in_data_type != IOMMU_HW_INFO_TYPE_DEFAULT
                && cmd.in_data_type != IOMMU_HW_INFO_TYPE_SELFTEST
            {
                return Err(Errno::EOPNOTSUPP);
            }
            cmd.in_data_type = IOMMU_HW_INFO_TYPE_SELFTEST;
            let info = iommu_test_hw_info {
                flags: 0,
                test_reg: IOMMU_HW_INFO_SELFTEST_REGVAL,
            };
            zerocopy::IntoBytes::as_bytes(&info).to_vec()
        }
        None => match &driver_info {
            Some((ty, data, _, _)) => {
                if cmd.in_data_type != IOMMU_HW_INFO_TYPE_DEFAULT && cmd.in_data_type != *ty {
                    return Err(Errno::EOPNOTSUPP);
                }
                cmd.in_data_type = *ty;
                data.clone()
            }
            None => {
                cmd.in_data_type = IOMMU_HW_INFO_TYPE_NONE;
                Vec::new()
            }
        },
    };
    let copy_len = (cmd.data_len as usize).min(data.len());
    u.mem.write(cmd.data_uptr, &data[..copy_len])?;
    let mut left = cmd.data_len as u64 - copy_len as u64;
    let mut at = cmd.data_uptr + copy_len as u64;
    let zeros = vec![0u8; left.min(4096) as usize];
    while left > 0 {
        let n = left.min(zeros.len() as u64);
        u.mem.write(at, &zeros[..n as usize])?;
        at += n;
        left -= n;
    }
    cmd.data_len = data.len() as u32;
    cmd.out_capabilities = IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED;
    cmd.out_max_pasid_log2 = 0;
    if let (None, Some((_, _, caps, pasid_log2))) = (&mock, &driver_info) {
        cmd.out_capabilities = *caps;
        cmd.out_max_pasid_log2 = *pasid_log2;
    }
    if let Some(m) = &mock {
        if m.dirty_capable() {
            cmd.out_capabilities |= IOMMU_HW_CAP_DIRTY_TRACKING;
        }
        if m.pasid_capable() {
            cmd.out_max_pasid_log2 = MOCK_PASID_WIDTH as u8;
        }
    }
    u.respond(&cmd)
}

/// Whether `domain` has dirty tracking ops (only mock domains allocated with DIRTY_TRACKING).
fn has_dirty_ops(domain: &std::sync::Arc<dyn Domain>) -> bool {
    as_mock(domain).is_some_and(|m| m.has_dirty_ops())
}

pub fn hwpt_set_dirty_tracking(u: &Ucmd) -> Result<(), Errno> {
    let cmd: iommu_hwpt_set_dirty_tracking = u.cmd();
    if cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let h = u.ctx.get_hwpt_paging(cmd.hwpt_id)?;
    if !has_dirty_ops(&h.domain) {
        return Err(Errno::EOPNOTSUPP);
    }
    let enable = cmd.flags & IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0;
    let iopt = h.ioas.iopt();
    if enable {
        // A clean snapshot: drop dirty bits left from before.
        for area in iopt.areas() {
            h.domain
                .read_and_clear_dirty(area.iova, area.length(), false, &mut |_, _| {})?;
        }
    }
    h.domain.set_dirty_tracking(enable)
}

pub fn hwpt_get_dirty_bitmap(u: &Ucmd) -> Result<(), Errno> {
    let cmd: iommu_hwpt_get_dirty_bitmap = u.cmd();
    if cmd.flags & !IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0 || cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let h = u.ctx.get_hwpt_paging(cmd.hwpt_id)?;
    let iopt = h.ioas.iopt();
    let align = iopt.iova_alignment();
    let last = cmd
        .iova
        .checked_add(cmd.length.wrapping_sub(1))
        .ok_or(Errno::EOVERFLOW)?;
    let end = last.wrapping_add(1);
    if cmd.iova & (align - 1) != 0 || end & (align - 1) != 0 {
        return Err(Errno::EINVAL);
    }
    let ps = cmd.page_size;
    if ps == 0 {
        return Err(Errno::EINVAL);
    }
    if cmd.iova & (ps - 1) != 0 || end & (ps - 1) != 0 {
        return Err(Errno::EINVAL);
    }
    if !has_dirty_ops(&h.domain) {
        return Err(Errno::EOPNOTSUPP);
    }
    let no_clear = cmd.flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR != 0;
    // Bits to set, by byte of the caller's bitmap.
    let mut bytes: BTreeMap<u64, u8> = BTreeMap::new();
    let base = cmd.iova;
    let mut mark = |iova: u64, len: u64| {
        if len == 0 || iova < base {
            return;
        }
        let first = (iova - base) / ps;
        let lastbit = (iova - base + (len - 1)) / ps;
        for bit in first..=lastbit {
            *bytes.entry(bit / 8).or_insert(0) |= 1 << (bit % 8);
        }
    };
    let areas: Vec<(u64, u64)> = iopt
        .areas()
        .filter(|a| a.iova <= last && a.last >= cmd.iova)
        .map(|a| (a.iova.max(cmd.iova), a.last.min(last)))
        .collect();
    for (s, l) in areas {
        h.domain
            .read_and_clear_dirty(s, l - s + 1, no_clear, &mut mark)?;
    }
    drop(iopt);
    // Set the bits in the caller's bitmap (read, or, write back), run by run.
    let keys: Vec<u64> = bytes.keys().copied().collect();
    let mut i = 0;
    while i < keys.len() {
        let mut j = i + 1;
        while j < keys.len() && keys[j] == keys[j - 1] + 1 {
            j += 1;
        }
        let addr = cmd.data.checked_add(keys[i]).ok_or(Errno::EFAULT)?;
        let mut buf = vec![0u8; j - i];
        u.mem.read(addr, &mut buf)?;
        for (k, b) in buf.iter_mut().enumerate() {
            *b |= bytes[&keys[i + k]];
        }
        u.mem.write(addr, &buf)?;
        i = j;
    }
    Ok(())
}

pub(super) fn invalidate_nested(
    u: &Ucmd,
    cmd: &iommu_hwpt_invalidate,
    nested: &MockNested,
    done: &mut u32,
) -> Result<(), Errno> {
    if cmd.data_type != IOMMU_HWPT_INVALIDATE_DATA_SELFTEST {
        return Err(Errno::EINVAL);
    }
    for i in 0..cmd.entry_num {
        let addr = cmd
            .data_uptr
            .checked_add(i as u64 * cmd.entry_len as u64)
            .ok_or(Errno::EFAULT)?;
        let inv: iommu_hwpt_invalidate_selftest =
            copy_struct(u, addr, cmd.entry_len, 2 * size_of::<u32>())?;
        nested.invalidate(inv.flags, inv.iotlb_id)?;
        *done += 1;
    }
    Ok(())
}

pub fn hwpt_invalidate(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_hwpt_invalidate = u.cmd();
    let mut done = 0u32;
    let rc = (|| {
        if cmd.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if cmd.entry_num != 0
            && (cmd.data_uptr == 0
                || cmd.entry_len == 0
                || cmd.entry_len as u64 > crate::iopt::PAGE_SIZE
                || cmd.entry_num > INVALIDATE_ENTRY_NUM_MAX)
        {
            return Err(Errno::EINVAL);
        }
        let obj = u.ctx.get(cmd.hwpt_id)?;
        let Object::Ext(ext) = obj else {
            return Err(Errno::EINVAL);
        };
        if let Some(v) = ext
            .as_any()
            .downcast_ref::<crate::objects::viommu::Viommu>()
        {
            return super::viommu_cmds::viommu_invalidate(u, &cmd, v, &mut done);
        }
        if let Some(n) = ext
            .as_any()
            .downcast_ref::<crate::objects::viommu::ViommuNested>()
        {
            return super::viommu_cmds::viommu_nested_invalidate(u, &cmd, n, &mut done);
        }
        let n = u
            .ctx
            .get_hwpt_nested(cmd.hwpt_id)
            .map_err(|_| Errno::EINVAL)?;
        let Some(nested) = n.data.downcast_ref::<MockNested>() else {
            return Err(Errno::EOPNOTSUPP);
        };
        invalidate_nested(u, &cmd, nested, &mut done)
    })();
    cmd.entry_num = done;
    if u.respond(&cmd).is_err() {
        return Err(Errno::EFAULT);
    }
    rc
}
