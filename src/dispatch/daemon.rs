//! The daemon's [`Service`]: one iommufd context per open of `/dev/iommu` or `/dev/vfio/vfio`.

use super::handles::{self, Handle, HandleRegistry};
use super::selftest::handle_kinds::SelftestHandleKinds;
use super::table::{self, Extensions, Op};
use crate::backends::Prot;
use crate::caller::context_query;
use crate::caller::CallerMemory;
use crate::iopt::accounting::AccountMode;
use crate::iopt::Ledger;
use crate::objects::Context;
use crate::service::{NodeKind, OpenFile, Service};
use nix::errno::Errno;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use uiommufd_compat_vfio::CompatHost;

/// Opens a device node (supplied by the devices layer).
pub type DeviceOpener = Arc<dyn Fn(&str) -> Result<Arc<dyn OpenFile>, Errno> + Send + Sync>;
/// Which context (and device object ID in it) each device is bound to now, by name (status).
pub type DeviceBindings = Arc<dyn Fn() -> Vec<(String, Option<(u64, u32)>)> + Send + Sync>;

pub use super::observer::{BoundHandle, HandleIo, IoctlObserver};

/// When a context goes: once its file is released *and* nothing holds it any more.
///
/// The kernel's objects keep their iommufd file referenced (a device bound to it, an access or a
/// queue fd made in it). The daemon must not do that by holding a duplicate fd of its own node: a
/// file of its own mount kept open by the daemon makes the daemon's death wait on itself. So holders
/// take a [`ContextHold`] instead, and the context's teardown waits for the last of them.
struct Lifetime {
    daemon: Weak<Daemon>,
    ctx: Arc<Context>,
    /// Counts the context against its opener's cap until it is torn down.
    slot: Mutex<Option<ContextSlot>>,
    /// (the context's own file is still open, holds outstanding)
    state: Mutex<(bool, usize)>,
}

impl Lifetime {
    /// A new hold; None once the context is being torn down.
    fn hold(self: &Arc<Self>) -> Option<ContextHold> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.0 && st.1 == 0 {
            return None;
        }
        st.1 += 1;
        Some(ContextHold(self.clone()))
    }

    fn file_released(&self) {
        let last = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.0 = false;
            st.1 == 0
        };
        if last {
            self.teardown();
        }
    }

    fn unhold(&self) {
        let last = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.1 -= 1;
            !st.0 && st.1 == 0
        };
        if last {
            self.teardown();
        }
    }

    fn teardown(&self) {
        let daemon = self.daemon.upgrade();
        if let Some(o) = daemon.as_ref().and_then(|d| d.observer.get()) {
            o.release(&self.ctx);
        }
        self.ctx.destroy_all();
        if let Some(d) = daemon {
            d.contexts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.ctx.id);
        }
        drop(self.slot.lock().unwrap_or_else(|p| p.into_inner()).take());
        tracing::debug!(ctx = self.ctx.id, "context torn down");
    }
}

/// Contexts one user may have open at once by default (ENOMEM beyond): each costs the daemon
/// memory, and a process can hold as many fds as its own RLIMIT_NOFILE allows.
/// `serve --max-contexts-per-user` sets another cap ([`Daemon::set_contexts_per_user`]).
pub const CONTEXTS_PER_USER: usize = 4096;

/// One context counted against the user that opened it.
struct ContextSlot {
    daemon: Weak<Daemon>,
    uid: u32,
}

impl ContextSlot {
    fn take(daemon: &Arc<Daemon>, uid: u32) -> Result<Self, Errno> {
        let mut per_user = daemon
            .contexts_per_user
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = per_user.entry(uid).or_insert(0);
        if *n
            >= daemon
                .contexts_cap
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            crate::warn_limited!(
                uid,
                "a user's open contexts reached the cap; open answered ENOMEM"
            );
            return Err(Errno::ENOMEM);
        }
        *n += 1;
        Ok(Self {
            daemon: Arc::downgrade(daemon),
            uid,
        })
    }
}

impl Drop for ContextSlot {
    fn drop(&mut self) {
        let Some(d) = self.daemon.upgrade() else {
            return;
        };
        let mut per_user = d
            .contexts_per_user
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_user.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.uid);
            }
        }
    }
}

/// Keeps a context alive after its file is closed, as a kernel object holds its iommufd file:
/// a bound device, an object fd made in the context. Dropping the last hold of a context whose file
/// is gone destroys it.
pub struct ContextHold(Arc<Lifetime>);

