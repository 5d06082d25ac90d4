//! [`LabelsBuilder`]: a mutable label set with Prometheus's `labels.Builder` semantics.
//!
//! The text lives in an append-only arena (`String`) with a sorted vector of ranges into it.
//! Resetting from a [`Labels`] copies its strings; a `set` appends text and updates or inserts
//! one entry; a `del` removes one entry. Once the buffers have grown to the working size,
//! relabelling a series through a reused builder allocates nothing until the final
//! [`LabelsBuilder::labels`], which interns the result into one allocation.

use std::fmt;

use super::Labels;

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
        self.clear();
        for (n, v) in labels.iter() {
            let n = self.push(n);
            let v = self.push(v);
            self.entries.push(Entry { name: n, value: v });
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

    /// Whether the current set equals `labels` (without building it).
    pub fn equals(&self, labels: &Labels) -> bool {
        labels.len() == self.entries.len() && self.iter().eq(labels.iter())
    }

    /// The current label set, as a new kept set (its pairs interned, see
    /// `super::symbols`).
    pub fn labels(&mut self) -> Labels {
        Labels::from_strings(
            self.entries.len(),
            self.entries
                .iter()
                .flat_map(|e| [self.text(e.name).as_bytes(), self.text(e.value).as_bytes()]),
        )
    }
}

impl fmt::Debug for LabelsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
            f.write_str("=")?;
            super::write_go_quoted(f, v)?;
        }
        f.write_str("}")
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
        assert!(b.equals(&l(&[("b", "20"), ("c", "3")])));
        assert!(!b.equals(&base));
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
            // The wire form parses back to the same set, which compares and hashes equal.
            let mut wire = Vec::new();
            got.as_view().write_wire(&mut wire);
            let (view, used) = super::super::LabelsRef::parse(&wire).unwrap();
            prop_assert_eq!(used, wire.len());
            prop_assert!(view == got.as_view());
            let h = super::super::Hasher::random();
            prop_assert_eq!(h.hash(view), h.hash(got.as_view()));
            prop_assert_eq!(view.to_owned(), got);
        }
    }
}
