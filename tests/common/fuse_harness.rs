//! Shared helpers for transport tests: a small test Service, a server running in its own runtime and
//! child-process roles (the test binary re-executes itself with `UIOMMUFD_TEST_ROLE` set).

#![allow(dead_code)]

use nix::errno::Errno;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uiommufd::caller::{read_struct, write_struct, CallerMemory};
use uiommufd::dispatch::{NodeKind, OpenFile, Service};
use uiommufd::transport::{
    FuseChannel, Transport, TransportKind, TransportOptions, TransportStats, UringMode,
};

pub const ROLE_ENV: &str = "UIOMMUFD_TEST_ROLE";
pub const MNT_ENV: &str = "UIOMMUFD_TEST_MNT";
pub const ARG_ENV: &str = "UIOMMUFD_TEST_ARG";

/// `_IO(';', nr)`.
pub const fn io(nr: u32) -> u32 {
    (b';' as u32) << 8 | nr
}
pub const INC: u32 = io(0x80);
pub const FAIL_EINVAL: u32 = io(0x81);
pub const CTX: u32 = io(0x82);
pub const SLEEP: u32 = io(0x83);
pub const PID: u32 = io(0x84);
pub const NOP: u32 = io(0x85);

pub const STATUS_TEXT: &str = "uiommufd test status\n";

#[derive(Default)]
pub struct State {
    pub opens: AtomicU64,
    pub releases: AtomicU64,
    pub sleeping: AtomicU64,
    /// Sleeping ioctls that have returned.
    pub woke: AtomicU64,
    /// Ends every sleeping ioctl early.
    pub wake_all: std::sync::atomic::AtomicBool,
    pub last_write_offset: AtomicU64,
}

pub struct TestService(pub Arc<State>);

struct TestFile {
    id: u64,
    calls: AtomicU64,
    st: Arc<State>,
}

impl Service for TestService {
    fn open(&self, _node: &NodeKind) -> Result<Arc<dyn OpenFile>, Errno> {
        let id = self.0.opens.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Arc::new(TestFile {
            id,
            calls: AtomicU64::new(0),
            st: self.0.clone(),
        }))
    }
    fn device_names(&self) -> Vec<String> {
        vec!["dev0".into()]
    }
    fn status(&self) -> String {
        STATUS_TEXT.into()
    }
}

impl OpenFile for TestFile {
    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        match cmd {
            INC => {
                let v: u32 = read_struct(mem, arg)?;
                write_struct(mem, arg, &v.wrapping_add(1))?;
                Ok(0)
            }
            FAIL_EINVAL => Err(Errno::EINVAL),
            CTX => Ok((self.id * 1000 + self.calls.fetch_add(1, Ordering::SeqCst) + 1) as i64),
            SLEEP => {
                self.st.sleeping.fetch_add(1, Ordering::SeqCst);
                // Sleeps `arg` ms at most, or until the test wakes every sleeper.
                let until = std::time::Instant::now() + Duration::from_millis(arg);
                while std::time::Instant::now() < until && !self.st.wake_all.load(Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.st.woke.fetch_add(1, Ordering::SeqCst);
                Ok(0)
            }
            PID => Ok(mem.pid() as i64),
            NOP => Ok(0),
            _ => Err(Errno::ENOTTY),
        }
    }
    fn read(&self, offset: u64, size: u32, _mem: &dyn CallerMemory) -> Result<Vec<u8>, Errno> {
        let mut v = offset.to_string().into_bytes();
        v.truncate(size as usize);
        Ok(v)
    }
    fn write(&self, offset: u64, data: &[u8], _mem: &dyn CallerMemory) -> Result<u32, Errno> {
        self.st.last_write_offset.store(offset, Ordering::SeqCst);
        Ok(data.len() as u32)
    }
    fn release(&self) {
        self.st.releases.fetch_add(1, Ordering::SeqCst);
    }
}

