//! `agentctl wal inspect` and the old `wal-stats`/`target-stats`/`sample-stats` run as the
//! real binary: on a WAL written by the test, on a directory that is not a WAL, and on a WAL
//! written by Prometheus 2.42 in agent mode.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use agent::labels::{Labels, SeriesRef};
use agent::wal::{inspect, Wal, WalOptions};

use crate::support::{agentctl, prometheus, wait_http};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// 2024-01-02T03:04:05.678Z
const T0: i64 = 1_704_164_645_678;

/// An instance directory `<dir>/wal` with two targets of the `node` job.
fn write_wal(dir: &Path) {
    let (mut wal, _) = Wal::open(&dir.join("wal"), WalOptions::default()).expect("open");
    let s = |r: u64, name: &str, inst: &str| {
        (
            SeriesRef(r),
            Labels::from_pairs([("__name__", name), ("job", "node"), ("instance", inst)]),
        )
    };
    let series = [
        s(1, "up", "a:9100"),
        s(2, "node_load1", "a:9100"),
        s(3, "up", "b:9100"),
    ];
    wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
        .expect("series");
    for i in 0..4 {
        wal.append_samples(&[
            (SeriesRef(1), T0 + i * 15_000, 1.0),
            (SeriesRef(2), T0 + i * 15_000, 0.5),
        ])
        .expect("samples");
    }
    wal.append_samples(&[(SeriesRef(3), T0, 1.0)])
        .expect("samples");
    wal.commit().expect("commit");
}

