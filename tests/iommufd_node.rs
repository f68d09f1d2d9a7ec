//! The core through the real path: a daemon process in FUSE mode, this test process as the client
//! doing open()/ioctl() on the node. Every errno is the one Linux 7.2's iommufd returns.

mod support;

use std::os::unix::fs::FileTypeExt;
use support::{ioas_alloc, ioas_unmap, ioctl, ioctl_raw, DaemonProcess};
use uiommufd_uapi::iommufd::*;

const EINVAL: i32 = libc::EINVAL;
const ENOENT: i32 = libc::ENOENT;

fn map(f: &std::fs::File, ioas: u32, buf: u64, len: u64, iova: Option<u64>) -> Result<u64, i32> {
    let mut cmd = iommu_ioas_map {
        size: std::mem::size_of::<iommu_ioas_map>() as u32,
        flags: IOMMU_IOAS_MAP_READABLE
            | IOMMU_IOAS_MAP_WRITEABLE
            | if iova.is_some() {
                IOMMU_IOAS_MAP_FIXED_IOVA
            } else {
                0
            },
        ioas_id: ioas,
        user_va: buf,
        length: len,
        iova: iova.unwrap_or(0),
        ..Default::default()
    };
    ioctl(f, IOMMU_IOAS_MAP, &mut cmd).map(|_| cmd.iova)
}

fn buffer(len: usize) -> Vec<u8> {
    vec![0xa5; len]
}

#[test]
fn ioas_lifecycle_through_the_node() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    assert_eq!(ioas, 1, "the first object gets ID 1");
    let ioas2 = ioas_alloc(&f);
    assert_eq!(ioas2, 2);

    let buf = buffer(64 * 1024);
    let base = buf.as_ptr() as u64;
    // Automatic IOVA: page aligned, never 0.
    let iova = map(&f, ioas, base, 16384, None).unwrap();
    assert_ne!(iova, 0);
    assert_eq!(iova % 4096, base % 4096);
    // Fixed IOVA; overlapping it is EEXIST.
    assert_eq!(map(&f, ioas, base, 8192, Some(1 << 30)), Ok(1 << 30));
    assert_eq!(
        map(&f, ioas, base, 4096, Some((1 << 30) + 4096)),
        Err(libc::EEXIST)
    );
    // Unmapping part of an area is refused; a superset unmaps and reports the bytes.
    assert_eq!(ioas_unmap(&f, ioas, 1 << 30, 4096), Err(ENOENT));
    assert_eq!(ioas_unmap(&f, ioas, (1 << 30) - 4096, 4 * 4096), Ok(8192));
    assert_eq!(
        ioas_unmap(&f, ioas, 1 << 30, 8192),
        Err(ENOENT),
        "nothing left there"
    );

    // IOAS_COPY shares the source area into another IOAS.
    let mut copy = iommu_ioas_copy {
        size: std::mem::size_of::<iommu_ioas_copy>() as u32,
        flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
        dst_ioas_id: ioas2,
        src_ioas_id: ioas,
        length: 16384,
        dst_iova: 1 << 32,
        src_iova: iova,
    };
    ioctl(&f, IOMMU_IOAS_COPY, &mut copy).unwrap();
    copy.src_iova = iova + 4096; // runs past the end of the source area
    copy.dst_iova = 2 << 32;
    assert_eq!(ioctl(&f, IOMMU_IOAS_COPY, &mut copy), Err(ENOENT));

    // Unmap all: iova 0, length U64_MAX.
    assert_eq!(ioas_unmap(&f, ioas, 0, u64::MAX), Ok(16384));
    assert_eq!(ioas_unmap(&f, ioas2, 0, u64::MAX), Ok(16384));
    assert_eq!(
        ioas_unmap(&f, ioas2, 0, u64::MAX),
        Ok(0),
        "unmap all of nothing succeeds"
    );

    // Destroy: an ID of a destroyed object is ENOENT, IDs are reused smallest-first.
    let mut destroy = iommu_destroy { size: 8, id: ioas };
    ioctl(&f, IOMMU_DESTROY, &mut destroy).unwrap();
    assert_eq!(ioctl(&f, IOMMU_DESTROY, &mut destroy), Err(ENOENT));
    assert_eq!(ioas_alloc(&f), 1);
    drop(f);
    let s = d.wait_idle();
    assert_eq!(s["objects"], 0, "{s}");
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn iova_ranges_and_allow_iovas() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let mut ranges = [iommu_iova_range::default(); 4];
    let mut cmd = iommu_ioas_iova_ranges {
        size: std::mem::size_of::<iommu_ioas_iova_ranges>() as u32,
        ioas_id: ioas,
        num_iovas: 0,
        allowed_iovas: ranges.as_mut_ptr() as u64,
        ..Default::default()
    };
    // num_iovas 0: EMSGSIZE, with the count filled in.
    assert_eq!(
        ioctl(&f, IOMMU_IOAS_IOVA_RANGES, &mut cmd),
        Err(libc::EMSGSIZE)
    );
    assert_eq!(cmd.num_iovas, 1);
    cmd.num_iovas = 4;
    ioctl(&f, IOMMU_IOAS_IOVA_RANGES, &mut cmd).unwrap();
    assert_eq!(cmd.num_iovas, 1);
    assert_eq!((ranges[0].start, ranges[0].last), (0, u64::MAX));
    assert_eq!(cmd.out_iova_alignment, 1);

    // Allowed ranges steer automatic allocation.
    let allowed = [iommu_iova_range {
        start: 0x1000_0000,
        last: 0x1fff_ffff,
    }];
    let mut allow = iommu_ioas_allow_iovas {
        size: std::mem::size_of::<iommu_ioas_allow_iovas>() as u32,
        ioas_id: ioas,
        num_iovas: 1,
        reserved: 0,
        allowed_iovas: allowed.as_ptr() as u64,
    };
    ioctl(&f, IOMMU_IOAS_ALLOW_IOVAS, &mut allow).unwrap();
    let buf = buffer(8192);
    let iova = map(&f, ioas, buf.as_ptr() as u64, 4096, None).unwrap();
    assert!((0x1000_0000..=0x1fff_ffff).contains(&iova), "{iova:#x}");
    // A fixed IOVA outside the allowed ranges is still fine.
    assert_eq!(
        map(&f, ioas, buf.as_ptr() as u64, 4096, Some(0x4000_0000)),
        Ok(0x4000_0000)
    );
    // start >= last is EINVAL.
    let bad = [iommu_iova_range { start: 5, last: 5 }];
    allow.allowed_iovas = bad.as_ptr() as u64;
    assert_eq!(ioctl(&f, IOMMU_IOAS_ALLOW_IOVAS, &mut allow), Err(EINVAL));
}

