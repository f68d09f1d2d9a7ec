// As the library: narrowing is explicit (`try_from` with an errno, or `uiommufd::narrow`).
#![deny(clippy::cast_possible_truncation)]

use clap::{CommandFactory, Parser, Subcommand};
use std::sync::Arc;
use uiommufd::dispatch::DaemonService;

#[derive(Parser)]
#[command(
    name = "uiommufd",
    version,
    about = "iommufd (/dev/iommu) served from userspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `uiommufd serve`.
#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    transport: uiommufd::transport::TransportOptions,
    /// Write every context's ioctls as a replayable script into DIR (one file per open).
    #[arg(long, value_name = "DIR")]
    record: Option<std::path::PathBuf>,
    /// Serve an emulated VFIO PCI device as `<mount>/vfio/devices/NAME` (repeatable).
    /// `dmacopy[:NAME]`: a DMA copy engine, PCI 1234:dc01 (default NAME dmacopy0).
    #[arg(long = "device", value_name = "dmacopy[:NAME]", value_parser = uiommufd::devices::parse_spec)]
    devices: Vec<String>,
    /// Serve a real PCI device (bound to vfio-pci) as `<mount>/vfio/devices/BDF`, behind a
    /// kernel VFIO type1 container that mirrors the page table it attaches to (repeatable).
    #[arg(id = "vfio_devices", long = "vfio", value_name = "BDF", value_parser = uiommufd::backends::vfio::host::parse_bdf)]
    vfio_devices: Vec<String>,
    /// Also serve the kernel selftest's surface (IOMMU_TEST_CMD: mock devices, test accesses,
    /// dma-bufs), as a kernel built with CONFIG_IOMMUFD_TEST. Off by default: on a shared host
    /// it would hand every user of the node the selftest's raw access paths.
    #[arg(long)]
    selftest: bool,
    /// The control socket `uiommufd status` asks (mode 0600; must be outside the mount).
    #[arg(long, value_name = "PATH", default_value = uiommufd::ops::control::DEFAULT_PATH)]
    control: std::path::PathBuf,
    /// Contexts (open iommufd files) one user may hold at once; ENOMEM beyond.
    #[arg(long, value_name = "N", default_value_t = uiommufd::dispatch::daemon::CONTEXTS_PER_USER)]
    max_contexts_per_user: usize,
    /// Most mappings (IOAS areas, VFIO DMA mappings) one context may hold; past it maps answer
    /// ENOSPC, as VFIO type1 at its dma_entry_limit (65535 by default there). 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_mappings_per_context: u64,
    /// How pinned memory of new /dev/iommu contexts is charged against RLIMIT_MEMLOCK until a
    /// context sets IOMMU_OPTION_RLIMIT_MODE: per user (the kernel's default) or per process
    /// (as VFIO type1 does, which some programs' limits are sized for).
    #[arg(long, value_name = "MODE", value_enum, default_value = "user")]
    memlock_mode: MemlockMode,
    /// A TOML file of serve flags (keys are the flags without dashes); the command line wins.
    /// Default /etc/uiommufd/uiommufd.toml if it exists; `none` reads no file.
    #[arg(long, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve /dev/iommu and /dev/vfio/vfio (CUSE) or files in a FUSE mount.
    Serve(ServeArgs),
    /// Run ioctl scripts against a node (default /dev/iommu) or an in-process daemon.
    Replay(uiommufd::replay::ReplayArgs),
    /// Run CMD so that iommufd ioctls returning a new fd (fault and vEVENT queues, the selftest's
    /// accesses) work on a uiommufd node, and a real device CMD binds through a node becomes the
    /// kernel's own device fd (BAR mmap, KVM): a seccomp user-notify supervisor installs those
    /// fds. Exits with CMD's status.
    Launch(uiommufd::launch::LaunchArgs),
    /// Check this host for what `serve` needs (FUSE/CUSE, IOMMU, VFIO, memlock, QEMU) and say what
    /// to do, one line per finding. Exits 0 only when `serve` with these options can work.
    Doctor(uiommufd::ops::doctor::DoctorArgs),
    /// Show what the running daemon holds: contexts and their objects, pinned pages, the daemon's
    /// mappings of clients' memory, devices (asks `serve` over its control socket).
    Status(uiommufd::ops::control::StatusArgs),
    /// Write the manual pages (uiommufd.1 and one per subcommand) into DIR, generated from these
    /// definitions (for packaging).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// `serve --memlock-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MemlockMode {
    User,
    Process,
}

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    // Colour only for a person at a terminal: a log file, a pipe or journald gets plain text.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let argv = match uiommufd::ops::config::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("config: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Replay(args) => uiommufd::replay::main(args),
        Command::Launch(args) => uiommufd::launch::main(args),
        Command::Doctor(args) => uiommufd::ops::doctor::main(args),
        Command::Status(args) => uiommufd::ops::control::status_main(args),
        Command::Man { dir } => man(&dir),
    }
}

