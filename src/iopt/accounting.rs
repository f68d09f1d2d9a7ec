//! Pin accounting against the owner's RLIMIT_MEMLOCK, in the two modes of IOMMU_OPTION_RLIMIT_MODE.
//!
//! The daemon keeps its own ledgers: pages pinned per user id (user mode, the default) and per process
//! (process mode, VFIO's behaviour). Callers holding CAP_IPC_LOCK are not charged, as in the kernel.
//! The limit is read from the owner process at charge time (prlimit), falling back to the value seen
//! when the account was created once that process is gone.

use nix::errno::Errno;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
static PER_PROCESS: Mutex<Option<HashMap<i32, u64>>> = Mutex::new(None);
static PINNED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Pages pinned across the whole daemon (inspection and leak tests).
pub fn pinned_total() -> u64 {
    PINNED_TOTAL.load(Ordering::Relaxed)
}

/// Pages charged to process `pid` in process mode (what the kernel reports as VmPin-like accounting).
pub fn charged_to_process(pid: i32) -> u64 {
    PER_PROCESS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&pid).copied())
        .unwrap_or(0)
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

/// Who pays for the pins of one [`super::pages::Pages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub mode: AccountMode,
    pub pid: i32,
    pub uid: u32,
    /// RLIMIT_MEMLOCK in bytes seen at creation (used when the process is gone).
    pub limit_snapshot: u64,
}

impl Account {
    /// The account of process `pid`: mode None if it has CAP_IPC_LOCK, else `default_mode`.
    pub fn for_process(pid: i32, default_mode: AccountMode) -> Self {
        let (uid, cap_ipc_lock) = owner_credentials(pid);
        let mode = if cap_ipc_lock {
            AccountMode::None
        } else {
            default_mode
        };
        Self {
            mode,
            pid,
            uid,
            limit_snapshot: memlock_limit(pid).unwrap_or(u64::MAX),
        }
    }

    /// An account that is never charged (in-process tests, daemon-internal users).
    pub fn unaccounted() -> Self {
        Self {
            mode: AccountMode::None,
            pid: 0,
            uid: 0,
            limit_snapshot: u64::MAX,
        }
    }

    fn limit_pages(&self) -> u64 {
        memlock_limit(self.pid).unwrap_or(self.limit_snapshot) / PAGE_SIZE
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
                if *cur + npages > limit {
                    return Err(Errno::ENOMEM);
                }
                *cur += npages;
            }
            AccountMode::Process => {
                let limit = self.limit_pages();
                let mut guard = PER_PROCESS.lock().unwrap();
                let cur = guard
                    .get_or_insert_with(HashMap::new)
                    .entry(self.pid)
                    .or_insert(0);
                if *cur + npages > limit {
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
                if let Some(map) = PER_PROCESS.lock().unwrap().as_mut() {
                    if let Some(cur) = map.get_mut(&self.pid) {
                        *cur = cur.saturating_sub(npages);
                        if *cur == 0 {
                            map.remove(&self.pid);
                        }
                    }
                }
            }
        }
        PINNED_TOTAL.fetch_sub(npages, Ordering::Relaxed);
    }
}

/// RLIMIT_MEMLOCK of `pid` in bytes (RLIM_INFINITY → u64::MAX).
fn memlock_limit(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with a null new-limit only writes the current limit into `old`, a valid rlimit.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_MEMLOCK, std::ptr::null(), &mut old) };
    (rc == 0).then_some(old.rlim_cur)
}

/// (real uid, has CAP_IPC_LOCK in its effective set) of `pid`, read from /proc.
fn owner_credentials(pid: i32) -> (u32, bool) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, false);
    };
    let mut uid = 0;
    let mut cap_eff = 0u64;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            uid = v
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("CapEff:") {
            cap_eff = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
        }
    }
    (uid, cap_eff & (1 << crate::caller::CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_respects_limit_and_uncharges() {
        let acct = Account {
            mode: AccountMode::Process,
            pid: -7, // no such process: the snapshot limit applies
            uid: 0,
            limit_snapshot: 4 * PAGE_SIZE,
        };
        acct.charge(3).unwrap();
        assert_eq!(acct.charge(2), Err(Errno::ENOMEM));
        assert_eq!(charged_to_process(-7), 3);
        acct.charge(1).unwrap();
        acct.uncharge(4);
        assert_eq!(charged_to_process(-7), 0);
    }

    #[test]
    fn unaccounted_is_free() {
        let acct = Account::unaccounted();
        acct.charge(1 << 40).unwrap();
        acct.uncharge(1 << 40);
    }
}
