//! Unmodified QEMU inside the guest, driven over its qtest socket: the guest's edu, passed through
//! uiommufd (`-object iommufd,fd=3 -device vfio-pci,fd=4,...` under `uiommufd launch`), copies
//! bytes from the nested QEMU's RAM into its buffer and back to another guest-physical address.
//!
//! QEMU runs with `-S` (Debian's build has no qtest accelerator; under TCG the paused vCPU never
//! runs the firmware, so nothing else programs the device) and the real edu behind vfio-pci keeps
//! its own clock. The client listens on the qtest socket (QEMU connects to it, as libqtest does), starts the
//! given command with the file descriptors it inherited, and then, through the qtest text
//! protocol: finds edu (1234:11e8) in the nested PCI config space, puts BAR0 at [`BAR0`], enables
//! memory space and bus mastering, `write`s a pattern, programs edu's DMA through BAR0 (polled
//! under a deadline) and `read`s the destination. It prints QEMU's mappings of the device file
//! (`/proc/PID/maps`), stops QEMU with SIGTERM to the launcher and waits for the daemon's VmLck to
//! come back to what it was before QEMU started.

use crate::edu::{EDU_BUF, EDU_BUF_LEN, EDU_ID};
use crate::report::Report;
use crate::sys::{compare, pattern, Res};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where BAR0 goes in the nested machine (q35: free MMIO below the IOAPIC).
const BAR0: u64 = 0xfe00_0000;
/// Guest-physical addresses of the source and destination buffers in the nested RAM.
const SRC: u64 = 0x10_0000;
const DST: u64 = 0x20_0000;
/// One edu transfer takes ~100 ms of the guest's clock.
const DMA_DEADLINE: Duration = Duration::from_secs(10);
const EDU_VENDOR_DEVICE: u32 = 0x11e8_1234;
const PCI_COMMAND_MEMORY: u32 = 1 << 1;
const PCI_COMMAND_MASTER: u32 = 1 << 2;

#[derive(clap::Args)]
pub struct NestedArgs {
    /// The qtest socket this client listens on (QEMU's `-qtest unix:PATH` as QEMU sees it).
    #[arg(long)]
    socket: String,
    /// The daemon's pid (its VmLck must come back after QEMU quits).
    #[arg(long)]
    daemon_pid: u32,
    /// `N=PATH`: PATH opened read-write as the command's fd N (the client keeps no copy, so the
    /// files close when QEMU and the launcher are gone).
    #[arg(long = "fd")]
    fds: Vec<String>,
    /// Report the checks as `LABEL-...` instead of `nested-...`.
    #[arg(long, default_value = "nested")]
    pub label: String,
    /// A file QEMU must have open (as `/proc/PID/fd` names it), besides a kernel device file
    /// (repeatable).
    #[arg(long = "expect-fd")]
    expect_fds: Vec<String>,
    /// QEMU runs without the launcher: its device file is the daemon's node (no kernel device
    /// file, no mmap of BAR0).
    #[arg(long)]
    via_node: bool,
    /// Seconds for QEMU to connect, and for each later wait.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The command that starts QEMU (`uiommufd launch -- ... qemu-system-x86_64 ...`).
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// One qtest connection: a command line out, its `OK ...` answer back.
struct Qtest {
    out: UnixStream,
    input: BufReader<UnixStream>,
}

impl Qtest {
    fn cmd(&mut self, line: &str) -> Res<String> {
        writeln!(self.out, "{line}").map_err(|e| format!("qtest write: {e}"))?;
        loop {
            let mut ans = String::new();
            let n = self
                .input
                .read_line(&mut ans)
                .map_err(|e| format!("qtest read after '{line}': {e}"))?;
            if n == 0 {
                return Err(format!("qtest: QEMU closed the socket after '{line}'"));
            }
            let ans = ans.trim_end();
            // Interrupt notifications come unasked (only with irq_intercept, which is off).
            if ans.starts_with("IRQ ") {
                continue;
            }
            return match ans.strip_prefix("OK") {
                Some(rest) => Ok(rest.trim().to_string()),
                None => Err(format!("qtest '{line}': {ans}")),
            };
        }
    }

