//! Round trip of a cheap ioctl through a FUSE node: our tokio transport vs a minimal single-threaded
//! blocking loop over /dev/fuse (the same message handler, no runtime, no thread hand-off).
//!
//! `cargo bench --bench fuse_rtt` (root only). The server runs pinned to CPU 0; the client is a child
//! process pinned to CPU 0 (same CPU) or CPU 1 (different CPUs). Prints ns per ioctl and the ratio.

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
const ITERS: u32 = 20_000;

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
    for _ in 0..1000 {
        call();
    }
    let t = Instant::now();
    for _ in 0..ITERS {
        call();
    }
    println!("{}", t.elapsed().as_nanos() / ITERS as u128);
}

fn measure(node: &Path, cpu: usize) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CLIENT_ENV, format!("{cpu}:{}", node.display()))
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

fn main() {
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        client(&spec);
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
}
