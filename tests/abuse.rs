//! API abuse against a real `agentctl agent run` process on the embedded
//! default: oversized and chunked bodies, deeply nested YAML, a YAML bomb, invalid UTF-8 and
//! path-traversal names, 10,000 configs, 200 concurrent PUTs with If-Match, file-reading
//! fields, secrets in responses and logs, bearer auth on every write route. What tests/api.rs
//! already covers (413 with Content-Length, 401/403 on PUT and DELETE, `<secret>` in GET,
//! If-Match 412) is not repeated.
//!
//! Every test prints greppable figures: `RELIABILITY <name>=<value>`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{Agent, HttpResponse};

/// Panics unless the agent answers `/-/healthy` within two seconds: it survived.
fn assert_alive(a: &Agent) {
    let t = Instant::now();
    let r = a.get("/-/healthy");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "healthy took {:?}",
        t.elapsed()
    );
}

/// Stops the agent (SIGTERM, exit 0) and returns everything it logged.
fn stop(mut a: Agent) -> String {
    assert_eq!(a.stop(), Some(0), "{}", a.log());
    a.log()
}

fn cfg(job: &str) -> String {
    format!("scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:1']\nremote_write:\n  - url: http://127.0.0.1:2/push\nremote_flush_deadline: 1s\n")
}

fn figure(name: &str, value: impl std::fmt::Display) {
    println!("RELIABILITY {name}={value}");
}

/// Sends a PUT with `Transfer-Encoding: chunked` (no Content-Length), streaming `total` bytes in
/// 64 KiB chunks until done or the server stops reading; returns the status line's code.
fn put_chunked(addr: &str, path: &str, total: usize) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'#'; 64 << 10];
    let mut sent = 0;
    while sent < total {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        // The server answers 413 and closes once the limit is passed: a failed write is the
        // expected end, not an error.
        if s.write_all(&frame).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no response to the chunked PUT: {text:?}"))
}

#[test]
fn oversized_bodies_are_refused_with_and_without_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), &["--api.max-body-bytes", "1048576"]);
    let rss0 = a.rss_kib();

    // Chunked, no Content-Length: 64 MiB offered, refused once 1 MiB is passed.
    let t = Instant::now();
    let code = put_chunked(a.addr(), "/agent/api/v1/config/chunked", 64 << 20);
    let chunked_ms = t.elapsed().as_millis();
    assert_eq!(code, 413);
    assert_alive(&a);

    // A Content-Length far over the limit is refused from the header alone (the body is never
    // sent here: an agent that waited for it would time out this request).
    let mut s = TcpStream::connect(a.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    s.write_all(
        format!(
            "PUT /agent/api/v1/config/huge HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 107374182400\r\n\r\n",
            a.addr()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    let header_ms = t.elapsed().as_millis();
    assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");

    // Many at once: the agent buffers at most the limit per request.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let addr = a.addr().to_owned();
            std::thread::spawn(move || {
                put_chunked(&addr, &format!("/agent/api/v1/config/c{i}"), 8 << 20)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 413);
    }
    assert_alive(&a);
    let rss1 = a.rss_kib();

    // Exactly at the limit is fine, and nothing of the refused bodies was stored.
    assert_eq!(a.put_config("ok", &cfg("ok")).status, 201);
    let list = a.req("GET", "/agent/api/v1/configs", &[], "");
    assert_eq!(
        list.body,
        r#"{"status":"success","data":{"configs":["ok"]}}"#
    );
    figure("api_413_chunked_64MiB_ms", chunked_ms);
    figure("api_413_content_length_100GB_ms", header_ms);
    figure("api_413_rss_delta_kib", rss1.saturating_sub(rss0));
    assert!(
        rss1.saturating_sub(rss0) < 200 << 10,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    stop(a);
}

#[test]
fn deeply_nested_yaml_is_refused_quickly_without_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), &[]);
    let depth = 100_000;
    let bodies = [
        ("flow_sequences", "[".repeat(depth)),
        (
            "flow_sequences_closed",
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        ),
        ("flow_maps", "{a: ".repeat(depth)),
        ("block_sequences", format!("{}x\n", "- ".repeat(depth))),
        (
            "in_scrape_config",
            format!(
                "scrape_configs:\n  - job_name: deep\n    ec2_sd_configs:\n      - x: {}{}\n",
                "[".repeat(depth),
                "]".repeat(depth)
            ),
        ),
        (
            "block_maps",
            (0..1500)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect::<String>(),
        ),
    ];
    for (kind, body) in &bodies {
        let t = Instant::now();
        let r = a.put_config("deep", body);
        let ms = t.elapsed().as_millis();
        assert_eq!(r.status, 400, "{kind}: {r:?}");
        assert!(
            r.body.contains("could not unmarshal config"),
            "{kind}: {}",
            r.body
        );
        assert!(ms < 5_000, "{kind}: {ms} ms");
        assert_alive(&a);
        figure(&format!("api_nested_yaml_{kind}_ms"), ms);
    }
    assert_eq!(
        a.req("GET", "/agent/api/v1/configs/deep", &[], "").status,
        404
    );
    stop(a);
}

