//! Handlers of the IOAS commands, IOMMU_DESTROY, IOMMU_OPTION and IOMMU_VFIO_IOAS.

use super::selftest::dmabuf::TestDmabuf;
use super::ucmd::Ucmd;
use crate::backends::Prot;
use crate::iopt::accounting::{Account, AccountMode};
use crate::iopt::limits::Resource;
use crate::iopt::source::{inspect_file, FileKind, FileSource, SharedFile};
use crate::iopt::PAGE_SIZE;
use crate::objects::{Ioas, Object};
use nix::errno::Errno;
use std::sync::Arc;
use uiommufd_uapi::iommufd::*;

const MAP_FLAGS: u32 =
    IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

fn prot_of(flags: u32) -> Prot {
    Prot {
        read: flags & IOMMU_IOAS_MAP_READABLE != 0,
        write: flags & IOMMU_IOAS_MAP_WRITEABLE != 0,
    }
}

fn fixed_iova(flags: u32, iova: u64) -> Option<u64> {
    (flags & IOMMU_IOAS_MAP_FIXED_IOVA != 0).then_some(iova)
}

/// How long IOMMU_DESTROY keeps retrying an EBUSY object that an open object fd still holds (see
/// [`destroy`]).
const HANDLE_RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// IOMMU_DESTROY. A FUSE close() reaches the daemon as an asynchronous RELEASE, so a client that
/// closes an object fd (an access, a fault queue) and at once destroys what that object used
/// could otherwise see EBUSY where the kernel, whose close is synchronous, succeeds. While an open
/// handle still holds the object, EBUSY is retried for a while; any other EBUSY answers at once.
pub fn destroy(u: &Ucmd) -> Result<(), Errno> {
    let cmd: iommu_destroy = u.cmd();
    let deadline = std::time::Instant::now() + HANDLE_RELEASE_GRACE;
    loop {
        // Asked before the attempt: a handle leaves the registry only after its object let go, so
        // when none is left here, an EBUSY below is not waiting for any close.
        let seen = u.handles.releases();
        let held_by_handle = u.handles.release_may_free(u.ctx.id, cmd.id);
        let r = u.ctx.destroy(cmd.id);
        if r != Err(Errno::EBUSY) || !held_by_handle || std::time::Instant::now() >= deadline {
            return r;
        }
        // Woken by the next release of any handle (then tried again), not by a timer.
        u.handles.wait_release_after(seen, deadline);
    }
}

pub fn ioas_alloc(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_ioas_alloc = u.cmd();
    if cmd.flags != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let id = u.ctx.insert(Object::Ioas(Ioas::new()))?;
    cmd.out_ioas_id = id;
    if let Err(e) = u.respond(&cmd) {
        let _ = u.ctx.destroy(id);
        return Err(e);
    }
    Ok(())
}

pub fn ioas_iova_ranges(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_ioas_iova_ranges = u.cmd();
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let ioas = u.ctx.get_ioas(cmd.ioas_id)?;
    let (ranges, alignment) = {
        let iopt = ioas.iopt_read();
        (iopt.usable_ranges(), iopt.iova_alignment())
    };
    let max = cmd.num_iovas as usize;
    // One copy for all the entries that fit (not one syscall per entry).
    let out: Vec<u8> = ranges
        .iter()
        .take(max)
        .flat_map(|&(start, last)| {
            zerocopy::IntoBytes::as_bytes(&iommu_iova_range { start, last }).to_vec()
        })
        .collect();
    if !out.is_empty() {
        u.mem.write(cmd.allowed_iovas, &out)?;
    }
    cmd.num_iovas = u32::try_from(ranges.len()).map_err(|_| Errno::EOVERFLOW)?;
    cmd.out_iova_alignment = alignment;
    u.respond(&cmd)?;
    if ranges.len() > max {
        return Err(Errno::EMSGSIZE);
    }
    Ok(())
}

/// Ranges read from the caller per process_vm_readv call (64 KiB).
const RANGES_PER_READ: usize = 4096;

