//! A paging domain made of kernel type1 containers.
//!
//! The domain keeps the runs the io_pagetable mapped into it (IOVA → daemon address, length,
//! access) and mirrors them into every container that joins it: a device's container joins when
//! the device attaches to the domain's page table and leaves (everything unmapped) when it
//! detaches. Type1 v2 unmaps only whole mappings, so unmapping part of a run unmaps the run and
//! maps back what remains (only VFIO v1-style splits of the compat node ask for that).
//!
//! The lock is held across MAP_DMA/UNMAP_DMA: those pin and unpin the daemon's own mappings of
//! shmem/hugetlbfs pages and never wait on a client.

use super::container::{Container, Type1Info};
use crate::backends::{Backing, Domain, Prot, VaRun};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The IOVA shape of a container: what VFIO_IOMMU_GET_INFO reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub pgsizes: u64,
    /// `[first, last]` of the usable IOVA space.
    pub aperture: (u64, u64),
    /// Holes inside the aperture (the group's reserved regions, e.g. the MSI window).
    pub reserved: Vec<(u64, u64)>,
}

impl Geometry {
    /// From a container's info: the aperture spans the usable ranges, the gaps between them are
    /// reserved. A container that reports no ranges is taken as the whole 64-bit space.
    pub fn from_info(info: &Type1Info) -> Self {
        let mut ranges = info.ranges.clone();
        ranges.sort_unstable();
        let aperture = match (ranges.first(), ranges.last()) {
            (Some(f), Some(l)) => (f.0, l.1),
            _ => (0, u64::MAX),
        };
        let reserved = ranges
            .windows(2)
            .filter(|w| w[0].1.saturating_add(1) < w[1].0)
            .map(|w| (w[0].1 + 1, w[1].0 - 1))
            .collect();
        Self {
            pgsizes: if info.pgsizes == 0 {
                4096
            } else {
                info.pgsizes
            },
            aperture,
            reserved,
        }
    }
}

#[derive(Debug, Clone)]
struct Run {
    run: VaRun,
    prot: Prot,
}

#[derive(Debug, Default)]
struct State {
    runs: BTreeMap<u64, Run>,
    /// Containers mirroring the runs, with the number of devices that joined each (devices of
    /// one IOMMU group share a container).
    members: Vec<(Arc<dyn Container>, usize)>,
}

