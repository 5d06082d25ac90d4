//! [`Labels`] and [`LabelsRef`]: a label set, pairs sorted by name (byte order, as Go compares
//! strings), names unique and values non-empty when built by
//! [`LabelsBuilder`](super::LabelsBuilder). Two forms:
//!
//! - **Kept: [`Labels`]**, the set as symbols into the process's table of label pairs
//!   ([`super::symbols`]): one allocation per set holding a count byte and a varint symbol
//!   per pair (9 to 17 bytes for 8 labels, plus an 8-byte header), each distinct pair
//!   stored once in the process, in the form the remote_write encoder copies. `Clone`
//!   shares the allocation (reference-counted, behind a one-word pointer), so every holder
//!   of a series (scrape cache, the instance's series table, each remote_write endpoint)
//!   points at one copy, freed with the last holder.
//!   Equal sets have equal symbols, so equality compares those bytes.
//! - **On the wire: the WAL's form**, what a WAL Series record carries after each ref
//!   (`uvarint` being unsigned LEB128):
//!
//!   ```text
//!   uvarint n, then n × (uvarint len, name bytes, uvarint len, value bytes)
//!   ```
//!
//!   A record read from disk is a [`LabelsRef`] over these bytes without copying; a kept set
//!   is written in this form ([`LabelsRef::write_wire`]) and hashed over it, so both forms of
//!   one set hash and compare equal.
//!
//! A [`LabelsRef`] is either form, borrowed. Lookups walk the set, which is fine for the
//! handful of labels a series has. Every constructor validates (well-formed varints, UTF-8),
//! so accessors never fail; bytes read from another writer's WAL are taken as they are (order
//! is not checked, Prometheus always sorts).

use std::fmt;

use std::cell::RefCell;

use super::symbols::{pair_name, SymbolIndex, SymbolPairs, SymbolSet};

/// An immutable, shared label set (see the module docs).
#[derive(Clone)]
pub struct Labels(SymbolSet);

/// A borrowed label set in either form (see the module docs), validated.
#[derive(Clone, Copy)]
pub struct LabelsRef<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// The WAL's form.
    Wire(&'a [u8]),
    /// A kept set.
    Sym(&'a SymbolSet),
}

/// Why bytes are not a label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A varint or a string runs past the end.
    #[error("label set truncated")]
    Short,
    /// A name or value is not UTF-8 (at this byte offset of the label set).
    #[error("invalid UTF-8 in label at byte {0}")]
    Utf8(usize),
    /// A varint longer than it needs to be (at this byte offset): Prometheus and agentctl
    /// always write the shortest, and the form must be canonical for a set read from disk to
    /// compare and hash equal to the same set kept in memory.
    #[error("label set has an over-long varint at byte {0}")]
    NonMinimal(usize),
}

/// Appends `x` as an unsigned LEB128 varint.
pub(crate) fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push((x as u8) | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

/// Bytes of `x` as an unsigned LEB128 varint.
pub(crate) fn uvarint_len(mut x: u64) -> usize {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

/// Reads a uvarint at `*pos`; `None` when truncated or longer than 10 bytes. The one- and
/// two-byte cases (every length below 128, every symbol below 16,384) are inlined into the hot
/// readers; longer ones take the call.
#[inline(always)]
pub(super) fn read_uvarint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *b.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(u64::from(first));
    }
    if let Some(&second) = b.get(*pos + 1) {
        if second < 0x80 {
            *pos += 2;
            return Some(u64::from(first & 0x7f) | (u64::from(second) << 7));
        }
    }
    read_uvarint_long(b, pos)
}

#[cold]
#[inline(never)]
fn read_uvarint_long(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut x = 0u64;
    let mut shift = 0u32;
    for i in 0..10 {
        let byte = *b.get(*pos + i)?;
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            *pos += i + 1;
            return Some(x | (u64::from(byte) << shift));
        }
        x |= u64::from(byte & 0x7f) << shift;
        shift += 7;
    }
    None
}

