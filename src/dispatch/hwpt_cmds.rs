//! HWPT commands: IOMMU_HWPT_ALLOC, IOMMU_GET_HW_INFO, dirty tracking, IOMMU_HWPT_INVALIDATE.
//!
//! The commands are validated here; the device's IOMMU driver
//! ([`DeviceBackend`](crate::objects::DeviceBackend)) makes the domains from its driver data and
//! answers for its capabilities, and domain operations go to the domain
//! ([`Domain`](crate::backends::Domain), [`NestedDomain`](crate::objects::NestedDomain)).

use super::ucmd::Ucmd;
use crate::narrow::usize_from;
use crate::objects::{hwpt::HwptNested, HwptPaging, Object, UserArray, UserData};
use nix::errno::Errno;
use std::collections::BTreeMap;
use uiommufd_uapi::iommufd::*;

const INVALIDATE_ENTRY_NUM_MAX: u32 = 1 << 19;

/// Links HWPT `hwpt_id` to fault queue `fault_id` (ENOENT when that is no fault queue).
fn link_fault(ctx: &crate::objects::Context, hwpt_id: u32, fault_id: u32) -> Result<(), Errno> {
    if let Ok(h) = ctx.get_hwpt_paging(hwpt_id) {
        return h.fault.set(ctx, fault_id);
    }
    if let Ok(h) = ctx.get_hwpt_nested(hwpt_id) {
        return h.fault.set(ctx, fault_id);
    }
    if let Ok(h) = ctx.get_as::<crate::objects::viommu::ViommuNested>(hwpt_id) {
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
    let driver = &device.backend;
    let data = UserData::new(u.mem, cmd.data_type, cmd.data_uptr, cmd.data_len);
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
            if cmd.flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0 && !driver.dirty_tracking() {
                return Err(Errno::EOPNOTSUPP);
            }
            if cmd.flags & IOMMU_HWPT_FAULT_ID_VALID != 0
                && cmd.flags & IOMMU_HWPT_ALLOC_NEST_PARENT != 0
            {
                return Err(Errno::EOPNOTSUPP);
            }
            let domain = driver.alloc_paging(cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID, &data)?;
            HwptPaging::alloc(ctx, cmd.pt_id, domain, cmd.flags, false)?.0
        }
        Object::Viommu(viommu) => {
            super::viommu_cmds::alloc_nested_on_viommu(u, &cmd, &device, &data, viommu)?
        }
        Object::Access(_) => return Err(Errno::EINVAL),
        _ => {
            let parent = ctx.get_hwpt_paging(cmd.pt_id).map_err(|_| Errno::EINVAL)?;
            if cmd.flags & !(IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID) != 0
                || cmd.data_len == 0
                || !driver.nesting()
            {
                return Err(Errno::EOPNOTSUPP);
            }
            if parent.auto_domain
                || parent.flags & IOMMU_HWPT_ALLOC_NEST_PARENT == 0
                || !driver.owns_domain(&parent.domain)
            {
                return Err(Errno::EINVAL);
            }
            let flags = cmd.flags & !IOMMU_HWPT_FAULT_ID_VALID;
            let nested = driver.alloc_nested(&parent.domain, flags, &data)?;
            HwptNested::alloc(ctx, cmd.pt_id, nested, cmd.flags)?.0
        }
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
    let (data, caps, max_pasid_log2) = match device.backend.hw_info() {
        Some((ty, data, caps, max_pasid_log2)) => {
            if cmd.in_data_type != IOMMU_HW_INFO_TYPE_DEFAULT && cmd.in_data_type != ty {
                return Err(Errno::EOPNOTSUPP);
            }
            cmd.in_data_type = ty;
            (data, caps, max_pasid_log2)
        }
        None => {
            cmd.in_data_type = IOMMU_HW_INFO_TYPE_NONE;
            (Vec::new(), IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED, 0)
        }
    };
    let copy_len = (cmd.data_len as usize).min(data.len());
    u.mem.write(cmd.data_uptr, &data[..copy_len])?;
    let mut left = cmd.data_len as u64 - copy_len as u64;
    let mut at = cmd.data_uptr + copy_len as u64;
    let zeros = vec![0u8; left.min(4096) as usize];
    while left > 0 {
        let n = left.min(zeros.len() as u64);
        u.mem.write(at, &zeros[..usize_from(n)])?;
        at += n;
        left -= n;
    }
    cmd.data_len = u32::try_from(data.len()).map_err(|_| Errno::EOVERFLOW)?;
    cmd.out_capabilities = caps;
    cmd.out_max_pasid_log2 = max_pasid_log2;
    u.respond(&cmd)
}

