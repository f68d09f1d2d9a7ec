//! Logs are plain text when stderr is not a terminal (a file, a pipe, journald), coloured on a
//! terminal. The daemon is made to log an error and exit at once: `--record` into a directory
//! that cannot be created (under /proc).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};

const ESC: u8 = 0x1b;

fn failing_serve() -> Command {
    let mount = std::env::temp_dir().join(format!("uiommufd-plain-logs-{}", std::process::id()));
    let mut c = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    c.args(["serve", "--transport", "fuse", "--mount"])
        .arg(&mount)
        .arg("--control")
        .arg(mount.with_extension("sock"))
        .args(["--record", "/proc/uiommufd-no-such-dir/x"])
        .env("RUST_LOG", "info")
        // Decided by the terminal alone, not by a NO_COLOR the test runner may have set.
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

#[test]
fn no_escape_bytes_when_stderr_is_a_pipe() {
    let out = failing_serve().output().expect("run uiommufd serve");
    assert!(!out.status.success());
    let err = out.stderr;
    let text = String::from_utf8_lossy(&err);
    assert!(text.contains("ERROR"), "{text}");
    assert!(
        text.contains("--record: cannot create the directory"),
        "{text}"
    );
    assert!(!err.contains(&ESC), "escape bytes in piped logs: {text:?}");
}

/// A pseudo-terminal pair: (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    // SAFETY: posix_openpt takes flags only and returns a new fd or -1.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
    // SAFETY: m is a new fd that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: grantpt/unlockpt take the master fd, which is open.
    assert_eq!(unsafe { libc::grantpt(master.as_raw_fd()) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::unlockpt(master.as_raw_fd()) }, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let r = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    assert_eq!(r, 0, "ptsname_r");
    // SAFETY: ptsname_r succeeded, so name holds a NUL-terminated path.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path.to_str().unwrap())
        .expect("open the pty slave");
    (master, slave.into())
}

#[test]
fn colour_on_a_terminal() {
    // The other half of the switch: the same command with stderr on a terminal is coloured, so
    // the pipe test above cannot pass merely because nothing is ever coloured.
    let (master, slave) = pty();
    let mut cmd = failing_serve();
    cmd.stderr(Stdio::from(slave));
    let status = cmd.status().expect("run uiommufd serve");
    drop(cmd); // closes our copy of the slave: reads end once the child's output is drained
    assert!(!status.success());
    let mut out = Vec::new();
    let mut f = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // EIO: every slave fd is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("reading the pty: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("cannot create the directory"), "{text:?}");
    assert!(out.contains(&ESC), "no colour on a terminal: {text:?}");
}