#[test]
fn yaml_bombs_are_bounded_in_time_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), &[]);
    let rss0 = a.rss_kib();
    // Billion laughs: 9 levels of 9 aliases = 9^9 (387 million) strings if expanded. The anchors
    // sit where arbitrary YAML is accepted (an SD config passed through as-is), so they are not
    // refused as unknown fields before expansion.
    let mut laughs = String::from(
        "scrape_configs:\n  - job_name: bomb\n    ec2_sd_configs:\n      - a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        laughs.push_str(&format!(
            "        a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    // The same at the top level, and a wide one: one big anchor referenced many times.
    let top = laughs.replace(
        "scrape_configs:\n  - job_name: bomb\n    ec2_sd_configs:\n      - a0",
        "a0",
    );
    let big = format!("[{}]", vec!["\"0123456789abcdef\""; 20_000].join(", "));
    let wide = format!(
        "scrape_configs:\n  - job_name: wide\n    ec2_sd_configs:\n      - a: &big {big}\n        b: [{}]\n",
        vec!["*big"; 2_000].join(", ")
    );
    let mut worst_ms = 0;
    for (kind, body) in [("nested", &laughs), ("top_level", &top), ("wide", &wide)] {
        let t = Instant::now();
        let r = a.put_config("bomb", body);
        let ms = t.elapsed().as_millis();
        worst_ms = worst_ms.max(ms);
        assert_eq!(r.status, 400, "{kind}: {r:?}");
        assert!(ms < 10_000, "{kind}: {ms} ms");
        assert_alive(&a);
        figure(&format!("api_yaml_bomb_{kind}_ms"), ms);
        eprintln!("{kind}: {}", r.body);
    }
    let rss1 = a.rss_kib();
    let delta_mib = rss1.saturating_sub(rss0) / 1024;
    figure("api_yaml_bomb_rss_delta_mib", delta_mib);
    assert!(delta_mib < 200, "RSS grew from {rss0} to {rss1} KiB");
    assert_eq!(
        a.req("GET", "/agent/api/v1/configs/bomb", &[], "").status,
        404
    );
    stop(a);
}

#[test]
fn invalid_utf8_and_control_characters_in_names_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), &[]);
    for (method, route) in [
        ("PUT", "/agent/api/v1/config/"),
        ("POST", "/agent/api/v1/config/"),
        ("DELETE", "/agent/api/v1/config/"),
        ("GET", "/agent/api/v1/configs/"),
    ] {
        for name in ["%FF", "a%C3%28b", "%ED%A0%80", "%00", "a%0Ab", "%7F"] {
            let r = a.req(method, &format!("{route}{name}"), &[], &cfg("utf8"));
            assert_eq!(r.status, 400, "{method} {name}: {r:?}");
            assert!(
                r.body.contains("could not decode config name"),
                "{method} {name}: {}",
                r.body
            );
        }
    }
    let r = a.put_config("%FF", &cfg("utf8"));
    assert!(r.body.contains("UTF-8"), "{}", r.body);
    assert_alive(&a);
    assert_eq!(
        a.req("GET", "/agent/api/v1/configs", &[], "").body,
        r#"{"status":"success","data":{"configs":[]}}"#
    );
    stop(a);
}

