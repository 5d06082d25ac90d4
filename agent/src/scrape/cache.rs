//! The per-target series cache: raw series text → series ref, plus what staleness tracking
//! and duplicate detection need, as Prometheus's `scrapeCache`.
//!
//! Layout (chosen for a cheap hit and a small footprint):
//! * `keys`: the series exactly as scraped (`Sample::series`, e.g. `http_requests_total{code="200"}`)
//!   → the slot of its series, or [`DROPPED`] when `metric_relabel_configs` dropped it, plus the
//!   iteration the key was last seen in. A hit costs one hash of the raw bytes and no parsing.
//! * `slots`: one entry per distinct series (24 bytes): storage ref, label hash, last iteration
//!   seen, and two staleness bits. Several keys can share a slot when different texts give the
//!   same labels (whitespace, label order, or a relabelling that collapses series); sharing the
//!   slot is what lets duplicates be detected per series rather than per text.
//! * `by_hash`: label hash → slot, consulted only on a key miss. Like Prometheus's
//!   `seriesCur`/`seriesPrev` maps it trusts the 64-bit hash without comparing labels.
//!
//! The labels themselves are not kept: the storage has them, and staleness markers are
//! appended by ref. Per series this costs the key text plus about 70 bytes.
//!
//! Iterations. Each scrape is one iteration. A series is *tracked* for staleness in an
//! iteration when a sample of it was appended without an explicit timestamp (or with
//! `track_timestamps_staleness`). At the end of every iteration, successful or failed, the
//! series tracked in the previous iteration but not in this one get a staleness marker, as in
//! Prometheus's `scrapeCache` (`trackStaleness` after each appended sample, then
//! `forEachStale`): a scrape that fails part-way keeps the series it appended before the
//! failure, though they are rolled back, and marks the rest; a failed fetch tracks nothing
//! and marks them all. Eviction follows Prometheus 2.42's `iterDone`: after a successful non-empty
//! scrape, keys and series not seen in it are forgotten; after failed ones the cache is
//! flushed the same way only once it has grown past twice its last successful size plus 1,000
//! entries, so failing scrapes of a target with churning labels cannot grow it without bound.

use std::collections::HashMap;
use std::hash::BuildHasher;

use super::appender::SeriesRef;

/// Marks a key whose series `metric_relabel_configs` dropped.
pub const DROPPED: u32 = u32::MAX;

/// xxHash64 with a per-process random seed: fast on the short keys of the hot path, and the
/// seed keeps a target from choosing series texts that collide.
#[derive(Clone)]
pub struct SeedState(twox_hash::xxhash64::State);

impl Default for SeedState {
    fn default() -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        SeedState(twox_hash::xxhash64::State::with_seed(seed))
    }
}

impl BuildHasher for SeedState {
    type Hasher = twox_hash::XxHash64;
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[derive(Clone, Copy, Debug)]
struct KeyEntry {
    slot: u32,
    last: u32,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    r: SeriesRef,
    hash: u64,
    /// Iteration the series was last seen in (0 = never, or free).
    last: u32,
    /// Appended without an explicit timestamp in iteration `last` (reset when `last` moves on).
    tracked: bool,
    /// Tracked in the previous iteration: due a marker if missing from this one.
    in_prev: bool,
}

/// What a key lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Unknown text: build its labels and call [`SeriesCache::insert_series`] or
    /// [`SeriesCache::insert_dropped`].
    Miss,
    /// Dropped by `metric_relabel_configs`.
    Dropped,
    /// A known series; `duplicate` when it was already seen in this iteration.
    Series {
        slot: u32,
        r: SeriesRef,
        duplicate: bool,
    },
}

/// See the module docs.
#[derive(Default)]
pub struct SeriesCache {
    keys: HashMap<Box<[u8]>, KeyEntry, SeedState>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_hash: HashMap<u64, u32, SeedState>,
    /// Current iteration, starting at 1 so that 0 means "never".
    iter: u32,
    successful_count: usize,
}

impl SeriesCache {
    pub fn new() -> Self {
        SeriesCache {
            iter: 1,
            ..Default::default()
        }
    }

    /// Number of cached keys (series texts, including dropped ones).
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Number of cached series.
    pub fn series(&self) -> usize {
        self.by_hash.len()
    }

