//! The in-daemon access API (the kernel's iommufd_access): emulated devices and the selftest pin or
//! copy through an IOAS by IOVA, without a domain.

use super::{checked_last, IoPagetable, PAGE_SIZE};
use crate::narrow::usize_from;
use nix::errno::Errno;

impl IoPagetable {
    fn access_check_prot(write: bool, area: &super::Area) -> Result<(), Errno> {
        let ok = if write {
            area.prot.write
        } else {
            area.prot.read
        };
        if ok {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }

    /// Pins `[iova, iova + length)` for an access; returns the physical address of each CPU page.
    /// The range must start on a page boundary of the backing and be contiguously mapped.
    pub fn access_pin(&mut self, iova: u64, length: u64, write: bool) -> Result<Vec<u64>, Errno> {
        self.access_pin_locked(iova, length, write, false)
    }

    /// [`Self::access_pin`]; with `lock`, the pin also locks the areas it touches against
    /// IOAS_UNMAP (EBUSY) until [`Self::access_unpin_locked`] with `unlock` releases it.
    pub fn access_pin_locked(
        &mut self,
        iova: u64,
        length: u64,
        write: bool,
        lock: bool,
    ) -> Result<Vec<u64>, Errno> {
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let last = checked_last(iova, length)?;
        let keys = self.contiguous_keys(iova, last);
        let keys = match keys {
            Ok(k) => k,
            Err(e) => {
                // Report a misaligned or protected area before the gap, as the kernel's walk does.
                self.first_walk_error(iova, last, write)?;
                return Err(e);
            }
        };
        let mut out = Vec::new();
        let mut pinned: Vec<(u64, u64, u64)> = Vec::new();
        let mut cur = iova;
        let n = keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            let area = self.area(key).expect("area").clone();
            let end = last.min(area.last);
            let res = (|| {
                let aligned_start = area.start_byte_of(cur).is_multiple_of(PAGE_SIZE);
                let aligned_end =
                    i + 1 == n || area.start_byte_of(area.last) % PAGE_SIZE == PAGE_SIZE - 1;
                if area.prevent_access || !aligned_start || !aligned_end {
                    return Err(Errno::EINVAL);
                }
                if area.pages.source().is_dmabuf() {
                    return Err(Errno::EOPNOTSUPP);
                }
                Self::access_check_prot(write, &area)?;
                let (first, lastp) = area.page_span(cur, end);
                area.pages
                    .pin(first, lastp, write)
                    .map(|p| (first, lastp, p))
            })();
            match res {
                Ok((first, lastp, paddrs)) => {
                    out.extend(paddrs);
                    pinned.push((key, first, lastp));
                    let a = self.area_mut(key).expect("area");
                    a.num_accesses += 1;
                    if lock {
                        a.num_locks += 1;
                    }
                }
                Err(e) => {
                    for (k, f, l) in pinned {
                        let a = self.area_mut(k).expect("area");
                        a.num_accesses -= 1;
                        if lock {
                            a.num_locks -= 1;
                        }
                        a.pages.unpin(f, l);
                    }
                    return Err(e);
                }
            }
            cur = end.wrapping_add(1);
        }
        Ok(out)
    }

    fn first_walk_error(&self, iova: u64, last: u64, write: bool) -> Result<(), Errno> {
        let mut cur = iova;
        for area in self.area_range_from(iova) {
            // A pending area is a gap until its map commits.
            if area.iova > cur || area.pending {
                break;
            }
            // Every area before a gap must start and end on a page boundary of its backing.
            let aligned = area.start_byte_of(cur).is_multiple_of(PAGE_SIZE)
                && area.start_byte_of(area.last) % PAGE_SIZE == PAGE_SIZE - 1;
            if area.prevent_access || !aligned {
                return Err(Errno::EINVAL);
            }
            Self::access_check_prot(write, area)?;
            if area.last >= last {
                break;
            }
            cur = area.last + 1;
        }
        Ok(())
    }

    /// Undoes [`Self::access_pin`] for exactly the same range.
    pub fn access_unpin(&mut self, iova: u64, length: u64) {
        self.access_unpin_locked(iova, length, false)
    }

    /// Undoes [`Self::access_pin_locked`]; `unlock` must match its `lock`.
    pub fn access_unpin_locked(&mut self, iova: u64, length: u64, unlock: bool) {
        if length == 0 {
            return;
        }
        let Ok(last) = checked_last(iova, length) else {
            return;
        };
        let Ok(keys) = self.contiguous_keys(iova, last) else {
            crate::warn_limited!(iova, length, "access unpin of a range that is not mapped");
            return;
        };
        let mut cur = iova;
        for key in keys {
            let area = self.area_mut(key).expect("area");
            let end = last.min(area.last);
            let (first, lastp) = area.page_span(cur, end);
            area.pages.unpin(first, lastp);
            area.num_accesses = area.num_accesses.saturating_sub(1);
            if unlock {
                area.num_locks = area.num_locks.saturating_sub(1);
            }
            cur = end.wrapping_add(1);
        }
    }

    /// Copies between `buf` and IOVA `[iova, iova + buf.len())`.
    pub fn access_rw(&self, iova: u64, buf: &mut [u8], write: bool) -> Result<(), Errno> {
        if buf.is_empty() {
            return Err(Errno::EINVAL);
        }
        let last = checked_last(iova, buf.len() as u64)?;
        let mut cur = iova;
        let mut done = 0usize;
        for area in self.area_range_from(iova) {
            if area.iova > cur || area.pending {
                break;
            }
            if area.prevent_access {
                return Err(Errno::EINVAL);
            }
            Self::access_check_prot(write, area)?;
            if area.pages.source().is_dmabuf() {
                return Err(Errno::EINVAL);
            }
            let end = last.min(area.last);
            let n = usize_from(end - cur + 1);
            let off = area.start_byte_of(cur);
            let chunk = &mut buf[done..done + n];
            if write {
                area.pages.write(off, chunk)?;
            } else {
                area.pages.read(off, chunk)?;
            }
            done += n;
            if end == last {
                return Ok(());
            }
            cur = end + 1;
        }
        Err(Errno::ENOENT)
    }
}
