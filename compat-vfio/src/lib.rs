//! VFIO type1 container compatibility: the container ioctls (`/dev/vfio/vfio`, and the same ioctls
//! on `/dev/iommu`) expressed as operations on the context's compat IOAS.
//!
//! The crate knows nothing of uiommufd's internals: the daemon implements [`CompatHost`] for its
//! context and routes every ioctl number the iommufd table does not own to [`vfio_ioctl`].
//!
//! Behaviour follows Linux 7.2's iommufd VFIO compatibility (errno, validation order, what is
//! written back to the caller and when). Deliberate choices:
//! * uiommufd has no VFIO no-IOMMU support, so this answers like a kernel built without
//!   `CONFIG_VFIO_NOIOMMU`: `CHECK_EXTENSION(VFIO_NOIOMMU_IOMMU)` is 0, a context can never be in
//!   no-IOMMU mode (only attaching a no-IOMMU device puts it there), and `SET_IOMMU` of the
//!   no-IOMMU type is EINVAL like any other unsupported type.
//! * `CHECK_EXTENSION(VFIO_DMA_CC_IOMMU)` without a compat IOAS fails with the errno of
//!   [`CompatHost::compat_ioas`] (ENODEV), as the kernel does.

// Operations on the host trait only: no system call, so no unsafe.
#![forbid(unsafe_code)]
// Narrowing is explicit: `try_from` with the kernel's errno.
#![deny(clippy::cast_possible_truncation)]

use nix::errno::Errno;
use uiommufd_uapi::vfio::{
    vfio_info_cap_header, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range, vfio_iommu_type1_info_dma_avail,
    vfio_iova_range, VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_DMA_CC_IOMMU,
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL, VFIO_GET_API_VERSION,
    VFIO_IOMMU_GET_INFO, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_MAP_DMA,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, VFIO_IOMMU_UNMAP_DMA,
    VFIO_NOIOMMU_IOMMU, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU, VFIO_UNMAP_ALL,
};
use zerocopy::{FromBytes, IntoBytes};

/// What the compatibility layer needs from an iommufd context.
pub trait CompatHost {
    /// Reads caller memory (EFAULT when unreadable).
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes caller memory (EFAULT when unwritable).
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno>;
    /// The compat IOAS (IOMMU_VFIO_IOAS / created on attach); ENODEV when there is none.
    fn compat_ioas(&self) -> Result<u32, Errno>;
    /// Maps `length` bytes of caller memory at `user_va` to the fixed `iova` (IOAS_MAP semantics and
    /// errno, the caller's memory being the requester's).
    fn map(
        &self,
        ioas: u32,
        iova: u64,
        user_va: u64,
        length: u64,
        read: bool,
        write: bool,
    ) -> Result<(), Errno>;
    /// Unmaps `[iova, iova + length)` with IOAS_UNMAP semantics and errno (EINVAL for a zero
    /// length, EOVERFLOW when the range wraps, superset rule). `Ok(bytes unmapped)`; on error the
    /// errno together with the bytes already unmapped before it failed (the kernel reports those
    /// back in the VFIO unmap's `size` even when the call fails).
    fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<u64, (Errno, u64)>;
    /// Unmaps everything: `Ok(bytes unmapped)`, or the errno and the bytes unmapped before it.
    fn unmap_all(&self, ioas: u32) -> Result<u64, (Errno, u64)>;
    /// Splits areas so each IOVA in `iovas` becomes the last byte of an area (type1 v1 unmap).
    /// IOVAs inside no area are skipped; stops at the first failing split.
    fn cut(&self, ioas: u32, iovas: &[u64]) -> Result<(), Errno>;
    /// Whether large pages are disabled on the IOAS (IOMMU_OPTION_HUGE_PAGES = 0 / type1 v1).
    fn large_pages_disabled(&self, ioas: u32) -> bool;
    /// IOMMU_OPTION_HUGE_PAGES = 0 on the IOAS (EINVAL when domains already hold mappings).
    fn disable_large_pages(&self, ioas: u32) -> Result<(), Errno>;
    /// The IOAS's current IOVA alignment (1 when it has no domain).
    fn iova_alignment(&self, ioas: u32) -> u64;
    /// The bitwise AND of the `pgsize_bitmap` of every domain attached to the IOAS; `u64::MAX`
    /// when it has none. (VFIO_IOMMU_GET_INFO derives `iova_pgsizes` from it.)
    fn domains_pgsize_bitmap(&self, ioas: u32) -> u64;
    /// The usable IOVA ranges `[start, last]` (complement of the reserved ranges), ascending.
    fn usable_ranges(&self, ioas: u32) -> Vec<(u64, u64)>;
    /// True when every page table attached to the IOAS enforces cache coherency (so also true
    /// when none is attached).
    fn enforces_cache_coherency(&self, ioas: u32) -> bool;
    /// Whether the caller has CAP_SYS_RAWIO (needed for the no-IOMMU type).
    fn caller_has_sys_rawio(&self) -> bool;
}