/// Reads `num` iommu_iova_range entries at `addr` in large chunks. On a fault, returns what was
/// read before the first unreadable entry together with EFAULT, so that validation can still
/// report an earlier bad entry first, as the kernel (which copies one entry at a time) does.
fn read_ranges(u: &Ucmd, addr: u64, num: u32) -> (Vec<iommu_iova_range>, Option<Errno>) {
    const SZ: usize = std::mem::size_of::<iommu_iova_range>();
    let mut out: Vec<iommu_iova_range> = Vec::with_capacity((num as usize).min(RANGES_PER_READ));
    let mut buf = vec![0u8; (num as usize).min(RANGES_PER_READ) * SZ];
    let mut i = 0usize;
    let at = |i: usize| addr.checked_add((i * SZ) as u64).ok_or(Errno::EFAULT);
    while i < num as usize {
        let n = (num as usize - i).min(RANGES_PER_READ);
        let chunk = &mut buf[..n * SZ];
        let whole = at(i).and_then(|a| u.mem.read(a, chunk));
        if whole.is_err() {
            // Find the first entry that cannot be read.
            for k in 0..n {
                let r = at(i + k).and_then(|a| crate::caller::read_struct(u.mem, a));
                match r {
                    Ok(r) => out.push(r),
                    Err(e) => return (out, Some(e)),
                }
            }
        } else {
            out.extend(chunk.chunks_exact(SZ).map(|c| {
                <iommu_iova_range as zerocopy::FromBytes>::read_from_bytes(c).expect("exact chunk")
            }));
        }
        i += n;
    }
    (out, None)
}

/// Validates allowed ranges in input order as the kernel does: an entry with start >= last or
/// overlapping an earlier entry is EINVAL. O(n log n): the accepted entries are disjoint, so an
/// overlap with any of them shows on the one with the largest start <= the new entry's last.
pub fn check_allowed_ranges(ranges: &[iommu_iova_range]) -> Result<Vec<(u64, u64)>, Errno> {
    let mut accepted: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for r in ranges {
        if r.start >= r.last {
            return Err(Errno::EINVAL);
        }
        if accepted
            .range(..=r.last)
            .next_back()
            .is_some_and(|(_, &last)| last >= r.start)
        {
            return Err(Errno::EINVAL);
        }
        accepted.insert(r.start, r.last);
    }
    Ok(accepted.into_iter().collect())
}

pub fn ioas_allow_iovas(u: &Ucmd) -> Result<(), Errno> {
    let cmd: iommu_ioas_allow_iovas = u.cmd();
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let ioas = u.ctx.get_ioas(cmd.ioas_id)?;
    // The kernel allocates room for every entry before copying any (ENOMEM when that fails);
    // here the room is bounded by the context's cap, before a byte is read or allocated.
    if u64::from(cmd.num_iovas) > Resource::AllowedRanges.caps().0 {
        return Err(Errno::ENOMEM);
    }
    let (raw, fault) = read_ranges(u, cmd.allowed_iovas, cmd.num_iovas);
    let ranges = check_allowed_ranges(&raw)?;
    if let Some(e) = fault {
        return Err(e);
    }
    drop(raw);
    // Stored ranges count against the context's cap (the kernel charges them to the memcg).
    let charge = u.ctx.charge(Resource::AllowedRanges, ranges.len() as u64)?;
    let result = ioas.iopt().set_allowed_charged(&ranges, Some(charge));
    result
}

