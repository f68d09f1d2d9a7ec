//! A map whose pin waits on its caller's memory (a userfaultfd page nobody serves yet) leaves the
//! IOAS to other requests: IOAS_IOVA_RANGES on the same IOAS is answered while the map is still
//! pinning, and the map completes once the page arrives. Prints the second call's latency. A
//! caller killed while its map waits dies, and the daemon lets go of what it held.

mod support;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{ioas_alloc, ioctl, test_cmd, DaemonProcess};
use uiommufd::sys::uffd::UnservedPage;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::{IOMMU_TEST_OP_MOCK_DOMAIN, MOCK_APERTURE_START};

/// IOAS_IOVA_RANGES with num_iovas 0, which asks for the count: EMSGSIZE with the count set, as
/// the kernel. Returns the result and the count.
fn range_count(f: &std::fs::File, ioas: u32) -> (Result<i32, i32>, u32) {
    let mut ranges = iommu_ioas_iova_ranges {
        size: std::mem::size_of::<iommu_ioas_iova_ranges>() as u32,
        ioas_id: ioas,
        ..Default::default()
    };
    let r = ioctl(f, IOMMU_IOAS_IOVA_RANGES, &mut ranges);
    (r, ranges.num_iovas)
}

/// A map of the stalled page on `ioas`, IOAS_IOVA_RANGES on the same IOAS while the map waits
/// in the daemon for the page, then the page served: the map completes. Returns the second
/// call's latency.
fn map_waits_for_its_page(f: &Arc<std::fs::File>, ioas: u32) -> Duration {
    let stall = UnservedPage::new().expect("userfaultfd");
    let mapper = {
        let (f, va) = (f.clone(), stall.addr());
        std::thread::spawn(move || support::ioas_map_fixed(&f, ioas, va, 4096, MOCK_APERTURE_START))
    };
    // The daemon's pin touched the page (nothing else does).
    assert_eq!(
        stall.next_fault(30_000),
        Some(stall.addr()),
        "the map never touched its page"
    );
    // The second call runs on a thread of its own so that, should it wait for the map, the
    // test serves the page after a deadline and fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let f = f.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let (r, num_iovas) = range_count(&f, ioas);
            let _ = tx.send((r, num_iovas, t0.elapsed()));
        });
    }
    let answer = rx.recv_timeout(Duration::from_secs(20));
    // The page does not exist yet, so a map that gave up on it (as a read of /proc/<pid>/mem
    // does) has answered EFAULT by now; one that waits is still in the daemon.
    let waiting = !mapper.is_finished();
    // A page of its own, writable (unlike the shared zero page a write pin would have to break
    // again): the waiting pin goes on.
    stall.serve(0x5a).expect("UFFDIO_COPY");
    let (r, num_iovas, took) = answer.expect("IOAS_IOVA_RANGES waited for the map");
    assert_eq!(r, Err(libc::EMSGSIZE));
    assert!(num_iovas >= 1, "no allowed ranges reported");
    assert_eq!(
        mapper.join().unwrap(),
        Ok(()),
        "the map gave up on a page its caller had not served yet"
    );
    assert!(waiting, "the map was answered before its page existed");
    assert_eq!(
        support::ioas_unmap(f, ioas, MOCK_APERTURE_START, 4096),
        Ok(4096),
        "the committed area unmaps"
    );
    took
}

