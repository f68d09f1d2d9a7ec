//! The client roles of the round-trip bench: child processes of the bench (so that the kernel
//! sees a separate caller, as a real client is), chosen by [`CLIENT_ENV`] = `ROLE:ARG:PATH`.
//! Each prints one number on stdout.

use super::servers::{pin, unpin_all};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Instant;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::{
    iommu_test_cmd, iommu_test_cmd_mock_domain, IOMMU_TEST_CMD, IOMMU_TEST_OP_MOCK_DOMAIN,
};

pub const CLIENT_ENV: &str = "UIOMMUFD_BENCH_CLIENT";
/// IOMMU_OPTION calls per sample.
const OPTION_ITERS: u32 = 5_000;
/// IOAS_MAP+IOAS_UNMAP pairs per sample, and per thread of a throughput sample.
const PAIR_ITERS: u32 = 2_000;
/// `FUSE_RTT_QUICK=1`: a smoke run (a fiftieth of the calls; the bench takes one round).
pub fn quick() -> bool {
    std::env::var_os("FUSE_RTT_QUICK").is_some()
}

fn scaled(iters: u32) -> u32 {
    if quick() {
        (iters / 50).max(1)
    } else {
        iters
    }
}

/// Where the pair maps: the mock domain's aperture starts at 16 MiB.
const MAP_IOVA: u64 = 1 << 24;
const PAGE: usize = 4096;

/// What a client child measures.
#[derive(Clone, Copy)]
pub enum Role {
    /// ns per IOMMU_OPTION (RLIMIT_MODE, GET), client pinned to a CPU.
    Option { cpu: usize },
    /// ns per IOAS_MAP+IOAS_UNMAP pair of 4 KiB on an IOAS with a mock domain, pinned to a CPU.
    MapUnmap { cpu: usize },
    /// Pairs per second of `threads` unpinned threads, each on its own context and IOAS.
    Throughput { threads: usize },
}

/// Runs one client child against `node` and returns the number it printed.
pub fn run(role: Role, node: &Path) -> u64 {
    let spec = match role {
        Role::Option { cpu } => format!("option:{cpu}"),
        Role::MapUnmap { cpu } => format!("mapunmap:{cpu}"),
        Role::Throughput { threads } => format!("throughput:{threads}"),
    };
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CLIENT_ENV, format!("{spec}:{}", node.display()))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "bench client {spec} failed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The child side of [`run`].
pub fn main(spec: &str) {
    let mut parts = spec.splitn(3, ':');
    let (role, arg, path) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
        Path::new(parts.next().expect("ROLE:ARG:PATH")),
    );
    match role {
        "option" => {
            pin(arg);
            let f = open(path);
            let mut opt = iommu_option {
                size: std::mem::size_of::<iommu_option>() as u32,
                option_id: IOMMU_OPTION_RLIMIT_MODE,
                op: IOMMU_OPTION_OP_GET,
                ..Default::default()
            };
            print_ns_per_call(500, scaled(OPTION_ITERS), || {
                ioctl(&f, IOMMU_OPTION, &mut opt).expect("IOMMU_OPTION")
            });
        }
        "mapunmap" => {
            pin(arg);
            let mut pair = MapUnmapPair::new(path);
            print_ns_per_call(200, scaled(PAIR_ITERS), || pair.run());
        }
        "throughput" => {
            unpin_all().unwrap();
            println!("{}", pairs_per_second(path, arg));
        }
        _ => panic!("unknown bench client role {role}"),
    }
}

fn open(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn ioctl<T>(f: &File, cmd: u32, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: every command used here reads and writes at most the `T` it is given, which lives
    // across the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::c_ulong::from(cmd), arg as *mut T) };
    Errno::result(r).map(drop)
}

/// Warms up with `warm` calls, times `iters` more and prints ns per call.
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

/// A context with an IOAS that has a mock domain attached, and a touched 4 KiB buffer to map.
struct MapUnmapPair {
    file: File,
    ioas: u32,
    buf: Vec<u8>,
}

impl MapUnmapPair {
    fn new(node: &Path) -> Self {
        let file = open(node);
        let mut alloc = iommu_ioas_alloc {
            size: std::mem::size_of::<iommu_ioas_alloc>() as u32,
            ..Default::default()
        };
        ioctl(&file, IOMMU_IOAS_ALLOC, &mut alloc).expect("IOMMU_IOAS_ALLOC");
        let mut cmd = iommu_test_cmd {
            size: std::mem::size_of::<iommu_test_cmd>() as u32,
            op: IOMMU_TEST_OP_MOCK_DOMAIN,
            id: alloc.out_ioas_id,
            ..Default::default()
        };
        assert!(cmd.set_payload(&iommu_test_cmd_mock_domain::default()));
        ioctl(&file, IOMMU_TEST_CMD, &mut cmd)
            .expect("IOMMU_TEST_OP_MOCK_DOMAIN (is the daemon serving --selftest?)");
        // Page-aligned inside a 2-page allocation, touched so that the pin finds it present.
        let buf = vec![1u8; 2 * PAGE];
        Self {
            file,
            ioas: alloc.out_ioas_id,
            buf,
        }
    }

    fn run(&mut self) {
        let va = (self.buf.as_ptr() as u64).next_multiple_of(PAGE as u64);
        let mut map = iommu_ioas_map {
            size: std::mem::size_of::<iommu_ioas_map>() as u32,
            flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id: self.ioas,
            user_va: va,
            length: PAGE as u64,
            iova: MAP_IOVA,
            ..Default::default()
        };
        ioctl(&self.file, IOMMU_IOAS_MAP, &mut map).expect("IOMMU_IOAS_MAP");
        let mut unmap = iommu_ioas_unmap {
            size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
            ioas_id: self.ioas,
            iova: MAP_IOVA,
            length: PAGE as u64,
        };
        ioctl(&self.file, IOMMU_IOAS_UNMAP, &mut unmap).expect("IOMMU_IOAS_UNMAP");
    }
}

/// `threads` threads, each with its own context, IOAS and mock domain, start together and do
/// [`PAIR_ITERS`] pairs each; pairs per second from the first start to the last end (each thread
/// times itself: the main thread may not run again until they are done).
fn pairs_per_second(node: &Path, threads: usize) -> u64 {
    let start = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (start, node) = (start.clone(), node.to_path_buf());
            std::thread::spawn(move || {
                let mut pair = MapUnmapPair::new(&node);
                for _ in 0..100 {
                    pair.run();
                }
                start.wait();
                let began = Instant::now();
                for _ in 0..scaled(PAIR_ITERS) {
                    pair.run();
                }
                (began, Instant::now())
            })
        })
        .collect();
    let spans: Vec<(Instant, Instant)> = workers
        .into_iter()
        .map(|w| w.join().expect("throughput thread"))
        .collect();
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    let pairs = u128::from(scaled(PAIR_ITERS)) * threads as u128;
    (pairs * 1_000_000_000 / (last - first).as_nanos().max(1)) as u64
}
