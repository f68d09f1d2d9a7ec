//! The ioctl table: number → handler, struct size and minimum size.
//!
//! The kernel's extensible-struct rule: every struct starts with `u32 size`. A size below the
//! command's minimum (the end of its last mandatory field) is EINVAL; bytes the caller sends past
//! the struct this daemon knows must be zero (E2BIG); responses copy back only what the caller's
//! size covers. Unknown numbers in the iommufd range are ENOTTY; numbers below it are the VFIO
//! container ioctls.

use super::ioas_cmds as ioas;
use super::ucmd::Ucmd;
use crate::caller::CallerMemory;
use crate::objects::Context;
use nix::errno::Errno;
use std::mem::{offset_of, size_of};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::{iommu_test_cmd, IOMMU_TEST_CMD};

/// One iommufd command.
pub struct Op {
    pub cmd: u32,
    pub name: &'static str,
    /// Size of the struct this daemon knows.
    pub size: usize,
    /// End of the last field a caller must provide.
    pub min_size: usize,
    pub run: fn(&Ucmd) -> Result<(), Errno>,
}

macro_rules! op {
    ($cmd:ident, $ty:ty, $last:ident : $lty:ty, $run:expr) => {
        Op {
            cmd: $cmd,
            name: stringify!($cmd),
            size: size_of::<$ty>(),
            min_size: offset_of!($ty, $last) + size_of::<$lty>(),
            run: $run,
        }
    };
}

/// Handler for commands that are in the table but have no meaning without the features that
/// provide them (devices, fault queues…): those layers replace them through [`Extensions`].
fn not_supported(_u: &Ucmd) -> Result<(), Errno> {
    Err(Errno::EOPNOTSUPP)
}

/// IOMMU_VEVENTQ_ALLOC through a node alone: the kernel's checks (so a bad request gets the
/// kernel's errno), then EOPNOTSUPP — the queue's fd can only be installed under `uiommufd launch`,
/// whose supervisor takes the call over before it reaches here.
fn veventq_alloc_without_fd(u: &Ucmd) -> Result<(), Errno> {
    let cmd: iommu_veventq_alloc = u.cmd();
    if cmd.reserved != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    crate::objects::veventq::VeventQueue::check(
        u.ctx,
        cmd.flags,
        cmd.viommu_id,
        cmd.r#type,
        cmd.veventq_depth,
    )?;
    Err(Errno::EOPNOTSUPP)
}

/// A command handler.
pub type Handler = fn(&Ucmd) -> Result<(), Errno>;

/// Handlers other layers supply for the device, HWPT and selftest commands.
#[derive(Clone, Copy)]
pub struct Extensions {
    pub get_hw_info: fn(&Ucmd) -> Result<(), Errno>,
    pub hwpt_alloc: fn(&Ucmd) -> Result<(), Errno>,
    pub hwpt_set_dirty_tracking: fn(&Ucmd) -> Result<(), Errno>,
    pub hwpt_get_dirty_bitmap: fn(&Ucmd) -> Result<(), Errno>,
    pub hwpt_invalidate: fn(&Ucmd) -> Result<(), Errno>,
    pub ioas_change_process: fn(&Ucmd) -> Result<(), Errno>,
    pub viommu_alloc: fn(&Ucmd) -> Result<(), Errno>,
    pub vdevice_alloc: fn(&Ucmd) -> Result<(), Errno>,
    pub hw_queue_alloc: fn(&Ucmd) -> Result<(), Errno>,
    /// IOMMU_TEST_CMD (the selftest's mock devices, accesses, fault injection): None in a
    /// production daemon, where the number answers ENOTTY as on a kernel without IOMMUFD_TEST.
    pub test_cmd: Option<Handler>,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            get_hw_info: not_supported,
            hwpt_alloc: not_supported,
            hwpt_set_dirty_tracking: not_supported,
            hwpt_get_dirty_bitmap: not_supported,
            hwpt_invalidate: not_supported,
            ioas_change_process: not_supported,
            viommu_alloc: not_supported,
            vdevice_alloc: not_supported,
            hw_queue_alloc: not_supported,
            test_cmd: None,
        }
    }
}

