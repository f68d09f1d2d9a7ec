//! `uiommufd launch`: runs a command under a seccomp user-notify supervisor.

pub mod seccomp;