/// Reads a length-prefixed string at `*pos` (no UTF-8 check).
#[inline]
fn read_bytes<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let n = usize::try_from(read_uvarint(b, pos)?).ok()?;
    let end = pos.checked_add(n)?;
    let s = b.get(*pos..end)?;
    *pos = end;
    Some(s)
}

/// A string of validated bytes. Validation happened at construction; should the bytes
/// somehow not be UTF-8, the empty string is the harmless answer.
#[inline]
fn as_str(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Labels(SymbolSet::new(0, std::iter::empty()))
    }

    /// Builds a label set from pairs in any order. Pairs with an empty value are dropped; when
    /// a name repeats, the later pair wins (as repeated `Builder.Set` calls do).
    pub fn from_pairs<I, N, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut b = super::LabelsBuilder::new();
        for (n, v) in pairs {
            b.set(n.as_ref(), v.as_ref());
        }
        b.labels()
    }

    /// The set of `n` pairs whose validated strings, in the set's order, `strings` yields
    /// (name, value, name, value, ...): the builder's.
    pub(super) fn from_strings<'s>(n: usize, strings: impl Iterator<Item = &'s [u8]>) -> Self {
        Labels(SymbolSet::new(n, strings))
    }

    /// The borrowed view.
    #[inline]
    pub fn as_view(&self) -> LabelsRef<'_> {
        LabelsRef(Repr::Sym(&self.0))
    }

    /// The labels by position, for reading them out of order (the scrape cache's compare):
    /// `None` for a set of more than 32 labels.
    #[inline]
    pub fn index(&self) -> Option<LabelIndex<'_>> {
        self.0.index().map(LabelIndex)
    }

    /// The set in the wire form (tests).
    #[cfg(test)]
    pub(crate) fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.as_view().write_wire(&mut out);
        out
    }

    /// Heap bytes of the set's own allocation (for memory accounting): its symbols plus its
    /// count and length. The pairs are the process table's, shared by every set.
    pub fn heap_size(&self) -> usize {
        self.0.heap_size()
    }

    /// Whether both share one buffer (not only equal bytes).
    pub fn ptr_eq(&self, other: &Labels) -> bool {
        self.0.ptr_eq(&other.0)
    }

    pub fn iter(&self) -> LabelsIter<'_> {
        self.as_view().iter()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.as_view().get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.as_view().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A builder starting from these labels.
    pub fn builder(&self) -> super::LabelsBuilder {
        let mut b = super::LabelsBuilder::new();
        b.reset(self);
        b
    }
}

impl Default for Labels {
    fn default() -> Self {
        Labels::empty()
    }
}

impl PartialEq for Labels {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.0.ptr_eq(&other.0) || self.0.symbol_bytes() == other.0.symbol_bytes()
    }
}

impl Eq for Labels {}

impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_view().hash(state);
    }
}

impl PartialEq<LabelsRef<'_>> for Labels {
    fn eq(&self, other: &LabelsRef<'_>) -> bool {
        self.as_view() == *other
    }
}

impl PartialEq for LabelsRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self.0, other.0) {
            (Repr::Wire(a), Repr::Wire(b)) => a == b,
            (Repr::Sym(a), Repr::Sym(b)) => a.ptr_eq(b) || a.symbol_bytes() == b.symbol_bytes(),
            _ => self.len() == other.len() && self.raw_pairs().eq(other.raw_pairs()),
        }
    }
}

impl Eq for LabelsRef<'_> {}

/// Over the pairs, so both forms of one set hash alike.
impl std::hash::Hash for LabelsRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for (n, v) in self.raw_pairs() {
            n.hash(state);
            v.hash(state);
        }
    }
}

/// A kept set's labels by position ([`Labels::index`]).
pub struct LabelIndex<'a>(SymbolIndex<'a>);

impl<'a> LabelIndex<'a> {
    /// Labels of the largest set that has a [`LabelIndex`].
    pub const MAX_LABELS: usize = super::symbols::MAX_INDEXED;

