use std::path::Path;

use agent::labels::{Labels, SeriesRef};
use agent::wal::{Wal, WalOptions};

use super::*;
use crate::args::{OutputFormat, WalInspectArgs};

/// 2024-01-02T03:04:05.678Z
const T0: i64 = 1_704_164_645_678;

/// A small WAL with fixed labels and timestamps in `<dir>/wal`: two node targets, one
/// prometheus target, a series without job/instance, a sample for an unknown ref and a
/// re-created series (a hash collision).
fn write_wal(dir: &Path) {
    let (mut wal, _) = Wal::open(&dir.join("wal"), WalOptions::default()).expect("open WAL");
    let l = |pairs: &[(&str, &str)]| Labels::from_pairs(pairs.iter().copied());
    let a = [("job", "node"), ("instance", "10.0.0.1:9100")];
    let b = [("job", "node"), ("instance", "10.0.0.2:9100")];
    let series = [
        (SeriesRef(1), l(&[("__name__", "up"), a[0], a[1]])),
        (
            SeriesRef(2),
            l(&[
                ("__name__", "node_cpu_seconds_total"),
                ("cpu", "0"),
                a[0],
                a[1],
            ]),
        ),
        (
            SeriesRef(3),
            l(&[
                ("__name__", "node_cpu_seconds_total"),
                ("cpu", "1"),
                a[0],
                a[1],
            ]),
        ),
        (SeriesRef(4), l(&[("__name__", "node_load1"), a[0], a[1]])),
        (SeriesRef(5), l(&[("__name__", "up"), b[0], b[1]])),
        (SeriesRef(6), l(&[("__name__", "node_load1"), b[0], b[1]])),
        (
            SeriesRef(7),
            l(&[
                ("__name__", "up"),
                ("job", "prometheus"),
                ("instance", "localhost:9090"),
            ]),
        ),
        (SeriesRef(8), l(&[("__name__", "orphan_metric")])),
    ];
    wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
        .expect("series");
    for scrape in 0..3i64 {
        let t = T0 + scrape * 15_000;
        let samples: Vec<(SeriesRef, i64, f64)> = (1..=7).map(|r| (SeriesRef(r), t, 1.0)).collect();
        wal.append_samples(&samples).expect("samples");
    }
    // A sample whose series record is missing, and a late one half a second later.
    wal.append_samples(&[
        (SeriesRef(99), T0 - 1_000, 0.0),
        (SeriesRef(1), T0 + 30_500, 1.0),
    ])
    .expect("samples");
    // `up` of the first target re-created under a new ref.
    let again = l(&[("__name__", "up"), a[0], a[1]]);
    wal.append_series([(SeriesRef(9), again.as_view())])
        .expect("series");
    wal.append_samples(&[(SeriesRef(9), T0 + 45_000, 1.0)])
        .expect("samples");
    wal.commit().expect("commit");
}

fn redact(s: &str, dir: &Path) -> String {
    s.replace(&dir.display().to_string(), "[DIR]")
}

fn inspect_args(dir: &Path) -> WalInspectArgs {
    WalInspectArgs {
        dir: dir.to_owned(),
        selector: None,
        job: None,
        instance: None,
        output: OutputFormat::Table,
    }
}

fn run_to_string(args: &WalInspectArgs) -> String {
    let mut out = Vec::new();
    let code = run(args, false, &mut out, &mut Vec::new()).expect("wal inspect");
    assert_eq!(code, ExitCode::SUCCESS);
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn report_table() {
    let d = tempfile::tempdir().expect("tempdir");
    write_wal(d.path());
    let out = run_to_string(&inspect_args(d.path()));
    insta::assert_snapshot!("report_table", redact(&out, d.path()));
}

#[test]
fn report_filtered_by_target_and_selector() {
    let d = tempfile::tempdir().expect("tempdir");
    write_wal(d.path());
    let mut args = inspect_args(d.path());
    args.job = Some("node".into());
    args.instance = Some("10.0.0.1:9100".into());
    insta::assert_snapshot!("report_target", redact(&run_to_string(&args), d.path()));

    let mut args = inspect_args(d.path());
    args.selector = Some(r#"{__name__=~"node_.*", instance="10.0.0.1:9100"}"#.into());
    insta::assert_snapshot!("report_selector", redact(&run_to_string(&args), d.path()));
}

#[test]
fn report_json() {
    let d = tempfile::tempdir().expect("tempdir");
    write_wal(d.path());
    let mut args = inspect_args(d.path());
    args.output = OutputFormat::Json;
    let out = run_to_string(&args);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["total_series"], 9);
    insta::assert_snapshot!("report_json", redact(&out, d.path()));
}

#[test]
fn report_lists_top_20_metric_names_and_counts_the_rest() {
    let d = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(d.path(), WalOptions::default()).expect("open");
    let series: Vec<(SeriesRef, Labels)> = (0..25u64)
        .map(|i| {
            let name = format!("metric_{i:02}");
            (
                SeriesRef(i + 1),
                Labels::from_pairs([("__name__", name.as_str())]),
            )
        })
        .collect();
    wal.append_series(series.iter().map(|(r, l)| (*r, l.as_view())))
        .expect("series");
    wal.commit().expect("commit");
    drop(wal);
    let out = run_to_string(&inspect_args(d.path()));
    assert!(out.contains("metric_19"), "{out}");
    assert!(!out.contains("metric_20"), "{out}");
    assert!(out.contains("... and 5 more metric names"), "{out}");
}

#[test]
fn errors_name_the_path_and_exit_2() {
    let d = tempfile::tempdir().expect("tempdir");
    let err = run(
        &inspect_args(d.path()),
        false,
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .expect_err("not a WAL");
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().contains(&d.path().display().to_string()),
        "{err}"
    );
    let missing = d.path().join("missing");
    let err = run(
        &inspect_args(&missing),
        false,
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .expect_err("missing");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("missing does not exist"), "{err}");
    let mut args = inspect_args(d.path());
    args.selector = Some("{job=".into());
    let err = run(&args, false, &mut Vec::new(), &mut Vec::new()).expect_err("bad selector");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("--selector"), "{err}");
}

