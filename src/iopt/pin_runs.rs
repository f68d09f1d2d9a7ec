//! The pins of one [`super::Pages`], kept as runs of pages with the same number of users.
//!
//! An area pins its whole span at once, so runs stay few (one per area for most mappings): pinning
//! or holding 256 MiB costs a handful of tree operations instead of one per 4 KiB page, and a large
//! guest's memory costs the daemon a few runs of bookkeeping, not tens of bytes per page. Frames
//! (physical addresses) are stored only for runs pinned for a domain that needs them.

use crate::narrow::usize_from;
use std::collections::BTreeMap;

/// Pages `[start, start + len)` of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    len: u64,
    users: u32,
    /// The frame of each page; None while only held for domains that pin by themselves.
    paddrs: Option<Vec<u64>>,
}

/// A part of `[first, last]` that a new pin must work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub start: u64,
    pub count: u64,
    /// Not pinned yet: must be charged (else only its frames are missing).
    pub fresh: bool,
}

#[derive(Debug, Default)]
pub struct PinRuns {
    runs: BTreeMap<u64, Run>,
    npinned: u64,
}

impl PinRuns {
    /// Distinct pages pinned.
    pub fn npinned(&self) -> u64 {
        self.npinned
    }

    /// Users of page `index` (0 when not pinned).
    pub fn users(&self, index: u64) -> u32 {
        self.run_at(index).map_or(0, |(_, r)| r.users)
    }

    fn run_at(&self, index: u64) -> Option<(u64, &Run)> {
        let (&s, r) = self.runs.range(..=index).next_back()?;
        (index < s + r.len).then_some((s, r))
    }

    /// Runs meeting `[first, last]`, clipped to it: (start, count, run).
    fn clipped(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, u64, &Run)> {
        let head = self.run_at(first).filter(|(s, _)| *s < first);
        head.into_iter()
            .chain(self.runs.range(first..=last).map(|(&s, r)| (s, r)))
            .map(move |(s, r)| {
                let lo = s.max(first);
                let hi = (s + r.len - 1).min(last);
                (lo, hi - lo + 1, r)
            })
    }

    /// What pinning `[first, last]` needs: the gaps (fresh pages) and, when `frames` are wanted,
    /// the pinned parts that have none. In order.
    pub fn needs(&self, first: u64, last: u64, frames: bool) -> Vec<Need> {
        let mut out = Vec::new();
        let mut cur = first;
        for (s, n, r) in self.clipped(first, last) {
            if s > cur {
                out.push(Need {
                    start: cur,
                    count: s - cur,
                    fresh: true,
                });
            }
            if frames && r.paddrs.is_none() {
                out.push(Need {
                    start: s,
                    count: n,
                    fresh: false,
                });
            }
            cur = s + n;
        }
        if cur <= last {
            out.push(Need {
                start: cur,
                count: last - cur + 1,
                fresh: true,
            });
        }
        out
    }

    /// Makes `at` the start of a run if a run covers it.
    fn split(&mut self, at: u64) {
        let Some((s, r)) = self.run_at(at).map(|(s, r)| (s, r.clone())) else {
            return;
        };
        if s == at {
            return;
        }
        let mut head = r;
        let tail_paddrs = head
            .paddrs
            .as_mut()
            .map(|p| p.split_off(usize_from(at - s)));
        let tail = Run {
            len: s + head.len - at,
            users: head.users,
            paddrs: tail_paddrs,
        };
        head.len = at - s;
        self.runs.insert(s, head);
        self.runs.insert(at, tail);
    }

    /// Joins neighbouring runs with the same users and the same kind of frames around
    /// `[first, last]`.
    fn coalesce(&mut self, first: u64, last: u64) {
        let start = self
            .run_at(first.saturating_sub(1))
            .map_or(first, |(s, _)| s);
        let keys: Vec<u64> = self
            .runs
            .range(start..=last.saturating_add(1))
            .map(|(&k, _)| k)
            .collect();
        let mut prev: Option<u64> = None;
        for k in keys {
            if let Some(p) = prev {
                let (pr, cr) = (&self.runs[&p], &self.runs[&k]);
                if p + pr.len == k
                    && pr.users == cr.users
                    && pr.paddrs.is_some() == cr.paddrs.is_some()
                {
                    let cur = self.runs.remove(&k).expect("present");
                    let pr = self.runs.get_mut(&p).expect("present");
                    pr.len += cur.len;
                    if let (Some(a), Some(b)) = (pr.paddrs.as_mut(), cur.paddrs) {
                        a.extend(b);
                    }
                    continue;
                }
            }
            prev = Some(k);
        }
    }

