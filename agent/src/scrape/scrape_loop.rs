//! One target's scrape loop: fetch, parse, relabel, append, as Prometheus 2.42's `scrapeLoop`.
//!
//! # Schedule
//!
//! As Prometheus 2.42 and the old agent: a new loop waits for the target's slot, then scrapes
//! once per interval; a scrape that overruns skips the ticks it missed, so two scrapes of one
//! target are never closer than the interval. The slots are the instants `t` (nanoseconds since
//! the Unix epoch) with `t mod interval == hash mod interval` ([`scrape_offset`], Prometheus's
//! `Target.offset`), where `hash` is Prometheus's `Target.hash()` of the target's labels and
//! URL ([`Target::scrape_hash`](super::target::Target::scrape_hash)). The phase is pinned to
//! absolute time, so the targets of a job spread over the interval and a target keeps its
//! phase when its loop is restarted or its config moves to another agent. (Prometheus also
//! mixes a hash of its host name and external labels into the offset, so that two servers
//! scrape a target at different times; agentctl does not, so that every agent picks the same
//! phase for the same target: a moved config's scrapes stay an interval apart.) A scrape that
//! starts within 2 ms of its slot (before or after it) is stamped with the slot's time
//! ([`scrape_time`]). The timer is due at the slots themselves, so a late wake-up delays only
//! its own scrape.
//!
//! # One scrape
//!
//! `GET <Target::url>` with the headers Prometheus 2.42 sends:
//! `Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`
//! (or, with `scrape_protocols`, the weighted list Prometheus 2.49 sends),
//! `Accept-Encoding: gzip` (with `enable_compression`, else `identity`) and
//! `X-Prometheus-Scrape-Timeout-Seconds: <scrape_timeout in seconds>`. The URL is parsed and
//! those headers are made once, when the loop is made (`ScrapeRequest`); a URL the client
//! cannot parse fails every scrape with the client's reason, as in Prometheus (the target stays
//! listed, down). The whole request,
//! body included, must finish within `scrape_timeout`; a (decompressed) body of
//! `body_size_limit` bytes or more fails the scrape. The body is read into a buffer taken from a
//! small pool shared by every loop of the process ([`BodyPool`]) and given back after the scrape
//! was appended, as Prometheus's scrape buffer pool does: a loop does not keep its body's buffer
//! between scrapes (a 1,000-series target's body is ~128 KiB), so the buffers held are about as
//! many as scrapes run at once, not one per target.
//!
//! The body is parsed in the format its `Content-Type` names and every sample goes through
//! [`ScrapeProcessor::process_body`]: a series-cache hit appends straight away; a miss builds the
//! series labels (target labels merged per `honor_labels`, then `metric_relabel_configs`),
//! checks the names are legacy Prometheus names (`invalid metric name or label names`),
//! checks the label limits, registers the series with the appender and caches the outcome.
//! The timestamp is the scrape's (see Schedule) unless `honor_timestamps` and the sample has its own.
//!
//! After the body, the synthetic series `up`, `scrape_duration_seconds`,
//! `scrape_samples_scraped`, `scrape_samples_post_metric_relabeling` and `scrape_series_added`
//! are appended (target labels plus `__name__`, no metric relabelling) and the batch is
//! committed. A failed scrape (HTTP error, timeout, body too large, parse error, a limit)
//! rolls the body's samples back, appends staleness markers for the series of the previous
//! scrape that it did not append before failing (all of them when the fetch failed), as
//! Prometheus does, and reports `up 0`; the error is kept for the targets API.
//!
//! # Where this differs from Prometheus 2.42
//!
//! * Duplicates: a series that already had a sample in this scrape (the same text twice, or two
//!   texts that relabel to the same labels) is skipped and counted in
//!   [`BodyStats::duplicates`]. Prometheus hands both to storage, which rejects the second only
//!   when its value differs; we never send storage two samples of one series at one time.
//! * End of run: markers are written when the loop stops, at that time. Prometheus waits up to
//!   two intervals first, so that a target recreated by a reload can take over; our manager
//!   keeps unchanged targets' loops across reloads instead.
//! * A scraped series whose final labels equal a synthetic one (`up{job,instance}`) gets both
//!   samples appended; Prometheus logs the second as a duplicate.
//! * A timed-out scrape reports `context deadline exceeded` like Prometheus, plus the timeout.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::appender::{stale_nan, AppendError, Appender, SeriesRef, Storage};
use super::assigned::{AssignedSource, LoopEvent, Mode};
use super::cache::{Lookup, SeriesCache};
use super::metadata::{self, SharedMetadata};
use super::parse::{Entry, Exemplar, Format, ParseError, ParseErrorKind, Parsed, Parser, Sample};
use super::target::{merge_target_labels_into, Target};
use crate::clock::Clock;
use crate::config::scrape::{Limits, ScrapeConfig};
use crate::config::url::{is_valid_label_name, is_valid_metric_name};
use crate::httpclient::transport::{BodyError, RequestUrl, Session};
use crate::httpclient::HttpClient;
use crate::labels::{go_quote, Hasher, Labels, LabelsBuilder};
use crate::relabel;

