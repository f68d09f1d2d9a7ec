//! A hollow iommufd stand-in: serves the same nodes as `uiommufd serve` through the same transport,
//! but answers 0 to every ioctl without reading or writing anything. It exists to measure how many
//! kernel selftest instances pass "for free" (see docs/kselftest.md):
//!
//!     cargo build --example zero_server
//!     UIOMMUFD_CMD=target/debug/examples/zero_server LINUX_SRC=... scripts/kselftest.sh --tap-only
//!
//! Usage mirrors the daemon: `zero_server serve --transport fuse --mount DIR [--bind-dev]`.

use clap::Parser;
use nix::errno::Errno;
use std::sync::Arc;
use uiommufd::caller::CallerMemory;
use uiommufd::dispatch::{NodeKind, OpenFile, Service};
use uiommufd::transport::TransportOptions;

#[derive(Parser)]
struct Cli {
    /// Only `serve` exists, for command-line compatibility with the daemon.
    #[arg(value_parser = ["serve"])]
    _command: String,
    #[command(flatten)]
    transport: TransportOptions,
}

struct Zero;

impl OpenFile for Zero {
    fn ioctl(&self, _cmd: u32, _arg: u64, _mem: &dyn CallerMemory) -> Result<i64, Errno> {
        Ok(0)
    }
    fn release(&self) {}
}

struct ZeroService;

impl Service for ZeroService {
    fn open(&self, _node: &NodeKind) -> Result<Arc<dyn OpenFile>, Errno> {
        Ok(Arc::new(Zero))
    }
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            term.recv().await;
        };
        uiommufd::transport::run(cli.transport, Arc::new(ZeroService), shutdown).await
    })
}
