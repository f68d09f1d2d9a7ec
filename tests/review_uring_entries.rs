//! Review finding (root; CONFIG_FUSE_IO_URING): over io_uring a request holds its ring entry
//! until it is answered, and the daemon's own context query (an ioctl on its own node, asked while
//! an fd-taking call is served) needs an entry on the asking thread's CPU. The kernel queues a
//! request that finds no available entry and hands it out only when an entry commits; an entry
//! registered later does not fetch it. A thousand concurrent fd-taking calls wedged the daemon
//! twice that way (every entry held by calls waiting for their queued queries); the pokes that
//! follow each new ring thread (src/transport/uring.rs) fetch them. With one serial poker this
//! test wedged too. Over /dev/fuse the same load is served
//! (`trust_boundary::a_thousand_concurrent_fd_taking_calls`).
//!
//! Own binary: `enable_uring` is machine-wide (see tests/transport_uring.rs).

mod support;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;
use support::{ioas_alloc, DaemonProcess};
use uiommufd_uapi::iommufd::{iommu_ioas_map_file, IOMMU_IOAS_MAP_FILE, IOMMU_IOAS_MAP_READABLE};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

struct EnableUring(String);

impl Drop for EnableUring {
    fn drop(&mut self) {
        let _ = std::fs::write(ENABLE_URING, &self.0);
    }
}

#[test]
fn fd_taking_calls_over_io_uring_are_all_answered() {
    let present = nix::unistd::geteuid().is_root() && Path::new(ENABLE_URING).exists();
    if !support::require("root and enable_uring", present) {
        return;
    }
    let _restore = EnableUring(std::fs::read_to_string(ENABLE_URING).unwrap().trim().into());
    std::fs::write(ENABLE_URING, "Y").unwrap();
    let d = DaemonProcess::start(&["--io-uring", "on"]);
    assert_eq!(d.status()["fuse_channel"], "io_uring");
    std::fs::write(ENABLE_URING, &_restore.0).unwrap();
    const CALLS: usize = 1000;
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let fd = f.as_raw_fd();
    let (tx, rx) = std::sync::mpsc::channel();
    let start = std::sync::Arc::new(std::sync::Barrier::new(CALLS));
    for _ in 0..CALLS {
        let (tx, start) = (tx.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            // The iommufd itself as the file: the daemon asks its own node which file it is.
            let mut m = iommu_ioas_map_file {
                size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
                flags: IOMMU_IOAS_MAP_READABLE,
                ioas_id: ioas,
                fd,
                start: 0,
                length: 4096,
                ..Default::default()
            };
            // SAFETY: `m` is a live struct; `fd` stays open until the daemon is gone.
            let r = unsafe { libc::ioctl(fd, IOMMU_IOAS_MAP_FILE as libc::c_ulong, &mut m) };
            let errno = if r < 0 {
                std::io::Error::last_os_error().raw_os_error()
            } else {
                None
            };
            let _ = tx.send(errno);
        });
    }
    drop(tx);
    let (mut answered, mut refused) = (0, 0);
    // A deadline bounding the wait, not a speed target: 1000 such calls take well under a second
    // over /dev/fuse.
    while answered < CALLS {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(errno) => {
                answered += 1;
                refused += usize::from(errno == Some(libc::ENOMEM));
            }
            Err(_) => break,
        }
    }
    if answered < CALLS {
        // SAFETY: SIGKILL to our own child (the wedged daemon), so that the calls end.
        unsafe { libc::kill(d.pid(), libc::SIGKILL) };
    }
    assert_eq!(
        answered, CALLS,
        "calls still waiting after 30 s: the daemon is wedged"
    );
    // Past a user's share of a CPU's ring threads a call is refused at once, never queued
    // forever; the daemon itself answered the others.
    assert!(refused < CALLS, "every call was refused ENOMEM");
    eprintln!("{CALLS} calls: {refused} refused ENOMEM (past the user's share of ring threads)");
    drop(f);
    assert!(d.stop().success());
}