/// The `Accept` header of Prometheus 2.42 (OpenMetrics preferred), sent unless the config sets
/// `scrape_protocols` ([`crate::config::scrape::ScrapeProtocols::accept_header`]).
pub const ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Names of the synthetic series, in the order they are appended.
pub const SYNTHETIC_SERIES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// Why a scrape failed. Texts follow Prometheus where it has one.
#[derive(Debug, Error)]
pub enum ScrapeError {
    #[error("Get {url:?}: {message}")]
    Http { url: String, message: String },
    #[error("Get {url:?}: context deadline exceeded (scrape_timeout {timeout:?})")]
    Timeout { url: String, timeout: Duration },
    #[error("server returned HTTP status {status}")]
    Status { status: String },
    #[error("body size limit exceeded (body_size_limit: {limit} bytes)")]
    BodySizeLimit { limit: u64 },
    #[error("{0}")]
    Parse(#[from] ParseError),
    #[error("sample_limit exceeded (samples: {samples}, limit: {limit})")]
    SampleLimit { samples: u64, limit: u64 },
    #[error("label_limit exceeded (metric: {metric}, number of labels: {labels}, limit: {limit})")]
    LabelLimit {
        metric: String,
        labels: usize,
        limit: u64,
    },
    #[error("label_name_length_limit exceeded (metric: {metric}, label name: {name}, length: {length}, limit: {limit})")]
    LabelNameLengthLimit {
        metric: String,
        name: String,
        length: usize,
        limit: u64,
    },
    #[error("label_value_length_limit exceeded (metric: {metric}, label name: {name}, value: {}, length: {length}, limit: {limit})", go_quote(.value))]
    LabelValueLengthLimit {
        metric: String,
        name: String,
        value: String,
        length: usize,
        limit: u64,
    },
    #[error("missing metric name (__name__ label) in series {series}")]
    MissingName { series: String },
    /// A name that is not a legacy Prometheus name after metric relabelling (or, from the
    /// body, a metric name with the line's leading whitespace).
    #[error("invalid metric name or label names: {labels}")]
    InvalidNames { labels: Labels },
    #[error("{0}")]
    Forced(String),
    #[error("{0}")]
    Append(#[from] AppendError),
}

/// Counts of one body, reported in the synthetic series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyStats {
    /// Samples in the body (`scrape_samples_scraped`).
    pub scraped: u64,
    /// Samples left after `metric_relabel_configs`, duplicates included
    /// (`scrape_samples_post_metric_relabeling`).
    pub post_relabel: u64,
    /// Series new to the cache (`scrape_series_added`).
    pub series_added: u64,
    /// Samples skipped because their series already had a sample in this scrape.
    pub duplicates: u64,
}

/// Prometheus's `%.50s`: at most 50 characters.
fn trunc50(s: &str) -> String {
    s.chars().take(50).collect()
}

/// The per-target state of the hot path, free of I/O so it can be driven directly (tests,
/// benchmarks): series cache, label builder and parser scratch, reused across scrapes.
pub struct ScrapeProcessor {
    cfg: Arc<ScrapeConfig>,
    target_labels: Labels,
    cache: SeriesCache,
    lb: LabelsBuilder,
    parser: Option<Parser<'static>>,
    synthetic: [Option<SeriesRef>; 5],
    /// The target's `# TYPE`/`# HELP`/`# UNIT` per family, read by remote_write.
    metadata: SharedMetadata,
    /// Whether 0.0.4 lines starting with the series the cache expects skip its parse (see
    /// `Parser::next_known`); off only in tests, to compare with the full parse.
    known_shortcut: bool,
}

impl ScrapeProcessor {
    /// A processor for the target with `target_labels`; its cache hashes with `hasher` (the
    /// storage's, [`Storage::hasher`]).
    pub fn new(cfg: Arc<ScrapeConfig>, target_labels: Labels, hasher: Hasher) -> Self {
        let mut parser = Parser::new(b"", Format::PrometheusText);
        // The target's labels replace scraped ones of the same name (without honor_labels),
        // so a series may repeat those names, as in Prometheus.
        if !cfg.honor_labels {
            parser.tolerate(target_labels.iter().map(|(n, _)| n));
        }
        ScrapeProcessor {
            cfg,
            target_labels,
            cache: SeriesCache::new(hasher),
            lb: LabelsBuilder::new(),
            parser: Some(parser),
            synthetic: [None; 5],
            metadata: SharedMetadata::default(),
            known_shortcut: true,
        }
    }

    /// The target's metadata, shared with readers.
    pub fn metadata(&self) -> &SharedMetadata {
        &self.metadata
    }

    /// The series cache (for inspection).
    pub fn cache(&self) -> &SeriesCache {
        &self.cache
    }

    /// Appends the samples of `body` at scrape time `t_ms`. On success the iteration is ended
    /// (staleness markers for vanished series are appended, the cache evicts what it no longer
    /// needs). On error the caller must roll `app` back and call [`ScrapeProcessor::fail`] with
    /// a fresh appender; the stats are valid either way.
    pub fn process_body(
        &mut self,
        app: &mut dyn Appender,
        body: &[u8],
        format: Format,
        t_ms: i64,
    ) -> (BodyStats, Result<(), ScrapeError>) {
        let parser = self
            .parser
            .take()
            .unwrap_or_else(|| Parser::new(b"", format));
        let mut parser = parser.reset(body, format);
        let mut stats = BodyStats::default();
        let result = self.append_samples(&mut parser, app, t_ms, &mut stats);
        self.parser = Some(parser.reset(b"", Format::PrometheusText));
        if result.is_ok() {
            self.cache
                .end_successful(!body.is_empty(), |r| app.append(r, t_ms, stale_nan()));
        }
        (stats, result)
    }

