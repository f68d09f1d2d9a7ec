//! Selftest access objects behind fds, through the real node: this test process does by hand what
//! `uiommufd launch` does for an unmodified client (open the node again, UIOMMUFD_HANDLE_BIND
//! naming its iommufd fd) and then uses the access fd number as the kernel's selftest does.

mod support;

use support::access_rw;

use std::fs::File;
use std::os::fd::AsRawFd;
use support::{ioas_alloc, ioas_map_fixed, ioctl, ioctl_raw, test_cmd, AnonPages, DaemonProcess};
use uiommufd::dispatch::private_abi::*;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;

const PAGE: u64 = 4096;
const IOVA: u64 = 0x10_0000;

fn bind_raw(handle: &File, req: &mut uiommufd_handle_bind) -> Result<u32, i32> {
    ioctl(handle, UIOMMUFD_HANDLE_BIND, req).map(|_| req.out_object_id)
}

fn bind(handle: &File, iommufd: &File, ioas: u32, flags: u32) -> Result<u32, i32> {
    bind_raw(
        handle,
        &mut uiommufd_handle_bind {
            size: std::mem::size_of::<uiommufd_handle_bind>() as u32,
            kind: UIOMMUFD_HANDLE_TEST_ACCESS,
            iommufd: iommufd.as_raw_fd(),
            arg0: ioas,
            arg1: flags,
            ..Default::default()
        },
    )
}

fn destroy(f: &File, id: u32) -> Result<i32, i32> {
    let mut cmd = iommu_destroy {
        size: std::mem::size_of::<iommu_destroy>() as u32,
        id,
    };
    ioctl(f, IOMMU_DESTROY, &mut cmd)
}

fn access_pages(f: &File, access_fd: i32, iova: u64, length: u64, uptr: u64) -> Result<u32, i32> {
    let p = iommu_test_cmd_access_pages {
        flags: MOCK_FLAGS_ACCESS_WRITE,
        iova,
        length,
        uptr,
        ..Default::default()
    };
    let cmd = test_cmd(f, IOMMU_TEST_OP_ACCESS_PAGES, access_fd as u32, &p)?;
    Ok(cmd
        .payload::<iommu_test_cmd_access_pages>()
        .unwrap()
        .out_access_pages_id)
}

fn destroy_pages(f: &File, access: &File, item: u32) -> Result<(), i32> {
    let p = iommu_test_cmd_destroy_access_pages {
        access_pages_id: item,
    };
    test_cmd(
        f,
        IOMMU_TEST_OP_DESTROY_ACCESS_PAGES,
        access.as_raw_fd() as u32,
        &p,
    )
    .map(|_| ())
}

/// `pages` pages of anonymous memory filled with a pattern.
fn patterned(pages: usize) -> AnonPages {
    let buf = AnonPages::new(pages);
    let pattern: Vec<u8> = (0..pages * PAGE as usize)
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    buf.fill(0, &pattern);
    buf
}

#[test]
fn access_fd_pins_copies_and_goes_with_close() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let buf = patterned(4);
    ioas_map_fixed(&f, ioas, buf.addr(), 4 * PAGE, IOVA).unwrap();

    let h = d.open_iommu();
    let access_id = bind(&h, &f, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES).unwrap();
    assert_eq!(access_id, ioas + 1, "the access takes the next object ID");
    assert_eq!(
        destroy(&f, access_id),
        Err(libc::EBUSY),
        "the fd's owner holds the access"
    );
    assert_eq!(
        ioctl_raw(&h, IOMMU_IOAS_ALLOC, 0),
        Err(libc::ENOTTY),
        "an access fd takes no ioctls"
    );

    // Reads and writes through the access see the caller's buffer.
    let mut got = vec![0u8; 100];
    access_rw(&f, &h, IOVA + 10, &mut got, false).unwrap();
    assert_eq!(got, buf.bytes()[10..110]);
    let mut new = vec![0x5au8; 64];
    access_rw(&f, &h, IOVA + PAGE - 32, &mut new, true).unwrap();
    assert!(buf.bytes()[PAGE as usize - 32..PAGE as usize + 32]
        .iter()
        .all(|&b| b == 0x5a));

    // Pinning checks the pages against the caller's own mapping of uptr.
    let item = access_pages(&f, h.as_raw_fd(), IOVA, 2 * PAGE, buf.addr()).unwrap();
    assert_eq!(item, 0);
    assert!(d.status()["pinned_pages"].as_u64().unwrap() >= 2);
    assert_eq!(
        access_pages(&f, h.as_raw_fd(), IOVA, 2 * PAGE, buf.addr() + 2 * PAGE),
        Err(libc::EBADE)
    );
    destroy_pages(&f, &h, item).unwrap();
    assert_eq!(destroy_pages(&f, &h, item), Err(libc::ENOENT));

    // An unmap over a pinned item makes the access drop it.
    let item = access_pages(&f, h.as_raw_fd(), IOVA + PAGE, PAGE, buf.addr() + PAGE).unwrap();
    assert_eq!(item, 1, "ids count successful pins only");
    let mut unmap = iommu_ioas_unmap {
        size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
        ioas_id: ioas,
        iova: IOVA,
        length: 4 * PAGE,
    };
    ioctl(&f, IOMMU_IOAS_UNMAP, &mut unmap).unwrap();
    assert_eq!(unmap.length, 4 * PAGE);
    assert_eq!(destroy_pages(&f, &h, item), Err(libc::ENOENT));
    assert_eq!(access_rw(&f, &h, IOVA, &mut got, false), Err(libc::ENOENT));

    // The IOAS loses its user with the access: destroying it right after close() works as in the
    // kernel, although FUSE delivers the close asynchronously.
    drop(h);
    destroy(&f, ioas).unwrap();
    assert_eq!(destroy(&f, access_id), Err(libc::ENOENT));
}

