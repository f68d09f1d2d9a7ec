//! Unit and property tests of the io_pagetable against the kernel's errno and semantics
//! (drivers/iommu/iommufd/io_pagetable.c, ioas.c, pages.c, device.c).

use super::accounting::Account;
use super::source::MemorySource;
use super::*;
use std::sync::Mutex;

const PG: u64 = PAGE_SIZE;
const RW: Prot = Prot {
    read: true,
    write: true,
};
const RO: Prot = Prot {
    read: true,
    write: false,
};

// ---------------------------------------------------------------------------------------------
// Test fixtures
// ---------------------------------------------------------------------------------------------

/// A domain that records every IO page it maps, with a configurable IO page size and aperture.
#[derive(Debug)]
struct TestDomain {
    pgsize: u64,
    aperture: (u64, u64),
    reserved: Vec<(u64, u64)>,
    /// IO page IOVA → (physical address, prot).
    map: Mutex<BTreeMap<u64, (u64, Prot)>>,
    /// Map calls whose range contains this IOVA fail with EIO (failure injection).
    fail_at: Option<u64>,
    map_calls: Mutex<u64>,
}

impl TestDomain {
    fn new(pgsize: u64) -> Arc<Self> {
        Self::with(pgsize, (0, u64::MAX), Vec::new(), None)
    }

    fn with(
        pgsize: u64,
        aperture: (u64, u64),
        reserved: Vec<(u64, u64)>,
        fail_at: Option<u64>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pgsize,
            aperture,
            reserved,
            map: Mutex::new(BTreeMap::new()),
            fail_at,
            map_calls: Mutex::new(0),
        })
    }

    fn mapped_bytes(&self) -> u64 {
        self.map.lock().unwrap().len() as u64 * self.pgsize
    }

    fn is_empty(&self) -> bool {
        self.map.lock().unwrap().is_empty()
    }
}

impl Domain for TestDomain {
    fn pgsize_bitmap(&self) -> u64 {
        // The IO page size and every larger power of two up to 1 GiB, like a real page table.
        let mut bitmap = 0;
        let mut s = self.pgsize;
        while s <= 1 << 30 {
            bitmap |= s;
            s <<= 1;
        }
        bitmap
    }

    fn aperture(&self) -> (u64, u64) {
        self.aperture
    }

    fn reserved_ranges(&self) -> Vec<(u64, u64)> {
        self.reserved.clone()
    }

    fn map(&self, iova: u64, paddr: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        *self.map_calls.lock().unwrap() += 1;
        let pg = self.pgsize;
        assert!(len > 0, "zero-length domain map");
        assert_eq!(
            iova % pg,
            0,
            "domain map: IOVA {iova:#x} not IO-page aligned"
        );
        assert_eq!(
            paddr % pg,
            0,
            "domain map: paddr {paddr:#x} not IO-page aligned"
        );
        assert_eq!(
            len % pg,
            0,
            "domain map: length {len:#x} not IO-page aligned"
        );
        let last = iova.checked_add(len - 1).expect("domain map wraps");
        assert!(
            iova >= self.aperture.0 && last <= self.aperture.1,
            "domain map outside the aperture"
        );
        if self.fail_at.is_some_and(|f| f >= iova && f <= last) {
            return Err(Errno::EIO);
        }
        let mut map = self.map.lock().unwrap();
        if map.range(iova..=last).next().is_some() {
            return Err(Errno::EEXIST);
        }
        for k in 0..len / pg {
            map.insert(iova + k * pg, (paddr + k * pg, prot));
        }
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let last = iova.saturating_add(len - 1);
        let mut map = self.map.lock().unwrap();
        let keys: Vec<u64> = map.range(iova..=last).map(|(&k, _)| k).collect();
        for k in &keys {
            map.remove(k);
        }
        keys.len() as u64 * self.pgsize
    }

    fn translate(&self, iova: u64) -> Option<u64> {
        let page = iova & !(self.pgsize - 1);
        self.map
            .lock()
            .unwrap()
            .get(&page)
            .map(|&(p, _)| p + (iova - page))
    }
}

/// A backing whose pages are physically scattered: page `i` lives at `base + perm(i) * PAGE_SIZE`
/// where pairs of pages are contiguous and the pairs are in reverse order.
#[derive(Debug)]
struct ScatterSource {
    npages: u64,
    base: u64,
}

impl ScatterSource {
    fn paddr(&self, i: u64) -> u64 {
        let pair = i / 2;
        let npairs = self.npages.div_ceil(2);
        self.base + ((npairs - 1 - pair) * 4 + i % 2) * PG
    }
}

impl PageSource for ScatterSource {
    fn pin(&self, first: u64, count: u64, _write: bool) -> Result<Vec<u64>, Errno> {
        if first + count > self.npages {
            return Err(Errno::EFAULT);
        }
        Ok((first..first + count).map(|i| self.paddr(i)).collect())
    }
    fn read(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::EFAULT)
    }
    fn write(&self, _offset: u64, _data: &[u8]) -> Result<(), Errno> {
        Err(Errno::EFAULT)
    }
    fn address_hint(&self) -> u64 {
        0x7f00_0000_0000
    }
}

/// `len` bytes of in-memory backing pretending to live at page-aligned user address `hint`, of
/// which the mapping starts `start_byte` bytes in.
fn mem_pages(hint: u64, start_byte: u64, len: u64, writable: bool) -> Arc<Pages> {
    assert_eq!(hint % PG, 0);
    let src = MemorySource::new((start_byte + len) as usize, hint);
    Pages::new(
        Arc::new(src),
        start_byte,
        len,
        writable,
        Account::unaccounted(),
    )
    .unwrap()
}

fn whole(pages: &Arc<Pages>) -> Vec<PagesSlice> {
    vec![PagesSlice {
        pages: pages.clone(),
        start_byte: pages.start_byte,
        length: pages.length,
    }]
}

/// Maps fresh memory (user address `hint + start_byte`) of `len` bytes.
fn map_mem(
    iopt: &mut IoPagetable,
    iova: Option<u64>,
    hint: u64,
    start_byte: u64,
    len: u64,
) -> Result<u64, Errno> {
    let pages = mem_pages(hint, start_byte, len, true);
    iopt.map_pages(&whole(&pages), len, iova, RW)
}

fn map_at(iopt: &mut IoPagetable, iova: u64, len: u64) -> Result<u64, Errno> {
    map_mem(iopt, Some(iova), 0x7f00_0000_0000, 0, len)
}

fn intervals(iopt: &IoPagetable) -> Vec<(u64, u64)> {
    iopt.areas().map(|a| (a.iova, a.last)).collect()
}

