//! remote_write signed with AWS SigV4, each request checked by botocore (an implementation no one
//! here wrote: tests/support/sigv4_receiver.py), with credentials from the `sigv4` block, from
//! the environment (with a session token) and from a profile of the shared credentials file; a
//! wrong secret key is refused by the receiver, so the check can fail.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::agent::Agent;
use crate::support::{http_full, ChildGuard};

struct Receiver {
    _child: ChildGuard,
    addr: String,
}

impl Receiver {
    fn start(keys: &[&str]) -> Receiver {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support/sigv4_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("aps")
            .args(keys)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (scripts/deps install test installs python3-botocore)");
        let stdout = child.stdout.take().unwrap();
        let guard = ChildGuard::new("sigv4 receiver", child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
        Receiver {
            _child: guard,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn stats(&self) -> serde_json::Value {
        let r = http_full("GET", &self.addr, "/stats", &[], b"").expect("receiver stats");
        serde_json::from_str(&r.body).unwrap()
    }
}

#[test]
fn remote_write_signed_with_sigv4_is_verified_by_botocore() {
    let receiver = Receiver::start(&[
        "AKIDBLOCK=block-secret",
        "AKIDENV=env-secret:env-session-token",
        "AKIDFILE=file-secret",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("aws-credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDNOTTHIS\naws_secret_access_key = x\n\n[team]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret\n",
    )
    .unwrap();
    let agent = Agent::builder(dir.path())
        .env("AWS_ACCESS_KEY_ID", "AKIDENV")
        .env("AWS_SECRET_ACCESS_KEY", "env-secret")
        .env("AWS_SESSION_TOKEN", "env-session-token")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
        .start();
    let url = format!(
        "http://{}/workspaces/ws-1/api/v1/remote_write",
        receiver.addr
    );
    let config = format!(
        "scrape_configs:
  - job_name: self
    scrape_interval: 1s
    static_configs:
      - targets: ['{target}']
remote_write:
  - name: block
    url: {url}
    queue_config: {{batch_send_deadline: 1s}}
    sigv4:
      region: us-west-2
      access_key: AKIDBLOCK
      secret_key: block-secret
  - name: env
    url: {url}
    queue_config: {{batch_send_deadline: 1s}}
    sigv4: {{}}
  - name: profile
    url: {url}
    queue_config: {{batch_send_deadline: 1s}}
    sigv4:
      profile: team
  - name: wrong
    url: {url}
    queue_config: {{batch_send_deadline: 1s}}
    sigv4:
      region: us-west-2
      access_key: AKIDBLOCK
      secret_key: not-the-secret
",
        target = agent.addr()
    );
    let r = agent.put_config("signed", &config);
    assert_eq!(r.status, 201, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let s = receiver.stats();
        let n = |k: &str| s["keys"][k].as_u64().unwrap_or(0);
        if n("AKIDBLOCK") >= 2
            && n("AKIDENV") >= 2
            && n("AKIDFILE") >= 2
            && s["bad"].as_u64() >= Some(1)
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "not every remote_write was verified: {s}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The only refusals are the wrong key's: a signature botocore computes differently.
    for e in stats["errors"].as_array().unwrap() {
        assert!(e.as_str().unwrap().contains("botocore computes"), "{stats}");
    }
    assert!(
        !agent.log().contains("block-secret") && !agent.log().contains("env-secret"),
        "a secret key in the log"
    );
    let r = agent.req("GET", "/agent/api/v1/configs/signed", &[], "");
    assert!(r.body.contains("AKIDBLOCK"), "{r:?}");
    assert!(!r.body.contains("block-secret"), "{r:?}");
    eprintln!("botocore verified: {stats}");
}

/// `config diff` never prints the secrets of `sigv4` and `azuread`: a changed secret is named
/// without its value, and the diff of another field shows no secret around it.
#[test]
fn config_diff_hides_sigv4_and_azuread_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let cfgs = dir.path().join("configs");
    std::fs::create_dir(&cfgs).unwrap();
    let config = |region: &str, aws: &str, azure: &str| {
        format!(
            "remote_write:
  - url: http://127.0.0.1:1/aws
    sigv4:
      region: {region}
      access_key: AKIDDIFF
      secret_key: {aws}
  - url: http://127.0.0.1:1/azure
    azuread:
      oauth:
        client_id: 00000000-0000-0000-0000-000000000001
        client_secret: {azure}
        tenant_id: t
"
        )
    };
    let file = cfgs.join("cloud.yml");
    std::fs::write(&file, config("us-east-1", "aws-secret-0", "azure-secret-0")).unwrap();
    let url = agent.url();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--addr", &url]);
        let o = crate::support::agentctl(&all, dir.path());
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        for s in ["aws-secret-", "azure-secret-"] {
            assert!(!out.contains(s), "a secret was printed: {out}");
        }
        (o.status.code(), out)
    };
    let dir_arg = cfgs.to_str().unwrap();
    let (code, out) = run(&["config-sync", dir_arg]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::write(&file, config("us-east-1", "aws-secret-1", "azure-secret-1")).unwrap();
    let (code, out) = run(&["config", "diff", dir_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("only secret values differ (not shown)"),
        "{out}"
    );
    std::fs::write(&file, config("eu-west-1", "aws-secret-1", "azure-secret-1")).unwrap();
    let (code, out) = run(&["config", "diff", dir_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("+    region: eu-west-1"), "{out}");
    assert!(out.contains("secret_key: <secret>"), "{out}");
    let (code, out) = run(&["config", "get", "cloud"]);
    assert_eq!(code, Some(0), "{out}");
}