    fn append_samples(
        &mut self,
        parser: &mut Parser<'_>,
        app: &mut dyn Appender,
        t_ms: i64,
        stats: &mut BodyStats,
    ) -> Result<(), ScrapeError> {
        let limits = self.cfg.limits;
        let mut over_limit = false;
        // One lock per scrape; readers take it once per send interval.
        let metadata = self.metadata.clone();
        let mut metadata = metadata::lock(&metadata);
        // Only a 0.0.4 body takes the known-series shortcut (see `Parser::next_known`): a
        // text validated in either format is valid 0.0.4, not always valid OpenMetrics.
        let shortcut = self.known_shortcut && parser.format() == Format::PrometheusText;
        loop {
            let parsed = if shortcut {
                let cache = &self.cache;
                parser.next_known(&mut |line| cache.expected_len(line))
            } else {
                parser.next_entry().map(|e| e.map(Parsed::Entry))
            };
            let entry = match parsed {
                Ok(Some(Parsed::Entry(entry))) => entry,
                Ok(Some(Parsed::Known(k))) => {
                    stats.scraped += 1;
                    let Lookup::Series { slot, r, duplicate } = self.cache.take_expected() else {
                        // Dropped by relabelling (`expected_len` finds only live keys).
                        continue;
                    };
                    self.append_sample(
                        stats,
                        app,
                        &mut over_limit,
                        (slot, r, duplicate),
                        (k.value, k.timestamp, None),
                        t_ms,
                    );
                    continue;
                }
                Ok(None) => break,
                // Prometheus's parser lets a repeated label name through and its storage
                // refuses the sample: the line counts as scraped.
                Err(e) if matches!(e.kind, ParseErrorKind::DuplicateLabel(_)) => {
                    stats.scraped += 1;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            let s = match entry {
                Entry::Sample(s) => s,
                Entry::Type { name, kind } => {
                    metadata.set_type(name, kind);
                    continue;
                }
                Entry::Help { name, help } => {
                    metadata.set_help(name, &help);
                    continue;
                }
                Entry::Unit { name, unit } => {
                    metadata.set_unit(name, unit);
                    continue;
                }
                Entry::Comment(_) | Entry::Eof => continue,
            };
            stats.scraped += 1;
            let (slot, r, duplicate) = match self.cache.lookup(s.series) {
                Lookup::Series {
                    slot, r, duplicate, ..
                } => (slot, r, duplicate),
                Lookup::Dropped => continue,
                Lookup::Miss => match self.add_series(app, &s, over_limit)? {
                    Outcome::Dropped => continue,
                    Outcome::Uncached => (0, SeriesRef(0), true),
                    Outcome::Series {
                        slot,
                        r,
                        duplicate,
                        new,
                    } => {
                        if new {
                            stats.series_added += 1;
                        }
                        (slot, r, duplicate)
                    }
                },
            };
            self.append_sample(
                stats,
                app,
                &mut over_limit,
                (slot, r, duplicate),
                (s.value, s.timestamp, s.exemplar.as_ref()),
                t_ms,
            );
        }
        metadata.end_scrape();
        if over_limit {
            return Err(ScrapeError::SampleLimit {
                samples: stats.post_relabel,
                limit: limits.sample_limit,
            });
        }
        Ok(())
    }

    /// Appends one sample of a cached series (`slot`, `r`) unless the sample limit is
    /// exceeded or the series was already seen in this scrape.
    #[inline]
    fn append_sample(
        &mut self,
        stats: &mut BodyStats,
        app: &mut dyn Appender,
        over_limit: &mut bool,
        (slot, r, duplicate): (u32, SeriesRef, bool),
        (value, timestamp, exemplar): (f64, Option<i64>, Option<&Exemplar<'_>>),
        t_ms: i64,
    ) {
        let limits = &self.cfg.limits;
        stats.post_relabel += 1;
        if limits.sample_limit > 0 && stats.post_relabel > limits.sample_limit {
            // Keep counting the rest for the report, as Prometheus does; the batch is
            // rolled back by the caller.
            *over_limit = true;
        }
        if *over_limit {
            return;
        }
        if duplicate {
            stats.duplicates += 1;
            return;
        }
        let (t, explicit) = match timestamp {
            Some(ts) if self.cfg.honor_timestamps => (ts, true),
            _ => (t_ms, false),
        };
        self.cache
            .set_tracked(slot, !explicit || self.cfg.track_timestamps_staleness);
        app.append(r, t, value);
        if let Some(ex) = exemplar {
            let labels = Labels::from_pairs(ex.labels.iter());
            app.append_exemplar(r, &labels, ex.timestamp.unwrap_or(t), ex.value);
        }
    }

    /// The slow path for a series text not in the cache.
    fn add_series(
        &mut self,
        app: &mut dyn Appender,
        s: &Sample<'_>,
        over_limit: bool,
    ) -> Result<Outcome, ScrapeError> {
        let mut scraped: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(s.labels.len() + 1);
        scraped.push(("__name__", Cow::Borrowed(s.name)));
        scraped.extend(s.labels.iter());
        let pairs: Vec<(&str, &str)> = scraped.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        merge_target_labels_into(
            &mut self.lb,
            &pairs,
            &self.target_labels,
            self.cfg.honor_labels,
        );
        if !relabel::process(&mut self.lb, &self.cfg.metric_relabel_configs) || self.lb.is_empty() {
            self.cache.insert_dropped(s.series);
            return Ok(Outcome::Dropped);
        }
        let Some(metric) = self.lb.get("__name__") else {
            return Err(ScrapeError::MissingName {
                series: String::from_utf8_lossy(s.series).into_owned(),
            });
        };
        // Legacy names only, checked on the final labels as the old agent does: a scraped
        // name, or one made by metric relabelling (`__name__` set to `1x`, a `labelmap` that
        // produces `9`), that a receiver with name validation would refuse fails the scrape.
        let valid =
            is_valid_metric_name(metric) && self.lb.iter().all(|(n, _)| is_valid_label_name(n));
        if !valid {
            return Err(ScrapeError::InvalidNames {
                labels: self.lb.labels(),
            });
        }
        check_label_limits(&self.lb, metric, &self.cfg.limits)?;
        if over_limit {
            // The batch is lost anyway; do not register series for it.
            return Ok(Outcome::Uncached);
        }
        let labels = self.lb.labels();
        if let Some(slot) = self.cache.find_series(&labels) {
            if let Lookup::Series { slot, r, duplicate } = self.cache.link(s.series, slot) {
                return Ok(Outcome::Series {
                    slot,
                    r,
                    duplicate,
                    new: false,
                });
            }
        }
        let (r, labels) = app.new_series(labels);
        let slot = self.cache.insert_series(s.series, labels, r);
        Ok(Outcome::Series {
            slot,
            r,
            duplicate: false,
            new: true,
        })
    }

    /// Ends a failed scrape: staleness markers at `t_ms` for the series of the previous scrape
    /// that this one did not append before it failed, appended to `app` (a fresh appender: the
    /// failed one was rolled back).
    pub fn fail(&mut self, app: &mut dyn Appender, t_ms: i64) {
        self.cache.end_failed(|r| app.append(r, t_ms, stale_nan()));
    }

    /// The whole append side of one scrape: the body (or the fetch error), staleness, the
    /// synthetic series, commit. Returns the body's stats, or why the scrape failed.
    pub fn append_scrape(
        &mut self,
        storage: &dyn Storage,
        fetched: Result<(&[u8], Format), ScrapeError>,
        t_ms: i64,
        duration: Duration,
    ) -> Result<BodyStats, ScrapeError> {
        self.cache.sync_with(storage);
        let mut app = storage.appender();
        let (stats, error) = match fetched {
            Ok((body, format)) => match self.process_body(&mut *app, body, format, t_ms) {
                (stats, Ok(())) => (stats, None),
                (stats, Err(e)) => {
                    app.rollback();
                    app = storage.appender();
                    self.fail(&mut *app, t_ms);
                    (stats, Some(e))
                }
            },
            Err(e) => {
                self.fail(&mut *app, t_ms);
                (BodyStats::default(), Some(e))
            }
        };
        self.report(&mut *app, t_ms, error.is_none(), duration, &stats);
        let committed = app.commit();
        match (error, committed) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(ScrapeError::Append(e)),
            (None, Ok(())) => Ok(stats),
        }
    }

    /// Appends the synthetic series of one scrape.
    pub fn report(
        &mut self,
        app: &mut dyn Appender,
        t_ms: i64,
        up: bool,
        duration: Duration,
        stats: &BodyStats,
    ) {
        let values = [
            if up { 1.0 } else { 0.0 },
            duration.as_secs_f64(),
            stats.scraped as f64,
            stats.post_relabel as f64,
            stats.series_added as f64,
        ];
        for (i, v) in values.into_iter().enumerate() {
            let r = self.synthetic_ref(app, i);
            app.append(r, t_ms, v);
        }
    }

    fn synthetic_ref(&mut self, app: &mut dyn Appender, i: usize) -> SeriesRef {
        if let Some(r) = self.synthetic[i] {
            return r;
        }
        let mut lb = self.target_labels.builder();
        lb.set("__name__", SYNTHETIC_SERIES[i]);
        let (r, _) = app.new_series(lb.labels());
        self.synthetic[i] = Some(r);
        r
    }

    /// End of run: staleness markers at `t_ms` for every series of the last scrape and for
    /// the synthetic series.
    pub fn end_of_run(&mut self, app: &mut dyn Appender, t_ms: i64) {
        self.cache
            .for_each_last(|r| app.append(r, t_ms, stale_nan()));
        for r in self.synthetic.iter().flatten() {
            app.append(*r, t_ms, stale_nan());
        }
    }
}

enum Outcome {
    Dropped,
    /// Counted but neither cached nor appended (over `sample_limit`).
    Uncached,
    Series {
        slot: u32,
        r: SeriesRef,
        duplicate: bool,
        new: bool,
    },
}

/// Prometheus's `verifyLabelLimits` on the final labels of a new series.
fn check_label_limits(
    lb: &LabelsBuilder,
    metric: &str,
    limits: &Limits,
) -> Result<(), ScrapeError> {
    if limits.label_limit > 0 && lb.len() as u64 > limits.label_limit {
        return Err(ScrapeError::LabelLimit {
            metric: trunc50(metric),
            labels: lb.len(),
            limit: limits.label_limit,
        });
    }
    if limits.label_name_length_limit == 0 && limits.label_value_length_limit == 0 {
        return Ok(());
    }
    for (n, v) in lb.iter() {
        if limits.label_name_length_limit > 0 && n.len() as u64 > limits.label_name_length_limit {
            return Err(ScrapeError::LabelNameLengthLimit {
                metric: trunc50(metric),
                name: trunc50(n),
                length: n.len(),
                limit: limits.label_name_length_limit,
            });
        }
        if limits.label_value_length_limit > 0 && v.len() as u64 > limits.label_value_length_limit {
            return Err(ScrapeError::LabelValueLengthLimit {
                metric: trunc50(metric),
                name: trunc50(n),
                value: trunc50(v),
                length: v.len(),
                limit: limits.label_value_length_limit,
            });
        }
    }
    Ok(())
}

/// Prometheus's `Target.offset` (with no per-host seed): the wait from `now` until the
/// target's next slot, in `(0, interval]`. The slots are the instants `t` (nanoseconds since
/// the Unix epoch) with `t mod interval == hash mod interval`; `hash` is
/// [`Target::scrape_hash`](super::target::Target::scrape_hash).
pub fn scrape_offset(hash: u64, interval: Duration, now: SystemTime) -> Duration {
    let iv = interval.as_nanos();
    if iv == 0 {
        return Duration::ZERO;
    }
    let now_ns = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let base = iv - now_ns % iv;
    let mut next = base + u128::from(hash) % iv;
    if next > iv {
        next -= iv;
    }
    Duration::from_nanos(u64::try_from(next).unwrap_or(u64::MAX))
}

/// The target's slot nearest to `now`: the timer may fire a little before the wall clock
/// reaches the slot (the two clocks drift apart) as well as after it.
pub fn nearest_slot(hash: u64, interval: Duration, now: SystemTime) -> SystemTime {
    let next = now + scrape_offset(hash, interval, now);
    match next.checked_sub(interval) {
        Some(prev)
            if now.duration_since(prev).unwrap_or_default()
                < next.duration_since(now).unwrap_or_default() =>
        {
            prev
        }
        _ => next,
    }
}

/// The timestamp of a scrape that starts at `now`: [`aligned_scrape_time`] with the nearest
/// slot, unless that slot is not after the `last` scrape's timestamp (a tick that came almost
/// an interval late, just before the next slot): then `now`, so that timestamps only grow.
pub fn scrape_time(
    hash: u64,
    interval: Duration,
    now: SystemTime,
    last: Option<SystemTime>,
) -> SystemTime {
    let slot = nearest_slot(hash, interval, now);
    match last {
        Some(last) if slot <= last => now,
        _ => aligned_scrape_time(now, slot, interval),
    }
}

/// How far from its slot a scrape may start and still be stamped with the slot's time
/// (Prometheus's `ScrapeTimestampTolerance`).
pub const SCRAPE_TIMESTAMP_TOLERANCE: Duration = Duration::from_millis(2);

/// A scrape's timestamp: its slot when the timer fired within
/// [`SCRAPE_TIMESTAMP_TOLERANCE`] of it (and the interval is over 100 times that), else the
/// time it started. Samples of a target are then exactly an interval apart, which compresses
/// better, as Prometheus's `AlignScrapeTimestamps`; unlike Prometheus the slot is absolute
/// (not counted from the loop's first scrape), so every agent stamps a target's slot alike.
pub fn aligned_scrape_time(now: SystemTime, slot: SystemTime, interval: Duration) -> SystemTime {
    let off = match now.duration_since(slot) {
        Ok(late) => late,
        Err(early) => early.duration(),
    };
    if interval > SCRAPE_TIMESTAMP_TOLERANCE * 100 && off <= SCRAPE_TIMESTAMP_TOLERANCE {
        slot
    } else {
        now
    }
}

/// A target's health for the targets API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// The outcome of a loop's last scrape, shared with the manager.
#[derive(Debug, Clone)]
pub struct ScrapeStatus {
    pub health: Health,
    /// Start of the last scrape.
    pub last_scrape: Option<SystemTime>,
    pub last_duration: Duration,
    pub last_error: Option<String>,
    /// Set by the manager to fail every scrape without contacting the target
    /// (`target_limit`).
    pub forced_error: Option<String>,
    /// Completed scrapes, successful or not.
    pub scrapes: u64,
    /// Scrape time (Unix ms) of the last scrape whose samples were committed; a held scrape
    /// (target sharding, see [`crate::scrape::assigned`]) does not count until written.
    pub last_appended_ms: Option<i64>,
    /// Whether the loop holds its scrapes instead of appending them.
    pub holding: bool,
    /// Series texts in the loop's series cache after its last scrape (dropped ones included).
    pub cache_entries: usize,
}

impl Default for ScrapeStatus {
    fn default() -> Self {
        ScrapeStatus {
            health: Health::Unknown,
            last_scrape: None,
            last_duration: Duration::ZERO,
            last_error: None,
            forced_error: None,
            scrapes: 0,
            last_appended_ms: None,
            holding: false,
            cache_entries: 0,
        }
    }
}

/// Locks a status, ignoring poisoning (the data is plain and always consistent).
pub(crate) fn lock_status(s: &Mutex<ScrapeStatus>) -> std::sync::MutexGuard<'_, ScrapeStatus> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Buffers for scrape bodies, shared by every scrape loop of the process: a loop takes one for
/// a scrape and gives it back once the body was appended (see the module docs). At most
/// [`BodyPool::KEPT`] buffers are kept, none larger than [`BodyPool::MAX_KEPT_BYTES`]; a scrape
/// that finds none large enough gets one of its previous body's size (one allocation instead of
/// growing while the body is read).
pub struct BodyPool {
    bufs: Mutex<Vec<Vec<u8>>>,
}

/// The pool of every scrape loop.
static BODY_POOL: BodyPool = BodyPool::new();

impl BodyPool {
    /// How many buffers are kept: about how many scrapes read or append at once on a busy agent
    /// (two workers; a fetch waits on the network with its buffer taken).
    pub const KEPT: usize = 16;
    /// A larger buffer is freed when given back (a body that large is rare, and the pool would
    /// otherwise keep it for good).
    pub const MAX_KEPT_BYTES: usize = 16 << 20;

    pub const fn new() -> Self {
        BodyPool {
            bufs: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer: the smallest kept one of at least `size_hint` bytes, else the largest
    /// kept one, else a new one; with at least `size_hint` bytes of capacity either way.
    pub fn take(&self, size_hint: usize) -> Vec<u8> {
        let mut buf = {
            let mut bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
            let fit = bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= size_hint)
                .min_by_key(|(_, b)| b.capacity())
                .or_else(|| bufs.iter().enumerate().max_by_key(|(_, b)| b.capacity()))
                .map(|(i, _)| i);
            fit.map(|i| bufs.swap_remove(i)).unwrap_or_default()
        };
        buf.reserve_exact(size_hint);
        buf
    }

    /// Gives `buf` back: kept when there is room (or when it is larger than the smallest kept
    /// one, which is freed instead), freed otherwise.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > Self::MAX_KEPT_BYTES {
            return;
        }
        buf.clear();
        let mut bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        if bufs.len() < Self::KEPT {
            bufs.push(buf);
            return;
        }
        let freed = match bufs.iter_mut().min_by_key(|b| b.capacity()) {
            Some(smallest) if smallest.capacity() < buf.capacity() => {
                std::mem::replace(smallest, buf)
            }
            _ => buf,
        };
        // The smaller one is freed after the lock is released.
        drop(bufs);
        drop(freed);
    }

    /// Capacities of the kept buffers (tests).
    pub fn kept(&self) -> Vec<usize> {
        let bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        bufs.iter().map(Vec::capacity).collect()
    }
}

impl Default for BodyPool {
    fn default() -> Self {
        Self::new()
    }
}

/// A scrape loop: the processor plus HTTP.
pub struct ScrapeLoop {
    target: Arc<Target>,
    client: HttpClient,
    /// The target's connection, kept between scrapes and polled by this loop's task
    /// (agent/src/httpclient/transport.rs).
    session: Session,
    storage: Arc<dyn Storage>,
    processor: ScrapeProcessor,
    /// The body of the scrape in progress: a buffer from [`BODY_POOL`] between the fetch and the
    /// append, empty (no allocation) otherwise.
    body: Vec<u8>,
    /// The size of the last body fetched: how large a buffer the next scrape asks the pool for.
    last_body_len: usize,
    timeout: Duration,
    /// The target's URL and the scrape's headers, made when the loop is made; an error here
    /// (a URL the HTTP client cannot parse) is every scrape's error.
    request: Result<ScrapeRequest, String>,
    body_size_limit: u64,
    status: Arc<Mutex<ScrapeStatus>>,
    clock: Clock,
    /// Set for a target handed over to this agent (target sharding).
    handover: Option<Handover>,
}

/// How many held scrapes a loop keeps (the oldest goes first): a handover normally completes
/// within one scrape interval.
pub const MAX_HELD: usize = 3;

/// A scrape taken while holding: appended later if it is after the cutoff.
struct Held {
    t_ms: i64,
    duration: Duration,
    fetched: Result<(Vec<u8>, Format), ScrapeError>,
}

/// The handover state of a loop whose target another agent may still write (see
/// [`crate::scrape::assigned`]).
struct Handover {
    key: u64,
    mode: watch::Receiver<Mode>,
    held: std::collections::VecDeque<Held>,
    reported: bool,
    source: Arc<dyn AssignedSource>,
}

/// The next mode change of `h`; pending forever without a handover.
async fn mode_change(h: &mut Option<Handover>) -> Mode {
    match h {
        Some(h) => {
            if h.mode.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            *h.mode.borrow_and_update()
        }
        None => std::future::pending().await,
    }
}

/// A running loop; stop it with [`LoopHandle::stop`].
pub struct LoopHandle {
    /// The loop's `target` span (`target_url=…`).
    span: tracing::Span,
    cancel: CancellationToken,
    write_stale: Arc<AtomicBool>,
    task: JoinHandle<()>,
    status: Arc<Mutex<ScrapeStatus>>,
    metadata: SharedMetadata,
}

impl LoopHandle {
    /// The target's metric metadata.
    pub fn metadata(&self) -> &SharedMetadata {
        &self.metadata
    }

