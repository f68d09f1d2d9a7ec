//! One descriptor per ioctl: its number and name, how its argument is passed, the struct's size
//! and minimum size (the extensible-struct rule), and each field's offset, width and role (which
//! are object IDs, IOVAs, pointers, fds). The daemon's dispatch table, the replay script language
//! and the recorder all read this one table.
//!
//! Offsets and sizes come from the structs of this crate (`offset_of!`), so the table cannot drift
//! from the layouts; `tests/layout.rs` pins those against the C headers.

use crate::iommufd::*;
use crate::selftest::{iommu_test_cmd, IOMMU_TEST_CMD};
use crate::vfio::*;
use core::mem::{offset_of, size_of};

/// What a field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The struct's leading `size` / `argsz` word.
    Size,
    /// A plain integer (flags, lengths, types, reserved words).
    Int,
    /// An object ID the caller supplies.
    Id,
    /// An object ID the daemon returns.
    OutId,
    /// An IOVA (input, or output when the call allocates it).
    Iova,
    /// A pointer to caller memory, `len` naming the field that holds its length in bytes.
    Ptr { len: &'static str },
    /// A pointer to an array of `iommu_iova_range`, `count` naming the field with the element
    /// count; `input` when the daemon reads it, otherwise the daemon fills it.
    Ranges { count: &'static str, input: bool },
    /// A file descriptor in the caller's table (input).
    Fd,
    /// A file descriptor the call installs in the caller's table (output).
    OutFd,
}

/// One field of an ioctl struct.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub off: usize,
    pub width: usize,
    pub role: Role,
}

/// How an ioctl's argument is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A pointer to a struct that starts with its size.
    Struct,
    /// The argument is an integer (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU) or unused.
    Value,
}

/// One ioctl.
#[derive(Debug)]
pub struct IoctlDesc {
    pub name: &'static str,
    pub cmd: u32,
    pub kind: ArgKind,
    /// Size of the struct this uAPI knows (0 for [`ArgKind::Value`]).
    pub size: usize,
    /// End of the last field a caller must provide (a smaller size is EINVAL).
    pub min_size: usize,
    /// The fields, in order; the first is the size word. Only the leading fields that have a
    /// role worth naming are listed for structs with a payload union (IOMMU_TEST_CMD).
    pub fields: Vec<Field>,
}

impl IoctlDesc {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

fn width<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! fields {
    ($ty:ty; $($name:ident : $role:expr),* $(,)?) => {
        vec![$(Field {
            // `r#type` is `type` in the uAPI and in scripts.
            name: stringify!($name).trim_start_matches("r#"),
            off: offset_of!($ty, $name),
            width: width(|s: &$ty| &s.$name),
            role: $role,
        }),*]
    };
}

/// `def!(CMD, struct, last mandatory field; field: role, ...)`.
macro_rules! def {
    ($cmd:ident, $ty:ty, $last:ident; $($name:ident : $role:expr),* $(,)?) => {
        IoctlDesc {
            name: stringify!($cmd),
            cmd: $cmd,
            kind: ArgKind::Struct,
            size: size_of::<$ty>(),
            min_size: offset_of!($ty, $last) + width(|s: &$ty| &s.$last),
            fields: fields!($ty; $($name: $role),*),
        }
    };
}

use Role::*;

/// Every ioctl of the iommufd and VFIO type1 container uAPI, by kernel name.
pub fn ioctls() -> &'static [IoctlDesc] {
    static TABLE: std::sync::OnceLock<Vec<IoctlDesc>> = std::sync::OnceLock::new();
    TABLE.get_or_init(build)
}

pub fn by_name(name: &str) -> Option<&'static IoctlDesc> {
    ioctls().iter().find(|d| d.name == name)
}

pub fn by_cmd(cmd: u32) -> Option<&'static IoctlDesc> {
    ioctls().iter().find(|d| d.cmd == cmd)
}

