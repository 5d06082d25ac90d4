//! The raw results (JSON under `bench/results/`) and BENCHMARKS.md rendered from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::procfs::Machine;

/// One benchmark invocation.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Report {
    /// RFC 3339, UTC.
    pub date: String,
    /// `quick`, `full` or `custom`.
    pub mode: String,
    pub command_line: String,
    pub machine: Machine,
    /// Tool -> version line.
    pub versions: BTreeMap<String, String>,
    pub runs: Vec<RunResult>,
    /// The plot, relative to the repository root, when one was made.
    #[serde(default)]
    pub plot: Option<String>,
}

/// One scraper measured at one size and interval.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RunResult {
    pub scraper: String,
    pub targets: usize,
    pub series_per_target: usize,
    /// targets x series_per_target: the active target series.
    pub series: u64,
    pub interval_s: u64,
    pub warmup_s: u64,
    pub window_s: u64,
    /// Scrapes each target served in the window (fewest, most).
    pub scrapes_min: u64,
    pub scrapes_max: u64,
    /// Σ over targets of scrapes served in the window x series per target.
    pub expected_samples: u64,
    /// Target samples of those scrapes that reached the sink.
    pub delivered_samples: u64,
    pub delivery: f64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub stale_markers: u64,
    pub auto_samples: u64,
    pub decode_errors: u64,
    /// Scraper CPU (user+system) during the window.
    pub cpu_s: f64,
    pub cpu_s_per_million: f64,
    /// VmHWM at the end of the window (peak since start, warm-up included).
    pub peak_rss_bytes: u64,
    /// Mean VmRSS sampled once a second over the window.
    pub steady_rss_bytes: u64,
    /// `RssAnon` and `RssFile` at the end of the window: heap and stacks against mapped files
    /// (the binary, mmapped WAL segments).
    #[serde(default)]
    pub rss_anon_bytes: u64,
    #[serde(default)]
    pub rss_file_bytes: u64,
    pub rss_bytes_per_series: f64,
    /// Growth of the data directory over the window (negative when truncation removed more).
    pub disk_growth_bytes: i64,
    pub disk_bytes_per_sample: f64,
    /// `/proc/PID/io` write_bytes over the window.
    pub write_bytes: u64,
    pub write_bytes_per_sample: f64,
    /// `/proc/PID/io` wchar over the window: every write call, sockets included (so the
    /// remote-write bodies too); kept for reference, not a disk figure.
    pub wchar_bytes: u64,
    /// Quantiles of the scraper's own `scrape_duration_seconds` over the window.
    pub scrape_p50_s: Option<f64>,
    pub scrape_p99_s: Option<f64>,
    /// The in-process targets' and sink's own CPU during the window.
    pub targets_cpu_s: f64,
    pub sink_cpu_s: f64,
    /// Seconds from the end of the window until every sample of it had arrived (or the wait
    /// gave up).
    pub drain_s: f64,
    /// Why this run failed (delivery short, scraper died, ...).
    pub error: Option<String>,
    /// Top of `perf report --no-children` when profiled.
    pub profile: Option<String>,
    /// The profile's self time by part of the program (perf samples classified by symbol).
    #[serde(default)]
    pub profile_parts: Vec<(String, f64)>,
    /// What else the machine did during the window: its 1-minute load average at the start
    /// and end, and the CPU-seconds every other process used (the machine's busy time minus
    /// the scraper, targets and sink).
    #[serde(default)]
    pub load1_start: f64,
    #[serde(default)]
    pub load1_end: f64,
    #[serde(default)]
    pub others_cpu_s: f64,
    /// jemalloc's own figures at the end of the window, for a jemalloc build run with
    /// `stats_interval` (its last statistics print before the window ended).
    #[serde(default)]
    pub jemalloc: Option<JemallocStats>,
}

/// The totals of jemalloc's `malloc_stats_print` (bytes): `allocated` is what the program
/// holds, `active` the pages of the runs it is in, `resident` what jemalloc has in RAM
/// (active + dirty pages not yet purged + metadata).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct JemallocStats {
    pub allocated: u64,
    pub active: u64,
    pub metadata: u64,
    pub resident: u64,
    pub mapped: u64,
    pub retained: u64,
}

