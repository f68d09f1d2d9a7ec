//! What `serve --record` (an [`IoctlObserver`]) is told of the daemon's work.

use crate::caller::CallerMemory;
use crate::objects::Context;
use crate::service::NodeKind;
use nix::errno::Errno;

/// Sees every context's open, ioctls and release (session recording, `serve --record`).
pub trait IoctlObserver: Send + Sync {
    /// A context was created for an open of `node`.
    fn open(&self, ctx: &Context, node: &NodeKind);
    /// Wraps one ioctl: must run `call` once and return its result; may look at caller memory
    /// before and after. `call` runs the ioctl on the memory it is given: `mem` itself, or a view
    /// of it that watches what the ioctl reads and writes.
    fn ioctl(
        &self,
        ctx: &Context,
        cmd: u32,
        arg: u64,
        mem: &dyn CallerMemory,
        call: &mut dyn FnMut(&dyn CallerMemory) -> Result<i64, Errno>,
    ) -> Result<i64, Errno>;
    /// The context's file was released (before its objects are destroyed).
    fn release(&self, ctx: &Context);
    /// The open file of context `file_ctx` became the fd of an object of context `origin`
    /// (UIOMMUFD_HANDLE_BIND, from `uiommufd launch`), or failed to (the launcher relays the
    /// errno, and closes the file): the fd-returning ioctl the program issued never reached the
    /// daemon as such.
    fn handle_bound(&self, _file_ctx: u64, _origin: u64, _bound: &BoundHandle) {}
    /// A read, write or the close of the open file of context `file_ctx`, bound as an object's fd
    /// (see [`Self::handle_bound`]); a close is told before the object lets go of its context.
    fn handle_io(&self, _file_ctx: u64, _io: HandleIo<'_>) {}
    /// Wraps an iommufd ioctl of a device node (VFIO_DEVICE_BIND_IOMMUFD, ATTACH/DETACH_IOMMUFD_PT)
    /// on the device's open file `file` (a number of the observer's own): must run `call` once.
    /// `bound_context` says which context the device is bound to (after a BIND, the caller's).
    #[allow(clippy::too_many_arguments)]
    fn device_ioctl(
        &self,
        _device: &str,
        _file: u64,
        _cmd: u32,
        _arg: u64,
        mem: &dyn CallerMemory,
        call: &mut dyn FnMut(&dyn CallerMemory) -> Result<i64, Errno>,
        _bound_context: &dyn Fn() -> Option<u64>,
    ) -> Result<i64, Errno> {
        call(mem)
    }
    /// The device's open file `file` (see [`Self::device_ioctl`]) was released.
    fn device_release(&self, _file: u64) {}
}

/// An object fd made through UIOMMUFD_HANDLE_BIND (see [`IoctlObserver::handle_bound`]).
pub struct BoundHandle {
    /// The new object's ID, or why the bind (the program's fd-returning ioctl) failed.
    pub object_id: Result<u32, Errno>,
    /// What the fd stands for, in words.
    pub what: &'static str,
    /// The UIOMMUFD_HANDLE_* kind and its arguments (the fd-returning ioctl's inputs).
    pub kind: u32,
    pub args: [u32; 4],
}

/// What happened on a bound object fd (see [`IoctlObserver::handle_io`]).
pub enum HandleIo<'a> {
    /// read(2) of `size` bytes and what it returned.
    Read {
        size: u32,
        result: Result<&'a [u8], Errno>,
    },
    /// write(2) of `data` and what it returned.
    Write {
        data: &'a [u8],
        result: Result<u32, Errno>,
    },
    Close,
}