fn build() -> Vec<IoctlDesc> {
    let ranges_in = Ranges {
        count: "num_iovas",
        input: true,
    };
    let ranges_out = Ranges {
        count: "num_iovas",
        input: false,
    };
    let data = Ptr { len: "data_len" };
    let value = |name, cmd| IoctlDesc {
        name,
        cmd,
        kind: ArgKind::Value,
        size: 0,
        min_size: 0,
        fields: Vec::new(),
    };
    vec![
        def!(IOMMU_DESTROY, iommu_destroy, id; size: Size, id: Id),
        def!(IOMMU_IOAS_ALLOC, iommu_ioas_alloc, out_ioas_id;
            size: Size, flags: Int, out_ioas_id: OutId),
        def!(IOMMU_IOAS_ALLOW_IOVAS, iommu_ioas_allow_iovas, allowed_iovas;
            size: Size, ioas_id: Id, num_iovas: Int, reserved: Int, allowed_iovas: ranges_in),
        def!(IOMMU_IOAS_COPY, iommu_ioas_copy, src_iova;
            size: Size, flags: Int, dst_ioas_id: Id, src_ioas_id: Id, length: Int,
            dst_iova: Iova, src_iova: Iova),
        def!(IOMMU_IOAS_IOVA_RANGES, iommu_ioas_iova_ranges, out_iova_alignment;
            size: Size, ioas_id: Id, num_iovas: Int, reserved: Int, allowed_iovas: ranges_out,
            out_iova_alignment: Int),
        def!(IOMMU_IOAS_MAP, iommu_ioas_map, iova;
            size: Size, flags: Int, ioas_id: Id, reserved: Int, user_va: Ptr { len: "length" },
            length: Int, iova: Iova),
        def!(IOMMU_IOAS_MAP_FILE, iommu_ioas_map_file, iova;
            size: Size, flags: Int, ioas_id: Id, fd: Fd, start: Int, length: Int, iova: Iova),
        def!(IOMMU_IOAS_UNMAP, iommu_ioas_unmap, length;
            size: Size, ioas_id: Id, iova: Iova, length: Int),
        def!(IOMMU_OPTION, iommu_option, val64;
            size: Size, option_id: Int, op: Int, reserved: Int, object_id: Id, val64: Int),
        def!(IOMMU_VFIO_IOAS, iommu_vfio_ioas, reserved;
            size: Size, ioas_id: Id, op: Int, reserved: Int),
        def!(IOMMU_HWPT_ALLOC, iommu_hwpt_alloc, reserved;
            size: Size, flags: Int, dev_id: Id, pt_id: Id, out_hwpt_id: OutId, reserved: Int,
            data_type: Int, data_len: Int, data_uptr: data, fault_id: Id, reserved2: Int),
        def!(IOMMU_GET_HW_INFO, iommu_hw_info, reserved;
            size: Size, flags: Int, dev_id: Id, data_len: Int, data_uptr: data,
            in_data_type: Int, out_max_pasid_log2: Int, reserved: Int, out_capabilities: Int),
        def!(IOMMU_HWPT_SET_DIRTY_TRACKING, iommu_hwpt_set_dirty_tracking, reserved;
            size: Size, flags: Int, hwpt_id: Id, reserved: Int),
        // `data` points at a bitmap of length / page_size bits.
        def!(IOMMU_HWPT_GET_DIRTY_BITMAP, iommu_hwpt_get_dirty_bitmap, data;
            size: Size, hwpt_id: Id, flags: Int, reserved: Int, iova: Iova, length: Int,
            page_size: Int, data: Int),
        // `data_uptr` points at entry_num entries of entry_len bytes.
        def!(IOMMU_HWPT_INVALIDATE, iommu_hwpt_invalidate, reserved;
            size: Size, hwpt_id: Id, data_uptr: Int, data_type: Int, entry_len: Int,
            entry_num: Int, reserved: Int),
        def!(IOMMU_FAULT_QUEUE_ALLOC, iommu_fault_alloc, out_fault_fd;
            size: Size, flags: Int, out_fault_id: OutId, out_fault_fd: OutFd),
        def!(IOMMU_IOAS_CHANGE_PROCESS, iommu_ioas_change_process, reserved;
            size: Size, reserved: Int),
        def!(IOMMU_VIOMMU_ALLOC, iommu_viommu_alloc, out_viommu_id;
            size: Size, flags: Int, r#type: Int, dev_id: Id, hwpt_id: Id, out_viommu_id: OutId,
            data_len: Int, reserved: Int, data_uptr: data),
        def!(IOMMU_VDEVICE_ALLOC, iommu_vdevice_alloc, virt_id;
            size: Size, viommu_id: Id, dev_id: Id, out_vdevice_id: OutId, virt_id: Int),
        def!(IOMMU_VEVENTQ_ALLOC, iommu_veventq_alloc, out_veventq_fd;
            size: Size, flags: Int, viommu_id: Id, r#type: Int, veventq_depth: Int,
            out_veventq_id: OutId, out_veventq_fd: OutFd, reserved: Int),
        def!(IOMMU_HW_QUEUE_ALLOC, iommu_hw_queue_alloc, length;
            size: Size, flags: Int, viommu_id: Id, r#type: Int, index: Int,
            out_hw_queue_id: OutId, nesting_parent_iova: Iova, length: Int),
        def!(IOMMU_TEST_CMD, iommu_test_cmd, last;
            size: Size, op: Int, id: Id, reserved: Int),
        value("VFIO_GET_API_VERSION", VFIO_GET_API_VERSION),
        value("VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION),
        value("VFIO_SET_IOMMU", VFIO_SET_IOMMU),
        def!(VFIO_IOMMU_GET_INFO, vfio_iommu_type1_info, iova_pgsizes;
            argsz: Size, flags: Int, iova_pgsizes: Int, cap_offset: Int, pad: Int),
        def!(VFIO_IOMMU_MAP_DMA, vfio_iommu_type1_dma_map, size;
            argsz: Size, flags: Int, vaddr: Ptr { len: "size" }, iova: Iova, size: Int),
        def!(VFIO_IOMMU_UNMAP_DMA, vfio_iommu_type1_dma_unmap, size;
            argsz: Size, flags: Int, iova: Iova, size: Int),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_consistent() {
        for d in ioctls() {
            if d.kind != ArgKind::Struct {
                continue;
            }
            assert_eq!(d.fields[0].role, Role::Size, "{}", d.name);
            assert_eq!(d.fields[0].off, 0);
            assert!(d.min_size <= d.size && d.min_size >= 4, "{}", d.name);
            for w in d.fields.windows(2) {
                assert!(
                    w[0].off + w[0].width <= w[1].off,
                    "{}.{}",
                    d.name,
                    w[1].name
                );
            }
            for f in &d.fields {
                assert!(f.off + f.width <= d.size, "{}.{}", d.name, f.name);
                if let Role::Ptr { len } | Role::Ranges { count: len, .. } = f.role {
                    assert!(d.field(len).is_some(), "{}.{}", d.name, len);
                }
            }
        }
        assert_eq!(by_name("IOMMU_IOAS_MAP").unwrap().size, 40);
        let names: std::collections::HashSet<_> = ioctls().iter().map(|d| d.cmd).collect();
        assert_eq!(names.len(), ioctls().len(), "one descriptor per number");
    }

    #[test]
    fn every_iommufd_number_has_a_descriptor() {
        for nr in IOMMUFD_CMD_BASE..=0x94 {
            let found = ioctls()
                .iter()
                .any(|d| d.cmd & 0xff == nr && (d.cmd >> 8) & 0xff == u32::from(IOMMUFD_TYPE));
            assert!(found, "no descriptor for iommufd number {nr:#x}");
        }
    }
}
