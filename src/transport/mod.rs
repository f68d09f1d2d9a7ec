//! Transport: the FUSE/CUSE wire protocol, sessions and per-open state.
//!
//! # API for the daemon
//!
//! ```ignore
//! // All in one: start, serve until `shutdown` resolves (e.g. SIGTERM/SIGINT), clean up.
//! transport::run(opts, service, shutdown).await?;
//!
//! // Or in steps, e.g. to report readiness in between:
//! let t = transport::Transport::start(&opts, service).await?; // nodes are live when this returns
//! t.serve_until(shutdown).await?;                               // stops, releases, unmounts
//! ```
//!
//! Both must run inside a tokio runtime (the multi-threaded one is expected); requests never run on
//! tokio. Over /dev/fuse and /dev/cuse each session has a few reader threads ([`readers`]) that
//! read a request, handle it and answer it themselves (no hand-off: the hot path of every iommufd
//! ioctl), as long as another reader is left reading and the caller's user is under its share;
//! otherwise the request goes to the transport's fixed worker pool (`pool`: per-user lanes). So a
//! client that stalls the request it is in holds one thread of its own share, never the others'.
//!
//! # What is served
//!
//! A FUSE filesystem at `opts.mount` holds `iommu` ([`NodeKind::Iommu`]), `vfio/vfio`
//! ([`NodeKind::VfioContainer`]), `vfio/devices/<name>` for each of [`Service::device_names`] (taken at
//! start) and a read-only `status` file ([`Service::status`], read at each open). All files are opened
//! with `FOPEN_DIRECT_IO`, so reads and writes reach the service at their real offsets.
//!
//! FUSE requests travel over /dev/fuse (`session`, [`readers`]) or, with [`UringMode`] `auto`
//! when INIT offers it or `on`, over io_uring ([`uring`]): ring threads pinned to each possible
//! CPU, so a caller is answered on its own CPU without waking another (the
//! cross-CPU wake-up dominates the /dev/fuse round trip). INIT, FORGET, INTERRUPT and
//! notifications stay on /dev/fuse either way. CUSE stays on /dev/cuse: the kernel turns io_uring
//! on only while processing a FUSE INIT reply (CUSE_INIT has no such flag).
//!
//! In CUSE mode ([`TransportKind::Cuse`], or `Auto` when /dev/cuse opens), `/dev/iommu` and
//! `/dev/vfio/vfio` are additionally real character devices with unrestricted ioctls; the FUSE mount
//! still exists for the device files and `status`. `--bind-dev` (FUSE mode only) bind-mounts
//! `<mount>/iommu` over /dev/iommu and `<mount>/vfio/vfio` over /dev/vfio/vfio.
//!
//! # Lifecycle
//!
//! [`Transport::start`] detaches stale mounts of ours (or dead FUSE mounts) at the mount point (and at
//! the /dev targets with `--bind-dev`), starts the readers, mounts, and returns once INIT (and each
//! CUSE_INIT) was answered and, over io_uring, every queue is set up. Shutdown undoes the bind mounts and lazily unmounts first (while requests
//! are still served, so no path walk can wait on us), waits up to [`SHUTDOWN_GRACE`] for requests
//! in flight (the readers still answer the daemon's own queries meanwhile), stops reading and the
//! io_uring queues, and —
//! only if everything finished — calls [`OpenFile::release`] on every file still open; the device
//! fds close with the process.

pub mod handler;
pub mod mounts;
pub mod perms;
pub mod pool;
pub mod readers;
pub mod session;
pub mod stats;
pub mod tree;
pub mod uring;
pub mod wire;

use crate::caller::context_query::{self, OwnNode};
use crate::dispatch::{NodeKind, Service};
use handler::{CallerResolver, Handler, ProcessCallers, Role};
use session::{Channel, Pools, SessionEnd};
pub use stats::{with_transport_status, FuseChannel, TransportStats};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

#[cfg(doc)]
use crate::service::OpenFile;

