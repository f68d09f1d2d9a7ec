//! `uiommufd doctor`: checks the host for what `serve` needs and prints one line per finding,
//! each saying what to do.
//!
//! A finding is `ok`, `note` (worth knowing, nothing to fix for the options given), `warn` (a
//! feature is unavailable or something looks off) or `FAIL` (`serve` with the options given will
//! not work). The exit status is 0 exactly when there is no `FAIL`.
//!
//! Everything is read below one root directory (`/` on a real host; a fake tree in the unit tests):
//! `sys/`, `proc/` (the `self` entries describe the invoking process), `dev/`, `boot/` and
//! `lib/modules/`. Messages name the host's paths (`/sys/...`), never the root. Two things are
//! run as programs: `gzip -dc` for `/proc/config.gz`, and QEMU (`--version`, `-object help`), each
//! with a time limit. The only device doctor opens beyond `/dev/fuse` and `/dev/cuse` is the
//! group file of each `--vfio` device, closed at once, to see whether another VFIO user holds it.

mod kernel;
mod qemu;
mod vfio;

pub use kernel::{node_of_class, IommuNode, KernelConfig, Tristate};
pub use qemu::parse_qemu_version;
pub use vfio::{group_blockers, iommu_hint, module_state, viable_with, ModuleState};

use crate::backends::vfio::host::parse_bdf;
use crate::transport::mounts::{self, MountEntry};
use crate::transport::{TransportKind, TransportOptions};
use kernel::{check_kernel_iommufd, check_transport};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vfio::{check_iommu, check_vfio_device, check_vfio_modules, check_vfio_pci_devices};

/// `uiommufd doctor`: the options of `serve` that decide what the host must offer (the transport
/// options are serve's own, so a serve command line can be checked as it is).
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub serve: TransportOptions,
    /// A real PCI device `serve --vfio BDF` would take (repeatable).
    #[arg(id = "vfio_devices", long = "vfio", value_name = "BDF", value_parser = parse_bdf)]
    pub vfio: Vec<String>,
}

impl DoctorArgs {
    /// The defaults of `serve`, with the given `--vfio` devices.
    pub fn new(vfio: &[&str]) -> Self {
        let mut serve = TransportOptions::fuse(std::path::Path::new("/run/uiommufd"));
        serve.transport = TransportKind::Auto;
        Self {
            serve,
            vfio: vfio.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Note,
    Warn,
    /// `serve` with the options given cannot work.
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Note => "note",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// What was checked: `kernel`, `fuse`, `cuse`, `iommu`, `vfio`, `--vfio BDF`, ...
    pub topic: String,
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4}  {}: {}",
            self.level.label(),
            self.topic,
            self.text
        )
    }
}

/// Whether `serve` can work: no finding is a failure.
pub fn can_serve(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.level != Level::Fail)
}

/// The host to check.
#[derive(Debug, Clone)]
pub struct Host {
    /// Where `sys/`, `proc/`, `dev/`, `boot/` and `lib/modules/` are (`/` on a real host).
    pub root: PathBuf,
    /// The command that runs QEMU: program (looked up in PATH unless it has a slash) and leading
    /// arguments.
    pub qemu: Vec<OsString>,
    /// How long QEMU (and gzip) may take to answer.
    pub timeout: Duration,
}

impl Host {
    /// This machine.
    pub fn system() -> Self {
        Self {
            root: PathBuf::from("/"),
            qemu: vec!["qemu-system-x86_64".into()],
            timeout: Duration::from_secs(10),
        }
    }

    /// Where the host path `abs` (absolute) is below the root.
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn read(&self, abs: &str) -> Option<String> {
        std::fs::read_to_string(self.path(abs)).ok()
    }

    /// The last component of the symlink at `abs` (a driver's or a group's name).
    fn link_name(&self, abs: &str) -> Option<String> {
        std::fs::read_link(self.path(abs))
            .ok()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// Names in the directory `abs`, sorted; empty if it cannot be read.
    fn entries(&self, abs: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path(abs))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Opens `abs` read-write (as serve opens /dev/fuse and /dev/cuse), closing it at once.
    fn opens(&self, abs: &str) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(abs))
            .map(drop)
    }
}