/// The CPU page size the kernel's `PAGE_SIZE` stands for (the daemon's io_pagetable uses the same).
const PAGE_SIZE: u64 = 4096;

/// `IS_ENABLED(CONFIG_VFIO_NOIOMMU)`: uiommufd behaves like a kernel built without it.
const VFIO_NOIOMMU_ENABLED: bool = false;

/// `offsetofend(struct vfio_iommu_type1_info, iova_pgsizes)`.
const INFO_MINSZ: usize = 16;
/// `offsetofend(struct vfio_iommu_type1_dma_map, size)`.
const MAP_MINSZ: usize = size_of::<vfio_iommu_type1_dma_map>();
/// `offsetofend(struct vfio_iommu_type1_dma_unmap, size)`.
const UNMAP_MINSZ: usize = size_of::<vfio_iommu_type1_dma_unmap>();
/// Byte offset of `next` inside [`vfio_info_cap_header`].
const CAP_NEXT_OFFSET: u64 = 4;

/// Handles one VFIO container ioctl. `None` when `cmd` is not a container ioctl (→ ENOTTY).
pub fn vfio_ioctl(host: &dyn CompatHost, cmd: u32, arg: u64) -> Option<Result<i64, Errno>> {
    let (name, result) = match cmd {
        VFIO_GET_API_VERSION => ("VFIO_GET_API_VERSION", Ok(i64::from(VFIO_API_VERSION))),
        VFIO_SET_IOMMU => ("VFIO_SET_IOMMU", set_iommu(host, arg).map(|()| 0)),
        VFIO_CHECK_EXTENSION => ("VFIO_CHECK_EXTENSION", check_extension(host, arg)),
        VFIO_IOMMU_GET_INFO => ("VFIO_IOMMU_GET_INFO", get_info(host, arg).map(|()| 0)),
        VFIO_IOMMU_MAP_DMA => ("VFIO_IOMMU_MAP_DMA", map_dma(host, arg).map(|()| 0)),
        VFIO_IOMMU_UNMAP_DMA => ("VFIO_IOMMU_UNMAP_DMA", unmap_dma(host, arg).map(|()| 0)),
        // VFIO_IOMMU_DIRTY_PAGES, the SPAPR ioctls and everything else: not a compat ioctl.
        _ => {
            tracing::debug!(
                cmd = format_args!("{cmd:#x}"),
                arg,
                "vfio compat: not a container ioctl"
            );
            return None;
        }
    };
    tracing::debug!(
        ioctl = name,
        arg = format_args!("{arg:#x}"),
        ?result,
        "vfio compat"
    );
    Some(result)
}

/// Reads the first `len` bytes of a `T` from caller memory; the rest of `T` is zero.
fn read_prefix<T: FromBytes + IntoBytes>(
    host: &dyn CompatHost,
    addr: u64,
    len: usize,
) -> Result<T, Errno> {
    let mut value = T::new_zeroed();
    host.read(addr, &mut value.as_mut_bytes()[..len])?;
    Ok(value)
}

fn check_extension(host: &dyn CompatHost, ext: u64) -> Result<i64, Errno> {
    // Never in no-IOMMU mode (see the crate docs), so the type1 extensions are always there.
    let no_iommu_mode = false;
    match ext {
        e if e == u64::from(VFIO_TYPE1_IOMMU)
            || e == u64::from(VFIO_TYPE1v2_IOMMU)
            || e == u64::from(VFIO_UNMAP_ALL) =>
        {
            Ok(i64::from(!no_iommu_mode))
        }
        e if e == u64::from(VFIO_NOIOMMU_IOMMU) => Ok(i64::from(VFIO_NOIOMMU_ENABLED)),
        e if e == u64::from(VFIO_DMA_CC_IOMMU) => {
            let ioas = host.compat_ioas()?;
            Ok(i64::from(host.enforces_cache_coherency(ioas)))
        }
        // Nesting (retired), VFIO_UPDATE_VADDR (not offered), SPAPR, EEH, unknown.
        _ => Ok(0),
    }
}

