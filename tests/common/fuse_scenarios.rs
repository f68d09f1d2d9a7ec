//! The FUSE transport scenarios, end to end (root only): a test Service behind a real mount, real
//! clients in separate processes (the test binary re-executed with a role). `transport_fuse` runs
//! them over /dev/fuse, `transport_uring` over io_uring (the mode comes from
//! [`harness::fuse_options`]).

#![allow(dead_code)]

use crate::harness::*;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub const ENTRY: &str = "child_entry";

/// Entry point of the child roles ([`spawn_role`] runs it by name): each binary's ignored
/// `child_entry` test calls it.
pub fn child_entry() {
    let role = std::env::var(ROLE_ENV).expect("child_entry runs only as a spawned role");
    let mnt = PathBuf::from(std::env::var(MNT_ENV).unwrap());
    let arg: u64 = std::env::var(ARG_ENV)
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    match role.as_str() {
        "basic" => client_basic(&mnt),
        "inc" => client_inc(&mnt),
        "sleep" => client_sleep(&mnt, arg),
        "server" => child_server(&mnt),
        other => panic!("unknown role {other}"),
    }
}

pub fn open_rw(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap()
}

fn client_basic(mnt: &Path) {
    let f1 = open_rw(&mnt.join("iommu"));
    let mut v = Box::new(5u32);
    assert_eq!(ioctl(&f1, INC, &mut *v as *mut u32 as u64), Ok(0));
    assert_eq!(
        *v, 6,
        "the service incremented our u32 through process_vm_writev"
    );
    assert_eq!(ioctl(&f1, FAIL_EINVAL, 0), Err(Errno::EINVAL));
    assert_eq!(
        ioctl(&f1, INC, 8),
        Err(Errno::EFAULT),
        "a bad pointer is EFAULT"
    );
    assert_eq!(ioctl(&f1, 0x1234, 0), Err(Errno::ENOTTY));
    assert_eq!(ioctl(&f1, PID, 0), Ok(std::process::id() as i32));
    // Two opens are two contexts.
    let f2 = open_rw(&mnt.join("iommu"));
    let a1 = ioctl(&f1, CTX, 0).unwrap();
    let a2 = ioctl(&f1, CTX, 0).unwrap();
    let b1 = ioctl(&f2, CTX, 0).unwrap();
    assert_eq!(a2, a1 + 1);
    assert_eq!(b1 % 1000, 1);
    assert_ne!(a1 / 1000, b1 / 1000);
    // Offsets pass through.
    let mut buf = [0u8; 32];
    let n = f1.read_at(&mut buf, 1 << 40).unwrap();
    assert_eq!(&buf[..n], (1u64 << 40).to_string().as_bytes());
    assert_eq!(f1.write_at(b"hello", 77).unwrap(), 5);
    assert_eq!(
        std::fs::read_to_string(mnt.join("status")).unwrap(),
        STATUS_TEXT
    );
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("status"))
        .is_err());
    let c = open_rw(&mnt.join("vfio/vfio"));
    assert_eq!(ioctl(&c, NOP, 0), Ok(0));
    let d = open_rw(&mnt.join("vfio/devices/dev0"));
    assert_eq!(ioctl(&d, NOP, 0), Ok(0));
    let names: Vec<String> = std::fs::read_dir(mnt.join("vfio/devices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["dev0"]);
    let mut root: Vec<String> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    root.sort();
    assert_eq!(root, ["iommu", "status", "vfio"]);
    assert!(std::fs::metadata(mnt.join("nope")).is_err());
}

fn client_inc(mnt: &Path) {
    let f = open_rw(&mnt.join("iommu"));
    let mut v = Box::new(1u32);
    assert_eq!(ioctl(&f, INC, &mut *v as *mut u32 as u64), Ok(0));
    assert_eq!(*v, 2);
}

fn client_sleep(mnt: &Path, ms: u64) {
    let f = open_rw(&mnt.join("iommu"));
    assert_eq!(ioctl(&f, SLEEP, ms), Ok(0));
}

fn child_server(mnt: &Path) {
    let _server = Server::start(mnt);
    println!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

pub fn finish(mut child: std::process::Child) {
    let status = child.wait().unwrap();
    assert!(status.success(), "client failed: {status}");
}

pub fn fuse_client_round_trip() {
    let _serial = serial();
    let dir = temp_dir("basic");
    let server = Server::start(&dir);
    assert!(is_mounted(&dir));
    finish(spawn_role(ENTRY, "basic", &dir, "", Stdio::null()));
    let st = server.st.clone();
    // basic opened iommu twice, vfio/vfio and the device: four service opens, all released at exit.
    assert!(wait_until(Duration::from_secs(20), || st
        .releases
        .load(Ordering::SeqCst)
        == 4));
    assert_eq!(st.opens.load(Ordering::SeqCst), 4);
    assert_eq!(st.last_write_offset.load(Ordering::SeqCst), 77);
    server.shutdown().unwrap();
    assert!(!is_mounted(&dir));
    std::fs::remove_dir(&dir).unwrap();
}

pub fn concurrent_clients_both_progress() {
    let _serial = serial();
    let dir = temp_dir("concurrent");
    let server = Server::start(&dir);
    let st = server.st.clone();
    // The first client blocks inside its ioctl until the test wakes it (60 s at most).
    let mut slow = spawn_role(ENTRY, "sleep", &dir, "60000", Stdio::null());
    assert!(wait_until(Duration::from_secs(20), || st
        .sleeping
        .load(Ordering::SeqCst)
        == 1));
    // The second client's whole session completes while the first is still inside its ioctl.
    finish(spawn_role(ENTRY, "inc", &dir, "", Stdio::null()));
    assert_eq!(
        st.woke.load(Ordering::SeqCst),
        0,
        "second client waited for the first"
    );
    assert!(
        slow.try_wait().unwrap().is_none(),
        "first client still inside its ioctl"
    );
    st.wake_all.store(true, Ordering::SeqCst);
    finish(slow);
    server.shutdown().unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

pub fn sigkill_mid_ioctl_still_releases() {
    let _serial = serial();
    let dir = temp_dir("sigkill");
    let server = Server::start(&dir);
    let st = server.st.clone();
    let mut child = spawn_role(ENTRY, "sleep", &dir, "1000", Stdio::null());
    assert!(wait_until(Duration::from_secs(20), || st
        .sleeping
        .load(Ordering::SeqCst)
        == 1));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        wait_until(Duration::from_secs(10), || st
            .releases
            .load(Ordering::SeqCst)
            == 1),
        "release after the killed client's ioctl finished"
    );
    server.shutdown().unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

pub fn shutdown_releases_open_files_and_unmounts() {
    let _serial = serial();
    let dir = temp_dir("shutdown");
    let server = Server::start(&dir);
    let st = server.st.clone();
    // Opened by this process: the server runs on other threads.
    let held = open_rw(&dir.join("iommu"));
    assert_eq!(ioctl(&held, NOP, 0), Ok(0));
    assert_eq!(st.opens.load(Ordering::SeqCst), 1);
    server.shutdown().unwrap();
    assert_eq!(
        st.releases.load(Ordering::SeqCst),
        1,
        "released at shutdown"
    );
    assert!(!is_mounted(&dir));
    // The connection is gone: the held file fails instead of hanging.
    assert!(ioctl(&held, NOP, 0).is_err());
    drop(held);
    std::fs::remove_dir(&dir).unwrap();
}

pub fn stale_mount_of_killed_server_is_cleaned() {
    let _serial = serial();
    let dir = temp_dir("stale");
    let mut child = spawn_role(ENTRY, "server", &dir, "", Stdio::piped());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("READY") {
        line.clear();
    }
    assert!(line.contains("READY"), "child server did not start");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    // ECONNABORTED: over io_uring, a first request can still wait on the dead server's queue;
    // ECANCELED: or be ended by the cancellation of the dead server's ring (Linux 6.18 here
    // answers either, by timing, on main before the session readers too).
    let e = std::fs::metadata(&dir).unwrap_err();
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
        ),
        "a dead mount is left behind: {e}"
    );
    let st = Arc::new(State::default());
    let server = Server::start_with(&dir, st.clone());
    finish(spawn_role(ENTRY, "inc", &dir, "", Stdio::null()));
    server.shutdown().unwrap();
    assert!(!is_mounted(&dir));
    std::fs::remove_dir(&dir).unwrap();
}