impl ContextHold {
    pub fn context(&self) -> &Arc<Context> {
        &self.0.ctx
    }

    /// The hold as the layers below keep it.
    pub fn boxed(self) -> crate::devices::context::ContextHold {
        crate::devices::context::ContextHold::new(Box::new(self))
    }
}

impl std::ops::Deref for ContextHold {
    type Target = Arc<Context>;

    fn deref(&self) -> &Arc<Context> {
        &self.0.ctx
    }
}

/// The hold as the layers below see it (devices, object fds).
impl crate::devices::context::HeldContext for ContextHold {
    fn context(&self) -> &Arc<Context> {
        &self.0.ctx
    }
}

impl Drop for ContextHold {
    fn drop(&mut self) {
        self.0.unhold();
    }
}

/// A context as the daemon finds it: alive while anything holds it (its file, holds, in-process
/// users of [`Daemon::new_context`]); its lifetime only when it was opened through a file.
#[derive(Clone)]
pub(super) struct Registered {
    pub(super) ctx: Weak<Context>,
    life: Weak<Lifetime>,
}

impl Registered {
    /// Whether the context's own file is still open; None for a context opened without a file.
    pub(super) fn file_open(&self) -> Option<bool> {
        let life = self.life.upgrade()?;
        let st = life.state.lock().unwrap_or_else(|p| p.into_inner());
        Some(st.0)
    }
}

/// State shared by every open file.
pub struct Daemon {
    table: Vec<Option<Op>>,
    /// Every context not yet torn down.
    pub(super) contexts: Mutex<HashMap<u64, Registered>>,
    /// Whether the selftest surface is served (IOMMU_TEST_CMD and its object fds).
    selftest: bool,
    /// Open contexts per opening uid, and the cap (see [`CONTEXTS_PER_USER`]).
    contexts_per_user: Mutex<HashMap<u32, usize>>,
    contexts_cap: std::sync::atomic::AtomicUsize,
    /// The RLIMIT accounting mode new `/dev/iommu` contexts start in (None: the kernel's, user).
    memlock_mode: Mutex<Option<AccountMode>>,
    /// Mappings per context (0: no limit); see `Context::check_mapping_room`.
    mapping_limit: std::sync::atomic::AtomicU64,
    pub(super) devices: Vec<String>,
    device_opener: Option<DeviceOpener>,
    pub(super) device_bindings: OnceLock<DeviceBindings>,
    observer: OnceLock<Arc<dyn IoctlObserver>>,
    /// This daemon's books (pins, per-user totals), shared by all its contexts.
    ledger: Arc<Ledger>,
    /// The open files of this daemon's node that became object fds.
    handles: Arc<HandleRegistry>,
}

impl Daemon {
    pub fn new(ext: Extensions) -> Arc<Self> {
        Self::build(ext, Vec::new(), None)
    }

    /// A daemon that also serves the named devices through `opener`.
    pub fn with_devices(ext: Extensions, devices: Vec<String>, opener: DeviceOpener) -> Arc<Self> {
        Self::build(ext, devices, Some(opener))
    }

    fn build(ext: Extensions, devices: Vec<String>, opener: Option<DeviceOpener>) -> Arc<Self> {
        Arc::new(Self {
            table: table::build(&ext),
            selftest: ext.test_cmd.is_some(),
            contexts_per_user: Mutex::new(HashMap::new()),
            contexts_cap: std::sync::atomic::AtomicUsize::new(CONTEXTS_PER_USER),
            memlock_mode: Mutex::new(None),
            mapping_limit: std::sync::atomic::AtomicU64::new(0),
            contexts: Mutex::new(HashMap::new()),
            devices,
            device_opener: opener,
            device_bindings: OnceLock::new(),
            observer: OnceLock::new(),
            ledger: Ledger::new(),
            handles: Arc::default(),
        })
    }

    /// This daemon's books: what its contexts pinned and hold against the per-user caps.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The object fds bound in this daemon.
    pub fn handles(&self) -> &Arc<HandleRegistry> {
        &self.handles
    }