/// Every file and folder under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn path_traversal_names_never_leave_the_wal_directory() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("agent");
    std::fs::create_dir(&dir).unwrap();
    // `distinct`: each config gets a WAL folder named after it, which is what this test is
    // about (shared mode names folders by a hex group hash, never by a config name).
    let agent_yaml = dir.join("agent.yaml");
    std::fs::write(
        &agent_yaml,
        "metrics:\n  wal_directory: data-agent\n  instance_mode: distinct\n  scraping_service:\n    enabled: true\n",
    )
    .unwrap();
    let a = Agent::start(&dir, &["--config.file", agent_yaml.to_str().unwrap()]);
    let refused = [
        "..%2F..%2Fescaped",
        "..%2Fescaped",
        "%2E%2E%2Fescaped",
        "%2E%2E",
        "%2E",
        "a%2F..%2F..%2F..%2Fescaped",
        "a%2F.%2Fb",
        "%2Fescaped",
        "escaped%2F",
        "a%2F%2Fb",
    ];
    for name in refused {
        let r = a.put_config(name, &cfg(&format!("job-{}", name.len())));
        assert_eq!(r.status, 400, "{name}: {r:?}");
        assert!(r.body.contains("invalid config name"), "{name}: {}", r.body);
    }
    // Odd but harmless names are stored, and their WAL folders land inside wal_directory.
    let accepted = [
        ("...", "dots3"),
        ("..x", "dotsx"),
        ("a..b", "adotsb"),
        ("%5C..%5Cescaped", "backslash"),
        ("team%2Fa", "team"),
        ("sp%20ace", "space"),
        ("%E2%82%AC", "euro"),
    ];
    for (name, job) in accepted {
        let r = a.put_config(name, &cfg(job));
        assert_eq!(r.status, 201, "{name}: {r:?}");
    }
    let list = a.req("GET", "/agent/api/v1/configs", &[], "");
    let v: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(
        v["data"]["configs"].as_array().unwrap().len(),
        accepted.len()
    );

    // Wait for every instance's WAL folder.
    let wal_dir = dir.join("data-agent");
    let want = [
        "...",
        "..x",
        "a..b",
        "\\..\\escaped",
        "team--a",
        "sp ace",
        "€",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let top: Vec<String> = std::fs::read_dir(&wal_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if want.iter().all(|w| top.iter().any(|t| t == w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "WAL folders not all created: {top:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_alive(&a);
    let log = stop(a);
    // Nothing outside the agent's directory; inside it, only its data folder and its log.
    assert_eq!(
        tree(outer.path())
            .iter()
            .filter(|p| !p.starts_with("agent"))
            .count(),
        0
    );
    let top: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut top_sorted = top.clone();
    top_sorted.sort();
    assert_eq!(
        top_sorted,
        ["agent.addr", "agent.log", "agent.yaml", "data-agent"],
        "{:?}",
        tree(&dir)
    );
    assert!(!outer.path().join("escaped").exists());
    assert!(!log.contains("panicked"), "{log}");
    figure("api_traversal_names_refused", refused.len());
}

#[test]
fn two_names_never_share_a_wal_folder() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), &[]);
    // `a/b` is stored in the folder `a--b`; a config literally named `a--b` must not get the
    // same folder (two WAL writers in one folder corrupt each other).
    assert_eq!(a.put_config("a%2Fb", &cfg("slash")).status, 201);
    let r = a.put_config("a--b", &cfg("dashes"));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body
            .contains("would share its WAL folder \\\"a--b\\\" with config \\\"a/b\\\""),
        "{}",
        r.body
    );
    // The other way round too.
    assert_eq!(a.put_config("x--y", &cfg("dashes2")).status, 201);
    assert_eq!(a.put_config("x%2Fy", &cfg("slash2")).status, 400);
    assert_alive(&a);
    stop(a);
}

