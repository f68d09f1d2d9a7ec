//! IOMMU_HWPT_SET_DIRTY_TRACKING (flags, a paging HWPT, a domain with dirty tracking) and
//! IOMMU_HWPT_GET_DIRTY_BITMAP (flags and reserved, the HWPT, overflow, the IOAS's alignment,
//! page_size, then the domain; bits are OR-ed into the caller's bitmap).

use super::*;
use crate::dispatch::selftest::mockdev::as_mock;

const PAGE: u64 = 4096;

fn tracking(hwpt_id: u32, flags: u32) -> iommu_hwpt_set_dirty_tracking {
    iommu_hwpt_set_dirty_tracking {
        size: sz::<iommu_hwpt_set_dirty_tracking>(),
        flags,
        hwpt_id,
        reserved: 0,
    }
}

fn bitmap(hwpt_id: u32, iova: u64, length: u64, page_size: u64) -> iommu_hwpt_get_dirty_bitmap {
    iommu_hwpt_get_dirty_bitmap {
        size: sz::<iommu_hwpt_get_dirty_bitmap>(),
        hwpt_id,
        flags: 0,
        reserved: 0,
        iova,
        length,
        page_size,
        data: DATA,
    }
}

/// (bench, IOAS, a HWPT with dirty tracking, one without) with 4 pages mapped at [`IOVA`].
fn setup() -> (Bench, u32, u32, u32) {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let dirty = b
        .hwpt_alloc(m.dev, ioas, IOMMU_HWPT_ALLOC_DIRTY_TRACKING, 0, &[])
        .unwrap();
    b.map(ioas, 0, 4 * PAGE);
    (b, ioas, dirty, m.hwpt)
}

fn mark(b: &Bench, hwpt: u32, iova: u64, len: u64) {
    let h = b.ctx.get_hwpt_paging(hwpt).unwrap();
    as_mock(&h.domain).unwrap().mark_dirty(iova, len).unwrap();
}

#[test]
fn set_dirty_tracking_order() {
    let (b, ioas, dirty, plain) = setup();
    let mut c = tracking(NO_ID, 1 << 1);
    assert_eq!(
        b.errno(IOMMU_HWPT_SET_DIRTY_TRACKING, &c),
        Errno::EOPNOTSUPP
    );
    c.flags = IOMMU_HWPT_DIRTY_TRACKING_ENABLE;
    assert_eq!(b.errno(IOMMU_HWPT_SET_DIRTY_TRACKING, &c), Errno::ENOENT);
    c.hwpt_id = ioas;
    assert_eq!(
        b.errno(IOMMU_HWPT_SET_DIRTY_TRACKING, &c),
        Errno::ENOENT,
        "paging HWPTs only"
    );
    c.hwpt_id = plain;
    assert_eq!(
        b.errno(IOMMU_HWPT_SET_DIRTY_TRACKING, &c),
        Errno::EOPNOTSUPP,
        "no dirty ops"
    );
    // The kernel does not look at `reserved` here.
    c.hwpt_id = dirty;
    c.reserved = 1;
    assert!(b.call(IOMMU_HWPT_SET_DIRTY_TRACKING, &c).is_ok());
    let mock = as_mock(&b.ctx.get_hwpt_paging(dirty).unwrap().domain).unwrap();
    assert!(mock.dirty_tracking());
    c.flags = 0;
    assert!(b.call(IOMMU_HWPT_SET_DIRTY_TRACKING, &c).is_ok());
    assert!(!mock.dirty_tracking());
}

