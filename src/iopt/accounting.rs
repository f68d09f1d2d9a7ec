//! Pin accounting against the owner's RLIMIT_MEMLOCK, in the two modes of IOMMU_OPTION_RLIMIT_MODE.
//!
//! Each daemon keeps its own books ([`PinBook`], in its [`super::Ledger`]): pages pinned per user id (user mode, the default) and per
//! process identity (process mode, VFIO's behaviour): the key is the owner's bound
//! [`ProcessHandle`] (one per process and program), never a pid number that another process may
//! inherit. Callers holding CAP_IPC_LOCK in the daemon's own user namespace are not charged, as
//! with the kernel's `capable()`. The limit is the owner's soft RLIMIT_MEMLOCK read at charge time
//! from `/proc/<pid>/limits` through the handle (no CAP_SYS_RESOURCE needed); it fails closed: a
//! limit that cannot be read is 0, so the pin fails with ENOMEM.

use crate::caller::{Credentials, ProcessHandle};
use nix::errno::Errno;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::pages::PAGE_SIZE;

/// How pins of a context are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountMode {
    /// Not charged (the owner has CAP_IPC_LOCK).
    None,
    /// Charged to the owner's user id (iommufd's default).
    User,
    /// Charged to the owner process (VFIO compatible; IOMMU_OPTION_RLIMIT_MODE = 1).
    Process,
}

/// The pin charges of one daemon: pages pinned per user id (user mode), per process identity
/// (process mode), and in all. Part of the daemon's [`super::ledger::Ledger`], so that two daemons
/// in one process (tests) keep separate books.
#[derive(Debug, Default)]
pub struct PinBook {
    per_user: Mutex<HashMap<u32, u64>>,
    per_process: Mutex<HashMap<u64, u64>>,
    total: AtomicU64,
}

impl PinBook {
    /// Pages pinned across the whole daemon (status, leak tests).
    pub fn pinned_total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Pages charged in process mode to the process identity `key` ([`Account::key`]).
    pub fn charged_to_process(&self, key: u64) -> u64 {
        lock(&self.per_process).get(&key).copied().unwrap_or(0)
    }

    /// Pages charged in process mode over all process identities (leak checks).
    pub fn charged_to_processes(&self) -> u64 {
        lock(&self.per_process).values().sum()
    }

    /// Pages charged to user `uid` in user mode.
    pub fn charged_to_user(&self, uid: u32) -> u64 {
        lock(&self.per_user).get(&uid).copied().unwrap_or(0)
    }
}

/// A ledger's map, even if a charge unwound while holding it (the counts are still whole).
fn lock<K, V>(m: &Mutex<HashMap<K, V>>) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds `n` to `key`'s entry unless that passes `limit`; false (and nothing changed) if it would.
fn add_within<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, u64>>,
    key: K,
    n: u64,
    limit: u64,
) -> bool {
    let mut map = lock(map);
    let cur = map.entry(key).or_insert(0);
    if cur.saturating_add(n) > limit {
        return false;
    }
    *cur += n;
    true
}

/// Takes `n` off `key`'s entry, dropping the entry at 0.
fn take_off<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, u64>>, key: K, n: u64) {
    let mut map = lock(map);
    if let Some(cur) = map.get_mut(&key) {
        *cur = cur.saturating_sub(n);
        if *cur == 0 {
            map.remove(&key);
        }
    }
}

/// Where the limit of an account comes from.
#[derive(Debug, Clone)]
enum Owner {
    /// Never charged.
    Nobody,
    /// A process identity bound at map time.
    Process(Arc<ProcessHandle>),
    /// A fixed key and limit (unit tests, daemon-internal users).
    Fixed { key: u64, limit: u64 },
}

/// Who pays for the pins of one [`super::pages::Pages`].
#[derive(Debug, Clone)]
pub struct Account {
    pub mode: AccountMode,
    pub uid: u32,
    owner: Owner,
}

impl Account {
    /// The account of the caller whose process is `owner` and whose calling thread has
    /// `creds`: mode None if it has CAP_IPC_LOCK (in the daemon's user namespace), else
    /// `default_mode`.
    pub fn for_process(
        owner: Arc<ProcessHandle>,
        creds: &Credentials,
        default_mode: AccountMode,
    ) -> Self {
        let mode = if creds.capable(crate::caller::CAP_IPC_LOCK) {
            AccountMode::None
        } else {
            default_mode
        };
        Self {
            mode,
            uid: creds.uid,
            owner: Owner::Process(owner),
        }
    }

    /// An account with a fixed process key and limit in bytes (tests).
    pub fn fixed(mode: AccountMode, key: u64, uid: u32, limit: u64) -> Self {
        Self {
            mode,
            uid,
            owner: Owner::Fixed { key, limit },
        }
    }

    /// An account that is never charged (in-process tests, daemon-internal users).
    pub fn unaccounted() -> Self {
        Self {
            mode: AccountMode::None,
            uid: 0,
            owner: Owner::Nobody,
        }
    }