    /// Most mappings a context may hold (0: no limit): past it IOAS_MAP, MAP_FILE, COPY and the
    /// VFIO container's MAP_DMA answer ENOSPC, as type1 at its `dma_entry_limit`.
    pub fn set_mapping_limit(&self, n: u64) {
        self.mapping_limit
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Installs the report of the devices' bindings (status).
    pub fn set_device_bindings(&self, f: DeviceBindings) {
        let _ = self.device_bindings.set(f);
    }

    /// The RLIMIT accounting mode new `/dev/iommu` contexts start in, as if each had set
    /// IOMMU_OPTION_RLIMIT_MODE (`serve --memlock-mode`); the VFIO container keeps per-process.
    pub fn set_memlock_mode(&self, mode: AccountMode) {
        *self.memlock_mode.lock().unwrap_or_else(|p| p.into_inner()) = Some(mode);
    }

    /// Caps the contexts one user may have open at once (ENOMEM beyond; at least 1).
    pub fn set_contexts_per_user(&self, cap: usize) {
        self.contexts_cap
            .store(cap.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the selftest surface (IOMMU_TEST_CMD, test accesses and dma-bufs) is served.
    pub fn selftest(&self) -> bool {
        self.selftest
    }

    /// Installs the observer of every later open, ioctl and release; false if one is set already.
    pub fn set_observer(&self, observer: Arc<dyn IoctlObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// A new context as in-process users (tests, replay) make them: it lives as long as they
    /// hold it, and no fd can name it.
    pub fn new_context(self: &Arc<Self>, node: &NodeKind) -> Arc<Context> {
        let ctx = self.make_context(node);
        self.register(&ctx, Weak::new());
        ctx
    }

    fn make_context(&self, node: &NodeKind) -> Arc<Context> {
        let ctx = Arc::new(Context::with_ledger(self.ledger.clone()));
        ctx.set_mapping_limit(
            self.mapping_limit
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if *node == NodeKind::VfioContainer {
            // /dev/vfio/vfio keeps VFIO's per-process accounting.
            let _ = ctx.set_account_mode(AccountMode::Process);
        } else if let Some(mode) = *self.memlock_mode.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = ctx.set_account_mode(mode);
        }
        ctx
    }

    fn register(&self, ctx: &Arc<Context>, life: Weak<Lifetime>) {
        let mut all = self.contexts.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, r| r.ctx.strong_count() > 0);
        all.insert(
            ctx.id,
            Registered {
                ctx: Arc::downgrade(ctx),
                life,
            },
        );
    }

    /// A context opened through a file: it lives until the file is released and the last
    /// [`ContextHold`] is gone.
    fn new_lifetime(self: &Arc<Self>, node: &NodeKind) -> Arc<Lifetime> {
        let ctx = self.make_context(node);
        let life = Arc::new(Lifetime {
            daemon: Arc::downgrade(self),
            ctx: ctx.clone(),
            slot: Mutex::new(None),
            state: Mutex::new((true, 0)),
        });
        self.register(&ctx, Arc::downgrade(&life));
        if let Some(o) = self.observer.get() {
            o.open(&ctx, node);
        }
        life
    }

    fn lifetime(&self, id: u64) -> Option<Arc<Lifetime>> {
        self.contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|r| r.life.upgrade())
    }

    /// The live context with this id.
    pub fn context(&self, id: u64) -> Option<Arc<Context>> {
        self.contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|r| r.ctx.upgrade())
    }

    /// A hold on the live context with this id (None when it is gone or going).
    pub fn hold_context(&self, id: u64) -> Option<ContextHold> {
        self.lifetime(id)?.hold()
    }

    /// Executes one ioctl on `ctx`: the iommufd table, then the VFIO container ioctls.
    pub fn ioctl(
        &self,
        ctx: &Context,
        cmd: u32,
        arg: u64,
        mem: &dyn CallerMemory,
    ) -> Result<i64, Errno> {
        match self.observer.get() {
            Some(o) => o.ioctl(ctx, cmd, arg, mem, &mut |m| self.execute(ctx, cmd, arg, m)),
            None => self.execute(ctx, cmd, arg, mem),
        }
    }

    fn execute(
        &self,
        ctx: &Context,
        cmd: u32,
        arg: u64,
        mem: &dyn CallerMemory,
    ) -> Result<i64, Errno> {
        match table::execute(&self.table, ctx, &self.handles, mem, cmd, arg) {
            Some(Ok(name)) => {
                tracing::debug!(ctx = ctx.id, ioctl = name, "ok");
                Ok(0)
            }
            Some(Err((name, e))) => {
                tracing::debug!(ctx = ctx.id, ioctl = name.unwrap_or("?"), cmd = format_args!("{cmd:#x}"), errno = %e, "failed");
                Err(e)
            }
            None => {
                let bridge = CompatBridge { ctx, mem };
                match uiommufd_compat_vfio::vfio_ioctl(&bridge, cmd, arg) {
                    Some(r) => {
                        tracing::debug!(ctx = ctx.id, cmd = format_args!("{cmd:#x}"), result = ?r, "vfio compat ioctl");
                        r
                    }
                    None => {
                        tracing::debug!(
                            ctx = ctx.id,
                            cmd = format_args!("{cmd:#x}"),
                            "unknown ioctl"
                        );
                        Err(Errno::ENOTTY)
                    }
                }
            }
        }
    }
}

struct IommuFile {
    daemon: Arc<Daemon>,
    ctx: Arc<Context>,
    life: Arc<Lifetime>,
    /// Set when this open became the fd of an object (UIOMMUFD_HANDLE_BIND); `ctx` is unused then.
    handle: OnceLock<Handle>,
}

impl IommuFile {
    fn bind(&self, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        if self.handle.get().is_some() || self.ctx.num_objects() != 0 {
            crate::warn_limited!(
                ctx = self.ctx.id,
                "UIOMMUFD_HANDLE_BIND on a file already in use"
            );
            return Err(Errno::EBUSY);
        }
        let h = match self.daemon.bind_handle(self.ctx.id, arg, mem) {
            Ok(h) => h,
            Err(e) => {
                self.observe_failed_bind(arg, mem, e);
                return Err(e);
            }
        };
        if let Err(h) = self.handle.set(h) {
            h.release(self.ctx.id);
            return Err(Errno::EBUSY);
        }
        // No longer a context: VFIO_DEVICE_BIND_IOMMUFD and friends must not find it.
        self.daemon.contexts.lock().unwrap().remove(&self.ctx.id);
        if let (Some(o), Some(h)) = (self.daemon.observer.get(), self.handle.get()) {
            let (origin, object_id) = h.origin();
            let (kind, args) = h.request();
            let bound = BoundHandle {
                object_id: Ok(object_id),
                what: h.kind_name(),
                kind,
                args,
            };
            o.handle_bound(self.ctx.id, origin, &bound);
        }
        Ok(0)
    }
}

impl IommuFile {
    /// Tells the observer of a bind that failed in a context of this daemon (a request naming
    /// no such context is no session's).
    fn observe_failed_bind(&self, arg: u64, mem: &dyn CallerMemory, e: Errno) {
        use crate::dispatch::private_abi::uiommufd_handle_bind;
        let Some(o) = self.daemon.observer.get() else {
            return;
        };
        let Ok(req) = crate::caller::read_struct::<uiommufd_handle_bind>(mem, arg) else {
            return;
        };
        let Ok(file) = mem.get_fd(req.iommufd) else {
            return;
        };
        let origin = context_query::ask(std::os::fd::AsFd::as_fd(&file));
        context_query::close_dup(file);
        if let Ok(origin) = origin {
            let bound = BoundHandle {
                object_id: Err(e),
                what: "object fd",
                kind: req.kind,
                args: [req.arg0, req.arg1, req.arg2, req.arg3],
            };
            o.handle_bound(self.ctx.id, origin, &bound);
        }
    }
}

impl OpenFile for IommuFile {
    fn inline_ioctl(&self, cmd: u32) -> bool {
        // The daemon's own "which context are you": answered on the reader, since the asking
        // worker waits for it. It reads and writes only the asking daemon thread's memory.
        cmd == context_query::IOCTL
    }

    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        if cmd == context_query::IOCTL {
            return context_query::answer(self.ctx.id, arg, mem);
        }
        if cmd == crate::dispatch::private_abi::UIOMMUFD_ZERO_READ {
            // An iommufd itself takes no reads at all.
            let errno = self
                .handle
                .get()
                .map_or(Errno::EINVAL as u32, |h| h.zero_read_errno());
            return handles::answer_zero_read(errno, arg, mem);
        }
        if self.handle.get().is_some() {
            // The kernel's object fds take no ioctls.
            return Err(Errno::ENOTTY);
        }
        if cmd == crate::dispatch::private_abi::UIOMMUFD_HANDLE_BIND {
            return self.bind(arg, mem);
        }
        self.daemon.ioctl(&self.ctx, cmd, arg, mem)
    }

