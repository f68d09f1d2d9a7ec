//! Fault-injection sweep over a scripted session, in the spirit of the kernel's iommufd_fail_nth.
//!
//! One session (IOAS alloc, ALLOW_IOVAS, IOVA_RANGES, MAP of anonymous memory and of a memfd, mock
//! domains, HWPT alloc/replace, dirty tracking, COPY, an access that pins and copies, UNMAP across
//! the access's pins, VFIO container compat ops in type1 v2 and v1, CHANGE_PROCESS, DESTROY) runs
//! once without faults, then again once per fallible step, each time failing only that one:
//! * the k-th caller-memory access (read, write, get_fd) through [`FailNthMemory`], a thin
//!   wrapper around the real [`ProcessMemory`] aimed at this process;
//! * the k-th pass through an io_pagetable step armed with `crate::iopt::failpoint` (page-source
//!   pin, memlock charge, domain map).
//!
//! After every op of every run the contexts must be consistent: every area of an IOAS with
//! domains is filled and translated by each domain, none is without; the pins of all live pages
//! add up exactly to the daemon ledger's `pinned_total()` and the per-user / per-process charges above their
//! baselines; the daemon's status agrees. The op that met the fault must fail with the injected
//! errno and leave the state as it found it (IOAS_UNMAP-like ops and OPTION SET excepted, which
//! the kernel also completes before the copy-out that can fail). After teardown every pin and
//! charge is gone, no context or object is left, and the same session then runs fault-free again
//! with the reference results.
//!
//! The session runs in a child process whose capability bounding set lacks CAP_IPC_LOCK (root
//! would otherwise not be charged at all), under an 8 MiB RLIMIT_MEMLOCK.

use super::extensions::daemon_extensions;
use super::harness::{check_areas_and_pins, in_uncapped_child, prepare_child, Counters, PinList};
use super::{Daemon, NodeKind};
use crate::caller::{CallerMemory, ProcessMemory};
use crate::iopt::{failpoint, Pages, PAGE_SIZE};
use crate::objects::{Access, Context, Object};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;
use uiommufd_uapi::vfio::*;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Caller memory that fails its `nth` (1-based) access: reads and writes with EFAULT, `get_fd`
/// with EBADF. Everything else is delegated unchanged.
pub(crate) struct FailNthMemory<M: CallerMemory> {
    inner: M,
    nth: u64,
    calls: AtomicU64,
}

impl<M: CallerMemory> FailNthMemory<M> {
    /// `nth == None`: only counts.
    pub(crate) fn new(inner: M, nth: Option<u64>) -> Self {
        Self {
            inner,
            nth: nth.unwrap_or(0),
            calls: AtomicU64::new(0),
        }
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn fired(&self) -> bool {
        self.nth != 0 && self.calls() >= self.nth
    }

    fn hit(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.nth
    }
}

impl<M: CallerMemory> CallerMemory for FailNthMemory<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if self.hit() {
            return Err(Errno::EFAULT);
        }
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        if self.hit() {
            return Err(Errno::EFAULT);
        }
        self.inner.write(addr, buf)
    }

    fn pid(&self) -> i32 {
        self.inner.pid()
    }

    fn get_fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        if self.hit() {
            return Err(Errno::EBADF);
        }
        self.inner.get_fd(fd)
    }
}

/// Which class of step a run fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The k-th caller-memory access.
    Memory(u64),
    /// The k-th io_pagetable fail point.
    Step(u64),
}

/// Page-aligned memory of this process the session maps and builds its structs in.
struct Arena {
    _buf: Box<[u8]>,
    base: u64,
}

const ARENA: u64 = 256 * 1024;
/// Data pages (mapped into IOASes) at the start; structs and arrays further on.
const DATA: u64 = 0;
const SCRATCH: u64 = 128 * 1024;
const ARRAY: u64 = 160 * 1024;
const BITMAP: u64 = 192 * 1024;

impl Arena {
    fn new() -> Self {
        let buf = vec![0x5au8; (ARENA + PAGE_SIZE) as usize].into_boxed_slice();
        let base = (buf.as_ptr() as u64).next_multiple_of(PAGE_SIZE);
        Self { _buf: buf, base }
    }

