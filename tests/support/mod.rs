//! Shared by the integration tests: a daemon in FUSE mode on a temporary mount, and a thin
//! ioctl client on its nodes. The test process is the client; the daemon is a separate process.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod runner;
pub mod users;

/// A missing prerequisite (root, a tool): a failure under `CI=true`, where everything the tests
/// need is installed, and a visible skip elsewhere. Returns whether the caller should go on.
pub fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("prerequisite missing under CI=true: {what}");
    }
    // Straight to stderr: libtest captures eprintln! of a passing test, and a skip must show.
    let _ = writeln!(std::io::stderr(), "SKIPPED (not in CI): {what}");
    false
}

/// The program `name` from a directory of `PATH`; None (skip the test) when it is missing, which
/// fails under `CI=true` ([`require`]). `install` says where it comes from.
pub fn require_program(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    let present = found.is_some();
    if require(&format!("{name} in PATH ({install})"), present) {
        found
    } else {
        None
    }
}

pub struct DaemonProcess {
    pub child: Child,
    pub mount: PathBuf,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "uiommufd-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl DaemonProcess {
    /// Starts `uiommufd serve --selftest --transport fuse` with `extra` arguments and waits for
    /// its nodes.
    pub fn start(extra: &[&str]) -> Self {
        let mut args = vec!["--selftest"];
        args.extend_from_slice(extra);
        Self::start_plain(&args)
    }

    /// Starts `uiommufd serve --transport fuse` with exactly `args` after it (no selftest surface
    /// unless asked for) on a fresh mount point.
    pub fn start_plain(args: &[&str]) -> Self {
        let dir = TempDir::new("mnt");
        let mount = dir.0.join("m");
        let child = spawn_daemon(&mount, args);
        wait_for_node(&mount.join("iommu"), Duration::from_secs(20));
        Self {
            child,
            mount,
            _dir: dir,
        }
    }

    /// Starts another daemon on this one's mount point (once this one is gone).
    pub fn restart(&mut self, args: &[&str]) {
        self.child = spawn_daemon(&self.mount, args);
        wait_for_node(&self.mount.join("iommu"), Duration::from_secs(20));
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The daemon's control socket (`serve --control`), beside its mount point.
    pub fn control(&self) -> PathBuf {
        control_path(&self.mount)
    }

    pub fn node(&self, rel: &str) -> PathBuf {
        self.mount.join(rel)
    }

    pub fn open_iommu(&self) -> File {
        open_node(&self.node("iommu"))
    }

    /// The daemon's status file, parsed.
    pub fn status(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.node("status")).expect("read status");
        serde_json::from_str(&text).expect("status is JSON")
    }

    /// Waits until the status reports no contexts, objects or pinned pages; returns it (or the
    /// last one read after 10 s, for the caller's assertion to show).
    pub fn wait_idle(&self) -> serde_json::Value {
        self.wait_status(|s| s["objects"] == 0 && s["pinned_pages"] == 0 && s["contexts"] == 0)
    }

