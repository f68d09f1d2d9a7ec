//! `uiommufd launch`: real processes under the seccomp supervisor.
//!
//! The probes re-execute this test binary under the launcher (`probe` below, an ignored test run
//! by name with UIOMMUFD_LAUNCH_PROBE set) so the intercepted ioctls come from a known program.
//! Each probe exits with the errno its ioctl got (0 on success, PROBE_BAD when something else went
//! wrong).

mod support;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use uiommufd_uapi::selftest::{
    iommu_test_cmd, iommu_test_cmd_create_access, IOMMU_TEST_CMD, IOMMU_TEST_OP_ADD_RESERVED,
    IOMMU_TEST_OP_CREATE_ACCESS,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const PROBE_ENV: &str = "UIOMMUFD_LAUNCH_PROBE";
/// The test binary's arguments that run `probe` alone.
const PROBE_ARGS: [&str; 5] = [
    "probe",
    "--exact",
    "--ignored",
    "--nocapture",
    "--test-threads=1",
];
const PROBE_BAD: i32 = 99;
const SENTINEL: u32 = 0xfeed_f00d;

fn launch(cmd: &[&str], rust_log: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .arg("launch")
        .arg("--")
        .args(cmd)
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .output()
        .expect("run uiommufd launch")
}

fn status(cmd: &[&str]) -> i32 {
    let out = launch(cmd, "warn");
    out.status.code().expect("the launcher exits normally")
}

#[test]
fn exit_status_is_the_commands() {
    assert_eq!(status(&["true"]), 0);
    assert_eq!(status(&["false"]), 1);
    assert_eq!(status(&["sh", "-c", "exit 7"]), 7);
}

#[test]
fn killed_command_is_128_plus_signal() {
    assert_eq!(status(&["sh", "-c", "kill -KILL $$"]), 128 + libc::SIGKILL);
    // SIGTERM is blocked in the launcher (it forwards it); the command must still get it.
    assert_eq!(status(&["sh", "-c", "kill -TERM $$"]), 128 + libc::SIGTERM);
}

#[test]
fn missing_command_is_127() {
    assert_eq!(status(&["/nonexistent/uiommufd-launch-test"]), 127);
}

#[test]
fn sigterm_to_the_launcher_reaches_the_command() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .args(["launch", "--", "sleep", "30"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    // The launcher blocks the signals it forwards before it spawns the command: once its child
    // runs `sleep`, a SIGTERM to the launcher is forwarded, never lost.
    wait_for_child_running(child.id(), "sleep");
    // SAFETY: kill() on our own child's pid has no memory-safety impact.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM));
}

/// Waits until process `parent` has a child that runs `program` (spawned and exec'd).
fn wait_for_child_running(parent: u32, program: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has_child_running(parent, program) {
        assert!(
            Instant::now() < deadline,
            "process {parent} never ran {program}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether some process whose parent is `parent` has the command name `program`.
fn has_child_running(parent: u32, program: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            return false;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        &stat[open + 1..close] == program && ppid == Some(parent.to_string().as_str())
    })
}

/// Runs this test binary's `probe` under the launcher; returns (exit code, launcher's stderr).
fn run_probe(scenario: &str) -> (i32, String) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .arg("launch")
        .arg(&exe)
        .args(PROBE_ARGS)
        .env(PROBE_ENV, scenario)
        .env("RUST_LOG", "uiommufd::launch=debug")
        .env("NO_COLOR", "1")
        .output()
        .expect("run the probe");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or(-1);
    (code, stderr)
}

fn handled(stderr: &str, reply: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("notification handled") && l.contains(reply))
        .count()
}

#[test]
fn other_test_ops_continue_to_the_real_ioctl() {
    let (code, log) = run_probe("other_op");
    assert_eq!(code, libc::ENOTTY, "{log}");
    assert_eq!(handled(&log, "reply=Continue"), 1, "{log}");
}

#[test]
fn create_access_bind_errno_reaches_the_target() {
    let (code, log) = run_probe("create_access");
    assert_eq!(code, libc::ENOTTY, "{log}");
    assert!(log.contains("UIOMMUFD_HANDLE_BIND failed"), "{log}");
    assert_eq!(handled(&log, "reply=Error(ENOTTY)"), 1, "{log}");
}

#[test]
fn create_access_from_a_second_thread() {
    let (code, log) = run_probe("create_access_thread");
    assert_eq!(code, libc::ENOTTY, "{log}");
    assert_eq!(handled(&log, "reply=Error(ENOTTY)"), 1, "{log}");
}

#[test]
fn create_access_from_a_forked_child() {
    let (code, log) = run_probe("create_access_fork");
    assert_eq!(code, libc::ENOTTY, "{log}");
    assert_eq!(handled(&log, "reply=Error(ENOTTY)"), 1, "{log}");
}

#[test]
fn create_access_on_a_closed_fd_is_the_kernels_ebadf() {
    let (code, log) = run_probe("create_access_badfd");
    assert_eq!(code, libc::EBADF, "{log}");
    assert_eq!(handled(&log, "reply=Continue"), 1, "{log}");
}

#[test]
fn unreadable_or_short_commands_continue() {
    for scenario in [
        "create_access_badptr",
        "create_access_short",
        "create_access_long",
    ] {
        let (code, log) = run_probe(scenario);
        assert_eq!(code, libc::ENOTTY, "{scenario}: {log}");
        assert_eq!(handled(&log, "reply=Continue"), 1, "{scenario}: {log}");
    }
}

#[test]
fn many_notifications_leave_no_fds_behind() {
    let (code, log) = run_probe("many");
    assert_eq!(code, 0, "{log}");
    assert_eq!(handled(&log, "notification handled"), 200, "{log}");
}

// ---- the probe: runs only when re-executed by run_probe ----

fn test_cmd(op: u32, size: u32) -> iommu_test_cmd {
    let mut cmd = iommu_test_cmd::new_zeroed();
    cmd.size = size;
    cmd.op = op;
    cmd.id = 1;
    let access = iommu_test_cmd_create_access {
        out_access_fd: SENTINEL,
        flags: 0,
    };
    cmd.payload[..8].copy_from_slice(access.as_bytes());
    cmd
}

fn out_access_fd(cmd: &iommu_test_cmd) -> u32 {
    iommu_test_cmd_create_access::read_from_prefix(&cmd.payload)
        .unwrap()
        .0
        .out_access_fd
}

/// ioctl(fd, IOMMU_TEST_CMD, arg) → 0 or errno.
fn raw_test_cmd(fd: i32, arg: u64) -> i32 {
    // SAFETY: the argument is either a live iommu_test_cmd or a deliberately bad address; /dev/null
    // and closed fds never dereference it, and the supervisor reads it with process_vm_readv.
    let rc = unsafe { libc::ioctl(fd, IOMMU_TEST_CMD as libc::Ioctl, arg) };
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        0
    }
}

