//! Issue 11, classes 1, 4 and 8, through the real FUSE node from unprivileged clients: an area
//! reaches the memory of the process that mapped it and nobody else's (pid reuse, exec of a
//! setuid-root program), RLIMIT_MEMLOCK holds for an unprivileged user also inside a user
//! namespace, and a thread with its own fd table maps its own file.
//!
//! The tests run as root (they create users and force pid numbers); clients are this binary
//! re-executed as an unprivileged user with `UIOMMUFD_IDENTITY_ROLE` set.

mod support;

use support::access_rw;

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use support::{ioas_alloc, ioas_map_fixed, ioctl, open_node, test_cmd, DaemonProcess, TempDir};
use uiommufd::dispatch::private_abi::*;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;

const ROLE_ENV: &str = "UIOMMUFD_IDENTITY_ROLE";
const MNT_ENV: &str = "UIOMMUFD_IDENTITY_MNT";
const ARG_ENV: &str = "UIOMMUFD_IDENTITY_ARG";
const PAGE: u64 = 4096;
/// Inside the mock domain's aperture [16 MiB, 2 GiB).
const IOVA: u64 = 32 << 20;
/// Where both the mapping client and its successor put their buffer.
const FIXED: u64 = 0x3a00_0000_0000;
const BUF_PAGES: u64 = 2;
const MINE: u8 = 0xc1;
const SECRET: u8 = 0x5e;
const SCRIBBLE: u8 = 0xee;

// ---------------------------------------------------------------------------------------------
// Harness: users, roles, lines
// ---------------------------------------------------------------------------------------------

/// Whether this run may do what the tests need (root to create users and force pid numbers,
/// setpriv); under `CI=true` a missing prerequisite fails instead of skipping.
fn prerequisites() -> bool {
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    support::require("root", support::users::can_switch_users())
        && support::require("setpriv", setpriv)
}

/// (uid, gid) of test user `name`, created if missing.
fn user(name: &str) -> (u32, u32) {
    let u = support::users::test_user(name).unwrap_or_else(|| panic!("test user {name}"));
    (u.uid, u.gid)
}

/// This binary in `role` as user `who` (through `setpriv`, optionally `unshare -U -r` too).
fn role_cmd(who: (u32, u32), userns: bool, role: &str, mnt: &Path, arg: &str) -> Command {
    role_cmd_exe(
        who,
        userns,
        role,
        mnt,
        arg,
        &std::env::current_exe().unwrap(),
    )
}

fn role_cmd_exe(
    who: (u32, u32),
    userns: bool,
    role: &str,
    mnt: &Path,
    arg: &str,
    exe: &Path,
) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .args(["--clear-groups", "--inh-caps=-all"]);
    if userns {
        c.args(["unshare", "-U", "-r"]);
    }
    c.arg(exe)
        .env(ROLE_ENV, role)
        .env(MNT_ENV, mnt)
        .env(ARG_ENV, arg)
        .env("RUST_BACKTRACE", "1");
    c
}

/// A role process whose stdout lines are read with a deadline.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Lines read but not asked for yet (several processes may share the pipe).
    backlog: Vec<String>,
}

