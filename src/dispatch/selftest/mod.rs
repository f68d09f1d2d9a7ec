//! IOMMU_TEST_CMD: the operations the kernel's iommufd selftest drives the mock driver with.
//!
//! Objects: a MOCK_DOMAIN op creates a selftest object ("stdev", destroyed by the caller), a device
//! object bound to the context (not destroyable by the caller: EBUSY) backed by a [`MockDev`], and
//! attaches the device to the given IOAS or HWPT (an automatic mock paging HWPT for an IOAS).
//!
//! CREATE_ACCESS hands an fd back, which a FUSE/CUSE server cannot do by itself: it takes
//! `uiommufd launch` (see [`access`]); without it the op answers EOPNOTSUPP.

pub mod access;
mod checks;
pub mod dmabuf;
pub mod handle_kinds;
pub mod mockdev;
mod pasid;

use super::ucmd::Ucmd;
use crate::iopt::ReservedOwner;
use crate::narrow::low_u32;
use crate::objects::{Context, Device, Extension, Object, ObjectUser};
use mockdev::MockDev;
use nix::errno::Errno;
use std::sync::{Arc, Mutex};
use uiommufd_uapi::selftest::*;

/// The selftest object of a mock device (IOMMUFD_OBJ_SELFTEST): destroying it unbinds the device.
pub struct SelftestDev {
    inner: Mutex<Option<Bound>>,
}

#[derive(Clone)]
struct Bound {
    dev_id: u32,
    /// The selftest object's user of the device object (the device goes with it only).
    user: Arc<ObjectUser>,
    device: Arc<Device>,
    mock: Arc<MockDev>,
}

impl SelftestDev {
    fn bound(&self) -> Option<Bound> {
        self.inner.lock().unwrap().clone()
    }
}

/// Detaches and removes the device object (the device's bind user is dropped first).
fn unbind(ctx: &Context, b: &Bound) {
    b.device.detach(ctx);
    b.user.release();
    let _ = ctx.destroy(b.dev_id);
}

