//! IOAS_MAP_FILE and input-sized requests from an unprivileged client through the real FUSE node
//! (issue 11, classes 2, 5 and 6): a truncated file gives an errno and the daemon lives; a regular
//! file is refused as the kernel refuses it; a user cannot make the daemon hold more fds than its
//! cap; 400k allowed ranges are handled in well under a second.
//!
//! The test process (root) starts the daemon and creates an unprivileged user; the client is this
//! same test binary re-run as that user with `CLIENT_ENV` naming a scenario (the `client` test
//! below returns at once when the variable is not set). A client that has to be observed while
//! it holds something prints `HOLDING` and waits for a line on stdin.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{ioas_alloc, ioctl, open_node, DaemonProcess};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;

const CLIENT_ENV: &str = "UIOMMUFD_FILE_MAPS_CLIENT";
const NODE_ENV: &str = "UIOMMUFD_FILE_MAPS_NODE";
const REGULAR_ENV: &str = "UIOMMUFD_FILE_MAPS_REGULAR";
const USER: &str = "uiommufd-t-files";
const PAGE: u64 = 4096;
/// A client still running after this is killed (the test then fails).
const CLIENT_DEADLINE: Duration = Duration::from_secs(180);
/// Inside the mock domain's aperture.
const IOVA: u64 = 0x1000_0000;
/// Must match `FILE_MAPS_PER_CONTEXT` / `FILE_MAPS_PER_USER` in src/iopt/limits.rs.
const FILE_MAPS_PER_CONTEXT: usize = 1024;
const FILE_MAPS_PER_USER: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Client side (runs as the unprivileged user)
// ---------------------------------------------------------------------------------------------

fn memfd(pages: u64) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(c"file-maps", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    nix::unistd::ftruncate(&fd, (pages * PAGE) as i64).unwrap();
    fd
}

fn map_file(f: &File, ioas: u32, fd: i32, start: u64, len: u64, iova: u64) -> Result<(), i32> {
    let mut cmd = iommu_ioas_map_file {
        size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
        flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
        ioas_id: ioas,
        fd,
        start,
        length: len,
        iova,
    };
    ioctl(f, IOMMU_IOAS_MAP_FILE, &mut cmd).map(|_| ())
}

fn mock_domain(f: &File, ioas: u32) -> Result<(), i32> {
    let mut cmd = iommu_test_cmd {
        size: std::mem::size_of::<iommu_test_cmd>() as u32,
        op: IOMMU_TEST_OP_MOCK_DOMAIN,
        id: ioas,
        ..Default::default()
    };
    ioctl(f, IOMMU_TEST_CMD, &mut cmd).map(|_| ())
}

fn allow_iovas(f: &File, ioas: u32, ranges: &[iommu_iova_range]) -> Result<(), i32> {
    let mut cmd = iommu_ioas_allow_iovas {
        size: std::mem::size_of::<iommu_ioas_allow_iovas>() as u32,
        ioas_id: ioas,
        num_iovas: ranges.len() as u32,
        reserved: 0,
        allowed_iovas: ranges.as_ptr() as u64,
    };
    ioctl(f, IOMMU_IOAS_ALLOW_IOVAS, &mut cmd).map(|_| ())
}

