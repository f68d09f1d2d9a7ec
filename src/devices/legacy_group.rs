//! The legacy VFIO container path under `uiommufd launch`: a program's own IOMMU group joined to
//! its compat IOAS.
//!
//! A program like QEMU's `-device vfio-pci,host=BDF` opens `/dev/vfio/vfio` (under the launcher:
//! the daemon's compat node) and `/dev/vfio/<group>` (the kernel's), then asks the group to join
//! the container (VFIO_GROUP_SET_CONTAINER). A kernel group cannot join a file of ours, so the
//! launcher hands both files to the daemon ([`super::handout`]) and the daemon puts the group in a
//! kernel type1 container of its own that mirrors the context's compat IOAS: the group behaves
//! as a device attached to that IOAS. The program's VFIO_GROUP_GET_DEVICE_FD, mmap of BARs,
//! interrupts and KVM's use of the group then all go to the kernel.
//!
//! The group takes part as one device object of the context (the kernel's group path binds its
//! devices into the iommufd too), attached to the compat IOAS, which is created if needed (as the
//! kernel does when a group joins an iommufd-backed container). It leaves on the program's
//! VFIO_GROUP_UNSET_CONTAINER (EBUSY from the kernel while a device fd of the group is open) or
//! when the context is torn down. Possession of the group file is the authority: a VFIO group can
//! be open only once, so whoever holds a file of group N holds the daemon's very file.
//!
//! Difference from the kernel: the daemon keeps its duplicate of the group file until one of
//! those two events, so a program closing its group file without UNSET_CONTAINER leaves the group
//! in use until it closes the container too.

use super::context::ContextResolver;
use crate::backends::vfio::container::Container;
use crate::backends::vfio::host::{group_number, Group};
use crate::backends::vfio::VfioDomain;
use crate::backends::Domain;
use crate::objects::{Context, Device, DeviceBackend, ObjectUser};
use nix::errno::Errno;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

/// A group joined to a context through the legacy path.
struct Joined {
    ctx: Weak<Context>,
    /// The daemon's user of the group's device object.
    user: ObjectUser,
    port: Weak<GroupPort>,
}

/// The groups programs joined to their contexts, by group number.
pub struct LegacyGroups {
    resolver: Arc<dyn ContextResolver>,
    joined: Mutex<HashMap<u32, Joined>>,
    /// (context, group) pairs with a teardown hook already in place: one each, however often the
    /// group joins and leaves.
    hooked: Mutex<std::collections::HashSet<(u64, u32)>>,
}