impl JemallocStats {
    /// The last `Allocated: N, active: N, metadata: N (n_thp N), resident: N, mapped: N,
    /// retained: N` line of a log.
    pub fn last_in(log: &str) -> Option<JemallocStats> {
        let line = log.lines().rev().find(|l| l.starts_with("Allocated: "))?;
        let get = |key: &str| -> Option<u64> {
            let at = line.find(&format!("{key}: "))? + key.len() + 2;
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        Some(JemallocStats {
            allocated: get("Allocated")?,
            active: get("active")?,
            metadata: get("metadata")?,
            resident: get("resident")?,
            mapped: get("mapped")?,
            retained: get("retained").unwrap_or(0),
        })
    }
}

/// The issue's absolute target for agentctl: bytes per sample, both of WAL growth and of
/// `write_bytes` (the others are ratios to vmagent in the same run).
pub const TARGET_DISK_PER_SAMPLE: f64 = 8.0;

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// delivered / expected, never rounded up to 1.000: a shortfall always shows.
pub fn ratio(delivered: u64, expected: u64) -> String {
    if expected == 0 {
        return "n/a".to_owned();
    }
    if delivered == expected {
        return "1.000".to_owned();
    }
    let r = delivered as f64 / expected as f64;
    let s = format!("{r:.3}");
    if s == "1.000" || (delivered < expected && s.parse::<f64>().is_ok_and(|x| x >= r)) {
        // Truncate instead of rounding so 0.99996 reads 0.99995, not 1.000.
        format!("{:.6}", (r * 1e6).floor() / 1e6)
    } else {
        s
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn secs(v: Option<f64>) -> String {
    match v {
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
        None => "n/a".to_owned(),
    }
}

/// Renders BENCHMARKS.md; `analysis` is people's markdown (diagnosis, next steps), shown after
/// the targets table.
pub fn render(r: &Report, analysis: Option<&str>, allocators: Option<&Report>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Benchmarks\n");
    let _ = writeln!(
        o,
        "agentctl, Prometheus in agent mode and vmagent scraping the same synthetic targets and \
         remote-writing to the same counting receiver, one after another in one run. This file \
         is generated by `bench/run` from `bench/results/*.json`; do not edit it by hand.\n"
    );
    if r.mode == "quick" {
        let _ = writeln!(
            o,
            "> **Development quick run.** These figures come from `bench/run --quick` (small \
             size, short window) on a machine that was busy with other work. They show that the \
             harness works and delivery is exact; they are not the benchmark. Run `bench/run` \
             on a quiet machine for the real figures.\n"
        );
    }
    let _ = writeln!(o, "## How to run\n");
    let _ = writeln!(
        o,
        "```sh\n\
         bench/run                      # full run: 10k, 100k, 500k, 1M series at 5 s and 100k at 1 s, all three (1M: agentctl, vmagent); about 20 min\n\
         bench/run --profile            # the same, and perf on agentctl after each window (+20 s each)\n\
         bench/run --window 10+30       # the same plans, shorter warm-up and window (about 15 min)\n\
         bench/run --max-series 500000  # leave out 1M\n\
         bench/run --quick              # 10 targets x 1,000 series, 1 s interval, 5 s + 15 s (about 2 min)\n\
         bench/run --allocators         # agentctl with each global allocator (about 25 min)\n\
         bench/run --agentctl-variant before=PATH --scrapers agentctl,before,prometheus,vmagent --variant-plans 100x1000@5s,500x1000@5s,100x1000@1s  # and an earlier build at those plans\n\
         bench/run --report bench/results/<date>-full.json  # BENCHMARKS.md and the plot again, no measuring\n\
         bench/run --help               # sizes, intervals, scrapers, windows\n```\n"
    );
    let _ = writeln!(
        o,
        "`bench/run` installs `prometheus`, `victoria-metrics` and `python3-matplotlib` with apt-get \
         when missing, builds `agentctl` and `agentctl-bench` in release mode, runs \
         `agentctl-bench run`, writes `bench/results/<date>-<mode>.json`, this file and the plot. It \
         exits non-zero when any scraper delivered fewer samples than expected.\n"
    );
    let _ = writeln!(o, "## Setup\n");
    let _ = writeln!(o, "- date: {}", r.date);
    let _ = writeln!(o, "- command: `{}`", r.command_line);
    let _ = writeln!(
        o,
        "- machine: {} CPUs ({}), {:.1} GiB memory, Linux {}",
        r.machine.nproc,
        r.machine.cpu_model,
        r.machine.mem_total_bytes as f64 / (1u64 << 30) as f64,
        r.machine.kernel
    );
    for (tool, v) in &r.versions {
        let _ = writeln!(o, "- {tool}: {v}");
    }
    render_load(&mut o, r);
    let _ = writeln!(o);
    let _ = writeln!(o, "## Results\n");
    if let Some(p) = &r.plot {
        let _ = writeln!(
            o,
            "![CPU per million samples, RSS per series and bytes written per sample against the number of series]({p})\n"
        );
    }
    render_targets(&mut o, r);
    render_variants(&mut o, r);
    render_scaling(&mut o, r);
    let _ = writeln!(o, "## Each size and interval\n");
    // Runs grouped by size and interval, in the order they ran.
    let mut groups: Vec<(usize, usize, u64, Vec<&RunResult>)> = Vec::new();
    for run in &r.runs {
        match groups
            .iter_mut()
            .find(|g| g.0 == run.targets && g.1 == run.series_per_target && g.2 == run.interval_s)
        {
            Some(g) => g.3.push(run),
            None => groups.push((
                run.targets,
                run.series_per_target,
                run.interval_s,
                vec![run],
            )),
        }
    }
    for (targets, per, interval, runs) in &groups {
        let first = runs[0];
        let _ = writeln!(
            o,
            "### {} series ({} targets x {}), every {} s, {} s warm-up + {} s window\n",
            thousands(*targets as u64 * *per as u64),
            targets,
            thousands(*per as u64),
            interval,
            first.warmup_s,
            first.window_s
        );
        let _ = writeln!(
            o,
            "| scraper | CPU-s / M samples | peak RSS | steady RSS | RSS B / series | disk B / sample (dir growth) | write_bytes / sample | delivered / expected | scrape p99 |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for run in runs {
            let _ = writeln!(
                o,
                "| {} | {:.2} | {} | {} | {:.0} | {:.2} | {:.2} | {} ({} / {}) | {} |",
                run.scraper,
                run.cpu_s_per_million,
                mib(run.peak_rss_bytes),
                mib(run.steady_rss_bytes),
                run.rss_bytes_per_series,
                run.disk_bytes_per_sample,
                run.write_bytes_per_sample,
                ratio(run.delivered_samples, run.expected_samples),
                thousands(run.delivered_samples),
                thousands(run.expected_samples),
                secs(run.scrape_p99_s),
            );
        }
        let _ = writeln!(o);
        for run in runs {
            let _ = writeln!(
                o,
                "- {}: {:.2} CPU-s in the window; {}-{} scrapes per target (the interval allows {}); drained {:.1} s after the window; \
                 duplicates {}, out of order {}; targets used {:.2} CPU-s, the sink {:.2} CPU-s, other processes {:.1} CPU-s \
                 (load {:.1} -> {:.1}){}{}{}",
                run.scraper,
                run.cpu_s,
                run.scrapes_min,
                run.scrapes_max,
                run.window_s / run.interval_s.max(1),
                run.drain_s,
                run.duplicates,
                run.out_of_order,
                run.targets_cpu_s,
                run.sink_cpu_s,
                run.others_cpu_s,
                run.load1_start,
                run.load1_end,
                if run.rss_anon_bytes + run.rss_file_bytes > 0 {
                    format!(
                        "; RSS at the window's end {} anonymous, {} files",
                        mib(run.rss_anon_bytes),
                        mib(run.rss_file_bytes)
                    )
                } else {
                    String::new()
                },
                run.jemalloc.as_ref().map_or(String::new(), |j| format!(
                    "; jemalloc: {} held, {} resident",
                    mib(j.allocated),
                    mib(j.resident)
                )),
                match &run.error {
                    Some(e) => format!("; **FAILED: {e}**"),
                    None => String::new(),
                }
            );
        }
        let _ = writeln!(o);
    }
    if let Some(a) = allocators {
        render_allocators(&mut o, a);
    }
    for run in &r.runs {
        render_profile(&mut o, run);
    }
    if let Some(a) = analysis {
        let _ = writeln!(o, "## Analysis\n\n{}\n", a.trim());
    }
    let _ = writeln!(o, "{METHOD}");
    o
}

/// What `bench/run` prints at the end: the targets with their verdicts, agentctl against its
/// other builds, and every scraper's memory per added series.
pub fn summary(r: &Report) -> String {
    let mut o = String::new();
    render_targets(&mut o, r);
    render_variants(&mut o, r);
    let _ = writeln!(o, "{}", marginal_line(r).unwrap_or_default());
    o
}

/// Runs by other agentctl builds (`--agentctl-variant`): every scraper that is none of the
/// three programs.
fn variants(r: &Report) -> Vec<&str> {
    scrapers(r)
        .into_iter()
        .filter(|n| !["agentctl", "prometheus", "vmagent"].contains(n))
        .collect()
}

/// agentctl against each other build of it measured in the same run, plan by plan.
fn render_variants(o: &mut String, r: &Report) {
    let names = variants(r);
    let pairs: Vec<(&RunResult, &RunResult)> = names
        .iter()
        .flat_map(|n| {
            r.runs
                .iter()
                .filter(move |x| x.scraper == *n)
                .filter_map(|v| find(r, "agentctl", v.series, v.interval_s).map(|a| (a, v)))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "## agentctl against other builds of it in this run
"
    );
    let _ = writeln!(
        o,
        "Other agentctl binaries (`--agentctl-variant NAME=PATH`, see the command line) on the \
         same targets in the same run; change = agentctl against the other build.\n"
    );
    let _ = writeln!(
        o,
        "| build | plan | CPU-s / M samples: agentctl / build (change) | RSS B / series: agentctl / build (change) | write_bytes / sample: agentctl / build | delivered / expected (build) |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|");
    let change = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:+.1}%", (a / b - 1.0) * 100.0)
        } else {
            "n/a".to_owned()
        }
    };
    for (a, v) in &pairs {
        let _ = writeln!(
            o,
            "| {} | {} @{} s | {:.2} / {:.2} ({}) | {:.0} / {:.0} ({}) | {:.2} / {:.2} | {} |",
            v.scraper,
            size(v.series),
            v.interval_s,
            a.cpu_s_per_million,
            v.cpu_s_per_million,
            change(a.cpu_s_per_million, v.cpu_s_per_million),
            a.rss_bytes_per_series,
            v.rss_bytes_per_series,
            change(a.rss_bytes_per_series, v.rss_bytes_per_series),
            a.write_bytes_per_sample,
            v.write_bytes_per_sample,
            ratio(v.delivered_samples, v.expected_samples),
        );
    }
    for n in &names {
        if let (Some(a), Some(v)) = (
            marginal_bytes(r, "agentctl", 100_000, 500_000),
            marginal_bytes(r, n, 100_000, 500_000),
        ) {
            let _ = writeln!(
                o,
                "| {n} | memory per added series (500k minus 100k) | | {a:.0} / {v:.0} B ({}) | | |",
                change(a, v)
            );
        }
    }
    let _ = writeln!(o);
}

/// Every scraper's memory per added series from 100k to 500k (5 s), when both were measured.
fn marginal_line(r: &Report) -> Option<String> {
    let marg: Vec<String> = scrapers(r)
        .iter()
        .filter_map(|n| marginal_bytes(r, n, 100_000, 500_000).map(|m| format!("{n} {m:.0} B")))
        .collect();
    (!marg.is_empty()).then(|| {
        format!(
            "**Memory per added series** (steady RSS at 500k minus at 100k, divided by the \
             400,000 added series): {}.\n",
            marg.join(", ")
        )
    })
}

/// The run of `scraper` at `series` active series every `interval_s`.
fn find<'a>(r: &'a Report, scraper: &str, series: u64, interval_s: u64) -> Option<&'a RunResult> {
    r.runs
        .iter()
        .find(|x| x.scraper == scraper && x.series == series && x.interval_s == interval_s)
}

