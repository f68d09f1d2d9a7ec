//! What outlives a client, or the daemon: `kill-test` SIGKILLs a client that holds pinned memory
//! and a bound device; `hold` keeps such a client alive while the script stops the daemon.

use crate::iommufd::{Bound, Iommufd};
use crate::report::Report;
use crate::sys::{daemon_locked, mem_free, wait_readable, Buffer, Res, MIB};
use crate::{mapped, roundtrip, Nodes, BENCH_IOVA, IOVA};
use nix::errno::Errno;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

const KILL_BUF: usize = 64 * MIB;
/// How far MemFree may stay below its value before the killed client started.
const KILL_TOLERANCE: u64 = 16 * MIB as u64;
const KILL_DEADLINE: Duration = Duration::from_secs(30);

/// The child of kill_test: binds and attaches the device, maps KILL_BUF of memfd, then reports
/// readiness and waits to be killed.
fn kill_child(n: &Nodes) -> Res<(Iommufd, Bound, Buffer)> {
    let fd = Iommufd::open(&n.iommu)?;
    let ioas = fd.ioas_alloc()?;
    let b = Bound::open(&n.dev, &fd, None)?;
    b.attach(ioas)?;
    let buf = Buffer::shared(KILL_BUF)?;
    fd.map(ioas, buf.addr(), KILL_BUF as u64, BENCH_IOVA)?;
    Ok((fd, b, buf))
}

