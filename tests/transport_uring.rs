//! FUSE over io_uring end to end (root; CONFIG_FUSE_IO_URING): the transport scenarios over the
//! rings, the daemon with `--io-uring on` under real iommufd clients on every CPU, and the
//! fallback when the kernel does not offer it.
//!
//! The fuse module's `enable_uring` is machine-wide and read when a connection is made, so this
//! binary has exactly one test (the other is the ignored entry of the child roles), and it puts
//! the old value back when it ends, also when it fails ([`EnableUring`]).

#[path = "common/fuse_harness.rs"]
mod harness;
#[path = "common/fuse_scenarios.rs"]
mod scenarios;
mod support;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::users::{self, run_as, wait_child};
use support::{
    ioas_alloc, ioas_map_fixed, ioas_unmap, ioctl, open_node, AnonPages, DaemonProcess, TempDir,
};
use uiommufd::sys::uffd::UnservedPage;
use uiommufd::transport::uring::{INITIAL_THREADS, OWNER_THREADS};
use uiommufd_uapi::iommufd::{
    iommu_ioas_map_file, iommu_option, IOMMU_IOAS_ALLOC, IOMMU_IOAS_MAP_FILE,
    IOMMU_IOAS_MAP_READABLE, IOMMU_OPTION, IOMMU_OPTION_HUGE_PAGES, IOMMU_OPTION_OP_GET,
};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Entry point of the child roles ([`harness::spawn_role`] runs it by name), never a test of its own.
#[test]
#[ignore = "the child roles' entry point: run by the tests through spawn_role"]
fn child_entry() {
    scenarios::child_entry();
}

/// Sets the fuse module's `enable_uring` and puts the value found back on drop.
struct EnableUring {
    old: String,
}

impl EnableUring {
    /// None (a visible skip; a failure under CI=true) without root or the parameter.
    fn new() -> Option<Self> {
        let present = nix::unistd::geteuid().is_root() && Path::new(ENABLE_URING).exists();
        if !support::require(
            "root and /sys/module/fuse/parameters/enable_uring (CONFIG_FUSE_IO_URING)",
            present,
        ) {
            return None;
        }
        let old = std::fs::read_to_string(ENABLE_URING).unwrap();
        Some(Self {
            old: old.trim().to_string(),
        })
    }

    fn set(&self, on: bool) {
        std::fs::write(ENABLE_URING, if on { "Y" } else { "N" }).expect("write enable_uring");
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        let _ = std::fs::write(ENABLE_URING, &self.old);
    }
}

