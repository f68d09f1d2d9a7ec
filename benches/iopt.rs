//! io_pagetable benchmarks (plain `main`, `cargo bench --bench iopt`):
//!
//! 1. MAP + UNMAP of one 4 KiB area at a fixed IOVA in an IOAS already holding 1, 1k, 100k and
//!    1M areas (bare, and with a no-op 4 KiB domain so the pin path runs too);
//! 2. automatic IOVA allocation (MAP without FIXED_IOVA + UNMAP) in a fragmented space of 100k
//!    areas with holes of mixed size, against an empty table: requests that fit early or far up,
//!    allocations kept (so that the hole index changes each time), and the worst case (every
//!    hole long enough but misaligned);
//! 3. memory per area: RSS before and after building 1M areas;
//! 4. IOAS_ALLOW_IOVAS validation + install of 4k (baseline), 40k and 400k disjoint ranges given in
//!    descending order: cost per range and its ratio to the 4k baseline (1.0 is linear; pairwise
//!    overlap checks would make it 100 at 400k).
//!
//! Results are printed as a Markdown table; docs/benchmarks.md records a run.

use nix::errno::Errno;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use uiommufd::backends::{Domain, Prot};
use uiommufd::iopt::accounting::Account;
use uiommufd::iopt::source::MemorySource;
use uiommufd::iopt::{IoPagetable, Ledger, Pages, PagesSlice, UnmapProgress, PAGE_SIZE};

const RW: Prot = Prot::READ_WRITE;
/// Areas are 4 KiB with a 4 KiB hole after each, so neighbours never touch.
const STRIDE: u64 = 2 * PAGE_SIZE;
const BASE: u64 = 0x10_0000;

/// A domain that accepts every mapping and records nothing: measures the io_pagetable's own cost
/// (pinning bookkeeping, run building) without a page table behind it.
#[derive(Debug)]
struct NullDomain;

impl Domain for NullDomain {
    fn pgsize_bitmap(&self) -> u64 {
        PAGE_SIZE | (2 << 20) | (1 << 30)
    }
    fn aperture(&self) -> (u64, u64) {
        (0, u64::MAX)
    }
    fn map(&self, _iova: u64, _paddr: u64, _len: u64, _prot: Prot) -> Result<(), Errno> {
        Ok(())
    }
    fn unmap(&self, _iova: u64, len: u64) -> u64 {
        len
    }
    fn translate(&self, _iova: u64) -> Option<u64> {
        None
    }
}

fn pages(len: u64, hint: u64) -> Arc<Pages> {
    Pages::new(
        &Ledger::new(),
        Arc::new(MemorySource::new(len as usize, hint)),
        0,
        len,
        true,
        Account::unaccounted(),
    )
    .expect("pages")
}

fn slice(p: &Arc<Pages>, length: u64) -> [PagesSlice; 1] {
    [PagesSlice {
        pages: p.clone(),
        start_byte: 0,
        length,
    }]
}

fn unmap(iopt: &mut IoPagetable, iova: u64, len: u64) {
    let r = iopt.unmap_range(iova, iova + len - 1);
    assert_eq!(r, Ok(UnmapProgress::Done(len)));
}

/// `n` 4 KiB areas at `BASE + i * STRIDE`, all windows onto one shared 4 KiB `Pages`.
fn build(n: u64, shared: &Arc<Pages>, order: &[u64]) -> IoPagetable {
    let mut iopt = IoPagetable::new();
    let s = slice(shared, PAGE_SIZE);
    if order.is_empty() {
        for i in 0..n {
            iopt.map_pages(&s, PAGE_SIZE, Some(BASE + i * STRIDE), RW)
                .expect("build");
        }
    } else {
        for &i in order {
            iopt.map_pages(&s, PAGE_SIZE, Some(BASE + i * STRIDE), RW)
                .expect("build");
        }
    }
    iopt
}

