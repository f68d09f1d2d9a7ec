//! The selftest's object fds (UIOMMUFD_HANDLE_BIND of a test access or dma-buf), as they plug into
//! the daemon's handle registry.

use super::access::TestAccess;
use super::dmabuf::TestDmabuf;
use crate::dispatch::handles::{PluggedKinds, PluggedObject};
use crate::dispatch::private_abi::*;
use crate::objects::Context;
use nix::errno::Errno;
use std::sync::Arc;

/// The selftest's handle kinds; `served` tells whether the daemon serves the selftest surface.
pub struct SelftestHandleKinds {
    pub served: bool,
}

impl PluggedKinds for SelftestHandleKinds {
    fn claims(&self, kind: u32) -> Result<bool, Errno> {
        let ours = matches!(
            kind,
            UIOMMUFD_HANDLE_TEST_ACCESS | UIOMMUFD_HANDLE_TEST_DMABUF
        );
        if ours && !self.served {
            // As IOMMU_TEST_CMD itself on a production kernel.
            return Err(Errno::ENOTTY);
        }
        Ok(ours)
    }

    fn make(
        &self,
        req: &uiommufd_handle_bind,
        ctx: &Arc<Context>,
    ) -> Result<Arc<dyn PluggedObject>, Errno> {
        match req.kind {
            UIOMMUFD_HANDLE_TEST_ACCESS => Ok(TestAccess::create(ctx, req.arg0, req.arg1)?),
            UIOMMUFD_HANDLE_TEST_DMABUF => Ok(TestDmabuf::create(req.arg0.into())?),
            // Only the kinds `claims` answered true for reach here.
            _ => Err(Errno::EINVAL),
        }
    }
}

impl PluggedObject for TestAccess {
    fn object_id(&self) -> u32 {
        TestAccess::object_id(self)
    }

    fn kind_name(&self) -> &'static str {
        "selftest access (IOMMU_TEST_OP_CREATE_ACCESS)"
    }

    fn holds_context(&self) -> bool {
        true
    }

    fn release_may_free(&self, id: u32) -> bool {
        // An access with no IOAS is being torn down: its old IOAS is about to lose it.
        TestAccess::object_id(self) == id || self.ioas_id().is_none_or(|i| i == id)
    }

    fn release(&self) {
        TestAccess::release(self);
    }
}

impl PluggedObject for TestDmabuf {
    fn object_id(&self) -> u32 {
        0
    }

    fn kind_name(&self) -> &'static str {
        "dma-buf (IOMMU_TEST_OP_DMABUF_GET)"
    }

    /// A dma-buf outlives the context it was made in.
    fn holds_context(&self) -> bool {
        false
    }

    fn release_may_free(&self, _id: u32) -> bool {
        false
    }

    /// Goes with its last reference.
    fn release(&self) {}
}