/// One client session of the daemon: open, IOAS alloc, map a page, IOMMU_OPTION, unmap, close.
fn iommufd_session(d: &DaemonProcess, rounds: usize) {
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let page = AnonPages::new(1);
    for i in 0..rounds as u64 {
        let iova = 0x10_0000 + i * 0x1000;
        ioas_map_fixed(&f, ioas, page.addr(), 4096, iova).expect("IOAS_MAP");
        let mut opt = iommu_option {
            size: std::mem::size_of::<iommu_option>() as u32,
            option_id: IOMMU_OPTION_HUGE_PAGES,
            op: IOMMU_OPTION_OP_GET,
            object_id: ioas,
            ..Default::default()
        };
        ioctl(&f, IOMMU_OPTION, &mut opt).expect("IOMMU_OPTION");
        assert_eq!(opt.val64, 1);
        assert_eq!(ioas_unmap(&f, ioas, iova, 4096), Ok(4096));
    }
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

/// `uiommufd serve` with `args` on a fresh mount, expected to fail at start: its stderr.
fn failed_start(args: &[&str]) -> String {
    let dir = TempDir::new("uring-fail");
    let mut child = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .args(["serve", "--transport", "fuse", "--mount"])
        .arg(dir.0.join("m"))
        .arg("--control")
        .arg(dir.0.join("control.sock"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the daemon did not give up");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "started although it must not: {err}");
    err
}

#[test]
fn io_uring_transport_and_fallback() {
    let Some(param) = EnableUring::new() else {
        return;
    };
    param.set(true);

    // Every transport scenario, with the test servers (and the child ones) on the rings.
    std::env::set_var(harness::URING_ENV, "on");
    let before = harness::ring_requests_served();
    scenarios::fuse_client_round_trip();
    scenarios::concurrent_clients_both_progress();
    scenarios::sigkill_mid_ioctl_still_releases();
    scenarios::shutdown_releases_open_files_and_unmounts();
    scenarios::stale_mount_of_killed_server_is_cleaned();
    assert!(
        harness::ring_requests_served() > before,
        "no request travelled over io_uring"
    );
    std::env::remove_var(harness::URING_ENV);

    // The daemon with --io-uring on: real clients, several at once on every CPU.
    let d = DaemonProcess::start(&["--io-uring", "on"]);
    let s = d.status();
    assert_eq!(s["fuse_channel"], "io_uring", "{s}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    std::thread::scope(|scope| {
        for t in 0..4 * cpus {
            let d = &d;
            scope.spawn(move || {
                pin_to(t % cpus);
                for _ in 0..5 {
                    iommufd_session(d, 10);
                }
            });
        }
    });
    let s = d.wait_idle();
    assert_eq!(s["contexts"], 0, "{s}");
    assert_eq!(s["pinned_pages"], 0, "{s}");
    // Each session is at least 1 + 1 + 3 × 10 requests; a few go over /dev/fuse before the
    // rings are registered.
    let served = s["io_uring_requests"].as_u64().unwrap();
    assert!(served >= (4 * cpus * 5 * 32) as u64, "{s}");
    assert!(d.stop().success(), "the daemon's shutdown failed");

    more_stalled_requests_than_a_users_share_on_one_cpu();

    // Not offered: auto serves through /dev/fuse, on refuses to start with a clear error.
    param.set(false);
    let d = DaemonProcess::start(&["--io-uring", "auto"]);
    let s = d.status();
    assert_eq!(s["fuse_channel"], "/dev/fuse", "{s}");
    assert_eq!(s["io_uring_requests"], 0, "{s}");
    iommufd_session(&d, 3);
    assert!(d.stop().success());
    let err = failed_start(&["--selftest", "--io-uring", "on"]);
    assert!(
        err.contains("--io-uring on: the kernel did not offer FUSE over io_uring"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "one error line: {err}"
    );
}

/// IOAS_MAP_FILE of a page of `f` itself: the daemon asks its own node which context the file is
/// (an inline request its worker waits for). Whatever the answer, it returns.
fn map_file_of_itself(f: &std::fs::File, ioas: u32) -> i32 {
    let mut m = iommu_ioas_map_file {
        size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
        flags: IOMMU_IOAS_MAP_READABLE,
        ioas_id: ioas,
        fd: f.as_raw_fd(),
        start: 0,
        length: 4096,
        ..Default::default()
    };
    // SAFETY: `m` is a live struct; `f` is open for the call.
    unsafe { libc::ioctl(f.as_raw_fd(), IOMMU_IOAS_MAP_FILE as libc::c_ulong, &mut m) }
}

/// More requests that wait on a userfaultfd than one user's share of a CPU's ring threads, all
/// from one CPU: the CPU starts a thread for each one held (in place or on the pool) and answers
/// the rest ENOMEM at once, so another user on that CPU still opens, allocates and maps its own
/// file (whose context query is answered in place), and once the stall ends every stalled request
/// is answered.
fn more_stalled_requests_than_a_users_share_on_one_cpu() {
    const STALLED: usize = OWNER_THREADS + 8;
    let (staller, prober) = (
        users::test_user("uiommufd-t2").expect("test user uiommufd-t2"),
        users::test_user("uiommufd-t1").expect("test user uiommufd-t1"),
    );
    let d = DaemonProcess::start(&["--io-uring", "on", "--iommu-perm", "0666"]);
    let extra_before = d.status()["io_uring_extra_entries"].as_u64().unwrap();
    let node = d.node("iommu");
    let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
    let (go_r, go_w) = nix::unistd::pipe().unwrap();
    // SAFETY: fork; the child sets up its stall, drops to the test user and exits through _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Root makes the userfaultfd (unprivileged ones may not catch the daemon's reads).
            let Ok(stall) = UnservedPage::new() else {
                return 3;
            };
            pin_to(0);
            users::drop_to_user(&staller);
            let f = std::sync::Arc::new(open_node(&node));
            let (tx, rx) = std::sync::mpsc::channel();
            for _ in 0..STALLED {
                let (f, tx, addr) = (f.clone(), tx.clone(), stall.addr());
                std::thread::spawn(move || {
                    // SAFETY: the argument is the stalled page, which only the daemon reads.
                    let rc = unsafe {
                        libc::ioctl(f.as_raw_fd(), IOMMU_IOAS_ALLOC as libc::c_ulong, addr)
                    };
                    let _ = tx.send(rc);
                });
            }
            let _ = nix::unistd::write(&ready_w, b"r");
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&go_r, &mut b);
            drop(stall);
            let answered = (0..STALLED)
                .filter(|_| rx.recv_timeout(Duration::from_secs(20)).is_ok())
                .count();
            i32::from(answered != STALLED) * 4
        }))
        .unwrap_or(101);
        // SAFETY: ends the forked child.
        unsafe { libc::_exit(code) };
    }
    drop((ready_w, go_r));
    let mut b = [0u8; 1];
    assert_eq!(nix::unistd::read(&ready_r, &mut b), Ok(1), "staller set up");
    // The user's share of CPU 0's threads holds a stalled request each: every one held beyond the
    // first thread brought a new idle one.
    let grown = (OWNER_THREADS - (INITIAL_THREADS - 1)) as u64;
    let s =
        d.wait_status(|s| s["io_uring_extra_entries"].as_u64().unwrap() >= extra_before + grown);
    assert!(
        s["io_uring_extra_entries"].as_u64().unwrap() >= extra_before + grown,
        "the stalled requests did not all arrive, or queue 0 did not grow: {s}"
    );
    let r = run_as(&prober, Duration::from_secs(20), || {
        pin_to(0);
        let f = open_node(&node);
        let ioas = ioas_alloc(&f);
        map_file_of_itself(&f, ioas);
        0
    });
    assert_eq!(r, Some(0), "another user on the stalled CPU was not served");
    let _ = nix::unistd::write(&go_w, b"g");
    assert_eq!(
        wait_child(pid, Instant::now() + Duration::from_secs(30)),
        Some(0),
        "the stalled requests were not all answered once the stall ended"
    );
    let s = d.wait_idle();
    assert_eq!(s["contexts"], 0, "{s}");
    assert!(d.stop().success(), "the daemon's shutdown failed");
}