fn legacy(f: impl FnOnce(&mut Vec<u8>) -> Result<ExitCode, Error>) -> (ExitCode, String) {
    let mut out = Vec::new();
    let code = f(&mut out).expect("legacy command");
    (code, String::from_utf8(out).expect("utf-8"))
}

#[test]
fn legacy_wal_stats_format() {
    let d = tempfile::tempdir().expect("tempdir");
    write_wal(d.path());
    let (code, out) = legacy(|o| run_legacy_wal_stats(d.path(), o));
    assert_eq!(code, ExitCode::SUCCESS);
    insta::assert_snapshot!("legacy_wal_stats", out);
}

#[test]
fn legacy_target_stats_format() {
    let d = tempfile::tempdir().expect("tempdir");
    write_wal(d.path());
    let (code, out) = legacy(|o| run_legacy_target_stats(d.path(), "node", "10.0.0.1:9100", o));
    assert_eq!(code, ExitCode::SUCCESS);
    insta::assert_snapshot!("legacy_target_stats", out);
}

#[test]
fn legacy_sample_stats_format() {
    let d = tempfile::tempdir().expect("tempdir");
    write_wal(d.path());
    let (code, out) = legacy(|o| run_legacy_sample_stats(d.path(), r#"{job="node"}"#, o));
    assert_eq!(code, ExitCode::SUCCESS);
    insta::assert_snapshot!("legacy_sample_stats", out);
}

#[test]
fn legacy_errors_go_to_stdout_with_exit_1() {
    let d = tempfile::tempdir().expect("tempdir");
    let missing = d.path().join("nope");
    let want = format!("{} does not exist\n", missing.display());
    type Legacy<'a> = &'a dyn Fn(&mut Vec<u8>) -> Result<ExitCode, Error>;
    let runs: [Legacy<'_>; 3] = [
        &|o| run_legacy_wal_stats(&missing, o),
        &|o| run_legacy_target_stats(&missing, "a", "b", o),
        &|o| run_legacy_sample_stats(&missing, "{", o),
    ];
    for f in runs {
        let (code, out) = legacy(f);
        assert_eq!(code, ExitCode::from(1));
        assert_eq!(out, want);
    }
    let (code, out) = legacy(|o| run_legacy_wal_stats(d.path(), o));
    assert_eq!(code, ExitCode::from(1));
    assert!(out.starts_with("failed to get WAL stats: "), "{out}");
    write_wal(d.path());
    let (code, out) = legacy(|o| run_legacy_sample_stats(d.path(), "{job=", o));
    assert_eq!(code, ExitCode::from(1));
    assert!(out.starts_with("failed to get sample stats: "), "{out}");
}

#[test]
fn legacy_wal_stats_of_an_empty_wal_prints_the_go_sentinels() {
    let d = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(d.path(), WalOptions::default()).expect("open");
    drop(wal);
    let st = inspect::stats(d.path(), &StatsOptions::default()).expect("stats");
    let out = render_legacy_wal_stats(&st);
    assert!(
        out.starts_with(
            "Oldest Sample:      292278994-08-17 07:12:55.807 +0000 UTC\n\
             Newest Sample:      1970-01-01 00:00:00 +0000 UTC\n"
        ),
        "{out}"
    );
    assert!(out.contains("Checkpoint Segment: 0\n"), "{out}");
    assert!(out.ends_with(
        "+-----+----------+--------+---------+\n\
         | JOB | INSTANCE | SERIES | SAMPLES |\n\
         +-----+----------+--------+---------+\n\
         +-----+----------+--------+---------+\n"
    ));
}

#[test]
fn checkpoints_are_reported() {
    let d = tempfile::tempdir().expect("tempdir");
    let opts = WalOptions::default();
    let up = Labels::from_pairs([("__name__", "up"), ("job", "j"), ("instance", "i")]);
    // Each open starts a new segment; four of them leave something to checkpoint.
    for round in 0..4i64 {
        let (mut wal, _) = Wal::open(d.path(), opts.clone()).expect("open");
        if round == 0 {
            wal.append_series([(SeriesRef(1), up.as_view())])
                .expect("series");
        }
        wal.append_samples(&[(SeriesRef(1), T0 + round * 1000, 1.0)])
            .expect("samples");
        wal.commit().expect("commit");
        if round == 3 {
            let cp = wal.truncate(T0, |_| |_| true).expect("truncate");
            assert!(cp.is_some(), "a checkpoint was written");
        }
    }
    let st = inspect::stats(d.path(), &StatsOptions::default()).expect("stats");
    let cp = st.checkpoint_segment.expect("checkpoint");
    let report = render_report(&st, &View::default());
    assert!(
        report.contains(&format!("Checkpoint:      checkpoint.{cp:08}\n")),
        "{report}"
    );
    let legacy = render_legacy_wal_stats(&st);
    assert!(
        legacy.contains(&format!("Checkpoint Segment: {cp}\n")),
        "{legacy}"
    );
    assert_eq!(st.total_series, 1, "the series survives in the checkpoint");
}

#[test]
fn go_time_strings() {
    assert_eq!(go_time_string(0), "1970-01-01 00:00:00 +0000 UTC");
    assert_eq!(go_time_string(T0), "2024-01-02 03:04:05.678 +0000 UTC");
    assert_eq!(go_time_string(T0 - 178), "2024-01-02 03:04:05.5 +0000 UTC");
    assert_eq!(go_time_string(T0 - 668), "2024-01-02 03:04:05.01 +0000 UTC");
    assert_eq!(go_time_string(T0 - 678), "2024-01-02 03:04:05 +0000 UTC");
    assert_eq!(go_time_string(-1), "1969-12-31 23:59:59.999 +0000 UTC");
    assert_eq!(
        go_time_string(i64::MAX),
        "292278994-08-17 07:12:55.807 +0000 UTC"
    );
    // Year 1 BC is Go's year 0; earlier years are negative and padded to four digits.
    assert_eq!(
        go_time_string(-62_167_219_200_000),
        "0000-01-01 00:00:00 +0000 UTC"
    );
    assert_eq!(
        go_time_string(-62_198_755_200_000),
        "-0001-01-01 00:00:00 +0000 UTC"
    );
}

#[test]
fn tablewriter_alignment() {
    let rows = vec![
        vec!["a".to_owned(), "1,234".to_owned(), "x1".to_owned()],
        vec!["".to_owned(), "-5.25".to_owned(), "12".to_owned()],
    ];
    assert_eq!(
        tablewriter(&["Name", "Value", "ab"], &rows),
        "+------+-------+----+\n\
         | NAME | VALUE | AB |\n\
         +------+-------+----+\n\
         | a    | 1,234 | x1 |\n\
         |      | -5.25 | 12 |\n\
         +------+-------+----+\n"
    );
    // Header centring: the smaller half of an odd gap goes left.
    let rows = vec![vec!["abcdefgh".to_owned()]];
    assert_eq!(
        tablewriter(&["job"], &rows).lines().nth(1),
        Some("|   JOB    |")
    );
    for yes in ["0", "-12", "1.5", "12%", "1,000,000", "123456"] {
        assert!(is_go_decimal(yes), "{yes}");
    }
    for no in ["", "1,00", "1.", "abc", "1,0000", ".5", "1e3", "--1"] {
        assert!(!is_go_decimal(no), "{no}");
    }
}

#[test]
fn human_durations() {
    assert_eq!(human_duration(0), "0s");
    assert_eq!(human_duration(250), "250ms");
    assert_eq!(human_duration(45_500), "45.5s");
    assert_eq!(human_duration(3_600_000), "1h0m0s");
    assert_eq!(human_duration(93_784_005), "1d2h3m4.005s");
}

#[test]
fn label_values_are_escaped_into_the_target_selector() {
    let s = target_selector(Some("a\"b\\c\nd"), None)
        .expect("parses")
        .expect("some");
    let l = Labels::from_pairs([("job", "a\"b\\c\nd")]);
    assert!(s.matches(l.as_view()));
    assert!(target_selector(None, None).expect("ok").is_none());
}
