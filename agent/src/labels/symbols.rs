//! [`SymbolSet`]: a label set stored as numbers into the process's table of label pairs.
//!
//! The pairs of label sets repeat: every series of a target has the same `job` and
//! `instance`, a metric's series share its name, and a label's values are few. A
//! [`SymbolSet`] is the set's count and the number (symbol) of each pair, each a varint:
//!
//! ```text
//! uvarint n, then n × uvarint pair symbol
//! ```
//!
//! in one [`SharedBytes`] allocation: a symbol is 1 byte below 128, 2 below 16,384, 3 below
//! about 2 million (free numbers are reused smallest first), so a series with 8 labels (about
//! 160 bytes of text) keeps 9 to 17 bytes plus the allocation's 8-byte header. Each distinct
//! pair is kept once by the process-wide table, whatever the number of sets, instances or
//! remote_write endpoints that use it. A pair that only one series uses (a unique id as a
//! label value) costs more than inline text would: its slot (16 bytes), count, index entry and
//! allocation (at least 64 bytes, see [`READABLE`]). The measured effect is in
//! bench/analysis.md.
//!
//! **A pair is kept as the field the remote_write encoder writes for it**, field 1 of a
//! `prometheus.TimeSeries` holding a `prometheus.Label` message (the layout is in
//! agent/src/remote_write/proto.rs):
//!
//! ```text
//! 0x0a, uvarint len, [0x0a, uvarint name len, name], [0x12, uvarint value len, value]
//! ```
//!
//! (a field is left out when its string is empty, as protobuf's encoders do). The encoder
//! copies each pair as it is, once per sample, which is the table's hottest read; the other
//! readers of names and values (the series cache's compare of each scraped line, hashing and
//! writing a new series) read them out of it ([`split`]).
//!
//! The table never shrinks its slot arrays, counts or index (about 50 bytes per symbol at its
//! peak, the kept smaller arrays included); the pairs themselves are freed.
//!
//! The table:
//! - **Reading is lock-free.** Symbol `id` is slot `id` of an array of slots, each the
//!   address and length of the pair; reading a pair is a load of the array's address,
//!   one of the slot and the pair's own. A full array is replaced by a copy twice its size,
//!   and the old one is kept, so a reader that loaded it a moment before still reads a valid
//!   slot (the arrays made before the current one hold fewer slots than it in all).
//! - **Interning and releasing take one lock** (a mutex around the pair -> symbol index and
//!   each symbol's count), once per set built or freed, never per sample.
//! - **A symbol is counted once per occurrence in a live set** and freed with its last
//!   occurrence; its number is then reused. A set holds its symbols for its whole life, so a
//!   pair read through a set is alive while the set is borrowed: that is what makes the
//!   lock-free read sound (the only thing the `unsafe` below relies on).
//!
//! This module and [`super::thin`] are the crate's only `unsafe` code (`agent/src/lib.rs`
//! denies it elsewhere; scripts/test checks that no other module allows it).

#![allow(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashTable;

use super::set::{put_uvarint, read_uvarint, uvarint_len};
use super::thin::SharedBytes;

/// Slots of the first array; each next one has twice as many.
const FIRST: usize = 64;

/// A symbol's pair: a leaked `Box<[u8]>` (null when the symbol is free).
struct Slot {
    ptr: AtomicPtr<u8>,
    len: AtomicUsize,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            len: AtomicUsize::new(0),
        }
    }
}

struct Table {
    /// The first slot of the current array, indexed by symbol.
    slots: AtomicPtr<Slot>,
    state: Mutex<State>,
}

struct State {
    /// Symbols by their pair's hash (the pair compared on a match).
    index: HashTable<u32>,
    /// Occurrences of each symbol in live sets (0: free).
    counts: Vec<u32>,
    /// Free symbols, reused first, smallest first (a smaller number is a shorter varint).
    free: BinaryHeap<Reverse<u32>>,
    /// The index's hash seed, random per process (see [`super::Hasher`]).
    seed: u64,
    /// Every slot array made, the current one last. An array that is full is replaced by a
    /// copy twice its size; the old ones are kept (never freed, at most as many slots as the
    /// current one in all) because a reader may have loaded one just before.
    arrays: Vec<Box<[Slot]>>,
}

static TABLE: Table = Table {
    slots: AtomicPtr::new(std::ptr::null_mut()),
    state: Mutex::new(State {
        index: HashTable::new(),
        counts: Vec::new(),
        free: BinaryHeap::new(),
        seed: 0,
        arrays: Vec::new(),
    }),
};

