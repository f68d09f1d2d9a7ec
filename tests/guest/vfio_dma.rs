//! Guest client for uiommufd's VFIO type1 backend: real DMA by QEMU `edu` devices through the
//! emulated VT-d, driven from inside the Debian 6.12 guest that `scripts/vfio-guest.sh` boots.
//!
//! Subcommands (each prints `ok NAME` / `FAIL NAME: why` per check and a last line
//! `RESULT SUBCOMMAND: N passed, M failed`; exit 0 only with checks and no failure):
//! - `baseline-bench /dev/vfio/N [--bdf B]`: the client's own kernel type1v2 container; one edu
//!   DMA round trip, then VFIO_IOMMU_MAP_DMA + UNMAP_DMA timings (`BENCH baseline ...` lines).
//! - `dma-tests`: through uiommufd (/dev/iommu and the daemon's device nodes): DMA into the
//!   client's memfd, no write after IOAS_UNMAP, EOPNOTSUPP for private memory, two devices on one
//!   IOAS, HWPT replace, GET_HW_INFO, the MSI window in IOVA_RANGES, IOAS_COPY, IOAS_MAP_FILE,
//!   INTx and MSI into the client's eventfd.
//! - `kill-test`: a SIGKILLed client's pinned memory comes back and the device can be bound again.
//! - `hold`: maps 64 MiB with the device attached, prints `held` and waits for a line on stdin
//!   (the script stops the daemon meanwhile); then an ioctl on the orphaned iommufd must fail.
//! - `nested-qemu --socket PATH --daemon-pid PID -- CMD...`: unmodified QEMU (CMD) with the edu
//!   passed through uiommufd, driven over qtest: DMA into the nested QEMU's RAM (`nested.rs`).
//! - `bench`: IOAS_MAP + IOAS_UNMAP timings through uiommufd (`BENCH uiommufd ...` lines).
//! - `legacy /dev/vfio/N --bdf B --compat PATH` (under `uiommufd launch`): the baseline's type1
//!   flow, with /dev/vfio/vfio answered by the daemon's compat node PATH and the group joined
//!   to it by the daemon: DMA, UNSET_CONTAINER busy while the device is open, then unset and
//!   set again (`legacy.rs`).
//!
//! Built as a dev-only example: `cargo build --release --example vfio_dma`.
#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod report;
mod edu;
mod ioas;
mod iommufd;
mod irq;
mod legacy;
mod lifetime;
mod native;
mod nested;
mod sys;
mod type1;

use clap::{Args, Parser};
use edu::{Device, EDU_BUF_LEN};
use iommufd::{Bound, Iommufd};
use nix::errno::Errno;
use report::Report;
use std::fs::File;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use sys::{compare, median, pattern, Buffer, Res, MIB};
use type1::Container;

/// IOVA of the 2 MiB test buffers (edu masks DMA addresses to 28 bits: stay below 256 MiB).
const IOVA: u64 = 0x10_0000;
const BUF_LEN: usize = 2 * MIB;
/// IOVA of the benchmark buffers (no DMA there, so above edu's reach is fine).
const BENCH_IOVA: u64 = 0x1000_0000;
const BENCH_SIZES: [usize; 2] = [64 * MIB, 256 * MIB];