/// One CREATE_ACCESS (or `op`) on /dev/null; PROBE_BAD if out_access_fd was touched.
fn one(op: u32, size: u32) -> i32 {
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut cmd = test_cmd(op, size);
    let e = raw_test_cmd(null.as_raw_fd(), &mut cmd as *mut iommu_test_cmd as u64);
    if out_access_fd(&cmd) != SENTINEL {
        return PROBE_BAD;
    }
    e
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn scenario(name: &str) -> i32 {
    let full = std::mem::size_of::<iommu_test_cmd>() as u32;
    match name {
        "other_op" => one(IOMMU_TEST_OP_ADD_RESERVED, full),
        "create_access" => one(IOMMU_TEST_OP_CREATE_ACCESS, full),
        "create_access_thread" => {
            std::thread::spawn(move || one(IOMMU_TEST_OP_CREATE_ACCESS, full))
                .join()
                .unwrap()
        }
        "create_access_fork" => {
            // SAFETY: the child only issues open (path on the stack), ioctl and _exit, all
            // async-signal-safe.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    let mut cmd = test_cmd(IOMMU_TEST_OP_CREATE_ACCESS, full);
                    let fd = nix::fcntl::open(
                        "/dev/null",
                        nix::fcntl::OFlag::O_RDONLY,
                        nix::sys::stat::Mode::empty(),
                    );
                    let code = match fd {
                        Ok(fd) => raw_test_cmd(fd.as_raw_fd(), &mut cmd as *mut _ as u64),
                        Err(_) => PROBE_BAD,
                    };
                    // SAFETY: _exit ends the forked child without running the parent's destructors.
                    unsafe { libc::_exit(code) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    match nix::sys::wait::waitpid(child, None).unwrap() {
                        nix::sys::wait::WaitStatus::Exited(_, code) => code,
                        _ => PROBE_BAD,
                    }
                }
            }
        }
        "create_access_badfd" => {
            let mut cmd = test_cmd(IOMMU_TEST_OP_CREATE_ACCESS, full);
            raw_test_cmd(987_654, &mut cmd as *mut _ as u64)
        }
        "create_access_badptr" => {
            let null = std::fs::File::open("/dev/null").unwrap();
            raw_test_cmd(null.as_raw_fd(), 8)
        }
        "create_access_short" => one(IOMMU_TEST_OP_CREATE_ACCESS, 20),
        "create_access_long" => one(IOMMU_TEST_OP_CREATE_ACCESS, full + 8),
        "many" => {
            let before = open_fds();
            for i in 0..200 {
                let op = if i % 2 == 0 {
                    IOMMU_TEST_OP_CREATE_ACCESS
                } else {
                    IOMMU_TEST_OP_ADD_RESERVED
                };
                if one(op, full) != libc::ENOTTY {
                    return PROBE_BAD;
                }
            }
            if open_fds() != before {
                return PROBE_BAD;
            }
            0
        }
        _ => PROBE_BAD,
    }
}

