//! The index of holes that automatic IOVA allocation searches: the free IOVA runs between used
//! ranges (areas and reserved ranges), each maximal, in a treap keyed by start and augmented with
//! the largest hole of each subtree. "The lowest hole of at least N bytes starting at or after X"
//! is then one descent instead of a walk over every area below it.
//!
//! The index is brought up to date lazily: the sites that change what is used only note the range
//! they touched ([`HoleIndex::touch`], [`HoleIndex::mapped`], [`HoleIndex::unmapped`]: O(1)); the
//! next allocation that searches the index recomputes the holes around the noted ranges from the
//! areas and reserved ranges ([`HoleIndex::refresh`]). Fixed-IOVA map and unmap, the hot path
//! with a vIOMMU, so cost no tree update at all; an area unmapped right after it was mapped (a
//! short-lived mapping) leaves no note; and a table whose allocations all fit early (see
//! `alloc.rs`) never builds the index nor pays its 40 bytes per hole. Past a bound on the noted
//! ranges the index is dropped and rebuilt by the next search, which keeps the log small and the
//! rebuild amortised (it comes after at least a quarter as many changes as there are holes).
//!
//! Why lazy refreshes are exact: let F be the free set and F' the set the index describes. The
//! index always holds the maximal runs of F', and F' = F outside the noted ranges. Refreshing a
//! noted range [s, l] removes the index's holes touching [s - 1, l + 1] and puts back the runs of
//! F over the region they and [s, l] cover; that region ends where F' is not free (or at 0 /
//! u64::MAX), so the runs stay maximal, and afterwards F' = F on the region. Once every noted
//! range is refreshed, in any order, F' = F.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::ops::ControlFlow;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    start: u64,
    last: u64,
    /// Largest `last - start` in this node's subtree.
    max_span: u64,
    left: u32,
    right: u32,
    /// Heap order (a parent's is at least its children's); random, so the expected depth is
    /// logarithmic whatever IOVAs a client chooses.
    prio: u32,
}

// What a hole costs, as the module docs say.
const _: () = assert!(std::mem::size_of::<Node>() == 40);

/// A treap of disjoint holes `[start, last]`, in an arena (indices, a free list through `left`).
pub(super) struct HoleTree {
    nodes: Vec<Node>,
    free: u32,
    root: u32,
    len: usize,
    rng: u64,
}

impl HoleTree {
    /// The tree of `runs` (sorted, disjoint), built in O(n).
    pub fn new(runs: &[(u64, u64)]) -> Self {
        // A per-tree random seed: a client cannot line its IOVAs up with the priorities.
        let seed = RandomState::new().hash_one(runs.len()) | 1;
        let mut tree = Self {
            nodes: Vec::with_capacity(runs.len()),
            free: NIL,
            root: NIL,
            len: 0,
            rng: seed,
        };
        tree.root = tree.build(runs);
        tree
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn node(&self, n: u32) -> &Node {
        &self.nodes[n as usize]
    }

    fn node_mut(&mut self, n: u32) -> &mut Node {
        &mut self.nodes[n as usize]
    }

    fn max_span(&self, n: u32) -> Option<u64> {
        (n != NIL).then(|| self.node(n).max_span)
    }

    fn next_prio(&mut self) -> u32 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    fn alloc_node(&mut self, start: u64, last: u64) -> u32 {
        let node = Node {
            start,
            last,
            max_span: last - start,
            left: NIL,
            right: NIL,
            prio: self.next_prio(),
        };
        self.len += 1;
        if self.free != NIL {
            let n = self.free;
            self.free = self.node(n).left;
            *self.node_mut(n) = node;
            return n;
        }
        let n = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&n| n != NIL)
            .expect("fewer than 2^32 holes");
        self.nodes.push(node);
        n
    }

    fn free_node(&mut self, n: u32) {
        self.node_mut(n).left = self.free;
        self.free = n;
        self.len -= 1;
    }

    fn free_subtree(&mut self, n: u32) {
        let mut stack = vec![n];
        while let Some(n) = stack.pop() {
            if n == NIL {
                continue;
            }
            let Node { left, right, .. } = *self.node(n);
            stack.push(left);
            stack.push(right);
            self.free_node(n);
        }
    }

    /// Recomputes `n`'s augmentation from its children.
    fn pull(&mut self, n: u32) {
        let Node {
            start,
            last,
            left,
            right,
            ..
        } = *self.node(n);
        let mut max = last - start;
        for child in [left, right] {
            max = max.max(self.max_span(child).unwrap_or(0));
        }
        self.node_mut(n).max_span = max;
    }

