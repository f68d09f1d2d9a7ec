//! The io_pagetable: the IOVA space of one IOAS.
//!
//! Design
//! ------
//! An IOAS is a set of non-overlapping *areas*. Each area maps the IOVA range `[iova, last]` to a
//! byte window of a [`Pages`] (a caller's anonymous memory or a file the daemon mapped). Areas sit in
//! a `BTreeMap` keyed by their first IOVA, so "the area containing X" and "areas intersecting
//! [A, B]" are one ordered-map lookup each, and map/unmap cost O(log n) in the number of areas.
//! Automatic IOVA allocation searches an index of the holes between areas and reserved ranges
//! (`holes.rs`), so it stays O(log n) however fragmented the space is; that index is brought up
//! to date lazily, by the next allocation, so fixed-IOVA map/unmap do not pay for it.
//!
//! Three kinds of ranges constrain where areas may go:
//! * *reserved* ranges (outside a domain's aperture, device reserved regions, test reservations)
//!   can never hold an area, for fixed or automatic IOVAs alike;
//! * *allowed* ranges (IOMMU_IOAS_ALLOW_IOVAS) only steer automatic allocation, and may not
//!   intersect a reserved range;
//! * `iova_alignment`, the largest of the attached domains' smallest IO page size, of the
//!   accesses' needs and of PAGE_SIZE while large pages are disabled: every area's IOVA, length and
//!   offset inside its first page must be a multiple of it.
//!
//! Pinning follows the kernel: a bare IOAS holds only lazy references, so mapping even an unmapped
//! user address succeeds. Pages are pinned when something needs their frames: when an area is
//! mapped into an IOAS that has domains, when a domain is attached to an IOAS with areas (all
//! areas are filled into it; failure undoes the attach), and when an access pins a range. The pin
//! is taken once per area no matter how many domains it is mirrored into.
//!
//! Unmapping a range that an access has pinned first asks that access to let go (its unmap
//! callback), with no lock of this table held, then retries; see [`crate::objects::ioas`].
//!
//! Validation order and errno follow the kernel so that the first error a caller sees is the
//! same one: e.g. a fixed IOVA that is misaligned is EINVAL, one that wraps is EOVERFLOW, one
//! touching a reserved range EINVAL, one touching an area EEXIST.

mod access;
pub mod accounting;
mod alloc;
#[cfg(test)]
pub(crate) mod failpoint;
mod fill;
mod holes;
pub mod ledger;
pub mod limits;
pub mod pages;
mod pin_runs;
pub mod source;

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests;