/// The manual pages of every visible (sub)command, from the clap definitions above.
fn man(dir: &std::path::Path) -> std::process::ExitCode {
    match std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(%e, dir = %dir.display(), "cannot write the manual pages");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> std::process::ExitCode {
    let ServeArgs {
        transport: opts,
        record,
        devices,
        vfio_devices: vfio,
        selftest,
        control,
        max_contexts_per_user,
        max_mappings_per_context,
        memlock_mode,
        config: _,
    } = args;
    let control = control.as_path();
    use uiommufd::ops::{control::ControlSocket, notify::notify_logged};
    // Client files are held one fd each; give the daemon all the fds it may have.
    let nofile = uiommufd::iopt::limits::raise_fd_limit();
    tracing::debug!(nofile, "RLIMIT_NOFILE");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(%e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let ext = if selftest {
        tracing::info!("serving the selftest surface (IOMMU_TEST_CMD)");
        uiommufd::dispatch::extensions::daemon_extensions()
    } else {
        uiommufd::dispatch::extensions::production_extensions()
    };
    let hosts =
        match uiommufd::backends::vfio::host::open_devices(std::path::Path::new("/sys"), &vfio) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    let daemon = match uiommufd::dispatch::with_devices::daemon_with_devices(ext, &devices, hosts) {
        Ok((d, parts)) => {
            // Programs under `uiommufd launch` get the kernel device fds of real devices, and
            // their own VFIO groups join their compat IOAS.
            let mount = std::path::absolute(&opts.mount).unwrap_or(opts.mount.clone());
            uiommufd::devices::handout::serve(uiommufd::devices::handout::HandOut {
                mount,
                devices: parts.devices,
                groups: parts.groups,
            });
            d
        }
        Err(e) => {
            tracing::error!(%e, "bad --device");
            return std::process::ExitCode::FAILURE;
        }
    };
    daemon.set_contexts_per_user(max_contexts_per_user);
    daemon.set_mapping_limit(max_mappings_per_context);
    if memlock_mode == MemlockMode::Process {
        daemon.set_memlock_mode(uiommufd::iopt::accounting::AccountMode::Process);
    }
    if let Some(dir) = record {
        match uiommufd::replay::record::Recorder::new(&dir) {
            Ok(r) => {
                daemon.set_observer(Arc::new(r));
            }
            Err(e) => {
                tracing::error!(%e, dir = %dir.display(), "--record: cannot create the directory");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    // The control socket first: a daemon already answering there stops this one before it mounts.
    let control = match uiommufd::ops::control::check_outside_mount(control, &opts.mount)
        .and_then(|()| ControlSocket::bind(control))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let service: Arc<dyn uiommufd::dispatch::Service> = Arc::new(DaemonService(daemon));
    let result = runtime.block_on(async move {
        // Installed before the nodes go live: a SIGTERM right after READY=1 must shut down
        // cleanly, not kill the process by the default action.
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            control.remove();
            return Err(std::io::Error::other("cannot install signal handlers"));
        };
        let stopping = std::sync::atomic::AtomicBool::new(false);
        let shutdown = async {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            stopping.store(true, std::sync::atomic::Ordering::Relaxed);
            notify_logged("STOPPING=1");
        };
        let transport = match uiommufd::transport::Transport::start(&opts, service.clone()).await {
            Ok(t) => t,
            Err(e) => {
                control.remove();
                return Err(e);
            }
        };
        let control = match control.serve(service, transport.stats()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "control socket: cannot serve; `uiommufd status` will not answer");
                None
            }
        };
        notify_logged(&format!(
            "READY=1\nSTATUS=serving at {}",
            transport.mount_point().display()
        ));
        let r = transport.serve_until(shutdown).await;
        if !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            notify_logged("STOPPING=1");
        }
        if let Some(c) = control {
            c.stop();
        }
        r
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(%e, "transport failed");
            std::process::ExitCode::FAILURE
        }
    }
}
