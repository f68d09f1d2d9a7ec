//! Commands for running uiommufd as a host daemon, beside `serve`: `doctor` checks the host.

pub mod doctor;