/// How many configs `ten_thousand_configs` stores: 10,000 with `AGENTCTL_ABUSE_FULL=1`, else
/// 2,000 (CI).
fn many() -> usize {
    if std::env::var("AGENTCTL_ABUSE_FULL").is_ok_and(|v| v == "1") {
        10_000
    } else {
        2_000
    }
}

#[test]
fn ten_thousand_configs() {
    let n = many();
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Agent::start(dir.path(), &[]));
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (a, next) = (Arc::clone(&a), Arc::clone(&next));
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                // No scrape jobs (nothing to scrape), but each config is a real instance.
                let body = format!("scrape_configs: []\nremote_write:\n  - url: http://127.0.0.1:2/push/{i}\nremote_flush_deadline: 1s\n");
                let r = a.put_config(&format!("cfg-{i:05}"), &body);
                assert_eq!(r.status, 201, "cfg-{i}: {r:?}");
            })
        })
        .collect();
    // Meanwhile, the agent must keep answering reads.
    let mut list_during = Vec::new();
    while workers.iter().any(|w| !w.is_finished()) {
        let t = Instant::now();
        let r = a.req("GET", "/-/healthy", &[], "");
        assert_eq!(r.status, 200);
        list_during.push(t.elapsed().as_millis());
        std::thread::sleep(Duration::from_millis(200));
    }
    for w in workers {
        w.join().unwrap();
    }
    let put_ms = t.elapsed().as_millis();
    let mut list_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = a.req("GET", "/agent/api/v1/configs", &[], "");
        list_ms.push(t.elapsed().as_millis());
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["data"]["configs"].as_array().unwrap().len(), n);
    }
    let t = Instant::now();
    let r = a.req("GET", "/agent/api/v1/configs?hashes=true", &[], "");
    let hashes_ms = t.elapsed().as_millis();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["data"]["hashes"].as_object().unwrap().len(), n);
    list_ms.sort();
    let healthy_max = list_during.iter().max().copied().unwrap_or(0);
    figure(&format!("api_{n}_configs_put_total_ms"), put_ms);
    figure(
        &format!("api_{n}_configs_puts_per_sec"),
        (n as u128 * 1000) / put_ms.max(1),
    );
    figure(
        &format!("api_{n}_configs_list_ms"),
        list_ms[list_ms.len() / 2],
    );
    figure(&format!("api_{n}_configs_list_hashes_ms"), hashes_ms);
    figure(
        &format!("api_{n}_configs_healthy_max_ms_during_puts"),
        healthy_max,
    );
    figure(&format!("api_{n}_configs_rss_mib"), a.rss_kib() / 1024);
    // A liveness bound, not a latency target: the agent must keep answering while 8 writers
    // PUT (no starved runtime, no lock held across the writes). How fast it answers is the
    // figure above; on a loaded 2-core CI machine 2-3 s were seen, so the bound is generous.
    assert!(
        healthy_max < 10_000,
        "healthy took {healthy_max} ms during the puts"
    );
    assert!(list_ms[0] < 5_000, "list took {list_ms:?} ms");
    assert_alive(&a);
    let a = Arc::into_inner(a).unwrap();
    let log = stop(a);
    assert!(!log.contains("panicked"), "{log}");
}

