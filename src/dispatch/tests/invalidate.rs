//! IOMMU_HWPT_INVALIDATE: reserved, the array's shape (only when it has entries), the object
//! (ENOENT when none, EINVAL for a kind that cannot invalidate), then the driver (data_type, the
//! entries). `entry_num` is written back as the number of entries handled, on failure too.

use super::*;

const ENTRY: u32 = 8;

fn cmd(hwpt_id: u32, data_type: u32, entry_num: u32) -> iommu_hwpt_invalidate {
    iommu_hwpt_invalidate {
        size: sz::<iommu_hwpt_invalidate>(),
        hwpt_id,
        data_uptr: DATA,
        data_type,
        entry_len: ENTRY,
        entry_num,
        reserved: 0,
    }
}

/// Places the mock nested domain's requests (flags, iotlb_id) at [`DATA`].
fn nested_entries(b: &Bench, reqs: &[(u32, u32)]) {
    for (i, &(flags, iotlb_id)) in reqs.iter().enumerate() {
        let e = iommu_hwpt_invalidate_selftest { flags, iotlb_id };
        b.mem.set(DATA + i as u64 * ENTRY as u64, e.as_bytes());
    }
}

/// A nested HWPT of the mock on a nest parent: (bench, IOAS, nested, parent).
fn setup() -> (Bench, u32, u32, u32) {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let parent = b.nest_parent(m.dev, ioas);
    let nested = b.nested(m.dev, parent);
    (b, ioas, nested, parent)
}

#[test]
fn shape_checks_come_before_the_object_and_answer_zero_done() {
    let (b, ioas, nested, parent) = setup();
    let cmd_nr = IOMMU_HWPT_INVALIDATE;
    let ty = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    let mut c = cmd(NO_ID, 0, 3);
    c.reserved = 1;
    c.data_uptr = 0;
    assert_eq!(b.errno(cmd_nr, &c), Errno::EOPNOTSUPP, "reserved first");
    assert_eq!(b.at::<iommu_hwpt_invalidate>(ARG).entry_num, 0, "none done");
    c.reserved = 0;
    assert_eq!(
        b.errno(cmd_nr, &c),
        Errno::EINVAL,
        "no array, before hwpt_id"
    );
    c.data_uptr = DATA;
    c.entry_len = 0;
    assert_eq!(b.errno(cmd_nr, &c), Errno::EINVAL, "entries of no length");
    c.entry_len = 4097;
    assert_eq!(
        b.errno(cmd_nr, &c),
        Errno::EINVAL,
        "entries longer than a page"
    );
    c.entry_len = ENTRY;
    c.entry_num = (1 << 19) + 1;
    assert_eq!(b.errno(cmd_nr, &c), Errno::EINVAL, "more than 2^19 entries");
    c.entry_num = 3;
    assert_eq!(b.errno(cmd_nr, &c), Errno::ENOENT);
    assert_eq!(b.at::<iommu_hwpt_invalidate>(ARG).entry_num, 0);
    // Objects that cannot invalidate, whatever the data type.
    for id in [ioas, parent] {
        c.hwpt_id = id;
        assert_eq!(b.errno(cmd_nr, &c), Errno::EINVAL, "object {id}");
    }
    // An empty array: its shape is not looked at, the driver still checks the type.
    let mut c = cmd(nested, ty, 0);
    c.data_uptr = 0;
    c.entry_len = 0;
    assert_eq!(b.call(cmd_nr, &c).unwrap().entry_num, 0);
    c.data_type = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID;
    assert_eq!(b.errno(cmd_nr, &c), Errno::EINVAL);
}

