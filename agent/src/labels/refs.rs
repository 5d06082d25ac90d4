//! [`DenseRefMap`]: a map keyed by [`SeriesRef`] that is an array where the refs are dense.

use std::collections::VecDeque;

use super::{RefMap, SeriesRef};

/// A map ref → `V` for the tables that look a series up by ref once per sample (the instance's
/// series table, the remote_write series tables). A WAL hands refs out densely and in order, so
/// most refs index a deque (`dense[r - base]`): the refs of one scrape are adjacent, and looking
/// them up walks memory in order instead of one cache miss per sample in a hash table. Refs far
/// outside it (a sparse or foreign WAL, a checkpoint whose series were mostly dropped) go to a
/// hash map, so memory stays bounded by the number of entries whatever the refs are. After
/// removals, [`compact`](DenseRefMap::compact) pops the empty front of the deque and, once the
/// deque is more than half holes, moves its sparse front to the map: refs keep growing under
/// series churn, the deque does not.
pub struct DenseRefMap<V> {
    /// The ref of `dense[0]`; set by the first insert.
    base: Option<u64>,
    dense: VecDeque<Option<V>>,
    sparse: RefMap<V>,
    /// Entries in `dense`.
    dense_len: usize,
}

impl<V> Default for DenseRefMap<V> {
    fn default() -> Self {
        DenseRefMap {
            base: None,
            dense: VecDeque::new(),
            sparse: RefMap::default(),
            dense_len: 0,
        }
    }
}

impl<V> DenseRefMap<V> {
    /// A ref is stored densely when it falls at most this many slots past the end (or the
    /// dense part stays at most half empty).
    pub const MAX_GAP: u64 = 1024;

    #[inline]
    pub fn get(&self, r: SeriesRef) -> Option<&V> {
        if let Some(Some(e)) = self.dense_index(r).and_then(|i| self.dense.get(i)) {
            return Some(e);
        }
        // Not in the dense part: sparse, possibly a ref that the dense part grew over later.
        if self.sparse.is_empty() {
            return None;
        }
        self.sparse.get(&r)
    }

    pub fn contains(&self, r: SeriesRef) -> bool {
        self.get(r).is_some()
    }

    #[inline]
    fn dense_index(&self, r: SeriesRef) -> Option<usize> {
        r.0.checked_sub(self.base?)
            .and_then(|i| usize::try_from(i).ok())
    }

    /// Stores `v` under `r`; returns what was stored there before.
    pub fn insert(&mut self, r: SeriesRef, v: V) -> Option<V> {
        let base = *self.base.get_or_insert(r.0);
        if r.0 < base && self.dense_len == 0 && self.sparse.is_empty() {
            // Empty: start the dense part here.
            self.dense.clear();
            self.base = Some(r.0);
            return self.insert(r, v);
        }
        if let Some(i) = self.dense_index(r) {
            let len = self.dense.len();
            let old = if let Some(slot) = self.dense.get_mut(i) {
                let old = slot.replace(v);
                if old.is_none() {
                    self.dense_len += 1;
                }
                old
            } else {
                let gap = (i - len) as u64;
                if gap > Self::MAX_GAP && gap > (self.len() as u64) {
                    return self.sparse.insert(r, v);
                }
                self.dense.resize_with(i, || None);
                self.dense.push_back(Some(v));
                self.dense_len += 1;
                None
            };
            // A ref stored sparsely before the dense part grew over it moves here (a ref is
            // never in both parts).
            if old.is_none() && !self.sparse.is_empty() {
                return self.sparse.remove(&r);
            }
            return old;
        }
        self.sparse.insert(r, v)
    }

    /// Forgets `r`; returns what was stored. Call [`compact`](Self::compact) after removals.
    pub fn remove(&mut self, r: SeriesRef) -> Option<V> {
        let in_dense = self
            .dense_index(r)
            .and_then(|i| self.dense.get_mut(i))
            .and_then(Option::take);
        if in_dense.is_some() {
            self.dense_len -= 1;
            in_dense
        } else if !self.sparse.is_empty() {
            self.sparse.remove(&r)
        } else {
            None
        }
    }