    pub fn status(&self) -> ScrapeStatus {
        lock_status(&self.status).clone()
    }

    /// [`ScrapeStatus::cache_entries`], without copying the rest of the status.
    pub fn cache_entries(&self) -> usize {
        lock_status(&self.status).cache_entries
    }

    pub(crate) fn set_forced_error(&self, e: Option<String>) {
        lock_status(&self.status).forced_error = e;
    }

    /// Stops the loop and waits for it. With `write_stale`, staleness markers are written for
    /// every series of its last scrape and its synthetic series; without, nothing is written
    /// (the config moved to another agent, which carries on with the same series).
    pub async fn stop(self, write_stale: bool) {
        self.write_stale.store(write_stale, Ordering::SeqCst);
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            self.span
                .in_scope(|| tracing::error!(error = %e, "scrape loop task failed"));
        }
    }

    /// [`LoopHandle::stop`], returning the loop's final status (its last appended scrape).
    pub async fn stop_and_status(self, write_stale: bool) -> ScrapeStatus {
        let status = self.status.clone();
        self.stop(write_stale).await;
        let st = lock_status(&status).clone();
        st
    }
}

impl ScrapeLoop {
    pub fn new(
        cfg: Arc<ScrapeConfig>,
        target: Arc<Target>,
        client: HttpClient,
        storage: Arc<dyn Storage>,
        clock: Clock,
    ) -> Self {
        let timeout = target.timeout.as_std();
        ScrapeLoop {
            processor: ScrapeProcessor::new(cfg.clone(), target.labels.clone(), storage.hasher()),
            timeout,
            request: ScrapeRequest::new(&target.url, timeout, &cfg),
            body_size_limit: cfg.limits.body_size_limit,
            target,
            client,
            session: Session::default(),
            storage,
            body: Vec::new(),
            last_body_len: 0,
            status: Arc::new(Mutex::new(ScrapeStatus::default())),
            clock,
            handover: None,
        }
    }

