//! Domains that pin by themselves (a kernel VFIO container behind [`VfioDomain`]): the
//! io_pagetable hands them the daemon's view of an area's memory, charges the owner once, and
//! never looks up frames unless a frame-consuming domain or an access needs them.

use super::*;
use crate::backends::vfio::container::{Container, Type1Info};
use crate::backends::vfio::fake::FakeContainer;
use crate::backends::vfio::{Geometry, VfioDomain};
use crate::iopt::accounting::AccountMode;

fn vfio_domain() -> (Arc<VfioDomain>, Arc<FakeContainer>) {
    let d = Arc::new(VfioDomain::new(Geometry::from_info(&Type1Info {
        pgsizes: 0x4020_1000,
        ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, 0xffff_ffff_ffff)],
        dma_avail: None,
    })));
    let c = Arc::new(FakeContainer::default());
    d.join(c.clone()).unwrap();
    (d, c)
}

/// Pages charged in `ledger` to a fixed account with a limit of `limit_pages`.
fn charged_pages(ledger: &Arc<Ledger>, len: u64, limit_pages: u64, key: u64) -> Arc<Pages> {
    let src = MemorySource::new(len as usize, 0x7f00_0000_0000);
    let account = Account::fixed(AccountMode::Process, key, 4242, limit_pages * PG);
    Pages::new(ledger, Arc::new(src), 0, len, true, account).unwrap()
}

#[test]
fn areas_reach_the_container_as_daemon_addresses() {
    let mut iopt = IoPagetable::new();
    map_at(&mut iopt, 0x10_0000, 0x4000).unwrap();
    let (d, c) = vfio_domain();
    iopt.add_domain(1, d.clone()).unwrap();
    // The MSI window became reserved; alignment is the container's 4 KiB.
    assert_eq!(iopt.iova_alignment(), 4096);
    assert_eq!(map_at(&mut iopt, 0xfee0_0000, 0x1000), Err(Errno::EINVAL));
    map_at(&mut iopt, 0x20_0000, 0x2000).unwrap();
    let maps = c.mappings();
    assert_eq!(maps.len(), 2);
    assert_eq!((maps[0].0, maps[0].2), (0x10_0000, 0x4000));
    assert_eq!((maps[1].0, maps[1].2), (0x20_0000, 0x2000));
    // The daemon address is the in-memory backing itself.
    let a = iopt.first_area(0x10_0000, 0x10_0000).unwrap();
    let view = a.pages.source().daemon_view(0, 0x4000, true).unwrap();
    assert_eq!(view[0].va, maps[0].1);
    assert_eq!(unmap(&mut iopt, 0x10_0000, 0x10_3fff), Ok(0x4000));
    assert_eq!(c.mappings().len(), 1);
    iopt.remove_domain(1);
    assert!(c.mappings().is_empty() || d.mapped_bytes() == 0);
    assert_eq!(d.mapped_bytes(), 0);
}

#[test]
fn the_owner_is_charged_once_and_frames_come_only_when_needed() {
    const KEY: u64 = 0x5e1f_0001;
    let ledger = Ledger::new();
    let mut iopt = IoPagetable::new();
    let (d, c) = vfio_domain();
    iopt.add_domain(1, d).unwrap();
    let pages = charged_pages(&ledger, 0x8000, 8, KEY);
    iopt.map_pages(&whole(&pages), 0x8000, Some(0x10_0000), RW)
        .unwrap();
    assert_eq!(pages.npinned(), 8);
    assert_eq!(ledger.pins.charged_to_process(KEY), 8);
    assert_eq!(c.mappings().len(), 1);
    // A second, frame-consuming domain looks the frames up without charging again.
    let t = TestDomain::new(4096);
    iopt.add_domain(2, t.clone()).unwrap();
    assert_eq!(ledger.pins.charged_to_process(KEY), 8);
    assert_eq!(t.mapped_bytes(), 0x8000);
    assert_domain_mirrors(&iopt, &t);
    iopt.remove_domain(2);
    iopt.remove_domain(1);
    assert_eq!(pages.npinned(), 0);
    assert_eq!(ledger.pins.charged_to_process(KEY), 0);
    // Over the limit: nothing reaches the container and nothing more stays charged (the first
    // area went back into the new domain: its 8 pages are charged again).
    let (d, c) = vfio_domain();
    iopt.add_domain(3, d).unwrap();
    assert_eq!(ledger.pins.charged_to_process(KEY), 8);
    let big = charged_pages(&ledger, 0x10000, 8, KEY);
    assert_eq!(
        iopt.map_pages(&whole(&big), 0x10000, Some(0x40_0000), RW),
        Err(Errno::ENOMEM)
    );
    assert!(c.mappings().iter().all(|m| m.0 != 0x40_0000));
    assert_eq!(ledger.pins.charged_to_process(KEY), 8);
    assert_eq!(big.npinned(), 0);
}

#[test]
fn a_container_that_refuses_undoes_the_map() {
    let mut iopt = IoPagetable::new();
    let d = Arc::new(VfioDomain::new(Geometry::from_info(&Type1Info::default())));
    let c = Arc::new(FakeContainer::with_limit(1));
    d.join(c.clone() as Arc<dyn Container>).unwrap();
    iopt.add_domain(1, d.clone()).unwrap();
    map_at(&mut iopt, 0x10_0000, 0x1000).unwrap();
    // type1's dma_entry_limit reached: ENOSPC, and the IOAS is as before.
    assert_eq!(map_at(&mut iopt, 0x20_0000, 0x1000), Err(Errno::ENOSPC));
    assert_eq!(intervals(&iopt), vec![(0x10_0000, 0x10_0fff)]);
    assert_eq!(d.mapped_bytes(), 0x1000);
}