#[test]
fn inspect_report_json_and_legacy_formats() {
    let tmp = tempfile::tempdir().unwrap();
    write_wal(tmp.path());
    let dir = tmp.path().to_str().unwrap();

    let out = agentctl(&["wal", "inspect", dir], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "Series:          3\n",
        "Samples:         9\n",
        "Oldest sample:   2024-01-02T03:04:05.678Z\n",
        "Newest sample:   2024-01-02T03:04:50.678Z\n",
        "Time span:       45s\n",
        "node  a:9100         2        8\n",
        "Top 20 metric names by series:\n",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }

    let out = agentctl(
        &[
            "wal", "inspect", dir, "--job", "node", "-i", "b:9100", "--output", "json",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["total_series"], 3, "totals are not filtered");
    assert_eq!(v["targets"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["targets"][0]["instance"], "b:9100");
    assert_eq!(
        v["metrics"],
        serde_json::json!([{"name": "up", "series": 1}])
    );
    assert_eq!(v["series"], serde_json::Value::Null);

    let out = agentctl(&["wal", "inspect", dir, "-s", "node_load1"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "{__name__=\"node_load1\", instance=\"a:9100\", job=\"node\"}        4  \
             2024-01-02T03:04:05.678Z  2024-01-02T03:04:50.678Z\n"
        ),
        "{}",
        stdout(&out)
    );

    let out = agentctl(&["wal-stats", dir], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Oldest Sample:      2024-01-02 03:04:05.678 +0000 UTC\n\
         Newest Sample:      2024-01-02 03:04:50.678 +0000 UTC\n\
         Total Series:       3\n\
         Total Samples:      9\n\
         Hash Collisions:    0\n\
         Invalid Refs:       0\n\
         Checkpoint Segment: 0\n\
         First Segment:      0\n\
         Latest Segment:     0\n\
         \n\
         Per-target stats:\n\
         +------+----------+--------+---------+\n\
         | JOB  | INSTANCE | SERIES | SAMPLES |\n\
         +------+----------+--------+---------+\n\
         | node | a:9100   |      2 |       8 |\n\
         | node | b:9100   |      1 |       1 |\n\
         +------+----------+--------+---------+\n"
    );

    let out = agentctl(
        &["target-stats", dir, "-j", "node", "-i", "a:9100"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Metric cardinality:\n\nnode_load1: 1\nup: 1\n"
    );

    let out = agentctl(
        &["sample-stats", dir, "-s", r#"{instance="b:9100"}"#],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{__name__=\"up\", instance=\"b:9100\", job=\"node\"}\n  \
         Oldest Sample:      2024-01-02 03:04:05.678 +0000 UTC\n  \
         Newest Sample:      2024-01-02 03:04:05.678 +0000 UTC\n  \
         Total Samples:      1\n"
    );

    // target-stats requires both flags, as with cobra.
    let out = agentctl(&["target-stats", dir, "-j", "node"], tmp.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn not_a_wal_exits_2_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not-a-wal");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    let d = dir.to_str().unwrap();
    let out = agentctl(&["wal", "inspect", d], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains(&format!("{d} is not a WAL directory")),
        "{}",
        stderr(&out)
    );

    let missing = tmp.path().join("missing");
    let m = missing.to_str().unwrap();
    let out = agentctl(&["wal", "inspect", m], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{m} does not exist")),
        "{}",
        stderr(&out)
    );

    // The old commands: message on stdout, exit 1.
    for cmd in ["wal-stats", "sample-stats"] {
        let out = agentctl(&[cmd, "missing"], tmp.path());
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert_eq!(stdout(&out), "missing does not exist\n", "{cmd}");
    }
    let out = agentctl(&["wal-stats", d], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with(&format!("failed to get WAL stats: {d} is not a WAL")),
        "{}",
        stdout(&out)
    );
}

/// A WAL whose last record was cut off (what a crash mid-write leaves) is reported up to the
/// damage, which is named with its segment and offset, and the command exits 1; the old
/// commands fail as the old tool did.
#[test]
fn a_torn_wal_is_reported_up_to_the_damage_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    write_wal(tmp.path());
    let seg = tmp.path().join("wal").join("00000000");
    let len = std::fs::metadata(&seg).unwrap().len();
    // Into the last record: the samples (one record for the commit), after the series record.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let dir = tmp.path().to_str().unwrap();

    let out = agentctl(&["wal", "inspect", dir], tmp.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "Series:          3\n",
        "Samples:         0\n",
        "last record is torn (read up to there)",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    // The newest segment ends inside a record: a write in progress, or what a crash left.
    assert!(
        stderr(&out).contains("is damaged: corruption in segment 0")
            && stderr(&out).contains("last record is torn")
            && stderr(&out).contains("The report covers what comes before the damage")
            && stderr(&out).contains("if an agent is writing this WAL now"),
        "{}",
        stderr(&out)
    );

    let out = agentctl(&["wal", "inspect", dir, "--output", "json"], tmp.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (v["total_series"].as_u64(), v["total_samples"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(
        v["damage"]
            .as_str()
            .is_some_and(|d| d.contains("last record is torn")),
        "{v}"
    );

    let out = agentctl(&["wal-stats", dir], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("failed to get WAL stats: corruption in segment 0"),
        "{}",
        stdout(&out)
    );

    // A byte flipped inside the first record (the series): a checksum mismatch, which an
    // agent cuts the WAL at, losing what follows.
    let whole = tempfile::tempdir().unwrap();
    write_wal(whole.path());
    let seg = whole.path().join("wal").join("00000000");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let out = agentctl(
        &["wal", "inspect", whole.path().to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Series:          0\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("unexpected checksum")
            && stderr(&out).contains("an agent opening this WAL cuts it there"),
        "{}",
        stderr(&out)
    );
}

/// Prometheus scrapes itself in agent mode; both command forms read its data directory.
#[test]
fn inspects_a_wal_written_by_prometheus_agent_mode() {
    let tmp = tempfile::tempdir().unwrap();
    // Prometheus picks its port; once it is known, the scrape of itself is configured and
    // loaded with SIGHUP.
    let global = "global:\n  scrape_interval: 1s\n  scrape_timeout: 500ms\n";
    let (mut prom, addr) = prometheus::start_agent_mode(tmp.path(), global);
    // Start-up time varies a lot on a busy machine.
    wait_http(&addr, "/-/ready", 200, Duration::from_secs(90));
    std::fs::write(
        tmp.path().join("prometheus.yml"),
        format!(
            "{global}scrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    prom.signal("HUP");
    let data = tmp.path().join("data");
    let instance = addr.clone();
    let scraped = |min: u64| {
        // The WAL is being written, so a torn last page reads as an error: not yet.
        inspect::stats(&data, &inspect::StatsOptions::default())
            .ok()
            .and_then(|st| {
                st.targets
                    .iter()
                    .find(|t| t.job == "self" && t.instance == instance)
                    .map(|t| t.samples >= min * t.series && t.series > 0)
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !scraped(3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    prom.signal("TERM");
    assert!(
        prom.wait_exit(Duration::from_secs(30)).is_some(),
        "Prometheus did not stop"
    );
    assert!(scraped(3), "Prometheus did not scrape itself three times");

    let d = data.to_str().unwrap();
    let out = agentctl(&["wal", "inspect", d, "--output", "json"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["dir"], data.join("wal").to_str().unwrap());
    assert_eq!(v["invalid_refs"], 0);
    let t = v["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["job"] == "self"))
        .unwrap_or_else(|| panic!("no target of job self in {v}"));
    assert_eq!(t["instance"], addr);
    assert!(t["series"].as_u64().unwrap_or(0) > 5, "{t}");
    assert!(
        v["metrics"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "up" && m["series"] == 1)),
        "{v}"
    );

    let out = agentctl(&["wal-stats", d], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("Invalid Refs:       0\n"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("| self ") && l.contains(&format!("| {addr} |"))),
        "{text}"
    );

    let out = agentctl(&["sample-stats", d, "-s", "up"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "{{__name__=\"up\", instance=\"{addr}\", job=\"self\"}}\n  Oldest Sample:      "
        )),
        "{text}"
    );
    let samples: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("  Total Samples:      "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sample count in {text}"));
    assert!(samples >= 3, "{text}");
}
