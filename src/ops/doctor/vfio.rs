//! The IOMMU, the VFIO modules, the devices bound to vfio-pci and the `--vfio` devices.

use super::kernel::{KernelConfig, Tristate};
use super::{finding, DoctorArgs, Finding, Host, Level};
use crate::backends::vfio::host::parse_bdf;

/// Whether an IOMMU is enabled (and the finding saying how to enable one).
pub(super) fn check_iommu(host: &Host, args: &DoctorArgs, out: &mut Vec<Finding>) -> bool {
    let units = host.entries("/sys/class/iommu");
    if !units.is_empty() {
        out.push(finding(
            Level::Ok,
            "iommu",
            format!("enabled: {}", units.join(", ")),
        ));
        return true;
    }
    let hint = iommu_hint(
        &host.read("/proc/cmdline").unwrap_or_default(),
        &host.read("/proc/cpuinfo").unwrap_or_default(),
    );
    let (level, without) = need(args);
    out.push(finding(
        level,
        "iommu",
        format!(
            "no IOMMU enabled (/sys/class/iommu is empty): real devices (--vfio) need one: \
             {hint}{without}"
        ),
    ));
    false
}

/// How much a missing IOMMU or VFIO matters: a failure when `--vfio` devices are asked for,
/// else a warning, with what works without it.
fn need(args: &DoctorArgs) -> (Level, &'static str) {
    if args.vfio.is_empty() {
        (
            Level::Warn,
            "; the mock backend and --device dmacopy work without",
        )
    } else {
        (Level::Fail, "")
    }
}

/// How to enable the IOMMU, from the kernel command line and the CPU vendor. Intel's VT-d driver
/// may need `intel_iommu=on`; AMD's IOMMU driver is on by default (`amd_iommu=` has no `on`),
/// so there only the firmware and an `off` on the command line stand in the way.
pub fn iommu_hint(cmdline: &str, cpuinfo: &str) -> String {
    const GRUB: &str = "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot)";
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if let Some(off) = words
        .iter()
        .find(|w| ["intel_iommu=off", "amd_iommu=off", "iommu=off"].contains(w))
    {
        return format!("remove {off} from the kernel command line {GRUB}");
    }
    let intel = cpuinfo.contains("GenuineIntel");
    let amd = cpuinfo.contains("AuthenticAMD");
    let firmware = match (intel, amd) {
        (true, _) => "VT-d",
        (_, true) => "the IOMMU (AMD-Vi)",
        _ => "VT-d (Intel) or the IOMMU (AMD-Vi)",
    };
    if amd || words.contains(&"intel_iommu=on") {
        format!("enable {firmware} in the firmware setup (the kernel turns it on by itself)")
    } else {
        let which = if intel { "" } else { " (on Intel)" };
        format!(
            "add intel_iommu=on{which} to the kernel command line {GRUB} and enable {firmware} \
             in the firmware setup"
        )
    }
}

/// How a kernel module is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    Loaded,
    BuiltIn,
    /// Built as a module, not loaded.
    Loadable,
    /// The kernel was built without it.
    Missing,
    /// Not loaded, and no config or module list says more.
    Unknown,
}

/// The module name of a modules.builtin / modules.dep path (`kernel/drivers/vfio/pci/vfio-pci.ko:`).
fn module_of_path(line: &str) -> Option<String> {
    let file = line.split(':').next()?.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    Some(stem.replace('-', "_"))
}

fn listed(host: &Host, release: &str, list: &str, name: &str) -> bool {
    host.read(&format!("/lib/modules/{release}/{list}"))
        .is_some_and(|t| {
            t.lines()
                .any(|l| module_of_path(l).as_deref() == Some(name))
        })
}

/// The state of module `name` (as /sys/module spells it), whose config option is `option`.
pub fn module_state(
    host: &Host,
    release: &str,
    config: Option<&KernelConfig>,
    name: &str,
    option: &str,
) -> ModuleState {
    let dir = host.path(&format!("/sys/module/{name}"));
    if dir.exists() {
        // Only loadable modules have an initstate.
        return if dir.join("initstate").exists() {
            ModuleState::Loaded
        } else {
            ModuleState::BuiltIn
        };
    }
    if listed(host, release, "modules.builtin", name) {
        return ModuleState::BuiltIn;
    }
    match config.map(|c| c.get(option)) {
        Some(Tristate::Yes) => ModuleState::BuiltIn,
        Some(Tristate::Module) => ModuleState::Loadable,
        Some(Tristate::No) => ModuleState::Missing,
        None if listed(host, release, "modules.dep", name) => ModuleState::Loadable,
        None => ModuleState::Unknown,
    }
}

