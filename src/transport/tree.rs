//! The static FUSE tree: `iommu`, `vfio/vfio`, `vfio/devices/<name>` and `status`.
//!
//! Inode numbers are fixed at start; the device list is the service's at that moment.

use super::perms::{NodePerms, Perm};
use super::wire::Attr;
use crate::dispatch::NodeKind;
use nix::errno::Errno;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const ROOT: u64 = 1;
pub const IOMMU: u64 = 2;
pub const VFIO_DIR: u64 = 3;
pub const VFIO_CONTAINER: u64 = 4;
pub const DEVICES_DIR: u64 = 5;
pub const STATUS: u64 = 6;
/// Device `i` of the list has inode `FIRST_DEVICE + i`.
pub const FIRST_DEVICE: u64 = 16;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
/// d_type values for READDIR.
pub const DT_DIR: u32 = 4;
pub const DT_REG: u32 = 8;

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// A file whose opens go to the service.
    Service(NodeKind),
    /// The read-only status file.
    Status,
}

/// The whole tree.
#[derive(Debug, Clone)]
pub struct Tree {
    devices: Vec<String>,
    /// Mode, owner and group of each file that opens into the service, changed by chmod/chown.
    perms: Arc<Mutex<HashMap<u64, Perm>>>,
}

impl Tree {
    /// The tree with the default (kernel-like) permissions.
    pub fn new(devices: Vec<String>) -> Self {
        Self::with_perms(devices, NodePerms::default())
    }

    pub fn with_perms(devices: Vec<String>, node_perms: NodePerms) -> Self {
        // Names that cannot be path components are left out rather than served wrongly.
        let devices = devices
            .into_iter()
            .filter(|n| {
                !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
            })
            .collect::<Vec<String>>();
        let mut perms =
            HashMap::from([(IOMMU, node_perms.iommu), (VFIO_CONTAINER, node_perms.vfio)]);
        for i in 0..devices.len() {
            perms.insert(FIRST_DEVICE + i as u64, node_perms.device);
        }
        Self {
            devices,
            perms: Arc::new(Mutex::new(perms)),
        }
    }

    fn perm(&self, ino: u64) -> Perm {
        self.perms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .copied()
            .unwrap_or(Perm::root(0o600))
    }

