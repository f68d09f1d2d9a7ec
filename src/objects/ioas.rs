//! The IOAS object: an io_pagetable plus the accesses attached to it.

use super::access::Access;
use super::Context;
use crate::backends::Prot;
use crate::caller::{Credentials, ProcessHandle};
use crate::iopt::accounting::{Account, AccountMode};
use crate::iopt::{IoPagetable, PageSource, Pages, PagesSlice, UnmapProgress, PAGE_SIZE};
use nix::errno::Errno;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

/// How many times an unmap asks the accesses to let go before giving up (EDEADLK).
const MAX_UNMAP_TRIES: u32 = 100;

/// Locks: `iopt` is a reader-writer lock, as the kernel's IOVA rwsem: changes of the table (map,
/// unmap, domains, reserved and allowed ranges, access pins) take it for writing; lookups and
/// copies through the table (an access's read/write of mapped memory, IOVA_RANGES, IOAS_COPY's
/// source, status) take it for reading, so a copy that waits on a client's memory holds up only
/// changes of this IOAS, never other readers. `accesses` is taken alone (never with `iopt`
/// held) to call the accesses' unmap callbacks.
#[derive(Default)]
pub struct Ioas {
    /// Held for reading by a map while it pins outside `iopt`, for writing while domains are
    /// attached or detached: a map's pages go into exactly the domains it saw (the kernel's
    /// domains rwsem).
    domains_gate: RwLock<()>,
    iopt: RwLock<IoPagetable>,
    accesses: Mutex<Vec<Weak<Access>>>,
}

impl std::fmt::Debug for Ioas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioas").finish_non_exhaustive()
    }
}

impl Ioas {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The io_pagetable, to change it.
    pub fn iopt(&self) -> RwLockWriteGuard<'_, IoPagetable> {
        self.iopt.write().unwrap()
    }

    /// The io_pagetable, to look things up or copy through it.
    pub fn iopt_read(&self) -> RwLockReadGuard<'_, IoPagetable> {
        self.iopt.read().unwrap()
    }

    /// The io_pagetable if no one is changing it right now (status never waits on a client's
    /// work).
    pub fn try_iopt(&self) -> Option<RwLockReadGuard<'_, IoPagetable>> {
        self.iopt.try_read().ok()
    }

    /// Builds the Pages for `length` bytes of `source` starting `offset` bytes into it, charged
    /// to `account` in the books of `ctx` (`mode` upgraded to per-process when `ctx` asks for it).
    pub fn make_pages(
        ctx: &Context,
        source: Arc<dyn PageSource>,
        offset_in_page: u64,
        length: u64,
        writable: bool,
        mut account: Account,
    ) -> Result<Arc<Pages>, Errno> {
        if ctx.account_mode() == AccountMode::Process && account.mode == AccountMode::User {
            account.mode = AccountMode::Process;
        }
        Pages::new(
            ctx.ledger(),
            source,
            offset_in_page,
            length,
            writable,
            account,
        )
    }

    /// IOAS_MAP of caller memory: `user_va` in the process bound as `owner`, charged in the books
    /// of `ctx` (this IOAS's context) as the calling thread with `creds` would be.
    #[allow(clippy::too_many_arguments)]
    pub fn map_user(
        &self,
        ctx: &Context,
        owner: Arc<ProcessHandle>,
        creds: &Credentials,
        user_va: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        user_va.checked_add(length).ok_or(Errno::EOVERFLOW)?;
        let base = user_va & !(PAGE_SIZE - 1);
        let source = Arc::new(crate::iopt::source::ProcessSource::new(owner.clone(), base));
        let pages = Self::make_pages(
            ctx,
            source,
            user_va - base,
            length,
            prot.write,
            Account::for_process(owner, creds, AccountMode::User),
        )?;
        self.map_pages(pages, iova, prot)
    }

    /// Maps a whole Pages object at `iova` (or an allocated IOVA).
    pub fn map_pages(
        &self,
        pages: Arc<Pages>,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        let slice = PagesSlice {
            start_byte: pages.start_byte,
            length: pages.length,
            pages,
        };
        let length = slice.length;
        self.map_slices(&[slice], length, iova, prot)
    }

    /// Maps `slices` (total `length` bytes) at `iova` or an allocated IOVA: the IOVA is taken
    /// under the table's lock, the pages are pinned and mapped into the domains with it released
    /// (that can wait on the client's memory), and the result is committed under it again.
    pub fn map_slices(
        &self,
        slices: &[PagesSlice],
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        let _domains = self.domains_gate.read().unwrap();
        let mut pending = self.iopt().begin_map(slices, length, iova, prot)?;
        let unwinding = PendingGuard {
            ioas: self,
            span: pending.span(),
        };
        let filled = pending.fill();
        std::mem::forget(unwinding);
        self.iopt().finish_map(pending, filled)
    }

    /// The table, with the domains held still for an attach or a detach.
    pub fn iopt_for_domains(
        &self,
    ) -> (RwLockWriteGuard<'_, ()>, RwLockWriteGuard<'_, IoPagetable>) {
        let gate = self.domains_gate.write().unwrap();
        (gate, self.iopt())
    }

    /// Unmaps `[start, last]`, asking attached accesses to release pins inside it first.
    /// Returns the bytes unmapped; on error also the bytes removed before it.
    pub fn unmap(&self, start: u64, last: u64) -> Result<u64, (Errno, u64)> {
        let mut total = 0u64;
        let mut tries = 0u32;
        let mut cursor = start;
        loop {
            let step = self.iopt().unmap_range(cursor, last);
            match step {
                Ok(UnmapProgress::Done(n)) => return Ok(total + n),
                Err((e, n)) => return Err((e, total + n)),
                Ok(UnmapProgress::NeedAccessRelease {
                    iova,
                    length,
                    unmapped,
                }) => {
                    total += unmapped;
                    if iova != cursor {
                        tries = 0;
                    }
                    cursor = iova;
                    tries += 1;
                    if tries > MAX_UNMAP_TRIES {
                        crate::warn_limited!(iova, length, "an access does not release its pins");
                        return Err((Errno::EDEADLK, total));
                    }
                    self.notify_unmap(iova, length);
                }
            }
        }
    }

    /// Calls every attached access's unmap callback, with no lock of this IOAS held.
    fn notify_unmap(&self, iova: u64, length: u64) {
        let accesses: Vec<Arc<Access>> = self
            .accesses
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for access in accesses {
            access.notify_unmap(iova, length);
        }
    }

    pub(super) fn attach_access(&self, access: &Arc<Access>) {
        let mut list = self.accesses.lock().unwrap();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(access));
    }

    pub(super) fn detach_access(&self, access: &Access) {
        self.accesses
            .lock()
            .unwrap()
            .retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), access));
    }

    /// Destruction: everything unmapped (the table is unreachable by now).
    pub fn destroy(&self) {
        if let Err((e, _)) = self.unmap(0, u64::MAX) {
            crate::warn_limited!(?e, "IOAS destroyed with areas that could not be unmapped");
        }
    }
}

/// Alive only while a map's fill runs with no lock held: if the fill unwinds, its pending areas
/// leave the table on the way out, or their IOVA would stay busy (EEXIST/EBUSY) for good.
struct PendingGuard<'a> {
    ioas: &'a Ioas,
    span: (u64, u64),
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut iopt = self.ioas.iopt.write().unwrap_or_else(|p| p.into_inner());
        iopt.drop_pending(self.span);
    }
}
