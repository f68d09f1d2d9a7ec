//! `uiommufd launch -- CMD ARGS...`: runs CMD so that the iommufd operations that return a new file
//! descriptor work against a uiommufd node.
//!
//! A FUSE or CUSE server cannot install an fd in its caller. The launcher therefore runs CMD (and
//! everything it forks) under a seccomp user-notify filter that routes those ioctls (see
//! [`supervisor::HANDLERS`]) to a supervisor thread here. For IOMMU_TEST_OP_CREATE_ACCESS the
//! supervisor opens the caller's node afresh, asks the daemon to bind a new access to that open file
//! ([`crate::dispatch::private_abi`]), installs the file in the caller with SECCOMP_IOCTL_NOTIF_ADDFD and
//! writes its number into the caller's argument. A real device node's bind is taken over too
//! ([`device`]): the program gets the kernel's device fd. Every other ioctl, and every one the supervisor
//! cannot handle, runs unchanged (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
//!
//! The filter is installed on the launcher's own main thread before CMD is spawned, so CMD inherits
//! it and no fd has to be passed back from a child. The launcher's other threads (the supervisor,
//! the signal forwarder) are started before the filter exists and so do not carry it: the
//! supervisor opens files and issues intercepted ioctls on node files itself. The launcher
//! never executes anything after setting PR_SET_NO_NEW_PRIVS.
//!
//! The legacy VFIO path ([`group`], [`open`]): CMD's opens of `/dev/vfio/vfio` get the daemon's
//! compat node (`--mount`), and a VFIO_GROUP_SET_CONTAINER of CMD's own group file into it is
//! done by the daemon, which joins the group to the context's compat IOAS; the group file, its
//! devices and KVM's use of it stay the kernel's.
//!
//! Exit status: CMD's, or 128+N when a signal N killed it; 125 when the launcher cannot set up,
//! 126 when CMD cannot be executed, 127 when it is not found (as `env` and `timeout` do). SIGTERM,
//! SIGHUP, SIGINT and SIGQUIT sent to the launcher are forwarded to CMD; the launcher exits when
//! CMD does. Processes CMD left behind lose the supervisor then: their intercepted ioctls fail with
//! ENOSYS.

mod device;
mod group;
mod notification;
mod open;
pub mod seccomp;
pub mod supervisor;
mod zero_read;

use nix::sys::signal::{SigSet, Signal};
use std::ffi::OsString;
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// The mount of the daemon whose nodes stand in for the kernel's: CMD's opens of
    /// /dev/vfio/vfio get `<mount>/vfio/vfio` (its own VFIO groups then join that container
    /// through the daemon), and of /dev/iommu, where this host has none, `<mount>/iommu`.
    #[arg(long, value_name = "DIR", default_value = "/run/uiommufd")]
    pub mount: std::path::PathBuf,
    /// The command to run and its arguments.
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

/// Exit status when the launcher itself cannot set up.
const EXIT_SETUP: u8 = 125;
const EXIT_CANNOT_EXEC: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
];

/// Runs `args.command` under the supervisor; returns its exit status.
///
/// Call it from a process's main thread before any other thread exists: it installs a seccomp
/// filter and blocks signals on the calling thread, for the rest of the process's life.
pub fn main(args: LaunchArgs) -> ExitCode {
    let Some((program, rest)) = args.command.split_first() else {
        tracing::error!("launch: no command");
        return ExitCode::from(EXIT_SETUP);
    };
    let Some(arch) = seccomp::AUDIT_ARCH_NATIVE else {
        tracing::error!("launch: unsupported architecture");
        return ExitCode::from(EXIT_SETUP);
    };
    // Blocked here, before any thread exists, so that every thread inherits the mask and only the
    // forwarder's sigwait() takes them. The child unblocks them before exec.
    let mut signals = SigSet::empty();
    for s in FORWARDED {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        tracing::error!(%e, "launch: cannot block signals");
        return ExitCode::from(EXIT_SETUP);
    }
    let redirects = open::Redirects::for_mount(&args.mount);
    // The launcher's own threads start before the filter exists (after the mask: they must not
    // take the forwarded signals), so that none of them carries it: the supervisor opens files
    // and issues intercepted ioctls on node files itself.
    let (listener_tx, listener_rx) = std::sync::mpsc::channel();
    let (child_tx, child_rx) = std::sync::mpsc::channel();
    let trap_opens = !redirects.is_empty();
    let spawned = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            if let Ok(listener) = listener_rx.recv() {
                supervisor::run(listener, &redirects);
            }
        })
        .and_then(|_| {
            std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    if let Ok(pid) = child_rx.recv() {
                        forward_signals(signals, pid);
                    }
                })
        });
    if let Err(e) = spawned {
        tracing::error!(%e, "launch: cannot start the supervisor");
        return ExitCode::from(EXIT_SETUP);
    }
    let numbers: Vec<u32> = supervisor::HANDLERS.iter().map(|(nr, _)| *nr).collect();
    let listener = match crate::sys::seccomp::install_filter(&seccomp::filter_program(
        arch, &numbers, trap_opens,
    )) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%e, "launch: cannot install the seccomp filter");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    if listener_tx.send(listener).is_err() {
        tracing::error!("launch: the supervisor is gone");
        return ExitCode::from(EXIT_SETUP);
    }
    let mut command = std::process::Command::new(program);
    command.args(rest);
    crate::sys::process::unblock_signals_in_child(&mut command, signals);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%e, program = %program.to_string_lossy(), "launch: cannot execute");
            return ExitCode::from(match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXEC,
            });
        }
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    tracing::debug!(%pid, "launched");
    let _ = child_tx.send(pid);
    match child.wait() {
        Ok(status) => ExitCode::from(exit_code(status)),
        Err(e) => {
            tracing::error!(%e, "launch: waitpid failed");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// The exit status a shell would report for `status`.
#[expect(
    clippy::cast_possible_truncation,
    reason = "an exit status is 8 bits, as the kernel's wait status keeps"
)]
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        (None, None) => EXIT_SETUP,
    }
}

/// Passes the launcher's terminating signals on to the child.
fn forward_signals(signals: SigSet, child: nix::unistd::Pid) {
    loop {
        match signals.wait() {
            Ok(sig) => {
                tracing::debug!(?sig, "forwarding to the child");
                if let Err(e) = nix::sys::signal::kill(child, sig) {
                    tracing::debug!(%e, ?sig, "cannot forward");
                }
            }
            Err(e) => {
                tracing::warn!(%e, "sigwait failed; signals are no longer forwarded");
                return;
            }
        }
    }
}