    /// A loop for target `key` handed over to this agent: it follows `mode`, holding its
    /// scrapes while it says [`Mode::Hold`] and reporting the first successful one to `source`.
    pub fn with_handover(
        mut self,
        key: u64,
        mode: watch::Receiver<Mode>,
        source: Arc<dyn AssignedSource>,
    ) -> Self {
        self.handover = Some(Handover {
            key,
            mode,
            held: std::collections::VecDeque::new(),
            reported: false,
            source,
        });
        self.apply_mode();
        self
    }

    /// Acts on the handover's current mode: on [`Mode::Write`], appends the held scrapes later
    /// than its cutoff, in order, and stops holding for good.
    fn apply_mode(&mut self) {
        let Some(h) = self.handover.as_mut() else {
            return;
        };
        let mode = *h.mode.borrow_and_update();
        let Mode::Write { after_ms } = mode else {
            lock_status(&self.status).holding = true;
            return;
        };
        let held = std::mem::take(&mut h.held);
        self.handover = None;
        lock_status(&self.status).holding = false;
        for x in held {
            if after_ms.is_some_and(|a| x.t_ms <= a) {
                continue;
            }
            let Held {
                t_ms,
                duration,
                fetched,
            } = x;
            let (body, fetched) = match fetched {
                Ok((b, format)) => (b, Ok(format)),
                Err(e) => (Vec::new(), Err(e)),
            };
            let result = self.processor.append_scrape(
                &*self.storage,
                fetched.map(|format| (body.as_slice(), format)),
                t_ms,
                duration,
            );
            if !matches!(result, Err(ScrapeError::Append(_))) {
                lock_status(&self.status).last_appended_ms = Some(t_ms);
            }
            BODY_POOL.give(body);
        }
    }