fn hold() {
    println!("HOLDING");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn check(what: &str, got: Result<(), i32>, want: Result<(), i32>) {
    assert_eq!(got, want, "{what}");
}

fn scenario(name: &str, f: &File) {
    match name {
        "truncate" => {
            // Mapped with no domain (lazy, as the kernel), then truncated, then pinned by a
            // domain attach: EINVAL, as memfd_pin_folios() past the end of the file.
            let ioas = ioas_alloc(f);
            let m = memfd(4);
            check(
                "map",
                map_file(f, ioas, m.as_raw_fd(), 0, 4 * PAGE, IOVA),
                Ok(()),
            );
            nix::unistd::ftruncate(&m, 0).unwrap();
            check("attach pins", mock_domain(f, ioas), Err(libc::EINVAL));
            // Pinned first, truncated under the pin: a second domain takes the pinned pages
            // (the kernel copies them from the first domain), new pins past the end fail.
            let ioas2 = ioas_alloc(f);
            check("domain", mock_domain(f, ioas2), Ok(()));
            let m2 = memfd(4);
            check(
                "map+pin",
                map_file(f, ioas2, m2.as_raw_fd(), 0, 4 * PAGE, IOVA),
                Ok(()),
            );
            nix::unistd::ftruncate(&m2, PAGE as i64).unwrap();
            check("second domain", mock_domain(f, ioas2), Ok(()));
            // A new map of the truncated part into a domain fails; the remaining page maps.
            check(
                "map past the end",
                map_file(f, ioas2, m2.as_raw_fd(), 0, 2 * PAGE, IOVA + (1 << 20)),
                Err(libc::EINVAL),
            );
            check(
                "map inside",
                map_file(f, ioas2, m2.as_raw_fd(), 0, PAGE, IOVA + (1 << 20)),
                Ok(()),
            );
            // The daemon still serves this client.
            ioas_alloc(f);
        }
        "regular" => {
            // A file on a disk file system, prepared by the root side.
            let path = std::env::var(REGULAR_ENV).expect("regular file path");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let ioas = ioas_alloc(f);
            check("domain", mock_domain(f, ioas), Ok(()));
            check(
                "regular file into a domain",
                map_file(f, ioas, file.as_raw_fd(), 0, 4 * PAGE, IOVA),
                Err(libc::EINVAL),
            );
            // Without a domain the kernel maps lazily and refuses the pin at attach.
            let lazy = ioas_alloc(f);
            check(
                "lazy map",
                map_file(f, lazy, file.as_raw_fd(), 0, 4 * PAGE, IOVA),
                Ok(()),
            );
            check("attach", mock_domain(f, lazy), Err(libc::EINVAL));
            // A read-only fd cannot be mapped writable (the kernel's EPERM).
            let ro = File::open("/proc/self/exe").unwrap();
            check(
                "writable map of a read-only fd",
                map_file(f, lazy, ro.as_raw_fd(), 0, PAGE, IOVA + (1 << 20)),
                Err(libc::EPERM),
            );
            hold();
        }
        "same_memfd" => {
            let ioas = ioas_alloc(f);
            let m = memfd(1);
            for i in 0..300u64 {
                check(
                    "map",
                    map_file(f, ioas, m.as_raw_fd(), 0, PAGE, IOVA + i * PAGE),
                    Ok(()),
                );
            }
            hold();
        }
        "many_memfds" => {
            // One context: ENOMEM at the per-context cap; a fresh context can go on.
            let mut fds = Vec::new();
            let mut contexts = vec![f.try_clone().unwrap()];
            let mut mapped = 0usize;
            let mut per_context = Vec::new();
            'outer: loop {
                let ctx = contexts.last().unwrap();
                let ioas = ioas_alloc(ctx);
                let mut n = 0usize;
                loop {
                    let m = memfd(1);
                    match map_file(ctx, ioas, m.as_raw_fd(), 0, PAGE, IOVA + n as u64 * PAGE) {
                        Ok(()) => {
                            fds.push(m);
                            n += 1;
                            mapped += 1;
                        }
                        Err(libc::ENOMEM) => break,
                        Err(e) => panic!("map {mapped}: errno {e}"),
                    }
                }
                per_context.push(n);
                if n < FILE_MAPS_PER_CONTEXT || contexts.len() > FILE_MAPS_PER_USER {
                    break 'outer;
                }
                contexts.push(open_node(std::path::Path::new(
                    &std::env::var(NODE_ENV).unwrap(),
                )));
            }
            let full = FILE_MAPS_PER_USER / FILE_MAPS_PER_CONTEXT;
            assert_eq!(per_context[..full], vec![FILE_MAPS_PER_CONTEXT; full][..]);
            assert_eq!(per_context.len(), full + 1, "{per_context:?}");
            assert_eq!(per_context[full], 0, "the per-user cap spans contexts");
            assert_eq!(mapped, FILE_MAPS_PER_USER);
            hold();
        }
        "allow_iovas" => {
            let ioas = ioas_alloc(f);
            let n = 400_000u64;
            let ranges: Vec<iommu_iova_range> = (0..n)
                .rev()
                .map(|i| iommu_iova_range {
                    start: 0x1000_0000 + i * 0x2000,
                    last: 0x1000_0000 + i * 0x2000 + 0xfff,
                })
                .collect();
            // Its cost is benches/iopt.rs's (IOPT_BENCH=allow_iovas), not a timed test's.
            check("400k ranges", allow_iovas(f, ioas, &ranges), Ok(()));
            // An overlap at the very end is still found, in order, as EINVAL.
            let mut bad = ranges.clone();
            bad.push(iommu_iova_range {
                start: 0x1000_0000 + 0x800,
                last: 0x1000_0000 + 0x900,
            });
            check("overlap", allow_iovas(f, ioas, &bad), Err(libc::EINVAL));
            // An earlier invalid entry wins over a later unreadable one (one entry at a time,
            // like the kernel).
            let mut early = vec![iommu_iova_range { start: 5, last: 5 }];
            early.extend_from_slice(&ranges[..10]);
            let mut cmd = iommu_ioas_allow_iovas {
                size: std::mem::size_of::<iommu_ioas_allow_iovas>() as u32,
                ioas_id: ioas,
                num_iovas: 1 << 20,
                reserved: 0,
                allowed_iovas: early.as_ptr() as u64,
            };
            let r = ioctl(f, IOMMU_IOAS_ALLOW_IOVAS, &mut cmd).map(|_| ());
            check("invalid before a fault", r, Err(libc::EINVAL));
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn client() {
    let Ok(name) = std::env::var(CLIENT_ENV) else {
        return;
    };
    let node = std::env::var(NODE_ENV).expect("node path");
    let f = open_node(std::path::Path::new(&node));
    scenario(&name, &f);
}

// ---------------------------------------------------------------------------------------------
// Root side
// ---------------------------------------------------------------------------------------------

/// The test user's (uid, gid), created if missing. None (test skipped) without root, except under
/// CI where a missing prerequisite fails.
fn test_user() -> Option<(u32, u32)> {
    if !support::require(
        "root, to create the test user",
        support::users::can_switch_users(),
    ) {
        return None;
    }
    let u = support::users::test_user(USER).unwrap_or_else(|| panic!("test user {USER}"));
    Some((u.uid, u.gid))
}

struct Client {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Client {
    fn spawn(d: &DaemonProcess, user: (u32, u32), name: &str) -> Self {
        Self::spawn_with(d, user, name, &[])
    }

    fn spawn_with(d: &DaemonProcess, user: (u32, u32), name: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .envs(env.iter().copied())
            .env(CLIENT_ENV, name)
            .env(NODE_ENV, d.node("iommu"))
            .uid(user.0)
            .gid(user.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let out = BufReader::new(child.stdout.take().unwrap());
        // A client that hangs (the daemon not answering) is killed, so the test fails instead.
        // Through a pidfd: it names this very process, even once it was reaped and its number
        // went to someone else (the signal then fails with ESRCH).
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd of the client");
        std::thread::spawn(move || {
            let mut pfd = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&pidfd),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = i32::try_from(CLIENT_DEADLINE.as_millis()).unwrap_or(i32::MAX);
            let timeout =
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX);
            // Readable once the client exited; otherwise the deadline passed.
            if nix::poll::poll(&mut pfd, timeout) == Ok(0) {
                let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            }
        });
        Self { child, out }
    }

    /// Waits for `HOLDING` (the client keeps what it made until [`Self::finish`]).
    fn wait_holding(&mut self) {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n != 0, "client ended before holding");
            if line.trim_end().ends_with("HOLDING") {
                return;
            }
            print!("client: {line}");
        }
    }

    fn finish(mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        print!("{rest}");
        let st = self.child.wait().unwrap();
        assert!(st.success(), "client failed: {st}");
    }
}

/// Files the daemon holds for one client process it maps memory of (`caller::ProcessHandle`:
/// mem, pagemap, maps, its /proc directory and a pidfd), shared by all of that process's maps.
const PROCESS_IDENTITY_FDS: usize = 5;

fn daemon_fds(d: &DaemonProcess) -> usize {
    support::fds_without_transport(d.child.id() as i32)
}

fn start_daemon() -> DaemonProcess {
    // Other users may open the node (the default is the kernel's 0660 root:root).
    DaemonProcess::start(&["--iommu-perm", "0666"])
}

/// The daemon is alive and serves a new client.
fn assert_serving(d: &mut DaemonProcess) {
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
    let f = d.open_iommu();
    ioas_alloc(&f);
}

fn truncated_memfd_gives_an_errno_and_the_daemon_lives() {
    let Some(user) = test_user() else { return };
    let mut d = start_daemon();
    Client::spawn(&d, user, "truncate").finish();
    assert_serving(&mut d);
}

fn regular_file_is_refused_and_not_held() {
    let Some(user) = test_user() else { return };
    let mut d = start_daemon();
    let before = daemon_fds(&d);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("regular-{}", std::process::id()));
    std::fs::write(&path, vec![7u8; 4 * PAGE as usize]).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let mut c = Client::spawn_with(
        &d,
        user,
        "regular",
        &[(REGULAR_ENV, path.to_str().unwrap())],
    );
    c.wait_holding();
    // The regular file is not kept open by the daemon (slack: the client's open, and the
    // client process's identity, which any map of it makes the daemon hold).
    let during = daemon_fds(&d);
    assert!(
        during <= before + 1 + PROCESS_IDENTITY_FDS,
        "fds {before} -> {during}"
    );
    c.finish();
    let _ = std::fs::remove_file(&path);
    assert_serving(&mut d);
}

