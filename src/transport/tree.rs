//! The static FUSE tree: `iommu`, `vfio/vfio`, `vfio/devices/<name>` and `status`.
//!
//! Inode numbers are fixed at start; the device list is the service's at that moment.

use super::wire::Attr;
use crate::dispatch::NodeKind;

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
}

impl Tree {
    pub fn new(devices: Vec<String>) -> Self {
        // Names that cannot be path components are left out rather than served wrongly.
        let devices = devices
            .into_iter()
            .filter(|n| {
                !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
            })
            .collect();
        Self { devices }
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
        let (mode, nlink, size) = match self.node(ino)? {
            Node::Dir => (S_IFDIR | 0o755, 2, 0),
            Node::Service(_) => (S_IFREG | 0o666, 1, 0),
            Node::Status => (S_IFREG | 0o444, 1, status_len),
        };
        Some(Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            mode,
            nlink,
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
    }
}
