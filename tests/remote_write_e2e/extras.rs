//! remote_write's exemplars, metadata and oauth2 through a real `agentctl agent run`:
//!
//! - A target serving OpenMetrics with exemplars on a counter and a histogram bucket → a real
//!   Prometheus (`--enable-feature=exemplar-storage`) returns them from
//!   `/api/v1/query_exemplars`.
//! - Metadata: Prometheus 2.42's remote-write receiver ignores `WriteRequest.metadata` (its
//!   write handler only appends samples and exemplars, and `/api/v1/metadata` only lists
//!   what its own scrapes saw), so a local receiver decodes the requests instead and checks
//!   the `# TYPE`/`# HELP`/`# UNIT` the target served.
//! - oauth2: that local receiver accepts only the bearer token a local token endpoint issued
//!   for the configured client id and secret.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::clock::Clock;

use agent::remote_write::proto::{MetricMetadata, WriteRequest};
use axum::http::{HeaderMap, StatusCode};

use super::{agent_yaml, metric, put_config, start_agent, stop};
use crate::support::prometheus::Prometheus;

/// An OpenMetrics target: a counter and a histogram, each scrape with fresh exemplars
/// (`trace_id` = `req-<n>` / `rpc-<n>` for scrape `n`, timestamped now).
async fn openmetrics_target() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let served = served.clone();
            async move {
                let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                let now = Clock::system().unix_millis() as f64 / 1000.0;
                let body = format!(
                    "# TYPE ex_requests counter\n\
                     # HELP ex_requests Requests served.\n\
                     ex_requests_total {n} # {{trace_id=\"req-{n}\"}} 1 {now:.3}\n\
                     # TYPE ex_rpc_seconds histogram\n\
                     # UNIT ex_rpc_seconds seconds\n\
                     # HELP ex_rpc_seconds RPC latency.\n\
                     ex_rpc_seconds_bucket{{le=\"0.1\"}} {n} # {{trace_id=\"rpc-{n}\"}} 0.05 {now:.3}\n\
                     ex_rpc_seconds_bucket{{le=\"+Inf\"}} {n}\n\
                     ex_rpc_seconds_count {n}\n\
                     ex_rpc_seconds_sum {sum}\n\
                     # EOF\n",
                    sum = n as f64 * 0.05
                );
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn instance(target: &str, remote_write: &str) -> String {
    format!(
        "scrape_configs:\n  - job_name: ex\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
         static_configs:\n      - targets: ['{target}']\nremote_write:\n{remote_write}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemplars_reach_prometheus() {
    let prom = Prometheus::start_with_args(
        "global:\n  scrape_interval: 1m\n",
        &["--enable-feature=exemplar-storage"],
    );
    let target = openmetrics_target().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), Some(&agent_yaml(dir.path())));
    let start = Clock::system().unix_secs() as u64 - 60;
    put_config(
        &agent,
        "ex",
        &instance(
            &target,
            &format!(
                "  - name: prom\n    url: {}\n    queue_config:\n      batch_send_deadline: 1s\n",
                prom.write_url()
            ),
        ),
    )
    .await;

    // Per series name, the trace ids Prometheus holds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (requests, rpc) = loop {
        let end = (start + 600).to_string();
        let begin = start.to_string();
        let mut found = Vec::new();
        for name in ["ex_requests_total", "ex_rpc_seconds_bucket"] {
            let data = prom
                .api(
                    "query_exemplars",
                    &[("query", name), ("start", &begin), ("end", &end)],
                )
                .await;
            let mut traces = Vec::new();
            for series in data.as_array().into_iter().flatten() {
                assert_eq!(series["seriesLabels"]["cluster"], "e2e", "{series}");
                assert_eq!(series["seriesLabels"]["job"], "ex", "{series}");
                for e in series["exemplars"].as_array().into_iter().flatten() {
                    traces.push((
                        series["seriesLabels"]["le"].as_str().map(str::to_owned),
                        e["labels"]["trace_id"].as_str().unwrap_or("").to_owned(),
                        e["value"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
            found.push(traces);
        }
        if found.iter().all(|t| t.len() >= 2) {
            break (found[0].clone(), found[1].clone());
        }
        assert!(
            Instant::now() < deadline,
            "exemplars at the receiver after 60 s: {found:?}\nagent log:\n{}\nprometheus log:\n{}",
            agent.log(),
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        requests
            .iter()
            .all(|(le, t, v)| le.is_none() && t.starts_with("req-") && v == "1"),
        "{requests:?}"
    );
    assert!(
        rpc.iter()
            .all(|(le, t, v)| le.as_deref() == Some("0.1") && t.starts_with("rpc-") && v == "0.05"),
        "{rpc:?}"
    );
    assert!(
        metric(
            &agent,
            "prometheus_remote_storage_exemplars_total",
            "remote_name=\"prom\""
        ) >= 4.0
    );
    assert_eq!(
        metric(
            &agent,
            "prometheus_remote_storage_exemplars_failed_total",
            "remote_name=\"prom\""
        ),
        0.0
    );
    stop(agent);
}

/// What the oauth2-protected receiver saw.
#[derive(Default)]
struct Seen {
    /// `Authorization` headers of token requests, and their form bodies.
    token_requests: Vec<(String, String)>,
    /// Write requests with the right token.
    accepted: Vec<WriteRequest>,
    /// Write requests refused (wrong or missing token).
    refused: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_and_metadata_reach_a_receiver() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (s1, s2) = (seen.clone(), seen.clone());
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let seen = s1.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    seen.lock().unwrap().token_requests.push((auth, body));
                    axum::Json(serde_json::json!({
                        "access_token": "issued-token", "token_type": "bearer", "expires_in": 3600
                    }))
                }
            }),
        )
        .route(
            "/write",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = s2.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some("Bearer issued-token")
                    {
                        seen.refused += 1;
                        return StatusCode::UNAUTHORIZED;
                    }
                    match WriteRequest::decode_snappy(&body) {
                        Ok(req) => {
                            seen.accepted.push(req);
                            StatusCode::NO_CONTENT
                        }
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let target = openmetrics_target().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), Some(&agent_yaml(dir.path())));
    put_config(
        &agent,
        "md",
        &instance(
            &target,
            &format!(
                "  - name: local\n    url: http://{addr}/write\n    send_exemplars: false\n    \
                     queue_config:\n      batch_send_deadline: 1s\n    \
                     metadata_config:\n      send_interval: 1s\n    \
                     oauth2:\n      client_id: agent\n      client_secret: s3cret\n      \
                     scopes: [metrics.write]\n      token_url: http://{addr}/token\n"
            ),
        ),
    )
    .await;

    let want = |name: &str, kind: i32, help: &str, unit: &str| MetricMetadata {
        r#type: kind,
        metric_family_name: name.to_owned(),
        help: help.to_owned(),
        unit: unit.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = {
            let s = seen.lock().unwrap();
            let metadata: Vec<&MetricMetadata> =
                s.accepted.iter().flat_map(|r| &r.metadata).collect();
            let samples = s
                .accepted
                .iter()
                .flat_map(|r| &r.timeseries)
                .filter(|t| !t.samples.is_empty())
                .count();
            metadata.contains(&&want("ex_requests", 1, "Requests served.", ""))
                && metadata.contains(&&want("ex_rpc_seconds", 3, "RPC latency.", "seconds"))
                && samples > 0
        };
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metadata and samples not received within 60 s (refused: {}):\n{}",
            seen.lock().unwrap().refused,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.refused, 0, "every request carried the issued token");
        // One token for everything (cached), fetched with the client credentials as HTTP
        // basic auth: base64("agent:s3cret").
        assert_eq!(s.token_requests.len(), 1, "{:?}", s.token_requests);
        assert_eq!(s.token_requests[0].0, "Basic YWdlbnQ6czNjcmV0");
        assert_eq!(
            s.token_requests[0].1,
            "grant_type=client_credentials&scope=metrics.write"
        );
        // Metadata requests carry no series; `send_exemplars: false` sends no exemplars.
        for r in &s.accepted {
            assert!(r.metadata.is_empty() || r.timeseries.is_empty());
            assert!(r.timeseries.iter().all(|t| t.exemplars.is_empty()));
        }
    }
    assert!(
        metric(
            &agent,
            "prometheus_remote_storage_metadata_total",
            "remote_name=\"local\""
        ) >= 2.0
    );
    assert!(
        metric(
            &agent,
            "prometheus_remote_storage_metadata_bytes_total",
            "remote_name=\"local\""
        ) > 0.0
    );
    assert_eq!(
        metric(
            &agent,
            "prometheus_remote_storage_exemplars_total",
            "remote_name=\"local\""
        ),
        0.0
    );
    stop(agent);
}