fn set_iommu(host: &dyn CompatHost, ty: u64) -> Result<(), Errno> {
    // Never in no-IOMMU mode (see the crate docs); with the option off this branch is dead, as in
    // a kernel without CONFIG_VFIO_NOIOMMU.
    let no_iommu_mode = false;
    if VFIO_NOIOMMU_ENABLED && ty == u64::from(VFIO_NOIOMMU_IOMMU) && no_iommu_mode {
        return if host.caller_has_sys_rawio() {
            Ok(())
        } else {
            Err(Errno::EPERM)
        };
    }
    let v1 = ty == u64::from(VFIO_TYPE1_IOMMU);
    if (!v1 && ty != u64::from(VFIO_TYPE1v2_IOMMU)) || no_iommu_mode {
        return Err(Errno::EINVAL);
    }
    let ioas = host.compat_ioas()?;
    // Type1 v1 may unmap inside a mapping: emulated by never using IO pages larger than a CPU page,
    // so any page boundary can be split later.
    if v1 {
        host.disable_large_pages(ioas)?;
    }
    Ok(())
}

/// `iova_pgsizes`: the page sizes every domain supports, sub-CPU-page sizes folded into the CPU
/// page size (as VFIO type1 does), and never below the IOVA alignment.
fn iova_pgsizes(host: &dyn CompatHost, ioas: u32) -> u64 {
    let page_mask = !(PAGE_SIZE - 1);
    let mut bitmap = host.domains_pgsize_bitmap(ioas);
    if bitmap & !page_mask != 0 {
        bitmap &= page_mask;
        bitmap |= PAGE_SIZE;
    }
    bitmap.max(host.iova_alignment(ioas))
}

/// Writes the DMA_AVAIL capability at `cur` when `avail` bytes hold it; returns its size.
fn fill_cap_dma_avail(host: &dyn CompatHost, cur: u64, avail: u64) -> Result<u64, Errno> {
    let cap = vfio_iommu_type1_info_dma_avail {
        header: vfio_info_cap_header {
            id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
            version: 1,
            next: 0,
        },
        // iommufd limits mappings by memory accounting, not by a count: report the largest value
        // (U16_MAX would be VFIO's default, but s390 QEMU needs more).
        avail: u32::MAX,
    };
    let size = size_of_val(&cap) as u64;
    if avail >= size {
        host.write(cur, cap.as_bytes())?;
    }
    Ok(size)
}

/// Writes the IOVA_RANGE capability at `cur`, each range as far as `avail` bytes hold it and the
/// header only when the whole capability fits; returns its full size.
fn fill_cap_iova(host: &dyn CompatHost, ioas: u32, cur: u64, avail: u64) -> Result<u64, Errno> {
    let header_size = size_of::<vfio_iommu_type1_info_cap_iova_range>() as u64;
    let range_size = size_of::<vfio_iova_range>() as u64;
    let size_for = |n: u64| header_size + range_size * n;
    let mut cap = vfio_iommu_type1_info_cap_iova_range {
        header: vfio_info_cap_header {
            id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
            version: 1,
            next: 0,
        },
        nr_iovas: 0,
        reserved: 0,
    };
    for (start, end) in host.usable_ranges(ioas) {
        let n = u64::from(cap.nr_iovas);
        if avail >= size_for(n + 1) {
            let range = vfio_iova_range { start, end };
            host.write(cur.wrapping_add(size_for(n)), range.as_bytes())?;
        }
        cap.nr_iovas += 1;
    }
    let size = size_for(u64::from(cap.nr_iovas));
    if avail >= size {
        host.write(cur, cap.as_bytes())?;
    }
    Ok(size)
}

/// An offset or size of the info's capability chain as its u32 word: a chain past 4 GiB
/// (hundreds of millions of IOVA ranges) is EOVERFLOW rather than a wrapped size.
fn chain_word(v: u64) -> Result<u32, Errno> {
    u32::try_from(v).map_err(|_| Errno::EOVERFLOW)
}

