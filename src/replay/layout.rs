//! What the script language knows about each ioctl: its number, how its argument is passed, the
//! uAPI struct's fields (offset, width, role) and the symbolic constants and errno names.
//!
//! Offsets and sizes come from the uAPI crate's structs (`offset_of!`), so the table cannot drift
//! from the layout the daemon decodes.

use nix::errno::Errno;
use std::mem::{offset_of, size_of};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::vfio::*;

/// How a field is treated by the encoder and the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The struct's leading `size` / `argsz` word.
    Size,
    /// A plain integer.
    Int,
    /// An object ID the caller supplies.
    Id,
    /// An object ID the daemon returns.
    OutId,
    /// An IOVA (input, or output when the call allocates it).
    Iova,
    /// A pointer to caller memory, `len` naming the field that holds its length.
    Ptr { len: &'static str },
    /// A pointer to an array of `iommu_iova_range`, `count` naming the field with the element count;
    /// `input` when the daemon reads it, otherwise the daemon fills it.
    Ranges { count: &'static str, input: bool },
    /// A file descriptor in the caller's table.
    Fd,
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

/// One ioctl the script language can build.
#[derive(Debug)]
pub struct IoctlDef {
    pub name: &'static str,
    pub cmd: u32,
    pub kind: ArgKind,
    /// Size of the struct (0 for [`ArgKind::Value`]).
    pub size: usize,
    pub fields: Vec<Field>,
}

impl IoctlDef {
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
            name: stringify!($name),
            off: offset_of!($ty, $name),
            width: width(|s: &$ty| &s.$name),
            role: $role,
        }),*]
    };
}

macro_rules! def {
    ($cmd:ident, $ty:ty; $($name:ident : $role:expr),* $(,)?) => {
        IoctlDef {
            name: stringify!($cmd),
            cmd: $cmd,
            kind: ArgKind::Struct,
            size: size_of::<$ty>(),
            fields: fields!($ty; $($name: $role),*),
        }
    };
}

use Role::*;

/// Every ioctl the script language knows, by kernel name.
pub fn ioctls() -> &'static [IoctlDef] {
    static TABLE: std::sync::OnceLock<Vec<IoctlDef>> = std::sync::OnceLock::new();
    TABLE.get_or_init(build)
}

fn build() -> Vec<IoctlDef> {
    let ranges_in = Ranges {
        count: "num_iovas",
        input: true,
    };
    let ranges_out = Ranges {
        count: "num_iovas",
        input: false,
    };
    let value = |name, cmd| IoctlDef {
        name,
        cmd,
        kind: ArgKind::Value,
        size: 0,
        fields: Vec::new(),
    };
    vec![
        def!(IOMMU_DESTROY, iommu_destroy; size: Size, id: Id),
        def!(IOMMU_IOAS_ALLOC, iommu_ioas_alloc; size: Size, flags: Int, out_ioas_id: OutId),
        def!(IOMMU_IOAS_ALLOW_IOVAS, iommu_ioas_allow_iovas;
            size: Size, ioas_id: Id, num_iovas: Int, reserved: Int, allowed_iovas: ranges_in),
        def!(IOMMU_IOAS_COPY, iommu_ioas_copy;
            size: Size, flags: Int, dst_ioas_id: Id, src_ioas_id: Id, length: Int,
            dst_iova: Iova, src_iova: Iova),
        def!(IOMMU_IOAS_IOVA_RANGES, iommu_ioas_iova_ranges;
            size: Size, ioas_id: Id, num_iovas: Int, reserved: Int, allowed_iovas: ranges_out,
            out_iova_alignment: Int),
        def!(IOMMU_IOAS_MAP, iommu_ioas_map;
            size: Size, flags: Int, ioas_id: Id, reserved: Int, user_va: Ptr { len: "length" },
            length: Int, iova: Iova),
        def!(IOMMU_IOAS_MAP_FILE, iommu_ioas_map_file;
            size: Size, flags: Int, ioas_id: Id, fd: Fd, start: Int, length: Int, iova: Iova),
        def!(IOMMU_IOAS_UNMAP, iommu_ioas_unmap; size: Size, ioas_id: Id, iova: Iova, length: Int),
        def!(IOMMU_OPTION, iommu_option;
            size: Size, option_id: Int, op: Int, reserved: Int, object_id: Id, val64: Int),
        def!(IOMMU_VFIO_IOAS, iommu_vfio_ioas; size: Size, ioas_id: Id, op: Int, reserved: Int),
        value("VFIO_GET_API_VERSION", VFIO_GET_API_VERSION),
        value("VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION),
        value("VFIO_SET_IOMMU", VFIO_SET_IOMMU),
        def!(VFIO_IOMMU_GET_INFO, vfio_iommu_type1_info;
            argsz: Size, flags: Int, iova_pgsizes: Int, cap_offset: Int, pad: Int),
        def!(VFIO_IOMMU_MAP_DMA, vfio_iommu_type1_dma_map;
            argsz: Size, flags: Int, vaddr: Ptr { len: "size" }, iova: Iova, size: Int),
        def!(VFIO_IOMMU_UNMAP_DMA, vfio_iommu_type1_dma_unmap;
            argsz: Size, flags: Int, iova: Iova, size: Int),
    ]
}

pub fn by_name(name: &str) -> Option<&'static IoctlDef> {
    ioctls().iter().find(|d| d.name == name)
}

pub fn by_cmd(cmd: u32) -> Option<&'static IoctlDef> {
    ioctls().iter().find(|d| d.cmd == cmd)
}

