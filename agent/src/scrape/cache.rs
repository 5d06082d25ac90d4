//! The per-target series cache: series text → series (ref and labels), plus what staleness
//! tracking and duplicate detection need, as Prometheus's `scrapeCache`.
//!
//! Layout:
//! * `slots`: one entry per distinct series: the storage's shared [`Labels`] (the same
//!   allocation the instance's series table and the remote_write tables hold, see
//!   [`crate::labels`]), its ref, the last iteration it was seen in, and two staleness bits.
//!   `slots_index` finds a slot by its labels (hash, then an exact comparison), which links
//!   several texts with the same labels (whitespace, label order, or a relabelling that
//!   collapses series) to one series, so duplicates are detected per series.
//! * `keys`: one entry per distinct series text (`Sample::series`, e.g.
//!   `http_requests_total{code="200"}`): its slot (or [`DROPPED`] when
//!   `metric_relabel_configs` dropped it) and the last iteration it was seen in, 32 bytes.
//!   `keys_index` finds a key by the text's hash; the hash only finds candidates, each is then
//!   compared with the text exactly (below). A hit costs one hash of the raw bytes and no
//!   parsing. The hash is not kept: the index's rehashes (when it grows or shrinks) render each
//!   key's text again to hash it.
//!
//! **No copy of the text.** A key does not store its text when it can re-render it from the
//! slot's labels: it keeps a *recipe*, the metric name and, for each `name="value"` pair in
//! the order of the text, which string of the labels has exactly those bytes (one byte each),
//! or the bytes themselves when no label string has them (a value changed by relabelling, an
//! escaped value); punctuation is the canonical `{a="1",b="2"}`. The recipe is checked when
//! the key is created to render exactly its text, so comparing a text with it (piece by piece,
//! a `memcmp` per label string) is as exact as comparing with the stored text, whatever the
//! relabelling. Texts that do not have the canonical shape (whitespace, a trailing comma) and
//! texts dropped by relabelling (no labels to render from) keep their bytes instead. The
//! memory bench (agent/benches/memory.rs) counts the whole cache at about 105 bytes per series
//! with recipes; keeping the texts would add theirs (122 bytes each in that bench).
//!
//! **The key expected next.** Keys are added in the order of the first scrape, and a target
//! exposes its series in the same order every scrape, so the key after the one last looked up
//! is nearly always the next line's. [`SeriesCache::expected_len`] compares a line's start with
//! that key's text (the same exact compare as a hit); when it matches, the scrape loop takes
//! the key with [`SeriesCache::take_expected`] and the parser skips the series
//! (`Parser::next_known`): no label parse, no hash of the text, no probe of `keys_index` (a
//! cache miss per line once the other targets' scrapes have evicted this cache). Any other
//! line goes through [`SeriesCache::lookup`]. It costs one `u32` per target.
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
//!
//! Series the storage garbage-collected (no sample for a long time, e.g. a target that was
//! down for hours) are dropped from the cache when the storage's generation changes
//! ([`SeriesCache::sync_with`]), so the next sample registers its series again.

use hashbrown::HashTable;

use super::appender::{SeriesRef, Storage};
use crate::labels::{Hasher, Headroom, Labels};

/// Marks a key whose series `metric_relabel_configs` dropped.
pub const DROPPED: u32 = u32::MAX;

/// Label sets with more labels than this keep their text (the recipe's index is on the stack).
const MAX_RECIPE_LABELS: usize = crate::labels::LabelIndex::MAX_LABELS;

// Two keys to a cache line, also on 32-bit targets.
const _: () = assert!(std::mem::size_of::<Key>() == 32);

/// How a key recognises its text.
enum KeyText {
    /// A recipe of at most 22 bytes (see [`recipe`]).
    Inline { len: u8, buf: [u8; 22] },
    /// A longer recipe.
    Recipe(Box<[u8]>),
    /// The text itself.
    Raw(Box<[u8]>),
}

impl KeyText {
    /// The recipe that renders the text (`Ok`), or the text itself (`Err`).
    #[inline]
    fn recipe(&self) -> Result<&[u8], &[u8]> {
        match self {
            KeyText::Inline { len, buf } => Ok(&buf[..usize::from(*len)]),
            KeyText::Recipe(r) => Ok(r),
            KeyText::Raw(t) => Err(t),
        }
    }
}

/// 32 bytes: no hash is kept. A lookup hashes the text it looks for, and the index's rehashes
/// (growing, [`Headroom`]) hash each key's text again, rendered from its recipe
/// ([`key_hash`]).
struct Key {
    slot: u32,
    /// Iteration the key was last seen in (0 = free).
    last: u32,
    text: KeyText,
}

