//! Unit and property tests of the io_pagetable against the kernel's errno and semantics
//! (drivers/iommu/iommufd/io_pagetable.c, ioas.c, pages.c, device.c). This file holds the
//! fixtures; the tests are grouped by topic in the submodules.

mod access;
mod alloc;
mod domains;
mod files;
mod mapping;
mod model;
mod self_pinning;

use super::accounting::Account;
use super::source::MemorySource;
use super::*;
use std::sync::Mutex;

const PG: u64 = PAGE_SIZE;

/// A property test's configuration: `cases` cases unless PROPTEST_CASES says otherwise.
fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        ..Default::default()
    }
}
const RW: Prot = Prot::READ_WRITE;
const RO: Prot = Prot::READ_ONLY;

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
        &Ledger::new(),
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
