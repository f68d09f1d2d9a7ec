use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "uiommufd", version, about = "iommufd (/dev/iommu) served from userspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve /dev/iommu and /dev/vfio/vfio (CUSE) or files in a FUSE mount.
    Serve {
        #[command(flatten)]
        transport: uiommufd::transport::TransportOptions,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { transport } => {
            tracing::info!(?transport, "serve");
        }
    }
}
