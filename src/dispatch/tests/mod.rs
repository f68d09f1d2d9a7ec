//! In-process unit tests of the HWPT, vIOMMU and object-fd commands: each handler's validation
//! order (which errno wins when several things are wrong at once, as Linux 7.2 decides) and what
//! it writes back.
//!
//! A [`Bench`] is a daemon serving the selftest surface, one context, and caller memory that is a
//! [`FakeMemory`]: command structs, driver data and arrays sit at fixed addresses, so a test can
//! see every byte a handler wrote and put a fault exactly where it wants one. Data mapped into
//! an IOAS (which is pinned, so must be real) is a buffer of this process.

mod dirty;
mod handles;
mod hw_info;
mod hwpt_alloc;
mod invalidate;
mod isolation;
mod viommu;

use super::extensions::daemon_extensions;
use super::{Daemon, NodeKind};
use crate::caller::fake::FakeMemory;
use crate::objects::fault::FaultQueue;
use crate::objects::{Context, Object, ObjectUser};
use nix::errno::Errno;
use std::sync::Arc;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Where the command struct goes.
pub(super) const ARG: u64 = 0x10_0000;
/// Where driver data, arrays and bitmaps go.
pub(super) const DATA: u64 = 0x11_0000;
/// Bytes of fake caller memory from [`ARG`]; everything past them faults.
const FAKE_LEN: usize = 0x2_0000;
/// An address no caller memory backs.
pub(super) const UNMAPPED: u64 = 0x7000_0000;
/// Bytes of real memory [`Bench::map`] can map.
const REAL_LEN: usize = 64 << 10;
/// The IOVA [`Bench::map`] maps at: inside the mock aperture.
pub(super) const IOVA: u64 = MOCK_APERTURE_START;
/// An ID no object has.
pub(super) const NO_ID: u32 = 9999;

/// `size_of::<T>()` as a command's size word.
pub(super) fn sz<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// A mock device made by IOMMU_TEST_OP_MOCK_DOMAIN(_FLAGS).
#[derive(Debug, Clone, Copy)]
pub(super) struct Mock {
    pub(super) stdev: u32,
    /// The HWPT it was attached to (the automatic one for an IOAS).
    pub(super) hwpt: u32,
    pub(super) dev: u32,
}

pub(super) struct Bench {
    pub(super) daemon: Arc<Daemon>,
    pub(super) ctx: Arc<Context>,
    pub(super) mem: FakeMemory,
    /// Page-aligned memory of this process for IOAS_MAP (over-allocated by a page).
    real: Box<[u8]>,
}

impl Bench {
    pub(super) fn new() -> Self {
        let daemon = Daemon::new(daemon_extensions());
        let ctx = daemon.new_context(&NodeKind::Iommu);
        Self {
            daemon,
            ctx,
            mem: FakeMemory::new(ARG, FAKE_LEN),
            real: vec![0x5a; REAL_LEN + 4096].into_boxed_slice(),
        }
    }

    /// A bench whose context was opened as a file is (a hold can be taken on it, as a bound
    /// device or an object fd does); the open file, which stays open, comes along.
    pub(super) fn opened(ext: super::Extensions) -> (Self, Arc<dyn super::OpenFile>) {
        use crate::service::Service;
        let daemon = Daemon::new(ext);
        let file = super::DaemonService(daemon.clone())
            .open(&NodeKind::Iommu)
            .unwrap();
        let id = *daemon.contexts.lock().unwrap().keys().next().unwrap();
        let ctx = daemon.context(id).unwrap();
        let bench = Self {
            daemon,
            ctx,
            mem: FakeMemory::new(ARG, FAKE_LEN),
            real: vec![0x5a; REAL_LEN + 4096].into_boxed_slice(),
        };
        (bench, file)
    }

    /// Issues `cmd` with `c` at [`ARG`]; the struct as the call left it.
    pub(super) fn call<T: FromBytes + IntoBytes + Immutable>(
        &self,
        cmd: u32,
        c: &T,
    ) -> Result<T, Errno> {
        self.mem.set(ARG, c.as_bytes());
        self.daemon.ioctl(&self.ctx, cmd, ARG, &self.mem)?;
        Ok(self.at(ARG))
    }

    /// The errno of a call that must fail.
    pub(super) fn errno<T: FromBytes + IntoBytes + Immutable + std::fmt::Debug>(
        &self,
        cmd: u32,
        c: &T,
    ) -> Errno {
        match self.call(cmd, c) {
            Ok(r) => panic!("{cmd:#x} succeeded: {r:?}"),
            Err(e) => e,
        }
    }

