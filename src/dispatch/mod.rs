//! Dispatch: the ioctl table and the services handed to the transport.

pub mod service;

pub use service::{NodeKind, OpenFile, Service};
