//! Validation errors that know where in the document they belong.
//!
//! Parsing errors get their line and column from the YAML parser. Validation runs later, on
//! typed values that no longer know their position, so a validation error carries the path of
//! the node it is about (`scrape_configs`, 2, `relabel_configs`, 0) and [`locate`] finds that
//! node's line and column by walking the text again: only on the error path, so valid configs
//! pay nothing.

use std::borrow::Cow;
use std::fmt;

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(Cow<'static, str>),
    Index(usize),
}

impl From<&'static str> for Seg {
    fn from(k: &'static str) -> Self {
        Seg::Key(Cow::Borrowed(k))
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// A validation error: the message the user reads, and the node it is about (empty: the
/// document, or unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: Vec<Seg>,
    pub message: String,
}

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Invalid {
            path: Vec::new(),
            message: message.into(),
        }
    }

    /// The error, about the node at `path` (relative to where it is raised).
    pub fn at(message: impl Into<String>, path: impl IntoIterator<Item = Seg>) -> Self {
        Invalid {
            path: path.into_iter().collect(),
            message: message.into(),
        }
    }

    /// The same error seen from a parent: `outer` is prepended to the path.
    pub fn within(mut self, outer: impl IntoIterator<Item = Seg>) -> Self {
        let mut path: Vec<Seg> = outer.into_iter().collect();
        path.append(&mut self.path);
        self.path = path;
        self
    }

    /// The message with a prefix (`remote_write[0]: ...`).
    pub fn prefixed(mut self, prefix: impl fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid::new(message)
    }
}

/// For validators that still report a bare message (the path is dropped; the caller's own
/// path still locates the error).
impl From<Invalid> for String {
    fn from(e: Invalid) -> String {
        e.message
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Invalid::new(message)
    }
}

/// Shorthand for a path: `path!["scrape_configs", i]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        [$($crate::config::invalid::Seg::from($seg)),*]
    };
}

const MARK: &str = "\u{0}located\u{0}";

/// The 1-based line and column where the node at `path` starts in `text`, when it exists.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    if path.is_empty() {
        return None;
    }
    let de = serde_yaml::Deserializer::from_str(text);
    match serde::de::DeserializeSeed::deserialize(Locator { path }, de) {
        Err(e) if e.to_string().contains(MARK) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// Walks down `path`, skipping everything else, and fails on purpose at the node it names so
/// that the YAML parser reports that node's position.
#[derive(Clone, Copy)]
struct Locator<'p> {
    path: &'p [Seg],
}

impl<'de> serde::de::DeserializeSeed<'de> for Locator<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Locator<'_> {
    fn here<E: serde::de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(MARK))
        } else {
            Ok(())
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Locator<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.here()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.here()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.here()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.here()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.here()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.here()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.here()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.path.split_first() else {
            return self.here();
        };
        let mut i = 0;
        while i < *want {
            if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
        seq.next_element_seed(Locator { path: rest })?;
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(want), rest)) = self.path.split_first() else {
            return self.here();
        };
        // A path ending at a key points at the key itself (`scheme:`), not at its value, which
        // may start lines below.
        let seed = KeySeed {
            want: want.as_ref(),
            last: rest.is_empty(),
        };
        while let Some(key) = map.next_key_seed(seed)? {
            if key.0.as_deref() == Some(want.as_ref()) {
                map.next_value_seed(Locator { path: rest })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A mapping key: its text when it is a string.
struct Key(Option<String>);

/// Reads a key; when it is the last step's key, fails on purpose from inside the visitor (so
/// that the parser attaches the key's position, not the mapping's).
#[derive(Clone, Copy)]
struct KeySeed<'w> {
    want: &'w str,
    last: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        if self.last && v == self.want {
            return Err(E::custom(MARK));
        }
        Ok(Key(Some(v.to_owned())))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Key, A::Error> {
        while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Key(None))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Key, A::Error> {
        while m
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Key(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nodes_by_path() {
        let text = "scrape_configs:\n  - job_name: a\n  - job_name: b\n    relabel_configs:\n      - target_label: x\n      -\n      - {action: keep}\nremote_write:\n  - url: http://a/\n";
        assert_eq!(locate(text, &path!["scrape_configs", 1]), Some((3, 5)));
        assert_eq!(
            locate(text, &path!["scrape_configs", 1, "job_name"]),
            Some((3, 5))
        );
        assert_eq!(locate(text, &path!["remote_write"]), Some((8, 1)));
        assert_eq!(
            locate(text, &path!["scrape_configs", 1, "relabel_configs", 0]),
            Some((5, 9))
        );
        assert_eq!(
            locate(text, &path!["scrape_configs", 1, "relabel_configs", 2]),
            Some((7, 9))
        );
        assert_eq!(locate(text, &path!["remote_write", 0]), Some((9, 5)));
        assert_eq!(locate(text, &path!["remote_write", 3]), None);
        assert_eq!(locate(text, &path!["nope"]), None);
        assert_eq!(locate(text, &[]), None);
        // Through anchors and aliases: the alias's own position.
        let text = "a: &x {b: 1}\nc: *x\n";
        assert!(locate(text, &path!["c", "b"]).is_some());
    }
}
