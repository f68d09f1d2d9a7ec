//! The mock IOMMU domain the kernel's iommufd selftest talks to (IOMMU_TEST_OP_MOCK_DOMAIN and
//! friends), rebuilt in userspace.
//!
//! What the selftest can observe, and therefore what this models:
//! - IO pages of 2 KiB (half a CPU page), so the io_pagetable has to cope with an IO page size
//!   smaller than the CPU page. The IOVA aperture is `[MOCK_APERTURE_START, MOCK_APERTURE_LAST]`.
//! - A "huge" variant (`MOCK_IOMMUPT_HUGE`) whose page sizes are 1 MiB and one CPU page. Mappings
//!   use 1 MiB leaves wherever iova, paddr and length allow it, and dirty state is kept per leaf,
//!   so a write anywhere in a huge leaf reports the whole 1 MiB as dirty.
//! - Dirty tracking: a per-leaf dirty bit that only the selftest's IOMMU_TEST_OP_DIRTY sets
//!   ([`MockDomain::mark_dirty`]) and IOMMU_HWPT_GET_DIRTY_BITMAP reads (and clears).
//! - Each `map()` call is a "run": its first and last leaves are marked, and an `unmap()` that
//!   starts or ends inside a run is counted ([`MockDomain::split_unmaps`]), because a correct
//!   io_pagetable always unmaps whole runs of what it mapped.
//!
//! The page table is a sparse map from the leaf's IOVA to the leaf; leaves never overlap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;

use super::{Domain, Prot};

/// Start of the mock domain's IOVA aperture (iommufd_test.h).
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// Last IOVA (inclusive) of the mock domain's aperture.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
/// The mock's IO page size.
pub const MOCK_PAGE_SIZE: u64 = 2048;
/// The huge variant's large IO page.
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_PAGE_SIZE;
/// Number of IOTLB entries of a mock nested domain.
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: usize = 4;
/// Flag of `iommu_hwpt_invalidate_selftest`: invalidate every entry, ignore the id.
pub const IOMMU_TEST_INVALIDATE_FLAG_ALL: u32 = 1;

/// The CPU page size the huge variant also accepts. The selftest targets x86-64 (4 KiB pages).
const CPU_PAGE_SIZE: u64 = 4096;

/// Page sizes of the default mock: every power of two from 2 KiB to 64 TiB except 512 GiB — what
/// an AMD v1 style table with 2 KiB granule and three leaf levels offers (the kernel mock's format).
/// Only the smallest one matters to the io_pagetable (the IOVA alignment); this model stores
/// 2 KiB leaves.
pub const MOCK_PGSIZE_BITMAP: u64 = ((1u64 << 47) - 1) & !((1u64 << 11) - 1) & !(1u64 << 39);
/// Page sizes of the huge variant: 1 MiB and the CPU page.
pub const MOCK_HUGE_PGSIZE_BITMAP: u64 = MOCK_HUGE_PAGE_SIZE | CPU_PAGE_SIZE;
/// IOVA space of the huge variant, which keeps the page table's own aperture (56-bit IOVA).
const MOCK_HUGE_APERTURE_LAST: u64 = (1 << 56) - 1;

/// Which kind of mock page table (`iommu_hwpt_selftest.pagetable_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockKind {
    /// MOCK_IOMMUPT_DEFAULT: 2 KiB IO pages, aperture [16 MiB, 2 GiB).
    Normal,
    /// MOCK_IOMMUPT_HUGE: 1 MiB leaves where possible, else CPU-page leaves; full 56-bit IOVA space.
    Huge,
}

impl MockKind {
    /// The kind for `iommu_hwpt_selftest.pagetable_type`, None for an unknown type.
    pub fn from_pagetable_type(t: u32) -> Option<Self> {
        match t {
            0 => Some(Self::Normal),
            1 => Some(Self::Huge),
            _ => None,
        }
    }
}

/// One leaf of the mock page table, as the inspection helpers return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockPte {
    pub iova: u64,
    pub paddr: u64,
    pub size: u64,
    pub prot: Prot,
    pub dirty: bool,
    /// First leaf of a `map()` call.
    pub run_start: bool,
    /// Last leaf of a `map()` call.
    pub run_last: bool,
}

#[derive(Debug, Clone, Copy)]
struct Leaf {
    paddr: u64,
    size: u64,
    prot: Prot,
    dirty: bool,
    run_start: bool,
    run_last: bool,
}