    fn at(&self, off: u64) -> u64 {
        self.base + off
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IoasSnap {
    id: u32,
    areas: Vec<(u64, u64, bool)>,
    domains: usize,
    align: u64,
    no_large: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    objects: Vec<BTreeMap<&'static str, usize>>,
    ioas: Vec<Vec<IoasSnap>>,
    vfio_ioas: Vec<Option<u32>>,
    pinned: u64,
    user: u64,
    process: u64,
    access_pins: usize,
}

/// The outcome of one op: Ok(return value) or the errno.
type Outcome = Result<i64, Errno>;

struct Session<'a> {
    daemon: &'a Arc<Daemon>,
    arena: &'a Arena,
    memfd: &'a OwnedFd,
    mem: FailNthMemory<ProcessMemory>,
    /// Set-up copies of structs in and out: never faulted.
    raw: ProcessMemory,
    fault: Fault,
    base: Counters,
    ctxs: Vec<Arc<Context>>,
    access: Option<(Arc<Access>, Arc<PinList>)>,
    vars: BTreeMap<String, u64>,
    results: Vec<(&'static str, Outcome)>,
    /// The op during which the fault fired, and its outcome.
    injected: Option<(&'static str, Outcome)>,
    problems: Vec<String>,
}

impl<'a> Session<'a> {
    fn new(
        daemon: &'a Arc<Daemon>,
        arena: &'a Arena,
        memfd: &'a OwnedFd,
        fault: Fault,
        base: Counters,
    ) -> Self {
        let nth = match fault {
            Fault::Memory(k) => Some(k),
            _ => None,
        };
        failpoint::arm(match fault {
            Fault::Step(k) => Some(k),
            _ => None,
        });
        Self {
            daemon,
            arena,
            memfd,
            mem: FailNthMemory::new(ProcessMemory::current(), nth),
            raw: ProcessMemory::current(),
            fault,
            base,
            ctxs: Vec::new(),
            access: None,
            vars: BTreeMap::new(),
            results: Vec::new(),
            injected: None,
            problems: Vec::new(),
        }
    }

    fn fired(&self) -> bool {
        match self.fault {
            Fault::None => false,
            Fault::Memory(_) => self.mem.fired(),
            Fault::Step(_) => failpoint::fired(),
        }
    }

    fn var(&self, name: &str) -> u64 {
        self.vars.get(name).copied().unwrap_or(0)
    }

    fn id(&self, name: &str) -> u32 {
        self.var(name) as u32
    }

    fn ctx(&self, i: usize) -> &Arc<Context> {
        &self.ctxs[i]
    }

    fn snapshot(&self) -> Snap {
        let mut ioas = Vec::new();
        for ctx in &self.ctxs {
            let mut v = Vec::new();
            for (id, o) in ctx.objects_of_type("ioas") {
                if let Object::Ioas(i) = o {
                    let t = i.iopt();
                    v.push(IoasSnap {
                        id,
                        areas: t.areas().map(|a| (a.iova, a.last, a.filled)).collect(),
                        domains: t.domains().count(),
                        align: t.iova_alignment(),
                        no_large: t.large_pages_disabled(),
                    });
                }
            }
            ioas.push(v);
        }
        Snap {
            objects: self.ctxs.iter().map(|c| c.object_counts()).collect(),
            ioas,
            vfio_ioas: self.ctxs.iter().map(|c| c.vfio_ioas()).collect(),
            pinned: self.daemon.ledger().pins.pinned_total(),
            user: self
                .daemon
                .ledger()
                .pins
                .charged_to_user(nix::unistd::getuid().as_raw()),
            process: self.daemon.ledger().pins.charged_to_processes(),
            access_pins: self
                .access
                .as_ref()
                .map_or(0, |(_, p)| p.0.lock().unwrap().len()),
        }
    }

    /// The consistency every op must leave behind.
    fn check_consistent(&self) -> Result<(), String> {
        check_areas_and_pins(self.daemon.ledger(), &self.ctxs, &self.base)?;
        let dropped = self.daemon.ledger().live.take_dropped_while_pinned();
        if dropped != 0 {
            return Err(format!(
                "{dropped} pages were dropped still pinned (a leaked pin)"
            ));
        }
        let status: serde_json::Value =
            serde_json::from_str(&self.daemon.status_json()).map_err(|e| e.to_string())?;
        let objects: usize = self.ctxs.iter().map(|c| c.num_objects()).sum();
        if status["objects"] != objects
            || status["pinned_pages"] != self.daemon.ledger().pins.pinned_total()
        {
            return Err(format!(
                "status {status} disagrees: objects {objects}, pinned {}",
                self.daemon.ledger().pins.pinned_total()
            ));
        }
        Ok(())
    }

    /// Runs one op and checks what it left behind.
    fn op(&mut self, name: &'static str, f: impl FnOnce(&mut Self) -> Outcome) {
        let armed = self.fault != Fault::None && !self.fired();
        let before = armed.then(|| self.snapshot());
        let r = f(self);
        self.results.push((name, r));
        if let Err(msg) = self.check_consistent() {
            self.problems.push(format!(
                "{:?} (met by {:?}): after {name} ({r:?}): {msg}",
                self.fault, self.injected
            ));
        }
        if armed && self.fired() {
            self.injected = Some((name, r));
            match r {
                Ok(_) => {}
                Err(e) => {
                    let expected: &[Errno] = match self.fault {
                        Fault::Memory(_) => &[Errno::EFAULT, Errno::EBADF],
                        _ => &[Errno::EFAULT, Errno::ENOMEM],
                    };
                    if !expected.contains(&e) {
                        self.problems.push(format!(
                            "{:?}: {name} answered {e} for an injected fault",
                            self.fault
                        ));
                    }
                    // Ops the kernel completes before a final copy-out that may fail keep
                    // their effect (unmaps report what they removed; a replace stays in place).
                    let partial = matches!(
                        name,
                        "IOAS_UNMAP"
                            | "VFIO_UNMAP_DMA"
                            | "VFIO_UNMAP_ALL"
                            | "OPTION_SET"
                            | "MOCK_DOMAIN_REPLACE"
                    );
                    let after = self.snapshot();
                    if !partial && before.as_ref() != Some(&after) {
                        self.problems.push(format!(
                            "{:?}: failed {name} ({e}) changed the state:\n  before {before:?}\n  after  {after:?}",
                            self.fault
                        ));
                    }
                }
            }
        }
    }

    /// Issues `cmd` on context `ci` with `v` built in the scratch area; `v` gets the copy-out.
    fn ioctl<T: IntoBytes + FromBytes + Immutable>(
        &self,
        ci: usize,
        cmd: u32,
        v: &mut T,
    ) -> Outcome {
        let at = self.arena.at(SCRATCH);
        self.raw.write(at, v.as_bytes()).expect("scratch");
        let r = self.daemon.ioctl(self.ctx(ci), cmd, at, &self.mem);
        self.raw.read(at, v.as_mut_bytes()).expect("scratch");
        r
    }

    fn value_ioctl(&self, ci: usize, cmd: u32, arg: u64) -> Outcome {
        self.daemon.ioctl(self.ctx(ci), cmd, arg, &self.mem)
    }

    fn put<T: IntoBytes + Immutable>(&self, off: u64, v: &T) {
        self.raw
            .write(self.arena.at(off), v.as_bytes())
            .expect("arena");
    }

    fn test_cmd(&self, ci: usize, op: u32, id: u32, payload: &[u8]) -> (Outcome, iommu_test_cmd) {
        let mut c = iommu_test_cmd {
            size: std::mem::size_of::<iommu_test_cmd>() as u32,
            op,
            id,
            ..Default::default()
        };
        c.payload[..payload.len()].copy_from_slice(payload);
        let r = self.ioctl(ci, IOMMU_TEST_CMD, &mut c);
        (r, c)
    }

    fn ioas_alloc(&mut self, ci: usize, var: &'static str) {
        self.op("IOAS_ALLOC", |s| {
            let mut c = iommu_ioas_alloc {
                size: std::mem::size_of::<iommu_ioas_alloc>() as u32,
                ..Default::default()
            };
            let r = s.ioctl(ci, IOMMU_IOAS_ALLOC, &mut c);
            if r.is_ok() {
                s.vars.insert(var.to_string(), c.out_ioas_id.into());
            }
            r
        })
    }

    fn map(
        &mut self,
        ci: usize,
        ioas: &str,
        off: u64,
        len: u64,
        iova: Option<u64>,
        var: &'static str,
    ) {
        let ioas = self.id(ioas);
        self.op("IOAS_MAP", |s| {
            let mut c = iommu_ioas_map {
                size: std::mem::size_of::<iommu_ioas_map>() as u32,
                flags: IOMMU_IOAS_MAP_READABLE
                    | IOMMU_IOAS_MAP_WRITEABLE
                    | iova.map_or(0, |_| IOMMU_IOAS_MAP_FIXED_IOVA),
                ioas_id: ioas,
                user_va: s.arena.at(DATA + off),
                length: len,
                iova: iova.unwrap_or(0),
                ..Default::default()
            };
            let r = s.ioctl(ci, IOMMU_IOAS_MAP, &mut c);
            if r.is_ok() {
                s.vars.insert(var.to_string(), c.iova);
            }
            r
        })
    }

    fn unmap(&mut self, ci: usize, ioas: &str, iova: u64, len: u64) {
        let ioas = self.id(ioas);
        self.op("IOAS_UNMAP", |s| {
            let mut c = iommu_ioas_unmap {
                size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
                ioas_id: ioas,
                iova,
                length: len,
            };
            s.ioctl(ci, IOMMU_IOAS_UNMAP, &mut c)
        })
    }

    fn mock_domain(&mut self, ci: usize, pt: &str, flags: u32, prefix: &'static str) {
        let pt = self.id(pt);
        self.op("MOCK_DOMAIN", |s| {
            let p = iommu_test_cmd_mock_domain_flags {
                dev_flags: flags,
                ..Default::default()
            };
            let (r, c) = s.test_cmd(ci, IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt, p.as_bytes());
            if r.is_ok() {
                let out: iommu_test_cmd_mock_domain_flags = c.payload().unwrap();
                s.vars
                    .insert(format!("{prefix}.stdev"), out.out_stdev_id.into());
                s.vars
                    .insert(format!("{prefix}.hwpt"), out.out_hwpt_id.into());
                s.vars
                    .insert(format!("{prefix}.idev"), out.out_idev_id.into());
            }
            r
        })
    }

    fn destroy(&mut self, ci: usize, id: &str) {
        let id = self.id(id);
        self.op("DESTROY", |s| {
            let mut c = iommu_destroy {
                size: std::mem::size_of::<iommu_destroy>() as u32,
                id,
            };
            s.ioctl(ci, IOMMU_DESTROY, &mut c)
        })
    }

    /// The whole script. Context 0: /dev/iommu; 1: /dev/vfio/vfio (type1 v2); 2: /dev/vfio/vfio
    /// (type1 v1); 3: /dev/iommu with file mappings only (CHANGE_PROCESS).
    fn run(&mut self) {
        for node in [
            NodeKind::Iommu,
            NodeKind::VfioContainer,
            NodeKind::VfioContainer,
            NodeKind::Iommu,
        ] {
            self.ctxs.push(self.daemon.new_context(&node));
        }
        const A: u64 = MOCK_APERTURE_START;
        const K4: u64 = 4096;

        // --- iommufd basics on context 0 ---
        self.ioas_alloc(0, "ioas1");
        self.ioas_alloc(0, "ioas2");
        let ioas1 = self.id("ioas1");
        self.put(
            ARRAY,
            &[
                iommu_iova_range {
                    start: A,
                    last: A + 0x3ff_ffff,
                },
                iommu_iova_range {
                    start: A + 0x800_0000,
                    last: A + 0xfff_ffff,
                },
            ],
        );
        self.op("ALLOW_IOVAS", |s| {
            let mut c = iommu_ioas_allow_iovas {
                size: std::mem::size_of::<iommu_ioas_allow_iovas>() as u32,
                ioas_id: ioas1,
                num_iovas: 2,
                allowed_iovas: s.arena.at(ARRAY),
                ..Default::default()
            };
            s.ioctl(0, IOMMU_IOAS_ALLOW_IOVAS, &mut c)
        });
        for num in [0u32, 8] {
            self.op("IOVA_RANGES", |s| {
                let mut c = iommu_ioas_iova_ranges {
                    size: std::mem::size_of::<iommu_ioas_iova_ranges>() as u32,
                    ioas_id: ioas1,
                    num_iovas: num,
                    allowed_iovas: s.arena.at(ARRAY + 256),
                    ..Default::default()
                };
                s.ioctl(0, IOMMU_IOAS_IOVA_RANGES, &mut c)
            });
        }
        self.op("OPTION_GET", |s| {
            let mut c = iommu_option {
                size: std::mem::size_of::<iommu_option>() as u32,
                option_id: IOMMU_OPTION_HUGE_PAGES,
                op: IOMMU_OPTION_OP_GET,
                object_id: ioas1,
                ..Default::default()
            };
            s.ioctl(0, IOMMU_OPTION, &mut c)
        });
        self.map(0, "ioas1", 0, 4 * K4, Some(A), "m1");
        self.map(0, "ioas1", 4 * K4, 4 * K4, None, "m2");
        self.mock_domain(0, "ioas1", 0, "md1");
        self.op("MAP_FILE", |s| {
            let mut c = iommu_ioas_map_file {
                size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
                flags: IOMMU_IOAS_MAP_READABLE
                    | IOMMU_IOAS_MAP_WRITEABLE
                    | IOMMU_IOAS_MAP_FIXED_IOVA,
                ioas_id: ioas1,
                fd: s.memfd.as_raw_fd(),
                start: K4,
                length: 4 * K4,
                iova: A + 0x10_0000,
            };
            s.ioctl(0, IOMMU_IOAS_MAP_FILE, &mut c)
        });
        let ioas2 = self.id("ioas2");
        self.op("IOAS_COPY", |s| {
            let mut c = iommu_ioas_copy {
                size: std::mem::size_of::<iommu_ioas_copy>() as u32,
                flags: IOMMU_IOAS_MAP_READABLE
                    | IOMMU_IOAS_MAP_WRITEABLE
                    | IOMMU_IOAS_MAP_FIXED_IOVA,
                dst_ioas_id: ioas2,
                src_ioas_id: ioas1,
                length: 2 * K4,
                src_iova: A + K4,
                dst_iova: A + 0x20_0000,
            };
            let r = s.ioctl(0, IOMMU_IOAS_COPY, &mut c);
            if r.is_ok() {
                s.vars.insert("copy".into(), c.dst_iova);
            }
            r
        });
        self.mock_domain(0, "ioas2", 0, "md2");
        // A paging HWPT with dirty tracking for md1's device, then md1 moves onto it.
        let idev1 = self.id("md1.idev");
        self.op("HWPT_ALLOC", |s| {
            let mut c = iommu_hwpt_alloc {
                size: std::mem::size_of::<iommu_hwpt_alloc>() as u32,
                flags: IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                dev_id: idev1,
                pt_id: ioas1,
                ..Default::default()
            };
            let r = s.ioctl(0, IOMMU_HWPT_ALLOC, &mut c);
            if r.is_ok() {
                s.vars.insert("hwpt".into(), c.out_hwpt_id.into());
            }
            r
        });
        let (stdev1, hwpt) = (self.id("md1.stdev"), self.id("hwpt"));
        self.op("MOCK_DOMAIN_REPLACE", |s| {
            let p = iommu_test_cmd_mock_domain_replace { pt_id: hwpt };
            s.test_cmd(0, IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev1, p.as_bytes())
                .0
        });
        self.op("SET_DIRTY_TRACKING", |s| {
            let mut c = iommu_hwpt_set_dirty_tracking {
                size: std::mem::size_of::<iommu_hwpt_set_dirty_tracking>() as u32,
                flags: IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
                hwpt_id: hwpt,
                ..Default::default()
            };
            s.ioctl(0, IOMMU_HWPT_SET_DIRTY_TRACKING, &mut c)
        });
        self.put(BITMAP, &[0b1011u8, 0, 0, 0, 0, 0, 0, 0]);
        self.op("TEST_DIRTY", |s| {
            let p = iommu_test_cmd_dirty {
                iova: A,
                length: 8 * K4,
                page_size: K4,
                uptr: s.arena.at(BITMAP),
                ..Default::default()
            };
            s.test_cmd(0, IOMMU_TEST_OP_DIRTY, hwpt, p.as_bytes()).0
        });
        self.put(BITMAP + 64, &[0u8; 8]);
        self.op("GET_DIRTY_BITMAP", |s| {
            let mut c = iommu_hwpt_get_dirty_bitmap {
                size: std::mem::size_of::<iommu_hwpt_get_dirty_bitmap>() as u32,
                hwpt_id: hwpt,
                iova: A,
                length: 8 * K4,
                page_size: K4,
                data: s.arena.at(BITMAP + 64),
                ..Default::default()
            };
            s.ioctl(0, IOMMU_HWPT_GET_DIRTY_BITMAP, &mut c)
        });
        self.op("MD_CHECK_MAP", |s| {
            let p = iommu_test_cmd_check_map {
                iova: A,
                length: 4 * K4,
                uptr: s.arena.at(DATA),
            };
            s.test_cmd(0, IOMMU_TEST_OP_MD_CHECK_MAP, hwpt, p.as_bytes())
                .0
        });

        // --- an access on ioas1: pin, copy, then an unmap that must make it let go ---
        self.op("ACCESS_CREATE", |s| {
            let pins = Arc::new(PinList::default());
            let a = Access::new(pins.clone(), true);
            let ctx = s.ctx(0).clone();
            let id = ctx.insert(Object::Access(a.clone()))?;
            if let Err(e) = a.attach(&ctx, ioas1) {
                let _ = ctx.destroy(id);
                return Err(e);
            }
            s.vars.insert("access".into(), id.into());
            s.access = Some((a, pins));
            Ok(0)
        });
        self.op("ACCESS_PIN", |s| {
            let (a, pins) = s.access.clone().ok_or(Errno::ENOENT)?;
            a.pin_pages(A + K4, 2 * K4, true)?;
            pins.0.lock().unwrap().push((A + K4, 2 * K4));
            Ok(0)
        });
        self.op("ACCESS_RW", |s| {
            let (a, _) = s.access.clone().ok_or(Errno::ENOENT)?;
            let mut buf = [0xa5u8; 100];
            a.rw(A + 0x10_0000 + 10, &mut buf, true)?;
            a.rw(A + 4000, &mut buf, false).map(|()| 0)
        });
        self.unmap(0, "ioas1", A, 4 * K4);
        self.map(0, "ioas1", 0, 4 * K4, Some(A), "m1");
        self.destroy(0, "access");
        self.destroy(0, "md2.stdev");
        self.destroy(0, "ioas2");

        // --- VFIO type1 v2 container with a mock domain (process-mode charges) ---
        self.op("VFIO_CHECK_EXTENSION", |s| {
            s.value_ioctl(1, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU.into())
        });
        self.ioas_alloc(1, "c1.ioas");
        let c1 = self.id("c1.ioas");
        self.op("VFIO_IOAS_SET", |s| {
            let mut c = iommu_vfio_ioas {
                size: std::mem::size_of::<iommu_vfio_ioas>() as u32,
                ioas_id: c1,
                op: IOMMU_VFIO_IOAS_SET,
                ..Default::default()
            };
            s.ioctl(1, IOMMU_VFIO_IOAS, &mut c)
        });
        self.op("VFIO_SET_IOMMU", |s| {
            s.value_ioctl(1, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU.into())
        });
        self.mock_domain(1, "c1.ioas", 0, "md3");
        self.op("VFIO_GET_INFO", |s| {
            let mut c = [0u8; 256];
            c[..4].copy_from_slice(&256u32.to_ne_bytes());
            s.ioctl(1, VFIO_IOMMU_GET_INFO, &mut c)
        });
        for (iova, off) in [(A, 0), (A + 0x10_0000, 8 * K4)] {
            self.op("VFIO_MAP_DMA", |s| {
                let mut c = vfio_iommu_type1_dma_map {
                    argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
                    flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                    vaddr: s.arena.at(DATA + off),
                    iova,
                    size: 4 * K4,
                };
                s.ioctl(1, VFIO_IOMMU_MAP_DMA, &mut c)
            });
        }
        self.op("VFIO_UNMAP_DMA", |s| {
            let mut c = vfio_iommu_type1_dma_unmap {
                argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
                iova: A,
                size: 4 * K4,
                ..Default::default()
            };
            s.ioctl(1, VFIO_IOMMU_UNMAP_DMA, &mut c)
        });
        self.op("VFIO_UNMAP_ALL", |s| {
            let mut c = vfio_iommu_type1_dma_unmap {
                argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
                flags: VFIO_DMA_UNMAP_FLAG_ALL,
                ..Default::default()
            };
            s.ioctl(1, VFIO_IOMMU_UNMAP_DMA, &mut c)
        });

        // --- VFIO type1 v1: unmapping inside a mapping splits it (pins follow the halves) ---
        self.ioas_alloc(2, "c2.ioas");
        let c2 = self.id("c2.ioas");
        self.op("VFIO_IOAS_SET", |s| {
            let mut c = iommu_vfio_ioas {
                size: std::mem::size_of::<iommu_vfio_ioas>() as u32,
                ioas_id: c2,
                op: IOMMU_VFIO_IOAS_SET,
                ..Default::default()
            };
            s.ioctl(2, IOMMU_VFIO_IOAS, &mut c)
        });
        self.op("VFIO_SET_IOMMU", |s| {
            s.value_ioctl(2, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU.into())
        });
        self.mock_domain(2, "c2.ioas", 0, "md4");
        self.op("VFIO_MAP_DMA", |s| {
            let mut c = vfio_iommu_type1_dma_map {
                argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
                flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                vaddr: s.arena.at(DATA),
                iova: A,
                size: 8 * K4,
            };
            s.ioctl(2, VFIO_IOMMU_MAP_DMA, &mut c)
        });
        self.op("VFIO_UNMAP_DMA", |s| {
            let mut c = vfio_iommu_type1_dma_unmap {
                argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
                iova: A + 2 * K4,
                size: 2 * K4,
                ..Default::default()
            };
            s.ioctl(2, VFIO_IOMMU_UNMAP_DMA, &mut c)
        });

        // --- file mappings only: CHANGE_PROCESS moves their charge ---
        self.ioas_alloc(3, "c3.ioas");
        let c3 = self.id("c3.ioas");
        self.mock_domain(3, "c3.ioas", 0, "md5");
        self.op("MAP_FILE", |s| {
            let mut c = iommu_ioas_map_file {
                size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
                flags: IOMMU_IOAS_MAP_READABLE,
                ioas_id: c3,
                fd: s.memfd.as_raw_fd(),
                start: 0,
                length: 8 * K4,
                ..Default::default()
            };
            s.ioctl(3, IOMMU_IOAS_MAP_FILE, &mut c)
        });
        self.op("CHANGE_PROCESS", |s| {
            let mut c = iommu_ioas_change_process {
                size: std::mem::size_of::<iommu_ioas_change_process>() as u32,
                ..Default::default()
            };
            s.ioctl(3, IOMMU_IOAS_CHANGE_PROCESS, &mut c)
        });
        self.op("OPTION_SET", |s| {
            let mut c = iommu_option {
                size: std::mem::size_of::<iommu_option>() as u32,
                option_id: IOMMU_OPTION_HUGE_PAGES,
                op: IOMMU_OPTION_OP_SET,
                object_id: ioas1,
                val64: 1,
                ..Default::default()
            };
            s.ioctl(0, IOMMU_OPTION, &mut c)
        });
        self.unmap(0, "ioas1", 0, u64::MAX);
        self.destroy(0, "md1.stdev");
        self.destroy(0, "hwpt");
        self.destroy(0, "ioas1");
    }

    /// Closes every context as a release does; returns what was left behind.
    fn teardown(&mut self) -> Result<(), String> {
        failpoint::arm(None);
        self.access = None;
        for ctx in self.ctxs.drain(..) {
            ctx.destroy_all();
        }
        let status: serde_json::Value =
            serde_json::from_str(&self.daemon.status_json()).map_err(|e| e.to_string())?;
        let now = Counters::of(self.daemon.ledger());
        let dropped = self.daemon.ledger().live.take_dropped_while_pinned();
        if now != self.base || status["contexts"] != 0 || status["objects"] != 0 || dropped != 0 {
            return Err(format!(
                "{:?}: after teardown {now:?} (baseline {:?}), status {status}, {dropped} pages \
                 dropped still pinned",
                self.fault, self.base
            ));
        }
        Ok(())
    }
}

const CHILD_ENV: &str = "UIOMMUFD_FAIL_NTH_CHILD";

fn memfd() -> OwnedFd {
    let fd = rustix::fs::memfd_create("fail-nth", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 64 * 1024).unwrap();
    fd
}

#[test]
fn fail_nth_sweep() {
    if !in_uncapped_child(
        "dispatch::fail_nth::fail_nth_sweep",
        CHILD_ENV,
        Duration::ZERO,
    ) {
        return;
    }
    prepare_child();
    let daemon = Daemon::new(daemon_extensions());
    let arena = Arena::new();
    let fd = memfd();
    let base = Counters::of(daemon.ledger());

    // The reference run counts the steps of each class.
    let mut s = Session::new(&daemon, &arena, &fd, Fault::None, base);
    s.run();
    let reference = s.results.clone();
    let (mem_calls, steps) = (s.mem.calls(), failpoint::hits());
    assert!(s.problems.is_empty(), "{:#?}", s.problems);
    s.teardown().unwrap();
    // IOVA_RANGES with no room for the ranges answers EMSGSIZE (after writing the count).
    let failed: Vec<_> = reference
        .iter()
        .filter(|(n, r)| r.is_err() && (*n, *r) != ("IOVA_RANGES", Err(Errno::EMSGSIZE)))
        .collect();
    assert!(
        failed.is_empty(),
        "the fault-free session fails: {failed:?}"
    );
    println!(
        "fail_nth: {} ops, {mem_calls} caller-memory accesses, {steps} io_pagetable steps",
        reference.len()
    );
    assert!(
        mem_calls > 50 && steps > 10,
        "session too small to mean anything"
    );

    // Fail each step in turn until a run passes all of them without meeting the fault (the
    // number of domain map calls depends on which pages happen to be physically contiguous, so
    // the count may differ a little from the reference run's).
    let mut problems = Vec::new();
    let mut runs = 0;
    for (class, count) in [
        (Fault::Memory as fn(u64) -> Fault, mem_calls),
        (Fault::Step, steps),
    ] {
        for k in 1.. {
            assert!(k <= 2 * count + 100, "the sweep does not end");
            let fault = class(k);
            let mut s = Session::new(&daemon, &arena, &fd, fault, base);
            s.run();
            runs += 1;
            problems.append(&mut s.problems);
            if let Err(e) = s.teardown() {
                problems.push(e);
            }
            if s.injected.is_none() {
                // Caller-memory accesses are the same in every run: all must have been met.
                if matches!(fault, Fault::Memory(_)) && k <= count {
                    problems.push(format!("{fault:?}: never fired"));
                }
                break;
            }
        }
    }
    println!("fail_nth: {runs} runs with one fault each");
    // And the same session without faults still succeeds, with the same results.
    let mut s = Session::new(&daemon, &arena, &fd, Fault::None, base);
    s.run();
    problems.append(&mut s.problems);
    if s.results != reference {
        problems.push(format!("fault-free rerun differs: {:?}", s.results));
    }
    if let Err(e) = s.teardown() {
        problems.push(e);
    }
    assert!(
        problems.is_empty(),
        "{} problems, the first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}

/// Found by the sweep: an access that moves to another IOAS (ACCESS_REPLACE_IOAS) or is destroyed
/// while holding pins must let its owner unpin them through the old IOAS; the pins used to be
/// lost (the owner's `unpin_pages` found no IOAS), and unmapping the area then spun into EDEADLK.
#[test]
fn access_replace_and_destroy_release_pins() {
    let daemon = Daemon::new(daemon_extensions());
    let arena = Arena::new();
    let ctx = daemon.new_context(&NodeKind::Iommu);
    let mem = ProcessMemory::current();
    let ioas = [
        ctx.insert(Object::Ioas(crate::objects::Ioas::new()))
            .unwrap(),
        ctx.insert(Object::Ioas(crate::objects::Ioas::new()))
            .unwrap(),
    ];
    for &id in &ioas {
        let i = ctx.get_ioas(id).unwrap();
        let (owner, creds) = crate::dispatch::ioas_cmds::caller_process(&ctx, &mem).unwrap();
        i.map_user(
            &ctx,
            owner,
            &creds,
            arena.at(DATA),
            4 * PAGE_SIZE,
            Some(1 << 24),
            crate::backends::Prot::READ_WRITE,
        )
        .unwrap();
    }
    let pins = Arc::new(PinList::default());
    let a = Access::new(pins.clone(), true);
    let id = ctx.insert(Object::Access(a.clone())).unwrap();
    a.attach(&ctx, ioas[0]).unwrap();
    let pin = |a: &Access| {
        a.pin_pages(1 << 24, 2 * PAGE_SIZE, true).unwrap();
        pins.0.lock().unwrap().push((1 << 24, 2 * PAGE_SIZE));
    };
    let npinned = |id: u32| -> u64 {
        let i = ctx.get_ioas(id).unwrap();
        let t = i.iopt();
        t.areas().map(|a| a.pages.npinned()).sum()
    };
    pin(&a);
    assert_eq!(npinned(ioas[0]), 2);
    a.replace(&ctx, ioas[1]).unwrap();
    assert_eq!(npinned(ioas[0]), 0, "replace left the old IOAS pinned");
    assert_eq!(
        ctx.get_ioas(ioas[0]).unwrap().unmap(0, u64::MAX),
        Ok(4 * PAGE_SIZE)
    );
    pin(&a);
    assert_eq!(npinned(ioas[1]), 2);
    ctx.destroy(id).unwrap();
    assert_eq!(npinned(ioas[1]), 0, "destroying the access left its pins");
    assert_eq!(
        ctx.get_ioas(ioas[1]).unwrap().unmap(0, u64::MAX),
        Ok(4 * PAGE_SIZE)
    );
    ctx.destroy_all();
}

/// Found by the fuzzer (its process, the daemon's stand-in, was OOM-killed at 24 GB): pinning a
/// range first listed every page of it, so mapping a huge range of unmapped memory into an IOAS
/// with a domain made the daemon allocate 8 bytes per page of the range before the source said
/// EFAULT. Pins now go to the source in bounded batches.
#[test]
fn pin_of_a_huge_range_fails_at_its_first_batch() {
    use crate::iopt::accounting::Account;
    use crate::iopt::pages::PIN_BATCH;
    use crate::iopt::PageSource;

    #[derive(Debug, Default)]
    struct Unmapped {
        calls: AtomicU64,
        largest: AtomicU64,
    }
    impl PageSource for Unmapped {
        fn pin(&self, _first: u64, count: u64, _write: bool) -> Result<Vec<u64>, Errno> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.largest.fetch_max(count, Ordering::SeqCst);
            Err(Errno::EFAULT)
        }
        fn read(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), Errno> {
            Err(Errno::EFAULT)
        }
        fn write(&self, _offset: u64, _data: &[u8]) -> Result<(), Errno> {
            Err(Errno::EFAULT)
        }
        fn address_hint(&self) -> u64 {
            0
        }
    }
    let source = Arc::new(Unmapped::default());
    // 64 GiB: 16 Mi pages.
    let pages = Pages::new(
        &crate::iopt::Ledger::new(),
        source.clone(),
        0,
        1 << 36,
        false,
        Account::unaccounted(),
    )
    .unwrap();
    assert_eq!(pages.pin(0, pages.npages - 1, false), Err(Errno::EFAULT));
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    assert!(source.largest.load(Ordering::SeqCst) <= PIN_BATCH);
    assert_eq!(pages.npinned(), 0);
}
