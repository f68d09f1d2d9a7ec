//! The trust boundary, through the real node: a root daemon whose nodes face unprivileged users.
//! Each scenario runs the daemon as a separate process and the clients as forked children that
//! drop to test users (created on first use).
//!
//! `harness = false`: clients are forked, and forking is only sound from a single-threaded
//! process; this main runs the scenarios one after the other and prints libtest's summary line.

mod support;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use support::users::{self, open_errno, run_as, run_forked, TestUser};
use support::{ioas_alloc, ioctl, open_node, DaemonProcess};
use uiommufd::sys::uffd::UnservedPage;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::vfio::*;

fn user(name: &str) -> TestUser {
    users::test_user(name).unwrap_or_else(|| panic!("test user {name}"))
}

/// Default permissions are the kernel's; chmod and chown take effect and are checked.
fn node_permissions() {
    let d = DaemonProcess::start(&[]);
    let (u1, u2) = (user("uiommufd-t1"), user("uiommufd-t2"));
    let iommu = d.node("iommu");
    let meta = std::fs::metadata(&iommu).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(
        std::fs::metadata(d.node("vfio/vfio")).unwrap().mode() & 0o777,
        0o666
    );
    let p = iommu.clone();
    assert_eq!(
        run_as(&u1, Duration::from_secs(20), || open_errno(&p)),
        Some(libc::EACCES)
    );
    let v = d.node("vfio/vfio");
    assert_eq!(
        run_as(&u1, Duration::from_secs(20), || open_errno(&v)),
        Some(0)
    );

    // Given to u1: u1 may use it, and decides who else may.
    std::os::unix::fs::chown(&iommu, Some(u1.uid), Some(u1.gid)).unwrap();
    let p = iommu.clone();
    let r = run_as(&u1, Duration::from_secs(20), || {
        let f = open_node(&p);
        ioas_alloc(&f);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).map_or(1, |_| 0)
    });
    assert_eq!(r, Some(0));
    assert_eq!(
        run_as(&u2, Duration::from_secs(20), || open_errno(&p)),
        Some(0)
    );
    // u2 is not the owner: chmod is refused.
    let r = run_as(
        &u2,
        Duration::from_secs(20),
        || match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(-1),
        },
    );
    assert_eq!(r, Some(libc::EPERM));
    // `chmod 600` by the owner keeps everyone else out.
    let r = run_as(&u1, Duration::from_secs(20), || {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_or(1, |_| 0)
    });
    assert_eq!(r, Some(0));
    assert_eq!(
        run_as(&u2, Duration::from_secs(20), || open_errno(&p)),
        Some(libc::EACCES)
    );
    assert_eq!(
        run_as(&u1, Duration::from_secs(20), || open_errno(&p)),
        Some(0)
    );
    assert_eq!(std::fs::metadata(&iommu).unwrap().mode() & 0o777, 0o600);
    d.stop();
}

/// Without --selftest the selftest's command is not there, as on a production kernel.
fn production_daemon_has_no_selftest_surface() {
    let d = DaemonProcess::start_plain(&[]);
    let f = d.open_iommu();
    ioas_alloc(&f);
    let mut cmd = uiommufd_uapi::selftest::iommu_test_cmd {
        size: std::mem::size_of::<uiommufd_uapi::selftest::iommu_test_cmd>() as u32,
        op: uiommufd_uapi::selftest::IOMMU_TEST_OP_MOCK_DOMAIN,
        ..Default::default()
    };
    assert_eq!(
        ioctl(&f, uiommufd_uapi::selftest::IOMMU_TEST_CMD, &mut cmd),
        Err(libc::ENOTTY)
    );
    drop(f);
    d.stop();
    // With it, the same command is served.
    let d = DaemonProcess::start(&[]);
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let mut cmd = uiommufd_uapi::selftest::iommu_test_cmd {
        size: std::mem::size_of::<uiommufd_uapi::selftest::iommu_test_cmd>() as u32,
        op: uiommufd_uapi::selftest::IOMMU_TEST_OP_MOCK_DOMAIN,
        id: ioas,
        ..Default::default()
    };
    assert_eq!(
        ioctl(&f, uiommufd_uapi::selftest::IOMMU_TEST_CMD, &mut cmd),
        Ok(0)
    );
    drop(f);
    d.stop();
}