#[test]
fn bad_input_matrix() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let buf = buffer(8192);
    let good = iommu_ioas_map {
        size: std::mem::size_of::<iommu_ioas_map>() as u32,
        flags: IOMMU_IOAS_MAP_READABLE,
        ioas_id: ioas,
        user_va: buf.as_ptr() as u64,
        length: 4096,
        ..Default::default()
    };
    // size below the minimum: EINVAL.
    let mut c = good;
    c.size = 8;
    assert_eq!(ioctl(&f, IOMMU_IOAS_MAP, &mut c), Err(EINVAL));
    // Trailing bytes past the known struct must be zero: E2BIG, zeros accepted.
    #[repr(C)]
    struct Bigger {
        cmd: iommu_ioas_map,
        tail: u64,
    }
    let mut big = Bigger { cmd: good, tail: 1 };
    big.cmd.size = std::mem::size_of::<Bigger>() as u32;
    assert_eq!(ioctl(&f, IOMMU_IOAS_MAP, &mut big), Err(libc::E2BIG));
    big.tail = 0;
    ioctl(&f, IOMMU_IOAS_MAP, &mut big).unwrap();
    // Unknown flags and reserved != 0: EOPNOTSUPP.
    let mut c = good;
    c.flags |= 1 << 10;
    assert_eq!(ioctl(&f, IOMMU_IOAS_MAP, &mut c), Err(libc::EOPNOTSUPP));
    let mut c = good;
    c.reserved = 1;
    assert_eq!(ioctl(&f, IOMMU_IOAS_MAP, &mut c), Err(libc::EOPNOTSUPP));
    // Neither readable nor writeable: EINVAL.
    let mut c = good;
    c.flags = 0;
    assert_eq!(ioctl(&f, IOMMU_IOAS_MAP, &mut c), Err(EINVAL));
    // Unknown ID, and an ID of the wrong type (there is only an IOAS, so use a free one): ENOENT.
    let mut c = good;
    c.ioas_id = 77;
    assert_eq!(ioctl(&f, IOMMU_IOAS_MAP, &mut c), Err(ENOENT));
    // Overflowing iova/length: EOVERFLOW.
    let mut c = good;
    c.flags |= IOMMU_IOAS_MAP_FIXED_IOVA;
    c.iova = u64::MAX - 4095;
    c.length = 8192;
    assert_eq!(ioctl(&f, IOMMU_IOAS_MAP, &mut c), Err(libc::EOVERFLOW));
    let mut c = good;
    c.length = u64::MAX;
    assert_eq!(ioctl(&f, IOMMU_IOAS_MAP, &mut c), Err(libc::EOVERFLOW));
    // A bad argument pointer: EFAULT.
    assert_eq!(ioctl_raw(&f, IOMMU_IOAS_MAP, 8), Err(libc::EFAULT));
    // A hole in the table and a number past it: ENOTTY.
    assert_eq!(
        ioctl_raw(&f, io(IOMMUFD_TYPE, 0x9f), buf.as_ptr() as u64),
        Err(libc::ENOTTY)
    );
    assert_eq!(
        ioctl_raw(&f, io(IOMMUFD_TYPE, 0xf0), buf.as_ptr() as u64),
        Err(libc::ENOTTY)
    );
    // A bare IOAS accepts an unmapped user address (nothing is pinned yet), as the kernel does.
    let mut c = good;
    c.user_va = 0x10_0000;
    ioctl(&f, IOMMU_IOAS_MAP, &mut c).unwrap();
    // IOMMU_OPTION: huge pages on an IOAS, and the rlimit mode needs no objects.
    let mut opt = iommu_option {
        size: std::mem::size_of::<iommu_option>() as u32,
        option_id: IOMMU_OPTION_HUGE_PAGES,
        op: IOMMU_OPTION_OP_GET,
        object_id: ioas,
        ..Default::default()
    };
    ioctl(&f, IOMMU_OPTION, &mut opt).unwrap();
    assert_eq!(opt.val64, 1);
    opt.option_id = IOMMU_OPTION_RLIMIT_MODE;
    opt.op = IOMMU_OPTION_OP_SET;
    opt.object_id = 0;
    opt.val64 = 1;
    // The capability is checked first (this sandbox's root lacks CAP_SYS_RESOURCE), then "no objects".
    let expected = if has_cap_sys_resource() {
        libc::EBUSY
    } else {
        libc::EPERM
    };
    assert_eq!(ioctl(&f, IOMMU_OPTION, &mut opt), Err(expected));
    opt.object_id = 3;
    assert_eq!(ioctl(&f, IOMMU_OPTION, &mut opt), Err(libc::EOPNOTSUPP));
}

fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    caps & (1 << 24) != 0
}

#[test]
fn contexts_are_isolated_and_cleaned_on_release() {
    let d = DaemonProcess::start(&[]);
    let a = d.open_iommu();
    let b = d.open_iommu();
    let ia = ioas_alloc(&a);
    let buf = buffer(8192);
    map(&a, ia, buf.as_ptr() as u64, 4096, Some(1 << 24)).unwrap();
    // b has no object 1.
    assert_eq!(
        map(&b, ia, buf.as_ptr() as u64, 4096, Some(1 << 24)),
        Err(ENOENT)
    );
    assert_eq!(ioas_alloc(&b), 1, "IDs are per context");
    let s = d.status();
    assert_eq!(s["contexts"], 2, "{s}");
    assert_eq!(s["objects"], 2, "{s}");
    drop(a);
    drop(b);
    let s = d.wait_idle();
    assert_eq!(
        (s["contexts"].clone(), s["objects"].clone()),
        (0.into(), 0.into()),
        "{s}"
    );
}

#[test]
fn sigkilled_client_leaves_nothing_behind() {
    let d = DaemonProcess::start(&[]);
    // The child opens the node, allocates and maps, then waits to be killed.
    let node = d.node("iommu");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "client_role_hold_objects",
            "--nocapture",
            "--ignored",
        ])
        .env("UIOMMUFD_NODE", &node)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "client ended early");
        if line.contains("READY") {
            break;
        }
    }
    let s = d.status();
    assert!(s["objects"].as_u64().unwrap() >= 2, "{s}");
    child.kill().unwrap();
    child.wait().unwrap();
    let s = d.wait_idle();
    assert_eq!(s["objects"], 0, "{s}");
    assert_eq!(s["pinned_pages"], 0, "{s}");
    assert_eq!(s["contexts"], 0, "{s}");
}

