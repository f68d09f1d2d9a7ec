//! The allocator on the hole index against the first-fit walk it replaced
//! ([`IoPagetable::alloc_iova_first_fit`]): the same IOVA or the same errno, every time, and an
//! index equal to the holes the walk sees.

use super::*;
use proptest::prelude::*;

const UNIT: u64 = 0x800;

/// Allocates through both allocators and checks they agree, and that the index is exact.
fn alloc_both(iopt: &IoPagetable, addr: u64, len: u64) -> Result<u64, Errno> {
    let want = iopt.alloc_iova_first_fit(addr, len);
    // After a walk of the first holes (the index, if it is searched, stale until then), then the
    // index alone, then as map_pages asks.
    let walked = iopt.alloc_iova_walking(addr, len, crate::iopt::alloc::WALK_STEPS);
    assert_eq!(walked, want, "walk, then index: ({addr:#x}, {len:#x})");
    let indexed = iopt.alloc_iova_walking(addr, len, 0);
    assert_eq!(indexed, want, "index alone: ({addr:#x}, {len:#x})");
    let got = iopt.alloc_iova(addr, len);
    assert_eq!(got, want, "alloc_iova({addr:#x}, {len:#x})");
    let truth: Vec<(u64, u64)> = iopt.holes(0, u64::MAX).collect();
    assert_eq!(iopt.indexed_holes(), truth, "hole index after refresh");
    iopt.hole_index.lock().unwrap().check();
    got
}

#[derive(Debug, Clone)]
enum Step {
    Map {
        at: u64,
        len: u64,
    },
    /// Unmaps the `sel`-th area (modulo their number).
    Unmap {
        sel: usize,
    },
    /// `n` maps of one unit, every other unit from `at`: enough notes to drop the index.
    Burst {
        at: u64,
        n: u64,
    },
    Reserve {
        at: u64,
        len: u64,
    },
    Unreserve,
    Allowed(Vec<(u64, u64)>),
    /// Compares both allocators; maps the result when `keep`.
    Alloc {
        addr: u64,
        len: u64,
        keep: bool,
    },
}

fn iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..0x200).prop_map(|k| k * UNIT),
        2 => (0u64..0x400).prop_map(|k| k * 0x400),
        1 => 0u64..0x10_0000,
        1 => (0u64..0x40).prop_map(|k| u64::MAX - k * UNIT - (UNIT - 1)),
        1 => (0u64..0x10).prop_map(|k| (1 << 40) + k * 0x20_0000),
    ]
}

fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (1u64..=8).prop_map(|k| k * UNIT),
        1 => (1u64..=4).prop_map(|k| k * 0x20_0000),
        1 => 1u64..0x6000,
        1 => (0u32..13).prop_map(|k| 1u64 << k),
        1 => Just(1u64),
    ]
}

fn user_address() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        (0u64..0x40).prop_map(|k| 0x7f00_0000_0000 + k * UNIT),
        (0u64..0x1000).prop_map(|k| 0x7f00_0000_0000 + k),
        (0u64..0x10).prop_map(|k| 0x7f00_0000_0000 + k * 0x400),
        Just(0x4000_0000u64),
        any::<u64>(),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (iova(), length()).prop_map(|(at, len)| Step::Map { at, len }),
        3 => any::<usize>().prop_map(|sel| Step::Unmap { sel }),
        1 => (iova(), 1u64..200).prop_map(|(at, n)| Step::Burst { at, n }),
        1 => (iova(), length()).prop_map(|(at, len)| Step::Reserve { at, len }),
        1 => Just(Step::Unreserve),
        1 => proptest::collection::vec((iova(), length(), 0u64..3), 0..4).prop_map(|rs| {
            // Ends on a unit, just before one, or anywhere; some where the next begins.
            let end = |s: u64, l: u64, k: u64| match k {
                0 => s.saturating_add(l * 8),
                1 => s.saturating_add(l * 8 - 1),
                _ => s.saturating_add(l - 1),
            };
            Step::Allowed(rs.into_iter().map(|(s, l, k)| (s, end(s, l, k))).collect())
        }),
        6 => (user_address(), length(), any::<bool>())
            .prop_map(|(addr, len, keep)| Step::Alloc { addr, len, keep }),
    ]
}

fn map_fixed(iopt: &mut IoPagetable, at: u64, len: u64) {
    let _ = map_mem(iopt, Some(at), 0x7f00_0000_0000, 0, len);
}