    /// chmod/chown of a service file by user `caller` (the request's fsuid): only root and the
    /// owner may change anything (the kernel, with `default_permissions`, has checked already that
    /// the caller may do this particular change); only root gives a file away. Other files: EPERM.
    pub fn set_perm(
        &self,
        ino: u64,
        caller: u32,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let mut perms = self.perms.lock().unwrap_or_else(|p| p.into_inner());
        let p = perms.get_mut(&ino).ok_or(Errno::EPERM)?;
        if caller != 0 && caller != p.uid {
            return Err(Errno::EPERM);
        }
        if caller != 0 && uid.is_some_and(|u| u != p.uid) {
            return Err(Errno::EPERM);
        }
        if let Some(m) = mode {
            p.mode = m & 0o777;
        }
        if let Some(u) = uid {
            p.uid = u;
        }
        if let Some(g) = gid {
            p.gid = g;
        }
        Ok(())
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT | VFIO_DIR | DEVICES_DIR => Some(Node::Dir),
            IOMMU => Some(Node::Service(NodeKind::Iommu)),
            VFIO_CONTAINER => Some(Node::Service(NodeKind::VfioContainer)),
            STATUS => Some(Node::Status),
            _ => {
                let i = usize::try_from(ino.checked_sub(FIRST_DEVICE)?).ok()?;
                self.devices
                    .get(i)
                    .map(|n| Node::Service(NodeKind::Device(n.clone())))
            }
        }
    }

    /// Children of a directory: (inode, d_type, name), without `.` and `..`.
    pub fn children(&self, dir: u64) -> Option<Vec<(u64, u32, &[u8])>> {
        Some(match dir {
            ROOT => vec![
                (IOMMU, DT_REG, b"iommu".as_slice()),
                (VFIO_DIR, DT_DIR, b"vfio".as_slice()),
                (STATUS, DT_REG, b"status".as_slice()),
            ],
            VFIO_DIR => vec![
                (VFIO_CONTAINER, DT_REG, b"vfio".as_slice()),
                (DEVICES_DIR, DT_DIR, b"devices".as_slice()),
            ],
            DEVICES_DIR => self
                .devices
                .iter()
                .enumerate()
                .map(|(i, n)| (FIRST_DEVICE + i as u64, DT_REG, n.as_bytes()))
                .collect(),
            _ => return None,
        })
    }

    pub fn parent(&self, dir: u64) -> u64 {
        match dir {
            DEVICES_DIR => VFIO_DIR,
            _ => ROOT,
        }
    }

    pub fn lookup(&self, dir: u64, name: &[u8]) -> Option<u64> {
        self.children(dir)?
            .into_iter()
            .find(|(_, _, n)| *n == name)
            .map(|(ino, _, _)| ino)
    }

    /// Attributes of an inode; `status_len` is the current size of the status text.
    pub fn attr(&self, ino: u64, status_len: u64) -> Option<Attr> {
        let (mode, nlink, size, perm) = match self.node(ino)? {
            Node::Dir => (S_IFDIR | 0o755, 2, 0, Perm::root(0o755)),
            Node::Service(_) => {
                let p = self.perm(ino);
                (S_IFREG | p.mode, 1, 0, p)
            }
            Node::Status => (S_IFREG | 0o444, 1, status_len, Perm::root(0o444)),
        };
        Some(Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            mode,
            nlink,
            uid: perm.uid,
            gid: perm.gid,
            blksize: 4096,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_shape() {
        let t = Tree::new(vec!["edu0".into(), "bad/name".into(), "..".into()]);
        assert_eq!(t.lookup(ROOT, b"iommu"), Some(IOMMU));
        assert_eq!(t.lookup(VFIO_DIR, b"vfio"), Some(VFIO_CONTAINER));
        assert_eq!(t.lookup(DEVICES_DIR, b"edu0"), Some(FIRST_DEVICE));
        assert_eq!(t.lookup(DEVICES_DIR, b"bad/name"), None);
        assert_eq!(
            t.node(FIRST_DEVICE),
            Some(Node::Service(NodeKind::Device("edu0".into())))
        );
        assert_eq!(t.node(FIRST_DEVICE + 1), None);
        assert_eq!(t.node(u64::MAX), None);
        assert_eq!(t.node(0), None);
        assert_eq!(t.lookup(IOMMU, b"x"), None);
        assert_eq!(t.attr(STATUS, 5).unwrap().size, 5);
        assert_eq!(t.attr(IOMMU, 0).unwrap().mode, S_IFREG | 0o660);
        assert_eq!(t.attr(VFIO_CONTAINER, 0).unwrap().mode, S_IFREG | 0o666);
        assert_eq!(t.attr(FIRST_DEVICE, 0).unwrap().mode, S_IFREG | 0o600);
    }

    #[test]
    fn chmod_and_chown() {
        let t = Tree::new(vec![]);
        assert_eq!(
            t.set_perm(IOMMU, 1000, Some(0o666), None, None),
            Err(Errno::EPERM)
        );
        t.set_perm(IOMMU, 0, None, Some(1000), Some(1000)).unwrap();
        t.set_perm(IOMMU, 1000, Some(0o600), None, None).unwrap();
        let a = t.attr(IOMMU, 0).unwrap();
        assert_eq!((a.mode, a.uid, a.gid), (S_IFREG | 0o600, 1000, 1000));
        assert_eq!(
            t.set_perm(IOMMU, 1000, None, Some(0), None),
            Err(Errno::EPERM)
        );
        assert_eq!(
            t.set_perm(ROOT, 0, Some(0o777), None, None),
            Err(Errno::EPERM)
        );
        assert_eq!(
            t.set_perm(STATUS, 0, Some(0o777), None, None),
            Err(Errno::EPERM)
        );
    }
}
