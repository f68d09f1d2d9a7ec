//! Backends: the IOMMU domains an io_pagetable mirrors its mappings into.
//!
//! A domain consumes an area's memory in one of two ways ([`Backing`]):
//! - physical frames: physically contiguous runs (`paddr` is a real physical address: page frame
//!   number from /proc/<pid>/pagemap × CPU page size + offset), one call per run, IO-page
//!   aligned; the io_pagetable pins (and charges) the pages first (the mock, soft domains);
//! - daemon addresses: the same pages mapped into the daemon ([`VaRun`]); the domain pins by
//!   itself (a kernel VFIO type1 container), so the io_pagetable only charges the caller.

pub mod mock;
pub mod vfio;

/// How a domain wants an area's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Physical addresses, pinned by the io_pagetable ([`Domain::map`]).
    Frames,
    /// Daemon virtual addresses; the domain pins by itself ([`Domain::map_va`]).
    DaemonVa,
}

/// A run of an area's memory as mapped into the daemon: `len` bytes at daemon address `va`,
/// kept mapped while `keep` lives.
#[derive(Clone)]
pub struct VaRun {
    pub va: u64,
    pub len: u64,
    pub keep: std::sync::Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for VaRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaRun({:#x}+{:#x})", self.va, self.len)
    }
}

use nix::errno::Errno;

/// Access rights of a mapping, as in IOMMU_IOAS_MAP's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prot {
    pub read: bool,
    pub write: bool,
}

impl Prot {
    pub const READ_WRITE: Prot = Prot {
        read: true,
        write: true,
    };
    pub const READ_ONLY: Prot = Prot {
        read: true,
        write: false,
    };
}

/// One IOMMU page table the io_pagetable keeps in sync with its areas.
pub trait Domain: Send + Sync + std::fmt::Debug {
    /// Bitmap of supported IO page sizes (bit n set: 2^n bytes). The smallest one is the IO page size.
    fn pgsize_bitmap(&self) -> u64;
    /// The IOVA aperture `[start, last]` (inclusive).
    fn aperture(&self) -> (u64, u64);
    /// IOVA ranges `[start, last]` this domain can never map (reserved regions of its devices).
    fn reserved_ranges(&self) -> Vec<(u64, u64)> {
        Vec::new()
    }
    /// The concrete domain, for drivers that need their own type back (device compatibility).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
    /// The concrete domain as a shared handle, for drivers that keep their own type.
    fn as_any_arc(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn std::any::Any + Send + Sync>> {
        None
    }
    /// How this domain consumes memory.
    fn backing(&self) -> Backing {
        Backing::Frames
    }
    /// Maps `run` at `iova` (domains with [`Backing::DaemonVa`]); same rules as [`Domain::map`].
    fn map_va(&self, _iova: u64, _run: &VaRun, _prot: Prot) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Maps `len` bytes at `iova` to physically contiguous memory at `paddr`. EEXIST if any part of
    /// the range is already mapped; on error nothing of the range stays mapped.
    fn map(&self, iova: u64, paddr: u64, len: u64, prot: Prot) -> Result<(), Errno>;
    /// Unmaps `[iova, iova + len)`; returns the bytes that were mapped.
    fn unmap(&self, iova: u64, len: u64) -> u64;
    /// The physical address `iova` translates to, if mapped.
    fn translate(&self, iova: u64) -> Option<u64>;
    /// Whether the domain has dirty-tracking ops (the kernel's `dirty_ops`): without them
    /// IOMMU_HWPT_SET_DIRTY_TRACKING and IOMMU_HWPT_GET_DIRTY_BITMAP are EOPNOTSUPP.
    fn has_dirty_ops(&self) -> bool {
        false
    }
    /// Turns dirty tracking on or off. EOPNOTSUPP where the domain has none.
    fn set_dirty_tracking(&self, _enable: bool) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Reports dirty IO pages in `[iova, iova + len)` through `mark(iova_of_page, page_size)`, and
    /// clears their dirty bits unless `no_clear`.
    fn read_and_clear_dirty(
        &self,
        _iova: u64,
        _len: u64,
        _no_clear: bool,
        _mark: &mut dyn FnMut(u64, u64),
    ) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}
