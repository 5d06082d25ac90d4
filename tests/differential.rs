//! Differential test against real Prometheus 2.42: the valid bodies of the tricky-exposition
//! corpus (`fixtures/exposition/`, text 0.0.4 `.prom` and OpenMetrics `.om`) are served from a
//! local target, one path per file, and scraped every second, one job per file, by
//!
//! - Prometheus itself (server mode, its own TSDB), and
//! - `agentctl agent run` (embedded default), one instance config per file PUT to its API,
//!   remote-writing to a second Prometheus.
//!
//! Both TSDBs must then hold the same series (label sets) per job, with the same latest values
//! (the synthetic `up`, `scrape_samples_scraped`, ... included), except where the two differ by
//! design (see `EXCLUDED`). Some bodies both must refuse (`Expect::BothFail`, and extras such as a body
//! of exactly `body_size_limit` bytes): there `up` is 0 on both sides and agentctl's error holds
//! Prometheus's text. A few bodies only Prometheus 2.42 refuses, where agentctl follows the old
//! agent's Prometheus 2.48 (`Expect::OnlyPrometheus242Fails`). Exemplars are compared too
//! (label sets and values), except for one deliberate difference
//! (`EXEMPLARS_ESCAPED_BY_PROMETHEUS`). Some bodies are served differently on each scraper's
//! first request (`after`): a successful scrape, then failing ones, so that the latest values
//! show which series each side marked stale after a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::prometheus::Prometheus;
use crate::support::{fixture, Agent};

type Series = BTreeMap<String, String>;

/// Series whose values legitimately differ between the two, by `__name__`; their label sets
/// are still compared.
const VALUES_DIFFER: &[(&str, &str)] = &[(
    "scrape_duration_seconds",
    "each scraper times its own request",
)];

/// Series that only one side has, by `__name__`, with the reason.
const EXCLUDED: &[(&str, &str)] = &[];

/// Jobs whose exemplar label values differ by design: OpenMetrics escapes (`\"`, `\\`,
/// `\n`) in an exemplar's label values are unescaped by agentctl, as everywhere else in the
/// format, while Prometheus 2.42 (and the old agent's 2.48) store them still escaped. The test
/// checks that the difference is exactly that: Prometheus's values, unescaped, equal agentctl's.
const EXEMPLARS_ESCAPED_BY_PROMETHEUS: &[&str] = &["exemplar_escapes_om"];

/// Both sides keep exemplars, so they are compared too.
const EXEMPLAR_STORAGE: &str = "--enable-feature=exemplar-storage";

/// Both TSDBs accept samples of any age. Some bodies carry explicit timestamps from 1970 to
/// 2023, older than the head: Prometheus's scrape loop drops just those samples, but its
/// remote-write receiver answers 400 and rolls back the whole request, so without this the
/// receiver would lose every other sample sent with them and the comparison would say
/// nothing about the scrape. The same setting on both sides keeps them comparable.
const TSDB: &str = "storage:\n  tsdb:\n    out_of_order_time_window: 100y\n";

