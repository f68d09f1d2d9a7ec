//! Domains: filling, rollback, pin counting and charging.

use super::*;

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
        &Ledger::new(),
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
    use super::accounting::AccountMode;
    let ledger = Ledger::new();
    let pid = 4242;
    let account = Account::fixed(AccountMode::Process, pid, 0, 6 * PG);
    let pages = Pages::new(
        &ledger,
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
    assert_eq!(ledger.pins.charged_to_process(pid), 4);
    // Beyond the limit: ENOMEM and nothing changes.
    let more = Pages::new(
        &ledger,
        Arc::new(MemorySource::new(0x3000, 0x1000)),
        0,
        0x3000,
        true,
        Account::fixed(AccountMode::Process, pid, 0, 6 * PG),
    )
    .unwrap();
    assert_eq!(
        iopt.map_pages(&whole(&more), 0x3000, Some(0x30000), RW),
        Err(Errno::ENOMEM)
    );
    assert_eq!(iopt.num_areas(), 2);
    assert_eq!(ledger.pins.charged_to_process(pid), 4);
    unmap(&mut iopt, 0, u64::MAX).unwrap();
    assert_eq!(ledger.pins.charged_to_process(pid), 0);
}

// ---------------------------------------------------------------------------------------------
// Revoked backings (dma-buf imports)
// ---------------------------------------------------------------------------------------------

/// A dma-buf-like import over `npages` of a fresh memfd, mapped in the daemon.
fn dmabuf_import(npages: u64) -> Arc<crate::iopt::source::DmabufImport> {
    use crate::iopt::source::{DmabufImport, FileSource};
    let fd = nix::sys::memfd::memfd_create(c"iopt-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .unwrap();
    nix::unistd::ftruncate(&fd, (npages * PAGE_SIZE) as i64).unwrap();
    let mem = Arc::new(FileSource::private(fd, 0, npages * PAGE_SIZE));
    Arc::new(DmabufImport::new(mem, 0))
}

#[test]
fn revoked_backing_leaves_the_domains_but_not_the_ioas() {
    let (mut iopt, d1) = iopt_2k();
    let import = dmabuf_import(2);
    let pages = Pages::new(
        &Ledger::new(),
        import.clone(),
        0,
        2 * PAGE_SIZE,
        true,
        Account::unaccounted(),
    )
    .unwrap();
    iopt.map_pages(&whole(&pages), 2 * PAGE_SIZE, Some(0x10000), RW)
        .unwrap();
    map_mem(&mut iopt, Some(0x40000), 0x40_0000, 0, 0x1000).unwrap();
    assert!(d1.translate(0x10000).is_some());
    assert_eq!(pages.npinned(), 2);

    import.revoke();
    iopt.unfill_revoked();
    assert_eq!(
        d1.translate(0x10000),
        None,
        "revoked pages leave the domain"
    );
    assert_eq!(d1.translate(0x11fff), None);
    assert_eq!(d1.translate(0x40000), Some(0x40_0000), "other areas stay");
    assert_eq!(pages.npinned(), 0);
    assert_eq!(iopt.area(0x10000).map(|a| a.filled), Some(false));

    // A new domain fills everything but the revoked area; accesses never touch dma-bufs.
    let d2 = TestDomain::new(2048);
    iopt.add_domain(2, d2.clone()).unwrap();
    assert_eq!(d2.translate(0x10000), None);
    assert_eq!(d2.translate(0x40000), Some(0x40_0000));
    assert_eq!(
        iopt.access_pin(0x10000, PAGE_SIZE, false),
        Err(Errno::EOPNOTSUPP)
    );
    let mut b = [0u8; 4];
    assert_eq!(iopt.access_rw(0x10000, &mut b, false), Err(Errno::EINVAL));
    // The area still holds its IOVA until unmapped.
    assert_eq!(map_at(&mut iopt, 0x10000, PAGE_SIZE), Err(Errno::EEXIST));
    assert_eq!(unmap(&mut iopt, 0x10000, 0x11fff), Ok(2 * PAGE_SIZE));
    iopt.remove_domain(2);
    assert_eq!(d2.translate(0x40000), None);
}
