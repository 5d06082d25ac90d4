//! config-sync in CI, the way people wire it: the pre-commit hooks of `.pre-commit-hooks.yaml`
//! (run with `pre-commit try-repo`, pre-commit installed from PyPI into a temporary venv), and
//! the GitHub Actions and GitLab CI examples of `examples/ci/` (shown in the README): their
//! commands are run here, as those CI systems run them, against a real agent.

use std::path::Path;
use std::process::{Command, Output};

use serde_yaml::Value;

use crate::support::{bin, root, Agent};

const TOKEN: &str = "s3cret-ci-token";

fn config(job: &str) -> String {
    format!("scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:1']\n")
}

/// `PATH` with the directory of the agentctl under test first.
fn path_with_agentctl() -> std::ffi::OsString {
    let dir = bin().parent().unwrap().to_owned();
    let mut dirs = vec![dir];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git (scripts/deps: git)");
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
}

#[test]
fn pre_commit_hook_runs_config_check_on_the_files_given() {
    let tmp = tempfile::tempdir().unwrap();
    // pre-commit from PyPI, into a venv of this test only.
    let venv = tmp.path().join("venv");
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .expect("python3 -m venv (scripts/deps: python3-venv)");
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "pre-commit"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install pre-commit: {}",
        text(&out)
    );

    // A repository of configs, as a user has.
    let repo = tmp.path().join("configs-repo");
    std::fs::create_dir_all(repo.join("configs")).unwrap();
    std::fs::write(repo.join("configs/node.yml"), config("node")).unwrap();
    std::fs::write(
        repo.join("configs/bad.yml"),
        "scrape_configs:\n  - job_name: x\n    scrape_intervl: 1m\n",
    )
    .unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "configs"]);

    // The hook repository: this checkout's .pre-commit-hooks.yaml, committed (try-repo reads a
    // repository's committed files; the checkout may have it uncommitted while developing).
    let hooks = tmp.path().join("hooks-repo");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::copy(
        root().join(".pre-commit-hooks.yaml"),
        hooks.join(".pre-commit-hooks.yaml"),
    )
    .unwrap();
    git(&hooks, &["init", "-q"]);
    git(&hooks, &["add", "."]);
    git(&hooks, &["commit", "-q", "-m", "hooks"]);

    let try_repo = |files: &[&str]| {
        Command::new(venv.join("bin/pre-commit"))
            .arg("try-repo")
            .arg(&hooks)
            .arg("agentctl-config-check-system")
            .arg("--files")
            .args(files)
            .current_dir(&repo)
            .env("PATH", path_with_agentctl())
            .env("PRE_COMMIT_HOME", tmp.path().join("pre-commit-home"))
            .env_remove("GIT_DIR")
            .output()
            .unwrap()
    };
    let out = try_repo(&["configs/node.yml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("agentctl config check (agentctl on PATH)"));
    assert!(text(&out).contains("Passed"), "{}", text(&out));

    let out = try_repo(&["configs/node.yml", "configs/bad.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("Failed"), "{said}");
    assert!(
        said.contains("configs/bad.yml:3:5: ") && said.contains("scrape_intervl"),
        "the error names file:line:col and the key:\n{said}"
    );
}

/// Runs `script` as a CI job step: bash with `-e` (and pipefail, as GitHub Actions does), in
/// `dir`, with `env`.
fn step(script: &str, dir: &Path, env: &[(&str, String)]) -> Output {
    Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path_with_agentctl())
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap()
}

/// The stored config names.
fn stored(agent: &Agent) -> Vec<String> {
    let mut names: Vec<String> = agent.data("/agent/api/v1/configs")["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// The agent holds a, b (older content) and old; the checkout has a, b and c.
fn seed(agent: &Agent, checkout: &Path) {
    for name in stored(agent) {
        agent.req(
            "DELETE",
            &format!("/agent/api/v1/config/{name}"),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            "",
        );
    }
    for (name, job) in [("a", "a"), ("b", "b-before"), ("old", "old")] {
        let r = agent.req(
            "PUT",
            &format!("/agent/api/v1/config/{name}"),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            &config(job),
        );
        assert!(matches!(r.status, 200 | 201), "{}", r.body);
    }
    let configs = checkout.join("configs");
    let _ = std::fs::remove_dir_all(&configs);
    std::fs::create_dir_all(&configs).unwrap();
    for (name, job) in [("a", "a"), ("b", "b"), ("c", "c")] {
        std::fs::write(configs.join(format!("{name}.yml")), config(job)).unwrap();
    }
}

/// Checks a pipeline given as (job, steps): the merge-request job plans without writing, the
/// main-branch job applies, and an invalid file fails the merge-request job at its first step.
fn exercise(
    what: &str,
    check: &[String],
    sync: &[String],
    env: &[(&str, String)],
    agent: &Agent,
    checkout: &Path,
) {
    seed(agent, checkout);
    let mut plan = String::new();
    for s in check {
        let out = step(s, checkout, env);
        assert_eq!(out.status.code(), Some(0), "{what}: {s}\n{}", text(&out));
        plan.push_str(&text(&out));
    }
    assert!(
        plan.contains("~ b\n") && plan.contains("+ c\n") && plan.contains("- old\n"),
        "{what}: the plan is shown:\n{plan}"
    );
    assert!(plan.contains("Dry run: nothing was written."), "{plan}");
    assert_eq!(stored(agent), ["a", "b", "old"], "{what}: nothing written");

    for s in sync {
        let out = step(s, checkout, env);
        assert_eq!(out.status.code(), Some(0), "{what}: {s}\n{}", text(&out));
    }
    assert_eq!(stored(agent), ["a", "b", "c"], "{what}: applied");

    std::fs::write(
        checkout.join("configs/c.yml"),
        "scrape_configs:\n  - job_name: c\n    scrape_intervl: 1m\n",
    )
    .unwrap();
    let out = step(&check[0], checkout, env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: an invalid file fails the check"
    );
    assert!(text(&out).contains("configs/c.yml:3:5: "), "{}", text(&out));
}

fn yaml(rel: &str) -> (String, Value) {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    let v = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    (text, v)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_readmes_github_and_gitlab_pipelines_check_plan_and_apply() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("token"), TOKEN).unwrap();
    let agent = Agent::builder(tmp.path())
        .args(["--api.token-file", "token"])
        .start();
    let checkout = tmp.path().join("checkout");
    std::fs::create_dir_all(&checkout).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();

    // GitHub Actions: the run steps of each job except installing agentctl.
    let (gh_text, gh) = yaml("examples/ci/github-actions.yml");
    assert!(
        readme.contains(&gh_text),
        "README shows examples/ci/github-actions.yml as it is"
    );
    let steps = |job: &str| -> Vec<String> {
        gh["jobs"][job]["steps"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|s| s["name"].as_str() != Some("Install agentctl"))
            .filter_map(|s| s["run"].as_str().map(str::to_owned))
            .collect()
    };
    let env = [
        ("AGENTCTL_ADDR", agent.url()),
        ("AGENTCTL_TOKEN", TOKEN.to_owned()),
    ];
    assert_eq!(
        gh["jobs"]["check"]["if"],
        "github.event_name == 'pull_request'"
    );
    assert_eq!(gh["jobs"]["sync"]["if"], "github.event_name == 'push'");
    exercise(
        "GitHub Actions",
        &steps("check"),
        &steps("sync"),
        &env,
        &agent,
        &checkout,
    );

    // GitLab CI: each job's script (before_script installs agentctl).
    let (gl_text, gl) = yaml("examples/ci/gitlab-ci.yml");
    assert!(
        readme.contains(&gl_text),
        "README shows examples/ci/gitlab-ci.yml as it is"
    );
    let builds = tmp.path().join("builds");
    std::fs::create_dir_all(&builds).unwrap();
    let env = [
        ("AGENTCTL_ADDR", agent.url()),
        ("AGENTCTL_TOKEN", TOKEN.to_owned()),
        ("CI_BUILDS_DIR", builds.to_string_lossy().into_owned()),
    ];
    assert_eq!(gl["agent-configs:sync"]["retry"]["exit_codes"][0], 3);
    exercise(
        "GitLab CI",
        &strings(&gl["agent-configs:check"]["script"]),
        &strings(&gl["agent-configs:sync"]["script"]),
        &env,
        &agent,
        &checkout,
    );
}
