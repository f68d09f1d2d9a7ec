//! The iommufd side of a VFIO cdev node, shared by emulated and real devices:
//! VFIO_DEVICE_BIND_IOMMUFD, ATTACH_IOMMUFD_PT and DETACH_IOMMUFD_PT, and the binding's end.
//!
//! Like the kernel's cdev path, one open file at a time can be bound; every other device
//! operation needs the binding (EINVAL before it). The binding holds the context (a
//! `ContextHold`), as the kernel holds a reference on the iommufd file, until the device file is
//! closed. The caller's iommufd fd is fetched only to find the context and closed right away: a
//! file of the daemon's own node held by the daemon would make its death wait on itself.

use super::context::ContextHold;
use super::context::ContextResolver;
use crate::caller::CallerMemory;
use crate::objects::{Context, Device, DeviceBackend, ObjectUser};
use nix::errno::Errno;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use uiommufd_uapi::vfio::*;

struct Binding {
    file: u64,
    ctx: ContextHold,
    /// The binding's user of its device object.
    user: ObjectUser,
    device: Arc<Device>,
}

/// The binding state of one device node.
pub struct CdevBinding {
    name: String,
    resolver: Arc<dyn ContextResolver>,
    binding: Mutex<Option<Binding>>,
    /// Signalled when a binding ends.
    unbound: std::sync::Condvar,
}