fn get_info(host: &dyn CompatHost, arg: u64) -> Result<(), Errno> {
    let mut info: vfio_iommu_type1_info = read_prefix(host, arg, INFO_MINSZ)?;
    if (info.argsz as usize) < INFO_MINSZ {
        return Err(Errno::EINVAL);
    }
    let copy_len = (info.argsz as usize).min(size_of::<vfio_iommu_type1_info>());
    let ioas = host.compat_ioas()?;

    info.flags = VFIO_IOMMU_INFO_PGSIZES;
    info.iova_pgsizes = iova_pgsizes(host, ioas);
    info.cap_offset = 0;

    // The chain follows the struct; each capability is padded to 8 bytes. A capability is written
    // only when it fits whole in argsz, and a capability's `next` only when argsz reaches the
    // following one's start. The caller learns the size of the whole chain from argsz.
    let argsz = u64::from(info.argsz);
    let info_size = size_of::<vfio_iommu_type1_info>() as u64;
    let mut total = info_size;
    let mut last_cap: Option<u64> = None;
    for cap_index in 0..2 {
        let cur = arg.wrapping_add(total);
        let avail = argsz.saturating_sub(total);
        let cap_size = match cap_index {
            0 => fill_cap_dma_avail(host, cur, avail)?,
            _ => fill_cap_iova(host, ioas, cur, avail)?,
        };
        let cap_size = cap_size.next_multiple_of(8);
        if let Some(last) = last_cap {
            if argsz >= total {
                host.write(
                    last.wrapping_add(CAP_NEXT_OFFSET),
                    &chain_word(total)?.to_ne_bytes(),
                )?;
            }
        }
        last_cap = Some(cur);
        total += cap_size;
    }

    if argsz >= total {
        info.cap_offset = chain_word(info_size)?;
    }
    info.argsz = chain_word(total)?;
    info.flags |= VFIO_IOMMU_INFO_CAPS;
    host.write(arg, &info.as_bytes()[..copy_len])
}

fn map_dma(host: &dyn CompatHost, arg: u64) -> Result<(), Errno> {
    let supported = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    let map: vfio_iommu_type1_dma_map = read_prefix(host, arg, MAP_MINSZ)?;
    if (map.argsz as usize) < MAP_MINSZ || map.flags & !supported != 0 {
        return Err(Errno::EINVAL);
    }
    let read = map.flags & VFIO_DMA_MAP_FLAG_READ != 0;
    let write = map.flags & VFIO_DMA_MAP_FLAG_WRITE != 0;
    let ioas = host.compat_ioas()?;
    host.map(ioas, map.iova, map.vaddr, map.size, read, write)
}

fn unmap_dma(host: &dyn CompatHost, arg: u64) -> Result<(), Errno> {
    // GET_DIRTY_BITMAP is obsolete under iommufd (dirty tracking has its own uAPI) and VADDR is
    // not offered: both are unknown flags.
    let supported = VFIO_DMA_UNMAP_FLAG_ALL;
    let mut unmap: vfio_iommu_type1_dma_unmap = read_prefix(host, arg, UNMAP_MINSZ)?;
    if (unmap.argsz as usize) < UNMAP_MINSZ || unmap.flags & !supported != 0 {
        return Err(Errno::EINVAL);
    }
    let ioas = host.compat_ioas()?;

    let outcome = if unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 {
        if unmap.iova != 0 || unmap.size != 0 {
            return Err(Errno::EINVAL);
        }
        host.unmap_all(ioas)
    } else {
        if host.large_pages_disabled(ioas) {
            // Type1 v1: the range may start or end inside a mapping. Split at its last byte and
            // just before its first (nothing precedes IOVA 0).
            let last = unmap.iova.wrapping_add(unmap.size).wrapping_sub(1);
            let before = unmap.iova.wrapping_sub(1);
            let iovas = [last, before];
            let count = if unmap.iova != 0 { 2 } else { 1 };
            host.cut(ioas, &iovas[..count])?;
        }
        host.unmap(ioas, unmap.iova, unmap.size)
    };
    let (result, unmapped) = match outcome {
        Ok(n) => (Ok(()), n),
        Err((e, n)) => (Err(e), n),
    };
    // The bytes unmapped go back even when the unmap failed part way.
    unmap.size = unmapped;
    host.write(arg, &unmap.as_bytes()[..UNMAP_MINSZ])?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_past_4_gib_is_eoverflow_not_a_wrapped_size() {
        let total = u64::from(u32::MAX) + 1 + 24;
        // The plain `as u32` this replaces would have told the caller 24 bytes.
        assert_eq!(total % (1 << 32), 24);
        assert_eq!(chain_word(total), Err(Errno::EOVERFLOW));
        assert_eq!(chain_word(u64::from(u32::MAX)), Ok(u32::MAX));
    }
}
