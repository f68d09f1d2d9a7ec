//! Structured fuzzing of the dispatch table, in process.
//!
//! Each case opens one or two contexts on a [`Daemon`] (as `/dev/iommu` or `/dev/vfio/vfio`)
//! and issues a random sequence of iommufd, selftest and VFIO container ioctls. Arguments are
//! valid-looking most of the time: the right size word, IDs of objects that exist, IOVAs that
//! are mapped or inside the mock aperture, page-sized lengths, known flags, pointers into a real
//! buffer of this process (followed by a guard page) and a real memfd; sometimes a field, the
//! size word or the whole struct is random. Caller memory is `ProcessMemory::current()`: the
//! same process_vm path a client's ioctl takes, aimed at this process, so a bad pointer is an
//! EFAULT and never a crash.
//!
//! After every ioctl: no panic; the errno is one the kernel can give for that ioctl; every IOAS
//! area is filled (and translated by every domain) exactly when its IOAS has domains; the pins
//! of all live pages add up to the daemon ledger's `pinned_total()` and to the per-user / per-process charges
//! above their baselines; the daemon's status agrees. After the contexts are closed, nothing is
//! pinned or charged and no context or object is left.
//!
//! CI runs a fixed seed for a bounded number of cases. Long runs (docs/fuzzing.md):
//! `UIOMMUFD_FUZZ_SECONDS=600` (or `UIOMMUFD_FUZZ_CASES=N`) and `UIOMMUFD_FUZZ_SEED=S` (default:
//! fixed in CI, random when running for a time); a failure prints the seed that reproduces it.
//!
//! The cases run in a child process whose capability bounding set lacks CAP_IPC_LOCK (so that
//! root's pins are charged) with an 8 MiB RLIMIT_MEMLOCK, so ENOMEM paths are reached too.

use crate::caller::{CallerMemory, ProcessMemory};
use crate::dispatch::extensions::daemon_extensions;
use crate::dispatch::{Daemon, NodeKind};
use crate::iopt::PAGE_SIZE;
use crate::objects::{Access, Context, Object, ObjectUser};
use nix::errno::Errno;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::selftest::*;
use uiommufd_uapi::vfio::*;
use zerocopy::IntoBytes;

use super::harness::{check_areas_and_pins, in_uncapped_child, prepare_child, Counters, PinList};

// ---------------------------------------------------------------------------------------------
// Random numbers: splitmix64, so that one u64 seed reproduces a case exactly.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// True with probability `pct`%.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Memory of this process that ioctls point into.

const DATA_LEN: u64 = 2 << 20;
const SCRATCH: u64 = DATA_LEN; // structs
const SCRATCH_LEN: u64 = 64 * 1024;
const ARENA_LEN: u64 = DATA_LEN + SCRATCH_LEN;
const MEMFD_LEN: u64 = 1 << 20;
const A: u64 = MOCK_APERTURE_START;

/// DATA_LEN bytes of data pages, then scratch for structs and arrays, then a PROT_NONE guard.
struct Arena {
    base: u64,
}

impl Arena {
    fn new() -> Self {
        use nix::sys::mman::{MapFlags, ProtFlags};
        let len = std::num::NonZeroUsize::new((ARENA_LEN + PAGE_SIZE) as usize).unwrap();
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let arena = crate::sys::mem::Mapping::anonymous(len, rw, MapFlags::MAP_PRIVATE)
            .expect("mmap arena");
        arena
            .protect(ARENA_LEN as usize, PAGE_SIZE as usize, ProtFlags::PROT_NONE)
            .expect("guard page");
        // Kept for the rest of the test process, reached only through process_vm_* syscalls.
        let base = arena.leak() as u64;
        Self { base }
    }

    fn guard(&self) -> u64 {
        self.base + ARENA_LEN
    }
}

// ---------------------------------------------------------------------------------------------
// Which errno each ioctl may answer (Linux 7.2 iommufd, its selftest, and the VFIO compat
// layer). Anything else is a bug: an internal error leaking out (ESRCH, EIO, EACCES…) or a
// check answering with the wrong code. EDEADLK (an unmap whose accesses do not let go of their
// pins) is in no set: every access here releases its pins when asked.

fn allowed(cmd: u32) -> &'static [Errno] {
    use Errno::*;
    // Every iommufd ioctl: copying the struct, its size word, trailing bytes, flags/reserved.
    const BASE: &[Errno] = &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP];
    match cmd {
        IOMMU_DESTROY => &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EBUSY],
        IOMMU_IOAS_ALLOC => &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOMEM, ENOSPC],
        IOMMU_IOAS_ALLOW_IOVAS => &[
            EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EADDRINUSE, ENOMEM,
        ],
        IOMMU_IOAS_IOVA_RANGES => &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EMSGSIZE],
        IOMMU_IOAS_MAP | IOMMU_IOAS_COPY | IOMMU_IOAS_MAP_FILE => &[
            EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EOVERFLOW, EEXIST, ENOMEM, ENOSPC, EPERM,
            EBADF, EBUSY,
        ],
        IOMMU_IOAS_UNMAP => &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EOVERFLOW, EBUSY],
        // HUGE_PAGES off with areas that are not page aligned: EADDRINUSE.
        IOMMU_OPTION => &[
            EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EPERM, EBUSY, EADDRINUSE,
        ],
        IOMMU_VFIO_IOAS => &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, ENODEV],
        IOMMU_IOAS_CHANGE_PROCESS => &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOMEM, EBUSY, EPERM],
        // The selftest's hardware queue N needs queue N - 1 (EIO, as the kernel's mock); the
        // queue's internal access needs page-aligned areas (EADDRINUSE, iopt_add_access) and
        // readable ones (EPERM, as an access pin checks); the rounded range may overflow
        // (ERANGE).
        IOMMU_HW_QUEUE_ALLOC => &[
            EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, ENOMEM, ENOSPC, EBUSY, EEXIST, EOVERFLOW,
            EIO, EADDRINUSE, ERANGE, EPERM,
        ],
        // Attaching a device to a page table may meet reserved ranges and existing areas.
        IOMMU_HWPT_ALLOC | IOMMU_VIOMMU_ALLOC | IOMMU_VDEVICE_ALLOC => &[
            EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, ENOMEM, ENOSPC, EBUSY, EEXIST, EADDRINUSE,
            EOVERFLOW, ENODEV, EPERM,
        ],
        IOMMU_GET_HW_INFO => &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EMSGSIZE, ENODEV],
        IOMMU_HWPT_SET_DIRTY_TRACKING | IOMMU_HWPT_GET_DIRTY_BITMAP | IOMMU_HWPT_INVALIDATE => {
            &[EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EOVERFLOW, ENOMEM]
        }
        IOMMU_FAULT_QUEUE_ALLOC | IOMMU_VEVENTQ_ALLOC => BASE,
        IOMMU_TEST_CMD => &[
            EFAULT, EINVAL, E2BIG, EOPNOTSUPP, ENOENT, EBUSY, ENOMEM, ENOSPC, EADDRINUSE, EEXIST,
            EOVERFLOW, EBADF, EBADFD, EBADE, ENODEV, EPERM, ENXIO, ERANGE,
            // MD_CHECK_REFS with a pin count other than the expected one (reached when a damaged
            // struct escapes the fast paths the generator aims at).
            EIO,
        ],
        // The VFIO container ioctls (compat layer): no compat IOAS is ENODEV.
        VFIO_GET_API_VERSION => &[],
        VFIO_CHECK_EXTENSION => &[ENODEV],
        // Type1 v1 disables large pages: EADDRINUSE as IOMMU_OPTION's.
        VFIO_SET_IOMMU => &[EINVAL, ENODEV, EBUSY, EPERM, EADDRINUSE],
        VFIO_IOMMU_GET_INFO => &[EFAULT, EINVAL, ENODEV],
        VFIO_IOMMU_MAP_DMA => &[
            EFAULT, EINVAL, ENODEV, EEXIST, ENOMEM, ENOSPC, EOVERFLOW, EPERM, EBUSY,
        ],
        VFIO_IOMMU_UNMAP_DMA => &[EFAULT, EINVAL, ENODEV, ENOENT, EOVERFLOW, EBUSY],
        // Holes of the iommufd table read the size word first; other numbers are ENOTTY.
        _ => &[EFAULT, ENOTTY],
    }
}