/// Extra steady RSS per added series between two sizes of one scraper (5 s interval).
pub fn marginal_bytes(r: &Report, scraper: &str, from: u64, to: u64) -> Option<f64> {
    let a = find(r, scraper, from, 5)?;
    let b = find(r, scraper, to, 5)?;
    Some((b.steady_rss_bytes as f64 - a.steady_rss_bytes as f64) / (to - from) as f64)
}

/// The sizes measured every 5 s by `scraper`, ascending.
fn curve<'a>(r: &'a Report, scraper: &str) -> Vec<&'a RunResult> {
    let mut v: Vec<&RunResult> = r
        .runs
        .iter()
        .filter(|x| x.scraper == scraper && x.interval_s == 5)
        .collect();
    v.sort_by_key(|x| x.series);
    v
}

/// Scrapers in the order they first ran.
fn scrapers(r: &Report) -> Vec<&str> {
    let mut v: Vec<&str> = Vec::new();
    for x in &r.runs {
        if !v.contains(&x.scraper.as_str()) {
            v.push(&x.scraper);
        }
    }
    v
}

fn size(series: u64) -> String {
    if series >= 1_000_000 && series % 1_000_000 == 0 {
        format!("{}M", series / 1_000_000)
    } else if series >= 1_000 && series % 1_000 == 0 {
        format!("{}k", series / 1_000)
    } else {
        thousands(series)
    }
}

