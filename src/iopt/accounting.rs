//! Pin accounting against the owner's RLIMIT_MEMLOCK, in the two modes of IOMMU_OPTION_RLIMIT_MODE.
//!
//! The daemon keeps its own ledgers: pages pinned per user id (user mode, the default) and per
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

static PER_USER: Mutex<Option<HashMap<u32, u64>>> = Mutex::new(None);
static PER_PROCESS: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);
static PINNED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Pages pinned across the whole daemon (inspection and leak tests).
pub fn pinned_total() -> u64 {
    PINNED_TOTAL.load(Ordering::Relaxed)
}

/// Pages charged in process mode to the process identity `key` ([`Account::key`]).
pub fn charged_to_process(key: u64) -> u64 {
    PER_PROCESS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&key).copied())
        .unwrap_or(0)
}

/// Pages charged in process mode over all process identities (leak checks).
pub fn charged_to_processes() -> u64 {
    PER_PROCESS
        .lock()
        .unwrap()
        .as_ref()
        .map_or(0, |m| m.values().sum())
}

/// Pages charged to user `uid` in user mode.
pub fn charged_to_user(uid: u32) -> u64 {
    PER_USER
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&uid).copied())
        .unwrap_or(0)
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

    /// Charges `npages`; ENOMEM past the limit, leaving the ledger unchanged.
    pub fn charge(&self, npages: u64) -> Result<(), Errno> {
        if npages == 0 {
            return Ok(());
        }
        #[cfg(test)]
        super::failpoint::check(Errno::ENOMEM)?;
        match self.mode {
            AccountMode::None => {}
            AccountMode::User => {
                let limit = self.limit_pages();
                let mut guard = PER_USER.lock().unwrap();
                let cur = guard
                    .get_or_insert_with(HashMap::new)
                    .entry(self.uid)
                    .or_insert(0);
                if cur.saturating_add(npages) > limit {
                    return Err(Errno::ENOMEM);
                }
                *cur += npages;
            }
            AccountMode::Process => {
                let limit = self.limit_pages();
                let mut guard = PER_PROCESS.lock().unwrap();
                let cur = guard
                    .get_or_insert_with(HashMap::new)
                    .entry(self.key())
                    .or_insert(0);
                if cur.saturating_add(npages) > limit {
                    return Err(Errno::ENOMEM);
                }
                *cur += npages;
            }
        }
        PINNED_TOTAL.fetch_add(npages, Ordering::Relaxed);
        Ok(())
    }

    pub fn uncharge(&self, npages: u64) {
        if npages == 0 {
            return;
        }
        match self.mode {
            AccountMode::None => {}
            AccountMode::User => {
                if let Some(map) = PER_USER.lock().unwrap().as_mut() {
                    if let Some(cur) = map.get_mut(&self.uid) {
                        *cur = cur.saturating_sub(npages);
                        if *cur == 0 {
                            map.remove(&self.uid);
                        }
                    }
                }
            }
            AccountMode::Process => {
                let key = self.key();
                if let Some(map) = PER_PROCESS.lock().unwrap().as_mut() {
                    if let Some(cur) = map.get_mut(&key) {
                        *cur = cur.saturating_sub(npages);
                        if *cur == 0 {
                            map.remove(&key);
                        }
                    }
                }
            }
        }
        PINNED_TOTAL.fetch_sub(npages, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_respects_limit_and_uncharges() {
        let acct = Account::fixed(AccountMode::Process, u64::MAX - 7, 0, 4 * PAGE_SIZE);
        acct.charge(3).unwrap();
        assert_eq!(acct.charge(2), Err(Errno::ENOMEM));
        assert_eq!(charged_to_process(u64::MAX - 7), 3);
        acct.charge(1).unwrap();
        acct.uncharge(4);
        assert_eq!(charged_to_process(u64::MAX - 7), 0);
    }

    #[test]
    fn unaccounted_is_free() {
        // More pages than the rest of this process ever pins, so that concurrent tests' charges
        // cannot make up or hide the difference.
        const HUGE: u64 = 1 << 40;
        let acct = Account::unaccounted();
        assert_eq!(acct.mode, AccountMode::None);
        // No limit applies (a charged account with no owner would have a limit of 0).
        acct.charge(HUGE).unwrap();
        // Counted among the daemon's pins, charged to nobody's ledger.
        assert!(pinned_total() >= HUGE);
        assert!(charged_to_user(acct.uid) < HUGE);
        assert!(charged_to_process(acct.key()) < HUGE);
        assert!(charged_to_processes() < HUGE);
        acct.uncharge(HUGE);
        assert!(pinned_total() < HUGE);
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
        let acct = Account::for_process(owner.clone(), &creds, AccountMode::Process);
        assert_eq!(acct.key(), owner.id());
        acct.charge(2).unwrap();
        assert_eq!(acct.charge(1), Err(Errno::ENOMEM));
        drop(child.stdin.take());
        child.wait().unwrap();
        // Gone: the last limit it had still applies (not "unlimited").
        assert!(!owner.alive());
        assert_eq!(owner.memlock_limit(), 8192);
        assert_eq!(acct.charge(1), Err(Errno::ENOMEM));
        acct.uncharge(2);
        assert_eq!(charged_to_process(owner.id()), 0);
        let zero = Account::fixed(AccountMode::User, 1, 4_000_000_003, 0);
        assert_eq!(zero.charge(1), Err(Errno::ENOMEM));
    }
}
