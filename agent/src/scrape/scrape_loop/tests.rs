use super::*;
use crate::config::load::parse_instance;
use crate::config::GlobalConfig;
use crate::scrape::appender::{is_stale_nan, MemoryStorage};

fn config(extra: &str) -> Arc<ScrapeConfig> {
    let yaml = format!(
        "scrape_configs:\n  - job_name: j\n    static_configs: [{{targets: ['h:1']}}]\n{extra}"
    );
    let (_, cfg) = parse_instance(&yaml, &GlobalConfig::default()).expect("valid config");
    Arc::new(cfg.scrape_configs.into_iter().next().expect("one job"))
}

fn target_labels() -> Labels {
    Labels::from_pairs([("job", "j"), ("instance", "h:1")])
}

fn series(pairs: &[(&str, &str)]) -> Labels {
    let mut lb = target_labels().builder();
    for (n, v) in pairs {
        lb.set(n, v);
    }
    lb.labels()
}

struct Harness {
    p: ScrapeProcessor,
    s: MemoryStorage,
}

impl Harness {
    fn new(extra: &str) -> Self {
        Harness {
            p: ScrapeProcessor::new(config(extra), target_labels(), Hasher::random()),
            s: MemoryStorage::new(),
        }
    }

    fn scrape(&mut self, body: &str, t: i64) -> Result<BodyStats, ScrapeError> {
        self.p.append_scrape(
            &self.s,
            Ok((body.as_bytes(), Format::PrometheusText)),
            t,
            Duration::from_millis(5),
        )
    }

    fn values(&self, pairs: &[(&str, &str)]) -> Vec<(i64, String)> {
        self.s
            .samples_of(&series(pairs))
            .into_iter()
            .map(|(t, v)| {
                (
                    t,
                    if is_stale_nan(v) {
                        "stale".into()
                    } else {
                        v.to_string()
                    },
                )
            })
            .collect()
    }

    fn up(&self) -> Vec<(i64, String)> {
        self.values(&[("__name__", "up")])
    }
}

#[test]
fn steady_state_uses_the_cache_and_reports() {
    let mut h = Harness::new("");
    let body = "# TYPE a counter\na_total{x=\"1\"} 1\na_total{x=\"2\"} 2\nb 3\n";
    let st = h.scrape(body, 1000).unwrap();
    assert_eq!(
        st,
        BodyStats {
            scraped: 3,
            post_relabel: 3,
            series_added: 3,
            duplicates: 0
        }
    );
    let st = h.scrape(body, 2000).unwrap();
    assert_eq!(st.series_added, 0);
    assert_eq!(
        h.s.new_series_calls(),
        3 + 5,
        "3 series + 5 synthetic, once"
    );
    assert_eq!(
        h.values(&[("__name__", "a_total"), ("x", "2")]),
        vec![(1000, "2".into()), (2000, "2".into())]
    );
    assert_eq!(h.up(), vec![(1000, "1".into()), (2000, "1".into())]);
    assert_eq!(
        h.values(&[("__name__", "scrape_samples_scraped")]),
        vec![(1000, "3".into()), (2000, "3".into())]
    );
    assert_eq!(
        h.values(&[("__name__", "scrape_series_added")]),
        vec![(1000, "3".into()), (2000, "0".into())]
    );
    assert_eq!(h.s.commits(), 2);
}

#[test]
fn vanished_series_get_one_staleness_marker_and_are_evicted() {
    let mut h = Harness::new("");
    h.scrape("a 1\nb 1\n", 1000).unwrap();
    h.scrape("a 2\n", 2000).unwrap();
    assert_eq!(h.p.cache().series(), 1, "b evicted");
    h.scrape("a 3\n", 3000).unwrap();
    h.scrape("a 4\nb 4\n", 4000).unwrap();
    assert_eq!(
        h.values(&[("__name__", "b")]),
        vec![
            (1000, "1".into()),
            (2000, "stale".into()),
            (4000, "4".into())
        ]
    );
    assert_eq!(h.values(&[("__name__", "a")]).len(), 4);
}