    fn read(&self, _offset: u64, size: u32, _mem: &dyn CallerMemory) -> Result<Vec<u8>, Errno> {
        let Some(h) = self.handle.get() else {
            return Err(Errno::EINVAL);
        };
        let r = h.read(size);
        if let Some(o) = self.daemon.observer.get() {
            let result = r.as_deref().map_err(|e| *e);
            o.handle_io(self.ctx.id, HandleIo::Read { size, result });
        }
        r
    }

    fn write(&self, _offset: u64, data: &[u8], _mem: &dyn CallerMemory) -> Result<u32, Errno> {
        let Some(h) = self.handle.get() else {
            return Err(Errno::EINVAL);
        };
        let result = h.write(data);
        if let Some(o) = self.daemon.observer.get() {
            o.handle_io(self.ctx.id, HandleIo::Write { data, result });
        }
        result
    }

    fn release(&self) {
        // A handle's own context stayed empty; the observer still saw it open, so it sees it go.
        if let Some(h) = self.handle.get() {
            if let Some(o) = self.daemon.observer.get() {
                o.handle_io(self.ctx.id, HandleIo::Close);
            }
            h.release(self.ctx.id);
        }
        tracing::debug!(
            ctx = self.ctx.id,
            objects = self.ctx.num_objects(),
            "release"
        );
        self.life.file_released();
    }
}