/// Every pair's allocation has at least this many bytes (zero after the pair), so a copy of
/// a short pair can be one fixed-size move (the remote_write encoder's).
pub(super) const READABLE: usize = 64;

/// The protobuf keys of a pair's encoding (see the module docs), each length-delimited:
/// `TimeSeries.labels` (field 1), and in the `Label` message its `name` (1) and `value` (2).
const KEY_LABELS: u8 = 0x0a;
const KEY_NAME: u8 = 0x0a;
const KEY_VALUE: u8 = 0x12;

/// Appends the pair `(name, value)` as a `prometheus.Label` message in field 1 (see the
/// module docs): the form the table keeps a pair in, and what the remote_write encoder writes
/// for every label it does not copy from the table.
pub(crate) fn put_label(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let field = |s: &[u8]| {
        if s.is_empty() {
            0
        } else {
            1 + uvarint_len(s.len() as u64) + s.len()
        }
    };
    out.push(KEY_LABELS);
    put_uvarint(out, (field(name) + field(value)) as u64);
    for (key, s) in [(KEY_NAME, name), (KEY_VALUE, value)] {
        if !s.is_empty() {
            out.push(key);
            put_uvarint(out, s.len() as u64);
            out.extend_from_slice(s);
        }
    }
}

/// The name and value of an encoded pair (see [`put_label`]; the table only holds pairs it
/// encoded, so anything else reads as empty strings).
#[inline]
fn split(pair: &[u8]) -> (&[u8], &[u8]) {
    let mut pos = 0;
    let name = name_at(pair, &mut pos);
    (name, field(pair, &mut pos, KEY_VALUE))
}

/// The name of an encoded pair, leaving `*pos` after it.
#[inline]
fn name_at<'a>(pair: &'a [u8], pos: &mut usize) -> &'a [u8] {
    *pos = 1;
    if read_uvarint(pair, pos).is_none() {
        *pos = pair.len();
        return b"";
    }
    field(pair, pos, KEY_NAME)
}

/// The string of the field with key `key` at `*pos`, moving past it; empty when the field is
/// not there (an empty string is left out) or is cut short.
#[inline]
fn field<'a>(pair: &'a [u8], pos: &mut usize, key: u8) -> &'a [u8] {
    if pair.get(*pos) != Some(&key) {
        return b"";
    }
    *pos += 1;
    let Some(len) = read_uvarint(pair, pos) else {
        return b"";
    };
    let start = *pos;
    *pos = start.saturating_add(len as usize);
    pair.get(start..*pos).unwrap_or(b"")
}

/// The encoded pair of symbol `id` and the bytes readable from its start (at least
/// [`READABLE`]).
///
/// # Safety
/// The caller holds an occurrence of `id` (a live [`SymbolSet`] containing it, or the table's
/// lock with `id` counted) during `'a`.
///
/// Why the array read is in bounds and current: `id` was given a slot, in the array current
/// then, before any set holding it existed, and the caller got its set (or the lock) after
/// that; the array pointer only ever moves to larger copies, which are made under the lock
/// with every counted slot copied. So whichever array the load returns has slot `id`, and it
/// holds `id`'s pair: a slot changes only when its symbol is freed (the count reaching zero,
/// which the caller's occurrence prevents) or given out again after that.
#[inline]
unsafe fn resolve_readable<'a>(id: u32) -> (&'a [u8], &'a [u8]) {
    // What a symbol without a pair reads as (not reached: a held symbol has its pair).
    static NONE: [u8; READABLE] = [0; READABLE];
    let base = TABLE.slots.load(Ordering::Acquire);
    if base.is_null() {
        return (&NONE[..0], &NONE);
    }
    // SAFETY: see above: `id` is within the array `base` points at, which is never freed.
    let slot = unsafe { &*base.add(id as usize) };
    let ptr = slot.ptr.load(Ordering::Acquire);
    if ptr.is_null() {
        return (&NONE[..0], &NONE);
    }
    let len = slot.len.load(Ordering::Relaxed);
    // SAFETY: `ptr` is a leaked `Box<[u8]>` of `len.max(READABLE)` initialised bytes, freed
    // only with the symbol (above).
    let readable = unsafe { std::slice::from_raw_parts(ptr, len.max(READABLE)) };
    (&readable[..len], readable)
}

