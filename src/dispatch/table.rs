//! The ioctl table: number → handler, struct size and minimum size.
//!
//! The kernel's extensible-struct rule: every struct starts with `u32 size`. A size below the
//! command's minimum (the end of its last mandatory field) is EINVAL; bytes the caller sends past
//! the struct this daemon knows must be zero (E2BIG); responses copy back only what the caller's
//! size covers. Unknown numbers in the iommufd range are ENOTTY; numbers below it are the VFIO
//! container ioctls.

use super::handles::HandleRegistry;
use super::ioas_cmds as ioas;
use super::ucmd::Ucmd;
use crate::caller::CallerMemory;
use crate::objects::Context;
use nix::errno::Errno;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::IOMMU_TEST_CMD;

/// One iommufd command: its descriptor in the uAPI's one table
/// ([`uiommufd_uapi::table`]: number, name, struct size, minimum size, fields) and its handler.
pub struct Op {
    pub cmd: u32,
    pub name: &'static str,
    /// Size of the struct this daemon knows.
    pub size: usize,
    /// End of the last field a caller must provide.
    pub min_size: usize,
    pub run: fn(&Ucmd) -> Result<(), Errno>,
}

/// The handler `run` for `cmd`, with what the uAPI table says of `cmd`.
fn op(cmd: u32, run: Handler) -> Op {
    let d = uiommufd_uapi::table::by_cmd(cmd)
        .unwrap_or_else(|| panic!("ioctl {cmd:#x} missing from the uAPI table"));
    Op {
        cmd,
        name: d.name,
        size: d.size,
        min_size: d.min_size,
        run,
    }
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
        op(IOMMU_DESTROY, ioas::destroy),
        op(IOMMU_FAULT_QUEUE_ALLOC, not_supported),
        op(IOMMU_GET_HW_INFO, ext.get_hw_info),
        op(IOMMU_HW_QUEUE_ALLOC, ext.hw_queue_alloc),
        op(IOMMU_HWPT_ALLOC, ext.hwpt_alloc),
        op(IOMMU_HWPT_GET_DIRTY_BITMAP, ext.hwpt_get_dirty_bitmap),
        op(IOMMU_HWPT_INVALIDATE, ext.hwpt_invalidate),
        op(IOMMU_HWPT_SET_DIRTY_TRACKING, ext.hwpt_set_dirty_tracking),
        op(IOMMU_IOAS_ALLOC, ioas::ioas_alloc),
        op(IOMMU_IOAS_ALLOW_IOVAS, ioas::ioas_allow_iovas),
        op(IOMMU_IOAS_CHANGE_PROCESS, ext.ioas_change_process),
        op(IOMMU_IOAS_COPY, ioas::ioas_copy),
        op(IOMMU_IOAS_IOVA_RANGES, ioas::ioas_iova_ranges),
        op(IOMMU_IOAS_MAP, ioas::ioas_map),
        op(IOMMU_IOAS_MAP_FILE, ioas::ioas_map_file),
        op(IOMMU_IOAS_UNMAP, ioas::ioas_unmap),
        op(IOMMU_OPTION, ioas::option),
        op(IOMMU_VDEVICE_ALLOC, ext.vdevice_alloc),
        op(IOMMU_VEVENTQ_ALLOC, veventq_alloc_without_fd),
        op(IOMMU_VFIO_IOAS, ioas::vfio_ioas),
        op(IOMMU_VIOMMU_ALLOC, ext.viommu_alloc),
    ];
    let ops = ops
        .into_iter()
        .chain(ext.test_cmd.map(|run| op(IOMMU_TEST_CMD, run)));
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

/// The hot path of [`execute`]: the size word and the struct in one read of the caller's memory
/// when the struct this daemon knows lies on the size word's page (a page is readable as a
/// whole, so nothing is read that the kernel's own two reads would not reach — no other page's
/// fault can happen here). Then the same checks as the two-step path, in the kernel's order.
/// None when it does not apply (the two-step path runs); a failed read is answered as it is, as
/// the kernel's first read of the same page would fail alike.
fn copy_in_one_read<'a>(
    ctx: &'a Context,
    handles: &'a HandleRegistry,
    mem: &'a dyn CallerMemory,
    arg: u64,
    op: &Op,
) -> Option<Result<Ucmd<'a>, Errno>> {
    let to_page_end = 4096 - (arg % 4096) as usize;
    if op.size > to_page_end {
        return None;
    }
    let mut buf = vec![0u8; op.size];
    if let Err(e) = mem.read(arg, &mut buf) {
        return Some(Err(e));
    }
    let user_size = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (user_size as usize) < op.min_size {
        return Some(Err(Errno::EINVAL));
    }
    if user_size as usize > op.size {
        // Bytes past the known struct must be zero (they may lie on later pages).
        let tail = u64::from(user_size) - op.size as u64;
        let Some(tail_at) = arg.checked_add(op.size as u64) else {
            return Some(Err(Errno::EFAULT));
        };
        if let Err(e) = crate::caller::check_zeroed(mem, tail_at, tail) {
            return Some(Err(e));
        }
    } else {
        // What the caller did not claim is not its struct.
        buf[user_size as usize..].fill(0);
    }
    Some(Ok(Ucmd::with_bytes(ctx, handles, mem, arg, user_size, buf)))
}

