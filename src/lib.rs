//! uiommufd: Linux's iommufd served from userspace.
//!
//! Layers, each a folder, requests flowing down only:
//! `transport` (FUSE/CUSE wire, per-open state) → `caller` (the caller's memory and fds) →
//! `dispatch` (ioctl number → handler, the extensible-struct rule) → `objects` (per-context ID table) →
//! `iopt` (the io_pagetable: areas, allowed/reserved ranges, IOVA allocation, pin accounting) →
//! `backends` (mock domain) and `devices` (emulated VFIO PCI devices). `ops`: host-daemon commands beside
//! `serve` (`doctor`). `sys`, beneath them all: every raw system call, each behind a safe wrapper
//! saying why it is sound. `narrow`, beneath everything: the integer narrowings that cannot lose
//! bits.

// Raw system calls live in `sys` (each with its SAFETY); nothing else may hold `unsafe` code.
#![deny(unsafe_code)]
// Narrowing is explicit: `try_from` with the kernel's errno, or a helper of `narrow`.
#![deny(clippy::cast_possible_truncation)]

pub mod backends;
pub mod caller;
pub mod devices;
pub mod dispatch;
pub mod iopt;
pub mod launch;
pub mod narrow;
pub mod objects;
pub mod ops;
pub mod ratelimit;
pub mod replay;
pub mod service;
#[allow(unsafe_code)]
pub mod sys;
pub mod transport;
