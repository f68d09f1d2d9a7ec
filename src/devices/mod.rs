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
//!   and resolved to its context, see [`crate::caller::context_query`]), ATTACH/DETACH
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
pub mod context;
pub mod dmacopy;
pub mod domain;
pub mod handout;
pub mod irq;
pub mod legacy_group;
pub mod regs;
pub mod vfio_pci;

use std::collections::HashMap;
use std::sync::Arc;

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

/// The real devices of a daemon, by name (for [`handout::serve`]).
pub type RealDevices = HashMap<String, Arc<vfio_pci::VfioPci>>;

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