#[test]
fn access_fd_keeps_its_iommufd_context() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let buf = patterned(1);
    ioas_map_fixed(&f, ioas, buf.addr(), PAGE, IOVA).unwrap();
    let h = d.open_iommu();
    bind(&h, &f, ioas, 0).unwrap();
    let other = d.open_iommu();
    drop(f);
    // Ops name the access by fd on any iommufd, and its context is still there.
    let mut got = vec![0u8; 16];
    access_rw(&other, &h, IOVA, &mut got, false).unwrap();
    assert_eq!(got, buf.bytes()[..16]);
    // Without NEEDS_PIN_PAGES an access may not pin.
    assert_eq!(
        access_pages(&other, h.as_raw_fd(), IOVA, PAGE, buf.addr()),
        Err(libc::EOPNOTSUPP)
    );
    drop(h);
    drop(other);
    let s = d.wait_idle();
    assert_eq!(s["contexts"], 0, "{s}");
    assert_eq!(s["objects"], 0, "{s}");
}

#[test]
fn bind_and_access_errors() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let null = File::open("/dev/null").unwrap();
    let h = d.open_iommu();
    let good = || uiommufd_handle_bind {
        size: std::mem::size_of::<uiommufd_handle_bind>() as u32,
        kind: UIOMMUFD_HANDLE_TEST_ACCESS,
        iommufd: f.as_raw_fd(),
        arg0: ioas,
        ..Default::default()
    };
    assert_eq!(
        bind(&h, &null, ioas, 0),
        Err(libc::EBADFD),
        "not an iommufd"
    );
    assert_eq!(
        bind_raw(
            &h,
            &mut uiommufd_handle_bind {
                iommufd: 9999,
                ..good()
            }
        ),
        Err(libc::EBADF)
    );
    assert_eq!(
        bind(&h, &f, ioas, 2),
        Err(libc::EOPNOTSUPP),
        "unknown flags"
    );
    assert_eq!(bind(&h, &f, 99, 0), Err(libc::ENOENT), "no such IOAS");
    assert_eq!(
        bind_raw(&h, &mut uiommufd_handle_bind { size: 16, ..good() }),
        Err(libc::EINVAL)
    );
    assert_eq!(
        bind_raw(&h, &mut uiommufd_handle_bind { kind: 7, ..good() }),
        Err(libc::EINVAL)
    );
    assert_eq!(
        bind(&f, &f, ioas, 0),
        Err(libc::EBUSY),
        "a context with objects cannot bind"
    );
    // Failed binds left no object behind: the access gets the next free ID.
    assert_eq!(bind(&h, &f, ioas, 0), Ok(ioas + 1));
    assert_eq!(
        bind(&h, &f, ioas, 0),
        Err(libc::ENOTTY),
        "a bound file takes no ioctls"
    );

    let mut b = [0u8; 8];
    let rw = |fd: u32, b: &mut [u8]| {
        let p = iommu_test_cmd_access_rw {
            iova: IOVA,
            length: b.len() as u64,
            uptr: b.as_mut_ptr() as u64,
            ..Default::default()
        };
        test_cmd(&f, IOMMU_TEST_OP_ACCESS_RW, fd, &p).map(|_| ())
    };
    assert_eq!(
        rw(null.as_raw_fd() as u32, &mut b),
        Err(libc::EBADFD),
        "not an access fd"
    );
    assert_eq!(
        rw(f.as_raw_fd() as u32, &mut b),
        Err(libc::EBADFD),
        "an iommufd is no access"
    );
    assert_eq!(rw(9999, &mut b), Err(libc::EBADFD), "closed fd");
    assert_eq!(
        rw(h.as_raw_fd() as u32, &mut b),
        Err(libc::ENOENT),
        "nothing mapped there"
    );
    let big = iommu_test_cmd_access_rw {
        length: 16 * 1024 * 1024 + 1,
        ..Default::default()
    };
    assert_eq!(
        test_cmd(&f, IOMMU_TEST_OP_ACCESS_RW, h.as_raw_fd() as u32, &big).map(|_| ()),
        Err(libc::ENOMEM)
    );
    let bad_flags = iommu_test_cmd_access_rw {
        flags: 1 << 8,
        ..Default::default()
    };
    assert_eq!(
        test_cmd(
            &f,
            IOMMU_TEST_OP_ACCESS_RW,
            h.as_raw_fd() as u32,
            &bad_flags
        )
        .map(|_| ()),
        Err(libc::EOPNOTSUPP)
    );
    // Without the launcher CREATE_ACCESS itself cannot hand out an fd.
    let create = iommu_test_cmd_create_access::default();
    assert_eq!(
        test_cmd(&f, IOMMU_TEST_OP_CREATE_ACCESS, ioas, &create).map(|_| ()),
        Err(libc::EOPNOTSUPP)
    );
}