/// Resident set size in bytes (second field of /proc/self/statm, in pages).
/// Builds a table of `n` areas (see [`build`]) and prints its row of the memory-per-area table.
fn measure_build(label: &str, n: u64, shared: &Arc<Pages>, order: &[u64]) -> IoPagetable {
    let before = rss();
    let t = Instant::now();
    let table = build(n, shared, order);
    let build_time = t.elapsed();
    let after = rss();
    println!(
        "| {label} | {} MiB | {} MiB | {:.1} | {:.2} s ({:.0} ns/map) |",
        before >> 20,
        after >> 20,
        (after - before) as f64 / n as f64,
        build_time.as_secs_f64(),
        build_time.as_nanos() as f64 / n as f64
    );
    table
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * PAGE_SIZE
}

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Median ns per call of `op` over `rounds` rounds of `iters` calls each.
fn time_ns(rounds: usize, iters: u64, mut op: impl FnMut(u64)) -> f64 {
    for i in 0..iters / 10 {
        op(i);
    }
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                op(i);
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[rounds / 2]
}

/// MAP + UNMAP of one 4 KiB area in the hole after an existing area: a random one each time
/// (`random`), or always the one in the middle (hot caches, predictable branches).
fn bench_fixed(iopt: &mut IoPagetable, n: u64, probe: &Arc<Pages>, random: bool) -> f64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let holes: Vec<u64> = (0..4096)
        .map(|_| {
            let i = if random { rng.next() % n } else { n / 2 };
            BASE + i * STRIDE + PAGE_SIZE
        })
        .collect();
    let s = slice(probe, PAGE_SIZE);
    time_ns(7, 200_000, |i| {
        let iova = holes[(i % holes.len() as u64) as usize];
        let got = iopt.map_pages(&s, PAGE_SIZE, Some(iova), RW).unwrap();
        black_box(got);
        unmap(iopt, iova, PAGE_SIZE);
    })
}

/// Rounds of section 2; each times the empty-table baseline, then the case.
const ALLOC_ROUNDS: usize = 7;
/// Calls of the baseline in a round (~12 ms).
const BASE_ITERS: u64 = 100_000;

/// Section 2's baseline: MAP without FIXED_IOVA + UNMAP of 4 KiB in an empty table.
struct Baseline {
    iopt: IoPagetable,
    s: [PagesSlice; 1],
}

impl Baseline {
    fn op(&mut self) {
        auto_map_unmap(&mut self.iopt, &self.s, PAGE_SIZE);
    }
}

