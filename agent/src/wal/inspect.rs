//! Read-only WAL statistics for `agentctl wal inspect` (the old `wal-stats`, `target-stats`
//! and `sample-stats`, docs/compat.md *WAL tools*) in one pass.
//!
//! Iterates the last checkpoint, then the segments after it (or all segments without a
//! checkpoint). Series records map each ref to its `(job, instance)` bucket and count, per
//! label set, the refs it was logged under (the old tool counted refs per label *hash*; equal
//! hashes of different label sets are not a series logged twice, so label sets are compared);
//! Samples records update the global time range and the bucket of their ref (an unknown ref
//! is an invalid ref). Totals are sums over the buckets, so a
//! series logged twice counts twice, as in the old tool. Nothing is repaired: corruption is
//! reported with the segment and offset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::checkpoint::{checkpoint_sources, last_checkpoint};
use super::reader::{Corruption, Reader, SegmentSource};
use super::record::{self, RefSample};
use super::segment::{list_segments, segment_path};
use super::WalError;
use crate::config::regex::PromRegex;
use crate::labels::{Hasher, LabelsRef, SeriesRef};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0} does not exist")]
    NotFound(PathBuf),
    #[error("{0} is not a WAL directory: it has no segment files (00000000, …) and no checkpoint.NNNNNNNN directory")]
    NotAWal(PathBuf),
    #[error(transparent)]
    Wal(#[from] WalError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?} at position {pos}: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub pos: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "=~")]
    Regex,
    #[serde(rename = "!~")]
    NotRegex,
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<PromRegex>,
}

impl Matcher {
    /// A missing label matches as the empty string, as in PromQL.
    pub fn matches(&self, v: &str) -> bool {
        match (&self.op, &self.re) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            (_, None) => false,
        }
    }
}

/// A PromQL series selector: `metric{a="x", b=~"y.*", c!="z", d!~"w"}`; `{}` matches all.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub matchers: Vec<Matcher>,
}

impl Selector {
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let err = |pos: usize, reason: &str| SelectorError {
            input: input.to_owned(),
            pos,
            reason: reason.to_owned(),
        };
        let b = input.as_bytes();
        let mut i = 0;
        let skip_ws = |i: &mut usize| {
            while *i < b.len() && b[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        let ident = |i: &mut usize, metric: bool| -> Option<String> {
            let start = *i;
            while *i < b.len() {
                let c = b[*i];
                let ok = c.is_ascii_alphabetic()
                    || c == b'_'
                    || (metric && c == b':')
                    || (*i > start && c.is_ascii_digit());
                if !ok {
                    break;
                }
                *i += 1;
            }
            (*i > start).then(|| input[start..*i].to_owned())
        };
        let mut matchers = Vec::new();
        skip_ws(&mut i);
        if let Some(name) = ident(&mut i, true) {
            matchers.push(Matcher {
                name: "__name__".into(),
                op: MatchOp::Equal,
                value: name,
                re: None,
            });
        }
        skip_ws(&mut i);
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                skip_ws(&mut i);
                if i < b.len() && b[i] == b'}' {
                    i += 1;
                    break;
                }
                let name =
                    ident(&mut i, false).ok_or_else(|| err(i, "expected a label name or '}'"))?;
                skip_ws(&mut i);
                let op = match (b.get(i), b.get(i + 1)) {
                    (Some(b'='), Some(b'~')) => MatchOp::Regex,
                    (Some(b'!'), Some(b'~')) => MatchOp::NotRegex,
                    (Some(b'!'), Some(b'=')) => MatchOp::NotEqual,
                    (Some(b'='), _) => MatchOp::Equal,
                    _ => return Err(err(i, "expected one of =, !=, =~, !~")),
                };
                i += if op == MatchOp::Equal { 1 } else { 2 };
                skip_ws(&mut i);
                let value = parse_string(input, &mut i).map_err(|(p, r)| err(p, r))?;
                let re = match op {
                    MatchOp::Regex | MatchOp::NotRegex => {
                        Some(PromRegex::new(&value).map_err(|e| err(i, &e))?)
                    }
                    _ => None,
                };
                matchers.push(Matcher {
                    name,
                    op,
                    value,
                    re,
                });
                skip_ws(&mut i);
                match b.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => {}
                    _ => return Err(err(i, "expected ',' or '}'")),
                }
            }
        } else if matchers.is_empty() {
            return Err(err(i, "expected a metric name or '{'"));
        }
        skip_ws(&mut i);
        if i != b.len() {
            return Err(err(i, "unexpected characters after the selector"));
        }
        Ok(Selector { matchers })
    }

    pub fn matches(&self, labels: LabelsRef<'_>) -> bool {
        self.matchers
            .iter()
            .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
    }
}

