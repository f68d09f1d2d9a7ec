//! IOMMU_HWPT_ALLOC: reserved, then data_type/data_len agreement, dev_id, pt_id (any object:
//! EINVAL when there is none), then the checks of the pt_id's kind (flags, driver support, the
//! parent), the driver's data, and fault_id last, after the HWPT exists (it is destroyed again).

use super::*;

fn cmd(dev_id: u32, pt_id: u32, flags: u32) -> iommu_hwpt_alloc {
    iommu_hwpt_alloc {
        size: sz::<iommu_hwpt_alloc>(),
        flags,
        dev_id,
        pt_id,
        data_uptr: DATA,
        ..Default::default()
    }
}

fn selftest_data() -> Vec<u8> {
    iommu_hwpt_selftest {
        iotlb: IOMMU_TEST_IOTLB_DEFAULT,
        pagetable_type: 0,
    }
    .as_bytes()
    .to_vec()
}

#[test]
fn header_checks_come_before_the_objects() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let mut c = cmd(NO_ID, NO_ID, !0);
    c.reserved = 1;
    c.data_len = 4;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "reserved first"
    );
    c.reserved = 0;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EINVAL,
        "data_len without data_type, before dev_id"
    );
    c.data_len = 0;
    c.data_type = IOMMU_HWPT_DATA_SELFTEST;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EINVAL,
        "data_type without data_len"
    );
    c.data_type = 0;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::ENOENT,
        "dev_id before pt_id and flags"
    );
    c.dev_id = ioas;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::ENOENT,
        "an IOAS is no device"
    );
    c.dev_id = m.dev;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EINVAL,
        "no pt_id object is EINVAL (not ENOENT), before the flags"
    );
    c.pt_id = ioas;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "unknown flags"
    );
}

#[test]
fn paging_flags_on_an_ioas() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let nodirty = b.mock(ioas, MOCK_FLAGS_DEVICE_NO_DIRTY);
    let (fault, _fault_fd) = b.fault_queue();
    let before = b.ctx.num_objects();
    let mut c = cmd(
        nodirty.dev,
        ioas,
        IOMMU_HWPT_ALLOC_DIRTY_TRACKING | (1 << 7),
    );
    c.fault_id = NO_ID;
    assert_eq!(b.errno(IOMMU_HWPT_ALLOC, &c), Errno::EOPNOTSUPP);
    c.flags = IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_FAULT_ID_VALID;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "dirty tracking the device lacks, before fault_id"
    );
    c.dev_id = m.dev;
    c.flags = IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_FAULT_ID_VALID;
    c.fault_id = fault;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "a nest parent cannot report faults, even to a real queue"
    );
    // Driver data of another type, then unreadable, short, long and non-zero-tailed data.
    c.flags = 0;
    c.data_type = IOMMU_HWPT_DATA_VTD_S1;
    c.data_len = 8;
    c.data_uptr = UNMAPPED;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "type before the read"
    );
    c.data_type = IOMMU_HWPT_DATA_SELFTEST;
    assert_eq!(b.errno(IOMMU_HWPT_ALLOC, &c), Errno::EFAULT);
    c.data_uptr = DATA;
    c.data_len = 2;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EINVAL,
        "shorter than iotlb"
    );
    c.data_len = 12;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EINVAL,
        "longer than the struct"
    );
    b.mem.set(DATA, &[0; 8]);
    b.mem.set(DATA + 4, &9u32.to_ne_bytes());
    c.data_len = 8;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "an unknown page table type"
    );
    assert_eq!(b.ctx.num_objects(), before, "no failure left an object");
}

#[test]
fn fault_id_is_checked_last_and_a_failure_leaves_no_hwpt() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let before = b.ctx.num_objects();
    let mut c = cmd(m.dev, ioas, IOMMU_HWPT_FAULT_ID_VALID);
    c.fault_id = NO_ID;
    assert_eq!(b.errno(IOMMU_HWPT_ALLOC, &c), Errno::ENOENT);
    c.fault_id = ioas;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::ENOENT,
        "an IOAS is no fault queue"
    );
    assert_eq!(
        b.ctx.num_objects(),
        before,
        "the HWPT made first went again"
    );
    assert_eq!(
        b.at::<iommu_hwpt_alloc>(ARG).out_hwpt_id,
        0,
        "no id written back"
    );
    // Without the flag fault_id is not looked at.
    c.flags = 0;
    assert!(b.call(IOMMU_HWPT_ALLOC, &c).is_ok());
    let (fault, _fault_fd) = b.fault_queue();
    c.flags = IOMMU_HWPT_FAULT_ID_VALID;
    c.fault_id = fault;
    let id = b.call(IOMMU_HWPT_ALLOC, &c).unwrap().out_hwpt_id;
    assert!(b.ctx.get_hwpt_paging(id).unwrap().fault.queue().is_some());
    assert_eq!(
        b.ctx.destroy(fault),
        Err(Errno::EBUSY),
        "the HWPT uses the queue"
    );
}