    /// Starts the loop on the current runtime, in a `target` span (`target_url=…`) inside the
    /// current one (its job's, inside its instance's). At ERROR level so that it is enabled
    /// whatever `--log.level` is (see agent/src/logging.rs).
    pub fn spawn(self) -> LoopHandle {
        let span = tracing::error_span!("target", target_url = %self.target.url);
        let cancel = CancellationToken::new();
        let write_stale = Arc::new(AtomicBool::new(true));
        let status = self.status.clone();
        let metadata = self.processor.metadata().clone();
        let task = tokio::spawn(
            self.run(cancel.clone(), write_stale.clone())
                .instrument(span.clone()),
        );
        LoopHandle {
            span,
            cancel,
            write_stale,
            task,
            status,
            metadata,
        }
    }

    async fn run(mut self, cancel: CancellationToken, write_stale: Arc<AtomicBool>) {
        let interval = self.target.interval.as_std();
        // The first scrape waits for the target's slot, as in Prometheus; from then on one
        // scrape per interval, ticks missed by an overrunning scrape skipped, so two scrapes
        // of a target are never closer than its interval (see the module docs).
        // The ticks are due at the slots themselves (not counted from when the first wait
        // ended), so a first wake-up that comes late does not shift every later scrape. A
        // handed-over target's mode changes are acted on while waiting.
        let hash = self.target.scrape_hash();
        let wait = scrape_offset(hash, interval, self.clock.now());
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + wait, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last = None;
        'ticks: loop {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break 'ticks,
                    _ = ticker.tick() => break,
                    _ = mode_change(&mut self.handover) => self.apply_mode(),
                }
            }
            let now = self.clock.now();
            let scrape_time = scrape_time(hash, interval, now, last);
            last = Some(scrape_time);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.scrape_and_report(scrape_time) => {}
            }
        }
        if write_stale.load(Ordering::SeqCst) {
            let mut app = self.storage.appender();
            self.processor
                .end_of_run(&mut *app, self.clock.unix_millis());
            if let Err(e) = app.commit() {
                tracing::warn!(error = %e, "writing end-of-run staleness markers failed");
            }
        }
    }

    /// One scrape at `started` (its samples' timestamp), appended and committed.
    pub async fn scrape_and_report(&mut self, started: SystemTime) {
        let start = Instant::now();
        let t_ms = crate::clock::unix_millis(started);
        let forced = lock_status(&self.status).forced_error.clone();
        let fetched = match forced {
            Some(e) => Err(ScrapeError::Forced(e)),
            None => self.fetch().await,
        };
        let duration = start.elapsed();
        if let Some(h) = self.handover.as_mut() {
            // Holding: another agent still writes this target (see `crate::scrape::assigned`).
            let ok = fetched.is_ok();
            let error = fetched.as_ref().err().map(|e| e.to_string());
            let fetched = fetched.map(|format| (std::mem::take(&mut self.body), format));
            h.held.push_back(Held {
                t_ms,
                duration,
                fetched,
            });
            if h.held.len() > MAX_HELD {
                if let Some(Held {
                    fetched: Ok((b, _)),
                    ..
                }) = h.held.pop_front()
                {
                    BODY_POOL.give(b);
                }
            }
            if ok && !h.reported {
                h.reported = true;
                h.source.event(LoopEvent::Scraped { key: h.key });
            }
            let mut st = lock_status(&self.status);
            st.health = if ok { Health::Up } else { Health::Down };
            st.last_scrape = Some(started);
            st.last_duration = duration;
            st.last_error = error;
            st.scrapes += 1;
            return;
        }
        let body = fetched.map(|format| (self.body.as_slice(), format));
        let result = self
            .processor
            .append_scrape(&*self.storage, body, t_ms, duration);
        BODY_POOL.give(std::mem::take(&mut self.body));
        let appended = !matches!(result, Err(ScrapeError::Append(_)));
        let error = result.err();
        if let Some(e) = &error {
            tracing::debug!(error = %e, "scrape failed");
        }
        let mut st = lock_status(&self.status);
        st.health = if error.is_none() {
            Health::Up
        } else {
            Health::Down
        };
        st.last_scrape = Some(started);
        st.last_duration = duration;
        st.last_error = error.map(|e| e.to_string());
        st.scrapes += 1;
        st.cache_entries = self.processor.cache().keys();
        if appended {
            st.last_appended_ms = Some(t_ms);
        }
    }

    /// GETs the target into `self.body` (a buffer from [`BODY_POOL`]); returns the body's
    /// format.
    async fn fetch(&mut self) -> Result<Format, ScrapeError> {
        BODY_POOL.give(std::mem::take(&mut self.body));
        // Room for a body somewhat larger than the last one (values grow, series come and go).
        self.body = BODY_POOL.take(self.last_body_len + self.last_body_len / 16);
        let r = self.fetch_body().await;
        if r.is_ok() {
            self.last_body_len = self.body.len();
        }
        r
    }

    async fn fetch_body(&mut self) -> Result<Format, ScrapeError> {
        let url = &self.target.url;
        let request = match &self.request {
            Ok(r) => r,
            Err(message) => {
                return Err(ScrapeError::Http {
                    url: url.clone(),
                    message: message.clone(),
                })
            }
        };
        let timeout = self.timeout;
        // The deadline covers connecting, headers and the whole body.
        let fut = fetch_into(
            &self.client,
            &mut self.session,
            url,
            request,
            self.body_size_limit,
            &mut self.body,
        );
        let r = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ScrapeError::Timeout {
                url: url.clone(),
                timeout,
            }),
        };
        self.session.finish(self.target.interval.as_std());
        r
    }
}