struct Slot {
    /// `None` when free.
    labels: Option<Labels>,
    r: SeriesRef,
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
    /// Unknown text: build its labels, then [`SeriesCache::find_series`] and
    /// [`SeriesCache::link`], or [`SeriesCache::insert_series`], or
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
pub struct SeriesCache {
    hasher: Hasher,
    keys: Vec<Key>,
    free_keys: Vec<u32>,
    keys_index: HashTable<u32>,
    /// Keys seen in the current iteration (the steady state skips the eviction walk).
    keys_seen: usize,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    slots_index: HashTable<u32>,
    /// Current iteration, starting at 1 so that 0 means "never".
    iter: u32,
    successful_count: usize,
    /// The storage generation the slots were checked against.
    generation: u64,
    /// The indexes' sizes under churn (see [`Headroom`]).
    keys_room: Headroom,
    slots_room: Headroom,
    /// The key expected next: the one after the key last looked up or added, in `keys`'
    /// order (see [`SeriesCache::expected_len`]).
    next_key: u32,
}

impl SeriesCache {
    pub fn new(hasher: Hasher) -> Self {
        SeriesCache {
            hasher,
            keys: Vec::new(),
            free_keys: Vec::new(),
            keys_index: HashTable::new(),
            keys_seen: 0,
            slots: Vec::new(),
            free_slots: Vec::new(),
            slots_index: HashTable::new(),
            iter: 1,
            successful_count: 0,
            generation: 0,
            keys_room: Headroom::default(),
            slots_room: Headroom::default(),
            next_key: 0,
        }
    }

    /// Number of cached keys (series texts, including dropped ones).
    pub fn keys(&self) -> usize {
        self.keys_index.len()
    }

    /// Number of cached series.
    pub fn series(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// The hasher of this cache's tables.
    pub fn hasher(&self) -> Hasher {
        self.hasher
    }

    /// Looks `key` up and marks it (and its series) seen in this iteration.
    #[inline]
    pub fn lookup(&mut self, key: &[u8]) -> Lookup {
        let hash = self.hasher.hash_bytes(key);
        let (keys, slots) = (&self.keys, &self.slots);
        let Some(&k) = self
            .keys_index
            .find(hash, |&k| matches(&keys[k as usize], key, slots))
        else {
            return Lookup::Miss;
        };
        self.hit(k)
    }

    /// When `line` starts with the text of the key expected next (the one after the key last
    /// looked up or added: a target exposes its series in the same order every scrape, and
    /// keys are added in the order of the first scrape), that text's length. Exact: the text
    /// is compared byte for byte, as [`lookup`](Self::lookup) compares it.
    #[inline]
    pub fn expected_len(&self, line: &[u8]) -> Option<usize> {
        let key = self.keys.get(self.next_key as usize)?;
        if key.last == 0 {
            return None;
        }
        let recipe = match key.text.recipe() {
            Ok(recipe) => recipe,
            Err(t) => {
                let live = key.slot == DROPPED
                    || self
                        .slots
                        .get(key.slot as usize)
                        .is_some_and(|s| s.labels.is_some());
                return (live && !t.is_empty() && line.starts_with(t)).then_some(t.len());
            }
        };
        let labels = self.slots.get(key.slot as usize)?.labels.as_ref()?;
        recipe::rendered_prefix(recipe, labels, line)
    }

    /// Marks the key [`expected_len`](Self::expected_len) found seen, as
    /// [`lookup`](Self::lookup) marks the key it finds.
    #[inline]
    pub fn take_expected(&mut self) -> Lookup {
        self.hit(self.next_key)
    }

    #[inline]
    fn hit(&mut self, k: u32) -> Lookup {
        self.next_key = k.wrapping_add(1);
        self.warm_ahead(k);
        let iter = self.iter;
        let k = &mut self.keys[k as usize];
        if k.last != iter {
            k.last = iter;
            self.keys_seen += 1;
        }
        if k.slot == DROPPED {
            return Lookup::Dropped;
        }
        match self.slots.get_mut(k.slot as usize) {
            Some(s) if s.labels.is_some() => {
                let duplicate = s.last == iter;
                s.tracked &= duplicate;
                s.last = iter;
                Lookup::Series {
                    slot: k.slot,
                    r: s.r,
                    duplicate,
                }
            }
            // Cannot happen (keys are freed with their slots); treat as unknown.
            _ => Lookup::Miss,
        }
    }

    /// Starts loading the labels of the key two after `k` (expected two lines from now) into
    /// the CPU cache, so that its compare in [`expected_len`](Self::expected_len) does not wait
    /// for them: a target's label sets are cold by its next scrape (the other targets' scrapes
    /// came between), and that wait was most of the compare's time. A hint only.
    #[inline]
    fn warm_ahead(&self, k: u32) {
        let ahead = self.keys.get(k as usize + 2).map(|key| key.slot);
        if let Some(Some(labels)) = ahead
            .and_then(|s| self.slots.get(s as usize))
            .map(|s| s.labels.as_ref())
        {
            labels.as_view().warm();
        }
    }

    fn add_key(&mut self, text: &[u8], slot: u32, key_text: KeyText) {
        let hash = self.hasher.hash_bytes(text);
        let key = Key {
            slot,
            last: self.iter,
            text: key_text,
        };
        let k = match self.free_keys.pop() {
            Some(k) => {
                self.keys[k as usize] = key;
                k
            }
            None => {
                self.keys.push(key);
                (self.keys.len() - 1) as u32
            }
        };
        self.keys_index
            .insert_unique(hash, k, key_hash(&self.keys, &self.slots, self.hasher));
        self.keys_seen += 1;
        self.next_key = k.wrapping_add(1);
    }

    /// Records that `key` is dropped by relabelling.
    pub fn insert_dropped(&mut self, key: &[u8]) {
        self.add_key(key, DROPPED, KeyText::Raw(key.into()));
    }

    /// The slot of the cached series with exactly `labels`, if any.
    pub fn find_series(&self, labels: &Labels) -> Option<u32> {
        let hash = self.hasher.hash(labels.as_view());
        let slots = &self.slots;
        self.slots_index
            .find(hash, |&i| slots[i as usize].labels.as_ref() == Some(labels))
            .copied()
    }

    /// Links text `key` to the cached series in `slot` (another text with the same labels)
    /// and marks both seen; `duplicate` tells whether the series was already seen in this
    /// iteration.
    pub fn link(&mut self, key: &[u8], slot: u32) -> Lookup {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return Lookup::Miss;
        };
        let Some(labels) = s.labels.clone() else {
            return Lookup::Miss;
        };
        let duplicate = s.last == self.iter;
        s.tracked &= duplicate;
        s.last = self.iter;
        let r = s.r;
        self.add_key(key, slot, key_text(key, &labels));
        Lookup::Series { slot, r, duplicate }
    }

