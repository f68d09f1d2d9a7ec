//! Round trip of a cheap ioctl through a FUSE node: our tokio transport vs a minimal single-threaded
//! blocking loop over /dev/fuse (the same message handler, no runtime, no thread hand-off); then,
//! in one interleaved run, a real IOMMU_OPTION through the uiommufd daemon served over /dev/fuse
//! (`--io-uring off`) and over io_uring (`--io-uring on`, the fuse module's enable_uring set for
//! its start and put back).
//!
//! `cargo bench --bench fuse_rtt` (root only). The servers run pinned to CPU 0 (the io_uring
//! daemon's queue threads pin themselves, one per CPU); the client is a child process pinned to
//! CPU 0 (same CPU) or CPU 1 (different CPUs). Prints ns per ioctl, medians and ratios.

use nix::errno::Errno;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;
use uiommufd::caller::CallerMemory;
use uiommufd::dispatch::{NodeKind, OpenFile, Service};
use uiommufd::transport::handler::{Handler, ProcessCallers, Role};
use uiommufd::transport::{mounts, tree, wire, Transport, TransportOptions};

const NOP: u32 = (b';' as u32) << 8 | 0x85;
const CLIENT_ENV: &str = "UIOMMUFD_BENCH_CLIENT";
/// The IOMMU_OPTION client role (`cpu:path`).
const OPTION_CLIENT_ENV: &str = "UIOMMUFD_BENCH_OPTION_CLIENT";
const ITERS: u32 = 20_000;
/// IOMMU_OPTION calls per sample, and interleaved rounds of samples.
const OPTION_ITERS: u32 = 5_000;
const OPTION_ROUNDS: usize = 5;
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

struct Trivial;
struct TrivialFile;

impl Service for Trivial {
    fn open(&self, _node: &NodeKind) -> Result<Arc<dyn OpenFile>, Errno> {
        Ok(Arc::new(TrivialFile))
    }
}

impl OpenFile for TrivialFile {
    fn ioctl(&self, _cmd: u32, _arg: u64, _mem: &dyn CallerMemory) -> Result<i64, Errno> {
        Ok(0)
    }
    fn release(&self) {}
}

fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).expect("cpu index");
    sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
}

/// Child role: pin, open, time ITERS ioctls, print ns/op.
fn client(spec: &str) {
    let (cpu, path) = spec.split_once(':').expect("cpu:path");
    pin(cpu.parse().unwrap());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let call = || {
        // SAFETY: NOP takes no argument; the server never dereferences it.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), NOP as libc::c_ulong, 0) };
        assert_eq!(r, 0, "ioctl: {}", Errno::last());
    };
    print_ns_per_call(1000, ITERS, call);
}

/// Warms up with `warm` calls, times `iters` more and prints ns per call (the clients' output).
fn print_ns_per_call(warm: u32, iters: u32, mut call: impl FnMut()) {
    for _ in 0..warm {
        call();
    }
    let t = Instant::now();
    for _ in 0..iters {
        call();
    }
    println!("{}", t.elapsed().as_nanos() / iters as u128);
}

/// Child role: pin, open an iommufd node, time OPTION_ITERS IOMMU_OPTION (RLIMIT_MODE, GET), print
/// ns/op.
fn option_client(spec: &str) {
    use uiommufd_uapi::iommufd::{
        iommu_option, IOMMU_OPTION, IOMMU_OPTION_OP_GET, IOMMU_OPTION_RLIMIT_MODE,
    };
    let (cpu, path) = spec.split_once(':').expect("cpu:path");
    pin(cpu.parse().unwrap());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut opt = iommu_option {
        size: std::mem::size_of::<iommu_option>() as u32,
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_GET,
        ..Default::default()
    };
    let call = || {
        // SAFETY: IOMMU_OPTION reads and writes exactly `opt`, which lives across the call.
        let r = unsafe {
            libc::ioctl(
                f.as_raw_fd(),
                libc::c_ulong::from(IOMMU_OPTION),
                &mut opt as *mut iommu_option,
            )
        };
        assert_eq!(r, 0, "IOMMU_OPTION: {}", Errno::last());
    };
    print_ns_per_call(500, OPTION_ITERS, call);
}

fn measure(node: &Path, cpu: usize) -> u64 {
    run_client(CLIENT_ENV, node, cpu)
}

fn run_client(role: &str, node: &Path, cpu: usize) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(role, format!("{cpu}:{}", node.display()))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "bench client failed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The baseline: one thread, blocking read → handle → write.
fn baseline_server(mount: &Path) -> std::thread::JoinHandle<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .unwrap();
    let fd = OwnedFd::from(file);
    mounts::mount_fuse(fd.as_raw_fd(), mount).unwrap();
    std::thread::spawn(move || {
        let h = Handler::new(
            Role::Fuse(tree::Tree::new(vec![])),
            Arc::new(Trivial),
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
    })
}