fn one_daemon_fd_for_many_maps_of_one_file() {
    let Some(user) = test_user() else { return };
    let mut d = start_daemon();
    let before = daemon_fds(&d);
    let mut c = Client::spawn(&d, user, "same_memfd");
    c.wait_holding();
    let during = daemon_fds(&d);
    assert!(
        during <= before + 2 + PROCESS_IDENTITY_FDS,
        "300 maps of one memfd: fds {before} -> {during}"
    );
    c.finish();
    assert_serving(&mut d);
}

fn a_user_cannot_make_the_daemon_hold_more_fds_than_its_cap() {
    let Some(user) = test_user() else { return };
    let mut d = start_daemon();
    let before = daemon_fds(&d);
    let mut c = Client::spawn(&d, user, "many_memfds");
    c.wait_holding();
    let during = daemon_fds(&d);
    assert!(
        during <= before + FILE_MAPS_PER_USER + 8,
        "fds {before} -> {during}"
    );
    assert!(
        during >= before + FILE_MAPS_PER_USER,
        "the maps hold their files"
    );
    // Another user (root here) is not affected.
    let f = d.open_iommu();
    let ioas = ioas_alloc(&f);
    let m = memfd(1);
    map_file(&f, ioas, m.as_raw_fd(), 0, PAGE, IOVA).expect("another user maps");
    c.finish();
    assert_serving(&mut d);
    // Everything went back when the client closed.
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon_fds(&d) > before + 2 {
        assert!(
            Instant::now() < deadline,
            "fds not released: {}",
            daemon_fds(&d)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn allow_iovas_400k_ranges() {
    let Some(user) = test_user() else { return };
    let mut d = start_daemon();
    Client::spawn(&d, user, "allow_iovas").finish();
    assert_serving(&mut d);
}

fn main() {
    if std::env::var(CLIENT_ENV).is_ok() {
        client();
        return;
    }
    support::runner::run(&[
        (
            "truncated_memfd_gives_an_errno_and_the_daemon_lives",
            truncated_memfd_gives_an_errno_and_the_daemon_lives,
        ),
        (
            "regular_file_is_refused_and_not_held",
            regular_file_is_refused_and_not_held,
        ),
        (
            "one_daemon_fd_for_many_maps_of_one_file",
            one_daemon_fd_for_many_maps_of_one_file,
        ),
        (
            "a_user_cannot_make_the_daemon_hold_more_fds_than_its_cap",
            a_user_cannot_make_the_daemon_hold_more_fds_than_its_cap,
        ),
        ("allow_iovas_400k_ranges", allow_iovas_400k_ranges),
    ]);
}
