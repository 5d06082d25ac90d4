//! Differential test against real Prometheus 2.42: the valid bodies of the tricky-exposition
//! corpus (`fixtures/exposition/`, text 0.0.4 `.prom` and OpenMetrics `.om`) are served from a
//! local target, one path per file, and scraped every second, one job per file, by
//!
//! - Prometheus itself (server mode, its own TSDB), and
//! - `agentctl agent run` (embedded default), one instance config per file PUT to its API,
//!   remote-writing to a second Prometheus.
//!
//! Both TSDBs must then hold the same series (label sets) per job, with the same latest values,
//! except where the two differ by design (see `EXCLUDED`).

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

/// Both TSDBs accept samples of any age. Some bodies carry explicit timestamps from 1970 to
/// 2023, older than the head: Prometheus's scrape loop drops just those samples, but its
/// remote-write receiver answers 400 and rolls back the whole request, so without this the
/// receiver would lose every other sample sent with them and the comparison would say
/// nothing about the scrape. The same setting on both sides keeps them comparable.
const TSDB: &str = "storage:\n  tsdb:\n    out_of_order_time_window: 100y\n";

/// Jobs whose scrape Prometheus 2.42 fails while agentctl succeeds, with the error
/// Prometheus reports first and why agentctl is right. For these the test checks exactly that
/// (Prometheus `up` 0 with that error, agentctl `up` 1) instead of comparing series; the
/// `_normalized` job serves the same body without the whitespace Prometheus trips on, so the
/// rest of the file is still compared.
const PROMETHEUS_FAILS: &[(&str, &str, &str)] = &[(
    "comments_and_blank_lines_prom",
    "invalid metric name",
    "Prometheus 2.42's text lexer keeps the leading whitespace of an indented sample line in \
     the metric name (\"   indented_sample\") and then fails the whole scrape on the invalid \
     name; likewise it takes trailing whitespace after `# TYPE name gauge` as part of the \
     type (`invalid metric type \"gauge   \\t\"`). The text format documents leading and \
     trailing whitespace as ignored, and the parser's fixture pins that down",
)];

/// The body Prometheus 2.42 accepts: no leading whitespace on any line, none trailing on
/// `# TYPE` lines.
fn normalize_whitespace(bytes: &[u8]) -> Vec<u8> {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    bytes
        .split(|&b| b == b'\n')
        .map(|line| {
            let start = line.iter().position(|b| !is_ws(b)).unwrap_or(line.len());
            let mut line = &line[start..];
            if line.starts_with(b"# TYPE ") {
                let end = line.iter().rposition(|b| !is_ws(b)).map_or(0, |i| i + 1);
                line = &line[..end];
            }
            line
        })
        .collect::<Vec<_>>()
        .join(&b'\n')
}

/// One served body: its path (`/<path>`), the job scraping it, Content-Type and bytes.
struct Body {
    path: String,
    job: String,
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// The valid corpus files (every `.prom`/`.om` whose name does not start with `invalid_`),
/// plus a whitespace-normalized copy of each file Prometheus fails on.
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
            "text/plain; version=0.0.4; charset=utf-8"
        } else if name.ends_with(".om") {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            continue;
        };
        if name.starts_with("invalid_") {
            continue;
        }
        let job = name.replace('.', "_");
        let bytes = std::fs::read(&path).expect("read fixture");
        if PROMETHEUS_FAILS.iter().any(|(j, _, _)| *j == job) {
            out.push(Body {
                path: format!("normalized/{name}"),
                job: format!("{job}_normalized"),
                content_type,
                bytes: normalize_whitespace(&bytes),
            });
        }
        out.push(Body {
            path: name,
            job,
            content_type,
            bytes,
        });
    }
    out.sort_by(|a, b| a.job.cmp(&b.job));
    assert!(out.len() >= 8, "corpus too small: {} files", out.len());
    out
}

/// Serves `/<path>` with its bytes and Content-Type.
async fn serve_corpus(bodies: &[Body]) -> String {
    let mut router = axum::Router::new();
    for b in bodies {
        let (bytes, ct) = (b.bytes.clone(), b.content_type);
        router = router.route(
            &format!("/{}", b.path),
            axum::routing::get(move || {
                let bytes = bytes.clone();
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

fn scrape_config(job: &str, file: &str, target: &str) -> String {
    format!(
        "  - job_name: {job}\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    metrics_path: /{file}\n    static_configs:\n      - targets: ['{target}']\n"
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

fn name_of(s: &Series) -> &str {
    s.get("__name__").map(String::as_str).unwrap_or_default()
}

/// The differences, one line each; empty when both agree.
async fn differences(prom: &Prometheus, recv: &Prometheus, jobs: &[String]) -> Vec<String> {
    let excluded = |s: &Series| EXCLUDED.iter().any(|(n, _)| *n == name_of(s));
    let (ps, rs) = (series(prom).await, series(recv).await);
    let (pv, rv) = (latest(prom).await, latest(recv).await);
    let mut diffs = Vec::new();
    // Why Prometheus failed a scrape, to tell a parser difference from a transport problem.
    let targets = prom.api("targets", &[]).await;
    for t in targets["activeTargets"].as_array().into_iter().flatten() {
        let error = t["lastError"].as_str().unwrap_or_default();
        let job = t["labels"]["job"].as_str().unwrap_or_default();
        match PROMETHEUS_FAILS.iter().find(|(j, _, _)| *j == job) {
            Some((_, want, _)) if !error.contains(want) => diffs.push(format!(
                "job {job}: expected Prometheus's scrape to fail with {want:?}, got {error:?}"
            )),
            Some(_) => {}
            None if !error.is_empty() => diffs.push(format!(
                "job {job}: Prometheus's last scrape failed: {error}"
            )),
            None => {}
        }
    }
    let up = |values: &BTreeMap<Series, String>, job: &str| {
        values
            .iter()
            .find(|(s, _)| name_of(s) == "up" && s.get("job").map(String::as_str) == Some(job))
            .map(|(_, v)| v.clone())
    };
    for (job, _, _) in PROMETHEUS_FAILS {
        let (p, a) = (up(&pv, job), up(&rv, job));
        if p.as_deref() != Some("0") || a.as_deref() != Some("1") {
            diffs.push(format!(
                "job {job}: expected up 0 in Prometheus and 1 in agentctl, got {p:?} and {a:?}"
            ));
        }
    }
    for job in jobs {
        if PROMETHEUS_FAILS.iter().any(|(j, _, _)| j == job) {
            continue;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentctl_scrapes_the_exposition_corpus_like_prometheus() {
    let files = corpus();
    let target = serve_corpus(&files).await;
    let jobs: Vec<String> = files.iter().map(|b| b.job.clone()).collect();

    let mut prom_cfg = format!("{TSDB}global:\n  scrape_interval: 1s\nscrape_configs:\n");
    for b in &files {
        prom_cfg.push_str(&scrape_config(&b.job, &b.path, &target));
    }
    let prom = tokio::task::spawn_blocking(move || Prometheus::start_with_config(&prom_cfg))
        .await
        .expect("start scraping prometheus");
    let recv = tokio::task::spawn_blocking(|| Prometheus::start_with_config(TSDB))
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
            scrape_config(job, &b.path, &target),
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
        let diffs = differences(&prom, &recv, &jobs).await;
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