/// The encoded pair of symbol `id`.
///
/// # Safety
/// As for [`resolve_readable`].
#[inline]
unsafe fn resolve<'a>(id: u32) -> &'a [u8] {
    // SAFETY: the caller's promise is the one `resolve_readable` needs.
    unsafe { resolve_readable(id) }.0
}

fn lock() -> MutexGuard<'static, State> {
    // The state is consistent at every unlock: nothing in it panics half-way (counts that
    // would overflow abort).
    TABLE.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn hash(&self, s: &[u8]) -> u64 {
        twox_hash::XxHash64::oneshot(self.seed, s)
    }

    /// The current slot array (the lock is held, so it is the last one made).
    fn slots(&self) -> &[Slot] {
        self.arrays.last().map_or(&[], |a| &a[..])
    }

    /// The symbol of the encoded pair `s`, counted once more.
    fn intern(&mut self, s: &[u8]) -> u32 {
        if self.seed == 0 {
            self.seed = super::Hasher::random_seed() | 1;
        }
        let h = self.hash(s);
        // SAFETY (both closures): every symbol in the index is counted, and the lock is held.
        if let Some(&id) = self.index.find(h, |&id| unsafe { resolve(id) } == s) {
            let c = &mut self.counts[id as usize];
            *c = c.checked_add(1).unwrap_or_else(|| std::process::abort());
            return id;
        }
        let id = match self.free.pop() {
            Some(Reverse(id)) => id,
            None => {
                let id = u32::try_from(self.counts.len()).expect("fewer than 2^32 label pairs");
                self.counts.push(0);
                id
            }
        };
        if id as usize >= self.slots().len() {
            self.grow();
        }
        let (ptr, len) = {
            // Zero-padded to at least `READABLE` bytes (see `resolve_readable`).
            let mut b = vec![0u8; s.len().max(READABLE)].into_boxed_slice();
            b[..s.len()].copy_from_slice(s);
            (Box::into_raw(b).cast::<u8>(), s.len())
        };
        let slot = &self.slots()[id as usize];
        slot.len.store(len, Ordering::Relaxed);
        // Release: a set carrying `id` reaches other threads after this store.
        slot.ptr.store(ptr, Ordering::Release);
        self.counts[id as usize] = 1;
        let seed = self.seed;
        self.index.insert_unique(h, id, |&id| {
            twox_hash::XxHash64::oneshot(seed, unsafe { resolve(id) })
        });
        id
    }

    /// Replaces the slot array by a copy twice its size (see [`State::arrays`]).
    fn grow(&mut self) {
        let old = self.slots();
        let new: Box<[Slot]> = (0..(2 * old.len()).max(FIRST))
            .map(|i| match old.get(i) {
                Some(o) => Slot {
                    ptr: AtomicPtr::new(o.ptr.load(Ordering::Relaxed)),
                    len: AtomicUsize::new(o.len.load(Ordering::Relaxed)),
                },
                None => Slot::free(),
            })
            .collect();
        // Release: a reader that loads the new array sees the copied slots.
        TABLE
            .slots
            .store(new.as_ptr().cast_mut(), Ordering::Release);
        self.arrays.push(new);
    }

    /// Counts one occurrence of `id` fewer, freeing the symbol with its last.
    fn release(&mut self, id: u32) {
        let Some(c) = self.counts.get_mut(id as usize).filter(|c| **c > 0) else {
            return;
        };
        *c -= 1;
        if *c > 0 {
            return;
        }
        // SAFETY: `id` was counted until now and the lock is held.
        let h = self.hash(unsafe { resolve(id) });
        if let Ok(entry) = self.index.find_entry(h, |&x| x == id) {
            entry.remove();
        }
        let slot = &self.slots()[id as usize];
        let ptr = slot.ptr.swap(std::ptr::null_mut(), Ordering::Relaxed);
        if !ptr.is_null() {
            let len = slot.len.load(Ordering::Relaxed);
            // SAFETY: the slot held the `Box<[u8]>` `intern` leaked; no set holds `id` any
            // more, so nothing reads the pair (older arrays still point at it, but only
            // holders of `id` read slot `id`).
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len.max(READABLE)))
            });
        }
        self.free.push(Reverse(id));
    }
}

/// A label set as symbols (see the module docs). Clones share one allocation.
pub(super) struct SymbolSet(ManuallyDrop<SharedBytes>);

