//! Progress bars of the client tools: drawn on a terminal (here a pseudo-terminal made by
//! util-linux's `script`), never in a pipe, a CI log or JSON output, and never changing what
//! the tools print.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use agent::labels::{Labels, SeriesRef};
use agent::wal::{Wal, WalOptions};

use crate::support::{agentctl, bin};

/// Runs `agentctl ARGS` in `dir` with standard output and error on one pseudo-terminal;
/// returns what the terminal received, with escape sequences and carriage returns kept.
fn on_a_terminal(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let mut line = shell_quote(&bin().to_string_lossy());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .current_dir(dir)
        // A terminal that indicatif draws on: not `dumb`.
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("run script(1) from util-linux");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The lines a person reads: escape sequences and bar frames removed.
fn visible_lines(typescript: &str) -> Vec<String> {
    let no_escapes = regex::Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]")
        .unwrap()
        .replace_all(typescript, "");
    no_escapes
        .split('\n')
        .flat_map(|l| l.split('\r'))
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('['))
        .map(str::to_owned)
        .collect()
}

fn bar_frames(typescript: &str, total: &str) -> usize {
    regex::Regex::new(&format!(
        r"\[[# ]{{30}}\] [0-9.]+ ?[A-Za-z]*/{}",
        regex::escape(total)
    ))
    .unwrap()
    .find_iter(typescript)
    .count()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_configs(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("c{i:02}.yml")),
            format!("scrape_configs:\n  - job_name: j{i}\n    static_configs:\n      - targets: ['127.0.0.1:1']\n"),
        )
        .unwrap();
    }
}

#[test]
fn config_sync_draws_progress_on_a_terminal_only_and_prints_the_same_lines() {
    let tmp = tempfile::tempdir().unwrap();
    write_configs(&tmp.path().join("configs"), 30);
    let kv = format!("embedded:{}", tmp.path().join("store").display());

    let (code, ts) = on_a_terminal(&["config-sync", "configs", "--kv", &kv], tmp.path());
    assert_eq!(code, Some(0), "{ts}");
    assert!(bar_frames(&ts, "30") >= 1, "no progress bar drawn:\n{ts:?}");
    let lines = visible_lines(&ts);
    for i in 0..30 {
        assert!(
            lines.contains(&format!("created c{i:02}")),
            "created c{i:02} missing or mixed with the bar:\n{lines:#?}"
        );
    }
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Applied: 30 created, 0 updated, 0 deleted.")
    );

    // Not a terminal (a pipe, as in CI): the same output and no bar.
    std::fs::remove_file(tmp.path().join("configs/c00.yml")).unwrap();
    let out = agentctl(&["config-sync", "configs", "--kv", &kv], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "- c00\nPlan: 0 to create, 0 to update, 1 to delete, 29 unchanged.\ndeleted c00\nApplied: 0 created, 0 updated, 1 deleted.\n"
    );

    // JSON on a terminal: no bar either.
    write_configs(&tmp.path().join("configs"), 1);
    let (code, ts) = on_a_terminal(
        &["config-sync", "configs", "--kv", &kv, "--output", "json"],
        tmp.path(),
    );
    assert_eq!(code, Some(0), "{ts}");
    assert_eq!(bar_frames(&ts, "1"), 0, "{ts:?}");
    assert!(!ts.contains('\x1b'), "{ts:?}");
    let json: serde_json::Value = serde_json::from_str(&ts.replace("\r\n", "\n")).expect(&ts);
    assert_eq!(json["summary"]["applied"], 1);
}

#[test]
fn config_check_over_many_files_draws_progress_on_a_terminal_only() {
    let tmp = tempfile::tempdir().unwrap();
    write_configs(tmp.path(), 25);
    std::fs::write(
        tmp.path().join("c07.yml"),
        "scrape_configs:\n  - job_nme: x\n",
    )
    .unwrap();
    let mut files: Vec<String> = (0..25).map(|i| format!("c{i:02}.yml")).collect();
    files.sort();
    let mut args = vec!["config", "check"];
    args.extend(files.iter().map(String::as_str));

    let (code, ts) = on_a_terminal(&args, tmp.path());
    assert_eq!(code, Some(1), "{ts}");
    assert!(bar_frames(&ts, "25") >= 1, "no progress bar drawn:\n{ts:?}");
    let lines = visible_lines(&ts);
    assert!(
        lines.contains(&"c00.yml: valid instance config".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("c07.yml:2:5: ") && l.contains("job_nme")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("1 of 25 files invalid")
    );

    let out = agentctl(&args, tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !stderr(&out).contains('\x1b') && !stderr(&out).contains("/25"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wal_inspect_draws_progress_on_a_terminal_only_and_never_with_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(&tmp.path().join("wal"), WalOptions::default()).expect("open");
    let up = Labels::from_pairs([("__name__", "up"), ("job", "node"), ("instance", "a:9100")]);
    wal.append_series([(SeriesRef(1), up.as_view())])
        .expect("series");
    // Enough records for progress to be reported along the way (every 4096 records).
    for i in 0..20_000 {
        wal.append_samples(&[(SeriesRef(1), 1_704_164_645_678 + i * 15_000, 1.0)])
            .expect("samples");
    }
    wal.commit().expect("commit");
    drop(wal);

    let (code, ts) = on_a_terminal(&["wal", "inspect", "."], tmp.path());
    assert_eq!(code, Some(0), "{ts}");
    let frames = regex::Regex::new(r"\[[# ]{30}\] [0-9.]+ [KMG]?i?B/[0-9.]+ [KMG]?i?B")
        .unwrap()
        .find_iter(&ts)
        .count();
    assert!(frames >= 1, "no progress bar drawn:\n{ts:?}");
    assert!(
        visible_lines(&ts).contains(&"Samples:         20000".to_owned()),
        "{ts:?}"
    );

    let (code, ts) = on_a_terminal(&["wal", "inspect", ".", "--output", "json"], tmp.path());
    assert_eq!(code, Some(0), "{ts}");
    assert!(!ts.contains('\x1b') && !ts.contains("iB/"), "{ts:?}");

    let out = agentctl(&["wal", "inspect", "."], tmp.path());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "");
}
