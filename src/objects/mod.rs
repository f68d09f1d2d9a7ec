//! Objects: the per-open context and its ID table.
//!
//! Every open of `/dev/iommu` is a [`Context`]. Objects (IOAS, access, and what later layers add)
//! live in its table under IDs allocated like the kernel's: the smallest free ID ≥ 1. Lookups are
//! typed (an ID of another type is ENOENT). Whatever depends on an object (a child object, an
//! attached device, an fd) holds an [`ObjectUser`] of it, which gives itself back when dropped;
//! while one is held the object cannot be destroyed (EBUSY). Closing the context destroys
//! everything, dependents first. An object the daemon destroys on its own behalf (a
//! vDEVICE whose device is destroyed) can leave its ID as a tombstone, which answers ENOENT and is
//! not handed out again until the context closes, as the kernel's does.
//!
//! Locking: the table lock is held only to find, insert or remove an entry; handlers work on the
//! `Arc` they got, under the object's own lock. No lock is held across a caller-memory access that
//! is not the object's own business.
//!
//! Lock order (a lock may be taken while holding the ones above it, never the other way):
//! 1. `Device::switching` — one attach/replace/detach of a device at a time;
//! 2. `Context::compat_lock` — creating the compat IOAS;
//! 3. `Ioas::domains_gate` (read-write) — read by a map for as long as it pins and fills, written
//!    while a domain is attached or detached, so a map's pages go into exactly the domains it
//!    saw (the kernel's domains rwsem);
//! 4. `Ioas::iopt` (read-write) — the IOVA table, its domains and reserved/allowed ranges: written
//!    to change it (a map takes its IOVA and later commits under it, but pins the client's pages
//!    with it released: reserve, pin, commit, as the kernel's io_pagetable), read by an access's
//!    copies (`Access::rw`, which reads and writes the mapped process's memory), IOAS_COPY's
//!    source, IOVA_RANGES, dirty-bitmap reads and status (which only tries);
//! 5. a domain's own lock (mock page table, VfioDomain's runs) and `Pages::pins`/`account` —
//!    leaf locks, held for one operation;
//! 6. `Context::table` — the ID table (then only `vfio_ioas`): nothing else is called while it is
//!    held.
//!
//! `Ioas::accesses` is taken with nothing else held, to call accesses back before an unmap.
//! What still runs under `iopt` written and can wait on a client: an attach filling a new domain
//! with every area (pins), and an access pinning a range. Either holds up only that IOAS's own
//! changes, whose owner is the client waiting.

pub mod access;
pub mod device;
pub mod driver;
pub mod fault;
pub mod hwpt;
pub mod ioas;
mod user;
pub mod veventq;
pub mod viommu;

pub use access::{Access, AccessOps};
pub use device::{Device, DeviceBackend};
pub use driver::{NestedDomain, UserArray, UserData, ViommuDriver};
pub use hwpt::HwptPaging;
pub use ioas::Ioas;
pub use user::ObjectUser;

use crate::iopt::accounting::AccountMode;
use crate::iopt::limits::{Charge, Quota, Resource};
use crate::iopt::Ledger;
use nix::errno::Errno;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// An entry of the ID table: the closed set of object kinds, as the kernel's object types.
#[derive(Clone)]
pub enum Object {
    Ioas(Arc<Ioas>),
    Access(Arc<Access>),
    Device(Arc<Device>),
    HwptPaging(Arc<HwptPaging>),
    HwptNested(Arc<hwpt::HwptNested>),
    /// A nested HWPT whose stage 1 is a vIOMMU's.
    ViommuNested(Arc<viommu::ViommuNested>),
    Fault(Arc<fault::FaultQueue>),
    Veventq(Arc<veventq::VeventQueue>),
    Viommu(Arc<viommu::Viommu>),
    Vdevice(Arc<viommu::Vdevice>),
    HwQueue(Arc<viommu::HwQueue>),
    /// The selftest driver's own objects (the kernel's IOMMUFD_OBJ_SELFTEST): their kind is
    /// the driver's business.
    Selftest(Arc<dyn Extension>),
}