impl SymbolSet {
    /// The set of `n` pairs whose strings `strings` yields (name, value, name, value, ...),
    /// already validated and in the set's order.
    pub(super) fn new<'s>(n: usize, strings: impl Iterator<Item = &'s [u8]>) -> SymbolSet {
        // Encoded first: the caller's iterator does not run under the table's lock (were it
        // to build or drop a set, it would take the lock again).
        let mut encoded = Vec::new();
        let mut ends = Vec::with_capacity(n);
        let mut strings = strings.fuse();
        while let Some(name) = strings.next() {
            let value = strings.next();
            debug_assert!(value.is_some(), "two strings per pair");
            put_label(&mut encoded, name, value.unwrap_or(b""));
            ends.push(encoded.len());
        }
        debug_assert_eq!(ends.len(), n, "n pairs");
        let mut bytes = Vec::with_capacity(1 + 2 * ends.len());
        put_uvarint(&mut bytes, ends.len() as u64);
        {
            let mut state = lock();
            let mut start = 0;
            for &end in &ends {
                put_uvarint(&mut bytes, u64::from(state.intern(&encoded[start..end])));
                start = end;
            }
        }
        SymbolSet(ManuallyDrop::new(SharedBytes::new(&bytes)))
    }

    /// The count and the symbols: equal sets have equal bytes (one table, one symbol per
    /// pair).
    #[inline]
    pub(super) fn symbol_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        let mut pos = 0;
        read_uvarint(self.0.as_slice(), &mut pos).unwrap_or(0) as usize
    }

    /// The pairs in order.
    #[inline]
    pub(super) fn pairs(&self) -> SymbolPairs<'_> {
        let b = self.0.as_slice();
        let mut pos = 0;
        let left = read_uvarint(b, &mut pos).unwrap_or(0);
        SymbolPairs { b, pos, left }
    }

    /// The set's pairs by position, for reading them out of order (`None` past
    /// [`MAX_INDEXED`] pairs).
    #[inline]
    pub(super) fn index(&self) -> Option<SymbolIndex<'_>> {
        let b = self.0.as_slice();
        let mut pos = 0;
        let n = usize::try_from(read_uvarint(b, &mut pos)?).ok()?;
        let mut ids = [0u32; MAX_INDEXED];
        for o in ids.get_mut(..n)? {
            *o = u32::try_from(read_uvarint(b, &mut pos)?).ok()?;
        }
        Some(SymbolIndex {
            ids,
            n: n as u8,
            _set: std::marker::PhantomData,
        })
    }

    #[inline]
    pub(super) fn ptr_eq(&self, other: &SymbolSet) -> bool {
        self.0.ptr_eq(&other.0)
    }

    /// Heap bytes of the set's own allocation (the pairs are the table's, shared).
    pub(super) fn heap_size(&self) -> usize {
        self.0.heap_size()
    }

    /// Starts loading the set into the CPU cache (see `LabelsRef::warm` in set.rs).
    #[inline]
    pub(super) fn warm(&self) {
        std::hint::black_box(self.0.as_slice().first().copied());
    }
}

impl Clone for SymbolSet {
    #[inline]
    fn clone(&self) -> Self {
        SymbolSet(ManuallyDrop::new((*self.0).clone()))
    }
}

impl Drop for SymbolSet {
    fn drop(&mut self) {
        // SAFETY: `self.0` is not used after this (the value is being dropped).
        let shared = unsafe { ManuallyDrop::take(&mut self.0) };
        let Some(last) = shared.into_last() else {
            return;
        };
        let b = last.as_slice();
        let mut pos = 0;
        let n = read_uvarint(b, &mut pos).unwrap_or(0);
        let mut state = lock();
        for _ in 0..n {
            let Some(id) = read_uvarint(b, &mut pos).and_then(|x| u32::try_from(x).ok()) else {
                break;
            };
            state.release(id);
        }
    }
}

/// Pairs a [`SymbolIndex`] holds at most.
pub(super) const MAX_INDEXED: usize = 32;

/// A [`SymbolSet`]'s pairs by position.
pub(super) struct SymbolIndex<'a> {
    /// Symbols read from the set (only those: the field is private to this module).
    ids: [u32; MAX_INDEXED],
    n: u8,
    _set: std::marker::PhantomData<&'a SymbolSet>,
}

