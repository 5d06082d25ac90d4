//! Label sets for the scrape side: an immutable, compact [`Labels`] and a mutable
//! [`LabelsBuilder`] with Prometheus's `labels.Builder` semantics.
//!
//! Representation of [`Labels`]: one string buffer holding `name0 value0 name1 value1 ...`
//! back to back, plus one end offset per name and per value. Pairs are sorted by name (byte
//! order, as Go compares strings), names are unique and values are never empty (Prometheus
//! treats an empty value as an absent label). A label set costs two allocations however many
//! labels it has, and equality/hashing work on the raw buffers because the form is canonical.
//!
//! [`LabelsBuilder`] keeps its text in an append-only arena (`String`) and a sorted vector of
//! ranges into it. Resetting it from a [`Labels`] is one `memcpy`; a `set` appends text and
//! updates or inserts one entry; a `del` removes one entry. Once its buffers have grown to the
//! working size, relabelling a series through a reused builder allocates nothing until the
//! final [`LabelsBuilder::labels`].

use std::fmt;

/// An immutable, sorted set of labels with non-empty values.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    buf: Box<str>,
    /// `ends[2i]` is the end of name `i`, `ends[2i+1]` the end of its value; each starts where
    /// the previous one ended.
    ends: Box<[usize]>,
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Labels::default()
    }

    /// Builds a label set from pairs in any order. Pairs with an empty value are dropped; when
    /// a name repeats, the later pair wins (as repeated `Builder.Set` calls do).
    pub fn from_pairs<I, N, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut b = LabelsBuilder::new();
        for (n, v) in pairs {
            b.set(n.as_ref(), v.as_ref());
        }
        b.labels()
    }

    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn name_at(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[2 * i - 1] };
        &self.buf[start..self.ends[2 * i]]
    }

    fn value_at(&self, i: usize) -> &str {
        &self.buf[self.ends[2 * i]..self.ends[2 * i + 1]]
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name_at(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name).ok().map(|i| self.value_at(i))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// `(name, value)` pairs in name order.
    pub fn iter(&self) -> LabelsIter<'_> {
        LabelsIter {
            labels: self,
            front: 0,
            back: self.len(),
        }
    }

    /// A stable 64-bit hash: FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime
    /// `0x100000001b3`) over `name 0xFF value 0xFF` for each label in order. `0xFF` never occurs
    /// in UTF-8, so distinct label sets never feed the same byte stream. The value does not
    /// depend on the process, platform or Rust version (unlike `std::hash`), so it may be
    /// persisted or compared across agents.
    pub fn hash(&self) -> u64 {
        let mut h = Fnv1a64::new();
        for (n, v) in self.iter() {
            h.write(n.as_bytes());
            h.write(&[0xFF]);
            h.write(v.as_bytes());
            h.write(&[0xFF]);
        }
        h.finish()
    }

    /// A builder starting from these labels.
    pub fn builder(&self) -> LabelsBuilder {
        let mut b = LabelsBuilder::new();
        b.reset(self);
        b
    }

    /// Total bytes of names and values.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }
}

/// FNV-1a, 64-bit.
struct Fnv1a64(u64);

impl Fnv1a64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    fn new() -> Self {
        Fnv1a64(Self::OFFSET)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Iterator over the pairs of a [`Labels`].
pub struct LabelsIter<'a> {
    labels: &'a Labels,
    front: usize,
    back: usize,
}

impl<'a> Iterator for LabelsIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        if self.front >= self.back {
            return None;
        }
        let i = self.front;
        self.front += 1;
        Some((self.labels.name_at(i), self.labels.value_at(i)))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back - self.front;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for LabelsIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front >= self.back {
            return None;
        }
        self.back -= 1;
        let i = self.back;
        Some((self.labels.name_at(i), self.labels.value_at(i)))
    }
}

impl ExactSizeIterator for LabelsIter<'_> {}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = LabelsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Display for Labels {
    /// Prometheus's `Labels.String()`: `{a="b", c="d"}`, values quoted as Go's
    /// `strconv.Quote` does.
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

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
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

/// One label in a [`LabelsBuilder`]: byte ranges of its name and value in the arena.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) name: (usize, usize),
    pub(crate) value: (usize, usize),
}

/// A mutable label set with Prometheus's `labels.Builder` semantics: `set` with an empty
/// value deletes, `get` sees every change made so far, and [`LabelsBuilder::labels`] returns
/// the sorted result. Reuse one builder across series (`reset`) to avoid allocation.
#[derive(Clone, Default)]
pub struct LabelsBuilder {
    arena: String,
    entries: Vec<Entry>,
    /// Scratch buffers for the relabel engine, kept here so they are reused across series.
    pub(crate) scratch: [String; 3],
    pub(crate) snapshot: Vec<Entry>,
}

impl LabelsBuilder {
    pub fn new() -> Self {
        LabelsBuilder::default()
    }

    /// Replaces the contents with `labels`.
    pub fn reset(&mut self, labels: &Labels) {
        self.arena.clear();
        self.arena.push_str(&labels.buf);
        self.entries.clear();
        let mut start = 0;
        for pair in labels.ends.chunks_exact(2) {
            self.entries.push(Entry {
                name: (start, pair[0]),
                value: (pair[0], pair[1]),
            });
            start = pair[1];
        }
    }