fn bind_fault_queue(handle: &File, iommufd: &File, flags: u32) -> Result<u32, i32> {
    bind_raw(
        handle,
        &mut uiommufd_handle_bind {
            size: std::mem::size_of::<uiommufd_handle_bind>() as u32,
            kind: UIOMMUFD_HANDLE_FAULT_QUEUE,
            iommufd: iommufd.as_raw_fd(),
            arg0: flags,
            ..Default::default()
        },
    )
}

fn hwpt_alloc(f: &File, dev_id: u32, pt_id: u32, fault_id: Option<u32>) -> Result<u32, i32> {
    let mut cmd = iommu_hwpt_alloc {
        size: std::mem::size_of::<iommu_hwpt_alloc>() as u32,
        flags: if fault_id.is_some() {
            IOMMU_HWPT_FAULT_ID_VALID
        } else {
            0
        },
        dev_id,
        pt_id,
        fault_id: fault_id.unwrap_or(0),
        ..Default::default()
    };
    ioctl(f, IOMMU_HWPT_ALLOC, &mut cmd).map(|_| cmd.out_hwpt_id)
}

#[test]
fn fault_queue_fd_delivers_iopf_and_takes_responses() {
    use std::io::{Read, Write};
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let md = test_cmd(
        &f,
        IOMMU_TEST_OP_MOCK_DOMAIN,
        ioas,
        &iommu_test_cmd_mock_domain::default(),
    )
    .unwrap()
    .payload::<iommu_test_cmd_mock_domain>()
    .unwrap();

    let mut q = d.open_iommu();
    assert_eq!(bind_fault_queue(&q, &f, 1), Err(libc::EOPNOTSUPP));
    let fault_id = bind_fault_queue(&q, &f, 0).unwrap();
    assert_eq!(
        hwpt_alloc(&f, md.out_idev_id, ioas, Some(ioas)),
        Err(libc::ENOENT),
        "an IOAS is no fault queue"
    );
    let hwpt = hwpt_alloc(&f, md.out_idev_id, ioas, Some(fault_id)).unwrap();
    let replace = iommu_test_cmd_mock_domain_replace { pt_id: hwpt };
    test_cmd(
        &f,
        IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
        md.out_stdev_id,
        &replace,
    )
    .unwrap();

    let mut rec = [0u8; std::mem::size_of::<iommu_hwpt_pgfault>()];
    assert_eq!(q.read(&mut rec).unwrap(), 0, "nothing queued yet");
    let trigger = iommu_test_cmd_trigger_iopf {
        dev_id: md.out_idev_id,
        pasid: 0,
        grpid: 2,
        perm: IOMMU_PGFAULT_PERM_READ,
        addr: 0xdead_b000,
    };
    test_cmd(&f, IOMMU_TEST_OP_TRIGGER_IOPF, 0, &trigger).unwrap();
    assert_eq!(
        q.read(&mut rec[..10]).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ESPIPE)),
        "reads come in whole records"
    );
    assert_eq!(q.read(&mut rec).unwrap(), rec.len());
    let got = <iommu_hwpt_pgfault as zerocopy::FromBytes>::read_from_bytes(&rec).unwrap();
    assert_eq!(
        (got.flags, got.dev_id, got.grpid, got.perm, got.addr, got.cookie),
        (
            IOMMU_PGFAULT_FLAGS_LAST_PAGE,
            md.out_idev_id,
            2,
            IOMMU_PGFAULT_PERM_READ,
            0xdead_b000,
            1
        )
    );
    let resp = iommu_hwpt_page_response {
        cookie: got.cookie,
        code: IOMMUFD_PAGE_RESP_SUCCESS,
    };
    let bytes = zerocopy::IntoBytes::as_bytes(&resp);
    assert_eq!(q.write(bytes).unwrap(), bytes.len());
    assert_eq!(
        q.write(bytes).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EINVAL)),
        "that cookie was answered already"
    );

    // The fd and the HWPT hold the queue; once both are gone IOMMU_DESTROY removes it.
    assert_eq!(destroy(&f, fault_id), Err(libc::EBUSY));
    let back = iommu_test_cmd_mock_domain_replace { pt_id: ioas };
    test_cmd(
        &f,
        IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
        md.out_stdev_id,
        &back,
    )
    .unwrap();
    destroy(&f, hwpt).unwrap();
    drop(q);
    destroy(&f, fault_id).unwrap();
}