/// MAP without FIXED_IOVA + UNMAP; returns the IOVA.
fn auto_map_unmap(iopt: &mut IoPagetable, s: &[PagesSlice], len: u64) -> u64 {
    let got = iopt.map_pages(s, len, None, RW).unwrap();
    unmap(iopt, black_box(got), len);
    got
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Medians over rounds of ns per call of `op` (`iters` a round) and of the baseline timed just
/// before it in the same round, and the median of their per-round ratio: a change in the
/// machine's load during the run hits both sides of each ratio alike.
fn time_vs_empty(base: &mut Baseline, iters: u64, mut op: impl FnMut()) -> (f64, f64, f64) {
    fn round(iters: u64, mut f: impl FnMut()) -> f64 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed().as_nanos() as f64 / iters as f64
    }
    for _ in 0..iters.div_ceil(10) {
        op();
    }
    let (mut ns, mut base_ns, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ALLOC_ROUNDS {
        let b = round(BASE_ITERS, || base.op());
        let o = round(iters, &mut op);
        ns.push(o);
        base_ns.push(b);
        ratio.push(o / b);
    }
    (median(ns), median(base_ns), median(ratio))
}

/// One MAP without FIXED_IOVA of `len` bytes keeping the last `keep` mappings in `kept` (past
/// them the oldest is UNMAPped): every call changes the holes.
fn auto_map_keep(
    iopt: &mut IoPagetable,
    s: &[PagesSlice],
    len: u64,
    kept: &mut std::collections::VecDeque<u64>,
    keep: usize,
) {
    kept.push_back(iopt.map_pages(s, len, None, RW).unwrap());
    if kept.len() > keep {
        unmap(iopt, kept.pop_front().unwrap(), len);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse. IOPT_BENCH=alloc runs only section 2,
    // IOPT_BENCH=allow_iovas only section 4.
    match std::env::var("IOPT_BENCH").as_deref() {
        Ok("alloc") => {
            let shared = pages(PAGE_SIZE, 0x7f00_0000_0000);
            let probe = pages(64 * 1024, 0x7f00_1000_1000);
            return bench_alloc(&shared, &probe);
        }
        Ok("allow_iovas") => return bench_allow_iovas(),
        _ => {}
    }
    let t0 = Instant::now();
    let shared = pages(PAGE_SIZE, 0x7f00_0000_0000);
    let probe = pages(64 * 1024, 0x7f00_1000_1000);

    println!("## io_pagetable benchmark\n");
    println!(
        "cpu: {}, {} cpus",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // -- 3. memory per area (first, on a fresh heap) --------------------------------------------
    println!("\n### Memory per area (1M areas of 4 KiB, bare table)\n");
    println!("| insertion order | RSS before | RSS after | bytes/area | build time |");
    println!("|---|---|---|---|---|");
    let n = 1_000_000u64;
    let big = measure_build("ascending IOVA", n, &shared, &[]);
    assert_eq!(big.num_areas(), n as usize);
    // Random insertion order leaves the B-tree nodes less full.
    let mut order: Vec<u64> = (0..n).collect();
    let mut rng = Rng(42);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let shuffled = measure_build("random IOVA", n, &shared, &order);
    drop(shuffled);
    drop(order);

    // -- 1. MAP + UNMAP at a fixed IOVA -----------------------------------------------------------
    println!("\n### MAP + UNMAP of one 4 KiB area at a fixed IOVA\n");
    println!("| areas in the IOAS | same hole: ns/op | ratio | random hole: ns/op | ratio | random hole, with a domain: ns/op | ratio |");
    println!("|---|---|---|---|---|---|---|");
    let mut big = Some(big);
    let mut base = [0.0; 3];
    for n in [1u64, 1_000, 100_000, 1_000_000] {
        let mut iopt = if n == 1_000_000 {
            big.take().unwrap()
        } else {
            build(n, &shared, &[])
        };
        let same = bench_fixed(&mut iopt, n, &probe, false);
        let random = bench_fixed(&mut iopt, n, &probe, true);
        // Attaching a domain pins and maps every existing area, then each MAP pins its page.
        iopt.add_domain(1, Arc::new(NullDomain)).unwrap();
        let dom = bench_fixed(&mut iopt, n, &probe, true);
        let r = [same, random, dom];
        if n == 1 {
            base = r;
        }
        println!(
            "| {n} | {same:.0} | {:.2} | {random:.0} | {:.2} | {dom:.0} | {:.2} |",
            same / base[0],
            random / base[1],
            dom / base[2]
        );
        iopt.remove_domain(1);
        unmap_all(&mut iopt, n);
    }

    bench_alloc(&shared, &probe);

    bench_allow_iovas();

    println!(
        "\ntotal benchmark time: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Section 2: automatic IOVA allocation in a fragmented space, against an empty table.
fn bench_alloc(shared: &Arc<Pages>, probe: &Arc<Pages>) {
    use std::collections::VecDeque;
    println!("\n### Automatic IOVA allocation (MAP without FIXED_IOVA + UNMAP), first fit\n");
    let mut base = Baseline {
        iopt: IoPagetable::new(),
        s: slice(probe, PAGE_SIZE),
    };
    let base_iova = auto_map_unmap(&mut base.iopt, &base.s, PAGE_SIZE);
    // 100k areas of 4 KiB starting at PAGE_SIZE; the hole after area i is 4, 8, 12 or 16 KiB
    // (cycling), except after areas 50 000 and 99 999 where it is 64 KiB.
    let n = 100_000u64;
    let mut iopt = IoPagetable::new();
    let s = slice(shared, PAGE_SIZE);
    let mut iova = PAGE_SIZE;
    for i in 0..n {
        iopt.map_pages(&s, PAGE_SIZE, Some(iova), RW).unwrap();
        let hole = if i == n / 2 || i == n - 1 {
            64 * 1024
        } else {
            (i % 4 + 1) * PAGE_SIZE
        };
        iova += PAGE_SIZE + hole;
    }
    // The first allocation that needs the hole index builds it: one walk over the whole table.
    let s32 = slice(probe, 32 * 1024);
    let t = Instant::now();
    auto_map_unmap(&mut iopt, &s32, 32 * 1024);
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "Baseline: MAP+UNMAP of 4 KiB in an empty table (IOVA {base_iova:#x}), timed in each \
         round just before the case.\n"
    );
    println!("| table | request | lands after area # | ns/op | baseline ns/op | ratio |");
    println!("|---|---|---|---|---|---|");
    let row = |table: &str, what: &str, after: String, (ns, base_ns, ratio): (f64, f64, f64)| {
        println!("| {table} | {what} | {after} | {ns:.0} | {base_ns:.0} | {ratio:.2} |");
    };
    let landing = |iopt: &IoPagetable, at: u64| iopt.areas().take_while(|a| a.iova < at).count();
    let mut empty = IoPagetable::new();
    let mut kept = VecDeque::new();
    let t = time_vs_empty(&mut base, 20_000, || {
        auto_map_keep(&mut empty, &s, PAGE_SIZE, &mut kept, 64)
    });
    row("empty, last 64 kept", "4 KiB", "-".into(), t);
    drop(empty);
    for (len, what) in [
        (PAGE_SIZE, "4 KiB"),
        (3 * PAGE_SIZE, "12 KiB"),
        (32 * 1024, "32 KiB"),
    ] {
        let sl = slice(probe, len);
        let at = auto_map_unmap(&mut iopt, &sl, len);
        let t = time_vs_empty(&mut base, 100_000, || {
            auto_map_unmap(&mut iopt, &sl, len);
        });
        row(
            "100k areas, mixed holes",
            what,
            landing(&iopt, at).to_string(),
            t,
        );
    }
    // The same request when the only fitting hole is after the last area.
    let mid = iopt.areas().nth(n as usize / 2 + 1).unwrap().iova;
    iopt.map_pages(
        &slice(probe, 64 * 1024),
        64 * 1024,
        Some(mid - 64 * 1024),
        RW,
    )
    .unwrap();
    let at = auto_map_unmap(&mut iopt, &s32, 32 * 1024);
    let t = time_vs_empty(&mut base, 100_000, || {
        auto_map_unmap(&mut iopt, &s32, 32 * 1024);
    });
    let after = landing(&iopt, at).to_string();
    row(
        "100k areas, mixed holes, middle hole filled",
        "32 KiB",
        after,
        t,
    );
    // Allocations that stay: each MAP uses up part of a hole and each UNMAP gives one back, so
    // the hole index is rewritten around both every time.
    for (len, what, keep) in [(PAGE_SIZE, "4 KiB", 64), (32 * 1024, "32 KiB", 4)] {
        let sl = slice(probe, len);
        let mut kept = VecDeque::new();
        let t = time_vs_empty(&mut base, 20_000, || {
            auto_map_keep(&mut iopt, &sl, len, &mut kept, keep)
        });
        let highest = kept.iter().copied().max().unwrap_or(0);
        let table = format!("100k areas, mixed holes, last {keep} kept");
        row(
            &table,
            what,
            format!("up to {}", landing(&iopt, highest)),
            t,
        );
        for iova in kept {
            unmap(&mut iopt, iova, len);
        }
    }
    drop(iopt);
    // A dense table: 100k adjacent areas (as automatic allocation leaves them), then the space.
    let mut iopt = IoPagetable::new();
    for i in 0..n {
        iopt.map_pages(&s, PAGE_SIZE, Some((1 + i) * PAGE_SIZE), RW)
            .unwrap();
    }
    let at = auto_map_unmap(&mut iopt, &s, PAGE_SIZE);
    let t = time_vs_empty(&mut base, 100_000, || {
        auto_map_unmap(&mut iopt, &s, PAGE_SIZE);
    });
    row(
        "100k adjacent areas",
        "4 KiB",
        landing(&iopt, at).to_string(),
        t,
    );
    drop(iopt);
    // The worst case: 100k holes of 8 KiB, each starting on an odd page, before the space after
    // the last area; an 8 KiB request from an 8 KiB-aligned address needs 8 KiB alignment, so
    // each hole is long enough but does not fit once aligned, and each must be looked at.
    let mut iopt = IoPagetable::new();
    for i in 0..n {
        let at = (1 + 4 * i) * PAGE_SIZE;
        iopt.map_pages(&s, PAGE_SIZE, Some(at), RW).unwrap();
        iopt.map_pages(&s, PAGE_SIZE, Some(at + PAGE_SIZE), RW)
            .unwrap();
    }
    let aligned = [PagesSlice {
        pages: pages(2 * PAGE_SIZE, 0x7f00_2000_0000),
        start_byte: 0,
        length: 2 * PAGE_SIZE,
    }];
    let at = auto_map_unmap(&mut iopt, &aligned, 2 * PAGE_SIZE);
    let t = time_vs_empty(&mut base, 20, || {
        auto_map_unmap(&mut iopt, &aligned, 2 * PAGE_SIZE);
    });
    let after = landing(&iopt, at).to_string();
    row(
        "worst case: 200k areas, 100k misaligned 8 KiB holes",
        "8 KiB",
        after,
        t,
    );
    println!(
        "\nThe first 32 KiB allocation in the 100k-area table (it builds the hole index): \
         {build_ms:.2} ms"
    );
}

fn unmap_all(iopt: &mut IoPagetable, n: u64) {
    let r = iopt.unmap_range(0, u64::MAX);
    assert_eq!(r, Ok(UnmapProgress::Done(n * PAGE_SIZE)));
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// IOAS_ALLOW_IOVAS: the handler's validation (in input order, as the kernel) plus the install
/// into the table, per range, against 4k ranges measured in the same run.
fn bench_allow_iovas() {
    use uiommufd::dispatch::ioas_cmds::check_allowed_ranges;
    use uiommufd_uapi::iommufd::iommu_iova_range;
    println!("\n### IOAS_ALLOW_IOVAS: validate + install n disjoint ranges (descending input)\n");
    println!("| ranges | total ms | ns/range | ratio to 4k (per range) |");
    println!("|---|---|---|---|");
    let mut base = 0.0;
    for n in [4_000u64, 40_000, 400_000] {
        let ranges: Vec<iommu_iova_range> = (0..n)
            .rev()
            .map(|i| iommu_iova_range {
                start: BASE + i * STRIDE,
                last: BASE + i * STRIDE + PAGE_SIZE - 1,
            })
            .collect();
        let rounds = (4_000_000 / n).clamp(3, 200);
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let mut iopt = IoPagetable::new();
            let t = Instant::now();
            let ok = check_allowed_ranges(black_box(&ranges)).unwrap();
            iopt.set_allowed(&ok).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            black_box(&iopt);
        }
        let per = best * 1e9 / n as f64;
        if n == 4_000 {
            base = per;
        }
        println!("| {n} | {:.2} | {per:.0} | {:.2} |", best * 1e3, per / base);
    }
}