use crate::backends::{Backing, Domain, Prot};
use fill::{map_area, pin_area};
use holes::HoleIndex;
pub use ledger::Ledger;
use nix::errno::Errno;
pub use pages::{PageSource, Pages, PAGE_SIZE};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Who put a reserved range in place (so it can be removed with its owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservedOwner {
    /// Outside the aperture of the domain with this id.
    Domain(u64),
    /// A device's reserved regions (object id of the device).
    Device(u32),
    /// IOMMU_TEST_OP_ADD_RESERVED.
    Test,
}

#[derive(Debug, Clone, Copy)]
struct Reserved {
    start: u64,
    last: u64,
    owner: ReservedOwner,
}

/// One mapping of IOVA `[iova, last]` onto `pages` starting `start_byte` into its backing.
#[derive(Debug, Clone)]
pub struct Area {
    pub iova: u64,
    pub last: u64,
    pub pages: Arc<Pages>,
    /// Offset of `iova` inside the page-aligned backing of `pages`.
    pub start_byte: u64,
    pub prot: Prot,
    /// Pinned and mapped into the domains.
    pub filled: bool,
    /// Outstanding access pins on this area.
    pub num_accesses: u32,
    /// An unmap is waiting for the accesses to let go: no new pins.
    pub prevent_access: bool,
    /// Access pins that refuse to be released on unmap (a vIOMMU's hardware queue): IOAS_UNMAP of
    /// the area is EBUSY while any is held.
    pub num_locks: u32,
    /// Its IOVA is taken but its pages are being pinned outside the table's lock
    /// ([`IoPagetable::begin_map`]): a gap for lookups and copies, EBUSY for unmap and cut.
    pub pending: bool,
}

impl Area {
    pub fn length(&self) -> u64 {
        self.last - self.iova + 1
    }

    /// Byte offset inside the backing of `iova` (which lies in this area).
    pub fn start_byte_of(&self, iova: u64) -> u64 {
        self.start_byte + (iova - self.iova)
    }

    /// CPU page indexes of the backing that `[iova, last]` of this area touches.
    pub fn page_span(&self, iova: u64, last: u64) -> (u64, u64) {
        (
            self.start_byte_of(iova) / PAGE_SIZE,
            self.start_byte_of(last) / PAGE_SIZE,
        )
    }

    fn pin_span(&self) -> (u64, u64) {
        self.page_span(self.iova, self.last)
    }
}

/// A slice of a [`Pages`], as IOAS_COPY carries it from one IOAS to another.
#[derive(Debug, Clone)]
pub struct PagesSlice {
    pub pages: Arc<Pages>,
    pub start_byte: u64,
    pub length: u64,
}

/// A map between [`IoPagetable::begin_map`] and [`IoPagetable::finish_map`]: its areas (pending in
/// the table) and the domains to fill them into, for [`Self::fill`] to run with no lock held.
pub struct PendingMap {
    start: u64,
    areas: Vec<Area>,
    domains: Vec<Arc<dyn Domain>>,
}

impl PendingMap {
    /// The IOVA range its areas cover (they are adjacent), for [`IoPagetable::drop_pending`]
    /// should the fill never return.
    pub fn span(&self) -> (u64, u64) {
        (self.start, self.areas.last().map_or(self.start, |a| a.last))
    }

    /// Pins the areas' pages and maps them into the domains; on failure nothing stays.
    pub fn fill(&mut self) -> Result<(), Errno> {
        for i in 0..self.areas.len() {
            if let Err(e) = fill_area_in(&self.domains, &mut self.areas[i]) {
                for done in &mut self.areas[..i] {
                    unfill_area_in(&self.domains, done);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Pins an area's pages and maps them into every one of `domains` (nothing when there are none).
fn fill_area_in(domains: &[Arc<dyn Domain>], area: &mut Area) -> Result<(), Errno> {
    if domains.is_empty() || area.filled || area.pages.source().revoked() {
        return Ok(());
    }
    let frames = domains.iter().any(|d| d.backing() == Backing::Frames);
    let paddrs = pin_area(area, frames)?;
    for (i, domain) in domains.iter().enumerate() {
        if let Err(e) = map_area(domain.as_ref(), area, paddrs.as_deref()) {
            for undo in &domains[..i] {
                undo.unmap(area.iova, area.length());
            }
            let (first, last) = area.pin_span();
            area.pages.unpin(first, last);
            return Err(e);
        }
    }
    area.filled = true;
    Ok(())
}

fn unfill_area_in(domains: &[Arc<dyn Domain>], area: &mut Area) {
    if !area.filled {
        return;
    }
    for domain in domains {
        domain.unmap(area.iova, area.length());
    }
    let (first, last) = area.pin_span();
    area.pages.unpin(first, last);
    area.filled = false;
}

/// Result of one pass of [`IoPagetable::unmap_range`].
#[derive(Debug, PartialEq, Eq)]
pub enum UnmapProgress {
    /// Finished: bytes unmapped.
    Done(u64),
    /// An area `[iova, iova + length)` has access pins: notify the accesses, then call again.
    /// `unmapped` bytes were already removed by this pass.
    NeedAccessRelease {
        iova: u64,
        length: u64,
        unmapped: u64,
    },
}

/// The IOVA space of one IOAS.
#[derive(Debug)]
pub struct IoPagetable {
    areas: BTreeMap<u64, Area>,
    allowed: BTreeMap<u64, u64>,
    /// What the allowed ranges cost the context that set them.
    allowed_charge: Option<limits::Charge>,
    reserved: Vec<Reserved>,
    /// The union of `reserved`, merged (start -> last), for O(log n) intersection queries.
    reserved_union: BTreeMap<u64, u64>,
    domains: Vec<(u64, Arc<dyn Domain>)>,
    /// Alignment each access needs, by access id.
    accesses: BTreeMap<u32, u64>,
    iova_alignment: u64,
    disable_large_pages: bool,
    /// The free runs between areas and reserved ranges, for automatic allocation. Every change
    /// to `areas` or `reserved_union` that can free or use an IOVA notes its range here. A
    /// cache the allocation (`&self`) brings up to date, hence the cell.
    hole_index: std::sync::Mutex<HoleIndex>,
}

impl Default for IoPagetable {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn checked_last(iova: u64, length: u64) -> Result<u64, Errno> {
    iova.checked_add(length - 1).ok_or(Errno::EOVERFLOW)
}

impl IoPagetable {
    pub fn new() -> Self {
        Self {
            areas: BTreeMap::new(),
            allowed: BTreeMap::new(),
            allowed_charge: None,
            reserved: Vec::new(),
            reserved_union: BTreeMap::new(),
            domains: Vec::new(),
            accesses: BTreeMap::new(),
            // A table without domains is a software table: any alignment goes.
            iova_alignment: 1,
            disable_large_pages: false,
            hole_index: std::sync::Mutex::default(),
        }
    }

    pub fn iova_alignment(&self) -> u64 {
        self.iova_alignment
    }

    pub fn large_pages_disabled(&self) -> bool {
        self.disable_large_pages
    }

    pub fn num_areas(&self) -> usize {
        self.areas.len()
    }

    pub fn areas(&self) -> impl Iterator<Item = &Area> {
        self.areas.values()
    }

    pub fn domains(&self) -> impl Iterator<Item = &Arc<dyn Domain>> {
        self.domains.iter().map(|(_, d)| d)
    }

    pub fn has_domains(&self) -> bool {
        !self.domains.is_empty()
    }

    /// Areas whose first IOVA is ≥ `start`, plus the one containing `start`, in order.
    fn area_range_from(&self, start: u64) -> impl Iterator<Item = &Area> {
        let before = self
            .areas
            .range(..start)
            .next_back()
            .filter(|(_, a)| a.last >= start)
            .map(|(_, a)| a);
        before
            .into_iter()
            .chain(self.areas.range(start..).map(|(_, a)| a))
    }

    /// The first area intersecting `[start, last]`.
    pub fn first_area(&self, start: u64, last: u64) -> Option<&Area> {
        self.area_range_from(start)
            .next()
            .filter(|a| a.iova <= last)
    }

    fn first_area_key(&self, start: u64, last: u64) -> Option<u64> {
        self.first_area(start, last).map(|a| a.iova)
    }

    fn reserved_intersects(&self, start: u64, last: u64) -> bool {
        // Union entries are disjoint: the one starting last at or before `last` decides.
        self.reserved_union
            .range(..=last)
            .next_back()
            .is_some_and(|(_, &l)| l >= start)
    }

    /// The merged reserved ranges intersecting `[start, last]`, in order.
    fn reserved_spans(&self, start: u64, last: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let before = self
            .reserved_union
            .range(..start)
            .next_back()
            .filter(|(_, &l)| l >= start)
            .map(|(&s, &l)| (s, l));
        before.into_iter().chain(
            self.reserved_union
                .range(start..=last)
                .map(|(&s, &l)| (s, l)),
        )
    }

    /// Adds `[start, last]` to the union, merging what it overlaps or touches.
    fn union_add(&mut self, mut start: u64, mut last: u64) {
        if let Some((&s, &l)) = self.reserved_union.range(..=start).next_back() {
            if l.checked_add(1).is_none_or(|end| end >= start) {
                start = s;
                last = last.max(l);
            }
        }
        let search_end = last.saturating_add(1);
        let inside: Vec<(u64, u64)> = self
            .reserved_union
            .range(start..=search_end)
            .map(|(&s, &l)| (s, l))
            .collect();
        for (s, l) in inside {
            self.reserved_union.remove(&s);
            last = last.max(l);
        }
        self.reserved_union.insert(start, last);
    }

    fn rebuild_union(&mut self) {
        self.reserved_union.clear();
        let ranges: Vec<(u64, u64)> = self.reserved.iter().map(|r| (r.start, r.last)).collect();
        for (s, l) in ranges {
            self.union_add(s, l);
        }
    }

    fn allowed_intersects(&self, start: u64, last: u64) -> bool {
        self.allowed
            .range(..=last)
            .next_back()
            .is_some_and(|(_, &l)| l >= start)
    }

    fn check_iova(&self, iova: u64, length: u64) -> Result<(), Errno> {
        if iova & (self.iova_alignment - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let last = checked_last(iova, length)?;
        if self.reserved_intersects(iova, last) {
            return Err(Errno::EINVAL);
        }
        if self.first_area(iova, last).is_some() {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    /// Maps the concatenation of `slices` (total `length` bytes) at `iova`, or at an allocated
    /// IOVA when `iova` is `None`. Returns the IOVA. Pins and fills domains when there are any.
    /// All under this one borrow; [`Self::begin_map`] does the pinning without it.
    pub fn map_pages(
        &mut self,
        slices: &[PagesSlice],
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        let mut pending = self.begin_map(slices, length, iova, prot)?;
        let filled = pending.fill();
        self.finish_map(pending, filled)
    }

    /// The first step of a map: checks, takes the IOVA (the areas go in as pending) and returns
    /// what [`PendingMap::fill`] needs to pin and map the pages with no lock of the table held.
    /// The domains must not change until [`Self::finish_map`] (the IOAS's domain gate).
    pub fn begin_map(
        &mut self,
        slices: &[PagesSlice],
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<PendingMap, Errno> {
        if length & (self.iova_alignment - 1) != 0 || length == 0 || slices.is_empty() {
            return Err(Errno::EINVAL);
        }
        let start = match iova {
            None => {
                let first = &slices[0];
                let hint = first
                    .pages
                    .source()
                    .address_hint()
                    .wrapping_add(first.start_byte);
                self.alloc_iova(hint, length)?
            }
            Some(iova) => {
                self.check_iova(iova, length)?;
                iova
            }
        };
        // Build every area before inserting any so that a failure leaves the table unchanged.
        let mut new_areas = Vec::with_capacity(slices.len());
        let mut cur = start;
        for slice in slices {
            if prot.write && !slice.pages.writable {
                return Err(Errno::EPERM);
            }
            if (slice.start_byte % PAGE_SIZE) & (self.iova_alignment - 1) != 0 {
                return Err(Errno::EINVAL);
            }
            let last = checked_last(cur, slice.length)?;
            checked_last(slice.start_byte, slice.length)?;
            new_areas.push(Area {
                iova: cur,
                last,
                pages: slice.pages.clone(),
                start_byte: slice.start_byte,
                prot,
                filled: false,
                num_accesses: 0,
                prevent_access: false,
                num_locks: 0,
                pending: true,
            });
            cur = last.wrapping_add(1);
        }
        for area in &new_areas {
            self.areas.insert(area.iova, area.clone());
        }
        match &new_areas[..] {
            [area] => self
                .hole_index
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .mapped(area.iova, area.last),
            [first, .., last] => self
                .hole_index
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .touch(first.iova, last.last),
            [] => {}
        }
        Ok(PendingMap {
            start,
            areas: new_areas,
            domains: self.domains.iter().map(|(_, d)| d.clone()).collect(),
        })
    }

    /// The last step of a map: with `filled` Ok the pending areas become ordinary (filled when
    /// there are domains) and the IOVA is returned; on error they go (their fill undid itself).
    pub fn finish_map(
        &mut self,
        pending: PendingMap,
        filled: Result<(), Errno>,
    ) -> Result<u64, Errno> {
        if let Err(e) = filled {
            self.drop_pending(pending.span());
            return Err(e);
        }
        for area in &pending.areas {
            let a = self.areas.get_mut(&area.iova).expect("pending area");
            a.pending = false;
            a.filled = area.filled;
        }
        Ok(pending.start)
    }

    /// Takes the pending areas of a map out of the table (its range, [`PendingMap::span`]: no
    /// other map can hold a pending area there), so their IOVA does not stay busy: a failed
    /// fill, or one that unwound — then what it had mapped into domains is not known here and
    /// stays there.
    pub fn drop_pending(&mut self, (first, last): (u64, u64)) {
        let pending: Vec<(u64, u64)> = self
            .areas
            .range(first..=last)
            .filter(|(_, a)| a.pending)
            .map(|(&iova, a)| (iova, a.last))
            .collect();
        let holes = self.hole_index.get_mut().unwrap_or_else(|p| p.into_inner());
        for (iova, area_last) in pending {
            self.areas.remove(&iova);
            holes.unmapped(iova, area_last);
        }
    }

    fn unfill_area(&self, area: &mut Area) {
        unfill_area_in(&self.domain_list(), area)
    }

    fn domain_list(&self) -> Vec<Arc<dyn Domain>> {
        self.domains.iter().map(|(_, d)| d.clone()).collect()
    }

    /// Takes every area whose backing was revoked out of the domains (and drops its pin); the
    /// areas themselves stay until unmapped.
    pub fn unfill_revoked(&mut self) {
        let keys: Vec<u64> = self
            .areas
            .iter()
            .filter(|(_, a)| a.filled && a.pages.source().revoked())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let mut area = self.areas.remove(&key).expect("area");
            self.unfill_area(&mut area);
            self.areas.insert(key, area);
        }
    }

    /// The pages under `[iova, iova + length)`, which must be fully and contiguously mapped
    /// (IOAS_COPY's source side). EINVAL for zero length, EOVERFLOW, ENOENT for any gap.
    pub fn get_pages(&self, iova: u64, length: u64) -> Result<Vec<PagesSlice>, Errno> {
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let last = checked_last(iova, length)?;
        let mut out = Vec::new();
        let mut cur = iova;
        for area in self.area_range_from(iova) {
            if area.iova > cur || area.pending {
                break;
            }
            let end = last.min(area.last);
            out.push(PagesSlice {
                pages: area.pages.clone(),
                start_byte: area.start_byte_of(cur),
                length: end - cur + 1,
            });
            if end == last {
                return Ok(out);
            }
            cur = end + 1;
        }
        Err(Errno::ENOENT)
    }

    /// One pass of unmapping every area inside `[start, last]`. Areas must lie wholly inside the
    /// range (ENOENT otherwise, after removing the ones before it, as the kernel does).
    pub fn unmap_range(&mut self, start: u64, last: u64) -> Result<UnmapProgress, (Errno, u64)> {
        let mut unmapped = 0u64;
        let mut cursor = start;
        while let Some(key) = self.first_area_key(cursor, last) {
            let area = self.areas.get_mut(&key).expect("area found by key");
            // A map still pinning its pages: the caller races its own map (as the kernel, EBUSY).
            if area.num_locks > 0 || area.pending {
                return Err((Errno::EBUSY, unmapped));
            }
            if area.iova < start || area.last > last {
                return Err((Errno::ENOENT, unmapped));
            }
            if area.num_accesses > 0 {
                area.prevent_access = true;
                return Ok(UnmapProgress::NeedAccessRelease {
                    iova: area.iova,
                    length: area.length(),
                    unmapped,
                });
            }
            let mut area = self.areas.remove(&key).expect("area present");
            self.hole_index
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .unmapped(area.iova, area.last);
            self.unfill_area(&mut area);
            unmapped += area.length();
            if area.last >= last {
                break;
            }
            cursor = area.last + 1;
        }
        Ok(UnmapProgress::Done(unmapped))
    }

    /// Replaces the allowed ranges (already validated as non-overlapping, start < last).
    /// EADDRINUSE if one of them intersects a reserved range; the old set stays then.
    pub fn set_allowed(&mut self, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        self.set_allowed_charged(ranges, None)
    }

    /// [`Self::set_allowed`], keeping `charge` (what the ranges cost their context) for as long
    /// as they stay; the charge of the ranges replaced is given back.
    pub fn set_allowed_charged(
        &mut self,
        ranges: &[(u64, u64)],
        charge: Option<limits::Charge>,
    ) -> Result<(), Errno> {
        if ranges.iter().any(|&(s, l)| self.reserved_intersects(s, l)) {
            return Err(Errno::EADDRINUSE);
        }
        self.allowed = ranges.iter().copied().collect();
        self.allowed_charge = charge;
        Ok(())
    }

    /// Reserves `[start, last]`; EADDRINUSE if an area or allowed range is there.
    pub fn reserve(&mut self, start: u64, last: u64, owner: ReservedOwner) -> Result<(), Errno> {
        if self.first_area(start, last).is_some() || self.allowed_intersects(start, last) {
            return Err(Errno::EADDRINUSE);
        }
        self.reserved.push(Reserved { start, last, owner });
        self.union_add(start, last);
        self.hole_index
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .touch(start, last);
        Ok(())
    }

    pub fn remove_reserved(&mut self, owner: ReservedOwner) {
        let before = self.reserved.len();
        let index = self.hole_index.get_mut().unwrap_or_else(|p| p.into_inner());
        self.reserved.retain(|r| {
            let keep = r.owner != owner;
            if !keep {
                index.touch(r.start, r.last);
            }
            keep
        });
        if self.reserved.len() != before {
            self.rebuild_union();
        }
    }

    /// The usable IOVA ranges: the complement of the reserved ranges in `[0, u64::MAX]`.
    pub fn usable_ranges(&self) -> Vec<(u64, u64)> {
        let used = self.reserved_union.iter().map(|(&s, &l)| (s, l));
        let mut out = Vec::new();
        let mut cur = Some(0u64);
        for (s, l) in used {
            let Some(c) = cur else { break };
            if s > c {
                out.push((c, s - 1));
            }
            if l >= c {
                cur = l.checked_add(1);
            }
        }
        if let Some(c) = cur {
            out.push((c, u64::MAX));
        }
        out
    }

    /// Checks that every area fits `align`; EADDRINUSE otherwise.
    fn check_alignment(&self, align: u64) -> Result<(), Errno> {
        let mask = align - 1;
        let bad = self.areas.values().any(|a| {
            a.iova & mask != 0 || a.length() & mask != 0 || (a.start_byte % PAGE_SIZE) & mask != 0
        });
        if bad {
            Err(Errno::EADDRINUSE)
        } else {
            Ok(())
        }
    }

    fn recalculate_alignment(&mut self) -> Result<(), Errno> {
        let mut align = if self.disable_large_pages {
            PAGE_SIZE
        } else {
            1
        };
        for (_, d) in &self.domains {
            align = align.max(smallest_page(d.pgsize_bitmap()));
        }
        for &a in self.accesses.values() {
            align = align.max(a);
        }
        if align > self.iova_alignment {
            self.check_alignment(align)?;
        }
        self.iova_alignment = align;
        Ok(())
    }

    /// Attaches a domain: reserves what lies outside its aperture and its reserved regions, then
    /// pins and maps every area into it. On failure nothing changes.
    pub fn add_domain(&mut self, id: u64, domain: Arc<dyn Domain>) -> Result<(), Errno> {
        let new_align = smallest_page(domain.pgsize_bitmap()).max(self.iova_alignment);
        if new_align > PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        if new_align != self.iova_alignment {
            self.check_alignment(new_align)?;
        }
        let owner = ReservedOwner::Domain(id);
        let (ap_start, ap_last) = domain.aperture();
        let mut outside = Vec::new();
        if ap_start != 0 {
            outside.push((0, ap_start - 1));
        }
        if ap_last != u64::MAX {
            outside.push((ap_last + 1, u64::MAX));
        }
        outside.extend(domain.reserved_ranges());
        for (s, l) in outside {
            if let Err(e) = self.reserve(s, l, owner) {
                self.remove_reserved(owner);
                return Err(e);
            }
        }
        // Fill the new domain with every area; areas already filled only need the new mapping.
        let keys: Vec<u64> = self.areas.keys().copied().collect();
        let mut done: Vec<u64> = Vec::new();
        let mut failure = None;
        for key in &keys {
            let area = self.areas.get(key).expect("area");
            if area.pages.source().revoked() {
                continue;
            }
            let (first, last) = area.pin_span();
            let frames = domain.backing() == Backing::Frames;
            let res = pin_area(area, frames).and_then(|paddrs| {
                map_area(domain.as_ref(), area, paddrs.as_deref()).inspect_err(|_| {
                    area.pages.unpin(first, last);
                })
            });
            match res {
                Ok(()) => done.push(*key),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for key in done {
                let area = &self.areas[&key];
                domain.unmap(area.iova, area.length());
                let (first, last) = area.pin_span();
                area.pages.unpin(first, last);
            }
            self.remove_reserved(owner);
            return Err(e);
        }
        // Each area now holds one pin per fill; keep exactly one per area.
        for key in done {
            let area = self.areas.get_mut(&key).expect("area");
            if area.filled {
                let (first, last) = area.pin_span();
                area.pages.unpin(first, last);
            }
            area.filled = true;
        }
        self.iova_alignment = new_align;
        self.domains.push((id, domain));
        Ok(())
    }

    /// Detaches a domain: unmaps every area from it, unpins when it was the last one.
    pub fn remove_domain(&mut self, id: u64) {
        let Some(pos) = self.domains.iter().position(|(d, _)| *d == id) else {
            return;
        };
        let (_, domain) = self.domains.remove(pos);
        let last_domain = self.domains.is_empty();
        for area in self.areas.values_mut() {
            domain.unmap(area.iova, area.length());
            if last_domain && area.filled {
                let (first, last) = area.pin_span();
                area.pages.unpin(first, last);
                area.filled = false;
            }
        }
        self.remove_reserved(ReservedOwner::Domain(id));
        if let Err(e) = self.recalculate_alignment() {
            crate::warn_limited!(?e, "alignment recalculation failed after domain removal");
        }
    }

    /// IOMMU_OPTION_HUGE_PAGES = 0 (and VFIO type1 v1): areas must be CPU-page aligned.
    pub fn disable_large_pages(&mut self) -> Result<(), Errno> {
        if self.disable_large_pages {
            return Ok(());
        }
        if !self.domains.is_empty() && !self.areas.is_empty() {
            return Err(Errno::EINVAL);
        }
        self.disable_large_pages = true;
        if let Err(e) = self.recalculate_alignment() {
            self.disable_large_pages = false;
            return Err(e);
        }
        Ok(())
    }

    pub fn enable_large_pages(&mut self) {
        self.disable_large_pages = false;
        let _ = self.recalculate_alignment();
    }

    /// Registers an access needing `align`; fails like the kernel if areas do not fit it.
    pub fn add_access(&mut self, id: u32, align: u64) -> Result<(), Errno> {
        self.accesses.insert(id, align);
        if let Err(e) = self.recalculate_alignment() {
            self.accesses.remove(&id);
            return Err(e);
        }
        Ok(())
    }

    pub fn remove_access(&mut self, id: u32) {
        self.accesses.remove(&id);
        let _ = self.recalculate_alignment();
    }

    /// Walks the areas covering `[iova, last]` contiguously; ENOENT at the first gap.
    pub fn contiguous_keys(&self, iova: u64, last: u64) -> Result<Vec<u64>, Errno> {
        let mut keys = Vec::new();
        let mut cur = iova;
        for area in self.area_range_from(iova) {
            if area.iova > cur || area.pending {
                break;
            }
            keys.push(area.iova);
            if area.last >= last {
                return Ok(keys);
            }
            cur = area.last + 1;
        }
        Err(Errno::ENOENT)
    }

    pub fn area(&self, key: u64) -> Option<&Area> {
        self.areas.get(&key)
    }

    pub fn area_mut(&mut self, key: u64) -> Option<&mut Area> {
        self.areas.get_mut(&key)
    }

    /// Splits the areas containing each IOVA in `cuts` so that a cut IOVA becomes the last byte of
    /// an area (VFIO type1 v1 unmap semantics).
    pub fn cut(&mut self, cuts: &[u64]) -> Result<(), Errno> {
        for &iova in cuts {
            let Some(key) = self.first_area_key(iova, iova) else {
                continue;
            };
            let area = &self.areas[&key];
            if iova == area.iova || iova == area.last {
                continue;
            }
            if area.prevent_access || area.pending {
                return Err(Errno::EBUSY);
            }
            let new_start = iova + 1;
            let align = self.iova_alignment;
            if new_start & (align - 1) != 0 || area.start_byte_of(new_start) & (align - 1) != 0 {
                return Err(Errno::EINVAL);
            }
            if area.num_accesses > 0 {
                return Err(Errno::EINVAL);
            }
            if area.filled && !self.disable_large_pages {
                return Err(Errno::EINVAL);
            }
            let mut lhs = area.clone();
            let mut rhs = area.clone();
            rhs.iova = new_start;
            rhs.start_byte = lhs.start_byte_of(new_start);
            lhs.last = iova;
            // Each half needs its own pin on the pages it covers when filled: both are taken
            // before the area is replaced, so a failed pin leaves it as it was.
            if lhs.filled {
                let (rf, rl) = rhs.pin_span();
                let (lf, ll) = lhs.pin_span();
                lhs.pages.pin(lf, ll, false)?;
                if let Err(e) = lhs.pages.pin(rf, rl, false) {
                    lhs.pages.unpin(lf, ll);
                    return Err(e);
                }
                // The original pin covered [lf, rl].
                lhs.pages.unpin(lf, rl);
            }
            self.areas.remove(&key);
            self.areas.insert(lhs.iova, lhs);
            self.areas.insert(rhs.iova, rhs);
        }
        Ok(())
    }
}

/// 1 << (lowest set bit) of a page size bitmap.
fn smallest_page(bitmap: u64) -> u64 {
    1u64 << bitmap.trailing_zeros().min(63)
}
