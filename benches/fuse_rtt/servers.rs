//! The servers the round-trip bench times: the libfuse3 C baseline (built here with `cc`), a
//! minimal blocking /dev/fuse loop in this process, and `uiommufd serve` daemons.

use nix::errno::Errno;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uiommufd::caller::CallerMemory;
use uiommufd::dispatch::{NodeKind, OpenFile, Service};
use uiommufd::transport::handler::{Handler, ProcessCallers, Role};
use uiommufd::transport::{mounts, tree, wire};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";
/// Bytes the null servers read from and write back to the caller: an iommu_option.
pub const ARG_BYTES: usize = 24;
/// How long a server child may take to show its node.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).expect("cpu index");
    sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
}

/// Lets this thread (and what it spawns) run on every CPU again.
pub fn unpin_all() -> std::io::Result<()> {
    let mut set = CpuSet::new();
    for cpu in 0..CpuSet::count() {
        let _ = set.set(cpu);
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
}

fn temp_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("uiommufd-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Waits for a server child to show `node`; panics (naming `what`) when it does not.
fn wait_for_node(node: &Path, child: &mut Child, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while std::fs::metadata(node).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before serving ({status})");
        }
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_child(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Puts the fuse module's enable_uring back as it was on drop.
pub struct EnableUring(String);

impl EnableUring {
    pub fn set_on() -> Option<Self> {
        let old = std::fs::read_to_string(ENABLE_URING).ok()?;
        std::fs::write(ENABLE_URING, "Y").ok()?;
        Some(Self(old.trim().to_string()))
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        let _ = std::fs::write(ENABLE_URING, &self.0);
    }
}

/// A `uiommufd serve --selftest` child on its own mount, stopped on drop: in CPU 0's affinity
/// (inherited), or on every CPU with `unpinned`.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    pub fn start(tag: &str, io_uring: &str, unpinned: bool) -> Self {
        Self::start_exe(
            Path::new(env!("CARGO_BIN_EXE_uiommufd")),
            tag,
            io_uring,
            unpinned,
        )
    }

    /// [`Daemon::start`] of another build of uiommufd (e.g. the one before a change).
    pub fn start_exe(exe: &Path, tag: &str, io_uring: &str, unpinned: bool) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = temp_dir(tag);
        let mount = dir.join("m");
        let mut cmd = Command::new(exe);
        if unpinned {
            // SAFETY: the closure runs between fork and exec and makes one syscall
            // (sched_setaffinity), which is async-signal-safe; it allocates nothing.
            unsafe { cmd.pre_exec(unpin_all) };
        }
        let mut child = cmd
            .args(["serve", "--selftest", "--config", "none", "--transport"])
            .args(["fuse", "--io-uring", io_uring, "--mount"])
            .arg(&mount)
            .arg("--control")
            .arg(dir.join("control.sock"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn uiommufd");
        wait_for_node(
            &mount.join("iommu"),
            &mut child,
            &format!("uiommufd --io-uring {io_uring}"),
        );
        Self { child, dir }
    }

    pub fn node(&self) -> PathBuf {
        self.dir.join("m/iommu")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const LIBFUSE_SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/fuse_rtt/libfuse_null.c"
);

/// Builds the libfuse3 null-ioctl server; the error says what is missing.
fn build_libfuse_server() -> Result<PathBuf, String> {
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "fuse3"])
        .output()
        .map_err(|e| format!("pkg-config: {e} (apt-get install pkg-config libfuse3-dev)"))?;
    if !flags.status.success() {
        return Err("pkg-config knows no fuse3 (apt-get install libfuse3-dev)".into());
    }
    let flags = String::from_utf8_lossy(&flags.stdout).into_owned();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libfuse_null");
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(LIBFUSE_SOURCE)
        .args(flags.split_whitespace())
        .output()
        .map_err(|e| format!("cc: {e} (apt-get install gcc)"))?;
    if !cc.status.success() {
        return Err(format!(
            "cc {LIBFUSE_SOURCE} failed:\n{}",
            String::from_utf8_lossy(&cc.stderr)
        ));
    }
    Ok(out)
}

/// The libfuse3 low-level single-threaded server of `libfuse_null.c`, stopped on drop.
pub struct LibfuseServer {
    child: Child,
    dir: PathBuf,
}

impl LibfuseServer {
    pub fn start() -> Result<Self, String> {
        let exe = build_libfuse_server()?;
        let dir = temp_dir("libfuse");
        mounts::cleanup_stale(&dir).map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(&dir)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting libfuse_null: {e}"))?;
        wait_for_node(&dir.join("iommu"), &mut child, "libfuse_null");
        Ok(Self { child, dir })
    }

    pub fn node(&self) -> PathBuf {
        self.dir.join("iommu")
    }
}

impl Drop for LibfuseServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        let _ = mounts::unmount(&self.dir);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A service whose every ioctl reads [`ARG_BYTES`] at its argument and writes them back.
struct NullService;
struct NullFile;

impl Service for NullService {
    fn open(&self, _node: &NodeKind) -> Result<Arc<dyn OpenFile>, Errno> {
        Ok(Arc::new(NullFile))
    }
}

impl OpenFile for NullFile {
    fn ioctl(&self, _cmd: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        let mut buf = [0u8; ARG_BYTES];
        mem.read(arg, &mut buf)?;
        mem.write(arg, &buf)?;
        Ok(0)
    }
    fn release(&self) {}
}

/// One thread of this process, blocking read → handle → write on /dev/fuse, with uiommufd's
/// message handler and [`NullService`]: no runtime, no hand-off.
pub struct MinimalLoop {
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MinimalLoop {
    pub fn start() -> Self {
        let dir = temp_dir("minimal");
        mounts::cleanup_stale(&dir).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap();
        let fd = OwnedFd::from(file);
        mounts::mount_fuse(fd.as_raw_fd(), &dir).unwrap();
        let thread = std::thread::spawn(move || {
            let h = Handler::new(
                Role::Fuse(tree::Tree::new(vec![])),
                Arc::new(NullService),
                Arc::new(ProcessCallers),
            );
            let mut buf = vec![0u8; wire::BUFFER_SIZE];
            loop {
                let n = match rustix::io::read(fd.as_fd(), &mut buf[..]) {
                    Ok(n) => n,
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::NOENT) => continue,
                    Err(_) => return, // ENODEV: unmounted
                };
                if let Some(reply) = h.handle(&buf[..n]) {
                    let _ = rustix::io::write(fd.as_fd(), &reply);
                }
            }
        });
        Self {
            dir,
            thread: Some(thread),
        }
    }

    pub fn node(&self) -> PathBuf {
        self.dir.join("iommu")
    }
}

impl Drop for MinimalLoop {
    fn drop(&mut self) {
        let _ = mounts::unmount(&self.dir);
        // The lazily detached mount ends the connection once no file is open; the reader then
        // sees ENODEV.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