/// Run only by [`run_probe`] (and the unprivileged test), never as a test of its own.
#[test]
#[ignore = "a probe role: run by the launcher tests with UIOMMUFD_LAUNCH_PROBE set"]
fn probe() {
    let name = std::env::var(PROBE_ENV).expect("probe runs only under the launcher tests");
    std::process::exit(scenario(&name));
}

#[test]
fn unprivileged_launcher_still_works() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !support::require("root, to drop to an unprivileged user", root) {
        return;
    }
    let Some(setpriv) = support::require_program("setpriv", "util-linux") else {
        return;
    };
    // Copies of the launcher and of this binary where the unprivileged user may run them, wherever
    // the build directory is (a checkout under /root is closed to other users).
    let dir = support::TempDir::new("launch-nobody");
    let launcher = world_executable_copy(Path::new(env!("CARGO_BIN_EXE_uiommufd")), &dir.0);
    let exe = world_executable_copy(&std::env::current_exe().unwrap(), &dir.0);
    for (scenario, want) in [("other_op", libc::ENOTTY), ("create_access", libc::ENOTTY)] {
        let out = Command::new(&setpriv)
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&launcher)
            .arg("launch")
            .arg(&exe)
            .args(PROBE_ARGS)
            .env(PROBE_ENV, scenario)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(want), "{scenario}: {log}");
    }
}

/// A copy of `exe` in `dir` (a directory of the temporary directory), both open to every user.
fn world_executable_copy(exe: &Path, dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let open = || std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir, open()).unwrap();
    let copy = dir.join(exe.file_name().unwrap());
    std::fs::copy(exe, &copy).unwrap();
    std::fs::set_permissions(&copy, open()).unwrap();
    copy
}
