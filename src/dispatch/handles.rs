//! Open files of our node that stand for an object instead of a context: the fds that
//! fd-returning operations hand out (see `uiommufd_uapi::handles` for the protocol).
//!
//! A fresh open of `/dev/iommu` becomes a handle through the private `UIOMMUFD_HANDLE_BIND`. The
//! handle keeps a duplicate of the iommufd it was created in, so that iommufd's context outlives
//! every handle made from it, as the kernel's object holds a reference on its iommufd file.
//! Closing the handle's last fd destroys the object.

use super::daemon::Daemon;
use super::selftest::access::{self, TestAccess};
use crate::caller::{read_struct, write_struct, CallerMemory};
use nix::errno::Errno;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use uiommufd_uapi::handles::*;

/// Live handles per context id.
fn live() -> &'static Mutex<HashMap<u64, usize>> {
    static LIVE: OnceLock<Mutex<HashMap<u64, usize>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// How many handles made in context `ctx_id` are still open.
pub fn live_in(ctx_id: u64) -> usize {
    live().lock().unwrap().get(&ctx_id).copied().unwrap_or(0)
}

pub struct Handle {
    ctx_id: u64,
    object: Arc<TestAccess>,
    /// Holds the creating iommufd open (its release would destroy the context).
    _iommufd: OwnedFd,
}

/// UIOMMUFD_HANDLE_BIND on the open file known to the daemon as `file_id`.
pub fn bind(
    daemon: &Daemon,
    file_id: u64,
    arg: u64,
    mem: &dyn CallerMemory,
) -> Result<Handle, Errno> {
    let mut req: uiommufd_handle_bind = read_struct(mem, arg)?;
    if req.size as usize != std::mem::size_of::<uiommufd_handle_bind>() {
        return Err(Errno::EINVAL);
    }
    let iommufd = mem.get_fd(req.iommufd).map_err(|_| Errno::EBADF)?;
    let ctx = daemon.context_of_file(iommufd.as_fd())?;
    let object = match req.kind {
        UIOMMUFD_HANDLE_TEST_ACCESS => TestAccess::create(&ctx, req.arg0, req.arg1)?,
        other => {
            tracing::warn!(kind = other, "UIOMMUFD_HANDLE_BIND of an unknown kind");
            return Err(Errno::EINVAL);
        }
    };
    req.out_object_id = object.object_id();
    if let Err(e) = write_struct(mem, arg, &req) {
        object.release();
        return Err(e);
    }
    access::register(file_id, &object);
    *live().lock().unwrap().entry(ctx.id).or_default() += 1;
    tracing::debug!(
        ctx = ctx.id,
        handle = file_id,
        object = req.out_object_id,
        "handle bound"
    );
    Ok(Handle {
        ctx_id: ctx.id,
        object,
        _iommufd: iommufd,
    })
}

impl Handle {
    /// The handle's last fd was closed.
    pub fn release(&self, file_id: u64) {
        access::unregister(file_id);
        self.object.release();
        let mut live = live().lock().unwrap();
        if let Some(n) = live.get_mut(&self.ctx_id) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.ctx_id);
            }
        }
        drop(live);
        tracing::debug!(handle = file_id, "handle released");
    }
}