// ---------------------------------------------------------------------------------------------
// An in-daemon access (as an emulated device or the selftest's access uses), so that pins by
// IOVA and unmaps across them are fuzzed too.

// ---------------------------------------------------------------------------------------------

/// An access of context `.0` with its owner's user of the access object (as its fd holds).
type OwnedAccess = (usize, Arc<ObjectUser>, Arc<Access>, Arc<PinList>);

/// The ioctl about to be issued, for the failure report.
#[derive(Debug, Clone)]
struct Call {
    ctx: usize,
    name: &'static str,
    cmd: u32,
    arg: u64,
    bytes: Vec<u8>,
}

struct Case<'a> {
    daemon: &'a Arc<Daemon>,
    arena: &'a Arena,
    memfd: &'a OwnedFd,
    other_fd: &'a OwnedFd,
    mem: ProcessMemory,
    rng: Rng,
    base: Counters,
    ctxs: Vec<Arc<Context>>,
    /// Accesses made by `access_op`: (context, object id, access, its pins).
    accesses: Vec<OwnedAccess>,
    log: Vec<String>,
    /// This call's fields are all valid-looking (no random or edge values, no damage).
    strict: bool,
    /// (succeeded, failed) per ioctl name, across cases.
    stats: &'a mut BTreeMap<&'static str, (u64, u64, Duration)>,
}

impl<'a> Case<'a> {
    // --- what exists now ---

    fn ids_of(&self, ci: usize, kind: &str) -> Vec<u32> {
        let ctx = &self.ctxs[ci];
        let mut out = Vec::new();
        for name in ctx.object_counts().keys() {
            if name.contains(kind) {
                out.extend(ctx.objects_of_type(name).into_iter().map(|(id, _)| id));
            }
        }
        out
    }

    /// An ID: mostly one of `kind`, sometimes of any type, small or random.
    fn id(&mut self, ci: usize, kind: &str) -> u32 {
        let ids = if self.strict || self.rng.pct(80) {
            self.ids_of(ci, kind)
        } else {
            self.ids_of(ci, "")
        };
        if !ids.is_empty() && (self.strict || self.rng.pct(85)) {
            return self.rng.pick(&ids);
        }
        match self.rng.below(4) {
            0 => 0,
            1 => self.rng.below(12) as u32,
            2 => u32::MAX,
            _ => self.rng.next() as u32,
        }
    }

    /// Mapped ranges of the IOASes of context `ci`.
    fn areas(&self, ci: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (_, o) in self.ctxs[ci].objects_of_type("ioas") {
            if let Object::Ioas(i) = o {
                out.extend(i.iopt().areas().map(|a| (a.iova, a.last)));
            }
        }
        out
    }

    fn iova(&mut self, ci: usize) -> u64 {
        let areas = self.areas(ci);
        let pick = if self.strict {
            self.rng.below(7)
        } else {
            self.rng.below(10)
        };
        match pick {
            0..=3 if !areas.is_empty() => {
                let (s, l) = self.rng.pick(&areas);
                match self.rng.below(4) {
                    0 => l.wrapping_add(1),
                    1 => s + (self.rng.below((l - s) / 2048 + 1)) * 2048,
                    _ => s,
                }
            }
            0..=6 => A + self.rng.below(64) * self.rng.pick(&[2048, 4096, 0x10_0000]),
            7 => self
                .rng
                .pick(&[0, u64::MAX, u64::MAX - 4095, 1 << 31, A - 4096]),
            8 => self.rng.below(1 << 33) & !0x7ff,
            _ => self.rng.next(),
        }
    }

    fn length(&mut self) -> u64 {
        if self.strict {
            return (1 + self.rng.below(16)) * PAGE_SIZE;
        }
        match self.rng.below(10) {
            0..=5 => (1 + self.rng.below(16)) * PAGE_SIZE,
            6 => (1 + self.rng.below(16)) * 2048,
            7 => self
                .rng
                .pick(&[0, 1, u64::MAX, u64::MAX - 4095, 1 << 40, DATA_LEN]),
            8 => 1 + self.rng.below(20000),
            _ => self.rng.next(),
        }
    }

