//! A map whose pin waits on its caller's memory (a userfaultfd page nobody serves yet) leaves the
//! IOAS to other requests: IOAS_IOVA_RANGES on the same IOAS is answered while the map is still
//! pinning, and the map completes once the page arrives. Prints the second call's latency.

mod support;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{ioas_alloc, ioctl, test_cmd, DaemonProcess, StalledPage};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::{IOMMU_TEST_OP_MOCK_DOMAIN, MOCK_APERTURE_START};

/// UFFDIO_COPY: _IOWR(0xAA, 3, struct uffdio_copy) (40 bytes).
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;

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

/// Resolves the fault with a page of its own (writable, unlike the shared zero page a write pin
/// would have to break again): the waiting access goes on.
fn serve_page(stall: &StalledPage) {
    let source = vec![0x5au8; 4096];
    let mut copy = [stall.addr, source.as_ptr() as u64, 4096, 0, 0];
    // SAFETY: UFFDIO_COPY reads `source` (live, 4096 bytes) and the array, and writes the
    // array's result word.
    let rc = unsafe { libc::ioctl(stall.uffd.as_raw_fd(), UFFDIO_COPY, copy.as_mut_ptr()) };
    assert_eq!(rc, 0, "UFFDIO_COPY: {}", std::io::Error::last_os_error());
}

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

/// One try: a map of the stalled page on `ioas`, IOAS_IOVA_RANGES on the same IOAS while the map
/// is in the daemon, then the page served. Some(latency) when the map waited for the page and
/// completed (the second call was answered meanwhile); None when the map failed on its own
/// (the daemon's read of a missing userfaultfd page may fail with EFAULT instead of waiting).
fn attempt(f: &Arc<std::fs::File>, ioas: u32) -> Option<Duration> {
    let stall = StalledPage::new().expect("userfaultfd");
    let mapper = {
        let (f, va) = (f.clone(), stall.addr);
        std::thread::spawn(move || support::ioas_map_fixed(&f, ioas, va, 4096, MOCK_APERTURE_START))
    };
    // The daemon's pin touched the page.
    assert!(wait_for_fault(&stall), "the map never touched its page");
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
    serve_page(&stall);
    let (r, num_iovas, took) = answer.expect("IOAS_IOVA_RANGES waited for the map");
    assert_eq!(r, Err(libc::EMSGSIZE));
    assert!(num_iovas >= 1, "no allowed ranges reported");
    match mapper.join().unwrap() {
        // The page existed only once served: the map was in the daemon all along.
        Ok(()) => {
            assert_eq!(
                support::ioas_unmap(f, ioas, MOCK_APERTURE_START, 4096),
                Ok(4096),
                "the committed area unmaps"
            );
            Some(took)
        }
        Err(e) => {
            assert_eq!(e, libc::EFAULT, "the map failed otherwise");
            None
        }
    }
}

#[test]
fn iova_ranges_is_answered_while_a_map_waits_on_its_caller() {
    if !support::require("userfaultfd", StalledPage::new().is_some()) {
        return;
    }
    let d = DaemonProcess::start(&[]);
    let f = Arc::new(d.open_iommu());
    let ioas = ioas_alloc(&f);
    test_cmd(&f, IOMMU_TEST_OP_MOCK_DOMAIN, ioas, &[0u8; 0]).expect("MOCK_DOMAIN");
    // Tries until one map really waited (each try that did not is a failed map, nothing else).
    let shown = (0..20).find_map(|_| attempt(&f, ioas));
    let took = shown.expect("no map waited for its page in 20 tries");
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
