//! Label sets stored in their WAL wire form.
//!
//! A [`Labels`] value is one heap allocation holding exactly the bytes a Series record
//! entry carries after the ref:
//!
//! ```text
//! uvarint nLabels, then nLabels × (uvarint len, name bytes, uvarint len, value bytes)
//! ```
//!
//! sorted by name. Why this representation: writing a Series record is then a `memcpy`,
//! decoding one from disk is a validated slice copy, and the memory cost is the label text plus
//! one length byte per string plus a 16-byte fat pointer (no per-label `String` headers, no
//! offsets table). Lookups walk the buffer, which is fine for the handful of labels a series has
//! and only happens off the hot path (inspection, relabelling is done by the scrape side).
//! Every constructor validates the invariants (well-formed varints, UTF-8), so the
//! accessors can decode without re-checking.

use std::fmt;

use super::record::{put_uvarint, put_uvarint_str, Dec};

/// An owned, sorted label set in WAL wire form (see the module doc).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Labels(Box<[u8]>);

/// A borrowed label set in WAL wire form, e.g. a slice of a Series record read from disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelsRef<'a>(&'a [u8]);

impl Labels {
    /// Builds a label set from name/value pairs in any order; they are sorted by name
    /// (stable, so of duplicate names the first given comes first; callers should not pass
    /// duplicates, Prometheus never produces them).
    pub fn from_pairs<'a, I>(pairs: I) -> Labels
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut v: Vec<(&str, &str)> = pairs.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        let len: usize = v
            .iter()
            .map(|(n, val)| n.len() + val.len() + 4)
            .sum::<usize>()
            + 2;
        let mut buf = Vec::with_capacity(len);
        put_uvarint(&mut buf, v.len() as u64);
        for (n, val) in &v {
            put_uvarint_str(&mut buf, n);
            put_uvarint_str(&mut buf, val);
        }
        Labels(buf.into_boxed_slice())
    }

    /// The empty label set.
    pub fn empty() -> Labels {
        Labels(Box::new([0u8]))
    }

    pub fn as_ref(&self) -> LabelsRef<'_> {
        LabelsRef(&self.0)
    }

    /// The wire bytes (`uvarint n` + pairs).
    pub fn wire(&self) -> &[u8] {
        &self.0
    }

    /// Heap bytes owned by this value (for memory accounting).
    pub fn heap_size(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> LabelsIter<'_> {
        self.as_ref().iter()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.as_ref().get(name)
    }

    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prometheus `labels.Hash()`: xxhash64 over `name 0xff value 0xff …`.
    pub fn hash_prometheus(&self) -> u64 {
        self.as_ref().hash_prometheus()
    }
}

impl<'a> LabelsRef<'a> {
    /// Parses one label set at the start of `b`, validating structure and UTF-8. Returns the
    /// set and the number of bytes it spans. Order is not checked: a reader should accept what
    /// another writer produced, and Prometheus always sorts anyway.
    pub(crate) fn parse(b: &'a [u8]) -> Result<(LabelsRef<'a>, usize), ParseFail> {
        let mut d = Dec::new(b);
        let n = d.uvarint().map_err(|_| ParseFail::Short)?;
        for _ in 0..n {
            let name = d.uvarint_bytes().map_err(|_| ParseFail::Short)?;
            let value = d.uvarint_bytes().map_err(|_| ParseFail::Short)?;
            if std::str::from_utf8(name).is_err() || std::str::from_utf8(value).is_err() {
                return Err(ParseFail::Utf8);
            }
        }
        let used = d.pos();
        Ok((LabelsRef(&b[..used]), used))
    }

    pub fn to_owned(self) -> Labels {
        Labels(self.0.into())
    }

    pub fn wire(self) -> &'a [u8] {
        self.0
    }

    pub fn iter(self) -> LabelsIter<'a> {
        let mut d = Dec::new(self.0);
        let n = d.uvarint().unwrap_or(0);
        LabelsIter { d, left: n }
    }

    pub fn len(self) -> usize {
        let mut d = Dec::new(self.0);
        d.uvarint().unwrap_or(0) as usize
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    pub fn get(self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Prometheus `labels.Hash()`: xxhash64 (seed 0) over `name 0xff value 0xff …` for each
    /// label in order. Used by `wal inspect` to count hash collisions.
    pub fn hash_prometheus(self) -> u64 {
        let mut h = twox_hash::XxHash64::with_seed(0);
        use std::hash::Hasher;
        for (n, v) in self.iter() {
            h.write(n.as_bytes());
            h.write(&[0xff]);
            h.write(v.as_bytes());
            h.write(&[0xff]);
        }
        h.finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseFail {
    Short,
    Utf8,
}

/// Iterator over `(name, value)` pairs of a label set.
pub struct LabelsIter<'a> {
    d: Dec<'a>,
    left: u64,
}

impl<'a> Iterator for LabelsIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The buffer was validated at construction; a failure here cannot happen, and ending
        // the iteration is the harmless answer if it somehow did.
        let n = self.d.uvarint_bytes().ok()?;
        let v = self.d.uvarint_bytes().ok()?;
        Some((std::str::from_utf8(n).ok()?, std::str::from_utf8(v).ok()?))
    }
}

/// Prometheus `labels.String()`: `{a="1", b="2"}` with Go-quoted values.
impl fmt::Display for LabelsRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}=")?;
            go_quote(f, v)?;
        }
        f.write_str("}")
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

impl fmt::Debug for LabelsRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Close to Go's `strconv.Quote` for the characters label values contain.
fn go_quote(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if (c as u32) < 0x20 || c as u32 == 0x7f => write!(f, "\\x{:02x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_wire_form_and_accessors() {
        let l = Labels::from_pairs([("job", "node"), ("__name__", "up"), ("instance", "a:1")]);
        assert_eq!(
            l.wire(),
            b"\x03\x08__name__\x02up\x08instance\x03a:1\x03job\x04node".as_slice()
        );
        assert_eq!(l.get("job"), Some("node"));
        assert_eq!(l.get("nope"), None);
        assert_eq!(l.len(), 3);
        assert_eq!(
            l.to_string(),
            r#"{__name__="up", instance="a:1", job="node"}"#
        );
        let (r, used) = LabelsRef::parse(l.wire()).expect("valid");
        assert_eq!(used, l.wire().len());
        assert_eq!(r.to_owned(), l);
    }

    #[test]
    fn prometheus_hash_matches_xxhash_of_joined_bytes() {
        let l = Labels::from_pairs([("a", "1"), ("b", "2")]);
        let joined = b"a\xff1\xffb\xff2\xff";
        assert_eq!(l.hash_prometheus(), twox_hash::XxHash64::oneshot(0, joined));
        assert_eq!(
            Labels::empty().hash_prometheus(),
            twox_hash::XxHash64::oneshot(0, b"")
        );
        // Known vector of xxhash64("") with seed 0.
        assert_eq!(twox_hash::XxHash64::oneshot(0, b""), 0xef46db3751d8e999);
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!(
            LabelsRef::parse(b"\x01\x01a").unwrap_err(),
            ParseFail::Short
        );
        assert_eq!(
            LabelsRef::parse(b"\x01\x01\xff\x00").unwrap_err(),
            ParseFail::Utf8
        );
    }

    #[test]
    fn quoting() {
        let l = Labels::from_pairs([("a", "x\"y\\z\n")]);
        assert_eq!(l.to_string(), r#"{a="x\"y\\z\n"}"#);
    }
}