    /// A user pointer of a buffer of `len` bytes: mostly inside the data area.
    fn uptr(&mut self, len: u64) -> u64 {
        let data_pages = DATA_LEN / PAGE_SIZE;
        let pick = if self.strict { 0 } else { self.rng.below(10) };
        match pick {
            0..=6 => {
                let room = DATA_LEN.saturating_sub(len.min(DATA_LEN)) / PAGE_SIZE;
                let page = self.rng.below(room.min(data_pages) + 1);
                let off = if self.rng.pct(15) {
                    self.rng.below(4096) & !0x7ff
                } else {
                    0
                };
                self.arena.base + page * PAGE_SIZE + off
            }
            7 => self.arena.guard() - self.rng.below(2) * PAGE_SIZE,
            8 => self
                .rng
                .pick(&[0, 8, 0xffff_8000_0000_0000, u64::MAX - 4095]),
            _ => self.rng.next(),
        }
    }

    fn flags(&mut self, known: u32) -> u32 {
        if self.strict {
            return self.rng.next() as u32 & known;
        }
        match self.rng.below(10) {
            0..=7 => self.rng.next() as u32 & known,
            8 => known,
            _ => self.rng.next() as u32,
        }
    }

    /// IOAS_MAP / MAP_FILE / COPY flags: valid ones readable and/or writeable.
    fn map_flags(&mut self) -> u32 {
        if self.strict {
            let rw = self.rng.pick(&[
                IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                IOMMU_IOAS_MAP_READABLE,
            ]);
            return rw | self.rng.pick(&[0, IOMMU_IOAS_MAP_FIXED_IOVA]);
        }
        self.flags(7)
    }

    fn fd(&mut self) -> i32 {
        if self.strict {
            return self.memfd.as_raw_fd();
        }
        match self.rng.below(10) {
            0..=6 => self.memfd.as_raw_fd(),
            7 => -1,
            8 => self.other_fd.as_raw_fd(),
            _ => self.rng.below(1 << 20) as i32,
        }
    }

    /// A pointer to scratch space holding `bytes` (written there), sometimes a bad pointer or
    /// one that runs into the guard page.
    fn place(&mut self, bytes: &[u8]) -> u64 {
        let scratch = self.arena.base + SCRATCH;
        let pick = if self.strict { 2 } else { self.rng.below(40) };
        let at = match pick {
            0 => self.arena.guard() - (bytes.len() as u64).min(8) / 2,
            1 => self
                .rng
                .pick(&[0, 1, 0xffff_ffff_ffff_f000, self.arena.guard()]),
            _ => scratch + self.rng.below(4) * 8 * 1024,
        };
        let _ = self.mem.write(at, bytes);
        at
    }

    /// The struct as built, then perhaps damaged: its size word, one field, or all of it.
    fn finish(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        let n = bytes.len();
        if self.strict {
            return bytes;
        }
        match self.rng.below(20) {
            0 => {
                let bad = self
                    .rng
                    .pick(&[0u32, 4, n as u32 - 4, n as u32 + 8, 1 << 20, u32::MAX]);
                bytes[..4].copy_from_slice(&bad.to_ne_bytes());
                if bad as usize > n && bad < 4096 {
                    bytes.resize(bad as usize, 0);
                    if self.rng.pct(50) {
                        let i = self.rng.below(bad as u64 - n as u64) as usize + n;
                        bytes[i] = 1;
                    }
                }
            }
            1 => {
                let i = 4 + self.rng.below(n as u64 - 4) as usize;
                bytes[i] ^= 1 << self.rng.below(8);
            }
            2 => {
                let i = 4 + self.rng.below(n as u64 - 4) as usize;
                bytes[i] = self.rng.next() as u8;
            }
            3 => {
                let keep = bytes[..4].to_vec();
                bytes = self.rng.bytes(n);
                if self.rng.pct(50) {
                    bytes[..4].copy_from_slice(&keep);
                }
            }
            _ => {}
        }
        bytes
    }

    fn sz<T>() -> u32 {
        std::mem::size_of::<T>() as u32
    }

    // --- the ioctls ---