/// Which kernel interface serves the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// CUSE when /dev/cuse can be opened, else FUSE.
    Auto,
    Cuse,
    Fuse,
}

/// Whether FUSE requests travel over io_uring (see [`uring`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UringMode {
    /// io_uring when the kernel offers it in INIT, else /dev/fuse.
    Auto,
    /// io_uring or fail to start.
    On,
    /// /dev/fuse only; INIT never accepts io_uring.
    Off,
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
    /// FUSE requests over io_uring, ring threads pinned to each CPU so a caller is answered on its
    /// own CPU (Linux ≥ 6.14 with CONFIG_FUSE_IO_URING and the fuse module's enable_uring=Y): `auto`
    /// uses it when the kernel offers it, `on` fails to start when it does not. CUSE devices
    /// always use /dev/cuse.
    #[arg(long = "io-uring", value_enum, default_value_t = UringMode::Auto)]
    pub io_uring: UringMode,
    #[command(flatten)]
    pub perms: perms::NodePerms,
}

impl TransportOptions {
    /// FUSE mode at `mount`, default permissions, no bind mounts.
    pub fn fuse(mount: &Path) -> Self {
        Self {
            transport: TransportKind::Fuse,
            mount: mount.to_path_buf(),
            bind_dev: false,
            io_uring: UringMode::Auto,
            perms: perms::NodePerms::default(),
        }
    }
}

const DEV_FUSE: &str = "/dev/fuse";
const DEV_CUSE: &str = "/dev/cuse";
/// The CUSE character devices: the node each serves and its DEVNAME (a path under /dev).
const CUSE_DEVICES: [(NodeKind, &str); 2] = [
    (NodeKind::Iommu, "iommu"),
    (NodeKind::VfioContainer, "vfio/vfio"),
];
/// How long INIT / CUSE_INIT may take before start gives up.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight. A request can wait on its caller for as long as
/// the caller likes (memory behind its own userfaultfd); shutdown goes on without it after this, and
/// the caller gets an error when the connection goes away with the process.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Starts the transport, serves until `shutdown` resolves (or the kernel drops the connection), then
/// shuts down cleanly. See the module documentation.
pub async fn run(
    opts: TransportOptions,
    service: Arc<dyn Service>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    Transport::start(&opts, service)
        .await?
        .serve_until(shutdown)
        .await
}

struct Session {
    name: String,
    handler: Arc<Handler>,
    task: JoinHandle<io::Result<SessionEnd>>,
}

/// A running transport.
pub struct Transport {
    kind: TransportKind,
    mount: PathBuf,
    mounted: bool,
    binds: Vec<mounts::BindMount>,
    sessions: Vec<Session>,
    /// The io_uring queues of the FUSE connection, when it uses them.
    rings: Option<uring::Queues>,
    pools: Arc<Pools>,
    /// This transport's counters, for the status.
    stats: Arc<TransportStats>,
    stop: watch::Sender<bool>,
    ended: Arc<Notify>,
}

impl Transport {
    /// Sets everything up; the nodes are live when this returns.
    pub async fn start(opts: &TransportOptions, service: Arc<dyn Service>) -> io::Result<Self> {
        Self::start_with(opts, service, Arc::new(ProcessCallers)).await
    }

