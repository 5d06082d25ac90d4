//! Label sets and series identity: the one representation every layer uses (the parser's
//! output after relabelling, the scrape cache, the WAL, remote_write).
//!
//! - [`Labels`]: an immutable label set, kept as symbols into the process's one table of label
//!   pairs ([`symbols`]; see [`set`] for the layout and why). Clones share one allocation,
//!   which is how an instance keeps a series' labels once for its scrape cache, its series
//!   table and its remote_write tables.
//! - [`LabelsRef`]: a borrowed set, either a kept one or the WAL's wire form (a slice of a WAL
//!   Series record); both forms of one set compare and hash equal.
//! - [`LabelIndex`]: a kept set's labels by position (the scrape cache's exact compare).
//! - [`LabelPair`]: a pair as the remote_write encoder takes it: a kept set's pairs are
//!   already encoded as the encoder's `Label` field ([`symbols`]).
//! - [`LabelsBuilder`]: a mutable set with Prometheus's `labels.Builder` semantics (relabelling).
//! - [`SeriesRef`]: the WAL-assigned identity of a series within one instance.
//! - [`Hasher`]: the one label hasher. A hash only ever *finds candidates*: every table keyed by
//!   labels compares the candidates it finds, so two label sets with an equal hash
//!   stay two series. [`Hasher::with_bits`] lets tests make every hash collide to prove it.
//! - [`RefMap`]: a hash map keyed by [`SeriesRef`]; [`DenseRefMap`]: an array where the refs
//!   are dense (the per-sample lookups by ref).
//! - [`Headroom`]: the sizing rule of tables keyed by label hashes whose entries churn.
//!
//! This module depends on nothing else in the crate: it is the bottom of the layering. It
//! knows one outside format: the remote_write `Label` field its pairs are kept in
//! (symbols.rs; the layout is agent/src/remote_write/proto.rs's).

mod builder;
mod hash;
mod refs;
mod set;
mod symbols;
mod thin;

pub use builder::LabelsBuilder;
pub use hash::{Hasher, Headroom, RefHasher, RefMap};
pub use refs::DenseRefMap;
pub use set::{
    go_quote, write_go_quoted, LabelIndex, LabelPair, Labels, LabelsIter, LabelsRef, ParseError,
    RawPairs,
};
pub(crate) use set::{put_uvarint, uvarint_len};
pub(crate) use symbols::put_label;
pub use symbols::table_stats as symbol_table_stats;

use std::fmt;

/// Identifies a series within one instance: assigned by its WAL (Prometheus's
/// `chunks.HeadSeriesRef`), starting at 1, never reused while the WAL exists, and written in
/// every Series, Samples and Exemplars record.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesRef(pub u64);

impl fmt::Debug for SeriesRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for SeriesRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u64> for SeriesRef {
    fn from(r: u64) -> Self {
        SeriesRef(r)
    }
}

/// A source of shared label sets: the instance's series table. A reader that meets a series
/// again (the remote_write watcher reading a Series record back from the WAL) asks for the
/// table's copy, so the process keeps one. `None` when the table no longer has that ref with
/// exactly these labels (the caller then keeps its own copy).
pub trait SharedLabels: Send + Sync {
    fn shared(&self, r: SeriesRef, labels: LabelsRef<'_>) -> Option<Labels>;
}