fn check_map_flags(flags: u32, iova: u64, length: u64) -> Result<(), Errno> {
    if iova == u64::MAX || length == u64::MAX {
        return Err(Errno::EOVERFLOW);
    }
    if flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) == 0 {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

pub fn ioas_map(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_ioas_map = u.cmd();
    if cmd.flags & !MAP_FLAGS != 0 || cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    check_map_flags(cmd.flags, cmd.iova, cmd.length)?;
    let ioas = u.ctx.get_ioas(cmd.ioas_id)?;
    u.ctx.check_mapping_room()?;
    let (owner, creds) = caller_process(u.ctx, u.mem)?;
    let iova = ioas.map_user(
        u.ctx,
        owner,
        &creds,
        cmd.user_va,
        cmd.length,
        fixed_iova(cmd.flags, cmd.iova),
        prot_of(cmd.flags),
    )?;
    cmd.iova = iova;
    respond_or_unmap(u, &ioas, &cmd, iova, cmd.length)
}

/// Responds; if the response cannot be written the new mapping is undone, as the caller never
/// learned of it.
fn respond_or_unmap<T: zerocopy::IntoBytes + zerocopy::Immutable>(
    u: &Ucmd,
    ioas: &Ioas,
    cmd: &T,
    iova: u64,
    length: u64,
) -> Result<(), Errno> {
    if let Err(e) = u.respond(cmd) {
        let _ = ioas.unmap(iova, iova + (length - 1));
        return Err(e);
    }
    Ok(())
}

pub fn ioas_map_file(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_ioas_map_file = u.cmd();
    if cmd.flags & !MAP_FLAGS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    check_map_flags(cmd.flags, cmd.iova, cmd.length)?;
    let ioas = u.ctx.get_ioas(cmd.ioas_id)?;
    if cmd.length == 0 {
        return Err(Errno::EINVAL);
    }
    u.ctx.check_mapping_room()?;
    cmd.start
        .checked_add(cmd.length - 1)
        .ok_or(Errno::EOVERFLOW)?;
    // Closed through close_dup whatever happens: the fd may be a file of our own CUSE node.
    let file = crate::caller::context_query::ClientDup::new(
        u.mem.get_fd(cmd.fd).map_err(|_| Errno::EBADF)?,
    );
    if let Some(buf) = u
        .handles
        .object_of_file(std::os::fd::AsFd::as_fd(&file))
        .and_then(|o| o.plugged::<TestDmabuf>())
    {
        return map_dmabuf(u, cmd, &ioas, &buf);
    }
    // As the kernel: any file maps; pins of what memfd_pin_folios() cannot pin (not shmem or
    // hugetlbfs, or past the end of the file) fail later with EINVAL. Such a file is not kept.
    let info = inspect_file(std::os::fd::AsFd::as_fd(&file), u.mem.pid())?;
    let prot = prot_of(cmd.flags);
    if prot.write && (!info.fd_writable || info.write_sealed) {
        return Err(Errno::EPERM);
    }
    if cmd.length > u64::MAX - PAGE_SIZE {
        return Err(Errno::EINVAL);
    }
    let aligned_start = cmd.start & !(PAGE_SIZE - 1);
    let start_byte = cmd.start - aligned_start;
    let map_len = (start_byte + cmd.length).next_multiple_of(PAGE_SIZE);
    let charge = u.ctx.charge(Resource::FileMaps, 1)?;
    let shared = match info.kind {
        FileKind::Unsupported => None,
        _ => Some(SharedFile::share(file.into_inner(), &info)?),
    };
    let source = Arc::new(FileSource::new(
        shared,
        aligned_start,
        map_len,
        Some(charge),
    ));
    let (owner, creds) = caller_process(u.ctx, u.mem)?;
    let pages = Ioas::make_pages(
        u.ctx,
        source,
        start_byte,
        cmd.length,
        prot.write,
        Account::for_process(owner, &creds, AccountMode::User),
    )?;
    let iova = ioas.map_pages(pages, fixed_iova(cmd.flags, cmd.iova), prot)?;
    cmd.iova = iova;
    respond_or_unmap(u, &ioas, &cmd, iova, cmd.length)
}

/// IOAS_MAP_FILE of a dma-buf: a fresh import of the exporter's memory (not charged to any
/// RLIMIT_MEMLOCK, as the kernel does not account dma-buf pages).
fn map_dmabuf(
    u: &Ucmd,
    mut cmd: iommu_ioas_map_file,
    ioas: &Arc<Ioas>,
    buf: &TestDmabuf,
) -> Result<(), Errno> {
    let prot = prot_of(cmd.flags);
    let import = buf.import(cmd.start, cmd.length)?;
    let pages = Ioas::make_pages(
        u.ctx,
        import.clone(),
        cmd.start % PAGE_SIZE,
        cmd.length,
        prot.write,
        Account::unaccounted(),
    )?;
    let iova = ioas.map_pages(pages, fixed_iova(cmd.flags, cmd.iova), prot)?;
    buf.track(&import, ioas);
    cmd.iova = iova;
    respond_or_unmap(u, ioas, &cmd, iova, cmd.length)
}

pub fn ioas_copy(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_ioas_copy = u.cmd();
    if cmd.flags & !MAP_FLAGS != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if cmd.length == u64::MAX || cmd.src_iova == u64::MAX || cmd.dst_iova == u64::MAX {
        return Err(Errno::EOVERFLOW);
    }
    if cmd.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) == 0 {
        return Err(Errno::EINVAL);
    }
    let src = u.ctx.get_ioas(cmd.src_ioas_id)?;
    let slices = src.iopt_read().get_pages(cmd.src_iova, cmd.length)?;
    let dst = u.ctx.get_ioas(cmd.dst_ioas_id)?;
    u.ctx.check_mapping_room()?;
    let iova = dst.map_slices(
        &slices,
        cmd.length,
        fixed_iova(cmd.flags, cmd.dst_iova),
        prot_of(cmd.flags),
    )?;
    cmd.dst_iova = iova;
    respond_or_unmap(u, &dst, &cmd, iova, cmd.length)
}

