//! Fixed and automatic mapping, unmap, get_pages, allowed and reserved ranges.

use super::*;

// ---------------------------------------------------------------------------------------------
// Fixed-IOVA map: validation order and errno
// ---------------------------------------------------------------------------------------------

#[test]
fn fixed_map_without_domain_takes_any_alignment() {
    let mut iopt = IoPagetable::new();
    assert_eq!(iopt.iova_alignment(), 1);
    assert_eq!(map_mem(&mut iopt, Some(0x1001), 0x1000, 3, 5), Ok(0x1001));
    assert_eq!(intervals(&iopt), vec![(0x1001, 0x1005)]);
}

#[test]
fn fixed_map_misaligned_is_einval_with_2k_domain() {
    let (mut iopt, d) = iopt_2k();
    // IOVA not a multiple of 2048.
    assert_eq!(map_at(&mut iopt, 0x10400, 0x800), Err(Errno::EINVAL));
    // Length not a multiple of 2048.
    assert_eq!(map_at(&mut iopt, 0x10000, 0x400), Err(Errno::EINVAL));
    assert_eq!(map_at(&mut iopt, 0x10000, 0x801), Err(Errno::EINVAL));
    // Offset inside the first page not a multiple of 2048.
    assert_eq!(
        map_mem(&mut iopt, Some(0x10000), 0x1000, 0x400, 0x800),
        Err(Errno::EINVAL)
    );
    // Misalignment wins over wrap-around, reserved ranges and existing areas.
    assert_eq!(
        map_at(&mut iopt, u64::MAX - 0x3ff, 0x800),
        Err(Errno::EINVAL)
    );
    assert_eq!(iopt.num_areas(), 0);
    assert!(d.is_empty());
    // 2 KiB granularity is enough: half a CPU page at a 2 KiB offset.
    assert_eq!(
        map_mem(&mut iopt, Some(0x10800), 0x1000, 0x800, 0x800),
        Ok(0x10800)
    );
    assert_domain_mirrors(&iopt, &d);
}