fn map_file(f: &File, ioas: u32, fd: i32, start: u64, length: u64) -> Result<u64, i32> {
    let mut cmd = iommu_ioas_map_file {
        size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
        flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        fd,
        start,
        length,
        ..Default::default()
    };
    ioctl(f, IOMMU_IOAS_MAP_FILE, &mut cmd).map(|_| cmd.iova)
}

fn revoke(f: &File, fd: i32, revoked: bool) -> Result<(), i32> {
    let p = iommu_test_cmd_dmabuf_revoke {
        dmabuf_fd: fd,
        revoked: revoked as u32,
    };
    test_cmd(f, IOMMU_TEST_OP_DMABUF_REVOKE, 0, &p).map(|_| ())
}

#[test]
fn dmabuf_fd_maps_and_revokes() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    test_cmd(
        &f,
        IOMMU_TEST_OP_MOCK_DOMAIN,
        ioas,
        &iommu_test_cmd_mock_domain::default(),
    )
    .unwrap();
    let bind_dmabuf = |h: &File, len: u32| {
        bind_raw(
            h,
            &mut uiommufd_handle_bind {
                size: std::mem::size_of::<uiommufd_handle_bind>() as u32,
                kind: UIOMMUFD_HANDLE_TEST_DMABUF,
                iommufd: f.as_raw_fd(),
                arg0: len,
                ..Default::default()
            },
        )
    };
    let h = d.open_iommu();
    assert_eq!(bind_dmabuf(&h, 0), Err(libc::EINVAL));
    assert_eq!(bind_dmabuf(&h, 513 * PAGE as u32), Err(libc::EINVAL));
    assert_eq!(
        bind_dmabuf(&h, 3 * PAGE as u32 + 1),
        Ok(0),
        "a dma-buf is no iommufd object"
    );
    let dfd = h.as_raw_fd();
    // Four pages after rounding up.
    assert_eq!(map_file(&f, ioas, dfd, 0, 0), Err(libc::EINVAL));
    assert_eq!(map_file(&f, ioas, dfd, 0, 4 * PAGE + 1), Err(libc::EINVAL));
    assert_eq!(map_file(&f, ioas, dfd, 4 * PAGE, PAGE), Err(libc::EINVAL));
    let iova = map_file(&f, ioas, dfd, 0, 4 * PAGE).unwrap();

    revoke(&f, dfd, true).unwrap();
    assert_eq!(map_file(&f, ioas, dfd, 0, PAGE), Err(libc::ENODEV));
    revoke(&f, dfd, false).unwrap();
    let iova2 = map_file(&f, ioas, dfd, 0, PAGE).unwrap();
    assert_ne!(iova2, iova);
    // The revoked mapping still holds its IOVA until unmapped.
    let mut unmap = iommu_ioas_unmap {
        size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
        ioas_id: ioas,
        iova,
        length: 4 * PAGE,
    };
    ioctl(&f, IOMMU_IOAS_UNMAP, &mut unmap).unwrap();

    // Revoking needs a dma-buf fd.
    let null = File::open("/dev/null").unwrap();
    assert_eq!(revoke(&f, null.as_raw_fd(), true), Err(libc::EINVAL));
    assert_eq!(revoke(&f, 9999, true), Err(libc::EBADF));
    assert_eq!(revoke(&f, f.as_raw_fd(), true), Err(libc::EINVAL));
    // Without the launcher DMABUF_GET cannot hand out its fd.
    let get = iommu_test_cmd_dmabuf_get {
        length: PAGE as u32,
        open_flags: 0,
    };
    assert_eq!(
        test_cmd(&f, IOMMU_TEST_OP_DMABUF_GET, 0, &get).map(|_| ()),
        Err(libc::EOPNOTSUPP)
    );
}

#[test]
fn daemon_stops_while_object_fds_are_open() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let h = d.open_iommu();
    bind(&h, &f, ioas, 0).unwrap();
    let q = d.open_iommu();
    bind_fault_queue(&q, &f, 0).unwrap();
    // The daemon holds a duplicate of `f` for each handle; SIGTERM must still end it promptly.
    let st = d.stop();
    assert!(st.success(), "{st:?}");
    drop((h, q, f));
}