#[test]
fn failed_scrape_marks_everything_stale_and_reports_down() {
    let mut h = Harness::new("");
    h.scrape("a 1\n", 1000).unwrap();
    let err =
        h.p.append_scrape(
            &h.s,
            Err(ScrapeError::Status {
                status: "500 Internal Server Error".into(),
            }),
            2000,
            Duration::ZERO,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "server returned HTTP status 500 Internal Server Error"
    );
    h.scrape("a 3\n", 3000).unwrap();
    assert_eq!(
        h.values(&[("__name__", "a")]),
        vec![
            (1000, "1".into()),
            (2000, "stale".into()),
            (3000, "3".into())
        ]
    );
    assert_eq!(
        h.up(),
        vec![(1000, "1".into()), (2000, "0".into()), (3000, "1".into())]
    );
}

#[test]
fn parse_error_rolls_back_the_body() {
    let mut h = Harness::new("");
    h.scrape("a 1\nc 1\n", 1000).unwrap();
    let err = h.scrape("a 2\nb{ 1\nc 2\n", 2000).unwrap_err();
    assert!(matches!(err, ScrapeError::Parse(_)), "{err}");
    // `a`, appended before the error, is rolled back but not marked stale (as Prometheus);
    // `c`, after it, is.
    assert_eq!(h.values(&[("__name__", "a")]), vec![(1000, "1".into())]);
    assert_eq!(
        h.values(&[("__name__", "c")]),
        vec![(1000, "1".into()), (2000, "stale".into())]
    );
    assert_eq!(h.s.rollbacks(), 1);
}

#[test]
fn sample_limit_fails_the_scrape_counting_post_relabel_samples() {
    let mut h = Harness::new(
        "    sample_limit: 2\n    metric_relabel_configs:\n      - source_labels: [__name__]\n        regex: drop_me\n        action: drop\n",
    );
    h.scrape("a 1\ndrop_me 1\nb 1\n", 1000).unwrap();
    let err = h
        .scrape("a 2\ndrop_me 2\nc 2\nb 2\nd 2\n", 2000)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sample_limit exceeded (samples: 4, limit: 2)"
    );
    // Within the limit (`a`, then `c`): rolled back, not marked stale; `b` over it is marked,
    // as in Prometheus.
    assert_eq!(h.values(&[("__name__", "a")]), vec![(1000, "1".into())]);
    assert_eq!(
        h.values(&[("__name__", "b")]),
        vec![(1000, "1".into()), (2000, "stale".into())]
    );
    assert!(h.values(&[("__name__", "c")]).is_empty());
    assert_eq!(
        h.values(&[("__name__", "scrape_samples_post_metric_relabeling")]),
        vec![(1000, "2".into()), (2000, "4".into())]
    );
    assert_eq!(
        h.values(&[("__name__", "scrape_samples_scraped")]),
        vec![(1000, "3".into()), (2000, "5".into())]
    );
    assert_eq!(h.up(), vec![(1000, "1".into()), (2000, "0".into())]);
    assert!(h.values(&[("__name__", "drop_me")]).is_empty());
}

#[test]
fn label_limits_fail_the_scrape() {
    let cases = [
        (
            "    label_limit: 3\n",
            "label_limit exceeded (metric: a, number of labels: 4, limit: 3)",
        ),
        (
            "    label_name_length_limit: 8\n",
            "label_name_length_limit exceeded (metric: a, label name: longername, length: 10, limit: 8)",
        ),
        (
            "    label_value_length_limit: 3\n",
            "label_value_length_limit exceeded (metric: a, label name: longername, value: \"abcd\", length: 4, limit: 3)",
        ),
    ];
    for (cfg, want) in cases {
        let mut h = Harness::new(cfg);
        let err = h.scrape("a{longername=\"abcd\"} 1\n", 1000).unwrap_err();
        assert_eq!(err.to_string(), want);
        assert_eq!(h.up(), vec![(1000, "0".into())]);
    }
    // Within the limits (job, instance, __name__, longername = 4 labels).
    let mut h = Harness::new(
        "    label_limit: 4\n    label_name_length_limit: 10\n    label_value_length_limit: 4\n",
    );
    h.scrape("a{longername=\"abcd\"} 1\n", 1000).unwrap();
}

