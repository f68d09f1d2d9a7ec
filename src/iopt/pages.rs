//! Pages: what an area's IOVA range is backed by, and the pins taken on it.
//!
//! A [`Pages`] covers `npages` CPU pages of one backing ([`PageSource`]): a range of a caller's
//! anonymous memory (reached through process_vm and /proc, see `crate::iopt::source`) or a file the
//! daemon mapped itself. Areas share a `Pages` through `Arc` (IOAS_COPY, VFIO v1 splits).
//!
//! Pins are counted per CPU page: a page is pinned while at least one user (the domains of an area
//! that contains it, or an access pin) needs it, and is charged once against the owner's memlock
//! budget ([`super::accounting`]) for as long as it stays pinned.

use super::accounting::{Account, AccountMode};
use super::ledger::Ledger;
use super::pin_runs::PinRuns;
use crate::backends::VaRun;
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

/// Every live [`Pages`] of one daemon (part of its [`Ledger`]), so that a physical page's pins
/// can be counted across all its contexts (the selftest's IOMMU_TEST_OP_MD_CHECK_REFS compares
/// them with the kernel's pin count).
#[derive(Debug, Default)]
pub struct LivePages {
    live: Mutex<Vec<Weak<Pages>>>,
    /// Pages whose last pin was released by [`Pages`]' drop instead of an unpin: a leaked pin
    /// that the drop covered up (the fault-injection tests require it to stay 0).
    #[cfg(test)]
    dropped_while_pinned: std::sync::atomic::AtomicU64,
}

impl LivePages {
    /// Pages dropped while still pinned since the last call (a leaked pin the drop covered up).
    #[cfg(test)]
    pub(crate) fn take_dropped_while_pinned(&self) -> u64 {
        self.dropped_while_pinned
            .swap(0, std::sync::atomic::Ordering::SeqCst)
    }

    fn register(&self, pages: &Arc<Pages>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.len() >= 64 && live.len().is_power_of_two() {
            live.retain(|w| w.strong_count() > 0);
        }
        live.push(Arc::downgrade(pages));
    }

    /// Pins per physical page address (page aligned) over every live [`Pages`]: each `Pages`
    /// that has the page pinned counts once, whatever the number of its users, like one
    /// long-term GUP pin.
    pub fn pins_by_paddr(&self) -> std::collections::HashMap<u64, u32> {
        let live: Vec<Arc<Pages>> = {
            let mut l = self.live.lock().unwrap_or_else(|e| e.into_inner());
            l.retain(|w| w.strong_count() > 0);
            l.iter().filter_map(Weak::upgrade).collect()
        };
        let mut out = std::collections::HashMap::new();
        for p in live {
            for paddr in p.pins.lock().unwrap().frames().filter(|&p| p != 0) {
                *out.entry(paddr & !(PAGE_SIZE - 1)).or_insert(0) += 1;
            }
        }
        out
    }
}

/// The CPU page size all page bookkeeping is done in.
pub const PAGE_SIZE: u64 = 4096;

/// Most pages [`Pages::pin`] asks its source for (and charges) at a time.
pub const PIN_BATCH: u64 = 4096;

/// Where the bytes of a [`Pages`] live. Offsets are relative to the page-aligned start of the backing.
pub trait PageSource: Send + Sync + fmt::Debug {
    /// Makes pages `[first, first + count)` resident and returns their physical addresses.
    /// EFAULT when a page is not mapped (or not writable while `write` is asked).
    fn pin(&self, first: u64, count: u64, write: bool) -> Result<Vec<u64>, Errno>;
    /// Copies `buf.len()` bytes at `offset` out of the backing.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Copies `data` into the backing at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// True for file-backed memory (IOMMU_IOAS_CHANGE_PROCESS only accepts those).
    fn is_file(&self) -> bool {
        false
    }
    /// The user address this backing starts at, if it is a caller's memory (IOVA alignment hint).
    fn address_hint(&self) -> u64;
    /// The exporter took the memory back (a revoked dma-buf): areas on it stay in the IOAS but
    /// are mapped into no domain, and pins fail.
    fn revoked(&self) -> bool {
        false
    }
    /// A dma-buf import: only domains map it; accesses may neither pin nor copy it.
    fn is_dmabuf(&self) -> bool {
        false
    }
    /// The same pages as bytes `[offset, offset + len)` of the backing, mapped into the daemon,
    /// for domains that pin by themselves ([`crate::backends::Backing::DaemonVa`]). EOPNOTSUPP
    /// when the daemon cannot map them (private memory).
    fn daemon_view(&self, _offset: u64, _len: u64, _write: bool) -> Result<Vec<VaRun>, Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}