/// What both sides must do with a body besides storing the same series.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Both scrape it successfully.
    Agree,
    /// Both fail the scrape (`up` 0 and every synthetic series equal, such as
    /// `scrape_samples_scraped`), Prometheus with this error; with `Text::Same` agentctl's
    /// error contains Prometheus's, with `Text::Own` it has its own wording.
    BothFail(&'static str, Text),
    /// Prometheus 2.42 fails with this error where the old agent (Prometheus 2.48) does not,
    /// and agentctl follows the old agent: Prometheus `up` 0, agentctl `up` 1.
    OnlyPrometheus242Fails(&'static str),
    /// A deliberate difference (docs/configuration.md): agentctl fails the scrape (its error
    /// contains the text), Prometheus does not.
    OnlyAgentctlFails(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Text {
    Same,
    Own,
}

/// Corpus files with an expectation other than `Agree` (every `invalid_*` file not listed
/// here is skipped: those are the parser's own test cases).
const CORPUS_EXPECT: &[(&str, Expect)] = &[
    // The type is the rest of the line less one separator: trailing whitespace is part of it.
    (
        "invalid_type_trailing_whitespace.prom",
        Expect::BothFail("invalid metric type \"gauge   \\t\"", Text::Same),
    ),
    // ... and so is a second space before it; the sample before it is counted as scraped.
    (
        "invalid_type_double_space.prom",
        Expect::BothFail("invalid metric type \" gauge\"", Text::Same),
    ),
    // Leading whitespace is part of the metric name, which is then invalid.
    (
        "invalid_indented_sample.prom",
        Expect::BothFail(
            "invalid metric name or label names: {__name__=\"   indented_sample\", ",
            Text::Same,
        ),
    ),
    // A repeated label name fails in storage, after the line was counted.
    (
        "invalid_duplicate_label.prom",
        Expect::BothFail("label name \"a\" is not unique: invalid sample", Text::Same),
    ),
    (
        "invalid_name_label_in_set.prom",
        Expect::BothFail(
            "label name \"__name__\" is not unique: invalid sample",
            Text::Same,
        ),
    ),
    // 2.42's OpenMetrics parser allows exemplars only on `_total` and `_bucket` samples.
    (
        "exemplar_on_a_gauge.om",
        Expect::OnlyPrometheus242Fails("metric name temperature does not support exemplars"),
    ),
];

/// Bodies built here rather than read from the corpus, with their own scrape settings.
struct Extra {
    job: &'static str,
    body: Vec<u8>,
    openmetrics: bool,
    /// Served instead of `body` on each scraper's first request (told apart by User-Agent):
    /// the successful scrape whose series a failing `body` then finds.
    first: Option<Vec<u8>>,
    /// Lines added to the scrape config.
    config: String,
    expect: Expect,
}

fn extra(job: &'static str, body: &[u8], config: &str, expect: Expect) -> Extra {
    Extra {
        job,
        body: body.to_vec(),
        first: None,
        openmetrics: job.starts_with("om_"),
        config: config.to_owned(),
        expect,
    }
}

/// A body that fails every scrape after a first one of `first` succeeded. Prometheus marks
/// stale only the series of the last successful scrape that the failing one did not append
/// before it failed; the latest values show which.
fn after(first: &[u8], job: &'static str, body: &[u8], config: &str, expect: Expect) -> Extra {
    Extra {
        first: Some(first.to_vec()),
        ..extra(job, body, config, expect)
    }
}

fn extras() -> Vec<Extra> {
    let body = b"limited_series 1\nlimited_series_two 2\n";
    let len = body.len();
    let rename = "    metric_relabel_configs:\n      - source_labels: [__name__]\n        regex: renamed\n        target_label: __name__\n        replacement: 1invalid\n";
    let labelmap = "    metric_relabel_configs:\n      - action: labelmap\n        regex: x_(.*)\n";
    let trim = "    metric_relabel_configs:\n      - source_labels: [__name__]\n        regex: '\\s*(.+)'\n        target_label: __name__\n";
    vec![
        // A body of exactly `body_size_limit` bytes fails: Prometheus refuses when the body
        // reaches the limit (`n >= limit`), not only past it.
        extra(
            "body_at_the_limit",
            body,
            &format!("    body_size_limit: {len}B\n"),
            Expect::BothFail("body size limit exceeded", Text::Same),
        ),
        extra(
            "body_under_the_limit",
            body,
            &format!("    body_size_limit: {}B\n", len + 1),
            Expect::Agree,
        ),
        // Names made by metric relabelling are checked like scraped ones.
        extra(
            "relabel_invalid_name",
            b"kept 1\nrenamed 2\n",
            rename,
            Expect::BothFail(
                "invalid metric name or label names: {__name__=\"1invalid\", ",
                Text::Same,
            ),
        ),
        extra(
            "labelmap_invalid_name",
            b"m{x_9=\"a\",x_ok=\"b\"} 1\n",
            labelmap,
            Expect::BothFail(
                "invalid metric name or label names: {9=\"a\", __name__=\"m\", ",
                Text::Same,
            ),
        ),
        // ... and a relabelling that repairs an indented name makes the scrape good.
        extra(
            "indented_renamed",
            b"   indented_renamed 1\n",
            trim,
            Expect::Agree,
        ),
        // NUL bytes: where they fail a scrape, and how many lines count before.
        extra(
            "om_nul_line",
            b"a_total 1\n\x00\n# EOF\n",
            "",
            Expect::BothFail("is not a valid start token", Text::Own),
        ),
        extra(
            "om_nul_value",
            b"a_total 1\nb 2\x00\n# EOF\n",
            "",
            Expect::BothFail("expected timestamp or # symbol", Text::Own),
        ),
        extra(
            "om_nul_after_value",
            b"a 1 \x00\n# EOF\n",
            "",
            Expect::BothFail("expected timestamp or # symbol", Text::Own),
        ),
        extra(
            "om_nul_in_label_value",
            b"a_total 1\nb{x=\"y\x00z\"} 2\n# EOF\n",
            "",
            Expect::Agree,
        ),
        // Prometheus's text lexer takes a NUL where a line starts as the end of the body and
        // drops the rest without an error; agentctl fails the scrape instead (a deliberate
        // difference: nothing is dropped silently).
        extra(
            "nul_line",
            b"a 1\n\x00\nb 2\n",
            "",
            Expect::OnlyAgentctlFails("line 2, column 1: expected metric name"),
        ),
        extra(
            "nul_value",
            b"a 1\nb 2\x00\n",
            "",
            Expect::BothFail("expected timestamp or new record", Text::Own),
        ),
        // Staleness after a failed scrape, at each point a scrape can fail. Prometheus keeps
        // (no staleness marker) the series appended before the failure and marks the rest.
        // A parse error: `a` and `b` kept, `c` stale.
        after(
            b"a 1\nb 2\nc 3\n",
            "stale_after_parse_error",
            b"a 1\nb 2\nc 3\x00\n",
            "",
            Expect::BothFail("expected timestamp or new record", Text::Own),
        ),
        // The sample limit: the samples within the limit kept (`a` new, `b`), `c` over it.
        after(
            b"b 2\nc 3\n",
            "stale_after_sample_limit",
            b"a 1\nb 2\nc 3\n",
            "    sample_limit: 2\n",
            Expect::BothFail("sample limit exceeded", Text::Own),
        ),
        // A label limit on a new series: `a` kept, `b` and `c` after it stale.
        after(
            b"a 1\nb 2\nc 3\n",
            "stale_after_label_limit",
            b"a 1\nd{x=\"1\"} 4\nb 2\nc 3\n",
            "    label_limit: 3\n",
            Expect::BothFail(
                "label_limit exceeded (metric: d, number of labels: 4, limit: 3)",
                Text::Same,
            ),
        ),
        // A series storage refuses (a repeated label name): `a` kept.
        after(
            b"a 1\nb 2\nc 3\n",
            "stale_after_repeated_label",
            b"a 1\nb{x=\"1\",x=\"2\"} 2\nc 3\n",
            "",
            Expect::BothFail("label name \"x\" is not unique: invalid sample", Text::Same),
        ),
        // The end of an OpenMetrics body: everything parsed, so nothing stale.
        after(
            b"a_total 1\nb 2\n# EOF\n",
            "om_stale_without_eof",
            b"a_total 1\nb 2\n",
            "",
            Expect::BothFail("data does not end with # EOF", Text::Same),
        ),
        // Not a failure: a series whose sample now carries its own timestamp is no longer
        // tracked, so it is marked stale at the scrape's time, as a vanished one.
        after(
            b"a 1\nb 2\n",
            "stale_when_timestamped",
            b"a 1 1000\nb 2\n",
            "",
            Expect::Agree,
        ),
        // The other checks of a new series' final labels, with Prometheus's texts.
        extra(
            "relabel_drops_the_name",
            b"a 1\n",
            "    metric_relabel_configs:\n      - action: labeldrop\n        regex: __name__\n",
            Expect::BothFail("missing metric name (__name__ label)", Text::Same),
        ),
        extra(
            "label_name_length_limit",
            b"ok 1\nm{abcdefghij=\"v\"} 1\n",
            "    label_name_length_limit: 8\n",
            Expect::BothFail(
                "label_name_length_limit exceeded (metric: m, label name: abcdefghij, length: 10, limit: 8)",
                Text::Same,
            ),
        ),
        extra(
            "label_value_length_limit",
            b"ok 1\nm{a=\"0123456789012345678901234567890123456789\"} 1\n",
            "    label_value_length_limit: 30\n",
            Expect::BothFail(
                "label_value_length_limit exceeded (metric: m, label name: a, value: \"0123456789012345678901234567890123456789\", length: 40, limit: 30)",
                Text::Same,
            ),
        ),
        // A target that exposes a series named like a synthetic one, with the same labels.
        extra("exposes_up", b"up 5\nx 1\n", "", Expect::Agree),
        // A failed fetch appends nothing: every series is stale.
        after(
            b"a 1\n",
            "stale_after_body_limit",
            b"a 1\nb 2\n",
            "    body_size_limit: 6B\n",
            Expect::BothFail("body size limit exceeded", Text::Same),
        ),
    ]
}

/// One served body: its path (`/<path>`), the job scraping it, its scrape settings,
/// Content-Type, bytes, and what both must do with it.
struct Body {
    path: String,
    job: String,
    config: String,
    content_type: &'static str,
    bytes: Vec<u8>,
    /// Served instead of `bytes` on each scraper's first request.
    first: Option<Vec<u8>>,
    expect: Expect,
}

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The valid corpus files (every `.prom`/`.om` whose name does not start with `invalid_`),
/// the `invalid_*` files in `CORPUS_EXPECT` and the extras.
fn corpus() -> Vec<Body> {
    let dir = fixture("exposition");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read fixtures/exposition") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let content_type = if name.ends_with(".prom") {
            TEXT
        } else if name.ends_with(".om") {
            OPENMETRICS
        } else {
            continue;
        };
        let listed = CORPUS_EXPECT
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, e)| *e);
        if name.starts_with("invalid_") && listed.is_none() {
            continue;
        }
        out.push(Body {
            job: name.replace('.', "_"),
            path: name,
            config: String::new(),
            content_type,
            bytes: std::fs::read(&path).expect("read fixture"),
            first: None,
            expect: listed.unwrap_or(Expect::Agree),
        });
    }
    assert_eq!(
        out.iter()
            .filter(|b| !matches!(b.expect, Expect::Agree))
            .count(),
        CORPUS_EXPECT.len(),
        "every file in CORPUS_EXPECT exists"
    );
    for e in extras() {
        out.push(Body {
            path: format!("extra/{}", e.job),
            job: e.job.to_owned(),
            config: e.config,
            content_type: if e.openmetrics { OPENMETRICS } else { TEXT },
            bytes: e.body,
            first: e.first,
            expect: e.expect,
        });
    }
    out.sort_by(|a, b| a.job.cmp(&b.job));
    assert!(out.len() >= 8, "corpus too small: {} files", out.len());
    out
}