    fn value(&mut self, line: &str) -> Res<u64> {
        let v = self.cmd(line)?;
        u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .map_err(|e| format!("qtest '{line}': answer '{v}': {e}"))
    }

    fn cfg_addr(bdf: u32, reg: u32) -> u32 {
        0x8000_0000 | bdf << 8 | reg
    }

    fn cfg_read(&mut self, bdf: u32, reg: u32) -> Res<u32> {
        self.cmd(&format!("outl 0xcf8 {:#x}", Self::cfg_addr(bdf, reg)))?;
        Ok(self.value("inl 0xcfc")? as u32)
    }

    fn cfg_write(&mut self, bdf: u32, reg: u32, v: u32) -> Res<()> {
        self.cmd(&format!("outl 0xcf8 {:#x}", Self::cfg_addr(bdf, reg)))?;
        self.cmd(&format!("outl 0xcfc {v:#x}")).map(drop)
    }

    fn readl(&mut self, addr: u64) -> Res<u32> {
        Ok(self.value(&format!("readl {addr:#x}"))? as u32)
    }

    fn writel(&mut self, addr: u64, v: u32) -> Res<()> {
        self.cmd(&format!("writel {addr:#x} {v:#x}")).map(drop)
    }

    fn memread(&mut self, addr: u64, len: usize) -> Res<Vec<u8>> {
        let hex = self.cmd(&format!("read {addr:#x} {len:#x}"))?;
        let hex = hex.trim_start_matches("0x");
        if hex.len() != 2 * len {
            return Err(format!("memread: {} hex digits for {len} bytes", hex.len()));
        }
        (0..len)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
            .collect()
    }

    fn memwrite(&mut self, addr: u64, data: &[u8]) -> Res<()> {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        self.cmd(&format!("write {addr:#x} {:#x} 0x{hex}", data.len()))
            .map(drop)
    }

    /// One edu transfer through BAR0, polled until the run bit clears.
    fn edu_dma(&mut self, src: u64, dst: u64, to_ram: bool, deadline: Duration) -> Res<Duration> {
        self.writel(BAR0 + 0x80, src as u32)?;
        self.writel(BAR0 + 0x88, dst as u32)?;
        self.writel(BAR0 + 0x90, EDU_BUF_LEN as u32)?;
        let t = Instant::now();
        self.writel(BAR0 + 0x98, if to_ram { 3 } else { 1 })?;
        loop {
            let cmd = self.readl(BAR0 + 0x98)?;
            if cmd & 1 == 0 {
                return Ok(t.elapsed());
            }
            if t.elapsed() > deadline {
                return Err(format!(
                    "edu DMA still running after {deadline:?} (cmd {cmd:#x})"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// VmLck of a process, in bytes.
fn locked(pid: u32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmLck in /proc/{pid}/status"))
}

/// The parent of a process (field 4 of /proc/PID/stat, after the parenthesised comm).
fn ppid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pid of the QEMU process (comm `qemu-system-x86`, truncated by the kernel) that is `root`
/// or descends from it.
fn qemu_pid(root: u32) -> Res<u32> {
    std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu-system"))
                && std::iter::successors(Some(pid), |&p| ppid(p).filter(|&q| q > 1))
                    .any(|p| p == root)
        })
        .ok_or_else(|| format!("no qemu-system process under pid {root}"))
}

/// Accepts QEMU's qtest connection, or fails when QEMU exits first or the deadline passes.
fn accept(l: &UnixListener, child: &mut Child, deadline: Duration) -> Res<UnixStream> {
    let t = Instant::now();
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("QEMU exited ({st}) before connecting to qtest"));
        }
        if t.elapsed() > deadline {
            return Err(format!("QEMU did not connect within {deadline:?}"));
        }
        let mut p = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, 100) };
    }
}

