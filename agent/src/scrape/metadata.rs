//! Per-target metric metadata (`# TYPE`, `# HELP`, `# UNIT` per metric family), as
//! Prometheus's scrape cache keeps it for `/api/v1/targets/metadata` and for remote_write's
//! metadata sending.
//!
//! One entry per family name per target: the name, type, help and unit, as shared strings
//! (`Arc<str>`), so a snapshot for remote_write copies pointers, not text. A scrape that sees
//! the same metadata again only compares it (no allocation); a string is allocated only when a
//! family is new or its help or unit changed. As in Prometheus, an entry not seen for more than
//! [`FORGET_AFTER`] successful scrapes is forgotten, so a family that disappears costs memory
//! for a few scrapes only. Memory: the family name and help text plus about 100 bytes per
//! family per target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::parse::MetricType;

/// Scrapes an entry survives without being seen (Prometheus's `iterDone` keeps metadata for
/// ten iterations).
pub const FORGET_AFTER: u32 = 10;

/// One family's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricMetadata {
    pub family: Arc<str>,
    pub kind: MetricType,
    pub help: Arc<str>,
    pub unit: Arc<str>,
}

#[derive(Debug)]
struct Entry {
    kind: MetricType,
    help: Arc<str>,
    unit: Arc<str>,
    last_seen: u32,
}

/// The metadata of one target; see the module docs.
#[derive(Debug)]
pub struct MetadataCache {
    entries: HashMap<Arc<str>, Entry>,
    /// Current iteration (one per scrape), starting at 1.
    iter: u32,
    empty: Arc<str>,
}

impl Default for MetadataCache {
    fn default() -> Self {
        MetadataCache {
            entries: HashMap::new(),
            iter: 1,
            empty: Arc::from(""),
        }
    }
}

/// Shared between a scrape loop (writer) and whoever reads the metadata (remote_write).
pub type SharedMetadata = Arc<Mutex<MetadataCache>>;

/// Locks a target's metadata, ignoring poisoning (every update leaves it consistent).
pub fn lock(m: &Mutex<MetadataCache>) -> MutexGuard<'_, MetadataCache> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MetadataCache {
    /// Runs `f` on the family's entry, creating it first if needed, and marks it seen.
    fn update(&mut self, family: &str, f: impl FnOnce(&mut Entry)) {
        let iter = self.iter;
        if let Some(e) = self.entries.get_mut(family) {
            e.last_seen = iter;
            f(e);
            return;
        }
        let mut e = Entry {
            kind: MetricType::Unknown,
            help: self.empty.clone(),
            unit: self.empty.clone(),
            last_seen: iter,
        };
        f(&mut e);
        self.entries.insert(Arc::from(family), e);
    }

    pub fn set_type(&mut self, family: &str, kind: MetricType) {
        self.update(family, |e| e.kind = kind);
    }

    pub fn set_help(&mut self, family: &str, help: &str) {
        self.update(family, |e| {
            if *e.help != *help {
                e.help = Arc::from(help);
            }
        });
    }

    pub fn set_unit(&mut self, family: &str, unit: &str) {
        self.update(family, |e| {
            if *e.unit != *unit {
                e.unit = Arc::from(unit);
            }
        });
    }

    /// Ends a successful scrape: forgets entries not seen for more than [`FORGET_AFTER`]
    /// scrapes.
    pub fn end_scrape(&mut self) {
        let iter = self.iter;
        self.entries
            .retain(|_, e| iter.wrapping_sub(e.last_seen) <= FORGET_AFTER);
        self.iter = self.iter.wrapping_add(1);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends every entry to `out` (cheap: the strings are shared).
    pub fn snapshot_into(&self, out: &mut Vec<MetricMetadata>) {
        out.extend(self.entries.iter().map(|(name, e)| MetricMetadata {
            family: name.clone(),
            kind: e.kind,
            help: e.help.clone(),
            unit: e.unit.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_entry_per_family_and_forgets_old_ones() {
        let mut m = MetadataCache::default();
        m.set_type("http_requests", MetricType::Counter);
        m.set_help("http_requests", "Requests.");
        m.set_unit("latency_seconds", "seconds");
        m.end_scrape();
        let mut out = Vec::new();
        m.snapshot_into(&mut out);
        out.sort_by(|a, b| a.family.cmp(&b.family));
        assert_eq!(out.len(), 2);
        assert_eq!(&*out[0].family, "http_requests");
        assert_eq!(out[0].kind, MetricType::Counter);
        assert_eq!(&*out[0].help, "Requests.");
        assert_eq!(&*out[0].unit, "");
        assert_eq!(out[1].kind, MetricType::Unknown);
        assert_eq!(&*out[1].unit, "seconds");

        // Unchanged help keeps its allocation; changed help replaces it.
        let before = out[0].help.clone();
        m.set_help("http_requests", "Requests.");
        let mut again = Vec::new();
        m.snapshot_into(&mut again);
        let h = again
            .iter()
            .find(|e| &*e.family == "http_requests")
            .unwrap();
        assert!(Arc::ptr_eq(&h.help, &before));
        m.set_help("http_requests", "All requests.");
        let mut again = Vec::new();
        m.snapshot_into(&mut again);
        let h = again
            .iter()
            .find(|e| &*e.family == "http_requests")
            .unwrap();
        assert_eq!(&*h.help, "All requests.");

        // latency_seconds was last seen in iteration 1; after more than 10 further scrapes
        // without it, it is gone, while http_requests (seen every time) stays.
        for _ in 0..=FORGET_AFTER {
            m.set_type("http_requests", MetricType::Counter);
            m.end_scrape();
        }
        assert_eq!(m.len(), 1);
        assert!(m.entries.contains_key("http_requests"));
    }
}
