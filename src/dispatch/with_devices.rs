//! A daemon with devices: the emulated and real device nodes served beside the iommufd nodes,
//! resolving the contexts callers name through this daemon (the devices layer sees only
//! [`crate::devices::context`]).

use super::{Daemon, DeviceOpener, Extensions};
use crate::devices::context::{ContextHold, ContextResolver};
use crate::devices::dmacopy::DmaCopy;
use crate::devices::{legacy_group, vfio_pci, RealDevices};
use nix::errno::Errno;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, OnceLock, Weak};

/// Resolves through the daemon (set once the daemon exists).
struct DaemonResolver(OnceLock<Weak<Daemon>>);

impl ContextResolver for DaemonResolver {
    fn resolve(&self, file: BorrowedFd<'_>) -> Result<ContextHold, Errno> {
        let daemon = self.0.get().and_then(Weak::upgrade).ok_or(Errno::EBADFD)?;
        daemon
            .context_of_file(file)
            .map(super::daemon::ContextHold::boxed)
    }
}

/// A daemon serving `names` as dmacopy devices. Duplicate names are an error.
pub fn daemon_with_dmacopy(ext: Extensions, names: &[String]) -> Result<Arc<Daemon>, String> {
    daemon_with_devices(ext, names, Vec::new()).map(|(d, _)| d)
}

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
