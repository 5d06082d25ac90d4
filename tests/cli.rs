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

/// The kubelet/cAdvisor job as the old agent's docs write it: `${1}` is a capture reference,
/// which `--expand-env` must leave alone (it used to become empty, turning the replacement into
/// `/api/v1/nodes//proxy/metrics` and `target_label: ${1}` into an error).
#[test]
fn expand_env_leaves_capture_references_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("cadvisor.yml");
    std::fs::write(
        &f,
        "scrape_configs:\n  - job_name: cadvisor\n    static_configs: [{targets: ['kubernetes.default.svc:443']}]\n    relabel_configs:\n      - source_labels: [__address__]\n        regex: (.+):443\n        target_label: __metrics_path__\n        replacement: /api/v1/nodes/${1}/proxy/metrics/cadvisor\n      - source_labels: [__address__]\n        regex: ([a-z]+).*\n        target_label: ${1}\n        replacement: ${AGENTCTL_TEST_UNSET:-yes}\n",
    )
    .unwrap();
    let out = agentctl(
        &["config", "check", "--expand-env", f.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bad = tmp.path().join("bad.yml");
    std::fs::write(&bad, "scrape_configs:\n  - job_name: ${JOB\n").unwrap();
    let out = agentctl(
        &["config", "check", "-e", bad.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad.yml:2: unable to substitute config with environment variables: missing closing brace"),
        "{}",
        stderr(&out)
    );
}

/// What Windows Notepad's "Unicode" and its siblings write: UTF-16 and UTF-32 with a byte-order
/// mark are converted, as the old agent's config encoder did; a UTF-8 BOM is skipped.
#[test]
fn utf16_and_utf32_files_with_a_bom_are_converted() {
    let text =
        "scrape_configs:\n  - job_name: \u{e9}t\u{e9}\n    static_configs: [{targets: ['a:1']}]\n";
    let tmp = tempfile::tempdir().unwrap();
    let utf16 = |be: bool| -> Vec<u8> {
        let mut out = if be {
            vec![0xfe, 0xff]
        } else {
            vec![0xff, 0xfe]
        };
        for u in text.encode_utf16() {
            out.extend(if be { u.to_be_bytes() } else { u.to_le_bytes() });
        }
        out
    };
    let utf32 = |be: bool| -> Vec<u8> {
        let mut out = if be {
            vec![0, 0, 0xfe, 0xff]
        } else {
            vec![0xff, 0xfe, 0, 0]
        };
        for c in text.chars() {
            let c = c as u32;
            out.extend(if be { c.to_be_bytes() } else { c.to_le_bytes() });
        }
        out
    };
    let mut utf8 = vec![0xef, 0xbb, 0xbf];
    utf8.extend_from_slice(text.as_bytes());
    for (name, bytes) in [
        ("utf16le", utf16(false)),
        ("utf16be", utf16(true)),
        ("utf32le", utf32(false)),
        ("utf32be", utf32(true)),
        ("utf8bom", utf8),
    ] {
        let f = tmp.path().join(format!("{name}.yml"));
        std::fs::write(&f, bytes).unwrap();
        let out = agentctl(&["config", "check", f.to_str().unwrap()], tmp.path());
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
    }
    // Neither UTF-8 nor a known byte-order mark: refused, naming the offset.
    let f = tmp.path().join("latin1.yml");
    std::fs::write(&f, b"scrape_configs:\n  - job_name: \xe9t\xe9\n").unwrap();
    let out = agentctl(&["config", "check", f.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not UTF-8 text"), "{}", stderr(&out));
    // A UTF-16 file cut in the middle of a character.
    let f = tmp.path().join("odd.yml");
    std::fs::write(&f, [0xff, 0xfe, b'a', 0, b'b']).unwrap();
    let out = agentctl(&["config", "check", f.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("UTF-16"), "{}", stderr(&out));
}

/// The blocks an old agent.yaml calls `prometheus`, `loki` and `tempo` are read under those
/// names, and warnings name the key the file used.
#[test]
fn old_block_names_are_named_as_written() {
    let f = fixture("config/valid/agent-old-block-names.yml");
    let out = agentctl(&["config", "check", f.to_str().unwrap()], &root());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: the `loki` block is ignored"),
        "{err}"
    );
    assert!(
        err.contains("warning: the `tempo` block is ignored"),
        "{err}"
    );
    assert!(
        !err.contains("`logs`") && !err.contains("`traces`"),
        "{err}"
    );
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
