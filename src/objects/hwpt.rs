//! Hardware page tables: a paging HWPT is an IOMMU domain kept in sync with one IOAS.

use super::{Context, Extension, Ioas, NestedDomain, ObjectUser};
use crate::backends::Domain;
use nix::errno::Errno;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT_DOMAIN: AtomicU64 = AtomicU64::new(1);

/// IOMMU_HWPT_ALLOC on an IOAS (or the automatic domain of an attach).
pub struct HwptPaging {
    pub ioas_id: u32,
    pub ioas: Arc<Ioas>,
    /// The HWPT is a user of its IOAS.
    ioas_user: ObjectUser,
    pub domain: Arc<dyn Domain>,
    /// Key of the domain inside the IOAS's io_pagetable.
    pub domain_key: u64,
    /// Created implicitly by attaching a device to an IOAS (destroyed with its last device).
    pub auto_domain: bool,
    /// Flags given at allocation (IOMMU_HWPT_ALLOC_*).
    pub flags: u32,
    /// Free-form state other layers hang on a HWPT (e.g. the mock's dirty-tracking flag).
    pub extra: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Where I/O page faults of devices attached here go.
    pub fault: super::fault::FaultLink,
}

impl HwptPaging {
    /// Creates the HWPT: fills `domain` with every area of the IOAS; the IOAS gains a user.
    pub fn alloc(
        ctx: &Context,
        ioas_id: u32,
        domain: Arc<dyn Domain>,
        flags: u32,
        auto_domain: bool,
    ) -> Result<(u32, Arc<HwptPaging>), Errno> {
        let ioas = ctx.get_ioas(ioas_id)?;
        let domain_key = NEXT_DOMAIN.fetch_add(1, Ordering::Relaxed);
        ioas.iopt_for_domains()
            .1
            .add_domain(domain_key, domain.clone())?;
        let ioas_user = match ctx.take_user(ioas_id) {
            Ok(user) => user,
            Err(e) => {
                ioas.iopt_for_domains().1.remove_domain(domain_key);
                return Err(e);
            }
        };
        let hwpt = Arc::new(HwptPaging {
            ioas_id,
            ioas: ioas.clone(),
            ioas_user,
            domain,
            domain_key,
            auto_domain,
            flags,
            extra: Mutex::new(None),
            fault: Default::default(),
        });
        match ctx.insert(super::Object::from(hwpt.clone())) {
            Ok(id) => Ok((id, hwpt)),
            Err(e) => {
                hwpt.release();
                Err(e)
            }
        }
    }

    fn release(&self) {
        self.fault.release();
        self.ioas
            .iopt_for_domains()
            .1
            .remove_domain(self.domain_key);
        self.ioas_user.release();
    }
}

impl Extension for HwptPaging {
    fn type_name(&self) -> &'static str {
        "hwpt_paging"
    }

    fn destroy(&self, _ctx: &Context) {
        self.release();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A nested (stage-1) HWPT on top of a paging HWPT allocated with IOMMU_HWPT_ALLOC_NEST_PARENT.
/// Translation still goes through the parent; the nested part only carries the driver's
/// stage-1 domain.
pub struct HwptNested {
    pub parent_id: u32,
    pub parent: Arc<HwptPaging>,
    /// The nested HWPT is a user of its parent.
    parent_user: ObjectUser,
    /// The driver's stage-1 domain.
    pub domain: Box<dyn NestedDomain>,
    pub flags: u32,
    /// Where I/O page faults of devices attached here go.
    pub fault: super::fault::FaultLink,
}

impl HwptNested {
    /// Creates the nested HWPT; the parent gains a user.
    pub fn alloc(
        ctx: &Context,
        parent_id: u32,
        domain: Box<dyn NestedDomain>,
        flags: u32,
    ) -> Result<(u32, Arc<HwptNested>), Errno> {
        let parent = ctx.get_hwpt_paging(parent_id)?;
        let h = Arc::new(HwptNested {
            parent_id,
            parent,
            parent_user: ctx.take_user(parent_id)?,
            domain,
            flags,
            fault: Default::default(),
        });
        let id = ctx.insert(super::Object::from(h.clone()))?;
        Ok((id, h))
    }
}

impl Extension for HwptNested {
    fn type_name(&self) -> &'static str {
        "hwpt_nested"
    }

    fn destroy(&self, _ctx: &Context) {
        self.fault.release();
        self.parent_user.release();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Context {
    /// The nested HWPT under `id` (ENOENT for any other type).
    pub fn get_hwpt_nested(&self, id: u32) -> Result<Arc<HwptNested>, Errno> {
        self.get_as::<HwptNested>(id)
    }

    /// The paging HWPT under `id` (ENOENT for any other type).
    pub fn get_hwpt_paging(&self, id: u32) -> Result<Arc<HwptPaging>, Errno> {
        self.get_as::<HwptPaging>(id)
    }
}
