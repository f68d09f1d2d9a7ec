//! The boundary between the transport and everything below it.
//!
//! The transport (FUSE/CUSE) knows nothing of iommufd: it turns OPEN into [`Service::open`], every
//! IOCTL/READ/WRITE on that handle into calls on the returned [`OpenFile`], and RELEASE into
//! [`OpenFile::release`]. Handlers are synchronous and short; the transport runs each request on its
//! own task so that requests of one open file may run concurrently.

use crate::caller::CallerMemory;
use nix::errno::Errno;
use std::sync::Arc;

/// Which node a file was opened on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// `/dev/iommu`: an iommufd context (which also answers the VFIO container ioctls).
    Iommu,
    /// `/dev/vfio/vfio`: the VFIO container compatibility node, also an iommufd context.
    VfioContainer,
    /// `vfio/devices/<name>`: an emulated or proxied VFIO device.
    Device(String),
}

/// Everything a transport serves.
pub trait Service: Send + Sync + 'static {
    /// A new open(); each open of `/dev/iommu` is its own context.
    fn open(&self, node: &NodeKind) -> Result<Arc<dyn OpenFile>, Errno>;
    /// An open() by user `uid` (the FUSE header's): the daemon charges the new context to it.
    fn open_by(&self, node: &NodeKind, _uid: u32) -> Result<Arc<dyn OpenFile>, Errno> {
        self.open(node)
    }
    /// Like [`Service::open_by`], also naming the opening thread (for status: which program
    /// holds what); 0 when it is not visible.
    fn open_from(&self, node: &NodeKind, uid: u32, _tid: u32) -> Result<Arc<dyn OpenFile>, Errno> {
        self.open_by(node, uid)
    }
    /// The device names to publish under `vfio/devices/`.
    fn device_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// The text of the transport's read-only `status` file.
    fn status(&self) -> String {
        String::new()
    }
}

/// Per-open state.
pub trait OpenFile: Send + Sync {
    /// One ioctl. `arg` is the caller's raw argument (a pointer for every iommufd/VFIO ioctl);
    /// the returned value becomes ioctl()'s return value.
    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno>;
    /// pread() at a file offset (VFIO device regions).
    fn read(&self, _offset: u64, _size: u32, _mem: &dyn CallerMemory) -> Result<Vec<u8>, Errno> {
        Err(Errno::EINVAL)
    }
    /// pwrite() at a file offset; returns the bytes written.
    fn write(&self, _offset: u64, _data: &[u8], _mem: &dyn CallerMemory) -> Result<u32, Errno> {
        Err(Errno::EINVAL)
    }
    /// Whether ioctl `cmd` must be answered on the transport's reading thread instead of a worker:
    /// only for requests that the daemon sends to itself and that touch no client memory (a worker
    /// waits for the answer, so queueing it behind other work could deadlock).
    fn inline_ioctl(&self, _cmd: u32) -> bool {
        false
    }
    /// The last close of this open file (also after the caller was killed).
    fn release(&self);
}