/// A fresh, unique directory under /tmp.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "uiommufd-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A transport served on its own runtime.
pub struct Server {
    pub rt: tokio::runtime::Runtime,
    pub st: Arc<State>,
    pub mount: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The transport's counters.
    pub stats: Arc<TransportStats>,
}

/// Requests the io_uring queues of this process's stopped test servers answered, all together
/// (each transport counts its own; a server adds its count here when it is dropped).
static RING_REQUESTS_SERVED: AtomicU64 = AtomicU64::new(0);

/// How many requests the test servers of this process that have stopped answered over io_uring.
pub fn ring_requests_served() -> u64 {
    RING_REQUESTS_SERVED.load(Ordering::SeqCst)
}

/// The io_uring mode of the test servers (`on`, `auto`; anything else `off`): an environment
/// variable, so that child servers inherit it. `transport_uring` sets it; `transport_fuse` leaves
/// it unset and so tests /dev/fuse whatever the fuse module's `enable_uring` says.
pub const URING_ENV: &str = "UIOMMUFD_TEST_IO_URING";

pub fn fuse_options(mount: &Path) -> TransportOptions {
    let mut opts = TransportOptions::fuse(mount);
    opts.io_uring = match std::env::var(URING_ENV).as_deref() {
        Ok("on") => UringMode::On,
        Ok("auto") => UringMode::Auto,
        _ => UringMode::Off,
    };
    opts
}

impl Server {
    pub fn start(mount: &Path) -> Self {
        Self::start_with(mount, Arc::new(State::default()))
    }

    pub fn start_with(mount: &Path, st: Arc<State>) -> Self {
        init_logging();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let svc = Arc::new(TestService(st.clone()));
        let opts = fuse_options(mount);
        let t = rt
            .block_on(Transport::start(&opts, svc))
            .expect("transport start");
        assert_eq!(t.kind(), TransportKind::Fuse);
        let channel = match opts.io_uring {
            UringMode::On => FuseChannel::IoUring,
            _ => FuseChannel::DevFuse,
        };
        let stats = t.stats();
        assert_eq!(stats.fuse_channel(), channel);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(t.serve_until(async move {
            let _ = rx.await;
        }));
        Server {
            rt,
            st,
            mount: mount.to_path_buf(),
            stop: Some(tx),
            task: Some(task),
            stats,
        }
    }

    pub fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        self.rt.block_on(task).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let (Some(stop), Some(task)) = (self.stop.take(), self.task.take()) {
            // A failed test lands here: end sleeping ioctls so the shutdown does not wait on them.
            self.st.wake_all.store(true, Ordering::SeqCst);
            let _ = stop.send(());
            let _ = self.rt.block_on(task);
        }
        RING_REQUESTS_SERVED.fetch_add(self.stats.ring_requests(), Ordering::SeqCst);
    }
}

/// Runs the tests of a binary one at a time. Their servers live in the test process, so a child
/// spawned by one test inherits, between fork and exec, another test's /dev/fuse fd and its open
/// node files; closing those at exec sends FLUSH to a server that may be shutting down, whose
/// connection the child itself keeps alive: both hang. Serial tests never overlap like that.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Re-runs this test binary as a child in `role`, with the mount point in the environment:
/// `entry` names the ignored test that dispatches on the role.
pub fn spawn_role(entry: &str, role: &str, mount: &Path, arg: &str, stdout: Stdio) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            entry,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .env(MNT_ENV, mount)
        .env(ARG_ENV, arg)
        .stdout(stdout)
        .spawn()
        .unwrap()
}

/// Polls `cond` for up to `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Whether /proc/self/mountinfo lists `path` as a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    uiommufd::transport::mounts::parse_mountinfo(&info)
        .iter()
        .any(|m| m.mount_point == path)
}

/// ioctl() returning the result or the errno.
pub fn ioctl(fd: &impl AsRawFd, cmd: u32, arg: u64) -> Result<i32, Errno> {
    // SAFETY: the commands of the test service take either no pointer or a pointer to a live u32 that
    // the caller passes; the kernel only forwards the raw value to the server.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, arg as libc::c_ulong) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}