fn run(iopt: &mut IoPagetable, steps: &[Step]) {
    for step in steps {
        match step {
            &Step::Map { at, len } => map_fixed(iopt, at, len),
            &Step::Unmap { sel } => {
                let keys: Vec<(u64, u64)> = iopt.areas().map(|a| (a.iova, a.last)).collect();
                if !keys.is_empty() {
                    let (s, l) = keys[sel % keys.len()];
                    assert!(iopt.unmap_range(s, l).is_ok());
                }
            }
            &Step::Burst { at, n } => {
                for i in 0..n {
                    map_fixed(iopt, at.wrapping_add(i * 2 * UNIT), UNIT);
                }
            }
            &Step::Reserve { at, len } => {
                let _ = iopt.reserve(at, at.saturating_add(len - 1), ReservedOwner::Test);
            }
            Step::Unreserve => iopt.remove_reserved(ReservedOwner::Test),
            Step::Allowed(ranges) => {
                let mut valid: Vec<(u64, u64)> = Vec::new();
                for &(s, l) in ranges {
                    if s < l && !valid.iter().any(|&(vs, vl)| s <= vl && vs <= l) {
                        valid.push((s, l));
                    }
                }
                let _ = iopt.set_allowed(&valid);
            }
            &Step::Alloc { addr, len, keep } => {
                let got = alloc_both(iopt, addr, len);
                if let (Ok(iova), true) = (got, keep) {
                    // Through map_pages too: it must land where the allocator said.
                    let hint = addr - addr % PG;
                    let pages = mem_pages(hint, addr % PG, len, true);
                    let res = iopt.map_pages(&whole(&pages), len, None, RW);
                    assert!(matches!(res, Ok(v) if v == iova) || res == Err(Errno::EINVAL));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(512))]

    #[test]
    fn indexed_allocation_matches_first_fit(
        with_domain in any::<bool>(),
        layout in proptest::collection::vec((iova(), length()), 0..160),
        steps in proptest::collection::vec(step(), 1..64),
    ) {
        let mut iopt = IoPagetable::new();
        let _domain = with_domain.then(|| {
            let d = TestDomain::new(2048);
            iopt.add_domain(1, d.clone()).unwrap();
            d
        });
        for (at, len) in layout {
            map_fixed(&mut iopt, at, len);
        }
        run(&mut iopt, &steps);
        // The index left behind, with whatever is pending, still agrees.
        let _ = alloc_both(&iopt, 0, PG);
    }
}

#[test]
fn many_changes_drop_the_index_and_the_next_allocation_rebuilds_it() {
    let mut iopt = IoPagetable::new();
    assert!(!iopt.hole_index.lock().unwrap().is_built());
    assert_eq!(alloc_both(&iopt, 0, PG), Ok(PG));
    assert!(iopt.hole_index.lock().unwrap().is_built());
    // Disjoint maps: one note each, past the bound (64 + holes / 4).
    for i in 0..100 {
        map_at(&mut iopt, 0x10_0000 + i * 2 * PG, PG).unwrap();
    }
    assert!(!iopt.hole_index.lock().unwrap().is_built());
    assert_eq!(alloc_both(&iopt, 0, 2 * PG), Ok(2 * PG));
    assert!(iopt.hole_index.lock().unwrap().is_built());
    // A few changes are refreshed in place, the index kept.
    for i in 0..10 {
        iopt.unmap_range(0x10_0000 + i * 4 * PG, 0x10_0000 + i * 4 * PG + PG - 1)
            .unwrap();
    }
    assert!(iopt.hole_index.lock().unwrap().is_built());
    assert_eq!(alloc_both(&iopt, 0, 3 * PG), Ok(0x4000));
}

#[test]
fn a_hole_long_enough_but_misaligned_is_passed_over() {
    let mut iopt = IoPagetable::new();
    // Area i covers page 2 + 3i; the hole after it, pages 3 + 3i and 4 + 3i, is 8 KiB long
    // but 8 KiB-aligned for odd i only. An 8 KiB request from an 8 KiB-aligned address needs
    // 8 KiB alignment.
    for i in 0..50u64 {
        map_at(&mut iopt, (2 + 3 * i) * PG, PG).unwrap();
    }
    let first = alloc_both(&iopt, 0x7f00_0000_2000, 2 * PG).unwrap();
    assert_eq!(first, 6 * PG);
    // With the first page of every aligned hole used (the last at page 150), only the space
    // from page 152 on fits.
    for i in (1..50u64).step_by(2) {
        map_at(&mut iopt, (3 + 3 * i) * PG, PG).unwrap();
    }
    let after = alloc_both(&iopt, 0x7f00_0000_2000, 2 * PG).unwrap();
    assert_eq!(after, 152 * PG);
}

#[test]
fn an_allowed_span_that_does_not_fit_as_a_whole_is_skipped() {
    // addr ≡ 0x800 (mod 0x1000) with 0x400 bytes: alignment 0x400, sub-page offset 0x800. The
    // span [0x1400, 0x1bff] aligns to 0x1400 | 0x800 = 0x1c00: no fit, so the span is skipped
    // even though its hole [0x1800, 0x1bff] would give 0x1800 (as the kernel's span check does).
    let mut iopt = IoPagetable::new();
    iopt.set_allowed(&[(0x1400, 0x1bff)]).unwrap();
    map_at(&mut iopt, 0x1400, 0x400).unwrap();
    assert_eq!(
        alloc_both(&iopt, 0x7f00_0000_0800, 0x400),
        Err(Errno::ENOSPC)
    );
    // A second span further up takes it.
    iopt.set_allowed(&[(0x1400, 0x1bff), (0x4000, 0x4fff)])
        .unwrap();
    assert_eq!(alloc_both(&iopt, 0x7f00_0000_0800, 0x400), Ok(0x4800));
}

#[test]
fn a_dense_table_is_not_walked_area_by_area() {
    // 300 adjacent areas, then the space: the walk stops after a few of them and the index,
    // built then, answers; the same again once the index is up to date.
    let mut iopt = IoPagetable::new();
    for i in 0..300u64 {
        map_at(&mut iopt, (1 + i) * PG, PG).unwrap();
    }
    assert!(!iopt.hole_index.lock().unwrap().is_built());
    assert_eq!(iopt.alloc_iova(0x7f00_0000_0000, PG), Ok(301 * PG));
    assert!(iopt.hole_index.lock().unwrap().is_built());
    assert_eq!(alloc_both(&iopt, 0x7f00_0000_0000, PG), Ok(301 * PG));
}