    /// Looks `key` up and marks it (and its series) seen in this iteration.
    #[inline]
    pub fn lookup(&mut self, key: &[u8]) -> Lookup {
        let iter = self.iter;
        let Some(k) = self.keys.get_mut(key) else {
            return Lookup::Miss;
        };
        k.last = iter;
        if k.slot == DROPPED {
            return Lookup::Dropped;
        }
        match self.slots.get_mut(k.slot as usize) {
            Some(s) => {
                let duplicate = s.last == iter;
                s.tracked &= duplicate;
                s.last = iter;
                Lookup::Series {
                    slot: k.slot,
                    r: s.r,
                    duplicate,
                }
            }
            // Cannot happen (slots are freed together with their keys); treat as unknown.
            None => Lookup::Miss,
        }
    }

    /// Records that `key` is dropped by relabelling.
    pub fn insert_dropped(&mut self, key: &[u8]) {
        self.keys.insert(
            key.into(),
            KeyEntry {
                slot: DROPPED,
                last: self.iter,
            },
        );
    }

    /// The slot and ref of the series with label hash `hash`, if cached (another text with
    /// the same labels). The key is linked to it and both are marked seen; `duplicate` tells
    /// whether the series was already seen in this iteration.
    pub fn link_existing(&mut self, key: &[u8], hash: u64) -> Option<Lookup> {
        let &slot = self.by_hash.get(&hash)?;
        let s = self.slots.get_mut(slot as usize)?;
        let duplicate = s.last == self.iter;
        s.tracked &= duplicate;
        s.last = self.iter;
        let r = s.r;
        self.keys.insert(
            key.into(),
            KeyEntry {
                slot,
                last: self.iter,
            },
        );
        Some(Lookup::Series { slot, r, duplicate })
    }