fn unmap(iopt: &mut IoPagetable, start: u64, last: u64) -> Result<u64, Errno> {
    match iopt.unmap_range(start, last) {
        Ok(UnmapProgress::Done(n)) => Ok(n),
        Ok(other) => panic!("unexpected {other:?}"),
        Err((e, _)) => Err(e),
    }
}

/// An IOAS with a 2 KiB IO page domain attached (IOVA alignment 2048).
fn iopt_2k() -> (IoPagetable, Arc<TestDomain>) {
    let mut iopt = IoPagetable::new();
    let d = TestDomain::new(2048);
    iopt.add_domain(1, d.clone()).unwrap();
    assert_eq!(iopt.iova_alignment(), 2048);
    (iopt, d)
}

/// Checks that `domain` maps every byte of every area at the physical address its backing has,
/// and nothing else.
fn assert_domain_mirrors(iopt: &IoPagetable, d: &TestDomain) {
    let mut expected = 0;
    for a in iopt.areas() {
        let (first, last) = a.pin_span();
        let paddrs = a
            .pages
            .source()
            .pin(first, last - first + 1, false)
            .unwrap();
        let mut iova = a.iova;
        loop {
            let off = a.start_byte_of(iova);
            let want = paddrs[(off / PG - first) as usize] + off % PG;
            assert_eq!(d.translate(iova), Some(want), "IOVA {iova:#x}");
            match iova.checked_add(d.pgsize) {
                Some(n) if n <= a.last => iova = n,
                _ => break,
            }
        }
        assert_eq!(a.length() % d.pgsize, 0);
        expected += a.length();
    }
    assert_eq!(d.mapped_bytes(), expected);
}

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

// ---------------------------------------------------------------------------------------------
// Domains
// ---------------------------------------------------------------------------------------------

#[test]
fn add_domain_fills_existing_areas() {
    let mut iopt = IoPagetable::new();
    map_mem(&mut iopt, Some(0x10000), 0x40_0000, 0, 0x3000).unwrap();
    map_mem(&mut iopt, Some(0x20800), 0x50_0000, 0x800, 0x1800).unwrap();
    map_mem(&mut iopt, Some(0x30000), 0x60_0000, 0x800, 0x800).unwrap();
    let scatter = Pages::new(
        Arc::new(ScatterSource {
            npages: 5,
            base: 0x9000_0000,
        }),
        0x800,
        0x4000,
        true,
        Account::unaccounted(),
    )
    .unwrap();
    iopt.map_pages(&whole(&scatter), 0x4000, Some(0x40800), RW)
        .unwrap();
    let pages: Vec<Arc<Pages>> = iopt.areas().map(|a| a.pages.clone()).collect();
    // A bare IOAS holds no pins.
    assert!(pages.iter().all(|p| p.npinned() == 0));
    assert!(iopt.areas().all(|a| !a.filled));

    let d1 = TestDomain::new(2048);
    iopt.add_domain(1, d1.clone()).unwrap();
    assert_domain_mirrors(&iopt, &d1);
    // The scattered backing needs one map call per physically contiguous run.
    let npinned: Vec<u64> = pages.iter().map(|p| p.npinned()).collect();
    assert_eq!(npinned, vec![3, 2, 1, 5]);
    assert!(iopt.areas().all(|a| a.filled));
    // Explicit physical addresses: page 0 of the 0x40_0000 backing is at 0x40_0000.
    assert_eq!(d1.translate(0x10000), Some(0x40_0000));
    assert_eq!(d1.translate(0x12fff), Some(0x40_2fff));
    assert_eq!(d1.translate(0x20800), Some(0x50_0800));
    assert_eq!(d1.translate(0x21000), Some(0x50_1000));
    assert_eq!(d1.translate(0x30000), Some(0x60_0800));
    assert_eq!(d1.translate(0x40800), Some(scatter_paddr(5, 0) + 0x800));
    assert_eq!(d1.translate(0x41000), Some(scatter_paddr(5, 1)));
    assert_eq!(d1.translate(0x44000), Some(scatter_paddr(5, 4)));
    // Runs: pages [0, 1], [2, 3], [4] of the scattered backing, one run for each other area.
    assert_eq!(*d1.map_calls.lock().unwrap(), 3 + 3);

    // A second domain does not pin again.
    let d2 = TestDomain::new(2048);
    iopt.add_domain(2, d2.clone()).unwrap();
    assert_domain_mirrors(&iopt, &d2);
    for p in &pages {
        for i in 0..p.npages {
            assert_eq!(p.pin_users(i), 1);
        }
    }
    iopt.remove_domain(1);
    assert!(d1.is_empty());
    assert_eq!(
        pages.iter().map(|p| p.npinned()).collect::<Vec<_>>(),
        npinned
    );
    iopt.remove_domain(2);
    assert!(d2.is_empty());
    assert!(pages.iter().all(|p| p.npinned() == 0));
    assert!(iopt.areas().all(|a| !a.filled));
    assert_eq!(iopt.iova_alignment(), 1);
}

fn scatter_paddr(npages: u64, i: u64) -> u64 {
    ScatterSource {
        npages,
        base: 0x9000_0000,
    }
    .paddr(i)
}

#[test]
fn map_and_unmap_with_domain_pin_and_unpin() {
    let (mut iopt, d) = iopt_2k();
    let pages = mem_pages(0x40_0000, 0x800, 0x2000, true);
    iopt.map_pages(&whole(&pages), 0x2000, Some(0x10800), RW)
        .unwrap();
    assert_eq!(pages.npinned(), 3);
    assert_domain_mirrors(&iopt, &d);
    assert_eq!(unmap(&mut iopt, 0, u64::MAX), Ok(0x2000));
    assert_eq!(pages.npinned(), 0);
    assert!(d.is_empty());
}