/// 1,000 concurrent calls that make the daemon identify an fd of its own node (each asks the
/// daemon itself which context the file is): all are answered, others are served meanwhile, and
/// SIGTERM still stops the daemon promptly. (Before, 700 such calls wedged it for good.)
fn a_thousand_concurrent_fd_taking_calls() {
    const CALLS: usize = 1000;
    let d = DaemonProcess::start(&["--iommu-perm", "0666"]);
    let u1 = user("uiommufd-t1");
    let p = d.node("iommu");
    let r = run_as(&u1, Duration::from_secs(120), || {
        let f = open_node(&p);
        let ioas = ioas_alloc(&f);
        let fd = f.as_raw_fd();
        // All at once: the calls must be in the daemon together, not one after the other.
        let start = std::sync::Arc::new(std::sync::Barrier::new(CALLS));
        let threads: Vec<_> = (0..CALLS)
            .map(|_| {
                let start = start.clone();
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        start.wait();
                        // The iommufd itself as the file to map: the daemon must ask whether it is
                        // one of its dma-buf handles.
                        let mut m = iommu_ioas_map_file {
                            size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
                            flags: IOMMU_IOAS_MAP_READABLE,
                            ioas_id: ioas,
                            fd,
                            start: 0,
                            length: 4096,
                            ..Default::default()
                        };
                        // SAFETY: `m` is a live struct; `fd` stays open until every thread ends.
                        unsafe { libc::ioctl(fd, IOMMU_IOAS_MAP_FILE as libc::c_ulong, &mut m) }
                    })
                    .expect("spawn")
            })
            .collect();
        // Whatever the answer (a file of the node maps lazily, as any file does in the kernel,
        // and would fail only when pinned), every call must come back.
        let answered = threads.into_iter().filter_map(|t| t.join().ok()).count();
        i32::from(answered != CALLS)
    });
    assert_eq!(r, Some(0), "every call answered within the deadline");
    // Still serving.
    let f = d.open_iommu();
    ioas_alloc(&f);
    drop(f);
    let t = Instant::now();
    d.stop();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        t.elapsed()
    );
}

/// A client whose argument lives in memory that never arrives (a userfaultfd nobody serves):
/// its request waits on it forever. Other users are served meanwhile, and SIGTERM still stops
/// the daemon within its grace period; the stuck client then gets an error, not a hang.
fn a_stalled_client_stalls_nobody_else() {
    let d = DaemonProcess::start(&["--iommu-perm", "0666"]);
    let p = d.node("iommu");
    let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
    let pid = {
        // SAFETY: single-threaded parent; the child only sets up the stall and waits in it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let Ok(stall) = UnservedPage::new() else {
                // SAFETY: leaves the child at once.
                unsafe { libc::_exit(3) };
            };
            let page = stall.addr();
            let f = open_node(&p);
            let _ = nix::unistd::write(&ready_w, b"r");
            // The daemon reads the size word from the unserved page: this never returns while
            // the daemon lives.
            // SAFETY: the argument points at the registered page; only the daemon reads it.
            let rc = unsafe { libc::ioctl(f.as_raw_fd(), IOMMU_IOAS_ALLOC as libc::c_ulong, page) };
            let code = if rc < 0 { 0 } else { 4 };
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        pid
    };
    drop(ready_w);
    let mut b = [0u8; 1];
    assert_eq!(
        nix::unistd::read(&ready_r, &mut b),
        Ok(1),
        "stalling client set up"
    );
    // The stalled request is in the daemon (the client is blocked in it); others are served.
    // Another user (its own lane of the pool) is served meanwhile.
    // run_as gives up (None) if the user is not served within its deadline.
    let u1 = user("uiommufd-t1");
    let r = run_as(&u1, Duration::from_secs(20), || {
        let f = open_node(&d.node("iommu"));
        ioas_alloc(&f);
        0
    });
    assert_eq!(r, Some(0));
    // Its release went through too: only the stalled client's context is left.
    let s = d.wait_status(|s| s["contexts"] == 1);
    assert_eq!(s["contexts"], 1, "{s}");
    let t = Instant::now();
    d.stop();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "SIGTERM took {:?}",
        t.elapsed()
    );
    assert_eq!(
        users::wait_child(pid, Instant::now() + Duration::from_secs(10)),
        Some(0),
        "the stalled client gets an error (exit 0) in time"
    );
}