    /// Caches a new series for `key` (seen in this iteration) and returns its slot. `labels`
    /// should be the storage's shared copy.
    pub fn insert_series(&mut self, key: &[u8], labels: Labels, r: SeriesRef) -> u32 {
        let hash = self.hasher.hash(labels.as_view());
        let text = key_text(key, &labels);
        let s = Slot {
            labels: Some(labels),
            r,
            last: self.iter,
            tracked: false,
            in_prev: false,
        };
        let slot = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize] = s;
                i
            }
            None => {
                self.slots.push(s);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots_index
            .insert_unique(hash, slot, slot_hash(&self.slots, self.hasher));
        self.add_key(key, slot, text);
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

    /// Drops the series `storage` garbage-collected since the last call (one atomic load
    /// when nothing changed).
    pub fn sync_with(&mut self, storage: &dyn Storage) {
        let generation = storage.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let mut refs: Vec<SeriesRef> = self
            .slots
            .iter()
            .filter(|s| s.labels.is_some())
            .map(|s| s.r)
            .collect();
        let cached = refs.len();
        storage.retain_live(&mut refs);
        if refs.len() == cached {
            return;
        }
        refs.sort_unstable();
        self.before_removals();
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.labels.is_some() && refs.binary_search(&s.r).is_err() {
                self.free_slot(i as u32);
            }
        }
        self.retain_keys(|k, slots| {
            k.slot == DROPPED
                || slots
                    .get(k.slot as usize)
                    .is_some_and(|s| s.labels.is_some())
        });
        self.after_removals();
    }

    /// Before evicting (the live counts peak): room for the tombstones of the entries removed
    /// now and later, so that churn does not double the indexes long after their live counts
    /// stopped growing (see [`Headroom`]).
    fn before_removals(&mut self) {
        self.keys_room.before_removals(
            &mut self.keys_index,
            key_hash(&self.keys, &self.slots, self.hasher),
        );
        self.slots_room
            .before_removals(&mut self.slots_index, slot_hash(&self.slots, self.hasher));
    }

    /// After evicting: the room back when the live counts fell far below their highs.
    fn after_removals(&mut self) {
        self.keys_room.after_removals(
            &mut self.keys_index,
            key_hash(&self.keys, &self.slots, self.hasher),
        );
        self.slots_room
            .after_removals(&mut self.slots_index, slot_hash(&self.slots, self.hasher));
    }

    fn free_slot(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        let Some(labels) = s.labels.take() else {
            return;
        };
        s.last = 0;
        s.in_prev = false;
        s.tracked = false;
        let hash = self.hasher.hash(labels.as_view());
        if let Ok(e) = self.slots_index.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        self.free_slots.push(i);
    }

    /// Keeps the keys for which `keep` holds. Call it before freeing the slots of the keys
    /// it removes, or after: the index is walked, not probed (a key whose slot is freed cannot
    /// render its text to hash it).
    fn retain_keys(&mut self, keep: impl Fn(&Key, &[Slot]) -> bool) {
        let mut removed = false;
        for k in 0..self.keys.len() {
            let key = &self.keys[k];
            if key.last == 0 || keep(key, &self.slots) {
                continue;
            }
            let key = &mut self.keys[k];
            key.last = 0;
            key.text = KeyText::Raw(Box::default());
            self.free_keys.push(k as u32);
            removed = true;
        }
        if removed {
            let keys = &self.keys;
            self.keys_index.retain(|&mut j| keys[j as usize].last != 0);
        }
    }

    fn iter_done(&mut self, mut flush: bool) {
        let count = self.keys();
        if flush {
            self.successful_count = count;
        } else if count > self.successful_count * 2 + 1000 {
            flush = true;
        }
        // Skip the walk when every key was seen (the steady state).
        if flush && self.keys_seen < count {
            let iter = self.iter;
            self.before_removals();
            self.retain_keys(|k, _| k.last == iter);
            for i in 0..self.slots.len() {
                let s = &self.slots[i];
                if s.last != 0 && s.last != iter {
                    self.free_slot(i as u32);
                }
            }
            self.after_removals();
        }
        self.keys_seen = 0;
        self.next_key = 0;
        self.iter = self.iter.wrapping_add(1).max(1);
    }
}