impl LegacyGroups {
    pub fn new(resolver: Arc<dyn ContextResolver>) -> Arc<Self> {
        Arc::new(Self {
            resolver,
            joined: Mutex::new(HashMap::new()),
            hooked: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// VFIO_GROUP_SET_CONTAINER of `group` (the program's group file) into `node` (a compat or
    /// iommufd node file of this daemon): the kernel's errno when it refuses the group.
    pub fn set_container(
        self: &Arc<Self>,
        node: BorrowedFd<'_>,
        group: OwnedFd,
    ) -> Result<(), Errno> {
        let number = group_number(group.as_fd())?;
        // A file of another mount or not ours at all: what the kernel says of a container fd
        // that is neither a container nor an iommufd.
        let hold = self.resolver.resolve(node).map_err(|_| Errno::EBADFD)?;
        let ctx = hold.context().clone();
        if self.joined.lock().unwrap().contains_key(&number) {
            return Err(Errno::EINVAL);
        }
        let group = Arc::new(Group::adopt(group)?);
        let port = Arc::new(GroupPort {
            group,
            domain: Mutex::new(None),
            released: Mutex::new(false),
            groups: Arc::downgrade(self),
        });
        let ioas_id = ctx.compat_ioas_get_or_create()?;
        let (dev_id, device) = Device::bind(&ctx, port.clone())?;
        // The daemon's user keeps the object from IOMMU_DESTROY (EBUSY) until the group leaves.
        let attached = ctx
            .take_user(dev_id)
            .and_then(|user| device.attach(&ctx, ioas_id).map(|_| user));
        let user = match attached {
            Ok(user) => user,
            Err(e) => {
                let _ = ctx.destroy(dev_id);
                return Err(e);
            }
        };
        if self.hooked.lock().unwrap().insert((ctx.id, number)) {
            let me = Arc::downgrade(self);
            ctx.on_teardown(Box::new(move |ctx: &Context| {
                if let Some(me) = me.upgrade() {
                    me.hooked.lock().unwrap().remove(&(ctx.id, number));
                    me.leave(number, ctx.id);
                }
            }));
        }
        self.joined.lock().unwrap().insert(
            number,
            Joined {
                ctx: Arc::downgrade(&ctx),
                user,
                port: Arc::downgrade(&port),
            },
        );
        tracing::info!(
            group = number,
            ctx = ctx.id,
            dev_id,
            "group joined the compat IOAS"
        );
        Ok(())
    }

    /// VFIO_GROUP_UNSET_CONTAINER of `group`: ENOENT when the daemon did not join that group
    /// (the program's own kernel container, say: the kernel answers then).
    pub fn unset_container(&self, group: BorrowedFd<'_>) -> Result<(), Errno> {
        let number = group_number(group)?;
        let (ctx, port) = {
            let joined = self.joined.lock().unwrap();
            let j = joined.get(&number).ok_or(Errno::ENOENT)?;
            let port = j.port.upgrade().ok_or(Errno::ENOENT)?;
            (j.ctx.upgrade(), port)
        };
        // Compared (and `port` possibly dropped) with `joined` unlocked: its drop takes it.
        if !crate::sys::fd::same_open_file(port.group.file(), group) {
            return Err(Errno::ENOENT);
        }
        // The kernel decides first (EBUSY while the program has a device of the group open);
        // only then does the group leave the page table, whose mappings the kernel just dropped.
        port.group.unset_container()?;
        *port.released.lock().unwrap() = true;
        drop(port);
        if let Some(ctx) = ctx {
            self.leave(number, ctx.id);
        }
        Ok(())
    }

    /// The group leaves context `ctx` (its device object goes with the daemon's user on it).
    fn leave(&self, number: u32, ctx_id: u64) {
        let j = {
            let mut joined = self.joined.lock().unwrap();
            match joined.get(&number) {
                Some(j) if j.ctx.upgrade().is_some_and(|c| c.id == ctx_id) => {
                    joined.remove(&number)
                }
                _ => None,
            }
        };
        let Some(j) = j else {
            return;
        };
        if let Some(ctx) = j.ctx.upgrade() {
            j.user.release();
            let _ = ctx.destroy(j.user.id());
        }
        tracing::info!(group = number, ctx = ctx_id, "group left the compat IOAS");
    }
}

/// The group as the objects layer sees it: a device whose IOMMU is the group's container.
struct GroupPort {
    group: Arc<Group>,
    domain: Mutex<Option<Arc<dyn Domain>>>,
    /// The kernel took the group out of the container (UNSET_CONTAINER): nothing is left to
    /// unmap there.
    released: Mutex<bool>,
    groups: Weak<LegacyGroups>,
}

impl GroupPort {
    fn container(&self) -> Arc<dyn Container> {
        self.group.container.clone()
    }
}

fn as_vfio(d: &Arc<dyn Domain>) -> Option<&VfioDomain> {
    d.as_any()?.downcast_ref::<VfioDomain>()
}

impl DeviceBackend for GroupPort {
    fn alloc_domain(&self, flags: u32) -> Result<Arc<dyn Domain>, Errno> {
        if flags != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(Arc::new(VfioDomain::new(self.group.geometry.clone())))
    }

    fn domain_compatible(&self, domain: &Arc<dyn Domain>) -> bool {
        as_vfio(domain).is_some_and(|v| *v.geometry() == self.group.geometry)
    }

    fn set_domain(&self, new: Option<&Arc<dyn Domain>>) -> Result<(), Errno> {
        let mut cur = self.domain.lock().unwrap();
        if let (Some(c), Some(n)) = (cur.as_ref(), new) {
            if Arc::ptr_eq(c, n) {
                return Ok(());
            }
        }
        let new_vfio = match new {
            Some(d) => Some(as_vfio(d).ok_or(Errno::EINVAL)?),
            None => None,
        };
        if *self.released.lock().unwrap() && new_vfio.is_some() {
            return Err(Errno::ENODEV);
        }
        let container = self.container();
        if let Some(n) = new_vfio {
            n.join(container.clone())?;
        }
        if let Some(old) = cur.as_ref().and_then(as_vfio) {
            if *self.released.lock().unwrap() {
                old.forget(&container);
            } else {
                old.leave(&container);
            }
        }
        *cur = new.cloned();
        Ok(())
    }

    fn hw_info(&self) -> Option<(u32, Vec<u8>, u64, u8)> {
        None
    }

    fn name(&self) -> String {
        format!("vfio-group:{}", self.group.number)
    }
}

impl Drop for GroupPort {
    fn drop(&mut self) {
        // Out of the daemon's container before the last file of the group closes (the kernel
        // would do it then too; EBUSY while the program still has a device open, and the group
        // then leaves when that closes).
        if !*self.released.lock().unwrap() {
            let _ = self.group.unset_container();
        }
        if let Some(groups) = self.groups.upgrade() {
            let mut joined = groups.joined.lock().unwrap();
            if joined
                .get(&self.group.number)
                .is_some_and(|j| j.port.strong_count() == 0)
            {
                joined.remove(&self.group.number);
            }
        }
    }
}
