//! Filling a domain with an area: pin (or only hold) its pages, then map them the way the domain
//! takes memory — physical runs ([`crate::backends::Backing::Frames`]) or the daemon's view of the
//! same pages ([`crate::backends::Backing::DaemonVa`]). On failure nothing of the area stays mapped.

#[cfg(test)]
use super::failpoint;
use super::{Area, PAGE_SIZE};
use crate::backends::{Backing, Domain};
use nix::errno::Errno;

/// Adds one pin user to the area's pages: with their frames (returned) when a domain needs them,
/// else only counted and charged (domains that pin by themselves).
pub(super) fn pin_area(area: &Area, frames: bool) -> Result<Option<Vec<u64>>, Errno> {
    let (first, last) = area.pin_span();
    if frames {
        area.pages.pin(first, last, area.prot.write).map(Some)
    } else {
        area.pages.hold(first, last, area.prot.write).map(|()| None)
    }
}

/// Maps `area` into `domain` the way the domain takes memory; `paddrs` are the frames of the
/// area's pages (present whenever a domain wants frames).
pub(super) fn map_area(
    domain: &dyn Domain,
    area: &Area,
    paddrs: Option<&[u64]>,
) -> Result<(), Errno> {
    match (domain.backing(), paddrs) {
        (Backing::Frames, Some(paddrs)) => map_area_into(domain, area, paddrs),
        (Backing::Frames, None) => Err(Errno::EINVAL),
        (Backing::DaemonVa, _) => map_area_va(domain, area),
    }
}

/// Maps `area` into a domain that pins by itself, through the daemon's mapping of its pages.
fn map_area_va(domain: &dyn Domain, area: &Area) -> Result<(), Errno> {
    let runs = area
        .pages
        .source()
        .daemon_view(area.start_byte, area.length(), area.prot.write)?;
    let mut iova = area.iova;
    let mut done = 0;
    for run in &runs {
        #[cfg(test)]
        if let Err(e) = failpoint::check(Errno::ENOMEM) {
            domain.unmap(area.iova, done);
            return Err(e);
        }
        if let Err(e) = domain.map_va(iova, run, area.prot) {
            domain.unmap(area.iova, done);
            return Err(e);
        }
        iova += run.len;
        done += run.len;
    }
    Ok(())
}

/// Maps `area` into `domain` given the physical address of each CPU page it touches, merging
/// physically contiguous pages into one call.
fn map_area_into(domain: &dyn Domain, area: &Area, paddrs: &[u64]) -> Result<(), Errno> {
    let first_page = area.start_byte / PAGE_SIZE;
    let end_byte = area.start_byte + area.length();
    let mut run: Option<(u64, u64, u64)> = None; // (iova, paddr, len)
    let mut mapped: Vec<(u64, u64)> = Vec::new();
    let flush = |run: (u64, u64, u64), mapped: &mut Vec<(u64, u64)>| -> Result<(), Errno> {
        #[cfg(test)]
        failpoint::check(Errno::ENOMEM)?;
        domain.map(run.0, run.1, run.2, area.prot)?;
        mapped.push((run.0, run.2));
        Ok(())
    };
    let result = (|| {
        for (i, &page_paddr) in paddrs.iter().enumerate() {
            let page = first_page + i as u64;
            let b0 = (page * PAGE_SIZE).max(area.start_byte);
            let b1 = ((page + 1) * PAGE_SIZE).min(end_byte);
            let iova = area.iova + (b0 - area.start_byte);
            let paddr = page_paddr + b0 % PAGE_SIZE;
            let len = b1 - b0;
            run = match run {
                Some((ri, rp, rl)) if rp + rl == paddr && ri + rl == iova => {
                    Some((ri, rp, rl + len))
                }
                Some(prev) => {
                    flush(prev, &mut mapped)?;
                    Some((iova, paddr, len))
                }
                None => Some((iova, paddr, len)),
            };
        }
        if let Some(r) = run.take() {
            flush(r, &mut mapped)?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (iova, len) in mapped {
            domain.unmap(iova, len);
        }
    }
    result
}