const VFIO_MODULES: [(&str, &str, &str); 3] = [
    ("vfio", "vfio", "CONFIG_VFIO"),
    (
        "vfio_iommu_type1",
        "vfio_iommu_type1",
        "CONFIG_VFIO_IOMMU_TYPE1",
    ),
    ("vfio_pci", "vfio-pci", "CONFIG_VFIO_PCI"),
];

pub(super) fn check_vfio_modules(
    host: &Host,
    args: &DoctorArgs,
    release: &str,
    config: Option<&KernelConfig>,
    out: &mut Vec<Finding>,
) {
    let (level, without) = need(args);
    let mut missing = Vec::new();
    let mut loadable = Vec::new();
    let mut present = Vec::new();
    for (name, modprobe, option) in VFIO_MODULES {
        match module_state(host, release, config, name, option) {
            ModuleState::Loaded => present.push(format!("{name} loaded")),
            ModuleState::BuiltIn => present.push(format!("{name} built in")),
            ModuleState::Missing => missing.push(format!("{name} ({option} unset)")),
            ModuleState::Loadable | ModuleState::Unknown => loadable.push(modprobe),
        }
    }
    if !missing.is_empty() {
        out.push(finding(
            level,
            "vfio",
            format!(
                "the kernel has no {}: real devices (--vfio) need a kernel with VFIO (Debian's \
                 have it as modules){without}",
                missing.join(", ")
            ),
        ));
    }
    if !loadable.is_empty() {
        out.push(finding(
            level,
            "vfio",
            format!(
                "{} not loaded: modprobe -a {}",
                loadable.join(", "),
                loadable.join(" ")
            ),
        ));
    }
    let container = host.path("/dev/vfio/vfio").exists();
    if missing.is_empty() && loadable.is_empty() {
        if container {
            out.push(finding(
                Level::Ok,
                "vfio",
                format!("{}; /dev/vfio/vfio present", present.join(", ")),
            ));
        } else {
            out.push(finding(
                level,
                "vfio",
                "no /dev/vfio/vfio although VFIO is loaded: the kernel has no VFIO container \
                 (CONFIG_VFIO_CONTAINER unset), which serve --vfio needs",
            ));
        }
    }
}

/// Whether a group member with this driver (None: no driver) leaves the group viable: the kernel
/// refuses a group to user space while a member is bound to a driver that does DMA of its own.
/// Drivers that leave DMA ownership to others: vfio-pci and its variant drivers, pci-stub,
/// pcieport (bridges).
pub fn viable_with(driver: Option<&str>) -> bool {
    match driver {
        None => true,
        Some(d) => d == "pci-stub" || d == "pcieport" || d.contains("vfio"),
    }
}

/// Members of IOMMU group `n` that make it not viable, as `BDF (bound to DRIVER)`.
pub fn group_blockers(host: &Host, n: &str) -> Vec<String> {
    host.entries(&format!("/sys/kernel/iommu_groups/{n}/devices"))
        .into_iter()
        .filter_map(|m| {
            let driver =
                host.link_name(&format!("/sys/kernel/iommu_groups/{n}/devices/{m}/driver"));
            (!viable_with(driver.as_deref()))
                .then(|| format!("{m} (bound to {})", driver.unwrap_or_default()))
        })
        .collect()
}

/// `[vendor:device]` of a PCI device, or empty.
fn pci_id(host: &Host, bdf: &str) -> String {
    let id = |f: &str| {
        host.read(&format!("/sys/bus/pci/devices/{bdf}/{f}"))
            .map(|s| s.trim().trim_start_matches("0x").to_string())
    };
    match (id("vendor"), id("device")) {
        (Some(v), Some(d)) => format!(" [{v}:{d}]"),
        _ => String::new(),
    }
}