pub fn ioas_unmap(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_ioas_unmap = u.cmd();
    let ioas = u.ctx.get_ioas(cmd.ioas_id)?;
    let unmapped = if cmd.iova == 0 && cmd.length == u64::MAX {
        ioas.unmap(0, u64::MAX).map_err(|(e, _)| e)?
    } else {
        if cmd.iova == u64::MAX || cmd.length == u64::MAX {
            return Err(Errno::EOVERFLOW);
        }
        if cmd.length == 0 {
            return Err(Errno::EINVAL);
        }
        let last = cmd
            .iova
            .checked_add(cmd.length - 1)
            .ok_or(Errno::EOVERFLOW)?;
        let n = ioas.unmap(cmd.iova, last).map_err(|(e, _)| e)?;
        if n == 0 {
            return Err(Errno::ENOENT);
        }
        n
    };
    cmd.length = unmapped;
    u.respond(&cmd)
}

/// `capable(cap)` of the calling thread (only capabilities in the daemon's user namespace).
pub(crate) fn caller_capable(u: &Ucmd, cap: u32) -> bool {
    u.mem.capable(cap)
}

/// The bound identity of the calling process (shared through the context) and the calling
/// thread's credentials: who owns and pays for what the caller maps now.
pub(crate) fn caller_process(
    ctx: &crate::objects::Context,
    mem: &dyn crate::caller::CallerMemory,
) -> Result<
    (
        Arc<crate::caller::ProcessHandle>,
        crate::caller::Credentials,
    ),
    Errno,
> {
    let creds = mem.credentials()?;
    let owner = ctx.processes.get(mem)?;
    Ok((owner, creds))
}

pub fn option(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_option = u.cmd();
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    match cmd.option_id {
        IOMMU_OPTION_RLIMIT_MODE => {
            if cmd.object_id != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            match cmd.op {
                IOMMU_OPTION_OP_GET => {
                    cmd.val64 = (u.ctx.account_mode() == AccountMode::Process) as u64;
                }
                IOMMU_OPTION_OP_SET => {
                    if !caller_capable(u, crate::caller::CAP_SYS_RESOURCE) {
                        return Err(Errno::EPERM);
                    }
                    let mode = match cmd.val64 {
                        0 => AccountMode::User,
                        1 => AccountMode::Process,
                        _ => {
                            // The kernel reports EBUSY before looking at the value.
                            if u.ctx.num_objects() != 0 {
                                return Err(Errno::EBUSY);
                            }
                            return Err(Errno::EINVAL);
                        }
                    };
                    u.ctx.set_account_mode(mode)?;
                }
                _ => return Err(Errno::EOPNOTSUPP),
            }
        }
        IOMMU_OPTION_HUGE_PAGES => {
            let ioas = u.ctx.get_ioas(cmd.object_id)?;
            match cmd.op {
                IOMMU_OPTION_OP_GET => {
                    cmd.val64 = (!ioas.iopt_read().large_pages_disabled()) as u64
                }
                IOMMU_OPTION_OP_SET => match cmd.val64 {
                    0 => ioas.iopt().disable_large_pages()?,
                    1 => ioas.iopt().enable_large_pages(),
                    _ => return Err(Errno::EINVAL),
                },
                _ => return Err(Errno::EOPNOTSUPP),
            }
        }
        _ => return Err(Errno::EOPNOTSUPP),
    }
    // Only val64 goes back to the caller.
    let off = std::mem::offset_of!(iommu_option, val64) as u64;
    u.mem.write(u.arg + off, &cmd.val64.to_ne_bytes())
}

pub fn vfio_ioas(u: &Ucmd) -> Result<(), Errno> {
    let mut cmd: iommu_vfio_ioas = u.cmd();
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    match cmd.op {
        IOMMU_VFIO_IOAS_GET => {
            cmd.ioas_id = u.ctx.live_vfio_ioas()?;
            u.respond(&cmd)
        }
        IOMMU_VFIO_IOAS_SET => {
            u.ctx.get_ioas(cmd.ioas_id)?;
            u.ctx.set_vfio_ioas(Some(cmd.ioas_id));
            Ok(())
        }
        IOMMU_VFIO_IOAS_CLEAR => {
            u.ctx.set_vfio_ioas(None);
            Ok(())
        }
        _ => Err(Errno::EOPNOTSUPP),
    }
}