    /// A subtree of `runs` (sorted, disjoint): a Cartesian tree on fresh priorities, built with a
    /// stack of its right spine; a node is final (and pulled) when it leaves the stack.
    fn build(&mut self, runs: &[(u64, u64)]) -> u32 {
        let mut spine: Vec<u32> = Vec::new();
        for &(start, last) in runs {
            let n = self.alloc_node(start, last);
            let prio = self.node(n).prio;
            let mut below = NIL;
            while let Some(&top) = spine.last() {
                if self.node(top).prio >= prio {
                    break;
                }
                spine.pop();
                self.pull(top);
                below = top;
            }
            self.node_mut(n).left = below;
            if let Some(&top) = spine.last() {
                self.node_mut(top).right = n;
            }
            spine.push(n);
        }
        // The bottom of the spine has the highest priority: the root.
        let root = spine.first().copied().unwrap_or(NIL);
        while let Some(top) = spine.pop() {
            self.pull(top);
        }
        root
    }

    /// Splits `n` into the holes starting before `key` and the rest.
    fn split(&mut self, n: u32, key: u64) -> (u32, u32) {
        if n == NIL {
            return (NIL, NIL);
        }
        if self.node(n).start < key {
            let (mid, right) = self.split(self.node(n).right, key);
            self.node_mut(n).right = mid;
            self.pull(n);
            (n, right)
        } else {
            let (left, mid) = self.split(self.node(n).left, key);
            self.node_mut(n).left = mid;
            self.pull(n);
            (left, n)
        }
    }

