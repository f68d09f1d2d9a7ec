//! The selftest's access objects (IOMMU_TEST_OP_CREATE_ACCESS and the ops on them).
//!
//! In the kernel an access is handed to userspace as a new fd and every later op names it by that
//! fd number. Here the fd is an open file of our own node, bound to the access with the private
//! `UIOMMUFD_HANDLE_BIND` (see `crate::dispatch::private_abi` and `uiommufd launch`). The ops find the
//! access again the way the kernel does: fetch the caller's fd (pidfd_getfd) and ask the file
//! which handle it is. Anything else is EBADFD, the kernel's answer for an fd that is not an
//! access.
//!
//! An access keeps a list of the ranges it pinned (ACCESS_PAGES items). When the IOAS unmaps a
//! range, the access's unmap callback drops every item overlapping it, as the kernel's mock does.

use crate::dispatch::ucmd::Ucmd;
use crate::iopt::PAGE_SIZE;
use crate::narrow::usize_from;
use crate::objects::{Access, AccessOps, Context, Object, ObjectUser};
use nix::errno::Errno;
use std::sync::{Arc, Mutex};
use uiommufd_uapi::selftest::*;

/// The kernel refuses buffers past this to keep its allocation bounded; same errno here.
const MAX_ACCESS_LENGTH: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
struct Item {
    id: u32,
    iova: u64,
    length: u64,
}

#[derive(Default)]
struct Items {
    list: Vec<Item>,
    next_id: u32,
}

/// Drops the pinned items a range unmap hits.
struct ItemsOps(Arc<Mutex<Items>>);

impl AccessOps for ItemsOps {
    fn unmap(&self, access: &Access, iova: u64, length: u64) {
        let last = iova.saturating_add(length.saturating_sub(1));
        let mut items = self.0.lock().unwrap();
        items.list.retain(|it| {
            let hit = iova < it.iova.saturating_add(it.length) && last >= it.iova;
            if hit {
                access.unpin_pages(it.iova, it.length);
            }
            !hit
        });
    }
}

/// One selftest access: its object in the creating context and its pinned items.
pub struct TestAccess {
    ctx: Arc<Context>,
    access: Arc<Access>,
    /// The fd's user of the access object: IOMMU_DESTROY of it is EBUSY until the close.
    user: ObjectUser,
    needs_pin: bool,
    items: Arc<Mutex<Items>>,
}

impl TestAccess {
    /// CREATE_ACCESS: an access object in `ctx` attached to IOAS `ioas_id`.
    pub fn create(ctx: &Arc<Context>, ioas_id: u32, flags: u32) -> Result<Arc<Self>, Errno> {
        if flags & !MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let needs_pin = flags & MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES != 0;
        let items = Arc::new(Mutex::new(Items::default()));
        let access = Access::new(Arc::new(ItemsOps(items.clone())), needs_pin);
        // The owner of the fd is a user until the fd closes: IOMMU_DESTROY of it is EBUSY.
        let (object_id, user) = ctx.insert_held(Object::Access(access.clone()))?;
        if let Err(e) = access.attach(ctx, ioas_id) {
            drop(user);
            let _ = ctx.destroy(object_id);
            return Err(e);
        }
        Ok(Arc::new(Self {
            ctx: ctx.clone(),
            access,
            user,
            needs_pin,
            items,
        }))
    }

    pub fn object_id(&self) -> u32 {
        self.user.id()
    }

    /// The IOAS the access is attached to.
    pub fn ioas_id(&self) -> Option<u32> {
        self.access.ioas_id()
    }

    /// The fd was closed: unpin every item, destroy the access object.
    pub fn release(&self) {
        ItemsOps(self.items.clone()).unmap(&self.access, 0, u64::MAX);
        self.user.release();
        if let Err(e) = self.ctx.destroy(self.user.id()) {
            crate::warn_limited!(ctx = self.ctx.id, id = self.user.id(), errno = %e, "access object already gone");
        }
    }
}

/// The access whose fd is `fd` in the caller's table: EBADFD when the fd is closed or is anything
/// else, as the kernel's lookup answers.
fn access_of_fd(u: &Ucmd, fd: u32) -> Result<Arc<TestAccess>, Errno> {
    match u.handles.object_of_fd(u.mem, fd as i32) {
        Ok(Some(object)) => object.plugged::<TestAccess>().ok_or(Errno::EBADFD),
        _ => Err(Errno::EBADFD),
    }
}

