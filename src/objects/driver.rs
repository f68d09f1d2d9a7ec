//! The IOMMU driver seam beside [`super::DeviceBackend`]: what the core hands a driver (the
//! caller's driver data, [`UserData`] and [`UserArray`]) and the driver objects it gets back (a
//! nested domain, [`NestedDomain`]; a vIOMMU, [`ViommuDriver`]).
//!
//! The split follows the kernel's: the core validates the command and the objects it names, the
//! driver says what it supports and reads its own data. Every driver method has a default that
//! answers as an IOMMU without the feature would (EOPNOTSUPP).

use super::viommu::Viommu;
use super::Context;
use crate::caller::CallerMemory;
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::mem::size_of;
use zerocopy::{FromBytes, IntoBytes};

/// Reads `len` bytes at `addr` into a zeroed `T` the way copy_struct_from_user does: shorter is
/// zero-extended, bytes beyond `T` must be zero (E2BIG).
fn read_zero_tail<T: FromBytes + IntoBytes>(
    mem: &dyn CallerMemory,
    addr: u64,
    len: usize,
) -> Result<T, Errno> {
    let mut v = T::new_zeroed();
    crate::caller::copy_struct_from_caller(mem, addr, len, v.as_mut_bytes())?;
    Ok(v)
}

/// A driver struct of an allocation (IOMMU_HWPT_ALLOC's or IOMMU_VIOMMU_ALLOC's data), left in
/// the caller's memory until the driver reads it.
#[derive(Clone, Copy)]
pub struct UserData<'a> {
    /// The data type the caller named (for a vIOMMU: the vIOMMU type).
    pub ty: u32,
    pub ptr: u64,
    pub len: u32,
    mem: &'a dyn CallerMemory,
}

impl<'a> UserData<'a> {
    pub fn new(mem: &'a dyn CallerMemory, ty: u32, ptr: u64, len: u32) -> Self {
        Self { ty, ptr, len, mem }
    }

    /// No data given (`len` 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the struct the way iommu_copy_struct_from_user does: `len` bytes, at least up to the
    /// end of the mandatory fields (`min`) and at most the struct this daemon knows (EINVAL
    /// either way: unlike the ioctl structs, longer driver data is refused, not zero-checked).
    /// The type is the driver's to check.
    pub fn read<T: FromBytes + IntoBytes>(&self, min: usize) -> Result<T, Errno> {
        let len = self.len as usize;
        if len < min || len > size_of::<T>() {
            return Err(Errno::EINVAL);
        }
        read_zero_tail(self.mem, self.ptr, len)
    }
}

/// An array of driver entries (IOMMU_HWPT_INVALIDATE's), left in the caller's memory.
#[derive(Clone, Copy)]
pub struct UserArray<'a> {
    pub ty: u32,
    pub ptr: u64,
    pub entry_len: u32,
    pub entry_num: u32,
    mem: &'a dyn CallerMemory,
}

impl<'a> UserArray<'a> {
    pub fn new(
        mem: &'a dyn CallerMemory,
        ty: u32,
        ptr: u64,
        entry_len: u32,
        entry_num: u32,
    ) -> Self {
        Self {
            ty,
            ptr,
            entry_len,
            entry_num,
            mem,
        }
    }

    /// Where entry `index` starts (EFAULT past the end of the address space).
    fn entry_addr(&self, index: u32) -> Result<u64, Errno> {
        self.ptr
            .checked_add(u64::from(index) * u64::from(self.entry_len))
            .ok_or(Errno::EFAULT)
    }

    /// Entry `index`, read like [`UserData::read`] (EINVAL unless `min <= entry_len <= size`).
    pub fn entry<T: FromBytes + IntoBytes>(&self, index: u32, min: usize) -> Result<T, Errno> {
        let addr = self.entry_addr(index)?;
        UserData::new(self.mem, self.ty, addr, self.entry_len).read(min)
    }

    /// Entry `index`, read the way copy_struct_from_user does (an entry size other than the
    /// daemon's): shorter entries are zero-extended, bytes beyond the struct must be zero (E2BIG);
    /// `min` bounds the length from below (EINVAL).
    pub fn entry_zero_tail<T: FromBytes + IntoBytes>(
        &self,
        index: u32,
        min: usize,
    ) -> Result<T, Errno> {
        let addr = self.entry_addr(index)?;
        if (self.entry_len as usize) < min {
            return Err(Errno::EINVAL);
        }
        read_zero_tail(self.mem, addr, self.entry_len as usize)
    }
}