    /// Joins two subtrees, every hole of `a` below every hole of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.node(a).prio >= self.node(b).prio {
            let right = self.merge(self.node(a).right, b);
            self.node_mut(a).right = right;
            self.pull(a);
            a
        } else {
            let left = self.merge(a, self.node(b).left);
            self.node_mut(b).left = left;
            self.pull(b);
            b
        }
    }

    /// Calls `f` on each hole intersecting `[from, to]` with `last - start >= min_span`, in
    /// ascending order, until it breaks; subtrees without such a hole are skipped whole.
    pub fn scan<B>(
        &self,
        from: u64,
        to: u64,
        min_span: u64,
        f: &mut impl FnMut(u64, u64) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        if !self.has_span(self.root, min_span) {
            return ControlFlow::Continue(());
        }
        self.scan_from(self.root, from, to, min_span, f)
    }

    /// Whether the subtree `n` holds a hole with `last - start >= min_span`.
    fn has_span(&self, n: u32, min_span: u64) -> bool {
        n != NIL && self.node(n).max_span >= min_span
    }

    /// [`Self::scan`] of the subtree `n`, which holds a long enough hole; recursion to the left,
    /// a loop to the right.
    fn scan_from<B>(
        &self,
        mut n: u32,
        from: u64,
        to: u64,
        min_span: u64,
        f: &mut impl FnMut(u64, u64) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        loop {
            let node = *self.node(n);
            // Holes left of one starting before `from` end before it: none of them intersects.
            if node.start >= from && self.has_span(node.left, min_span) {
                self.scan_from(node.left, from, to, min_span, f)?;
            }
            if node.start > to {
                return ControlFlow::Continue(());
            }
            if node.last >= from && node.last - node.start >= min_span {
                f(node.start, node.last)?;
            }
            if !self.has_span(node.right, min_span) {
                return ControlFlow::Continue(());
            }
            n = node.right;
        }
    }

    /// Inserts the hole `[start, last]` (disjoint from the others): one descent to where its
    /// priority belongs, then a split of the subtree there (small, expectedly).
    fn insert(&mut self, start: u64, last: u64) {
        let new = self.alloc_node(start, last);
        self.root = self.insert_at(self.root, new);
    }

    fn insert_at(&mut self, n: u32, new: u32) -> u32 {
        let (key, prio) = (self.node(new).start, self.node(new).prio);
        if n == NIL || prio > self.node(n).prio {
            let (left, right) = self.split(n, key);
            let node = self.node_mut(new);
            node.left = left;
            node.right = right;
            self.pull(new);
            return new;
        }
        if key < self.node(n).start {
            let left = self.insert_at(self.node(n).left, new);
            self.node_mut(n).left = left;
        } else {
            let right = self.insert_at(self.node(n).right, new);
            self.node_mut(n).right = right;
        }
        self.pull(n);
        n
    }

    /// Removes the hole starting at `start` (which exists).
    fn remove(&mut self, start: u64) {
        self.root = self.remove_at(self.root, start);
    }

    fn remove_at(&mut self, n: u32, key: u64) -> u32 {
        assert_ne!(n, NIL, "hole {key:#x} in the index");
        let Node {
            start, left, right, ..
        } = *self.node(n);
        if key == start {
            let joined = self.merge(left, right);
            self.free_node(n);
            return joined;
        }
        if key < start {
            let left = self.remove_at(left, key);
            self.node_mut(n).left = left;
        } else {
            let right = self.remove_at(right, key);
            self.node_mut(n).right = right;
        }
        self.pull(n);
        n
    }

    /// Replaces the holes `old` (consecutive, as [`Self::scan`] gave them) by `runs` (sorted,
    /// disjoint, between the holes around `old`). When the count changes by at most one the
    /// nodes are rewritten in place plus one insertion or removal; otherwise the range is split
    /// out and rebuilt.
    pub fn replace_holes(&mut self, old: &[(u64, u64)], runs: &[(u64, u64)]) {
        let (Some(&(from, _)), Some(&(to, _))) = (old.first(), old.last()) else {
            match runs {
                [] => {}
                &[(start, last)] => self.insert(start, last),
                _ => self.root = self.rebuild_range(self.root, runs),
            }
            return;
        };
        match runs.len() as isize - old.len() as isize {
            0 => self.overwrite(from, to, runs),
            1 => {
                self.overwrite(from, to, &runs[..old.len()]);
                let (start, last) = runs[old.len()];
                self.insert(start, last);
            }
            -1 => {
                self.remove(to);
                if let Some(&(to, _)) = old.get(old.len().wrapping_sub(2)) {
                    self.overwrite(from, to, runs);
                }
            }
            _ => self.replace(from, to, runs),
        }
    }

    /// Merges a subtree of `runs` into the tree rooted at `root`, `runs` lying in one gap
    /// between the holes there.
    fn rebuild_range(&mut self, root: u32, runs: &[(u64, u64)]) -> u32 {
        let key = runs.first().map_or(0, |r| r.0);
        let (before, after) = self.split(root, key);
        let new = self.build(runs);
        let joined = self.merge(before, new);
        self.merge(joined, after)
    }

    /// Replaces the holes starting in `[from, to]` by `runs` (sorted, disjoint, and between the
    /// holes before `from` and after `to`).
    fn replace(&mut self, from: u64, to: u64, runs: &[(u64, u64)]) {
        let (before, rest) = self.split(self.root, from);
        let (old, after) = match to.checked_add(1) {
            Some(end) => self.split(rest, end),
            None => (rest, NIL),
        };
        self.free_subtree(old);
        let new = self.build(runs);
        let joined = self.merge(before, new);
        self.root = self.merge(joined, after);
    }

    /// Overwrites the holes starting in `[from, to]`, in order, with `runs` (as many, sorted, and
    /// between the holes around): the shape stays, only the augmentation on their paths changes.
    fn overwrite(&mut self, from: u64, to: u64, runs: &[(u64, u64)]) {
        let mut next = runs.iter();
        self.overwrite_from(self.root, from, to, &mut next);
        debug_assert!(next.next().is_none(), "as many runs as holes");
    }

    fn overwrite_from<'r>(
        &mut self,
        n: u32,
        from: u64,
        to: u64,
        runs: &mut impl Iterator<Item = &'r (u64, u64)>,
    ) {
        if n == NIL {
            return;
        }
        let Node {
            start, left, right, ..
        } = *self.node(n);
        if start >= from {
            self.overwrite_from(left, from, to, runs);
        }
        if start > to {
            self.pull(n);
            return;
        }
        if start >= from {
            let &(new_start, new_last) = runs.next().expect("as many runs as holes");
            let node = self.node_mut(n);
            node.start = new_start;
            node.last = new_last;
        }
        self.overwrite_from(right, from, to, runs);
        self.pull(n);
    }

    /// The holes intersecting `[from, to]`, in order (tests).
    #[cfg(test)]
    pub fn collect(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let _ = self.scan::<()>(from, to, 0, &mut |s, l| {
            out.push((s, l));
            ControlFlow::Continue(())
        });
        out
    }

    /// Checks the treap's invariants (tests).
    #[cfg(test)]
    pub fn check(&self) {
        fn walk(t: &HoleTree, n: u32, out: &mut Vec<(u64, u64)>) -> u64 {
            if n == NIL {
                return 0;
            }
            let node = *t.node(n);
            for child in [node.left, node.right] {
                if child != NIL {
                    assert!(t.node(child).prio <= node.prio, "heap order");
                }
            }
            let l = walk(t, node.left, out);
            out.push((node.start, node.last));
            let r = walk(t, node.right, out);
            let max = (node.last - node.start).max(l).max(r);
            assert_eq!(node.max_span, max, "augmentation of {:#x}", node.start);
            max
        }
        let mut runs = Vec::new();
        walk(self, self.root, &mut runs);
        assert_eq!(runs.len(), self.len);
        for w in runs.windows(2) {
            assert!(
                w[0].1.checked_add(1).is_some_and(|e| e < w[1].0),
                "holes {:x?} and {:x?} overlap or touch",
                w[0],
                w[1]
            );
        }
    }
}

