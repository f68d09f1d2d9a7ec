//! The ID table and the access/unmap protocol, in process.

use super::*;
use crate::backends::Prot;
use crate::iopt::accounting::Account;
use crate::iopt::source::MemorySource;
use crate::iopt::{Ledger, Pages};
use std::sync::atomic::AtomicU32;

fn ioas(ctx: &Context) -> u32 {
    ctx.insert(Object::Ioas(Ioas::new())).unwrap()
}

fn map_mem(ioas: &Ioas, iova: u64, len: u64) {
    let src = Arc::new(MemorySource::new(len as usize, 0x10_0000));
    let pages = Pages::new(&Ledger::new(), src, 0, len, true, Account::unaccounted()).unwrap();
    ioas.map_pages(pages, Some(iova), Prot::READ_WRITE).unwrap();
}

#[test]
fn ids_are_smallest_free_from_one() {
    let ctx = Context::new();
    assert_eq!((ioas(&ctx), ioas(&ctx), ioas(&ctx)), (1, 2, 3));
    ctx.destroy(2).unwrap();
    assert_eq!(ioas(&ctx), 2);
    assert_eq!(ioas(&ctx), 4);
}

#[test]
fn typed_lookup_and_destroy_errors() {
    let ctx = Context::new();
    let id = ioas(&ctx);
    assert_eq!(ctx.get_access(id).err(), Some(Errno::ENOENT));
    assert_eq!(ctx.get_ioas(99).err(), Some(Errno::ENOENT));
    assert_eq!(ctx.destroy(99), Err(Errno::ENOENT));
    let user = ctx.take_user(id).unwrap();
    assert_eq!(ctx.destroy(id), Err(Errno::EBUSY));
    drop(user);
    ctx.destroy(id).unwrap();
    assert_eq!(ctx.num_objects(), 0);
}

/// Releases every pin it holds inside the unmapped range, counting callbacks.
struct Unpinner {
    pinned: Mutex<Vec<(u64, u64)>>,
    calls: AtomicU32,
}

impl AccessOps for Unpinner {
    fn unmap(&self, access: &Access, iova: u64, length: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let last = iova.saturating_add(length - 1);
        let mut pinned = self.pinned.lock().unwrap();
        pinned.retain(|&(i, l)| {
            let inside = i <= last && i + l > iova;
            if inside {
                access.unpin_pages(i, l);
            }
            !inside
        });
    }
}

#[test]
fn unmap_asks_the_access_to_let_go_first() {
    let ctx = Context::new();
    let id = ioas(&ctx);
    let io = ctx.get_ioas(id).unwrap();
    map_mem(&io, 0x10000, 0x4000);
    let ops = Arc::new(Unpinner {
        pinned: Mutex::new(Vec::new()),
        calls: AtomicU32::new(0),
    });
    let access = Access::new(ops.clone(), true);
    access.attach(&ctx, id).unwrap();
    assert_eq!(
        ctx.destroy(id),
        Err(Errno::EBUSY),
        "the access uses the IOAS"
    );
    let paddrs = access.pin_pages(0x11000, 0x2000, true).unwrap();
    assert_eq!(paddrs.len(), 2);
    ops.pinned.lock().unwrap().push((0x11000, 0x2000));
    // The unmap completes only after the callback unpinned.
    assert_eq!(io.unmap(0x10000, 0x13fff), Ok(0x4000));
    assert_eq!(ops.calls.load(Ordering::Relaxed), 1);
    assert!(ops.pinned.lock().unwrap().is_empty());
    // rw through the access after the unmap: nothing mapped.
    let mut b = [0u8; 4];
    assert_eq!(access.rw(0x10000, &mut b, false), Err(Errno::ENOENT));
    access.detach();
    ctx.destroy(id).unwrap();
}

/// Never lets go: the unmap gives up with EDEADLK instead of spinning forever.
struct Stubborn;

impl AccessOps for Stubborn {
    fn unmap(&self, _access: &Access, _iova: u64, _length: u64) {}
}

#[test]
fn unmap_gives_up_on_a_stubborn_access() {
    let ctx = Context::new();
    let id = ioas(&ctx);
    let io = ctx.get_ioas(id).unwrap();
    map_mem(&io, 0x10000, 0x1000);
    let access = Access::new(Arc::new(Stubborn), true);
    access.attach(&ctx, id).unwrap();
    access.pin_pages(0x10000, 0x1000, false).unwrap();
    assert_eq!(
        io.unmap(0, u64::MAX).map_err(|(e, _)| e),
        Err(Errno::EDEADLK)
    );
    access.unpin_pages(0x10000, 0x1000);
    assert_eq!(io.unmap(0, u64::MAX), Ok(0x1000));
}