    /// Caches a new series for `key` (seen in this iteration) and returns its slot.
    pub fn insert_series(&mut self, key: &[u8], hash: u64, r: SeriesRef) -> u32 {
        let s = Slot {
            r,
            hash,
            last: self.iter,
            tracked: false,
            in_prev: false,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = s;
                i
            }
            None => {
                self.slots.push(s);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_hash.insert(hash, slot);
        self.keys.insert(
            key.into(),
            KeyEntry {
                slot,
                last: self.iter,
            },
        );
        slot
    }

    /// Sets whether the series in `slot` counts for staleness in this iteration (call it when
    /// a sample of the series is appended; a series seen but not appended is not tracked).
    #[inline]
    pub fn set_tracked(&mut self, slot: u32, tracked: bool) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.tracked = tracked;
        }
    }

    /// Ends a successful iteration: calls `stale` for each series tracked in the previous
    /// iteration and not in this one, then evicts as described in the module docs
    /// (`non_empty`: the scrape body was not empty).
    pub fn end_successful(&mut self, non_empty: bool, stale: impl FnMut(SeriesRef)) {
        self.mark_stale(stale);
        self.iter_done(non_empty);
    }

    /// Ends a failed iteration (its samples rolled back): calls `stale` for each series
    /// tracked in the previous iteration and not in this one, as for a successful one.
    pub fn end_failed(&mut self, stale: impl FnMut(SeriesRef)) {
        self.mark_stale(stale);
        self.iter_done(false);
    }

    fn mark_stale(&mut self, mut stale: impl FnMut(SeriesRef)) {
        let iter = self.iter;
        for s in &mut self.slots {
            let tracked = s.last == iter && s.tracked;
            if s.in_prev && !tracked {
                stale(s.r);
            }
            s.in_prev = tracked;
        }
    }

    /// Calls `f` for every series tracked in the last completed iteration (end of run).
    pub fn for_each_last(&self, mut f: impl FnMut(SeriesRef)) {
        for s in &self.slots {
            if s.in_prev {
                f(s.r);
            }
        }
    }

    fn iter_done(&mut self, mut flush: bool) {
        let count = self.keys.len();
        if flush {
            self.successful_count = count;
        } else if count > self.successful_count * 2 + 1000 {
            flush = true;
        }
        if flush {
            let iter = self.iter;
            // Skip the walk when every key was seen (the steady state).
            if self.keys.values().any(|k| k.last != iter) {
                self.keys.retain(|_, k| k.last == iter);
                for (i, s) in self.slots.iter_mut().enumerate() {
                    if s.last != 0 && s.last != iter {
                        self.by_hash.remove(&s.hash);
                        s.last = 0;
                        s.in_prev = false;
                        self.free.push(i as u32);
                    }
                }
            }
        }
        self.iter = self.iter.wrapping_add(1).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale_of(c: &mut SeriesCache, ok: bool) -> Vec<SeriesRef> {
        let mut v = Vec::new();
        if ok {
            c.end_successful(true, |r| v.push(r));
        } else {
            c.end_failed(|r| v.push(r));
        }
        v.sort_unstable();
        v
    }

    fn see(c: &mut SeriesCache, key: &str, r: SeriesRef) -> Lookup {
        match c.lookup(key.as_bytes()) {
            Lookup::Miss => {
                let slot = c.insert_series(key.as_bytes(), r * 1000, r);
                c.set_tracked(slot, true);
                Lookup::Miss
            }
            hit => {
                if let Lookup::Series { slot, .. } = hit {
                    c.set_tracked(slot, true);
                }
                hit
            }
        }
    }

    #[test]
    fn hits_duplicates_staleness_and_eviction() {
        let mut c = SeriesCache::new();
        assert_eq!(see(&mut c, "a", 1), Lookup::Miss);
        assert_eq!(see(&mut c, "b", 2), Lookup::Miss);
        assert!(stale_of(&mut c, true).is_empty());

        assert!(matches!(
            see(&mut c, "a", 1),
            Lookup::Series {
                r: 1,
                duplicate: false,
                ..
            }
        ));
        assert!(matches!(
            see(&mut c, "a", 1),
            Lookup::Series {
                duplicate: true,
                ..
            }
        ));
        // b missing: one marker, then evicted.
        assert_eq!(stale_of(&mut c, true), vec![2]);
        assert_eq!((c.keys(), c.series()), (1, 1));
        // Nothing more for b.
        see(&mut c, "a", 1);
        assert!(stale_of(&mut c, true).is_empty());
        // A failed scrape marks everything of the last one, once.
        assert_eq!(stale_of(&mut c, false), vec![1]);
        assert!(stale_of(&mut c, false).is_empty());
    }

    #[test]
    fn texts_with_the_same_labels_share_a_series() {
        let mut c = SeriesCache::new();
        let slot = c.insert_series(b"a{x=\"1\"}", 42, 7);
        c.set_tracked(slot, true);
        assert_eq!(c.lookup(b"a{ x=\"1\" }"), Lookup::Miss);
        assert_eq!(
            c.link_existing(b"a{ x=\"1\" }", 42),
            Some(Lookup::Series {
                slot,
                r: 7,
                duplicate: true
            })
        );
        assert_eq!((c.keys(), c.series()), (2, 1));
    }

    #[test]
    fn failed_scrapes_flush_only_when_the_cache_balloons() {
        let mut c = SeriesCache::new();
        for i in 0..10u64 {
            see(&mut c, &format!("s{i}"), i);
        }
        stale_of(&mut c, true);
        // A failing scrape that still inserted keys: past the 2x+1000 threshold the cache is
        // flushed of what this iteration did not see, and the next one of the rest.
        for i in 0..1100u64 {
            c.insert_dropped(format!("d{i}").as_bytes());
        }
        c.end_failed(|_| {});
        assert_eq!((c.keys(), c.series()), (1100, 0));
        c.end_failed(|_| {});
        assert_eq!(c.keys(), 0);
    }

    #[test]
    fn a_failed_scrape_keeps_what_it_appended_before_failing() {
        let mut c = SeriesCache::new();
        for (k, r) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
            see(&mut c, k, r);
        }
        assert!(stale_of(&mut c, true).is_empty());
        // Fails after appending `a` and `b`; `c` was looked up but not appended (over the
        // sample limit); `d` never reached. As in Prometheus: `c` and `d` are marked.
        see(&mut c, "a", 1);
        see(&mut c, "b", 2);
        assert!(matches!(c.lookup(b"c"), Lookup::Series { .. }));
        assert_eq!(stale_of(&mut c, false), vec![3, 4]);
        // What the failed scrape kept is what the next one compares with.
        see(&mut c, "a", 1);
        assert_eq!(stale_of(&mut c, true), vec![2]);
        // A failed fetch appends nothing: everything left is marked, once.
        assert_eq!(stale_of(&mut c, false), vec![1]);
        assert!(stale_of(&mut c, false).is_empty());
    }

    #[test]
    fn a_series_that_turns_to_explicit_timestamps_is_marked() {
        // Prometheus tracks only samples without a timestamp: a tracked series whose next
        // sample carries one gets a marker at the scrape time.
        let mut c = SeriesCache::new();
        see(&mut c, "a", 1);
        assert!(stale_of(&mut c, true).is_empty());
        let Lookup::Series { slot, .. } = c.lookup(b"a") else {
            panic!("cached")
        };
        c.set_tracked(slot, false);
        assert_eq!(stale_of(&mut c, true), vec![1]);
    }

    #[test]
    fn explicit_timestamps_are_not_tracked() {
        let mut c = SeriesCache::new();
        let slot = c.insert_series(b"a", 1, 1);
        c.set_tracked(slot, false);
        stale_of(&mut c, true);
        assert!(stale_of(&mut c, true).is_empty());
    }
}
