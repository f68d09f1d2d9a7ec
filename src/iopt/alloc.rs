//! Automatic IOVA allocation: first fit, in ascending address order, over the allowed ranges minus
//! reserved ranges and existing areas, keeping the alignment the user address already has.

use super::pages::PAGE_SIZE;
use super::IoPagetable;
use nix::errno::Errno;

/// Largest alignment the allocator asks for (a transparent huge page).
const MAX_ALIGNMENT: u64 = 2 << 20;

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
        let window = (PAGE_SIZE, u64::MAX - PAGE_SIZE);
        let allowed: Vec<(u64, u64)> = if self.allowed.is_empty() {
            vec![window]
        } else {
            // Adjacent allowed ranges form one span, as the kernel's span iterator joins them.
            let mut spans: Vec<(u64, u64)> = Vec::with_capacity(self.allowed.len());
            for (&s, &l) in &self.allowed {
                match spans.last_mut() {
                    Some(prev) if prev.1.checked_add(1) == Some(s) => prev.1 = l,
                    _ => spans.push((s, l)),
                }
            }
            spans
                .into_iter()
                .filter(|&(s, l)| l >= window.0 && s <= window.1)
                .map(|(s, l)| (s.max(window.0), l.min(window.1)))
                .collect()
        };
        for (span_start, span_last) in allowed {
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
    fn holes(&self, start: u64, last: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut reserved = self.reserved_spans(start, last).peekable();
        let mut areas = self
            .area_range_from(start)
            .take_while(move |a| a.iova <= last)
            .map(|a| (a.iova, a.last))
            .peekable();
        let mut cursor = Some(start);
        std::iter::from_fn(move || loop {
            let cur = cursor?;
            // The next used range, whichever of the two sorted streams comes first.
            let next = match (reserved.peek(), areas.peek()) {
                (Some(r), Some(a)) if r.0 <= a.0 => reserved.next(),
                (Some(_), Some(_)) => areas.next(),
                (Some(_), None) => reserved.next(),
                (None, Some(_)) => areas.next(),
                (None, None) => None,
            };
            match next {
                None => {
                    cursor = None;
                    return (cur <= last).then_some((cur, last));
                }
                Some((ustart, ulast)) => {
                    let hole = (ustart > cur).then(|| (cur, ustart - 1));
                    cursor = if ulast >= last {
                        None
                    } else {
                        Some(cur.max(ulast + 1))
                    };
                    if let Some(h) = hole {
                        return Some(h);
                    }
                }
            }
        })
    }
}