fn etag(a: &Agent, name: &str) -> (String, String) {
    let r = a.req("GET", &format!("/agent/api/v1/configs/{name}"), &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    (
        r.header("etag").unwrap().to_owned(),
        v["data"]["value"].as_str().unwrap().to_owned(),
    )
}

fn counted(n: usize) -> String {
    format!("scrape_configs:\n  - job_name: counter\n    static_configs:\n      - targets: ['127.0.0.1:1']\n        labels:\n          counter: '{n}'\nremote_write:\n  - url: http://127.0.0.1:2/push\nremote_flush_deadline: 1s\n")
}

fn counter_of(yaml: &str) -> usize {
    let re = regex::Regex::new(r#"counter: ['"]?(\d+)"#).unwrap();
    re.captures(yaml)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no counter in {yaml}"))
}

#[test]
fn concurrent_puts_with_one_if_match_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Agent::start(dir.path(), &[]));
    assert_eq!(a.put_config("race", &counted(0)).status, 201);
    let (tag, _) = etag(&a, "race");
    let start = Arc::new(std::sync::Barrier::new(200));
    let t = Instant::now();
    let clients: Vec<_> = (1..=200)
        .map(|i| {
            let (a, tag, start) = (Arc::clone(&a), tag.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let r = a.req(
                    "PUT",
                    "/agent/api/v1/config/race",
                    &[("If-Match", &tag)],
                    &counted(i),
                );
                (i, r.status)
            })
        })
        .collect();
    let results: Vec<(usize, u16)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ms = t.elapsed().as_millis();
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(i, _)| *i)
        .collect();
    let others: Vec<u16> = results
        .iter()
        .filter(|(_, s)| *s != 200)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(others.iter().all(|s| *s == 412), "{results:?}");
    let (_, now) = etag(&a, "race");
    assert_eq!(
        counter_of(&now),
        winners[0],
        "the stored config is the winner's"
    );
    figure("api_200_if_match_puts_winners", winners.len());
    figure("api_200_if_match_puts_ms", ms);
    stop(Arc::into_inner(a).unwrap());
}

