//! Caps on what a client can make the daemon hold.
//!
//! The kernel charges an iommufd's objects, areas and allowed ranges to the caller's memory cgroup
//! and holds a file reference (no fd slot) per IOAS_MAP_FILE. A daemon has neither: every object
//! costs its heap, every file a slot in its fd table (RLIMIT_NOFILE, shared by all users). So each
//! resource below is counted per context and per user (the uid that owns the context), and a
//! request that would pass a cap fails with ENOMEM, the errno the kernel gives when an allocation
//! is refused. The caps are generous against real users: QEMU holds a few dozen objects and file
//! mappings, the kernel's iommufd selftest a few hundred at most.
//!
//! Files are additionally shared: one daemon fd per distinct file however many mappings use it
//! ([`super::source::SharedFile`]), and the number of files held across the whole daemon stays
//! below half of its fd limit, so that the transport always has fds left.

use super::ledger::Ledger;
use nix::errno::Errno;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Entries of the context's object table (IOAS, HWPT, devices, accesses, …).
    Objects,
    /// IOAS_MAP_FILE mappings alive (each may keep a file, hence possibly a daemon fd).
    FileMaps,
    /// Allowed IOVA ranges stored by IOAS_ALLOW_IOVAS.
    AllowedRanges,
}

const RESOURCES: usize = 3;

impl Resource {
    fn index(self) -> usize {
        match self {
            Resource::Objects => 0,
            Resource::FileMaps => 1,
            Resource::AllowedRanges => 2,
        }
    }

    /// The caps: (per context, per user across all its contexts).
    pub const fn caps(self) -> (u64, u64) {
        match self {
            // A few hundred bytes to a few KiB each.
            Resource::Objects => (OBJECTS_PER_CONTEXT, OBJECTS_PER_USER),
            Resource::FileMaps => (FILE_MAPS_PER_CONTEXT, FILE_MAPS_PER_USER),
            // Some 50 bytes each.
            Resource::AllowedRanges => (ALLOWED_RANGES_PER_CONTEXT, ALLOWED_RANGES_PER_USER),
        }
    }
}

/// Objects in one context's table (tombstones included).
pub const OBJECTS_PER_CONTEXT: u64 = 16 * 1024;
/// Objects over all contexts of one user.
pub const OBJECTS_PER_USER: u64 = 64 * 1024;
/// Live IOAS_MAP_FILE mappings of one context (IOAS_COPY and splits share theirs).
pub const FILE_MAPS_PER_CONTEXT: u64 = 1024;
/// Live IOAS_MAP_FILE mappings over all contexts of one user; with distinct files each may hold
/// one daemon fd, so this stays far below a typical RLIMIT_NOFILE.
pub const FILE_MAPS_PER_USER: u64 = 4096;
/// Allowed IOVA ranges of one context (all its IOASes). Above the 400k a stress test uses.
pub const ALLOWED_RANGES_PER_CONTEXT: u64 = 1 << 20;
pub const ALLOWED_RANGES_PER_USER: u64 = 2 << 20;

/// Files (daemon fds) held for all clients together may use at most 1/this of RLIMIT_NOFILE.
pub const HELD_FILES_FD_SHARE: u64 = 2;

/// One daemon's per-user totals, by (uid, resource): part of its [`super::ledger::Ledger`].
#[derive(Debug, Default)]
pub struct UserQuotas {
    totals: Mutex<HashMap<(u32, Resource), u64>>,
}

impl UserQuotas {
    fn totals(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, Resource), u64>> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current total of `res` over the contexts of user `uid` (tests, status).
    pub fn user_total(&self, uid: u32, res: Resource) -> u64 {
        self.totals().get(&(uid, res)).copied().unwrap_or(0)
    }

    /// Adds `n` to `uid`'s total of `res`; false (and nothing taken) past the per-user cap.
    fn take(&self, uid: u32, res: Resource, n: u64) -> bool {
        let mut totals = self.totals();
        let cur = totals.entry((uid, res)).or_insert(0);
        match cur.checked_add(n).filter(|&v| v <= res.caps().1) {
            Some(v) => {
                *cur = v;
                true
            }
            None => false,
        }
    }

    fn give_back(&self, uid: u32, res: Resource, n: u64) {
        let mut totals = self.totals();
        if let Some(cur) = totals.get_mut(&(uid, res)) {
            *cur = cur.saturating_sub(n);
            if *cur == 0 {
                totals.remove(&(uid, res));
            }
        }
    }
}