#[test]
fn fixed_map_wrap_around_is_eoverflow() {
    let mut iopt = IoPagetable::new();
    assert_eq!(map_at(&mut iopt, u64::MAX, 2), Err(Errno::EOVERFLOW));
    assert_eq!(
        map_at(&mut iopt, u64::MAX - 0xfff, 0x2000),
        Err(Errno::EOVERFLOW)
    );
    // The very last byte is usable.
    assert_eq!(map_at(&mut iopt, u64::MAX, 1), Ok(u64::MAX));
    assert_eq!(
        map_at(&mut iopt, u64::MAX - 0x1000, 0x1000),
        Ok(u64::MAX - 0x1000)
    );
    let (mut iopt, _d) = iopt_2k();
    assert_eq!(
        map_at(&mut iopt, u64::MAX - 0x7ff, 0x1000),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(
        map_at(&mut iopt, u64::MAX - 0x7ff, 0x800),
        Ok(u64::MAX - 0x7ff)
    );
}

#[test]
fn fixed_map_onto_reserved_is_einval() {
    let mut iopt = IoPagetable::new();
    iopt.reserve(0x10000, 0x1ffff, ReservedOwner::Test).unwrap();
    assert_eq!(map_at(&mut iopt, 0xf000, 0x2000), Err(Errno::EINVAL));
    assert_eq!(map_at(&mut iopt, 0x1f000, 0x1000), Err(Errno::EINVAL));
    assert_eq!(map_at(&mut iopt, 0x0, 0x100000), Err(Errno::EINVAL));
    // Touching but not intersecting is fine.
    assert_eq!(map_at(&mut iopt, 0xf000, 0x1000), Ok(0xf000));
    assert_eq!(map_at(&mut iopt, 0x20000, 0x1000), Ok(0x20000));
    // Reserved is checked before areas: a range touching both is EINVAL.
    assert_eq!(map_at(&mut iopt, 0xf000, 0x2000), Err(Errno::EINVAL));
    iopt.remove_reserved(ReservedOwner::Test);
    assert_eq!(map_at(&mut iopt, 0x10000, 0x10000), Ok(0x10000));
}

#[test]
fn fixed_map_onto_area_is_eexist() {
    let mut iopt = IoPagetable::new();
    map_at(&mut iopt, 0x10000, 0x4000).unwrap();
    for (iova, len) in [
        (0x10000, 0x4000),
        (0xf000, 0x2000),
        (0x13fff, 1),
        (0x11000, 0x1000),
        (0x0, 0x100000),
        (0x13000, 0x8000),
    ] {
        assert_eq!(
            map_at(&mut iopt, iova, len),
            Err(Errno::EEXIST),
            "{iova:#x}+{len:#x}"
        );
    }
    assert_eq!(map_at(&mut iopt, 0xf000, 0x1000), Ok(0xf000));
    assert_eq!(map_at(&mut iopt, 0x14000, 0x1000), Ok(0x14000));
    // Adjacent areas stay separate.
    assert_eq!(
        intervals(&iopt),
        vec![(0xf000, 0xffff), (0x10000, 0x13fff), (0x14000, 0x14fff)]
    );
}

#[test]
fn zero_length_is_einval() {
    let mut iopt = IoPagetable::new();
    let pages = mem_pages(0x1000, 0, 0x1000, true);
    let slice = PagesSlice {
        pages: pages.clone(),
        start_byte: 0,
        length: 0x1000,
    };
    assert_eq!(
        iopt.map_pages(std::slice::from_ref(&slice), 0, Some(0x1000), RW),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        iopt.map_pages(std::slice::from_ref(&slice), 0, None, RW),
        Err(Errno::EINVAL)
    );
    assert_eq!(iopt.map_pages(&[], 0x1000, None, RW), Err(Errno::EINVAL));
    assert_eq!(iopt.get_pages(0x1000, 0).unwrap_err(), Errno::EINVAL);
    assert_eq!(iopt.access_pin(0x1000, 0, false), Err(Errno::EINVAL));
    assert_eq!(iopt.access_rw(0x1000, &mut [], false), Err(Errno::EINVAL));
    assert_eq!(iopt.alloc_iova(0x1000, 0), Err(Errno::EOVERFLOW));
    // Pages of zero bytes cannot exist either.
    assert_eq!(
        Pages::new(
            &Ledger::new(),
            Arc::new(MemorySource::new(0, 0)),
            0,
            0,
            true,
            Account::unaccounted()
        )
        .unwrap_err(),
        Errno::EINVAL
    );
}

#[test]
fn write_mapping_of_readonly_pages_is_eperm() {
    let mut iopt = IoPagetable::new();
    let pages = mem_pages(0x1000, 0, 0x1000, false);
    assert_eq!(
        iopt.map_pages(&whole(&pages), 0x1000, Some(0x1000), RW),
        Err(Errno::EPERM)
    );
    assert_eq!(
        iopt.map_pages(&whole(&pages), 0x1000, Some(0x1000), RO),
        Ok(0x1000)
    );
}

// ---------------------------------------------------------------------------------------------
// Automatic IOVA allocation
// ---------------------------------------------------------------------------------------------

#[test]
fn auto_never_returns_iova_zero() {
    let mut iopt = IoPagetable::new();
    // Even with IOVA 0 allowed and free, the window starts at PAGE_SIZE.
    iopt.set_allowed(&[(0, 0xfffff)]).unwrap();
    assert_eq!(map_mem(&mut iopt, None, 0, 0, 1), Ok(PG));
    assert_eq!(map_mem(&mut iopt, None, 0, 0, 0x1000), Ok(2 * PG));
    let mut iopt = IoPagetable::new();
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x1000), Ok(PG));
    // Allowed ranges entirely below PAGE_SIZE or in the top page give nothing.
    let mut iopt = IoPagetable::new();
    iopt.set_allowed(&[(0, PG - 1), (u64::MAX - PG + 1, u64::MAX)])
        .unwrap();
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 1), Err(Errno::ENOSPC));
}