/// A nested (stage-1) domain of a driver (`iommu_domain_ops` of a nested domain). Translation
/// goes through its parent; this is the driver's stage-1 state.
pub trait NestedDomain: Send + Sync {
    /// IOMMU_HWPT_INVALIDATE on the domain (cache_invalidate_user): handles the entries of
    /// `array` in order, counting the ones done in `done` (what the caller is told on error too).
    fn cache_invalidate_user(&self, _array: &UserArray, _done: &mut u32) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// The concrete domain, for the driver's own checks.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A driver's vIOMMU (the kernel's `iommufd_viommu_ops`).
pub trait ViommuDriver: Send + Sync {
    /// A nested domain on the vIOMMU (IOMMU_HWPT_ALLOC with the vIOMMU as `pt_id`); `flags`
    /// without IOMMU_HWPT_FAULT_ID_VALID, already limited to what the core allows.
    fn alloc_domain_nested(
        &self,
        _flags: u32,
        _data: &UserData,
    ) -> Result<Box<dyn NestedDomain>, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// IOMMU_HWPT_INVALIDATE on the vIOMMU (device caches); `done` as for
    /// [`NestedDomain::cache_invalidate_user`].
    fn cache_invalidate(
        &self,
        _ctx: &Context,
        _viommu: &Viommu,
        _array: &UserArray,
        _done: &mut u32,
    ) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
    /// Whether the vIOMMU has hardware queues of type `ty` (IOMMU_HW_QUEUE_ALLOC).
    fn hw_queue_type(&self, _ty: u32) -> bool {
        false
    }
    /// Initialises hardware queue `index` (its memory pinned at physical address `base_pa`;
    /// `queues` holds the vIOMMU's queues by index). Returns the queue this one depends on.
    fn hw_queue_init(
        &self,
        _queues: &BTreeMap<u32, u32>,
        _index: u32,
        _base_pa: u64,
    ) -> Result<Option<u32>, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::fake::FakeMemory;

    #[test]
    fn user_data_reads_like_iommu_copy_struct() {
        let mut b = vec![0u8; 32];
        b[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_ne_bytes());
        b[12] = 1;
        let m = FakeMemory::with_bytes(0x1000, &b);
        let d = |len| UserData::new(&m, 7, 0x1000, len);
        assert_eq!(d(8).read::<u64>(4), Ok(0x1122_3344_5566_7788));
        assert_eq!(d(4).read::<u64>(4), Ok(0x5566_7788));
        assert_eq!(d(2).read::<u64>(4), Err(Errno::EINVAL));
        assert_eq!(d(9).read::<u64>(4), Err(Errno::EINVAL));
        assert_eq!(
            UserData::new(&m, 7, 0x1000 + 30, 8).read::<u64>(4),
            Err(Errno::EFAULT)
        );
        assert!(d(0).is_empty() && !d(1).is_empty());
    }

    #[test]
    fn user_array_entries() {
        let mut b = vec![0u8; 32];
        b[8] = 5;
        b[14] = 1;
        let m = FakeMemory::with_bytes(0x1000, &b);
        let a = UserArray::new(&m, 1, 0x1000, 8, 4);
        assert_eq!(a.entry::<u32>(2, 4), Err(Errno::EINVAL));
        assert_eq!(a.entry::<u64>(1, 4), Ok(5 | 1 << 48));
        assert_eq!(a.entry_zero_tail::<u32>(1, 0), Err(Errno::E2BIG));
        assert_eq!(a.entry_zero_tail::<u32>(0, 0), Ok(0));
        assert_eq!(a.entry_zero_tail::<u32>(0, 9), Err(Errno::EINVAL));
        assert_eq!(a.entry_zero_tail::<u32>(3, 0), Ok(0));
        assert_eq!(a.entry_zero_tail::<u32>(4, 0), Err(Errno::EFAULT));
        // Shorter entries are zero-extended.
        let a = UserArray::new(&m, 1, 0x1000, 2, 16);
        assert_eq!(a.entry_zero_tail::<u32>(4, 0), Ok(5));
        let a = UserArray::new(&m, 1, u64::MAX, 16, 4);
        assert_eq!(a.entry_zero_tail::<u32>(1, 0), Err(Errno::EFAULT));
    }
}