/// The counters of one context; its user's totals are kept in the daemon's `ledger`.
#[derive(Debug)]
pub struct Quota {
    counts: [AtomicU64; RESOURCES],
    ledger: Arc<Ledger>,
}

impl Quota {
    pub fn new(ledger: Arc<Ledger>) -> Arc<Self> {
        Arc::new(Self {
            counts: Default::default(),
            ledger,
        })
    }

    pub fn used(&self, res: Resource) -> u64 {
        self.counts[res.index()].load(Ordering::Relaxed)
    }

    /// Takes `n` units of `res` for this context and, when known, for user `uid`; ENOMEM past a
    /// cap (nothing is taken then). The returned charge gives them back when dropped.
    pub fn charge(
        self: &Arc<Self>,
        uid: Option<u32>,
        res: Resource,
        n: u64,
    ) -> Result<Charge, Errno> {
        let ctx_cap = res.caps().0;
        let counter = &self.counts[res.index()];
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(n).filter(|&v| v <= ctx_cap)
            })
            .map_err(|_| Errno::ENOMEM)?;
        if let Some(uid) = uid {
            if !self.ledger.quotas.take(uid, res, n) {
                counter.fetch_sub(n, Ordering::AcqRel);
                return Err(Errno::ENOMEM);
            }
        }
        Ok(Charge {
            quota: self.clone(),
            uid,
            res,
            n,
        })
    }
}

/// Units of one resource taken from a context (and its user); given back on drop.
#[derive(Debug)]
pub struct Charge {
    quota: Arc<Quota>,
    uid: Option<u32>,
    res: Resource,
    n: u64,
}

impl Charge {
    pub fn units(&self) -> u64 {
        self.n
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.quota.counts[self.res.index()].fetch_sub(self.n, Ordering::AcqRel);
        if let Some(uid) = self.uid {
            self.quota.ledger.quotas.give_back(uid, self.res, self.n);
        }
    }
}

/// The real uid of process `pid` (whom the kernel's current_user() would name), from
/// `/proc/<pid>/status`; None if it cannot be read.
pub fn real_uid_of(pid: i32) -> Option<u32> {
    let status = crate::caller::identity::read_status(pid).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|s| s.parse().ok())
}

/// The daemon's soft RLIMIT_NOFILE now.
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Raises the daemon's soft RLIMIT_NOFILE to its hard limit (call once at start); returns the new
/// soft limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource as R};
    match getrlimit(R::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(R::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(%e, "could not raise RLIMIT_NOFILE");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_cap_is_enforced_and_released() {
        let ledger = Ledger::new();
        let q = Quota::new(ledger.clone());
        let (cap, _) = Resource::FileMaps.caps();
        let big = q.charge(None, Resource::FileMaps, cap - 1).unwrap();
        let one = q.charge(None, Resource::FileMaps, 1).unwrap();
        assert_eq!(
            q.charge(None, Resource::FileMaps, 1).unwrap_err(),
            Errno::ENOMEM
        );
        assert_eq!(q.used(Resource::FileMaps), cap);
        drop(one);
        let again = q.charge(None, Resource::FileMaps, 1).unwrap();
        drop((big, again));
        assert_eq!(q.used(Resource::FileMaps), 0);
    }

    #[test]
    fn user_cap_spans_contexts_and_failure_takes_nothing() {
        let ledger = Ledger::new();
        let uid = 1000;
        let (ctx_cap, user_cap) = Resource::Objects.caps();
        let mut held = Vec::new();
        let mut total = 0;
        while total < user_cap {
            let q = Quota::new(ledger.clone());
            let n = ctx_cap.min(user_cap - total);
            held.push(q.charge(Some(uid), Resource::Objects, n).unwrap());
            total += n;
        }
        let q = Quota::new(ledger.clone());
        assert_eq!(
            q.charge(Some(uid), Resource::Objects, 1).unwrap_err(),
            Errno::ENOMEM
        );
        assert_eq!(
            q.used(Resource::Objects),
            0,
            "a refused charge takes nothing"
        );
        assert_eq!(ledger.quotas.user_total(uid, Resource::Objects), user_cap);
        // Another user is not affected.
        let other = q.charge(Some(uid + 1), Resource::Objects, 1).unwrap();
        drop(other);
        held.pop();
        q.charge(Some(uid), Resource::Objects, 1).unwrap();
        drop(held);
        assert_eq!(ledger.quotas.user_total(uid, Resource::Objects), 0);
    }
}