    /// The `T` in caller memory at `addr`.
    pub(super) fn at<T: FromBytes>(&self, addr: u64) -> T {
        T::read_from_bytes(&self.mem.get(addr, std::mem::size_of::<T>())).unwrap()
    }

    /// The number of caller-memory writes so far (to look at those of one call).
    pub(super) fn nwrites(&self) -> usize {
        self.mem.writes().len()
    }

    pub(super) fn writes_since(&self, n: usize) -> Vec<(u64, usize)> {
        self.mem.writes()[n..].to_vec()
    }

    pub(super) fn ioas(&self) -> u32 {
        let c = iommu_ioas_alloc {
            size: sz::<iommu_ioas_alloc>(),
            ..Default::default()
        };
        self.call(IOMMU_IOAS_ALLOC, &c).unwrap().out_ioas_id
    }

    /// A mock device with `dev_flags` (MOCK_FLAGS_DEVICE_*) attached to `pt_id`.
    pub(super) fn mock(&self, pt_id: u32, dev_flags: u32) -> Mock {
        let mut c = iommu_test_cmd {
            size: sz::<iommu_test_cmd>(),
            op: IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
            id: pt_id,
            ..Default::default()
        };
        c.set_payload(&iommu_test_cmd_mock_domain_flags {
            dev_flags,
            ..Default::default()
        });
        let r = self.call(IOMMU_TEST_CMD, &c).unwrap();
        let p: iommu_test_cmd_mock_domain_flags = r.payload().unwrap();
        Mock {
            stdev: p.out_stdev_id,
            hwpt: p.out_hwpt_id,
            dev: p.out_idev_id,
        }
    }

    /// IOMMU_HWPT_ALLOC with driver data `data` of type `data_type` placed at [`DATA`].
    pub(super) fn hwpt_alloc(
        &self,
        dev_id: u32,
        pt_id: u32,
        flags: u32,
        data_type: u32,
        data: &[u8],
    ) -> Result<u32, Errno> {
        self.mem.set(DATA, data);
        let c = iommu_hwpt_alloc {
            size: sz::<iommu_hwpt_alloc>(),
            flags,
            dev_id,
            pt_id,
            data_type,
            data_len: data.len() as u32,
            data_uptr: DATA,
            ..Default::default()
        };
        self.call(IOMMU_HWPT_ALLOC, &c).map(|r| r.out_hwpt_id)
    }

    /// A nest-parent paging HWPT on `ioas` for mock device `dev`.
    pub(super) fn nest_parent(&self, dev: u32, ioas: u32) -> u32 {
        self.hwpt_alloc(dev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0, &[])
            .unwrap()
    }

    /// A nested HWPT of the mock driver on `pt_id` (a nest parent or a vIOMMU).
    pub(super) fn nested(&self, dev: u32, pt_id: u32) -> u32 {
        let data = iommu_hwpt_selftest {
            iotlb: IOMMU_TEST_IOTLB_DEFAULT,
            pagetable_type: 0,
        };
        self.hwpt_alloc(dev, pt_id, 0, IOMMU_HWPT_DATA_SELFTEST, data.as_bytes())
            .unwrap()
    }

    /// A fault queue object, as IOMMU_FAULT_QUEUE_ALLOC makes it, and the user its fd holds.
    pub(super) fn fault_queue(&self) -> (u32, ObjectUser) {
        self.ctx
            .insert_held(Object::from(Arc::new(FaultQueue::default())))
            .unwrap()
    }

    /// Maps `len` bytes of real memory at [`IOVA`] + `offset` in `ioas`.
    pub(super) fn map(&self, ioas: u32, offset: u64, len: u64) {
        assert!(len as usize <= REAL_LEN);
        let va = (self.real.as_ptr() as u64).next_multiple_of(4096);
        let c = iommu_ioas_map {
            size: sz::<iommu_ioas_map>(),
            flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id: ioas,
            reserved: 0,
            user_va: va,
            length: len,
            iova: IOVA + offset,
        };
        self.call(IOMMU_IOAS_MAP, &c).unwrap();
    }

    /// A vIOMMU of the mock driver on a nest parent of `ioas`: (vIOMMU, mock device, parent).
    pub(super) fn viommu(&self, ioas: u32) -> (u32, Mock, u32) {
        let m = self.mock(ioas, 0);
        let parent = self.nest_parent(m.dev, ioas);
        let c = iommu_viommu_alloc {
            size: sz::<iommu_viommu_alloc>(),
            r#type: IOMMU_VIOMMU_TYPE_SELFTEST,
            dev_id: m.dev,
            hwpt_id: parent,
            ..Default::default()
        };
        let id = self.call(IOMMU_VIOMMU_ALLOC, &c).unwrap().out_viommu_id;
        (id, m, parent)
    }
}
