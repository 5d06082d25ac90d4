//! `config-sync`, `config diff` and `config list|get|put|delete` against a real
//! `agentctl agent run` on the embedded store, and against a real etcd with `--kv`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use crate::support::etcd::EtcdServer;
use crate::support::{bin, http_full, Agent};

/// `agentctl ARGS --addr <agent>`.
fn ctl_at(agent: &Agent, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let url = agent.url();
    all.extend(["--addr", &url]);
    ctl(&all)
}

/// The agent's `{name: hash}` of stored configs.
fn stored_hashes(agent: &Agent) -> serde_json::Value {
    agent.data("/agent/api/v1/configs?hashes=true")["hashes"].take()
}

/// (created, updated, deleted) from the agent's /metrics.
fn counters(agent: &Agent) -> (u64, u64, u64) {
    let get =
        |name: &str| agent.metric(&format!("agent_metrics_ha_configs_{name}_total"), "") as u64;
    (get("created"), get("updated"), get("deleted"))
}

fn ctl(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agentctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SECRET: &str = "s3cr3t-pa55word";

/// Config number `i`: its own job name (the store refuses duplicate job names across
/// configs) and a password that must never be printed.
fn config(i: usize) -> String {
    format!(
        "scrape_configs:\n  - job_name: job-{i}\n    scrape_interval: 30s\n    static_configs:\n      - targets: ['127.0.0.1:1']\nremote_write:\n  - url: http://127.0.0.1:2/push\n    basic_auth:\n      username: u\n      password: {SECRET}\n"
    )
}

/// 20 config files, one of them `a.b.yml`.
fn write_twenty(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut names = Vec::new();
    for i in 0..20 {
        let name = if i == 7 {
            "a.b".to_owned()
        } else {
            format!("c{i:02}")
        };
        std::fs::write(dir.join(format!("{name}.yml")), config(i)).unwrap();
        names.push(name);
    }
    names.sort();
    names
}

fn assert_no_secret(o: &Output) {
    assert!(
        !stdout(o).contains(SECRET) && !stderr(o).contains(SECRET),
        "a secret was printed:\n{}\n{}",
        stdout(o),
        stderr(o)
    );
}

#[test]
fn sync_plans_applies_and_second_run_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), &[]);
    let cfgs = tmp.path().join("configs");
    let names = write_twenty(&cfgs);
    let dir = cfgs.to_str().unwrap();

    // First run: 20 creates, named by stem.
    let o = ctl_at(&agent, &["config-sync", dir]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("Plan: 20 to create, 0 to update, 0 to delete, 0 unchanged."),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("+ a.b\n"), "{}", stdout(&o));
    assert!(stdout(&o).contains("created a.b\n"), "{}", stdout(&o));
    assert_no_secret(&o);
    let hashes = stored_hashes(&agent);
    let stored: Vec<&String> = hashes.as_object().unwrap().keys().collect();
    assert_eq!(stored, names.iter().collect::<Vec<_>>());
    assert_eq!(counters(&agent), (20, 0, 0));

    // Second run: nothing to do, zero writes.
    let o = ctl_at(&agent, &["config-sync", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "No changes. 20 configs up to date.\n");
    assert_eq!(counters(&agent), (20, 0, 0));
    let o = ctl_at(&agent, &["config", "diff", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    // One file changed: diff shows the line (exit 1), sync updates exactly that config.
    std::fs::write(
        cfgs.join("c03.yml"),
        config(3).replace("scrape_interval: 30s", "scrape_interval: 15s"),
    )
    .unwrap();
    let o = ctl_at(&agent, &["config", "diff", dir]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let d = stdout(&o);
    assert!(d.contains("~ c03\n"), "{d}");
    assert!(d.contains("-  scrape_interval: 30s\n"), "{d}");
    assert!(d.contains("+  scrape_interval: 15s\n"), "{d}");
    assert_no_secret(&o);
    let before = stored_hashes(&agent);
    let o = ctl_at(&agent, &["config-sync", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "~ c03\nPlan: 0 to create, 1 to update, 0 to delete, 19 unchanged.\nupdated c03\nApplied: 0 created, 1 updated, 0 deleted.\n"
    );
    assert_eq!(counters(&agent), (20, 1, 0));
    let after = stored_hashes(&agent);
    for n in &names {
        assert_eq!(before[n] == after[n], n != "c03", "{n}");
    }

    // A changed secret alone: planned as an update, the diff names it without showing it.
    std::fs::write(
        cfgs.join("c04.yml"),
        config(4).replace(SECRET, "other-pass"),
    )
    .unwrap();
    let o = ctl_at(&agent, &["config", "diff", dir]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("~ c04\n  only secret values differ (not shown)\n"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("other-pass"));
    std::fs::write(cfgs.join("c04.yml"), config(4)).unwrap();

    // A file removed: --no-prune keeps its config, a plain run deletes it.
    std::fs::remove_file(cfgs.join("c19.yml")).unwrap();
    let o = ctl_at(&agent, &["config-sync", "--no-prune", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "No changes. 19 configs up to date.\n1 stored configs not in the directory are kept (--no-prune).\n"
    );
    assert!(stored_hashes(&agent).get("c19").is_some());
    let o = ctl_at(&agent, &["config-sync", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("- c19\n"), "{}", stdout(&o));
    assert!(stored_hashes(&agent).get("c19").is_none());
    assert_eq!(counters(&agent), (20, 1, 1));

    // An empty and a missing directory: nothing deleted, exit 1, and why.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = ctl_at(&agent, &["config-sync", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "holds no .yml or .yaml files; refusing to sync, which would delete all 19 configs"
        ),
        "{}",
        stderr(&o)
    );
    let missing = tmp.path().join("missing");
    let o = ctl_at(&agent, &["config-sync", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert_eq!(stored_hashes(&agent).as_object().unwrap().len(), 19);

    // Deleting too many: the guard refuses (default 50%), a larger --max-delete allows.
    let few = tmp.path().join("few");
    std::fs::create_dir(&few).unwrap();
    for n in ["c00", "c01"] {
        std::fs::copy(cfgs.join(format!("{n}.yml")), few.join(format!("{n}.yml"))).unwrap();
    }
    let o = ctl_at(&agent, &["config-sync", few.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("the plan deletes 17 of 19 configs")
            && stderr(&o).contains("--max-delete 50% (= 9 of 19)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stored_hashes(&agent).as_object().unwrap().len(), 19);
    assert_eq!(counters(&agent), (20, 1, 1));

    // One invalid file among 20: exit 1, file and line named, the store untouched.
    std::fs::write(cfgs.join("c19.yml"), config(19)).unwrap();
    std::fs::write(
        cfgs.join("c05.yml"),
        config(5).replace("scrape_interval: 30s", "scrape_intervl: 30s"),
    )
    .unwrap();
    let before = stored_hashes(&agent);
    let o = ctl_at(&agent, &["config-sync", dir]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("1 invalid config file(s); nothing was written"),
        "{e}"
    );
    assert!(e.contains("c05.yml:3:"), "{e}");
    assert!(e.contains("scrape_intervl"), "{e}");
    assert_eq!(stored_hashes(&agent), before);
    assert_eq!(counters(&agent), (20, 1, 1));
}

#[test]
fn plan_output_snapshots_table_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), &[]);
    let cfgs = tmp.path().join("configs");
    write_twenty(&cfgs);
    let dir = cfgs.to_str().unwrap();
    assert_eq!(ctl_at(&agent, &["config-sync", dir]).status.code(), Some(0));
    // One create, one update, one delete.
    std::fs::write(cfgs.join("new.yml"), config(30)).unwrap();
    std::fs::write(cfgs.join("c01.yml"), config(1).replace("30s", "20s")).unwrap();
    std::fs::remove_file(cfgs.join("c02.yml")).unwrap();

    let o = ctl_at(&agent, &["config-sync", "--dry-run", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    insta::assert_snapshot!("config_sync_plan_table", stdout(&o));

    let o = ctl_at(
        &agent,
        &["config-sync", "--dry-run", "--output", "json", dir],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // Hashes and the agent's port vary; their presence is what matters here.
    for item in v["plan"].as_array_mut().unwrap() {
        for k in ["hash_before", "hash_after"] {
            if let Some(h) = item[k].as_str() {
                assert_eq!(h.len(), 32, "{h}");
                item[k] = "<md5>".into();
            }
        }
    }
    assert_eq!(v["summary"]["target"], agent.url());
    v["summary"]["target"] = "<agent>".into();
    insta::assert_snapshot!(
        "config_sync_plan_json",
        serde_json::to_string_pretty(&v).unwrap()
    );
    assert_eq!(counters(&agent), (20, 0, 0), "a dry run writes nothing");

    let o = ctl_at(&agent, &["config-sync", "--output", "json", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["summary"]["applied"], 3);
    assert_eq!(
        v["results"],
        serde_json::json!([
            {"name": "c01", "action": "update", "outcome": "ok"},
            {"name": "c02", "action": "delete", "outcome": "ok"},
            {"name": "new", "action": "create", "outcome": "ok"},
        ])
    );
    assert_eq!(counters(&agent), (21, 1, 1));
}

#[test]
fn a_change_behind_the_tools_back_is_a_conflict_and_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), &[]);
    let cfgs = tmp.path().join("configs");
    std::fs::create_dir(&cfgs).unwrap();
    for i in 0..4 {
        std::fs::write(cfgs.join(format!("c{i}.yml")), config(i)).unwrap();
    }
    assert_eq!(
        ctl_at(&agent, &["config-sync", cfgs.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    // Local edits: c0 and c1 updated, c2 removed (delete), c9 new (create).
    for i in [0, 1] {
        std::fs::write(
            cfgs.join(format!("c{i}.yml")),
            config(i).replace("30s", "10s"),
        )
        .unwrap();
    }
    std::fs::remove_file(cfgs.join("c2.yml")).unwrap();
    std::fs::write(cfgs.join("c9.yml"), config(9)).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = cli::args::TargetArgs {
        addr: agent.url(),
        kv: None,
        token_file: None,
        tls: Default::default(),
        kv_auth: Default::default(),
    };
    let results = rt.block_on(async {
        let local = cli::sync::load_dir(&cfgs, false).unwrap();
        let remote = std::sync::Arc::new(
            cli::sync::Remote::connect(&target, cli::sync::Access::Write, &mut std::io::sink())
                .await
                .unwrap(),
        );
        let plan = cli::sync::plan(&local, &remote.hashes().await.unwrap(), true);
        let actions: Vec<(&str, cli::sync::Action)> = plan
            .items
            .iter()
            .map(|i| (i.name.as_str(), i.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("c0", cli::sync::Action::Update),
                ("c1", cli::sync::Action::Update),
                ("c2", cli::sync::Action::Delete),
                ("c9", cli::sync::Action::Create),
            ]
        );
        // Someone else changes c0, c2 and creates c9 between plan and apply.
        let theirs = config(0).replace("30s", "45s");
        assert_eq!(agent.put_config("c0", &theirs).status, 200);
        assert_eq!(
            agent
                .put_config("c2", &config(2).replace("30s", "45s"))
                .status,
            200
        );
        assert_eq!(
            agent
                .put_config("c9", &config(9).replace("30s", "45s"))
                .status,
            201
        );
        cli::sync::apply(remote, &plan, |_, _, _| {}).await
    });
    let outcomes: Vec<(&str, cli::sync::Outcome)> = results
        .iter()
        .map(|r| (r.name.as_str(), r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("c0", cli::sync::Outcome::Conflict),
            ("c1", cli::sync::Outcome::Ok),
            ("c2", cli::sync::Outcome::Conflict),
            ("c9", cli::sync::Outcome::Conflict),
        ]
    );
    assert!(
        results[0].error.as_deref().unwrap_or("").contains("c0"),
        "{:?}",
        results[0].error
    );
    // Their versions survived.
    for name in ["c0", "c2", "c9"] {
        let r = http_full(
            "GET",
            agent.addr(),
            &format!("/agent/api/v1/configs/{name}"),
            &[],
            b"",
        )
        .unwrap();
        assert!(
            r.body.contains("scrape_interval: 45s"),
            "{name}: {}",
            r.body
        );
    }
    // What `config-sync` turns conflicting results into: exit 3, the configs named.
    let err = cli::sync::SyncError::Conflict {
        names: vec!["c0".into()],
        target: agent.url(),
    };
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("c0"));
}

#[test]
fn crud_commands_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), &[]);
    let file = tmp.path().join("x.yml");
    std::fs::write(&file, config(1)).unwrap();
    let f = file.to_str().unwrap();

    let o = ctl_at(&agent, &["config", "put", "team/a", f]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "created team/a\n"),
        "{}",
        stderr(&o)
    );
    let o = ctl_at(&agent, &["config", "put", "team/a", f]);
    assert_eq!(stdout(&o), "updated team/a\n");
    let o = ctl_at(&agent, &["config", "list"]);
    assert_eq!(stdout(&o), "team/a\n");
    let o = ctl_at(&agent, &["config", "list", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["configs"][0]["name"], "team/a");
    assert_eq!(v["configs"][0]["hash"].as_str().unwrap().len(), 32);
    let o = ctl_at(&agent, &["config", "get", "team/a"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).starts_with("name: team/a\n"), "{}", stdout(&o));
    assert!(stdout(&o).contains("password: <secret>"), "{}", stdout(&o));
    assert_no_secret(&o);

    // Invalid file: refused locally, exit 1.
    std::fs::write(&file, "scrape_configs: [").unwrap();
    let o = ctl_at(&agent, &["config", "put", "bad", f]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("x.yml:"), "{}", stderr(&o));

    let o = ctl_at(&agent, &["config", "delete", "team/a"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "deleted team/a\n")
    );
    let o = ctl_at(&agent, &["config", "get", "team/a"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("configuration team/a does not exist"),
        "{}",
        stderr(&o)
    );
    let o = ctl_at(&agent, &["config", "delete", "team/a"]);
    assert_eq!(o.status.code(), Some(1));

    // Unreachable agent: exit 2, the URL named.
    // Port 1 (tcpmux) on loopback: nothing listens there, connections are refused.
    let dead = "http://127.0.0.1:1".to_owned();
    let o = ctl(&["config", "list", "--addr", &dead]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&dead), "{}", stderr(&o));
    let cfgs = tmp.path().join("configs");
    write_twenty(&cfgs);
    let o = ctl(&["config-sync", cfgs.to_str().unwrap(), "--addr", &dead]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(&dead), "{}", stderr(&o));
    let o = ctl(&["config", "diff", cfgs.to_str().unwrap(), "--addr", &dead]);
    assert_eq!(o.status.code(), Some(2));

    // The embedded store directly (no agent holds its lock here).
    let kv = format!("embedded:{}", tmp.path().join("kv").display());
    let o = ctl(&["config-sync", cfgs.to_str().unwrap(), "--kv", &kv]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = ctl(&["config", "delete", "a.b", "--kv", &kv]);
    assert_eq!(stdout(&o), "deleted a.b\n", "{}", stderr(&o));
    let o = ctl(&["config", "list", "--kv", &kv]);
    assert_eq!(stdout(&o).lines().count(), 19);
    let o = ctl(&["config", "list", "--kv", "bogus:x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid KV store \"bogus:x\""),
        "{}",
        stderr(&o)
    );
}

/// Mistakes found before anything is written or created, with a message that says what to do:
/// two configs of a directory with one job name (the agent would take the first and refuse
/// the second), and a mistyped `--kv embedded:PATH` (reads find no store there instead of
/// creating an empty one). An empty directory against an empty store is no deletion: not
/// refused.
#[test]
fn duplicate_jobs_across_files_and_a_mistyped_embedded_store_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = tmp.path().join("configs");
    write_twenty(&cfgs);
    // c03.yml takes c01.yml's job.
    std::fs::write(cfgs.join("c03.yml"), config(1)).unwrap();
    let store = tmp.path().join("store");
    let kv = format!("embedded:{}", store.display());
    let o = ctl(&["config-sync", cfgs.to_str().unwrap(), "--kv", &kv]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("two configs have the job_name \"job-1\"")
            && stderr(&o).contains("c01.yml")
            && stderr(&o).contains("c03.yml")
            && stderr(&o).contains("nothing was written"),
        "{}",
        stderr(&o)
    );
    assert!(!store.exists(), "nothing may be created");
    std::fs::remove_file(cfgs.join("c03.yml")).unwrap();

    // Reads of a store that is not there: refused, and nothing created.
    for args in [
        vec!["config", "list"],
        vec!["config", "get", "c01"],
        vec!["config", "diff", cfgs.to_str().unwrap()],
        vec!["ring", "status"],
    ] {
        let mut all = args.clone();
        all.extend(["--kv", &kv]);
        let o = ctl(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no embedded KV store there"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!store.exists(), "{args:?} created a store");
    }

    // A write creates it, and says so.
    let o = ctl(&["config-sync", cfgs.to_str().unwrap(), "--kv", &kv]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds no embedded KV store; creating a new one"),
        "{}",
        stderr(&o)
    );
    let o = ctl(&["config", "list", "--kv", &kv]);
    assert_eq!(stdout(&o).lines().count(), 19, "{}", stderr(&o));

    // Emptied, then an empty directory synced to the empty store: nothing to delete. An empty
    // directory never creates a store.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let missing = tmp.path().join("missing");
    let o = ctl(&[
        "config-sync",
        empty.to_str().unwrap(),
        "--kv",
        &format!("embedded:{}", missing.display()),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!missing.exists(), "an empty directory created a store");
    let all = ["config-sync", empty.to_str().unwrap(), "--kv", &kv];
    let o = ctl(&all);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the guard refuses emptying a store"
    );
    let o = ctl(&[all.as_slice(), &["--allow-delete-all"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = ctl(&all);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));
}

#[test]
fn writes_carry_the_bearer_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let agent = Agent::start(tmp.path(), &["--api.token-file", token.to_str().unwrap()]);
    let cfgs = tmp.path().join("configs");
    write_twenty(&cfgs);
    let dir = cfgs.to_str().unwrap();
    let o = ctl_at(&agent, &["config-sync", dir]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "rejected without a token: {}",
        stderr(&o)
    );
    assert!(
        stdout(&o).contains("rejected: a.b: ")
            && stdout(&o).contains("a bearer token is required")
            && stdout(&o).contains("pass --token-file"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("20 of 20 changes failed"),
        "{}",
        stderr(&o)
    );
    let o = ctl_at(
        &agent,
        &["config-sync", dir, "--token-file", token.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stored_hashes(&agent).as_object().unwrap().len(), 20);
}

#[test]
fn sync_through_etcd_matches_what_the_api_stores() {
    let etcd = EtcdServer::start();
    let kv = format!("etcd://{}", etcd.endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = tmp.path().join("configs");
    let names = write_twenty(&cfgs);
    let dir = cfgs.to_str().unwrap();

    let o = ctl(&["config-sync", dir, "--kv", &kv]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("Plan: 20 to create"), "{}", stdout(&o));
    let o = ctl(&["config-sync", dir, "--kv", &kv]);
    assert_eq!(
        stdout(&o),
        "No changes. 20 configs up to date.\n",
        "{}",
        stderr(&o)
    );
    let o = ctl(&["config", "list", "--kv", &kv]);
    assert_eq!(
        stdout(&o),
        names.iter().map(|n| format!("{n}\n")).collect::<String>()
    );
    let o = ctl(&["config", "get", "a.b", "--kv", &kv]);
    assert!(stdout(&o).contains("password: <secret>"), "{}", stdout(&o));
    assert_no_secret(&o);

    // An agent on the same etcd serves the same hashes: the API sees nothing to change.
    let agent_yaml = tmp.path().join("agent.yml");
    let ep = etcd.endpoint();
    std::fs::write(
        &agent_yaml,
        format!(
            "metrics:\n  wal_directory: {wal}\n  scraping_service:\n    enabled: true\n    kvstore:\n      store: etcd\n      etcd:\n        endpoints: ['{ep}']\n    lifecycler:\n      ring:\n        kvstore:\n          store: etcd\n          etcd:\n            endpoints: ['{ep}']\n",
            wal = tmp.path().join("wal").display()
        ),
    )
    .unwrap();
    let agent = Agent::start(tmp.path(), &["--config.file", agent_yaml.to_str().unwrap()]);
    let o = ctl_at(&agent, &["config-sync", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "No changes. 20 configs up to date.\n");

    // A change through the API is seen by --kv, and deleted through the KV.
    std::fs::remove_file(cfgs.join("c00.yml")).unwrap();
    let o = ctl(&["config", "diff", dir, "--kv", &kv]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("- c00\n"), "{}", stdout(&o));
    assert_no_secret(&o);
    let o = ctl(&["config-sync", dir, "--kv", &kv]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stored_hashes(&agent).get("c00").is_none());

    // etcd down: exit 2 and the store named.
    drop(agent);
    drop(etcd);
    let o = ctl(&["config", "list", "--kv", &kv]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&kv["etcd://".len()..]),
        "{}",
        stderr(&o)
    );
}

/// Not a timed test: prints how long syncing 1,000 configs takes (for the closing note).
/// `cargo test --release --test integration config_sync::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_sync_1000_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), &[]);
    let cfgs = tmp.path().join("configs");
    std::fs::create_dir(&cfgs).unwrap();
    for i in 0..1000 {
        std::fs::write(cfgs.join(format!("c{i:04}.yml")), config(i)).unwrap();
    }
    let dir = cfgs.to_str().unwrap();
    let t = Instant::now();
    let o = ctl_at(&agent, &["config-sync", dir]);
    let first = t.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = Instant::now();
    let o = ctl_at(&agent, &["config-sync", dir]);
    let second = t.elapsed();
    assert_eq!(stdout(&o), "No changes. 1000 configs up to date.\n");
    assert_eq!(counters(&agent), (1000, 0, 0));
    println!("config-sync 1000 configs from scratch: {first:?}; no-change run: {second:?}");
}