    /// The key of process-mode charges.
    pub fn key(&self) -> u64 {
        match &self.owner {
            Owner::Nobody => 0,
            Owner::Process(h) => h.id(),
            Owner::Fixed { key, .. } => *key,
        }
    }

    fn limit_pages(&self) -> u64 {
        let bytes = match &self.owner {
            Owner::Nobody => 0,
            Owner::Process(h) => h.memlock_limit(),
            Owner::Fixed { limit, .. } => *limit,
        };
        bytes / PAGE_SIZE
    }

    /// Charges `npages` in `book`; ENOMEM past the limit, leaving the book unchanged.
    pub fn charge(&self, book: &PinBook, npages: u64) -> Result<(), Errno> {
        if npages == 0 {
            return Ok(());
        }
        #[cfg(test)]
        super::failpoint::check(Errno::ENOMEM)?;
        let within = match self.mode {
            AccountMode::None => true,
            AccountMode::User => add_within(&book.per_user, self.uid, npages, self.limit_pages()),
            AccountMode::Process => {
                add_within(&book.per_process, self.key(), npages, self.limit_pages())
            }
        };
        if !within {
            return Err(Errno::ENOMEM);
        }
        book.total.fetch_add(npages, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back `npages` charged in `book` by [`Self::charge`].
    pub fn uncharge(&self, book: &PinBook, npages: u64) {
        if npages == 0 {
            return;
        }
        match self.mode {
            AccountMode::None => {}
            AccountMode::User => take_off(&book.per_user, self.uid, npages),
            AccountMode::Process => take_off(&book.per_process, self.key(), npages),
        }
        book.total.fetch_sub(npages, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_respects_limit_and_uncharges() {
        let book = PinBook::default();
        let acct = Account::fixed(AccountMode::Process, 7, 0, 4 * PAGE_SIZE);
        acct.charge(&book, 3).unwrap();
        assert_eq!(acct.charge(&book, 2), Err(Errno::ENOMEM));
        assert_eq!(book.charged_to_process(7), 3);
        acct.charge(&book, 1).unwrap();
        acct.uncharge(&book, 4);
        assert_eq!(book.charged_to_process(7), 0);
        assert_eq!(book.pinned_total(), 0);
    }

    #[test]
    fn unaccounted_is_free() {
        const HUGE: u64 = 1 << 40;
        let book = PinBook::default();
        let acct = Account::unaccounted();
        assert_eq!(acct.mode, AccountMode::None);
        // No limit applies (a charged account with no owner would have a limit of 0).
        acct.charge(&book, HUGE).unwrap();
        // Counted among the daemon's pins, charged to nobody's ledger.
        assert_eq!(book.pinned_total(), HUGE);
        assert_eq!(book.charged_to_user(acct.uid), 0);
        assert_eq!(book.charged_to_processes(), 0);
        acct.uncharge(&book, HUGE);
        assert_eq!(book.pinned_total(), 0);
    }

    #[test]
    fn namespaced_capabilities_do_not_exempt() {
        let owner = Arc::new(ProcessHandle::current().unwrap());
        let creds = Credentials {
            uid: 4_000_000_001,
            cap_eff: u64::MAX,
            initial_userns: false,
        };
        let acct = Account::for_process(owner.clone(), &creds, AccountMode::User);
        assert_eq!(
            acct.mode,
            AccountMode::User,
            "CAP_IPC_LOCK in a user namespace"
        );
        let root = Credentials {
            initial_userns: true,
            ..creds
        };
        assert_eq!(
            Account::for_process(owner, &root, AccountMode::User).mode,
            AccountMode::None
        );
    }

    #[test]
    fn the_limit_is_the_owners_own_and_outlives_it() {
        use std::io::BufRead;
        // Another process with an 8 KiB (2 page) RLIMIT_MEMLOCK.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "ulimit -l 8 && echo up && read x"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "up");
        let pid = child.id() as i32;
        let owner = Arc::new(ProcessHandle::open(pid, pid).unwrap());
        assert_eq!(owner.memlock_limit(), 8192);
        let creds = Credentials {
            uid: 4_000_000_002,
            cap_eff: 0,
            initial_userns: true,
        };
        let book = PinBook::default();
        let acct = Account::for_process(owner.clone(), &creds, AccountMode::Process);
        assert_eq!(acct.key(), owner.id());
        acct.charge(&book, 2).unwrap();
        assert_eq!(acct.charge(&book, 1), Err(Errno::ENOMEM));
        drop(child.stdin.take());
        child.wait().unwrap();
        // Gone: the last limit it had still applies (not "unlimited").
        assert!(!owner.alive());
        assert_eq!(owner.memlock_limit(), 8192);
        assert_eq!(acct.charge(&book, 1), Err(Errno::ENOMEM));
        acct.uncharge(&book, 2);
        assert_eq!(book.charged_to_process(owner.id()), 0);
        let zero = Account::fixed(AccountMode::User, 1, 4_000_000_003, 0);
        assert_eq!(zero.charge(&book, 1), Err(Errno::ENOMEM));
    }
}