/// The hash of the text of the key a `keys_index` entry names (for its rehashes): the text
/// itself, or rendered from the recipe into a buffer kept for the whole rehash. Every key in
/// the index can render when a rehash runs: keys are added with a live slot, and where slots
/// are freed ([`SeriesCache::iter_done`], [`SeriesCache::sync_with`]) no rehash comes between
/// freeing a slot and removing its keys ([`SeriesCache::retain_keys`] walks the index, it
/// does not rehash). A key that could not render would hash as 0, found by no lookup, until
/// the next walk removes it.
fn key_hash<'a>(keys: &'a [Key], slots: &'a [Slot], hasher: Hasher) -> impl Fn(&u32) -> u64 + 'a {
    let text = std::cell::RefCell::new(Vec::new());
    move |&k| {
        let key = &keys[k as usize];
        let recipe = match key.text.recipe() {
            Ok(recipe) => recipe,
            Err(t) => return hasher.hash_bytes(t),
        };
        let mut text = text.borrow_mut();
        text.clear();
        let rendered = slots
            .get(key.slot as usize)
            .and_then(|s| s.labels.as_ref())
            .and_then(|labels| recipe::render(recipe, labels, &mut text));
        debug_assert!(rendered.is_some(), "a key in the index renders its text");
        rendered.map_or(0, |()| hasher.hash_bytes(&text))
    }
}

/// The hash of the labels of the slot a `slots_index` entry names (for its rehashes).
fn slot_hash(slots: &[Slot], hasher: Hasher) -> impl Fn(&u32) -> u64 + '_ {
    move |&i| {
        slots[i as usize]
            .labels
            .as_ref()
            .map_or(0, |l| hasher.hash(l.as_view()))
    }
}

/// Whether `key` is the key of `text` (the index found it by the text's hash).
#[inline]
fn matches(key: &Key, text: &[u8], slots: &[Slot]) -> bool {
    if key.last == 0 {
        return false;
    }
    let recipe = match key.text.recipe() {
        Ok(recipe) => recipe,
        Err(t) => return t == text,
    };
    match slots.get(key.slot as usize).and_then(|s| s.labels.as_ref()) {
        Some(labels) => recipe::renders(recipe, labels, text),
        None => false,
    }
}

/// How a new key for `text` (whose series has `labels`) recognises it: a recipe when one
/// renders the text exactly, else the text.
fn key_text(text: &[u8], labels: &Labels) -> KeyText {
    match recipe::build(text, labels) {
        Some(r) if r.len() <= 22 => {
            let mut buf = [0u8; 22];
            buf[..r.len()].copy_from_slice(&r);
            KeyText::Inline {
                len: r.len() as u8,
                buf,
            }
        }
        Some(r) => KeyText::Recipe(r.into_boxed_slice()),
        None => KeyText::Raw(text.into()),
    }
}

/// Recipes: a series text rendered from its labels.
///
/// ```text
/// recipe := shape piece (name_piece value_piece)*
/// shape  := 0xFF (a bare metric name) | k (k pairs inside braces, k <= 63)
/// piece  := 0x00..=0x3F   value of label i
///         | 0x40..=0x7F   name of label i - 0x40
///         | 0x80 + n, n bytes (n <= 126): these bytes
/// ```
///
/// The text it renders is `piece` alone for a bare name, else
/// `piece{name="value",name="value"}` (no spaces, no trailing comma), the pieces as written
/// (values with their escapes).
mod recipe {
    use std::cell::Cell;

    use super::{Labels, MAX_RECIPE_LABELS};
    use crate::labels::LabelIndex;

    const BARE: u8 = 0xFF;
    const NAME: u8 = 0x40;
    const LITERAL: u8 = 0x80;
    const MAX_LITERAL: usize = 0x7E;

    /// Whether `recipe` renders exactly `text` from `labels`.
    #[inline]
    pub(super) fn renders(recipe: &[u8], labels: &Labels, text: &[u8]) -> bool {
        rendered_prefix(recipe, labels, text) == Some(text.len())
    }

    /// When `text` starts with what `recipe` renders from `labels`, the rendered length.
    #[inline]
    pub(super) fn rendered_prefix(recipe: &[u8], labels: &Labels, text: &[u8]) -> Option<usize> {
        let mut compare = Compare { text, pos: 0 };
        walk(recipe, labels, &mut compare)?;
        Some(compare.pos)
    }

    /// Appends the text `recipe` renders from `labels` to `out`; `None` when the recipe is
    /// malformed or names a label `labels` lacks (`out` then holds part of the text).
    pub(super) fn render(recipe: &[u8], labels: &Labels, out: &mut Vec<u8>) -> Option<()> {
        walk(recipe, labels, out)
    }

    fn walk(recipe: &[u8], labels: &Labels, sink: &mut impl Sink) -> Option<()> {
        let index = labels.index()?;
        let r = Render {
            index: &index,
            last: Cell::new(None),
        };
        r.run(recipe, sink)
    }

    /// Where a rendering goes: compared with a text as it is rendered, or written out.
    trait Sink {
        /// Takes the next bytes of the rendering; `false` stops the walk (a compare found
        /// them different from the text's).
        fn put(&mut self, bytes: &[u8]) -> bool;
    }