#[test]
fn add_domain_failures_change_nothing() {
    let mut iopt = IoPagetable::new();
    map_at(&mut iopt, 0x1_0000_0000, 0x1000).unwrap();
    map_at(&mut iopt, 0x10000, 0x1000).unwrap();
    let pages: Vec<Arc<Pages>> = iopt.areas().map(|a| a.pages.clone()).collect();
    // An area outside the aperture.
    let small = TestDomain::with(4096, (0, 0xffff_ffff), vec![], None);
    assert_eq!(iopt.add_domain(1, small.clone()), Err(Errno::EADDRINUSE));
    assert!(!iopt.has_domains());
    assert_eq!(iopt.usable_ranges(), vec![(0, u64::MAX)]);
    // A reserved region over an area.
    let resv = TestDomain::with(4096, (0, u64::MAX), vec![(0x10800, 0x10800)], None);
    assert_eq!(iopt.add_domain(1, resv), Err(Errno::EADDRINUSE));
    assert_eq!(iopt.usable_ranges(), vec![(0, u64::MAX)]);
    // IO pages larger than a CPU page.
    assert_eq!(
        iopt.add_domain(1, TestDomain::new(8192)),
        Err(Errno::EINVAL)
    );
    // Mapping fails for the second area: the first one is unmapped and unpinned again.
    let failing = TestDomain::with(4096, (0, u64::MAX), vec![], Some(0x1_0000_0000));
    assert_eq!(iopt.add_domain(1, failing.clone()), Err(Errno::EIO));
    assert!(failing.is_empty());
    assert!(pages.iter().all(|p| p.npinned() == 0));
    assert!(iopt.areas().all(|a| !a.filled));
    assert_eq!(iopt.iova_alignment(), 1);
    // An area that does not fit the new IO page size.
    map_at(&mut iopt, 0x20400, 0x400).unwrap();
    assert_eq!(
        iopt.add_domain(1, TestDomain::new(2048)),
        Err(Errno::EADDRINUSE)
    );
    assert_eq!(iopt.iova_alignment(), 1);
    unmap(&mut iopt, 0x20400, 0x207ff).unwrap();
    let d = TestDomain::new(4096);
    iopt.add_domain(1, d.clone()).unwrap();
    assert_domain_mirrors(&iopt, &d);
    assert_eq!(iopt.iova_alignment(), 4096);
}

#[test]
fn map_into_failing_domain_rolls_back() {
    let mut iopt = IoPagetable::new();
    let ok = TestDomain::new(4096);
    let failing = TestDomain::with(4096, (0, u64::MAX), vec![], Some(0x13000));
    iopt.add_domain(1, ok.clone()).unwrap();
    iopt.add_domain(2, failing.clone()).unwrap();
    let a = mem_pages(0x1000, 0, 0x2000, true);
    let b = mem_pages(0x1000, 0, 0x2000, true);
    let slices = [whole(&a), whole(&b)].concat();
    assert_eq!(
        iopt.map_pages(&slices, 0x4000, Some(0x10000), RW),
        Err(Errno::EIO)
    );
    assert_eq!(iopt.num_areas(), 0);
    assert!(ok.is_empty() && failing.is_empty());
    assert_eq!((a.npinned(), b.npinned()), (0, 0));
    assert_eq!(
        iopt.map_pages(&slices, 0x4000, Some(0x20000), RW),
        Ok(0x20000)
    );
    assert_domain_mirrors(&iopt, &ok);
    assert_domain_mirrors(&iopt, &failing);
}

// ---------------------------------------------------------------------------------------------
// Pin counting
// ---------------------------------------------------------------------------------------------

#[test]
fn shared_pages_count_once_per_pin_user() {
    let (mut iopt, d) = iopt_2k();
    let pages = mem_pages(0x40_0000, 0, 0x4000, true);
    iopt.map_pages(&whole(&pages), 0x4000, Some(0x10000), RW)
        .unwrap();
    assert_eq!(pages.npinned(), 4);
    // Copy the middle two pages, and half of the last one, elsewhere in the same IOAS.
    let s = iopt.get_pages(0x11000, 0x2000).unwrap();
    iopt.map_pages(&s, 0x2000, Some(0x20000), RW).unwrap();
    let s = iopt.get_pages(0x13800, 0x800).unwrap();
    iopt.map_pages(&s, 0x800, None, RW).unwrap();
    assert_domain_mirrors(&iopt, &d);
    assert_eq!(pages.npinned(), 4);
    let users: Vec<u32> = (0..4).map(|i| pages.pin_users(i)).collect();
    assert_eq!(users, vec![1, 2, 2, 2]);
    // Into another IOAS with a domain too.
    let (mut other, d2) = iopt_2k();
    let s = iopt.get_pages(0x10000, 0x4000).unwrap();
    other.map_pages(&s, 0x4000, None, RW).unwrap();
    assert_domain_mirrors(&other, &d2);
    let users: Vec<u32> = (0..4).map(|i| pages.pin_users(i)).collect();
    assert_eq!(users, vec![2, 3, 3, 3]);
    // Unmapping the original leaves the copies pinned.
    unmap(&mut iopt, 0x10000, 0x13fff).unwrap();
    let users: Vec<u32> = (0..4).map(|i| pages.pin_users(i)).collect();
    assert_eq!(users, vec![1, 2, 2, 2]);
    unmap(&mut other, 0, u64::MAX).unwrap();
    assert_eq!(pages.npinned(), 3);
    unmap(&mut iopt, 0, u64::MAX).unwrap();
    assert_eq!(pages.npinned(), 0);
}

#[test]
fn pins_are_charged_once_per_page() {
    use super::accounting::{charged_to_process, AccountMode};
    let pid = -4242; // no such process: the snapshot limit applies
    let account = Account {
        mode: AccountMode::Process,
        pid,
        uid: 0,
        limit_snapshot: 6 * PG,
    };
    let pages = Pages::new(
        Arc::new(MemorySource::new(0x4000, 0x1000)),
        0,
        0x4000,
        true,
        account,
    )
    .unwrap();
    let (mut iopt, _d) = iopt_2k();
    iopt.map_pages(&whole(&pages), 0x4000, Some(0x10000), RW)
        .unwrap();
    let s = iopt.get_pages(0x10000, 0x4000).unwrap();
    iopt.map_pages(&s, 0x4000, Some(0x20000), RW).unwrap();
    assert_eq!(charged_to_process(pid), 4);
    // Beyond the limit: ENOMEM and nothing changes.
    let more = Pages::new(
        Arc::new(MemorySource::new(0x3000, 0x1000)),
        0,
        0x3000,
        true,
        Account {
            mode: AccountMode::Process,
            pid,
            uid: 0,
            limit_snapshot: 6 * PG,
        },
    )
    .unwrap();
    assert_eq!(
        iopt.map_pages(&whole(&more), 0x3000, Some(0x30000), RW),
        Err(Errno::ENOMEM)
    );
    assert_eq!(iopt.num_areas(), 2);
    assert_eq!(charged_to_process(pid), 4);
    unmap(&mut iopt, 0, u64::MAX).unwrap();
    assert_eq!(charged_to_process(pid), 0);
}

// ---------------------------------------------------------------------------------------------
// Access API
// ---------------------------------------------------------------------------------------------

