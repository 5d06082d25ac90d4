//! The label hasher and the map for series refs.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};

use super::{LabelsRef, SeriesRef};

/// The one hasher for label sets (and for the series texts the scrape cache keys): xxHash64
/// with a seed over the set's wire form ([`LabelsRef::write_wire`]), so equal label sets hash
/// equally whichever form they are in.
///
/// A hash never stands for a label set: tables hash to find candidates and compare the sets.
/// The seed is what keeps a target from choosing label values that all land in one bucket
/// (which would make lookups slow, not wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hasher {
    seed: u64,
    mask: u64,
}

impl Hasher {
    /// A hasher with a per-process random seed, for in-memory tables.
    pub fn random() -> Self {
        let seed = Self::random_seed();
        Hasher {
            seed,
            mask: u64::MAX,
        }
    }

    /// The fixed-seed hasher (seed 0): the same value on every agent and every run, for hashes
    /// that must agree between processes (a target's scrape phase).
    pub fn stable() -> Self {
        Hasher {
            seed: 0,
            mask: u64::MAX,
        }
    }

    /// A hasher that keeps only the low `bits` bits (0 = every input hashes to 0). For tests:
    /// with few bits every table sees colliding label sets, which must stay distinct series.
    pub fn with_bits(seed: u64, bits: u32) -> Self {
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        Hasher { seed, mask }
    }

    /// A random seed, per call (the symbol table's index, `super::symbols`).
    pub(super) fn random_seed() -> u64 {
        std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
    }

    /// The hash of `bytes`.
    #[inline]
    pub fn hash_bytes(&self, bytes: &[u8]) -> u64 {
        twox_hash::XxHash64::oneshot(self.seed, bytes) & self.mask
    }

    /// The hash of a label set.
    #[inline]
    pub fn hash(&self, labels: LabelsRef<'_>) -> u64 {
        labels.with_wire(|b| self.hash_bytes(b))
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::random()
    }
}

/// Hash for [`SeriesRef`] keys: a multiply (the FxHash step) keeps the sequential refs a WAL
/// hands out spread over hashbrown's buckets (low bits) and control bytes (high bits) at a
/// fraction of SipHash's cost. Refs come from our own WAL, not from a target, so there is no
/// flooding to resist.
#[derive(Default, Clone, Copy)]
pub struct RefHasher(u64);

impl std::hash::Hasher for RefHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A hash map keyed by series ref.
pub type RefMap<V> = HashMap<SeriesRef, V, BuildHasherDefault<RefHasher>>;

/// Room kept in a hash table whose entries churn (series come and go), so that the table has
/// its size once its live count peaked, not minutes later.
///
/// hashbrown (behind `HashMap` and `HashTable`) leaves a tombstone in the bucket of a removed
/// entry when its probe group is crowded, and tombstones use up the spare room as entries do.
/// When the room is gone, the next insert rehashes: in place if the table is at most half
/// full, otherwise into twice the buckets. A table keyed by a random hash whose live count sits
/// above half its capacity therefore doubles long after its live count stopped growing, when
/// its tombstones run out (the instance series table's labels index did, 3-5 minutes into the
/// churn soak of tests/churn.rs: a late step in resident memory). [`grow`](Self::grow) makes
/// a new high of the live count reserve room for twice that count at once, so that every
/// later rehash is in place; [`shrink`](Self::shrink) gives the room back when the live
/// count has fallen to an eighth of its high (far enough below it not to flap). Tables keyed
/// by [`RefHasher`] do not need it: sequential refs spread evenly and leave no tombstones.
#[derive(Debug, Default, Clone, Copy)]
pub struct Headroom {
    high: usize,
}

impl Headroom {
    /// With `len` live entries (call it where the live count peaks, before removals): the
    /// number of entries to `reserve` when `len` is a new high, which leaves room for twice it.
    #[must_use]
    fn grow(&mut self, len: usize) -> Option<usize> {
        if len <= self.high {
            return None;
        }
        self.high = len;
        Some(len + 2)
    }

    /// After removals, with `len` live entries left: the capacity to `shrink_to` when the
    /// live count has fallen below an eighth of its high (which then starts again from `len`).
    #[must_use]
    fn shrink(&mut self, len: usize) -> Option<usize> {
        if len >= self.high / 8 {
            return None;
        }
        self.high = len;
        Some(2 * len + 2)
    }

    /// Before removals (the live count peaks here): room in `table` for the tombstones of the
    /// entries removed now and later, at a new high of its live count.
    pub fn before_removals<T>(
        &mut self,
        table: &mut hashbrown::HashTable<T>,
        hash: impl Fn(&T) -> u64,
    ) {
        if let Some(n) = self.grow(table.len()) {
            table.reserve(n, hash);
        }
    }

    /// After removals: `table`'s room back when its live count fell far below its high.
    pub fn after_removals<T>(
        &mut self,
        table: &mut hashbrown::HashTable<T>,
        hash: impl Fn(&T) -> u64,
    ) {
        if let Some(n) = self.shrink(table.len()) {
            table.shrink_to(n, hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;

    #[test]
    fn headroom_grows_at_a_new_high_and_shrinks_far_below_it() {
        let mut h = Headroom::default();
        assert_eq!(h.grow(0), None);
        assert_eq!(h.grow(100), Some(102));
        assert_eq!(h.grow(100), None);
        assert_eq!(h.grow(60), None);
        assert_eq!(h.shrink(13), None);
        assert_eq!(h.grow(101), Some(103));
        assert_eq!(h.shrink(12), None);
        assert_eq!(h.shrink(11), Some(24));
        assert_eq!(h.grow(11), None);
        assert_eq!(h.grow(12), Some(14));
        // A table that does as told: twice its high, rehashed in place from then on.
        let mut t = hashbrown::HashTable::<u64>::new();
        let mut h = Headroom::default();
        let hash = |v: &u64| v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for v in 0..1000u64 {
            t.insert_unique(hash(&v), v, hash);
        }
        if let Some(n) = h.grow(t.len()) {
            t.reserve(n, hash);
        }
        assert!(t.capacity() >= 2 * 1000 + 2, "{}", t.capacity());
    }

    #[test]
    fn seeds_and_bits() {
        let a = Labels::from_pairs([("a", "1")]);
        let b = Labels::from_pairs([("a", "2")]);
        let s = Hasher::stable();
        assert_eq!(
            s.hash(a.as_view()),
            twox_hash::XxHash64::oneshot(0, &a.wire())
        );
        assert_eq!(s, Hasher::stable());
        assert_ne!(s.hash(a.as_view()), s.hash(b.as_view()));
        let none = Hasher::with_bits(7, 0);
        assert_eq!(none.hash(a.as_view()), 0);
        assert_eq!(none.hash(b.as_view()), 0);
        assert!(Hasher::with_bits(7, 3).hash(a.as_view()) < 8);
        assert_eq!(
            Hasher::with_bits(7, 64).hash(a.as_view()),
            twox_hash::XxHash64::oneshot(7, &a.wire())
        );
    }
}