    /// The name and value of label `i`.
    #[inline]
    pub fn label(&self, i: usize) -> Option<(&'a [u8], &'a [u8])> {
        self.0.get(i)
    }
}

thread_local! {
    /// [`LabelsRef::with_wire`]'s buffer for kept sets.
    static WIRE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = LabelsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> LabelsRef<'a> {
    /// Parses one label set at the start of `b`, validating structure and UTF-8. Returns the
    /// set and the number of bytes it spans.
    pub fn parse(b: &'a [u8]) -> Result<(LabelsRef<'a>, usize), ParseError> {
        // A varint of more than one byte ending in a zero byte is over-long.
        let minimal = |at: usize, end: usize| {
            if end - at > 1 && b[end - 1] == 0 {
                Err(ParseError::NonMinimal(at))
            } else {
                Ok(())
            }
        };
        let mut pos = 0;
        let n = read_uvarint(b, &mut pos).ok_or(ParseError::Short)?;
        minimal(0, pos)?;
        for _ in 0..n {
            for _ in 0..2 {
                let at = pos;
                let len = read_uvarint(b, &mut pos).ok_or(ParseError::Short)?;
                minimal(at, pos)?;
                let start = pos;
                pos = usize::try_from(len)
                    .ok()
                    .and_then(|l| pos.checked_add(l))
                    .filter(|&end| end <= b.len())
                    .ok_or(ParseError::Short)?;
                if std::str::from_utf8(&b[start..pos]).is_err() {
                    return Err(ParseError::Utf8(at));
                }
            }
        }
        Ok((LabelsRef(Repr::Wire(&b[..pos])), pos))
    }

    /// A kept set with these labels (the same allocation when this is a view of one).
    pub fn to_owned(self) -> Labels {
        match self.0 {
            Repr::Sym(s) => Labels(s.clone()),
            Repr::Wire(_) => {
                Labels::from_strings(self.len(), self.raw_pairs().flat_map(|(n, v)| [n, v]))
            }
        }
    }

    /// Appends the set in the wire form (a WAL Series record's labels).
    pub fn write_wire(self, out: &mut Vec<u8>) {
        match self.0 {
            Repr::Wire(b) => out.extend_from_slice(b),
            Repr::Sym(_) => {
                put_uvarint(out, self.len() as u64);
                for (n, v) in self.raw_pairs() {
                    put_uvarint(out, n.len() as u64);
                    out.extend_from_slice(n);
                    put_uvarint(out, v.len() as u64);
                    out.extend_from_slice(v);
                }
            }
        }
    }

    /// Calls `f` with the set in the wire form: the bytes themselves for a record's view, a
    /// per-thread buffer written by [`write_wire`](Self::write_wire) for a kept set.
    pub fn with_wire<R>(self, mut f: impl FnMut(&[u8]) -> R) -> R {
        match self.0 {
            Repr::Wire(b) => f(b),
            Repr::Sym(_) => {
                let reused = WIRE.try_with(|cell| {
                    // Busy when `f` itself asked for a set's wire form.
                    let mut buf = cell.try_borrow_mut().ok()?;
                    buf.clear();
                    self.write_wire(&mut buf);
                    let r = f(&buf);
                    if buf.capacity() > 1 << 16 {
                        *buf = Vec::new();
                    }
                    Some(r)
                });
                if let Ok(Some(r)) = reused {
                    return r;
                }
                // No buffer to reuse (busy, or the thread is exiting).
                let mut buf = Vec::new();
                self.write_wire(&mut buf);
                f(&buf)
            }
        }
    }

    /// Starts bringing the set into the CPU cache ahead of a read that needs it (a hint:
    /// nothing observable changes). A wire-form set cold in memory costs a cache miss per
    /// 64-byte line, and walking it (each string's length says where the next one starts)
    /// waits for those misses one after the other; this issues one load per line, independent
    /// of each other, so the misses overlap with each other and with the caller's work until
    /// the walk. A kept set's symbols are one line (its pairs are the table's, which stay
    /// cached): one load. A plain load kept alive by `black_box` (the prefetch instruction
    /// needs `unsafe`).
    #[inline]
    pub fn warm(self) {
        let b = match self.0 {
            Repr::Wire(b) => b,
            Repr::Sym(s) => return s.warm(),
        };
        let mut x = b.last().copied().unwrap_or(0);
        for i in (0..b.len()).step_by(64) {
            x ^= b[i];
        }
        std::hint::black_box(x);
    }

    #[inline]
    pub fn iter(self) -> LabelsIter<'a> {
        LabelsIter(self.raw_pairs())
    }

    /// The `(name, value)` pairs as bytes, in stored (name) order, for paths that only copy,
    /// hash or compare them: [`iter`](LabelsRef::iter) without re-checking UTF-8, which every
    /// constructor checked already. The remote_write encoder takes a kept set's pairs encoded
    /// instead ([`RawPairs::next_label`]).
    #[inline]
    pub fn raw_pairs(self) -> RawPairs<'a> {
        match self.0 {
            Repr::Wire(b) => {
                let mut pos = 0;
                let left = read_uvarint(b, &mut pos).unwrap_or(0);
                RawPairs(PairsRepr::Wire { b, pos, left })
            }
            Repr::Sym(s) => RawPairs(PairsRepr::Sym(s.pairs())),
        }
    }

    pub fn len(self) -> usize {
        match self.0 {
            Repr::Wire(b) => {
                let mut pos = 0;
                read_uvarint(b, &mut pos).unwrap_or(0) as usize
            }
            Repr::Sym(s) => s.len(),
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    pub fn get(self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn contains(self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Iterator over the `(name, value)` pairs of a label set as bytes, in stored (name) order
/// ([`LabelsRef::raw_pairs`]).
#[derive(Clone)]
pub struct RawPairs<'a>(PairsRepr<'a>);

#[derive(Clone)]
enum PairsRepr<'a> {
    Wire { b: &'a [u8], pos: usize, left: u64 },
    Sym(SymbolPairs<'a>),
}

impl<'a> Iterator for RawPairs<'a> {
    type Item = (&'a [u8], &'a [u8]);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            PairsRepr::Wire { b, pos, left } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                Some((read_bytes(b, pos)?, read_bytes(b, pos)?))
            }
            PairsRepr::Sym(p) => p.next(),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = match &self.0 {
            PairsRepr::Wire { left, .. } => *left,
            PairsRepr::Sym(p) => p.remaining(),
        };
        let n = usize::try_from(left).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl ExactSizeIterator for RawPairs<'_> {}

impl<'a> RawPairs<'a> {
    /// The next pair in the form the remote_write encoder takes it: a kept set's pairs are
    /// already encoded ([`super::symbols`]), a wire-form set's are its strings.
    #[inline]
    pub fn next_label(&mut self) -> Option<LabelPair<'a>> {
        match &mut self.0 {
            PairsRepr::Sym(p) => p
                .next_encoded()
                .map(|(field, readable)| LabelPair::Encoded { field, readable }),
            PairsRepr::Wire { .. } => self.next().map(|(n, v)| LabelPair::Strings(n, v)),
        }
    }
}

/// A pair as [`RawPairs::next_label`] gives it.
#[derive(Clone, Copy, Debug)]
pub enum LabelPair<'a> {
    /// The `prometheus.Label` message as field 1 of a `prometheus.TimeSeries` (key, length,
    /// message: the encoding agent/src/remote_write/proto.rs writes), and the bytes readable
    /// from its start (at least [`LabelPair::READABLE`], zero after the field), so a short
    /// field can be copied as one fixed-size move.
    Encoded { field: &'a [u8], readable: &'a [u8] },
    /// The name and value.
    Strings(&'a [u8], &'a [u8]),
}

impl<'a> LabelPair<'a> {
    /// Bytes readable from the start of an [`LabelPair::Encoded`] field, at least.
    pub const READABLE: usize = super::symbols::READABLE;

    /// The label's name.
    #[inline]
    pub fn name(self) -> &'a [u8] {
        match self {
            LabelPair::Encoded { field, .. } => pair_name(field),
            LabelPair::Strings(n, _) => n,
        }
    }
}

/// Iterator over the `(name, value)` pairs of a label set, in stored (name) order.
#[derive(Clone)]
pub struct LabelsIter<'a>(RawPairs<'a>);

