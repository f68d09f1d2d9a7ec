//! IOMMU_GET_HW_INFO: flags and reserved, then dev_id, then the type asked for; the driver's data
//! is copied up to `data_len`, the rest of the caller's buffer zeroed, and `data_len` answers the
//! driver's full length.

use super::*;

/// The mock's data: `iommu_test_hw_info`, 8 bytes.
const MOCK_LEN: usize = 8;

fn cmd(dev_id: u32, flags: u32, data_len: u32) -> iommu_hw_info {
    iommu_hw_info {
        size: sz::<iommu_hw_info>(),
        flags,
        dev_id,
        data_len,
        data_uptr: DATA,
        ..Default::default()
    }
}

#[test]
fn order_flags_reserved_device_type() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let mut c = cmd(NO_ID, 1 << 1, 8);
    c.data_uptr = UNMAPPED;
    c.in_data_type = 7;
    assert_eq!(
        b.errno(IOMMU_GET_HW_INFO, &c),
        Errno::EOPNOTSUPP,
        "unknown flag"
    );
    c.flags = IOMMU_HW_INFO_FLAG_INPUT_TYPE;
    c.reserved = [0, 0, 1];
    assert_eq!(
        b.errno(IOMMU_GET_HW_INFO, &c),
        Errno::EOPNOTSUPP,
        "reserved"
    );
    c.reserved = [0; 3];
    assert_eq!(
        b.errno(IOMMU_GET_HW_INFO, &c),
        Errno::ENOENT,
        "dev_id before the type"
    );
    c.dev_id = ioas;
    assert_eq!(
        b.errno(IOMMU_GET_HW_INFO, &c),
        Errno::ENOENT,
        "an IOAS is no device"
    );
    c.dev_id = m.dev;
    assert_eq!(
        b.errno(IOMMU_GET_HW_INFO, &c),
        Errno::EOPNOTSUPP,
        "type before the copy"
    );
    c.in_data_type = IOMMU_HW_INFO_TYPE_SELFTEST;
    assert_eq!(b.errno(IOMMU_GET_HW_INFO, &c), Errno::EFAULT);
    // Without the flag the type is not looked at.
    c.flags = 0;
    c.in_data_type = 7;
    c.data_uptr = DATA;
    let r = b.call(IOMMU_GET_HW_INFO, &c).unwrap();
    assert_eq!(r.out_data_type(), IOMMU_HW_INFO_TYPE_SELFTEST);
}

#[test]
fn data_is_truncated_to_data_len_and_data_len_answers_the_full_length() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, MOCK_FLAGS_DEVICE_PASID);
    b.mem.set(DATA, &[0xee; 32]);
    let n = b.nwrites();
    let r = b.call(IOMMU_GET_HW_INFO, &cmd(m.dev, 0, 2)).unwrap();
    assert_eq!(
        b.writes_since(n),
        [(DATA, 2), (ARG, sz::<iommu_hw_info>() as usize)]
    );
    let full = IOMMU_HW_INFO_SELFTEST_REGVAL.to_ne_bytes();
    assert_eq!(
        b.mem.get(DATA, 4),
        [0, 0, 0xee, 0xee],
        "flags (0) cut at 2 bytes"
    );
    assert_eq!(r.data_len as usize, MOCK_LEN);
    assert_eq!(
        r.out_capabilities,
        IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED | IOMMU_HW_CAP_DIRTY_TRACKING
    );
    assert_eq!(r.out_max_pasid_log2, MOCK_PASID_WIDTH as u8);
    // No room at all: nothing written, wherever data_uptr points.
    let mut c = cmd(m.dev, 0, 0);
    c.data_uptr = UNMAPPED;
    assert_eq!(
        b.call(IOMMU_GET_HW_INFO, &c).unwrap().data_len as usize,
        MOCK_LEN
    );
    // The whole struct, then zeros up to data_len; nothing past it.
    let r = b.call(IOMMU_GET_HW_INFO, &cmd(m.dev, 0, 20)).unwrap();
    assert_eq!(r.data_len as usize, MOCK_LEN);
    let got = b.mem.get(DATA, 32);
    assert_eq!(got[..4], [0; 4]);
    assert_eq!(got[4..8], full);
    assert_eq!(got[8..20], [0; 12], "zero-filled");
    assert_eq!(got[20..], [0xee; 12], "past data_len: untouched");
}

#[test]
fn a_zero_fill_that_faults_is_efault() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, 0);
    let end = ARG + FAKE_LEN as u64;
    let mut c = cmd(m.dev, 0, 16);
    c.data_uptr = end - 12;
    assert_eq!(b.errno(IOMMU_GET_HW_INFO, &c), Errno::EFAULT);
    c.data_uptr = end - 16;
    assert!(b.call(IOMMU_GET_HW_INFO, &c).is_ok());
}

#[test]
fn the_answer_covers_the_callers_size_only() {
    let b = Bench::new();
    let ioas = b.ioas();
    let m = b.mock(ioas, MOCK_FLAGS_DEVICE_PASID);
    // The kernel's minimum (32) ends before `out_capabilities`, which is then not written.
    let mut c = cmd(m.dev, 0, 8);
    c.size = 32;
    c.out_capabilities = 0x1234;
    c.out_max_pasid_log2 = 3;
    let n = b.nwrites();
    let r = b.call(IOMMU_GET_HW_INFO, &c).unwrap();
    assert_eq!(b.writes_since(n), [(DATA, 8), (ARG, 32)]);
    assert_eq!(r.data_len as usize, MOCK_LEN);
    assert_eq!(r.out_data_type(), IOMMU_HW_INFO_TYPE_SELFTEST);
    assert_eq!(r.out_max_pasid_log2, MOCK_PASID_WIDTH as u8);
    assert_eq!(r.out_capabilities, 0x1234);
    c.size = 31;
    assert_eq!(b.errno(IOMMU_GET_HW_INFO, &c), Errno::EINVAL);
}