#[test]
fn destroy_all_goes_leaves_first() {
    let ctx = Context::new();
    let id = ioas(&ctx);
    let access = Access::new(Arc::new(Stubborn), false);
    access.attach(&ctx, id).unwrap();
    ctx.insert(Object::Access(access)).unwrap();
    assert_eq!(ctx.num_objects(), 2);
    ctx.destroy_all();
    assert_eq!(ctx.num_objects(), 0);
}

#[test]
fn ids_match_a_naive_smallest_free_allocator() {
    // Pseudo-random inserts and destroys, checked against a linear scan.
    let ctx = Context::new();
    let mut live: std::collections::BTreeSet<u32> = Default::default();
    let mut x = 0x2545_f491u32;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if !x.is_multiple_of(3) || live.is_empty() {
            let expect = (1..).find(|i| !live.contains(i)).unwrap();
            assert_eq!(ioas(&ctx), expect);
            live.insert(expect);
        } else {
            let victim = *live.iter().nth(x as usize % live.len()).unwrap();
            ctx.destroy(victim).unwrap();
            live.remove(&victim);
        }
    }
    ctx.destroy_all();
    assert_eq!(ioas(&ctx), 1);
}

#[test]
fn object_cap_is_enomem_and_freed_on_destroy() {
    use crate::iopt::limits::{Resource, OBJECTS_PER_CONTEXT};
    let ctx = Context::new();
    for _ in 0..OBJECTS_PER_CONTEXT {
        ioas(&ctx);
    }
    assert_eq!(
        ctx.insert(Object::Ioas(Ioas::new())).unwrap_err(),
        Errno::ENOMEM
    );
    assert_eq!(ctx.used(Resource::Objects), OBJECTS_PER_CONTEXT);
    ctx.destroy(7).unwrap();
    assert_eq!(ioas(&ctx), 7);
    ctx.destroy_all();
    assert_eq!(ctx.used(Resource::Objects), 0);
}

#[test]
fn a_user_is_given_back_when_dropped_or_released_once() {
    let ctx = Context::new();
    let id = ioas(&ctx);
    let first = ctx.take_user(id).unwrap();
    let second = ctx.take_user(id).unwrap();
    assert_eq!(ctx.destroy(id), Err(Errno::EBUSY));
    first.release();
    first.release();
    assert_eq!(ctx.destroy(id), Err(Errno::EBUSY), "a release counts once");
    drop(first);
    assert_eq!(
        ctx.destroy(id),
        Err(Errno::EBUSY),
        "and the drop after it not at all"
    );
    drop(second);
    ctx.destroy(id).unwrap();
    assert_eq!(ctx.take_user(id).err(), Some(Errno::ENOENT));
    // A user that outlives its context has nothing to give back.
    let id = ioas(&ctx);
    let late = ctx.take_user(id).unwrap();
    drop(ctx);
    drop(late);
}

#[test]
fn a_child_that_fails_to_insert_gives_its_parents_user_back() {
    use crate::backends::mock::{MockDomain, MockKind};
    use crate::iopt::limits::OBJECTS_PER_CONTEXT;
    let ctx = Context::new();
    let parent = ioas(&ctx);
    while ctx.insert(Object::Ioas(Ioas::new())).is_ok() {}
    assert_eq!(ctx.num_objects() as u64, OBJECTS_PER_CONTEXT);
    let domain = Arc::new(MockDomain::new(MockKind::Normal));
    assert_eq!(
        hwpt::HwptPaging::alloc(&ctx, parent, domain, 0, false).err(),
        Some(Errno::ENOMEM)
    );
    ctx.destroy(parent).unwrap();
}