    /// Keeps only the entries for which `keep` returns true, then compacts.
    pub fn retain(&mut self, mut keep: impl FnMut(SeriesRef, &mut V) -> bool) {
        if let Some(base) = self.base {
            for (i, slot) in self.dense.iter_mut().enumerate() {
                if let Some(v) = slot {
                    if !keep(SeriesRef(base + i as u64), v) {
                        *slot = None;
                        self.dense_len -= 1;
                    }
                }
            }
        }
        self.sparse.retain(|r, v| keep(*r, v));
        self.compact();
    }

    /// After removals: drops the empty front of the dense part and, when it is more than half
    /// holes, moves its entries before the longest at-least-half-full suffix to the map.
    pub fn compact(&mut self) {
        while matches!(self.dense.front(), Some(None)) {
            self.dense.pop_front();
            if let Some(b) = &mut self.base {
                *b += 1;
            }
        }
        if self.dense.len() as u64 <= 2 * self.dense_len as u64 + Self::MAX_GAP {
            return;
        }
        // The cut: the smallest index from which the rest is at least half full.
        let (mut live, mut cut) = (0usize, self.dense.len());
        for (i, slot) in self.dense.iter().enumerate().rev() {
            live += usize::from(slot.is_some());
            if 2 * live >= self.dense.len() - i {
                cut = i;
            }
        }
        let Some(base) = self.base else { return };
        for (i, slot) in self.dense.drain(..cut).enumerate() {
            if let Some(e) = slot {
                self.sparse.insert(SeriesRef(base + i as u64), e);
                self.dense_len -= 1;
            }
        }
        self.base = Some(base + cut as u64);
    }