/// What every kind of object does when it goes (and its name in logs and status).
pub trait Extension: Send + Sync {
    /// The type name used in logs and in status output.
    fn type_name(&self) -> &'static str;
    /// Releases what the object holds (references on other objects, domains). Runs once, outside
    /// the table lock.
    fn destroy(&self, ctx: &Context);
    /// The concrete object, for the driver that made it (only selftest objects need it).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A kind of object in [`Object`]: how to put one in and get one back out, typed.
pub trait ObjectKind: Sized {
    fn into_object(this: Arc<Self>) -> Object;
    fn from_object(o: &Object) -> Option<Arc<Self>>;
}

macro_rules! object_kinds {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        $(
            impl ObjectKind for $ty {
                fn into_object(this: Arc<Self>) -> Object {
                    Object::$variant(this)
                }
                fn from_object(o: &Object) -> Option<Arc<Self>> {
                    match o {
                        Object::$variant(x) => Some(x.clone()),
                        _ => None,
                    }
                }
            }
            impl From<Arc<$ty>> for Object {
                fn from(x: Arc<$ty>) -> Self {
                    Object::$variant(x)
                }
            }
        )*

        impl Object {
            /// The object's behaviour when it goes (every kind but the IOAS and access, which
            /// the table destroys itself).
            fn kind(&self) -> Option<&dyn Extension> {
                match self {
                    Object::Ioas(_) | Object::Access(_) => None,
                    $(Object::$variant(x) => Some(x.as_ref()),)*
                    Object::Selftest(x) => Some(x.as_ref()),
                }
            }
        }
    };
}

object_kinds! {
    Device => Device,
    HwptPaging => HwptPaging,
    HwptNested => hwpt::HwptNested,
    ViommuNested => viommu::ViommuNested,
    Fault => fault::FaultQueue,
    Veventq => veventq::VeventQueue,
    Viommu => viommu::Viommu,
    Vdevice => viommu::Vdevice,
    HwQueue => viommu::HwQueue,
}

impl Object {
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Ioas(_) => "ioas",
            Object::Access(_) => "access",
            other => other.kind().map_or("?", |k| k.type_name()),
        }
    }
}

struct Entry {
    /// `None` for a tombstone: the ID of an object the kernel destroyed on its own (a vDEVICE
    /// whose device went away). It answers ENOENT and stays allocated until the context closes.
    object: Option<Object>,
    /// 1 for the table itself, +1 for each [`ObjectUser`] held.
    users: u32,
    /// The entry's share of the context's and its owner's object cap.
    _charge: Charge,
}

/// The ID table and the bookkeeping that makes "smallest free ID" O(log n).
#[derive(Default)]
struct Table {
    entries: BTreeMap<u32, Entry>,
    /// Free IDs below `next`.
    holes: BTreeSet<u32>,
    /// One past the largest ID ever handed out since the table was last empty (IDs start at 1).
    next: u32,
}

impl Table {
    fn alloc_id(&mut self) -> Result<u32, Errno> {
        if let Some(id) = self.holes.pop_first() {
            return Ok(id);
        }
        let id = self.next.max(1);
        if id > i32::MAX as u32 {
            return Err(Errno::ENOSPC);
        }
        self.next = id + 1;
        Ok(id)
    }

    fn free_id(&mut self, id: u32) {
        if id + 1 == self.next {
            self.next = id;
            // Trailing holes shrink back as well, so `holes` stays below `next`.
            while self.next > 1 && self.holes.remove(&(self.next - 1)) {
                self.next -= 1;
            }
        } else {
            self.holes.insert(id);
        }
    }

    fn clear(&mut self) -> Vec<Entry> {
        self.holes.clear();
        self.next = 1;
        std::mem::take(&mut self.entries).into_values().collect()
    }
}

static NEXT_CONTEXT: AtomicU64 = AtomicU64::new(1);