#[derive(Debug, Default)]
struct State {
    leaves: BTreeMap<u64, Leaf>,
    dirty_tracking: bool,
    split_unmaps: u64,
}

impl State {
    /// IOVAs of the leaves intersecting `[start, last]`, in order.
    fn intersecting(&self, start: u64, last: u64) -> Vec<u64> {
        let mut keys = Vec::new();
        if let Some((&k, l)) = self.leaves.range(..start).next_back() {
            if k + (l.size - 1) >= start {
                keys.push(k);
            }
        }
        keys.extend(self.leaves.range(start..=last).map(|(&k, _)| k));
        keys
    }

    fn leaf_at(&self, iova: u64) -> Option<(u64, &Leaf)> {
        let (&k, l) = self.leaves.range(..=iova).next_back()?;
        (iova - k < l.size).then_some((k, l))
    }
}

/// The userspace mock IOMMU domain. See the module documentation.
#[derive(Debug)]
pub struct MockDomain {
    kind: MockKind,
    dirty_ops: bool,
    state: Mutex<State>,
}

impl MockDomain {
    /// A mock domain without dirty tracking support (an HWPT allocated without
    /// IOMMU_HWPT_ALLOC_DIRTY_TRACKING): enabling dirty tracking fails with EINVAL and reading the
    /// dirty state with EOPNOTSUPP.
    pub fn new(kind: MockKind) -> Self {
        Self {
            kind,
            dirty_ops: false,
            state: Mutex::new(State::default()),
        }
    }

    /// A mock domain with dirty tracking support (IOMMU_HWPT_ALLOC_DIRTY_TRACKING).
    pub fn with_dirty_ops(kind: MockKind) -> Self {
        Self {
            dirty_ops: true,
            ..Self::new(kind)
        }
    }

    pub fn kind(&self) -> MockKind {
        self.kind
    }

    /// Whether dirty tracking is currently enabled.
    pub fn dirty_tracking(&self) -> bool {
        self.lock().dirty_tracking
    }

    /// The smallest IO page size (the IOVA alignment the domain imposes; the page step of
    /// IOMMU_TEST_OP_MD_CHECK_MAP).
    pub fn io_page_size(&self) -> u64 {
        1 << self.pgsize_bitmap().trailing_zeros()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent table (all updates are validated
        // first), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leaf size `map()` uses at `iova`/`paddr` with `left` bytes still to map.
    fn leaf_size(&self, iova: u64, paddr: u64, left: u64) -> u64 {
        match self.kind {
            MockKind::Normal => MOCK_PAGE_SIZE,
            MockKind::Huge => {
                let h = MOCK_HUGE_PAGE_SIZE;
                if iova.is_multiple_of(h) && paddr.is_multiple_of(h) && left >= h {
                    h
                } else {
                    CPU_PAGE_SIZE
                }
            }
        }
    }

    /// Number of leaves in the table.
    pub fn leaf_count(&self) -> usize {
        self.lock().leaves.len()
    }

    /// Total bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.lock().leaves.values().map(|l| l.size).sum()
    }

    /// Every leaf, in IOVA order.
    pub fn leaves(&self) -> Vec<MockPte> {
        self.lock()
            .leaves
            .iter()
            .map(|(&iova, l)| MockPte {
                iova,
                paddr: l.paddr,
                size: l.size,
                prot: l.prot,
                dirty: l.dirty,
                run_start: l.run_start,
                run_last: l.run_last,
            })
            .collect()
    }

    /// The mapping as maximal physically contiguous stretches `(iova, paddr, len, prot)`, merging
    /// neighbouring leaves (also across `map()` calls) that continue each other.
    pub fn mappings(&self) -> Vec<(u64, u64, u64, Prot)> {
        let st = self.lock();
        let mut out: Vec<(u64, u64, u64, Prot)> = Vec::new();
        for (&iova, l) in &st.leaves {
            if let Some(last) = out.last_mut() {
                if last.0 + last.2 == iova && last.1 + last.2 == l.paddr && last.3 == l.prot {
                    last.2 += l.size;
                    continue;
                }
            }
            out.push((iova, l.paddr, l.size, l.prot));
        }
        out
    }

    /// The translation `(iova, paddr)` of every IO page (smallest page size) of `[iova, iova+len)`,
    /// `None` where unmapped: what IOMMU_TEST_OP_MD_CHECK_MAP compares with the caller's pages.
    /// EINVAL if `iova` or `len` is not a multiple of the IO page size or the range overflows.
    pub fn check_map(&self, iova: u64, len: u64) -> Result<Vec<(u64, Option<u64>)>, Errno> {
        let ps = self.io_page_size();
        if !iova.is_multiple_of(ps) || !len.is_multiple_of(ps) || iova.checked_add(len).is_none() {
            return Err(Errno::EINVAL);
        }
        let st = self.lock();
        Ok((0..len / ps)
            .map(|i| {
                let a = iova + i * ps;
                (a, st.leaf_at(a).map(|(k, l)| l.paddr + (a - k)))
            })
            .collect())
    }

    /// Access rights of the leaf covering `iova`.
    pub fn prot_at(&self, iova: u64) -> Option<Prot> {
        self.lock().leaf_at(iova).map(|(_, l)| l.prot)
    }

    /// Sets the dirty bit of every leaf intersecting `[iova, iova+len)`, like the hardware would on
    /// a DMA write (IOMMU_TEST_OP_DIRTY calls it once per set bit of its bitmap). Returns the
    /// number of leaves marked. EINVAL if dirty tracking is not enabled.
    pub fn mark_dirty(&self, iova: u64, len: u64) -> Result<u64, Errno> {
        let mut st = self.lock();
        if !st.dirty_tracking {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(0);
        }
        let last = iova.checked_add(len - 1).ok_or(Errno::EINVAL)?;
        let keys = st.intersecting(iova, last);
        for k in &keys {
            if let Some(l) = st.leaves.get_mut(k) {
                l.dirty = true;
            }
        }
        Ok(keys.len() as u64)
    }

    /// How many `unmap()` calls started or ended inside a run (a `map()` call's leaves): a correct
    /// io_pagetable never does that. Counted per call, not per end.
    pub fn split_unmaps(&self) -> u64 {
        self.lock().split_unmaps
    }
}

impl Domain for MockDomain {
    fn as_any_arc(self: Arc<Self>) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        Some(self)
    }