#[test]
fn read_modify_write_with_if_match_loses_no_update() {
    let clients = 200;
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Agent::start(dir.path(), &[]));
    assert_eq!(a.put_config("counter", &counted(0)).status, 201);
    let retries = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (a, retries) = (Arc::clone(&a), Arc::clone(&retries));
            std::thread::spawn(move || {
                for attempt in 0u64.. {
                    let (tag, yaml) = etag(&a, "counter");
                    let r = a.req(
                        "PUT",
                        "/agent/api/v1/config/counter",
                        &[("If-Match", &tag)],
                        &counted(counter_of(&yaml) + 1),
                    );
                    match r.status {
                        200 => return,
                        412 => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            // Jittered backoff, as a polite client would.
                            let jitter = (i as u64 * 7919 + attempt * 104_729) % 20;
                            std::thread::sleep(Duration::from_millis(jitter + attempt.min(10) * 5));
                        }
                        _ => panic!("client {i}: {r:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ms = t.elapsed().as_millis();
    let (_, yaml) = etag(&a, "counter");
    assert_eq!(counter_of(&yaml), clients, "lost updates");
    figure("api_200_read_modify_write_final_counter", counter_of(&yaml));
    figure(
        "api_200_read_modify_write_412_retries",
        retries.load(Ordering::Relaxed),
    );
    figure("api_200_read_modify_write_ms", ms);
    stop(Arc::into_inner(a).unwrap());
}

#[test]
fn delete_if_match_racing_put_if_match_has_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Agent::start(dir.path(), &[]));
    let rounds = 30;
    let (mut puts, mut deletes) = (0, 0);
    for round in 0..rounds {
        assert_eq!(a.put_config("rd", &counted(round)).status, 201);
        let (tag, _) = etag(&a, "rd");
        let (ap, ad) = (Arc::clone(&a), Arc::clone(&a));
        let (tp, td) = (tag.clone(), tag);
        let put = std::thread::spawn(move || {
            ap.req(
                "PUT",
                "/agent/api/v1/config/rd",
                &[("If-Match", &tp)],
                &counted(1000 + round),
            )
            .status
        });
        let del = std::thread::spawn(move || {
            ad.req(
                "DELETE",
                "/agent/api/v1/config/rd",
                &[("If-Match", &td)],
                "",
            )
            .status
        });
        let (p, d) = (put.join().unwrap(), del.join().unwrap());
        let now = a.req("GET", "/agent/api/v1/configs/rd", &[], "");
        match (p, d) {
            (200, 412) => {
                assert_eq!(now.status, 200);
                let v: serde_json::Value = serde_json::from_str(&now.body).unwrap();
                assert_eq!(
                    counter_of(v["data"]["value"].as_str().unwrap()),
                    1000 + round
                );
                puts += 1;
            }
            (412, 200) => {
                assert_eq!(now.status, 404);
                deletes += 1;
            }
            other => panic!("round {round}: put/delete answered {other:?}; now {now:?}"),
        }
        if now.status == 200 {
            assert_eq!(
                a.req("DELETE", "/agent/api/v1/config/rd", &[], "").status,
                200
            );
        }
    }
    figure("api_delete_vs_put_if_match_rounds", rounds);
    figure("api_delete_vs_put_if_match_put_wins", puts);
    figure("api_delete_vs_put_if_match_delete_wins", deletes);
    stop(Arc::into_inner(a).unwrap());
}

/// Scrape-config snippets that make the agent read a file, with the field the refusal names.
fn file_reading_cases(f: &str) -> Vec<(&'static str, String)> {
    vec![
        ("bearer_token_file", format!("    bearer_token_file: {f}\n")),
        ("password_file", format!("    basic_auth:\n      username: u\n      password_file: {f}\n")),
        ("credentials_file", format!("    authorization:\n      credentials_file: {f}\n")),
        ("ca_file", format!("    tls_config:\n      ca_file: {f}\n")),
        ("cert_file", format!("    tls_config:\n      cert_file: {f}\n      key_file: {f}\n")),
        // An empty cert_file is no certificate (Prometheus refuses the key alone); an inline
        // cert leaves key_file the first field that reads a file.
        ("key_file", format!("    tls_config:\n      key_file: {f}\n      cert: inline-pem\n")),
        ("username_file", format!("    basic_auth:\n      username_file: {f}\n")),
        ("client_secret_file", format!("    oauth2:\n      client_id: c\n      client_secret_file: {f}\n      token_url: http://127.0.0.1:1/token\n")),
        ("file_sd_configs", format!("    file_sd_configs:\n      - files: ['{f}.json']\n")),
        ("bearer_token_file", format!("    kubernetes_sd_configs:\n      - role: pod\n        api_server: http://127.0.0.1:1\n        bearer_token_file: {f}\n")),
        ("auth_token_file", format!("    marathon_sd_configs:\n      - servers: ['http://127.0.0.1:1']\n        auth_token_file: {f}\n")),
    ]
}

#[test]
fn file_reading_fields_are_refused_unless_dangerous_allow_reading_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret.txt");
    std::fs::write(&secret_file, "file-secret-0451\n").unwrap();
    let f = secret_file.display().to_string();
    let a = Agent::start(dir.path(), &[]);
    let mut refused = 0;
    for (i, (field, snippet)) in file_reading_cases(&f).into_iter().enumerate() {
        let body = format!("scrape_configs:\n  - job_name: f{i}\n{snippet}");
        let r = a.put_config(&format!("f{i}"), &body);
        assert_eq!(r.status, 400, "{field}: {r:?}");
        assert!(
            r.body.contains(&format!(
                "{field} must be empty unless dangerous_allow_reading_files is set"
            )),
            "{field}: {}",
            r.body
        );
        refused += 1;
    }
    // remote_write's client too.
    let body =
        format!("remote_write:\n  - url: http://127.0.0.1:2/push\n    bearer_token_file: {f}\n");
    let r = a.put_config("rw", &body);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("failed to validate remote_write at index 0: bearer_token_file must be empty unless dangerous_allow_reading_files is set"), "{}", r.body);
    let log = stop(a);
    assert!(!log.contains("file-secret-0451"), "{log}");

    // With the setting, the same configs are accepted.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(
        dir2.path().join("agent.yaml"),
        "metrics:\n  wal_directory: data-agent/\n  scraping_service:\n    enabled: true\n    dangerous_allow_reading_files: true\n",
    )
    .unwrap();
    let b = Agent::start(dir2.path(), &["--config.file", "agent.yaml"]);
    for (i, (field, snippet)) in file_reading_cases(&f).into_iter().enumerate() {
        let body = format!("scrape_configs:\n  - job_name: f{i}\n{snippet}");
        let r = b.put_config(&format!("f{i}"), &body);
        assert_eq!(r.status, 201, "{field}: {r:?}");
    }
    let list = b.req("GET", "/agent/api/v1/configs", &[], "");
    assert!(!list.body.contains("file-secret-0451"));
    stop(b);
    figure("api_file_reading_fields_refused", refused + 1);
}

