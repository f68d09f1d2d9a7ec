//! The kernel: its configuration, whether it has iommufd itself, and the transports (/dev/fuse,
//! /dev/cuse) serve can use.

use super::qemu::run;
use super::{finding, DoctorArgs, Finding, Host, Level};
use crate::transport::mounts::{self, MountEntry};
use crate::transport::TransportKind;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;

/// A kernel config option's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tristate {
    Yes,
    Module,
    /// `# CONFIG_X is not set`, or not listed at all (its dependencies are off).
    No,
}

/// The running kernel's configuration, from `/boot/config-RELEASE` or `/proc/config.gz`.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Where it was read (a host path).
    pub source: String,
    values: HashMap<String, Tristate>,
}

impl KernelConfig {
    pub fn parse(source: &str, text: &str) -> Self {
        let mut values = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                let t = match v {
                    "y" => Tristate::Yes,
                    "m" => Tristate::Module,
                    _ => continue,
                };
                values.insert(k.to_string(), t);
            } else if let Some(k) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                values.insert(k.to_string(), Tristate::No);
            }
        }
        Self {
            source: source.to_string(),
            values,
        }
    }

    pub(super) fn read(host: &Host, release: &str) -> Option<Self> {
        let boot = format!("/boot/config-{release}");
        if let Some(text) = host.read(&boot) {
            return Some(Self::parse(&boot, &text));
        }
        let gz = host.path("/proc/config.gz");
        if !gz.exists() {
            return None;
        }
        let cmd = [OsStr::new("gzip"), OsStr::new("-dc"), gz.as_os_str()];
        let text = run(&cmd, host.timeout).ok()?;
        Some(Self::parse("/proc/config.gz", &text))
    }

    pub fn get(&self, option: &str) -> Tristate {
        self.values.get(option).copied().unwrap_or(Tristate::No)
    }
}

/// /dev/fuse and /dev/cuse. Returns whether serve would use CUSE.
pub(super) fn check_transport(
    host: &Host,
    args: &DoctorArgs,
    config: Option<&KernelConfig>,
    out: &mut Vec<Finding>,
) -> bool {
    match host.opens("/dev/fuse") {
        Ok(()) => out.push(finding(Level::Ok, "fuse", "/dev/fuse opens")),
        Err(e) => out.push(finding(
            Level::Fail,
            "fuse",
            format!(
                "cannot open /dev/fuse ({e}): serve needs it in every mode (the device files and \
                 the status file are FUSE files): {}",
                match config.map(|c| c.get("CONFIG_FUSE_FS")) {
                    Some(Tristate::No) => "the kernel has no FUSE (CONFIG_FUSE_FS unset)",
                    _ => "modprobe fuse, and run as root",
                }
            ),
        )),
    }
    let mount = args.serve.mount.display();
    let cuse_err = host.opens("/dev/cuse").err();
    let Some(err) = cuse_err else {
        let text = if args.serve.transport == TransportKind::Fuse {
            format!(
                "/dev/cuse opens, but --transport fuse serves FUSE files: {mount}/iommu and \
                 {mount}/vfio/vfio"
            )
        } else {
            "/dev/cuse opens: serve makes /dev/iommu and /dev/vfio/vfio character devices".into()
        };
        out.push(finding(Level::Ok, "cuse", text));
        return args.serve.transport != TransportKind::Fuse;
    };
    let why = match config.map(|c| c.get("CONFIG_CUSE")) {
        Some(Tristate::No) => "the kernel has no CUSE: CONFIG_CUSE unset".to_string(),
        Some(Tristate::Module) => "CONFIG_CUSE=m: modprobe cuse".to_string(),
        _ if err.kind() == std::io::ErrorKind::NotFound => "modprobe cuse".to_string(),
        _ => err.to_string(),
    };
    if args.serve.transport == TransportKind::Cuse {
        out.push(finding(
            Level::Fail,
            "cuse",
            format!(
                "--transport cuse needs /dev/cuse ({why}); --transport fuse serves \
                 {mount}/iommu and {mount}/vfio/vfio instead"
            ),
        ));
        return true;
    }
    let find = if args.serve.bind_dev {
        "--bind-dev bind-mounts them over /dev/iommu and /dev/vfio/vfio".to_string()
    } else {
        "pass those paths (QEMU: fd=), or add --bind-dev to bind-mount them over /dev/iommu and \
         /dev/vfio/vfio for programs with fixed paths"
            .to_string()
    };
    out.push(finding(
        Level::Note,
        "cuse",
        format!(
            "no /dev/cuse ({why}): serve uses FUSE files {mount}/iommu and {mount}/vfio/vfio; {find}"
        ),
    ));
    false
}