/// Checks everything and returns the findings in the order they are printed.
pub fn check(host: &Host, args: &DoctorArgs) -> Vec<Finding> {
    let release = host
        .read("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "(unknown release)".into());
    let config = KernelConfig::read(host, &release);
    let mountinfo = host
        .read("/proc/self/mountinfo")
        .map(|t| mounts::parse_mountinfo(&t))
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut transport = Vec::new();
    let cuse = check_transport(host, args, config.as_ref(), &mut transport);
    kernel::check_io_uring(host, args, config.as_ref(), &mut transport);
    check_kernel_iommufd(
        host,
        args,
        &release,
        config.as_ref(),
        &mountinfo,
        cuse,
        &mut out,
    );
    out.append(&mut transport);
    check_privileges(host, &mut out);
    check_mount(host, args, &mountinfo, &mut out);
    let iommu_on = check_iommu(host, args, &mut out);
    check_vfio_modules(host, args, &release, config.as_ref(), &mut out);
    check_vfio_pci_devices(host, iommu_on, &mut out);
    for (i, bdf) in args.vfio.iter().enumerate() {
        if args.vfio[..i].contains(bdf) {
            out.push(finding(
                Level::Fail,
                format!("--vfio {bdf}"),
                "given twice: serve refuses that",
            ));
            continue;
        }
        out.extend(check_vfio_device(host, bdf, iommu_on));
    }
    check_memlock(host, &mut out);
    qemu::check_qemu(host, &mut out);
    out
}

/// `uiommufd doctor`: prints the findings and a verdict; exit status 0 when serve can work.
pub fn main(args: DoctorArgs) -> ExitCode {
    let findings = check(&Host::system(), &args);
    for f in &findings {
        println!("{f}");
    }
    let fails = findings.iter().filter(|f| f.level == Level::Fail).count();
    if fails == 0 {
        println!("result: serve can work with these options");
        ExitCode::SUCCESS
    } else {
        println!("result: serve cannot work with these options ({fails} FAIL)");
        ExitCode::FAILURE
    }
}

fn finding(level: Level, topic: impl Into<String>, text: impl Into<String>) -> Finding {
    Finding {
        level,
        topic: topic.into(),
        text: text.into(),
    }
}

// Privileges, the mount point, memlock.

const CAP_SYS_ADMIN: u32 = 21;

/// (real uid, CapEff) of the invoking process.
fn own_creds(host: &Host) -> Option<(u32, u64)> {
    crate::caller::identity::parse_status_creds(&host.read("/proc/self/status")?)
}

fn check_privileges(host: &Host, out: &mut Vec<Finding>) {
    let f = match own_creds(host) {
        Some((uid, caps)) if caps & (1 << CAP_SYS_ADMIN) != 0 => finding(
            Level::Ok,
            "privileges",
            format!("uid {uid} with CAP_SYS_ADMIN: serve can mount its FUSE filesystem"),
        ),
        Some((uid, _)) => finding(
            Level::Fail,
            "privileges",
            format!(
                "uid {uid} without CAP_SYS_ADMIN: run serve as root (it mounts a FUSE filesystem \
                 and reads its callers' memory)"
            ),
        ),
        None => finding(
            Level::Warn,
            "privileges",
            "cannot read /proc/self/status: run serve as root",
        ),
    };
    out.push(f);
}

fn check_mount(host: &Host, args: &DoctorArgs, mountinfo: &[MountEntry], out: &mut Vec<Finding>) {
    let Ok(mount) = mounts::absolute(&args.serve.mount) else {
        return;
    };
    let shown = mount.display();
    let md = std::fs::metadata(host.path(&mount.to_string_lossy()));
    if let Ok(md) = &md {
        if !md.is_dir() {
            out.push(finding(
                Level::Fail,
                "mount",
                format!("{shown} exists and is not a directory: choose another --mount"),
            ));
            return;
        }
    }
    if mountinfo
        .iter()
        .any(|m| m.mount_point == mount && m.source == mounts::SOURCE)
    {
        out.push(finding(
            Level::Warn,
            "mount",
            format!(
                "a uiommufd filesystem is mounted at {shown} (a running daemon, or a dead one's): \
                 serve detaches it at start; stop a running daemon first"
            ),
        ));
    }
}

/// (soft, hard) RLIMIT_MEMLOCK in bytes (u64::MAX: unlimited) from the text of a limits file.
pub fn parse_memlock(limits: &str) -> Option<(u64, u64)> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))?;
    let mut v = rest.split_whitespace().map(|w| match w {
        "unlimited" => Some(u64::MAX),
        w => w.parse().ok(),
    });
    Some((v.next()??, v.next()??))
}

fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    match bytes {
        u64::MAX => "unlimited".into(),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} bytes"),
    }
}

fn check_memlock(host: &Host, out: &mut Vec<Finding>) {
    let Some((soft, hard)) = host
        .read("/proc/self/limits")
        .and_then(|t| parse_memlock(&t))
    else {
        out.push(finding(
            Level::Warn,
            "memlock",
            "cannot read RLIMIT_MEMLOCK from /proc/self/limits",
        ));
        return;
    };
    let exempt =
        own_creds(host).is_some_and(|(_, caps)| caps & (1 << crate::caller::CAP_IPC_LOCK) != 0);
    let mut text = format!("RLIMIT_MEMLOCK soft {}, hard {}: ", size(soft), size(hard));
    if soft == u64::MAX {
        text.push_str("pins of this user's programs are not limited");
    } else {
        text.push_str(&format!(
            "a program of this user without CAP_IPC_LOCK can pin at most {} through uiommufd \
             (IOAS_MAP past it: ENOMEM), and a VM's RAM mapped for a device is pinned whole: \
             raise it with ulimit -l, LimitMEMLOCK= (systemd) or memlock in \
             /etc/security/limits.conf",
            size(soft)
        ));
        if hard > soft {
            text.push_str(&format!(" (up to {} without privileges)", size(hard)));
        }
    }
    if exempt {
        text.push_str("; this process has CAP_IPC_LOCK: its own pins are not charged");
    }
    out.push(finding(Level::Note, "memlock", text));
}

#[cfg(test)]
mod tests;