    /// [`Transport::start`] with another way to reach callers' memory.
    pub async fn start_with(
        opts: &TransportOptions,
        service: Arc<dyn Service>,
        callers: Arc<dyn CallerResolver>,
    ) -> io::Result<Self> {
        let kind = match opts.transport {
            TransportKind::Fuse => TransportKind::Fuse,
            TransportKind::Cuse => TransportKind::Cuse,
            TransportKind::Auto if cuse_available() => TransportKind::Cuse,
            TransportKind::Auto => TransportKind::Fuse,
        };
        let mount = mounts::absolute(&opts.mount)?;
        let bind_dev = opts.bind_dev && kind == TransportKind::Fuse;
        if opts.bind_dev && !bind_dev {
            tracing::warn!(
                "--bind-dev ignored in CUSE mode: /dev/iommu and /dev/vfio/vfio are real devices"
            );
        }
        {
            let (mount, dev) = (mount.clone(), bind_dev);
            blocking(move || {
                mounts::cleanup_stale(&mount)?;
                if dev {
                    mounts::cleanup_stale(Path::new("/dev/iommu"))?;
                    mounts::cleanup_stale(Path::new("/dev/vfio/vfio"))?;
                }
                std::fs::create_dir_all(&mount)
            })
            .await?;
        }
        let mut t = Transport {
            kind,
            mount: mount.clone(),
            mounted: false,
            binds: Vec::new(),
            sessions: Vec::new(),
            rings: None,
            pools: Arc::new(Pools::new()?),
            stats: Arc::new(TransportStats::default()),
            stop: watch::channel(false).0,
            ended: Arc::new(Notify::new()),
        };
        match t
            .bring_up(service, callers, bind_dev, opts.perms, opts.io_uring)
            .await
        {
            Ok(()) => {
                tracing::info!(kind = ?t.kind, mount = %t.mount.display(), "transport ready");
                Ok(t)
            }
            Err(e) => {
                if let Err(e2) = t.shutdown().await {
                    tracing::warn!(error = %e2, "cleaning up after a failed start");
                }
                Err(e)
            }
        }
    }