impl Daemon {
    /// A hold on the context behind `file`, a duplicate of a caller's iommufd fd
    /// (VFIO_DEVICE_BIND_IOMMUFD, object fds). EBADFD when it is not one of this daemon's iommufd
    /// files, as `iommufd_ctx_from_fd()`. The caller should close `file` right after: the hold, not
    /// the fd, keeps the context.
    pub fn context_of_file(&self, file: std::os::fd::BorrowedFd<'_>) -> Result<ContextHold, Errno> {
        let id = context_query::ask(file)?;
        self.hold_context(id).ok_or(Errno::EBADFD)
    }

    /// The object fd kinds made outside the handle registry: the selftest's, refused (ENOTTY)
    /// unless this daemon serves the selftest.
    fn handle_kinds(&self) -> SelftestHandleKinds {
        SelftestHandleKinds {
            served: self.selftest,
        }
    }

    /// UIOMMUFD_HANDLE_BIND on this daemon's open file `file_id` (see [`handles::bind`]).
    fn bind_handle(&self, file_id: u64, arg: u64, mem: &dyn CallerMemory) -> Result<Handle, Errno> {
        let context_of_file =
            |file: std::os::fd::BorrowedFd<'_>| self.context_of_file(file).map(ContextHold::boxed);
        handles::bind(
            &self.handles,
            &self.handle_kinds(),
            file_id,
            arg,
            mem,
            &context_of_file,
        )
    }

    /// [`Self::bind_handle`] with the caller's iommufd fd resolved by `context_of_fd` (see
    /// [`handles::bind_with`]).
    #[cfg(test)]
    pub(crate) fn bind_handle_with(
        &self,
        file_id: u64,
        arg: u64,
        mem: &dyn CallerMemory,
        context_of_fd: &dyn Fn(i32) -> Result<ContextHold, Errno>,
    ) -> Result<Handle, Errno> {
        let context_of_fd = |fd: i32| context_of_fd(fd).map(ContextHold::boxed);
        handles::bind_with(
            &self.handles,
            &self.handle_kinds(),
            file_id,
            arg,
            mem,
            &context_of_fd,
        )
    }
}

/// Serves the daemon through a transport.
pub struct DaemonService(pub Arc<Daemon>);

impl Service for DaemonService {
    fn open(&self, node: &NodeKind) -> Result<Arc<dyn OpenFile>, Errno> {
        self.open_by(node, 0)
    }

    fn open_by(&self, node: &NodeKind, uid: u32) -> Result<Arc<dyn OpenFile>, Errno> {
        self.open_from(node, uid, 0)
    }