impl<'a> Iterator for LabelsIter<'a> {
    type Item = (&'a str, &'a str);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (n, v) = self.0.next()?;
        Some((as_str(n), as_str(v)))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for LabelsIter<'_> {}

impl<'a> IntoIterator for LabelsRef<'a> {
    type Item = (&'a str, &'a str);
    type IntoIter = LabelsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Prometheus's `Labels.String()`: `{a="b", c="d"}`, values quoted as Go's `strconv.Quote`.
impl fmt::Display for LabelsRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
            f.write_str("=")?;
            write_go_quoted(f, v)?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for LabelsRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_view(), f)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_view(), f)
    }
}

/// Go's `strconv.Quote`: `"` and `\` escaped; printable runes (Unicode letters, marks,
/// numbers, punctuation, symbols and U+0020) kept; `\a \b \f \n \r \t \v` for those
/// controls; other runes below U+0020 and U+007F as `\xNN`; other non-printable runes as
/// `\uNNNN` or `\UNNNNNNNN` (lowercase hex).
pub fn write_go_quoted(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            ' '..='~' => out.write_char(c)?,
            '\u{07}' => out.write_str("\\a")?,
            '\u{08}' => out.write_str("\\b")?,
            '\u{0C}' => out.write_str("\\f")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '\u{0B}' => out.write_str("\\v")?,
            c if (c as u32) < 0x20 || c == '\u{7F}' => write!(out, "\\x{:02x}", c as u32)?,
            c if is_go_printable(c) => out.write_char(c)?,
            c if (c as u32) < 0x1_0000 => write!(out, "\\u{:04x}", c as u32)?,
            c => write!(out, "\\U{:08x}", c as u32)?,
        }
    }
    out.write_char('"')
}