/// Run only as the child of `sigkilled_client_leaves_nothing_behind`.
#[test]
#[ignore = "a client role: run by sigkilled_client_leaves_nothing_behind"]
fn client_role_hold_objects() {
    let node = std::env::var("UIOMMUFD_NODE").expect("runs only as the child of its test");
    let f = support::open_node(std::path::Path::new(&node));
    let a = ioas_alloc(&f);
    let _b = ioas_alloc(&f);
    let buf = buffer(1 << 20);
    map(&f, a, buf.as_ptr() as u64, 1 << 20, None).unwrap();
    println!("READY");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn concurrent_ioctls_on_one_context() {
    let d = DaemonProcess::start(&[]);
    let f = std::sync::Arc::new(d.open_iommu());
    let ioas = ioas_alloc(&f);
    let buf = std::sync::Arc::new(buffer(1 << 16));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (f, buf) = (f.clone(), buf.clone());
            std::thread::spawn(move || {
                let base = buf.as_ptr() as u64;
                for i in 0..50u64 {
                    // Each thread owns its own IOVA window: no result depends on the others.
                    let iova = (1 << 32) + (t << 28) + i * 0x10000;
                    assert_eq!(map(&f, ioas, base, 8192, Some(iova)), Ok(iova));
                    let auto = map(&f, ioas, base, 4096, None).unwrap();
                    assert_eq!(ioas_unmap(&f, ioas, iova, 8192), Ok(8192));
                    assert_eq!(ioas_unmap(&f, ioas, auto, 4096), Ok(4096));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        ioas_unmap(&f, ioas, 0, u64::MAX),
        Ok(0),
        "every mapping was undone"
    );
}

/// The daemon's FUSE session readers each read and answer on a clone of the session's fd
/// (FUSE_DEV_IOC_CLONE, as libfuse's multi-threaded loop): with the session's own fd the daemon
/// holds more /dev/fuse files than one per session. (Over io_uring the rings serve instead.)
#[test]
fn session_readers_answer_on_clones_of_the_fuse_fd() {
    let d = DaemonProcess::start(&["--io-uring", "off"]);
    let f = d.open_iommu();
    ioas_alloc(&f);
    let dev_fuse = std::fs::metadata("/dev/fuse").unwrap();
    let clones = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .filter(|m| {
            use std::os::unix::fs::MetadataExt;
            m.rdev() == dev_fuse.rdev() && m.file_type().is_char_device()
        })
        .count();
    assert!(
        clones > 2,
        "/dev/fuse files open in the daemon: {clones} (the session's and one per reader)"
    );
}

/// A mock domain on an IOAS (the selftest's MOCK_DOMAIN op): returns (stdev, hwpt, idev) IDs.
fn mock_domain(f: &std::fs::File, ioas: u32) -> (u32, u32, u32) {
    use uiommufd_uapi::selftest::*;
    let mut cmd = iommu_test_cmd {
        size: std::mem::size_of::<iommu_test_cmd>() as u32,
        op: IOMMU_TEST_OP_MOCK_DOMAIN,
        id: ioas,
        ..Default::default()
    };
    ioctl(f, IOMMU_TEST_CMD, &mut cmd).expect("MOCK_DOMAIN");
    let out: iommu_test_cmd_mock_domain = cmd.payload().unwrap();
    (out.out_stdev_id, out.out_hwpt_id, out.out_idev_id)
}

#[test]
fn wrong_type_users_and_pins_with_a_domain() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let (_stdev, hwpt, idev) = mock_domain(&f, ioas);
    assert!(hwpt != ioas && idev != ioas);
    let buf = buffer(1 << 16);
    let base = (buf.as_ptr() as u64 + 4095) & !4095;
    // An ID of another type where an IOAS is expected: ENOENT.
    assert_eq!(map(&f, hwpt, base, 4096, None), Err(ENOENT));
    assert_eq!(map(&f, idev, base, 4096, None), Err(ENOENT));
    // The IOAS is in use by the domain's HWPT: EBUSY.
    let mut destroy = iommu_destroy { size: 8, id: ioas };
    assert_eq!(ioctl(&f, IOMMU_DESTROY, &mut destroy), Err(libc::EBUSY));
    // With a domain attached, mapping pins: the mock domain's aperture starts at 16 MiB, so a
    // fixed IOVA below it is reserved (EINVAL), and an unmapped user address is EFAULT.
    assert_eq!(map(&f, ioas, base, 4096, Some(0x1000)), Err(EINVAL));
    assert_eq!(
        map(&f, ioas, 0x10_0000, 4096, Some(1 << 24)),
        Err(libc::EFAULT)
    );
    let iova = map(&f, ioas, base, 8192, Some(1 << 24)).unwrap();
    let s = d.status();
    assert_eq!(s["pinned_pages"], 2, "{s}");
    assert_eq!(ioas_unmap(&f, ioas, iova, 8192), Ok(8192));
    let s = d.status();
    assert_eq!(s["pinned_pages"], 0, "{s}");
    drop(f);
    let s = d.wait_idle();
    assert_eq!(
        (s["objects"].clone(), s["pinned_pages"].clone()),
        (0.into(), 0.into()),
        "{s}"
    );
}
