//! Unmodified QEMU 10 drives the dmacopy device: a daemon in FUSE mode with `--device dmacopy`,
//! `qemu-system-x86_64 -M q35,accel=tcg` given the iommufd node and the device node as inherited
//! fds (`-object iommufd,fd=N -device vfio-pci,fd=M,iommufd=i0`), a pattern preloaded into guest
//! RAM by `-device loader`. Over QMP (human-monitor-command) the test places BAR0 and enables I/O
//! and bus mastering through 0xcf8/0xcfc, programs the registers by port I/O, and checks with `xp`
//! that the pattern arrived at the destination; an unmapped IOVA sets the error bit. Quitting QEMU
//! must leave the daemon with no objects and no pinned pages. The daemon records the session
//! (`--record`): the recording replays on a fresh dmacopy daemon and, transformed for the selftest's
//! mock device (`replay --to-mock`), in process (docs/refkernel.md).
//!
//! Without `qemu-system-x86_64` the test fails under `CI=true` and is skipped (with a message)
//! elsewhere; `scripts/ci-install.sh` installs QEMU 10 from bookworm-backports. `QEMU_E2E_TRACE=1` adds
//! `-trace vfio_* -trace iommufd_*` (QEMU's stderr is printed on failure).

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{open_node, DaemonProcess, TempDir};

const SRC: u64 = 0x10_0000;
const DST: u64 = 0x20_0000;
const DST2: u64 = 0x30_0000;
/// Beyond the guest's 64 MiB of RAM: never mapped in the IOAS.
const UNMAPPED: u64 = 0x800_0000;
const LEN: usize = 4096;
const IO_BASE: u32 = 0xc000;

struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(sock: &Path, qemu: &mut Child) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(sock) {
                break s;
            }
            if let Ok(Some(st)) = qemu.try_wait() {
                panic!("QEMU exited before QMP came up: {st}");
            }
            assert!(Instant::now() < deadline, "QMP socket did not appear");
            std::thread::sleep(Duration::from_millis(50));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
        q.execute("qmp_capabilities", json!({}));
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("QMP read");
        assert!(n > 0, "QMP connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP line {line:?}: {e}"))
    }

    fn execute(&mut self, cmd: &str, args: Value) -> Value {
        let msg = json!({"execute": cmd, "arguments": args});
        writeln!(self.writer, "{msg}").expect("QMP write");
        loop {
            let v = self.read();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            if let Some(e) = v.get("error") {
                panic!("QMP {cmd} failed: {e}");
            }
            // An asynchronous event: keep reading.
        }
    }

    fn hmp(&mut self, line: &str) -> String {
        let r = self.execute("human-monitor-command", json!({"command-line": line}));
        r.as_str().unwrap_or_default().to_string()
    }

    fn outl(&mut self, port: u32, val: u32) {
        let out = self.hmp(&format!("o /w {port:#x} {val:#x}"));
        assert!(out.trim().is_empty(), "o {port:#x}: {out}");
    }

    fn inl(&mut self, port: u32) -> u32 {
        let out = self.hmp(&format!("i /w {port:#x}"));
        // "portl[0x0cfc] = 0xdc011234"
        let v = out
            .rsplit('=')
            .next()
            .map(|s| s.trim().trim_start_matches("0x"))
            .and_then(|s| u32::from_str_radix(s, 16).ok());
        v.unwrap_or_else(|| panic!("i {port:#x}: unexpected answer {out:?}"))
    }

    fn cfg_addr(dev: u32, reg: u32) -> u32 {
        0x8000_0000 | dev << 11 | reg
    }

    fn cfg_read(&mut self, dev: u32, reg: u32) -> u32 {
        self.outl(0xcf8, Self::cfg_addr(dev, reg));
        self.inl(0xcfc)
    }

    fn cfg_write(&mut self, dev: u32, reg: u32, val: u32) {
        self.outl(0xcf8, Self::cfg_addr(dev, reg));
        self.outl(0xcfc, val);
    }

    /// Guest physical memory as 32-bit words (`xp`).
    fn xp_words(&mut self, addr: u64, words: usize) -> Vec<u32> {
        let out = self.hmp(&format!("xp /{words}xw {addr:#x}"));
        out.lines()
            .filter_map(|l| l.split_once(':').map(|(_, w)| w))
            .flat_map(|w| w.split_whitespace())
            .map(|w| u32::from_str_radix(w.trim_start_matches("0x"), 16).expect("xp word"))
            .collect()
    }

    /// Programs a copy by port I/O and returns STATUS.
    fn copy(&mut self, src: u64, dst: u64, len: u32) -> u32 {
        self.outl(IO_BASE + 0x04, 0xffff_ffff);
        self.outl(IO_BASE + 0x08, src as u32);
        self.outl(IO_BASE + 0x0c, (src >> 32) as u32);
        self.outl(IO_BASE + 0x10, dst as u32);
        self.outl(IO_BASE + 0x14, (dst >> 32) as u32);
        self.outl(IO_BASE + 0x18, len);
        self.outl(IO_BASE + 0x1c, 1);
        self.inl(IO_BASE + 0x04)
    }
}

