//! Round trip of an iommufd ioctl through a FUSE node, in one interleaved run:
//! - the libfuse3 baseline: a low-level single-threaded C server (`fuse_rtt/libfuse_null.c`, built
//!   here with `cc` against libfuse3-dev) answering an `_IO`-shape ioctl by reading its 24 bytes
//!   and writing them back with process_vm_readv/writev;
//! - a minimal blocking /dev/fuse loop in this process (uiommufd's message handler, the same
//!   24-byte read and write, no runtime, no hand-off);
//! - a real IOMMU_OPTION (RLIMIT_MODE, GET) through `uiommufd serve` over /dev/fuse
//!   (`--io-uring off`) and over io_uring (`--io-uring on`, the fuse module's enable_uring set for
//!   their start and put back), each daemon pinned to CPU 0 or free to run anywhere;
//! - an IOAS_MAP+IOAS_UNMAP pair of 4 KiB on an IOAS with a mock domain (`serve --selftest`,
//!   IOMMU_TEST_OP_MOCK_DOMAIN) through the same daemons;
//! - throughput: 1, 2 and 4 unpinned client threads, each on its own context and IOAS, doing
//!   MAP+UNMAP pairs through the free daemons.
//!
//! `cargo bench --bench fuse_rtt` (root only; ~1 min). Servers run on CPU 0 (the io_uring
//! daemons' ring threads pin themselves to their CPUs); the clients are child processes pinned to
//! CPU 0 (same CPU) or CPU 1. Prints medians and ratios to libfuse3. `FUSE_RTT_QUICK=1`: a
//! smoke run of one short round. `FUSE_RTT_BEFORE=PATH`: also time the daemons of another
//! uiommufd binary (e.g. built before a change) in the same run: /dev/fuse pinned and free,
//! io_uring pinned.

#[path = "fuse_rtt/clients.rs"]
mod clients;
#[path = "fuse_rtt/servers.rs"]
mod servers;

use clients::Role;
use servers::{pin, Daemon, EnableUring, LibfuseServer, MinimalLoop};
use std::path::{Path, PathBuf};

/// Interleaved rounds of latency samples (each round: one sample of every server × placement).
const ROUNDS: usize = 5;
/// Interleaved rounds of throughput samples.
const THROUGHPUT_ROUNDS: usize = 3;
const THREAD_COUNTS: [usize; 3] = [1, 2, 4];
/// A uiommufd binary to time beside this build's (/dev/fuse pinned and free, io_uring pinned).
const BEFORE_ENV: &str = "FUSE_RTT_BEFORE";

struct Target {
    name: &'static str,
    node: PathBuf,
    /// A uiommufd daemon: also timed for MAP+UNMAP and throughput.
    iommufd: bool,
    /// Not pinned: a throughput target.
    free: bool,
}