/// The hole index of one io_pagetable and the ranges changed since it was last refreshed.
#[derive(Default)]
pub(super) struct HoleIndex {
    /// `None`: not built (never needed yet, or dropped after too many changes).
    tree: Option<HoleTree>,
    /// Ranges whose used/free state may differ from `tree`; adjacent notes are joined.
    pending: Vec<(u64, u64)>,
    /// The last note is exactly a range [`Self::mapped`] made used, untouched since: unmapping
    /// exactly that range takes the note back.
    last_undoable: bool,
    /// Scratch for [`Self::refresh`]: the holes of a region before and after.
    old: Vec<(u64, u64)>,
    new: Vec<(u64, u64)>,
}

impl std::fmt::Debug for HoleIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoleIndex")
            .field("holes", &self.tree.as_ref().map(HoleTree::len))
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl HoleIndex {
    /// Notes that what is used in `[start, last]` may have changed.
    pub fn touch(&mut self, start: u64, last: u64) {
        self.note(start, last, false);
    }

    /// Notes that `[start, last]`, all free, is now used by one area.
    pub fn mapped(&mut self, start: u64, last: u64) {
        self.note(start, last, true);
    }

    /// Notes that the area `[start, last]` is gone. Right after its [`Self::mapped`] (a short
    /// mapping, or an allocation that failed further on) the table is as before: no note.
    pub fn unmapped(&mut self, start: u64, last: u64) {
        if self.last_undoable && self.pending.last() == Some(&(start, last)) {
            self.pending.pop();
            self.last_undoable = false;
            return;
        }
        self.note(start, last, false);
    }

    fn note(&mut self, start: u64, last: u64, undoable: bool) {
        let Some(tree) = &self.tree else { return };
        // An undoable note stays exact: it joins nothing.
        if let (Some(prev), false) = (self.pending.last_mut(), undoable) {
            let joins = prev.0 <= last.saturating_add(1) && start <= prev.1.saturating_add(1);
            if joins {
                *prev = (prev.0.min(start), prev.1.max(last));
                self.last_undoable = false;
                return;
            }
        }
        // Refreshing a note costs O(log n); past this many, rebuilding (O(n)) is as cheap.
        if self.pending.len() >= 64 + tree.len() / 4 {
            self.tree = None;
            self.pending = Vec::new();
            self.last_undoable = false;
            return;
        }
        self.pending.push((start, last));
        self.last_undoable = undoable;
    }

    /// The index if it is built and nothing changed since its last refresh.
    pub fn fresh(&self) -> Option<&HoleTree> {
        self.tree.as_ref().filter(|_| self.pending.is_empty())
    }

    /// Builds the index or brings it up to date. `free_runs(start, last)` gives the maximal free
    /// runs of the table inside `[start, last]` (clipped to it), in order.
    pub fn refresh<I: Iterator<Item = (u64, u64)>>(&mut self, free_runs: impl Fn(u64, u64) -> I) {
        let tree = self.tree.get_or_insert_with(|| {
            let all: Vec<(u64, u64)> = free_runs(0, u64::MAX).collect();
            HoleTree::new(&all)
        });
        self.last_undoable = false;
        for (start, last) in self.pending.drain(..) {
            // The holes touching [start - 1, last + 1]; they and [start, last] make the region
            // to redo.
            self.old.clear();
            let _ = tree.scan::<()>(
                start.saturating_sub(1),
                last.saturating_add(1),
                0,
                &mut |s, l| {
                    self.old.push((s, l));
                    ControlFlow::Continue(())
                },
            );
            let region_start = self.old.first().map_or(start, |h| h.0.min(start));
            let region_last = self.old.last().map_or(last, |h| h.1.max(last));
            self.new.clear();
            self.new.extend(free_runs(region_start, region_last));
            // A range mapped and unmapped again since changes nothing.
            if self.old != self.new {
                tree.replace_holes(&self.old, &self.new);
            }
        }
    }

    /// Whether the index exists (tests: the drop-and-rebuild bound).
    #[cfg(test)]
    pub fn is_built(&self) -> bool {
        self.tree.is_some()
    }

    /// Checks the tree's invariants, if there is one (tests).
    #[cfg(test)]
    pub fn check(&self) {
        if let Some(tree) = &self.tree {
            tree.check();
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "tests narrow the inputs they build themselves"
)]
mod tests {
    use super::*;

    fn scan_all(t: &HoleTree, from: u64, to: u64, min_span: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let _ = t.scan::<()>(from, to, min_span, &mut |s, l| {
            out.push((s, l));
            ControlFlow::Continue(())
        });
        out
    }

    #[test]
    fn scan_visits_long_enough_holes_in_range_in_order() {
        // Holes of span 0..=9 in a shuffled-looking pattern, 100 apart.
        let runs: Vec<(u64, u64)> = (0..1000u64)
            .map(|i| (i * 100, i * 100 + i * 7 % 10))
            .collect();
        let t = HoleTree::new(&runs);
        t.check();
        for (from, to, min) in [
            (0, u64::MAX, 0),
            (150, 5000, 6),
            (0, 99_999, 9),
            (501, 501, 0),
        ] {
            let want: Vec<(u64, u64)> = runs
                .iter()
                .copied()
                .filter(|&(s, l)| l >= from && s <= to && l - s >= min)
                .collect();
            assert_eq!(scan_all(&t, from, to, min), want, "{from} {to} {min}");
        }
        // A hole starting before `from` that reaches it counts.
        assert_eq!(scan_all(&t, 203, 250, 0), vec![(200, 204)]);
        assert_eq!(scan_all(&t, 205, 299, 0), vec![]);
        let empty = HoleTree::new(&[]);
        assert!(scan_all(&empty, 0, u64::MAX, 0).is_empty());
    }

    #[test]
    fn replace_holes_matches_a_sorted_list() {
        // Even bounds only: disjoint holes then never touch, as in the index.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut model: Vec<(u64, u64)> = (0..300u64).map(|i| (i * 60, i * 60 + 20)).collect();
        let mut t = HoleTree::new(&model);
        for _ in 0..3000 {
            let from = 2 * next(10_000);
            let to = from + 2 * next(200);
            let old = t.collect(from, to);
            let want: Vec<(u64, u64)> = model
                .iter()
                .copied()
                .filter(|&(s, l)| l >= from && s <= to)
                .collect();
            assert_eq!(old, want);
            let first = old.first().map_or(from, |h| h.0.min(from));
            let last = old.last().map_or(to, |h| h.1.max(to));
            // As many runs as before, one more or one fewer mostly; sometimes anything.
            let count = match next(4) {
                0 => old.len(),
                1 => old.len() + 1,
                2 => old.len().saturating_sub(1),
                _ => next(6) as usize,
            };
            let room = ((last - first) / 2 + 1) as usize;
            let mut points = std::collections::BTreeSet::new();
            while points.len() < (2 * count).min(room / 2 * 2) {
                points.insert(first + 2 * next(room as u64));
            }
            let points: Vec<u64> = points.into_iter().collect();
            let runs: Vec<(u64, u64)> = points.chunks(2).map(|p| (p[0], p[1])).collect();
            t.replace_holes(&old, &runs);
            t.check();
            model.retain(|h| !old.contains(h));
            model.extend(&runs);
            model.sort_unstable();
            assert_eq!(t.collect(0, u64::MAX), model);
        }
        // The extremes: everything gone, then one hole of the whole space.
        let all = t.collect(0, u64::MAX);
        t.replace_holes(&all, &[]);
        t.check();
        assert_eq!(t.len(), 0);
        t.replace_holes(&[], &[(0, u64::MAX)]);
        t.check();
        assert_eq!(scan_all(&t, 0, 0, u64::MAX), vec![(0, u64::MAX)]);
    }
}
