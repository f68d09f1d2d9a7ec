//! IOMMU_VIOMMU_ALLOC (flags and type, dev_id, the driver's types, the nest parent, the data),
//! IOMMU_VDEVICE_ALLOC (viommu_id, dev_id, one vDEVICE per device and per virtual ID) and
//! IOMMU_HW_QUEUE_ALLOC (flags and type, length, overflow, viommu_id, the driver's types, the
//! pin of the queue's memory, then the driver's index rules).

use super::*;

fn viommu_cmd(dev_id: u32, hwpt_id: u32) -> iommu_viommu_alloc {
    iommu_viommu_alloc {
        size: sz::<iommu_viommu_alloc>(),
        r#type: IOMMU_VIOMMU_TYPE_SELFTEST,
        dev_id,
        hwpt_id,
        data_uptr: DATA,
        ..Default::default()
    }
}

#[test]
fn viommu_alloc_order() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let parent = b.nest_parent(m.dev, ioas);
    let cmd = IOMMU_VIOMMU_ALLOC;
    let mut c = viommu_cmd(NO_ID, NO_ID);
    c.flags = 1;
    assert_eq!(b.errno(cmd, &c), Errno::EOPNOTSUPP, "flags first");
    c.flags = 0;
    c.r#type = IOMMU_VIOMMU_TYPE_DEFAULT;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EOPNOTSUPP,
        "the default type, before dev_id"
    );
    c.r#type = IOMMU_VIOMMU_TYPE_ARM_SMMUV3;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::ENOENT,
        "dev_id before the driver's types"
    );
    c.dev_id = m.dev;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EOPNOTSUPP,
        "a type the mock lacks, before hwpt_id"
    );
    c.r#type = IOMMU_VIOMMU_TYPE_SELFTEST;
    assert_eq!(b.errno(cmd, &c), Errno::ENOENT);
    c.hwpt_id = ioas;
    assert_eq!(b.errno(cmd, &c), Errno::ENOENT, "paging HWPTs only");
    c.hwpt_id = m.hwpt;
    c.data_len = 1;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EINVAL,
        "not a nest parent, before the data"
    );
    c.hwpt_id = parent;
    assert_eq!(b.errno(cmd, &c), Errno::EINVAL, "data shorter than in_data");
    c.data_len = sz::<iommu_viommu_selftest>() + 1;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EINVAL,
        "data longer than the struct"
    );
    c.data_len = 4;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EINVAL,
        "data up to in_data only: the mock copies up to out_data"
    );
    c.data_len = 8;
    c.data_uptr = UNMAPPED;
    assert_eq!(b.errno(cmd, &c), Errno::EFAULT);
    c.data_uptr = DATA;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EOPNOTSUPP,
        "the mock's data wants an mmap of the iommufd file"
    );
    assert_eq!(b.ctx.objects_of_type("viommu").len(), 0);
    c.data_len = 0;
    c.data_uptr = UNMAPPED;
    let n = b.nwrites();
    let r = b.call(cmd, &c).unwrap();
    assert_eq!(
        b.writes_since(n),
        [(ARG, sz::<iommu_viommu_alloc>() as usize)]
    );
    assert_eq!(b.ctx.get(r.out_viommu_id).unwrap().type_name(), "viommu");
}

#[test]
fn viommu_alloc_answers_within_the_minimum_size() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let parent = b.nest_parent(m.dev, ioas);
    // The minimum ends at out_viommu_id: data_len and data_uptr are zero-extended.
    let mut c = viommu_cmd(m.dev, parent);
    c.size = 24;
    c.data_len = 4;
    let r = b.call(IOMMU_VIOMMU_ALLOC, &c).unwrap();
    assert!(b.ctx.get(r.out_viommu_id).is_ok());
    assert_eq!(r.data_len, 4, "past the caller's size: untouched");
    c.size = 23;
    assert_eq!(b.errno(IOMMU_VIOMMU_ALLOC, &c), Errno::EINVAL);
}

fn vdevice_cmd(viommu_id: u32, dev_id: u32, virt_id: u64) -> iommu_vdevice_alloc {
    iommu_vdevice_alloc {
        size: sz::<iommu_vdevice_alloc>(),
        viommu_id,
        dev_id,
        out_vdevice_id: 0,
        virt_id,
    }
}