/// Symbolic constants usable in expressions.
pub const CONSTANTS: &[(&str, u64)] = &[
    ("U64_MAX", u64::MAX),
    ("U32_MAX", u32::MAX as u64),
    ("U16_MAX", u16::MAX as u64),
    ("PAGE_SIZE", 4096),
    (
        "IOMMU_IOAS_MAP_FIXED_IOVA",
        IOMMU_IOAS_MAP_FIXED_IOVA as u64,
    ),
    ("IOMMU_IOAS_MAP_WRITEABLE", IOMMU_IOAS_MAP_WRITEABLE as u64),
    ("IOMMU_IOAS_MAP_READABLE", IOMMU_IOAS_MAP_READABLE as u64),
    ("IOMMU_OPTION_RLIMIT_MODE", IOMMU_OPTION_RLIMIT_MODE as u64),
    ("IOMMU_OPTION_HUGE_PAGES", IOMMU_OPTION_HUGE_PAGES as u64),
    ("IOMMU_OPTION_OP_SET", IOMMU_OPTION_OP_SET as u64),
    ("IOMMU_OPTION_OP_GET", IOMMU_OPTION_OP_GET as u64),
    ("IOMMU_VFIO_IOAS_GET", IOMMU_VFIO_IOAS_GET as u64),
    ("IOMMU_VFIO_IOAS_SET", IOMMU_VFIO_IOAS_SET as u64),
    ("IOMMU_VFIO_IOAS_CLEAR", IOMMU_VFIO_IOAS_CLEAR as u64),
    ("VFIO_API_VERSION", VFIO_API_VERSION as u64),
    ("VFIO_TYPE1_IOMMU", VFIO_TYPE1_IOMMU as u64),
    ("VFIO_SPAPR_TCE_IOMMU", VFIO_SPAPR_TCE_IOMMU as u64),
    ("VFIO_TYPE1v2_IOMMU", VFIO_TYPE1v2_IOMMU as u64),
    ("VFIO_DMA_CC_IOMMU", VFIO_DMA_CC_IOMMU as u64),
    ("VFIO_EEH", VFIO_EEH as u64),
    ("VFIO_TYPE1_NESTING_IOMMU", VFIO_TYPE1_NESTING_IOMMU as u64),
    ("VFIO_SPAPR_TCE_v2_IOMMU", VFIO_SPAPR_TCE_v2_IOMMU as u64),
    ("VFIO_NOIOMMU_IOMMU", VFIO_NOIOMMU_IOMMU as u64),
    ("VFIO_UNMAP_ALL", VFIO_UNMAP_ALL as u64),
    ("VFIO_UPDATE_VADDR", VFIO_UPDATE_VADDR as u64),
    ("VFIO_IOMMU_INFO_PGSIZES", VFIO_IOMMU_INFO_PGSIZES as u64),
    ("VFIO_IOMMU_INFO_CAPS", VFIO_IOMMU_INFO_CAPS as u64),
    ("VFIO_DMA_MAP_FLAG_READ", VFIO_DMA_MAP_FLAG_READ as u64),
    ("VFIO_DMA_MAP_FLAG_WRITE", VFIO_DMA_MAP_FLAG_WRITE as u64),
    ("VFIO_DMA_MAP_FLAG_VADDR", VFIO_DMA_MAP_FLAG_VADDR as u64),
    (
        "VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP",
        VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP as u64,
    ),
    ("VFIO_DMA_UNMAP_FLAG_ALL", VFIO_DMA_UNMAP_FLAG_ALL as u64),
    (
        "VFIO_DMA_UNMAP_FLAG_VADDR",
        VFIO_DMA_UNMAP_FLAG_VADDR as u64,
    ),
];

pub fn constant(name: &str) -> Option<u64> {
    CONSTANTS.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

/// The errno with this name ("ENOENT"), from the platform's errno list.
pub fn errno_by_name(name: &str) -> Option<Errno> {
    (1..4096)
        .map(Errno::from_raw)
        .find(|e| *e != Errno::UnknownErrno && errno_name(*e) == name)
}

/// The name of an errno ("ENOENT"); numeric for errnos the platform does not name.
pub fn errno_name(e: Errno) -> String {
    if e == Errno::UnknownErrno {
        return "EUNKNOWN".into();
    }
    format!("{e:?}")
}

/// The element of the nested IOVA-range arrays.
pub const RANGE_SIZE: usize = size_of::<iommu_iova_range>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for d in ioctls() {
            if d.kind == ArgKind::Struct {
                assert_eq!(d.fields[0].role, Role::Size, "{}", d.name);
                assert_eq!(d.fields[0].off, 0);
                for f in &d.fields {
                    assert!(f.off + f.width <= d.size, "{}.{}", d.name, f.name);
                    if let Role::Ptr { len } | Role::Ranges { count: len, .. } = f.role {
                        assert!(d.field(len).is_some(), "{}.{}", d.name, len);
                    }
                }
            }
        }
        assert_eq!(by_name("IOMMU_IOAS_MAP").unwrap().size, 40);
    }

    #[test]
    fn errno_names_round_trip() {
        assert_eq!(errno_by_name("ENOENT"), Some(Errno::ENOENT));
        assert_eq!(errno_by_name("EOPNOTSUPP"), Some(Errno::EOPNOTSUPP));
        assert_eq!(errno_by_name("EBOGUS"), None);
        assert_eq!(errno_name(Errno::E2BIG), "E2BIG");
    }
}
