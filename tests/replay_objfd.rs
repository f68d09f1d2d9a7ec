//! Object fds in replay scripts (tests/replay/objfd): IOMMU_FAULT_QUEUE_ALLOC and
//! IOMMU_VEVENTQ_ALLOC name the fd they return (`"as"`), later steps read, write and close it.
//! Against a uiommufd node the replay runs under `uiommufd launch`, which makes the fd; a daemon
//! recording those sessions writes them completely, and the recordings replay with the same
//! results on a fresh daemon.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::{assert_replay_passed as assert_all_pass, DaemonProcess, TempDir};

fn objfd_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay/objfd")
}

fn scripts_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

/// `uiommufd replay --trace` of `scripts` against `d`'s node, under `uiommufd launch` or not.
fn replay(d: &DaemonProcess, launch: bool, scripts: &[PathBuf]) -> Output {
    let exe = env!("CARGO_BIN_EXE_uiommufd");
    let mut cmd = Command::new(exe);
    if launch {
        cmd.arg("launch")
            .arg("--mount")
            .arg(&d.mount)
            .arg("--")
            .arg(exe);
    }
    cmd.args(["replay", "--trace", "--node"])
        .arg(d.node("iommu"))
        .args(scripts)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run uiommufd replay")
}

/// Per script (in run order), what each call did: the ioctl or read/write and its result, and
/// the bytes a read returned. Step numbers, buffer names and variables may differ between a
/// script and its recording; these may not.
fn outcomes(trace: &str) -> Vec<Vec<String>> {
    let mut scripts: Vec<Vec<String>> = vec![Vec::new()];
    for line in trace.lines() {
        if line.starts_with("PASS ") || line.starts_with("FAIL ") {
            scripts.push(Vec::new());
            continue;
        }
        let Some(rest) = line.strip_prefix("TRACE ") else {
            continue;
        };
        // TRACE <script> <step> <label> result=<r> [bytes=<hex>] ...
        let words: Vec<&str> = rest.split(' ').collect();
        let mut kept = vec![words[2].to_string(), words[3].to_string()];
        kept.extend(
            words
                .iter()
                .filter(|w| w.starts_with("bytes="))
                .map(|w| w.to_string()),
        );
        scripts.last_mut().unwrap().push(kept.join(" "));
    }
    scripts.pop();
    scripts
}

#[test]
fn objfd_scripts_record_completely_and_replay_the_same_under_the_launcher() {
    let scripts = scripts_in(&objfd_corpus());
    assert!(scripts.len() >= 2, "{scripts:?}");
    let rec = TempDir::new("rec-objfd");
    let d = DaemonProcess::start(&["--record", rec.0.to_str().unwrap()]);
    let original = assert_all_pass(&replay(&d, true, &scripts), scripts.len());
    let s = d.wait_idle();
    assert_eq!(
        (&s["contexts"], &s["objects"]),
        (&0.into(), &0.into()),
        "{s}"
    );
    drop(d);

    // One script per session: the fds' own opens write none, the iommufd's holds their steps.
    let recorded = scripts_in(&rec.0);
    assert_eq!(recorded.len(), scripts.len(), "{recorded:?}");
    for r in &recorded {
        let text = std::fs::read_to_string(r).unwrap();
        for absent in ["INCOMPLETE", "NOT RECORDED"] {
            assert!(
                !text.contains(absent),
                "{absent} in {}:\n{text}",
                r.display()
            );
        }
        for want in [
            "\"as\": {\"objfd1\": \"out_",
            "{\"fd_read\": \"objfd1\", \"size\": ",
            "{\"close\": \"objfd1\"}",
        ] {
            assert!(text.contains(want), "no {want} in {}:\n{text}", r.display());
        }
    }
    let fault = recorded
        .iter()
        .map(|r| std::fs::read_to_string(r).unwrap())
        .find(|t| t.contains("IOMMU_FAULT_QUEUE_ALLOC"))
        .expect("a recorded fault queue session");
    for want in [
        "{\"ioctl\": \"IOMMU_FAULT_QUEUE_ALLOC\", \"args\": {\"flags\": 1}, \"expect\": \"EOPNOTSUPP\"}",
        "{\"fd_write\": \"objfd1\", \"hex\": \"0100000000000000\", \"ret\": 8}",
        "{\"fd_read\": \"objfd1\", \"size\": 41, \"expect\": \"ESPIPE\"}",
    ] {
        assert!(fault.contains(want), "no {want} in\n{fault}");
    }

    // The recordings on a fresh daemon: the same results, call by call, as the scripts had.
    let fresh = DaemonProcess::start(&[]);
    let again = assert_all_pass(&replay(&fresh, true, &recorded), recorded.len());
    let mut want = outcomes(&original);
    let mut got = outcomes(&again);
    want.sort();
    got.sort();
    assert_eq!(got, want, "original:\n{original}\nrecorded:\n{again}");
    let s = fresh.wait_idle();
    assert_eq!(
        (&s["contexts"], &s["objects"]),
        (&0.into(), &0.into()),
        "{s}"
    );

    // Without the launcher a uiommufd node cannot hand out the fd, and the failure says why.
    let out = replay(&fresh, false, &recorded[..1]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "got EOPNOTSUPP (on a uiommufd node, run the replay under `uiommufd launch`)"
        ),
        "{text}"
    );

    // A script naming the result of an ioctl that returns no fd as one is refused, rather than
    // taking ownership of fd 0 (or of one of its own opens).
    let bad = rec.0.join("ret_is_no_fd.jsonl");
    std::fs::write(
        &bad,
        "{\"open\": \"iommu\"}\n{\"ioctl\": \"IOMMU_IOAS_ALLOC\", \"as\": {\"x\": \"ret\"}}\n",
    )
    .unwrap();
    let out = replay(&fresh, true, &[bad]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("fd 0 is not a new fd of this call"), "{text}");
}