/// A PromQL string literal: `"…"` or `'…'` with Go escapes, or a raw `` `…` ``.
fn parse_string(input: &str, i: &mut usize) -> Result<String, (usize, &'static str)> {
    let start = *i;
    let mut chars = input[start..].char_indices();
    let Some((_, q)) = chars.next() else {
        return Err((start, "expected a quoted string"));
    };
    if q != '"' && q != '\'' && q != '`' {
        return Err((start, "expected a quoted string"));
    }
    let mut out = String::new();
    while let Some((off, c)) = chars.next() {
        if c == q {
            *i = start + off + c.len_utf8();
            return Ok(out);
        }
        if c == '\\' && q != '`' {
            let Some((off, e)) = chars.next() else { break };
            out.push(match e {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '\\' => '\\',
                '"' => '"',
                '\'' => '\'',
                _ => return Err((start + off, "unknown escape sequence")),
            });
        } else {
            out.push(c);
        }
    }
    Err((start, "unterminated string"))
}

#[derive(Debug, Clone, Default)]
pub struct StatsOptions {
    /// Restricts `metrics` and `series` to matching series (totals are never filtered).
    pub selector: Option<Selector>,
    /// Collect per-series sample counts (`sample-stats`).
    pub per_series: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TargetStats {
    pub job: String,
    pub instance: String,
    pub series: u64,
    pub samples: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MetricCount {
    pub name: String,
    pub series: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SeriesStats {
    pub series_ref: u64,
    /// Prometheus `labels.String()` form.
    pub labels: String,
    pub samples: u64,
    pub oldest_sample_ms: Option<i64>,
    pub newest_sample_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WalStats {
    /// The WAL directory actually read (after the `wal/` subdirectory rule).
    pub dir: PathBuf,
    pub oldest_sample_ms: Option<i64>,
    pub newest_sample_ms: Option<i64>,
    pub total_series: u64,
    pub total_samples: u64,
    pub hash_collisions: u64,
    pub invalid_refs: u64,
    /// Index of the last checkpoint (the old tool prints 0 when there is none).
    pub checkpoint_segment: Option<u32>,
    /// First and last segment files present (the old tool prints -1 when there are none).
    pub first_segment: Option<u32>,
    pub last_segment: Option<u32>,
    /// By series, descending.
    pub targets: Vec<TargetStats>,
    /// Series per `__name__` among the selected series, by count descending.
    pub metrics: Vec<MetricCount>,
    /// Per selected series, by ref, when requested.
    pub series: Option<Vec<SeriesStats>>,
    /// Where the WAL is damaged (a torn or corrupt record): the figures cover what comes
    /// before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
    /// What the damage means for an agent opening this WAL.
    #[serde(skip)]
    pub damage_at: Option<DamageAt>,
}

/// Where a WAL's damage is, which decides what an agent opening it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageAt {
    /// In the checkpoint: the agent cannot open the WAL (its instance does not start).
    Checkpoint,
    /// The newest segment ends inside a record: a write in progress when an agent is writing
    /// this WAL now; else what a crash left, which an agent opening it cuts off.
    TornTail,
    /// In a segment: an agent opening the WAL cuts it there and loses what follows.
    Segment,
}

impl DamageAt {
    fn of(e: &WalError, last_segment: Option<u32>) -> DamageAt {
        match e {
            WalError::Corrupt { path, .. }
                if path
                    .parent()
                    .and_then(Path::file_name)
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint.")) =>
            {
                DamageAt::Checkpoint
            }
            WalError::Corrupt {
                segment,
                kind: Corruption::Torn,
                ..
            } if Some(*segment) == last_segment => DamageAt::TornTail,
            _ => DamageAt::Segment,
        }
    }
}

/// Resolves the directory to read: `<dir>/wal` if that exists (instance dir or a Prometheus
/// agent-mode data dir), else `dir`.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf, InspectError> {
    if !dir.exists() {
        return Err(InspectError::NotFound(dir.to_owned()));
    }
    let sub = dir.join("wal");
    let d = if sub.is_dir() { sub } else { dir.to_owned() };
    if !d.is_dir() {
        return Err(InspectError::NotAWal(d));
    }
    Ok(d)
}

pub fn stats(dir: &Path, opts: &StatsOptions) -> Result<WalStats, InspectError> {
    stats_with_progress(dir, opts, &mut |_, _| {})
}

/// [`stats`], calling `progress(bytes read, bytes in total)` every few thousand records (for
/// a progress bar; the total is the size of the checkpoint and segment files when started).
pub fn stats_with_progress(
    dir: &Path,
    opts: &StatsOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WalStats, InspectError> {
    let dir = resolve_dir(dir)?;
    let segs = list_segments(&dir)?;
    let cp = last_checkpoint(&dir)?;
    if segs.is_empty() && cp.is_none() {
        return Err(InspectError::NotAWal(dir));
    }
    let mut st = WalStats {
        dir: dir.clone(),
        checkpoint_segment: cp.as_ref().map(|(i, _)| *i),
        first_segment: segs.first().copied(),
        last_segment: segs.last().copied(),
        ..Default::default()
    };
    let mut sources = Vec::new();
    let mut after = 0;
    if let Some((i, cp_dir)) = &cp {
        sources.extend(checkpoint_sources(cp_dir)?);
        after = i.saturating_add(1);
    }
    sources.extend(
        segs.iter()
            .filter(|&&s| s >= after)
            .map(|&index| SegmentSource {
                index,
                path: segment_path(&dir, index),
            }),
    );

    let mut buckets: Vec<TargetStats> = Vec::new();
    let mut bucket_of_target: HashMap<(String, String), usize> = HashMap::new();
    let mut bucket_of_ref: HashMap<SeriesRef, usize> = HashMap::new();
    // Distinct label sets: (first ref seen, already counted, range in `arena`), found by hash
    // and compared by bytes.
    let hasher = Hasher::random();
    let mut sets: Vec<(SeriesRef, bool, usize, usize)> = Vec::new();
    let mut arena: Vec<u8> = Vec::new();
    let mut wire: Vec<u8> = Vec::new();
    let mut index: hashbrown::HashTable<u32> = hashbrown::HashTable::new();
    let mut metrics: HashMap<String, u64> = HashMap::new();
    let mut per_series: Vec<SeriesStats> = Vec::new();
    let mut series_idx: HashMap<SeriesRef, usize> = HashMap::new();
    let mut samples: Vec<RefSample> = Vec::new();
    let (mut mint, mut maxt) = (i64::MAX, i64::MIN);

    // Where each source starts in the whole read, for progress.
    let mut starts = Vec::with_capacity(sources.len());
    let mut total_bytes = 0;
    for s in &sources {
        starts.push((s.path.clone(), total_bytes));
        total_bytes += std::fs::metadata(&s.path).map_or(0, |m| m.len());
    }
    let mut source = 0;
    let mut records: u64 = 0;
    progress(0, total_bytes);

    let mut r = Reader::new(sources);
    let last_segment = st.last_segment;
    // Damage ends the read: what came before it is reported, and where it is.
    macro_rules! damaged {
        ($label:lifetime, $e:expr) => {{
            let e: WalError = $e;
            st.damage_at = Some(DamageAt::of(&e, last_segment));
            st.damage = Some(e.to_string());
            break $label;
        }};
    }
    'records: loop {
        match r.next_record() {
            Ok(true) => {}
            Ok(false) => break,
            Err(e @ WalError::Corrupt { .. }) => damaged!('records, e),
            Err(e) => return Err(e.into()),
        }
        records += 1;
        if records % 4096 == 0 {
            if let Some(seg) = r.segment() {
                while source + 1 < starts.len() && starts[source].0 != seg.path {
                    source += 1;
                }
                progress(starts[source].1 + r.record_start(), total_bytes);
            }
        }
        let rec = r.record();
        match record::record_type(rec) {
            Some(record::SERIES) => {
                let entries = match record::series_iter(rec) {
                    Ok(it) => it,
                    Err(e) => damaged!('records, r.record_error(e)),
                };
                for e in entries {
                    let (sref, labels) = match e {
                        Ok(v) => v,
                        Err(e) => damaged!('records, r.record_error(e)),
                    };
                    let job = labels.get("job").unwrap_or("");
                    let instance = labels.get("instance").unwrap_or("");
                    let b = match bucket_of_target.get(&(job.to_owned(), instance.to_owned())) {
                        Some(&b) => b,
                        None => {
                            buckets.push(TargetStats {
                                job: job.into(),
                                instance: instance.into(),
                                ..Default::default()
                            });
                            bucket_of_target
                                .insert((job.into(), instance.into()), buckets.len() - 1);
                            buckets.len() - 1
                        }
                    };
                    buckets[b].series += 1;
                    bucket_of_ref.insert(sref, b);
                    let h = hasher.hash(labels);
                    wire.clear();
                    labels.write_wire(&mut wire);
                    let bytes = &wire[..];
                    let found = index.find(h, |&i| {
                        let (_, _, a, b) = sets[i as usize];
                        arena[a..b] == *bytes
                    });
                    match found {
                        Some(&i) => {
                            let (first, counted, _, _) = &mut sets[i as usize];
                            if *first != sref && !*counted {
                                *counted = true;
                                st.hash_collisions += 1;
                            }
                        }
                        None => {
                            let start = arena.len();
                            arena.extend_from_slice(bytes);
                            sets.push((sref, false, start, arena.len()));
                            let i = (sets.len() - 1) as u32;
                            index.insert_unique(h, i, |&j| {
                                let (_, _, a, b) = sets[j as usize];
                                hasher.hash_bytes(&arena[a..b])
                            });
                        }
                    }
                    let selected = opts.selector.as_ref().is_none_or(|s| s.matches(labels));
                    if selected {
                        let name = labels.get("__name__").unwrap_or("");
                        match metrics.get_mut(name) {
                            Some(c) => *c += 1,
                            None => {
                                metrics.insert(name.to_owned(), 1);
                            }
                        }
                        if opts.per_series && !series_idx.contains_key(&sref) {
                            series_idx.insert(sref, per_series.len());
                            per_series.push(SeriesStats {
                                series_ref: sref.0,
                                labels: labels.to_string(),
                                ..Default::default()
                            });
                        }
                    }
                }
            }
            Some(record::SAMPLES) => {
                samples.clear();
                if let Err(e) = record::decode_samples(rec, &mut samples) {
                    damaged!('records, r.record_error(e));
                }
                for &(sref, t, _) in &samples {
                    mint = mint.min(t);
                    maxt = maxt.max(t);
                    match bucket_of_ref.get(&sref) {
                        Some(&b) => buckets[b].samples += 1,
                        None => st.invalid_refs += 1,
                    }
                    if let Some(&i) = series_idx.get(&sref) {
                        let s = &mut per_series[i];
                        s.samples += 1;
                        s.oldest_sample_ms = Some(s.oldest_sample_ms.map_or(t, |o| o.min(t)));
                        s.newest_sample_ms = Some(s.newest_sample_ms.map_or(t, |o| o.max(t)));
                    }
                }
            }
            _ => {}
        }
    }
    progress(total_bytes, total_bytes);
    if mint <= maxt {
        st.oldest_sample_ms = Some(mint);
        st.newest_sample_ms = Some(maxt);
    }
    st.total_series = buckets.iter().map(|b| b.series).sum();
    st.total_samples = buckets.iter().map(|b| b.samples).sum();
    buckets.sort_by(|a, b| {
        b.series
            .cmp(&a.series)
            .then_with(|| (&a.job, &a.instance).cmp(&(&b.job, &b.instance)))
    });
    st.targets = buckets;
    let mut m: Vec<MetricCount> = metrics
        .into_iter()
        .map(|(name, series)| MetricCount { name, series })
        .collect();
    m.sort_by(|a, b| b.series.cmp(&a.series).then_with(|| a.name.cmp(&b.name)));
    st.metrics = m;
    if opts.per_series {
        per_series.sort_by_key(|s| s.series_ref);
        st.series = Some(per_series);
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;

    #[test]
    fn selector_parsing_and_matching() {
        let s = Selector::parse(r#"up{job="x", instance=~"10\\..*",env!="prod", zone!~"a|b",}"#)
            .expect("parse");
        assert_eq!(s.matchers.len(), 5);
        let l = Labels::from_pairs([
            ("__name__", "up"),
            ("job", "x"),
            ("instance", "10.0.0.1:9100"),
        ]);
        assert!(s.matches(l.as_view()));
        let l2 = Labels::from_pairs([
            ("__name__", "up"),
            ("job", "x"),
            ("instance", "100.0.0.1"),
            ("zone", "c"),
        ]);
        assert!(
            !s.matches(l2.as_view()),
            "regex is anchored and the dot escaped"
        );
        assert!(Selector::parse("{}").expect("empty").matches(l.as_view()));
        assert!(Selector::parse(" { } ").is_ok());
        assert!(!Selector::parse(r#"{job=~"x|"}"#)
            .expect("p")
            .matches(Labels::from_pairs([("job", "xx")]).as_view()));
        // missing label = empty string
        assert!(Selector::parse(r#"{nope=""}"#)
            .expect("p")
            .matches(l.as_view()));
        assert!(Selector::parse(r#"{job='x'}"#)
            .expect("p")
            .matches(l.as_view()));
    }

    #[test]
    fn selector_errors() {
        for bad in [
            "",
            "{job}",
            "{job=x}",
            r#"{job="x""#,
            r#"{job="x"} y"#,
            r#"{job=~"("}"#,
            "{1a=\"x\"}",
        ] {
            let e = Selector::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("invalid selector"), "{e}");
        }
    }

    #[test]
    fn stats_totals_targets_metrics_and_series() {
        use crate::wal::{Wal, WalOptions};
        let d = tempfile::tempdir().expect("tempdir");
        let wal_dir = d.path().join("wal");
        let (mut wal, _) = Wal::open(&wal_dir, WalOptions::default()).expect("open");
        let a = Labels::from_pairs([("__name__", "up"), ("job", "j1"), ("instance", "a")]);
        let b = Labels::from_pairs([("__name__", "up"), ("job", "j1"), ("instance", "b")]);
        let c = Labels::from_pairs([("__name__", "x_total"), ("job", "j1"), ("instance", "b")]);
        let n = Labels::from_pairs([("__name__", "x_total")]);
        let r = SeriesRef;
        wal.append_series([
            (r(1), a.as_view()),
            (r(2), b.as_view()),
            (r(3), c.as_view()),
            (r(4), n.as_view()),
        ])
        .expect("series");
        wal.append_samples(&[
            (r(1), 1000, 1.0),
            (r(2), 1000, 1.0),
            (r(3), 1000, 5.0),
            (r(1), 2000, 1.0),
        ])
        .expect("samples");
        // A sample for a ref without a series record.
        wal.append_samples(&[(r(99), 500, 0.0)]).expect("samples");
        // The same label set again under a new ref (a re-created series).
        wal.append_series([(r(5), a.as_view())]).expect("series");
        wal.append_samples(&[(r(5), 3000, 1.0)]).expect("samples");
        wal.commit().expect("commit");
        drop(wal);

        let opts = StatsOptions {
            selector: Some(Selector::parse(r#"{job="j1", instance="b"}"#).expect("selector")),
            per_series: true,
        };
        // The instance dir is accepted and resolves to its wal/ subdirectory.
        let st = stats(d.path(), &opts).expect("stats");
        assert_eq!(st.dir, wal_dir);
        assert_eq!(
            (st.oldest_sample_ms, st.newest_sample_ms),
            (Some(500), Some(3000))
        );
        assert_eq!(st.total_series, 5);
        assert_eq!(st.total_samples, 5);
        assert_eq!(st.invalid_refs, 1);
        assert_eq!(st.hash_collisions, 1);
        assert_eq!(st.checkpoint_segment, None);
        assert_eq!((st.first_segment, st.last_segment), (Some(0), Some(0)));
        let t: Vec<(&str, &str, u64, u64)> = st
            .targets
            .iter()
            .map(|t| (t.job.as_str(), t.instance.as_str(), t.series, t.samples))
            .collect();
        assert_eq!(
            t,
            vec![("j1", "a", 2, 3), ("j1", "b", 2, 2), ("", "", 1, 0)]
        );
        let m: Vec<(&str, u64)> = st
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m.series))
            .collect();
        assert_eq!(m, vec![("up", 1), ("x_total", 1)]);
        let series = st.series.as_ref().expect("per series");
        assert_eq!(series.len(), 2);
        assert_eq!(
            series[1].labels,
            r#"{__name__="x_total", instance="b", job="j1"}"#
        );
        assert_eq!(
            (
                series[1].samples,
                series[1].oldest_sample_ms,
                series[1].newest_sample_ms
            ),
            (1, Some(1000), Some(1000))
        );
        let json = serde_json::to_value(&st).expect("json");
        assert_eq!(json["total_series"], 5);
        assert_eq!(json["targets"][0]["instance"], "a");
    }

    #[test]
    fn not_a_wal() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            stats(d.path(), &StatsOptions::default()),
            Err(InspectError::NotAWal(_))
        ));
        assert!(matches!(
            stats(&d.path().join("x"), &StatsOptions::default()),
            Err(InspectError::NotFound(_))
        ));
    }
}
