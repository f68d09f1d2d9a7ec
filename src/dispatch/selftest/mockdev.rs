//! The selftest's mock device: which mock domains it makes and what it accepts.

use crate::backends::mock::{MockDomain, MockKind};
use crate::backends::Domain;
use crate::objects::device::Attachment;
use crate::objects::{DeviceBackend, HwptPaging};
use nix::errno::Errno;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use uiommufd_uapi::iommufd::{
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING, IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HWPT_ALLOC_PASID,
};
use uiommufd_uapi::selftest::{
    IOMMU_TEST_DEV_CACHE_DEFAULT, IOMMU_TEST_PASID_RESERVED, MOCK_DEV_CACHE_NUM,
    MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_PASID, MOCK_PASID_WIDTH,
};

/// Every mock paging domain made here, so a HWPT's `Arc<dyn Domain>` can be recognised as one.
static MOCKS: Mutex<Vec<Weak<MockDomain>>> = Mutex::new(Vec::new());

fn register(d: &Arc<MockDomain>) {
    let mut m = MOCKS.lock().unwrap_or_else(|e| e.into_inner());
    m.retain(|w| w.strong_count() > 0);
    m.push(Arc::downgrade(d));
}

/// The mock domain behind `domain`, if it is one.
pub fn as_mock(domain: &Arc<dyn Domain>) -> Option<Arc<MockDomain>> {
    let p = Arc::as_ptr(domain) as *const ();
    MOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .find(|m| Arc::as_ptr(m) as *const () == p)
}

/// A fresh mock paging domain (IOMMU_HWPT_ALLOC flags already validated).
pub fn new_mock_domain(kind: MockKind, flags: u32) -> Arc<MockDomain> {
    let d = Arc::new(if flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0 {
        MockDomain::with_dirty_ops(kind)
    } else {
        MockDomain::new(kind)
    });
    register(&d);
    d
}

/// Flags a mock paging domain accepts.
pub const PAGING_FLAGS: u32 =
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_PASID;

/// A mock device (`mock_dev` of the kernel's selftest driver).
#[derive(Debug)]
pub struct MockDev {
    pub flags: u32,
    cache: Mutex<[u32; MOCK_DEV_CACHE_NUM as usize]>,
    /// Armed by a switch of [`IOMMU_TEST_PASID_RESERVED`] to a page table: the next such switch
    /// fails (ENOMEM), so the core's rollback can be tested. Blocking disarms it.
    pasid_fake_error: AtomicBool,
}

impl MockDev {
    /// EINVAL for unknown device flags.
    pub fn new(flags: u32) -> Result<Self, Errno> {
        if flags & !(MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_PASID) != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(Self {
            flags,
            cache: Mutex::new([IOMMU_TEST_DEV_CACHE_DEFAULT; MOCK_DEV_CACHE_NUM as usize]),
            pasid_fake_error: AtomicBool::new(false),
        })
    }

    /// Whether the device's IOMMU can track dirty pages.
    pub fn dirty_capable(&self) -> bool {
        self.flags & MOCK_FLAGS_DEVICE_NO_DIRTY == 0
    }

    pub fn pasid_capable(&self) -> bool {
        self.flags & MOCK_FLAGS_DEVICE_PASID != 0
    }

    /// Clears device cache entry `id`, or all of them (vIOMMU cache invalidation).
    pub fn invalidate_cache(&self, id: Option<u32>) {
        let mut cache = self.cache.lock().unwrap();
        match id {
            Some(i) => {
                if let Some(c) = cache.get_mut(i as usize) {
                    *c = 0;
                }
            }
            None => cache.fill(0),
        }
    }

    /// Device cache entry `id`, None when out of range.
    pub fn cache(&self, id: u32) -> Option<u32> {
        self.cache.lock().unwrap().get(id as usize).copied()
    }