    fn pgsize_bitmap(&self) -> u64 {
        match self.kind {
            MockKind::Normal => MOCK_PGSIZE_BITMAP,
            MockKind::Huge => MOCK_HUGE_PGSIZE_BITMAP,
        }
    }

    fn aperture(&self) -> (u64, u64) {
        match self.kind {
            MockKind::Normal => (MOCK_APERTURE_START, MOCK_APERTURE_LAST),
            MockKind::Huge => (0, MOCK_HUGE_APERTURE_LAST),
        }
    }

    /// EINVAL: `iova`, `paddr` or `len` not a multiple of the IO page, `len` 0, or neither read
    /// nor write access. ERANGE: the range leaves the aperture. EEXIST: any part already mapped.
    /// Nothing changes on error.
    fn map(&self, iova: u64, paddr: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        let ps = self.io_page_size();
        if len == 0
            || !iova.is_multiple_of(ps)
            || !paddr.is_multiple_of(ps)
            || !len.is_multiple_of(ps)
        {
            return Err(Errno::EINVAL);
        }
        if !prot.read && !prot.write {
            return Err(Errno::EINVAL);
        }
        let (ap_start, ap_last) = self.aperture();
        let last = iova.checked_add(len - 1).ok_or(Errno::ERANGE)?;
        paddr.checked_add(len - 1).ok_or(Errno::ERANGE)?;
        if iova < ap_start || last > ap_last {
            return Err(Errno::ERANGE);
        }
        let mut st = self.lock();
        if !st.intersecting(iova, last).is_empty() {
            return Err(Errno::EEXIST);
        }
        let mut off = 0;
        while off < len {
            let size = self.leaf_size(iova + off, paddr + off, len - off);
            st.leaves.insert(
                iova + off,
                Leaf {
                    paddr: paddr + off,
                    size,
                    prot,
                    dirty: false,
                    run_start: off == 0,
                    run_last: off + size == len,
                },
            );
            off += size;
        }
        Ok(())
    }