#[test]
fn access_pin_and_unpin() {
    let mut iopt = IoPagetable::new();
    let pages = mem_pages(0x40_0000, 0, 0x3000, true);
    iopt.map_pages(&whole(&pages), 0x3000, Some(0x10000), RW)
        .unwrap();
    let p = iopt.access_pin(0x11000, 0x1800, true).unwrap();
    assert_eq!(p, vec![0x40_1000, 0x40_2000]);
    assert_eq!(pages.npinned(), 2);
    assert_eq!(iopt.area(0x10000).unwrap().num_accesses, 1);
    let p = iopt.access_pin(0x10000, 0x1000, false).unwrap();
    assert_eq!(p, vec![0x40_0000]);
    assert_eq!(iopt.area(0x10000).unwrap().num_accesses, 2);
    iopt.access_unpin(0x11000, 0x1800);
    assert_eq!(pages.npinned(), 1);
    iopt.access_unpin(0x10000, 0x1000);
    assert_eq!(pages.npinned(), 0);
    assert_eq!(iopt.area(0x10000).unwrap().num_accesses, 0);
}

#[test]
fn access_pin_with_domain_adds_a_user() {
    let (mut iopt, _d) = iopt_2k();
    let pages = mem_pages(0x40_0000, 0, 0x2000, true);
    iopt.map_pages(&whole(&pages), 0x2000, Some(0x10000), RW)
        .unwrap();
    iopt.access_pin(0x10000, 0x2000, false).unwrap();
    assert_eq!((pages.pin_users(0), pages.pin_users(1)), (2, 2));
    iopt.access_unpin(0x10000, 0x2000);
    assert_eq!((pages.pin_users(0), pages.pin_users(1)), (1, 1));
}

#[test]
fn access_pin_spans_areas_on_page_boundaries() {
    let mut iopt = IoPagetable::new();
    let a = mem_pages(0x40_0000, 0, 0x1000, true);
    let b = mem_pages(0x80_0000, 0, 0x2000, true);
    iopt.map_pages(&whole(&a), 0x1000, Some(0x10000), RW)
        .unwrap();
    iopt.map_pages(&whole(&b), 0x2000, Some(0x11000), RW)
        .unwrap();
    assert_eq!(
        iopt.access_pin(0x10000, 0x2001, false),
        Ok(vec![0x40_0000, 0x80_0000, 0x80_1000])
    );
    // Nothing may split an area with accesses, or unmap it without the access letting go.
    assert_eq!(iopt.cut(&[0x11fff]), Err(Errno::EINVAL));
    iopt.access_unpin(0x10000, 0x2001);
    assert_eq!(a.npinned() + b.npinned(), 0);
}

#[test]
fn access_pin_errors() {
    let mut iopt = IoPagetable::new();
    let ro = mem_pages(0x40_0000, 0, 0x2000, false);
    iopt.map_pages(&whole(&ro), 0x2000, Some(0x10000), RO)
        .unwrap();
    // An area whose end is not on a page boundary of its backing.
    map_mem(&mut iopt, Some(0x20000), 0x50_0000, 0, 0x1800).unwrap();
    map_mem(&mut iopt, Some(0x21800), 0x60_0000, 0, 0x1000).unwrap();
    // Writing a read-only area.
    assert_eq!(iopt.access_pin(0x10000, 0x1000, true), Err(Errno::EPERM));
    // Start not on a page boundary of the backing.
    assert_eq!(iopt.access_pin(0x10010, 0x10, false), Err(Errno::EINVAL));
    assert_eq!(iopt.access_pin(0x20800, 0x100, false), Err(Errno::EINVAL));
    // Crossing from an area that ends mid-page.
    assert_eq!(iopt.access_pin(0x21000, 0x1000, false), Err(Errno::EINVAL));
    // Gaps.
    assert_eq!(iopt.access_pin(0x12000, 0x1000, false), Err(Errno::ENOENT));
    assert_eq!(iopt.access_pin(0x11000, 0x2000, false), Err(Errno::ENOENT));
    assert_eq!(iopt.access_pin(0x21800, 0x2000, false), Err(Errno::ENOENT));
    // An area before the gap is checked first (the kernel walks the areas in order).
    assert_eq!(iopt.access_pin(0x11000, 0x2000, true), Err(Errno::EPERM));
    assert_eq!(iopt.access_pin(0x20010, 0x10000, false), Err(Errno::EINVAL));
    assert_eq!(iopt.access_pin(0x20000, 0x10000, false), Err(Errno::EINVAL));
    assert_eq!(iopt.access_pin(u64::MAX, 2, false), Err(Errno::EOVERFLOW));
    // Nothing stays pinned after the failures.
    assert!(iopt
        .areas()
        .all(|a| a.pages.npinned() == 0 && a.num_accesses == 0));
    // A multi-area pin that fails on the second area undoes the first.
    map_mem(&mut iopt, Some(0x30000), 0x70_0000, 0, 0x1000).unwrap();
    let ro2 = mem_pages(0x40_0000, 0, 0x1000, true);
    iopt.map_pages(&whole(&ro2), 0x1000, Some(0x31000), RO)
        .unwrap();
    assert_eq!(iopt.access_pin(0x30000, 0x2000, true), Err(Errno::EPERM));
    assert_eq!(iopt.access_pin(0x20000, 0x2800, false), Err(Errno::EINVAL));
    assert_eq!(
        iopt.access_pin(0x30000, 0x2000, false).map(|p| p.len()),
        Ok(2)
    );
    iopt.access_unpin(0x30000, 0x2000);
    assert!(iopt
        .areas()
        .all(|a| a.pages.npinned() == 0 && a.num_accesses == 0));
}

#[test]
fn access_rw_across_areas_and_errors() {
    let mut iopt = IoPagetable::new();
    map_mem(&mut iopt, Some(0x10000), 0x1000, 0x123, 0x1001).unwrap();
    map_mem(&mut iopt, Some(0x11001), 0x1000, 0, 0x10).unwrap();
    let ro = mem_pages(0x1000, 0, 0x1000, true);
    iopt.map_pages(&whole(&ro), 0x1000, Some(0x11011), RO)
        .unwrap();
    let mut data: Vec<u8> = (0..0x1011u32).map(|i| (i % 253) as u8).collect();
    iopt.access_rw(0x10000, &mut data, true).unwrap();
    let mut back = vec![0u8; 0x1011];
    iopt.access_rw(0x10000, &mut back, false).unwrap();
    assert_eq!(back, data);
    let mut one = [0u8; 1];
    iopt.access_rw(0x11000, &mut one, false).unwrap();
    assert_eq!(one[0], data[0x1000]);
    // Read-only area: reads fine, writes EPERM (even when the writable part comes first).
    let mut buf = vec![0u8; 0x20];
    iopt.access_rw(0x11011, &mut buf, false).unwrap();
    assert_eq!(iopt.access_rw(0x11011, &mut buf, true), Err(Errno::EPERM));
    assert_eq!(iopt.access_rw(0x11001, &mut buf, true), Err(Errno::EPERM));
    // Gaps.
    assert_eq!(iopt.access_rw(0xffff, &mut buf, false), Err(Errno::ENOENT));
    assert_eq!(iopt.access_rw(0x12000, &mut buf, false), Err(Errno::ENOENT));
    assert_eq!(iopt.access_rw(0x30000, &mut buf, false), Err(Errno::ENOENT));
    assert_eq!(
        iopt.access_rw(u64::MAX, &mut buf, false),
        Err(Errno::EOVERFLOW)
    );
}