#[test]
fn iova_ranges_is_answered_while_a_map_waits_on_its_caller() {
    if !support::require("userfaultfd", UnservedPage::new().is_ok()) {
        return;
    }
    let d = DaemonProcess::start(&[]);
    let f = Arc::new(d.open_iommu());
    let ioas = ioas_alloc(&f);
    test_cmd(&f, IOMMU_TEST_OP_MOCK_DOMAIN, ioas, &[0u8; 0]).expect("MOCK_DOMAIN");
    let took = map_waits_for_its_page(&f, ioas);
    // The same call with nothing in flight, for scale (printed, never asserted: speed is the
    // benchmarks' business).
    let mut quiet: Vec<Duration> = (0..21)
        .map(|_| {
            let t0 = Instant::now();
            assert_eq!(range_count(&f, ioas).0, Err(libc::EMSGSIZE));
            t0.elapsed()
        })
        .collect();
    quiet.sort();
    let median = quiet[quiet.len() / 2];
    println!(
        "IOAS_IOVA_RANGES while a map of the same IOAS waits on its caller: {took:?} \
         (with nothing in flight, median of 21: {median:?}; ratio {:.1})",
        took.as_secs_f64() / median.as_secs_f64().max(1e-9)
    );
    drop(f);
    let s = d.wait_idle();
    assert_eq!(
        (s["contexts"].as_u64(), s["pinned_pages"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
}

/// A caller killed while its map waits for a page it never serves (SIGKILL, as an operator ends
/// a QEMU whose postcopy source is gone) dies: the daemon gives the wait up as the kernel's pin
/// does, so the caller's last thread returns and the daemon lets go of everything the caller
/// held. Here another process keeps the userfaultfd open, so the daemon's read of the page waits
/// on until the daemon stops, which it still does at once.
#[test]
fn a_caller_killed_while_its_map_waits_dies() {
    if !support::require("userfaultfd", UnservedPage::new().is_ok()) {
        return;
    }
    let d = DaemonProcess::start(&[]);
    let node = d.node("iommu");
    let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
    // The userfaultfd's other holder lives until this end is closed.
    let (hold_r, hold_w) = nix::unistd::pipe().unwrap();
    // SAFETY: fork; the child sets up its stalled map, reports it and waits to be killed.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let stall = UnservedPage::new().expect("userfaultfd");
            // SAFETY: fork; the grandchild only holds its copy of the userfaultfd until the
            // test closes its end of the pipe.
            if unsafe { libc::fork() } == 0 {
                // Only the userfaultfd and the read end of `hold` stay: the test's pipes must
                // see EOF when the child ends, whatever happens to it.
                // SAFETY: closes this process's own copies; nothing here uses them again.
                unsafe {
                    libc::close(ready_w.as_raw_fd());
                }
                // SAFETY: as above.
                unsafe {
                    libc::close(ready_r.as_raw_fd());
                }
                drop(hold_w);
                let _ = nix::unistd::read(&hold_r, &mut [0u8; 1]);
                // SAFETY: ends the forked grandchild.
                unsafe { libc::_exit(0) };
            }
            let f = Arc::new(support::open_node(&node));
            let ioas = ioas_alloc(&f);
            test_cmd(&f, IOMMU_TEST_OP_MOCK_DOMAIN, ioas, &[0u8; 0]).expect("MOCK_DOMAIN");
            let va = stall.addr();
            let mapper = {
                let f = f.clone();
                std::thread::spawn(move || {
                    support::ioas_map_fixed(&f, ioas, va, 4096, MOCK_APERTURE_START)
                })
            };
            if stall.next_fault(30_000) != Some(va) {
                return 3;
            }
            let _ = nix::unistd::write(&ready_w, b"r");
            // Never served: only SIGKILL ends this process.
            let _ = mapper.join();
            4
        }))
        .unwrap_or(101);
        // SAFETY: ends the forked child.
        unsafe { libc::_exit(code) };
    }
    drop(ready_w);
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&ready_r),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(60_000u16)) == Ok(1)
        && nix::unistd::read(&ready_r, &mut [0u8; 1]) == Ok(1);
    if !ready {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("the child's map did not reach its page");
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(
        support::users::wait_child(pid, Instant::now() + Duration::from_secs(20)),
        Some(128 + libc::SIGKILL),
        "the killed caller did not die"
    );
    let s = d.wait_idle();
    assert_eq!(
        (s["contexts"].as_u64(), s["pinned_pages"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    // The daemon's read of the page still waits (its thread names itself for this).
    let waiting = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("uiommufd-pagew"))
        .count();
    assert_eq!(
        waiting, 1,
        "one read waits for the page the dead caller never served"
    );
    // stop() fails the test unless the daemon is gone within its deadline.
    assert!(d.stop().success(), "the daemon's shutdown failed");
    drop((hold_r, hold_w));
}
