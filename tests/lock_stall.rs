//! A map whose pin waits on its caller's memory (a userfaultfd page nobody serves yet) leaves the
//! IOAS to other requests: IOAS_IOVA_RANGES on the same IOAS is answered while the map is still
//! pinning, and the map completes once the page arrives. Prints the second call's latency.

mod support;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{ioas_alloc, ioctl, test_cmd, DaemonProcess, StalledPage};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::IOMMU_TEST_OP_MOCK_DOMAIN;

/// UFFDIO_ZEROPAGE: _IOWR(0xAA, 4, struct uffdio_zeropage) (32 bytes).
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;

/// Waits (bounded) until the page's userfaultfd reports a fault: someone touched the page.
fn wait_for_fault(stall: &StalledPage) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&stall.uffd),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(30_000u16)),
        Ok(1)
    )
}

/// Resolves the fault with a zero page: the waiting access goes on.
fn serve_zero_page(stall: &StalledPage) {
    let mut zp = [stall.addr, 4096, 0, 0];
    // SAFETY: UFFDIO_ZEROPAGE reads the range and mode and writes the result word of the live
    // local array.
    let rc = unsafe { libc::ioctl(stall.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, zp.as_mut_ptr()) };
    assert_eq!(
        rc,
        0,
        "UFFDIO_ZEROPAGE: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn iova_ranges_is_answered_while_a_map_waits_on_its_caller() {
    let stall = StalledPage::new();
    if !support::require("userfaultfd", stall.is_some()) {
        return;
    }
    let stall = stall.unwrap();
    let d = DaemonProcess::start(&[]);
    let f = Arc::new(d.open_iommu());
    let ioas = ioas_alloc(&f);
    test_cmd(&f, IOMMU_TEST_OP_MOCK_DOMAIN, ioas, &[0u8; 0]).expect("MOCK_DOMAIN");
    let mapped = Arc::new(AtomicBool::new(false));
    let mapper = {
        let (f, mapped, va) = (f.clone(), mapped.clone(), stall.addr);
        std::thread::spawn(move || {
            let mut m = iommu_ioas_map {
                size: std::mem::size_of::<iommu_ioas_map>() as u32,
                flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                ioas_id: ioas,
                user_va: va,
                length: 4096,
                ..Default::default()
            };
            let r = ioctl(&f, IOMMU_IOAS_MAP, &mut m);
            mapped.store(true, Ordering::SeqCst);
            r.map(|_| m.iova)
        })
    };
    // The daemon's pin touched the page: the map is waiting in it.
    assert!(wait_for_fault(&stall), "the map never touched its page");
    // The second call runs on a thread of its own so that, should it wait for the map, the
    // test serves the page after a deadline and fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let f = f.clone();
        std::thread::spawn(move || {
            let mut ranges = iommu_ioas_iova_ranges {
                size: std::mem::size_of::<iommu_ioas_iova_ranges>() as u32,
                ioas_id: ioas,
                ..Default::default()
            };
            let t0 = Instant::now();
            // num_iovas 0 asks for the count: EMSGSIZE with out fields set, as the kernel.
            let r = ioctl(&f, IOMMU_IOAS_IOVA_RANGES, &mut ranges);
            let _ = tx.send((r, ranges.num_iovas, t0.elapsed()));
        });
    }
    let answer = rx.recv_timeout(Duration::from_secs(20));
    let map_done_first = mapped.load(Ordering::SeqCst);
    if answer.is_err() {
        serve_zero_page(&stall);
        panic!("IOAS_IOVA_RANGES waited for the map that waits on its caller");
    }
    let (r, num_iovas, took) = answer.unwrap();
    assert!(!map_done_first, "the map ended before the page arrived");
    assert_eq!(r, Err(libc::EMSGSIZE));
    assert!(num_iovas >= 1, "no allowed ranges reported");
    println!("IOAS_IOVA_RANGES while a map of the same IOAS waits on its caller: {took:?}");
    serve_zero_page(&stall);
    let iova = mapper.join().unwrap().expect("the map completes");
    assert!(mapped.load(Ordering::SeqCst));
    let s = d.wait_status(|s| s["pinned_pages"].as_u64() > Some(0));
    assert!(s["pinned_pages"].as_u64() > Some(0), "{s}");
    assert_eq!(
        support::ioas_unmap(&f, ioas, iova, 4096),
        Ok(4096),
        "the committed area unmaps"
    );
}
