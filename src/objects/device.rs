//! Device objects: a device bound to a context (VFIO_DEVICE_BIND_IOMMUFD, or the selftest's mock
//! device), attached to at most one page table at a time.
//!
//! Attaching to an IOAS creates (or reuses) an automatic paging HWPT with a domain the device's
//! backend makes; attaching to a paging HWPT uses it. The page table gains a user while a device is
//! attached, so it cannot be destroyed under the device.
//!
//! A device may also attach page tables to PASIDs (kept apart from the main, RID, attachment). The
//! compatibility rules: a PASID takes only a HWPT allocated with IOMMU_HWPT_ALLOC_PASID, and only
//! while the RID's page table is such a HWPT (or the RID is detached); the RID takes a HWPT without
//! that flag only while no PASID is attached. Automatic HWPTs never carry it.

use super::driver::{NestedDomain, UserData, ViommuDriver};
use super::hwpt::{HwptNested, HwptPaging};
use super::{Context, Extension, Ioas, Object, ObjectUser};
use crate::backends::Domain;
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use uiommufd_uapi::iommufd::IOMMU_HWPT_ALLOC_PASID;

/// The PASID that stands for "no PASID": attachments at it are the RID's.
pub const NO_PASID: u32 = 0;

/// The IOMMU driver in front of a device (the kernel's `iommu_ops` for it).
///
/// The core validates commands and the objects they name, then asks the driver what it supports
/// and for its domains and vIOMMUs; the driver reads its own data ([`UserData`]). Defaults answer
/// as an IOMMU without the feature.
pub trait DeviceBackend: Send + Sync {
    /// A fresh paging domain for this device (IOMMU_HWPT_ALLOC `flags` without
    /// IOMMU_HWPT_FAULT_ID_VALID; 0 for the automatic domain of an attach).
    fn alloc_domain(&self, flags: u32) -> Result<Arc<dyn Domain>, Errno>;
    /// IOMMU_HWPT_ALLOC of a paging domain with driver data (domain_alloc_paging_flags). The
    /// default takes no data (EOPNOTSUPP) and leaves the rest to [`Self::alloc_domain`].
    fn alloc_paging(&self, flags: u32, data: &UserData) -> Result<Arc<dyn Domain>, Errno> {
        if !data.is_empty() {
            return Err(Errno::EOPNOTSUPP);
        }
        self.alloc_domain(flags)
    }
    /// Whether the IOMMU tracks dirty pages (IOMMU_CAP_DIRTY_TRACKING): without it,
    /// IOMMU_HWPT_ALLOC_DIRTY_TRACKING is EOPNOTSUPP.
    fn dirty_tracking(&self) -> bool {
        false
    }
    /// Whether the driver makes nested domains on a paging parent (domain_alloc_nested).
    fn nesting(&self) -> bool {
        false
    }
    /// Whether `domain` is one of this driver's (a nest parent or a vIOMMU's stage 2 must be).
    fn owns_domain(&self, _domain: &Arc<dyn Domain>) -> bool {
        false
    }
    /// A nested domain on the nest-parent `parent` (owned by this driver; checked by the core),
    /// IOMMU_HWPT_ALLOC `flags` without IOMMU_HWPT_FAULT_ID_VALID. Called only when
    /// [`Self::nesting`].
    fn alloc_nested(
        &self,
        _parent: &Arc<dyn Domain>,
        _flags: u32,
        _data: &UserData,
    ) -> Result<Box<dyn NestedDomain>, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// The IOMMU instance in front of the device: a vIOMMU serves only devices behind the instance
    /// it was made on (EINVAL otherwise). None: an instance no vIOMMU spans.
    fn iommu_instance(&self) -> Option<u64> {
        None
    }
    /// Whether the driver makes vIOMMUs of type `ty` (IOMMU_VIOMMU_ALLOC; EOPNOTSUPP otherwise).
    fn viommu_type(&self, _ty: u32) -> bool {
        false
    }
    /// A vIOMMU of type `ty` (accepted by [`Self::viommu_type`]) on the nest-parent `hwpt`,
    /// whose domain this driver owns. `data.ty` is the vIOMMU type.
    fn viommu_alloc(
        &self,
        _ty: u32,
        _hwpt: &Arc<HwptPaging>,
        _data: &UserData,
    ) -> Result<Box<dyn ViommuDriver>, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// The concrete driver, for a driver's own objects that need their device back.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
    /// Whether an existing domain can serve this device too (automatic domain reuse).
    fn domain_compatible(&self, _domain: &Arc<dyn Domain>) -> bool {
        true
    }
    /// Whether the device may attach to `hwpt` (e.g. a device without dirty tracking refuses a
    /// domain with dirty tracking: EINVAL). By default: when its domain could serve the device.
    fn check_attach(&self, hwpt: &HwptPaging) -> Result<(), Errno> {
        if self.domain_compatible(&hwpt.domain) {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }
    /// Whether the device's IOMMU can attach domains to PASIDs at all (EOPNOTSUPP otherwise).
    fn pasid_ops(&self) -> bool {
        false
    }
    /// Number of PASIDs the device can issue (0: none; then the IOMMU is not told about PASID
    /// attachments, which only take bookkeeping).
    fn max_pasids(&self) -> u32 {
        0
    }
    /// The IOMMU driver's PASID switch: `hwpt` is the new page table, `None` for blocking
    /// (detach, which cannot fail). Called only when `max_pasids() > 0`.
    fn set_dev_pasid(&self, _pasid: u32, _hwpt: Option<&Attachment>) -> Result<(), Errno> {
        Ok(())
    }
    /// The IOMMU driver's switch of the device's (RID) domain, before the attachment is
    /// committed: `None` blocks DMA (detach, which cannot fail). On error the old domain stays.
    fn set_domain(&self, _domain: Option<&Arc<dyn Domain>>) -> Result<(), Errno> {
        Ok(())
    }
    /// IOMMU_GET_HW_INFO for this device's IOMMU: (data type, data, capabilities, max PASID
    /// width). A caller asking for a type gets EOPNOTSUPP unless it is this one. None: an IOMMU
    /// with nothing to report (type NONE, whatever was asked; capabilities
    /// IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED).
    fn hw_info(&self) -> Option<(u32, Vec<u8>, u64, u8)> {
        None
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
    /// The nested HWPT on a vIOMMU attached to, if any (`hwpt` is then the vIOMMU's stage 2).
    pub viommu_nested: Option<Arc<super::viommu::ViommuNested>>,
}

impl Attachment {
    /// Allocated with IOMMU_HWPT_ALLOC_PASID (the nested HWPT's flags when nested).
    pub fn pasid_compat(&self) -> bool {
        let flags = match (&self.nested, &self.viommu_nested) {
            (Some(n), _) => n.flags,
            (None, Some(v)) => v.flags,
            (None, None) => self.hwpt.flags,
        };
        flags & IOMMU_HWPT_ALLOC_PASID != 0
    }
}

pub struct Device {
    pub backend: Arc<dyn DeviceBackend>,
    /// Serialises attach/replace/detach, so that the driver's domain and the attachment move
    /// together.
    switching: Mutex<()>,
    attachment: Mutex<Option<Held>>,
    /// Attachments by PASID (never [`NO_PASID`]).
    pasids: Mutex<BTreeMap<u32, Held>>,
}

/// An attachment in effect, with the device's user of its HWPT.
struct Held {
    att: Attachment,
    user: ObjectUser,
}

impl Device {
    /// Binds a device into `ctx`; returns its object id.
    pub fn bind(
        ctx: &Context,
        backend: Arc<dyn DeviceBackend>,
    ) -> Result<(u32, Arc<Device>), Errno> {
        let dev = Arc::new(Device {
            backend,
            switching: Mutex::new(()),
            attachment: Mutex::new(None),
            pasids: Mutex::new(BTreeMap::new()),
        });
        let id = ctx.insert(Object::from(dev.clone()))?;
        Ok((id, dev))
    }

    pub fn attachment(&self) -> Option<Attachment> {
        self.attachment
            .lock()
            .unwrap()
            .as_ref()
            .map(|h| h.att.clone())
    }

    /// The IOAS behind the current attachment.
    pub fn ioas(&self) -> Option<Arc<Ioas>> {
        self.attachment().map(|a| a.hwpt.ioas.clone())
    }

    /// Attaches (or replaces) to `pt_id`, an IOAS or a paging HWPT; returns the HWPT id in effect
    /// (the automatic HWPT's id when `pt_id` is an IOAS). EINVAL when `pt_id` is neither.
    pub fn attach(&self, ctx: &Context, pt_id: u32) -> Result<u32, Errno> {
        let _switching = self.switching.lock().unwrap();
        let mut nested = None;
        let mut viommu_nested = None;
        let (hwpt_id, hwpt, user) = match ctx.get(pt_id).map_err(|_| Errno::ENOENT)? {
            Object::Ioas(_) => self.auto_hwpt(ctx, pt_id)?,
            Object::Access(_) => return Err(Errno::EINVAL),
            _ => {
                let h = if let Ok(h) = ctx.get_hwpt_paging(pt_id) {
                    h
                } else if let Ok(n) = ctx.get_hwpt_nested(pt_id) {
                    let parent = n.parent.clone();
                    nested = Some(n);
                    parent
                } else {
                    let v = ctx
                        .get_as::<super::viommu::ViommuNested>(pt_id)
                        .map_err(|_| Errno::EINVAL)?;
                    // The vIOMMU must know the device (a vDEVICE) before it can translate for it.
                    if !super::viommu::has_vdevice(ctx, &v.viommu, self) {
                        return Err(Errno::ENOENT);
                    }
                    let stage2 = v.viommu.hwpt.clone();
                    viommu_nested = Some(v);
                    stage2
                };
                let att = Attachment {
                    hwpt_id: pt_id,
                    hwpt: h.clone(),
                    nested: nested.clone(),
                    viommu_nested: viommu_nested.clone(),
                };
                if !att.pasid_compat() && self.has_pasids() {
                    return Err(Errno::EINVAL);
                }
                self.backend.check_attach(&h)?;
                (pt_id, h, ctx.take_user(pt_id)?)
            }
        };
        if let Err(e) = self.backend.set_domain(Some(&hwpt.domain)) {
            user.release();
            if hwpt.auto_domain {
                // An automatic HWPT made for this attach goes again (EBUSY while others use it).
                let _ = ctx.destroy(hwpt_id);
            }
            return Err(e);
        }
        let att = Attachment {
            hwpt_id,
            hwpt: hwpt.clone(),
            nested,
            viommu_nested,
        };
        let old = self.attachment.lock().unwrap().replace(Held { att, user });
        if let Some(old) = old {
            self.drop_hwpt(ctx, old);
        }
        self.backend.attached(Some(hwpt.ioas.clone()));
        Ok(hwpt_id)
    }

    /// Finds a compatible automatic HWPT on the IOAS or makes one, with a user for this device.
    fn auto_hwpt(
        &self,
        ctx: &Context,
        ioas_id: u32,
    ) -> Result<(u32, Arc<HwptPaging>, ObjectUser), Errno> {
        if self.has_pasids() {
            // Automatic HWPTs are not PASID-compatible.
            return Err(Errno::EINVAL);
        }
        for (id, h) in ctx.objects_of::<HwptPaging>() {
            if h.auto_domain
                && h.ioas_id == ioas_id
                && self.backend.domain_compatible(&h.domain)
                && self.backend.check_attach(&h).is_ok()
            {
                return Ok((id, h, ctx.take_user(id)?));
            }
        }
        let domain = self.backend.alloc_domain(0)?;
        let (id, h) = HwptPaging::alloc(ctx, ioas_id, domain, 0, true)?;
        Ok((id, h, ctx.take_user(id)?))
    }

    fn drop_hwpt(&self, ctx: &Context, old: Held) {
        old.user.release();
        if old.att.hwpt.auto_domain {
            // The automatic HWPT goes with its last device.
            let _ = ctx.destroy(old.att.hwpt_id);
        }
    }

    /// Detaches from the current page table (no-op when not attached).
    pub fn detach(&self, ctx: &Context) {
        let _switching = self.switching.lock().unwrap();
        let old = self.attachment.lock().unwrap().take();
        if let Some(old) = old {
            let _ = self.backend.set_domain(None);
            self.backend.attached(None);
            self.drop_hwpt(ctx, old);
        }
    }

    fn has_pasids(&self) -> bool {
        !self.pasids.lock().unwrap().is_empty()
    }

    /// The page table attached to `pasid` ([`NO_PASID`]: the RID's).
    pub fn pasid_attachment(&self, pasid: u32) -> Option<Attachment> {
        if pasid == NO_PASID {
            return self.attachment();
        }
        self.pasids
            .lock()
            .unwrap()
            .get(&pasid)
            .map(|h| h.att.clone())
    }

    /// Resolves `pt_id` for a PASID: a HWPT (paging or nested) as an attachment, without a user.
    /// ENOENT when absent, EINVAL when it is no page table; `Ok(None)` for an IOAS.
    fn pasid_target(ctx: &Context, pt_id: u32) -> Result<Option<Attachment>, Errno> {
        match ctx.get(pt_id)? {
            Object::Ioas(_) => Ok(None),
            Object::Access(_) => Err(Errno::EINVAL),
            _ => {
                if let Ok(h) = ctx.get_hwpt_paging(pt_id) {
                    return Ok(Some(Attachment {
                        hwpt_id: pt_id,
                        hwpt: h,
                        nested: None,
                        viommu_nested: None,
                    }));
                }
                let n = ctx.get_hwpt_nested(pt_id).map_err(|_| Errno::EINVAL)?;
                Ok(Some(Attachment {
                    hwpt_id: pt_id,
                    hwpt: n.parent.clone(),
                    nested: Some(n),
                    viommu_nested: None,
                }))
            }
        }
    }

    /// The checks every PASID attach or replace makes: the HWPT and the RID's page table must be
    /// PASID-compatible (EINVAL), the IOMMU must do PASIDs (EOPNOTSUPP).
    fn pasid_compat(&self, att: &Attachment) -> Result<(), Errno> {
        if !att.pasid_compat() || self.attachment().is_some_and(|a| !a.pasid_compat()) {
            return Err(Errno::EINVAL);
        }
        if !self.backend.pasid_ops() {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(())
    }

    /// Attaches `pt_id` (a HWPT) to `pasid`; EBUSY when the PASID has a page table already.
    /// Returns the HWPT id. `pasid` [`NO_PASID`] attaches the RID (EBUSY when attached).
    pub fn pasid_attach(&self, ctx: &Context, pasid: u32, pt_id: u32) -> Result<u32, Errno> {
        if pasid == NO_PASID {
            ctx.get(pt_id)?;
            if self.attachment().is_some() {
                return Err(Errno::EBUSY);
            }
            return self.attach(ctx, pt_id);
        }
        let target = Self::pasid_target(ctx, pt_id)?;
        let mut pasids = self.pasids.lock().unwrap();
        if pasids.contains_key(&pasid) {
            return Err(Errno::EBUSY);
        }
        // An automatic HWPT is never PASID-compatible.
        let att = target.ok_or(Errno::EINVAL)?;
        self.pasid_compat(&att)?;
        let max = self.backend.max_pasids();
        if max > 0 {
            if pasid >= max {
                return Err(Errno::EINVAL);
            }
            self.backend.set_dev_pasid(pasid, Some(&att))?;
        }
        let user = match ctx.take_user(pt_id) {
            Ok(user) => user,
            Err(e) => {
                if max > 0 {
                    let _ = self.backend.set_dev_pasid(pasid, None);
                }
                return Err(e);
            }
        };
        pasids.insert(pasid, Held { att, user });
        Ok(pt_id)
    }

    /// Replaces the page table of an attached `pasid` with `pt_id` (EINVAL when not attached);
    /// on failure the old one stays. Returns the HWPT id.
    pub fn pasid_replace(&self, ctx: &Context, pasid: u32, pt_id: u32) -> Result<u32, Errno> {
        if pasid == NO_PASID {
            ctx.get(pt_id)?;
            if self.attachment().is_none() {
                return Err(Errno::EINVAL);
            }
            return self.attach(ctx, pt_id);
        }
        let target = Self::pasid_target(ctx, pt_id)?;
        let mut pasids = self.pasids.lock().unwrap();
        let old = pasids
            .get(&pasid)
            .map(|h| h.att.clone())
            .ok_or(Errno::EINVAL)?;
        let att = target.ok_or(Errno::EINVAL)?;
        if att.hwpt_id == old.hwpt_id {
            return Ok(pt_id);
        }
        self.pasid_compat(&att)?;
        if self.backend.max_pasids() > 0 {
            self.backend.set_dev_pasid(pasid, Some(&att))?;
        }
        let user = match ctx.take_user(pt_id) {
            Ok(user) => user,
            Err(e) => {
                if self.backend.max_pasids() > 0 {
                    let _ = self.backend.set_dev_pasid(pasid, Some(&old));
                }
                return Err(e);
            }
        };
        let replaced = pasids.insert(pasid, Held { att, user });
        drop(pasids);
        // Gives the old HWPT's user back.
        drop(replaced);
        Ok(pt_id)
    }

    /// Detaches `pasid` (no-op when nothing is attached there). [`NO_PASID`] detaches the RID.
    pub fn pasid_detach(&self, ctx: &Context, pasid: u32) {
        if pasid == NO_PASID {
            self.detach(ctx);
            return;
        }
        let old = self.pasids.lock().unwrap().remove(&pasid);
        if let Some(old) = old {
            self.drop_pasid(pasid, old);
        }
    }

    fn drop_pasid(&self, pasid: u32, old: Held) {
        if self.backend.max_pasids() > 0 {
            // Blocking cannot fail.
            let _ = self.backend.set_dev_pasid(pasid, None);
        }
        old.user.release();
    }

    /// Detaches every PASID.
    pub fn detach_pasids(&self) {
        let all = std::mem::take(&mut *self.pasids.lock().unwrap());
        for (pasid, old) in all {
            self.drop_pasid(pasid, old);
        }
    }
}

impl Extension for Device {
    fn type_name(&self) -> &'static str {
        "device"
    }

    fn destroy(&self, ctx: &Context) {
        super::viommu::destroy_vdevices_of(ctx, self);
        self.detach_pasids();
        self.detach(ctx);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Context {
    /// The device under `id` (ENOENT for any other type).
    pub fn get_device(&self, id: u32) -> Result<Arc<Device>, Errno> {
        self.get_as::<Device>(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::mock::{MockDomain, MockKind};

    /// A PASID-capable device whose IOMMU refuses PASID 7.
    struct PasidDev;

    impl DeviceBackend for PasidDev {
        fn alloc_domain(&self, _flags: u32) -> Result<Arc<dyn Domain>, Errno> {
            Ok(Arc::new(MockDomain::new(MockKind::Normal)))
        }
        fn pasid_ops(&self) -> bool {
            true
        }
        fn max_pasids(&self) -> u32 {
            16
        }
        fn set_dev_pasid(&self, pasid: u32, hwpt: Option<&Attachment>) -> Result<(), Errno> {
            if pasid == 7 && hwpt.is_some() {
                return Err(Errno::ENOMEM);
            }
            Ok(())
        }
        fn name(&self) -> String {
            "pasid-test".into()
        }
    }

    fn hwpt(ctx: &Context, ioas_id: u32, flags: u32) -> u32 {
        let d: Arc<dyn Domain> = Arc::new(MockDomain::new(MockKind::Normal));
        HwptPaging::alloc(ctx, ioas_id, d, flags, false).unwrap().0
    }

    #[test]
    fn pasid_attachments_follow_the_compat_rules() {
        let ctx = Context::new();
        let ioas_id = ctx.insert(Object::Ioas(Ioas::new())).unwrap();
        let (dev_id, dev) = Device::bind(&ctx, Arc::new(PasidDev)).unwrap();
        let plain = hwpt(&ctx, ioas_id, 0);
        let compat = hwpt(&ctx, ioas_id, IOMMU_HWPT_ALLOC_PASID);
        let compat2 = hwpt(&ctx, ioas_id, IOMMU_HWPT_ALLOC_PASID);

        // RID on a non-compatible HWPT: no PASID may attach.
        dev.attach(&ctx, plain).unwrap();
        assert_eq!(dev.pasid_attach(&ctx, 1, compat), Err(Errno::EINVAL));
        dev.attach(&ctx, compat).unwrap();
        assert_eq!(dev.pasid_attach(&ctx, 1, plain), Err(Errno::EINVAL));
        assert_eq!(dev.pasid_attach(&ctx, 1, ioas_id), Err(Errno::EINVAL));
        assert_eq!(dev.pasid_attach(&ctx, 1, dev_id), Err(Errno::EINVAL));
        assert_eq!(dev.pasid_attach(&ctx, 1, 999), Err(Errno::ENOENT));
        assert_eq!(dev.pasid_attach(&ctx, 16, compat), Err(Errno::EINVAL));
        assert_eq!(dev.pasid_attach(&ctx, 7, compat), Err(Errno::ENOMEM));
        assert_eq!(dev.pasid_attach(&ctx, 1, compat), Ok(compat));
        assert_eq!(dev.pasid_attach(&ctx, 1, compat2), Err(Errno::EBUSY));
        assert_eq!(dev.pasid_attach(&ctx, 1, ioas_id), Err(Errno::EBUSY));
        // With a PASID attached the RID takes compatible HWPTs only, and no automatic one.
        assert_eq!(dev.attach(&ctx, plain), Err(Errno::EINVAL));
        assert_eq!(dev.attach(&ctx, ioas_id), Err(Errno::EINVAL));
        assert_eq!(dev.pasid_attachment(NO_PASID).unwrap().hwpt_id, compat);
        // The attached HWPT cannot go away; replace moves the user.
        assert_eq!(ctx.destroy(compat2), Ok(()));
        let compat2 = hwpt(&ctx, ioas_id, IOMMU_HWPT_ALLOC_PASID);
        assert_eq!(dev.pasid_replace(&ctx, 2, compat2), Err(Errno::EINVAL));
        assert_eq!(dev.pasid_replace(&ctx, 1, compat2), Ok(compat2));
        assert_eq!(dev.pasid_attachment(1).unwrap().hwpt_id, compat2);
        assert_eq!(ctx.destroy(compat2), Err(Errno::EBUSY));
        dev.pasid_detach(&ctx, 1);
        dev.pasid_detach(&ctx, 1);
        assert!(dev.pasid_attachment(1).is_none());
        ctx.destroy(compat2).unwrap();
        // Destroying the device drops its PASID attachments.
        dev.pasid_attach(&ctx, 3, compat).unwrap();
        ctx.destroy(dev_id).unwrap();
        ctx.destroy(compat).unwrap();
        ctx.destroy(plain).unwrap();
        ctx.destroy(ioas_id).unwrap();
    }
}