    /// Removes every leaf intersecting the range (a huge leaf goes whole, as with a real IOMMU)
    /// and returns the bytes they covered.
    fn unmap(&self, iova: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let last = iova.saturating_add(len - 1);
        let mut st = self.lock();
        let keys = st.intersecting(iova, last);
        let mut bytes = 0;
        let mut split = false;
        for (i, k) in keys.iter().enumerate() {
            if let Some(l) = st.leaves.remove(k) {
                bytes += l.size;
                if (i == 0 && (!l.run_start || *k < iova))
                    || (i + 1 == keys.len() && (!l.run_last || k + (l.size - 1) > last))
                {
                    split = true;
                }
            }
        }
        if split {
            st.split_unmaps += 1;
            crate::warn_limited!(
                iova,
                len,
                "mock domain: unmap does not cover whole map runs"
            );
        }
        bytes
    }

    fn translate(&self, iova: u64) -> Option<u64> {
        self.lock().leaf_at(iova).map(|(k, l)| l.paddr + (iova - k))
    }

    /// Whether the domain was created with dirty tracking support.
    fn has_dirty_ops(&self) -> bool {
        self.dirty_ops
    }

    /// EINVAL when enabling on a domain without dirty tracking support; disabling always works.
    /// Toggling keeps the dirty bits.
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno> {
        if enable && !self.dirty_ops {
            return Err(Errno::EINVAL);
        }
        self.lock().dirty_tracking = enable;
        Ok(())
    }

    /// Reports each dirty leaf intersecting the range once, clipped to the range (a huge leaf
    /// reports its whole 1 MiB when the range covers it). EOPNOTSUPP without dirty support.
    fn read_and_clear_dirty(
        &self,
        iova: u64,
        len: u64,
        no_clear: bool,
        mark: &mut dyn FnMut(u64, u64),
    ) -> Result<(), Errno> {
        if !self.dirty_ops {
            return Err(Errno::EOPNOTSUPP);
        }
        if len == 0 {
            return Ok(());
        }
        let last = iova.checked_add(len - 1).ok_or(Errno::EINVAL)?;
        let mut st = self.lock();
        for k in st.intersecting(iova, last) {
            let Some(l) = st.leaves.get_mut(&k) else {
                continue;
            };
            if !l.dirty {
                continue;
            }
            let start = k.max(iova);
            let end = (k + (l.size - 1)).min(last);
            mark(start, end - start + 1);
            if !no_clear {
                l.dirty = false;
            }
        }
        Ok(())
    }
}

/// The mock nested (stage-1) domain: no page table, just the IOTLB entries the selftest sets at
/// allocation (`iommu_hwpt_selftest.iotlb`), clears through IOMMU_HWPT_INVALIDATE and checks with
/// IOMMU_TEST_OP_MD_CHECK_IOTLB.
#[derive(Debug)]
pub struct MockNested {
    iotlb: Mutex<[u32; MOCK_NESTED_DOMAIN_IOTLB_NUM]>,
}

