//! Emulated VFIO PCI devices served as `vfio/devices/<name>` files of the FUSE mount.
//!
//! # dmacopy
//!
//! A DMA copy engine (`uiommufd serve --device dmacopy[:NAME]`, default name `dmacopy0`):
//!
//! - PCI IDs: vendor 0x1234, device 0xdc01, subsystem 1234:0001, class 0xff0000 (unclassified),
//!   revision 1 ([`config`]). Type-0 header, BAR0 an I/O BAR of 32 bytes, interrupt pin INTA#,
//!   an MSI capability (one vector, 64-bit) at 0x50. Conventional PCI (no PCIe capability).
//! - Registers in BAR0 ([`regs`]): ID, STATUS, source and destination IOVA, length, command.
//!   Every byte moves through the IOAS the device is attached to (an access, `rw` by IOVA).
//! - VFIO: VFIO_DEVICE_BIND_IOMMUFD (the iommufd fd is fetched from the caller with pidfd_getfd
//!   and resolved to its context, see [`crate::dispatch::daemon::context_query`]), ATTACH/DETACH
//!   (IOAS or paging HWPT), GET_INFO (PCI|RESET, 9 regions, 5 IRQs), GET_REGION_INFO (BAR0 and
//!   config at `index << 40`), GET_IRQ_INFO, SET_IRQS (INTx, MSI, request notifier; eventfds
//!   fetched from the caller), RESET; VFIO_DEVICE_FEATURE is ENOTTY and hot reset ENODEV.
//! - Completion interrupt: the MSI vector when MSI is enabled, else INTx (automasked,
//!   level: asserted while STATUS.done is set, unmasked through SET_IRQS).
//!
//! The page tables in front of the device are [`domain::SoftDomain`]s (4 KiB pages, 48-bit
//! IOVA space); IOMMU_GET_HW_INFO and IOMMU_HWPT_ALLOC reach it through `dispatch::hwpt_cmds`.

pub mod cdev;
pub mod config;
pub mod dmacopy;
pub mod domain;
pub mod handout;
pub mod irq;
pub mod legacy_group;
pub mod regs;
pub mod vfio_pci;

use crate::dispatch::daemon::ContextHold;
use crate::dispatch::{Daemon, DeviceOpener, Extensions};
use dmacopy::{ContextResolver, DmaCopy};
use nix::errno::Errno;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, OnceLock, Weak};

/// Default name of a `--device dmacopy` without `:NAME`.
pub const DEFAULT_NAME: &str = "dmacopy0";

/// Parses one `--device` value: `dmacopy` or `dmacopy:NAME`. Returns the device name.
pub fn parse_spec(spec: &str) -> Result<String, String> {
    let (kind, name) = match spec.split_once(':') {
        Some((k, n)) => (k, n),
        None => (spec, DEFAULT_NAME),
    };
    if kind != "dmacopy" {
        return Err(format!("unknown device type {kind:?} (known: dmacopy)"));
    }
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(format!(
            "bad device name {name:?}: 1-64 characters of [A-Za-z0-9._-]"
        ));
    }
    Ok(name.to_string())
}

/// Resolves through the daemon (set once the daemon exists).
struct DaemonResolver(OnceLock<Weak<Daemon>>);

impl ContextResolver for DaemonResolver {
    fn resolve(&self, file: BorrowedFd<'_>) -> Result<ContextHold, Errno> {
        let daemon = self.0.get().and_then(Weak::upgrade).ok_or(Errno::EBADFD)?;
        daemon.context_of_file(file)
    }
}

/// A daemon serving `names` as dmacopy devices. Duplicate names are an error.
pub fn daemon_with_dmacopy(ext: Extensions, names: &[String]) -> Result<Arc<Daemon>, String> {
    daemon_with_devices(ext, names, Vec::new()).map(|(d, _)| d)
}

/// The real devices of a daemon, by name (for [`handout::serve`]).
pub type RealDevices = HashMap<String, Arc<vfio_pci::VfioPci>>;

/// What a daemon's hand-out socket serves ([`handout::serve`]), but for the mount.
pub struct HandOutParts {
    pub devices: RealDevices,
    pub groups: Arc<legacy_group::LegacyGroups>,
}

/// A daemon serving `names` as dmacopy devices and `hosts` (real devices taken with
/// `--vfio`) under their PCI addresses, and what its hand-out socket needs. Duplicate names are
/// an error.
pub fn daemon_with_devices(
    ext: Extensions,
    names: &[String],
    hosts: Vec<Arc<crate::backends::vfio::HostDevice>>,
) -> Result<(Arc<Daemon>, HandOutParts), String> {
    let resolver = Arc::new(DaemonResolver(OnceLock::new()));
    let mut devices: HashMap<String, Node> = HashMap::new();
    let mut all = Vec::new();
    let mut emulated = Vec::new();
    for n in names {
        let dev = DmaCopy::new(n, resolver.clone());
        emulated.push(dev.clone());
        let node = Node::Emulated(dev);
        if devices.insert(n.clone(), node).is_some() {
            return Err(format!("device name {n:?} given twice"));
        }
        all.push(n.clone());
    }
    let mut real = RealDevices::new();
    for h in hosts {
        let n = h.bdf.clone();
        let dev = vfio_pci::VfioPci::new(h, resolver.clone());
        real.insert(n.clone(), dev.clone());
        if devices.insert(n.clone(), Node::Real(dev)).is_some() {
            return Err(format!("device name {n:?} given twice"));
        }
        all.push(n);
    }
    let opener: DeviceOpener = Arc::new(move |name: &str| match devices.get(name) {
        Some(Node::Emulated(d)) => Ok(d.open()),
        Some(Node::Real(d)) => Ok(d.open()),
        None => Err(Errno::ENODEV),
    });
    let daemon = Daemon::with_devices(ext, all, opener);
    let _ = resolver.0.set(Arc::downgrade(&daemon));
    let groups = legacy_group::LegacyGroups::new(resolver);
    let (emulated, reals) = (emulated, real.clone());
    daemon.set_device_bindings(Arc::new(move || {
        let mut v: Vec<(String, Option<(u64, u32)>)> = emulated
            .iter()
            .map(|d| (d.name().to_string(), d.bound_to()))
            .chain(reals.iter().map(|(n, d)| (n.clone(), d.bound_to())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }));
    Ok((
        daemon,
        HandOutParts {
            devices: real,
            groups,
        },
    ))
}

/// A device node's device.
enum Node {
    Emulated(Arc<DmaCopy>),
    Real(Arc<vfio_pci::VfioPci>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse_spec("dmacopy").unwrap(), "dmacopy0");
        assert_eq!(parse_spec("dmacopy:a-1").unwrap(), "a-1");
        assert!(parse_spec("edu").is_err());
        assert!(parse_spec("dmacopy:").is_err());
        assert!(parse_spec("dmacopy:a/b").is_err());
        assert!(parse_spec("dmacopy:..").is_err());
    }
}