/// A backing whose pins wait until the test lets them go (a client's memory that is slow to
/// fault in), telling the test when a pin has started.
#[derive(Debug)]
struct SlowPins {
    inner: MemorySource,
    started: std::sync::mpsc::SyncSender<()>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl crate::iopt::PageSource for SlowPins {
    fn pin(&self, first: u64, count: u64, write: bool) -> Result<Vec<u64>, Errno> {
        let _ = self.started.send(());
        let _ = self.go.lock().unwrap().recv();
        self.inner.pin(first, count, write)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.inner.write(offset, data)
    }
    fn address_hint(&self) -> u64 {
        self.inner.address_hint()
    }
}

/// An IOAS of `ctx` with a mock domain attached (through a paging HWPT the context keeps).
fn ioas_with_a_mock_domain(ctx: &Context) -> (Arc<Ioas>, Arc<dyn crate::backends::Domain>) {
    use crate::backends::mock::{MockDomain, MockKind};
    let id = ioas(ctx);
    let io = ctx.get_ioas(id).unwrap();
    let domain: Arc<dyn crate::backends::Domain> = Arc::new(MockDomain::new(MockKind::Normal));
    hwpt::HwptPaging::alloc(ctx, id, domain.clone(), 0, false).unwrap();
    (io, domain)
}

#[test]
fn a_map_pins_without_holding_the_table() {
    const BASE: u64 = crate::backends::mock::MOCK_APERTURE_START;
    let ctx = Context::new();
    let (io, domain) = ioas_with_a_mock_domain(&ctx);
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let (go, go_rx) = std::sync::mpsc::channel();
    let slow = Arc::new(SlowPins {
        inner: MemorySource::new(0x4000, 0x10_0000),
        started: started_tx,
        go: Mutex::new(go_rx),
    });
    let pages = Pages::new(
        &Ledger::new(),
        slow,
        0,
        0x4000,
        true,
        Account::unaccounted(),
    )
    .unwrap();
    let mapper = {
        let io = io.clone();
        std::thread::spawn(move || io.map_pages(pages, Some(BASE), Prot::READ_WRITE))
    };
    if started.recv().is_err() {
        panic!(
            "the map ended without pinning: {:?}",
            mapper.join().unwrap()
        );
    }
    // The pin is waiting. The table is free: lookups, another map, even an unmap elsewhere.
    assert!(
        io.try_iopt().is_some(),
        "the table is held while the pages are pinned"
    );
    map_mem(&io, BASE + 0x40000, 0x2000);
    assert_eq!(io.unmap(BASE + 0x40000, BASE + 0x41fff), Ok(0x2000));
    // The pending range is taken (EEXIST for a fixed map over it) and busy for an unmap.
    let other = Pages::new(
        &Ledger::new(),
        Arc::new(MemorySource::new(0x1000, 0x20_0000)),
        0,
        0x1000,
        true,
        Account::unaccounted(),
    )
    .unwrap();
    assert_eq!(
        io.map_pages(other, Some(BASE), Prot::READ_WRITE),
        Err(Errno::EEXIST)
    );
    assert_eq!(io.unmap(BASE, BASE + 0x3fff), Err((Errno::EBUSY, 0)));
    go.send(()).unwrap();
    assert_eq!(mapper.join().unwrap(), Ok(BASE));
    // Committed: mapped into the domain and an ordinary area.
    assert!(domain.translate(BASE).is_some());
    assert_eq!(io.unmap(BASE, BASE + 0x3fff), Ok(0x4000));
}

/// A page source whose pin panics, as a bug in a backend's pin path would.
#[derive(Debug)]
struct PanickingPins(MemorySource);

impl crate::iopt::PageSource for PanickingPins {
    fn pin(&self, _first: u64, _count: u64, _write: bool) -> Result<Vec<u64>, Errno> {
        panic!("pin fails hard (test)");
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.0.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.0.write(offset, data)
    }
    fn address_hint(&self) -> u64 {
        self.0.address_hint()
    }
}

#[test]
fn a_map_whose_pin_unwinds_leaves_its_iova_free() {
    const BASE: u64 = crate::backends::mock::MOCK_APERTURE_START;
    let ctx = Context::new();
    let (io, _domain) = ioas_with_a_mock_domain(&ctx);
    let source = Arc::new(PanickingPins(MemorySource::new(0x4000, 0x10_0000)));
    let pages = Pages::new(
        &Ledger::new(),
        source,
        0,
        0x4000,
        true,
        Account::unaccounted(),
    )
    .unwrap();
    let unwound = {
        let io = io.clone();
        std::thread::spawn(move || io.map_pages(pages, Some(BASE), Prot::READ_WRITE)).join()
    };
    assert!(unwound.is_err(), "the pin was meant to panic");
    // The range is neither pending nor mapped: a new map takes it, an unmap of it finds nothing.
    assert_eq!(io.unmap(BASE, BASE + 0x3fff), Ok(0));
    map_mem(&io, BASE, 0x4000);
    assert_eq!(io.unmap(BASE, BASE + 0x3fff), Ok(0x4000));
}