#[test]
fn duplicates_are_skipped_and_counted() {
    let mut h =
        Harness::new("    metric_relabel_configs:\n      - regex: x\n        action: labeldrop\n");
    // Same text twice, and two texts that relabel to the same series.
    let st = h
        .scrape("a 1\na 2\nb{x=\"1\"} 1\nb{x=\"2\"} 2\n", 1000)
        .unwrap();
    assert_eq!(st.duplicates, 2);
    assert_eq!(st.post_relabel, 4);
    assert_eq!(st.series_added, 2);
    assert_eq!(h.values(&[("__name__", "a")]), vec![(1000, "1".into())]);
    assert_eq!(h.values(&[("__name__", "b")]), vec![(1000, "1".into())]);
    let st = h
        .scrape("a 1\na 2\nb{x=\"1\"} 1\nb{x=\"2\"} 2\n", 2000)
        .unwrap();
    assert_eq!(st.duplicates, 2);
}

#[test]
fn honor_labels_decides_clashes() {
    let body = "a{job=\"exp\",instance=\"\",z=\"1\"} 1\n";
    let mut h = Harness::new("");
    h.scrape(body, 1000).unwrap();
    assert_eq!(
        h.values(&[("__name__", "a"), ("exported_job", "exp"), ("z", "1")]),
        vec![(1000, "1".into())]
    );
    let mut h = Harness::new("    honor_labels: true\n");
    h.scrape(body, 1000).unwrap();
    // The exposed empty `instance` suppresses the target's.
    let want = Labels::from_pairs([("__name__", "a"), ("job", "exp"), ("z", "1")]);
    assert_eq!(h.s.samples_of(&want), vec![(1000, 1.0)]);
}

#[test]
fn honor_timestamps_and_staleness_of_timestamped_series() {
    let mut h = Harness::new("");
    h.scrape("a 1 500\nb 1\n", 1000).unwrap();
    h.scrape("", 2000).unwrap();
    assert_eq!(h.values(&[("__name__", "a")]), vec![(500, "1".into())]);
    assert_eq!(
        h.values(&[("__name__", "b")]),
        vec![(1000, "1".into()), (2000, "stale".into())]
    );

    let mut h = Harness::new("    honor_timestamps: false\n");
    h.scrape("a 1 500\n", 1000).unwrap();
    h.scrape("", 2000).unwrap();
    assert_eq!(
        h.values(&[("__name__", "a")]),
        vec![(1000, "1".into()), (2000, "stale".into())]
    );

    let mut h = Harness::new("    track_timestamps_staleness: true\n");
    h.scrape("a 1 500\n", 1000).unwrap();
    h.scrape("", 2000).unwrap();
    assert_eq!(
        h.values(&[("__name__", "a")]),
        vec![(500, "1".into()), (2000, "stale".into())]
    );
}

#[test]
fn dropped_series_are_cached_as_dropped() {
    let mut h = Harness::new(
        "    metric_relabel_configs:\n      - source_labels: [__name__]\n        regex: go_.*\n        action: drop\n",
    );
    let st = h.scrape("go_x 1\ngo_y 1\nkeep 1\n", 1000).unwrap();
    assert_eq!((st.scraped, st.post_relabel), (3, 1));
    h.scrape("go_x 1\ngo_y 1\nkeep 1\n", 2000).unwrap();
    assert_eq!((h.p.cache().keys(), h.p.cache().series()), (3, 1));
    assert_eq!(h.s.new_series_calls(), 1 + 5);
}

#[test]
fn missing_name_after_relabel_fails() {
    let mut h = Harness::new(
        "    metric_relabel_configs:\n      - regex: __name__\n        action: labeldrop\n",
    );
    let err = h.scrape("a 1\n", 1000).unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing metric name (__name__ label) in series a"
    );
}

#[test]
fn end_of_run_marks_last_series_and_synthetic_ones() {
    let mut h = Harness::new("");
    h.scrape("a 1\n", 1000).unwrap();
    let mut app = h.s.appender();
    h.p.end_of_run(&mut *app, 1500);
    app.commit().unwrap();
    drop(app);
    assert_eq!(
        h.values(&[("__name__", "a")]),
        vec![(1000, "1".into()), (1500, "stale".into())]
    );
    assert_eq!(h.up(), vec![(1000, "1".into()), (1500, "stale".into())]);
}

#[test]
fn openmetrics_exemplars_reach_the_appender() {
    let mut h = Harness::new("");
    h.p.append_scrape(
        &h.s,
        Ok((
            b"# TYPE c counter\nc_total 3 # {trace_id=\"abc\"} 1.5 2.0\n# EOF\n",
            Format::OpenMetrics,
        )),
        5000,
        Duration::ZERO,
    )
    .unwrap();
    let ex = h.s.exemplars();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].1, Labels::from_pairs([("trace_id", "abc")]));
    assert_eq!((ex[0].2, ex[0].3), (2000, 1.5));
}

