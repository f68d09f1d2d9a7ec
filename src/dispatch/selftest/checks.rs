//! The inspection ops: MD_CHECK_MAP, MD_CHECK_REFS and DIRTY.

use super::mockdev::as_mock;
use crate::backends::mock::MockDomain;
use crate::backends::Domain;
use crate::dispatch::ucmd::Ucmd;
use crate::iopt::source::ProcessSource;
use crate::iopt::{PageSource, PAGE_SIZE};
use crate::narrow::usize_from;
use crate::objects::{Context, HwptPaging};
use nix::errno::Errno;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uiommufd_uapi::selftest::{iommu_test_cmd, iommu_test_cmd_dirty};

/// The mock paging HWPT `id`: ENOENT when it is no paging HWPT, EINVAL when not a mock one.
pub fn md_pagetable(ctx: &Context, id: u32) -> Result<(Arc<HwptPaging>, Arc<MockDomain>), Errno> {
    let h = ctx.get_hwpt_paging(id)?;
    let m = as_mock(&h.domain).ok_or(Errno::EINVAL)?;
    Ok((h, m))
}

/// Physical addresses of the caller's CPU pages `[uptr, uptr + count pages)`, faulted in for read
/// like get_user_pages_fast (through the calling process's bound identity).
pub(super) fn caller_paddrs(u: &Ucmd, uptr: u64, count: u64) -> Result<Vec<u64>, Errno> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let process = u.ctx.processes.get(u.mem)?;
    ProcessSource::new(process, uptr & !(PAGE_SIZE - 1)).pin(0, count, false)
}

pub fn check_map(u: &Ucmd, id: u32, iova: u64, length: u64, uptr: u64) -> Result<(), Errno> {
    let (_h, mock) = md_pagetable(u.ctx, id)?;
    let ps = mock.io_page_size();
    if !iova.is_multiple_of(ps)
        || !length.is_multiple_of(ps)
        || !uptr.is_multiple_of(ps)
        || uptr.checked_add(length).is_none()
    {
        return Err(Errno::EINVAL);
    }
    if length == 0 {
        return Ok(());
    }
    let first = uptr / PAGE_SIZE;
    let last = (uptr + length - 1) / PAGE_SIZE;
    let paddrs = caller_paddrs(u, uptr, last - first + 1)?;
    let mut off = 0;
    while off < length {
        let va = uptr + off;
        let want = paddrs[usize_from(va / PAGE_SIZE - first)] + va % PAGE_SIZE;
        let io = iova.checked_add(off).ok_or(Errno::EINVAL)?;
        if mock.translate(io) != Some(want) {
            return Err(Errno::EINVAL);
        }
        off += ps;
    }
    Ok(())
}

/// Whether the page frame is part of a compound page (/proc/kpageflags COMPOUND_HEAD/TAIL): the
/// kernel's check skips those.
fn is_compound(kpageflags: &mut Option<std::fs::File>, paddr: u64) -> bool {
    let Some(f) = kpageflags.as_mut() else {
        return false;
    };
    let mut b = [0u8; 8];
    if f.seek(SeekFrom::Start(paddr / PAGE_SIZE * 8)).is_err() || f.read_exact(&mut b).is_err() {
        return false;
    }
    u64::from_le_bytes(b) & ((1 << 15) | (1 << 16)) != 0
}

/// How long a mismatching MD_CHECK_REFS keeps looking: a close() reaches the daemon as an
/// asynchronous FUSE RELEASE, so the pins of a just-closed context may still be going away.
const REFS_SETTLE: Duration = Duration::from_secs(2);

pub fn check_refs(u: &Ucmd, uptr: u64, length: u64, refs: u32) -> Result<(), Errno> {
    if !length.is_multiple_of(PAGE_SIZE)
        || !uptr.is_multiple_of(PAGE_SIZE)
        || uptr.checked_add(length).is_none()
    {
        return Err(Errno::EINVAL);
    }
    let count = length / PAGE_SIZE;
    let paddrs = caller_paddrs(u, uptr, count)?;
    let mut kpf = std::fs::File::open("/proc/kpageflags").ok();
    let checked: Vec<u64> = paddrs
        .into_iter()
        .filter(|&p| !is_compound(&mut kpf, p))
        .collect();
    let deadline = Instant::now() + REFS_SETTLE;
    loop {
        let pins = u.ctx.ledger().live.pins_by_paddr();
        let ok = checked
            .iter()
            .all(|p| pins.get(p).copied().unwrap_or(0) == refs);
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Errno::EIO);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// IOMMU_TEST_OP_DIRTY: sets the dirty bit of the IO page at each set bit of the caller's bitmap.
pub fn dirty(u: &Ucmd, cmd: &mut iommu_test_cmd) -> Result<(), Errno> {
    let mut p: iommu_test_cmd_dirty = cmd.payload().expect("payload fits");
    if p.page_size == 0
        || p.length == 0
        || !p.iova.is_multiple_of(p.page_size)
        || !p.length.is_multiple_of(p.page_size)
        || p.uptr == 0
    {
        return Err(Errno::EINVAL);
    }
    let max = p.length / p.page_size;
    if max > (16u64 << 20) * 8 {
        return Err(Errno::EOVERFLOW);
    }
    let (_h, mock) = md_pagetable(u.ctx, cmd.id)?;
    if !mock.dirty_tracking() {
        return Err(Errno::EINVAL);
    }
    let mut bitmap = vec![0u8; usize_from(max.div_ceil(8))];
    u.mem.read(p.uptr, &mut bitmap)?;
    let mut count = 0u64;
    for i in 0..max {
        if bitmap[(i / 8) as usize] & (1 << (i % 8)) == 0 {
            continue;
        }
        let _ = mock.mark_dirty(p.iova.wrapping_add(i * p.page_size), 1);
        count += 1;
    }
    p.out_nr_dirty = count;
    cmd.set_payload(&p);
    u.respond(cmd)
}