/// IOMMU_IOAS_CHANGE_PROCESS: moves the pin charge of every mapping of every IOAS to the caller.
/// Only file-backed mappings can change process (EINVAL otherwise); the daemon's file mappings
/// do not depend on the old process at all, so only the accounting owner changes.
///
/// Every IOAS of the context stays locked (in ID order) from validation to the end, as the
/// kernel holds all their IOVA locks. Areas always hold their pages here (the kernel's EBUSY
/// for an area caught without pages mid-unmap has no counterpart). The charge moves one `Pages`
/// at a time: if the caller's limit refuses one, the error is returned and the `Pages` already
/// moved stay with the caller (the kernel charges the total up front); `Pages` does not expose
/// its old owner to undo with.
pub fn ioas_change_process(u: &Ucmd) -> Result<(), Errno> {
    let cmd: iommu_ioas_change_process = u.cmd();
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    // Bound before any IOAS lock is taken (it reads /proc and opens files).
    let (process, creds) = caller_process(u.ctx, u.mem)?;
    let ioases: Vec<Arc<Ioas>> = u
        .ctx
        .objects_of_type("ioas")
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::Ioas(ioas) => Some(ioas),
            _ => None,
        })
        .collect();
    let iopts: Vec<_> = ioases.iter().map(|ioas| ioas.iopt()).collect();
    let mut all_pages: Vec<Arc<crate::iopt::Pages>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for area in iopts.iter().flat_map(|iopt| iopt.areas()) {
        // A map still pinning (the kernel's area without pages yet): EBUSY.
        if area.pending {
            return Err(Errno::EBUSY);
        }
        if !area.pages.source().is_file() {
            return Err(Errno::EINVAL);
        }
        if seen.insert(Arc::as_ptr(&area.pages)) {
            all_pages.push(area.pages.clone());
        }
    }
    for pages in &all_pages {
        let mut owner = Account::for_process(process.clone(), &creds, pages.account_mode());
        // The mode stays the one the pages were created with, whatever the caller's capabilities.
        owner.mode = pages.account_mode();
        pages.change_owner(owner)?;
    }
    drop(iopts);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, last: u64) -> iommu_iova_range {
        iommu_iova_range { start, last }
    }

    /// The kernel's order: entries one at a time, each against the ones accepted before it.
    fn naive(ranges: &[iommu_iova_range]) -> Result<usize, (usize, Errno)> {
        for (i, x) in ranges.iter().enumerate() {
            if x.start >= x.last {
                return Err((i, Errno::EINVAL));
            }
            if ranges[..i]
                .iter()
                .any(|y| y.start <= x.last && y.last >= x.start)
            {
                return Err((i, Errno::EINVAL));
            }
        }
        Ok(ranges.len())
    }

    #[test]
    fn allowed_ranges_match_the_pairwise_check() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let n = (next() % 12) as usize;
            let ranges: Vec<_> = (0..n)
                .map(|_| {
                    let s = next() % 64;
                    r(s, s + next() % 8)
                })
                .collect();
            let fast = check_allowed_ranges(&ranges);
            match naive(&ranges) {
                Ok(_) => {
                    let mut want: Vec<_> = ranges.iter().map(|x| (x.start, x.last)).collect();
                    want.sort_unstable();
                    assert_eq!(fast, Ok(want));
                }
                Err((_, e)) => assert_eq!(fast, Err(e)),
            }
        }
        assert_eq!(
            check_allowed_ranges(&[r(0, 9), r(10, 19), r(5, 5)]),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            check_allowed_ranges(&[r(10, 19), r(0, u64::MAX)]),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn many_allowed_ranges_are_fast() {
        let ranges: Vec<_> = (0..400_000u64)
            .rev()
            .map(|i| r(i * 0x2000, i * 0x2000 + 0xfff))
            .collect();
        let t = std::time::Instant::now();
        assert_eq!(check_allowed_ranges(&ranges).unwrap().len(), 400_000);
        // Quadratic work would take minutes; even a debug build needs well under this.
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
