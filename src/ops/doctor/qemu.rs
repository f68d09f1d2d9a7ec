//! The installed QEMU, and running a program with a time limit.

use super::{finding, Finding, Host, Level};
use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `major.minor.patch` from `qemu --version`'s first line.
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let v = rest
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut n = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        n.next()??,
        n.next().flatten()?,
        n.next().flatten().unwrap_or(0),
    ))
}

/// Runs the host's QEMU with `args`.
fn qemu(host: &Host, args: &[&str]) -> Result<String, RunError> {
    let mut cmd: Vec<&OsStr> = host.qemu.iter().map(|a| a.as_os_str()).collect();
    cmd.extend(args.iter().map(OsStr::new));
    run(&cmd, host.timeout)
}

pub(super) fn check_qemu(host: &Host, out: &mut Vec<Finding>) {
    let prog = host
        .qemu
        .first()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let version_text = match qemu(host, &["--version"]) {
        Ok(t) => t,
        Err(RunError::NotFound) => {
            out.push(finding(
                Level::Note,
                "qemu",
                format!(
                    "{prog} not installed (uiommufd does not need it; QEMU 9.0 or later has the \
                     iommufd backend: on Debian 12 qemu-system-x86 from bookworm-backports)"
                ),
            ));
            return;
        }
        Err(e) => {
            out.push(finding(
                Level::Warn,
                "qemu",
                format!("{prog} --version: {e}"),
            ));
            return;
        }
    };
    let first = version_text.lines().next().unwrap_or("").trim();
    let version = parse_qemu_version(first);
    let listed = qemu(host, &["-object", "help"]).map(|t| t.lines().any(|l| l.trim() == "iommufd"));
    let has = match (&listed, version) {
        (Ok(true), _) => true,
        (Ok(false), _) => false,
        (Err(_), Some(v)) => v >= (9, 0, 0),
        (Err(_), None) => false,
    };
    let name = match version {
        Some((a, b, c)) => format!("QEMU {a}.{b}.{c}"),
        None => format!("{prog} ({first})"),
    };
    let f = if has {
        finding(
            Level::Ok,
            "qemu",
            format!(
                "{name} has the iommufd backend: -object iommufd,id=i0,fd=N -device \
                 vfio-pci,fd=M,iommufd=i0 with fds of the uiommufd nodes, accel=tcg (KVM refuses \
                 device files that are not the kernel's)"
            ),
        )
    } else {
        finding(
            Level::Note,
            "qemu",
            format!(
                "{name} has no iommufd backend (QEMU 9.0 or later has it: on Debian 12 \
                 qemu-system-x86 from bookworm-backports)"
            ),
        )
    };
    out.push(f);
}

#[derive(Debug)]
pub(super) enum RunError {
    NotFound,
    Spawn(std::io::Error),
    TimedOut(Duration),
    Status(std::process::ExitStatus),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NotFound => write!(f, "not found"),
            RunError::Spawn(e) => write!(f, "cannot run it: {e}"),
            RunError::TimedOut(d) => write!(f, "no answer within {:.1} s", d.as_secs_f64()),
            RunError::Status(s) => write!(f, "failed ({s})"),
        }
    }
}

/// Runs `cmd` (program and arguments; stdin empty, stderr dropped) and returns its standard
/// output; kills it once `timeout` has passed.
pub(super) fn run(cmd: &[&OsStr], timeout: Duration) -> Result<String, RunError> {
    let (program, args) = cmd.split_first().ok_or(RunError::NotFound)?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RunError::NotFound,
            _ => RunError::Spawn(e),
        })?;
    // Read on a thread so that a full pipe cannot stall the child while we wait for it.
    let mut stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::TimedOut(timeout));
            }
        }
    };
    if !status.success() {
        return Err(RunError::Status(status));
    }
    // The output is complete once every writer is gone; a leftover grandchild holding the pipe
    // gets the rest of the time limit.
    let left = deadline.saturating_duration_since(Instant::now());
    let buf = rx
        .recv_timeout(left.max(Duration::from_millis(100)))
        .map_err(|_| RunError::TimedOut(timeout))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
