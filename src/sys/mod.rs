//! Every raw system call of the daemon and its tools, each behind a safe wrapper that says why
//! it is sound (`// SAFETY:`), grouped by subject. This is the bottom of the layering: every
//! layer may use it, and it imports none of them (only the uAPI crate, nix, rustix, libc and
//! io-uring).
//!
//! Outside this module the library has no `unsafe` code, its unit tests included: `lib.rs` denies
//! `unsafe_code` for every other module, so the compiler enforces it.

pub mod fd;
pub mod ioctl;
pub mod mem;
pub mod process;
pub mod seccomp;
pub mod signal;
pub mod uffd;
pub mod uring;
pub mod vfio;
