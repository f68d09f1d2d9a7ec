//! Dispatch: the ioctl table, the command handlers and the services handed to the transport.

pub mod daemon;
pub mod extensions;
#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod fail_nth;
#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod fuzz;
pub mod handles;
#[cfg(test)]
mod harness;
pub mod hwpt_cmds;
pub mod ioas_cmds;
mod observed_device;
pub mod observer;
pub mod private_abi;
pub mod selftest;
mod status;
pub mod table;
#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests;
pub mod ucmd;
pub mod viommu_cmds;
pub mod with_devices;

pub use crate::service::{NodeKind, OpenFile, Service};
pub use daemon::{Daemon, DaemonService, DeviceOpener};
pub use table::Extensions;
pub use ucmd::Ucmd;
