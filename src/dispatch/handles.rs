//! Open files of our node that stand for an object instead of a context: the fds that
//! fd-returning operations hand out (see `crate::dispatch::private_abi` for the protocol).
//!
//! A fresh open of `/dev/iommu` becomes a handle through the private `UIOMMUFD_HANDLE_BIND`. The
//! handle keeps a [`ContextHold`] on the context it was created in, so that the context outlives
//! every handle made from it, as the kernel's object holds a reference on its iommufd file (the
//! daemon never keeps a file of its own node open for that: see `daemon::Lifetime`).
//! Closing the handle's last fd releases the object: a selftest access is destroyed, a fault or
//! vEVENT queue only loses the fd as a user (IOMMU_DESTROY removes it), a dma-buf goes away.
//!
//! The registry knows the kinds of the iommufd uAPI itself; the selftest's kinds plug in through
//! [`PluggedKinds`] and [`PluggedObject`], and the daemon passes in what binding needs of it, so
//! this module names neither.

use crate::caller::{read_struct, write_struct, CallerMemory};
use crate::devices::context::ContextHold;
use crate::dispatch::private_abi::*;
use crate::objects::fault::FaultQueue;
use crate::objects::veventq::VeventQueue;
use crate::objects::{Context, Object, ObjectUser};
use nix::errno::Errno;
use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What a handle's fd stands for.
#[derive(Clone)]
pub enum HandleObject {
    Fault(Arc<FaultQueue>),
    Veventq(Arc<VeventQueue>),
    /// An object of a kind made outside this module (the selftest's access or dma-buf).
    Plugged(Arc<dyn PluggedObject>),
}

impl HandleObject {
    /// The plugged object as a `T`; None for anything else.
    pub fn plugged<T: PluggedObject>(self) -> Option<Arc<T>> {
        match self {
            Self::Plugged(object) => {
                let any: Arc<dyn Any + Send + Sync> = object;
                any.downcast().ok()
            }
            Self::Fault(_) | Self::Veventq(_) => None,
        }
    }
}

/// An object of a handle kind made outside this module: the registry knows it only this way.
/// Such an object takes no reads or writes and is no user the fd keeps of a context's object.
pub trait PluggedObject: Any + Send + Sync {
    /// Its ID in the context it was made in (0 when it is no object of a context).
    fn object_id(&self) -> u32;
    /// What the fd stands for, in words.
    fn kind_name(&self) -> &'static str;
    /// Whether the handle keeps the context it was made in alive.
    fn holds_context(&self) -> bool;
    /// Whether closing the handle would drop a user of object `id` of its context.
    fn release_may_free(&self, id: u32) -> bool;
    /// The handle's last fd was closed (or nobody will ever hold it).
    fn release(&self);
}

/// The handle kinds made outside this module.
pub trait PluggedKinds {
    /// Whether `kind` is one of them; an error, before the iommufd fd is looked at, when it is
    /// one but cannot be made here.
    fn claims(&self, kind: u32) -> Result<bool, Errno>;
    /// The object `req` (of a kind [`Self::claims`]) asks for, in `ctx`.
    fn make(
        &self,
        req: &uiommufd_handle_bind,
        ctx: &Arc<Context>,
    ) -> Result<Arc<dyn PluggedObject>, Errno>;
}

/// A bound handle as the registry knows it.
struct Entry {
    ctx_id: u64,
    object_id: u32,
    object: HandleObject,
}

/// One daemon's bound handles, by the id each open file answers to the daemon's private query,
/// and a count of their releases (IOMMU_DESTROY waits on it for an object fd's close).
#[derive(Default)]
pub struct HandleRegistry {
    bound: Mutex<HashMap<u64, Entry>>,
    released: (Mutex<u64>, Condvar),
}

