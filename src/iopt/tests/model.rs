//! Property test against a brute-force model.

use super::*;

// Property test against a brute-force model
// ---------------------------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    const MAX_ALIGN: u64 = 2 << 20;
    const WINDOW: (u64, u64) = (PG, u64::MAX - PG);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct MArea {
        iova: u64,
        last: u64,
        /// Index of the backing in `Harness::pages`.
        pages: usize,
        start_byte: u64,
    }

    /// The reference: plain vectors, searched exhaustively.
    #[derive(Debug, Default)]
    struct Model {
        areas: Vec<MArea>,
        allowed: Vec<(u64, u64)>,
        reserved: Vec<(u64, u64)>,
        align: u64,
    }

    fn isect(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 <= b.1 && b.0 <= a.1
    }

    /// Kernel's __alloc_iova_check_range.
    fn check_range(start: u64, last: u64, len: u64, align: u64, po: u64) -> Option<u64> {
        let a = start.checked_add(align - 1)? & !(align - 1) | po;
        (a < last && last - a >= len - 1).then_some(a)
    }

    /// `ranges` merged where they overlap or touch.
    fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
        ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, l) in ranges {
            match out.last_mut() {
                Some(p) if p.1 == u64::MAX || s <= p.1 + 1 => p.1 = p.1.max(l),
                _ => out.push((s, l)),
            }
        }
        out
    }

    impl Model {
        fn area_hits(&self, r: (u64, u64)) -> bool {
            self.areas.iter().any(|a| isect((a.iova, a.last), r))
        }
        fn reserved_hits(&self, r: (u64, u64)) -> bool {
            self.reserved.iter().any(|&x| isect(x, r))
        }

        fn alignment_for(addr: u64, len: u64) -> u64 {
            let p2 = len.next_power_of_two();
            let a = if addr == 0 {
                p2
            } else {
                p2.min(1 << addr.trailing_zeros())
            };
            a.min(MAX_ALIGN)
        }

        fn alloc(&self, addr: u64, len: u64) -> Result<u64, Errno> {
            if len == 0 || len >= u64::MAX / 2 {
                return Err(Errno::EOVERFLOW);
            }
            let align = Self::alignment_for(addr, len);
            if align < self.align {
                return Err(Errno::EINVAL);
            }
            let po = addr % PG;
            let spans: Vec<(u64, u64)> = if self.allowed.is_empty() {
                vec![WINDOW]
            } else {
                merged(self.allowed.clone())
                    .into_iter()
                    .filter(|&r| isect(r, WINDOW))
                    .map(|(s, l)| (s.max(WINDOW.0), l.min(WINDOW.1)))
                    .collect()
            };
            for (s, l) in spans {
                if check_range(s, l, len, align, po).is_none() {
                    continue;
                }
                let used = merged(
                    self.reserved
                        .iter()
                        .copied()
                        .chain(self.areas.iter().map(|a| (a.iova, a.last)))
                        .filter(|&r| isect(r, (s, l)))
                        .collect(),
                );
                let mut holes = Vec::new();
                let mut cur = Some(s);
                for (us, ul) in used {
                    let Some(c) = cur else { break };
                    if us > c {
                        holes.push((c, us - 1));
                    }
                    cur = if ul >= l { None } else { Some(c.max(ul + 1)) };
                }
                if let Some(c) = cur {
                    holes.push((c, l));
                }
                for (hs, hl) in holes {
                    if let Some(iova) = check_range(hs, hl, len, align, po) {
                        return Ok(iova);
                    }
                }
            }
            Err(Errno::ENOSPC)
        }

        /// (start_byte, pages index, length) pieces, as map_pages receives them.
        fn map(
            &mut self,
            slices: &[(usize, u64, u64)],
            len: u64,
            iova: Option<u64>,
            hint: u64,
        ) -> Result<u64, Errno> {
            if !len.is_multiple_of(self.align) || len == 0 {
                return Err(Errno::EINVAL);
            }
            let start = match iova {
                None => self.alloc(hint, len)?,
                Some(iova) => {
                    if !iova.is_multiple_of(self.align) {
                        return Err(Errno::EINVAL);
                    }
                    let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
                    if self.reserved_hits((iova, last)) {
                        return Err(Errno::EINVAL);
                    }
                    if self.area_hits((iova, last)) {
                        return Err(Errno::EEXIST);
                    }
                    iova
                }
            };
            let mut cur = start;
            let mut new = Vec::new();
            for &(pages, start_byte, length) in slices {
                if !(start_byte % PG).is_multiple_of(self.align) {
                    return Err(Errno::EINVAL);
                }
                new.push(MArea {
                    iova: cur,
                    last: cur + (length - 1),
                    pages,
                    start_byte,
                });
                cur = cur.wrapping_add(length);
            }
            self.areas.extend(new);
            self.areas.sort_by_key(|a| a.iova);
            Ok(start)
        }

        fn unmap(&mut self, s: u64, l: u64) -> Result<u64, (Errno, u64)> {
            let mut bytes = 0;
            let hits: Vec<MArea> = self
                .areas
                .iter()
                .copied()
                .filter(|a| isect((a.iova, a.last), (s, l)))
                .collect();
            for a in hits {
                if a.iova < s || a.last > l {
                    return Err((Errno::ENOENT, bytes));
                }
                self.areas.retain(|x| x.iova != a.iova);
                bytes += a.last - a.iova + 1;
            }
            Ok(bytes)
        }

        fn get_pages(&self, iova: u64, len: u64) -> Result<Vec<(usize, u64, u64)>, Errno> {
            if len == 0 {
                return Err(Errno::EINVAL);
            }
            let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
            let mut out = Vec::new();
            let mut cur = iova;
            loop {
                let a = self
                    .areas
                    .iter()
                    .find(|a| a.iova <= cur && cur <= a.last)
                    .ok_or(Errno::ENOENT)?;
                let end = a.last.min(last);
                out.push((a.pages, a.start_byte + (cur - a.iova), end - cur + 1));
                if end == last {
                    return Ok(out);
                }
                cur = end + 1;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map {
            iova: Option<u64>,
            len: u64,
            hint: u64,
            start_byte: u64,
        },
        Unmap {
            start: u64,
            last: u64,
        },
        /// Unmap around an existing area: its bounds moved by the deltas.
        UnmapNear {
            sel: usize,
            d_start: i64,
            d_last: i64,
        },
        Copy {
            sel: usize,
            d_start: i64,
            len: u64,
            dst: Option<u64>,
        },
        SetAllowed(Vec<(u64, u64)>),
        Reserve(u64, u64),
        Unreserve,
    }

    fn iova_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (0u64..0x80).prop_map(|k| k * 0x800),
            2 => 0u64..0x40000,
            1 => (0u64..0x2000).prop_map(|k| u64::MAX - k),
            1 => (0u64..0x20).prop_map(|k| u64::MAX - k * 0x800 - 0x7ff),
            1 => Just(0u64),
            1 => any::<u64>(),
        ]
    }

    fn len_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (1u64..=16).prop_map(|k| k * 0x800),
            2 => 1u64..=0x4000,
            1 => (1u64..=4).prop_map(|k| k * 0x1000 + 1),
            1 => Just(1u64),
        ]
    }

    fn range_strategy() -> impl Strategy<Value = (u64, u64)> {
        prop_oneof![
            4 => (iova_strategy(), 1u64..0x10000).prop_map(|(s, n)| (s, s.saturating_add(n - 1))),
            1 => (iova_strategy(), iova_strategy()).prop_map(|(a, b)| (a.min(b), a.max(b))),
            1 => Just((0, u64::MAX)),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let hint = prop_oneof![
            Just(0u64),
            Just(0x1000u64),
            Just(0x20_0000u64),
            Just(0x7f12_3456_7000u64),
            Just(1u64 << 40),
        ];
        let start_byte = prop_oneof![4 => Just(0u64), 2 => Just(0x800u64), 1 => 0u64..0x1000];
        prop_oneof![
            6 => (
                proptest::option::weighted(0.6, iova_strategy()),
                len_strategy(),
                hint,
                start_byte
            )
                .prop_map(|(iova, len, hint, start_byte)| Op::Map {
                    iova,
                    len,
                    hint,
                    start_byte
                }),
            2 => range_strategy().prop_map(|(start, last)| Op::Unmap { start, last }),
            2 => (any::<usize>(), -0x1000i64..0x1000, -0x1000i64..0x1000).prop_map(
                |(sel, d_start, d_last)| Op::UnmapNear {
                    sel,
                    d_start,
                    d_last
                }
            ),
            2 => (
                any::<usize>(),
                -0x800i64..0x1000,
                len_strategy(),
                proptest::option::weighted(0.5, iova_strategy())
            )
                .prop_map(|(sel, d_start, len, dst)| Op::Copy {
                    sel,
                    d_start,
                    len,
                    dst
                }),
            1 => (proptest::collection::vec(range_strategy(), 0..4), any::<bool>()).prop_map(
                |(mut rs, split)| {
                    // Sometimes split the first range into two adjacent ones.
                    if let Some(&(s, l)) = rs.first() {
                        if split && l - s >= 2 {
                            let mid = s + (l - s) / 2;
                            rs[0] = (s, mid);
                            rs.insert(1, (mid + 1, l));
                        }
                    }
                    Op::SetAllowed(rs)
                }
            ),
            1 => range_strategy().prop_map(|(s, l)| Op::Reserve(s, l)),
            1 => Just(Op::Unreserve),
        ]
    }

    struct Harness {
        iopt: IoPagetable,
        model: Model,
        domain: Option<Arc<TestDomain>>,
        /// Every backing created, with the user address it pretends to live at.
        pages: Vec<(Arc<Pages>, u64)>,
    }

    impl Harness {
        fn new(with_domain: bool) -> Self {
            let mut iopt = IoPagetable::new();
            let domain = with_domain.then(|| TestDomain::new(2048));
            if let Some(d) = &domain {
                iopt.add_domain(1, d.clone()).unwrap();
            }
            let align = iopt.iova_alignment();
            Self {
                iopt,
                model: Model {
                    align,
                    ..Model::default()
                },
                domain,
                pages: Vec::new(),
            }
        }

        fn pick(&self, sel: usize) -> Option<MArea> {
            (!self.model.areas.is_empty()).then(|| self.model.areas[sel % self.model.areas.len()])
        }

        /// Checks the automatic IOVA against the rules directly (independently of the model).
        fn check_auto(&self, iova: u64, len: u64, addr: u64) {
            let last = iova + (len - 1);
            assert!(
                iova >= PG && last <= u64::MAX - PG,
                "auto IOVA {iova:#x} outside window"
            );
            let align = Model::alignment_for(addr, len);
            assert_eq!(
                iova % align,
                0,
                "auto IOVA {iova:#x} not aligned to {align:#x}"
            );
            if !self.model.allowed.is_empty() {
                assert!(
                    merged(self.model.allowed.clone())
                        .iter()
                        .any(|&(s, l)| s <= iova && last <= l),
                    "auto IOVA {iova:#x}+{len:#x} outside the allowed ranges"
                );
            }
            assert!(
                !self.model.reserved_hits((iova, last)),
                "auto IOVA on reserved"
            );
            assert!(!self.model.area_hits((iova, last)), "auto IOVA on an area");
        }

        fn step(&mut self, op: &Op) {
            match *op {
                Op::Map {
                    iova,
                    len,
                    hint,
                    start_byte,
                } => {
                    let pages = mem_pages(hint, start_byte, len, true);
                    let idx = self.pages.len();
                    self.pages.push((pages.clone(), hint));
                    let got = self.iopt.map_pages(&whole(&pages), len, iova, RW);
                    let addr = hint + start_byte;
                    if let (None, Ok(v)) = (iova, got) {
                        self.check_auto(v, len, addr);
                    }
                    let want = self.model.map(&[(idx, start_byte, len)], len, iova, addr);
                    assert_eq!(got, want, "{op:?}");
                }
                Op::Unmap { start, last } => self.unmap(start, last),
                Op::UnmapNear {
                    sel,
                    d_start,
                    d_last,
                } => {
                    let Some(a) = self.pick(sel) else { return };
                    let s = a.iova.saturating_add_signed(d_start);
                    let l = a.last.saturating_add_signed(d_last).max(s);
                    self.unmap(s, l);
                }
                Op::Copy {
                    sel,
                    d_start,
                    len,
                    dst,
                } => {
                    let Some(a) = self.pick(sel) else { return };
                    let src = a.iova.saturating_add_signed(d_start);
                    let got = self.iopt.get_pages(src, len);
                    let want = self.model.get_pages(src, len);
                    let (got, want) = match (got, want) {
                        (Ok(g), Ok(w)) => (g, w),
                        (g, w) => {
                            assert_eq!(g.map(|_| ()), w.map(|_| ()), "get_pages {op:?}");
                            return;
                        }
                    };
                    let got_desc: Vec<(usize, u64, u64)> = got
                        .iter()
                        .map(|s| {
                            let idx = self
                                .pages
                                .iter()
                                .position(|(p, _)| Arc::ptr_eq(p, &s.pages))
                                .expect("known pages");
                            (idx, s.start_byte, s.length)
                        })
                        .collect();
                    assert_eq!(got_desc, want, "get_pages slices {op:?}");
                    let first = &self.pages[want[0].0];
                    let addr = first.1 + want[0].1;
                    let res = self.iopt.map_pages(&got, len, dst, RW);
                    if let (None, Ok(v)) = (dst, res) {
                        self.check_auto(v, len, addr);
                    }
                    let model_res = self.model.map(&want, len, dst, addr);
                    assert_eq!(res, model_res, "copy {op:?}");
                }
                Op::SetAllowed(ref ranges) => {
                    // The IOCTL layer rejects start >= last and overlaps; feed valid sets only.
                    let mut rs: Vec<(u64, u64)> = Vec::new();
                    for &(s, l) in ranges {
                        if s < l && !rs.iter().any(|&r| isect(r, (s, l))) {
                            rs.push((s, l));
                        }
                    }
                    let got = self.iopt.set_allowed(&rs);
                    let want = if rs.iter().any(|&r| self.model.reserved_hits(r)) {
                        Err(Errno::EADDRINUSE)
                    } else {
                        self.model.allowed = rs;
                        Ok(())
                    };
                    assert_eq!(got, want, "{op:?}");
                }
                Op::Reserve(s, l) => {
                    let got = self.iopt.reserve(s, l, ReservedOwner::Test);
                    let r = (s, l);
                    let want = if self.model.area_hits(r)
                        || self.model.allowed.iter().any(|&x| isect(x, r))
                    {
                        Err(Errno::EADDRINUSE)
                    } else {
                        self.model.reserved.push(r);
                        Ok(())
                    };
                    assert_eq!(got, want, "{op:?}");
                }
                Op::Unreserve => {
                    self.iopt.remove_reserved(ReservedOwner::Test);
                    self.model.reserved.clear();
                }
            }
            self.check_state();
        }

        fn unmap(&mut self, s: u64, l: u64) {
            let got = self.iopt.unmap_range(s, l);
            let want = self.model.unmap(s, l);
            match (got, want) {
                (Ok(UnmapProgress::Done(g)), Ok(w)) => assert_eq!(g, w, "unmap {s:#x}..{l:#x}"),
                (Err(g), Err(w)) => assert_eq!(g, w, "unmap {s:#x}..{l:#x}"),
                (g, w) => panic!("unmap {s:#x}..={l:#x}: got {g:?}, model {w:?}"),
            }
        }

        fn check_state(&self) {
            let got: Vec<MArea> = self
                .iopt
                .areas()
                .map(|a| MArea {
                    iova: a.iova,
                    last: a.last,
                    pages: self
                        .pages
                        .iter()
                        .position(|(p, _)| Arc::ptr_eq(p, &a.pages))
                        .expect("known pages"),
                    start_byte: a.start_byte,
                })
                .collect();
            assert_eq!(got, self.model.areas);
            let mut rs = self.model.reserved.clone();
            rs.sort_unstable();
            let mut free = Vec::new();
            let mut cur = Some(0u64);
            for (s, l) in merged(rs) {
                let c = cur.unwrap();
                if s > c {
                    free.push((c, s - 1));
                }
                cur = l.checked_add(1);
                if cur.is_none() {
                    break;
                }
            }
            if let Some(c) = cur {
                free.push((c, u64::MAX));
            }
            assert_eq!(self.iopt.usable_ranges(), free);
            // Pins: with a domain, one user per area covering a page; none without.
            let mut users: BTreeMap<(usize, u64), u32> = BTreeMap::new();
            if self.domain.is_some() {
                for a in &self.model.areas {
                    let first = a.start_byte / PG;
                    let last = (a.start_byte + (a.last - a.iova)) / PG;
                    for i in first..=last {
                        *users.entry((a.pages, i)).or_default() += 1;
                    }
                }
            }
            for (idx, (p, _)) in self.pages.iter().enumerate() {
                let want = users.range((idx, 0)..=(idx, u64::MAX)).count() as u64;
                assert_eq!(p.npinned(), want, "npinned of pages {idx}");
                for (&(_, i), &n) in users.range((idx, 0)..=(idx, u64::MAX)) {
                    assert_eq!(p.pin_users(i), n, "pin users of page {i} of pages {idx}");
                }
            }
            if let Some(d) = &self.domain {
                assert_domain_mirrors(&self.iopt, d);
            }
        }
    }

    proptest! {
        #![proptest_config(proptest_config(384))]

        #[test]
        fn iopt_matches_model(
            with_domain in any::<bool>(),
            ops in proptest::collection::vec(op_strategy(), 1..48),
        ) {
            let mut h = Harness::new(with_domain);
            for op in &ops {
                h.step(op);
            }
            // Unmap everything: no area, no pin, nothing in the domain.
            h.unmap(0, u64::MAX);
            h.check_state();
            prop_assert_eq!(h.iopt.num_areas(), 0);
            prop_assert!(h.pages.iter().all(|(p, _)| p.npinned() == 0));
            if let Some(d) = &h.domain {
                prop_assert!(d.is_empty());
            }
        }
    }
}