/// The PCI device number of 1234:dc01 on bus 0, from `info pci`.
fn find_device(info_pci: &str) -> Option<u32> {
    let mut current = None;
    for line in info_pci.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Bus") {
            // "Bus  0, device   3, function 0:"
            current = rest
                .split(',')
                .nth(1)
                .and_then(|d| d.trim().strip_prefix("device"))
                .and_then(|n| n.trim().parse().ok());
        } else if l.contains("1234:dc01") {
            return current;
        }
    }
    None
}

fn pattern() -> Vec<u8> {
    (0..LEN as u32)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ 0x5a5a_a5a5).to_le_bytes())
        .take(LEN)
        .collect()
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A duplicate of `fd` without close-on-exec, for QEMU to inherit.
fn inheritable(fd: impl AsFd) -> OwnedFd {
    nix::unistd::dup(fd).expect("dup")
}

struct Qemu {
    child: Child,
    log: PathBuf,
}

impl Qemu {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- QEMU stderr ----\n{}", self.log());
        }
    }
}

#[test]
fn qemu_vfio_pci_drives_dmacopy() {
    let Some(qemu_bin) = support::require_program(
        "qemu-system-x86_64",
        "scripts/ci-install.sh installs QEMU 10 from bookworm-backports",
    ) else {
        return;
    };
    let work = TempDir::new("qemu");
    let rec = work.0.join("rec");
    let d = DaemonProcess::start(&["--device", "dmacopy", "--record", rec.to_str().unwrap()]);
    let sock = work.0.join("qmp.sock");
    let pattern_file = work.0.join("pattern.bin");
    std::fs::write(&pattern_file, pattern()).unwrap();

    let iommu = open_node(&d.node("iommu"));
    let dev = open_node(&d.node("vfio/devices/dmacopy0"));
    let (iommu_fd, dev_fd) = (inheritable(&iommu), inheritable(&dev));
    let log = work.0.join("qemu.log");
    let mut cmd = Command::new(&qemu_bin);
    cmd.args([
        "-M",
        "q35,accel=tcg",
        "-m",
        "64M",
        "-display",
        "none",
        "-nodefaults",
        "-S",
    ])
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", sock.display()))
    .arg("-object")
    .arg(format!("iommufd,id=i0,fd={}", iommu_fd.as_raw_fd()))
    .arg("-device")
    .arg(format!(
        "vfio-pci,fd={},iommufd=i0,id=dma0",
        dev_fd.as_raw_fd()
    ))
    .arg("-device")
    .arg(format!(
        "loader,file={},addr={SRC:#x},force-raw=on",
        pattern_file.display()
    ));
    if std::env::var_os("QEMU_E2E_TRACE").is_some() {
        cmd.args(["-trace", "vfio_*", "-trace", "iommufd_*"]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn QEMU");
    // QEMU holds its own copies now; ours must not keep the context or the binding alive.
    drop((iommu_fd, dev_fd, iommu, dev));
    let mut qemu = Qemu { child, log };
    let mut qmp = Qmp::connect(&sock, &mut qemu.child);

    let info = qmp.hmp("info pci");
    let slot = find_device(&info).unwrap_or_else(|| panic!("dmacopy not in info pci:\n{info}"));
    assert_eq!(
        qmp.cfg_read(slot, 0),
        0xdc01_1234,
        "vendor/device through 0xcf8/0xcfc"
    );
    qmp.cfg_write(slot, 0x10, 0xffff_ffff);
    assert_eq!(
        qmp.cfg_read(slot, 0x10),
        0xffff_ffe1,
        "BAR0 sizing: 32-byte I/O BAR"
    );
    qmp.cfg_write(slot, 0x10, IO_BASE);
    qmp.cfg_write(slot, 0x04, 0x5); // I/O space + bus master
    assert_eq!(
        qmp.inl(IO_BASE),
        0x7569_6f6d,
        "ID register through the I/O BAR"
    );

    let expect = words(&pattern());
    assert_eq!(
        qmp.xp_words(SRC, 4),
        expect[..4],
        "loader preloaded the pattern"
    );
    assert_eq!(qmp.xp_words(DST, 4), [0; 4]);
    assert_eq!(
        qmp.copy(SRC, DST, LEN as u32),
        0x4,
        "STATUS: done, no error"
    );
    assert_eq!(
        qmp.xp_words(DST, LEN / 4),
        expect,
        "pattern copied to the destination"
    );

    // An unmapped source IOVA: error bit, destination untouched.
    assert_eq!(qmp.copy(UNMAPPED, DST2, 64), 0x6, "STATUS: done + error");
    assert_eq!(qmp.xp_words(DST2, 16), [0; 16]);
    // An unmapped destination as well.
    assert_eq!(qmp.copy(SRC, UNMAPPED, 64), 0x6);
    // Write-1-to-clear.
    qmp.outl(IO_BASE + 0x04, 0x6);
    assert_eq!(qmp.inl(IO_BASE + 0x04), 0);

    let st = d.status();
    assert!(st["objects"].as_u64().unwrap() >= 3, "{st}");
    assert!(st["pinned_pages"].as_u64().unwrap() > 0, "{st}");

    writeln!(qmp.writer, "{}", json!({"execute": "quit"})).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = qemu.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "QEMU did not quit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "QEMU exit: {status}\n{}", qemu.log());
    if std::env::var_os("QEMU_E2E_TRACE").is_some() {
        eprintln!("---- QEMU stderr ----\n{}", qemu.log());
    }
    let st = d.wait_idle();
    assert_eq!(st["objects"], 0, "{st}");
    assert_eq!(st["pinned_pages"], 0, "{st}");
    assert_eq!(st["contexts"], 0, "{st}");
    assert!(d.stop().success());
    recording_replays(&rec, &work.0);
}

fn uiommufd_replay(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .arg("replay")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run uiommufd replay");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "replay {args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The session QEMU ran, as recorded: one script with the device's BIND and ATTACH as steps. It
/// replays on a fresh daemon serving dmacopy, and, transformed for the selftest's mock device
/// (what scripts/refkernel.sh replays on the real kernel), in process.
fn recording_replays(rec: &Path, work: &Path) {
    let files: Vec<PathBuf> = std::fs::read_dir(rec)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let script = std::fs::read_to_string(&files[0]).unwrap();
    for step in [
        r#""ioctl": "VFIO_DEVICE_BIND_IOMMUFD", "fd": "dmacopy0""#,
        r#""ioctl": "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "fd": "dmacopy0""#,
        r#""ioctl": "IOMMU_HWPT_ALLOC", "args": {"dev_id": "$id1""#,
    ] {
        assert!(script.contains(step), "{step} not in:\n{script}");
    }
    let path = files[0].to_str().unwrap();
    let fresh = DaemonProcess::start(&["--device", "dmacopy"]);
    let node = fresh.node("iommu");
    let out = uiommufd_replay(&["--node", node.to_str().unwrap(), path]);
    assert!(out.ends_with("1 passed, 0 failed\n"), "{out}");
    assert!(fresh.stop().success());
    let mock = work.join("mock");
    uiommufd_replay(&["--to-mock", mock.to_str().unwrap(), path]);
    let out = uiommufd_replay(&[
        "--in-process",
        mock.join(files[0].file_name().unwrap()).to_str().unwrap(),
    ]);
    assert!(out.ends_with("1 passed, 0 failed\n"), "{out}");
}