/// `kill -9` of a daemon that holds a context for a bound device (whose client already closed
/// its iommufd): the daemon dies for real, clients get errors, and a new daemon serves the same
/// mount within 5 s. (Before, the daemon held a duplicate of the client's iommufd and its death
/// waited forever on its own FLUSH.)
fn kill_9_with_a_context_held() {
    let args = ["--selftest", "--device", "dmacopy"];
    let mut d = DaemonProcess::start_plain(&args);
    let f = d.open_iommu();
    let dev = open_node(&d.node("vfio/devices/dmacopy0"));
    let mut b = vfio_device_bind_iommufd {
        argsz: std::mem::size_of::<vfio_device_bind_iommufd>() as u32,
        iommufd: f.as_raw_fd(),
        ..Default::default()
    };
    ioctl(&dev, VFIO_DEVICE_BIND_IOMMUFD, &mut b).expect("bind");
    drop(f);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.pid(), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the killed daemon never finished dying"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The client's device fd now fails instead of hanging.
    let dev_fd = dev.as_raw_fd();
    let r = run_forked(None, Duration::from_secs(10), || {
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: the inherited fd is open in the child; `info` is live.
        let rc = unsafe { libc::ioctl(dev_fd, VFIO_DEVICE_GET_INFO as libc::c_ulong, &mut info) };
        if rc < 0 {
            0
        } else {
            1
        }
    });
    assert_eq!(r, Some(0), "the client got an error in time");
    drop(dev);
    let t = Instant::now();
    d.restart(&args);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "restart took {:?}",
        t.elapsed()
    );
    let f = d.open_iommu();
    ioas_alloc(&f);
    drop(f);
    d.stop();
}

/// IOAS_ALLOW_IOVAS with a count far past the cap: ENOMEM before the daemon reads or allocates
/// anything (it used to allocate for every entry and could be made to abort), and it lives on.
fn allow_iovas_with_a_huge_count() {
    let d = DaemonProcess::start(&["--iommu-perm", "0666"]);
    let u1 = user("uiommufd-t1");
    let p = d.node("iommu");
    let r = run_as(&u1, Duration::from_secs(60), || {
        let f = open_node(&p);
        let ioas = ioas_alloc(&f);
        let len = 1usize << 31;
        // SAFETY: a fresh anonymous read-only reservation; never touched by this process.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return 2;
        }
        let mut cmd = iommu_ioas_allow_iovas {
            size: std::mem::size_of::<iommu_ioas_allow_iovas>() as u32,
            ioas_id: ioas,
            num_iovas: 1 << 27,
            allowed_iovas: map as u64,
            ..Default::default()
        };
        match ioctl(&f, IOMMU_IOAS_ALLOW_IOVAS, &mut cmd) {
            Err(libc::ENOMEM) => 0,
            _ => 1,
        }
    });
    assert_eq!(r, Some(0));
    let f = d.open_iommu();
    ioas_alloc(&f);
    drop(f);
    d.stop();
}

/// Many short-lived processes of one user mapping memory: each binds a process identity (five
/// daemon fds), but a user's live bindings are capped and those of exited processes are let go,
/// so the daemon's fd table stays bounded and the maps keep working.
fn short_lived_processes_cannot_fill_the_fd_table() {
    const CONTEXTS: usize = 20;
    const CHILDREN: usize = 40;
    let d = DaemonProcess::start(&["--iommu-perm", "0666"]);
    let u1 = user("uiommufd-t1");
    let fds = |d: &DaemonProcess| support::fds_without_transport(d.pid());
    let before = fds(&d);
    let p = d.node("iommu");
    let (done_r, done_w) = nix::unistd::pipe().unwrap();
    let (go_r, go_w) = nix::unistd::pipe().unwrap();
    let pid = {
        // SAFETY: single-threaded parent; the child drives the scenario and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                users::drop_to_user(&u1);
                let ctxs: Vec<_> = (0..CONTEXTS).map(|_| open_node(&p)).collect();
                let ioas: Vec<u32> = ctxs.iter().map(ioas_alloc).collect();
                let mut failed = 0;
                for (f, &ioas) in ctxs.iter().zip(&ioas) {
                    for k in 0..CHILDREN {
                        let iova = 1u64 << 32 | (k as u64) << 16;
                        let r = run_forked(None, Duration::from_secs(20), || {
                            let buf = support::AnonPages::new(1);
                            buf.fill(0, &[1]);
                            i32::from(
                                support::ioas_map_fixed(f, ioas, buf.addr(), 4096, iova).is_err(),
                            )
                        });
                        if r != Some(0) {
                            failed += 1;
                        }
                    }
                }
                // Holding every context: let the parent count the daemon's fds now.
                // SAFETY: writes one byte to our pipe.
                unsafe { libc::write(done_w.as_raw_fd(), b"d".as_ptr().cast(), 1) };
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(&go_r, &mut b);
                i32::from(failed > 0)
            }))
            .unwrap_or(101);
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        pid
    };
    drop(done_w);
    drop(go_r);
    let mut b = [0u8; 1];
    assert_eq!(nix::unistd::read(&done_r, &mut b), Ok(1), "client ran");
    let during = fds(&d);
    use uiommufd::caller::identity::{FDS_PER_BOUND, MAX_BOUND_PER_USER};
    let bound = MAX_BOUND_PER_USER * FDS_PER_BOUND as usize;
    assert!(
        during <= before + CONTEXTS + bound,
        "daemon fds {before} -> {during} for {} short-lived processes",
        CONTEXTS * CHILDREN
    );
    nix::unistd::write(&go_w, b"g").unwrap();
    assert_eq!(
        users::wait_child(pid, Instant::now() + Duration::from_secs(120)),
        Some(0),
        "every map worked"
    );
    d.stop();
}

