//! Service discovery against real files and a real HTTP server.

use std::time::{Duration, Instant};

use agent::config::load::parse_instance;
use agent::config::GlobalConfig;
use agent::discovery::{self, TargetGroup};
use tokio_util::sync::CancellationToken;

fn job(yaml: &str) -> agent::config::scrape::ScrapeConfig {
    let (_, cfg) = parse_instance(yaml, &GlobalConfig::default()).expect("valid config");
    cfg.scrape_configs.into_iter().next().unwrap()
}

fn addresses(groups: &[std::sync::Arc<TargetGroup>]) -> Vec<String> {
    let mut v: Vec<String> = groups
        .iter()
        .flat_map(|g| g.targets.iter().map(|t| t["__address__"].clone()))
        .collect();
    v.sort();
    v
}

async fn wait_for(rx: &mut discovery::Targets, want: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if addresses(&rx.borrow_and_update()) == want {
            return start.elapsed();
        }
        let left = within.checked_sub(start.elapsed()).unwrap_or_else(|| {
            panic!(
                "targets {:?} not seen within {within:?}; have {:?}",
                want,
                addresses(&rx.borrow())
            )
        });
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

#[tokio::test]
async fn file_sd_sees_changes_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("targets.json");
    std::fs::write(&f, r#"[{"targets":["a:9100"],"labels":{"env":"prod"}}]"#).unwrap();
    let cfg = job(&format!(
        "scrape_configs:\n  - job_name: f\n    file_sd_configs:\n      - files: ['{}/*.json']\n",
        dir.path().display()
    ));
    let stop = CancellationToken::new();
    let mut rx = discovery::start(&cfg, None, stop.clone()).unwrap().targets;
    wait_for(&mut rx, &["a:9100"], Duration::from_secs(30)).await;
    assert_eq!(
        rx.borrow()[0].labels["__meta_filepath"],
        f.display().to_string()
    );

    std::fs::write(&f, r#"[{"targets":["a:9100","b:9100"]}]"#).unwrap();
    let took = wait_for(&mut rx, &["a:9100", "b:9100"], Duration::from_secs(1)).await;
    eprintln!("file_sd change seen after {took:?}");

    // A second file matching the glob is picked up; a broken file keeps its old targets.
    std::fs::write(dir.path().join("more.json"), r#"[{"targets":["c:1"]}]"#).unwrap();
    wait_for(
        &mut rx,
        &["a:9100", "b:9100", "c:1"],
        Duration::from_secs(1),
    )
    .await;
    std::fs::write(&f, "[{not json").unwrap();
    // A later change to another file: once it shows, the broken file was read too (each poll
    // reads every file that changed), and its targets were kept.
    std::fs::write(dir.path().join("zz.json"), r#"[{"targets":["d:1"]}]"#).unwrap();
    wait_for(
        &mut rx,
        &["a:9100", "b:9100", "c:1", "d:1"],
        Duration::from_secs(1),
    )
    .await;
    std::fs::remove_file(&f).unwrap();
    wait_for(&mut rx, &["c:1", "d:1"], Duration::from_secs(1)).await;
    stop.cancel();
}

#[tokio::test]
async fn http_sd_against_a_local_server() {
    use axum::routing::get;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/sd",
        get(move |headers: axum::http::HeaderMap| {
            let n = h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                assert_eq!(headers["authorization"], "Bearer sd-token");
                assert_eq!(headers["x-prometheus-refresh-interval-seconds"], "1");
                let body = if n == 0 {
                    r#"[{"targets":["x:1"],"labels":{"dc":"a"}}]"#
                } else {
                    r#"[{"targets":["x:1","y:2"],"labels":{"dc":"a"}}]"#
                };
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
            .unwrap();
    });
    let cfg = job(&format!(
        "scrape_configs:\n  - job_name: h\n    http_sd_configs:\n      - url: http://{addr}/sd\n        refresh_interval: 1s\n        bearer_token: sd-token\n"
    ));
    let mut rx = discovery::start(&cfg, None, stop.clone()).unwrap().targets;
    wait_for(&mut rx, &["x:1"], Duration::from_secs(30)).await;
    assert_eq!(
        rx.borrow()[0].labels["__meta_url"],
        format!("http://{addr}/sd")
    );
    wait_for(&mut rx, &["x:1", "y:2"], Duration::from_secs(30)).await;
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    stop.cancel();
}

#[tokio::test]
async fn unsupported_sd_kind_is_named() {
    let cfg =
        job("scrape_configs:\n  - job_name: e\n    ec2_sd_configs:\n      - region: eu-west-1\n");
    let err = discovery::start(&cfg, None, CancellationToken::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "job \"e\": ec2_sd_configs is not supported yet by this version of agentctl"
    );
}

#[tokio::test]
async fn static_targets_are_published_at_once() {
    let cfg = job("scrape_configs:\n  - job_name: s\n    static_configs:\n      - targets: [a:1]\n        labels: {x: y}\n");
    let d = discovery::start(&cfg, None, CancellationToken::new()).unwrap();
    assert!(*d.synced.borrow(), "static targets are complete at once");
    let groups = d.targets.borrow();
    assert_eq!(addresses(&groups), ["a:1"]);
    assert_eq!(groups[0].labels["x"], "y");
}