impl<'a> SymbolIndex<'a> {
    /// The name and value of pair `i`.
    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<(&'a [u8], &'a [u8])> {
        let &id = self.ids[..usize::from(self.n)].get(i)?;
        // SAFETY: `id` was read from the set borrowed for 'a, which holds it.
        Some(split(unsafe { resolve(id) }))
    }
}

/// Iterator over a [`SymbolSet`]'s pairs.
#[derive(Clone)]
pub(super) struct SymbolPairs<'a> {
    b: &'a [u8],
    pos: usize,
    left: u64,
}

impl<'a> SymbolPairs<'a> {
    pub(super) fn remaining(&self) -> u64 {
        self.left
    }

    /// The next pair encoded (see the module docs), with the bytes readable from its start
    /// (see [`READABLE`]).
    #[inline]
    pub(super) fn next_encoded(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let id = u32::try_from(read_uvarint(self.b, &mut self.pos)?).ok()?;
        // SAFETY: `id` was read from the set borrowed for 'a, which holds it.
        Some(unsafe { resolve_readable(id) })
    }
}

impl<'a> Iterator for SymbolPairs<'a> {
    type Item = (&'a [u8], &'a [u8]);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_encoded().map(|(pair, _)| split(pair))
    }
}

/// The name of an encoded pair ([`SymbolPairs::next_encoded`]), without reading its value.
#[inline]
pub(super) fn pair_name(pair: &[u8]) -> &[u8] {
    name_at(pair, &mut 0)
}

/// The table's size: symbols in use, and the heap bytes of the table (the pairs, the index,
/// the counts and the slot arrays).
pub fn table_stats() -> (usize, usize) {
    let state = lock();
    let mut live = 0;
    let mut bytes = state.index.allocation_size()
        + state.counts.capacity() * size_of::<u32>()
        + state.free.capacity() * size_of::<u32>()
        + state
            .arrays
            .iter()
            .map(|a| a.len() * size_of::<Slot>())
            .sum::<usize>();
    for (id, &c) in state.counts.iter().enumerate() {
        if c > 0 {
            live += 1;
            // SAFETY: counted, lock held. The allocation is padded (see `intern`).
            bytes += unsafe { resolve(id as u32) }.len().max(READABLE);
        }
    }
    (live, bytes)
}

/// How many occurrences of the pair `(name, value)` live sets hold (tests).
#[cfg(test)]
fn count_of(name: &str, value: &str) -> u32 {
    let mut s = Vec::new();
    put_label(&mut s, name.as_bytes(), value.as_bytes());
    let state = lock();
    let h = state.hash(&s);
    // SAFETY: counted, lock held.
    state
        .index
        .find(h, |&id| unsafe { resolve(id) } == s)
        .map_or(0, |&id| state.counts[id as usize])
}

#[cfg(test)]
mod tests {
    //! Also run under valgrind with labels::thin's command (`labels::symbols` as the filter).

    use super::*;

    fn set(strings: &[&str]) -> SymbolSet {
        SymbolSet::new(strings.len() / 2, strings.iter().map(|s| s.as_bytes()))
    }

    fn strings(s: &SymbolSet) -> Vec<String> {
        s.pairs()
            .flat_map(|(n, v)| [n, v])
            .map(|b| String::from_utf8(b.to_vec()).expect("utf8"))
            .collect()
    }

    #[test]
    fn equal_sets_have_equal_symbols_and_each_pair_is_counted_per_occurrence() {
        let a = set(&[
            "symbols-test-name",
            "symbols-test-v1",
            "symbols-test-x",
            "symbols-test-v1",
        ]);
        let b = set(&[
            "symbols-test-name",
            "symbols-test-v1",
            "symbols-test-x",
            "symbols-test-v1",
        ]);
        assert!(!a.ptr_eq(&b));
        assert_eq!(a.symbol_bytes(), b.symbol_bytes());
        assert_eq!(
            strings(&a),
            [
                "symbols-test-name",
                "symbols-test-v1",
                "symbols-test-x",
                "symbols-test-v1"
            ]
        );
        assert_eq!(a.len(), 2);
        assert_eq!(count_of("symbols-test-name", "symbols-test-v1"), 2);
        assert_eq!(count_of("symbols-test-x", "symbols-test-v1"), 2);
        // A clone is the same allocation and counts nothing more.
        let c = a.clone();
        assert!(c.ptr_eq(&a));
        assert_eq!(count_of("symbols-test-x", "symbols-test-v1"), 2);
        drop(a);
        assert_eq!(
            count_of("symbols-test-x", "symbols-test-v1"),
            2,
            "c holds the set"
        );
        drop(c);
        assert_eq!(count_of("symbols-test-x", "symbols-test-v1"), 1);
        drop(b);
        assert_eq!(count_of("symbols-test-x", "symbols-test-v1"), 0);
        assert_eq!(count_of("symbols-test-name", "symbols-test-v1"), 0, "freed");
    }