#[test]
fn nested_on_a_paging_hwpt() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let data = selftest_data();
    let plain = b.hwpt_alloc(m.dev, ioas, 0, 0, &[]).unwrap();
    let parent = b.nest_parent(m.dev, ioas);
    b.mem.set(DATA, &data);
    let mut c = cmd(m.dev, m.hwpt, IOMMU_HWPT_ALLOC_DIRTY_TRACKING);
    c.data_type = IOMMU_HWPT_DATA_SELFTEST;
    c.data_len = data.len() as u32;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "flags before the parent's kind"
    );
    c.flags = 0;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EINVAL,
        "an automatic parent"
    );
    c.pt_id = plain;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EINVAL,
        "not a nest parent"
    );
    c.pt_id = parent;
    c.data_type = IOMMU_HWPT_DATA_VTD_S1;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "the mock's type only"
    );
    c.data_type = 0;
    c.data_len = 0;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "nesting needs data"
    );
    c.data_type = IOMMU_HWPT_DATA_SELFTEST;
    c.data_len = data.len() as u32;
    c.flags = IOMMU_HWPT_ALLOC_PASID;
    let nested = b.call(IOMMU_HWPT_ALLOC, &c).unwrap().out_hwpt_id;
    assert!(b.ctx.get_hwpt_nested(nested).is_ok());
    // Neither a nested HWPT nor any other object is a pt_id.
    for pt in [nested, m.dev, m.stdev, b.fault_queue().0] {
        c.pt_id = pt;
        assert_eq!(b.errno(IOMMU_HWPT_ALLOC, &c), Errno::EINVAL, "pt_id {pt}");
    }
}

#[test]
fn nested_on_a_viommu() {
    let b = Bench::new();
    let ioas = b.ioas();
    let (viommu, m, _) = b.viommu(ioas);
    let data = selftest_data();
    b.mem.set(DATA, &data);
    let mut c = cmd(m.dev, viommu, IOMMU_HWPT_ALLOC_NEST_PARENT);
    c.data_type = IOMMU_HWPT_DATA_VTD_S1;
    c.data_len = data.len() as u32;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "flags before data"
    );
    c.flags = IOMMU_HWPT_ALLOC_PASID;
    assert_eq!(
        b.errno(IOMMU_HWPT_ALLOC, &c),
        Errno::EOPNOTSUPP,
        "the mock's type only"
    );
    c.data_type = IOMMU_HWPT_DATA_SELFTEST;
    c.flags |= IOMMU_HWPT_FAULT_ID_VALID;
    c.fault_id = NO_ID;
    assert_eq!(b.errno(IOMMU_HWPT_ALLOC, &c), Errno::ENOENT);
    let (fault, _fault_fd) = b.fault_queue();
    c.fault_id = fault;
    let id = b.call(IOMMU_HWPT_ALLOC, &c).unwrap().out_hwpt_id;
    assert_eq!(b.ctx.get(id).unwrap().type_name(), "hwpt_nested");
}

#[test]
fn the_answer_covers_the_callers_size_only() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    // The smallest size the kernel takes ends at `reserved`, past `out_hwpt_id`.
    let mut c = cmd(m.dev, ioas, 0);
    c.size = 24;
    c.data_type = 0x5a5a_5a5a;
    let n = b.nwrites();
    let r = b.call(IOMMU_HWPT_ALLOC, &c).unwrap();
    assert_eq!(b.writes_since(n), [(ARG, 24)]);
    assert!(b.ctx.get_hwpt_paging(r.out_hwpt_id).is_ok());
    assert_eq!(
        r.data_type, 0x5a5a_5a5a,
        "past the caller's size: untouched, not read"
    );
    c.size = 23;
    assert_eq!(b.errno(IOMMU_HWPT_ALLOC, &c), Errno::EINVAL);
}