/// Result of an iommufd command: the command's name (when known) and its errno on failure.
pub type Outcome = Result<&'static str, (Option<&'static str>, Errno)>;

/// Runs one iommufd command with the kernel's order of checks.
pub fn execute(
    table: &[Option<Op>],
    ctx: &Context,
    handles: &HandleRegistry,
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
    if let Route::Iommufd(op) = route {
        if let Some(ucmd) = copy_in_one_read(ctx, handles, mem, arg, op) {
            return Some(match ucmd {
                Ok(ucmd) => (op.run)(&ucmd)
                    .map(|()| op.name)
                    .map_err(|e| (Some(op.name), e)),
                Err(e) => Err((Some(op.name), e)),
            });
        }
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
    let ucmd = match Ucmd::copy_in(ctx, handles, mem, arg, user_size, op.size) {
        Ok(u) => u,
        Err(e) => return Some(Err((Some(op.name), e))),
    };
    Some(
        (op.run)(&ucmd)
            .map(|()| op.name)
            .map_err(|e| (Some(op.name), e)),
    )
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;
    use crate::caller::fake::FakeMemory;
    use std::mem::offset_of;
    use uiommufd_uapi::vfio::VFIO_GET_API_VERSION;

    const ARG: u64 = 0x20_0000;

    /// (command, struct size, minimum size) of Linux 7.2's table (drivers/iommu/iommufd/main.c):
    /// the minimum is the end of the `_last` field its IOCTL_OP names, the numbers as a C compiler
    /// lays the uAPI structs out.
    const KERNEL: [(u32, usize, usize); 22] = [
        (IOMMU_DESTROY, 8, 8),
        (IOMMU_FAULT_QUEUE_ALLOC, 16, 16),
        (IOMMU_GET_HW_INFO, 40, 32),
        (IOMMU_HW_QUEUE_ALLOC, 40, 40),
        (IOMMU_HWPT_ALLOC, 48, 24),
        (IOMMU_HWPT_GET_DIRTY_BITMAP, 48, 48),
        (IOMMU_HWPT_INVALIDATE, 32, 32),
        (IOMMU_HWPT_SET_DIRTY_TRACKING, 16, 16),
        (IOMMU_IOAS_ALLOC, 12, 12),
        (IOMMU_IOAS_ALLOW_IOVAS, 24, 24),
        (IOMMU_IOAS_CHANGE_PROCESS, 8, 8),
        (IOMMU_IOAS_COPY, 40, 40),
        (IOMMU_IOAS_IOVA_RANGES, 32, 32),
        (IOMMU_IOAS_MAP, 40, 40),
        (IOMMU_IOAS_MAP_FILE, 40, 40),
        (IOMMU_IOAS_UNMAP, 24, 24),
        (IOMMU_OPTION, 24, 24),
        (IOMMU_VDEVICE_ALLOC, 24, 24),
        (IOMMU_VEVENTQ_ALLOC, 32, 28),
        (IOMMU_VFIO_IOAS, 12, 12),
        (IOMMU_VIOMMU_ALLOC, 40, 24),
        (IOMMU_TEST_CMD, 72, 68),
    ];

    /// A handler that checks what reaches it: the whole known struct, zero past the caller's size.
    fn reached(u: &Ucmd) -> Result<(), Errno> {
        let user = (u.user_size as usize).min(u.buf.len());
        assert!(u.buf[user..].iter().all(|&b| b == 0), "zero-extended");
        Ok(())
    }

    /// Every extension handler is [`reached`], the selftest command included.
    fn probe_extensions() -> Extensions {
        Extensions {
            get_hw_info: reached,
            hwpt_alloc: reached,
            hwpt_set_dirty_tracking: reached,
            hwpt_get_dirty_bitmap: reached,
            hwpt_invalidate: reached,
            ioas_change_process: reached,
            viommu_alloc: reached,
            vdevice_alloc: reached,
            hw_queue_alloc: reached,
            test_cmd: Some(reached),
        }
    }

    fn ops(table: &[Option<Op>]) -> impl Iterator<Item = &Op> {
        table.iter().flatten()
    }

    /// `execute` of `cmd` on a struct whose size word says `user_size`, followed by `rest`; the
    /// caller's memory ends there. The size word is the last word of its page, so the struct
    /// runs onto the next page and the size word is read on its own first (as on any page).
    fn run(table: &[Option<Op>], cmd: u32, user_size: u32, rest: &[u8]) -> Option<Outcome> {
        let at = ARG + 4096 - 4;
        let mem = FakeMemory::with_bytes(at, &[&user_size.to_ne_bytes()[..], rest].concat());
        execute(
            table,
            &Context::new(),
            &HandleRegistry::default(),
            &mem,
            cmd,
            at,
        )
    }

    #[test]
    fn sizes_are_the_kernels() {
        let table = build(&probe_extensions());
        let ours: Vec<(u32, usize, usize)> = ops(&table)
            .map(|op| (op.cmd, op.size, op.min_size))
            .collect();
        let mut kernel = KERNEL.to_vec();
        kernel.sort_by_key(|&(cmd, ..)| cmd & 0xff);
        assert_eq!(ours, kernel);
        for op in ops(&table) {
            assert!(op.name.starts_with("IOMMU_"), "{}", op.name);
        }
    }

    #[test]
    fn below_the_minimum_is_einval_before_anything_past_the_size_word_is_read() {
        let table = build(&probe_extensions());
        for op in ops(&table) {
            let min = op.min_size as u32;
            for short in [0, 4, min - 1] {
                let got = run(&table, op.cmd, short, &[]);
                assert!(
                    matches!(got, Some(Err((Some(n), Errno::EINVAL))) if n == op.name),
                    "{} size {short}",
                    op.name
                );
            }
            // At the minimum the struct is read: past the size word the caller's memory ends.
            let got = run(&table, op.cmd, min, &[]);
            assert!(
                matches!(got, Some(Err((Some(_), Errno::EFAULT)))),
                "{} size {min}",
                op.name
            );
        }
    }

    /// The one-read path (the struct on the size word's page): the same answers as the two-step
    /// path for every size, with one read of the caller's memory for the struct.
    #[test]
    fn a_struct_on_one_page_is_read_once_with_the_same_answers() {
        let table = build(&probe_extensions());
        // The commands whose handler is `reached` (the others check their fields).
        let probed = [
            IOMMU_GET_HW_INFO,
            IOMMU_HWPT_ALLOC,
            IOMMU_HWPT_SET_DIRTY_TRACKING,
            IOMMU_HWPT_GET_DIRTY_BITMAP,
            IOMMU_HWPT_INVALIDATE,
            IOMMU_IOAS_CHANGE_PROCESS,
            IOMMU_VIOMMU_ALLOC,
            IOMMU_VDEVICE_ALLOC,
            IOMMU_HW_QUEUE_ALLOC,
            IOMMU_TEST_CMD,
        ];
        for op in ops(&table).filter(|op| probed.contains(&op.cmd)) {
            for (size, tail, want) in [
                (0u32, 0u8, Err(Errno::EINVAL)),
                (op.min_size as u32 - 1, 0, Err(Errno::EINVAL)),
                (op.min_size as u32, 0, Ok(())),
                (op.size as u32, 0, Ok(())),
                (op.size as u32 + 8, 0, Ok(())),
                (op.size as u32 + 8, 1, Err(Errno::E2BIG)),
            ] {
                // Non-zero bytes after the size word and a page-aligned struct.
                let mem = FakeMemory::new(ARG, op.size + 8);
                mem.set(ARG, &vec![0xa5; op.size + 8]);
                mem.set(ARG, &size.to_ne_bytes());
                mem.set(ARG + op.size as u64, &[0; 8]);
                mem.set(ARG + op.size as u64 + 7, &[tail]);
                let got = execute(
                    &table,
                    &Context::new(),
                    &HandleRegistry::default(),
                    &mem,
                    op.cmd,
                    ARG,
                );
                let got = got.map(|o| o.map(drop).map_err(|(_, e)| e));
                assert_eq!(got, Some(want), "{} size {size} tail {tail}", op.name);
            }
        }
    }

    #[test]
    fn every_size_from_the_minimum_up_reaches_the_handler_zero_extended() {
        let ext = probe_extensions();
        let table = build(&ext);
        let probed = [
            IOMMU_GET_HW_INFO,
            IOMMU_HWPT_ALLOC,
            IOMMU_VIOMMU_ALLOC,
            IOMMU_TEST_CMD,
        ];
        for op in ops(&table).filter(|op| probed.contains(&op.cmd)) {
            // Non-zero bytes after the size word: the handler must see zeros past the caller's size.
            let bytes: Vec<u8> = vec![0xa5; op.size + 8];
            for size in [op.min_size, op.size - 1, op.size] {
                let got = run(&table, op.cmd, size as u32, &bytes[4..size]);
                assert!(
                    matches!(got, Some(Ok(n)) if n == op.name),
                    "{} size {size}",
                    op.name
                );
            }
            // Longer: the bytes past the known struct must be zero.
            let mut long = bytes[4..op.size].to_vec();
            long.extend([0; 8]);
            let got = run(&table, op.cmd, op.size as u32 + 8, &long);
            assert!(matches!(got, Some(Ok(_))), "{} zero tail", op.name);
            *long.last_mut().unwrap() = 1;
            let got = run(&table, op.cmd, op.size as u32 + 8, &long);
            assert!(
                matches!(got, Some(Err((Some(_), Errno::E2BIG)))),
                "{} non-zero tail",
                op.name
            );
        }
    }

    #[test]
    fn unknown_numbers_are_enotty_once_the_size_word_is_read() {
        let table = build(&probe_extensions());
        // A hole between the last command and IOMMU_TEST_CMD; IOMMU_DESTROY's number with other
        // direction bits.
        let hole = uiommufd_uapi::iommufd::io(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0x1f);
        let other_dir = IOMMU_DESTROY | 3 << 30;
        for cmd in [hole, other_dir] {
            // The size does not matter, not even a size below every minimum.
            for size in [0, 8, 4096] {
                let got = run(&table, cmd, size, &[0; 8]);
                assert!(matches!(got, Some(Err((None, Errno::ENOTTY)))), "{cmd:#x}");
            }
            // The size word is read first, as the kernel's get_user.
            let mem = FakeMemory::new(ARG, 2);
            let got = execute(
                &table,
                &Context::new(),
                &HandleRegistry::default(),
                &mem,
                cmd,
                ARG,
            );
            assert!(matches!(got, Some(Err((None, Errno::EFAULT)))), "{cmd:#x}");
        }
    }

    #[test]
    fn numbers_outside_the_table_go_to_vfio_unread() {
        // Without the selftest the table ends at the last iommufd command: the selftest's number
        // is past it, as on a production kernel, where VFIO's handler answers it.
        let table = build(&Extensions::default());
        let nothing = FakeMemory::new(ARG, 0);
        for cmd in [VFIO_GET_API_VERSION, IOMMU_TEST_CMD] {
            assert!(
                execute(
                    &table,
                    &Context::new(),
                    &HandleRegistry::default(),
                    &nothing,
                    cmd,
                    ARG
                )
                .is_none(),
                "{cmd:#x}"
            );
        }
        assert!(ops(&table).all(|op| op.cmd != IOMMU_TEST_CMD));
    }

    #[test]
    fn a_command_runs_under_the_rule_end_to_end() {
        let table = build(&Extensions::default());
        let ctx = Context::new();
        let alloc = |mem: &FakeMemory| {
            execute(
                &table,
                &ctx,
                &HandleRegistry::default(),
                mem,
                IOMMU_IOAS_ALLOC,
                ARG,
            )
        };
        let size = size_of::<iommu_ioas_alloc>();
        let id_at = ARG + offset_of!(iommu_ioas_alloc, out_ioas_id) as u64;
        // A newer caller's longer struct with a zero tail: served, the tail left alone.
        let mem = FakeMemory::new(ARG, size + 8);
        mem.set(ARG, &(size as u32 + 8).to_ne_bytes());
        assert!(matches!(alloc(&mem), Some(Ok("IOMMU_IOAS_ALLOC"))));
        let id = u32::from_ne_bytes(mem.get(id_at, 4).try_into().unwrap());
        assert_ne!(id, 0);
        assert_eq!(mem.writes(), [(ARG, size)]);
        assert_eq!(ctx.num_objects(), 1);
        // A non-zero tail: refused before the handler, nothing made or written.
        let mem = FakeMemory::new(ARG, size + 8);
        mem.set(ARG, &(size as u32 + 8).to_ne_bytes());
        mem.set(ARG + size as u64 + 7, &[1]);
        assert!(matches!(
            alloc(&mem),
            Some(Err((Some("IOMMU_IOAS_ALLOC"), Errno::E2BIG)))
        ));
        assert!(mem.writes().is_empty());
        assert_eq!(ctx.num_objects(), 1);
        // IOMMU_DESTROY of it at exactly its minimum size.
        let mem = FakeMemory::new(ARG, 8);
        mem.set(ARG, &8u32.to_ne_bytes());
        mem.set(ARG + 4, &id.to_ne_bytes());
        assert!(matches!(
            execute(
                &table,
                &ctx,
                &HandleRegistry::default(),
                &mem,
                IOMMU_DESTROY,
                ARG
            ),
            Some(Ok("IOMMU_DESTROY"))
        ));
        assert_eq!(ctx.num_objects(), 0);
    }
}