    /// Adds one user to `[first, last]`. `frames` holds the frames fetched for the needs
    /// ([`Self::needs`]) by their start. Returns the frames of the range when every page has
    /// them.
    pub fn add(
        &mut self,
        first: u64,
        last: u64,
        mut frames: BTreeMap<u64, Vec<u64>>,
        want_frames: bool,
    ) -> Option<Vec<u64>> {
        let needs = self.needs(first, last, want_frames);
        self.split(first);
        self.split(last + 1);
        for need in &needs {
            if need.fresh {
                self.npinned += need.count;
                self.runs.insert(
                    need.start,
                    Run {
                        len: need.count,
                        users: 0,
                        paddrs: frames.remove(&need.start),
                    },
                );
            } else if let Some(p) = frames.remove(&need.start) {
                if let Some(r) = self.runs.get_mut(&need.start) {
                    r.paddrs = Some(p);
                }
            }
        }
        for r in self.runs.range_mut(first..=last).map(|(_, r)| r) {
            r.users += 1;
        }
        let out = want_frames.then(|| {
            let mut v = Vec::with_capacity(usize_from(last - first + 1));
            for (_, r) in self.runs.range(first..=last) {
                match &r.paddrs {
                    Some(p) => v.extend_from_slice(p),
                    None => v.extend(std::iter::repeat_n(0, usize_from(r.len))),
                }
            }
            v
        });
        self.coalesce(first, last);
        out
    }

    /// Drops one user from `[first, last]`; returns the pages left without users.
    pub fn remove(&mut self, first: u64, last: u64) -> u64 {
        self.split(first);
        self.split(last + 1);
        let keys: Vec<u64> = self.runs.range(first..=last).map(|(&k, _)| k).collect();
        let mut released = 0;
        for k in keys {
            let r = self.runs.get_mut(&k).expect("present");
            r.users = r.users.saturating_sub(1);
            if r.users == 0 {
                released += r.len;
                self.runs.remove(&k);
            }
        }
        self.npinned -= released;
        self.coalesce(first, last);
        released
    }

    /// Every pinned page's frame, for pages whose frames are known.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs
            .values()
            .filter(|r| r.users > 0)
            .filter_map(|r| r.paddrs.as_deref())
            .flatten()
            .copied()
    }

    /// Runs in the map (tests: how compact it stays).
    #[cfg(test)]
    pub fn nruns(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;

    fn frames_for(needs: &[Need]) -> BTreeMap<u64, Vec<u64>> {
        needs
            .iter()
            .map(|n| {
                (
                    n.start,
                    (n.start..n.start + n.count).map(|i| i * 4096).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn holds_stay_one_run_and_frames_come_later() {
        let mut p = PinRuns::default();
        assert_eq!(p.add(0, 65535, BTreeMap::new(), false), None);
        assert_eq!((p.npinned(), p.nruns()), (65536, 1));
        // Overlapping pin with frames: only the held part needs frames, the tail is fresh.
        let needs = p.needs(65000, 70000, true);
        assert_eq!(
            needs,
            vec![
                Need {
                    start: 65000,
                    count: 536,
                    fresh: false
                },
                Need {
                    start: 65536,
                    count: 4465,
                    fresh: true
                }
            ]
        );
        let got = p.add(65000, 70000, frames_for(&needs), true).unwrap();
        assert_eq!(got[0], 65000 * 4096);
        assert_eq!(got.len(), 5001);
        assert_eq!(p.users(64999), 1);
        assert_eq!(p.users(65000), 2);
        assert_eq!(p.users(70000), 1);
        assert_eq!(p.npinned(), 70001);
        assert_eq!(p.remove(65000, 70000), 4465);
        assert_eq!(p.npinned(), 65536);
        assert_eq!(p.remove(0, 65535), 65536);
        assert_eq!((p.npinned(), p.nruns()), (0, 0));
    }

    /// Against a per-page model, over random overlapping pins and unpins.
    #[test]
    fn agrees_with_a_per_page_model() {
        use proptest::prelude::*;
        let ops =
            proptest::collection::vec((0u64..64, 0u64..24, any::<bool>(), any::<bool>()), 1..60);
        proptest!(ProptestConfig::with_cases(256), |(ops in ops)| {
            let mut p = PinRuns::default();
            let mut model = vec![(0u32, false); 96];
            let mut taken: Vec<(u64, u64)> = Vec::new();
            for (first, n, frames, unpin) in ops {
                if unpin && !taken.is_empty() {
                    let (f, l) = taken.remove((first as usize) % taken.len());
                    let released = p.remove(f, l);
                    let mut want = 0;
                    for m in &mut model[f as usize..=l as usize] {
                        m.0 -= 1;
                        if m.0 == 0 { want += 1; m.1 = false; }
                    }
                    prop_assert_eq!(released, want);
                } else {
                    let last = first + n;
                    let needs = p.needs(first, last, frames);
                    let got = p.add(first, last, frames_for(&needs), frames);
                    for (i, m) in model[first as usize..=last as usize].iter_mut().enumerate() {
                        m.0 += 1;
                        m.1 |= frames;
                        if let Some(g) = &got {
                            prop_assert_eq!(g[i], (first + i as u64) * 4096);
                        }
                    }
                    taken.push((first, last));
                }
                for (i, m) in model.iter().enumerate() {
                    prop_assert_eq!(p.users(i as u64), m.0, "page {}", i);
                }
                prop_assert_eq!(p.npinned(), model.iter().filter(|m| m.0 > 0).count() as u64);
            }
        });
    }
}
