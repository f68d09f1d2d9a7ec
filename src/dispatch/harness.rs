//! What the in-process consistency tests share (`fail_nth`, `fuzz`): an access owner that
//! records its pins, the global pin and charge counters, the check that areas, domains and pins
//! agree, and running a test again in a child process that is charged like any user.

use crate::caller::{CallerMemory, ProcessMemory};
use crate::iopt::accounting::AccountMode;
use crate::iopt::Ledger;
use crate::iopt::Pages;
use crate::objects::{Access, AccessOps, Context, Object};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An access owner that remembers its pins `(iova, length)` and lets go of those an unmap hits.
#[derive(Default)]
pub(crate) struct PinList(pub(crate) Mutex<Vec<(u64, u64)>>);

impl AccessOps for PinList {
    fn unmap(&self, access: &Access, iova: u64, length: u64) {
        let last = iova.saturating_add(length.saturating_sub(1));
        self.0.lock().unwrap().retain(|&(s, l)| {
            let hit = s <= last && s.saturating_add(l) > iova;
            if hit {
                access.unpin_pages(s, l);
            }
            !hit
        });
    }
}

/// The global counters: pages pinned, charged to this process's user, charged per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) pinned: u64,
    pub(crate) user: u64,
    pub(crate) process: u64,
}

impl Counters {
    /// The counters of `ledger` now.
    pub(crate) fn of(ledger: &Ledger) -> Self {
        Self {
            pinned: ledger.pins.pinned_total(),
            user: ledger.pins.charged_to_user(nix::unistd::getuid().as_raw()),
            process: ledger.pins.charged_to_processes(),
        }
    }
}

/// Every area of an IOAS of `ctxs` is filled (and translated at both ends by each domain)
/// exactly when its IOAS has domains (a revoked dma-buf area excepted), and the pins of all live
/// pages add up to the counters' growth over `base`, in total, per user and per process.
pub(crate) fn check_areas_and_pins(
    ledger: &Ledger,
    ctxs: &[Arc<Context>],
    base: &Counters,
) -> Result<(), String> {
    let mut pages: Vec<Arc<Pages>> = Vec::new();
    for ctx in ctxs {
        for (id, o) in ctx.objects_of_type("ioas") {
            let Object::Ioas(ioas) = o else { continue };
            let t = ioas.iopt();
            for a in t.areas() {
                let revoked = a.pages.source().revoked();
                if t.has_domains() != (a.filled || revoked) {
                    return Err(format!(
                        "ctx {} ioas {id}: area {:#x}..{:#x} filled={} with {} domains",
                        ctx.id,
                        a.iova,
                        a.last,
                        a.filled,
                        t.domains().count()
                    ));
                }
                if a.filled {
                    for d in t.domains() {
                        if d.translate(a.iova).is_none() || d.translate(a.last).is_none() {
                            return Err(format!(
                                "ctx {} ioas {id}: filled area {:#x}..{:#x} not in a domain",
                                ctx.id, a.iova, a.last
                            ));
                        }
                    }
                }
                if !pages.iter().any(|p| Arc::ptr_eq(p, &a.pages)) {
                    pages.push(a.pages.clone());
                }
            }
        }
    }
    let sum = |mode: Option<AccountMode>| -> u64 {
        pages
            .iter()
            .filter(|p| mode.is_none_or(|m| p.account_mode() == m))
            .map(|p| p.npinned())
            .sum()
    };
    let now = Counters::of(ledger);
    let got = (
        now.pinned.wrapping_sub(base.pinned),
        now.user.wrapping_sub(base.user),
        now.process.wrapping_sub(base.process),
    );
    let want = (
        sum(None),
        sum(Some(AccountMode::User)),
        sum(Some(AccountMode::Process)),
    );
    if got != want {
        return Err(format!(
            "pins/charges (total, user, process) above baseline {got:?}, live pages hold {want:?}"
        ));
    }
    Ok(())
}

/// Runs test `name` of this binary again in a child process, with `child_env` set, whose
/// capability bounding set lacks CAP_IPC_LOCK (so its pins are charged) and whose address space
/// is at most 4 GiB; true when this is the child. The child must end within 300 s plus `extra`.
pub(crate) fn in_uncapped_child(name: &str, child_env: &str, extra: Duration) -> bool {
    if std::env::var_os(child_env).is_some() {
        return true;
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(child_env, "1");
    crate::sys::process::uncap_and_limit_child(&mut cmd, crate::caller::CAP_IPC_LOCK, 4 << 30);
    // Output to a file, and a deadline: a hang (a deadlock in the daemon code) must fail the
    // test rather than stall the run; RLIMIT_AS turns a runaway allocation into a failure of
    // this child instead of an OOM kill on the machine.
    let out_path = std::env::temp_dir().join(format!(
        "uiommufd-{}-{}.out",
        name.replace(':', "_"),
        std::process::id()
    ));
    let out_file = std::fs::File::create(&out_path).expect("child output file");
    let mut child = cmd
        .stdout(out_file)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the test binary");
    let limit = Duration::from_secs(300) + extra;
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    print!("{text}");
    let status =
        status.unwrap_or_else(|| panic!("child run of {name} still running after {limit:?}"));
    assert!(status.success(), "child run of {name} failed: {status}");
    assert!(text.contains("1 passed"), "the child did not run {name}");
    false
}

/// In the child: no CAP_IPC_LOCK (pins are charged) and at most an 8 MiB memlock limit.
pub(crate) fn prepare_child() {
    assert!(
        !ProcessMemory::current().capable(crate::caller::CAP_IPC_LOCK),
        "CAP_IPC_LOCK still effective"
    );
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).unwrap();
    let want = 8u64 << 20;
    if soft > want {
        setrlimit(Resource::RLIMIT_MEMLOCK, want, hard).unwrap();
    }
}