#[test]
fn no_secret_in_any_response_or_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), &["--log.level", "debug"]);
    let secrets = [
        "sec-basic-pw-1",
        "sec-bearer-2",
        "sec-authz-3",
        "sec-oauth-4",
        "sec-rw-bearer-5",
        "sec-rw-basic-6",
        "sec-rw-url-7",
        "sec-proxy-hdr-8",
        "sec-sd-bearer-9",
        "sec-rw-sigv4-10",
        "sec-rw-azure-11",
    ];
    let full = "scrape_configs:\n  - job_name: s1\n    scrape_interval: 1s\n    scrape_timeout: 500ms\n    basic_auth:\n      username: u\n      password: sec-basic-pw-1\n    static_configs:\n      - targets: ['127.0.0.1:1']\n  - job_name: s2\n    scrape_interval: 1s\n    scrape_timeout: 500ms\n    bearer_token: sec-bearer-2\n    static_configs:\n      - targets: ['127.0.0.1:1']\n  - job_name: s3\n    scrape_interval: 1s\n    scrape_timeout: 500ms\n    authorization:\n      credentials: sec-authz-3\n    proxy_url: http://127.0.0.1:3\n    proxy_connect_header:\n      X-Token: [sec-proxy-hdr-8]\n    static_configs:\n      - targets: ['127.0.0.1:1']\n  - job_name: s4\n    http_sd_configs:\n      - url: http://127.0.0.1:1/sd\n        refresh_interval: 1s\n        bearer_token: sec-sd-bearer-9\nremote_write:\n  - url: http://127.0.0.1:2/push\n    bearer_token: sec-rw-bearer-5\n  - url: http://127.0.0.1:2/push2\n    basic_auth:\n      username: u\n      password: sec-rw-basic-6\n  - url: http://user:sec-rw-url-7@127.0.0.1:2/push3\n  - url: http://127.0.0.1:2/push4\n    sigv4:\n      region: us-east-1\n      access_key: AKIDTEST\n      secret_key: sec-rw-sigv4-10\n  - url: http://127.0.0.1:2/push5\n    azuread:\n      oauth:\n        client_id: 00000000-0000-0000-0000-000000000001\n        client_secret: sec-rw-azure-11\n        tenant_id: t\nremote_flush_deadline: 1s\n";
    let oauth = "scrape_configs:\n  - job_name: o\n    oauth2:\n      client_id: c\n      client_secret: sec-oauth-4\n      token_url: http://127.0.0.1:1/token\n    static_configs:\n      - targets: ['127.0.0.1:1']\n";
    let mut responses = Vec::new();
    let mut record = |r: HttpResponse| {
        responses.push(format!("{} {:?} {}", r.status, r.headers, r.body));
        r
    };
    let r = record(a.put_config("full", full));
    assert_eq!(r.status, 201, "{r:?}");
    // oauth2 is not supported by the scraper; accepted or refused, it must not echo the secret.
    record(a.put_config("oauth", oauth));
    // Errors about configs holding secrets: bad values next to them, a duplicate job, a
    // secret where a list is expected.
    record(a.put_config(
        "err1",
        &full.replace("scrape_timeout: 500ms", "scrape_timeout: 5s"),
    ));
    record(a.put_config("err2", &full.replace("job_name: s2", "job_name: s1")));
    record(a.put_config(
        "err3",
        &full.replace("password: sec-basic-pw-1", "password: [sec-basic-pw-1]"),
    ));
    record(a.put_config(
        "err4",
        &full.replace(
            "    bearer_token: sec-bearer-2\n",
            "    bearer_token: sec-bearer-2\n    bearer_token_file: /x\n",
        ),
    ));
    record(a.put_config("err5", "remote_write:\n  - url: ':sec-rw-url-7@bad'\n"));
    record(a.put_config("dup", &full.replace("job_name: s", "job_name: t")));
    for path in [
        "/agent/api/v1/configs",
        "/agent/api/v1/configs?hashes=true",
        "/agent/api/v1/configs/full",
        "/agent/api/v1/configs/oauth",
        "/agent/api/v1/configs/dup",
        "/metrics",
        "/-/config",
        "/debug/ring",
        "/agent/api/v1/metrics/targets",
        "/agent/api/v1/metrics/instances",
    ] {
        record(a.req("GET", path, &[], ""));
    }
    // Scrapes, http_sd and remote_write (the URL with a password too) have failed, with debug
    // logging, before the log is read: every kind of line that could carry a secret is there.
    for needle in [
        "scrape failed",
        "http_sd: refresh failed",
        "failed to send batch, retrying",
    ] {
        a.wait_log(needle, Duration::from_secs(30));
    }
    a.wait_until(
        "a failed send to the URL with a password",
        Duration::from_secs(30),
        |a| {
            a.log()
                .lines()
                .any(|l| l.contains("failed to send batch") && l.contains("push3"))
        },
    );
    let log = stop(a);
    for s in secrets {
        for r in &responses {
            assert!(!r.contains(s), "secret {s} in a response: {r}");
        }
        for line in log.lines() {
            assert!(!line.contains(s), "secret {s} in a log line: {line}");
        }
    }
    figure("api_secret_leaks", 0);
    figure("api_secret_checked_responses", responses.len());
    figure("api_secret_checked_log_lines", log.lines().count());
}

