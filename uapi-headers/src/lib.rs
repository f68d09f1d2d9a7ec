//! Linux 7.2 iommufd and VFIO type1 uAPI as plain Rust data.
//!
//! Every argument struct is `#[repr(C)]` with the kernel's layout and derives
//! the zerocopy traits, so it can be read from and written to caller memory as
//! bytes. Struct, field and constant names are the kernel's (a leading `__` is
//! dropped from reserved fields). Places where C has implicit padding carry an
//! explicit `__pad` field; C unions are flattened as documented on each struct.
//! `tests/layout.rs` pins sizes, offsets and ioctl numbers against the C
//! headers.
#![allow(non_camel_case_types)]
// Plain data and numbers: no system call, so no unsafe (the daemon's are in its `sys` module).
#![forbid(unsafe_code)]

pub mod iommufd;
pub mod selftest;
pub mod table;
pub mod vfio;

pub use iommufd::io;