pub fn kill_test(r: &mut Report, n: &Nodes) {
    let before = step!(r, "kill-memfree-before", mem_free());
    let locked_before = step!(r, "kill-vmlck-before", daemon_locked());
    let pipes = rustix::pipe::pipe().and_then(|a| Ok((a, rustix::pipe::pipe()?)));
    let ((ready_rd, ready_wr), (hold_rd, hold_wr)) =
        step!(r, "kill-pipes", pipes.map_err(|e| format!("pipe: {e}")));
    let (mut ready_rd, ready_wr) = (File::from(ready_rd), File::from(ready_wr));
    // SAFETY: this program is single-threaded, so the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        r.check::<()>("kill-fork", Err(format!("fork: {}", Errno::last())));
        return;
    }
    if pid == 0 {
        drop((ready_rd, hold_wr));
        let (msg, _held) = match kill_child(n) {
            Ok(held) => ("ready".to_string(), Some(held)),
            Err(e) => (e, None),
        };
        let _ = (&ready_wr).write_all(msg.as_bytes());
        drop(ready_wr);
        // Blocks until killed: the parent holds the write end and never writes.
        let _ = File::from(hold_rd).read(&mut [0]);
        // SAFETY: leaves the forked child without running the parent's destructors or atexit
        // handlers.
        unsafe { libc::_exit(1) };
    }
    drop((ready_wr, hold_rd));
    let pid = nix::unistd::Pid::from_raw(pid);
    let ready = wait_readable(&ready_rd, KILL_DEADLINE).and_then(|()| {
        let mut s = String::new();
        ready_rd
            .read_to_string(&mut s)
            .map_err(|e| format!("read: {e}"))?;
        if s == "ready" {
            Ok(())
        } else {
            Err(format!("child: {s}"))
        }
    });
    let ok = r.check("kill-child-ready", ready).is_some();
    let during = mem_free().unwrap_or(before);
    let locked_during = daemon_locked().unwrap_or(0);
    println!(
        "kill-test: MemFree before {} MiB, with the child {} MiB",
        before / MIB as u64,
        during / MIB as u64
    );
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
    drop((ready_rd, hold_wr));
    if !ok {
        return;
    }
    // The pins are the daemon's (type1 charges the mapping process): 64 MiB more while the child
    // lives, back to where they were once it is gone.
    step!(
        r,
        "kill-child-pinned-in-daemon",
        if locked_during >= locked_before + KILL_BUF as u64 {
            Ok(())
        } else {
            Err(format!(
                "daemon VmLck {} KiB with the child's {} MiB mapped, {} KiB before",
                locked_during / 1024,
                KILL_BUF / MIB,
                locked_before / 1024
            ))
        }
    );
    let start = Instant::now();
    step!(
        r,
        "kill-daemon-unpinned",
        loop {
            match daemon_locked() {
                Ok(now) if now <= locked_before => break Ok(()),
                Ok(now) if start.elapsed() > KILL_DEADLINE => {
                    break Err(format!(
                        "daemon VmLck {} KiB after {KILL_DEADLINE:?}, {} KiB before the child",
                        now / 1024,
                        locked_before / 1024
                    ))
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => break Err(e),
            }
        }
    );
    let start = Instant::now();
    step!(
        r,
        "kill-memory-freed",
        loop {
            let now = match mem_free() {
                Ok(v) => v,
                Err(e) => break Err(e),
            };
            if now + KILL_TOLERANCE >= before {
                println!(
                    "kill-test: MemFree back to {} MiB after {:.2} s",
                    now / MIB as u64,
                    start.elapsed().as_secs_f64()
                );
                break Ok(());
            }
            if start.elapsed() > KILL_DEADLINE {
                break Err(format!(
                    "MemFree {} MiB after {KILL_DEADLINE:?}, was {} MiB before the child",
                    now / MIB as u64,
                    before / MIB as u64
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    );
    let (fd, ioas, buf) = step!(r, "kill-reopen-map", mapped(n));
    let b = step!(
        r,
        "kill-rebind",
        Bound::open(&n.dev, &fd, Some(Duration::from_secs(5)))
    );
    step!(r, "kill-reattach", b.attach(ioas));
    let dev = step!(r, "kill-regions", b.edu());
    step!(r, "kill-dma", roundtrip(&dev, &buf, IOVA, 0, 0x10000, 0x51));
}

/// Binds and attaches the device, maps KILL_BUF of memfd and prints `held`; then waits for a
/// line (or EOF) on stdin, which the script sends once it has stopped the daemon, and checks
/// that an ioctl on the orphaned iommufd fails at once instead of hanging.
pub fn hold(r: &mut Report, n: &Nodes) {
    let fd = step!(r, "hold-open", Iommufd::open(&n.iommu));
    let ioas = step!(r, "hold-ioas", fd.ioas_alloc());
    let b = step!(r, "hold-bind", Bound::open(&n.dev, &fd, None));
    step!(r, "hold-attach", b.attach(ioas));
    let big = step!(r, "hold-buffer", Buffer::shared(KILL_BUF));
    step!(
        r,
        "hold-map",
        fd.map(ioas, big.addr(), KILL_BUF as u64, BENCH_IOVA)
    );
    // The device works through this mapping too: a DMA round trip in a small buffer beside it.
    let small = step!(r, "hold-dma-buffer", Buffer::shared(crate::BUF_LEN));
    step!(
        r,
        "hold-dma-map",
        fd.map(ioas, small.addr(), crate::BUF_LEN as u64, IOVA)
    );
    let dev = step!(r, "hold-regions", b.edu());
    step!(
        r,
        "hold-dma",
        roundtrip(&dev, &small, IOVA, 0, 0x10000, 0x91)
    );
    println!("held");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    println!("hold: stdin said {:?}", line.trim());
    let t = Instant::now();
    let after = fd.try_map(ioas, small.addr(), 0x1000, 0x40_0000);
    println!(
        "hold: IOMMU_IOAS_MAP after the daemon stopped: {after:?} after {:.3} s",
        t.elapsed().as_secs_f64()
    );
    step!(
        r,
        "hold-ioctl-fails-after-daemon",
        match after {
            Err(_) => Ok(()),
            Ok(()) => Err("IOMMU_IOAS_MAP succeeded with the daemon stopped".into()),
        }
    );
}
