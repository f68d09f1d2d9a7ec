//! Device objects: a device bound to a context (VFIO_DEVICE_BIND_IOMMUFD, or the selftest's mock
//! device), attached to at most one page table at a time.
//!
//! Attaching to an IOAS creates (or reuses) an automatic paging HWPT with a domain the device's
//! backend makes; attaching to a paging HWPT uses it. The page table gains a user while a device is
//! attached, so it cannot be destroyed under the device.

use super::hwpt::{HwptNested, HwptPaging};
use super::{Context, Extension, Ioas, Object};
use crate::backends::Domain;
use nix::errno::Errno;
use std::sync::{Arc, Mutex};

/// What kind of IOMMU sits in front of a device.
pub trait DeviceBackend: Send + Sync {
    /// A fresh paging domain for this device (IOMMU_HWPT_ALLOC `flags` as given).
    fn alloc_domain(&self, flags: u32) -> Result<Arc<dyn Domain>, Errno>;
    /// Whether an existing domain can serve this device too (automatic domain reuse).
    fn domain_compatible(&self, _domain: &Arc<dyn Domain>) -> bool {
        true
    }
    /// Whether the device may attach to `hwpt` (e.g. a device without dirty tracking refuses a
    /// domain with dirty tracking: EINVAL).
    fn check_attach(&self, _hwpt: &HwptPaging) -> Result<(), Errno> {
        Ok(())
    }
    /// Called after the device's page table changed (`None`: detached).
    fn attached(&self, _ioas: Option<Arc<Ioas>>) {}
    /// Name for logs and status.
    fn name(&self) -> String;
}

/// The page table a device is attached to.
#[derive(Clone)]
pub struct Attachment {
    /// ID of the HWPT in effect (paging, or nested when `nested` is set).
    pub hwpt_id: u32,
    /// The paging HWPT that translates (the parent when attached to a nested HWPT).
    pub hwpt: Arc<HwptPaging>,
    /// The nested HWPT attached to, if any.
    pub nested: Option<Arc<HwptNested>>,
}

pub struct Device {
    pub backend: Arc<dyn DeviceBackend>,
    attachment: Mutex<Option<Attachment>>,
}

impl Device {
    /// Binds a device into `ctx`; returns its object id.
    pub fn bind(
        ctx: &Context,
        backend: Arc<dyn DeviceBackend>,
    ) -> Result<(u32, Arc<Device>), Errno> {
        let dev = Arc::new(Device {
            backend,
            attachment: Mutex::new(None),
        });
        let id = ctx.insert(Object::Ext(dev.clone()))?;
        Ok((id, dev))
    }

    pub fn attachment(&self) -> Option<Attachment> {
        self.attachment.lock().unwrap().clone()
    }

    /// The IOAS behind the current attachment.
    pub fn ioas(&self) -> Option<Arc<Ioas>> {
        self.attachment().map(|a| a.hwpt.ioas.clone())
    }

    /// Attaches (or replaces) to `pt_id`, an IOAS or a paging HWPT; returns the HWPT id in effect
    /// (the automatic HWPT's id when `pt_id` is an IOAS). EINVAL when `pt_id` is neither.
    pub fn attach(&self, ctx: &Context, pt_id: u32) -> Result<u32, Errno> {
        let mut nested = None;
        let (hwpt_id, hwpt) = match ctx.get(pt_id).map_err(|_| Errno::ENOENT)? {
            Object::Ioas(_) => self.auto_hwpt(ctx, pt_id)?,
            Object::Ext(_) => {
                let h = match ctx.get_hwpt_paging(pt_id) {
                    Ok(h) => h,
                    Err(_) => {
                        let n = ctx.get_hwpt_nested(pt_id).map_err(|_| Errno::EINVAL)?;
                        let parent = n.parent.clone();
                        nested = Some(n);
                        parent
                    }
                };
                self.backend.check_attach(&h)?;
                ctx.add_user(pt_id)?;
                (pt_id, h)
            }
            _ => return Err(Errno::EINVAL),
        };
        let old = self.attachment.lock().unwrap().replace(Attachment {
            hwpt_id,
            hwpt: hwpt.clone(),
            nested,
        });
        if let Some(old) = old {
            self.drop_hwpt(ctx, &old);
        }
        self.backend.attached(Some(hwpt.ioas.clone()));
        Ok(hwpt_id)
    }

    /// Finds a compatible automatic HWPT on the IOAS or makes one; the result carries a user for
    /// this device.
    fn auto_hwpt(&self, ctx: &Context, ioas_id: u32) -> Result<(u32, Arc<HwptPaging>), Errno> {
        for (id, obj) in ctx.objects_of_type("hwpt_paging") {
            if let Object::Ext(e) = obj {
                let any = super::hwpt::ext_as_any_arc(e);
                if let Ok(h) = any.downcast::<HwptPaging>() {
                    if h.auto_domain
                        && h.ioas_id == ioas_id
                        && self.backend.domain_compatible(&h.domain)
                        && self.backend.check_attach(&h).is_ok()
                    {
                        ctx.add_user(id)?;
                        return Ok((id, h));
                    }
                }
            }
        }
        let domain = self.backend.alloc_domain(0)?;
        let (id, h) = HwptPaging::alloc(ctx, ioas_id, domain, 0, true)?;
        ctx.add_user(id)?;
        Ok((id, h))
    }

    fn drop_hwpt(&self, ctx: &Context, att: &Attachment) {
        ctx.remove_user(att.hwpt_id);
        if att.hwpt.auto_domain {
            // The automatic HWPT goes with its last device.
            let _ = ctx.destroy(att.hwpt_id);
        }
    }

    /// Detaches from the current page table (no-op when not attached).
    pub fn detach(&self, ctx: &Context) {
        let old = self.attachment.lock().unwrap().take();
        if let Some(old) = old {
            self.backend.attached(None);
            self.drop_hwpt(ctx, &old);
        }
    }
}

impl Extension for Device {
    fn type_name(&self) -> &'static str {
        "device"
    }

    fn destroy(&self, ctx: &Context) {
        self.detach(ctx);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Context {
    /// The device under `id` (ENOENT for any other type).
    pub fn get_device(&self, id: u32) -> Result<Arc<Device>, Errno> {
        match self.get(id)? {
            Object::Ext(e) => super::hwpt::ext_as_any_arc(e)
                .downcast::<Device>()
                .map_err(|_| Errno::ENOENT),
            _ => Err(Errno::ENOENT),
        }
    }
}
