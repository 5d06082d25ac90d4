//! `agentctl wal inspect DIR` and the old tool's `wal-stats`, `target-stats` and
//! `sample-stats` (docs/compat.md, *WAL tools*), all on top of [`agent::wal::inspect::stats`].
//!
//! The modern command prints a readable report or the whole [`WalStats`] as JSON and exits 2
//! when the directory is not a readable WAL; a torn or corrupt WAL is reported up to the
//! damage, with a warning saying what an agent would do with it, and exits 1. The legacy aliases print byte-for-byte the old
//! formats (Go `time.Time.String()` times, an `olekukonko/tablewriter` v0.0.5 table) and keep
//! the old error behaviour: the message on standard output and exit 1.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use agent::clock::{civil_from_days, rfc3339_millis};
use agent::wal::inspect::{self, DamageAt, InspectError, Selector, StatsOptions, WalStats};

use crate::args::{OutputFormat, WalInspectArgs};
use crate::progress::{Progress, Unit};
use crate::{io, Error};

/// How many metric names the report lists.
pub const TOP_METRICS: usize = 20;

/// `agentctl wal inspect`; with `progress`, a bar on standard error counts the bytes read. A
/// damaged WAL is reported up to the damage, with a warning on `err`, and exits 1.
pub fn run(
    args: &WalInspectArgs,
    progress: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<ExitCode, Error> {
    let mut matchers = Vec::new();
    if let Some(s) = &args.selector {
        matchers.extend(
            Selector::parse(s)
                .map_err(|e| Error::Usage(format!("--selector: {e}")))?
                .matchers,
        );
    }
    let target = target_selector(args.job.as_deref(), args.instance.as_deref())
        .map_err(|e| Error::Usage(format!("--job/--instance: {e}")))?;
    let filtered = args.selector.is_some() || target.is_some();
    if let Some(t) = target {
        matchers.extend(t.matchers);
    }
    let opts = StatsOptions {
        selector: filtered.then_some(Selector { matchers }),
        per_series: args.selector.is_some(),
    };
    let mut bar: Option<Progress> = None;
    let mut st = inspect::stats_with_progress(&args.dir, &opts, &mut |done, total| {
        bar.get_or_insert_with(|| Progress::new(progress, total, Unit::Bytes))
            .set_position(done);
    })
    .map_err(|e| wal_error(&args.dir, e))?;
    drop(bar);
    st.targets.retain(|t| {
        args.job.as_ref().is_none_or(|j| *j == t.job)
            && args.instance.as_ref().is_none_or(|i| *i == t.instance)
    });
    let text = match args.output {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&st)
                .map_err(|e| Error::Wal(format!("encoding the statistics as JSON: {e}")))?;
            s.push('\n');
            s
        }
        OutputFormat::Table => render_report(
            &st,
            &View {
                job: args.job.as_deref(),
                instance: args.instance.as_deref(),
                selector: args.selector.as_deref(),
            },
        ),
    };
    out.write_all(text.as_bytes())
        .map_err(|e| io("writing the report", e))?;
    if let Some(d) = &st.damage {
        let meaning = match st.damage_at {
            Some(DamageAt::Checkpoint) => {
                "an agent cannot open this WAL: its instance does not start (a checkpoint is not repaired)"
            }
            Some(DamageAt::TornTail) => {
                "if an agent is writing this WAL now, that is a record being written; if not, it is what a crash left, and an agent opening the WAL cuts it off (logged as `WAL repaired on open`)"
            }
            _ => {
                "an agent opening this WAL cuts it there (logged as `WAL repaired on open`), and what follows is lost"
            }
        };
        writeln!(
            err,
            "warning: the WAL in {} is damaged: {d}. The report covers what comes before the damage; {meaning}",
            st.dir.display()
        )
        .map_err(|e| io("writing the warning", e))?;
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn wal_error(dir: &Path, e: InspectError) -> Error {
    match e {
        // These already name the path.
        InspectError::NotFound(_) | InspectError::NotAWal(_) => Error::Wal(e.to_string()),
        InspectError::Wal(w) => Error::Wal(format!("reading the WAL in {}: {w}", dir.display())),
    }
}

/// A selector for `job="J"` and/or `instance="I"`, or `None` when neither is given.
fn target_selector(
    job: Option<&str>,
    instance: Option<&str>,
) -> Result<Option<Selector>, inspect::SelectorError> {
    let parts: Vec<String> = [("job", job), ("instance", instance)]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| format!("{n}=\"{}\"", escape(v))))
        .collect();
    if parts.is_empty() {
        return Ok(None);
    }
    Selector::parse(&format!("{{{}}}", parts.join(","))).map(Some)
}