impl MockNested {
    pub fn new(iotlb: u32) -> Self {
        Self {
            iotlb: Mutex::new([iotlb; MOCK_NESTED_DOMAIN_IOTLB_NUM]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, [u32; MOCK_NESTED_DOMAIN_IOTLB_NUM]> {
        self.iotlb.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One `iommu_hwpt_invalidate_selftest` entry: EOPNOTSUPP for unknown flags, EINVAL for an id
    /// out of range (checked even with FLAG_ALL), else zero the entry (or all entries).
    pub fn invalidate(&self, flags: u32, iotlb_id: u32) -> Result<(), Errno> {
        if flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let id = iotlb_id as usize;
        if id >= MOCK_NESTED_DOMAIN_IOTLB_NUM {
            return Err(Errno::EINVAL);
        }
        let mut t = self.lock();
        if flags & IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
            *t = [0; MOCK_NESTED_DOMAIN_IOTLB_NUM];
        } else {
            t[id] = 0;
        }
        Ok(())
    }

    /// The IOTLB entry `id`, None when out of range.
    pub fn iotlb(&self, id: u32) -> Option<u32> {
        self.lock().get(id as usize).copied()
    }

    /// IOMMU_TEST_OP_MD_CHECK_IOTLB: EINVAL unless entry `id` exists and holds `expected`.
    pub fn check_iotlb(&self, id: u32, expected: u32) -> Result<(), Errno> {
        match self.iotlb(id) {
            Some(v) if v == expected => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Prot = Prot::READ_WRITE;
    const RO: Prot = Prot::READ_ONLY;
    const A: u64 = MOCK_APERTURE_START;
    const MIB: u64 = 1 << 20;

    fn dirty_of(d: &MockDomain, iova: u64, len: u64, no_clear: bool) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        d.read_and_clear_dirty(iova, len, no_clear, &mut |a, l| v.push((a, l)))
            .unwrap();
        v
    }

    #[test]
    fn geometry() {
        let d = MockDomain::new(MockKind::Normal);
        assert_eq!(d.io_page_size(), 2048);
        assert_eq!(d.aperture(), (16 << 20, (2 << 30) - 1));
        assert_eq!(MOCK_PGSIZE_BITMAP, 0x7f7f_ffff_f800);
        let h = MockDomain::new(MockKind::Huge);
        assert_eq!(h.pgsize_bitmap(), MIB | 4096);
        assert_eq!(h.io_page_size(), 4096);
        assert_eq!(MockKind::from_pagetable_type(1), Some(MockKind::Huge));
        assert_eq!(MockKind::from_pagetable_type(2), None);
    }

    #[test]
    fn map_unmap_half_cpu_pages() {
        let d = MockDomain::new(MockKind::Normal);
        // 2 KiB granularity: a mapping may start in the middle of a CPU page, on either side.
        d.map(A + 2048, 0x10_0800, 3 * 2048, RW).unwrap();
        assert_eq!(d.leaf_count(), 3);
        assert_eq!(d.translate(A + 2048), Some(0x10_0800));
        assert_eq!(d.translate(A + 2048 + 5), Some(0x10_0805));
        assert_eq!(
            d.translate(A + 4 * 2048 - 1),
            Some(0x10_0800 + 3 * 2048 - 1)
        );
        assert_eq!(d.translate(A), None);
        assert_eq!(d.translate(A + 4 * 2048), None);
        assert_eq!(d.mappings(), vec![(A + 2048, 0x10_0800, 6144, RW)]);
        let cm = d.check_map(A, 4 * 2048).unwrap();
        assert_eq!(
            cm,
            vec![
                (A, None),
                (A + 2048, Some(0x10_0800)),
                (A + 4096, Some(0x10_1000)),
                (A + 6144, Some(0x10_1800))
            ]
        );
        assert_eq!(d.check_map(A + 1, 2048), Err(Errno::EINVAL));
        assert_eq!(d.check_map(A, 1024), Err(Errno::EINVAL));
        let leaves = d.leaves();
        assert!(leaves[0].run_start && !leaves[0].run_last);
        assert!(!leaves[2].run_start && leaves[2].run_last);
        assert_eq!(d.unmap(A + 2048, 3 * 2048), 6144);
        assert_eq!(d.leaf_count(), 0);
        assert_eq!(d.split_unmaps(), 0);
        assert_eq!(d.unmap(A, 4096), 0);
    }

    #[test]
    fn prot_kept_and_not_merged_across_prot() {
        let d = MockDomain::new(MockKind::Normal);
        d.map(A, 0x20_0000, 2048, RO).unwrap();
        d.map(A + 2048, 0x20_0800, 2048, RW).unwrap();
        assert_eq!(d.prot_at(A), Some(RO));
        assert_eq!(d.prot_at(A + 2048), Some(RW));
        assert_eq!(d.mappings().len(), 2);
        assert_eq!(
            d.map(A + 8192, 0, 2048, Prot::default()),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn misaligned_rejected() {
        let d = MockDomain::new(MockKind::Normal);
        assert_eq!(d.map(A + 1024, 0, 2048, RW), Err(Errno::EINVAL));
        assert_eq!(d.map(A, 1024, 2048, RW), Err(Errno::EINVAL));
        assert_eq!(d.map(A, 0, 3072, RW), Err(Errno::EINVAL));
        assert_eq!(d.map(A, 0, 0, RW), Err(Errno::EINVAL));
        assert_eq!(d.leaf_count(), 0);
        let h = MockDomain::new(MockKind::Huge);
        // The huge variant's smallest page is the CPU page.
        assert_eq!(h.map(A + 2048, 0, 4096, RW), Err(Errno::EINVAL));
        assert_eq!(h.map(A, 0, 2048, RW), Err(Errno::EINVAL));
    }

    #[test]
    fn eexist_is_atomic() {
        let d = MockDomain::new(MockKind::Normal);
        d.map(A + 4 * 2048, 0x40_0000, 2048, RW).unwrap();
        // Overlaps at the end only: nothing of the new range may stay mapped.
        assert_eq!(d.map(A, 0x50_0000, 5 * 2048, RW), Err(Errno::EEXIST));
        assert_eq!(d.leaf_count(), 1);
        assert_eq!(d.translate(A), None);
        // Overlaps at the start.
        assert_eq!(
            d.map(A + 4 * 2048, 0x50_0000, 2 * 2048, RW),
            Err(Errno::EEXIST)
        );
        assert_eq!(d.translate(A + 5 * 2048), None);
        // Neighbours are fine.
        d.map(A + 3 * 2048, 0x50_0000, 2048, RW).unwrap();
        d.map(A + 5 * 2048, 0x50_0000, 2048, RW).unwrap();
        assert_eq!(d.leaf_count(), 3);
        // Overlap with a huge leaf from the middle.
        let h = MockDomain::new(MockKind::Huge);
        h.map(0, 0, MIB, RW).unwrap();
        assert_eq!(h.map(MIB - 4096, 1 << 30, 8192, RW), Err(Errno::EEXIST));
        assert_eq!(h.translate(MIB), None);
    }

    #[test]
    fn aperture_enforced() {
        let d = MockDomain::new(MockKind::Normal);
        assert_eq!(d.map(A - 2048, 0, 4096, RW), Err(Errno::ERANGE));
        assert_eq!(
            d.map(MOCK_APERTURE_LAST + 1 - 2048, 0, 4096, RW),
            Err(Errno::ERANGE)
        );
        assert_eq!(d.map(u64::MAX - 2047, 0, 4096, RW), Err(Errno::ERANGE));
        d.map(A, 0, 2048, RW).unwrap();
        d.map(MOCK_APERTURE_LAST + 1 - 2048, 0, 2048, RW).unwrap();
        assert_eq!(d.leaf_count(), 2);
        let h = MockDomain::new(MockKind::Huge);
        h.map(0, 0, 4096, RW).unwrap();
    }

    #[test]
    fn split_unmaps_are_counted_and_return_mapped_bytes() {
        let d = MockDomain::new(MockKind::Normal);
        d.map(A, 0, 4 * 2048, RW).unwrap();
        d.map(A + 4 * 2048, 0x10000, 4 * 2048, RW).unwrap();
        // Two runs unmapped together: fine.
        assert_eq!(d.unmap(A, 8 * 2048), 8 * 2048);
        assert_eq!(d.split_unmaps(), 0);
        d.map(A, 0, 4 * 2048, RW).unwrap();
        assert_eq!(d.unmap(A + 2048, 2048), 2048);
        assert_eq!(d.split_unmaps(), 1);
        // Larger than what is mapped: only mapped bytes count, and covering more is no split.
        assert_eq!(d.unmap(A, 1 << 20), 3 * 2048);
        assert_eq!(d.split_unmaps(), 1);
        // Cutting a huge leaf is a split too.
        let h = MockDomain::new(MockKind::Huge);
        h.map(0, 0, 2 * MIB, RW).unwrap();
        assert_eq!(h.unmap(MIB, 4096), MIB);
        assert_eq!(h.split_unmaps(), 1);
    }

    #[test]
    fn dirty_needs_support_and_tracking() {
        let d = MockDomain::new(MockKind::Normal);
        assert_eq!(d.set_dirty_tracking(true), Err(Errno::EINVAL));
        assert_eq!(d.set_dirty_tracking(false), Ok(()));
        assert_eq!(
            d.read_and_clear_dirty(A, 2048, false, &mut |_, _| {}),
            Err(Errno::EOPNOTSUPP)
        );
        let d = MockDomain::with_dirty_ops(MockKind::Normal);
        d.map(A, 0, 2048, RW).unwrap();
        assert_eq!(d.mark_dirty(A, 2048), Err(Errno::EINVAL));
        d.set_dirty_tracking(true).unwrap();
        assert!(d.dirty_tracking());
        assert_eq!(d.mark_dirty(A, 2048), Ok(1));
        // Unmapped IOVA: nothing to mark.
        assert_eq!(d.mark_dirty(A + 2048, 2048), Ok(0));
    }

    /// The selftest's pattern: every other IO page dirty; read reports exactly those, clears them
    /// unless no_clear.
    #[test]
    fn dirty_bitmap_per_io_page() {
        for no_clear in [false, true] {
            let d = MockDomain::with_dirty_ops(MockKind::Normal);
            let len = 64 * 2048;
            d.map(A, 0x100_0000, len, RW).unwrap();
            d.set_dirty_tracking(true).unwrap();
            for i in (0..64).step_by(2) {
                assert_eq!(d.mark_dirty(A + i * 2048, 2048), Ok(1));
            }
            let want: Vec<(u64, u64)> = (0..64).step_by(2).map(|i| (A + i * 2048, 2048)).collect();
            assert_eq!(dirty_of(&d, A, len, no_clear), want);
            let again = dirty_of(&d, A, len, no_clear);
            if no_clear {
                assert_eq!(again, want);
            } else {
                assert!(again.is_empty());
            }
            // A sub-range only reports (and clears) inside itself.
            d.mark_dirty(A, 4 * 2048).unwrap();
            assert_eq!(dirty_of(&d, A + 2048, 2048, false), vec![(A + 2048, 2048)]);
            let rest = dirty_of(&d, A, 4 * 2048, true);
            assert!(rest.contains(&(A, 2048)) && !rest.contains(&(A + 2048, 2048)));
        }
    }

    #[test]
    fn huge_variant_uses_huge_leaves_and_reports_them_whole() {
        let h = MockDomain::with_dirty_ops(MockKind::Huge);
        // 4 MiB at a 1 MiB aligned iova/paddr, plus a CPU page tail: 4 huge leaves + 1 small.
        h.map(A, 0x4000_0000, 4 * MIB + 4096, RW).unwrap();
        let leaves = h.leaves();
        assert_eq!(leaves.len(), 5);
        assert!(leaves[..4].iter().all(|l| l.size == MIB));
        assert_eq!(leaves[4].size, 4096);
        assert_eq!(
            h.translate(A + MIB + 12345),
            Some(0x4000_0000 + MIB + 12345)
        );
        // paddr not 1 MiB aligned: CPU-page leaves only.
        h.map(1 << 32, 0x1000, MIB, RW).unwrap();
        assert_eq!(h.leaf_count(), 5 + 256);
        h.set_dirty_tracking(true).unwrap();
        // Marking one 2 KiB page of a huge leaf dirties the whole leaf.
        assert_eq!(h.mark_dirty(A + 2048, 2048), Ok(1));
        assert_eq!(h.mark_dirty(A + 2 * MIB, 2048), Ok(1));
        assert_eq!(
            dirty_of(&h, A, 4 * MIB + 4096, true),
            vec![(A, MIB), (A + 2 * MIB, MIB)]
        );
        assert_eq!(dirty_of(&h, A, 4 * MIB + 4096, false).len(), 2);
        assert!(dirty_of(&h, A, 4 * MIB + 4096, false).is_empty());
        // Unmapping part of a huge leaf takes the whole leaf.
        assert_eq!(h.unmap(A, 4096), MIB);
        assert_eq!(h.translate(A + 8192), None);
        assert_eq!(h.translate(A + MIB), Some(0x4000_0000 + MIB));
    }

    #[test]
    fn nested_iotlb() {
        let n = MockNested::new(0xbadbeef);
        n.check_iotlb(3, 0xbadbeef).unwrap();
        assert_eq!(n.check_iotlb(4, 0xbadbeef), Err(Errno::EINVAL));
        n.invalidate(0, 1).unwrap();
        assert_eq!(n.iotlb(1), Some(0));
        assert_eq!(n.iotlb(0), Some(0xbadbeef));
        assert_eq!(n.invalidate(2, 0), Err(Errno::EOPNOTSUPP));
        assert_eq!(n.invalidate(0, 4), Err(Errno::EINVAL));
        n.invalidate(IOMMU_TEST_INVALIDATE_FLAG_ALL, 0).unwrap();
        assert!((0..4).all(|i| n.iotlb(i) == Some(0)));
    }

    #[test]
    fn concurrent_maps_do_not_overlap() {
        let d = std::sync::Arc::new(MockDomain::new(MockKind::Normal));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || d.map(A, 0, 16 * 2048, RW).is_ok())
            })
            .collect();
        let ok = hs
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&x| x)
            .count();
        assert_eq!(ok, 1);
        assert_eq!(d.leaf_count(), 16);
    }
}