    /// A paging domain for IOMMU_HWPT_ALLOC: EOPNOTSUPP for unknown flags or dirty tracking on
    /// a device without it.
    pub fn alloc_paging(&self, flags: u32, kind: MockKind) -> Result<Arc<MockDomain>, Errno> {
        if flags & !PAGING_FLAGS != 0
            || (flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0 && !self.dirty_capable())
        {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(new_mock_domain(kind, flags))
    }
}

impl DeviceBackend for MockDev {
    fn alloc_domain(&self, flags: u32) -> Result<Arc<dyn Domain>, Errno> {
        Ok(self.alloc_paging(flags, MockKind::Normal)?)
    }

    fn check_attach(&self, hwpt: &HwptPaging) -> Result<(), Errno> {
        let dirty = as_mock(&hwpt.domain).is_some_and(|m| m.has_dirty_ops());
        if dirty && !self.dirty_capable() {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    fn pasid_ops(&self) -> bool {
        true
    }

    fn max_pasids(&self) -> u32 {
        if self.pasid_capable() {
            1 << MOCK_PASID_WIDTH
        } else {
            0
        }
    }

    fn set_dev_pasid(&self, pasid: u32, hwpt: Option<&Attachment>) -> Result<(), Errno> {
        if pasid == IOMMU_TEST_PASID_RESERVED {
            if hwpt.is_none() {
                self.pasid_fake_error.store(false, Ordering::SeqCst);
            } else if self.pasid_fake_error.swap(true, Ordering::SeqCst) {
                self.pasid_fake_error.store(false, Ordering::SeqCst);
                return Err(Errno::ENOMEM);
            }
        }
        Ok(())
    }

    fn name(&self) -> String {
        format!("mock(flags={:#x})", self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_mock_domains_only() {
        let d = new_mock_domain(MockKind::Normal, 0);
        let dynd: Arc<dyn Domain> = d.clone();
        assert!(as_mock(&dynd).is_some());
        let other: Arc<dyn Domain> = Arc::new(MockDomain::new(MockKind::Normal));
        assert!(as_mock(&other).is_none());
    }

    #[test]
    fn flags_validated() {
        assert_eq!(MockDev::new(1 << 1).unwrap_err(), Errno::EINVAL);
        let nodirty = MockDev::new(MOCK_FLAGS_DEVICE_NO_DIRTY).unwrap();
        assert_eq!(
            nodirty
                .alloc_paging(IOMMU_HWPT_ALLOC_DIRTY_TRACKING, MockKind::Normal)
                .unwrap_err(),
            Errno::EOPNOTSUPP
        );
        assert_eq!(nodirty.cache(3), Some(IOMMU_TEST_DEV_CACHE_DEFAULT));
        assert_eq!(nodirty.cache(4), None);
    }

    #[test]
    fn reserved_pasid_fails_every_other_switch() {
        use crate::objects::{Context, Ioas, Object};
        let ctx = Context::new();
        let ioas_id = ctx.insert(Object::Ioas(Ioas::new())).unwrap();
        let d: Arc<dyn Domain> = new_mock_domain(MockKind::Normal, 0);
        let (hwpt_id, hwpt) = HwptPaging::alloc(&ctx, ioas_id, d, 0, false).unwrap();
        let att = Attachment {
            hwpt_id,
            hwpt,
            nested: None,
            viommu_nested: None,
        };
        let dev = MockDev::new(MOCK_FLAGS_DEVICE_PASID).unwrap();
        assert_eq!(dev.max_pasids(), 1 << MOCK_PASID_WIDTH);
        assert_eq!(MockDev::new(0).unwrap().max_pasids(), 0);
        let r = IOMMU_TEST_PASID_RESERVED;
        dev.set_dev_pasid(r, Some(&att)).unwrap();
        assert_eq!(dev.set_dev_pasid(r, Some(&att)), Err(Errno::ENOMEM));
        dev.set_dev_pasid(r, Some(&att)).unwrap();
        dev.set_dev_pasid(r, None).unwrap();
        dev.set_dev_pasid(r, Some(&att)).unwrap();
        dev.set_dev_pasid(r - 1, Some(&att)).unwrap();
        dev.set_dev_pasid(r - 1, Some(&att)).unwrap();
    }
}