impl Client {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn role");
        let stdin = child.stdin.take();
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            backlog: Vec::new(),
        }
    }

    /// The first line starting with `tag ` (other lines — test harness noise, or lines of
    /// another tag — wait in the backlog).
    fn expect(&mut self, tag: &str) -> String {
        let prefix = format!("{tag} ");
        if let Some(i) = self.backlog.iter().position(|l| l.starts_with(&prefix)) {
            return self.backlog.remove(i)[prefix.len()..].to_string();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(&prefix) {
                        return rest.to_string();
                    }
                    self.backlog.push(l);
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let st = self.child.wait();
                    panic!("no `{tag}` line from the client (status {st:?})");
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin");
        writeln!(s, "{line}").unwrap();
        s.flush().unwrap();
    }

    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("client did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn read_stdin_line() -> String {
    let mut l = String::new();
    std::io::stdin().read_line(&mut l).unwrap();
    l.trim().to_string()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Client-side helpers
// ---------------------------------------------------------------------------------------------

/// An anonymous buffer at exactly `FIXED`, filled with `byte`; None if the address is taken.
/// Allocates nothing and takes no locks, so a forked child may call it.
fn try_fixed_buffer(byte: u8) -> Option<*mut u8> {
    let len = (BUF_PAGES * PAGE) as usize;
    // SAFETY: an anonymous mapping at an address nothing of ours uses (NOREPLACE refuses to
    // clobber); the result is checked.
    let p = unsafe {
        libc::mmap(
            FIXED as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p as u64 != FIXED {
        return None;
    }
    // SAFETY: the mapping is `len` bytes long and writable.
    unsafe { std::ptr::write_bytes(p.cast::<u8>(), byte, len) };
    Some(p.cast())
}

/// [`try_fixed_buffer`] that must succeed.
fn fixed_buffer(byte: u8) -> *mut u8 {
    try_fixed_buffer(byte).expect("mmap at the fixed address")
}

/// Whether every byte of the fixed buffer is still `byte`.
fn fixed_buffer_holds(byte: u8) -> bool {
    let len = (BUF_PAGES * PAGE) as usize;
    // SAFETY: the fixed buffer is mapped by this process; read volatile-ly because the daemon
    // could have written it from outside.
    (0..len)
        .all(|i| unsafe { std::ptr::read_volatile((FIXED as *const u8).wrapping_add(i)) } == byte)
}

/// A second open of the node bound as a selftest access on `ioas` (what `uiommufd launch` does).
fn access(mnt: &Path, f: &File, ioas: u32) -> File {
    let h = open_node(&mnt.join("iommu"));
    let mut req = uiommufd_handle_bind {
        size: std::mem::size_of::<uiommufd_handle_bind>() as u32,
        kind: UIOMMUFD_HANDLE_TEST_ACCESS,
        iommufd: f.as_raw_fd(),
        arg0: ioas,
        arg1: 0,
        ..Default::default()
    };
    ioctl(&h, UIOMMUFD_HANDLE_BIND, &mut req).expect("bind access");
    h
}

fn mock_domain(f: &File, ioas: u32) -> Result<(), i32> {
    test_cmd(
        f,
        IOMMU_TEST_OP_MOCK_DOMAIN,
        ioas,
        &iommu_test_cmd_mock_domain::default(),
    )
    .map(|_| ())
}

fn show(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("errno{e}"),
    }
}

/// The dmacopy device bound to `f` and attached to `ioas`, bus master on: its DMA reaches
/// areas through the same page sources as everything else.
fn dmacopy(mnt: &Path, f: &File, ioas: u32) -> File {
    use uiommufd_uapi::vfio::*;
    let dev = open_node(&mnt.join("vfio/devices/dmacopy0"));
    let mut b = vfio_device_bind_iommufd {
        argsz: std::mem::size_of::<vfio_device_bind_iommufd>() as u32,
        iommufd: f.as_raw_fd(),
        ..Default::default()
    };
    ioctl(&dev, VFIO_DEVICE_BIND_IOMMUFD, &mut b).expect("BIND");
    let mut a = vfio_device_attach_iommufd_pt {
        argsz: std::mem::size_of::<vfio_device_attach_iommufd_pt>() as u32,
        pt_id: ioas,
        ..Default::default()
    };
    ioctl(&dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a).expect("ATTACH");
    // I/O space + bus master in the command register.
    dev.write_all_at(&5u32.to_le_bytes(), (7 << 40) + 4)
        .unwrap();
    dev
}

/// One dmacopy copy of `len` bytes; the status register afterwards.
fn dma(dev: &File, src: u64, dst: u64, len: u32) -> u32 {
    let wr = |off: u64, v: u32| dev.write_all_at(&v.to_le_bytes(), off).unwrap();
    wr(0x04, 0xffff_ffff);
    wr(0x08, src as u32);
    wr(0x0c, (src >> 32) as u32);
    wr(0x10, dst as u32);
    wr(0x14, (dst >> 32) as u32);
    wr(0x18, len);
    wr(0x1c, 1);
    let mut b = [0u8; 4];
    dev.read_exact_at(&mut b, 0x04).unwrap();
    u32::from_le_bytes(b)
}

/// Where the holder maps a buffer of its own (alive throughout).
const OWN_IOVA: u64 = IOVA + (1 << 20);
const DMA_STATUS_ERROR: u32 = 2;

/// DMA between the area of the gone/exec'd mapper and the holder's own buffer, both ways:
/// reports the status bits and whether the holder's buffer received the mapper's successor's
/// bytes.
fn probe_dma(dev: &File, own: &support::AnonPages) -> String {
    let from = dma(dev, IOVA, OWN_IOVA, 64);
    let leaked = own.bytes()[..64].contains(&SECRET);
    let to = dma(dev, OWN_IOVA, IOVA, 64);
    format!(
        "dma_from={} dma_to={} leaked={leaked}",
        from & DMA_STATUS_ERROR != 0,
        to & DMA_STATUS_ERROR != 0
    )
}

/// Tries the three ways an area is reached later (read, write, a domain's pin) and reports them
/// as one `result` line; a read that succeeds reports the first byte it saw.
/// `unpinned` is a second IOAS with the same area and no domain: attaching a domain to it must
/// pin the area afresh (the first IOAS's pins were taken while the mapper lived).
fn probe_area(f: &File, acc: &File, unpinned: u32, dev: &File, own: &support::AnonPages) {
    // The device first: a failed domain attach below must not change what it sees.
    let dma = probe_dma(dev, own);
    let mut got = vec![0u8; 64];
    let read = match access_rw(f, acc, IOVA, &mut got, false) {
        Ok(()) => format!("read-ok-{:02x}", got[0]),
        Err(e) => format!("errno{e}"),
    };
    let mut scribble = vec![SCRIBBLE; 64];
    let write = show(access_rw(f, acc, IOVA, &mut scribble, true));
    let domain = show(mock_domain(f, unpinned));
    say(&format!(
        "result read={read} write={write} domain={domain} {dma}"
    ));
}

// ---------------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------------

/// Entry point of the client roles (`main` calls it when the role variable is set).
fn role_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let mnt = PathBuf::from(std::env::var(MNT_ENV).unwrap_or_default());
    let arg = std::env::var(ARG_ENV).unwrap_or_default();
    match role.as_str() {
        "reuse_holder" => reuse_holder(&mnt),
        "victim" => victim(),
        "exec_holder" => exec_holder(&mnt, &arg),
        "memlock" => memlock(&mnt),
        "thread_fd" => thread_fd(&mnt),
        "leader_exit" => leader_exit(&mnt),
        other => panic!("unknown role {other}"),
    }
}

/// What a holder role sets up before a child maps the fixed buffer: an iommufd with a selftest
/// access and a bound dmacopy device on its IOAS, its own mapped page, a second (unpinned) IOAS,
/// and the two IOAS_MAP commands the child will issue.
struct Holder {
    f: File,
    ioas2: u32,
    acc: File,
    dev: File,
    own: support::AnonPages,
    map: iommu_ioas_map,
    map2: iommu_ioas_map,
}

impl Holder {
    fn new(mnt: &Path) -> Self {
        let f = open_node(&mnt.join("iommu"));
        let ioas = ioas_alloc(&f);
        let acc = access(mnt, &f, ioas);
        let dev = dmacopy(mnt, &f, ioas);
        let own = support::AnonPages::new(1);
        own.fill(0, &[0x11; PAGE as usize]);
        ioas_map_fixed(&f, ioas, own.addr(), PAGE, OWN_IOVA).expect("map own buffer");
        let ioas2 = ioas_alloc(&f);
        let map_in = |ioas_id| iommu_ioas_map {
            size: std::mem::size_of::<iommu_ioas_map>() as u32,
            flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id,
            user_va: FIXED,
            length: BUF_PAGES * PAGE,
            iova: IOVA,
            ..Default::default()
        };
        Self {
            map: map_in(ioas),
            map2: map_in(ioas2),
            f,
            ioas2,
            acc,
            dev,
            own,
        }
    }
}

/// In a forked child of a holder: maps the fixed buffer (filled with MINE) and issues `map` and
/// `map2` on the iommufd `fd`. Allocates nothing and takes no locks (fork-safe). 0 on success,
/// 2 when the buffer cannot be placed, 3 when a map fails.
fn child_maps_fixed(fd: i32, mut map: iommu_ioas_map, mut map2: iommu_ioas_map) -> i32 {
    if try_fixed_buffer(MINE).is_none() {
        return 2;
    }
    for m in [&mut map, &mut map2] {
        // SAFETY: the ioctl reads and writes this struct only.
        if unsafe { libc::ioctl(fd, IOMMU_IOAS_MAP as libc::c_ulong, m as *mut _) } != 0 {
            return 3;
        }
    }
    0
}

/// Holds an iommufd whose area was mapped by a child that is gone; probes it on "go".
fn reuse_holder(mnt: &Path) {
    let Holder {
        f,
        ioas2,
        acc,
        dev,
        own,
        map,
        map2,
    } = Holder::new(mnt);
    let fd = f.as_raw_fd();
    // SAFETY: fork; the child only maps memory, issues one ioctl on a struct prepared before the
    // fork and leaves with _exit — no allocation, no locks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: leaving the forked child.
        unsafe { libc::_exit(child_maps_fixed(fd, map, map2)) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "mapping child failed: {status:#x}"
    );
    // While the mapper lived its memory was reachable; now its pid is free.
    say(&format!("gone {pid}"));
    assert_eq!(read_stdin_line(), "go");
    probe_area(&f, &acc, ioas2, &dev, &own);
    assert_eq!(read_stdin_line(), "done");
}

/// Another user's (or a setuid program's) process with a secret at the mapper's address.
fn victim() {
    let _buf = fixed_buffer(SECRET);
    let (pid, euid) = (std::process::id(), nix::unistd::geteuid().as_raw());
    say(&format!("victim-ready {pid} {euid}"));
    let _ = read_stdin_line();
    say(&format!(
        "victim-check {}",
        if fixed_buffer_holds(SECRET) {
            "intact"
        } else {
            "touched"
        }
    ));
}

/// Maps through a child that then execs the setuid-root copy `exe` of this binary (as
/// `victim`); probes the area on "go".
fn exec_holder(mnt: &Path, exe: &str) {
    let Holder {
        f,
        ioas2,
        acc,
        dev,
        own,
        map,
        map2,
    } = Holder::new(mnt);
    let fd = f.as_raw_fd();
    // The victim reads its "check" order from a pipe only this holder writes.
    let mut fds = [0i32; 2];
    // SAFETY: pipe() fills the two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: `fds[1]` is a fresh descriptor owned by nothing else.
    let mut order = unsafe { File::from_raw_fd(fds[1]) };
    let path = CString::new(exe).unwrap();
    let argv_s: Vec<CString> = [
        exe,
        "role_entry",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]
    .iter()
    .map(|s| CString::new(*s).unwrap())
    .collect();
    let mut argv: Vec<*const libc::c_char> = argv_s.iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env_s: Vec<CString> = [format!("{ROLE_ENV}=victim"), "PATH=/usr/bin:/bin".into()]
        .iter()
        .map(|s| CString::new(s.as_str()).unwrap())
        .collect();
    let mut envp: Vec<*const libc::c_char> = env_s.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: fork; the child maps memory, issues one ioctl, rearranges fds and execs with
    // everything prepared before the fork — no allocation, no locks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let rc = child_maps_fixed(fd, map, map2);
        if rc != 0 {
            // SAFETY: leaves the child at once.
            unsafe { libc::_exit(rc) };
        }
        // SAFETY: dup2 on two fd numbers of this child.
        unsafe { libc::dup2(fds[0], 0) };
        // SAFETY: exec with pointers to NUL-terminated strings and NULL-ended arrays prepared
        // before the fork, alive until exec.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        // SAFETY: leaves the child when exec failed.
        unsafe { libc::_exit(4) };
    }
    // SAFETY: the read end belongs to the child now.
    unsafe { libc::close(fds[0]) };
    say(&format!("mapper {pid}"));
    assert_eq!(read_stdin_line(), "go");
    probe_area(&f, &acc, ioas2, &dev, &own);
    writeln!(order, "check").unwrap();
    drop(order);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(read_stdin_line(), "done");
}

/// Under an 8 MiB RLIMIT_MEMLOCK: with a domain attached, 8 MiB pin, the 9th MiB does not.
fn memlock(mnt: &Path) {
    let limit = libc::rlimit {
        rlim_cur: 8 << 20,
        rlim_max: 8 << 20,
    };
    // SAFETY: lowering our own limit; setrlimit reads the struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) }, 0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let f = open_node(&mnt.join("iommu"));
    let ioas = ioas_alloc(&f);
    mock_domain(&f, ioas).expect("mock domain");
    let len = 9usize << 20;
    let buf = support::AnonPages::new(len / PAGE as usize);
    buf.fill(0, &vec![1u8; len]);
    let first = ioas_map_fixed(&f, ioas, buf.addr(), 8 << 20, IOVA);
    let ninth = ioas_map_fixed(&f, ioas, buf.addr() + (8 << 20), 1 << 20, IOVA + (8 << 20));
    say(&format!(
        "memlock euid={euid} ipc_lock={} first={} ninth={}",
        cap_eff >> 14 & 1,
        show(first),
        show(ninth)
    ));
}

/// A thread with its own fd table (unshare(CLONE_FILES)) maps "its" fd number, which names a
/// different file in the rest of the process.
fn thread_fd(mnt: &Path) {
    let f = open_node(&mnt.join("iommu"));
    let ioas = ioas_alloc(&f);
    let acc = access(mnt, &f, ioas);
    let memfd = |text: &[u8]| -> OwnedFd {
        let fd = rustix::fs::memfd_create("identity", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let file = File::from(fd);
        file.set_len(PAGE).unwrap();
        file.write_all_at(text, 0).unwrap();
        file.into()
    };
    let (to_main, from_thread) = std::sync::mpsc::channel::<i32>();
    let (to_thread, from_main) = std::sync::mpsc::channel::<()>();
    let raw = f.as_raw_fd();
    let t = std::thread::spawn(move || {
        // SAFETY: gives this thread a private copy of the fd table; nothing else changes.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_FILES) }, 0);
        let mine = memfd(b"thread-own-file!");
        to_main.send(mine.as_raw_fd()).unwrap();
        from_main.recv().unwrap();
        let mut cmd = iommu_ioas_map_file {
            size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
            flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id: ioas,
            fd: mine.as_raw_fd(),
            start: 0,
            length: PAGE,
            iova: IOVA,
        };
        // SAFETY: the iommufd `raw` is shared with this thread's table copy; the struct is live.
        let rc = unsafe { libc::ioctl(raw, IOMMU_IOAS_MAP_FILE as libc::c_ulong, &mut cmd) };
        let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        drop(mine);
        if rc == 0 {
            Ok(())
        } else {
            Err(err)
        }
    });
    let n = from_thread.recv().unwrap();
    // The same number in the rest of the process names another file.
    let other = memfd(b"leader-the-other");
    let _alias = (other.as_raw_fd() != n).then(|| {
        // SAFETY: dup2 onto a number this table does not use for anything of ours (the thread's
        // copy holds its own file there); the new descriptor is owned by `_alias` alone.
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), n) }, n);
        // SAFETY: `n` was just made a duplicate owned by nothing else.
        unsafe { OwnedFd::from_raw_fd(n) }
    });
    to_thread.send(()).unwrap();
    let mapped = t.join().unwrap();
    let mut got = vec![0u8; 16];
    let read = mapped.and_then(|()| access_rw(&f, &acc, IOVA, &mut got, false));
    say(&format!(
        "thread map={} content={}",
        show(read),
        String::from_utf8_lossy(&got).replace(|c: char| !c.is_ascii_graphic(), ".")
    ));
}