/// Serves `/<path>` with its bytes and Content-Type (its `first` bytes to each User-Agent's
/// first request).
async fn serve_corpus(bodies: &[Body]) -> String {
    let mut router = axum::Router::new();
    for b in bodies {
        let (bytes, first, ct) = (b.bytes.clone(), b.first.clone(), b.content_type);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::<String>::new()));
        router = router.route(
            &format!("/{}", b.path),
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let agent = headers
                    .get(axum::http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let is_first = seen.lock().unwrap().insert(agent);
                let bytes = match &first {
                    Some(first) if is_first => first.clone(),
                    _ => bytes.clone(),
                };
                async move { ([(axum::http::header::CONTENT_TYPE, ct)], bytes) }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind target");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn scrape_config(b: &Body, target: &str) -> String {
    format!(
        "  - job_name: {}\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    metrics_path: /{}\n{}    static_configs:\n      - targets: ['{target}']\n",
        b.job, b.path, b.config
    )
}

/// All series of every job, from `/api/v1/series`, grouped by job.
async fn series(p: &Prometheus) -> BTreeMap<String, BTreeSet<Series>> {
    let data = p.api("series", &[("match[]", r#"{job=~".+"}"#)]).await;
    let mut out: BTreeMap<String, BTreeSet<Series>> = BTreeMap::new();
    for s in data.as_array().expect("series array") {
        let labels: Series = serde_json::from_value(s.clone()).expect("label set");
        let job = labels.get("job").cloned().unwrap_or_default();
        out.entry(job).or_default().insert(labels);
    }
    out
}

/// The latest value of every series of every job (instant query at now, 5m lookback).
async fn latest(p: &Prometheus) -> BTreeMap<Series, String> {
    let data = p.api("query", &[("query", r#"{job=~".+"}"#)]).await;
    let mut out = BTreeMap::new();
    for r in data["result"].as_array().expect("result array") {
        let labels: Series = serde_json::from_value(r["metric"].clone()).expect("metric");
        let value = r["value"][1].as_str().unwrap_or_default().to_owned();
        out.insert(labels, value);
    }
    out
}

/// Every exemplar of every job: series labels, exemplar labels and value (timestamps are
/// each scraper's own when the body has none), grouped by job.
type Exemplars = BTreeMap<String, BTreeSet<(Series, Series, String)>>;

async fn exemplars(p: &Prometheus) -> Exemplars {
    let data = p
        .api("query_exemplars", &[("query", r#"{job=~".+"}"#)])
        .await;
    let mut out: Exemplars = BTreeMap::new();
    for s in data.as_array().into_iter().flatten() {
        let series: Series = serde_json::from_value(s["seriesLabels"].clone()).expect("labels");
        let job = series.get("job").cloned().unwrap_or_default();
        for e in s["exemplars"].as_array().into_iter().flatten() {
            let labels: Series = serde_json::from_value(e["labels"].clone()).expect("labels");
            let value = e["value"].as_str().unwrap_or_default().to_owned();
            out.entry(job.clone())
                .or_default()
                .insert((series.clone(), labels, value));
        }
    }
    out
}

/// OpenMetrics label-value unescaping (`\\`, `\"`, `\n`).
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('\\')) => out.push('\\'),
            ('\\', Some('"')) => out.push('"'),
            ('\\', Some('n')) => out.push('\n'),
            _ => {
                out.push(c);
                continue;
            }
        }
        chars.next();
    }
    out
}

fn name_of(s: &Series) -> &str {
    s.get("__name__").map(String::as_str).unwrap_or_default()
}

/// The differences, one line each; empty when both agree.
async fn differences(
    prom: &Prometheus,
    recv: &Prometheus,
    agent: &Agent,
    bodies: &[Body],
) -> Vec<String> {
    let excluded = |s: &Series| EXCLUDED.iter().any(|(n, _)| *n == name_of(s));
    let (ps, rs) = (series(prom).await, series(recv).await);
    let (pv, rv) = (latest(prom).await, latest(recv).await);
    let (pe, re) = (exemplars(prom).await, exemplars(recv).await);
    let mut diffs = Vec::new();
    let none = BTreeSet::new();
    for b in bodies {
        if matches!(
            b.expect,
            Expect::OnlyPrometheus242Fails(_) | Expect::OnlyAgentctlFails(_)
        ) {
            continue;
        }
        let job = &b.job;
        let p = pe.get(job).unwrap_or(&none);
        let r = re.get(job).unwrap_or(&none);
        if EXEMPLARS_ESCAPED_BY_PROMETHEUS.contains(&job.as_str()) {
            let unescaped: BTreeSet<_> = p
                .iter()
                .map(|(s, l, v)| {
                    let l = l.iter().map(|(k, v)| (k.clone(), unescape(v))).collect();
                    (s.clone(), l, v.clone())
                })
                .collect();
            if p == r || &unescaped != r {
                diffs.push(format!(
                    "job {job}: expected Prometheus's exemplars to be agentctl's with escapes kept: Prometheus {p:?}, agentctl {r:?}"
                ));
            }
        } else if p != r {
            diffs.push(format!(
                "job {job}: exemplars differ: Prometheus {p:?}, agentctl {r:?}"
            ));
        }
    }
    // Why each side failed a scrape: Prometheus's text must be in agentctl's.
    let targets = prom.api("targets", &[]).await;
    let mut prom_errors = BTreeMap::new();
    for t in targets["activeTargets"].as_array().into_iter().flatten() {
        let job = t["labels"]["job"].as_str().unwrap_or_default().to_owned();
        prom_errors.insert(job, t["lastError"].as_str().unwrap_or_default().to_owned());
    }
    let agent_errors = agent_errors(agent);
    for b in bodies {
        let job = &b.job;
        let p = prom_errors.get(job).map(String::as_str).unwrap_or_default();
        let a = agent_errors
            .get(job)
            .map(String::as_str)
            .unwrap_or_default();
        let up = |values: &BTreeMap<Series, String>| {
            values
                .iter()
                .find(|(s, _)| name_of(s) == "up" && s.get("job").map(String::as_str) == Some(job))
                .map(|(_, v)| v.clone())
        };
        let (pu, au) = (up(&pv), up(&rv));
        match b.expect {
            Expect::OnlyPrometheus242Fails(want) => {
                if !p.contains(want)
                    || pu.as_deref() != Some("0")
                    || au.as_deref() != Some("1")
                    || !a.is_empty()
                {
                    diffs.push(format!(
                        "job {job}: expected only Prometheus 2.42 to fail, with {want:?}: Prometheus up {pu:?} {p:?}, agentctl up {au:?} {a:?}"
                    ));
                }
                continue;
            }
            Expect::OnlyAgentctlFails(want) => {
                if !a.contains(want)
                    || au.as_deref() != Some("0")
                    || pu.as_deref() != Some("1")
                    || !p.is_empty()
                {
                    diffs.push(format!(
                        "job {job}: expected only agentctl to fail, with {want:?}: Prometheus up {pu:?} {p:?}, agentctl up {au:?} {a:?}"
                    ));
                }
                continue;
            }
            Expect::BothFail(want, _) if !p.contains(want) => diffs.push(format!(
                "job {job}: expected Prometheus's scrape to fail with {want:?}, got {p:?}"
            )),
            Expect::BothFail(_, Text::Same) if !a.contains(p) => diffs.push(format!(
                "job {job}: agentctl's error {a:?} does not contain Prometheus's {p:?}"
            )),
            Expect::BothFail(_, Text::Own) if a.is_empty() => {
                diffs.push(format!("job {job}: agentctl's scrape did not fail"))
            }
            Expect::Agree if !p.is_empty() || !a.is_empty() => diffs.push(format!(
                "job {job}: a scrape failed: Prometheus {p:?}, agentctl {a:?}"
            )),
            _ => {}
        }
        let empty = BTreeSet::new();
        let p: BTreeSet<&Series> = ps
            .get(job)
            .unwrap_or(&empty)
            .iter()
            .filter(|s| !excluded(s))
            .collect();
        let r: BTreeSet<&Series> = rs
            .get(job)
            .unwrap_or(&empty)
            .iter()
            .filter(|s| !excluded(s))
            .collect();
        if p.is_empty() {
            diffs.push(format!("job {job}: Prometheus has no series"));
        }
        for s in p.difference(&r) {
            diffs.push(format!("job {job}: only Prometheus has {s:?}"));
        }
        for s in r.difference(&p) {
            diffs.push(format!("job {job}: only agentctl has {s:?}"));
        }
        for s in p.intersection(&r) {
            if VALUES_DIFFER.iter().any(|(n, _)| *n == name_of(s)) {
                continue;
            }
            let (a, b) = (pv.get(*s), rv.get(*s));
            if a != b {
                diffs.push(format!(
                    "job {job}: latest value of {s:?}: Prometheus {a:?}, agentctl {b:?}"
                ));
            }
        }
    }
    diffs
}

/// agentctl's last scrape error per job, from its targets API.
fn agent_errors(agent: &Agent) -> BTreeMap<String, String> {
    let data = tokio::task::block_in_place(|| agent.data("/agent/api/v1/metrics/targets"));
    let mut out = BTreeMap::new();
    for t in data.as_array().into_iter().flatten() {
        let job = t["labels"]["job"].as_str().unwrap_or_default().to_owned();
        out.insert(
            job,
            t["scrape_error"].as_str().unwrap_or_default().to_owned(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentctl_scrapes_the_exposition_corpus_like_prometheus() {
    let files = corpus();
    let target = serve_corpus(&files).await;
    let jobs: Vec<String> = files.iter().map(|b| b.job.clone()).collect();

    let mut prom_cfg = format!("{TSDB}global:\n  scrape_interval: 1s\nscrape_configs:\n");
    for b in &files {
        prom_cfg.push_str(&scrape_config(b, &target));
    }
    let prom = tokio::task::spawn_blocking(move || {
        Prometheus::start_with_args(&prom_cfg, &[EXEMPLAR_STORAGE])
    })
    .await
    .expect("start scraping prometheus");
    let recv =
        tokio::task::spawn_blocking(|| Prometheus::start_with_args(TSDB, &[EXEMPLAR_STORAGE]))
            .await
            .expect("start receiving prometheus");

    let dir = tempfile::tempdir().expect("temp dir");
    let agent = tokio::task::block_in_place(|| Agent::start(dir.path(), &[]));
    let agent_log = || agent.log();
    // One instance config per file: each has its own WAL and remote_write queue, so a batch
    // the receiver refuses cannot hide another file's series.
    for b in &files {
        let job = &b.job;
        let body = format!(
            "scrape_configs:\n{}remote_write:\n  - url: {}\n",
            scrape_config(b, &target),
            recv.write_url()
        );
        let resp = tokio::task::block_in_place(|| agent.put_config(job, &body));
        assert!(
            resp.status == 201 || resp.status == 200,
            "PUT {job}: {} {}",
            resp.status,
            resp.body
        );
    }

    // Both sides have scraped every job a few times once each TSDB holds at least 3 `up`
    // samples per job (the receiver's arrive after the agent's remote_write batch deadline).
    let deadline = Instant::now() + Duration::from_secs(90);
    let count_query = r#"count_over_time(up{job=~".+"}[10m]) >= 3"#;
    loop {
        let a = prom.api("query", &[("query", count_query)]).await;
        let b = recv.api("query", &[("query", count_query)]).await;
        let n = |d: &serde_json::Value| d["result"].as_array().map_or(0, Vec::len);
        if n(&a) == jobs.len() && n(&b) == jobs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every job scraped 3 times within 90s: Prometheus {a}, agentctl {b}\nagent log:\n{}\nreceiver log:\n{}",
            agent_log(),
            recv.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The latest samples may still be on their way through remote_write: compare until both
    // agree or the diff stays for 20s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let diffs = differences(&prom, &recv, &agent, &files).await;
        if diffs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agentctl and Prometheus disagree:\n{}\nagent log:\n{}\nreceiver log:\n{}",
            diffs.join("\n"),
            agent_log(),
            recv.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