#[test]
fn auto_alignment_comes_from_the_user_address() {
    let mut iopt = IoPagetable::new();
    // addr 0: alignment is roundup_pow_of_two(len).
    assert_eq!(iopt.alloc_iova(0, 0x3000), Ok(0x4000));
    assert_eq!(iopt.alloc_iova(0, 0x10000), Ok(0x10000));
    // Lowest set bit of the address caps it.
    assert_eq!(iopt.alloc_iova(0x7f12_3456_7000, 0x100000), Ok(0x1000));
    assert_eq!(iopt.alloc_iova(0x7f12_3450_0000, 0x100000), Ok(0x100000));
    // roundup_pow_of_two(len) caps it too.
    assert_eq!(iopt.alloc_iova(0x4000_0000, 0x3000), Ok(0x4000));
    // Capped at 2 MiB.
    assert_eq!(iopt.alloc_iova(0x4000_0000, 0x4000_0000), Ok(0x20_0000));
    assert_eq!(iopt.alloc_iova(0, 0x4000_0000), Ok(0x20_0000));
    // A sub-page offset is kept: addr ≡ 0x800 (mod 0x1000) gives 0x1000 | 0x800.
    assert_eq!(iopt.alloc_iova(0x7f00_0000_0800, 0x800), Ok(0x1800));
    assert_eq!(iopt.alloc_iova(0x7f00_0000_0800, 0x10000), Ok(0x1800));
    // Through map_pages: the hint is the source's address plus the slice's start byte.
    assert_eq!(
        map_mem(&mut iopt, None, 0x40_0000, 0, 0x20_0000),
        Ok(0x20_0000)
    );
    assert_eq!(
        map_mem(&mut iopt, None, 0x40_0000, 0x800, 0x800),
        Ok(0x1800)
    );
    assert_eq!(map_mem(&mut iopt, None, 0x40_0000, 0, 0x1000), Ok(0x2000));
    // Lengths too large for roundup_pow_of_two are EOVERFLOW.
    assert_eq!(iopt.alloc_iova(0, u64::MAX / 2), Err(Errno::EOVERFLOW));
    assert_eq!(iopt.alloc_iova(0, u64::MAX), Err(Errno::EOVERFLOW));
}

#[test]
fn auto_alignment_below_iova_alignment_is_einval() {
    let (iopt, _d) = iopt_2k();
    assert_eq!(iopt.alloc_iova(0x7f00_0000_0400, 0x800), Err(Errno::EINVAL));
    // A tiny length also makes the alignment tiny.
    assert_eq!(iopt.alloc_iova(0, 0x400), Err(Errno::EINVAL));
    assert_eq!(iopt.alloc_iova(0x7f00_0000_0800, 0x800), Ok(0x1800));
}

#[test]
fn auto_honours_allowed_and_reserved_ranges() {
    let mut iopt = IoPagetable::new();
    iopt.reserve(0x1000, 0xfffff, ReservedOwner::Test).unwrap();
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x1000), Ok(0x100000));
    iopt.set_allowed(&[(0x200000, 0x203fff), (0x300000, 0x3fffff)])
        .unwrap();
    // Fills the first allowed range, then the second.
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(map_mem(&mut iopt, None, 0x1000, 0, 0x1000).unwrap());
    }
    assert_eq!(
        got,
        vec![0x200000, 0x201000, 0x202000, 0x203000, 0x300000, 0x301000]
    );
    // Larger than the first allowed range: goes to the second.
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x8000), Ok(0x302000));
    // A reservation inside an allowed range is impossible (EADDRINUSE), but one next to the
    // areas steers nothing.
    assert_eq!(
        iopt.reserve(0x310000, 0x310fff, ReservedOwner::Test),
        Err(Errno::EADDRINUSE)
    );
}

#[test]
fn auto_skips_areas_and_reserved_holes_that_are_too_small() {
    let mut iopt = IoPagetable::new();
    map_at(&mut iopt, 0x2000, 0x1000).unwrap(); // hole [0x1000, 0x1fff]
    iopt.reserve(0x4000, 0x4fff, ReservedOwner::Test).unwrap(); // hole [0x3000, 0x3fff]
    map_at(&mut iopt, 0x7000, 0x1000).unwrap(); // hole [0x5000, 0x6fff]
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x1000), Ok(0x1000));
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x1000), Ok(0x3000));
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x2000), Ok(0x5000));
    // Aligned to 0x2000 (address and length agree): the next free 0x2000 boundary.
    assert_eq!(map_mem(&mut iopt, None, 0x2000, 0, 0x2000), Ok(0x8000));
}

