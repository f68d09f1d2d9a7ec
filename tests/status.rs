//! `uiommufd status` against a real daemon (FUSE mode) over its control socket, the socket's
//! lifecycle and manners, and systemd's readiness notification (`$NOTIFY_SOCKET`).

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{ioas_alloc, DaemonProcess, TempDir};

fn status(control: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .arg("status")
        .arg("--control")
        .arg(control)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run uiommufd status")
}

fn status_json(control: &Path) -> serde_json::Value {
    let out = status(control, &["--json"]);
    assert!(
        out.status.success(),
        "status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// One raw request on the control socket; the whole answer.
fn raw(control: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(control).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn ioas_count(ctx: &serde_json::Value) -> u64 {
    ctx["objects"]["ioas"].as_u64().unwrap_or(0)
}

#[test]
fn status_shows_contexts_objects_and_devices() {
    let d = DaemonProcess::start_plain(&["--device", "dmacopy"]);
    let control = d.control();
    let meta = std::fs::symlink_metadata(&control).expect("control socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let idle = status_json(&control);
    assert_eq!(idle["contexts"], 0, "{idle}");
    assert_eq!(idle["devices"], serde_json::json!(["dmacopy0"]), "{idle}");

    let a = d.open_iommu();
    let b = d.open_iommu();
    ioas_alloc(&a);
    ioas_alloc(&a);
    let mapped_ioas = ioas_alloc(&b);
    // An IOAS with areas: two mappings of 8 KiB and 4 KiB of this process's memory.
    let mem = support::AnonPages::new(3);
    support::ioas_map_at(&b, mapped_ioas, mem.addr(), 8192, 0x10_0000, true).unwrap();
    support::ioas_map_at(&b, mapped_ioas, mem.addr() + 8192, 4096, 0x20_0000, true).unwrap();
    let s = status_json(&control);
    assert_eq!(s["contexts"], 2, "{s}");
    assert_eq!(s["objects"], 3, "{s}");
    assert_eq!(s["pinned_pages"], 0, "{s}");
    assert_eq!(s["live_mappings"], 0, "{s}");
    let ctxs = s["context_detail"].as_array().expect("context_detail");
    let mut per_ctx: Vec<u64> = ctxs.iter().map(ioas_count).collect();
    per_ctx.sort();
    assert_eq!(per_ctx, [1, 2], "{s}");
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert!(ctxs.iter().all(|c| c["uid"] == uid), "{s}");
    // Who opened each context, and its IOASes (none mapped yet).
    assert!(ctxs.iter().all(|c| c["pid"] == std::process::id()), "{s}");
    assert!(ctxs.iter().all(|c| c["command"].is_string()), "{s}");
    let ioas_entries: usize = ctxs
        .iter()
        .map(|c| c["ioas"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(ioas_entries, 3, "{s}");
    let mut ioas: Vec<(u64, u64)> = ctxs
        .iter()
        .flat_map(|c| c["ioas"].as_array().cloned().unwrap_or_default())
        .map(|i| (i["areas"].as_u64().unwrap(), i["bytes"].as_u64().unwrap()))
        .collect();
    ioas.sort();
    assert_eq!(ioas, [(0, 0), (0, 0), (2, 12288)], "{s}");
    // The FUSE status file is a view of the same data.
    let file = d.status();
    assert_eq!(file["contexts"], s["contexts"]);
    assert_eq!(file["context_detail"], s["context_detail"]);

    // The table: the totals line, the device, one row per context with its objects.
    let out = status(&control, &[]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("contexts 2   objects 3   pinned pages 0"),
        "{table}"
    );
    assert!(table.contains("devices  dmacopy0"), "{table}");
    assert!(table.contains("12 KiB in 2"), "{table}");
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("CONTEXT"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    for (row, ctx) in rows.iter().zip(ctxs) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], ctx["id"].to_string(), "{table}");
        assert_eq!(cols[1], uid.to_string(), "{table}");
        assert_eq!(cols[2], std::process::id().to_string(), "{table}");
        assert_eq!(
            cols.last().copied(),
            Some(format!("ioas={}", ioas_count(ctx)).as_str()),
            "{table}"
        );
    }

    drop((a, b));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_json(&control)["contexts"] != 0 {
        assert!(Instant::now() < deadline, "contexts stay after close");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn other_requests_get_one_error_line_and_a_silent_client_blocks_nobody() {
    let d = DaemonProcess::start_plain(&[]);
    let control = d.control();
    let e = raw(&control, b"shutdown\n");
    assert!(e.starts_with("error: ") && e.ends_with('\n'), "{e:?}");
    assert_eq!(e.lines().count(), 1, "{e:?}");
    assert!(e.contains("shutdown"), "{e:?}");
    let long = raw(&control, &[b'x'; 200]);
    assert!(long.starts_with("error: request longer than"), "{long:?}");
    assert!(raw(&control, b"status json\n").starts_with('{'));

    // A client that never sends anything holds only its own connection, and the daemon closes it
    // after its timeout with an error line.
    let mut silent = UnixStream::connect(&control).unwrap();
    let json = status_json(&control);
    assert_eq!(json["contexts"], 0);
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The read timeout above bounds the wait: a daemon that never closes fails the read.
    let mut out = String::new();
    silent.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("error: no request line"), "{out:?}");
}

#[test]
fn status_without_a_daemon_says_so() {
    let dir = TempDir::new("status-none");
    let out = status(&dir.0.join("none.sock"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no daemon is listening"), "{err}");
    // A stale socket (nobody accepts) says the same.
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let out = status(&stale, &["--json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon is listening"));
}

fn serve_cmd(mount: &Path, control: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    c.args(["serve", "--transport", "fuse", "--mount"])
        .arg(mount)
        .arg("--control")
        .arg(control)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap()
}

#[test]
fn stale_socket_replaced_live_one_refused_removed_at_exit() {
    let dir = TempDir::new("status-life");
    // A missing directory is created (0755).
    let control = dir.0.join("run/ctl/control.sock");
    std::fs::create_dir_all(control.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&control).unwrap());
    assert!(UnixStream::connect(&control).is_err(), "stale socket");

    let mount = dir.0.join("m");
    let mut first = serve_cmd(&mount, &control).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&control).is_err() {
        assert!(Instant::now() < deadline, "control socket never answered");
        assert!(first.try_wait().unwrap().is_none(), "daemon exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_json(&control)["contexts"], 0);

    // A second daemon on the same control socket stops before it mounts anything.
    let out = serve_cmd(&dir.0.join("m2"), &control).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("answers on the control socket"), "{err}");
    assert!(!dir.0.join("m2").exists(), "second daemon went on to mount");
    assert_eq!(
        status_json(&control)["contexts"],
        0,
        "first daemon lost its socket"
    );

    // A path under the mount is refused.
    let out = serve_cmd(&dir.0.join("m3"), &dir.0.join("m3/c.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the mount would hide it"));

    assert!(terminate(&mut first).success());
    assert!(!control.exists(), "control socket left behind at exit");

    let dir2 = TempDir::new("status-mkdir");
    let control = dir2.0.join("a/b/control.sock");
    let mut d = serve_cmd(&dir2.0.join("m"), &control).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&control).is_err() {
        assert!(Instant::now() < deadline, "control socket never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(dir2.0.join("a/b"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(terminate(&mut d).success());
}

/// Receives datagrams on `sock` until one contains `want` (a line), or the deadline passes.
fn expect_datagram(sock: &UnixDatagram, want: &str, deadline: Instant) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {want} from the daemon");
        sock.set_read_timeout(Some(left)).unwrap();
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {want}: {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == want) {
            return msg;
        }
    }
}

fn notify_roundtrip(addr: &std::ffi::OsStr, rx: &UnixDatagram, dir: &TempDir) {
    let mount = dir.0.join("m");
    let mut child = serve_cmd(&mount, &dir.0.join("control.sock"))
        .env("NOTIFY_SOCKET", addr)
        .spawn()
        .unwrap();
    let ready = expect_datagram(rx, "READY=1", Instant::now() + Duration::from_secs(20));
    // Ready means served: the node and the control socket answer at once.
    assert!(std::fs::metadata(mount.join("iommu")).is_ok(), "{ready}");
    assert!(UnixStream::connect(dir.0.join("control.sock")).is_ok());
    assert!(ready.contains("STATUS=serving at"), "{ready}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    expect_datagram(rx, "STOPPING=1", Instant::now() + Duration::from_secs(20));
    assert!(child.wait().unwrap().success());
}

#[test]
fn sd_notify_ready_and_stopping_on_a_path_socket() {
    let dir = TempDir::new("notify-path");
    let path = dir.0.join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    notify_roundtrip(path.as_os_str(), &rx, &dir);
}

#[test]
fn sd_notify_ready_and_stopping_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("notify-abstract");
    let name = format!("uiommufd-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&addr).unwrap();
    notify_roundtrip(std::ffi::OsStr::new(&format!("@{name}")), &rx, &dir);
}

#[test]
fn watch_redraws_until_killed() {
    use std::io::BufRead;
    let d = DaemonProcess::start_plain(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .arg("status")
        .arg("--control")
        .arg(d.control())
        .args(["--watch", "0.05"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut snapshots = 0;
    while snapshots < 3 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("status --watch stopped redrawing");
        // Not a terminal: no clear-screen sequences, just one snapshot after another.
        assert!(!line.contains('\x1b'), "{line:?}");
        if line.starts_with("contexts 0 ") {
            snapshots += 1;
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "watch exited");
    child.kill().unwrap();
    child.wait().unwrap();
}
