//! The IOMMU domain in front of emulated devices: a software page table that records what the
//! io_pagetable maps. The emulated device itself never walks it; it reaches memory by IOVA through
//! an access (see `dmacopy`), as the kernel's emulated devices (mdev) do.

use crate::backends::{Domain, Prot};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// 4 KiB, 2 MiB and 1 GiB pages, as an x86 second-stage table.
pub const SOFT_PGSIZE_BITMAP: u64 = (1 << 12) | (1 << 21) | (1 << 30);
/// A 48-bit IOVA space.
pub const SOFT_APERTURE: (u64, u64) = (0, (1 << 48) - 1);

#[derive(Debug, Clone, Copy)]
struct Run {
    len: u64,
    paddr: u64,
    prot: Prot,
}

/// A page table of runs keyed by IOVA; runs never overlap.
#[derive(Debug, Default)]
pub struct SoftDomain {
    runs: Mutex<BTreeMap<u64, Run>>,
}

impl SoftDomain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Mapped bytes (tests, status).
    pub fn mapped_bytes(&self) -> u64 {
        self.runs.lock().unwrap().values().map(|r| r.len).sum()
    }
}

fn overlaps(runs: &BTreeMap<u64, Run>, start: u64, last: u64) -> Vec<u64> {
    let mut keys: Vec<u64> = runs
        .range(..=last)
        .rev()
        .take_while(|(&k, r)| k + (r.len - 1) >= start)
        .map(|(&k, _)| k)
        .collect();
    keys.reverse();
    keys
}

impl Domain for SoftDomain {
    fn pgsize_bitmap(&self) -> u64 {
        SOFT_PGSIZE_BITMAP
    }

    fn aperture(&self) -> (u64, u64) {
        SOFT_APERTURE
    }

    fn map(&self, iova: u64, paddr: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
        if last > SOFT_APERTURE.1 {
            return Err(Errno::EINVAL);
        }
        let mut runs = self.runs.lock().unwrap();
        if !overlaps(&runs, iova, last).is_empty() {
            return Err(Errno::EEXIST);
        }
        runs.insert(iova, Run { len, paddr, prot });
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let last = iova.saturating_add(len - 1);
        let mut runs = self.runs.lock().unwrap();
        let mut unmapped = 0;
        for key in overlaps(&runs, iova, last) {
            let Some(run) = runs.remove(&key) else {
                continue;
            };
            let run_last = key + (run.len - 1);
            let (lo, hi) = (key.max(iova), run_last.min(last));
            unmapped += hi - lo + 1;
            if key < lo {
                runs.insert(
                    key,
                    Run {
                        len: lo - key,
                        ..run
                    },
                );
            }
            if run_last > hi {
                runs.insert(
                    hi + 1,
                    Run {
                        len: run_last - hi,
                        paddr: run.paddr + (hi + 1 - key),
                        prot: run.prot,
                    },
                );
            }
        }
        unmapped
    }

    fn translate(&self, iova: u64) -> Option<u64> {
        let runs = self.runs.lock().unwrap();
        let (&k, r) = runs.range(..=iova).next_back()?;
        (iova - k < r.len).then(|| r.paddr + (iova - k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Prot = Prot::READ_WRITE;

    #[test]
    fn map_translate_unmap() {
        let d = SoftDomain::new();
        d.map(0x10000, 0x500000, 0x4000, RW).unwrap();
        assert_eq!(d.map(0x13000, 0, 0x1000, RW), Err(Errno::EEXIST));
        assert_eq!(d.map(0xf000, 0, 0x2000, RW), Err(Errno::EEXIST));
        d.map(0x14000, 0x900000, 0x1000, RW).unwrap();
        assert_eq!(d.translate(0x11234), Some(0x501234));
        assert_eq!(d.translate(0x14000), Some(0x900000));
        assert_eq!(d.translate(0x15000), None);
        // A partial unmap splits the run.
        assert_eq!(d.unmap(0x11000, 0x1000), 0x1000);
        assert_eq!(d.translate(0x11000), None);
        assert_eq!(d.translate(0x12000), Some(0x502000));
        assert_eq!(d.unmap(0, 1 << 40), 0x4000);
        assert_eq!(d.mapped_bytes(), 0);
    }
}
