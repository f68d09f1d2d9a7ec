//! Accesses: in-daemon users of an IOAS by IOVA (emulated devices, the selftest's access objects).
//!
//! An access pins or copies through the IOAS it is attached to. When an IOAS_UNMAP hits a range it
//! has pinned, its [`AccessOps::unmap`] callback runs (with no IOAS lock held) and must unpin.

use super::ioas::Ioas;
use super::{Context, ObjectUser};
use crate::iopt::PAGE_SIZE;
use nix::errno::Errno;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// What the owner of an access does when the range it uses is unmapped.
pub trait AccessOps: Send + Sync {
    /// `[iova, iova + length)` is being unmapped: release every pin inside it.
    fn unmap(&self, access: &Access, iova: u64, length: u64);
}

static NEXT_ACCESS: AtomicU32 = AtomicU32::new(1);

pub struct Access {
    /// Key of this access in the IOAS's alignment list.
    key: u32,
    /// The IOAS attached to, with the access's user of it.
    ioas: Mutex<Option<(ObjectUser, Arc<Ioas>)>>,
    ops: Arc<dyn AccessOps>,
    /// Accesses that pin need page-aligned IOVAs; rw-only ones accept any.
    needs_pin: bool,
}

impl Access {
    pub fn new(ops: Arc<dyn AccessOps>, needs_pin: bool) -> Arc<Self> {
        Arc::new(Self {
            key: NEXT_ACCESS.fetch_add(1, Ordering::Relaxed),
            ioas: Mutex::new(None),
            ops,
            needs_pin,
        })
    }

    fn alignment(&self) -> u64 {
        if self.needs_pin {
            PAGE_SIZE
        } else {
            1
        }
    }

    /// Attaches to IOAS `ioas_id` (which gains a user). EINVAL if already attached.
    pub fn attach(self: &Arc<Self>, ctx: &Context, ioas_id: u32) -> Result<(), Errno> {
        let ioas = ctx.get_ioas(ioas_id)?;
        let mut cur = self.ioas.lock().unwrap();
        if cur.is_some() {
            return Err(Errno::EINVAL);
        }
        let user = ctx.take_user(ioas_id)?;
        ioas.iopt().add_access(self.key, self.alignment())?;
        ioas.attach_access(self);
        *cur = Some((user, ioas));
        Ok(())
    }

    /// Moves to another IOAS (the selftest's ACCESS_REPLACE_IOAS); pins must be gone.
    pub fn replace(self: &Arc<Self>, ctx: &Context, ioas_id: u32) -> Result<(), Errno> {
        let new = ctx.get_ioas(ioas_id)?;
        let mut cur = self.ioas.lock().unwrap();
        if let Some((old_user, _)) = cur.as_ref() {
            if old_user.id() == ioas_id {
                return Ok(());
            }
        }
        let user = ctx.take_user(ioas_id)?;
        new.iopt().add_access(self.key, self.alignment())?;
        new.attach_access(self);
        if cur.is_some() {
            // Let the owner drop its pins on the old IOAS first, while this access is still
            // attached to it: the owner unpins through `unpin_pages`, which needs the IOAS.
            drop(cur);
            self.ops.unmap(self, 0, u64::MAX);
            cur = self.ioas.lock().unwrap();
            if let Some((old_user, old)) = cur.take() {
                old.detach_access(self);
                old.iopt().remove_access(self.key);
                old_user.release();
            }
        }
        *cur = Some((user, new));
        Ok(())
    }

    pub fn ioas(&self) -> Option<Arc<Ioas>> {
        self.ioas.lock().unwrap().as_ref().map(|(_, i)| i.clone())
    }

    pub fn ioas_id(&self) -> Option<u32> {
        self.ioas
            .lock()
            .unwrap()
            .as_ref()
            .map(|(user, _)| user.id())
    }

    fn attached(&self) -> Result<Arc<Ioas>, Errno> {
        self.ioas().ok_or(Errno::ENOENT)
    }

    /// Pins `[iova, iova + length)`; physical address per CPU page.
    pub fn pin_pages(&self, iova: u64, length: u64, write: bool) -> Result<Vec<u64>, Errno> {
        self.attached()?.iopt().access_pin(iova, length, write)
    }

    pub fn unpin_pages(&self, iova: u64, length: u64) {
        if let Ok(ioas) = self.attached() {
            ioas.iopt().access_unpin(iova, length);
        }
    }

    /// Copies between `buf` and the IOAS.
    pub fn rw(&self, iova: u64, buf: &mut [u8], write: bool) -> Result<(), Errno> {
        self.attached()?.iopt_read().access_rw(iova, buf, write)
    }

    pub(super) fn notify_unmap(&self, iova: u64, length: u64) {
        self.ops.unmap(self, iova, length);
    }

    /// Detaches from its IOAS (releasing pins through the owner first, while still attached:
    /// the owner unpins through `unpin_pages`, which needs the IOAS).
    pub fn detach(&self) {
        if self.ioas.lock().unwrap().is_none() {
            return;
        }
        self.ops.unmap(self, 0, u64::MAX);
        let taken = self.ioas.lock().unwrap().take();
        if let Some((user, ioas)) = taken {
            ioas.detach_access(self);
            ioas.iopt().remove_access(self.key);
            user.release();
        }
    }

    pub(super) fn destroy(&self) {
        self.detach();
    }
}