/// After its group leader has exited (it stays a zombie while other threads live), a thread
/// still maps memory and its own fds, as with the kernel.
fn leader_exit(mnt: &Path) {
    let f = open_node(&mnt.join("iommu"));
    let ioas = ioas_alloc(&f);
    let acc = access(mnt, &f, ioas);
    let file =
        File::from(rustix::fs::memfd_create("identity", rustix::fs::MemfdFlags::CLOEXEC).unwrap());
    file.set_len(PAGE).unwrap();
    file.write_all_at(b"still-mapped-ok!", 0).unwrap();
    // SAFETY: fork from this single-threaded role process (--test-threads=1: libtest's main
    // thread only waits); the child becomes its own thread-group leader.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: getpid has no preconditions.
        let leader = unsafe { libc::getpid() };
        std::thread::spawn(move || {
            // Wait until the leader is a zombie.
            let stat = format!("/proc/self/task/{leader}/stat");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z ")) {
                assert!(Instant::now() < deadline, "the leader did not exit");
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut cmd = iommu_ioas_map_file {
                size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
                flags: IOMMU_IOAS_MAP_READABLE
                    | IOMMU_IOAS_MAP_WRITEABLE
                    | IOMMU_IOAS_MAP_FIXED_IOVA,
                ioas_id: ioas,
                fd: file.as_raw_fd(),
                start: 0,
                length: PAGE,
                iova: IOVA,
            };
            let map_file = ioctl(&f, IOMMU_IOAS_MAP_FILE, &mut cmd).map(|_| ());
            let mut got = vec![0u8; 16];
            let read = map_file.and_then(|()| access_rw(&f, &acc, IOVA, &mut got, false));
            let buf = support::AnonPages::new(1);
            let map = ioas_map_fixed(&f, ioas, buf.addr(), PAGE, IOVA + PAGE);
            say(&format!(
                "leader-exit map_file={} content={} map={}",
                show(read),
                String::from_utf8_lossy(&got).replace(|c: char| !c.is_ascii_graphic(), "."),
                show(map)
            ));
            // SAFETY: ends the whole (forked) process.
            unsafe { libc::_exit(0) };
        });
        // SAFETY: SYS_exit ends only the calling thread (the leader), without unwinding.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        unreachable!();
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

// ---------------------------------------------------------------------------------------------
// The tests (as root: they make the users and drive the clients)
// ---------------------------------------------------------------------------------------------

/// A daemon with the dmacopy device, its nodes open to the test users.
const DMA_DAEMON: [&str; 6] = [
    "--iommu-perm",
    "0666",
    "--device",
    "dmacopy",
    "--device-perm",
    "0666",
];

fn expect_refused(result: &str) {
    assert!(
        result.starts_with("read=errno14 write=errno14 domain=errno")
            && result.ends_with(" dma_from=true dma_to=true leaked=false"),
        "the area must be unreachable: {result}"
    );
}

fn pid_reuse_does_not_reach_the_new_owner() {
    if !prerequisites() {
        return;
    }
    let a = user("uiommufd-t1");
    let b = user("uiommufd-t2");
    let d = DaemonProcess::start(&DMA_DAEMON);
    let mut holder = Client::spawn(role_cmd(a, false, "reuse_holder", &d.mount, ""));
    let gone: i32 = holder.expect("gone").parse().unwrap();
    // Hand the number to another user's process: pid allocation is global, so retry until the
    // victim gets it (other processes on the machine may take it first).
    let mut victim = None;
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", gone - 1)).unwrap();
        let mut v = Client::spawn(role_cmd(b, false, "victim", &d.mount, ""));
        if v.child.id() as i32 == gone {
            victim = Some(v);
            break;
        }
        let _ = v.child.kill();
        let _ = v.finish();
    }
    let mut victim = victim.expect("could not hand the freed pid to the victim");
    let ready = victim.expect("victim-ready");
    assert!(ready.starts_with(&format!("{gone} ")), "{ready}");
    holder.say("go");
    let result = holder.expect("result");
    victim.say("check");
    assert_eq!(victim.expect("victim-check"), "intact");
    expect_refused(&result);
    holder.say("done");
    assert!(holder.finish().success());
    assert!(victim.finish().success());
}

