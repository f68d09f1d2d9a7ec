//! Automatic IOVA allocation: first fit, in ascending address order, over the allowed ranges minus
//! reserved ranges and existing areas, keeping the alignment the user address already has.
//!
//! Inside each allowed span the allocator first walks the table's holes in order, as the kernel
//! does, but only over the first [`WALK_STEPS`] areas or reserved ranges: when the answer is
//! there (a few steps, cheaper than a descent of the index) the hole index need not be brought
//! up to date, nor built. Past them it searches the hole index
//! ([`super::holes`]), which visits, in ascending order, only the holes at least `length` bytes
//! long (a necessary condition of a fit) and takes the first one that fits once aligned: the
//! same IOVA the walk over every hole finds. Cost: O(log n) to the first fitting hole, plus one
//! step for each hole before it that is long enough but does not fit once aligned (worst case:
//! every hole is such a one, as slow as the walk; with page-aligned areas and a page alignment
//! there are none). The walk over every hole, [`IoPagetable::alloc_iova_first_fit`], stays as
//! the reference the tests compare with.

use super::pages::PAGE_SIZE;
use super::IoPagetable;
use nix::errno::Errno;
use std::ops::ControlFlow;

/// Largest alignment the allocator asks for (a transparent huge page).
const MAX_ALIGNMENT: u64 = 2 << 20;

/// Used ranges (areas, reserved ranges) of a span the walk steps over before the hole index is
/// searched.
pub(super) const WALK_STEPS: usize = 4;

/// Rounds `start` up to `align` (a power of two), then adds `page_offset`; true if `[start, start +
/// length)` then still fits before `last` (inclusive).
fn fit(start: u64, last: u64, length: u64, align: u64, page_offset: u64) -> Option<u64> {
    let aligned = start.checked_add(align - 1)? & !(align - 1);
    let aligned = aligned | page_offset;
    if aligned >= last || last - aligned < length - 1 {
        return None;
    }
    Some(aligned)
}

impl IoPagetable {
    /// Picks an IOVA for `length` bytes whose backing starts at user address `addr`.
    pub(super) fn alloc_iova(&self, addr: u64, length: u64) -> Result<u64, Errno> {
        self.alloc_iova_walking(addr, length, WALK_STEPS)
    }