    /// Removes every label.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn text(&self, r: (usize, usize)) -> &str {
        &self.arena[r.0..r.1]
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Keeps only the labels whose name satisfies `keep`.
    pub fn retain_names(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let arena = &self.arena;
        self.entries.retain(|e| keep(&arena[e.name.0..e.name.1]));
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|e| self.arena[e.name.0..e.name.1].cmp(name))
    }

    /// The current value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name)
            .ok()
            .map(|i| self.text(self.entries[i].value))
    }

    /// Current `(name, value)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries
            .iter()
            .map(|e| (self.text(e.name), self.text(e.value)))
    }

    /// Sets `name` to `value`; an empty value deletes the label.
    pub fn set(&mut self, name: &str, value: &str) {
        if value.is_empty() {
            self.del(name);
            return;
        }
        match self.find(name) {
            Ok(i) => {
                if self.text(self.entries[i].value) != value {
                    let v = self.push(value);
                    self.entries[i].value = v;
                }
            }
            Err(i) => {
                let n = self.push(name);
                let v = self.push(value);
                self.entries.insert(i, Entry { name: n, value: v });
            }
        }
    }

    /// Sets `name` to the text at `value` (a range already in the arena).
    pub(crate) fn set_from_arena(&mut self, name: &str, value: (usize, usize)) {
        if value.0 == value.1 {
            self.del(name);
            return;
        }
        match self.find(name) {
            Ok(i) => self.entries[i].value = value,
            Err(i) => {
                let n = self.push(name);
                self.entries.insert(i, Entry { name: n, value });
            }
        }
    }

    /// Deletes `name` if present.
    pub fn del(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.entries.remove(i);
        }
    }

    fn push(&mut self, s: &str) -> (usize, usize) {
        let start = self.arena.len();
        self.arena.push_str(s);
        (start, self.arena.len())
    }

    /// The current label set.
    pub fn labels(&self) -> Labels {
        let total: usize = self
            .entries
            .iter()
            .map(|e| (e.name.1 - e.name.0) + (e.value.1 - e.value.0))
            .sum();
        let mut buf = String::with_capacity(total);
        let mut ends = Vec::with_capacity(self.entries.len() * 2);
        for e in &self.entries {
            buf.push_str(self.text(e.name));
            ends.push(buf.len());
            buf.push_str(self.text(e.value));
            ends.push(buf.len());
        }
        Labels {
            buf: buf.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl fmt::Debug for LabelsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.labels(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn sorted_unique_non_empty() {
        let ls = l(&[("b", "2"), ("a", "1"), ("c", ""), ("b", "3")]);
        assert_eq!(ls.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "3")]);
        assert_eq!(ls.len(), 2);
        assert_eq!(ls.get("a"), Some("1"));
        assert_eq!(ls.get("c"), None);
        assert!(!ls.contains("zz"));
        assert_eq!(ls.iter().next_back(), Some(("b", "3")));
        assert!(Labels::empty().is_empty());
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
    fn hash_is_fnv1a_over_separated_pairs() {
        // FNV-1a 64 of the empty input is the offset basis.
        assert_eq!(Labels::empty().hash(), 0xcbf29ce484222325);
        // Independent computation of FNV-1a over "a\xffb\xff".
        let mut h: u64 = 0xcbf29ce484222325;
        for b in [b'a', 0xFF, b'b', 0xFF] {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        assert_eq!(l(&[("a", "b")]).hash(), h);
        // The separator keeps {a="bc"} and {ab="c"} apart.
        assert_ne!(l(&[("a", "bc")]).hash(), l(&[("ab", "c")]).hash());
    }

    #[test]
    fn builder_semantics() {
        let base = l(&[("a", "1"), ("b", "2")]);
        let mut b = base.builder();
        b.set("c", "3");
        assert_eq!(b.get("c"), Some("3"));
        b.set("a", "");
        assert_eq!(b.get("a"), None);
        b.set("b", "20");
        b.del("nope");
        assert_eq!(b.labels(), l(&[("b", "20"), ("c", "3")]));
        // The base is untouched.
        assert_eq!(base.get("a"), Some("1"));
        b.reset(&base);
        assert_eq!(b.labels(), base);
        b.clear();
        assert!(b.labels().is_empty());
    }

    proptest! {
        #[test]
        fn builder_matches_a_map(ops in proptest::collection::vec(
            ("[a-d]{1,2}", "[xy]{0,2}", any::<bool>()), 0..40)
        ) {
            let mut b = LabelsBuilder::new();
            let mut model = std::collections::BTreeMap::new();
            for (n, v, del) in &ops {
                if *del {
                    b.del(n);
                    model.remove(n);
                } else {
                    b.set(n, v);
                    if v.is_empty() { model.remove(n); } else { model.insert(n.clone(), v.clone()); }
                }
            }
            let got = b.labels();
            let want: Vec<(&str, &str)> = model.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(got.iter().collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(Labels::from_pairs(want.iter().copied()), got.clone());
            for (k, v) in &model {
                prop_assert_eq!(got.get(k), Some(v.as_str()));
            }
        }
    }
}