/// Escapes a label value for a PromQL double-quoted string.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c => s.push(c),
        }
    }
    s
}

/// The filters the report was asked for (for its headings).
#[derive(Debug, Default, Clone, Copy)]
pub struct View<'a> {
    pub job: Option<&'a str>,
    pub instance: Option<&'a str>,
    pub selector: Option<&'a str>,
}

/// The readable report: summary, targets, top metric names, and per series with a selector.
pub fn render_report(st: &WalStats, view: &View<'_>) -> String {
    let mut s = String::new();
    let time = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), rfc3339_millis);
    let span = match (st.oldest_sample_ms, st.newest_sample_ms) {
        (Some(a), Some(b)) => human_duration(b.saturating_sub(a)),
        _ => "-".to_owned(),
    };
    let segments = match (st.first_segment, st.last_segment) {
        (Some(a), Some(b)) => {
            let n = u64::from(b.saturating_sub(a)) + 1;
            format!("{a:08}..{b:08} ({n} file{})", if n == 1 { "" } else { "s" })
        }
        _ => "none".to_owned(),
    };
    let checkpoint = st
        .checkpoint_segment
        .map_or_else(|| "none".to_owned(), |c| format!("checkpoint.{c:08}"));
    let summary = [
        ("WAL directory", st.dir.display().to_string()),
        ("Series", st.total_series.to_string()),
        ("Samples", st.total_samples.to_string()),
        ("Oldest sample", time(st.oldest_sample_ms)),
        ("Newest sample", time(st.newest_sample_ms)),
        ("Time span", span),
        ("Segments", segments),
        ("Checkpoint", checkpoint),
        ("Hash collisions", st.hash_collisions.to_string()),
        ("Invalid refs", st.invalid_refs.to_string()),
        (
            "Damaged",
            st.damage
                .as_deref()
                .map_or_else(|| "no".to_owned(), |d| format!("{d} (read up to there)")),
        ),
    ];
    for (k, v) in summary {
        let _ = writeln!(s, "{:<17}{v}", format!("{k}:"));
    }

    let mut filter = Vec::new();
    if let Some(j) = view.job {
        filter.push(format!("job=\"{}\"", escape(j)));
    }
    if let Some(i) = view.instance {
        filter.push(format!("instance=\"{}\"", escape(i)));
    }
    let filter = filter.join(", ");
    let _ = write!(s, "\nTargets ({}", st.targets.len());
    if !filter.is_empty() {
        let _ = write!(s, " matching {filter}");
    }
    s.push_str("):\n");
    if st.targets.is_empty() {
        s.push_str("  (none)\n");
    } else {
        let rows: Vec<Vec<String>> = st
            .targets
            .iter()
            .map(|t| {
                // A blank cell would read as a layout glitch.
                let or_dash = |v: &str| {
                    if v.is_empty() {
                        "-".to_owned()
                    } else {
                        v.to_owned()
                    }
                };
                vec![
                    or_dash(&t.job),
                    or_dash(&t.instance),
                    t.series.to_string(),
                    t.samples.to_string(),
                ]
            })
            .collect();
        s.push_str(&aligned(
            &["JOB", "INSTANCE", "SERIES", "SAMPLES"],
            &[false, false, true, true],
            &rows,
        ));
    }

    let shown = st.metrics.len().min(TOP_METRICS);
    let _ = write!(s, "\nTop {TOP_METRICS} metric names by series");
    let mut scope = Vec::new();
    if !filter.is_empty() {
        scope.push(filter);
    }
    if let Some(sel) = view.selector {
        scope.push(format!("selector {sel}"));
    }
    if !scope.is_empty() {
        let _ = write!(s, " ({})", scope.join("; "));
    }
    s.push_str(":\n");
    if st.metrics.is_empty() {
        s.push_str("  (none)\n");
    } else {
        let rows: Vec<Vec<String>> = st.metrics[..shown]
            .iter()
            .map(|m| vec![m.name.clone(), m.series.to_string()])
            .collect();
        s.push_str(&aligned(&["METRIC", "SERIES"], &[false, true], &rows));
        let more = st.metrics.len() - shown;
        if more > 0 {
            let _ = writeln!(
                s,
                "... and {more} more metric names (all of them with --output json)"
            );
        }
    }

    if let Some(series) = &st.series {
        let _ = writeln!(s, "\nSeries ({}):", series.len());
        if series.is_empty() {
            s.push_str("  (none)\n");
        } else {
            let rows: Vec<Vec<String>> = series
                .iter()
                .map(|x| {
                    vec![
                        x.labels.clone(),
                        x.samples.to_string(),
                        time(x.oldest_sample_ms),
                        time(x.newest_sample_ms),
                    ]
                })
                .collect();
            s.push_str(&aligned(
                &["LABELS", "SAMPLES", "OLDEST", "NEWEST"],
                &[false, true, false, false],
                &rows,
            ));
        }
    }
    s
}

