//! A device node's open file as the [`IoctlObserver`] sees it (`serve --record`): its iommufd
//! ioctls (VFIO_DEVICE_BIND_IOMMUFD, ATTACH/DETACH_IOMMUFD_PT) go through the observer, so a
//! recorded session names the device its IDs came from; everything else passes straight through.

use super::daemon::{Daemon, IoctlObserver};
use crate::caller::CallerMemory;
use crate::service::OpenFile;
use nix::errno::Errno;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uiommufd_uapi::vfio::{
    VFIO_DEVICE_ATTACH_IOMMUFD_PT, VFIO_DEVICE_BIND_IOMMUFD, VFIO_DEVICE_DETACH_IOMMUFD_PT,
};

/// Numbers device opens for the observer (each open is its own binding).
static NEXT_FILE: AtomicU64 = AtomicU64::new(1);

pub(super) struct ObservedDevice {
    inner: Arc<dyn OpenFile>,
    daemon: Arc<Daemon>,
    observer: Arc<dyn IoctlObserver>,
    name: String,
    file: u64,
}

impl ObservedDevice {
    pub(super) fn wrap(
        inner: Arc<dyn OpenFile>,
        daemon: Arc<Daemon>,
        observer: Arc<dyn IoctlObserver>,
        name: &str,
    ) -> Arc<dyn OpenFile> {
        Arc::new(Self {
            inner,
            daemon,
            observer,
            name: name.to_string(),
            file: NEXT_FILE.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The context this device is bound to now (whichever file bound it).
    fn bound_context(&self) -> Option<u64> {
        let bindings = self.daemon.device_bindings.get()?;
        bindings()
            .into_iter()
            .find(|(n, _)| *n == self.name)
            .and_then(|(_, b)| b.map(|(ctx, _)| ctx))
    }
}

impl OpenFile for ObservedDevice {
    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        match cmd {
            VFIO_DEVICE_BIND_IOMMUFD
            | VFIO_DEVICE_ATTACH_IOMMUFD_PT
            | VFIO_DEVICE_DETACH_IOMMUFD_PT => self.observer.device_ioctl(
                &self.name,
                self.file,
                cmd,
                arg,
                mem,
                &mut |m| self.inner.ioctl(cmd, arg, m),
                &|| self.bound_context(),
            ),
            _ => self.inner.ioctl(cmd, arg, mem),
        }
    }

    fn read(&self, offset: u64, size: u32, mem: &dyn CallerMemory) -> Result<Vec<u8>, Errno> {
        self.inner.read(offset, size, mem)
    }

    fn write(&self, offset: u64, data: &[u8], mem: &dyn CallerMemory) -> Result<u32, Errno> {
        self.inner.write(offset, data, mem)
    }

    fn inline_ioctl(&self, cmd: u32) -> bool {
        self.inner.inline_ioctl(cmd)
    }

    fn release(&self) {
        // Before the device's own release: the binding's context still exists.
        self.observer.device_release(self.file);
        self.inner.release();
    }
}