/// ACCESS_PAGES: pin through the access, check the pages against the caller's own mapping of
/// `uptr` (EBADE on a different page), record an item.
pub fn access_pages(u: &Ucmd, cmd: &mut iommu_test_cmd) -> Result<(), Errno> {
    let mut p: iommu_test_cmd_access_pages = super::payload(cmd);
    if p.length > MAX_ACCESS_LENGTH {
        return Err(Errno::ENOMEM);
    }
    if p.flags & !(MOCK_FLAGS_ACCESS_WRITE | MOCK_FLAGS_ACCESS_SYZ) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let sa = access_of_fd(u, cmd.id)?;
    if !sa.needs_pin {
        return Err(Errno::EOPNOTSUPP);
    }
    if p.flags & MOCK_FLAGS_ACCESS_SYZ != 0 {
        crate::warn_limited!("MOCK_FLAGS_ACCESS_SYZ (syzkaller IOVA encoding) is not supported");
        return Err(Errno::EOPNOTSUPP);
    }
    let mut items = sa.items.lock().unwrap();
    let paddrs = sa
        .access
        .pin_pages(p.iova, p.length, p.flags & MOCK_FLAGS_ACCESS_WRITE != 0)?;
    let undo = |e: Errno| {
        sa.access.unpin_pages(p.iova, p.length);
        e
    };
    if p.uptr != 0 {
        let head = p.iova % PAGE_SIZE;
        let first = p
            .uptr
            .checked_sub(head)
            .ok_or(Errno::EFAULT)
            .map_err(undo)?;
        let mine = super::checks::caller_paddrs(u, first, paddrs.len() as u64).map_err(undo)?;
        if mine != paddrs {
            return Err(undo(Errno::EBADE));
        }
    }
    let id = items.next_id;
    items.next_id = items.next_id.wrapping_add(1);
    items.list.push(Item {
        id,
        iova: p.iova,
        length: p.length,
    });
    p.out_access_pages_id = id;
    if let Err(e) = super::respond_payload(u, cmd, &p) {
        items.list.pop();
        return Err(undo(e));
    }
    Ok(())
}

/// ACCESS_RW: copy between the caller's buffer and the IOAS through the access.
pub fn access_rw(u: &Ucmd, cmd: &iommu_test_cmd) -> Result<(), Errno> {
    let p: iommu_test_cmd_access_rw = super::payload(cmd);
    if p.length > MAX_ACCESS_LENGTH {
        return Err(Errno::ENOMEM);
    }
    if p.flags & !(MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH | MOCK_FLAGS_ACCESS_SYZ) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let sa = access_of_fd(u, cmd.id)?;
    let write = p.flags & MOCK_ACCESS_RW_WRITE != 0;
    let mut buf = vec![0u8; usize_from(p.length)];
    if write {
        u.mem.read(p.uptr, &mut buf).map_err(|_| Errno::EFAULT)?;
    }
    if p.flags & MOCK_FLAGS_ACCESS_SYZ != 0 {
        crate::warn_limited!("MOCK_FLAGS_ACCESS_SYZ (syzkaller IOVA encoding) is not supported");
        return Err(Errno::EOPNOTSUPP);
    }
    sa.access.rw(p.iova, &mut buf, write)?;
    if !write {
        u.mem.write(p.uptr, &buf).map_err(|_| Errno::EFAULT)?;
    }
    Ok(())
}

/// DESTROY_ACCESS_PAGES: unpin one item; ENOENT when the access has no such item.
pub fn destroy_access_pages(u: &Ucmd, cmd: &iommu_test_cmd) -> Result<(), Errno> {
    let p: iommu_test_cmd_destroy_access_pages = super::payload(cmd);
    let sa = access_of_fd(u, cmd.id)?;
    let mut items = sa.items.lock().unwrap();
    let pos = items
        .list
        .iter()
        .position(|it| it.id == p.access_pages_id)
        .ok_or(Errno::ENOENT)?;
    let it = items.list.remove(pos);
    sa.access.unpin_pages(it.iova, it.length);
    Ok(())
}

/// ACCESS_REPLACE_IOAS: move the access to another IOAS of its own context.
pub fn replace_ioas(u: &Ucmd, cmd: &iommu_test_cmd) -> Result<(), Errno> {
    let p: iommu_test_cmd_access_replace_ioas = super::payload(cmd);
    let sa = access_of_fd(u, cmd.id)?;
    if sa.access.ioas_id().is_none() {
        return Err(Errno::ENOENT);
    }
    sa.access.replace(&sa.ctx, p.ioas_id)
}