    /// Compares with `text` from its start; `pos` is where the next bytes go.
    struct Compare<'a> {
        text: &'a [u8],
        pos: usize,
    }

    impl Sink for Compare<'_> {
        #[inline]
        fn put(&mut self, want: &[u8]) -> bool {
            let ok = self.text.get(self.pos..self.pos + want.len()) == Some(want);
            self.pos += want.len();
            ok
        }
    }

    impl Sink for Vec<u8> {
        fn put(&mut self, bytes: &[u8]) -> bool {
            self.extend_from_slice(bytes);
            true
        }
    }

    struct Render<'a> {
        index: &'a LabelIndex<'a>,
        /// The label read last: a recipe names a label's name, then its value.
        last: Cell<Option<(u8, Label<'a>)>>,
    }

    /// A label's name and value.
    type Label<'a> = (&'a [u8], &'a [u8]);

    impl Render<'_> {
        /// Renders the recipe into `sink`; `None` when the sink refuses a piece or the recipe
        /// is malformed.
        fn run(&self, recipe: &[u8], sink: &mut impl Sink) -> Option<()> {
            let (&shape, mut ops) = recipe.split_first()?;
            let ok = |matched: bool| matched.then_some(());
            ok(self.piece(&mut ops, sink)?)?;
            if shape == BARE {
                return Some(());
            }
            ok(sink.put(b"{"))?;
            for i in 0..shape {
                ok(i == 0 || sink.put(b","))?;
                ok(self.piece(&mut ops, sink)? && sink.put(b"=\""))?;
                ok(self.piece(&mut ops, sink)? && sink.put(b"\""))?;
            }
            ok(sink.put(b"}"))
        }

        /// Puts the next piece of `ops` into `sink`.
        #[inline]
        fn piece(&self, ops: &mut &[u8], sink: &mut impl Sink) -> Option<bool> {
            let (&op, rest) = ops.split_first()?;
            let want: &[u8] = if op >= LITERAL {
                let n = usize::from(op - LITERAL);
                let (lit, rest) = (rest.get(..n)?, rest.get(n..)?);
                *ops = rest;
                lit
            } else {
                *ops = rest;
                let label = op & (NAME - 1);
                let (name, value) = match self.last.get() {
                    Some((l, pair)) if l == label => pair,
                    _ => {
                        let pair = self.index.label(usize::from(label))?;
                        self.last.set(Some((label, pair)));
                        pair
                    }
                };
                if op & NAME != 0 {
                    name
                } else {
                    value
                }
            };
            Some(sink.put(want))
        }
    }

    /// A text's raw `(name, value)` pairs; `None` for a bare metric name.
    type Pairs<'a> = Option<Vec<(&'a [u8], &'a [u8])>>;

    /// Splits a text of the canonical shape into its metric name and raw pairs.
    fn split(text: &[u8]) -> Option<(&[u8], Pairs<'_>)> {
        let Some(open) = memchr::memchr(b'{', text) else {
            return Some((text, None));
        };
        let name = &text[..open];
        let mut pairs = Vec::new();
        let mut i = open + 1;
        if text.get(i) == Some(&b'}') {
            return (i + 1 == text.len()).then_some((name, Some(pairs)));
        }
        loop {
            let eq = i + memchr::memchr(b'=', text.get(i..)?)?;
            let n = &text[i..eq];
            if text.get(eq + 1) != Some(&b'"') {
                return None;
            }
            let start = eq + 2;
            let mut j = start;
            loop {
                match *text.get(j)? {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            pairs.push((n, &text[start..j]));
            match text.get(j + 1)? {
                b',' => i = j + 2,
                b'}' if j + 2 == text.len() => return Some((name, Some(pairs))),
                _ => return None,
            }
        }
    }

    /// A recipe that renders `text` from `labels`, if the text has the canonical shape.
    pub(super) fn build(text: &[u8], labels: &Labels) -> Option<Vec<u8>> {
        let (name, pairs) = split(text)?;
        let view = labels.as_view();
        if view.len() > MAX_RECIPE_LABELS {
            return None;
        }
        let mut out = Vec::with_capacity(2 + 2 * pairs.as_ref().map_or(0, Vec::len));
        match &pairs {
            None => out.push(BARE),
            Some(p) if p.len() < 64 => out.push(p.len() as u8),
            Some(_) => return None,
        }
        let piece = |out: &mut Vec<u8>, bytes: &[u8], names: bool| -> Option<()> {
            let found = view.iter().enumerate().find_map(|(i, (n, v))| {
                let s = if names { n } else { v };
                (s.as_bytes() == bytes).then_some(i as u8)
            });
            match found {
                Some(i) if names => out.push(NAME | i),
                Some(i) => out.push(i),
                None if bytes.len() <= MAX_LITERAL => {
                    out.push(LITERAL + bytes.len() as u8);
                    out.extend_from_slice(bytes);
                }
                None => return None,
            }
            Some(())
        };
        piece(&mut out, name, false)?;
        for (n, v) in pairs.iter().flatten() {
            piece(&mut out, n, true)?;
            piece(&mut out, v, false)?;
        }
        renders(&out, labels, text).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

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

    fn see(c: &mut SeriesCache, key: &str, r: u64) -> Lookup {
        match c.lookup(key.as_bytes()) {
            Lookup::Miss => {
                let l = labels(&[("__name__", key), ("r", &r.to_string())]);
                let slot = c.insert_series(key.as_bytes(), l, SeriesRef(r));
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

    /// Keys keep no hash: the index's rehashes hash each key's text again, rendered from its
    /// recipe. Every kind of key (an inline recipe, a long recipe, a text kept as it is, a
    /// dropped text) is found after the index grew many times, after all but a tenth of them
    /// were evicted (the index shrunk), and after new keys took the freed entries; each hashes
    /// as its text. Seen failing with the rendering's closing quote left out.
    #[test]
    fn keys_are_found_after_the_index_grew_and_shrank() {
        let mut c = SeriesCache::new(Hasher::random());
        let long = "v".repeat(40);
        let text = |i: u64| match i % 4 {
            0 => format!("m{i}"),
            1 => format!("m{{a=\"{i}\",b=\"{long}\"}}"),
            2 => format!("m{{a=\"{i}\",b=\"x\",}}"),
            _ => format!("dropped{i}"),
        };
        let add = |c: &mut SeriesCache, i: u64| {
            let t = text(i);
            assert_eq!(c.lookup(t.as_bytes()), Lookup::Miss, "{t}");
            if i % 4 == 3 {
                c.insert_dropped(t.as_bytes());
                return;
            }
            let l = match i % 4 {
                0 => labels(&[("__name__", &t)]),
                // `b` relabelled: the recipe holds the text's value (a long recipe).
                1 => labels(&[("__name__", "m"), ("a", &i.to_string()), ("b", "w")]),
                _ => labels(&[("__name__", "m"), ("a", &i.to_string()), ("b", "x")]),
            };
            let slot = c.insert_series(t.as_bytes(), l, SeriesRef(i + 1));
            c.set_tracked(slot, true);
        };
        let kinds = |c: &SeriesCache| {
            let mut n = [0; 4];
            for k in &c.keys {
                match (&k.text, k.slot) {
                    (KeyText::Inline { .. }, _) => n[0] += 1,
                    (KeyText::Recipe(_), _) => n[1] += 1,
                    (KeyText::Raw(_), DROPPED) => n[3] += 1,
                    (KeyText::Raw(_), _) => n[2] += 1,
                }
            }
            n
        };
        for i in 0..4_000 {
            add(&mut c, i);
        }
        assert_eq!(kinds(&c), [1_000; 4]);
        let found = |c: &mut SeriesCache, i: u64| c.lookup(text(i).as_bytes()) != Lookup::Miss;
        assert!((0..4_000).all(|i| found(&mut c, i)));
        stale_of(&mut c, true);
        let grown = c.keys_index.capacity();
        // The next scrape has the first tenth only: the rest is evicted, below an eighth of
        // the high, so the index shrinks.
        assert!((0..400).all(|i| found(&mut c, i)));
        stale_of(&mut c, true);
        assert_eq!(c.keys(), 400);
        assert!(
            c.keys_index.capacity() < grown / 4,
            "{grown} -> {}",
            c.keys_index.capacity()
        );
        // New keys take the freed entries.
        for i in 4_000..5_000 {
            add(&mut c, i);
        }
        assert!(c.keys.len() < 4_100, "freed entries reused");
        let found_all = |c: &mut SeriesCache| {
            (0..400).chain(4_000..5_000).all(|i| found(c, i)) && (400..4_000).all(|i| !found(c, i))
        };
        assert!(found_all(&mut c));
        stale_of(&mut c, true);
        assert!(found_all(&mut c));
        let hash = key_hash(&c.keys, &c.slots, c.hasher);
        for (k, key) in c.keys.iter().enumerate().filter(|(_, k)| k.last != 0) {
            let i = match &key.text {
                KeyText::Raw(t) if key.slot == DROPPED => {
                    assert_eq!(hash(&(k as u32)), c.hasher.hash_bytes(t));
                    continue;
                }
                _ => c.slots[key.slot as usize].r.0 - 1,
            };
            assert_eq!(
                hash(&(k as u32)),
                c.hasher.hash_bytes(text(i).as_bytes()),
                "{}",
                text(i)
            );
        }
    }

    /// A target whose series all change every scrape (a request-id label): the cache holds
    /// one or two scrapes' worth, so its indexes must have their size after the first
    /// scrapes. Without room for the tombstones of the evicted entries they doubled again
    /// when those had used up the spare room, long after (a late step in resident memory).
    #[test]
    fn a_churning_cache_has_its_size_after_the_first_scrapes() {
        const SCRAPE: u64 = 1_500;
        let mut c = SeriesCache::new(Hasher::random());
        let mut sizes = Vec::new();
        for n in 0..300u64 {
            for i in 0..SCRAPE {
                let id = n * SCRAPE + i;
                assert_eq!(see(&mut c, &format!("m{id:x}"), id + 1), Lookup::Miss);
            }
            stale_of(&mut c, true);
            assert_eq!(c.series() as u64, SCRAPE);
            sizes.push((
                n,
                c.keys_index.allocation_size(),
                c.slots_index.allocation_size(),
            ));
        }
        let settled = sizes[3];
        let changed = sizes[3..]
            .iter()
            .find(|s| (s.1, s.2) != (settled.1, settled.2));
        assert_eq!(
            changed, None,
            "the indexes changed size after scrape 3 ({settled:?})"
        );
        // A target that shrinks for good gives the room back.
        for _ in 0..2 {
            see(&mut c, "m0", 1);
            stale_of(&mut c, true);
        }
        assert!(c.slots_index.allocation_size() < settled.2 / 4);
        assert!(c.keys_index.allocation_size() < settled.1 / 4);
    }

    #[test]
    fn hits_duplicates_staleness_and_eviction() {
        let mut c = SeriesCache::new(Hasher::random());
        assert_eq!(see(&mut c, "a", 1), Lookup::Miss);
        assert_eq!(see(&mut c, "b", 2), Lookup::Miss);
        assert!(stale_of(&mut c, true).is_empty());

        assert!(matches!(
            see(&mut c, "a", 1),
            Lookup::Series {
                r: SeriesRef(1),
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
        assert_eq!(stale_of(&mut c, true), vec![SeriesRef(2)]);
        assert_eq!((c.keys(), c.series()), (1, 1));
        // Nothing more for b.
        see(&mut c, "a", 1);
        assert!(stale_of(&mut c, true).is_empty());
        // A failed scrape marks everything of the last one, once.
        assert_eq!(stale_of(&mut c, false), vec![SeriesRef(1)]);
        assert!(stale_of(&mut c, false).is_empty());
    }

    #[test]
    fn texts_with_the_same_labels_share_a_series() {
        let mut c = SeriesCache::new(Hasher::random());
        let l = labels(&[("__name__", "a"), ("x", "1")]);
        let slot = c.insert_series(b"a{x=\"1\"}", l.clone(), SeriesRef(7));
        c.set_tracked(slot, true);
        assert_eq!(c.lookup(b"a{ x=\"1\" }"), Lookup::Miss);
        assert_eq!(c.find_series(&l), Some(slot));
        assert_eq!(
            c.link(b"a{ x=\"1\" }", slot),
            Lookup::Series {
                slot,
                r: SeriesRef(7),
                duplicate: true
            }
        );
        assert_eq!((c.keys(), c.series()), (2, 1));
        assert!(matches!(
            c.lookup(b"a{ x=\"1\" }"),
            Lookup::Series {
                r: SeriesRef(7),
                ..
            }
        ));
    }

    #[test]
    fn failed_scrapes_flush_only_when_the_cache_balloons() {
        let mut c = SeriesCache::new(Hasher::random());
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
        let mut c = SeriesCache::new(Hasher::random());
        for (k, r) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
            see(&mut c, k, r);
        }
        assert!(stale_of(&mut c, true).is_empty());
        // Fails after appending `a` and `b`; `c` was looked up but not appended (over the
        // sample limit); `d` never reached. As in Prometheus: `c` and `d` are marked.
        see(&mut c, "a", 1);
        see(&mut c, "b", 2);
        assert!(matches!(c.lookup(b"c"), Lookup::Series { .. }));
        assert_eq!(stale_of(&mut c, false), vec![SeriesRef(3), SeriesRef(4)]);
        // What the failed scrape kept is what the next one compares with.
        see(&mut c, "a", 1);
        assert_eq!(stale_of(&mut c, true), vec![SeriesRef(2)]);
        // A failed fetch appends nothing: everything left is marked, once.
        assert_eq!(stale_of(&mut c, false), vec![SeriesRef(1)]);
        assert!(stale_of(&mut c, false).is_empty());
    }

    #[test]
    fn a_series_that_turns_to_explicit_timestamps_is_marked() {
        // Prometheus tracks only samples without a timestamp: a tracked series whose next
        // sample carries one gets a marker at the scrape time.
        let mut c = SeriesCache::new(Hasher::random());
        see(&mut c, "a", 1);
        assert!(stale_of(&mut c, true).is_empty());
        let Lookup::Series { slot, .. } = c.lookup(b"a") else {
            panic!("cached")
        };
        c.set_tracked(slot, false);
        assert_eq!(stale_of(&mut c, true), vec![SeriesRef(1)]);
    }

    #[test]
    fn explicit_timestamps_are_not_tracked() {
        let mut c = SeriesCache::new(Hasher::random());
        let slot = c.insert_series(b"a", labels(&[("__name__", "a")]), SeriesRef(1));
        c.set_tracked(slot, false);
        stale_of(&mut c, true);
        assert!(stale_of(&mut c, true).is_empty());
    }

    /// Texts whose hashes all collide are told apart by their text, whether it is kept as a
    /// recipe, as bytes, or dropped.
    #[test]
    fn colliding_text_hashes_are_compared_exactly() {
        let mut c = SeriesCache::new(Hasher::with_bits(3, 0));
        let target = [("instance", "h:1"), ("job", "j")];
        let texts: Vec<String> = (0..20)
            .map(|i| format!("m{{a=\"{i}\",b=\"x\"}}"))
            .chain(["m".into(), "m{}".into(), "m{a=\"1\", b=\"x\"}".into()])
            .collect();
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(c.lookup(t.as_bytes()), Lookup::Miss, "{t}");
            let mut l = labels(&target).builder();
            l.set("__name__", "m");
            l.set("text", &i.to_string());
            c.insert_series(t.as_bytes(), l.labels(), SeriesRef(i as u64));
        }
        c.insert_dropped(b"dropped{a=\"1\"}");
        for (i, t) in texts.iter().enumerate() {
            match c.lookup(t.as_bytes()) {
                Lookup::Series { r, .. } => assert_eq!(r, SeriesRef(i as u64), "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
        assert_eq!(c.lookup(b"dropped{a=\"1\"}"), Lookup::Dropped);
        assert_eq!(c.lookup(b"dropped{a=\"2\"}"), Lookup::Miss);
        assert_eq!(c.lookup(b"m{a=\"1\",b=\"y\"}"), Lookup::Miss);
        assert_eq!(c.lookup(b"m{a=\"1\",b=\"x\"} "), Lookup::Miss);
    }

    #[test]
    fn recipes_render_their_text_only() {
        let l = labels(&[
            ("__name__", "http_requests_total"),
            ("code", "200"),
            ("exported_job", "api"),
            ("instance", "h:1"),
            ("job", "j"),
            ("path", "/a\"b"),
        ]);
        // Exposition order differs from label order; `job` was renamed; an escaped value and
        // a relabelled value are literals.
        let text = br#"http_requests_total{job="api",path="/a\"b",code="200",le="was"}"#;
        let r = recipe::build(text, &l).expect("canonical text");
        assert!(recipe::renders(&r, &l, text));
        assert!(r.len() < text.len() / 2, "recipe {} bytes", r.len());
        assert!(!recipe::renders(
            &r,
            &l,
            br#"http_requests_total{job="api",path="/a\"b",code="201",le="was"}"#
        ));
        assert!(!recipe::renders(&r, &l, &text[..text.len() - 1]));
        let mut longer = text.to_vec();
        longer.push(b' ');
        assert!(!recipe::renders(&r, &l, &longer));
        // Whitespace goes into a literal (still exact); a trailing comma keeps the text.
        let spaced = br#"m{a="1", b="2"}"#;
        assert!(recipe::renders(
            &recipe::build(spaced, &l).unwrap(),
            &l,
            spaced
        ));
        assert!(recipe::build(br#"m{a="1",}"#, &l).is_none());
        let bare = recipe::build(b"http_requests_total", &l).unwrap();
        assert_eq!(bare.len(), 2);
        assert!(recipe::renders(&bare, &l, b"http_requests_total"));
        assert!(!recipe::renders(&bare, &l, b"http_requests_total{}"));
    }

    /// The key expected next is the one after the key last looked up or added (the first
    /// scrape's order), found by an exact compare of the line's start with its text.
    #[test]
    fn the_next_key_is_expected_in_the_order_of_the_first_scrape() {
        let mut c = SeriesCache::new(Hasher::random());
        let series = [
            ("a{x=\"1\"}", labels(&[("__name__", "a"), ("x", "1")])),
            ("a{x=\"2\"}", labels(&[("__name__", "a"), ("x", "2")])),
            ("b", labels(&[("__name__", "b")])),
            (
                "c { y=\"a b\" }",
                labels(&[("__name__", "c"), ("y", "a b")]),
            ),
        ];
        for (i, (text, l)) in series.iter().enumerate() {
            assert_eq!(c.lookup(text.as_bytes()), Lookup::Miss);
            c.insert_series(text.as_bytes(), l.clone(), SeriesRef(i as u64));
        }
        assert_eq!(c.lookup(b"d"), Lookup::Miss);
        c.insert_dropped(b"d");
        c.end_successful(true, |_| {});

        for (i, (text, _)) in series.iter().enumerate() {
            assert_eq!(
                c.expected_len(format!("{text} 5").as_bytes()),
                Some(text.len())
            );
            assert_eq!(
                c.take_expected(),
                Lookup::Series {
                    slot: i as u32,
                    r: SeriesRef(i as u64),
                    duplicate: false
                }
            );
        }
        assert_eq!(c.expected_len(b"d 1"), Some(1));
        assert_eq!(c.take_expected(), Lookup::Dropped);
        assert_eq!(
            c.expected_len(b"a{x=\"1\"} 1"),
            None,
            "no key after the last"
        );
        c.end_successful(true, |_| {});

        // A new scrape expects the first key again; another text is not taken for it.
        assert_eq!(c.expected_len(b"a{x=\"2\"} 1"), None);
        assert_eq!(c.expected_len(b"a{x=\"1\""), None);
        assert_eq!(c.expected_len(b"a{x=\"1\"}"), Some(8));
        // A lookup moves the expectation to the key after the one it found.
        assert!(matches!(
            c.lookup(series[3].0.as_bytes()),
            Lookup::Series { slot: 3, .. }
        ));
        assert_eq!(c.expected_len(b"a{x=\"1\"} 1"), None);
        assert_eq!(c.expected_len(b"d 1"), Some(1));
        // Seen twice in one scrape: a duplicate, as a lookup says.
        assert!(matches!(c.take_expected(), Lookup::Dropped));
        assert!(matches!(
            c.lookup(series[2].0.as_bytes()),
            Lookup::Series {
                slot: 2,
                duplicate: false,
                ..
            }
        ));
        assert!(matches!(
            c.lookup(series[2].0.as_bytes()),
            Lookup::Series {
                slot: 2,
                duplicate: true,
                ..
            }
        ));
    }
}
