//! Transport: the FUSE/CUSE wire protocol, sessions and per-open state.

use std::path::PathBuf;

/// Which kernel interface serves the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// CUSE when /dev/cuse can be opened, else FUSE.
    Auto,
    Cuse,
    Fuse,
}

/// Options of `uiommufd serve` that concern the transport.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportOptions {
    #[arg(long, value_enum, default_value_t = TransportKind::Auto)]
    pub transport: TransportKind,
    /// FUSE mount point holding `iommu`, `vfio/vfio` and `vfio/devices/*`.
    #[arg(long, default_value = "/run/uiommufd")]
    pub mount: PathBuf,
    /// In FUSE mode, also bind-mount the node files over /dev/iommu and /dev/vfio/vfio.
    #[arg(long)]
    pub bind_dev: bool,
}
