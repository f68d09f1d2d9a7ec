//! The VFIO type1 backend: real devices behind kernel type1 v2 containers.
//!
//! A kernel without CONFIG_IOMMUFD still has VFIO's container API. Each device given with
//! `serve --vfio BDF` is taken at start ([`host`]): its IOMMU group goes into a container of its
//! own. A paging domain of this backend ([`domain::VfioDomain`]) holds the IOAS's mappings as
//! addresses of the daemon's own mappings of the client's shared memory, and mirrors them into
//! the container of every device attached to it with VFIO_IOMMU_MAP_DMA ([`container`]); the kernel
//! pins the pages (charging the daemon), while the io_pagetable charges the client.

pub mod container;
pub mod domain;
#[cfg(test)]
pub mod fake;
pub mod host;

pub use domain::{Geometry, VfioDomain};
pub use host::HostDevice;