fn exec_of_a_setuid_program_cuts_the_area_off() {
    if !prerequisites() {
        return;
    }
    let a = user("uiommufd-t1");
    // A setuid-root copy of this binary (the victim role), where user a can run it.
    let dir = TempDir::new("setuid");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.0.join("victim");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::os::unix::fs::chown(&exe, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let d = DaemonProcess::start(&DMA_DAEMON);
    let mut holder = Client::spawn(role_cmd(
        a,
        false,
        "exec_holder",
        &d.mount,
        exe.to_str().unwrap(),
    ));
    let mapper: i32 = holder.expect("mapper").parse().unwrap();
    let ready = holder.expect("victim-ready");
    assert_eq!(
        ready,
        format!("{mapper} 0"),
        "the mapper became the setuid-root victim"
    );
    holder.say("go");
    let result = holder.expect("result");
    assert_eq!(holder.expect("victim-check"), "intact");
    expect_refused(&result);
    holder.say("done");
    assert!(holder.finish().success());
}

fn memlock_limit_holds_also_in_a_user_namespace() {
    if !prerequisites() {
        return;
    }
    let a = user("uiommufd-t1");
    for userns in [false, true] {
        let d = DaemonProcess::start(&["--iommu-perm", "0666"]);
        let mut c = Client::spawn(role_cmd(a, userns, "memlock", &d.mount, ""));
        let got = c.expect("memlock");
        if userns {
            assert!(
                got.starts_with("euid=0 ipc_lock=1 "),
                "the client must look privileged in its namespace: {got}"
            );
        }
        assert!(
            got.ends_with("first=ok ninth=errno12"),
            "userns={userns}: {got}"
        );
        assert!(c.finish().success());
        let s = d.wait_idle();
        assert_eq!(s["pinned_pages"], 0, "{s}");
    }
}

fn a_thread_maps_from_its_own_fd_table() {
    if !prerequisites() {
        return;
    }
    let a = user("uiommufd-t1");
    let d = DaemonProcess::start(&["--iommu-perm", "0666"]);
    let mut c = Client::spawn(role_cmd(a, false, "thread_fd", &d.mount, ""));
    assert_eq!(c.expect("thread"), "map=ok content=thread-own-file!");
    assert!(c.finish().success());
}

fn a_thread_outlives_its_group_leader() {
    if !prerequisites() {
        return;
    }
    let a = user("uiommufd-t1");
    let d = DaemonProcess::start(&["--iommu-perm", "0666"]);
    let mut c = Client::spawn(role_cmd(a, false, "leader_exit", &d.mount, ""));
    assert_eq!(
        c.expect("leader-exit"),
        "map_file=ok content=still-mapped-ok! map=ok"
    );
    assert!(c.finish().success());
}

fn main() {
    if std::env::var(ROLE_ENV).is_ok() {
        role_entry();
        return;
    }
    support::runner::run(&[
        (
            "pid_reuse_does_not_reach_the_new_owner",
            pid_reuse_does_not_reach_the_new_owner,
        ),
        (
            "exec_of_a_setuid_program_cuts_the_area_off",
            exec_of_a_setuid_program_cuts_the_area_off,
        ),
        (
            "memlock_limit_holds_also_in_a_user_namespace",
            memlock_limit_holds_also_in_a_user_namespace,
        ),
        (
            "a_thread_maps_from_its_own_fd_table",
            a_thread_maps_from_its_own_fd_table,
        ),
        (
            "a_thread_outlives_its_group_leader",
            a_thread_outlives_its_group_leader,
        ),
    ]);
}