#[test]
fn auto_enospc_when_full() {
    let mut iopt = IoPagetable::new();
    iopt.set_allowed(&[(0x1000, 0x4fff)]).unwrap();
    for i in 0..4 {
        assert_eq!(
            map_mem(&mut iopt, None, 0x1000, 0, 0x1000),
            Ok(0x1000 * (i + 1))
        );
    }
    assert_eq!(
        map_mem(&mut iopt, None, 0x1000, 0, 0x1000),
        Err(Errno::ENOSPC)
    );
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 1), Err(Errno::ENOSPC));
    unmap(&mut iopt, 0x2000, 0x2fff).unwrap();
    assert_eq!(
        map_mem(&mut iopt, None, 0x1000, 0, 0x2000),
        Err(Errno::ENOSPC)
    );
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x1000), Ok(0x2000));
    // The whole space reserved.
    let mut iopt = IoPagetable::new();
    iopt.reserve(0, u64::MAX, ReservedOwner::Test).unwrap();
    assert_eq!(
        map_mem(&mut iopt, None, 0x1000, 0, 0x1000),
        Err(Errno::ENOSPC)
    );
    assert!(iopt.usable_ranges().is_empty());
}

#[test]
fn auto_spans_adjacent_allowed_ranges() {
    // The kernel walks allowed ranges as spans, so adjacent ranges form one span.
    let mut iopt = IoPagetable::new();
    iopt.set_allowed(&[(0x10000, 0x10fff), (0x11000, 0x11fff)])
        .unwrap();
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x2000), Ok(0x10000));
    // Overlapping after clipping to the window: [0, 0x1fff] and [0x2000, 0x2fff].
    let mut iopt = IoPagetable::new();
    iopt.set_allowed(&[(0, 0x1fff), (0x2000, 0x2fff)]).unwrap();
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x2000), Ok(0x1000));
}

#[test]
fn auto_last_byte_of_a_hole_is_not_used_for_one_byte() {
    // Kernel quirk (aligned_start >= last rejects): a 1-byte hole is never allocated.
    let mut iopt = IoPagetable::new();
    iopt.set_allowed(&[(0x1000, 0x1001), (0x3000, 0x3002)])
        .unwrap();
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 1, 1), Ok(0x3001));
}

// ---------------------------------------------------------------------------------------------
// Unmap
// ---------------------------------------------------------------------------------------------

#[test]
fn unmap_must_be_a_superset() {
    let mut iopt = IoPagetable::new();
    map_at(&mut iopt, 0x10000, 0x1000).unwrap();
    map_at(&mut iopt, 0x11000, 0x2000).unwrap();
    map_at(&mut iopt, 0x20000, 0x1000).unwrap();
    // Cuts the second area: ENOENT, after removing the first (as the kernel does).
    assert_eq!(
        iopt.unmap_range(0x10000, 0x11fff),
        Err((Errno::ENOENT, 0x1000))
    );
    assert_eq!(
        intervals(&iopt),
        vec![(0x11000, 0x12fff), (0x20000, 0x20fff)]
    );
    // Starts inside an area.
    assert_eq!(iopt.unmap_range(0x12000, 0x1ffff), Err((Errno::ENOENT, 0)));
    assert_eq!(iopt.unmap_range(0x12fff, 0x12fff), Err((Errno::ENOENT, 0)));
    // An empty range unmaps nothing, successfully (the IOCTL layer turns 0 into ENOENT).
    assert_eq!(
        iopt.unmap_range(0x13000, 0x1ffff),
        Ok(UnmapProgress::Done(0))
    );
    assert_eq!(
        iopt.unmap_range(0x11000, 0x12fff),
        Ok(UnmapProgress::Done(0x2000))
    );
    assert_eq!(unmap(&mut iopt, 0x1000, 0x30000), Ok(0x1000));
    assert_eq!(iopt.num_areas(), 0);
}

#[test]
fn unmap_all_removes_everything() {
    let (mut iopt, d) = iopt_2k();
    map_at(&mut iopt, 0, 0x800).unwrap();
    map_at(&mut iopt, 0x10000, 0x3000).unwrap();
    map_at(&mut iopt, u64::MAX - 0x7ff, 0x800).unwrap();
    let pages: Vec<Arc<Pages>> = iopt.areas().map(|a| a.pages.clone()).collect();
    assert!(pages.iter().all(|p| p.npinned() > 0));
    assert_eq!(unmap(&mut iopt, 0, u64::MAX), Ok(0x800 + 0x3000 + 0x800));
    assert_eq!(iopt.num_areas(), 0);
    assert!(d.is_empty());
    assert!(pages.iter().all(|p| p.npinned() == 0));
    assert_eq!(unmap(&mut iopt, 0, u64::MAX), Ok(0));
}

