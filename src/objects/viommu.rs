//! vIOMMU objects (IOMMU_VIOMMU_ALLOC), their virtual devices (IOMMU_VDEVICE_ALLOC) and the
//! nested HWPTs allocated on a vIOMMU.
//!
//! A vIOMMU sits on a nest-parent paging HWPT (which gains a user); each vDEVICE ties one device
//! to a virtual ID of one vIOMMU (which gains a user). The driver's state is opaque here
//! (`data`), as for [`super::hwpt::HwptNested`].

use super::{Context, Extension, HwptPaging};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A vIOMMU instance.
pub struct Viommu {
    pub viommu_type: u32,
    pub hwpt_id: u32,
    pub hwpt: Arc<HwptPaging>,
    /// virt_id → vDEVICE object id.
    pub vdevs: Mutex<BTreeMap<u64, u32>>,
    /// Driver state (the mock keeps nothing yet).
    pub data: Box<dyn std::any::Any + Send + Sync>,
}

impl Viommu {
    /// Creates the vIOMMU on the paging HWPT `hwpt_id`, which gains a user.
    pub fn alloc(
        ctx: &Context,
        viommu_type: u32,
        hwpt_id: u32,
        hwpt: Arc<HwptPaging>,
        data: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<(u32, Arc<Viommu>), Errno> {
        ctx.add_user(hwpt_id)?;
        let v = Arc::new(Viommu {
            viommu_type,
            hwpt_id,
            hwpt,
            vdevs: Mutex::new(BTreeMap::new()),
            data,
        });
        match ctx.insert(super::Object::Ext(v.clone())) {
            Ok(id) => Ok((id, v)),
            Err(e) => {
                ctx.remove_user(hwpt_id);
                Err(e)
            }
        }
    }
}

impl Extension for Viommu {
    fn type_name(&self) -> &'static str {
        "viommu"
    }

    fn destroy(&self, ctx: &Context) {
        ctx.remove_user(self.hwpt_id);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A virtual device: `dev_id` seen as `virt_id` by the guest behind vIOMMU `viommu_id`.
pub struct Vdevice {
    pub viommu_id: u32,
    pub viommu: Arc<Viommu>,
    pub dev_id: u32,
    pub virt_id: u64,
    /// Driver state of the device (the mock device, for cache invalidation).
    pub data: Arc<dyn std::any::Any + Send + Sync>,
}

impl Vdevice {
    /// Creates the vDEVICE; EEXIST when `virt_id` is taken on the vIOMMU or `dev_id` already has
    /// a vDEVICE. The vIOMMU gains a user.
    pub fn alloc(
        ctx: &Context,
        viommu_id: u32,
        viommu: Arc<Viommu>,
        dev_id: u32,
        virt_id: u64,
        data: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Result<(u32, Arc<Vdevice>), Errno> {
        let taken = ctx.objects_of_type("vdevice").into_iter().any(|(_, o)| {
            matches!(o, super::Object::Ext(e)
                if e.as_any().downcast_ref::<Vdevice>().is_some_and(|v| v.dev_id == dev_id))
        });
        if taken {
            return Err(Errno::EEXIST);
        }
        let mut vdevs = viommu.vdevs.lock().unwrap();
        if vdevs.contains_key(&virt_id) {
            return Err(Errno::EEXIST);
        }
        ctx.add_user(viommu_id)?;
        let v = Arc::new(Vdevice {
            viommu_id,
            viommu: viommu.clone(),
            dev_id,
            virt_id,
            data,
        });
        match ctx.insert(super::Object::Ext(v.clone())) {
            Ok(id) => {
                vdevs.insert(virt_id, id);
                Ok((id, v))
            }
            Err(e) => {
                ctx.remove_user(viommu_id);
                Err(e)
            }
        }
    }
}

impl Extension for Vdevice {
    fn type_name(&self) -> &'static str {
        "vdevice"
    }

    fn destroy(&self, ctx: &Context) {
        self.viommu.vdevs.lock().unwrap().remove(&self.virt_id);
        ctx.remove_user(self.viommu_id);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A nested HWPT allocated on a vIOMMU (its stage-2 is the vIOMMU's HWPT); the vIOMMU gains a
/// user.
pub struct ViommuNested {
    pub viommu_id: u32,
    pub viommu: Arc<Viommu>,
    /// Driver state of the stage-1 domain (e.g. `crate::backends::mock::MockNested`).
    pub data: Box<dyn std::any::Any + Send + Sync>,
    pub flags: u32,
}

impl ViommuNested {
    pub fn alloc(
        ctx: &Context,
        viommu_id: u32,
        viommu: Arc<Viommu>,
        data: Box<dyn std::any::Any + Send + Sync>,
        flags: u32,
    ) -> Result<(u32, Arc<ViommuNested>), Errno> {
        ctx.add_user(viommu_id)?;
        let h = Arc::new(ViommuNested {
            viommu_id,
            viommu,
            data,
            flags,
        });
        match ctx.insert(super::Object::Ext(h.clone())) {
            Ok(id) => Ok((id, h)),
            Err(e) => {
                ctx.remove_user(viommu_id);
                Err(e)
            }
        }
    }
}

impl Extension for ViommuNested {
    fn type_name(&self) -> &'static str {
        "hwpt_nested"
    }

    fn destroy(&self, ctx: &Context) {
        ctx.remove_user(self.viommu_id);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Context {
    /// The extension object of concrete type `T` under `id` (ENOENT for any other type).
    pub fn get_ext_as<T: Extension>(&self, id: u32) -> Result<Arc<T>, Errno> {
        match self.get(id)? {
            super::Object::Ext(e) => super::hwpt::ext_as_any_arc(e)
                .downcast::<T>()
                .map_err(|_| Errno::ENOENT),
            _ => Err(Errno::ENOENT),
        }
    }
}
