//! The selftest's mock IOMMU driver: the mock device, which mock domains it makes and what it
//! accepts, its nested domains and its vIOMMU.

use crate::backends::mock::{MockDomain, MockKind, MockNested};
use crate::backends::Domain;
use crate::objects::device::Attachment;
use crate::objects::viommu::{Vdevice, Viommu};
use crate::objects::{
    Context, DeviceBackend, HwptPaging, NestedDomain, UserArray, UserData, ViommuDriver,
};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::mem::size_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use uiommufd_uapi::iommufd::{
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING, IOMMU_HWPT_ALLOC_NEST_PARENT, IOMMU_HWPT_ALLOC_PASID,
    IOMMU_HW_CAP_DIRTY_TRACKING, IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED,
};
use uiommufd_uapi::selftest::*;

/// The mock domain behind `domain`, if it is one.
pub fn as_mock(domain: &Arc<dyn Domain>) -> Option<Arc<MockDomain>> {
    domain.clone().as_any_arc()?.downcast::<MockDomain>().ok()
}

/// A fresh mock paging domain (IOMMU_HWPT_ALLOC flags already validated).
pub fn new_mock_domain(kind: MockKind, flags: u32) -> Arc<MockDomain> {
    Arc::new(if flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0 {
        MockDomain::with_dirty_ops(kind)
    } else {
        MockDomain::new(kind)
    })
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

    /// A paging domain of `kind`: EOPNOTSUPP for unknown flags or dirty tracking on a device
    /// without it.
    pub fn paging_domain(&self, flags: u32, kind: MockKind) -> Result<Arc<MockDomain>, Errno> {
        if flags & !PAGING_FLAGS != 0
            || (flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING != 0 && !self.dirty_capable())
        {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(new_mock_domain(kind, flags))
    }
}

/// The mock's PASID width as the u8 of the device info.
#[expect(clippy::cast_possible_truncation, reason = "a small selftest constant")]
const PASID_WIDTH_U8: u8 = MOCK_PASID_WIDTH as u8;

/// The mock's IOMMU instance: every mock device sits behind the same one.
const MOCK_IOMMU: u64 = u64::from_be_bytes(*b"mockiomm");

/// Size of `iommu_hwpt_selftest` up to its mandatory `iotlb`.
const HWPT_SELFTEST_MIN: usize = size_of::<u32>();

/// The mock's nested domain from IOMMU_HWPT_ALLOC's driver data (EOPNOTSUPP for another type).
fn nested_domain(data: &UserData) -> Result<Box<dyn NestedDomain>, Errno> {
    if data.ty != IOMMU_HWPT_DATA_SELFTEST {
        return Err(Errno::EOPNOTSUPP);
    }
    let cfg: iommu_hwpt_selftest = data.read(HWPT_SELFTEST_MIN)?;
    Ok(Box::new(MockNested::new(cfg.iotlb)))
}

impl DeviceBackend for MockDev {
    fn alloc_domain(&self, flags: u32) -> Result<Arc<dyn Domain>, Errno> {
        Ok(self.paging_domain(flags, MockKind::Normal)?)
    }

    /// Driver data `iommu_hwpt_selftest` picks the page table's kind.
    fn alloc_paging(&self, flags: u32, data: &UserData) -> Result<Arc<dyn Domain>, Errno> {
        let mut kind = MockKind::Normal;
        if !data.is_empty() {
            if data.ty != IOMMU_HWPT_DATA_SELFTEST {
                return Err(Errno::EOPNOTSUPP);
            }
            let cfg: iommu_hwpt_selftest = data.read(HWPT_SELFTEST_MIN)?;
            kind = MockKind::from_pagetable_type(cfg.pagetable_type).ok_or(Errno::EOPNOTSUPP)?;
        }
        Ok(self.paging_domain(flags, kind)?)
    }

    fn dirty_tracking(&self) -> bool {
        self.dirty_capable()
    }

    fn nesting(&self) -> bool {
        true
    }

    fn owns_domain(&self, domain: &Arc<dyn Domain>) -> bool {
        as_mock(domain).is_some()
    }

    fn alloc_nested(
        &self,
        _parent: &Arc<dyn Domain>,
        _flags: u32,
        data: &UserData,
    ) -> Result<Box<dyn NestedDomain>, Errno> {
        nested_domain(data)
    }

    fn iommu_instance(&self) -> Option<u64> {
        Some(MOCK_IOMMU)
    }

    fn viommu_type(&self, ty: u32) -> bool {
        ty == IOMMU_VIOMMU_TYPE_SELFTEST
    }

    fn viommu_alloc(
        &self,
        _ty: u32,
        _hwpt: &Arc<HwptPaging>,
        data: &UserData,
    ) -> Result<Box<dyn ViommuDriver>, Errno> {
        if !data.is_empty() {
            // The mock's driver data asks for an mmap of the iommufd file (a loopback page),
            // which this daemon cannot offer through FUSE; refuse rather than hand out a dead
            // offset.
            // The kernel's mock copies up to `out_data` (Linux 7.2): shorter data is EINVAL.
            let min = std::mem::offset_of!(iommu_viommu_selftest, out_data) + size_of::<u32>();
            let _: iommu_viommu_selftest = data.read(min)?;
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(Box::new(MockViommu))
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn check_attach(&self, hwpt: &HwptPaging) -> Result<(), Errno> {
        if hwpt.domain.has_dirty_ops() && !self.dirty_capable() {
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

    fn hw_info(&self) -> Option<(u32, Vec<u8>, u64, u8)> {
        let info = iommu_test_hw_info {
            flags: 0,
            test_reg: IOMMU_HW_INFO_SELFTEST_REGVAL,
        };
        let mut caps = IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED;
        if self.dirty_capable() {
            caps |= IOMMU_HW_CAP_DIRTY_TRACKING;
        }
        let pasid_log2 = if self.pasid_capable() {
            PASID_WIDTH_U8
        } else {
            0
        };
        let data = zerocopy::IntoBytes::as_bytes(&info).to_vec();
        Some((IOMMU_HW_INFO_TYPE_SELFTEST, data, caps, pasid_log2))
    }

    fn name(&self) -> String {
        format!("mock(flags={:#x})", self.flags)
    }
}

/// The mock's stage-1 IOTLB takes `iommu_hwpt_invalidate_selftest` entries.
impl NestedDomain for MockNested {
    fn cache_invalidate_user(&self, array: &UserArray, done: &mut u32) -> Result<(), Errno> {
        if array.ty != IOMMU_HWPT_INVALIDATE_DATA_SELFTEST {
            return Err(Errno::EINVAL);
        }
        for i in 0..array.entry_num {
            let inv: iommu_hwpt_invalidate_selftest = array.entry(i, 2 * size_of::<u32>())?;
            self.invalidate(inv.flags, inv.iotlb_id)?;
            *done += 1;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The mock's vIOMMU (IOMMU_VIOMMU_TYPE_SELFTEST): nested domains like the mock device's, device
/// cache invalidation by virtual ID, IOMMU_HW_QUEUE_TYPE_SELFTEST queues.
struct MockViommu;

impl ViommuDriver for MockViommu {
    fn alloc_domain_nested(
        &self,
        _flags: u32,
        data: &UserData,
    ) -> Result<Box<dyn NestedDomain>, Errno> {
        nested_domain(data)
    }

    /// The whole array is read before any entry runs.
    fn cache_invalidate(
        &self,
        ctx: &Context,
        viommu: &Viommu,
        array: &UserArray,
        done: &mut u32,
    ) -> Result<(), Errno> {
        if array.entry_num == 0 && array.ty == IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST {
            return Ok(());
        }
        if array.ty != IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST || array.entry_num == 0 {
            return Err(Errno::EINVAL);
        }
        // Grows with what was really read: entry_num is the caller's word (up to 4G entries).
        let mut reqs = Vec::with_capacity((array.entry_num as usize).min(4096));
        for i in 0..array.entry_num {
            let r: iommu_viommu_invalidate_selftest = array.entry_zero_tail(i, 0)?;
            reqs.push(r);
        }
        for r in reqs {
            if r.flags & !IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            if r.cache_id > MOCK_DEV_CACHE_ID_MAX {
                return Err(Errno::EINVAL);
            }
            let vdev_obj = viommu
                .vdevs
                .lock()
                .unwrap()
                .get(&(r.vdev_id as u64))
                .copied()
                .ok_or(Errno::EINVAL)?;
            let vdev = ctx.get_as::<Vdevice>(vdev_obj).map_err(|_| Errno::EINVAL)?;
            let mock = vdev
                .device
                .backend
                .as_any()
                .and_then(|a| a.downcast_ref::<MockDev>())
                .ok_or(Errno::EINVAL)?;
            if r.flags & IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                mock.invalidate_cache(None);
            } else {
                mock.invalidate_cache(Some(r.cache_id));
            }
            *done += 1;
        }
        Ok(())
    }

    fn hw_queue_type(&self, ty: u32) -> bool {
        ty == IOMMU_HW_QUEUE_TYPE_SELFTEST
    }

    /// Indexes below IOMMU_TEST_HW_QUEUE_MAX, allocated in order: each queue depends on the one
    /// of the index below (EIO without it).
    fn hw_queue_init(
        &self,
        queues: &BTreeMap<u32, u32>,
        index: u32,
        _base_pa: u64,
    ) -> Result<Option<u32>, Errno> {
        if index >= IOMMU_TEST_HW_QUEUE_MAX {
            return Err(Errno::EINVAL);
        }
        if queues.contains_key(&index) {
            return Err(Errno::EEXIST);
        }
        if index == 0 {
            return Ok(None);
        }
        queues
            .get(&(index - 1))
            .copied()
            .map(Some)
            .ok_or(Errno::EIO)
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    #[test]
    fn mock_domains_are_recognised_and_no_other() {
        let d = new_mock_domain(MockKind::Normal, 0);
        let dynd: Arc<dyn Domain> = d.clone();
        assert!(as_mock(&dynd).is_some_and(|m| Arc::ptr_eq(&m, &d)));
        let geometry = crate::backends::vfio::domain::Geometry::from_info(&Default::default());
        let other: Arc<dyn Domain> = Arc::new(crate::backends::vfio::VfioDomain::new(geometry));
        assert!(as_mock(&other).is_none());
    }

    #[test]
    fn flags_validated() {
        assert_eq!(MockDev::new(1 << 1).unwrap_err(), Errno::EINVAL);
        let nodirty = MockDev::new(MOCK_FLAGS_DEVICE_NO_DIRTY).unwrap();
        assert_eq!(
            nodirty
                .paging_domain(IOMMU_HWPT_ALLOC_DIRTY_TRACKING, MockKind::Normal)
                .unwrap_err(),
            Errno::EOPNOTSUPP
        );
        assert_eq!(nodirty.cache(3), Some(IOMMU_TEST_DEV_CACHE_DEFAULT));
        assert_eq!(nodirty.cache(4), None);
    }

    #[test]
    fn hw_info_reports_the_device_flags() {
        let caps = |flags| {
            let (ty, data, caps, log2) = MockDev::new(flags).unwrap().hw_info().unwrap();
            assert_eq!(ty, IOMMU_HW_INFO_TYPE_SELFTEST);
            let info = iommu_test_hw_info::read_from_bytes(&data).unwrap();
            assert_eq!(info.test_reg, IOMMU_HW_INFO_SELFTEST_REGVAL);
            (caps, log2)
        };
        let ats = IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED;
        assert_eq!(caps(0), (ats | IOMMU_HW_CAP_DIRTY_TRACKING, 0));
        assert_eq!(
            caps(MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_PASID),
            (ats, PASID_WIDTH_U8)
        );
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