#[test]
fn bearer_auth_guards_every_write_route() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let a = Agent::start(
        dir.path(),
        &["--api.token-file", token_file.to_str().unwrap()],
    );
    let good = [("Authorization", "Bearer s3cret-token")];
    assert_eq!(
        a.req("PUT", "/agent/api/v1/config/x", &good, &cfg("x"))
            .status,
        201
    );
    let mut checked = 0;
    for method in ["PUT", "POST", "DELETE"] {
        for (headers, want) in [
            (vec![], 401),
            (vec![("Authorization", "Bearer wrong")], 403),
            (vec![("Authorization", "Bearer s3cret-tokenX")], 403),
            (vec![("Authorization", "Bearer s3cret-toke")], 403),
            // (The client drops the trailing space: no token at all.)
            (vec![("Authorization", "Bearer ")], 401),
            (vec![("Authorization", "Bearer  ")], 401),
            (vec![("Authorization", "Basic czNjcmV0LXRva2Vu")], 401),
            (vec![("Authorization", "s3cret-token")], 401),
        ] {
            // Auth comes first: neither the body nor the name is looked at before it.
            for (path, body) in [
                ("/agent/api/v1/config/x", cfg("y")),
                ("/agent/api/v1/config/%FF", "[".repeat(1000)),
            ] {
                let r = a.req(method, path, &headers, &body);
                assert_eq!(r.status, want, "{method} {path} {headers:?}: {r:?}");
                if want == 401 {
                    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
                }
                assert!(!r.body.contains("s3cret"), "{r:?}");
                checked += 1;
            }
        }
    }
    // Nothing changed by the refused writes.
    let (_, yaml) = etag(&a, "x");
    assert!(yaml.contains("job_name: x"), "{yaml}");
    // Reads stay open, as designed (secrets are redacted in them).
    for path in [
        "/agent/api/v1/configs",
        "/agent/api/v1/configs/x",
        "/-/healthy",
        "/metrics",
    ] {
        assert_eq!(a.req("GET", path, &[], "").status, 200, "{path}");
    }
    // The scheme is case-insensitive (RFC 7235); the token is not.
    assert_eq!(
        a.req(
            "POST",
            "/agent/api/v1/config/x",
            &[("Authorization", "bearer s3cret-token")],
            &cfg("x")
        )
        .status,
        200
    );
    assert_eq!(
        a.req(
            "DELETE",
            "/agent/api/v1/config/x",
            &[("Authorization", "Bearer S3CRET-TOKEN")],
            ""
        )
        .status,
        403
    );
    assert_eq!(
        a.req("DELETE", "/agent/api/v1/config/x", &good, "").status,
        200
    );
    let log = stop(a);
    assert!(!log.contains("s3cret-token"), "{log}");
    figure("api_auth_refusals_checked", checked);
}