#[derive(Parser)]
#[command(about = "edu DMA through uiommufd (run inside scripts/vfio-guest.sh)")]
enum Cmd {
    /// Under the launcher: the legacy type1 flow against the daemon's compat node.
    Legacy(legacy::LegacyArgs),
    /// The client's own VFIO type1v2 container: one DMA, then MAP/UNMAP timings.
    BaselineBench {
        /// The group file, /dev/vfio/N.
        group: String,
        /// The device in that group.
        #[arg(long, default_value = "0000:00:06.0")]
        bdf: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// DMA through uiommufd.
    DmaTests(Nodes),
    /// SIGKILL a client that holds pinned memory and a bound device.
    KillTest(Nodes),
    /// Hold 64 MiB mapped with the device attached until a line arrives on stdin.
    Hold(Nodes),
    /// Under `uiommufd launch`: the kernel's device fd in place of the node file.
    Native(Nodes),
    /// Unmodified QEMU (the command after `--`, under `uiommufd launch`) driven over qtest: edu
    /// DMA into the nested QEMU's RAM.
    NestedQemu(nested::NestedArgs),
    /// IOAS_MAP + IOAS_UNMAP timings through uiommufd, interleaved with the client's own
    /// container (the group file of another edu, /dev/vfio/N).
    Bench {
        #[command(flatten)]
        nodes: Nodes,
        #[arg(long)]
        baseline_group: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

#[derive(Args)]
struct Nodes {
    #[arg(long, default_value = "/dev/iommu")]
    iommu: String,
    #[arg(long, default_value = "/run/uiommufd/vfio/devices/0000:00:04.0")]
    dev: String,
    /// The second device (dma-tests: two devices on one IOAS).
    #[arg(long, default_value = "/run/uiommufd/vfio/devices/0000:00:05.0")]
    dev2: String,
}

fn main() -> ExitCode {
    let cmd = Cmd::parse();
    let mut r = Report::default();
    let name = match &cmd {
        Cmd::BaselineBench { group, bdf, rounds } => {
            baseline(&mut r, group, bdf, *rounds);
            "baseline-bench"
        }
        Cmd::DmaTests(n) => {
            roundtrip_and_unmap(&mut r, n);
            private_memory(&mut r, n);
            memlock_limit(&mut r, n);
            two_devices(&mut r, n);
            replace(&mut r, n);
            ioas::hw_info(&mut r, n);
            ioas::msi_window(&mut r, n);
            ioas::ioas_copy(&mut r, n);
            ioas::map_file(&mut r, n);
            irq::interrupts(&mut r, n);
            "dma-tests"
        }
        Cmd::KillTest(n) => {
            lifetime::kill_test(&mut r, n);
            "kill-test"
        }
        Cmd::Hold(n) => {
            lifetime::hold(&mut r, n);
            "hold"
        }
        Cmd::Legacy(a) => {
            legacy::legacy(&mut r, a);
            "legacy"
        }
        Cmd::Native(n) => {
            native::native(&mut r, n);
            "native"
        }
        Cmd::NestedQemu(a) => {
            r.rename = Some(("nested-".into(), format!("{}-", a.label)));
            nested::nested(&mut r, a);
            "nested-qemu"
        }
        Cmd::Bench {
            nodes,
            baseline_group,
            rounds,
        } => {
            bench_interleaved(&mut r, nodes, baseline_group, *rounds);
            "bench"
        }
    };
    println!("RESULT {name}: {} passed, {} failed", r.passed, r.failed);
    if r.failed == 0 && r.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// edu copies `seed`'s pattern from `src` (offset in `buf`, mapped at `iova`) into its own buffer
/// and back to `dst`; `buf` must then hold the pattern at `dst`.
fn roundtrip(dev: &Device, buf: &Buffer, iova: u64, src: usize, dst: usize, seed: u8) -> Res<()> {
    let p = pattern(seed, EDU_BUF_LEN);
    buf.write(src, &p);
    buf.fill(dst, EDU_BUF_LEN, 0);
    dev.dma(iova + src as u64, EDU_BUF_LEN, false)?;
    dev.dma(iova + dst as u64, EDU_BUF_LEN, true)?;
    compare(
        &format!("{}: buffer at {dst:#x}", dev.name),
        &buf.read(dst, EDU_BUF_LEN),
        &p,
    )
}

/// After the unmap of `buf` (mapped at IOVA), edu writes to IOVA + 0x20000: the transfer must
/// finish and leave the buffer, still mapped in this process, as it was. Prints the
/// `DMAR-EXPECTED` line by which the script looks for the fault in dmesg.
fn unmapped_write(dev: &Device, buf: &Buffer) -> Res<()> {
    println!("DMAR-EXPECTED {} iova {:#x}", dev.name, IOVA + 0x20000);
    no_write_at(dev, buf, IOVA, 0x20000)
}

/// edu writes to `iova + off`, where `buf` (mapped at `iova` in this process, but no longer for
/// the device) must not change.
fn no_write_at(dev: &Device, buf: &Buffer, iova: u64, off: usize) -> Res<()> {
    buf.fill(off, EDU_BUF_LEN, 0x5a);
    dev.dma(iova + off as u64, EDU_BUF_LEN, true)?;
    compare(
        "buffer after DMA to an unmapped IOVA",
        &buf.read(off, EDU_BUF_LEN),
        &[0x5a; EDU_BUF_LEN],
    )
}

/// MAP + UNMAP of a pre-faulted memfd buffer of each benchmark size, `rounds` times; prints
/// `BENCH KIND MiB median SECONDS rounds ...`.
fn bench(
    r: &mut Report,
    kind: &str,
    rounds: usize,
    map: impl Fn(u64, u64) -> Res<()>,
    unmap: impl Fn(u64) -> Res<()>,
) {
    for size in BENCH_SIZES {
        let name = format!("{kind}-bench-{}MiB", size / MIB);
        let buf = step!(r, &format!("{name}-buffer"), Buffer::shared(size));
        let mut times = Vec::new();
        for _ in 0..rounds.max(1) {
            let t = Instant::now();
            step!(r, &format!("{name}-round{}", times.len()), {
                map(buf.addr(), size as u64).and_then(|()| unmap(size as u64))
            });
            times.push(t.elapsed());
        }
        let all: Vec<String> = times
            .iter()
            .map(|t| format!("{:.4}", t.as_secs_f64()))
            .collect();
        println!(
            "BENCH {kind} {} MiB median {:.4} s rounds {}",
            size / MIB,
            median(times),
            all.join(",")
        );
    }
}

fn baseline(r: &mut Report, group: &str, bdf: &str, rounds: usize) {
    let c = step!(r, "baseline-container", Container::open(group));
    let dev = step!(
        r,
        "baseline-device",
        c.device(bdf).and_then(|f| Device::new(f, bdf))
    );
    step!(r, "baseline-edu", dev.enable_edu());
    let buf = step!(r, "baseline-buffer", Buffer::shared(BUF_LEN));
    step!(r, "baseline-map", c.map(buf.addr(), IOVA, BUF_LEN as u64));
    step!(
        r,
        "baseline-dma",
        roundtrip(&dev, &buf, IOVA, 0, 0x10000, 0x11)
    );
    step!(r, "baseline-unmap", c.unmap(IOVA, BUF_LEN as u64));
    step!(r, "baseline-unmapped-no-write", unmapped_write(&dev, &buf));
    bench(
        r,
        "baseline",
        rounds,
        |va, len| c.map(va, BENCH_IOVA, len),
        |len| c.unmap(BENCH_IOVA, len),
    );
}

/// An iommufd with one IOAS and a 2 MiB memfd buffer mapped at IOVA.
fn mapped(n: &Nodes) -> Res<(Iommufd, u32, Buffer)> {
    let fd = Iommufd::open(&n.iommu)?;
    let ioas = fd.ioas_alloc()?;
    let buf = Buffer::shared(BUF_LEN)?;
    fd.map(ioas, buf.addr(), BUF_LEN as u64, IOVA)?;
    Ok((fd, ioas, buf))
}

/// Through uiommufd: IOAS_MAP, bind, attach, edu round trip into the memfd; then after
/// IOAS_UNMAP a device write to that IOVA must not reach the (still mapped) buffer.
fn roundtrip_and_unmap(r: &mut Report, n: &Nodes) {
    let (fd, ioas, buf) = step!(r, "ioas-map", mapped(n));
    let b = step!(r, "bind", Bound::open(&n.dev, &fd, None));
    step!(r, "attach", b.attach(ioas));
    let dev = step!(r, "device-regions", b.edu());
    step!(
        r,
        "dma-roundtrip",
        roundtrip(&dev, &buf, IOVA, 0, 0x10000, 0x21)
    );
    step!(r, "ioas-unmap", fd.unmap(ioas, IOVA, BUF_LEN as u64));
    step!(r, "unmapped-no-write", unmapped_write(&dev, &buf));
}

/// Private anonymous memory cannot be shared with the daemon: IOAS_MAP says EOPNOTSUPP.
fn private_memory(r: &mut Report, n: &Nodes) {
    let fd = step!(r, "private-open", Iommufd::open(&n.iommu));
    let ioas = step!(r, "private-ioas", fd.ioas_alloc());
    let b = step!(r, "private-bind", Bound::open(&n.dev, &fd, None));
    step!(r, "private-attach", b.attach(ioas));
    let buf = step!(r, "private-buffer", Buffer::private(BUF_LEN));
    step!(
        r,
        "private-map-eopnotsupp",
        match fd.try_map(ioas, buf.addr(), BUF_LEN as u64, IOVA) {
            Err(Errno::EOPNOTSUPP) => Ok(()),
            Err(e) => Err(format!(
                "IOMMU_IOAS_MAP of MAP_PRIVATE|MAP_ANONYMOUS: {e}, expected EOPNOTSUPP"
            )),
            Ok(()) => Err(
                "IOMMU_IOAS_MAP of MAP_PRIVATE|MAP_ANONYMOUS succeeded, expected EOPNOTSUPP".into()
            ),
        }
    );
}

/// What an unprivileged client may lock through uiommufd: its own RLIMIT_MEMLOCK (type1 would
/// charge the root daemon, which is exempt). Runs in a child that drops to nobody with an 8 MiB
/// limit: 16 MiB is refused with ENOMEM, 4 MiB maps and DMA works.
fn memlock_limit(r: &mut Report, n: &Nodes) {
    const LIMIT: u64 = 8 * MIB as u64;
    let child = || -> Res<()> {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK, LIMIT, LIMIT)
            .and_then(|()| setgroups(&[]))
            .and_then(|()| setgid(Gid::from_raw(65534)))
            .and_then(|()| setuid(Uid::from_raw(65534)))
            .map_err(|e| format!("dropping privileges: {e}"))?;
        let fd = Iommufd::open(&n.iommu)?;
        let ioas = fd.ioas_alloc()?;
        let b = Bound::open(&n.dev, &fd, None)?;
        b.attach(ioas)?;
        let big = Buffer::shared(2 * LIMIT as usize)?;
        match fd.try_map(ioas, big.addr(), 2 * LIMIT, IOVA) {
            Err(Errno::ENOMEM) => {}
            other => {
                return Err(format!(
                    "16 MiB over an 8 MiB limit: {other:?}, expected ENOMEM"
                ))
            }
        }
        let buf = Buffer::shared(BUF_LEN)?;
        fd.map(ioas, buf.addr(), BUF_LEN as u64, IOVA)?;
        let dev = b.edu()?;
        roundtrip(&dev, &buf, IOVA, 0, 0x10000, 0x61)
    };
    let (rd, wr) = step!(
        r,
        "memlock-pipe",
        rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))
    );
    // SAFETY: this program is single-threaded, so the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(rd);
        let msg = match child() {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        let _ = File::from(wr).write_all(msg.as_bytes());
        // SAFETY: leaves the forked child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(wr);
    let mut msg = String::new();
    let _ = File::from(rd).read_to_string(&mut msg);
    if pid > 0 {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
    step!(
        r,
        "memlock-limit-of-an-unprivileged-client",
        if msg == "ok" {
            Ok(())
        } else {
            Err(format!("child: {msg}"))
        }
    );
}

/// Both devices bound to one iommufd and attached to one IOAS; each DMAs through it.
fn two_devices(r: &mut Report, n: &Nodes) {
    let (fd, ioas, buf) = step!(r, "two-map", mapped(n));
    let b1 = step!(r, "two-bind-1", Bound::open(&n.dev, &fd, None));
    let b2 = step!(r, "two-bind-2", Bound::open(&n.dev2, &fd, None));
    step!(r, "two-attach-1", b1.attach(ioas));
    step!(r, "two-attach-2", b2.attach(ioas));
    let d1 = step!(r, "two-regions-1", b1.edu());
    let d2 = step!(r, "two-regions-2", b2.edu());
    step!(r, "two-dma-1", roundtrip(&d1, &buf, IOVA, 0, 0x10000, 0x31));
    step!(
        r,
        "two-dma-2",
        roundtrip(&d2, &buf, IOVA, 0x20000, 0x30000, 0x32)
    );
    step!(
        r,
        "two-dma-1-intact",
        compare(
            "first device's copy",
            &buf.read(0x10000, EDU_BUF_LEN),
            &pattern(0x31, EDU_BUF_LEN)
        )
    );
}

/// Two paging HWPTs on two IOASes map two buffers at the same IOVA; after replacing the
/// device's HWPT, its DMA lands in the second buffer only.
fn replace(r: &mut Report, n: &Nodes) {
    let fd = step!(r, "replace-open", Iommufd::open(&n.iommu));
    let ioas1 = step!(r, "replace-ioas-1", fd.ioas_alloc());
    let ioas2 = step!(r, "replace-ioas-2", fd.ioas_alloc());
    let buf1 = step!(r, "replace-buffer-1", Buffer::shared(BUF_LEN));
    let buf2 = step!(r, "replace-buffer-2", Buffer::shared(BUF_LEN));
    for (name, ioas, buf) in [
        ("replace-map-1", ioas1, &buf1),
        ("replace-map-2", ioas2, &buf2),
    ] {
        step!(r, name, fd.map(ioas, buf.addr(), BUF_LEN as u64, IOVA));
    }
    let b = step!(r, "replace-bind", Bound::open(&n.dev, &fd, None));
    let h1 = step!(r, "replace-hwpt-1", fd.hwpt_alloc(b.dev_id, ioas1));
    let h2 = step!(r, "replace-hwpt-2", fd.hwpt_alloc(b.dev_id, ioas2));
    let attached = |h: u32| {
        b.attach(h).and_then(|got| {
            if got == h {
                Ok(())
            } else {
                Err(format!("attached to {got}, asked {h}"))
            }
        })
    };
    step!(r, "replace-attach-1", attached(h1));
    let dev = step!(r, "replace-regions", b.edu());
    step!(
        r,
        "replace-dma-1",
        roundtrip(&dev, &buf1, IOVA, 0, 0x10000, 0x41)
    );
    step!(r, "replace-attach-2", attached(h2));
    // edu still holds pattern 0x41: write it out through the new HWPT.
    buf1.fill(0x20000, EDU_BUF_LEN, 0);
    buf2.fill(0x20000, EDU_BUF_LEN, 0);
    step!(
        r,
        "replace-dma-2",
        dev.dma(IOVA + 0x20000, EDU_BUF_LEN, true)
    );
    step!(
        r,
        "replace-lands-in-2",
        compare(
            "buffer 2",
            &buf2.read(0x20000, EDU_BUF_LEN),
            &pattern(0x41, EDU_BUF_LEN)
        )
    );
    step!(
        r,
        "replace-not-in-1",
        compare(
            "buffer 1",
            &buf1.read(0x20000, EDU_BUF_LEN),
            &[0; EDU_BUF_LEN]
        )
    );
    step!(
        r,
        "replace-roundtrip-2",
        roundtrip(&dev, &buf2, IOVA, 0x30000, 0x40000, 0x42)
    );
}

/// IOAS_MAP + IOAS_UNMAP through uiommufd (edu attached) against the client's own container's
/// MAP_DMA + UNMAP_DMA of the same pre-faulted buffer, rounds interleaved so that both see the
/// same machine; prints `BENCH baseline|uiommufd MiB median SECONDS rounds ...` per size.
fn bench_interleaved(r: &mut Report, n: &Nodes, group: &str, rounds: usize) {
    let c = step!(r, "bench-own-container", Container::open(group));
    let fd = step!(r, "bench-open", Iommufd::open(&n.iommu));
    let ioas = step!(r, "bench-ioas", fd.ioas_alloc());
    let b = step!(r, "bench-bind", Bound::open(&n.dev, &fd, None));
    step!(r, "bench-attach", b.attach(ioas));
    // The fixed cost of one ioctl through the node (IOAS_MAP of length 0: EINVAL at once).
    let rtt: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let _ = fd.try_map(ioas, 0, 0, BENCH_IOVA);
            t.elapsed()
        })
        .collect();
    println!("BENCH node-round-trip median {:.6} s", median(rtt));
    // A BAR0 register read through the node (pread; `native` measures the kernel fd's mmap).
    let dev = step!(r, "bench-regions", b.edu());
    let reads: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            let _ = dev.read32(0);
            t.elapsed()
        })
        .collect();
    println!("BENCH bar0-read node median {:.9} s", median(reads));
    for size in BENCH_SIZES {
        let len = size as u64;
        let buf = step!(
            r,
            &format!("bench-{}MiB-buffer", size / MIB),
            Buffer::shared(size)
        );
        let (mut own, mut through) = (Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            let t = Instant::now();
            step!(
                r,
                &format!("baseline-bench-{}MiB-round{round}", size / MIB),
                {
                    c.map(buf.addr(), BENCH_IOVA, len)
                        .and_then(|()| c.unmap(BENCH_IOVA, len))
                }
            );
            own.push(t.elapsed());
            let t = Instant::now();
            step!(
                r,
                &format!("uiommufd-bench-{}MiB-round{round}", size / MIB),
                {
                    fd.map(ioas, buf.addr(), len, BENCH_IOVA)
                        .and_then(|()| fd.unmap(ioas, BENCH_IOVA, len))
                }
            );
            through.push(t.elapsed());
        }
        for (kind, times) in [("baseline", own), ("uiommufd", through)] {
            let all: Vec<String> = times
                .iter()
                .map(|t| format!("{:.4}", t.as_secs_f64()))
                .collect();
            println!(
                "BENCH {kind} {} MiB median {:.4} s rounds {}",
                size / MIB,
                median(times),
                all.join(",")
            );
        }
    }
}