/// How long a BIND waits for another file's binding to end before it is EINVAL. A FUSE file's
/// release reaches the daemon after the closing process has moved on (the kernel's own close of
/// a VFIO device file returns only once the device is free), so a program that closes a device
/// and opens it again at once, or is restarted, would otherwise race its own previous release.
const REBIND_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl CdevBinding {
    pub fn new(name: &str, resolver: Arc<dyn ContextResolver>) -> Self {
        Self {
            name: name.to_string(),
            resolver,
            binding: Mutex::new(None),
            unbound: std::sync::Condvar::new(),
        }
    }

    /// The context id and device object id of the current binding.
    pub fn bound_to(&self) -> Option<(u64, u32)> {
        self.binding
            .lock()
            .unwrap()
            .as_ref()
            .map(|b| (b.ctx.id, b.user.id()))
    }

    /// The context and device object bound through `file` (EINVAL for any other file).
    pub fn bound(&self, file: u64) -> Result<(Arc<Context>, Arc<Device>), Errno> {
        match self.binding.lock().unwrap().as_ref() {
            Some(b) if b.file == file => Ok((b.ctx.clone(), b.device.clone())),
            _ => Err(Errno::EINVAL),
        }
    }

    /// VFIO_DEVICE_BIND_IOMMUFD through `file`: `backend` makes the device object's driver (or
    /// refuses the context), `on_bound` runs once the device object exists (with the binding
    /// lock held).
    pub fn bind(
        &self,
        file: u64,
        arg: u64,
        mem: &dyn CallerMemory,
        backend: impl FnOnce(&Arc<Context>) -> Result<Arc<dyn DeviceBackend>, Errno>,
        on_bound: impl FnOnce(),
    ) -> Result<i64, Errno> {
        let mut bind = vfio_device_bind_iommufd::default();
        read_ext_struct(mem, arg, 16, zerocopy::IntoBytes::as_mut_bytes(&mut bind))?;
        if bind.iommufd < 0 || bind.flags & !VFIO_DEVICE_BIND_FLAG_TOKEN != 0 {
            return Err(Errno::EINVAL);
        }
        // No VF token: a token is only meaningful for SR-IOV virtual functions.
        if bind.flags & VFIO_DEVICE_BIND_FLAG_TOKEN != 0 {
            return Err(Errno::EINVAL);
        }
        {
            let slot = self.binding.lock().unwrap();
            let elsewhere = |s: &mut Option<Binding>| s.as_ref().is_some_and(|b| b.file != file);
            let (slot, _) = self
                .unbound
                .wait_timeout_while(slot, REBIND_WAIT, elsewhere)
                .unwrap();
            if slot.is_some() {
                tracing::debug!(device = self.name, "bind: already bound");
                return Err(Errno::EINVAL);
            }
        }
        // Resolve with no lock held: the query is an ioctl to ourselves, and the fd may well be a
        // file of this very device.
        let iommufd = mem.get_fd(bind.iommufd)?;
        let ctx = self.resolver.resolve(iommufd.as_fd());
        crate::caller::context_query::close_dup(iommufd);
        let ctx = ctx.inspect_err(|e| {
            tracing::debug!(device = self.name, %e, "bind: the iommufd names no context of ours")
        })?;
        let mut slot = self.binding.lock().unwrap();
        if slot.is_some() {
            tracing::debug!(device = self.name, "bind: bound meanwhile");
            return Err(Errno::EINVAL);
        }
        let (dev_id, device) = Device::bind(&ctx, backend(&ctx)?)?;
        // The device object goes with the binding only: IOMMU_DESTROY of its ID is EBUSY, as the
        // kernel's bound device holds a user of its own object.
        let bound = ctx
            .take_user(dev_id)
            .and_then(|user| mem.write(arg + 12, &dev_id.to_ne_bytes()).map(|()| user));
        let user = match bound {
            Ok(user) => user,
            Err(e) => {
                let _ = ctx.destroy(dev_id);
                return Err(e);
            }
        };
        on_bound();
        tracing::debug!(device = self.name, ctx = ctx.id, dev_id, "bound");
        *slot = Some(Binding {
            file,
            ctx,
            user,
            device,
        });
        Ok(0)
    }

    /// Ends the binding if `file` holds it (its release): `before` runs first (quiesce a real
    /// device while its DMA mappings still stand), then the device detaches and its object
    /// goes, then `after` (reset emulated state).
    pub fn unbind(&self, file: u64, before: impl FnOnce(), after: impl FnOnce()) {
        let mut slot = self.binding.lock().unwrap();
        if !matches!(slot.as_ref(), Some(b) if b.file == file) {
            return;
        }
        let Some(b) = slot.take() else {
            return;
        };
        before();
        b.device.detach(&b.ctx);
        // ENOENT when the context was already closed (shutdown): nothing left to destroy.
        b.user.release();
        let _ = b.ctx.destroy(b.user.id());
        after();
        tracing::debug!(
            device = self.name,
            ctx = b.ctx.id,
            dev_id = b.user.id(),
            "unbound"
        );
        // The device object (and with it its driver's hold on the hardware) goes before the
        // next bind can run: a client's close() returns before its RELEASE reaches us, and an
        // immediate rebind must find the device free.
        let Binding { ctx, device, .. } = b;
        drop(device);
        drop(slot);
        self.unbound.notify_all();
        // Last: the context may go with the binding's hold.
        drop(ctx);
    }

    /// The iommufd part of a device node's ioctl: `Ok(Some(..))` when `cmd` was one of the
    /// binding's (BIND through `bind`, ATTACH, DETACH) or the daemon's own context query;
    /// `Ok(None)` when the device answers `cmd` itself (the caller is bound through `file`);
    /// EINVAL before the binding.
    pub fn ioctl(
        &self,
        file: u64,
        cmd: u32,
        arg: u64,
        mem: &dyn CallerMemory,
        bind: impl FnOnce() -> Result<i64, Errno>,
    ) -> Result<Option<i64>, Errno> {
        match cmd {
            VFIO_DEVICE_BIND_IOMMUFD => return bind().map(Some),
            // A device file is never an iommufd (answered without taking any lock).
            crate::caller::context_query::IOCTL => return Err(Errno::ENOTTY),
            _ => {}
        }
        self.bound(file)?;
        match cmd {
            VFIO_DEVICE_ATTACH_IOMMUFD_PT => self.attach(file, arg, mem).map(Some),
            VFIO_DEVICE_DETACH_IOMMUFD_PT => self.detach(file, arg, mem).map(Some),
            _ => Ok(None),
        }
    }

    /// VFIO_DEVICE_ATTACH_IOMMUFD_PT (RID only: PASID attachment is EOPNOTSUPP).
    pub fn attach(&self, file: u64, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        let mut a = vfio_device_attach_iommufd_pt::default();
        read_min(mem, arg, 12, zerocopy::IntoBytes::as_mut_bytes(&mut a))?;
        if a.flags & !VFIO_DEVICE_ATTACH_PASID != 0 {
            return Err(Errno::EINVAL);
        }
        if a.flags & VFIO_DEVICE_ATTACH_PASID != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let (ctx, device) = self.bound(file)?;
        let hwpt_id = device.attach(&ctx, a.pt_id)?;
        if let Err(e) = mem.write(arg + 8, &hwpt_id.to_ne_bytes()) {
            device.detach(&ctx);
            return Err(e);
        }
        tracing::debug!(device = self.name, hwpt_id, "attached");
        Ok(0)
    }

    /// VFIO_DEVICE_DETACH_IOMMUFD_PT (RID only).
    pub fn detach(&self, file: u64, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        let mut d = vfio_device_detach_iommufd_pt::default();
        read_min(mem, arg, 8, zerocopy::IntoBytes::as_mut_bytes(&mut d))?;
        if d.flags & !VFIO_DEVICE_DETACH_PASID != 0 {
            return Err(Errno::EINVAL);
        }
        if d.flags & VFIO_DEVICE_DETACH_PASID != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let (ctx, device) = self.bound(file)?;
        device.detach(&ctx);
        Ok(0)
    }
}

/// Reads a struct that starts with argsz into `out`: EINVAL below `minsz`; bytes past what this
/// daemon knows must be zero (E2BIG), as copy_struct_from_user.
pub fn read_ext_struct(
    mem: &dyn CallerMemory,
    arg: u64,
    minsz: usize,
    out: &mut [u8],
) -> Result<(), Errno> {
    let mut w = [0u8; 4];
    mem.read(arg, &mut w)?;
    let argsz = u32::from_ne_bytes(w) as usize;
    if argsz < minsz {
        return Err(Errno::EINVAL);
    }
    crate::caller::copy_struct_from_caller(mem, arg, argsz, out)
}

/// Reads the first `minsz` bytes of an argsz struct (the fields vfio-pci reads); EINVAL when its
/// argsz is below `minsz`.
pub fn read_min(
    mem: &dyn CallerMemory,
    arg: u64,
    minsz: usize,
    out: &mut [u8],
) -> Result<(), Errno> {
    mem.read(arg, &mut out[..minsz])?;
    let argsz = u32::from_ne_bytes([out[0], out[1], out[2], out[3]]);
    if (argsz as usize) < minsz {
        return Err(Errno::EINVAL);
    }
    Ok(())
}
