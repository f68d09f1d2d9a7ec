//! The replay corpus (tests/replay/*.jsonl) through both modes, session recording round trips,
//! and the diagnostics for failing and malformed scripts.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::{ioctl, ioctl_raw, DaemonProcess, TempDir};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::vfio::*;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay")
}

fn corpus_len() -> usize {
    scripts_in(&corpus())
}

/// The replay scripts directly in `dir`.
fn scripts_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "jsonl")
        })
        .count()
}

fn replay(args: &[&str], scripts: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .arg("replay")
        .args(args)
        .args(scripts)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run uiommufd replay")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a clean run of `n` scripts: exit 0 and the summary alone on the last line.
fn assert_all_pass(o: &Output, n: usize) {
    support::assert_replay_passed(o, n);
}

/// The scripts that need the selftest surface (mock devices through IOMMU_TEST_CMD ops): run here
/// and in scripts/refkernel.sh's test variant (which records them too).
fn selftest_corpus() -> PathBuf {
    corpus().join("selftest")
}

fn selftest_corpus_len() -> usize {
    scripts_in(&selftest_corpus())
}

#[test]
fn corpus_in_process() {
    let o = replay(&["--in-process"], &[&corpus()]);
    assert_all_pass(&o, corpus_len());
}

#[test]
fn selftest_corpus_in_process_and_against_a_fuse_daemon() {
    assert!(selftest_corpus_len() >= 7);
    let o = replay(&["--in-process"], &[&selftest_corpus()]);
    assert_all_pass(&o, selftest_corpus_len());
    let d = DaemonProcess::start(&[]);
    let node = d.node("iommu");
    let o = replay(&["--node", node.to_str().unwrap()], &[&selftest_corpus()]);
    assert_all_pass(&o, selftest_corpus_len());
    let s = d.wait_idle();
    assert_eq!(s["contexts"], 0, "{s}");
    assert_eq!(s["objects"], 0, "{s}");
}

/// The QEMU e2e's recorded session (tests/replay/qemu): as recorded, on a fresh daemon serving the
/// dmacopy device it was recorded with; transformed for the selftest's mock device (the form
/// scripts/refkernel.sh replays on the real kernel), in process and on a `--selftest` daemon.
#[test]
fn qemu_recording_replays_raw_and_on_the_mock() {
    let dir = corpus().join("qemu");
    assert_eq!(scripts_in(&dir), 1);
    // Replayed through a recording daemon: the replay's own session (device node included) is
    // recorded again, and that recording replays on a fresh daemon too.
    let rec = TempDir::new("rec");
    let d = DaemonProcess::start(&["--device", "dmacopy", "--record", rec.0.to_str().unwrap()]);
    let node = d.node("iommu");
    assert_all_pass(&replay(&["--node", node.to_str().unwrap()], &[&dir]), 1);
    let s = d.wait_idle();
    assert_eq!(s["objects"], 0, "{s}");
    assert!(d.stop().success());
    let again = recordings(&rec.0);
    assert_eq!(again.len(), 1, "{again:?}");
    let text = std::fs::read_to_string(&again[0]).unwrap();
    for step in [
        r#"{"open": "device:dmacopy0", "as": "dmacopy0"}"#,
        r#"{"ioctl": "VFIO_DEVICE_BIND_IOMMUFD", "fd": "dmacopy0", "args": {"argsz": 16, "iommufd": "%fd""#,
        r#""save": {"id1": "out_devid"}"#,
        r#"{"ioctl": "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "fd": "dmacopy0", "args": {"argsz": 12, "pt_id": "$id3"}"#,
        r#"{"close": "dmacopy0"}"#,
    ] {
        assert!(text.contains(step), "{step} not in:\n{text}");
    }
    let d = DaemonProcess::start(&["--device", "dmacopy"]);
    let node = d.node("iommu");
    assert_all_pass(
        &replay(&["--node", node.to_str().unwrap()], &[&again[0]]),
        1,
    );
    drop(d);
    let mock = TempDir::new("mock");
    let o = replay(&["--to-mock", mock.0.to_str().unwrap()], &[&dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(mock.0.join("qemu_dmacopy.jsonl")).unwrap();
    assert!(text.contains("IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE"), "{text}");
    assert!(!text.contains("\"open\": \"device:"), "{text}");
    assert_all_pass(&replay(&["--in-process"], &[&mock.0]), 1);
    let d = DaemonProcess::start(&[]);
    let node = d.node("iommu");
    assert_all_pass(&replay(&["--node", node.to_str().unwrap()], &[&mock.0]), 1);
}

/// A device bound, attached to an IOAS (its HWPT comes back in pt_id), detached, closed and
/// bound again: recorded as steps on the device's opens, the recording replays on a fresh daemon,
/// and transformed for the mock device it replays in process.
#[test]
fn device_steps_record_and_replay() {
    let work = TempDir::new("devsteps");
    let script = work.0.join("bind_twice.jsonl");
    std::fs::write(
        &script,
        r#"{"open": "iommu"}
{"open": "device:dmacopy0", "as": "d"}
{"ioctl": "VFIO_DEVICE_BIND_IOMMUFD", "fd": "d", "args": {"iommufd": "%fd"}, "save": {"dev": "out_devid"}}
{"ioctl": "IOMMU_IOAS_ALLOC", "save": {"ioas": "out_ioas_id"}}
{"ioctl": "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "fd": "d", "args": {"pt_id": "$ioas"}, "save": {"hwpt": "pt_id"}}
{"ioctl": "IOMMU_DESTROY", "args": {"id": "$hwpt"}, "expect": "EBUSY"}
{"ioctl": "VFIO_DEVICE_DETACH_IOMMUFD_PT", "fd": "d"}
{"close": "d"}
{"open": "device:dmacopy0", "as": "d"}
{"ioctl": "VFIO_DEVICE_BIND_IOMMUFD", "fd": "d", "args": {"iommufd": "%fd"}, "save": {"dev2": "out_devid"}}
{"ioctl": "IOMMU_GET_HW_INFO", "args": {"dev_id": "$dev2"}}
{"ioctl": "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "fd": "d", "args": {"pt_id": "$ioas"}}
{"close": "d"}
{"close": "fd"}
"#,
    )
    .unwrap();
    let rec = TempDir::new("devrec");
    let d = DaemonProcess::start(&["--device", "dmacopy", "--record", rec.0.to_str().unwrap()]);
    let node = d.node("iommu");
    assert_all_pass(&replay(&["--node", node.to_str().unwrap()], &[&script]), 1);
    d.wait_idle();
    assert!(d.stop().success());
    let files = recordings(&rec.0);
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(
        text.matches(r#"{"open": "device:dmacopy0", "as": "dmacopy0"}"#)
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches(r#"{"close": "dmacopy0"}"#).count(),
        2,
        "{text}"
    );
    assert!(text.contains(r#""save": {"id3": "pt_id"}"#), "{text}");
    assert!(
        text.contains(r#"{"ioctl": "IOMMU_DESTROY", "args": {"id": "$id3"}, "expect": "EBUSY"}"#),
        "{text}"
    );
    let fresh = DaemonProcess::start(&["--device", "dmacopy"]);
    let node = fresh.node("iommu");
    assert_all_pass(
        &replay(&["--node", node.to_str().unwrap()], &[&files[0]]),
        1,
    );
    drop(fresh);
    let mock = work.0.join("mock");
    let o = replay(&["--to-mock", mock.to_str().unwrap()], &[&files[0]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_all_pass(&replay(&["--in-process"], &[&mock]), 1);
}

#[test]
fn corpus_against_a_fuse_daemon() {
    let d = DaemonProcess::start(&[]);
    let node = d.node("iommu");
    let o = replay(&["--node", node.to_str().unwrap()], &[&corpus()]);
    assert_all_pass(&o, corpus_len());
    let s = d.wait_idle();
    assert_eq!(s["contexts"], 0, "{s}");
    assert_eq!(s["objects"], 0, "{s}");
}

fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Records a session, then replays the recordings in-process and against a fresh daemon.
fn replay_recordings(dir: &Path, expected: usize) {
    let files = recordings(dir);
    assert_eq!(files.len(), expected, "{files:?}");
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    assert_all_pass(&replay(&["--in-process"], &refs), expected);
    let fresh = DaemonProcess::start(&[]);
    let node = fresh.node("iommu");
    assert_all_pass(
        &replay(&["--node", node.to_str().unwrap()], &refs),
        expected,
    );
}

#[test]
fn recorded_corpus_replays_cleanly() {
    let rec = TempDir::new("rec");
    let d = DaemonProcess::start(&["--record", rec.0.to_str().unwrap()]);
    let node = d.node("iommu");
    assert_all_pass(
        &replay(&["--node", node.to_str().unwrap()], &[&corpus()]),
        corpus_len(),
    );
    d.wait_idle();
    // One script per open: every corpus script opens once, fork.jsonl's child opens again.
    replay_recordings(&rec.0, corpus_len() + 1);
}

/// The selftest corpus passes data through pointers the table knows only as integers
/// (HWPT_INVALIDATE's entries, dirty bitmaps) and driver data behind `data_uptr`: its recordings
/// must carry those bytes and buffers to replay with the same results.
#[test]
fn recorded_selftest_corpus_replays_cleanly() {
    let rec = TempDir::new("rec-selftest");
    let d = DaemonProcess::start(&["--record", rec.0.to_str().unwrap()]);
    let node = d.node("iommu");
    assert_all_pass(
        &replay(&["--node", node.to_str().unwrap()], &[&selftest_corpus()]),
        selftest_corpus_len(),
    );
    d.wait_idle();
    replay_recordings(&rec.0, selftest_corpus_len());
}

const RW: u32 = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;

/// A client program of its own: raw ioctls with pointers into its heap and stack.
fn client_session(f: &std::fs::File) {
    let mut alloc = iommu_ioas_alloc {
        size: 12,
        ..Default::default()
    };
    ioctl(f, IOMMU_IOAS_ALLOC, &mut alloc).unwrap();
    let ioas = alloc.out_ioas_id;
    ioctl(f, IOMMU_IOAS_ALLOC, &mut alloc).unwrap();
    let ioas2 = alloc.out_ioas_id;
    let allowed = [
        iommu_iova_range {
            start: 0x1000_0000,
            last: 0x1fff_ffff,
        },
        iommu_iova_range {
            start: 0x4000_0000,
            last: 0x4fff_ffff,
        },
    ];
    let mut allow = iommu_ioas_allow_iovas {
        size: 24,
        ioas_id: ioas,
        num_iovas: 2,
        reserved: 0,
        allowed_iovas: allowed.as_ptr() as u64,
    };
    ioctl(f, IOMMU_IOAS_ALLOW_IOVAS, &mut allow).unwrap();
    let buf = vec![0x5au8; 256 * 1024];
    let mut map = iommu_ioas_map {
        size: 40,
        flags: RW,
        ioas_id: ioas,
        user_va: buf.as_ptr() as u64 + 4096,
        length: 64 * 1024,
        ..Default::default()
    };
    ioctl(f, IOMMU_IOAS_MAP, &mut map).unwrap();
    let iova = map.iova;
    // The same buffer again, overlapping the first use of it, at a fixed IOVA.
    map.flags = RW | IOMMU_IOAS_MAP_FIXED_IOVA;
    map.user_va = buf.as_ptr() as u64 + 32 * 1024;
    map.iova = 0x8000_0000;
    ioctl(f, IOMMU_IOAS_MAP, &mut map).unwrap();
    assert_eq!(ioctl(f, IOMMU_IOAS_MAP, &mut map), Err(libc::EEXIST));
    let mut copy = iommu_ioas_copy {
        size: 40,
        flags: IOMMU_IOAS_MAP_READABLE,
        dst_ioas_id: ioas2,
        src_ioas_id: ioas,
        length: 8192,
        dst_iova: 0,
        src_iova: iova + 8192,
    };
    ioctl(f, IOMMU_IOAS_COPY, &mut copy).unwrap();
    let mut ranges = [iommu_iova_range::default(); 2];
    let mut r = iommu_ioas_iova_ranges {
        size: 32,
        ioas_id: ioas2,
        num_iovas: 0,
        allowed_iovas: ranges.as_mut_ptr() as u64,
        ..Default::default()
    };
    assert_eq!(
        ioctl(f, IOMMU_IOAS_IOVA_RANGES, &mut r),
        Err(libc::EMSGSIZE)
    );
    r.num_iovas = 2;
    ioctl(f, IOMMU_IOAS_IOVA_RANGES, &mut r).unwrap();
    // Bad input: a short size, an unmapped argument, an unknown ID.
    let mut unmap = iommu_ioas_unmap {
        size: 16,
        ioas_id: ioas,
        iova,
        length: 64 * 1024,
    };
    assert_eq!(ioctl(f, IOMMU_IOAS_UNMAP, &mut unmap), Err(libc::EINVAL));
    assert_eq!(ioctl_raw(f, IOMMU_IOAS_UNMAP, 8), Err(libc::EFAULT));
    unmap.size = 24;
    unmap.ioas_id = 99;
    assert_eq!(ioctl(f, IOMMU_IOAS_UNMAP, &mut unmap), Err(libc::ENOENT));
    unmap.ioas_id = ioas;
    ioctl(f, IOMMU_IOAS_UNMAP, &mut unmap).unwrap();
    assert_eq!(unmap.length, 64 * 1024);
    // The VFIO container ioctls on the same fd.
    let mut vfio_ioas = iommu_vfio_ioas {
        size: 12,
        ioas_id: ioas2,
        op: IOMMU_VFIO_IOAS_SET,
        reserved: 0,
    };
    ioctl(f, IOMMU_VFIO_IOAS, &mut vfio_ioas).unwrap();
    assert_eq!(
        ioctl_raw(f, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU as u64),
        Ok(1)
    );
    ioctl_raw(f, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU as u64).unwrap();
    let mut dma = vfio_iommu_type1_dma_map {
        argsz: 32,
        flags: VFIO_DMA_MAP_FLAG_READ,
        vaddr: buf.as_ptr() as u64 + 128 * 1024,
        iova: 0x20_0000,
        size: 16384,
    };
    ioctl(f, VFIO_IOMMU_MAP_DMA, &mut dma).unwrap();
    let mut info = [0u8; 96];
    info[..4].copy_from_slice(&96u32.to_ne_bytes());
    ioctl_raw(f, VFIO_IOMMU_GET_INFO, info.as_mut_ptr() as u64).unwrap();
    let mut all = vfio_iommu_type1_dma_unmap {
        argsz: 24,
        flags: VFIO_DMA_UNMAP_FLAG_ALL,
        ..Default::default()
    };
    ioctl(f, VFIO_IOMMU_UNMAP_DMA, &mut all).unwrap();
    assert_eq!(all.size, 16384 + 8192);
    let mut destroy = iommu_destroy { size: 8, id: ioas };
    ioctl(f, IOMMU_DESTROY, &mut destroy).unwrap();
    assert_eq!(ioctl(f, IOMMU_DESTROY, &mut destroy), Err(libc::ENOENT));
}

#[test]
fn recorded_client_session_round_trip() {
    let rec = TempDir::new("rec");
    let d = DaemonProcess::start(&["--record", rec.0.to_str().unwrap()]);
    {
        let f = d.open_iommu();
        client_session(&f);
        let g = support::open_node(&d.node("vfio/vfio"));
        assert_eq!(ioctl_raw(&g, VFIO_GET_API_VERSION, 0), Ok(0));
        assert_eq!(ioctl_raw(&g, VFIO_SET_IOMMU, 42), Err(libc::EINVAL));
    }
    d.wait_idle();
    let files = recordings(&rec.0);
    let vfio = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|t| t.contains("\"open\": \"vfio\""))
        .expect("the vfio/vfio open was recorded");
    assert!(
        vfio.contains("\"ioctl\": \"VFIO_SET_IOMMU\", \"arg\": 42, \"expect\": \"EINVAL\""),
        "{vfio}"
    );
    replay_recordings(&rec.0, 2);
}

fn script(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn mismatches_name_the_step_the_ioctl_and_both_outcomes() {
    let dir = TempDir::new("scripts");
    let bad = script(
        &dir,
        "bad.jsonl",
        "{\"open\": \"iommu\"}\n# comment\n{\"ioctl\": \"IOMMU_IOAS_ALLOC\"}\n\
         {\"ioctl\": \"IOMMU_DESTROY\", \"args\": {\"id\": 7}, \"expect\": \"EBUSY\"}\n",
    );
    let out_bad = script(
        &dir,
        "out.jsonl",
        "{\"open\": \"iommu\"}\n{\"ioctl\": \"IOMMU_IOAS_ALLOC\", \"out\": {\"out_ioas_id\": 3}}\n",
    );
    let good = script(&dir, "good.jsonl", "{\"open\": \"iommu\"}\n");
    let o = replay(&["--in-process"], &[&bad, &out_bad, &good]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("bad.jsonl:4: step 3: IOMMU_DESTROY: expected EBUSY, got ENOENT"),
        "{out}"
    );
    assert!(
        out.contains(
            "out.jsonl:2: step 2: IOMMU_IOAS_ALLOC: out.out_ioas_id expected 0x3, got 0x1"
        ),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("1 passed, 2 failed"), "{out}");
}

#[test]
fn malformed_scripts_are_reported_by_line_without_panicking() {
    let dir = TempDir::new("scripts");
    let cases = [
        ("{\"open\": \"iommu\"}\n{\"ioctl\": \"IOMMU_IOAS_MAP\", \"args\": {\"flagz\": 1}}\n", 2, "flagz"),
        ("{\"open\": \"iommu\"\n", 1, "not JSON"),
        ("\n\n{\"ioctl\": \"IOMMU_NOPE\"}\n", 3, "unknown ioctl"),
        ("{\"open\": \"iommu\"}\n{\"ioctl\": \"IOMMU_DESTROY\", \"expect\": \"EWHAT\"}\n", 2, "EWHAT"),
        ("{\"buffer\": \"b\", \"size\": 0}\n", 1, "size"),
        ("{\"open\": \"iommu\"}\n{\"ioctl\": \"IOMMU_DESTROY\", \"args\": {\"id\": \"$nope\"}}\n", 2, "$nope is not set"),
        ("{\"open\": \"iommu\"}\n{\"ioctl\": \"IOMMU_DESTROY\", \"args\": {\"id\": \"0x1ffffffff\"}}\n", 2, "does not fit"),
        ("{\"client\": \"ghost\", \"open\": \"iommu\"}\n", 1, "no client"),
        ("{\"ioctl\": \"IOMMU_DESTROY\"}\n", 1, "nothing open"),
        ("{\"open\": \"iommu\"}\n{\"ioctl\": \"IOMMU_DESTROY\", \"args\": {\"id\": \"&nobuf\"}}\n", 2, "no buffer"),
        ("[]\n", 1, "JSON object"),
    ];
    for (i, (text, line, what)) in cases.iter().enumerate() {
        let p = script(&dir, &format!("m{i}.jsonl"), text);
        let o = replay(&["--in-process"], &[&p]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(1), "case {i}: {out}");
        let first = out.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("FAIL {}:{line}: ", p.display())) && first.contains(what),
            "case {i}: {out}"
        );
        assert_eq!(out.lines().last(), Some("0 passed, 1 failed"));
    }
    // A missing file is a failure too.
    let o = replay(&["--in-process"], &[Path::new("/nonexistent/x.jsonl")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("cannot read"));
}

/// Pages of the test process whose protection a session changes (unmapped on drop).
struct Pages {
    addr: u64,
    len: usize,
}

impl Pages {
    fn new(pages: usize) -> Self {
        let len = pages * 4096;
        // SAFETY: a fresh private anonymous mapping; only this struct names it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Pages {
            addr: p as u64,
            len,
        }
    }

    fn at(&self, off: usize) -> u64 {
        assert!(off <= self.len);
        self.addr + off as u64
    }

    fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        let dst = (self.addr as usize + off) as *mut u8;
        // SAFETY: `dst..dst + len` lies inside the mapping made in new() (checked above), which no
        // Rust reference aliases.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    }

    fn protect(&self, page: usize, prot: libc::c_int) {
        assert!((page + 1) * 4096 <= self.len);
        // SAFETY: whole pages of the mapping made in new(); nothing reads them from Rust while
        // they are protected (only the daemon, through the kernel).
        let rc = unsafe {
            libc::mprotect(
                (self.addr + page as u64 * 4096) as *mut libc::c_void,
                4096,
                prot,
            )
        };
        assert_eq!(rc, 0);
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), no longer used.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A client whose calls fail on memory: structs and arrays in read-only pages, an array running
/// into a page that is PROT_NONE only for that call, unknown ioctls with more than a size word.
fn faulting_session(f: &std::fs::File) {
    const RO: libc::c_int = libc::PROT_READ;
    const RW: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;
    let ioas = support::ioas_alloc(f);
    let p = Pages::new(4);
    // IOAS_ALLOC's struct in a read-only page: the ID cannot be written back.
    p.write(0, &12u32.to_ne_bytes());
    p.protect(0, RO);
    assert_eq!(ioctl_raw(f, IOMMU_IOAS_ALLOC, p.at(0)), Err(libc::EFAULT));
    p.protect(0, RW);
    // IOVA_RANGES writing into a read-only array.
    p.protect(1, RO);
    let mut r = iommu_ioas_iova_ranges {
        size: 32,
        ioas_id: ioas,
        num_iovas: 1,
        allowed_iovas: p.at(4096),
        ..Default::default()
    };
    assert_eq!(ioctl(f, IOMMU_IOAS_IOVA_RANGES, &mut r), Err(libc::EFAULT));
    p.protect(1, RW);
    // ALLOW_IOVAS reading an array that runs into page 3 while it is PROT_NONE; the same pages
    // are fine a moment later.
    let range = |start: u64, last: u64| [start.to_ne_bytes(), last.to_ne_bytes()].concat();
    p.write(3 * 4096 - 16, &range(0x1000_0000, 0x1fff_ffff));
    p.write(3 * 4096, &range(0x4000_0000, 0x4fff_ffff));
    p.protect(3, libc::PROT_NONE);
    let mut allow = iommu_ioas_allow_iovas {
        size: 24,
        ioas_id: ioas,
        num_iovas: 2,
        reserved: 0,
        allowed_iovas: p.at(3 * 4096 - 16),
    };
    assert_eq!(
        ioctl(f, IOMMU_IOAS_ALLOW_IOVAS, &mut allow),
        Err(libc::EFAULT)
    );
    p.protect(3, RW);
    ioctl(f, IOMMU_IOAS_ALLOW_IOVAS, &mut allow).unwrap();
    r.num_iovas = 2;
    r.allowed_iovas = p.at(3 * 4096);
    ioctl(f, IOMMU_IOAS_IOVA_RANGES, &mut r).unwrap();
    // Unknown ioctls: a 16-byte struct, and one whose size word runs it into a PROT_NONE page.
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&16u32.to_ne_bytes());
    raw[8..].copy_from_slice(&0x1122_3344_5566_7788u64.to_ne_bytes());
    p.write(4096, &raw);
    assert_eq!(ioctl_raw(f, 0x3b9f, p.at(4096)), Err(libc::ENOTTY));
    p.write(3 * 4096 - 8, &64u32.to_ne_bytes());
    p.protect(3, libc::PROT_NONE);
    assert_eq!(ioctl_raw(f, 0x3b9f, p.at(3 * 4096 - 8)), Err(libc::ENOTTY));
    p.protect(3, RW);
}

#[test]
fn recorded_faults_replay_as_faults() {
    let rec = TempDir::new("rec");
    let d = DaemonProcess::start(&["--record", rec.0.to_str().unwrap()]);
    {
        let f = d.open_iommu();
        faulting_session(&f);
    }
    d.wait_idle();
    let files = recordings(&rec.0);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    for want in [
        "\"prot\": \"r\"}",
        "\"prot\": \"none\"}",
        "\"raw\": \"10000000000000008877665544332211\"",
        "\"at\": \"&b1+0x2ff8\", \"raw\": \"4000000000000000\"",
    ] {
        assert!(text.contains(want), "no {want} in\n{text}");
    }
    replay_recordings(&rec.0, 1);
}

#[test]
fn object_fds_a_script_cannot_make_are_marked_not_dropped() {
    use std::os::fd::AsRawFd;
    use uiommufd::dispatch::private_abi::*;
    let rec = TempDir::new("rec");
    let d = DaemonProcess::start(&["--record", rec.0.to_str().unwrap()]);
    {
        let f = d.open_iommu();
        let ioas = support::ioas_alloc(&f);
        let accessed = support::ioas_alloc(&f);
        // What `uiommufd launch` does for IOMMU_TEST_OP_CREATE_ACCESS: bind a fresh open file.
        // (Fault and vEVENT queues are recorded as steps: tests/replay_objfd.rs.)
        let handle = support::open_node(&d.node("iommu"));
        let mut bind = uiommufd_handle_bind {
            size: std::mem::size_of::<uiommufd_handle_bind>() as u32,
            kind: UIOMMUFD_HANDLE_TEST_ACCESS,
            iommufd: f.as_raw_fd(),
            arg0: accessed,
            ..Default::default()
        };
        ioctl(&handle, UIOMMUFD_HANDLE_BIND, &mut bind).unwrap();
        let mut destroy = iommu_destroy { size: 8, id: ioas };
        ioctl(&f, IOMMU_DESTROY, &mut destroy).unwrap();
    }
    d.wait_idle();
    // The handle's own open is no session; the iommufd's says where the object fd was made.
    let files = recordings(&rec.0);
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("# INCOMPLETE: 1 object fd(s)"), "{text}");
    assert!(
        text.contains("a selftest access (IOMMU_TEST_OP_CREATE_ACCESS) with an fd"),
        "{text}"
    );
    assert!(text.contains("\"ioctl\": \"IOMMU_DESTROY\""), "{text}");
    replay_recordings(&rec.0, 1);
}
