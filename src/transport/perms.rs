//! Who may open the nodes: mode, owner and group of each node, as a character device has them.
//!
//! Defaults follow the kernel's nodes: `/dev/iommu` 0660 root:root, `/dev/vfio/vfio` 0666, VFIO
//! device nodes 0600 root:root. The FUSE mount uses `default_permissions`, so the kernel checks
//! opens against these attributes, and chmod/chown on the files change them (the kernel checks that
//! the caller may; we also refuse anyone but root and the owner). In CUSE mode the same settings are
//! applied to the character devices the kernel creates under /dev.

use std::fmt;
use std::str::FromStr;

/// Mode bits, owner and group of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Perm {
    pub const fn root(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}:{}:{}", self.mode, self.uid, self.gid)
    }
}

/// `MODE[:USER[:GROUP]]`: octal mode, user and group by name or number (default root).
impl FromStr for Perm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let mode = parts.next().unwrap_or_default();
        let mode = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("bad mode {mode:?}: octal, at most 0777"))?;
        let uid = match parts.next() {
            None | Some("") => 0,
            Some(u) => user_id(u)?,
        };
        let gid = match parts.next() {
            None | Some("") => 0,
            Some(g) => group_id(g)?,
        };
        if parts.next().is_some() {
            return Err(format!("{s:?}: expected MODE[:USER[:GROUP]]"));
        }
        Ok(Self { mode, uid, gid })
    }
}

fn user_id(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(format!("unknown user {name:?}")),
    }
}

fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(format!("unknown group {name:?}")),
    }
}

/// Permissions of every node kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct NodePerms {
    /// Mode and owner of the iommu node: MODE[:USER[:GROUP]] (the kernel's /dev/iommu is 0660 root:root).
    #[arg(
        long = "iommu-perm",
        value_name = "MODE[:USER[:GROUP]]",
        default_value = "0660"
    )]
    pub iommu: Perm,
    /// Mode and owner of the vfio/vfio container node (the kernel's is 0666).
    #[arg(
        long = "vfio-perm",
        value_name = "MODE[:USER[:GROUP]]",
        default_value = "0666"
    )]
    pub vfio: Perm,
    /// Mode and owner of each vfio/devices/NAME node (the kernel's VFIO cdevs are 0600 root:root).
    #[arg(
        long = "device-perm",
        value_name = "MODE[:USER[:GROUP]]",
        default_value = "0600"
    )]
    pub device: Perm,
}

impl Default for NodePerms {
    fn default() -> Self {
        Self {
            iommu: Perm::root(0o660),
            vfio: Perm::root(0o666),
            device: Perm::root(0o600),
        }
    }
}

impl NodePerms {
    /// Every node open to everyone (tests that drive the daemon as unprivileged users).
    pub fn open_to_all() -> Self {
        Self {
            iommu: Perm::root(0o666),
            vfio: Perm::root(0o666),
            device: Perm::root(0o666),
        }
    }
}

/// Applies `perm` to an existing path (a CUSE character device under /dev).
pub fn apply_to_path(path: &std::path::Path, perm: Perm) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(perm.uid), Some(perm.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm.mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("0660".parse::<Perm>().unwrap(), Perm::root(0o660));
        assert_eq!(
            "600:0:5".parse::<Perm>().unwrap(),
            Perm {
                mode: 0o600,
                uid: 0,
                gid: 5
            }
        );
        assert_eq!("0644:root:root".parse::<Perm>().unwrap(), Perm::root(0o644));
        assert!("0999".parse::<Perm>().is_err());
        assert!("1777".parse::<Perm>().is_err());
        assert!("0600:no-such-user-here".parse::<Perm>().is_err());
        assert!("0600:0:0:0".parse::<Perm>().is_err());
        assert_eq!(Perm::root(0o660).to_string(), "0660:0:0");
    }
}
