//! A model of a kernel type1 v2 container for unit tests: the rules the domain must live with
//! (no overlap, whole-mapping unmaps, a mapping count limit), with no kernel and no device.

use super::container::Container;
use crate::backends::Prot;
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Type1's default `dma_entry_limit`.
pub const DEFAULT_ENTRY_LIMIT: usize = 65535;

#[derive(Debug)]
pub struct FakeContainer {
    limit: usize,
    maps: Mutex<BTreeMap<u64, (u64, u64, Prot)>>,
}

impl Default for FakeContainer {
    fn default() -> Self {
        Self::with_limit(DEFAULT_ENTRY_LIMIT)
    }
}

impl FakeContainer {
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            maps: Mutex::new(BTreeMap::new()),
        }
    }

    /// `(iova, vaddr, size)` of every mapping, by IOVA.
    pub fn mappings(&self) -> Vec<(u64, u64, u64)> {
        self.maps
            .lock()
            .unwrap()
            .iter()
            .map(|(&i, &(v, s, _))| (i, v, s))
            .collect()
    }
}

impl Container for FakeContainer {
    fn map_dma(&self, iova: u64, vaddr: u64, size: u64, _prot: Prot) -> Result<(), Errno> {
        if size == 0 || (iova | vaddr | size) & 0xfff != 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(size - 1).ok_or(Errno::EINVAL)?;
        let mut maps = self.maps.lock().unwrap();
        let overlaps = maps
            .range(..=last)
            .next_back()
            .is_some_and(|(&k, &(_, s, _))| k + s > iova);
        if overlaps {
            return Err(Errno::EEXIST);
        }
        if maps.len() >= self.limit {
            return Err(Errno::ENOSPC);
        }
        maps.insert(iova, (vaddr, size, _prot));
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64, Errno> {
        if size == 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(size - 1).ok_or(Errno::EINVAL)?;
        let mut maps = self.maps.lock().unwrap();
        // Type1 v2 refuses a range that starts or ends inside a mapping.
        if let Some((&k, &(_, s, _))) = maps.range(..iova).next_back() {
            if k + s > iova {
                return Err(Errno::EINVAL);
            }
        }
        if let Some((&k, &(_, s, _))) = maps.range(..=last).next_back() {
            if k + s - 1 > last {
                return Err(Errno::EINVAL);
            }
        }
        let keys: Vec<u64> = maps.range(iova..=last).map(|(&k, _)| k).collect();
        let mut n = 0;
        for k in keys {
            n += maps.remove(&k).map_or(0, |m| m.1);
        }
        Ok(n)
    }

    fn unmap_all(&self) -> Result<u64, Errno> {
        let mut maps = self.maps.lock().unwrap();
        let n = maps.values().map(|m| m.1).sum();
        maps.clear();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_keeps_type1_rules() {
        let c = FakeContainer::with_limit(2);
        c.map_dma(0x1000, 0x10000, 0x2000, Prot::READ_WRITE)
            .unwrap();
        assert_eq!(
            c.map_dma(0x2000, 0, 0x1000, Prot::READ_WRITE),
            Err(Errno::EEXIST)
        );
        assert_eq!(c.unmap_dma(0x2000, 0x1000), Err(Errno::EINVAL));
        assert_eq!(c.unmap_dma(0, 0x2000), Err(Errno::EINVAL));
        c.map_dma(0x8000, 0x20000, 0x1000, Prot::READ_ONLY).unwrap();
        assert_eq!(
            c.map_dma(0x9000, 0, 0x1000, Prot::READ_WRITE),
            Err(Errno::ENOSPC)
        );
        assert_eq!(c.unmap_dma(0, 0x10000), Ok(0x3000));
        assert_eq!(c.unmap_all(), Ok(0));
    }
}