#[test]
fn get_dirty_bitmap_order() {
    let (b, ioas, dirty, plain) = setup();
    let cmd = IOMMU_HWPT_GET_DIRTY_BITMAP;
    let mut c = bitmap(NO_ID, 1, 0, 0);
    c.flags = 1 << 1;
    assert_eq!(b.errno(cmd, &c), Errno::EOPNOTSUPP, "flags first");
    c.flags = 0;
    c.reserved = 1;
    assert_eq!(b.errno(cmd, &c), Errno::EOPNOTSUPP, "reserved");
    c.reserved = 0;
    assert_eq!(b.errno(cmd, &c), Errno::ENOENT, "the HWPT before the range");
    c.hwpt_id = ioas;
    assert_eq!(b.errno(cmd, &c), Errno::ENOENT, "paging HWPTs only");
    c.hwpt_id = plain;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EOVERFLOW,
        "iova + length - 1 overflows"
    );
    // Quarter pages suit page_size but not the IOAS (aligned to the mock's 2 KiB IO page).
    c.page_size = PAGE / 4;
    c.iova = IOVA + PAGE / 4;
    c.length = PAGE;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EINVAL,
        "iova off the IOAS's alignment"
    );
    c.iova = IOVA;
    c.length = PAGE / 4;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EINVAL,
        "end off the IOAS's alignment"
    );
    c.length = PAGE;
    c.page_size = 0;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EINVAL,
        "page_size 0, before the domain's support"
    );
    c.page_size = 2 * PAGE;
    assert_eq!(b.errno(cmd, &c), Errno::EINVAL, "end off page_size");
    c.page_size = PAGE;
    c.data = UNMAPPED;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EOPNOTSUPP,
        "no dirty ops, before the bitmap"
    );
    c.hwpt_id = dirty;
    assert!(
        b.call(cmd, &c).is_ok(),
        "nothing dirty: the bitmap is not touched"
    );
    // A page_size down to the IOAS's alignment is fine.
    c.data = DATA;
    c.page_size = PAGE / 2;
    assert!(b.call(cmd, &c).is_ok());
}

#[test]
fn dirty_bits_are_ored_into_the_bitmap() {
    let (b, _, dirty, _) = setup();
    b.call(
        IOMMU_HWPT_SET_DIRTY_TRACKING,
        &tracking(dirty, IOMMU_HWPT_DIRTY_TRACKING_ENABLE),
    )
    .unwrap();
    mark(&b, dirty, IOVA + PAGE, PAGE);
    mark(&b, dirty, IOVA + 3 * PAGE, PAGE);
    b.mem.set(DATA, &[0x80, 0xee]);
    let mut c = bitmap(dirty, IOVA, 4 * PAGE, PAGE);
    c.flags = IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR;
    let n = b.nwrites();
    b.call(IOMMU_HWPT_GET_DIRTY_BITMAP, &c).unwrap();
    assert_eq!(
        b.writes_since(n),
        [(DATA, 1)],
        "no answer struct, one bitmap byte"
    );
    assert_eq!(b.mem.get(DATA, 2), [0x8a, 0xee]);
    // Half pages: two bits per page; NO_CLEAR left the bits.
    b.mem.set(DATA, &[0, 0]);
    c.flags = 0;
    c.page_size = PAGE / 2;
    b.call(IOMMU_HWPT_GET_DIRTY_BITMAP, &c).unwrap();
    assert_eq!(b.mem.get(DATA, 2), [0b1100_1100, 0]);
    // Cleared now; a dirty bit with nowhere to go faults.
    b.mem.set(DATA, &[0, 0]);
    b.call(IOMMU_HWPT_GET_DIRTY_BITMAP, &c).unwrap();
    assert_eq!(b.mem.get(DATA, 2), [0, 0]);
    mark(&b, dirty, IOVA, PAGE);
    c.data = UNMAPPED;
    assert_eq!(b.errno(IOMMU_HWPT_GET_DIRTY_BITMAP, &c), Errno::EFAULT);
}

#[test]
fn enabling_starts_from_a_clean_slate() {
    let (b, _, dirty, _) = setup();
    let on = tracking(dirty, IOMMU_HWPT_DIRTY_TRACKING_ENABLE);
    b.call(IOMMU_HWPT_SET_DIRTY_TRACKING, &on).unwrap();
    mark(&b, dirty, IOVA, PAGE);
    b.call(IOMMU_HWPT_SET_DIRTY_TRACKING, &tracking(dirty, 0))
        .unwrap();
    b.call(IOMMU_HWPT_SET_DIRTY_TRACKING, &on).unwrap();
    b.mem.set(DATA, &[0]);
    b.call(
        IOMMU_HWPT_GET_DIRTY_BITMAP,
        &bitmap(dirty, IOVA, 4 * PAGE, PAGE),
    )
    .unwrap();
    assert_eq!(
        b.mem.get(DATA, 1),
        [0],
        "bits from before the enable are gone"
    );
}