#[test]
fn vdevice_alloc_order_and_uniqueness() {
    let b = Bench::new();
    let ioas = b.ioas();
    let (viommu, m, parent) = b.viommu(ioas);
    let other = b.mock(ioas, 0);
    let cmd = IOMMU_VDEVICE_ALLOC;
    assert_eq!(b.errno(cmd, &vdevice_cmd(NO_ID, NO_ID, 1)), Errno::ENOENT);
    assert_eq!(
        b.errno(cmd, &vdevice_cmd(parent, m.dev, 1)),
        Errno::ENOENT,
        "a nest parent is no vIOMMU"
    );
    assert_eq!(
        b.errno(cmd, &vdevice_cmd(viommu, viommu, 1)),
        Errno::ENOENT,
        "a vIOMMU is no device"
    );
    let n = b.nwrites();
    let r = b.call(cmd, &vdevice_cmd(viommu, m.dev, 7)).unwrap();
    assert_eq!(
        b.writes_since(n),
        [(ARG, sz::<iommu_vdevice_alloc>() as usize)]
    );
    assert_eq!(b.ctx.get(r.out_vdevice_id).unwrap().type_name(), "vdevice");
    assert_eq!(
        b.errno(cmd, &vdevice_cmd(viommu, m.dev, 8)),
        Errno::EEXIST,
        "one per device"
    );
    assert_eq!(
        b.errno(cmd, &vdevice_cmd(viommu, other.dev, 7)),
        Errno::EEXIST,
        "one per virtual ID"
    );
    let before = b.ctx.num_objects();
    assert!(b.call(cmd, &vdevice_cmd(viommu, other.dev, 8)).is_ok());
    assert_eq!(b.ctx.num_objects(), before + 1);
}

fn queue_cmd(viommu_id: u32, index: u32, iova: u64, length: u64) -> iommu_hw_queue_alloc {
    iommu_hw_queue_alloc {
        size: sz::<iommu_hw_queue_alloc>(),
        flags: 0,
        viommu_id,
        r#type: IOMMU_HW_QUEUE_TYPE_SELFTEST,
        index,
        out_hw_queue_id: 0,
        nesting_parent_iova: iova,
        length,
    }
}

#[test]
fn hw_queue_alloc_order() {
    let b = Bench::new();
    let ioas = b.ioas();
    let (viommu, m, _) = b.viommu(ioas);
    b.map(ioas, 0, 2 * 4096);
    let cmd = IOMMU_HW_QUEUE_ALLOC;
    let mut c = queue_cmd(NO_ID, IOMMU_TEST_HW_QUEUE_MAX, u64::MAX, 0);
    c.flags = 1;
    assert_eq!(b.errno(cmd, &c), Errno::EOPNOTSUPP, "flags first");
    c.flags = 0;
    c.r#type = IOMMU_HW_QUEUE_TYPE_DEFAULT;
    assert_eq!(b.errno(cmd, &c), Errno::EOPNOTSUPP, "the default type");
    c.r#type = IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EINVAL,
        "length 0, before the vIOMMU"
    );
    c.length = 2;
    assert_eq!(b.errno(cmd, &c), Errno::EOVERFLOW);
    c.nesting_parent_iova = UNMAPPED;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::ENOENT,
        "viommu_id before the type's support"
    );
    c.viommu_id = m.dev;
    assert_eq!(b.errno(cmd, &c), Errno::ENOENT, "a device is no vIOMMU");
    c.viommu_id = viommu;
    assert_eq!(b.errno(cmd, &c), Errno::EOPNOTSUPP, "a type the mock lacks");
    c.r#type = IOMMU_HW_QUEUE_TYPE_SELFTEST;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::ENOENT,
        "the memory is pinned before the index rules"
    );
    c.nesting_parent_iova = IOVA + 16;
    c.length = 256;
    assert_eq!(
        b.errno(cmd, &c),
        Errno::EINVAL,
        "index past the mock's queues"
    );
    c.index = 1;
    assert_eq!(b.errno(cmd, &c), Errno::EIO, "queue 1 needs queue 0");
    assert_eq!(b.ctx.objects_of_type("hw_queue").len(), 0);
    c.index = 0;
    let n = b.nwrites();
    let q0 = b.call(cmd, &c).unwrap().out_hw_queue_id;
    assert_eq!(
        b.writes_since(n),
        [(ARG, sz::<iommu_hw_queue_alloc>() as usize)]
    );
    assert_eq!(b.ctx.get(q0).unwrap().type_name(), "hw_queue");
    assert_eq!(b.errno(cmd, &c), Errno::EEXIST);
    c.index = 1;
    c.nesting_parent_iova = IOVA + 4096;
    let q1 = b.call(cmd, &c).unwrap().out_hw_queue_id;
    // Each queue's internal access holds the ID after the queue's (Linux 7.2 allocates it second).
    assert_eq!(q1, q0 + 2, "queue 0's access took {}", q0 + 1);
    assert_eq!(b.ctx.get(q0 + 1).unwrap().type_name(), "access");
    assert_eq!(
        b.ctx.destroy(q0 + 1),
        Err(Errno::EBUSY),
        "the queue holds its access"
    );
    assert_eq!(
        b.ctx.destroy(q0),
        Err(Errno::EBUSY),
        "queue 1 depends on it"
    );
    assert_eq!(b.ctx.destroy(q1), Ok(()));
    assert_eq!(
        b.ctx.get(q1 + 1).err(),
        Some(Errno::ENOENT),
        "its access went too"
    );
    assert_eq!(b.ctx.destroy(q0), Ok(()));
    assert_eq!(b.ctx.objects_of_type("access").len(), 0);
}
