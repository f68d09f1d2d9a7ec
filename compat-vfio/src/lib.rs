//! VFIO type1 container compatibility: the container ioctls (`/dev/vfio/vfio`, and the same ioctls
//! on `/dev/iommu`) expressed as operations on the context's compat IOAS.
//!
//! The crate knows nothing of uiommufd's internals: the daemon implements [`CompatHost`] for its
//! context and routes every ioctl number the iommufd table does not own to [`vfio_ioctl`].

use nix::errno::Errno;

/// What the compatibility layer needs from an iommufd context.
pub trait CompatHost {
    /// Reads caller memory (EFAULT when unreadable).
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes caller memory (EFAULT when unwritable).
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno>;
    /// The compat IOAS (IOMMU_VFIO_IOAS / created on attach); ENODEV when there is none.
    fn compat_ioas(&self) -> Result<u32, Errno>;
    /// Maps `length` bytes of caller memory at `user_va` to the fixed `iova` (IOAS_MAP semantics and
    /// errno, the caller's memory being the requester's).
    fn map(&self, ioas: u32, iova: u64, user_va: u64, length: u64, read: bool, write: bool)
        -> Result<(), Errno>;
    /// Unmaps `[iova, iova + length)` (superset rule); bytes unmapped.
    fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<u64, Errno>;
    /// Unmaps everything; bytes unmapped.
    fn unmap_all(&self, ioas: u32) -> Result<u64, Errno>;
    /// Splits areas so each IOVA in `iovas` becomes the last byte of an area (type1 v1 unmap).
    fn cut(&self, ioas: u32, iovas: &[u64]) -> Result<(), Errno>;
    fn large_pages_disabled(&self, ioas: u32) -> bool;
    /// IOMMU_OPTION_HUGE_PAGES = 0 on the IOAS (EINVAL when domains already hold mappings).
    fn disable_large_pages(&self, ioas: u32) -> Result<(), Errno>;
    /// The IOAS's current IOVA alignment (1 when it has no domain).
    fn iova_alignment(&self, ioas: u32) -> u64;
    /// The usable IOVA ranges `[start, last]` (complement of the reserved ranges).
    fn usable_ranges(&self, ioas: u32) -> Vec<(u64, u64)>;
    /// True when every page table attached to the IOAS enforces cache coherency.
    fn enforces_cache_coherency(&self, ioas: u32) -> bool;
    /// Whether the caller has CAP_SYS_RAWIO (needed for the no-IOMMU type).
    fn caller_has_sys_rawio(&self) -> bool;
}

/// Handles one VFIO container ioctl. `None` when `cmd` is not a container ioctl (→ ENOTTY).
pub fn vfio_ioctl(host: &dyn CompatHost, cmd: u32, arg: u64) -> Option<Result<i64, Errno>> {
    let _ = (host, cmd, arg);
    None
}
