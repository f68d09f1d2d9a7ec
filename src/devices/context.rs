//! How a device finds and keeps the iommufd context a caller names by fd.
//!
//! The kernel's bound device keeps its iommufd file referenced. Here the daemon that owns the
//! contexts (dispatch) hands out a [`ContextHold`]: the context, and whatever keeps it from being
//! torn down while a binding uses it. Devices only see this interface, not the daemon.

use crate::objects::Context;
use nix::errno::Errno;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// A context kept alive for as long as this value lives.
pub trait HeldContext: Send + Sync {
    fn context(&self) -> &Arc<Context>;
}

/// A held context (derefs to it).
pub struct ContextHold(Box<dyn HeldContext>);

impl ContextHold {
    pub fn new(held: Box<dyn HeldContext>) -> Self {
        Self(held)
    }

    pub fn context(&self) -> &Arc<Context> {
        self.0.context()
    }
}

impl std::ops::Deref for ContextHold {
    type Target = Arc<Context>;

    fn deref(&self) -> &Arc<Context> {
        self.0.context()
    }
}

/// Finds the iommufd context a caller's fd (already duplicated into the daemon) belongs to.
pub trait ContextResolver: Send + Sync {
    fn resolve(&self, file: BorrowedFd<'_>) -> Result<ContextHold, Errno>;
}