    /// [`Self::alloc_iova`], walking over the first `walk_steps` used ranges of each span in the
    /// table before searching the index.
    pub(super) fn alloc_iova_walking(
        &self,
        addr: u64,
        length: u64,
        walk_steps: usize,
    ) -> Result<u64, Errno> {
        let (align, page_offset) = self.alloc_alignment(addr, length)?;
        // Borrowed only if a walk does not find the IOVA.
        let mut index = None;
        'spans: for (span_start, span_last) in self.alloc_spans() {
            if fit(span_start, span_last, length, align, page_offset).is_none() {
                continue;
            }
            let mut walk = self.holes(span_start, span_last);
            let mut steps = walk_steps;
            let rest = loop {
                match walk.next_within(&mut steps) {
                    Ok(Some((start, last))) => {
                        if let Some(iova) = fit(start, last, length, align, page_offset) {
                            return Ok(iova);
                        }
                    }
                    Ok(None) => continue 'spans,
                    Err(rest) => break rest,
                }
            };
            let index = index.get_or_insert_with(|| {
                let mut index = self.hole_index.lock().unwrap_or_else(|p| p.into_inner());
                index.refresh(|s, l| self.holes(s, l));
                index
            });
            let holes = index.fresh().expect("refreshed");
            let search = holes.scan(rest, span_last, length - 1, &mut |start, last| {
                let (start, last) = (start.max(span_start), last.min(span_last));
                match fit(start, last, length, align, page_offset) {
                    Some(iova) => ControlFlow::Break(iova),
                    None => ControlFlow::Continue(()),
                }
            });
            if let ControlFlow::Break(iova) = search {
                return Ok(iova);
            }
        }
        Err(Errno::ENOSPC)
    }

    /// The alignment and sub-page offset an IOVA for `[addr, addr + length)` must keep.
    fn alloc_alignment(&self, addr: u64, length: u64) -> Result<(u64, u64), Errno> {
        if length == 0 || length >= u64::MAX / 2 {
            return Err(Errno::EOVERFLOW);
        }
        let page_offset = addr % PAGE_SIZE;
        let len_align = length.next_power_of_two();
        let mut align = if addr == 0 {
            len_align
        } else {
            len_align.min(1u64 << addr.trailing_zeros())
        };
        if align >= MAX_ALIGNMENT {
            align = MAX_ALIGNMENT;
        }
        if align < self.iova_alignment {
            return Err(Errno::EINVAL);
        }
        Ok((align, page_offset))
    }

    /// Where automatic IOVAs may go, in ascending order: the allowed ranges (or everything),
    /// inside the window that leaves out the first and the last page.
    fn alloc_spans(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let window = (PAGE_SIZE, u64::MAX - PAGE_SIZE);
        let everything = self.allowed.is_empty().then_some(window);
        // Adjacent allowed ranges form one span, as the kernel's span iterator joins them.
        let mut allowed = self.allowed.iter().map(|(&s, &l)| (s, l)).peekable();
        let joined = std::iter::from_fn(move || {
            let (start, mut last) = allowed.next()?;
            while let Some(&(next, next_last)) = allowed.peek() {
                if last.checked_add(1) != Some(next) {
                    break;
                }
                last = next_last;
                allowed.next();
            }
            Some((start, last))
        });
        everything.into_iter().chain(
            joined
                .filter(move |&(s, l)| l >= window.0 && s <= window.1)
                .map(move |(s, l)| (s.max(window.0), l.min(window.1))),
        )
    }

    /// The first-fit walk over every hole, as the allocator was before the hole index (and as
    /// the kernel's is): the reference [`Self::alloc_iova`] must agree with.
    #[cfg(test)]
    pub(super) fn alloc_iova_first_fit(&self, addr: u64, length: u64) -> Result<u64, Errno> {
        let (align, page_offset) = self.alloc_alignment(addr, length)?;
        for (span_start, span_last) in self.alloc_spans() {
            if fit(span_start, span_last, length, align, page_offset).is_none() {
                continue;
            }
            for (hole_start, hole_last) in self.holes(span_start, span_last) {
                if let Some(iova) = fit(hole_start, hole_last, length, align, page_offset) {
                    return Ok(iova);
                }
            }
        }
        Err(Errno::ENOSPC)
    }

    /// The gaps inside `[start, last]` between reserved ranges and areas, in ascending order.
    pub(super) fn holes(
        &self,
        start: u64,
        last: u64,
    ) -> HoleWalk<impl Iterator<Item = (u64, u64)> + '_> {
        let mut reserved = self.reserved_spans(start, last).peekable();
        let mut areas = self
            .area_range_from(start)
            .take_while(move |a| a.iova <= last)
            .map(|a| (a.iova, a.last))
            .peekable();
        // The used ranges, whichever of the two sorted streams comes first.
        let used = std::iter::from_fn(move || match (reserved.peek(), areas.peek()) {
            (Some(r), Some(a)) if r.0 <= a.0 => reserved.next(),
            (Some(_), Some(_)) => areas.next(),
            (Some(_), None) => reserved.next(),
            (None, Some(_)) => areas.next(),
            (None, None) => None,
        });
        HoleWalk {
            used,
            cursor: Some(start),
            last,
        }
    }

    /// The hole index, refreshed (tests: compare it with [`Self::holes`]).
    #[cfg(test)]
    pub(super) fn indexed_holes(&self) -> Vec<(u64, u64)> {
        let mut index = self.hole_index.lock().unwrap_or_else(|p| p.into_inner());
        index.refresh(|start, last| self.holes(start, last));
        index.fresh().expect("refreshed").collect(0, u64::MAX)
    }
}

/// The holes of a range, from the used ranges (areas, reserved ranges) in it: an iterator, or a
/// walk that stops after a number of used ranges.
pub(super) struct HoleWalk<U> {
    used: U,
    /// Where the next hole may start; `None` once the range is done.
    cursor: Option<u64>,
    last: u64,
}

impl<U: Iterator<Item = (u64, u64)>> HoleWalk<U> {
    /// The next hole, stepping over at most `*steps` used ranges (counted down): `Err(cursor)`
    /// when they run out first (every hole before `cursor` was given), `Ok(None)` at the end.
    pub(super) fn next_within(&mut self, steps: &mut usize) -> Result<Option<(u64, u64)>, u64> {
        loop {
            let Some(cur) = self.cursor else {
                return Ok(None);
            };
            let Some(left) = steps.checked_sub(1) else {
                return Err(cur);
            };
            *steps = left;
            match self.used.next() {
                None => {
                    self.cursor = None;
                    return Ok((cur <= self.last).then_some((cur, self.last)));
                }
                Some((ustart, ulast)) => {
                    let hole = (ustart > cur).then(|| (cur, ustart - 1));
                    self.cursor = if ulast >= self.last {
                        None
                    } else {
                        Some(cur.max(ulast + 1))
                    };
                    if hole.is_some() {
                        return Ok(hole);
                    }
                }
            }
        }
    }
}

impl<U: Iterator<Item = (u64, u64)>> Iterator for HoleWalk<U> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let mut unbounded = usize::MAX;
        self.next_within(&mut unbounded).unwrap_or(None)
    }
}