impl HandleRegistry {
    fn bound(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A count of releases so far, to wait from ([`Self::wait_release_after`]).
    pub fn releases(&self) -> u64 {
        *self.released.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a handle release after `seen` (a value of [`Self::releases`]) or `deadline`.
    pub fn wait_release_after(&self, seen: u64, deadline: std::time::Instant) {
        let (count, cv) = &self.released;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n == seen {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            n = cv
                .wait_timeout(n, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn note_release(&self) {
        let (count, cv) = &self.released;
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        cv.notify_all();
    }

    /// Whether closing some open handle of context `ctx_id` would drop a user of object `id`:
    /// the handle's own object (an access, a fault queue) or the IOAS an access is attached to.
    pub fn release_may_free(&self, ctx_id: u64, id: u32) -> bool {
        self.bound().values().any(|e| {
            e.ctx_id == ctx_id
                && match &e.object {
                    HandleObject::Fault(_) | HandleObject::Veventq(_) => e.object_id == id,
                    HandleObject::Plugged(p) => p.release_may_free(id),
                }
        })
    }

    /// What `file` (a duplicate of some caller's fd) is a handle of; None for any other file
    /// (a handle of another daemon included).
    pub fn object_of_file(&self, file: BorrowedFd<'_>) -> Option<HandleObject> {
        let id = crate::caller::context_query::ask(file).ok()?;
        self.bound().get(&id).map(|e| e.object.clone())
    }

    /// What the caller's `fd` is a handle of: EBADF when it is not open, None for any other file.
    pub fn object_of_fd(
        &self,
        mem: &dyn CallerMemory,
        fd: i32,
    ) -> Result<Option<HandleObject>, Errno> {
        let file = mem.get_fd(fd).map_err(|_| Errno::EBADF)?;
        let object = self.object_of_file(file.as_fd());
        crate::caller::context_query::close_dup(file);
        Ok(object)
    }
}

pub struct Handle {
    /// The registry of the daemon the handle was bound in.
    registry: Arc<HandleRegistry>,
    ctx: Arc<Context>,
    object_id: u32,
    object: HandleObject,
    /// The fd's user of a fault or vEVENT queue (IOMMU_DESTROY of it is EBUSY until the close).
    user: Option<ObjectUser>,
    /// Keeps the creating context alive while the object lives in it; a dma-buf does not.
    hold: Mutex<Option<ContextHold>>,
    /// What UIOMMUFD_HANDLE_BIND asked for: the kind and its four arguments.
    request: (u32, [u32; 4]),
}

/// IOMMU_FAULT_QUEUE_ALLOC's object: a fault queue the fd holds as a user.
fn fault_queue_alloc(
    ctx: &Context,
    flags: u32,
) -> Result<(u32, Arc<FaultQueue>, ObjectUser), Errno> {
    if flags != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let q = Arc::new(FaultQueue::default());
    let (id, user) = ctx.insert_held(Object::from(q.clone()))?;
    Ok((id, q, user))
}

/// UIOMMUFD_HANDLE_BIND on the open file known to the daemon as `file_id`, bound in `registry`;
/// `context_of_file` finds the context behind a duplicate of the caller's iommufd fd (EBADFD for
/// a file that is no context of this daemon).
pub fn bind(
    registry: &Arc<HandleRegistry>,
    plugged: &dyn PluggedKinds,
    file_id: u64,
    arg: u64,
    mem: &dyn CallerMemory,
    context_of_file: &dyn Fn(BorrowedFd<'_>) -> Result<ContextHold, Errno>,
) -> Result<Handle, Errno> {
    let context_of_fd = |fd: i32| {
        let iommufd = mem.get_fd(fd).map_err(|_| Errno::EBADF)?;
        let hold = context_of_file(iommufd.as_fd());
        crate::caller::context_query::close_dup(iommufd);
        hold
    };
    bind_with(registry, plugged, file_id, arg, mem, &context_of_fd)
}

/// [`bind`] with the caller's iommufd fd resolved to a context by `context_of_fd` (EBADF for an
/// fd that is not open, EBADFD for a file that is no context of this daemon): the seam unit
/// tests use, since only a served node answers the real query.
pub(crate) fn bind_with(
    registry: &Arc<HandleRegistry>,
    plugged: &dyn PluggedKinds,
    file_id: u64,
    arg: u64,
    mem: &dyn CallerMemory,
    context_of_fd: &dyn Fn(i32) -> Result<ContextHold, Errno>,
) -> Result<Handle, Errno> {
    let mut req: uiommufd_handle_bind = read_struct(mem, arg)?;
    if req.size as usize != std::mem::size_of::<uiommufd_handle_bind>() {
        return Err(Errno::EINVAL);
    }
    let plugged_kind = plugged.claims(req.kind)?;
    let hold = context_of_fd(req.iommufd)?;
    let ctx = hold.context().clone();
    let (object_id, object, user) = match req.kind {
        _ if plugged_kind => {
            let p = plugged.make(&req, &ctx)?;
            (p.object_id(), HandleObject::Plugged(p), None)
        }
        UIOMMUFD_HANDLE_FAULT_QUEUE => {
            let (id, q, user) = fault_queue_alloc(&ctx, req.arg0)?;
            (id, HandleObject::Fault(q), Some(user))
        }
        UIOMMUFD_HANDLE_VEVENTQ => {
            let (id, q, user) = VeventQueue::alloc(&ctx, req.arg0, req.arg1, req.arg2, req.arg3)?;
            (id, HandleObject::Veventq(q), Some(user))
        }
        other => {
            crate::warn_limited!(kind = other, "UIOMMUFD_HANDLE_BIND of an unknown kind");
            return Err(Errno::EINVAL);
        }
    };
    let holds_ctx = match &object {
        HandleObject::Plugged(p) => p.holds_context(),
        HandleObject::Fault(_) | HandleObject::Veventq(_) => true,
    };
    let handle = Handle {
        registry: registry.clone(),
        ctx: ctx.clone(),
        object_id,
        object,
        user,
        hold: Mutex::new(holds_ctx.then_some(hold)),
        request: (req.kind, [req.arg0, req.arg1, req.arg2, req.arg3]),
    };
    req.out_object_id = object_id;
    if let Err(e) = write_struct(mem, arg, &req) {
        // Nobody will ever hold this fd: the object goes as if it had never been made.
        handle.drop_object();
        if matches!(
            handle.object,
            HandleObject::Fault(_) | HandleObject::Veventq(_)
        ) {
            let _ = ctx.destroy(object_id);
        }
        return Err(e);
    }
    handle.registry.bound().insert(
        file_id,
        Entry {
            ctx_id: ctx.id,
            object_id,
            object: handle.object.clone(),
        },
    );
    tracing::debug!(
        ctx = ctx.id,
        handle = file_id,
        object = object_id,
        "handle bound"
    );
    Ok(handle)
}

impl Handle {
    fn drop_object(&self) {
        match &self.object {
            HandleObject::Plugged(p) => p.release(),
            HandleObject::Fault(_) | HandleObject::Veventq(_) => {
                if let Some(user) = &self.user {
                    user.release();
                }
            }
        }
    }

    /// The handle's last fd was closed.
    /// The context the object lives in, and its ID there (0 for a dma-buf).
    pub fn origin(&self) -> (u64, u32) {
        (self.ctx.id, self.object_id)
    }

    /// The kind UIOMMUFD_HANDLE_BIND asked for and its arguments (the fd-returning ioctl's
    /// inputs, as `uiommufd launch` passed them on).
    pub fn request(&self) -> (u32, [u32; 4]) {
        self.request
    }

    /// What the fd stands for, in words.
    pub fn kind_name(&self) -> &'static str {
        match &self.object {
            HandleObject::Fault(_) => "fault queue (IOMMU_FAULT_QUEUE_ALLOC)",
            HandleObject::Veventq(_) => "vEVENT queue (IOMMU_VEVENTQ_ALLOC)",
            HandleObject::Plugged(p) => p.kind_name(),
        }
    }

    pub fn release(&self, file_id: u64) {
        // Out of the registry only once the object let go, so IOMMU_DESTROY keeps waiting till then.
        self.drop_object();
        self.registry.bound().remove(&file_id);
        self.registry.note_release();
        // Last: the context may go with this hold.
        drop(self.hold.lock().unwrap().take());
        tracing::debug!(handle = file_id, "handle released");
    }

    /// read() on the handle's fd (the file offset means nothing: these fds are streams).
    pub fn read(&self, size: u32) -> Result<Vec<u8>, Errno> {
        match &self.object {
            HandleObject::Fault(q) => q.read(size as usize),
            HandleObject::Veventq(q) => q.read(size as usize),
            HandleObject::Plugged(_) => Err(Errno::EINVAL),
        }
    }

    /// write() on the handle's fd.
    pub fn write(&self, data: &[u8]) -> Result<u32, Errno> {
        match &self.object {
            HandleObject::Fault(q) => q
                .write(data)
                .and_then(|n| u32::try_from(n).map_err(|_| Errno::EOVERFLOW)),
            HandleObject::Veventq(_) | HandleObject::Plugged(_) => Err(Errno::EINVAL),
        }
    }

    /// What `read(fd, buf, 0)` answers (0 or an errno): only a fault queue with nothing to hand
    /// out reads 0; the others want at least a header or take no reads.
    pub fn zero_read_errno(&self) -> u32 {
        match &self.object {
            HandleObject::Fault(q) if q.pending().0 == 0 => 0,
            _ => Errno::EINVAL as u32,
        }
    }
}

/// Answers UIOMMUFD_ZERO_READ with `errno`.
pub fn answer_zero_read(errno: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
    let mut q: uiommufd_zero_read = read_struct(mem, arg)?;
    if q.size as usize != std::mem::size_of::<uiommufd_zero_read>() {
        return Err(Errno::EINVAL);
    }
    q.out_errno = errno;
    write_struct(mem, arg, &q)?;
    Ok(0)
}