impl State {
    /// IOVAs of the runs meeting `[start, last]`, in order.
    fn meeting(&self, start: u64, last: u64) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .runs
            .range(..=last)
            .rev()
            .take_while(|(&k, r)| k + (r.run.len - 1) >= start)
            .map(|(&k, _)| k)
            .collect();
        keys.reverse();
        keys
    }

    /// Maps one run into every member; on failure none keeps it.
    fn map_everywhere(&self, iova: u64, r: &Run) -> Result<(), Errno> {
        for (i, (c, _)) in self.members.iter().enumerate() {
            if let Err(e) = c.map_dma(iova, r.run.va, r.run.len, r.prot) {
                for (undo, _) in &self.members[..i] {
                    let _ = undo.unmap_dma(iova, r.run.len);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

/// A paging domain mirrored into kernel type1 containers.
#[derive(Debug)]
pub struct VfioDomain {
    geometry: Geometry,
    state: Mutex<State>,
}

impl VfioDomain {
    pub fn new(geometry: Geometry) -> Self {
        Self {
            geometry,
            state: Mutex::new(State::default()),
        }
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Makes `container` mirror this domain for one more device: every run is mapped into it
    /// when it is new here. On failure the container is left empty.
    pub fn join(&self, container: Arc<dyn Container>) -> Result<(), Errno> {
        let mut st = self.state.lock().unwrap();
        if let Some(m) = st
            .members
            .iter_mut()
            .find(|m| Arc::ptr_eq(&m.0, &container))
        {
            m.1 += 1;
            return Ok(());
        }
        for (&iova, r) in &st.runs {
            if let Err(e) = container.map_dma(iova, r.run.va, r.run.len, r.prot) {
                let _ = container.unmap_all();
                return Err(e);
            }
        }
        st.members.push((container, 1));
        Ok(())
    }

    /// One device of `container` leaves; with the last one the container stops mirroring this
    /// domain and everything is unmapped from it.
    pub fn leave(&self, container: &Arc<dyn Container>) {
        let mut st = self.state.lock().unwrap();
        let Some(pos) = st.members.iter().position(|m| Arc::ptr_eq(&m.0, container)) else {
            return;
        };
        st.members[pos].1 -= 1;
        if st.members[pos].1 == 0 {
            st.members.remove(pos);
            if let Err(e) = container.unmap_all() {
                crate::error_limited!(%e, "VFIO_IOMMU_UNMAP_DMA(ALL) failed on detach");
            }
        }
    }

    /// `container` lost its IOMMU (its last group left it, which dropped every mapping in the
    /// kernel): it stops mirroring this domain, with nothing left to unmap.
    pub fn forget(&self, container: &Arc<dyn Container>) {
        let mut st = self.state.lock().unwrap();
        st.members.retain(|m| !Arc::ptr_eq(&m.0, container));
    }

    /// Containers mirroring this domain now.
    pub fn members(&self) -> usize {
        self.state.lock().unwrap().members.len()
    }

    /// Bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.state
            .lock()
            .unwrap()
            .runs
            .values()
            .map(|r| r.run.len)
            .sum()
    }
}

impl Domain for VfioDomain {
    fn pgsize_bitmap(&self) -> u64 {
        self.geometry.pgsizes
    }

    fn aperture(&self) -> (u64, u64) {
        self.geometry.aperture
    }

    fn reserved_ranges(&self) -> Vec<(u64, u64)> {
        self.geometry.reserved.clone()
    }

    fn backing(&self) -> Backing {
        Backing::DaemonVa
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn map(&self, _iova: u64, _paddr: u64, _len: u64, _prot: Prot) -> Result<(), Errno> {
        // A container pins by itself; physical addresses are no use to it.
        Err(Errno::EOPNOTSUPP)
    }

    fn map_va(&self, iova: u64, run: &VaRun, prot: Prot) -> Result<(), Errno> {
        if run.len == 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(run.len - 1).ok_or(Errno::EOVERFLOW)?;
        let mut st = self.state.lock().unwrap();
        if !st.meeting(iova, last).is_empty() {
            return Err(Errno::EEXIST);
        }
        let r = Run {
            run: run.clone(),
            prot,
        };
        st.map_everywhere(iova, &r)?;
        st.runs.insert(iova, r);
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let last = iova.saturating_add(len - 1);
        let mut st = self.state.lock().unwrap();
        let mut unmapped = 0;
        for key in st.meeting(iova, last) {
            let Some(r) = st.runs.remove(&key) else {
                continue;
            };
            for (c, _) in &st.members {
                if let Err(e) = c.unmap_dma(key, r.run.len) {
                    crate::error_limited!(%e, iova = key, "VFIO_IOMMU_UNMAP_DMA failed");
                }
            }
            let run_last = key + (r.run.len - 1);
            let (lo, hi) = (key.max(iova), run_last.min(last));
            unmapped += hi - lo + 1;
            // What lies outside the range goes back, as runs of its own.
            let mut pieces = Vec::new();
            if key < lo {
                pieces.push((key, 0, lo - key));
            }
            if run_last > hi {
                pieces.push((hi + 1, hi + 1 - key, run_last - hi));
            }
            for (at, skip, n) in pieces {
                let piece = Run {
                    run: VaRun {
                        va: r.run.va + skip,
                        len: n,
                        keep: r.run.keep.clone(),
                    },
                    prot: r.prot,
                };
                match st.map_everywhere(at, &piece) {
                    Ok(()) => {
                        st.runs.insert(at, piece);
                    }
                    Err(e) => {
                        crate::error_limited!(%e, iova = at, "cannot map back the rest of a split run")
                    }
                }
            }
        }
        unmapped
    }

    fn translate(&self, _iova: u64) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeContainer;
    use super::*;

    const RW: Prot = Prot::READ_WRITE;

    fn run(va: u64, len: u64) -> VaRun {
        VaRun {
            va,
            len,
            keep: Arc::new(()),
        }
    }

    fn geometry() -> Geometry {
        Geometry::from_info(&Type1Info {
            pgsizes: 0x4020_1000,
            ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, 0xffff_ffff_ffff)],
            dma_avail: Some(65535),
        })
    }

    #[test]
    fn geometry_from_ranges() {
        let g = geometry();
        assert_eq!(g.aperture, (0, 0xffff_ffff_ffff));
        assert_eq!(g.reserved, vec![(0xfee0_0000, 0xfeef_ffff)]);
        let none = Geometry::from_info(&Type1Info::default());
        assert_eq!((none.aperture, none.pgsizes), ((0, u64::MAX), 4096));
    }

    #[test]
    fn members_mirror_the_runs() {
        let d = VfioDomain::new(geometry());
        d.map_va(0x10_0000, &run(0x7000_0000, 0x4000), RW).unwrap();
        let a = Arc::new(FakeContainer::default());
        d.join(a.clone()).unwrap();
        assert_eq!(a.mappings(), vec![(0x10_0000, 0x7000_0000, 0x4000)]);
        d.map_va(0x20_0000, &run(0x7100_0000, 0x1000), RW).unwrap();
        let b = Arc::new(FakeContainer::default());
        d.join(b.clone()).unwrap();
        assert_eq!(a.mappings(), b.mappings());
        assert_eq!(d.map_va(0x10_3000, &run(0, 0x1000), RW), Err(Errno::EEXIST));
        assert_eq!(d.unmap(0x10_0000, 0x4000), 0x4000);
        assert_eq!(a.mappings(), vec![(0x20_0000, 0x7100_0000, 0x1000)]);
        let b_dyn: Arc<dyn Container> = b.clone();
        d.leave(&b_dyn);
        assert!(b.mappings().is_empty());
        assert_eq!(a.mappings().len(), 1);
    }

    #[test]
    fn a_partial_unmap_maps_back_the_rest() {
        let d = VfioDomain::new(geometry());
        let c = Arc::new(FakeContainer::default());
        d.join(c.clone()).unwrap();
        d.map_va(0x10_0000, &run(0x7000_0000, 0x4000), RW).unwrap();
        assert_eq!(d.unmap(0x10_1000, 0x1000), 0x1000);
        assert_eq!(
            c.mappings(),
            vec![
                (0x10_0000, 0x7000_0000, 0x1000),
                (0x10_2000, 0x7000_2000, 0x2000)
            ]
        );
        assert_eq!(d.mapped_bytes(), 0x3000);
    }

    #[test]
    fn a_failing_member_leaves_nothing_behind() {
        let d = VfioDomain::new(geometry());
        let good = Arc::new(FakeContainer::default());
        let bad = Arc::new(FakeContainer::with_limit(1));
        d.join(good.clone()).unwrap();
        d.join(bad.clone()).unwrap();
        d.map_va(0x10_0000, &run(0x7000_0000, 0x1000), RW).unwrap();
        // The second mapping exceeds the bad container's entry limit.
        assert_eq!(
            d.map_va(0x20_0000, &run(0x7100_0000, 0x1000), RW),
            Err(Errno::ENOSPC)
        );
        assert_eq!(good.mappings().len(), 1);
        assert_eq!(d.mapped_bytes(), 0x1000);
        // Joining a container that cannot take every run leaves it empty.
        let d2 = VfioDomain::new(geometry());
        d2.map_va(0x10_0000, &run(0x7000_0000, 0x1000), RW).unwrap();
        d2.map_va(0x20_0000, &run(0x7100_0000, 0x1000), RW).unwrap();
        let small = Arc::new(FakeContainer::with_limit(1));
        assert_eq!(d2.join(small.clone()), Err(Errno::ENOSPC));
        assert!(small.mappings().is_empty());
        assert_eq!(d2.members(), 0);
    }
}