#[test]
fn metadata_of_the_body_is_kept_per_family() {
    let mut h = Harness::new("");
    let body = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
                http_requests_total{code=\"200\"} 1\n# TYPE temp gauge\ntemp 3\n";
    h.scrape(body, 1000).unwrap();
    let mut got = Vec::new();
    crate::scrape::metadata::lock(h.p.metadata()).snapshot_into(&mut got);
    got.sort_by(|a, b| a.family.cmp(&b.family));
    use crate::scrape::parse::MetricType;
    let view: Vec<(&str, MetricType, &str)> =
        got.iter().map(|m| (&*m.family, m.kind, &*m.help)).collect();
    assert_eq!(
        view,
        vec![
            ("http_requests_total", MetricType::Counter, "Requests."),
            ("temp", MetricType::Gauge, ""),
        ]
    );
}

#[test]
fn first_scrape_waits_for_the_target_slot_as_prometheus() {
    let iv = Duration::from_secs(10);
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    // hash mod 10s = 3s: from t=1s wait 2s, from t=5s wait 8s, and exactly on the slot
    // (t=13s) a whole interval, never 0: Prometheus's offset is in (0, interval].
    let hash = 3_000_000_000 + 10_000_000_000 * 7;
    assert_eq!(scrape_offset(hash, iv, at(1000)), Duration::from_secs(2));
    assert_eq!(scrape_offset(hash, iv, at(5000)), Duration::from_secs(8));
    assert_eq!(scrape_offset(hash, iv, at(13_000)), iv);
    for now in [0, 1, 999, 123_456_789] {
        let d = scrape_offset(u64::MAX, iv, at(now));
        assert!(d > Duration::ZERO && d <= iv, "{d:?}");
        // Whenever the loop starts, the first scrape lands on the same phase.
        let first = at(now) + d;
        let phase = first.duration_since(UNIX_EPOCH).unwrap().as_nanos() % iv.as_nanos();
        assert_eq!(phase, u128::from(u64::MAX) % iv.as_nanos());
    }
}

#[test]
fn scrape_timestamps_snap_to_the_slot_within_two_milliseconds() {
    let iv = Duration::from_secs(10);
    let slot = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let ms = Duration::from_millis;
    assert_eq!(aligned_scrape_time(slot + ms(2), slot, iv), slot);
    assert_eq!(aligned_scrape_time(slot - ms(1), slot, iv), slot);
    assert_eq!(aligned_scrape_time(slot + ms(3), slot, iv), slot + ms(3));
    // Not for intervals of 200 ms or less, as in Prometheus.
    assert_eq!(
        aligned_scrape_time(slot + ms(1), slot, ms(200)),
        slot + ms(1)
    );
}

#[test]
fn the_nearest_slot_is_taken_on_either_side() {
    let iv = Duration::from_secs(10);
    let hash = 3_000_000_000; // slots at 3 s past every 10 s
    let slot = UNIX_EPOCH + Duration::from_secs(1_700_000_003);
    let ms = Duration::from_millis;
    for now in [
        slot,
        slot + ms(1),
        slot - ms(1),
        slot + ms(4_999),
        slot - ms(4_999),
    ] {
        assert_eq!(nearest_slot(hash, iv, now), slot, "{now:?}");
    }
    assert_eq!(nearest_slot(hash, iv, slot + ms(5_001)), slot + iv);
    assert_eq!(nearest_slot(hash, iv, slot - ms(5_001)), slot - iv);
    // Stamped with the slot within 2 ms either side...
    assert_eq!(scrape_time(hash, iv, slot - ms(1), Some(slot - iv)), slot);
    assert_eq!(scrape_time(hash, iv, slot + ms(2), None), slot);
    assert_eq!(scrape_time(hash, iv, slot + ms(3), None), slot + ms(3));
    // ... unless the last scrape already had it: the one before came 9.999 s late, just
    // before this slot, and was stamped with it; this one, on time, is stamped when it starts.
    assert_eq!(
        scrape_time(hash, iv, slot + ms(1), Some(slot)),
        slot + ms(1)
    );
}

/// The loop's schedule on tokio's paused clock, which makes it exact: every scrape is stamped
/// with its slot, the first one waits for the target's slot, a first wake-up that comes late
/// does not shift the later scrapes, and a loop started again mid-interval (a config moved to
/// another agent) continues on the same slots.
#[tokio::test(start_paused = true)]
async fn the_loop_stamps_every_scrape_with_its_slot_across_restarts() {
    let cfg = config("    scrape_interval: 10s\n    scrape_timeout: 5s\n");
    let target = crate::scrape::target::populate_labels(
        &Labels::empty(),
        &Labels::from_pairs([("__address__", "h:1")]),
        &cfg,
        false,
    )
    .expect("valid target")
    .expect("not dropped");
    let (hash, iv) = (target.scrape_hash(), Duration::from_secs(10));
    let target = Arc::new(target);
    let client = HttpClient::new(&Default::default(), &scrape_options()).expect("client");
    let storage = MemoryStorage::new();
    let epoch = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    let clock = Clock::following_tokio(epoch);
    let start = || {
        let lp = ScrapeLoop::new(
            cfg.clone(),
            target.clone(),
            client.clone(),
            Arc::new(storage.clone()),
            clock,
        );
        // Every scrape fails without a request: only the schedule is under test.
        lock_status(&lp.status).forced_error = Some("down".into());
        lp.spawn()
    };
    let ms = Duration::from_millis;
    let first = epoch + scrape_offset(hash, iv, epoch);

    let h = start();
    tokio::task::yield_now().await;
    // The first wake-up comes 5 ms late (a busy machine): that scrape is stamped when it
    // started, the next ones with their slots again.
    tokio::time::advance(first.duration_since(epoch).unwrap() + ms(5)).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    h.stop(false).await;
    let stopped = clock.now();
    // Started again 3.3 s later: the next slot, not at once.
    tokio::time::sleep(ms(3_300)).await;
    let restarted = clock.now();
    let h = start();
    tokio::time::sleep(Duration::from_secs(25)).await;
    h.stop(false).await;
    let end = clock.now();

    let slots = |from: SystemTime, to: SystemTime| {
        let mut out = Vec::new();
        let mut s = from + scrape_offset(hash, iv, from);
        while s < to {
            out.push(s);
            s += iv;
        }
        out
    };
    let mut want: Vec<SystemTime> = slots(epoch, stopped);
    want[0] += ms(5);
    want.extend(slots(restarted, end));
    let want: Vec<i64> = want.into_iter().map(crate::clock::unix_millis).collect();
    let up = series(&[("__name__", "up")]);
    let got: Vec<i64> = storage.samples_of(&up).iter().map(|(t, _)| *t).collect();
    assert_eq!(got, want, "first slot {first:?}");
    assert!(want.len() >= 5, "{want:?}");
}

mod model {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// One scrape: `None`: the fetch fails; otherwise each of 6 series is absent, present, or
    /// present with an explicit timestamp (not tracked for staleness), in order, and with
    /// `Some(j)` the body fails to parse just before series `j` (6: at the end).
    type Step = Option<(Vec<u8>, Option<usize>)>;

    fn scrapes() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(
            proptest::option::weighted(
                0.8,
                (
                    proptest::collection::vec(0u8..3, 6),
                    proptest::option::weighted(0.3, 0usize..7),
                ),
            ),
            1..12,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Staleness markers match Prometheus's model: at every scrape, the series tracked in
        /// the previous one and not now, where a series is tracked when a sample of it
        /// without a timestamp was appended (before the error, in a failing body).
        #[test]
        fn staleness_matches_the_model(plan in scrapes()) {
            let mut h = Harness::new("");
            let mut prev: BTreeSet<usize> = BTreeSet::new();
            for (k, step) in plan.iter().enumerate() {
                let t = 10_000 * (k as i64 + 1);
                let want: BTreeSet<usize> = match step {
                    None => {
                        let res = h.p.append_scrape(
                            &h.s,
                            Err(ScrapeError::Forced("down".into())),
                            t,
                            Duration::ZERO,
                        );
                        prop_assert!(res.is_err());
                        std::mem::take(&mut prev)
                    }
                    Some((states, fail_at)) => {
                        let mut body = String::new();
                        for (i, st) in states.iter().enumerate() {
                            if *fail_at == Some(i) {
                                body.push_str("bad{ 1\n");
                            }
                            match st {
                                1 => body.push_str(&format!("s{i} {k}\n")),
                                2 => body.push_str(&format!("s{i} {k} {}\n", t - 1)),
                                _ => {}
                            }
                        }
                        if *fail_at == Some(6) {
                            body.push_str("bad{ 1\n");
                        }
                        let res = h.scrape(&body, t);
                        prop_assert_eq!(res.is_err(), fail_at.is_some());
                        let end = fail_at.unwrap_or(6);
                        let tracked: BTreeSet<usize> =
                            (0..end).filter(|&i| states[i] == 1).collect();
                        let want = prev.difference(&tracked).copied().collect();
                        prev = tracked;
                        want
                    }
                };
                let got: BTreeSet<usize> = (0..6)
                    .filter(|i| {
                        h.s.samples_of(&series(&[("__name__", &format!("s{i}"))]))
                            .iter()
                            .any(|&(ts, v)| ts == t && is_stale_nan(v))
                    })
                    .collect();
                prop_assert_eq!(got, want, "scrape {} of {:?}", k, plan);
            }
        }
    }
}

#[test]
fn the_body_pool_keeps_a_bounded_number_of_buffers_and_hands_out_the_best_fit() {
    let pool = BodyPool::new();
    let b = pool.take(1000);
    assert!(b.capacity() >= 1000 && b.is_empty());
    pool.give(b);
    // Empty buffers are not kept; too large ones are freed.
    pool.give(Vec::new());
    pool.give(Vec::with_capacity(BodyPool::MAX_KEPT_BYTES + 1));
    assert_eq!(pool.kept().len(), 1);
    for n in 1..=BodyPool::KEPT + 4 {
        pool.give(Vec::with_capacity(n * 100));
    }
    let kept = pool.kept();
    assert_eq!(kept.len(), BodyPool::KEPT);
    // Full: the largest ones stay.
    assert!(kept.iter().all(|&c| c >= 500), "{kept:?}");
    // The smallest buffer that fits, handed out cleared.
    let mut b = pool.take(950);
    assert!((1000..1100).contains(&b.capacity()), "{}", b.capacity());
    b.extend_from_slice(b"abc");
    pool.give(b);
    let b = pool.take(1000);
    assert!(b.is_empty());
    // Nothing fits: the largest kept one, grown to the hint.
    let b = pool.take(1 << 20);
    assert!(b.capacity() >= 1 << 20);
    assert_eq!(pool.kept().len(), BodyPool::KEPT - 2);
}

/// A target serving `text`, recording the client port of every request.
async fn recording_target(
    text: String,
) -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<u16>>>,
    tokio::task::JoinHandle<()>,
) {
    use axum::extract::ConnectInfo;
    let ports = Arc::new(Mutex::new(Vec::new()));
    let seen = ports.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| {
                seen.lock().unwrap().push(peer.port());
                let text = text.clone();
                async move { text }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    (addr, ports, server)
}

fn loop_for(addr: impl ToString, storage: &MemoryStorage) -> ScrapeLoop {
    let cfg = config("");
    let target = crate::scrape::target::populate_labels(
        &Labels::empty(),
        &Labels::from_pairs([("__address__", addr.to_string().as_str())]),
        &cfg,
        false,
    )
    .expect("valid target")
    .expect("not dropped");
    let client = HttpClient::new(&Default::default(), &scrape_options()).expect("client");
    ScrapeLoop::new(
        cfg,
        Arc::new(target),
        client,
        Arc::new(storage.clone()),
        Clock::system(),
    )
}

/// A loop holds no body buffer between scrapes: it takes one from the pool for the fetch and
/// gives it back after the append, sized from the previous body. The connection is kept alive.
#[tokio::test]
async fn a_loop_gives_its_body_buffer_back_after_each_scrape() {
    let text: String = (0..2000).map(|i| format!("m{{i=\"{i}\"}} 1\n")).collect();
    let len = text.len();
    let (addr, ports, server) = recording_target(text).await;
    let storage = MemoryStorage::new();
    let mut lp = loop_for(addr, &storage);
    for _ in 0..3 {
        lp.scrape_and_report(Clock::system().now()).await;
        let st = lp.status.lock().unwrap().clone();
        assert_eq!(st.last_error, None);
        assert_eq!(st.health, Health::Up);
        assert_eq!(lp.body.capacity(), 0, "the loop kept its body buffer");
        assert_eq!(lp.last_body_len, len);
    }
    let addr = addr.to_string();
    let m = Labels::from_pairs([
        ("__name__", "m"),
        ("i", "1999"),
        ("instance", addr.as_str()),
        ("job", "j"),
    ]);
    assert_eq!(storage.samples_of(&m).len(), 3);
    let mut ports = ports.lock().unwrap().clone();
    ports.dedup();
    assert!(ports.len() < 3, "no connection reused: {ports:?}");
    server.abort();
}

/// A target URL the HTTP client cannot parse (Prometheus keeps such a target and fails its
/// scrapes) is parsed once, when the loop is made, and every scrape reports that error.
#[tokio::test]
async fn a_url_the_client_cannot_parse_fails_every_scrape_with_the_reason() {
    let storage = MemoryStorage::new();
    let mut lp = loop_for("exa mple:9100", &storage);
    assert_eq!(lp.target.url, "http://exa%20mple:9100/metrics");
    assert!(lp.request.is_err(), "parsed when the loop was made");
    for _ in 0..2 {
        lp.scrape_and_report(Clock::system().now()).await;
        let st = lp.status.lock().unwrap().clone();
        assert_eq!(st.health, Health::Down);
        assert_eq!(
            st.last_error.as_deref(),
            Some(
                "Get \"http://exa%20mple:9100/metrics\": builder error: invalid international \
                 domain name"
            )
        );
    }
    let up = Labels::from_pairs([
        ("__name__", "up"),
        ("instance", "exa mple:9100"),
        ("job", "j"),
    ]);
    let ups: Vec<f64> = storage.samples_of(&up).iter().map(|s| s.1).collect();
    assert_eq!(ups, [0.0, 0.0]);
}

mod known_series {
    use proptest::prelude::*;

    use super::*;

    /// Lines whose series texts are prefixes of one another's lines, in both orders, with
    /// whitespace, label order, escapes, a relabelled and a dropped series, and errors after a
    /// series text (value, timestamp, a second `}`).
    const LINES: &[&str] = &[
        "m 1",
        "m_total 2",
        "m {a=\"1\"} 3",
        "m{a=\"1\"} 4",
        "m{a=\"1\",} 5",
        "m{ a = \"1\" } 6",
        "m{a=\"1\"}x 7",
        "m{a=\"1\"} 8 1700",
        "m  9",
        "m\t10",
        "m{a=\"x\\\"y\"} 11",
        "m{b=\"2\",a=\"1\"} 12",
        "m{a=\"1\"}13",
        "m",
        "n{a=\"1\"} 14",
        "n{a=\"1\"}} 15",
        "m{a=\"1\"} 1 2",
        "dropme{a=\"1\"} 16",
        "renamed{a=\"1\"} 17",
        "m{a=\"1\"} 18 -5",
        "m{a=\"1\",b=\"2\"} 19",
        "m{job=\"x\"} 20",
    ];

    const RELABEL: &str = "    metric_relabel_configs:\n      - source_labels: [__name__]\n        regex: dropme\n        action: drop\n      - source_labels: [__name__]\n        regex: renamed\n        target_label: __name__\n        replacement: other\n";

    fn run(h: &mut Harness, bodies: &[Vec<usize>]) -> Vec<String> {
        let mut out = Vec::new();
        for (k, lines) in bodies.iter().enumerate() {
            let body: String = lines.iter().map(|&i| format!("{}\n", LINES[i])).collect();
            let res = h.scrape(&body, 1000 * (k as i64 + 1));
            out.push(format!("{res:?}"));
        }
        for (l, t, v) in h.s.samples() {
            out.push(format!("{l:?} {t} {:x}", v.to_bits()));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Scrapes that take the known-series shortcut store and report exactly what the
        /// full parse does, whatever the order of the lines from one scrape to the next.
        #[test]
        fn the_known_series_shortcut_changes_nothing(
            bodies in proptest::collection::vec(
                proptest::collection::vec(0..LINES.len(), 0..12),
                1..6,
            )
        ) {
            let mut fast = Harness::new(RELABEL);
            let mut full = Harness::new(RELABEL);
            full.p.known_shortcut = false;
            prop_assert_eq!(run(&mut fast, &bodies), run(&mut full, &bodies));
        }
    }
}

/// The client options of a scrape job (the scrape transport).
fn scrape_options() -> crate::httpclient::Options {
    crate::httpclient::Options {
        scrape: true,
        ..Default::default()
    }
}