/// FUSE over io_uring (`serve --io-uring`): whether the kernel offers it and the fuse module lets
/// it. A note, not a failure, unless `--io-uring on` asks for it.
pub(super) fn check_io_uring(
    host: &Host,
    args: &DoctorArgs,
    config: Option<&KernelConfig>,
    out: &mut Vec<Finding>,
) {
    use crate::transport::UringMode;
    let mode = args.serve.io_uring;
    if mode == UringMode::Off {
        return;
    }
    let param = host
        .read("/sys/module/fuse/parameters/enable_uring")
        .map(|s| s.trim().to_string());
    let (ok, text) = match param.as_deref() {
        Some("Y") => (true, "FUSE over io_uring is enabled: serve answers each caller on its CPU's queue".to_string()),
        Some(_) => (
            false,
            "the kernel has FUSE over io_uring but it is off: echo Y > \
             /sys/module/fuse/parameters/enable_uring (before serve starts) to use it"
                .to_string(),
        ),
        None => (
            false,
            match config.map(|c| c.get("CONFIG_FUSE_IO_URING")) {
                Some(Tristate::No) => "the kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING unset, Linux >= 6.14 needed): serve uses /dev/fuse".to_string(),
                _ => "no /sys/module/fuse/parameters/enable_uring: FUSE over io_uring needs Linux >= 6.14 with CONFIG_FUSE_IO_URING; serve uses /dev/fuse".to_string(),
            },
        ),
    };
    let level = match (ok, mode) {
        (true, _) => Level::Ok,
        (false, UringMode::On) => Level::Fail,
        (false, _) => Level::Note,
    };
    out.push(finding(level, "io_uring", text));
}

/// What /dev/iommu is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IommuNode {
    Absent,
    /// The kernel's iommufd (a misc character device).
    Kernel,
    /// A CUSE character device: a uiommufd (or another CUSE server) is running.
    Cuse,
    /// A running uiommufd's FUSE file, bind-mounted (`serve --bind-dev`).
    UiommufdBind,
    /// Something else (described).
    Other(String),
}

pub(super) fn classify_iommu_node(host: &Host, mountinfo: &[MountEntry]) -> IommuNode {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(md) = std::fs::symlink_metadata(host.path("/dev/iommu")) else {
        return IommuNode::Absent;
    };
    if mountinfo
        .iter()
        .any(|m| m.mount_point == Path::new("/dev/iommu") && m.source == mounts::SOURCE)
    {
        return IommuNode::UiommufdBind;
    }
    if !md.file_type().is_char_device() {
        return IommuNode::Other("not a character device".into());
    }
    let (major, minor) = (
        nix::sys::stat::major(md.rdev()),
        nix::sys::stat::minor(md.rdev()),
    );
    let class = std::fs::read_link(host.path(&format!("/sys/dev/char/{major}:{minor}")))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    node_of_class(&class, major, minor)
}