    fn open_from(&self, node: &NodeKind, uid: u32, tid: u32) -> Result<Arc<dyn OpenFile>, Errno> {
        match node {
            NodeKind::Iommu | NodeKind::VfioContainer => {
                let slot = ContextSlot::take(&self.0, uid)?;
                let life = self.0.new_lifetime(node);
                let ctx = life.ctx.clone();
                ctx.set_owner_uid(uid);
                if tid > 0 {
                    // For status only: the thread group and command name as they are at open.
                    let status =
                        std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
                    let field = |k: &str| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(k))
                            .map(|v| v.trim().to_string())
                    };
                    let pid = field("Tgid:")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(tid as i32);
                    ctx.set_opener(pid, field("Name:").unwrap_or_default());
                }
                *life.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(slot);
                tracing::debug!(ctx = ctx.id, ?node, "open");
                Ok(Arc::new(IommuFile {
                    daemon: self.0.clone(),
                    ctx,
                    life,
                    handle: OnceLock::new(),
                }))
            }
            NodeKind::Device(name) => match (&self.0.device_opener, self.0.observer.get()) {
                (Some(open), Some(o)) => open(name).map(|f| {
                    super::observed_device::ObservedDevice::wrap(f, self.0.clone(), o.clone(), name)
                }),
                (Some(open), None) => open(name),
                (None, _) => Err(Errno::ENODEV),
            },
        }
    }

    fn device_names(&self) -> Vec<String> {
        self.0.devices.clone()
    }

    fn status(&self) -> String {
        self.0.status_json()
    }
}

/// The compat layer's view of a context and its caller.
struct CompatBridge<'a> {
    ctx: &'a Context,
    mem: &'a dyn CallerMemory,
}

impl CompatBridge<'_> {
    fn ioas(&self, id: u32) -> Result<Arc<crate::objects::Ioas>, Errno> {
        self.ctx.get_ioas(id)
    }
}

impl CompatHost for CompatBridge<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.mem.read(addr, buf)
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        self.mem.write(addr, buf)
    }

    fn compat_ioas(&self) -> Result<u32, Errno> {
        self.ctx.live_vfio_ioas()
    }

    fn map(
        &self,
        ioas: u32,
        iova: u64,
        user_va: u64,
        length: u64,
        read: bool,
        write: bool,
    ) -> Result<(), Errno> {
        let ioas = self.ioas(ioas)?;
        self.ctx.check_mapping_room()?;
        let (owner, creds) = super::ioas_cmds::caller_process(self.ctx, self.mem)?;
        ioas.map_user(
            self.ctx,
            owner,
            &creds,
            user_va,
            length,
            Some(iova),
            Prot { read, write },
        )
        .map(|_| ())
    }

    fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<u64, (Errno, u64)> {
        if length == 0 {
            return Err((Errno::EINVAL, 0));
        }
        let last = iova.checked_add(length - 1).ok_or((Errno::EOVERFLOW, 0))?;
        self.ioas(ioas).map_err(|e| (e, 0))?.unmap(iova, last)
    }

    fn unmap_all(&self, ioas: u32) -> Result<u64, (Errno, u64)> {
        self.ioas(ioas).map_err(|e| (e, 0))?.unmap(0, u64::MAX)
    }

    fn domains_pgsize_bitmap(&self, ioas: u32) -> u64 {
        self.ioas(ioas)
            .map(|i| {
                i.iopt_read()
                    .domains()
                    .fold(u64::MAX, |acc, d| acc & d.pgsize_bitmap())
            })
            .unwrap_or(u64::MAX)
    }

    fn cut(&self, ioas: u32, iovas: &[u64]) -> Result<(), Errno> {
        self.ioas(ioas)?.iopt().cut(iovas)
    }

    fn large_pages_disabled(&self, ioas: u32) -> bool {
        self.ioas(ioas)
            .map(|i| i.iopt_read().large_pages_disabled())
            .unwrap_or(false)
    }

    fn disable_large_pages(&self, ioas: u32) -> Result<(), Errno> {
        self.ioas(ioas)?.iopt().disable_large_pages()
    }

    fn iova_alignment(&self, ioas: u32) -> u64 {
        self.ioas(ioas)
            .map(|i| i.iopt_read().iova_alignment())
            .unwrap_or(1)
    }

    fn usable_ranges(&self, ioas: u32) -> Vec<(u64, u64)> {
        self.ioas(ioas)
            .map(|i| i.iopt_read().usable_ranges())
            .unwrap_or_default()
    }

    fn enforces_cache_coherency(&self, _ioas: u32) -> bool {
        // Software domains are always coherent with the CPU.
        true
    }

    fn caller_has_sys_rawio(&self) -> bool {
        self.mem.capable(crate::caller::CAP_SYS_RAWIO)
    }
}