/// One open of `/dev/iommu` (or `/dev/vfio/vfio`).
pub struct Context {
    pub id: u64,
    /// Shared with the [`ObjectUser`]s of its objects, which give themselves back to it.
    table: Arc<Mutex<Table>>,
    /// The books of the daemon that made this context (pins and per-user totals).
    ledger: Arc<Ledger>,
    /// What this context holds against the caps of [`crate::iopt::limits`].
    quota: Arc<Quota>,
    /// The user charged for this context's resources across contexts (see [`Self::set_owner_uid`]).
    owner_uid: std::sync::OnceLock<u32>,
    /// The process that opened it and its command name then (status only; never used to
    /// reach it).
    opener: std::sync::OnceLock<(i32, String)>,
    /// Most mappings (areas over all IOASes) this context may hold; 0 for no limit.
    mapping_limit: std::sync::atomic::AtomicU64,
    account_mode: Mutex<AccountMode>,
    /// The IOAS the VFIO compatibility ioctls act on (IOMMU_VFIO_IOAS).
    vfio_ioas: Mutex<Option<u32>>,
    /// Serialises creation of the compat IOAS against IOMMU_VFIO_IOAS SET/CLEAR.
    pub compat_lock: Mutex<()>,
    /// The identities of the processes whose memory this context maps (bound at map time).
    pub processes: crate::caller::ProcessHandles,
    /// Run first when the context is torn down (see [`Self::on_teardown`]).
    teardown_hooks: Mutex<Vec<TeardownHook>>,
}

