//! Lazily decoded label sets.

use std::borrow::Cow;
use std::fmt;

/// A validated label set, kept as the raw text between `{` and `}`; pairs are found again on
/// iteration, which costs less than storing offsets for the common case of a cache hit, where
/// the labels are never looked at.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Labels<'a> {
    raw: &'a str,
    len: u32,
    /// Whether any value holds a backslash; lets iteration skip escape handling entirely.
    escaped: bool,
}

impl<'a> Labels<'a> {
    /// Only the parser builds label sets: `raw` must have been validated by it.
    pub(super) fn new(raw: &'a str, len: u32, escaped: bool) -> Self {
        Labels { raw, len, escaped }
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The text between the braces, exactly as scraped.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The `(name, value)` pairs in body order, values unescaped.
    pub fn iter(&self) -> LabelIter<'a> {
        LabelIter {
            rest: self.raw,
            escaped: self.escaped,
        }
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl fmt::Debug for Labels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &Labels<'a> {
    type Item = (&'a str, Cow<'a, str>);
    type IntoIter = LabelIter<'a>;
    fn into_iter(self) -> LabelIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Labels`]; see [`Labels::iter`].
#[derive(Clone, Debug)]
pub struct LabelIter<'a> {
    rest: &'a str,
    escaped: bool,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        // The text was validated by the parser, so this only has to step over what the
        // grammar allows (whitespace in 0.0.4, commas, `=`) and never indexes past the end.
        // Byte scanning: every position it stops at is an ASCII delimiter, hence a char
        // boundary.
        let s = self.rest;
        let b = s.as_bytes();
        let mut i = 0;
        while matches!(b.get(i), Some(b' ' | b'\t' | b',')) {
            i += 1;
        }
        if i >= b.len() {
            self.rest = "";
            return None;
        }
        let name_start = i;
        while b
            .get(i)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
        {
            i += 1;
        }
        let name = s.get(name_start..i)?;
        while b.get(i).is_some_and(|&c| c != b'"') {
            i += 1;
        }
        let value_start = i + 1;
        let value_bytes = b.get(value_start..)?;
        let close = if self.escaped {
            let mut j = 0;
            loop {
                match memchr::memchr2(b'"', b'\\', value_bytes.get(j..)?)? {
                    k if value_bytes[j + k] == b'"' => break j + k,
                    k => j += k + 2,
                }
            }
        } else {
            memchr::memchr(b'"', value_bytes)?
        };
        let value = s.get(value_start..value_start + close)?;
        self.rest = s.get(value_start + close + 1..)?;
        let value = if self.escaped {
            unescape(value, true)
        } else {
            Cow::Borrowed(value)
        };
        Some((name, value))
    }
}

/// Undoes the text formats' escaping: `\\` and `\n` always, `\"` when `quote` (label values
/// and OpenMetrics HELP; 0.0.4 HELP keeps it). Any other backslash sequence is kept as is, as
/// Prometheus does. Borrows unless there is a backslash.
pub(super) fn unescape(s: &str, quote: bool) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quote => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}