/// Builds the table, indexed by `nr - IOMMUFD_CMD_BASE`.
pub fn build(ext: &Extensions) -> Vec<Option<Op>> {
    let ops = vec![
        op!(IOMMU_DESTROY, iommu_destroy, id: u32, ioas::destroy),
        op!(IOMMU_FAULT_QUEUE_ALLOC, iommu_fault_alloc, out_fault_fd: u32, not_supported),
        op!(IOMMU_GET_HW_INFO, iommu_hw_info, reserved: [u8; 3], ext.get_hw_info),
        op!(IOMMU_HW_QUEUE_ALLOC, iommu_hw_queue_alloc, length: u64, ext.hw_queue_alloc),
        op!(IOMMU_HWPT_ALLOC, iommu_hwpt_alloc, reserved: u32, ext.hwpt_alloc),
        op!(IOMMU_HWPT_GET_DIRTY_BITMAP, iommu_hwpt_get_dirty_bitmap, data: u64, ext.hwpt_get_dirty_bitmap),
        op!(IOMMU_HWPT_INVALIDATE, iommu_hwpt_invalidate, reserved: u32, ext.hwpt_invalidate),
        op!(IOMMU_HWPT_SET_DIRTY_TRACKING, iommu_hwpt_set_dirty_tracking, reserved: u32, ext.hwpt_set_dirty_tracking),
        op!(IOMMU_IOAS_ALLOC, iommu_ioas_alloc, out_ioas_id: u32, ioas::ioas_alloc),
        op!(IOMMU_IOAS_ALLOW_IOVAS, iommu_ioas_allow_iovas, allowed_iovas: u64, ioas::ioas_allow_iovas),
        op!(IOMMU_IOAS_CHANGE_PROCESS, iommu_ioas_change_process, reserved: u32, ext.ioas_change_process),
        op!(IOMMU_IOAS_COPY, iommu_ioas_copy, src_iova: u64, ioas::ioas_copy),
        op!(IOMMU_IOAS_IOVA_RANGES, iommu_ioas_iova_ranges, out_iova_alignment: u64, ioas::ioas_iova_ranges),
        op!(IOMMU_IOAS_MAP, iommu_ioas_map, iova: u64, ioas::ioas_map),
        op!(IOMMU_IOAS_MAP_FILE, iommu_ioas_map_file, iova: u64, ioas::ioas_map_file),
        op!(IOMMU_IOAS_UNMAP, iommu_ioas_unmap, length: u64, ioas::ioas_unmap),
        op!(IOMMU_OPTION, iommu_option, val64: u64, ioas::option),
        op!(IOMMU_VDEVICE_ALLOC, iommu_vdevice_alloc, virt_id: u64, ext.vdevice_alloc),
        op!(IOMMU_VEVENTQ_ALLOC, iommu_veventq_alloc, out_veventq_fd: u32, veventq_alloc_without_fd),
        op!(IOMMU_VFIO_IOAS, iommu_vfio_ioas, reserved: u16, ioas::vfio_ioas),
        op!(IOMMU_VIOMMU_ALLOC, iommu_viommu_alloc, out_viommu_id: u32, ext.viommu_alloc),
    ];
    let ops = ops.into_iter().chain(
        ext.test_cmd
            .map(|run| op!(IOMMU_TEST_CMD, iommu_test_cmd, last: u32, run)),
    );
    let mut table: Vec<Option<Op>> = Vec::new();
    for op in ops {
        let index = ((op.cmd & 0xff) - IOMMUFD_CMD_BASE) as usize;
        if table.len() <= index {
            table.resize_with(index + 1, || None);
        }
        table[index] = Some(op);
    }
    table
}

/// Outcome of looking an ioctl number up.
pub enum Route<'t> {
    Iommufd(&'t Op),
    /// Below the iommufd range or past the table: the VFIO container ioctls.
    Vfio,
    /// A hole in the table: ENOTTY once the size word was read.
    Unknown,
}

pub fn route(table: &[Option<Op>], cmd: u32) -> Route<'_> {
    let nr = cmd & 0xff;
    if nr < IOMMUFD_CMD_BASE || (nr - IOMMUFD_CMD_BASE) as usize >= table.len() {
        return Route::Vfio;
    }
    match &table[(nr - IOMMUFD_CMD_BASE) as usize] {
        Some(op) if op.cmd == cmd => Route::Iommufd(op),
        _ => Route::Unknown,
    }
}

/// Result of an iommufd command: the command's name (when known) and its errno on failure.
pub type Outcome = Result<&'static str, (Option<&'static str>, Errno)>;

/// Runs one iommufd command with the kernel's order of checks.
pub fn execute(
    table: &[Option<Op>],
    ctx: &Context,
    mem: &dyn CallerMemory,
    cmd: u32,
    arg: u64,
) -> Option<Outcome> {
    // The first caller of a context names the user its resources are capped against (one /proc
    // read per context). A transport that knows the opener's uid sets it at open instead.
    if ctx.owner_uid().is_none() {
        if let Some(uid) = crate::iopt::limits::real_uid_of(mem.pid()) {
            ctx.set_owner_uid(uid);
        }
    }
    let route = route(table, cmd);
    if matches!(route, Route::Vfio) {
        return None;
    }
    let mut size = [0u8; 4];
    if let Err(e) = mem.read(arg, &mut size) {
        return Some(Err((None, e)));
    }
    let user_size = u32::from_ne_bytes(size);
    let op = match route {
        Route::Iommufd(op) => op,
        _ => return Some(Err((None, Errno::ENOTTY))),
    };
    if (user_size as usize) < op.min_size {
        return Some(Err((Some(op.name), Errno::EINVAL)));
    }
    let ucmd = match Ucmd::copy_in(ctx, mem, arg, user_size, op.size) {
        Ok(u) => u,
        Err(e) => return Some(Err((Some(op.name), e))),
    };
    Some(
        (op.run)(&ucmd)
            .map(|()| op.name)
            .map_err(|e| (Some(op.name), e)),
    )
}