// ---------------------------------------------------------------------------------------------
// get_pages (IOAS_COPY source side)
// ---------------------------------------------------------------------------------------------

#[test]
fn get_pages_needs_contiguous_areas() {
    let mut iopt = IoPagetable::new();
    map_mem(&mut iopt, Some(0x10000), 0x1000, 0x10, 0x1000).unwrap();
    map_mem(&mut iopt, Some(0x11000), 0x8000, 0, 0x2000).unwrap();
    map_at(&mut iopt, 0x20000, 0x1000).unwrap();
    let s = iopt.get_pages(0x10800, 0x1000).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].start_byte, s[0].length), (0x10 + 0x800, 0x800));
    assert_eq!((s[1].start_byte, s[1].length), (0, 0x800));
    assert!(Arc::ptr_eq(&s[0].pages, &iopt.area(0x10000).unwrap().pages));
    // Inside one area.
    let s = iopt.get_pages(0x11001, 0x10).unwrap();
    assert_eq!((s.len(), s[0].start_byte, s[0].length), (1, 1, 0x10));
    // Gaps: before, in the middle, after.
    assert_eq!(iopt.get_pages(0xffff, 2).unwrap_err(), Errno::ENOENT);
    assert_eq!(iopt.get_pages(0x10000, 0x4000).unwrap_err(), Errno::ENOENT);
    assert_eq!(iopt.get_pages(0x12fff, 0xe002).unwrap_err(), Errno::ENOENT);
    assert_eq!(iopt.get_pages(0x20000, 0x1001).unwrap_err(), Errno::ENOENT);
    assert_eq!(iopt.get_pages(0x30000, 1).unwrap_err(), Errno::ENOENT);
    assert_eq!(iopt.get_pages(u64::MAX, 2).unwrap_err(), Errno::EOVERFLOW);
    assert_eq!(iopt.get_pages(0x10000, 0x3000).unwrap().len(), 2);
}

#[test]
fn copy_maps_the_same_bytes() {
    let mut src = IoPagetable::new();
    map_mem(&mut src, Some(0x10000), 0x1000, 0, 0x2000).unwrap();
    map_mem(&mut src, Some(0x12000), 0x1000, 0, 0x1000).unwrap();
    let mut buf = vec![0u8; 0x3000];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    src.access_rw(0x10000, &mut buf, true).unwrap();
    let slices = src.get_pages(0x10800, 0x2000).unwrap();
    let mut dst = IoPagetable::new();
    let iova = dst.map_pages(&slices, 0x2000, None, RW).unwrap();
    // Hint 0x1000 + 0x800: alignment 0x800, page offset 0x800.
    assert_eq!(iova, 0x1800);
    assert_eq!(intervals(&dst), vec![(0x1800, 0x2fff), (0x3000, 0x37ff)]);
    let mut out = vec![0u8; 0x2000];
    dst.access_rw(iova, &mut out, false).unwrap();
    assert_eq!(&out[..], &buf[0x800..0x2800]);
}

// ---------------------------------------------------------------------------------------------
// Allowed and reserved ranges
// ---------------------------------------------------------------------------------------------

#[test]
fn set_allowed_vs_reserved() {
    let mut iopt = IoPagetable::new();
    iopt.reserve(0x10000, 0x1ffff, ReservedOwner::Device(3))
        .unwrap();
    iopt.set_allowed(&[(0x1000, 0xffff)]).unwrap();
    assert_eq!(
        iopt.set_allowed(&[(0x1000, 0x1fff), (0x1ffff, 0x2ffff)]),
        Err(Errno::EADDRINUSE)
    );
    // The old set stays: allocation still lands in [0x1000, 0xffff].
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x8000), Ok(0x1000));
    assert_eq!(
        map_mem(&mut iopt, None, 0x1000, 0, 0x8000),
        Err(Errno::ENOSPC)
    );
    iopt.remove_reserved(ReservedOwner::Device(3));
    iopt.set_allowed(&[(0x10000, 0x1ffff)]).unwrap();
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x8000), Ok(0x10000));
    // An empty set lifts the restriction.
    iopt.set_allowed(&[]).unwrap();
    assert_eq!(map_mem(&mut iopt, None, 0x1000, 0, 0x1000), Ok(0x9000));
}