impl Extension for SelftestDev {
    fn type_name(&self) -> &'static str {
        "selftest"
    }

    fn destroy(&self, ctx: &Context) {
        let b = self.inner.lock().unwrap().take();
        if let Some(b) = b {
            unbind(ctx, &b);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The selftest device of a selftest object.
fn as_stdev(o: &Object) -> Option<&SelftestDev> {
    match o {
        Object::Selftest(x) => x.as_any().downcast_ref::<SelftestDev>(),
        _ => None,
    }
}

fn get_stdev(ctx: &Context, id: u32) -> Result<Bound, Errno> {
    as_stdev(&ctx.get(id)?)
        .ok_or(Errno::ENOENT)?
        .bound()
        .ok_or(Errno::ENOENT)
}

/// The mock device behind device object `dev_id`: ENOENT when `dev_id` is no device, EINVAL when
/// it is not a mock device.
pub fn mock_of_device(ctx: &Context, dev_id: u32) -> Result<(Arc<Device>, Arc<MockDev>), Errno> {
    let device = ctx.get_device(dev_id)?;
    for (_, obj) in ctx.objects_of_type("selftest") {
        if let Some(b) = as_stdev(&obj).and_then(SelftestDev::bound) {
            if b.dev_id == dev_id {
                return Ok((device, b.mock));
            }
        }
    }
    Err(Errno::EINVAL)
}

fn payload<T: zerocopy::FromBytes>(cmd: &iommu_test_cmd) -> T {
    cmd.payload::<T>().expect("payload fits the union")
}

fn respond_payload<T: zerocopy::IntoBytes + zerocopy::Immutable>(
    u: &Ucmd,
    cmd: &mut iommu_test_cmd,
    p: &T,
) -> Result<(), Errno> {
    cmd.set_payload(p);
    u.respond(cmd)
}

/// IOMMU_TEST_CMD.
pub fn test_cmd(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_test_cmd = u.cmd();
    match cmd.op {
        IOMMU_TEST_OP_ADD_RESERVED => {
            let p: iommu_test_cmd_add_reserved = payload(&cmd);
            add_reserved(u.ctx, cmd.id, p.start, p.length)
        }
        IOMMU_TEST_OP_MOCK_DOMAIN | IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS => mock_domain(u, &mut cmd),
        IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE => {
            let mut p: iommu_test_cmd_mock_domain_replace = payload(&cmd);
            let b = get_stdev(u.ctx, cmd.id)?;
            p.pt_id = b.device.attach(u.ctx, p.pt_id)?;
            respond_payload(u, &mut cmd, &p)
        }
        IOMMU_TEST_OP_MD_CHECK_MAP => {
            let p: iommu_test_cmd_check_map = payload(&cmd);
            checks::check_map(u, cmd.id, p.iova, p.length, p.uptr)
        }
        IOMMU_TEST_OP_MD_CHECK_REFS => {
            let p: iommu_test_cmd_check_refs = payload(&cmd);
            checks::check_refs(u, p.uptr, p.length, p.refs)
        }
        IOMMU_TEST_OP_MD_CHECK_IOTLB => {
            let p: iommu_test_cmd_check_iotlb = payload(&cmd);
            let h = u.ctx.get_hwpt_nested(cmd.id)?;
            let nested = h
                .domain
                .as_any()
                .downcast_ref::<crate::backends::mock::MockNested>()
                .ok_or(Errno::EINVAL)?;
            nested.check_iotlb(p.id, p.iotlb)
        }
        IOMMU_TEST_OP_DEV_CHECK_CACHE => {
            let p: iommu_test_cmd_check_dev_cache = payload(&cmd);
            let (_, mock) = mock_of_device(u.ctx, cmd.id)?;
            match mock.cache(p.id) {
                Some(v) if v == p.cache => Ok(()),
                _ => Err(Errno::EINVAL),
            }
        }
        IOMMU_TEST_OP_CREATE_ACCESS => {
            crate::warn_limited!(
                "IOMMU_TEST_OP_CREATE_ACCESS returns an fd: run the client under `uiommufd launch`"
            );
            Err(Errno::EOPNOTSUPP)
        }
        IOMMU_TEST_OP_ACCESS_REPLACE_IOAS => access::replace_ioas(u, &cmd),
        IOMMU_TEST_OP_ACCESS_PAGES => access::access_pages(u, &mut cmd),
        IOMMU_TEST_OP_ACCESS_RW => access::access_rw(u, &cmd),
        IOMMU_TEST_OP_DESTROY_ACCESS_PAGES => access::destroy_access_pages(u, &cmd),
        IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT => {
            let p: iommu_test_cmd_memory_limit = payload(&cmd);
            // The kernel bounds its batch memory with it; nothing here depends on it.
            if (p.limit as usize) < std::mem::size_of::<u64>() + std::mem::size_of::<u32>() {
                return Err(Errno::EINVAL);
            }
            Ok(())
        }
        IOMMU_TEST_OP_DIRTY => checks::dirty(u, &mut cmd),
        IOMMU_TEST_OP_TRIGGER_IOPF => trigger_iopf(u, &cmd),
        IOMMU_TEST_OP_TRIGGER_VEVENT => trigger_vevent(u, &cmd),
        IOMMU_TEST_OP_DMABUF_GET => {
            crate::warn_limited!(
                "IOMMU_TEST_OP_DMABUF_GET returns an fd: run the client under `uiommufd launch`"
            );
            Err(Errno::EOPNOTSUPP)
        }
        IOMMU_TEST_OP_DMABUF_REVOKE => {
            let p: iommu_test_cmd_dmabuf_revoke = payload(&cmd);
            let object = u.handles.object_of_fd(u.mem, p.dmabuf_fd)?;
            match object.and_then(|o| o.plugged::<dmabuf::TestDmabuf>()) {
                Some(buf) => {
                    buf.set_revoked(p.revoked != 0);
                    Ok(())
                }
                // Not a dma-buf at all, as dma_buf_get() answers.
                None => Err(Errno::EINVAL),
            }
        }
        IOMMU_TEST_OP_PASID_ATTACH => pasid::attach(u, &mut cmd),
        IOMMU_TEST_OP_PASID_REPLACE => pasid::replace(u, &mut cmd),
        IOMMU_TEST_OP_PASID_DETACH => pasid::detach(u, &cmd),
        IOMMU_TEST_OP_PASID_CHECK_HWPT => pasid::check_hwpt(u, &cmd),
        _ => Err(Errno::EOPNOTSUPP),
    }
}

/// TRIGGER_IOPF: the device raises a one-page fault group. It goes to the fault queue of the HWPT
/// serving that PASID; a PASID without its own attachment falls back to the RID's nested HWPT (the
/// mock IOMMU keeps the PASID table in the guest). With no queue there the fault is dropped, as
/// an IOMMU answers a fault no handler takes.
fn trigger_iopf(u: &Ucmd, cmd: &iommu_test_cmd) -> Result<(), Errno> {
    use crate::objects::fault::PageRequest;
    use uiommufd_uapi::iommufd::{IOMMU_PGFAULT_FLAGS_LAST_PAGE, IOMMU_PGFAULT_FLAGS_PASID_VALID};
    let p: iommu_test_cmd_trigger_iopf = payload(cmd);
    let device = u.ctx.get_device(p.dev_id)?;
    let mut flags = IOMMU_PGFAULT_FLAGS_LAST_PAGE;
    let attachment = if p.pasid != 0 {
        flags |= IOMMU_PGFAULT_FLAGS_PASID_VALID;
        device.pasid_attachment(p.pasid).or_else(|| {
            device
                .attachment()
                .filter(|a| a.nested.is_some() || a.viommu_nested.is_some())
        })
    } else {
        device.attachment()
    };
    let queue = attachment.and_then(|a| match (&a.nested, &a.viommu_nested) {
        (Some(n), _) => n.fault.queue(),
        (None, Some(v)) => v.fault.queue(),
        (None, None) => a.hwpt.fault.queue(),
    });
    match queue {
        Some(q) => q.report(vec![PageRequest {
            flags,
            dev_id: p.dev_id,
            pasid: p.pasid,
            grpid: p.grpid,
            perm: p.perm,
            addr: p.addr,
        }]),
        None => tracing::debug!(
            dev_id = p.dev_id,
            pasid = p.pasid,
            "IOPF with no fault queue: dropped"
        ),
    }
    Ok(())
}

/// TRIGGER_VEVENT: the device's vIOMMU reports a selftest event naming the device's virtual ID.
/// ENOENT without a vDEVICE (or with virtual ID 0), EOPNOTSUPP when the vIOMMU has no queue of the
/// selftest type.
fn trigger_vevent(u: &Ucmd, cmd: &iommu_test_cmd) -> Result<(), Errno> {
    use zerocopy::IntoBytes;
    let p: iommu_test_cmd_trigger_vevent = payload(cmd);
    let device = u.ctx.get_device(p.dev_id)?;
    // The mock device raises events to the vIOMMU whose nested HWPT it is attached to, naming
    // its vDEVICE there: neither is ENOENT (Linux 7.2 in refkernel's test guest).
    let viommu = device
        .attachment()
        .and_then(|a| a.viommu_nested.as_ref().map(|n| n.viommu.clone()))
        .ok_or(Errno::ENOENT)?;
    let vdev = crate::objects::viommu::vdevice_of(u.ctx, &device)
        .filter(|v| v.virt_id != 0 && Arc::ptr_eq(&v.viommu, &viommu))
        .ok_or(Errno::ENOENT)?;
    let queue = vdev
        .viommu
        .veventqs
        .lock()
        .unwrap()
        .get(&IOMMU_VEVENTQ_TYPE_SELFTEST)
        .and_then(std::sync::Weak::upgrade)
        .ok_or(Errno::EOPNOTSUPP)?;
    let event = iommu_viommu_event_selftest {
        // The event's field is 32 bits wide: the kernel's selftest keeps the low half too.
        virt_id: low_u32(vdev.virt_id),
    };
    queue.report(event.as_bytes());
    Ok(())
}

fn add_reserved(ctx: &Context, ioas_id: u32, start: u64, length: u64) -> Result<(), Errno> {
    if length == 0 {
        return Err(Errno::EINVAL);
    }
    let last = start.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
    let ioas = ctx.get_ioas(ioas_id)?;
    let r = ioas.iopt().reserve(start, last, ReservedOwner::Test);
    r
}

fn mock_domain(u: &Ucmd, cmd: &mut iommu_test_cmd) -> Result<(), Errno> {
    let ctx = u.ctx;
    let pt_id = cmd.id;
    let dev_flags = if cmd.op == IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS {
        payload::<iommu_test_cmd_mock_domain_flags>(cmd).dev_flags
    } else {
        0
    };
    let sobj = Arc::new(SelftestDev {
        inner: Mutex::new(None),
    });
    let stdev_id = ctx.insert(Object::Selftest(sobj.clone()))?;
    let abort = |e: Errno| {
        let _ = ctx.destroy(stdev_id);
        e
    };
    let mock = Arc::new(MockDev::new(dev_flags).map_err(abort)?);
    let (dev_id, device) = Device::bind(ctx, mock.clone()).map_err(abort)?;
    // The device goes with its selftest object only.
    let user = match ctx.take_user(dev_id) {
        Ok(user) => user,
        Err(e) => {
            let _ = ctx.destroy(dev_id);
            return Err(abort(e));
        }
    };
    let b = Bound {
        dev_id,
        user: Arc::new(user),
        device: device.clone(),
        mock,
    };
    *sobj.inner.lock().unwrap() = Some(b);
    let hwpt_id = device.attach(ctx, pt_id).map_err(abort)?;
    let out = iommu_test_cmd_mock_domain_flags {
        out_stdev_id: stdev_id,
        out_hwpt_id: hwpt_id,
        out_idev_id: dev_id,
        dev_flags,
    };
    respond_payload(u, cmd, &out).map_err(abort)
}