pub fn hwpt_set_dirty_tracking(u: &Ucmd) -> Result<(), Errno> {
    let cmd: iommu_hwpt_set_dirty_tracking = u.cmd();
    if cmd.flags & !IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let h = u.ctx.get_hwpt_paging(cmd.hwpt_id)?;
    if !h.domain.has_dirty_ops() {
        return Err(Errno::EOPNOTSUPP);
    }
    let enable = cmd.flags & IOMMU_HWPT_DIRTY_TRACKING_ENABLE != 0;
    // The domain keeps its dirty bits under its own lock; the table is only read.
    let iopt = h.ioas.iopt_read();
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
    let iopt = h.ioas.iopt_read();
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
    if !h.domain.has_dirty_ops() {
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
        let array = UserArray::new(
            u.mem,
            cmd.data_type,
            cmd.data_uptr,
            cmd.entry_len,
            cmd.entry_num,
        );
        match obj {
            Object::Viommu(v) => v.driver.cache_invalidate(u.ctx, &v, &array, &mut done),
            Object::ViommuNested(n) => n.domain.cache_invalidate_user(&array, &mut done),
            Object::HwptNested(n) => n.domain.cache_invalidate_user(&array, &mut done),
            _ => Err(Errno::EINVAL),
        }
    })();
    cmd.entry_num = done;
    if u.respond(&cmd).is_err() {
        return Err(Errno::EFAULT);
    }
    rc
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;
    use crate::backends::Domain;
    use crate::caller::ProcessMemory;
    use crate::devices::domain::SoftDomain;
    use crate::objects::{Context, Device, DeviceBackend, Ioas};
    use std::mem::size_of;
    use std::sync::Arc;
    use zerocopy::{FromBytes, Immutable, IntoBytes};

    /// An IOMMU driver that keeps every default but paging domains and its hw_info answer.
    struct Plain(Option<(u32, Vec<u8>, u64, u8)>);

    impl DeviceBackend for Plain {
        fn alloc_domain(&self, flags: u32) -> Result<Arc<dyn Domain>, Errno> {
            if flags != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            Ok(Arc::new(SoftDomain::new()))
        }
        fn hw_info(&self) -> Option<(u32, Vec<u8>, u64, u8)> {
            self.0.clone()
        }
        fn name(&self) -> String {
            "plain".into()
        }
    }

    /// Runs `handler` on `cmd` (in this process's memory, as a caller's); returns the struct as
    /// the handler left it.
    fn run<T: FromBytes + IntoBytes + Immutable>(
        ctx: &Context,
        handler: fn(&Ucmd) -> Result<(), Errno>,
        cmd: &T,
    ) -> Result<T, Errno> {
        let mut buf = cmd.as_bytes().to_vec();
        let mem = ProcessMemory::current();
        let arg = buf.as_mut_ptr() as u64;
        let size = size_of::<T>();
        let handles = crate::dispatch::handles::HandleRegistry::default();
        let u = Ucmd::copy_in(ctx, &handles, &mem, arg, size as u32, size)?;
        handler(&u)?;
        Ok(T::read_from_bytes(&buf).unwrap())
    }

    fn setup(info: Option<(u32, Vec<u8>, u64, u8)>) -> (Context, u32, u32) {
        let ctx = Context::new();
        let ioas_id = ctx.insert(Object::Ioas(Ioas::new())).unwrap();
        let (dev_id, _) = Device::bind(&ctx, Arc::new(Plain(info))).unwrap();
        (ctx, ioas_id, dev_id)
    }

    fn hw_info_cmd(dev_id: u32, flags: u32, ty: u32, out: &mut [u8]) -> iommu_hw_info {
        iommu_hw_info {
            size: size_of::<iommu_hw_info>() as u32,
            flags,
            dev_id,
            data_len: out.len() as u32,
            data_uptr: out.as_mut_ptr() as u64,
            in_data_type: ty,
            ..Default::default()
        }
    }

    #[test]
    fn hw_info_follows_the_driver() {
        // Nothing to report: type NONE whatever was asked, the rest of the buffer zeroed.
        let (ctx, _, dev) = setup(None);
        let mut out = [0xaau8; 8];
        let c = hw_info_cmd(dev, IOMMU_HW_INFO_FLAG_INPUT_TYPE, 77, &mut out);
        let r = run(&ctx, get_hw_info, &c).unwrap();
        assert_eq!(r.in_data_type, IOMMU_HW_INFO_TYPE_NONE);
        assert_eq!(r.data_len, 0);
        assert_eq!(r.out_capabilities, IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED);
        assert_eq!(r.out_max_pasid_log2, 0);
        assert_eq!(std::hint::black_box(out), [0; 8]);

        // A typed answer: only that type (or the default) may be asked for.
        let (ctx, _, dev) = setup(Some((3, vec![1, 2, 3, 4], 0x10, 5)));
        let mut out = [0xaau8; 6];
        let c = hw_info_cmd(dev, IOMMU_HW_INFO_FLAG_INPUT_TYPE, 4, &mut out);
        assert_eq!(run(&ctx, get_hw_info, &c).err(), Some(Errno::EOPNOTSUPP));
        // Without the flag the type asked for is ignored.
        let c = hw_info_cmd(dev, 0, 4, &mut out);
        let r = run(&ctx, get_hw_info, &c).unwrap();
        assert_eq!(
            (
                r.in_data_type,
                r.data_len,
                r.out_capabilities,
                r.out_max_pasid_log2
            ),
            (3, 4, 0x10, 5)
        );
        assert_eq!(std::hint::black_box(out), [1, 2, 3, 4, 0, 0]);
        let c = hw_info_cmd(dev, IOMMU_HW_INFO_FLAG_INPUT_TYPE, 3, &mut out);
        assert_eq!(run(&ctx, get_hw_info, &c).unwrap().in_data_type, 3);
        let c = hw_info_cmd(dev, IOMMU_HW_INFO_FLAG_INPUT_TYPE << 1, 0, &mut out);
        assert_eq!(run(&ctx, get_hw_info, &c).err(), Some(Errno::EOPNOTSUPP));
    }

    /// A driver without driver data, dirty tracking, nesting or vIOMMUs: EOPNOTSUPP for each.
    #[test]
    fn default_driver_refuses_what_it_lacks() {
        let (ctx, ioas, dev) = setup(None);
        let data = [0u32; 2];
        let alloc = |flags, pt_id, data_type, data_len| iommu_hwpt_alloc {
            size: size_of::<iommu_hwpt_alloc>() as u32,
            flags,
            dev_id: dev,
            pt_id,
            data_type,
            data_len,
            data_uptr: data.as_ptr() as u64,
            ..Default::default()
        };
        let dirty = alloc(IOMMU_HWPT_ALLOC_DIRTY_TRACKING, ioas, 0, 0);
        assert_eq!(run(&ctx, hwpt_alloc, &dirty).err(), Some(Errno::EOPNOTSUPP));
        let with_data = alloc(0, ioas, IOMMU_HWPT_DATA_VTD_S1, 4);
        assert_eq!(
            run(&ctx, hwpt_alloc, &with_data).err(),
            Some(Errno::EOPNOTSUPP)
        );
        let parent = alloc(0, ioas, 0, 0);
        let hwpt = run(&ctx, hwpt_alloc, &parent).unwrap().out_hwpt_id;
        assert!(ctx.get_hwpt_paging(hwpt).is_ok());
        let nested = alloc(0, hwpt, IOMMU_HWPT_DATA_VTD_S1, 4);
        assert_eq!(
            run(&ctx, hwpt_alloc, &nested).err(),
            Some(Errno::EOPNOTSUPP)
        );

        let track = iommu_hwpt_set_dirty_tracking {
            size: size_of::<iommu_hwpt_set_dirty_tracking>() as u32,
            flags: IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
            hwpt_id: hwpt,
            reserved: 0,
        };
        let r = run(&ctx, hwpt_set_dirty_tracking, &track);
        assert_eq!(r.err(), Some(Errno::EOPNOTSUPP));

        let viommu = iommu_viommu_alloc {
            size: size_of::<iommu_viommu_alloc>() as u32,
            r#type: IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
            dev_id: dev,
            hwpt_id: hwpt,
            ..Default::default()
        };
        let r = run(&ctx, super::super::viommu_cmds::viommu_alloc, &viommu);
        assert_eq!(r.err(), Some(Errno::EOPNOTSUPP));
    }
}