/// Classifies a character device by its /sys/dev/char link (`.../virtual/misc/iommu`,
/// `.../virtual/cuse/iommu`).
pub fn node_of_class(link: &str, major: u64, minor: u64) -> IommuNode {
    let classes: Vec<&str> = link.split('/').collect();
    if classes.contains(&"cuse") {
        IommuNode::Cuse
    } else if classes.contains(&"misc") {
        IommuNode::Kernel
    } else {
        IommuNode::Other(format!("character device {major}:{minor}"))
    }
}

pub(super) fn check_kernel_iommufd(
    host: &Host,
    args: &DoctorArgs,
    release: &str,
    config: Option<&KernelConfig>,
    mountinfo: &[MountEntry],
    cuse: bool,
    out: &mut Vec<Finding>,
) {
    let node = classify_iommu_node(host, mountinfo);
    let option = config.map(|c| (c.get("CONFIG_IOMMUFD"), c.source.as_str()));
    let text = match (&node, option) {
        (IommuNode::Kernel, _) => {
            "/dev/iommu is the kernel's own iommufd: uiommufd is not needed here (with \
             --transport fuse it can still run beside it, e.g. to compare)"
                .to_string()
        }
        (_, Some((Tristate::Yes, src))) => {
            format!("{release} has CONFIG_IOMMUFD=y ({src}): the kernel serves /dev/iommu; uiommufd is not needed")
        }
        (_, Some((Tristate::Module, src))) => format!(
            "{release} has CONFIG_IOMMUFD=m ({src}): modprobe iommufd gives the kernel's \
             /dev/iommu; uiommufd is not needed"
        ),
        (_, Some((Tristate::No, src))) => format!(
            "{release} has no CONFIG_IOMMUFD ({src}): uiommufd serves /dev/iommu in its place"
        ),
        (_, None) => format!(
            "{release}: no kernel config (/boot/config-{release}, /proc/config.gz) and no \
             kernel /dev/iommu: uiommufd serves /dev/iommu in its place"
        ),
    };
    let kernel_has =
        node == IommuNode::Kernel || matches!(option, Some((Tristate::Yes | Tristate::Module, _)));
    out.push(finding(
        if kernel_has { Level::Note } else { Level::Ok },
        "kernel",
        text,
    ));
    // What serve would run into at /dev/iommu.
    let (level, text) = match node {
        IommuNode::Absent => return,
        IommuNode::Kernel | IommuNode::Other(_) if cuse => (
            Level::Fail,
            format!(
                "/dev/iommu exists ({}): serve in CUSE mode does not serve over it: use \
                 --transport fuse (files under {})",
                describe(&node),
                args.serve.mount.display()
            ),
        ),
        IommuNode::Kernel | IommuNode::Other(_) if args.serve.bind_dev => (
            Level::Warn,
            format!(
                "/dev/iommu exists ({}): --bind-dev would hide it while serve runs",
                describe(&node)
            ),
        ),
        IommuNode::Kernel => return,
        IommuNode::Other(_) => (
            Level::Note,
            format!("/dev/iommu exists ({}), not the kernel's", describe(&node)),
        ),
        IommuNode::Cuse => (
            if cuse { Level::Fail } else { Level::Warn },
            "/dev/iommu is a CUSE device: a uiommufd daemon is already running; stop it before \
             starting another"
                .to_string(),
        ),
        IommuNode::UiommufdBind => (
            if cuse { Level::Fail } else { Level::Warn },
            "/dev/iommu is a running uiommufd's FUSE file (--bind-dev): a new serve would \
             detach it; stop the running daemon first"
                .to_string(),
        ),
    };
    out.push(finding(level, "/dev/iommu", text));
}

fn describe(node: &IommuNode) -> String {
    match node {
        IommuNode::Kernel => "the kernel's iommufd".into(),
        IommuNode::Other(s) => s.clone(),
        IommuNode::Cuse => "a CUSE device".into(),
        IommuNode::UiommufdBind => "a uiommufd FUSE file".into(),
        IommuNode::Absent => "absent".into(),
    }
}