/// What every scrape of one target sends: its URL, parsed once, and the headers that do not
/// change between scrapes.
#[derive(Debug)]
struct ScrapeRequest {
    url: RequestUrl,
    headers: HeaderMap,
}

impl ScrapeRequest {
    /// The request for `url`, scraped with `cfg` and `timeout`; the error is the text a scrape
    /// reports (the client's, naming what it could not parse).
    fn new(url: &str, timeout: Duration, cfg: &ScrapeConfig) -> Result<ScrapeRequest, String> {
        let url = RequestUrl::parse(url)?;
        let value = |v: &str| HeaderValue::from_str(v).map_err(|e| format!("header {v:?}: {e}"));
        let mut headers = HeaderMap::new();
        let accept = cfg
            .scrape_protocols
            .map_or(Cow::Borrowed(ACCEPT_HEADER), |p| {
                Cow::Owned(p.accept_header())
            });
        headers.insert(ACCEPT, value(&accept)?);
        headers.insert(
            "X-Prometheus-Scrape-Timeout-Seconds",
            value(&timeout.as_secs_f64().to_string())?,
        );
        // With compression the client was built with gzip on: it sends `Accept-Encoding: gzip`
        // itself. A gzip body is decoded either way (agent/src/httpclient/transport.rs).
        if !cfg.enable_compression {
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        Ok(ScrapeRequest { url, headers })
    }
}

async fn fetch_into(
    client: &HttpClient,
    session: &mut Session,
    url: &str,
    request: &ScrapeRequest,
    limit: u64,
    body: &mut Vec<u8>,
) -> Result<Format, ScrapeError> {
    body.clear();
    // The client's error text already names the cause ("connection refused", an unreadable
    // credentials file), which the API user wants.
    let http = |message: String| ScrapeError::Http {
        url: url.to_owned(),
        message,
    };
    let resp = client
        .fetch(session, &request.url, &request.headers)
        .await
        .map_err(|e| http(e.to_string()))?;
    if resp.status() != reqwest::StatusCode::OK {
        let s = resp.status();
        resp.discard(session).await;
        return Err(ScrapeError::Status {
            status: format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or("")),
        });
    }
    let format = Format::from_content_type(
        resp.headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    // A body that reaches the limit fails, as in Prometheus (`n >= limit`).
    resp.read_into(session, body, limit)
        .await
        .map_err(|e| match e {
            BodyError::Limit => ScrapeError::BodySizeLimit { limit },
            BodyError::Read(message) => http(message),
        })?;
    Ok(format)
}

#[cfg(test)]
mod tests;
