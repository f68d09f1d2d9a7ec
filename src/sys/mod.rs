//! Every raw system call of the daemon and its tools, each behind a safe wrapper that says why
//! it is sound (`// SAFETY:`), grouped by subject. This is the bottom of the layering: every
//! layer may use it, and it imports none of them (only the uAPI crate, nix, rustix and libc).
//!
//! Outside this module no `unsafe` block remains but in test code and in `transport` (FUSE
//! session fd registration and the io_uring queue, still to be moved here).

pub mod fd;
pub mod ioctl;
pub mod mem;
pub mod process;
pub mod seccomp;
pub mod vfio;