/// Work a layer below the context's owner needs done when the context goes.
pub type TeardownHook = Box<dyn FnOnce(&Context) + Send>;

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    /// A context with books of its own (standalone contexts: unit tests, tools).
    pub fn new() -> Self {
        Self::with_ledger(Ledger::new())
    }

    /// A context of the daemon whose books are `ledger`.
    pub fn with_ledger(ledger: Arc<Ledger>) -> Self {
        Self {
            id: NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed),
            table: Arc::new(Mutex::new(Table::default())),
            quota: Quota::new(ledger.clone()),
            ledger,
            owner_uid: std::sync::OnceLock::new(),
            opener: std::sync::OnceLock::new(),
            mapping_limit: std::sync::atomic::AtomicU64::new(0),
            account_mode: Mutex::new(AccountMode::User),
            vfio_ioas: Mutex::new(None),
            compat_lock: Mutex::new(()),
            processes: crate::caller::ProcessHandles::new(),
            teardown_hooks: Mutex::new(Vec::new()),
        }
    }

    /// The books this context's pins and per-user totals are kept in.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Runs `hook` when the context is torn down, before its objects are destroyed: an object
    /// the daemon keeps a user on for the program (a VFIO group's device taken through the
    /// legacy container path) lets go of it there.
    pub fn on_teardown(&self, hook: TeardownHook) {
        self.teardown_hooks.lock().unwrap().push(hook);
    }

    /// The compat IOAS, created if there is none (as a VFIO group joining the context through
    /// VFIO_GROUP_SET_CONTAINER makes one).
    pub fn compat_ioas_get_or_create(&self) -> Result<u32, Errno> {
        let _creating = self.compat_lock.lock().unwrap();
        if let Ok(id) = self.live_vfio_ioas() {
            return Ok(id);
        }
        let id = self.insert(Object::Ioas(Ioas::new()))?;
        self.set_vfio_ioas(Some(id));
        Ok(id)
    }

    /// Sets the user whose per-user caps this context's resources count against; only the first
    /// call takes effect. Until it is set only the per-context caps apply.
    pub fn set_owner_uid(&self, uid: u32) {
        let _ = self.owner_uid.set(uid);
    }

    pub fn owner_uid(&self) -> Option<u32> {
        self.owner_uid.get().copied()
    }

    /// Limits the mappings this context may hold (`serve --max-mappings-per-context`).
    pub fn set_mapping_limit(&self, n: u64) {
        self.mapping_limit
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// ENOSPC when the context holds its limit of mappings already (as VFIO type1's
    /// `dma_entry_limit`, to reproduce what programs meet on hosts that lower it).
    pub fn check_mapping_room(&self) -> Result<(), Errno> {
        let limit = self
            .mapping_limit
            .load(std::sync::atomic::Ordering::Relaxed);
        if limit == 0 {
            return Ok(());
        }
        let held: usize = self
            .objects_of_type("ioas")
            .into_iter()
            .map(|(_, o)| match o {
                Object::Ioas(i) => i.iopt_read().num_areas(),
                _ => 0,
            })
            .sum();
        if held as u64 >= limit {
            crate::warn_limited!(
                ctx = self.id,
                limit,
                "a context reached --max-mappings-per-context; the map answered ENOSPC"
            );
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// Records who opened the context (first call only).
    pub fn set_opener(&self, pid: i32, comm: String) {
        let _ = self.opener.set((pid, comm));
    }

    /// (pid, command name) of the opener, if recorded.
    pub fn opener(&self) -> Option<(i32, String)> {
        self.opener.get().cloned()
    }

    /// Takes `n` units of `res` for this context and its owner (ENOMEM past a cap).
    pub fn charge(&self, res: Resource, n: u64) -> Result<Charge, Errno> {
        self.quota.charge(self.owner_uid(), res, n)
    }

    /// Units of `res` this context holds now.
    pub fn used(&self, res: Resource) -> u64 {
        self.quota.used(res)
    }

    pub fn account_mode(&self) -> AccountMode {
        *self.account_mode.lock().unwrap()
    }

    /// IOMMU_OPTION_RLIMIT_MODE set: EBUSY once any object exists.
    pub fn set_account_mode(&self, mode: AccountMode) -> Result<(), Errno> {
        let table = self.table.lock().unwrap();
        if !table.entries.is_empty() {
            return Err(Errno::EBUSY);
        }
        *self.account_mode.lock().unwrap() = mode;
        Ok(())
    }

    /// Inserts `object` under the smallest free ID ≥ 1. ENOMEM past the object caps.
    pub fn insert(&self, object: Object) -> Result<u32, Errno> {
        self.insert_with_users(object, 1)
    }

    fn insert_with_users(&self, object: Object, users: u32) -> Result<u32, Errno> {
        let charge = self.charge(Resource::Objects, 1)?;
        let mut table = self.table.lock().unwrap();
        let id = table.alloc_id()?;
        table.entries.insert(
            id,
            Entry {
                object: Some(object),
                users,
                _charge: charge,
            },
        );
        Ok(id)
    }

    /// Inserts `object` with a user for an outside holder (an fd, an internal access), so that
    /// IOMMU_DESTROY answers EBUSY until the holder lets the returned user go. The user is there
    /// from the moment the ID is: no destroy can come between.
    pub fn insert_held(&self, object: Object) -> Result<(u32, ObjectUser), Errno> {
        let id = self.insert_with_users(object, 2)?;
        Ok((id, ObjectUser::taken(&self.table, id)))
    }

    /// The object under `id`, whatever its type.
    pub fn get(&self, id: u32) -> Result<Object, Errno> {
        let table = self.table.lock().unwrap();
        table
            .entries
            .get(&id)
            .and_then(|e| e.object.clone())
            .ok_or(Errno::ENOENT)
    }

    pub fn get_ioas(&self, id: u32) -> Result<Arc<Ioas>, Errno> {
        match self.get(id)? {
            Object::Ioas(i) => Ok(i),
            _ => Err(Errno::ENOENT),
        }
    }

    pub fn get_access(&self, id: u32) -> Result<Arc<Access>, Errno> {
        match self.get(id)? {
            Object::Access(a) => Ok(a),
            _ => Err(Errno::ENOENT),
        }
    }

    /// IOMMU_DESTROY: ENOENT if absent, EBUSY while others depend on it.
    pub fn destroy(&self, id: u32) -> Result<(), Errno> {
        self.remove(id, false)
    }

    /// Destroys object `id` as [`Self::destroy`] does but leaves its ID behind as a tombstone:
    /// lookups and IOMMU_DESTROY of it are ENOENT, and it is not reused until the context closes.
    pub fn destroy_tombstone(&self, id: u32) -> Result<(), Errno> {
        self.remove(id, true)
    }

    fn remove(&self, id: u32, tombstone: bool) -> Result<(), Errno> {
        let mut removed = None;
        let object = {
            let mut table = self.table.lock().unwrap();
            let e = table
                .entries
                .get(&id)
                .filter(|e| e.object.is_some())
                .ok_or(Errno::ENOENT)?;
            if e.users > 1 {
                return Err(Errno::EBUSY);
            }
            let object = if tombstone {
                let e = table.entries.get_mut(&id).expect("entry present");
                e.object.take()
            } else {
                let mut entry = table.entries.remove(&id).expect("entry present");
                table.free_id(id);
                let object = entry.object.take();
                // The charge goes back outside the table lock.
                removed = Some(entry);
                object
            };
            let mut vfio = self.vfio_ioas.lock().unwrap();
            if *vfio == Some(id) {
                *vfio = None;
            }
            object.expect("live entry")
        };
        self.run_destroy(object);
        drop(removed);
        Ok(())
    }

    fn run_destroy(&self, object: Object) {
        match object {
            Object::Ioas(ioas) => ioas.destroy(),
            Object::Access(access) => access.destroy(),
            other => {
                if let Some(k) = other.kind() {
                    k.destroy(self);
                }
            }
        }
    }

    /// Destroys every object (close of the file): repeatedly removes the ones nothing depends on.
    pub fn destroy_all(&self) {
        let hooks = std::mem::take(&mut *self.teardown_hooks.lock().unwrap());
        for hook in hooks {
            hook(self);
        }
        loop {
            let ids: Vec<u32> = {
                let mut table = self.table.lock().unwrap();
                // Only tombstones left (or nothing): they go with the context.
                if table.entries.values().all(|e| e.object.is_none()) {
                    let gone = table.clear();
                    drop(table);
                    drop(gone);
                    break;
                }
                table
                    .entries
                    .iter()
                    .filter(|(_, e)| e.users == 1 && e.object.is_some())
                    .map(|(&k, _)| k)
                    .collect()
            };
            if ids.is_empty() {
                crate::error_limited!(ctx = self.id, "objects left with circular users; forcing");
                let all: Vec<Object> = {
                    let mut table = self.table.lock().unwrap();
                    table
                        .clear()
                        .into_iter()
                        .filter_map(|mut e| e.object.take())
                        .collect()
                };
                for o in all {
                    self.run_destroy(o);
                }
                break;
            }
            for id in ids {
                let _ = self.destroy(id);
            }
        }
        *self.vfio_ioas.lock().unwrap() = None;
    }

    /// Number of objects, per type name (status output, leak tests).
    pub fn object_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for o in self
            .table
            .lock()
            .unwrap()
            .entries
            .values()
            .filter_map(|e| e.object.as_ref())
        {
            *out.entry(o.type_name()).or_insert(0) += 1;
        }
        out
    }

    /// (id, object) of every object whose type name is `name`.
    pub fn objects_of_type(&self, name: &str) -> Vec<(u32, Object)> {
        self.table
            .lock()
            .unwrap()
            .entries
            .iter()
            .filter_map(|(&id, e)| e.object.as_ref().map(|o| (id, o)))
            .filter(|(_, o)| o.type_name() == name)
            .map(|(id, o)| (id, o.clone()))
            .collect()
    }

    /// Number of live objects (tombstones not counted).
    pub fn num_objects(&self) -> usize {
        self.table
            .lock()
            .unwrap()
            .entries
            .values()
            .filter(|e| e.object.is_some())
            .count()
    }

    pub fn vfio_ioas(&self) -> Option<u32> {
        *self.vfio_ioas.lock().unwrap()
    }

    pub fn set_vfio_ioas(&self, id: Option<u32>) {
        *self.vfio_ioas.lock().unwrap() = id;
    }

    /// The compat IOAS if it still exists (ENODEV otherwise, as IOMMU_VFIO_IOAS GET answers).
    pub fn live_vfio_ioas(&self) -> Result<u32, Errno> {
        let id = self.vfio_ioas().ok_or(Errno::ENODEV)?;
        self.get_ioas(id).map_err(|_| Errno::ENODEV)?;
        Ok(id)
    }

    /// The object of kind `T` under `id` (ENOENT for any other kind).
    pub fn get_as<T: ObjectKind>(&self, id: u32) -> Result<Arc<T>, Errno> {
        T::from_object(&self.get(id)?).ok_or(Errno::ENOENT)
    }

    /// Every object of kind `T`, with its id.
    pub fn objects_of<T: ObjectKind>(&self) -> Vec<(u32, Arc<T>)> {
        self.table
            .lock()
            .unwrap()
            .entries
            .iter()
            .filter_map(|(&id, e)| e.object.as_ref().and_then(T::from_object).map(|o| (id, o)))
            .collect()
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests;