    fn gen(&mut self, ci: usize) -> Call {
        self.strict = self.rng.pct(55);
        let (name, cmd, bytes): (&'static str, u32, Vec<u8>) = match self.rng.below(34) {
            0 | 1 => (
                "IOAS_ALLOC",
                IOMMU_IOAS_ALLOC,
                iommu_ioas_alloc {
                    size: Self::sz::<iommu_ioas_alloc>(),
                    flags: if self.rng.pct(90) {
                        0
                    } else {
                        self.rng.next() as u32
                    },
                    out_ioas_id: 0,
                }
                .as_bytes()
                .to_vec(),
            ),
            2 | 3 => {
                let kind = self
                    .rng
                    .pick(&["ioas", "hwpt", "selftest", "device", "viommu", ""]);
                let id = self.id(ci, kind);
                (
                    "DESTROY",
                    IOMMU_DESTROY,
                    iommu_destroy { size: 8, id }.as_bytes().to_vec(),
                )
            }
            4 => {
                let n = self.rng.below(5);
                let mut ranges = Vec::new();
                for _ in 0..n {
                    let s = self.iova(ci) & !0xfff;
                    let l = s.wrapping_add(self.length()).wrapping_sub(1);
                    ranges.push(iommu_iova_range { start: s, last: l });
                }
                let ptr = self.place(ranges.as_bytes());
                let ptr = if self.rng.pct(90) { ptr } else { self.uptr(16) };
                let c = iommu_ioas_allow_iovas {
                    size: Self::sz::<iommu_ioas_allow_iovas>(),
                    ioas_id: self.id(ci, "ioas"),
                    num_iovas: if self.rng.pct(90) {
                        n as u32
                    } else {
                        self.rng.next() as u32 % 1000
                    },
                    reserved: 0,
                    allowed_iovas: ptr,
                };
                ("ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS, c.as_bytes().to_vec())
            }
            5 => {
                let c = iommu_ioas_iova_ranges {
                    size: Self::sz::<iommu_ioas_iova_ranges>(),
                    ioas_id: self.id(ci, "ioas"),
                    num_iovas: self.rng.below(6) as u32,
                    reserved: 0,
                    allowed_iovas: self.uptr(96),
                    out_iova_alignment: 0,
                };
                ("IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES, c.as_bytes().to_vec())
            }
            6..=9 => {
                let length = self.length();
                let c = iommu_ioas_map {
                    size: Self::sz::<iommu_ioas_map>(),
                    flags: self.map_flags(),
                    ioas_id: self.id(ci, "ioas"),
                    reserved: 0,
                    user_va: self.uptr(length),
                    length,
                    iova: self.iova(ci),
                };
                ("IOAS_MAP", IOMMU_IOAS_MAP, c.as_bytes().to_vec())
            }
            10 | 11 => {
                let length = self.length();
                let start = match self.rng.below(4) {
                    0..=1 => self.rng.below(MEMFD_LEN / PAGE_SIZE) * PAGE_SIZE,
                    2 => self.rng.below(MEMFD_LEN),
                    _ => self.rng.next(),
                };
                let c = iommu_ioas_map_file {
                    size: Self::sz::<iommu_ioas_map_file>(),
                    flags: self.map_flags(),
                    ioas_id: self.id(ci, "ioas"),
                    fd: self.fd(),
                    start,
                    length,
                    iova: self.iova(ci),
                };
                ("MAP_FILE", IOMMU_IOAS_MAP_FILE, c.as_bytes().to_vec())
            }
            12 | 13 => {
                let c = iommu_ioas_copy {
                    size: Self::sz::<iommu_ioas_copy>(),
                    flags: self.map_flags(),
                    dst_ioas_id: self.id(ci, "ioas"),
                    src_ioas_id: self.id(ci, "ioas"),
                    length: self.length(),
                    dst_iova: self.iova(ci),
                    src_iova: self.iova(ci),
                };
                ("IOAS_COPY", IOMMU_IOAS_COPY, c.as_bytes().to_vec())
            }
            14 | 15 => {
                let (iova, length) = if self.rng.pct(15) {
                    (0, u64::MAX)
                } else {
                    (self.iova(ci), self.length())
                };
                let c = iommu_ioas_unmap {
                    size: Self::sz::<iommu_ioas_unmap>(),
                    ioas_id: self.id(ci, "ioas"),
                    iova,
                    length,
                };
                ("IOAS_UNMAP", IOMMU_IOAS_UNMAP, c.as_bytes().to_vec())
            }
            16 => {
                let c = iommu_option {
                    size: Self::sz::<iommu_option>(),
                    option_id: self.rng.pick(&[0, 1, 1, 2]),
                    op: self.rng.pick(&[0, 1, 1, 3]),
                    reserved: 0,
                    object_id: self.id(ci, "ioas"),
                    val64: self.rng.pick(&[0, 1, 1, 2, u64::MAX]),
                };
                ("OPTION", IOMMU_OPTION, c.as_bytes().to_vec())
            }
            17 => {
                let c = iommu_vfio_ioas {
                    size: Self::sz::<iommu_vfio_ioas>(),
                    ioas_id: self.id(ci, "ioas"),
                    op: self.rng.pick(&[0, 1, 1, 2, 3]),
                    reserved: 0,
                };
                ("VFIO_IOAS", IOMMU_VFIO_IOAS, c.as_bytes().to_vec())
            }
            18 | 19 => {
                let selftest = self.rng.pct(30);
                let data = iommu_hwpt_selftest {
                    iotlb: IOMMU_TEST_IOTLB_DEFAULT,
                    pagetable_type: self.rng.pick(&[0, 1, 7]),
                };
                let data_uptr = if selftest {
                    self.place(data.as_bytes())
                } else {
                    0
                };
                let kind = if self.strict {
                    self.rng.pick(&["ioas", "ioas", "viommu"])
                } else {
                    self.rng.pick(&["ioas", "hwpt", "viommu"])
                };
                let flags = if self.strict {
                    self.rng.pick(&[
                        0,
                        IOMMU_HWPT_ALLOC_NEST_PARENT,
                        IOMMU_HWPT_ALLOC_NEST_PARENT,
                        IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                    ])
                } else {
                    self.flags(0xf)
                };
                let c = iommu_hwpt_alloc {
                    size: Self::sz::<iommu_hwpt_alloc>(),
                    flags,
                    dev_id: self.id(ci, "device"),
                    pt_id: self.id(ci, kind),
                    out_hwpt_id: 0,
                    reserved: 0,
                    data_type: if selftest {
                        IOMMU_HWPT_DATA_SELFTEST
                    } else {
                        0
                    },
                    data_len: if selftest { 8 } else { 0 },
                    data_uptr,
                    fault_id: self.id(ci, "fault"),
                    reserved2: 0,
                };
                ("HWPT_ALLOC", IOMMU_HWPT_ALLOC, c.as_bytes().to_vec())
            }
            20 => {
                let c = iommu_hw_info {
                    size: Self::sz::<iommu_hw_info>(),
                    flags: self.flags(1),
                    dev_id: self.id(ci, "device"),
                    data_len: self.rng.pick(&[0, 8, 64, 4096]),
                    data_uptr: self.uptr(64),
                    in_data_type: self.rng.pick(&[0, IOMMU_HW_INFO_TYPE_SELFTEST, 3]),
                    ..Default::default()
                };
                ("GET_HW_INFO", IOMMU_GET_HW_INFO, c.as_bytes().to_vec())
            }
            21 => {
                let c = iommu_hwpt_set_dirty_tracking {
                    size: Self::sz::<iommu_hwpt_set_dirty_tracking>(),
                    flags: self.flags(1),
                    hwpt_id: self.id(ci, "hwpt"),
                    reserved: 0,
                };
                (
                    "SET_DIRTY_TRACKING",
                    IOMMU_HWPT_SET_DIRTY_TRACKING,
                    c.as_bytes().to_vec(),
                )
            }
            22 => {
                let c = iommu_hwpt_get_dirty_bitmap {
                    size: Self::sz::<iommu_hwpt_get_dirty_bitmap>(),
                    hwpt_id: self.id(ci, "hwpt"),
                    flags: self.flags(1),
                    reserved: 0,
                    iova: self.iova(ci),
                    length: self.length(),
                    page_size: self.rng.pick(&[0, 2048, 4096, 4096, 3, 1 << 21]),
                    data: self.uptr(64),
                };
                (
                    "GET_DIRTY_BITMAP",
                    IOMMU_HWPT_GET_DIRTY_BITMAP,
                    c.as_bytes().to_vec(),
                )
            }
            23 => {
                let entries = self.rng.bytes(64);
                let c = iommu_hwpt_invalidate {
                    size: Self::sz::<iommu_hwpt_invalidate>(),
                    hwpt_id: self.id(ci, "hwpt"),
                    data_uptr: self.place(&entries),
                    data_type: self.rng.pick(&[0, IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 1]),
                    entry_len: self.rng.pick(&[0, 8, 16, 64]),
                    entry_num: self.rng.below(5) as u32,
                    reserved: 0,
                };
                (
                    "HWPT_INVALIDATE",
                    IOMMU_HWPT_INVALIDATE,
                    c.as_bytes().to_vec(),
                )
            }
            24 => {
                let c = iommu_viommu_alloc {
                    size: Self::sz::<iommu_viommu_alloc>(),
                    flags: self.flags(0),
                    r#type: if self.strict {
                        IOMMU_VIOMMU_TYPE_SELFTEST
                    } else {
                        self.rng.pick(&[IOMMU_VIOMMU_TYPE_SELFTEST, 0, 1])
                    },
                    dev_id: self.id(ci, "device"),
                    hwpt_id: self.id(ci, "hwpt"),
                    out_viommu_id: 0,
                    data_len: if self.strict {
                        0
                    } else {
                        self.rng.pick(&[0, 0, 8])
                    },
                    reserved: 0,
                    data_uptr: self.uptr(8),
                };
                ("VIOMMU_ALLOC", IOMMU_VIOMMU_ALLOC, c.as_bytes().to_vec())
            }
            25 => {
                let c = iommu_vdevice_alloc {
                    size: Self::sz::<iommu_vdevice_alloc>(),
                    viommu_id: self.id(ci, "viommu"),
                    dev_id: self.id(ci, "device"),
                    out_vdevice_id: 0,
                    virt_id: self.rng.below(4),
                };
                ("VDEVICE_ALLOC", IOMMU_VDEVICE_ALLOC, c.as_bytes().to_vec())
            }
            26 => {
                let c = iommu_hw_queue_alloc {
                    size: Self::sz::<iommu_hw_queue_alloc>(),
                    flags: 0,
                    viommu_id: self.id(ci, "viommu"),
                    r#type: self.rng.pick(&[IOMMU_HW_QUEUE_TYPE_SELFTEST, 0]),
                    index: self.rng.below(3) as u32,
                    out_hw_queue_id: 0,
                    nesting_parent_iova: self.iova(ci),
                    length: self.length(),
                };
                (
                    "HW_QUEUE_ALLOC",
                    IOMMU_HW_QUEUE_ALLOC,
                    c.as_bytes().to_vec(),
                )
            }
            27 => {
                let (name, cmd) = self.rng.pick(&[
                    ("CHANGE_PROCESS", IOMMU_IOAS_CHANGE_PROCESS),
                    ("FAULT_QUEUE_ALLOC", IOMMU_FAULT_QUEUE_ALLOC),
                    ("VEVENTQ_ALLOC", IOMMU_VEVENTQ_ALLOC),
                ]);
                let mut b = vec![0u8; 32];
                b[..4].copy_from_slice(
                    &(if cmd == IOMMU_IOAS_CHANGE_PROCESS {
                        8u32
                    } else {
                        32
                    })
                    .to_ne_bytes(),
                );
                (name, cmd, b)
            }
            28..=31 => self.gen_test_cmd(ci),
            _ => {
                // Any number of the ';' type with a random struct.
                let nr = self.rng.below(256) as u32;
                let n = self.rng.below(80) as usize + 8;
                let mut b = self.rng.bytes(n);
                if self.rng.pct(50) {
                    b[..4].copy_from_slice(&(n as u32).to_ne_bytes());
                }
                ("RAW", io(b';', nr), b)
            }
        };
        let bytes = self.finish(bytes);
        let arg = self.place(&bytes);
        Call {
            ctx: ci,
            name,
            cmd,
            arg,
            bytes,
        }
    }

    fn gen_test_cmd(&mut self, ci: usize) -> (&'static str, u32, Vec<u8>) {
        let mut c = iommu_test_cmd {
            size: Self::sz::<iommu_test_cmd>(),
            ..Default::default()
        };
        let op = self.rng.pick(&[
            IOMMU_TEST_OP_MOCK_DOMAIN,
            IOMMU_TEST_OP_MOCK_DOMAIN,
            IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
            IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
            IOMMU_TEST_OP_ADD_RESERVED,
            IOMMU_TEST_OP_MD_CHECK_MAP,
            IOMMU_TEST_OP_MD_CHECK_REFS,
            IOMMU_TEST_OP_ACCESS_RW,
            IOMMU_TEST_OP_ACCESS_PAGES,
            IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT,
            IOMMU_TEST_OP_DIRTY,
            IOMMU_TEST_OP_TRIGGER_IOPF,
            IOMMU_TEST_OP_TRIGGER_VEVENT,
            IOMMU_TEST_OP_DEV_CHECK_CACHE,
            IOMMU_TEST_OP_MD_CHECK_IOTLB,
            IOMMU_TEST_OP_PASID_ATTACH,
            IOMMU_TEST_OP_PASID_REPLACE,
            IOMMU_TEST_OP_PASID_DETACH,
            IOMMU_TEST_OP_PASID_CHECK_HWPT,
            IOMMU_TEST_OP_DMABUF_REVOKE,
            99,
        ]);
        c.op = op;
        match op {
            IOMMU_TEST_OP_MOCK_DOMAIN | IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS => {
                let kind = self.rng.pick(&["ioas", "ioas", "hwpt"]);
                c.id = self.id(ci, kind);
                let dev_flags = if self.strict {
                    self.rng
                        .pick(&[0, 0, MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_PASID])
                } else {
                    self.flags(0x7)
                };
                let p = iommu_test_cmd_mock_domain_flags {
                    dev_flags,
                    ..Default::default()
                };
                c.set_payload(&p);
            }
            IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE => {
                c.id = self.id(ci, "selftest");
                let kind = self.rng.pick(&["ioas", "hwpt"]);
                c.set_payload(&iommu_test_cmd_mock_domain_replace {
                    pt_id: self.id(ci, kind),
                });
            }
            IOMMU_TEST_OP_ADD_RESERVED => {
                c.id = self.id(ci, "ioas");
                c.set_payload(&iommu_test_cmd_add_reserved {
                    start: self.iova(ci),
                    length: self.length(),
                });
            }
            IOMMU_TEST_OP_MD_CHECK_MAP => {
                c.id = self.id(ci, "hwpt");
                let length = self.length();
                c.set_payload(&iommu_test_cmd_check_map {
                    iova: self.iova(ci),
                    length,
                    uptr: self.uptr(length),
                });
            }
            IOMMU_TEST_OP_MD_CHECK_REFS => {
                // Only its fast answers: a count that does not match waits 2 s for FUSE releases
                // to settle before EIO, which would eat the time budget.
                let length = self.rng.pick(&[0, 100, PAGE_SIZE + 1]);
                c.set_payload(&iommu_test_cmd_check_refs {
                    length,
                    uptr: self.uptr(length),
                    refs: self.rng.below(3) as u32,
                    __pad: 0,
                });
            }
            IOMMU_TEST_OP_ACCESS_RW | IOMMU_TEST_OP_ACCESS_PAGES => {
                // An access is named by its fd: none of ours is one (EBADF / EBADFD).
                c.id = self.fd() as u32;
                c.set_payload(&iommu_test_cmd_access_rw {
                    iova: self.iova(ci),
                    length: self.rng.below(8192),
                    uptr: self.uptr(8192),
                    flags: self.flags(5),
                    __pad: 0,
                });
            }
            IOMMU_TEST_OP_DIRTY => {
                c.id = self.id(ci, "hwpt");
                c.set_payload(&iommu_test_cmd_dirty {
                    iova: self.iova(ci),
                    length: self.length(),
                    page_size: self.rng.pick(&[0, 2048, 4096]),
                    uptr: self.uptr(64),
                    ..Default::default()
                });
            }
            IOMMU_TEST_OP_TRIGGER_IOPF => {
                c.set_payload(&iommu_test_cmd_trigger_iopf {
                    dev_id: self.id(ci, "device"),
                    pasid: self.rng.below(3) as u32,
                    grpid: self.rng.below(3) as u32,
                    perm: self.flags(0xf),
                    addr: self.iova(ci),
                });
            }
            IOMMU_TEST_OP_PASID_ATTACH
            | IOMMU_TEST_OP_PASID_REPLACE
            | IOMMU_TEST_OP_PASID_DETACH
            | IOMMU_TEST_OP_PASID_CHECK_HWPT => {
                c.id = self.id(ci, "selftest");
                c.set_payload(&iommu_test_cmd_pasid_attach {
                    pasid: self.rng.pick(&[0, 1, 2, 1 << 20, u32::MAX]),
                    pt_id: self.id(ci, "hwpt"),
                });
            }
            _ => {
                c.id = self.id(ci, "");
                let junk = self.rng.bytes(16);
                c.payload[..16].copy_from_slice(&junk);
                if op == IOMMU_TEST_OP_TRIGGER_VEVENT || op == IOMMU_TEST_OP_DEV_CHECK_CACHE {
                    c.payload[..4].copy_from_slice(&self.id(ci, "device").to_ne_bytes());
                }
            }
        }
        ("TEST_CMD", IOMMU_TEST_CMD, c.as_bytes().to_vec())
    }

    /// A VFIO container ioctl (value or struct argument).
    fn gen_vfio(&mut self, ci: usize) -> Call {
        self.strict = self.rng.pct(55);
        let (name, cmd, bytes, value) = match self.rng.below(8) {
            0 => ("VFIO_GET_API_VERSION", VFIO_GET_API_VERSION, Vec::new(), 0),
            1 => {
                let v = self.rng.pick(&[1, 3, 4, 8, 9, 10, 0, 1000]);
                ("VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION, Vec::new(), v)
            }
            2 => {
                let v = self.rng.pick(&[1, 3, 3, 2, 8, 0]);
                ("VFIO_SET_IOMMU", VFIO_SET_IOMMU, Vec::new(), v)
            }
            3 => {
                let argsz = self.rng.pick(&[16u32, 24, 64, 256, 8, 0]);
                let mut b = vec![0u8; 256];
                b[..4].copy_from_slice(&argsz.to_ne_bytes());
                ("VFIO_IOMMU_GET_INFO", VFIO_IOMMU_GET_INFO, b, 0)
            }
            4..=5 => {
                let size = self.length();
                let c = vfio_iommu_type1_dma_map {
                    argsz: Self::sz::<vfio_iommu_type1_dma_map>(),
                    flags: self.flags(3),
                    vaddr: self.uptr(size),
                    iova: self.iova(ci),
                    size,
                };
                (
                    "VFIO_IOMMU_MAP_DMA",
                    VFIO_IOMMU_MAP_DMA,
                    c.as_bytes().to_vec(),
                    0,
                )
            }
            _ => {
                let all = self.rng.pct(20);
                let c = vfio_iommu_type1_dma_unmap {
                    argsz: Self::sz::<vfio_iommu_type1_dma_unmap>(),
                    flags: if all {
                        VFIO_DMA_UNMAP_FLAG_ALL
                    } else {
                        self.flags(0)
                    },
                    iova: if all { 0 } else { self.iova(ci) },
                    size: if all { 0 } else { self.length() },
                };
                (
                    "VFIO_IOMMU_UNMAP_DMA",
                    VFIO_IOMMU_UNMAP_DMA,
                    c.as_bytes().to_vec(),
                    0,
                )
            }
        };
        if bytes.is_empty() {
            return Call {
                ctx: ci,
                name,
                cmd,
                arg: value,
                bytes,
            };
        }
        let bytes = self.finish(bytes);
        let arg = self.place(&bytes);
        Call {
            ctx: ci,
            name,
            cmd,
            arg,
            bytes,
        }
    }

    /// One access operation directly on the objects layer.
    fn access_op(&mut self, ci: usize) -> Result<(), String> {
        if self.accesses.is_empty() || self.rng.pct(25) {
            let ctx = self.ctxs[ci].clone();
            let pins = Arc::new(PinList::default());
            let a = Access::new(pins.clone(), self.rng.pct(70));
            let ioas = self.id(ci, "ioas");
            // Held by its owner as the selftest's access fd holds it: IOMMU_DESTROY is EBUSY.
            if let Ok((id, user)) = ctx.insert_held(Object::Access(a.clone())) {
                let r = a.attach(&ctx, ioas);
                self.log
                    .push(format!("ctx{ci} access {id} attach to {ioas} -> {r:?}"));
                if r.is_err() {
                    drop(user);
                    ctx.destroy(id)
                        .map_err(|e| format!("destroying a fresh access: {e}"))?;
                } else {
                    self.accesses.push((ci, Arc::new(user), a, pins));
                }
            }
            return Ok(());
        }
        // An access acts in its own context.
        let (ci, user, a, pins) =
            self.accesses[self.rng.below(self.accesses.len() as u64) as usize].clone();
        let id = user.id();
        match self.rng.below(4) {
            0 | 1 => {
                let (iova, len) = (self.iova(ci) & !0xfff, self.length().min(64 * PAGE_SIZE));
                let r = a.pin_pages(iova, len, self.rng.pct(50)).map(|p| p.len());
                self.log.push(format!(
                    "ctx{ci} access {id} pin {iova:#x}+{len:#x} -> {r:?}"
                ));
                if r.is_ok() {
                    pins.0.lock().unwrap().push((iova, len));
                }
            }
            2 => {
                let mut buf = vec![0u8; self.rng.below(9000) as usize];
                let iova = self.iova(ci);
                let r = a.rw(iova, &mut buf, self.rng.pct(50));
                self.log.push(format!(
                    "ctx{ci} access {id} rw {iova:#x}+{:#x} -> {r:?}",
                    buf.len()
                ));
            }
            _ => {
                let ctx = self.ctxs[ci].clone();
                let ioas = self.id(ci, "ioas");
                let r = a.replace(&ctx, ioas);
                self.log
                    .push(format!("ctx{ci} access {id} replace to {ioas} -> {r:?}"));
            }
        }
        Ok(())
    }

    fn issue(&mut self, call: &Call) -> Result<(), String> {
        let ctx = self.ctxs[call.ctx].clone();
        let daemon = self.daemon;
        let mem = &self.mem;
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            daemon.ioctl(&ctx, call.cmd, call.arg, mem)
        }))
        .map_err(|_| "panicked".to_string())?;
        self.log.push(format!(
            "ctx{} {} {:#x} arg {:#x} {} -> {:?}",
            call.ctx,
            call.name,
            call.cmd,
            call.arg,
            hex(&call.bytes),
            r
        ));
        let st = self.stats.entry(call.name).or_default();
        st.2 += t0.elapsed();
        if r.is_ok() {
            st.0 += 1;
        } else {
            st.1 += 1;
        }
        if let Err(e) = r {
            if !allowed(call.cmd).contains(&e) {
                return Err(format!(
                    "{} answered {e}, which the kernel does not",
                    call.name
                ));
            }
        }
        Ok(())
    }

    /// The consistency every op must leave behind.
    fn check(&self) -> Result<(), String> {
        check_areas_and_pins(self.daemon.ledger(), &self.ctxs, &self.base)?;
        let status: serde_json::Value =
            serde_json::from_str(&self.daemon.status_json()).map_err(|e| e.to_string())?;
        let objects: usize = self.ctxs.iter().map(|c| c.num_objects()).sum();
        if status["objects"] != objects
            || status["pinned_pages"] != self.daemon.ledger().pins.pinned_total()
            || status["contexts"] != self.ctxs.len()
        {
            return Err(format!(
                "status {status} disagrees: {} contexts, {objects} objects, {} pinned",
                self.ctxs.len(),
                self.daemon.ledger().pins.pinned_total()
            ));
        }
        Ok(())
    }

    /// Issues a well-formed `bytes` of `cmd` (or the value `arg` when `bytes` is empty).
    fn valid(
        &mut self,
        ci: usize,
        name: &'static str,
        cmd: u32,
        bytes: Vec<u8>,
        arg: u64,
    ) -> Result<(), String> {
        let arg = if bytes.is_empty() {
            arg
        } else {
            let at = self.arena.base + SCRATCH;
            let _ = self.mem.write(at, &bytes);
            at
        };
        self.issue(&Call {
            ctx: ci,
            name,
            cmd,
            arg,
            bytes,
        })
    }

    /// IOAS, a mock domain on it and a mapping; on a VFIO context also the compat IOAS and
    /// type1 (v2 mostly, v1 sometimes).
    fn prologue(&mut self, ci: usize) -> Result<(), String> {
        let alloc = iommu_ioas_alloc {
            size: Self::sz::<iommu_ioas_alloc>(),
            ..Default::default()
        };
        self.valid(
            ci,
            "IOAS_ALLOC",
            IOMMU_IOAS_ALLOC,
            alloc.as_bytes().to_vec(),
            0,
        )?;
        let Some(&ioas) = self.ids_of(ci, "ioas").last() else {
            return Ok(());
        };
        let vfio = self.rng.pct(40);
        if vfio {
            let c = iommu_vfio_ioas {
                size: Self::sz::<iommu_vfio_ioas>(),
                ioas_id: ioas,
                op: IOMMU_VFIO_IOAS_SET,
                reserved: 0,
            };
            self.valid(ci, "VFIO_IOAS", IOMMU_VFIO_IOAS, c.as_bytes().to_vec(), 0)?;
            let ty = self
                .rng
                .pick(&[VFIO_TYPE1v2_IOMMU, VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU]);
            self.valid(ci, "VFIO_SET_IOMMU", VFIO_SET_IOMMU, Vec::new(), ty.into())?;
        }
        for _ in 0..self.rng.below(3) {
            let mut c = iommu_test_cmd {
                size: Self::sz::<iommu_test_cmd>(),
                op: IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
                id: ioas,
                ..Default::default()
            };
            let flags = self
                .rng
                .pick(&[0, 0, MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_PASID]);
            c.set_payload(&iommu_test_cmd_mock_domain_flags {
                dev_flags: flags,
                ..Default::default()
            });
            self.valid(ci, "TEST_CMD", IOMMU_TEST_CMD, c.as_bytes().to_vec(), 0)?;
        }
        for k in 0..1 + self.rng.below(3) {
            let pages = 1 + self.rng.below(8);
            let uva = self.arena.base + self.rng.below(DATA_LEN / PAGE_SIZE - 8) * PAGE_SIZE;
            let iova = A + k * 0x10_0000;
            if vfio {
                let c = vfio_iommu_type1_dma_map {
                    argsz: Self::sz::<vfio_iommu_type1_dma_map>(),
                    flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                    vaddr: uva,
                    iova,
                    size: pages * PAGE_SIZE,
                };
                self.valid(
                    ci,
                    "VFIO_IOMMU_MAP_DMA",
                    VFIO_IOMMU_MAP_DMA,
                    c.as_bytes().to_vec(),
                    0,
                )?;
            } else {
                let c = iommu_ioas_map {
                    size: Self::sz::<iommu_ioas_map>(),
                    flags: IOMMU_IOAS_MAP_READABLE
                        | IOMMU_IOAS_MAP_WRITEABLE
                        | IOMMU_IOAS_MAP_FIXED_IOVA,
                    ioas_id: ioas,
                    reserved: 0,
                    user_va: uva,
                    length: pages * PAGE_SIZE,
                    iova,
                };
                self.valid(ci, "IOAS_MAP", IOMMU_IOAS_MAP, c.as_bytes().to_vec(), 0)?;
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), String> {
        let n = 1 + self.rng.below(2) as usize;
        for _ in 0..n {
            let node = if self.rng.pct(70) {
                NodeKind::Iommu
            } else {
                NodeKind::VfioContainer
            };
            self.ctxs.push(self.daemon.new_context(&node));
        }
        // Most cases start from a working setup (as a real client's session would), so that
        // the random part reaches mapped, pinned, attached states.
        for ci in 0..n {
            if self.rng.pct(75) {
                self.prologue(ci)?;
                self.check()?;
            }
        }
        let ops = 5 + self.rng.below(60);
        for _ in 0..ops {
            let ci = self.rng.below(n as u64) as usize;
            match self.rng.below(20) {
                0..=2 => {
                    let call = self.gen_vfio(ci);
                    self.issue(&call)?;
                }
                3 => {
                    self.access_op(ci)?;
                }
                _ => {
                    let call = self.gen(ci);
                    self.issue(&call)?;
                }
            }
            self.check()?;
        }
        // Let every access and hardware queue go first: then no area may still count access
        // pins (a pin an owner could not release would otherwise only show as an unmap that
        // never finishes, covered up when the pages are dropped).
        for (ci, user, _, _) in std::mem::take(&mut self.accesses) {
            let id = user.id();
            user.release();
            self.ctxs[ci]
                .destroy(id)
                .map_err(|e| format!("destroying access {id}: {e}"))?;
        }
        for ci in 0..self.ctxs.len() {
            let mut queues = self.ids_of(ci, "hw_queue");
            queues.sort_unstable();
            for id in queues.into_iter().rev() {
                let _ = self.ctxs[ci].destroy(id);
            }
        }
        for ctx in &self.ctxs {
            for (id, o) in ctx.objects_of_type("ioas") {
                let Object::Ioas(ioas) = o else { continue };
                let stuck = ioas
                    .iopt()
                    .areas()
                    .find(|a| a.num_accesses != 0)
                    .map(|a| (a.iova, a.last, a.num_accesses));
                if let Some((iova, last, n)) = stuck {
                    return Err(format!(
                        "ioas {id}: area {iova:#x}..{last:#x} keeps {n} access pins with no \
                         access left"
                    ));
                }
            }
        }
        // Close every context as a release does.
        for ctx in self.ctxs.drain(..) {
            ctx.destroy_all();
        }
        let now = Counters::of(self.daemon.ledger());
        let status: serde_json::Value =
            serde_json::from_str(&self.daemon.status_json()).map_err(|e| e.to_string())?;
        if now != self.base || status["contexts"] != 0 || status["objects"] != 0 {
            return Err(format!(
                "after closing: {now:?} (baseline {:?}), status {status}",
                self.base
            ));
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Cases CI runs from a fixed seed: about 4 s in a debug build on an idle 2-core machine.
const CI_CASES: u64 = 2000;
const CI_SEED: u64 = 0x1105_5eed;
const CHILD_ENV: &str = "UIOMMUFD_FUZZ_CHILD";

#[test]
fn fuzz_dispatch() {
    let extra = Duration::from_secs(env_u64("UIOMMUFD_FUZZ_SECONDS").unwrap_or(0));
    if !in_uncapped_child("dispatch::fuzz::fuzz_dispatch", CHILD_ENV, extra) {
        return;
    }
    // Charged like any user: no CAP_IPC_LOCK, at most 8 MiB locked.
    prepare_child();

    let seconds = env_u64("UIOMMUFD_FUZZ_SECONDS");
    let cases = env_u64("UIOMMUFD_FUZZ_CASES").unwrap_or(if seconds.is_some() {
        u64::MAX
    } else {
        CI_CASES
    });
    let seed = env_u64("UIOMMUFD_FUZZ_SEED").unwrap_or(if seconds.is_some() {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    } else {
        CI_SEED
    });
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    println!("fuzz_dispatch: seed {seed:#x}, cases {cases}, seconds {seconds:?}");

    let daemon = Daemon::new(daemon_extensions());
    let arena = Arena::new();
    let memfd = rustix::fs::memfd_create("fuzz", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, MEMFD_LEN).unwrap();
    let other: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let base = Counters::of(daemon.ledger());
    let (mut done, mut ops, mut errnos) = (0u64, 0usize, BTreeSet::new());
    let mut stats = BTreeMap::new();
    let start = Instant::now();
    let mut last_report = start;
    for i in 0..cases {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let case_seed = seed.wrapping_add(i);
        let mut case = Case {
            daemon: &daemon,
            arena: &arena,
            memfd: &memfd,
            other_fd: &other,
            mem: ProcessMemory::current(),
            rng: Rng(case_seed),
            base,
            ctxs: Vec::new(),
            accesses: Vec::new(),
            log: Vec::new(),
            strict: false,
            stats: &mut stats,
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| case.run()))
            .unwrap_or_else(|_| Err("the test's own code panicked".into()));
        if let Err(msg) = result {
            let tail = case.log.len().saturating_sub(30);
            panic!(
                "case {i} failed: {msg}\nreproduce with UIOMMUFD_FUZZ_SEED={case_seed:#x} \
                 UIOMMUFD_FUZZ_CASES=1\nlast ops:\n{}",
                case.log[tail..].join("\n")
            );
        }
        ops += case.log.len();
        for l in &case.log {
            if let Some(e) = l.rsplit("-> Err(").next().filter(|_| l.contains("-> Err(")) {
                errnos.insert(e.trim_end_matches(')').to_string());
            }
        }
        done += 1;
        if last_report.elapsed() >= Duration::from_secs(30) {
            // stderr reaches the terminal while the child runs (stdout is collected).
            eprintln!(
                "fuzz_dispatch: {done} cases, {ops} ops, {:.0} s",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    println!(
        "fuzz_dispatch: {done} cases, {ops} ops in {:.1} s; errnos seen: {errnos:?}",
        start.elapsed().as_secs_f64()
    );
    let ok: Vec<String> = stats
        .iter()
        .map(|(n, (ok, err, t))| {
            format!(
                "{n} {ok}/{} ({:.0} µs)",
                ok + err,
                t.as_secs_f64() * 1e6 / (ok + err) as f64
            )
        })
        .collect();
    println!(
        "fuzz_dispatch: succeeded/issued (mean time): {}",
        ok.join(", ")
    );
    assert!(done > 0);
}