#[test]
fn unmap_waits_for_access_release() {
    let mut iopt = IoPagetable::new();
    map_at(&mut iopt, 0x10000, 0x1000).unwrap();
    map_at(&mut iopt, 0x11000, 0x2000).unwrap();
    map_at(&mut iopt, 0x13000, 0x1000).unwrap();
    iopt.access_pin(0x11000, 0x1000, false).unwrap();
    assert_eq!(
        iopt.unmap_range(0x10000, 0x13fff),
        Ok(UnmapProgress::NeedAccessRelease {
            iova: 0x11000,
            length: 0x2000,
            unmapped: 0x1000
        })
    );
    assert!(iopt.area(0x11000).unwrap().prevent_access);
    // While the unmap waits, no new pins, reads, or splits.
    assert_eq!(iopt.access_pin(0x12000, 0x1000, false), Err(Errno::EINVAL));
    assert_eq!(
        iopt.access_rw(0x12000, &mut [0u8; 4], false),
        Err(Errno::EINVAL)
    );
    assert_eq!(iopt.cut(&[0x11fff]), Err(Errno::EBUSY));
    // Still pinned: asking again gives the same answer.
    assert!(matches!(
        iopt.unmap_range(0x10000, 0x13fff),
        Ok(UnmapProgress::NeedAccessRelease { unmapped: 0, .. })
    ));
    // The access lets go (its unmap callback); the retry finishes.
    iopt.access_unpin(0x11000, 0x1000);
    assert_eq!(
        iopt.unmap_range(0x10000, 0x13fff),
        Ok(UnmapProgress::Done(0x3000))
    );
    assert_eq!(iopt.num_areas(), 0);
}

#[test]
fn unmap_checks_superset_before_accesses() {
    let mut iopt = IoPagetable::new();
    map_at(&mut iopt, 0x10000, 0x2000).unwrap();
    iopt.access_pin(0x10000, 0x1000, false).unwrap();
    assert_eq!(iopt.unmap_range(0x10000, 0x10fff), Err((Errno::ENOENT, 0)));
    assert!(!iopt.area(0x10000).unwrap().prevent_access);
    iopt.access_unpin(0x10000, 0x1000);
}

// ---------------------------------------------------------------------------------------------
// cut (VFIO type1 v1 partial unmaps)
// ---------------------------------------------------------------------------------------------

#[test]
fn cut_splits_areas() {
    let mut iopt = IoPagetable::new();
    map_mem(&mut iopt, Some(0x10000), 0x1000, 0x10, 0x4000).unwrap();
    let pages = iopt.area(0x10000).unwrap().pages.clone();
    // Cuts at the first or last byte, outside areas, or repeated are no-ops.
    iopt.cut(&[0x10000, 0x13fff, 0x20000, 0x10fff, 0x10fff, 0x11fff])
        .unwrap();
    assert_eq!(
        intervals(&iopt),
        vec![(0x10000, 0x10fff), (0x11000, 0x11fff), (0x12000, 0x13fff)]
    );
    let sb: Vec<u64> = iopt.areas().map(|a| a.start_byte).collect();
    assert_eq!(sb, vec![0x10, 0x1010, 0x2010]);
    assert!(iopt.areas().all(|a| Arc::ptr_eq(&a.pages, &pages)));
    // The pieces unmap separately now.
    assert_eq!(unmap(&mut iopt, 0x11000, 0x11fff), Ok(0x1000));
    assert_eq!(
        intervals(&iopt),
        vec![(0x10000, 0x10fff), (0x12000, 0x13fff)]
    );
}

#[test]
fn cut_refuses_filled_areas_while_large_pages_are_on() {
    let (mut iopt, _d) = iopt_2k();
    map_at(&mut iopt, 0x10000, 0x4000).unwrap();
    assert_eq!(iopt.cut(&[0x10fff]), Err(Errno::EINVAL));
    // Misaligned for the 2 KiB IO page: EINVAL as well.
    assert_eq!(iopt.cut(&[0x10bff]), Err(Errno::EINVAL));
    assert_eq!(iopt.num_areas(), 1);
}

#[test]
fn cut_filled_areas_with_large_pages_disabled() {
    let mut iopt = IoPagetable::new();
    iopt.disable_large_pages().unwrap();
    assert_eq!(iopt.iova_alignment(), PG);
    let d = TestDomain::new(2048);
    iopt.add_domain(1, d.clone()).unwrap();
    assert_eq!(iopt.iova_alignment(), PG);
    let pages = mem_pages(0x40_0000, 0, 0x4000, true);
    iopt.map_pages(&whole(&pages), 0x4000, Some(0x10000), RW)
        .unwrap();
    // Not on an IOVA alignment boundary.
    assert_eq!(iopt.cut(&[0x107ff]), Err(Errno::EINVAL));
    iopt.cut(&[0x10fff, 0x12fff]).unwrap();
    assert_eq!(
        intervals(&iopt),
        vec![(0x10000, 0x10fff), (0x11000, 0x12fff), (0x13000, 0x13fff)]
    );
    assert_domain_mirrors(&iopt, &d);
    let users: Vec<u32> = (0..4).map(|i| pages.pin_users(i)).collect();
    assert_eq!(users, vec![1, 1, 1, 1]);
    unmap(&mut iopt, 0x11000, 0x12fff).unwrap();
    assert_eq!(pages.npinned(), 2);
    assert_domain_mirrors(&iopt, &d);
    unmap(&mut iopt, 0, u64::MAX).unwrap();
    assert_eq!(pages.npinned(), 0);
    assert!(d.is_empty());
    // Large pages can only be turned off while no domain holds areas.
    map_at(&mut iopt, 0x10000, 0x1000).unwrap();
    iopt.enable_large_pages();
    assert_eq!(iopt.iova_alignment(), 2048);
    assert_eq!(iopt.disable_large_pages(), Err(Errno::EINVAL));
}