    pub fn len(&self) -> usize {
        self.dense_len + self.sparse.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the map itself (not of what its values point to).
    pub fn heap_bytes(&self) -> usize {
        let sparse = self.sparse.capacity();
        let buckets = match sparse {
            0 => 0,
            c if c < 8 => (c + 1).next_power_of_two(),
            c => (c * 8 / 7).next_power_of_two(),
        };
        self.dense.capacity() * std::mem::size_of::<Option<V>>()
            + buckets * (std::mem::size_of::<(SeriesRef, V)>() + 1)
    }

    /// Entries in the deque, holes included (for tests of the layout).
    #[cfg(test)]
    pub fn dense_span(&self) -> usize {
        self.dense.len()
    }

    /// Entries in the hash map (for tests of the layout).
    #[cfg(test)]
    pub fn sparse_len(&self) -> usize {
        self.sparse.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn r(n: u64) -> SeriesRef {
        SeriesRef(n)
    }

    fn name_of(t: &DenseRefMap<String>, at: SeriesRef) -> Option<String> {
        t.get(at).cloned()
    }

    #[test]
    fn dense_for_ordered_refs_and_correct_for_sparse_ones() {
        let mut t = DenseRefMap::default();
        // A checkpoint starting at ref 1000, then refs in order with small holes.
        for n in (1000..1100).step_by(3) {
            assert_eq!(t.insert(r(n), n.to_string()), None);
        }
        t.insert(r(1200), "<dropped>".to_string());
        // Far away, below the base, and at the very top: the sparse map.
        t.insert(r(5_000_000), "far".into());
        t.insert(r(3), "below".into());
        t.insert(r(u64::MAX), "max".into());
        assert!(t.dense_span() <= 201, "dense part {}", t.dense_span());
        assert_eq!(t.sparse_len(), 3);
        assert_eq!(t.len(), 34 + 1 + 3);
        assert_eq!(name_of(&t, r(1000)).as_deref(), Some("1000"));
        assert_eq!(name_of(&t, r(1099)).as_deref(), Some("1099"));
        assert_eq!(name_of(&t, r(1001)), None);
        assert_eq!(name_of(&t, r(1200)).as_deref(), Some("<dropped>"));
        assert_eq!(name_of(&t, r(5_000_000)).as_deref(), Some("far"));
        assert_eq!(name_of(&t, r(3)).as_deref(), Some("below"));
        assert_eq!(name_of(&t, r(u64::MAX)).as_deref(), Some("max"));
        assert_eq!(name_of(&t, r(4)), None);
        assert_eq!(name_of(&t, r(999)), None);
        // Replacing keeps the count and returns the old value.
        assert_eq!(t.insert(r(1000), "again".into()).as_deref(), Some("1000"));
        assert_eq!(t.insert(r(3), "again".into()).as_deref(), Some("below"));
        assert_eq!(t.len(), 38);
        assert_eq!(name_of(&t, r(1000)).as_deref(), Some("again"));
        assert_eq!(name_of(&t, r(3)).as_deref(), Some("again"));
        assert_eq!(t.remove(r(3)).as_deref(), Some("again"));
        assert_eq!(t.remove(r(3)), None);
        assert_eq!(t.remove(r(1099)).as_deref(), Some("1099"));
        assert_eq!(t.len(), 36);
    }

    /// Under churn refs keep growing while old series are removed: the map stays the size of
    /// what it holds, a few long-lived series included.
    #[test]
    fn stays_bounded_under_churn() {
        let mut t = DenseRefMap::default();
        for n in 1..=5 {
            t.insert(r(n), "long_lived".to_string());
        }
        let mut next = 6u64;
        for round in 0..200 {
            let batch: Vec<u64> = (next..next + 1000).collect();
            for &n in &batch {
                t.insert(r(n), "churn".into());
            }
            if round % 2 == 0 {
                for &n in &batch[..batch.len() - 100] {
                    t.remove(r(n));
                }
                t.compact();
            } else {
                // The same through `retain`.
                let drop_below = next + 900;
                t.retain(|r, _| r.0 <= 5 || r.0 < next || r.0 >= drop_below);
            }
            next += 1000;
        }
        assert_eq!(t.len(), 5 + 200 * 100);
        assert!(
            t.dense_span() <= 2 * t.len() + 2 * DenseRefMap::<String>::MAX_GAP as usize,
            "dense {}",
            t.dense_span()
        );
        for n in 1..=5 {
            assert_eq!(name_of(&t, r(n)).as_deref(), Some("long_lived"));
        }
        assert_eq!(name_of(&t, r(next - 1)).as_deref(), Some("churn"));
        assert_eq!(name_of(&t, r(next - 101)), None);
    }

    proptest::proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(
            (proptest::prop_oneof![0u64..5_000, proptest::num::u64::ANY], 0u8..10), 0..300)) {
            let mut t = DenseRefMap::default();
            let mut m = std::collections::BTreeMap::new();
            for (i, (n, op)) in ops.iter().enumerate() {
                match op {
                    0..=2 => {
                        proptest::prop_assert_eq!(t.remove(r(*n)), m.remove(n));
                        if i % 7 == 0 {
                            t.compact();
                        }
                    }
                    3 => {
                        // Drop every entry whose ref shares the low bit of this one.
                        t.retain(|r, _| r.0 % 2 != n % 2);
                        m.retain(|k, _| k % 2 != n % 2);
                    }
                    _ => {
                        proptest::prop_assert_eq!(
                            t.insert(r(*n), i.to_string()),
                            m.insert(*n, i.to_string())
                        );
                    }
                }
                proptest::prop_assert_eq!(t.len(), m.len());
            }
            for (n, name) in &m {
                proptest::prop_assert_eq!(name_of(&t, r(*n)), Some(name.clone()));
            }
            for n in [0u64, 1, 4_999, 5_000, u64::MAX - 1] {
                if !m.contains_key(&n) {
                    proptest::prop_assert_eq!(name_of(&t, r(n)), None);
                }
            }
        }
    }
}
