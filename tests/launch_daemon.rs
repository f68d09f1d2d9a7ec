//! `uiommufd launch` against a real daemon: an unmodified-style client (this test binary re-run
//! under the launcher) gets real fds back from IOMMU_TEST_OP_CREATE_ACCESS and
//! IOMMU_FAULT_QUEUE_ALLOC and uses them as the kernel's selftest does.

mod support;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use support::{ioas_alloc, ioas_map_fixed, ioctl, launch_role, open_node, test_cmd, DaemonProcess};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;

const PROBE_ENV: &str = "UIOMMUFD_LAUNCH_DAEMON_PROBE";
const IOVA: u64 = 0x40_0000;

/// The client side; returns 0 or the number of the step that went wrong (10 + errno for ioctls).
fn client(node: &str) -> i32 {
    let f = open_node(std::path::Path::new(node));
    let ioas = ioas_alloc(&f);
    let buf: Vec<u8> = (0..8192u32).map(|i| (i * 13) as u8).collect();
    if ioas_map_fixed(&f, ioas, buf.as_ptr() as u64, buf.len() as u64, IOVA).is_err() {
        return 1;
    }
    // CREATE_ACCESS hands back a new fd, which names the access in later ops.
    let create = iommu_test_cmd_create_access::default();
    let cmd = match test_cmd(&f, IOMMU_TEST_OP_CREATE_ACCESS, ioas, &create) {
        Ok(c) => c,
        Err(e) => return 10 + e,
    };
    let access_fd = cmd
        .payload::<iommu_test_cmd_create_access>()
        .unwrap()
        .out_access_fd;
    if access_fd as i32 <= f.as_raw_fd() {
        return 2;
    }
    // SAFETY: fcntl(F_GETFD) on an fd number only queries flags.
    if unsafe { libc::fcntl(access_fd as i32, libc::F_GETFD) } != libc::FD_CLOEXEC {
        return 3;
    }
    let mut got = vec![0u8; 300];
    let rw = iommu_test_cmd_access_rw {
        iova: IOVA + 100,
        length: got.len() as u64,
        uptr: got.as_mut_ptr() as u64,
        ..Default::default()
    };
    if let Err(e) = test_cmd(&f, IOMMU_TEST_OP_ACCESS_RW, access_fd, &rw) {
        return 10 + e;
    }
    if got[..] != buf[100..400] {
        return 4;
    }
    // close() destroys the access: the IOAS is free again.
    // SAFETY: the fd was just handed to this process and nothing else owns it.
    drop(unsafe { File::from_raw_fd(access_fd as i32) });
    let mut destroy = iommu_destroy {
        size: std::mem::size_of::<iommu_destroy>() as u32,
        id: ioas,
    };
    if let Err(e) = ioctl(&f, IOMMU_DESTROY, &mut destroy) {
        return 10 + e;
    }

    // IOMMU_FAULT_QUEUE_ALLOC: an object ID and an fd that reads fault records.
    let mut fa = iommu_fault_alloc {
        size: std::mem::size_of::<iommu_fault_alloc>() as u32,
        ..Default::default()
    };
    if let Err(e) = ioctl(&f, IOMMU_FAULT_QUEUE_ALLOC, &mut fa) {
        return 10 + e;
    }
    if fa.out_fault_id == 0 || fa.out_fault_fd as i32 <= f.as_raw_fd() {
        return 5;
    }
    // SAFETY: as above, the fd is this process's own.
    let mut q = unsafe { File::from_raw_fd(fa.out_fault_fd as i32) };
    let mut rec = [0u8; std::mem::size_of::<iommu_hwpt_pgfault>()];
    if q.read(&mut rec).ok() != Some(0) {
        return 6;
    }
    let mut bad = iommu_fault_alloc {
        size: std::mem::size_of::<iommu_fault_alloc>() as u32,
        flags: 1,
        ..Default::default()
    };
    if ioctl(&f, IOMMU_FAULT_QUEUE_ALLOC, &mut bad) != Err(libc::EOPNOTSUPP) {
        return 7;
    }

    // DMABUF_GET returns the dma-buf fd as the ioctl's value; IOAS_MAP_FILE takes it.
    let get = iommu_test_cmd_dmabuf_get {
        length: 8192,
        open_flags: libc::O_CLOEXEC as u32,
    };
    let mut cmd = iommu_test_cmd {
        size: std::mem::size_of::<iommu_test_cmd>() as u32,
        op: IOMMU_TEST_OP_DMABUF_GET,
        ..Default::default()
    };
    cmd.set_payload(&get);
    let dfd = match ioctl(&f, IOMMU_TEST_CMD, &mut cmd) {
        Ok(fd) => fd,
        Err(e) => return 10 + e,
    };
    // SAFETY: fcntl(F_GETFD) on an fd number only queries flags.
    if dfd <= f.as_raw_fd() || unsafe { libc::fcntl(dfd, libc::F_GETFD) } != libc::FD_CLOEXEC {
        return 8;
    }
    let ioas = ioas_alloc(&f);
    let mut map = iommu_ioas_map_file {
        size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
        flags: IOMMU_IOAS_MAP_READABLE,
        ioas_id: ioas,
        fd: dfd,
        length: 8192,
        ..Default::default()
    };
    if let Err(e) = ioctl(&f, IOMMU_IOAS_MAP_FILE, &mut map) {
        return 10 + e;
    }

    // A zero-length read of an iommufd is EINVAL as in the kernel (FUSE alone would answer 0);
    // other files keep their own answer.
    let mut none = [0u8; 0];
    let mut g = &f;
    if g.read(&mut none).map_err(|e| e.raw_os_error()) != Err(Some(libc::EINVAL)) {
        return 9;
    }
    if q.read(&mut none).ok() != Some(0) {
        return 20;
    }
    let mut null = File::open("/dev/null").unwrap();
    if null.read(&mut none).ok() != Some(0) {
        return 21;
    }
    0
}

/// The client role, run only by `fd_returning_ops_through_the_launcher` under the launcher.
#[test]
#[ignore = "a client role: run by fd_returning_ops_through_the_launcher"]
fn probe() {
    let node = std::env::var(PROBE_ENV).expect("probe runs only under the launcher test");
    std::process::exit(client(&node));
}

#[test]
fn fd_returning_ops_through_the_launcher() {
    let d = DaemonProcess::start(&[]);
    let node = d.node("iommu");
    let out = launch_role(&[], "probe", &[(PROBE_ENV, node.as_os_str())]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "client step failed; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = d.wait_idle();
    assert_eq!(
        (s["contexts"].as_u64(), s["objects"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
}

#[test]
fn without_the_launcher_fd_returning_ops_are_eopnotsupp() {
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let mut fa = iommu_fault_alloc {
        size: std::mem::size_of::<iommu_fault_alloc>() as u32,
        ..Default::default()
    };
    assert_eq!(
        ioctl(&f, IOMMU_FAULT_QUEUE_ALLOC, &mut fa),
        Err(libc::EOPNOTSUPP)
    );
}