/// A page-aligned window onto a backing, shared by the areas that map it.
pub struct Pages {
    source: Arc<dyn PageSource>,
    /// Byte offset of the first mapped byte inside the first page.
    pub start_byte: u64,
    /// Bytes covered from `start_byte`.
    pub length: u64,
    pub npages: u64,
    pub writable: bool,
    /// The daemon's books: where the pins are charged and this `Pages` is listed.
    ledger: Arc<Ledger>,
    account: Mutex<Account>,
    pins: Mutex<PinRuns>,
}

impl fmt::Debug for Pages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field("source", &self.source)
            .field("start_byte", &self.start_byte)
            .field("length", &self.length)
            .field("npinned", &self.npinned())
            .finish()
    }
}

impl Pages {
    /// `start_byte` is the offset of the mapping inside the first page, `length` its size in bytes;
    /// pins are charged to `account` in `ledger`. EINVAL for a zero or absurd length, like the
    /// kernel.
    pub fn new(
        ledger: &Arc<Ledger>,
        source: Arc<dyn PageSource>,
        start_byte: u64,
        length: u64,
        writable: bool,
        account: Account,
    ) -> Result<Arc<Self>, Errno> {
        if length == 0 || length > u64::MAX - PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        let npages = (length + start_byte).div_ceil(PAGE_SIZE);
        let pages = Arc::new(Self {
            source,
            start_byte,
            length,
            npages,
            writable,
            ledger: ledger.clone(),
            account: Mutex::new(account),
            pins: Mutex::new(PinRuns::default()),
        });
        ledger.live.register(&pages);
        Ok(pages)
    }

    pub fn source(&self) -> &Arc<dyn PageSource> {
        &self.source
    }

    /// Number of distinct CPU pages pinned right now.
    pub fn npinned(&self) -> u64 {
        self.pins.lock().unwrap().npinned()
    }

    /// Pin users recorded on page `index` (0 when not pinned).
    pub fn pin_users(&self, index: u64) -> u32 {
        self.pins.lock().unwrap().users(index)
    }

    pub fn account_mode(&self) -> AccountMode {
        self.account.lock().unwrap().mode
    }

    /// Upgrades per-user accounting to per-process, as a context in RLIMIT process mode does.
    pub fn set_account_mode(&self, mode: AccountMode) {
        self.account.lock().unwrap().mode = mode;
    }

    /// Moves the charge of every pinned page to `new_owner` (IOMMU_IOAS_CHANGE_PROCESS).
    pub fn change_owner(&self, new_owner: Account) -> Result<(), Errno> {
        let pins = self.pins.lock().unwrap();
        let n = pins.npinned();
        let mut account = self.account.lock().unwrap();
        new_owner.charge(&self.ledger.pins, n)?;
        account.uncharge(&self.ledger.pins, n);
        *account = new_owner;
        Ok(())
    }

    /// Adds one pin user to pages `[first, last]`, returning their physical addresses. Pages not yet
    /// pinned are made resident and charged; on any failure nothing changes.
    ///
    /// New pages are fetched from the source and charged in batches of at most [`PIN_BATCH`], as
    /// the kernel pins: the memory this costs the daemon grows only with what was really pinned
    /// and charged, so a huge range of unmapped (or over-limit) memory fails at its first batch
    /// instead of making the daemon build per-page tables for all of it first.
    pub fn pin(&self, first: u64, last: u64, write: bool) -> Result<Vec<u64>, Errno> {
        self.pin_inner(first, last, write, true)
    }