#[test]
fn cut_with_sub_page_alignment_shares_the_boundary_page() {
    let mut iopt = IoPagetable::new();
    let pages = mem_pages(0x40_0000, 0, 0x2000, true);
    iopt.map_pages(&whole(&pages), 0x2000, Some(0x10000), RW)
        .unwrap();
    iopt.cut(&[0x107ff]).unwrap();
    assert_eq!(
        intervals(&iopt),
        vec![(0x10000, 0x107ff), (0x10800, 0x11fff)]
    );
    let d = TestDomain::new(2048);
    iopt.add_domain(1, d.clone()).unwrap();
    assert_domain_mirrors(&iopt, &d);
    assert_eq!((pages.pin_users(0), pages.pin_users(1)), (2, 1));
    iopt.remove_domain(1);
    assert_eq!(pages.npinned(), 0);
}

// ---------------------------------------------------------------------------------------------
// Alignment of accesses and large-page option
// ---------------------------------------------------------------------------------------------

#[test]
fn access_alignment_and_large_pages() {
    let mut iopt = IoPagetable::new();
    map_at(&mut iopt, 0x10800, 0x800).unwrap();
    assert_eq!(iopt.add_access(1, PG), Err(Errno::EADDRINUSE));
    assert_eq!(iopt.iova_alignment(), 1);
    assert_eq!(iopt.disable_large_pages(), Err(Errno::EADDRINUSE));
    assert!(!iopt.large_pages_disabled());
    iopt.add_access(1, 2048).unwrap();
    assert_eq!(iopt.iova_alignment(), 2048);
    assert_eq!(map_at(&mut iopt, 0x20400, 0x400), Err(Errno::EINVAL));
    iopt.remove_access(1);
    assert_eq!(iopt.iova_alignment(), 1);
}

// ---------------------------------------------------------------------------------------------
// Property test against a brute-force model
// ---------------------------------------------------------------------------------------------

mod model {
    use super::*;
    use proptest::prelude::*;

    const MAX_ALIGN: u64 = 2 << 20;
    const WINDOW: (u64, u64) = (PG, u64::MAX - PG);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct MArea {
        iova: u64,
        last: u64,
        /// Index of the backing in `Harness::pages`.
        pages: usize,
        start_byte: u64,
    }

    /// The reference: plain vectors, searched exhaustively.
    #[derive(Debug, Default)]
    struct Model {
        areas: Vec<MArea>,
        allowed: Vec<(u64, u64)>,
        reserved: Vec<(u64, u64)>,
        align: u64,
    }

    fn isect(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 <= b.1 && b.0 <= a.1
    }

    /// Kernel's __alloc_iova_check_range.
    fn check_range(start: u64, last: u64, len: u64, align: u64, po: u64) -> Option<u64> {
        let a = start.checked_add(align - 1)? & !(align - 1) | po;
        (a < last && last - a >= len - 1).then_some(a)
    }