/// Opens each `N=PATH` read-write at fd 100 or above, close-on-exec: the child gets them by dup2
/// only, and no source is a target of another.
fn open_fds(specs: &[String]) -> Res<Vec<(i32, OwnedFd)>> {
    specs
        .iter()
        .map(|s| {
            let (n, path) = s.split_once('=').ok_or(format!("--fd {s}: not N=PATH"))?;
            let n: i32 = n.parse().map_err(|e| format!("--fd {s}: {e}"))?;
            let f = crate::sys::open_rw(path)?;
            let high = rustix::io::fcntl_dupfd_cloexec(&f, 100)
                .map_err(|e| format!("dup of {path}: {e}"))?;
            Ok((n, high))
        })
        .collect()
}

/// Starts the command with each file at its fd number.
fn spawn(cmd: &[String], files: &[(i32, OwnedFd)]) -> Res<Child> {
    use std::os::unix::process::CommandExt;
    let map: Vec<(i32, i32)> = files.iter().map(|(n, f)| (f.as_raw_fd(), *n)).collect();
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    let place_fds = move || {
        for &(from, to) in &map {
            // SAFETY: dup2 on two fd numbers; no memory is passed.
            if unsafe { libc::dup2(from, to) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and calls only dup2, which is
    // async-signal-safe; it allocates nothing. The sources sit at 100 and above (no target is
    // a source), and dup2 clears close-on-exec on the copy.
    unsafe { c.pre_exec(place_fds) };
    c.spawn().map_err(|e| format!("spawn {}: {e}", cmd[0]))
}

/// Waits for the child to exit within the deadline; SIGKILL after it.
fn wait_exit(child: &mut Child, deadline: Duration) -> Res<std::process::ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(st);
        }
        if t.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running {deadline:?} after SIGTERM (killed)"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn nested(r: &mut Report, a: &NestedArgs) {
    let deadline = Duration::from_secs(a.timeout);
    let lck0 = step!(r, "nested-daemon-vmlck-before", locked(a.daemon_pid));
    println!("nested: daemon VmLck before QEMU {} KiB", lck0 / 1024);
    let _ = std::fs::remove_file(&a.socket);
    let l = step!(
        r,
        "nested-qtest-listen",
        UnixListener::bind(&a.socket).map_err(|e| format!("bind {}: {e}", a.socket))
    );
    let files = step!(r, "nested-open-fds", open_fds(&a.fds));
    println!("nested: starting {}", a.cmd.join(" "));
    let t0 = Instant::now();
    let mut child = step!(r, "nested-qemu-start", spawn(&a.cmd, &files));
    drop(files);
    let ran = drive(r, &l, &mut child, deadline, t0, a, lck0);
    // Stop QEMU: SIGTERM to the launcher, which forwards it to its command.
    if child.try_wait().ok().flatten().is_none() {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let st = r.check("nested-qemu-exit", wait_exit(&mut child, deadline));
    println!("nested: QEMU (launcher) exit {st:?}");
    if !ran {
        return;
    }
    // The daemon's pins for QEMU's RAM go when QEMU's files close.
    let t = Instant::now();
    let back = loop {
        match locked(a.daemon_pid) {
            Ok(v) if v <= lck0 => break Ok(v),
            Ok(v) if t.elapsed() > deadline => {
                break Err(format!(
                    "VmLck {} KiB {:?} after QEMU exited, {} KiB before it started",
                    v / 1024,
                    deadline,
                    lck0 / 1024
                ))
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(e),
        }
    };
    if let Some(v) = r.check("nested-daemon-vmlck-back", back) {
        println!(
            "nested: daemon VmLck {} KiB {:.2} s after QEMU exited",
            v / 1024,
            t.elapsed().as_secs_f64()
        );
    }
}

/// Everything while QEMU runs; false if it stopped before the DMA could be tried.
fn drive(
    r: &mut Report,
    l: &UnixListener,
    child: &mut Child,
    deadline: Duration,
    t0: Instant,
    a: &NestedArgs,
    lck0: u64,
) -> bool {
    let daemon = a.daemon_pid;
    let s = match r.check("nested-qtest-connect", accept(l, child, deadline)) {
        Some(s) => s,
        None => return false,
    };
    println!(
        "nested: QEMU connected to qtest {:.2} s after start",
        t0.elapsed().as_secs_f64()
    );
    let input = match s.try_clone() {
        Ok(i) => BufReader::new(i),
        Err(e) => {
            return r
                .check::<()>("nested-qtest-clone", Err(e.to_string()))
                .is_some()
        }
    };
    let _ = s.set_read_timeout(Some(deadline));
    let mut q = Qtest { out: s, input };
    let pid = r.check("nested-qemu-pid", qemu_pid(child.id()));
    dma(r, &mut q);
    // QEMU connects to qtest before it builds the machine; once qtest answers, vfio-pci has
    // bound the device (and the launcher swapped the file).
    if let Some(pid) = pid {
        files(r, pid, &a.expect_fds, !a.via_node);
    }
    if let Some(v) = r.check("nested-daemon-vmlck-with-qemu", locked_grew(daemon, lck0)) {
        println!("nested: daemon VmLck with QEMU {} KiB", v / 1024);
    }
    if let (Some(pid), false) = (pid, a.via_node) {
        maps(r, pid);
    }
    true
}

/// While QEMU runs, the daemon holds its 64 MiB of RAM pinned (type1 charges the daemon). Asked
/// after qtest has answered: QEMU serves qtest only once the machine is built.
fn locked_grew(daemon: u32, lck0: u64) -> Res<u64> {
    let v = locked(daemon)?;
    if v >= lck0 + 64 * crate::sys::MIB as u64 {
        Ok(v)
    } else {
        Err(format!(
            "daemon VmLck {} KiB with QEMU running, {} KiB before: less than QEMU's 64 MiB",
            v / 1024,
            lck0 / 1024
        ))
    }
}

/// QEMU's open files: a kernel device file (not a node of the daemon) if `kernel_device`, and
/// each of `expected`.
fn files(r: &mut Report, pid: u32, expected: &[String], kernel_device: bool) {
    let dir = format!("/proc/{pid}/fd");
    let mut open = Vec::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if let Ok(p) = std::fs::read_link(e.path()) {
            let p = p.to_string_lossy().into_owned();
            if !p.starts_with("anon_inode:[eventfd]") && !p.starts_with("socket:") {
                println!("nested: QEMU fd {} -> {p}", e.file_name().to_string_lossy());
            }
            open.push(p);
        }
    }
    let has = |want: &str| {
        if open.iter().any(|p| p == want) {
            Ok(())
        } else {
            Err(format!("no fd of QEMU is {want}"))
        }
    };
    if kernel_device {
        r.check(
            "nested-qemu-kernel-device-fd",
            has("anon_inode:[vfio-device]"),
        );
    }
    for (i, want) in expected.iter().enumerate() {
        r.check(&format!("nested-qemu-fd-{i}"), has(want));
    }
}

/// QEMU's mappings of the device file (BAR0 mmapped by QEMU's vfio-pci, no FUSE in the way).
fn maps(r: &mut Report, pid: u32) {
    let m = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let vfio: Vec<&str> = m.lines().filter(|l| l.contains("[vfio-device]")).collect();
    for l in &vfio {
        println!("nested: QEMU maps: {l}");
    }
    r.check(
        "nested-qemu-bar0-mmap",
        if vfio.iter().any(|l| l.contains("anon_inode:[vfio-device]")) {
            Ok(())
        } else {
            Err(format!(
                "no anon_inode:[vfio-device] mapping in /proc/{pid}/maps"
            ))
        },
    );
}

/// Scans bus 0 of the nested machine for edu (function 0 of each slot).
fn find_edu(q: &mut Qtest) -> Res<u32> {
    for dev in 0..32u32 {
        if q.cfg_read(dev << 3, 0)? == EDU_VENDOR_DEVICE {
            return Ok(dev << 3);
        }
    }
    Err("no 1234:11e8 on the nested bus 0".into())
}

fn assign_bar0(q: &mut Qtest, bdf: u32) -> Res<()> {
    q.cfg_write(bdf, 0x10, BAR0 as u32)?;
    let v = q.cfg_read(bdf, 0x10)?;
    if v & !0xf == BAR0 as u32 {
        Ok(())
    } else {
        Err(format!("BAR0 reads {v:#x} after writing {BAR0:#x}"))
    }
}

fn enable(q: &mut Qtest, bdf: u32) -> Res<()> {
    let want = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    let c = q.cfg_read(bdf, 4)? & 0xffff;
    q.cfg_write(bdf, 4, c | want)?;
    let c = q.cfg_read(bdf, 4)? & 0xffff;
    if c & want == want {
        Ok(())
    } else {
        Err(format!("command register {c:#x}"))
    }
}

fn bar0_id(q: &mut Qtest) -> Res<()> {
    let id = q.readl(BAR0)?;
    if id == EDU_ID {
        Ok(())
    } else {
        Err(format!("edu ID at BAR0 {id:#x}, expected {EDU_ID:#x}"))
    }
}

fn liveness(q: &mut Qtest) -> Res<()> {
    q.writel(BAR0 + 4, 0x1234_5678)?;
    let v = q.readl(BAR0 + 4)?;
    if v == !0x1234_5678u32 {
        Ok(())
    } else {
        Err(format!("liveness {v:#x}, expected {:#x}", !0x1234_5678u32))
    }
}

fn ram_write(q: &mut Qtest, p: &[u8]) -> Res<()> {
    q.memwrite(SRC, p)?;
    q.memwrite(DST, &[0; EDU_BUF_LEN])?;
    compare("read of the source", &q.memread(SRC, EDU_BUF_LEN)?, p)?;
    compare(
        "read of the cleared destination",
        &q.memread(DST, EDU_BUF_LEN)?,
        &[0; EDU_BUF_LEN],
    )
}

fn dma(r: &mut Report, q: &mut Qtest) {
    let bdf = step!(r, "nested-find-edu", find_edu(q));
    println!("nested: edu at 00:{:02x}.{}", bdf >> 3, bdf & 7);
    step!(r, "nested-bar0-assign", assign_bar0(q, bdf));
    step!(r, "nested-command-enable", enable(q, bdf));
    step!(r, "nested-bar0-id", bar0_id(q));
    step!(r, "nested-bar0-liveness", liveness(q));
    let p = pattern(0x3c, EDU_BUF_LEN);
    step!(r, "nested-ram-write", ram_write(q, &p));
    let t1 = step!(
        r,
        "nested-dma-ram-to-edu",
        q.edu_dma(SRC, EDU_BUF, false, DMA_DEADLINE)
    );
    let t2 = step!(
        r,
        "nested-dma-edu-to-ram",
        q.edu_dma(EDU_BUF, DST, true, DMA_DEADLINE)
    );
    println!(
        "nested: edu DMA {SRC:#x} -> edu -> {DST:#x}: {:.3} s + {:.3} s",
        t1.as_secs_f64(),
        t2.as_secs_f64()
    );
    step!(r, "nested-dma-landed-in-qemu-ram", {
        q.memread(DST, EDU_BUF_LEN)
            .and_then(|got| compare(&format!("nested RAM at {DST:#x}"), &got, &p))
    });
}