fn rounds(n: usize) -> usize {
    if clients::quick() {
        1
    } else {
        n
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn micros(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn ratio(x: u64, base: Option<u64>) -> String {
    base.map_or_else(String::new, |b| {
        format!(" ({:.2}×)", x as f64 / b.max(1) as f64)
    })
}

fn main() {
    if let Ok(spec) = std::env::var(clients::CLIENT_ENV) {
        clients::main(&spec);
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / listing: nothing to run.
    }
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("fuse_rtt: needs root and /dev/fuse; skipped");
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let client_cpus: Vec<usize> = if cpus > 1 { vec![0, 1] } else { vec![0] };
    // Everything the server side creates from here on inherits CPU 0.
    pin(0);

    let libfuse = LibfuseServer::start()
        .map_err(|e| eprintln!("fuse_rtt: libfuse3 baseline skipped: {e}"))
        .ok();
    let minimal = MinimalLoop::start();
    let dev = Daemon::start("dev-fuse", "off", false);
    let dev_free = Daemon::start("dev-fuse-free", "off", true);
    let before_exe = std::env::var_os(BEFORE_ENV).map(PathBuf::from);
    let rings = match EnableUring::set_on() {
        // enable_uring is read when the connection is made: put back once the daemons are up.
        Some(_on) => Some((
            Daemon::start("io-uring", "on", false),
            Daemon::start("io-uring-free", "on", true),
            before_exe
                .as_ref()
                .map(|exe| Daemon::start_exe(exe, "before-io-uring", "on", false)),
        )),
        None => {
            eprintln!("fuse_rtt: no enable_uring (CONFIG_FUSE_IO_URING); io_uring mode skipped");
            None
        }
    };

    // Another build's daemons in the same run, for before/after figures.
    let before = before_exe.as_ref().map(|exe| {
        (
            Daemon::start_exe(exe, "before", "off", false),
            Daemon::start_exe(exe, "before-free", "off", true),
        )
    });

    let mut targets = Vec::new();
    if let Some(l) = &libfuse {
        targets.push(Target {
            name: "libfuse3, 1 thread",
            node: l.node(),
            iommufd: false,
            free: false,
        });
    }
    targets.push(Target {
        name: "minimal /dev/fuse loop",
        node: minimal.node(),
        iommufd: false,
        free: false,
    });
    let mut daemons = vec![
        ("uiommufd /dev/fuse", &dev, false),
        ("uiommufd /dev/fuse free", &dev_free, true),
    ];
    if let Some((ring, ring_free, ring_before)) = &rings {
        daemons.insert(1, ("uiommufd io_uring", ring, false));
        daemons.push(("uiommufd io_uring free", ring_free, true));
        if let Some(b) = ring_before {
            daemons.insert(0, ("before: io_uring", b, false));
        }
    }
    if let Some((b, b_free)) = &before {
        daemons.insert(0, ("before: /dev/fuse", b, false));
        daemons.insert(1, ("before: /dev/fuse free", b_free, true));
    }
    for (name, d, free) in daemons {
        targets.push(Target {
            name,
            node: d.node(),
            iommufd: true,
            free,
        });
    }

    latency(&targets, &client_cpus, libfuse.is_some());
    throughput(&targets);
}

/// IOMMU_OPTION of every target and MAP+UNMAP of the daemons, per client placement.
fn latency(targets: &[Target], client_cpus: &[usize], have_libfuse: bool) {
    // samples[target][cpu] = (option ns, pair ns)
    let mut option = vec![vec![Vec::new(); client_cpus.len()]; targets.len()];
    let mut pair = option.clone();
    for _ in 0..rounds(ROUNDS) {
        for (c, &cpu) in client_cpus.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                option[t][c].push(clients::run(Role::Option { cpu }, &target.node));
                if target.iommufd {
                    pair[t][c].push(clients::run(Role::MapUnmap { cpu }, &target.node));
                }
            }
        }
    }
    println!(
        "IOMMU_OPTION-shape ioctl, µs per call (median of {} interleaved samples), \
         server on CPU 0, ratio to {}:",
        rounds(ROUNDS),
        if have_libfuse {
            "libfuse3"
        } else {
            "the minimal loop"
        }
    );
    let base: Vec<u64> = (0..client_cpus.len())
        .map(|c| median(&mut option[0][c]))
        .collect();
    for (t, target) in targets.iter().enumerate() {
        let cells: Vec<String> = (0..client_cpus.len())
            .map(|c| {
                let m = median(&mut option[t][c]);
                format!("{:>6}{:9}", micros(m), ratio(m, Some(base[c])))
            })
            .collect();
        println!("  {:26} {}", target.name, cells.join("   "));
    }
    println!("  (columns: client on CPU {client_cpus:?})");
    println!("IOAS_MAP+IOAS_UNMAP 4 KiB with a mock domain, µs per pair (median):");
    for (t, target) in targets.iter().enumerate().filter(|(_, t)| t.iommufd) {
        let cells: Vec<String> = (0..client_cpus.len())
            .map(|c| format!("{:>6}", micros(median(&mut pair[t][c]))))
            .collect();
        println!("  {:26} {}", target.name, cells.join("   "));
    }
}

/// MAP+UNMAP pairs per second with 1, 2 and 4 client threads through the free daemons.
fn throughput(targets: &[Target]) {
    let free: Vec<&Target> = targets.iter().filter(|t| t.iommufd && t.free).collect();
    let mut samples = vec![vec![Vec::new(); THREAD_COUNTS.len()]; free.len()];
    for _ in 0..rounds(THROUGHPUT_ROUNDS) {
        for (n, &threads) in THREAD_COUNTS.iter().enumerate() {
            for (t, target) in free.iter().enumerate() {
                samples[t][n].push(clients::run(Role::Throughput { threads }, &target.node));
            }
        }
    }
    println!(
        "MAP+UNMAP pairs/s, threads {THREAD_COUNTS:?} on their own contexts, unpinned \
         (median of {}), ratio to 1 thread:",
        rounds(THROUGHPUT_ROUNDS)
    );
    for (t, target) in free.iter().enumerate() {
        let one = median(&mut samples[t][0]);
        let cells: Vec<String> = (0..THREAD_COUNTS.len())
            .map(|n| {
                let m = median(&mut samples[t][n]);
                format!("{m:>7}{:9}", ratio(m, Some(one)))
            })
            .collect();
        println!("  {:26} {}", target.name, cells.join("   "));
    }
}