    /// `ranges` merged where they overlap or touch.
    fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
        ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, l) in ranges {
            match out.last_mut() {
                Some(p) if p.1 == u64::MAX || s <= p.1 + 1 => p.1 = p.1.max(l),
                _ => out.push((s, l)),
            }
        }
        out
    }

    impl Model {
        fn area_hits(&self, r: (u64, u64)) -> bool {
            self.areas.iter().any(|a| isect((a.iova, a.last), r))
        }
        fn reserved_hits(&self, r: (u64, u64)) -> bool {
            self.reserved.iter().any(|&x| isect(x, r))
        }

        fn alignment_for(addr: u64, len: u64) -> u64 {
            let p2 = len.next_power_of_two();
            let a = if addr == 0 {
                p2
            } else {
                p2.min(1 << addr.trailing_zeros())
            };
            a.min(MAX_ALIGN)
        }

        fn alloc(&self, addr: u64, len: u64) -> Result<u64, Errno> {
            if len == 0 || len >= u64::MAX / 2 {
                return Err(Errno::EOVERFLOW);
            }
            let align = Self::alignment_for(addr, len);
            if align < self.align {
                return Err(Errno::EINVAL);
            }
            let po = addr % PG;
            let spans: Vec<(u64, u64)> = if self.allowed.is_empty() {
                vec![WINDOW]
            } else {
                merged(self.allowed.clone())
                    .into_iter()
                    .filter(|&r| isect(r, WINDOW))
                    .map(|(s, l)| (s.max(WINDOW.0), l.min(WINDOW.1)))
                    .collect()
            };
            for (s, l) in spans {
                if check_range(s, l, len, align, po).is_none() {
                    continue;
                }
                let used = merged(
                    self.reserved
                        .iter()
                        .copied()
                        .chain(self.areas.iter().map(|a| (a.iova, a.last)))
                        .filter(|&r| isect(r, (s, l)))
                        .collect(),
                );
                let mut holes = Vec::new();
                let mut cur = Some(s);
                for (us, ul) in used {
                    let Some(c) = cur else { break };
                    if us > c {
                        holes.push((c, us - 1));
                    }
                    cur = if ul >= l { None } else { Some(c.max(ul + 1)) };
                }
                if let Some(c) = cur {
                    holes.push((c, l));
                }
                for (hs, hl) in holes {
                    if let Some(iova) = check_range(hs, hl, len, align, po) {
                        return Ok(iova);
                    }
                }
            }
            Err(Errno::ENOSPC)
        }

        /// (start_byte, pages index, length) pieces, as map_pages receives them.
        fn map(
            &mut self,
            slices: &[(usize, u64, u64)],
            len: u64,
            iova: Option<u64>,
            hint: u64,
        ) -> Result<u64, Errno> {
            if !len.is_multiple_of(self.align) || len == 0 {
                return Err(Errno::EINVAL);
            }
            let start = match iova {
                None => self.alloc(hint, len)?,
                Some(iova) => {
                    if !iova.is_multiple_of(self.align) {
                        return Err(Errno::EINVAL);
                    }
                    let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
                    if self.reserved_hits((iova, last)) {
                        return Err(Errno::EINVAL);
                    }
                    if self.area_hits((iova, last)) {
                        return Err(Errno::EEXIST);
                    }
                    iova
                }
            };
            let mut cur = start;
            let mut new = Vec::new();
            for &(pages, start_byte, length) in slices {
                if !(start_byte % PG).is_multiple_of(self.align) {
                    return Err(Errno::EINVAL);
                }
                new.push(MArea {
                    iova: cur,
                    last: cur + (length - 1),
                    pages,
                    start_byte,
                });
                cur = cur.wrapping_add(length);
            }
            self.areas.extend(new);
            self.areas.sort_by_key(|a| a.iova);
            Ok(start)
        }

        fn unmap(&mut self, s: u64, l: u64) -> Result<u64, (Errno, u64)> {
            let mut bytes = 0;
            let hits: Vec<MArea> = self
                .areas
                .iter()
                .copied()
                .filter(|a| isect((a.iova, a.last), (s, l)))
                .collect();
            for a in hits {
                if a.iova < s || a.last > l {
                    return Err((Errno::ENOENT, bytes));
                }
                self.areas.retain(|x| x.iova != a.iova);
                bytes += a.last - a.iova + 1;
            }
            Ok(bytes)
        }

        fn get_pages(&self, iova: u64, len: u64) -> Result<Vec<(usize, u64, u64)>, Errno> {
            if len == 0 {
                return Err(Errno::EINVAL);
            }
            let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
            let mut out = Vec::new();
            let mut cur = iova;
            loop {
                let a = self
                    .areas
                    .iter()
                    .find(|a| a.iova <= cur && cur <= a.last)
                    .ok_or(Errno::ENOENT)?;
                let end = a.last.min(last);
                out.push((a.pages, a.start_byte + (cur - a.iova), end - cur + 1));
                if end == last {
                    return Ok(out);
                }
                cur = end + 1;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map {
            iova: Option<u64>,
            len: u64,
            hint: u64,
            start_byte: u64,
        },
        Unmap {
            start: u64,
            last: u64,
        },
        /// Unmap around an existing area: its bounds moved by the deltas.
        UnmapNear {
            sel: usize,
            d_start: i64,
            d_last: i64,
        },
        Copy {
            sel: usize,
            d_start: i64,
            len: u64,
            dst: Option<u64>,
        },
        SetAllowed(Vec<(u64, u64)>),
        Reserve(u64, u64),
        Unreserve,
    }

    fn iova_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (0u64..0x80).prop_map(|k| k * 0x800),
            2 => 0u64..0x40000,
            1 => (0u64..0x2000).prop_map(|k| u64::MAX - k),
            1 => (0u64..0x20).prop_map(|k| u64::MAX - k * 0x800 - 0x7ff),
            1 => Just(0u64),
            1 => any::<u64>(),
        ]
    }

    fn len_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (1u64..=16).prop_map(|k| k * 0x800),
            2 => 1u64..=0x4000,
            1 => (1u64..=4).prop_map(|k| k * 0x1000 + 1),
            1 => Just(1u64),
        ]
    }

    fn range_strategy() -> impl Strategy<Value = (u64, u64)> {
        prop_oneof![
            4 => (iova_strategy(), 1u64..0x10000).prop_map(|(s, n)| (s, s.saturating_add(n - 1))),
            1 => (iova_strategy(), iova_strategy()).prop_map(|(a, b)| (a.min(b), a.max(b))),
            1 => Just((0, u64::MAX)),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let hint = prop_oneof![
            Just(0u64),
            Just(0x1000u64),
            Just(0x20_0000u64),
            Just(0x7f12_3456_7000u64),
            Just(1u64 << 40),
        ];
        let start_byte = prop_oneof![4 => Just(0u64), 2 => Just(0x800u64), 1 => 0u64..0x1000];
        prop_oneof![
            6 => (
                proptest::option::weighted(0.6, iova_strategy()),
                len_strategy(),
                hint,
                start_byte
            )
                .prop_map(|(iova, len, hint, start_byte)| Op::Map {
                    iova,
                    len,
                    hint,
                    start_byte
                }),
            2 => range_strategy().prop_map(|(start, last)| Op::Unmap { start, last }),
            2 => (any::<usize>(), -0x1000i64..0x1000, -0x1000i64..0x1000).prop_map(
                |(sel, d_start, d_last)| Op::UnmapNear {
                    sel,
                    d_start,
                    d_last
                }
            ),
            2 => (
                any::<usize>(),
                -0x800i64..0x1000,
                len_strategy(),
                proptest::option::weighted(0.5, iova_strategy())
            )
                .prop_map(|(sel, d_start, len, dst)| Op::Copy {
                    sel,
                    d_start,
                    len,
                    dst
                }),
            1 => (proptest::collection::vec(range_strategy(), 0..4), any::<bool>()).prop_map(
                |(mut rs, split)| {
                    // Sometimes split the first range into two adjacent ones.
                    if let Some(&(s, l)) = rs.first() {
                        if split && l - s >= 2 {
                            let mid = s + (l - s) / 2;
                            rs[0] = (s, mid);
                            rs.insert(1, (mid + 1, l));
                        }
                    }
                    Op::SetAllowed(rs)
                }
            ),
            1 => range_strategy().prop_map(|(s, l)| Op::Reserve(s, l)),
            1 => Just(Op::Unreserve),
        ]
    }

    struct Harness {
        iopt: IoPagetable,
        model: Model,
        domain: Option<Arc<TestDomain>>,
        /// Every backing created, with the user address it pretends to live at.
        pages: Vec<(Arc<Pages>, u64)>,
    }

    impl Harness {
        fn new(with_domain: bool) -> Self {
            let mut iopt = IoPagetable::new();
            let domain = with_domain.then(|| TestDomain::new(2048));
            if let Some(d) = &domain {
                iopt.add_domain(1, d.clone()).unwrap();
            }
            let align = iopt.iova_alignment();
            Self {
                iopt,
                model: Model {
                    align,
                    ..Model::default()
                },
                domain,
                pages: Vec::new(),
            }
        }

        fn pick(&self, sel: usize) -> Option<MArea> {
            (!self.model.areas.is_empty()).then(|| self.model.areas[sel % self.model.areas.len()])
        }

        /// Checks the automatic IOVA against the rules directly (independently of the model).
        fn check_auto(&self, iova: u64, len: u64, addr: u64) {
            let last = iova + (len - 1);
            assert!(
                iova >= PG && last <= u64::MAX - PG,
                "auto IOVA {iova:#x} outside window"
            );
            let align = Model::alignment_for(addr, len);
            assert_eq!(
                iova % align,
                0,
                "auto IOVA {iova:#x} not aligned to {align:#x}"
            );
            if !self.model.allowed.is_empty() {
                assert!(
                    merged(self.model.allowed.clone())
                        .iter()
                        .any(|&(s, l)| s <= iova && last <= l),
                    "auto IOVA {iova:#x}+{len:#x} outside the allowed ranges"
                );
            }
            assert!(
                !self.model.reserved_hits((iova, last)),
                "auto IOVA on reserved"
            );
            assert!(!self.model.area_hits((iova, last)), "auto IOVA on an area");
        }

        fn step(&mut self, op: &Op) {
            match *op {
                Op::Map {
                    iova,
                    len,
                    hint,
                    start_byte,
                } => {
                    let pages = mem_pages(hint, start_byte, len, true);
                    let idx = self.pages.len();
                    self.pages.push((pages.clone(), hint));
                    let got = self.iopt.map_pages(&whole(&pages), len, iova, RW);
                    let addr = hint + start_byte;
                    if let (None, Ok(v)) = (iova, got) {
                        self.check_auto(v, len, addr);
                    }
                    let want = self.model.map(&[(idx, start_byte, len)], len, iova, addr);
                    assert_eq!(got, want, "{op:?}");
                }
                Op::Unmap { start, last } => self.unmap(start, last),
                Op::UnmapNear {
                    sel,
                    d_start,
                    d_last,
                } => {
                    let Some(a) = self.pick(sel) else { return };
                    let s = a.iova.saturating_add_signed(d_start);
                    let l = a.last.saturating_add_signed(d_last).max(s);
                    self.unmap(s, l);
                }
                Op::Copy {
                    sel,
                    d_start,
                    len,
                    dst,
                } => {
                    let Some(a) = self.pick(sel) else { return };
                    let src = a.iova.saturating_add_signed(d_start);
                    let got = self.iopt.get_pages(src, len);
                    let want = self.model.get_pages(src, len);
                    let (got, want) = match (got, want) {
                        (Ok(g), Ok(w)) => (g, w),
                        (g, w) => {
                            assert_eq!(g.map(|_| ()), w.map(|_| ()), "get_pages {op:?}");
                            return;
                        }
                    };
                    let got_desc: Vec<(usize, u64, u64)> = got
                        .iter()
                        .map(|s| {
                            let idx = self
                                .pages
                                .iter()
                                .position(|(p, _)| Arc::ptr_eq(p, &s.pages))
                                .expect("known pages");
                            (idx, s.start_byte, s.length)
                        })
                        .collect();
                    assert_eq!(got_desc, want, "get_pages slices {op:?}");
                    let first = &self.pages[want[0].0];
                    let addr = first.1 + want[0].1;
                    let res = self.iopt.map_pages(&got, len, dst, RW);
                    if let (None, Ok(v)) = (dst, res) {
                        self.check_auto(v, len, addr);
                    }
                    let model_res = self.model.map(&want, len, dst, addr);
                    assert_eq!(res, model_res, "copy {op:?}");
                }
                Op::SetAllowed(ref ranges) => {
                    // The IOCTL layer rejects start >= last and overlaps; feed valid sets only.
                    let mut rs: Vec<(u64, u64)> = Vec::new();
                    for &(s, l) in ranges {
                        if s < l && !rs.iter().any(|&r| isect(r, (s, l))) {
                            rs.push((s, l));
                        }
                    }
                    let got = self.iopt.set_allowed(&rs);
                    let want = if rs.iter().any(|&r| self.model.reserved_hits(r)) {
                        Err(Errno::EADDRINUSE)
                    } else {
                        self.model.allowed = rs;
                        Ok(())
                    };
                    assert_eq!(got, want, "{op:?}");
                }
                Op::Reserve(s, l) => {
                    let got = self.iopt.reserve(s, l, ReservedOwner::Test);
                    let r = (s, l);
                    let want = if self.model.area_hits(r)
                        || self.model.allowed.iter().any(|&x| isect(x, r))
                    {
                        Err(Errno::EADDRINUSE)
                    } else {
                        self.model.reserved.push(r);
                        Ok(())
                    };
                    assert_eq!(got, want, "{op:?}");
                }
                Op::Unreserve => {
                    self.iopt.remove_reserved(ReservedOwner::Test);
                    self.model.reserved.clear();
                }
            }
            self.check_state();
        }

        fn unmap(&mut self, s: u64, l: u64) {
            let got = self.iopt.unmap_range(s, l);
            let want = self.model.unmap(s, l);
            match (got, want) {
                (Ok(UnmapProgress::Done(g)), Ok(w)) => assert_eq!(g, w, "unmap {s:#x}..{l:#x}"),
                (Err(g), Err(w)) => assert_eq!(g, w, "unmap {s:#x}..{l:#x}"),
                (g, w) => panic!("unmap {s:#x}..={l:#x}: got {g:?}, model {w:?}"),
            }
        }

        fn check_state(&self) {
            let got: Vec<MArea> = self
                .iopt
                .areas()
                .map(|a| MArea {
                    iova: a.iova,
                    last: a.last,
                    pages: self
                        .pages
                        .iter()
                        .position(|(p, _)| Arc::ptr_eq(p, &a.pages))
                        .expect("known pages"),
                    start_byte: a.start_byte,
                })
                .collect();
            assert_eq!(got, self.model.areas);
            let mut rs = self.model.reserved.clone();
            rs.sort_unstable();
            let mut free = Vec::new();
            let mut cur = Some(0u64);
            for (s, l) in merged(rs) {
                let c = cur.unwrap();
                if s > c {
                    free.push((c, s - 1));
                }
                cur = l.checked_add(1);
                if cur.is_none() {
                    break;
                }
            }
            if let Some(c) = cur {
                free.push((c, u64::MAX));
            }
            assert_eq!(self.iopt.usable_ranges(), free);
            // Pins: with a domain, one user per area covering a page; none without.
            let mut users: BTreeMap<(usize, u64), u32> = BTreeMap::new();
            if self.domain.is_some() {
                for a in &self.model.areas {
                    let first = a.start_byte / PG;
                    let last = (a.start_byte + (a.last - a.iova)) / PG;
                    for i in first..=last {
                        *users.entry((a.pages, i)).or_default() += 1;
                    }
                }
            }
            for (idx, (p, _)) in self.pages.iter().enumerate() {
                let want = users.range((idx, 0)..=(idx, u64::MAX)).count() as u64;
                assert_eq!(p.npinned(), want, "npinned of pages {idx}");
                for (&(_, i), &n) in users.range((idx, 0)..=(idx, u64::MAX)) {
                    assert_eq!(p.pin_users(i), n, "pin users of page {i} of pages {idx}");
                }
            }
            if let Some(d) = &self.domain {
                assert_domain_mirrors(&self.iopt, d);
            }
        }
    }

    proptest! {
        // 384 cases unless PROPTEST_CASES says otherwise.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(384),
            ..ProptestConfig::default()
        })]

        #[test]
        fn iopt_matches_model(
            with_domain in any::<bool>(),
            ops in proptest::collection::vec(op_strategy(), 1..48),
        ) {
            let mut h = Harness::new(with_domain);
            for op in &ops {
                h.step(op);
            }
            // Unmap everything: no area, no pin, nothing in the domain.
            h.unmap(0, u64::MAX);
            h.check_state();
            prop_assert_eq!(h.iopt.num_areas(), 0);
            prop_assert!(h.pages.iter().all(|(p, _)| p.npinned() == 0));
            if let Some(d) = &h.domain {
                prop_assert!(d.is_empty());
            }
        }
    }
}