/// Columns separated by two spaces, without trailing blanks; `right[i]` right-aligns column i.
fn aligned(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = widths[i].saturating_sub(c.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                l.extend(std::iter::repeat_n(' ', pad));
                l.push_str(c);
            } else {
                l.push_str(c);
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    s
}

/// `1d2h3m4.5s`, `250ms`, `0s`: compact and exact to the millisecond.
pub fn human_duration(ms: i64) -> String {
    if ms < 0 {
        return format!("-{}", human_duration(ms.saturating_neg()));
    }
    if ms < 1000 {
        return if ms == 0 {
            "0s".into()
        } else {
            format!("{ms}ms")
        };
    }
    let (d, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (h, rest) = (rest / 3_600_000, rest % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let mut s = String::new();
    for (v, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if v > 0 || !s.is_empty() {
            let _ = write!(s, "{v}{unit}");
        }
    }
    let _ = write!(s, "{}{}s", rest / 1000, go_fraction(rest % 1000));
    s
}

/// `.678`, `.5`, or nothing: milliseconds as Go prints a fraction with `.999999999`.
fn go_fraction(millis: i64) -> String {
    if millis == 0 {
        return String::new();
    }
    format!(".{millis:03}").trim_end_matches('0').to_owned()
}

/// Go's `time.Time.String()` of Prometheus's `timestamp.Time(ms).UTC()`:
/// `2006-01-02 15:04:05.999999999 -0700 MST`, i.e. `2024-01-02 03:04:05.678 +0000 UTC`. Trailing
/// zeros of the fraction are dropped, and the dot with them when it is zero; years are padded
/// to four digits and longer ones printed in full (`292278994-08-17 07:12:55.807 +0000 UTC` is
/// `math.MaxInt64` ms, what the old tool prints as the oldest sample of an empty WAL).
pub fn go_time_string(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let year = if y < 0 {
        format!("-{:04}", -y)
    } else {
        format!("{y:04}")
    };
    format!(
        "{year}-{m:02}-{d:02} {:02}:{:02}:{:02}{} +0000 UTC",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        go_fraction(millis)
    )
}

/// An `olekukonko/tablewriter` v0.0.5 table with its default settings: `+---+` borders, a
/// centred upper-case header (the left half of an odd gap is the smaller), one space of
/// padding, numeric cells right-aligned and others left-aligned, no lines between rows.
///
/// ```text
/// +-----+----------+--------+---------+
/// | JOB | INSTANCE | SERIES | SAMPLES |
/// +-----+----------+--------+---------+
/// | j1  | a        |      2 |       3 |
/// +-----+----------+--------+---------+
/// ```
///
/// Not reproduced: tablewriter wraps cells wider than 30 columns at spaces (job and instance
/// values rarely contain spaces) and measures East Asian wide characters as two columns.
pub fn tablewriter(headers: &[&str], rows: &[Vec<String>]) -> String {
    let headers: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut border = String::from("+");
    for w in &widths {
        border.extend(std::iter::repeat_n('-', w + 2));
        border.push('+');
    }
    border.push('\n');
    let mut s = border.clone();
    s.push('|');
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - h.chars().count();
        let left = gap / 2;
        let _ = write!(s, " {}{h}{} |", " ".repeat(left), " ".repeat(gap - left));
    }
    s.push('\n');
    s.push_str(&border);
    for r in rows {
        s.push('|');
        for (c, w) in r.iter().zip(&widths) {
            let pad = " ".repeat(w - c.chars().count());
            if is_go_decimal(c.trim()) {
                let _ = write!(s, " {pad}{c} |");
            } else {
                let _ = write!(s, " {c}{pad} |");
            }
        }
        s.push('\n');
    }
    s.push_str(&border);
    s
}

/// tablewriter's `^-?(?:\d{1,3}(?:,\d{3})*|\d+)(?:\.\d+)?$` (plus its `%` variant), which
/// decides right alignment.
fn is_go_decimal(c: &str) -> bool {
    let c = c.strip_suffix('%').unwrap_or(c);
    let c = c.strip_prefix('-').unwrap_or(c);
    let (int, frac) = match c.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (c, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let grouped = {
        let mut groups = int.split(',');
        groups
            .next()
            .is_some_and(|g| digits(g) && g.len() <= 3 && int.contains(','))
            && groups.all(|g| g.len() == 3 && digits(g))
    };
    (digits(int) || grouped) && frac.is_none_or(digits)
}

/// The old tool's directory checks: returns the message and exit 1 as it did (on stdout).
fn legacy_fail(out: &mut impl Write, msg: &str) -> Result<ExitCode, Error> {
    out.write_all(format!("{msg}\n").as_bytes())
        .map_err(|e| io("writing the report", e))?;
    Ok(ExitCode::from(1))
}

fn legacy_stats(
    dir: &Path,
    opts: &StatsOptions,
    what: &str,
    out: &mut impl Write,
) -> Result<Result<WalStats, ExitCode>, Error> {
    match inspect::stats(dir, opts) {
        // The old tool stopped at damage with the reader's error.
        Ok(WalStats {
            damage: Some(d), ..
        }) => legacy_fail(out, &format!("{what}: {d}")).map(Err),
        Ok(st) => Ok(Ok(st)),
        Err(e @ InspectError::NotFound(_)) => legacy_fail(out, &e.to_string()).map(Err),
        Err(e) => legacy_fail(out, &format!("{what}: {e}")).map(Err),
    }
}

fn write_out(out: &mut impl Write, text: &str) -> Result<ExitCode, Error> {
    out.write_all(text.as_bytes())
        .map_err(|e| io("writing the report", e))?;
    Ok(ExitCode::SUCCESS)
}

/// The old `wal-stats DIR`.
pub fn run_legacy_wal_stats(dir: &Path, out: &mut impl Write) -> Result<ExitCode, Error> {
    match legacy_stats(
        dir,
        &StatsOptions::default(),
        "failed to get WAL stats",
        out,
    )? {
        Ok(st) => write_out(out, &render_legacy_wal_stats(&st)),
        Err(code) => Ok(code),
    }
}

/// The old `target-stats DIR -j JOB -i INSTANCE`.
pub fn run_legacy_target_stats(
    dir: &Path,
    job: &str,
    instance: &str,
    out: &mut impl Write,
) -> Result<ExitCode, Error> {
    let selector = match target_selector(Some(job), Some(instance)) {
        Ok(s) => s,
        Err(e) => return legacy_fail(out, &format!("failed to get cardinality: {e}")),
    };
    let opts = StatsOptions {
        selector,
        per_series: false,
    };
    match legacy_stats(dir, &opts, "failed to get cardinality", out)? {
        Ok(st) => write_out(out, &render_legacy_target_stats(&st)),
        Err(code) => Ok(code),
    }
}

/// The old `sample-stats DIR -s SELECTOR`.
pub fn run_legacy_sample_stats(
    dir: &Path,
    selector: &str,
    out: &mut impl Write,
) -> Result<ExitCode, Error> {
    // The old tool checked the directory before parsing the selector.
    if !dir.exists() {
        return legacy_fail(out, &format!("{} does not exist", dir.display()));
    }
    let selector = match Selector::parse(selector) {
        Ok(s) => s,
        Err(e) => return legacy_fail(out, &format!("failed to get sample stats: {e}")),
    };
    let opts = StatsOptions {
        selector: Some(selector),
        per_series: true,
    };
    match legacy_stats(dir, &opts, "failed to get sample stats", out)? {
        Ok(st) => write_out(out, &render_legacy_sample_stats(&st)),
        Err(code) => Ok(code),
    }
}

/// `wal-stats` output (docs/compat.md, *WAL tools*). The old tool started the newest time at 0 and the oldest
/// at `math.MaxInt64`, printed checkpoint 0 without a checkpoint and segments -1 without
/// segments; all kept.
pub fn render_legacy_wal_stats(st: &WalStats) -> String {
    let oldest = st.oldest_sample_ms.unwrap_or(i64::MAX);
    let newest = st.newest_sample_ms.unwrap_or(0).max(0);
    let seg = |s: Option<u32>| s.map_or(-1, i64::from);
    let mut s = String::new();
    let _ = writeln!(s, "Oldest Sample:      {}", go_time_string(oldest));
    let _ = writeln!(s, "Newest Sample:      {}", go_time_string(newest));
    let _ = writeln!(s, "Total Series:       {}", st.total_series);
    let _ = writeln!(s, "Total Samples:      {}", st.total_samples);
    let _ = writeln!(s, "Hash Collisions:    {}", st.hash_collisions);
    let _ = writeln!(s, "Invalid Refs:       {}", st.invalid_refs);
    let _ = writeln!(
        s,
        "Checkpoint Segment: {}",
        st.checkpoint_segment.unwrap_or(0)
    );
    let _ = writeln!(s, "First Segment:      {}", seg(st.first_segment));
    let _ = writeln!(s, "Latest Segment:     {}", seg(st.last_segment));
    s.push_str("\nPer-target stats:\n");
    let rows: Vec<Vec<String>> = st
        .targets
        .iter()
        .map(|t| {
            vec![
                t.job.clone(),
                t.instance.clone(),
                t.series.to_string(),
                t.samples.to_string(),
            ]
        })
        .collect();
    s.push_str(&tablewriter(
        &["Job", "Instance", "Series", "Samples"],
        &rows,
    ));
    s
}

/// `target-stats` output (docs/compat.md, *WAL tools*): the metric names of the selected target by count.
pub fn render_legacy_target_stats(st: &WalStats) -> String {
    let mut s = String::from("Metric cardinality:\n\n");
    for m in &st.metrics {
        let _ = writeln!(s, "{}: {}", m.name, m.series);
    }
    s
}

/// `sample-stats` output (docs/compat.md, *WAL tools*), in ref order (the old tool used map order). A series
/// without samples shows the Unix epoch, as the old tool did.
pub fn render_legacy_sample_stats(st: &WalStats) -> String {
    let mut s = String::new();
    for x in st.series.iter().flatten() {
        let _ = writeln!(s, "{}", x.labels);
        let _ = writeln!(
            s,
            "  Oldest Sample:      {}",
            go_time_string(x.oldest_sample_ms.unwrap_or(0))
        );
        let _ = writeln!(
            s,
            "  Newest Sample:      {}",
            go_time_string(x.newest_sample_ms.unwrap_or(0))
        );
        let _ = writeln!(s, "  Total Samples:      {}", x.samples);
    }
    s
}

#[cfg(test)]
mod tests;
