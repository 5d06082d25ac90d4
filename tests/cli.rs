//! The command line: config check over the fixture corpus, the old tool's aliases, help text
//! snapshots, exit codes, and the committed completions.

use crate::support::{agentctl, fixture, root};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn valid_fixtures_pass_config_check() {
    let dir = fixture("config/valid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "the valid corpus is in fixtures/config/valid"
    );
    for f in &files {
        let out = agentctl(&["config", "check", f.to_str().unwrap()], &root());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            f.display(),
            stderr(&out)
        );
        assert!(stdout(&out).contains("valid"), "{}", stdout(&out));
    }
}

#[test]
fn scraping_service_doc_examples_pass_unchanged() {
    for f in [
        "scraping-service-instance.yml",
        "scraping-service-agent.yml",
    ] {
        let path = fixture(&format!("config/valid/{f}"));
        let out = agentctl(&["config", "check", path.to_str().unwrap()], &root());
        assert_eq!(out.status.code(), Some(0), "{f}: {}", stderr(&out));
    }
}

/// Every invalid fixture carries `# expect: TEXT`; the error printed must contain
/// `FILE:TEXT` when TEXT starts with a line number, otherwise TEXT.
#[test]
fn invalid_fixtures_give_their_expected_error() {
    let dir = fixture("config/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 20);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", f.display()));
        let rel = format!(
            "fixtures/config/invalid/{}",
            f.file_name().unwrap().to_str().unwrap()
        );
        let out = agentctl(&["config", "check", &rel], &root());
        assert_eq!(
            out.status.code(),
            Some(1),
            "{rel} should be invalid: {}",
            stdout(&out)
        );
        let err = stderr(&out);
        let want = if expect.starts_with(|c: char| c.is_ascii_digit()) {
            format!("{rel}:{expect}")
        } else {
            expect.to_owned()
        };
        assert!(err.contains(&want), "{rel}: expected {want:?} in {err:?}");
        assert!(!err.contains("panicked"), "{rel}: {err}");
    }
}

#[test]
fn misspelled_key_names_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.yml");
    std::fs::write(
        &f,
        "scrape_configs:\n  - job_name: x\n    scrape_intervl: 1m\n",
    )
    .unwrap();
    let out = agentctl(&["config", "check", f.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("bad.yml:3:5:"), "{err}");
    assert!(err.contains("scrape_intervl"), "{err}");
}

#[test]
fn every_file_is_reported_and_exit_codes_are_documented() {
    let good = fixture("config/valid/node-exporter.yml");
    let bad1 = fixture("config/invalid/duplicate-job.yml");
    let bad2 = fixture("config/invalid/wal-times.yml");
    let out = agentctl(
        &[
            "config",
            "check",
            good.to_str().unwrap(),
            bad1.to_str().unwrap(),
            bad2.to_str().unwrap(),
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("duplicate-job.yml"), "{err}");
    assert!(err.contains("wal-times.yml"), "{err}");
    assert!(err.contains("2 of 3 files invalid"), "{err}");
    assert!(stdout(&out).contains("node-exporter.yml: valid instance config"));

    let missing = agentctl(&["config", "check", "/nonexistent/x.yml"], &root());
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("/nonexistent/x.yml: cannot read file"),
        "{}",
        stderr(&missing)
    );

    let usage = agentctl(&["config", "check"], &root());
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn kind_flag_overrides_detection() {
    let f = fixture("config/valid/node-exporter.yml");
    let out = agentctl(
        &["config", "check", "--kind", "agent", f.to_str().unwrap()],
        &root(),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an instance config is not an agent config"
    );
    assert!(
        stderr(&out).contains("unknown field \"scrape_configs\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn expand_env_substitutes_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("env.yml");
    std::fs::write(
        &f,
        "scrape_configs:\n  - job_name: a\n    scrape_interval: ${AGENTCTL_TEST_INTERVAL:-1.5h}\n",
    )
    .unwrap();
    let without = agentctl(&["config", "check", "-e", f.to_str().unwrap()], tmp.path());
    assert_eq!(
        without.status.code(),
        Some(1),
        "the default 1.5h is invalid"
    );
    let out = std::process::Command::new(crate::support::bin())
        .args(["config", "check", "--expand-env", f.to_str().unwrap()])
        .env("AGENTCTL_TEST_INTERVAL", "30s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn old_config_check_alias_prints_config_valid() {
    let good = fixture("config/valid/scraping-service-agent.yml");
    let out = agentctl(&["config-check", good.to_str().unwrap()], &root());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "config valid\n");
    let bad = fixture("config/invalid/agent-local-configs.yml");
    let out = agentctl(&["config-check", bad.to_str().unwrap()], &root());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("failed to validate config: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn go_style_single_dash_flags_are_accepted() {
    let f = fixture("config/invalid/wal-times.yml");
    // The flag is parsed (the config is read and rejected), not refused as unknown.
    let out = agentctl(
        &["agent", "run", &format!("-config.file={}", f.display())],
        &root(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown field \"min_wal_time\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_text_snapshots() {
    let cases: &[(&str, &[&str])] = &[
        ("root", &["--help"]),
        ("agent_run", &["agent", "run", "--help"]),
        ("config_check", &["config", "check", "--help"]),
        ("config_diff", &["config", "diff", "--help"]),
        ("config_sync", &["config-sync", "--help"]),
        ("config_list", &["config", "list", "--help"]),
        ("config_get", &["config", "get", "--help"]),
        ("config_put", &["config", "put", "--help"]),
        ("config_delete", &["config", "delete", "--help"]),
        ("ring_status", &["ring", "status", "--help"]),
        ("ring_forget", &["ring", "forget", "--help"]),
        ("wal_inspect", &["wal", "inspect", "--help"]),
        ("completions", &["completions", "--help"]),
    ];
    for (name, args) in cases {
        let out = agentctl(args, &root());
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        insta::assert_snapshot!(format!("help_{name}"), stdout(&out));
    }
}

#[test]
fn version_is_printed() {
    let out = agentctl(&["--version"], &root());
    assert_eq!(
        stdout(&out).trim(),
        format!("agentctl {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The generated completions and man page under `completions/` match the command tree.
/// Regenerate with `AGENTCTL_REGENERATE=1 cargo test --test integration completions`.
#[test]
fn completions_are_up_to_date() {
    let dir = root().join("completions");
    let regenerate = std::env::var_os("AGENTCTL_REGENERATE").is_some();
    for (name, want) in cli::generate::expected_files().unwrap() {
        let path = dir.join(name);
        if regenerate {
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read(&path).unwrap_or_default();
        assert!(
            have == want,
            "completions/{name} is stale: run `AGENTCTL_REGENERATE=1 cargo test --test integration completions`"
        );
    }
    // The binary prints the same bytes.
    let out = agentctl(&["completions", "bash"], &root());
    assert_eq!(
        out.stdout,
        std::fs::read(dir.join("agentctl.bash")).unwrap()
    );
}