#[test]
fn reserve_vs_allowed_and_areas() {
    let mut iopt = IoPagetable::new();
    iopt.set_allowed(&[(0x100000, 0x1fffff)]).unwrap();
    map_at(&mut iopt, 0x10000, 0x1000).unwrap();
    let t = ReservedOwner::Test;
    assert_eq!(iopt.reserve(0x1fffff, 0x200000, t), Err(Errno::EADDRINUSE));
    assert_eq!(iopt.reserve(0, u64::MAX, t), Err(Errno::EADDRINUSE));
    assert_eq!(iopt.reserve(0x10fff, 0x10fff, t), Err(Errno::EADDRINUSE));
    assert_eq!(iopt.reserve(0xf000, 0x10000, t), Err(Errno::EADDRINUSE));
    iopt.reserve(0x11000, 0xfffff, t).unwrap();
    iopt.reserve(0x200000, u64::MAX, t).unwrap();
    iopt.reserve(0, 0xffff, t).unwrap();
    // Overlapping reservations are fine.
    iopt.reserve(0x0, 0x10, ReservedOwner::Device(1)).unwrap();
    assert_eq!(
        iopt.usable_ranges(),
        vec![(0x10000, 0x10fff), (0x100000, 0x1fffff)]
    );
    iopt.remove_reserved(t);
    assert_eq!(iopt.usable_ranges(), vec![(0x11, u64::MAX)]);
}

#[test]
fn usable_ranges_is_the_complement_of_reserved() {
    let mut iopt = IoPagetable::new();
    assert_eq!(iopt.usable_ranges(), vec![(0, u64::MAX)]);
    let t = ReservedOwner::Test;
    iopt.reserve(0x5000, 0x5fff, t).unwrap();
    iopt.reserve(0x5800, 0x6fff, t).unwrap();
    iopt.reserve(0x5900, 0x59ff, t).unwrap();
    iopt.reserve(0, 0xfff, t).unwrap();
    iopt.reserve(u64::MAX - 0xfff, u64::MAX, t).unwrap();
    iopt.reserve(0x7000, 0x7000, t).unwrap();
    assert_eq!(
        iopt.usable_ranges(),
        vec![(0x1000, 0x4fff), (0x7001, u64::MAX - 0x1000)]
    );
    // A domain's aperture adds reservations outside it.
    let mut iopt = IoPagetable::new();
    let d = TestDomain::with(
        4096,
        (0x1000, 0xffff_ffff),
        vec![(0xfee0_0000, 0xfeef_ffff)],
        None,
    );
    iopt.add_domain(7, d).unwrap();
    assert_eq!(
        iopt.usable_ranges(),
        vec![(0x1000, 0xfedf_ffff), (0xfef0_0000, 0xffff_ffff)]
    );
    assert_eq!(map_at(&mut iopt, 0x1_0000_0000, 0x1000), Err(Errno::EINVAL));
    assert_eq!(map_at(&mut iopt, 0xfee0_0000, 0x1000), Err(Errno::EINVAL));
    iopt.remove_domain(7);
    assert_eq!(iopt.usable_ranges(), vec![(0, u64::MAX)]);
    assert_eq!(iopt.iova_alignment(), 1);
}

#[test]
fn reserved_union_matches_a_linear_scan_across_owners() {
    let mut iopt = IoPagetable::new();
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let owners = [
        ReservedOwner::Test,
        ReservedOwner::Device(1),
        ReservedOwner::Device(2),
        ReservedOwner::Domain(9),
    ];
    let mut naive: Vec<(u64, u64, ReservedOwner)> = Vec::new();
    for round in 0..400 {
        if round % 37 == 36 {
            let owner = owners[(next() % 4) as usize];
            iopt.remove_reserved(owner);
            naive.retain(|r| r.2 != owner);
        } else {
            let s = next() % 200;
            let l = s + next() % 12;
            let owner = owners[(next() % 4) as usize];
            iopt.reserve(s, l, owner).unwrap();
            naive.push((s, l, owner));
        }
        for q in 0..210u64 {
            let want = naive.iter().any(|r| r.0 <= q + 2 && r.1 >= q);
            assert_eq!(iopt.reserved_intersects(q, q + 2), want, "[{q}, {}]", q + 2);
        }
        let covered = |p: u64| naive.iter().any(|r| r.0 <= p && p <= r.1);
        for (s, l) in iopt.usable_ranges() {
            assert!(!covered(s) && !covered(l.min(300)));
            assert!(s == 0 || covered(s - 1));
        }
    }
}