/// Four users, each with more concurrent fd-taking calls than its share of the pool, naming a
/// file of the mount that is not a context (the status file): the daemon never asks such a file
/// anything, so no worker waits on another and every call is answered. (The status file's query
/// used to go through the pool and could leave every worker waiting.)
fn fd_taking_calls_naming_other_node_files() {
    const PER_USER: usize = 16;
    let d = DaemonProcess::start(&["--iommu-perm", "0666"]);
    let users: Vec<TestUser> = ["uiommufd-t1", "uiommufd-t2", "uiommufd-t3", "uiommufd-t4"]
        .iter()
        .map(|n| user(n))
        .collect();
    let (p, st) = (d.node("iommu"), d.node("status"));
    let mut pids = Vec::new();
    for u in &users {
        // SAFETY: single-threaded parent; each child runs its calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                users::drop_to_user(u);
                let f = open_node(&p);
                let ioas = ioas_alloc(&f);
                let status = std::fs::File::open(&st).unwrap();
                let (fd, sfd) = (f.as_raw_fd(), status.as_raw_fd());
                let threads: Vec<_> = (0..PER_USER)
                    .map(|_| {
                        std::thread::spawn(move || {
                            let mut m = iommu_ioas_map_file {
                                size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
                                flags: IOMMU_IOAS_MAP_READABLE,
                                ioas_id: ioas,
                                fd: sfd,
                                length: 4096,
                                ..Default::default()
                            };
                            // SAFETY: `m` is live; both fds stay open until the threads end.
                            unsafe { libc::ioctl(fd, IOMMU_IOAS_MAP_FILE as libc::c_ulong, &mut m) }
                        })
                    })
                    .collect();
                let answered = threads.into_iter().filter_map(|t| t.join().ok()).count();
                i32::from(answered != PER_USER)
            }))
            .unwrap_or(101);
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        pids.push(pid);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for pid in pids {
        assert_eq!(
            users::wait_child(pid, deadline),
            Some(0),
            "calls naming the status file were not all answered"
        );
    }
    d.stop();
}

fn main() {
    if !support::require(
        "root, to create test users and drop to them",
        users::can_switch_users(),
    ) {
        return;
    }
    support::runner::run(&[
        ("node_permissions", node_permissions),
        (
            "production_daemon_has_no_selftest_surface",
            production_daemon_has_no_selftest_surface,
        ),
        (
            "a_thousand_concurrent_fd_taking_calls",
            a_thousand_concurrent_fd_taking_calls,
        ),
        (
            "a_stalled_client_stalls_nobody_else",
            a_stalled_client_stalls_nobody_else,
        ),
        ("kill_9_with_a_context_held", kill_9_with_a_context_held),
        (
            "allow_iovas_with_a_huge_count",
            allow_iovas_with_a_huge_count,
        ),
        (
            "short_lived_processes_cannot_fill_the_fd_table",
            short_lived_processes_cannot_fill_the_fd_table,
        ),
        (
            "fd_taking_calls_naming_other_node_files",
            fd_taking_calls_naming_other_node_files,
        ),
    ]);
}