    #[test]
    fn a_pair_is_kept_as_its_remote_write_label_field() {
        // Field 1 of a TimeSeries holding the Label message, an empty string's field left out
        // (agent/src/remote_write/proto.rs's property tests compare whole requests with prost).
        let long = "v".repeat(200);
        let mut long_want = b"\x0a\xce\x01\x0a\x01n\x12\xc8\x01".to_vec();
        long_want.extend_from_slice(long.as_bytes());
        for (name, value, want) in [
            ("a", "1", b"\x0a\x06\x0a\x01a\x12\x011".to_vec()),
            ("job", "", b"\x0a\x05\x0a\x03job".to_vec()),
            ("", "x", b"\x0a\x03\x12\x01x".to_vec()),
            ("n", long.as_str(), long_want),
        ] {
            let mut pair = Vec::new();
            put_label(&mut pair, name.as_bytes(), value.as_bytes());
            assert_eq!(pair, want, "{name}={value}");
            assert_eq!(split(&pair), (name.as_bytes(), value.as_bytes()));
            assert_eq!(pair_name(&pair), name.as_bytes());
        }
        // Malformed (never in the table): empty strings, no panic.
        assert_eq!(split(b"\x0a"), (&b""[..], &b""[..]));
        assert_eq!(split(b"\x0a\x05\x0a\x09ab"), (&b""[..], &b""[..]));
    }

    #[test]
    fn a_set_of_eight_labels_is_its_symbols_and_a_header() {
        let names = [
            "__name__", "code", "handler", "instance", "job", "method", "pod", "service",
        ];
        let values = [
            "http_requests_total",
            "200",
            "/api/v1/items",
            "127.0.0.1:9100",
            "bench",
            "GET",
            "checkout-7d9f8c6b5-0000a",
            "checkout",
        ];
        let all: Vec<&str> = names
            .iter()
            .zip(values)
            .flat_map(|(n, v)| [*n, v])
            .collect();
        let s = set(&all);
        // One count byte and 8 symbols of one or two bytes.
        assert!(s.symbol_bytes().len() <= 17, "{}", s.symbol_bytes().len());
        assert_eq!(s.heap_size(), 8 + s.symbol_bytes().len());
        let index = s.index().expect("8 labels");
        assert!(index.get(7).is_some());
        assert_eq!(
            index.get(6),
            Some((&b"pod"[..], &b"checkout-7d9f8c6b5-0000a"[..]))
        );
        assert_eq!(index.get(8), None);
        let mut pairs = s.pairs();
        while let Some((pair, readable)) = pairs.next_encoded() {
            assert!(readable.starts_with(pair) && readable.len() >= READABLE);
        }
    }

    #[test]
    fn the_index_stops_at_32_labels() {
        let many: Vec<String> = (0..66).map(|i| format!("symbols-idx-{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(set(&refs[..64]).index().is_some());
        assert!(set(&refs[..66]).index().is_none());
        assert_eq!(set(&refs[..66]).pairs().count(), 33);
    }

    #[test]
    fn sets_built_and_dropped_on_many_threads_keep_their_pairs() {
        // Threads build sets from overlapping pairs and drop them while others read theirs,
        // so symbols are freed and their numbers reused all the time; every set must still read
        // back its own pairs (valgrind would also report a read of a freed pair).
        let handles: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..2000 {
                        let mine = format!("symbols-mt-{t}-{i}");
                        let shared = format!("symbols-mt-shared-{}", i % 7);
                        let s = set(&["symbols-mt-n", &shared, "symbols-mt-own", &mine]);
                        assert_eq!(
                            strings(&s),
                            ["symbols-mt-n", &shared, "symbols-mt-own", &mine]
                        );
                        kept.push((s, shared, mine));
                        if kept.len() > 50 {
                            let (s, shared, mine) = kept.swap_remove(i % 50);
                            assert_eq!(
                                strings(&s),
                                ["symbols-mt-n", &shared, "symbols-mt-own", &mine]
                            );
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(count_of("symbols-mt-n", "symbols-mt-shared-3"), 0);
    }
}