    async fn bring_up(
        &mut self,
        service: Arc<dyn Service>,
        callers: Arc<dyn CallerResolver>,
        bind_dev: bool,
        perms: perms::NodePerms,
        io_uring: UringMode,
    ) -> io::Result<()> {
        if self.kind == TransportKind::Cuse {
            for (node, devname) in CUSE_DEVICES {
                // A CUSE device goes with its server, so a node already there is someone else's:
                // the kernel's own (VFIO's container, or /dev/iommu of a kernel with
                // CONFIG_IOMMUFD). Never take it over, chmod it, or treat it as ours.
                let path = Path::new("/dev").join(devname);
                if std::fs::symlink_metadata(&path).is_ok() {
                    if node == NodeKind::VfioContainer {
                        tracing::warn!(
                            path = %path.display(),
                            mount = %self.mount.display(),
                            "the kernel's VFIO container node exists: the compat container is \
                             served only as <mount>/vfio/vfio"
                        );
                        continue;
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} exists already (a kernel with CONFIG_IOMMUFD, or another daemon): \
                             not serving over it",
                            path.display()
                        ),
                    ));
                }
                let chan = Channel::new(Channel::open_device(Path::new(DEV_CUSE))?)?;
                let perm = match node {
                    NodeKind::VfioContainer => perms.vfio,
                    _ => perms.iommu,
                };
                let role = Role::Cuse {
                    node,
                    devname: devname.to_string(),
                };
                // CUSE cannot use io_uring: the kernel enables it only from a FUSE INIT reply.
                let h = self.spawn(
                    format!("cuse:{devname}"),
                    chan,
                    role,
                    (&service, &callers),
                    false,
                );
                wait_ready(&h).await?;
                let path = Path::new("/dev").join(devname);
                blocking(move || {
                    apply_cuse_perm(&path, perm)?;
                    let rdev = std::fs::metadata(&path)?.rdev();
                    context_query::register_own_node(OwnNode::CharDevice { rdev });
                    Ok(())
                })
                .await?;
            }
        }
        let fd = Channel::open_device(Path::new(DEV_FUSE))?;
        mounts::mount_fuse(fd.as_raw_fd(), &self.mount)?;
        self.mounted = true;
        // The rings get their own descriptor of the same open file.
        let ring_fd = match io_uring {
            UringMode::Off => None,
            _ => Some(fd.try_clone()?),
        };
        // INIT is queued by now; it waits for the reader started here.
        let chan = Channel::new(fd)?;
        let role = Role::Fuse(tree::Tree::with_perms(service.device_names(), perms));
        let want = ring_fd.is_some();
        let h = self.spawn("fuse".into(), chan, role, (&service, &callers), want);
        wait_ready(&h).await?;
        self.start_rings(&h, ring_fd, io_uring).await?;
        let m = self.mount.clone();
        let dev = blocking(move || Ok(std::fs::metadata(m)?.dev())).await?;
        for ino in [tree::IOMMU, tree::VFIO_CONTAINER] {
            context_query::register_own_node(OwnNode::MountFile { dev, ino });
        }
        if bind_dev {
            let m = self.mount.clone();
            let binds = blocking(move || {
                let a = mounts::BindMount::new(&m.join("iommu"), Path::new("/dev/iommu"))?;
                let b = mounts::BindMount::new(&m.join("vfio/vfio"), Path::new("/dev/vfio/vfio"))?;
                Ok(vec![a, b])
            })
            .await?;
            self.binds = binds;
        }
        Ok(())
    }

    /// Starts the io_uring queues when INIT took io_uring; logs which channel serves requests.
    async fn start_rings(
        &mut self,
        h: &Arc<Handler>,
        ring_fd: Option<std::os::fd::OwnedFd>,
        mode: UringMode,
    ) -> io::Result<()> {
        let (offered, negotiated) = h.uring();
        let stats = self.stats.clone();
        let set_channel = |c| stats.set_fuse_channel(c);
        let ring_fd = match ring_fd {
            Some(fd) if negotiated => fd,
            _ => {
                if mode == UringMode::On {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "--io-uring on: the kernel did not offer FUSE over io_uring in INIT \
                         (needs Linux >= 6.14 with CONFIG_FUSE_IO_URING and \
                         /sys/module/fuse/parameters/enable_uring = Y)",
                    ));
                }
                set_channel(FuseChannel::DevFuse);
                tracing::info!(
                    io_uring_offered = offered,
                    "FUSE requests served through /dev/fuse"
                );
                return Ok(());
            }
        };
        let (handler, pools, stats) = (h.clone(), self.pools.clone(), self.stats.clone());
        let mount = self.mount.clone();
        match blocking(move || uring::Queues::start(ring_fd, mount, handler, pools, stats)).await {
            Ok(q) => {
                set_channel(FuseChannel::IoUring);
                tracing::info!(
                    queues = q.len(),
                    threads_per_cpu = uring::INITIAL_THREADS,
                    "FUSE requests served through io_uring (ring threads pinned to each CPU)"
                );
                self.rings = Some(q);
                Ok(())
            }
            // Requests keep coming through /dev/fuse until every queue is registered.
            Err(e) if mode == UringMode::Auto => {
                set_channel(FuseChannel::DevFuse);
                tracing::warn!(error = %e, "io_uring queues failed to start; FUSE requests served through /dev/fuse");
                Ok(())
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("--io-uring on: starting the io_uring queues: {e}"),
            )),
        }
    }

    fn spawn(
        &mut self,
        name: String,
        chan: Channel,
        role: Role,
        (service, callers): (&Arc<dyn Service>, &Arc<dyn CallerResolver>),
        want_uring: bool,
    ) -> Arc<Handler> {
        let handler = Handler::new(role, service.clone(), callers.clone());
        let handler = Arc::new(handler.with_stats(self.stats.clone()));
        handler.want_uring(want_uring);
        let (h, pools, stop, ended, n) = (
            handler.clone(),
            self.pools.clone(),
            self.stop.subscribe(),
            self.ended.clone(),
            name.clone(),
        );
        let task = tokio::spawn(async move {
            let r = session::serve(Arc::new(chan), h, pools, stop).await;
            match &r {
                Ok(SessionEnd::Disconnected) => {
                    tracing::warn!(session = n, "connection closed by the kernel")
                }
                Ok(SessionEnd::Stopped) => tracing::debug!(session = n, "session stopped"),
                Err(e) => tracing::error!(session = n, error = %e, "session failed"),
            }
            ended.notify_one();
            r
        });
        self.sessions.push(Session {
            name,
            handler: handler.clone(),
            task,
        });
        handler
    }

    /// The interface actually in use (never `Auto`).
    /// This transport's counters (the status of the control socket reads them).
    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// The absolute FUSE mount point.
    pub fn mount_point(&self) -> &Path {
        &self.mount
    }

    /// Serves until `shutdown` resolves or a session ends, then shuts down.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            _ = self.ended.notified() => tracing::warn!("a session ended; shutting down"),
        }
        self.shutdown().await
    }

    /// Undoes bind mounts, unmounts, stops reading, waits for requests in flight, releases every file
    /// still open and closes the devices. Returns the first error met; every step is tried.
    pub async fn shutdown(mut self) -> io::Result<()> {
        let mut first_err: Option<io::Error> = None;
        let binds = std::mem::take(&mut self.binds);
        let (mount, mounted) = (self.mount.clone(), self.mounted);
        let r = blocking(move || {
            let mut res = Ok(());
            for b in binds.into_iter().rev() {
                if let Err(e) = b.undo() {
                    res = Err(e);
                }
            }
            if mounted {
                mounts::unmount(&mount)?;
            }
            res
        })
        .await;
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
        // Drain while the readers still read: requests in flight may need the reader to answer
        // the daemon's own queries (and their callers deserve an answer).
        let pools = self.pools.clone();
        let idle = blocking(move || Ok(pools.drain(SHUTDOWN_GRACE)))
            .await
            .unwrap_or(false);
        self.stop.send_replace(true);
        // After the drain: pooled requests commit their replies through their queue's thread.
        if let Some(mut rings) = self.rings.take() {
            let _ = blocking(move || {
                rings.stop();
                Ok(())
            })
            .await;
        }
        let sessions = std::mem::take(&mut self.sessions);
        let mut handlers = Vec::new();
        for s in sessions {
            match s.task.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(io::Error::other(e));
                }
            }
            handlers.push((s.name, s.handler));
        }
        if !idle {
            // A stuck request may hold locks the teardown needs: do not tear down, just go (the
            // process's exit ends the connection and every request still waiting gets an error).
            let (queued, running) = self.pools.requests.load();
            tracing::warn!(
                queued,
                running,
                "requests still waiting on their callers after the grace period; exiting without releasing contexts"
            );
            tracing::info!(mount = %self.mount.display(), "transport stopped");
            return first_err.map_or(Ok(()), Err);
        }
        for (name, h) in handlers {
            let n = blocking(move || Ok(h.release_all())).await.unwrap_or(0);
            if n > 0 {
                tracing::info!(
                    session = name,
                    files = n,
                    "released files still open at shutdown"
                );
            }
        }
        tracing::info!(mount = %self.mount.display(), "transport stopped");
        first_err.map_or(Ok(()), Err)
    }
}

/// Whether /dev/cuse can be opened (CONFIG_CUSE and permission).
pub fn cuse_available() -> bool {
    // Opening /dev/cuse and closing it again without an answer registers nothing.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEV_CUSE)
        .is_ok()
}

/// Gives the CUSE node the configured permissions: the kernel creates it once our CUSE_INIT answer
/// is in (devtmpfs makes it 0600 root:root).
fn apply_cuse_perm(path: &Path, perm: perms::Perm) -> io::Result<()> {
    let deadline = std::time::Instant::now() + INIT_TIMEOUT;
    while !path.exists() {
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not appear", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    perms::apply_to_path(path, perm)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), %perm, "CUSE node permissions");
    Ok(())
}

async fn wait_ready(h: &Handler) -> io::Result<()> {
    let mut ready = h.ready_watch();
    let ok = matches!(
        tokio::time::timeout(INIT_TIMEOUT, ready.wait_for(|r| *r)).await,
        Ok(Ok(_))
    );
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel's INIT was not answered",
        ))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}