const MET: &str = "met";

/// "agentctl <= factor x vmagent" on one figure: the row's measured text and verdict.
fn versus(
    ours: Option<&RunResult>,
    theirs: Option<&RunResult>,
    factor: f64,
    figure: fn(&RunResult) -> f64,
    unit: &str,
    digits: usize,
) -> (String, String) {
    match (ours, theirs) {
        (Some(a), Some(b)) => {
            let (x, y) = (figure(a), figure(b));
            let limit = factor * y;
            let measured = format!(
                "{x:.digits$} vs vmagent {y:.digits$} {unit}: {:.2}x (limit {limit:.digits$})",
                x / y
            );
            let verdict = if x <= limit {
                MET.to_owned()
            } else {
                format!(
                    "**missed** by {:.digits$} {unit} ({:.0}% over the limit)",
                    x - limit,
                    (x / limit - 1.0) * 100.0
                )
            };
            (measured, verdict)
        }
        _ => (
            "not measured in this run".to_owned(),
            "not measured".to_owned(),
        ),
    }
}

/// Within 10 %: the noise between runs of one scraper on a shared 2-core machine.
const FLAT: f64 = 1.10;

/// "Flat or falling with scale" over a curve: each size at most 10 % above the smallest size
/// before it.
fn flat_or_falling(points: &[(u64, f64)], unit: &str, digits: usize) -> (String, String) {
    if points.len() < 2 {
        return (
            "fewer than two sizes measured".to_owned(),
            "not measured".to_owned(),
        );
    }
    let measured = points
        .iter()
        .map(|(s, v)| format!("{}: {v:.digits$}", size(*s)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut worst: Option<(u64, f64, f64)> = None;
    let mut best_before = points[0].1;
    for &(s, v) in &points[1..] {
        if v > best_before * FLAT {
            let over = v / best_before - 1.0;
            if worst.is_none_or(|w| over > w.2) {
                worst = Some((s, v - best_before, over));
            }
        }
        best_before = best_before.min(v);
    }
    let verdict = match worst {
        None => MET.to_owned(),
        Some((s, d, over)) => format!(
            "**missed**: {} is {d:.digits$} {unit} ({:.0}%) above a smaller size",
            size(s),
            over * 100.0
        ),
    };
    (measured, verdict)
}

fn render_targets(o: &mut String, r: &Report) {
    if !r.runs.iter().any(|x| x.scraper == "agentctl") {
        return;
    }
    let _ = writeln!(o, "## agentctl against the targets\n");
    let _ = writeln!(
        o,
        "Every figure from this run; \"x vmagent\" targets compare with vmagent measured in the \
         same run on the same targets. A missed target says by how much; the profile and the \
         analysis below say why.\n"
    );
    let _ = writeln!(o, "| target | measured | verdict |");
    let _ = writeln!(o, "|---|---|---|");
    let row = |o: &mut String, t: &str, (m, v): (String, String)| {
        let _ = writeln!(o, "| {t} | {m} | {v} |");
    };
    let a = |s, i| find(r, "agentctl", s, i);
    let v = |s, i| find(r, "vmagent", s, i);
    let cpu = |x: &RunResult| x.cpu_s_per_million;
    let rss = |x: &RunResult| x.rss_bytes_per_series;
    for (series, interval) in [(100_000, 5), (100_000, 1), (500_000, 5)] {
        row(
            o,
            &format!(
                "CPU-s per million samples <= 0.6 x vmagent at {} @{interval} s",
                size(series)
            ),
            versus(
                a(series, interval),
                v(series, interval),
                0.6,
                cpu,
                "CPU-s/M",
                2,
            ),
        );
    }
    for (series, interval) in [(100_000, 5), (100_000, 1)] {
        row(
            o,
            &format!(
                "RSS per active series <= 0.6 x vmagent at {} @{interval} s",
                size(series)
            ),
            versus(a(series, interval), v(series, interval), 0.6, rss, "B", 0),
        );
    }
    row(
        o,
        "RSS per active series <= vmagent at 500k @5 s",
        versus(a(500_000, 5), v(500_000, 5), 1.0, rss, "B", 0),
    );
    let marginal = match (
        marginal_bytes(r, "agentctl", 100_000, 500_000),
        marginal_bytes(r, "vmagent", 100_000, 500_000),
    ) {
        (Some(x), Some(y)) => {
            let limit = 1.2 * y;
            (
                format!(
                    "{x:.0} vs vmagent {y:.0} B per added series: {:.2}x (limit {limit:.0})",
                    x / y
                ),
                if x <= limit {
                    MET.to_owned()
                } else {
                    format!(
                        "**missed** by {:.0} B ({:.0}% over the limit)",
                        x - limit,
                        (x / limit - 1.0) * 100.0
                    )
                },
            )
        }
        _ => (
            "not measured in this run".to_owned(),
            "not measured".to_owned(),
        ),
    };
    row(
        o,
        "Memory per added series (steady RSS, 500k minus 100k, 5 s) <= 1.2 x vmagent",
        marginal,
    );
    let ours: Vec<&RunResult> = r.runs.iter().filter(|x| x.scraper == "agentctl").collect();
    for (name, f) in [
        (
            "WAL growth",
            (|x: &RunResult| x.disk_bytes_per_sample) as fn(&RunResult) -> f64,
        ),
        ("`write_bytes`", |x: &RunResult| x.write_bytes_per_sample),
    ] {
        let worst = ours.iter().map(|x| f(x)).fold(f64::MIN, f64::max);
        let list = ours
            .iter()
            .map(|x| format!("{} @{} s: {:.2}", size(x.series), x.interval_s, f(x)))
            .collect::<Vec<_>>()
            .join(", ");
        row(
            o,
            &format!("<= {TARGET_DISK_PER_SAMPLE} B per sample of {name}"),
            (
                list,
                if worst <= TARGET_DISK_PER_SAMPLE {
                    MET.to_owned()
                } else {
                    format!(
                        "**missed** by {:.2} B at worst",
                        worst - TARGET_DISK_PER_SAMPLE
                    )
                },
            ),
        );
    }
    let short: Vec<String> = r
        .runs
        .iter()
        .filter(|x| x.delivered_samples < x.expected_samples || x.expected_samples == 0)
        .map(|x| {
            format!(
                "{} at {} @{} s: {}",
                x.scraper,
                size(x.series),
                x.interval_s,
                ratio(x.delivered_samples, x.expected_samples)
            )
        })
        .collect();
    let dups: u64 = r.runs.iter().map(|x| x.duplicates).sum();
    row(
        o,
        "delivered / expected = 1.000 for all three scrapers, 0 duplicates",
        (
            format!(
                "{} of {} runs exact{}; duplicates {dups}",
                r.runs.len() - short.len(),
                r.runs.len(),
                if short.is_empty() {
                    String::new()
                } else {
                    format!(" (short: {})", short.join(", "))
                }
            ),
            if short.is_empty() && dups == 0 {
                MET.to_owned()
            } else {
                "**missed**".to_owned()
            },
        ),
    );
    let c = curve(r, "agentctl");
    row(
        o,
        "CPU per sample flat or falling from 10k to 1M series (5 s; flat = within 10 %)",
        flat_or_falling(
            &c.iter()
                .map(|x| (x.series, x.cpu_s_per_million))
                .collect::<Vec<_>>(),
            "CPU-s/M",
            2,
        ),
    );
    row(
        o,
        "Memory per series flat or falling from 10k to 1M series (5 s; flat = within 10 %)",
        flat_or_falling(
            &c.iter()
                .map(|x| (x.series, x.rss_bytes_per_series))
                .collect::<Vec<_>>(),
            "B",
            0,
        ),
    );
    let _ = writeln!(
        o,
        "| No regression in the reliability suite (kill -9 mid-stream, receiver outage: 0 lost) | \
         not a benchmark figure: `tests/remote_write_e2e.rs` and the WAL tests in CI | see CI |"
    );
    let _ = writeln!(o);
}

/// Per scraper, the 5 s sizes side by side: how CPU and memory per series scale.
fn render_scaling(o: &mut String, r: &Report) {
    let names = scrapers(r);
    if !names.iter().any(|n| curve(r, n).len() >= 2) {
        return;
    }
    let _ = writeln!(o, "## Scaling: every 5 s, 10k to 1M active series\n");
    let _ = writeln!(
        o,
        "| scraper | series | CPU-s / M samples | RSS B / series | steady RSS | memory per added series (vs the size before) | WAL growth B / sample | write_bytes / sample | delivered / expected | duplicates |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in &names {
        let c = curve(r, n);
        let mut prev: Option<&RunResult> = None;
        for x in &c {
            let added = prev.map_or("".to_owned(), |p| {
                format!(
                    "{:.0} B",
                    (x.steady_rss_bytes as f64 - p.steady_rss_bytes as f64)
                        / (x.series as f64 - p.series as f64)
                )
            });
            let _ = writeln!(
                o,
                "| {n} | {} | {:.2} | {:.0} | {} | {added} | {:.2} | {:.2} | {} | {} |",
                size(x.series),
                x.cpu_s_per_million,
                x.rss_bytes_per_series,
                mib(x.steady_rss_bytes),
                x.disk_bytes_per_sample,
                x.write_bytes_per_sample,
                ratio(x.delivered_samples, x.expected_samples),
                x.duplicates
            );
            prev = Some(x);
        }
    }
    let _ = writeln!(o);
    if let Some(m) = marginal_line(r) {
        let _ = writeln!(o, "{m}");
    }
}

/// The machine's other load during the windows (the benchmark shares it).
fn render_load(o: &mut String, r: &Report) {
    let runs: Vec<&RunResult> = r.runs.iter().filter(|x| x.window_s > 0).collect();
    if runs.is_empty()
        || runs
            .iter()
            .all(|x| x.load1_start == 0.0 && x.load1_end == 0.0)
    {
        return;
    }
    let loads = runs.iter().flat_map(|x| [x.load1_start, x.load1_end]);
    let (lo, hi) = loads.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let others: Vec<f64> = runs
        .iter()
        .map(|x| x.others_cpu_s / x.window_s as f64)
        .collect();
    let mean = others.iter().sum::<f64>() / others.len() as f64;
    let max = others.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        o,
        "- load: the machine was shared with other work during the run: 1-minute load average \
         {lo:.1} to {hi:.1} at the windows' edges; other processes used {mean:.2} CPUs on average \
         during a window (at most {max:.2}) of the {}. CPU-seconds per sample count only the \
         scraper's own time, but a busy machine slows everything (caches, scheduling): compare \
         scrapers within this run, not with other runs.",
        r.machine.nproc
    );
}

/// The allocator comparison: agentctl built with each global allocator, one run.
fn render_allocators(o: &mut String, a: &Report) {
    let _ = writeln!(
        o,
        "## Global allocator (agentctl built with each, one run)\n"
    );
    const KNOWN: [(&str, &str); 7] = [
        (
            "agentctl",
            "the system allocator (glibc), the default build",
        ),
        ("system-arena2", "glibc with `MALLOC_ARENA_MAX=2`"),
        ("mimalloc", "feature `mimalloc`, default settings"),
        (
            "jemalloc",
            "feature `jemalloc`, default decay (dirty pages purged over 10 s)",
        ),
        (
            "jemalloc-decay0",
            "`dirty_decay_ms:0,muzzy_decay_ms:0`: freed pages returned at once",
        ),
        (
            "jemalloc-stats",
            "feature `jemalloc` with jemalloc's statistics read at the window's end, default decay",
        ),
        (
            "jemalloc-bg1s",
            "`background_thread:true,dirty_decay_ms:1000`: purged by a background thread",
        ),
    ];
    let names = scrapers(a);
    let described: Vec<String> = names
        .iter()
        .map(|n| match KNOWN.iter().find(|(k, _)| k == n) {
            Some((_, d)) => format!("`{n}`: {d}"),
            None => format!("`{n}`"),
        })
        .collect();
    let _ = writeln!(
        o,
        "From the allocator run of {} (`{}`). Variants: {}. \"Held\" is jemalloc's `allocated` \
         (what the program holds, about the same whatever the allocator; jemalloc builds with \
         `stats_interval` only); RSS minus held is what the allocator keeps beyond it (freed memory \
         not returned, fragmentation, metadata) plus code, stacks and the runtime.\n",
        a.date,
        a.command_line,
        described.join("; ")
    );
    let mut plans: Vec<(u64, u64)> = Vec::new();
    for x in &a.runs {
        if !plans.contains(&(x.series, x.interval_s)) {
            plans.push((x.series, x.interval_s));
        }
    }
    for (series, interval) in plans {
        let runs: Vec<&RunResult> = a
            .runs
            .iter()
            .filter(|x| x.series == series && x.interval_s == interval)
            .collect();
        let held = runs
            .iter()
            .find(|x| x.scraper == "jemalloc")
            .or_else(|| runs.iter().find(|x| x.jemalloc.is_some()))
            .and_then(|x| x.jemalloc.as_ref())
            .map(|j| j.allocated as f64 / series as f64);
        let _ = writeln!(o, "### {} series every {interval} s\n", size(series));
        let _ = writeln!(
            o,
            "| allocator | CPU-s / M samples | RSS B / series | peak RSS | RSS minus held, B / series | jemalloc held / active / resident, B / series | delivered / expected |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
        for x in runs {
            let over = held.map_or("n/a".to_owned(), |h| {
                format!("{:.0}", x.rss_bytes_per_series - h)
            });
            let je = x.jemalloc.as_ref().map_or("".to_owned(), |j| {
                let per = |b: u64| b as f64 / series as f64;
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    per(j.allocated),
                    per(j.active),
                    per(j.resident)
                )
            });
            let _ = writeln!(
                o,
                "| {} | {:.2} | {:.0} | {} | {over} | {je} | {} |",
                x.scraper,
                x.cpu_s_per_million,
                x.rss_bytes_per_series,
                mib(x.peak_rss_bytes),
                ratio(x.delivered_samples, x.expected_samples)
            );
        }
        let _ = writeln!(o);
    }
}

/// The profile's self time grouped by part of the program.
fn render_profile(o: &mut String, run: &RunResult) {
    let Some(p) = &run.profile else { return };
    let _ = writeln!(
        o,
        "## Profile: {} at {} series, every {} s\n\n`perf record -g` on the process for a while \
         after the window (same load), `perf report --no-children`: self time.\n",
        run.scraper,
        thousands(run.series),
        run.interval_s,
    );
    if !run.profile_parts.is_empty() {
        let _ = writeln!(o, "| part (by symbol) | share of agentctl's CPU |");
        let _ = writeln!(o, "|---|---:|");
        for (part, pct) in &run.profile_parts {
            let _ = writeln!(o, "| {part} | {pct:.1}% |");
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "Top symbols:\n\n```\n{}\n```\n", p.trim_end());
}

const METHOD: &str = "## Method\n\n\
- **Targets**: one process (`agentctl-bench`), one loopback port per target, so each target has \
its own `instance`. Each target serves `series per target` series with five labels each: two \
counter families, two gauge families, one histogram (12 buckets, `_sum`, `_count`) and \
`bench_scrape_sequence`, whose value is the target's scrape number. Every value changes at every \
scrape. Bodies are the text format 0.0.4, uncompressed for every scraper. The targets and the sink \
run in the harness process on their own threads; their CPU is read per thread from `/proc` and shown \
under each table.\n\
- **Sink**: a remote-write receiver that decodes every request (snappy, protobuf) and counts \
samples per series: duplicates (same series and timestamp twice), out-of-order timestamps and \
staleness markers are counted apart; `up` and `scrape_*` series are the scrapers' own and are not \
target samples. The sink is reset before each scraper.\n\
- **Each scraper in turn**: a fresh data directory, the same static targets, scrape interval and \
timeout (= interval, at most 10 s), remote_write to the sink with the scraper's default queue \
settings. agentctl runs `agent run` on its embedded default with one instance config PUT to \
`/agent/api/v1/config/bench`; Prometheus 2.42 runs with `--enable-feature=agent`; vmagent with \
`-remoteWrite.tmpDataPath` in its data directory. Warm-up, then the window.\n\
- **Expected samples** = Σ over targets of (scrapes the target served during the window) x (series \
per target), from the targets' own request counters read at the window's start and end. \
**Delivered** = target samples at the sink whose scrape (the `bench_scrape_sequence` value at the \
same instance and timestamp) is one of those scrapes; duplicates are not counted twice. After the \
window the scraper keeps running until every expected sample has arrived, or until nothing new \
has arrived for a while (max(30 s, 6 x interval)); only then is it stopped (SIGTERM). So the edges \
of the window cannot make a scraper look better or worse, and a scraper that keeps data back (in a \
queue or on disk) is not credited for it. A run with delivered < expected fails the harness.\n\
- **CPU-s / M samples** = (utime + stime of the scraper process over the window, \
`/proc/PID/stat`) / (delivered target samples) x 10^6. The scrapers' own `up`/`scrape_*` \
samples (5 per scrape, 0.5% at 1,000 series per target) are not in the denominator.\n\
- **RSS**: peak = `VmHWM` at the end of the window (since start); steady = mean of `VmRSS` \
sampled every second in the window; per series = steady / active target series. **Memory per \
added series** = (steady RSS at 500k - steady RSS at 100k) / 400,000: what scale costs, without \
the fixed part (runtime, buffers, code) that dominates small sizes.\n\
- **Disk**: growth in apparent size of the scraper's data directory over the window (WAL \
truncation can make it small or negative) and `write_bytes` of `/proc/PID/io`, both per delivered \
sample. vmagent writes to `-remoteWrite.tmpDataPath` only when its in-memory queue overflows, \
so near 0 there means it kept everything in memory (it has no WAL).\n\
- **Scrape p99**: the 99th percentile of each scraper's own `scrape_duration_seconds` samples \
(as delivered to the sink) with timestamps in the window.\n\
- **Load**: the machine is shared. For each window: the 1-minute load average at its start and \
end (`/proc/loadavg`) and the CPU-seconds every other process used (`/proc/stat` busy time minus \
the scraper, the targets and the sink). The scrapers run one after another, so they see similar \
but not equal load: compare within one run.\n\
- **Profile** (`--profile`): `perf record -g` on agentctl for a while *after* the window (so \
perf does not disturb the figures), `perf report --no-children`: the top 15 symbols by self time \
and every symbol's self time grouped by part of the program (by symbol name: code inlined into a \
function counts there; libc `memcmp`/`memcpy` are not attributed to their callers).\n\
- **Allocators** (`bench/run --allocators`): agentctl built with the `mimalloc` and `jemalloc` \
features as well as the default (system) allocator, each run as its own scraper in one run. The \
jemalloc builds run with `stats_interval`, and the harness reads jemalloc's last totals printed \
before the window's end: `allocated` (what the program holds), `active`, `resident`.";

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../testdata/report-fixture.json");

    #[test]
    fn renders_benchmarks_md_from_json() {
        let r: Report = serde_json::from_str(FIXTURE).expect("fixture parses");
        insta::assert_snapshot!(render(
            &r,
            Some("agentctl misses the RSS target: the series cache.\n"),
            None
        ));
    }

    fn run(scraper: &str, series: u64, interval_s: u64, cpu: f64, rss_b: f64) -> RunResult {
        RunResult {
            scraper: scraper.to_owned(),
            series,
            interval_s,
            window_s: 60,
            expected_samples: 1000,
            delivered_samples: 1000,
            cpu_s_per_million: cpu,
            rss_bytes_per_series: rss_b,
            steady_rss_bytes: (rss_b * series as f64) as u64,
            disk_bytes_per_sample: 7.5,
            write_bytes_per_sample: 9.0,
            ..RunResult::default()
        }
    }

    #[test]
    fn targets_are_judged_against_vmagent_in_the_same_run() {
        let r = Report {
            mode: "full".to_owned(),
            runs: vec![
                run("agentctl", 10_000, 5, 1.5, 3000.0),
                run("vmagent", 10_000, 5, 2.0, 2600.0),
                run("agentctl", 100_000, 5, 0.9, 1000.0),
                run("vmagent", 100_000, 5, 1.6, 720.0),
                run("agentctl", 500_000, 5, 1.0, 900.0),
                run("vmagent", 500_000, 5, 1.2, 320.0),
                run("agentctl", 100_000, 1, 0.6, 1100.0),
                run("vmagent", 100_000, 1, 1.2, 780.0),
                run("before", 100_000, 5, 1.0, 1100.0),
                run("before", 500_000, 5, 1.2, 1000.0),
            ],
            ..Report::default()
        };
        let md = render(&r, None, None);
        let line = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in\n{md}"))
                .to_owned()
        };
        // 0.9 <= 0.6 x 1.6 = 0.96: met.
        assert!(
            line("| CPU-s per million samples <= 0.6 x vmagent at 100k @5 s").ends_with("| met |"),
            "{md}"
        );
        // 1.0 > 0.6 x 1.2 = 0.72: missed by 0.28.
        assert!(
            line("| CPU-s per million samples <= 0.6 x vmagent at 500k @5 s")
                .contains("**missed** by 0.28 CPU-s/M (39% over the limit)")
        );
        assert!(line("| RSS per active series <= vmagent at 500k").contains("**missed** by 580 B"));
        // Marginal: agentctl (450 MB - 100 MB) / 400k = 875 B; vmagent (160 - 72) / 400k = 220 B.
        let m = line("| Memory per added series");
        assert!(m.contains("875 vs vmagent 220"), "{m}");
        assert!(m.contains("**missed** by 611 B"), "{m}");
        // CPU falls 1.5 -> 0.9 -> 1.0: within 10 % of 0.9 is 0.99, so 1.0 misses by 11 %.
        assert!(line("| CPU per sample flat or falling").contains("**missed**: 500k is 0.10"));
        assert!(line("| Memory per series flat or falling").ends_with("| met |"));
        assert!(line("| <= 8 B per sample of `write_bytes`").contains("**missed** by 1.00 B"));
        assert!(line("| delivered / expected").ends_with("| met |"));
        assert!(md.contains("## Scaling: every 5 s"));
        assert!(md.contains("agentctl 875 B, vmagent 220 B, before 975 B"));
        // Another build of agentctl, compared plan by plan where both ran.
        assert_eq!(
            line("| before | 100k @5 s"),
            "| before | 100k @5 s | 0.90 / 1.00 (-10.0%) | 1000 / 1100 (-9.1%) | 9.00 / 9.00 | 1.000 |"
        );
        assert!(
            line("| before | 500k @5 s").contains("| 1.00 / 1.20 (-16.7%) | 900 / 1000 (-10.0%) |")
        );
        assert!(!md.contains("| before | 100k @1 s"));
        // (500 MB - 110 MB) / 400k = 975 B.
        assert!(line("| before | memory per added series").contains("875 / 975 B (-10.3%)"));
        // What bench/run prints at the end: the verdicts, the builds and the marginal figures.
        let printed = summary(&r);
        assert!(printed.contains("| Memory per added series"), "{printed}");
        assert!(printed.contains("| before | 500k @5 s"), "{printed}");
        assert!(
            printed.contains("agentctl 875 B, vmagent 220 B, before 975 B"),
            "{printed}"
        );
    }

    #[test]
    fn jemalloc_totals_are_read_from_its_last_print() {
        let log = "level=info msg=x\n\
                   Allocated: 100, active: 200, metadata: 30 (n_thp 0), resident: 400, mapped: 500, retained: 60\n\
                   other\n\
                   Allocated: 101, active: 201, metadata: 31 (n_thp 0), resident: 401, mapped: 501, retained: 61\n";
        assert_eq!(
            JemallocStats::last_in(log),
            Some(JemallocStats {
                allocated: 101,
                active: 201,
                metadata: 31,
                resident: 401,
                mapped: 501,
                retained: 61
            })
        );
        assert_eq!(JemallocStats::last_in("nothing"), None);
    }

    #[test]
    fn json_round_trips() {
        let r: Report = serde_json::from_str(FIXTURE).expect("fixture parses");
        let again: Report =
            serde_json::from_str(&serde_json::to_string(&r).expect("serialize")).expect("parse");
        assert_eq!(r, again);
    }

    #[test]
    fn ratio_never_rounds_a_shortfall_up() {
        assert_eq!(ratio(5, 5), "1.000");
        assert_eq!(ratio(999_999, 1_000_000), "0.999999");
        assert_eq!(ratio(99_996, 100_000), "0.999960");
        assert_eq!(ratio(149, 150), "0.993");
        assert_eq!(ratio(0, 0), "n/a");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
