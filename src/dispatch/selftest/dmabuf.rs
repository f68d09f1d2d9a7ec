//! The selftest's dma-buf exporter (IOMMU_TEST_OP_DMABUF_GET / DMABUF_REVOKE) and the import side
//! of IOMMU_IOAS_MAP_FILE on such an fd.
//!
//! The kernel's test exporter hands out a dma-buf over a kernel buffer; here the fd is an open
//! file of our node (bound by `uiommufd launch`) and the memory a memfd the daemon maps. Each
//! IOAS_MAP_FILE of it is an import ([`DmabufImport`]); revoking the exporter kills every import:
//! its areas leave the domains but stay in the IOAS until unmapped, and new imports fail with
//! ENODEV until the exporter is un-revoked.

use crate::iopt::source::{DmabufImport, FileSource};
use crate::iopt::PAGE_SIZE;
use crate::objects::Ioas;
use nix::errno::Errno;
use std::sync::{Arc, Mutex, Weak};

/// The kernel's test exporter refuses more than this.
const MAX_PAGES: u64 = 512;

struct Imports {
    revoked: bool,
    live: Vec<(Weak<DmabufImport>, Weak<Ioas>)>,
}

pub struct TestDmabuf {
    memory: Arc<FileSource>,
    length: u64,
    imports: Mutex<Imports>,
}

impl TestDmabuf {
    /// DMABUF_GET: `length` rounded up to whole pages, 1..=512 pages (EINVAL otherwise).
    pub fn create(length: u64) -> Result<Arc<Self>, Errno> {
        let length = length.next_multiple_of(PAGE_SIZE);
        if length == 0 || length > MAX_PAGES * PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        let fd = nix::sys::memfd::memfd_create(
            c"uiommufd-test-dmabuf",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )?;
        nix::unistd::ftruncate(&fd, length as i64)?;
        let memory = Arc::new(FileSource::private(fd, 0, length));
        Ok(Arc::new(Self {
            memory,
            length,
            imports: Mutex::new(Imports {
                revoked: false,
                live: Vec::new(),
            }),
        }))
    }

    /// A new import of `[start, start + length)` (from the page holding `start`): EINVAL past the
    /// end, ENODEV while revoked.
    pub fn import(&self, start: u64, length: u64) -> Result<Arc<DmabufImport>, Errno> {
        match start.checked_add(length.saturating_sub(1)) {
            Some(last) if last < self.length => {}
            _ => return Err(Errno::EINVAL),
        }
        if self.imports.lock().unwrap().revoked {
            return Err(Errno::ENODEV);
        }
        Ok(Arc::new(DmabufImport::new(
            self.memory.clone(),
            start - start % PAGE_SIZE,
        )))
    }

    /// Records that `import` is mapped in `ioas`, so a revocation can reach its areas.
    pub fn track(&self, import: &Arc<DmabufImport>, ioas: &Arc<Ioas>) {
        let mut im = self.imports.lock().unwrap();
        im.live.retain(|(i, _)| i.strong_count() > 0);
        im.live.push((Arc::downgrade(import), Arc::downgrade(ioas)));
    }

    /// DMABUF_REVOKE: revoking kills every import now mapped; un-revoking lets new ones in.
    pub fn set_revoked(&self, revoked: bool) {
        let victims: Vec<(Arc<DmabufImport>, Arc<Ioas>)> = {
            let mut im = self.imports.lock().unwrap();
            im.revoked = revoked;
            if !revoked {
                return;
            }
            im.live
                .drain(..)
                .filter_map(|(i, o)| Some((i.upgrade()?, o.upgrade()?)))
                .collect()
        };
        for (import, ioas) in victims {
            import.revoke();
            ioas.iopt().unfill_revoked();
        }
    }
}
