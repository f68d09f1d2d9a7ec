//! Commands for running uiommufd as a host daemon, beside `serve`: `doctor` checks the host,
//! `status` asks the running daemon over its control socket; `notify` tells systemd it is ready.

pub mod config;
pub mod control;
pub mod doctor;
pub mod notify;