/// Go's `strconv.Quote` as a `String`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    // Writing into a String cannot fail.
    let _ = write_go_quoted(&mut out, s);
    out
}

/// Go's `unicode.IsPrint` for a non-ASCII rune. Rust's `escape_debug` keeps exactly the same
/// categories (L, M, N, P, S; it escapes C* and Z* other than U+0020), except that a
/// grapheme extender is escaped when it starts a string; preceding the rune with `a` avoids
/// that case, so the rune is printable iff it comes out unescaped.
fn is_go_printable(c: char) -> bool {
    let mut buf = [0u8; 5];
    buf[0] = b'a';
    let len = 1 + c.encode_utf8(&mut buf[1..]).len();
    match std::str::from_utf8(&buf[..len]) {
        Ok(s) => s.escape_debug().nth(1) == Some(c),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn sorted_unique_non_empty_in_wire_form() {
        let ls = l(&[
            ("job", "node"),
            ("__name__", "up"),
            ("c", ""),
            ("instance", "a:1"),
        ]);
        assert_eq!(
            ls.wire(),
            b"\x03\x08__name__\x02up\x08instance\x03a:1\x03job\x04node".as_slice()
        );
        assert_eq!(ls.get("job"), Some("node"));
        assert_eq!(ls.get("c"), None);
        assert!(!ls.contains("zz"));
        assert_eq!(ls.len(), 3);
        let wire = ls.wire();
        let (r, used) = LabelsRef::parse(&wire).expect("valid");
        assert_eq!(used, ls.wire().len());
        assert_eq!(r.to_owned(), ls);
        assert_eq!(ls, r);
        assert!(Labels::empty().is_empty());
        assert_eq!(Labels::empty().wire(), [0u8]);
        // Later pairs win, as repeated Builder.Set calls.
        assert_eq!(l(&[("b", "2"), ("b", "3")]).get("b"), Some("3"));
    }

    #[test]
    fn a_wire_view_and_a_kept_set_compare_and_hash_alike() {
        let kept = l(&[("job", "node"), ("__name__", "up"), ("instance", "a:1")]);
        let wire = kept.wire();
        let (view, _) = LabelsRef::parse(&wire).expect("valid");
        assert!(view == kept.as_view() && kept.as_view() == view);
        assert_eq!(kept, view);
        let h = crate::labels::Hasher::random();
        assert_eq!(h.hash(view), h.hash(kept.as_view()));
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(
            std::hash::BuildHasher::hash_one(&state, view),
            std::hash::BuildHasher::hash_one(&state, kept.as_view())
        );
        // One label different: unequal in both directions and across forms.
        let other = l(&[("job", "node"), ("__name__", "up"), ("instance", "a:2")]);
        assert!(view != other.as_view() && other.as_view() != view);
        assert!(kept != other);
        assert_eq!(view.to_owned(), kept);
    }

    #[test]
    fn label_pairs_are_the_pairs_encoded_or_as_strings() {
        let long = "v".repeat(40);
        let kept = l(&[("a", "1"), ("b", long.as_str()), ("c", "")]);
        let wire = kept.wire();
        let (view, _) = LabelsRef::parse(&wire).expect("valid");
        for set in [kept.as_view(), view] {
            let mut pairs = set.raw_pairs();
            let mut got = Vec::new();
            while let Some(p) = pairs.next_label() {
                match (p, set.0) {
                    (LabelPair::Encoded { field, readable }, Repr::Sym(_)) => {
                        assert!(readable.starts_with(field));
                        assert!(readable.len() >= LabelPair::READABLE);
                        assert_eq!(field[0], 0x0a, "field 1, length-delimited");
                    }
                    (LabelPair::Strings(..), Repr::Wire(_)) => {}
                    _ => panic!("{p:?} from the other form"),
                }
                got.push(p.name());
            }
            assert_eq!(got, [&b"a"[..], b"b"]);
        }
    }

    #[test]
    fn display_is_prometheus_form_with_go_quoting() {
        assert_eq!(Labels::empty().to_string(), "{}");
        let ls = l(&[("job", "api"), ("a", "x\"y\\z\n\t")]);
        assert_eq!(ls.to_string(), r#"{a="x\"y\\z\n\t", job="api"}"#);
        // strconv.Quote: controls as \xNN / \a..\v, non-printable as \u, printable kept.
        assert_eq!(go_quote("\u{7}\u{1}\u{7f}"), r#""\a\x01\x7f""#);
        assert_eq!(go_quote("é日本\u{301}"), "\"é日本\u{301}\"");
        assert_eq!(
            go_quote("\u{a0}\u{200b}\u{2028}"),
            r#""\u00a0\u200b\u2028""#
        );
        assert_eq!(go_quote("\u{e0001}"), r#""\U000e0001""#);
    }

    #[test]
    fn parse_rejects_bad_input_and_long_strings_round_trip() {
        assert_eq!(
            LabelsRef::parse(b"\x01\x01a").unwrap_err(),
            ParseError::Short
        );
        assert_eq!(
            LabelsRef::parse(b"\x01\x01\xff\x00").unwrap_err(),
            ParseError::Utf8(1)
        );
        // Over-long varints (1 written as two bytes), as a count and as a length.
        assert_eq!(
            LabelsRef::parse(b"\x81\x00\x01a\x01b").unwrap_err(),
            ParseError::NonMinimal(0)
        );
        assert_eq!(
            LabelsRef::parse(b"\x01\x81\x00a\x01b").unwrap_err(),
            ParseError::NonMinimal(1)
        );
        let long = "v".repeat(300);
        let ls = l(&[("n", long.as_str())]);
        assert_eq!(ls.get("n"), Some(long.as_str()));
        assert_eq!(LabelsRef::parse(&ls.wire()).unwrap().1, ls.wire().len());
    }
}