    /// Like [`Pages::pin`] for a domain that pins by itself: pages are charged and counted, but
    /// their frames are not looked up (a later [`Pages::pin`] looks them up without charging).
    pub fn hold(&self, first: u64, last: u64, write: bool) -> Result<(), Errno> {
        self.pin_inner(first, last, write, false).map(drop)
    }

    fn pin_inner(
        &self,
        first: u64,
        last: u64,
        write: bool,
        frames: bool,
    ) -> Result<Vec<u64>, Errno> {
        debug_assert!(first <= last && last < self.npages);
        let mut pins = self.pins.lock().unwrap();
        // Parts to work on: not pinned yet (`fresh`: charged), or held without their frames
        // while frames are wanted (looked up only).
        let needs = pins.needs(first, last, frames);
        let undo = |charged: u64, e: Errno| {
            self.account
                .lock()
                .unwrap()
                .uncharge(&self.ledger.pins, charged);
            e
        };
        // Populating a file's holes allocates pages charged to the daemon, not to the client:
        // for files the whole charge against the owner's limit comes first, so a client cannot
        // make the daemon allocate more than its RLIMIT_MEMLOCK (the kernel pins first, but
        // charges the allocation to the caller's memory cgroup). Without frames nothing is
        // allocated here: the charge comes first too.
        let charge_first = self.source.is_file() || !frames;
        let mut charged = 0u64;
        if charge_first {
            let fresh: u64 = needs.iter().filter(|n| n.fresh).map(|n| n.count).sum();
            self.account
                .lock()
                .unwrap()
                .charge(&self.ledger.pins, fresh)?;
            charged = fresh;
        }
        let mut fetched = BTreeMap::new();
        for need in needs.iter().filter(|_| frames) {
            let mut got = Vec::with_capacity(need.count.min(PIN_BATCH) as usize);
            while (got.len() as u64) < need.count {
                let at = need.start + got.len() as u64;
                let n = (need.count - got.len() as u64).min(PIN_BATCH);
                #[cfg(test)]
                super::failpoint::check(Errno::EFAULT).map_err(|e| undo(charged, e))?;
                let batch = self
                    .source
                    .pin(at, n, write)
                    .map_err(|e| undo(charged, e))?;
                if !charge_first && need.fresh {
                    // The ledger's guard must be gone before `undo` takes it again.
                    let charge = self.account.lock().unwrap().charge(&self.ledger.pins, n);
                    charge.map_err(|e| undo(charged, e))?;
                    charged += n;
                }
                got.extend(batch);
            }
            fetched.insert(need.start, got);
        }
        // Pages already pinned were charged before: the answer grows only with what is charged.
        Ok(pins.add(first, last, fetched, frames).unwrap_or_default())
    }

    /// Drops one pin user from pages `[first, last]`; pages left without users are uncharged.
    pub fn unpin(&self, first: u64, last: u64) {
        let released = self.pins.lock().unwrap().remove(first, last);
        self.account
            .lock()
            .unwrap()
            .uncharge(&self.ledger.pins, released);
    }

    /// Reads bytes at `offset` (relative to the page-aligned start of the backing).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.source.read(offset, buf)
    }

    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.source.write(offset, data)
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // A pin that unwound poisons the locks; the counts in them are still what was pinned.
        let n = self
            .pins
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .npinned();
        if n != 0 {
            #[cfg(test)]
            self.ledger
                .live
                .dropped_while_pinned
                .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            crate::warn_limited!(pages = n, "pages dropped while still pinned; uncharging");
            self.account
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .uncharge(&self.ledger.pins, n);
        }
    }
}