fn temp_mount(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("uiommufd-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Puts the fuse module's enable_uring back as it was on drop.
struct EnableUring(String);

impl EnableUring {
    fn set_on() -> Option<Self> {
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

/// Lets a child run on every CPU again (the bench pinned itself, and so its children, to CPU 0).
fn unpin_all() -> std::io::Result<()> {
    let mut set = CpuSet::new();
    for cpu in 0..CpuSet::count() {
        let _ = set.set(cpu);
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
}

/// A `uiommufd serve` child on its own mount, stopped on drop: in CPU 0's affinity (inherited),
/// or on every CPU with `unpinned`.
struct Daemon {
    child: std::process::Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(tag: &str, io_uring: &str, unpinned: bool) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = temp_mount(tag);
        let mount = dir.join("m");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
        if unpinned {
            // SAFETY: the closure runs between fork and exec and makes one syscall
            // (sched_setaffinity), which is async-signal-safe; it allocates nothing.
            unsafe { cmd.pre_exec(unpin_all) };
        }
        let child = cmd
            .args([
                "serve",
                "--transport",
                "fuse",
                "--io-uring",
                io_uring,
                "--mount",
            ])
            .arg(&mount)
            .arg("--control")
            .arg(dir.join("control.sock"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn uiommufd");
        let node = mount.join("iommu");
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::metadata(&node).is_err() {
            assert!(
                Instant::now() < deadline,
                "uiommufd --io-uring {io_uring} did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, dir }
    }

    fn node(&self) -> PathBuf {
        self.dir.join("m/iommu")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// IOMMU_OPTION through the daemon over /dev/fuse and over io_uring, samples interleaved.
fn daemon_modes(client_cpus: &[usize]) {
    let dev = Daemon::start("dev-fuse", "off", false);
    let dev_free = Daemon::start("dev-fuse-free", "off", true);
    let (ring, ring_free) = {
        let Some(_on) = EnableUring::set_on() else {
            eprintln!("fuse_rtt: no {ENABLE_URING} (CONFIG_FUSE_IO_URING); io_uring mode skipped");
            return;
        };
        // enable_uring is read when the connection is made: put back once the daemons are up.
        (
            Daemon::start("io-uring", "on", false),
            Daemon::start("io-uring-free", "on", true),
        )
    };
    // "pinned": the whole daemon on CPU 0 but for the ring threads, which pin themselves;
    // "free": no affinity (how it runs as a service), so the pool workers run anywhere.
    let daemons = [
        ("/dev/fuse pinned", &dev),
        ("io_uring pinned", &ring),
        ("/dev/fuse free", &dev_free),
        ("io_uring free", &ring_free),
    ];
    let mut samples = vec![vec![Vec::new(); client_cpus.len()]; daemons.len()];
    for _ in 0..OPTION_ROUNDS {
        for (c, &cpu) in client_cpus.iter().enumerate() {
            for (d, (_, daemon)) in daemons.iter().enumerate() {
                samples[d][c].push(run_client(OPTION_CLIENT_ENV, &daemon.node(), cpu));
            }
        }
    }
    println!(
        "uiommufd IOMMU_OPTION round trip, median of {OPTION_ROUNDS} interleaved samples of \
         {OPTION_ITERS} calls, daemon on CPU 0:"
    );
    for (c, &cpu) in client_cpus.iter().enumerate() {
        let placement = if cpu == 0 { "same CPU" } else { "other CPU" };
        let m: Vec<u64> = samples.iter_mut().map(|s| median(&mut s[c])).collect();
        for pair in [0, 2] {
            println!(
                "  client {placement:9}: {:16} {:>7} ns/op, {:16} {:>7} ns/op, ratio {:.2}",
                daemons[pair].0,
                m[pair],
                daemons[pair + 1].0,
                m[pair + 1],
                m[pair + 1] as f64 / m[pair].max(1) as f64
            );
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        client(&spec);
        return;
    }
    if let Ok(spec) = std::env::var(OPTION_CLIENT_ENV) {
        option_client(&spec);
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / listing: nothing to run.
    }
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("fuse_rtt: needs root and /dev/fuse; skipped");
        return;
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let client_cpus: Vec<usize> = if cpus > 1 { vec![0, 1] } else { vec![0] };
    // Everything the server side creates from here on inherits CPU 0.
    pin(0);

    let base_dir = temp_mount("baseline");
    mounts::cleanup_stale(&base_dir).unwrap();
    let base = baseline_server(&base_dir);
    let base_ns: Vec<u64> = client_cpus
        .iter()
        .map(|&c| measure(&base_dir.join("iommu"), c))
        .collect();
    mounts::unmount(&base_dir).unwrap();
    // The lazily detached mount ends the connection once no file is open; the reader then sees ENODEV.
    let _ = base.join();

    let ours_dir = temp_mount("transport");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = TransportOptions::fuse(&ours_dir);
    let t = rt
        .block_on(Transport::start(&opts, Arc::new(Trivial)))
        .unwrap();
    let ours_ns: Vec<u64> = client_cpus
        .iter()
        .map(|&c| measure(&ours_dir.join("iommu"), c))
        .collect();
    rt.block_on(t.shutdown()).unwrap();
    let _ = std::fs::remove_dir(&base_dir);
    let _ = std::fs::remove_dir(&ours_dir);

    println!("FUSE ioctl round trip, {ITERS} calls, server on CPU 0:");
    for (i, c) in client_cpus.iter().enumerate() {
        let placement = if *c == 0 { "same CPU" } else { "other CPU" };
        println!(
            "  client {placement:9}: baseline {:>7} ns/op, transport {:>7} ns/op, ratio {:.2}",
            base_ns[i],
            ours_ns[i],
            ours_ns[i] as f64 / base_ns[i].max(1) as f64
        );
    }
    daemon_modes(&client_cpus);
}