/// The group of device `bdf` and whether it is viable, as a finding's level and text. `bdf`
/// itself is not named among the members that block the group when `skip_self` (its own
/// binding is reported apart).
fn group_state(host: &Host, bdf: &str, iommu_on: bool, skip_self: bool) -> (Level, String) {
    let Some(n) = host.link_name(&format!("/sys/bus/pci/devices/{bdf}/iommu_group")) else {
        let why = if iommu_on {
            "the IOMMU does not cover it"
        } else {
            "no IOMMU is enabled (see the iommu line)"
        };
        return (Level::Fail, format!("no IOMMU group: {why}"));
    };
    let blockers: Vec<String> = group_blockers(host, &n)
        .into_iter()
        .filter(|b| !(skip_self && b.starts_with(&format!("{bdf} "))))
        .collect();
    if !blockers.is_empty() {
        return (
            Level::Fail,
            format!(
                "IOMMU group {n} is not viable: {}: bind them to vfio-pci too, or unbind them \
                 (echo BDF > /sys/bus/pci/devices/BDF/driver/unbind)",
                blockers.join(", ")
            ),
        );
    }
    let node = format!("/dev/vfio/{n}");
    if !skip_self && !host.path(&node).exists() {
        return (
            Level::Fail,
            format!("IOMMU group {n} is viable but {node} is missing: is vfio-pci loaded?"),
        );
    }
    (Level::Ok, format!("IOMMU group {n} viable ({node})"))
}

/// Lists the devices bound to vfio-pci.
pub(super) fn check_vfio_pci_devices(host: &Host, iommu_on: bool, out: &mut Vec<Finding>) {
    let driver = "/sys/bus/pci/drivers/vfio-pci";
    if !host.path(driver).is_dir() {
        return;
    }
    let bound: Vec<String> = host
        .entries(driver)
        .into_iter()
        .filter(|e| parse_bdf(e).is_ok())
        .collect();
    if bound.is_empty() {
        out.push(finding(
            Level::Note,
            "vfio-pci",
            "no PCI device is bound to vfio-pci",
        ));
    }
    for bdf in bound {
        let (level, text) = group_state(host, &bdf, iommu_on, false);
        // Only devices given with --vfio decide whether serve works.
        let level = level.min(Level::Warn);
        let id = pci_id(host, &bdf);
        out.push(finding(level, "vfio-pci", format!("{bdf}{id}: {text}")));
    }
}

/// One `--vfio BDF`: exists, on vfio-pci, in a viable group whose file nobody holds. One
/// finding per problem; a single `ok` line when there is none.
pub(super) fn check_vfio_device(host: &Host, bdf: &str, iommu_on: bool) -> Vec<Finding> {
    let topic = format!("--vfio {bdf}");
    let dev = format!("/sys/bus/pci/devices/{bdf}");
    if !host.path(&dev).exists() {
        return vec![finding(
            Level::Fail,
            topic,
            "no such PCI device (see lspci -D)",
        )];
    }
    let mut out = Vec::new();
    let driver = host.link_name(&format!("{dev}/driver"));
    let bound = driver.as_deref() == Some("vfio-pci");
    if !bound {
        let (now, unbind) = match &driver {
            Some(d) => (
                format!("bound to {d}"),
                format!("echo {bdf} > {dev}/driver/unbind; "),
            ),
            None => ("bound to no driver".to_string(), String::new()),
        };
        out.push(finding(
            Level::Fail,
            topic.clone(),
            format!(
                "{now}, not vfio-pci: modprobe vfio-pci; echo vfio-pci > {dev}/driver_override; \
                 {unbind}echo {bdf} > /sys/bus/pci/drivers_probe"
            ),
        ));
    }
    let (level, text) = group_state(host, bdf, iommu_on, !bound);
    if level == Level::Fail {
        out.push(finding(level, topic, text));
        return out;
    }
    if !bound {
        return out;
    }
    let n = host
        .link_name(&format!("{dev}/iommu_group"))
        .unwrap_or_default();
    let node = format!("/dev/vfio/{n}");
    out.push(match host.opens(&node) {
        Ok(()) => finding(Level::Ok, topic, format!("on vfio-pci, {text}, not in use")),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => finding(
            Level::Fail,
            topic,
            format!(
                "{node} is in use: another VFIO user (QEMU, a running uiommufd) holds IOMMU \
                 group {n}; stop it first"
            ),
        ),
        Err(e) => finding(Level::Fail, topic, format!("cannot open {node}: {e}")),
    });
    out
}