    /// Waits until `done` holds for the status; returns it (or the last one read after 10 s).
    pub fn wait_status(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            if done(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill() on our own child's pid has no memory-safety impact.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Each test daemon has its own control socket (the default path is one per host).
fn control_path(mount: &Path) -> PathBuf {
    mount.with_file_name("control.sock")
}

fn spawn_daemon(mount: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .args(["serve", "--transport", "fuse", "--mount"])
        .arg(mount)
        .arg("--control")
        .arg(control_path(mount))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn uiommufd")
}

/// Waits until a daemon's node answers a stat (a stale mount of a dead daemon says ENOTCONN).
/// No open: that would make a context (and, with --record, a recording).
fn wait_for_node(node: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::fs::metadata(node).is_err() {
        assert!(Instant::now() < deadline, "daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs this test binary's ignored role test `role` under `uiommufd launch LAUNCH_ARGS --` with
/// the variables `env` (and RUST_LOG=warn); its output.
pub fn launch_role(
    launch_args: &[&std::ffi::OsStr],
    role: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    cmd.arg("launch")
        .args(launch_args)
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args([
            role,
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run uiommufd launch")
}

pub fn open_node(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// ioctl(fd, cmd, arg) → Ok(return value) or Err(errno).
pub fn ioctl_raw(file: &File, cmd: u32, arg: u64) -> Result<i32, i32> {
    // SAFETY: every iommufd/VFIO ioctl only reads/writes memory through `arg`, which the caller
    // points at a live struct (or deliberately at an invalid address to test EFAULT, which the
    // daemon — not this process — dereferences).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), cmd as libc::c_ulong, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(rc)
    }
}

/// ioctl with a struct argument.
pub fn ioctl<T>(file: &File, cmd: u32, arg: &mut T) -> Result<i32, i32> {
    ioctl_raw(file, cmd, arg as *mut T as u64)
}

/// IOMMU_IOAS_ALLOC on `f`; panics on failure (every caller expects it to work).
pub fn ioas_alloc(f: &File) -> u32 {
    use uiommufd_uapi::iommufd::{iommu_ioas_alloc, IOMMU_IOAS_ALLOC};
    let mut cmd = iommu_ioas_alloc {
        size: std::mem::size_of::<iommu_ioas_alloc>() as u32,
        ..Default::default()
    };
    ioctl(f, IOMMU_IOAS_ALLOC, &mut cmd).expect("IOMMU_IOAS_ALLOC");
    cmd.out_ioas_id
}

/// IOMMU_IOAS_MAP of `[va, va + len)` read/write at the fixed `iova`.
pub fn ioas_map_fixed(f: &File, ioas: u32, va: u64, len: u64, iova: u64) -> Result<(), i32> {
    ioas_map_at(f, ioas, va, len, iova, true)
}

/// IOMMU_IOAS_MAP of `[va, va + len)` readable (and writable with `write`) at the fixed `iova`.
pub fn ioas_map_at(
    f: &File,
    ioas: u32,
    va: u64,
    len: u64,
    iova: u64,
    write: bool,
) -> Result<(), i32> {
    use uiommufd_uapi::iommufd::*;
    let mut cmd = iommu_ioas_map {
        size: std::mem::size_of::<iommu_ioas_map>() as u32,
        flags: IOMMU_IOAS_MAP_READABLE
            | IOMMU_IOAS_MAP_FIXED_IOVA
            | if write { IOMMU_IOAS_MAP_WRITEABLE } else { 0 },
        ioas_id: ioas,
        user_va: va,
        length: len,
        iova,
        ..Default::default()
    };
    ioctl(f, IOMMU_IOAS_MAP, &mut cmd).map(|_| ())
}

/// IOMMU_IOAS_UNMAP of `[iova, iova + len)`; returns the length unmapped.
pub fn ioas_unmap(f: &File, ioas: u32, iova: u64, len: u64) -> Result<u64, i32> {
    use uiommufd_uapi::iommufd::{iommu_ioas_unmap, IOMMU_IOAS_UNMAP};
    let mut cmd = iommu_ioas_unmap {
        size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
        ioas_id: ioas,
        iova,
        length: len,
    };
    ioctl(f, IOMMU_IOAS_UNMAP, &mut cmd).map(|_| cmd.length)
}

/// IOMMU_TEST_CMD `op` on object `id` with union member `payload`; returns the command as the
/// daemon wrote it back.
pub fn test_cmd<T>(
    f: &File,
    op: u32,
    id: u32,
    payload: &T,
) -> Result<uiommufd_uapi::selftest::iommu_test_cmd, i32>
where
    T: zerocopy::IntoBytes + zerocopy::Immutable,
{
    use uiommufd_uapi::selftest::*;
    let mut cmd = iommu_test_cmd {
        size: std::mem::size_of::<iommu_test_cmd>() as u32,
        op,
        id,
        ..Default::default()
    };
    assert!(cmd.set_payload(payload));
    ioctl(f, IOMMU_TEST_CMD, &mut cmd).map(|_| cmd)
}

/// IOMMU_TEST_OP_ACCESS_RW through the selftest access whose fd is `access`: reads (or writes,
/// with `write`) `buf` at `iova`.
pub fn access_rw(
    f: &File,
    access: &File,
    iova: u64,
    buf: &mut [u8],
    write: bool,
) -> Result<(), i32> {
    use uiommufd_uapi::selftest::*;
    let p = iommu_test_cmd_access_rw {
        iova,
        length: buf.len() as u64,
        uptr: buf.as_mut_ptr() as u64,
        flags: if write { MOCK_ACCESS_RW_WRITE } else { 0 },
        __pad: 0,
    };
    test_cmd(f, IOMMU_TEST_OP_ACCESS_RW, access.as_raw_fd() as u32, &p).map(|_| ())
}

/// A page-aligned buffer of `pages` anonymous pages (zero-filled), unmapped on drop.
pub struct AnonPages {
    ptr: *mut u8,
    len: usize,
}

impl AnonPages {
    pub fn new(pages: usize) -> Self {
        let len = pages * 4096;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Self {
            ptr: ptr.cast(),
            len,
        }
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn bytes(&self) -> Vec<u8> {
        // SAFETY: the mapping is live and `len` bytes long; the daemon writes it from another
        // process, so read volatile-ly through a fresh copy.
        (0..self.len)
            .map(|i| unsafe { std::ptr::read_volatile(self.ptr.wrapping_add(i)) })
            .collect()
    }

    pub fn fill(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: in bounds of the live mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.wrapping_add(off), data.len())
        };
    }
}

impl Drop for AnonPages {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in new().
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Asserts a clean `uiommufd replay` of `n` scripts: exit 0 and the summary alone on the last
/// line; returns its output.
pub fn assert_replay_passed(o: &std::process::Output, n: usize) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        out.lines().last(),
        Some(format!("{n} passed, 0 failed").as_str()),
        "{out}"
    );
    out
}

/// The open files of process `pid`, less its transport's own, which come and go with load:
/// each session reader's clone of /dev/fuse, each io_uring ring thread's ring and eventfd.
pub fn fds_without_transport(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter(|e| {
            let target = e
                .as_ref()
                .ok()
                .and_then(|e| std::fs::read_link(e.path()).ok());
            !target.is_some_and(|t| {
                let t = t.to_string_lossy();
                t == "anon_inode:[io_uring]" || t == "anon_inode:[eventfd]" || t == "/dev/fuse"
            })
        })
        .count()
}