#[test]
fn nested_entries_run_in_order_and_entry_num_counts_the_done() {
    let (b, _, nested, _) = setup();
    let iotlb = |id| {
        let h = b.ctx.get_hwpt_nested(nested).unwrap();
        let n = h
            .domain
            .as_any()
            .downcast_ref::<crate::backends::mock::MockNested>();
        n.unwrap().iotlb(id).unwrap()
    };
    let ty = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    // The second entry names an IOTLB past the mock's: the first was done, the third not.
    nested_entries(&b, &[(0, 1), (0, MOCK_NESTED_DOMAIN_IOTLB_NUM), (0, 2)]);
    let c = cmd(nested, ty, 3);
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::EINVAL);
    assert_eq!(b.at::<iommu_hwpt_invalidate>(ARG).entry_num, 1);
    assert_eq!((iotlb(1), iotlb(2)), (0, IOMMU_TEST_IOTLB_DEFAULT));
    // An unknown flag.
    nested_entries(&b, &[(0, 2), (1 << 1, 0)]);
    assert_eq!(
        b.errno(IOMMU_HWPT_INVALIDATE, &cmd(nested, ty, 2)),
        Errno::EOPNOTSUPP
    );
    assert_eq!(b.at::<iommu_hwpt_invalidate>(ARG).entry_num, 1);
    assert_eq!(iotlb(2), 0);
    // Entries must be the mock's size exactly (longer driver data is refused, not zero-checked).
    let mut c = cmd(nested, ty, 1);
    c.entry_len = ENTRY + 4;
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::EINVAL);
    c.entry_len = ENTRY;
    c.data_uptr = UNMAPPED;
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::EFAULT);
    assert_eq!(b.at::<iommu_hwpt_invalidate>(ARG).entry_num, 0);
    // All of them.
    nested_entries(&b, &[(IOMMU_TEST_INVALIDATE_FLAG_ALL, 0), (0, 3)]);
    assert_eq!(
        b.call(IOMMU_HWPT_INVALIDATE, &cmd(nested, ty, 2))
            .unwrap()
            .entry_num,
        2
    );
    assert_eq!((0..4).map(iotlb).collect::<Vec<_>>(), [0; 4]);
}

/// Places mock vIOMMU requests (flags, vdev_id, cache_id) at [`DATA`], 12 bytes each.
fn viommu_entries(b: &Bench, reqs: &[(u32, u32, u32)]) {
    for (i, &(flags, vdev_id, cache_id)) in reqs.iter().enumerate() {
        let e = iommu_viommu_invalidate_selftest {
            flags,
            vdev_id,
            cache_id,
        };
        b.mem.set(DATA + i as u64 * 12, e.as_bytes());
    }
}

#[test]
fn viommu_reads_every_entry_before_running_any() {
    let b = Bench::new();
    let ioas = b.ioas();
    let (viommu, m, _) = b.viommu(ioas);
    let vdev = iommu_vdevice_alloc {
        size: sz::<iommu_vdevice_alloc>(),
        viommu_id: viommu,
        dev_id: m.dev,
        virt_id: 0x99,
        ..Default::default()
    };
    b.call(IOMMU_VDEVICE_ALLOC, &vdev).unwrap();
    let (_, mock) = crate::dispatch::selftest::mock_of_device(&b.ctx, m.dev).unwrap();
    let ty = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
    let mut c = cmd(viommu, ty, 2);
    c.entry_len = 12;
    // The second entry faults: nothing was done, not even the first.
    viommu_entries(&b, &[(0, 0x99, 1)]);
    c.data_uptr = ARG + FAKE_LEN as u64 - 16;
    b.mem.set(c.data_uptr, &b.mem.get(DATA, 12));
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::EFAULT);
    assert_eq!(b.at::<iommu_hwpt_invalidate>(ARG).entry_num, 0);
    assert_eq!(mock.cache(1), Some(IOMMU_TEST_DEV_CACHE_DEFAULT));
    // A longer entry with a non-zero tail is E2BIG (the vIOMMU's entries are zero-tail checked).
    c.data_uptr = DATA;
    c.entry_len = 16;
    c.entry_num = 1;
    b.mem.set(DATA + 12, &[1, 0, 0, 0]);
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::E2BIG);
    // The second names no vDEVICE: the first is done.
    c.entry_len = 12;
    c.entry_num = 2;
    viommu_entries(&b, &[(0, 0x99, 1), (0, 0x98, 2)]);
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::EINVAL);
    assert_eq!(b.at::<iommu_hwpt_invalidate>(ARG).entry_num, 1);
    assert_eq!(mock.cache(1), Some(0));
    assert_eq!(mock.cache(2), Some(IOMMU_TEST_DEV_CACHE_DEFAULT));
    // Flags are checked before the cache id.
    viommu_entries(&b, &[(1 << 1, 0x99, MOCK_DEV_CACHE_ID_MAX + 1)]);
    c.entry_num = 1;
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::EOPNOTSUPP);
    viommu_entries(&b, &[(0, 0x99, MOCK_DEV_CACHE_ID_MAX + 1)]);
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::EINVAL);
    c.data_type = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID;
    viommu_entries(&b, &[(0, 0x99, 2)]);
    assert_eq!(b.errno(IOMMU_HWPT_INVALIDATE, &c), Errno::EINVAL);
    c.data_type = ty;
    assert_eq!(b.call(IOMMU_HWPT_INVALIDATE, &c).unwrap().entry_num, 1);
    assert_eq!(mock.cache(2), Some(0));
}
