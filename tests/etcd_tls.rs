//! etcd with TLS and authentication: a real etcd serving TLS with client-certificate auth
//! (certificates generated here), and with `auth enable`, used by the store, by agents (config
//! store and ring) and by the client tools (`--kv etcds://`).

use std::path::Path;
use std::time::Duration;

use agent::config::agent::EtcdConfig as EtcdYaml;
use agent::kv::{EtcdConfig, EtcdStore, KvStore};

use crate::support::agent::{Agent, ClusterMember};
use crate::support::agentctl;
use crate::support::etcd::EtcdServer;
use crate::support::tls::{Ca, Pki};

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The store for `kvstore.etcd` written as in agent.yaml (`extra` are more fields).
async fn store(endpoint: &str, extra: &str) -> Result<EtcdStore, String> {
    let yaml = format!("endpoints: [{endpoint}]\ndial_timeout: 3s\n{extra}");
    let raw: EtcdYaml = serde_yaml::from_str(&yaml).map_err(|e| e.to_string())?;
    let settings = raw.settings()?;
    EtcdStore::connect(EtcdConfig::from_settings(&settings))
        .await
        .map_err(|e| e.to_string())
}

/// A put and a get; the first error as text.
async fn round_trip(s: &EtcdStore, key: &str) -> Result<(), String> {
    s.put(key, b"v".to_vec()).await.map_err(|e| e.to_string())?;
    match s.get(key).await.map_err(|e| e.to_string())? {
        Some(v) if v.value == b"v" => Ok(()),
        other => Err(format!("read back {other:?}")),
    }
}

/// etcd requiring client certificates, its certificate naming only `etcd.test`: the store works
/// with the CA, the client certificate and `tls_server_name`; each missing piece is refused
/// with a reason; a client certificate replaced on disk is used by the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_certificates() {
    install_crypto();
    let pki = Pki::new(&["etcd.test"]);
    let server = tokio::task::block_in_place(|| EtcdServer::start_tls(pki.etcd_tls(true)));
    let ep = server.endpoint();

    let full = format!("{}tls_server_name: etcd.test\n", pki.fields());
    let s = store(&ep, &full).await.unwrap();
    round_trip(&s, "configurations/a").await.unwrap();
    let mut watch = s.watch_prefix("configurations/").await.unwrap();
    s.put("configurations/b", b"2".to_vec()).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(20), watch.recv())
        .await
        .expect("a watch event")
        .expect("watch open");
    assert!(format!("{ev:?}").contains("configurations/b"), "{ev:?}");

    // The certificate does not name 127.0.0.1.
    let s = store(&ep, &pki.fields()).await.unwrap();
    let err = round_trip(&s, "configurations/x").await.unwrap_err();
    assert!(err.contains(&ep), "{err}");
    assert!(err.contains("certificate not valid for name"), "{err}");

    // No client certificate: etcd refuses the handshake.
    let no_cert = format!(
        "tls_enabled: true\ntls_ca_path: {}\ntls_server_name: etcd.test\n",
        pki.path("ca.pem")
    );
    let s = store(&ep, &no_cert).await.unwrap();
    let err = round_trip(&s, "configurations/x").await.unwrap_err();
    assert!(err.contains(&ep), "{err}");

    // Skipping verification still presents the client certificate.
    let skip = format!(
        "tls_enabled: true\ntls_insecure_skip_verify: true\ntls_cert_path: {}\ntls_key_path: {}\ntls_min_version: VersionTLS13\n",
        pki.path("client.crt"),
        pki.path("client.key")
    );
    round_trip(&store(&ep, &skip).await.unwrap(), "configurations/c")
        .await
        .unwrap();

    // A client certificate etcd does not trust, replaced on disk by one it does: the next
    // connection uses the new files.
    let rotating = tempfile::tempdir().unwrap();
    Ca::new("stranger")
        .client("agent")
        .write(rotating.path(), "client");
    let fields = format!(
        "tls_enabled: true\ntls_ca_path: {}\ntls_cert_path: {}\ntls_key_path: {}\ntls_server_name: etcd.test\n",
        pki.path("ca.pem"),
        rotating.path().join("client.crt").display(),
        rotating.path().join("client.key").display()
    );
    let s = store(&ep, &fields).await.unwrap();
    assert!(round_trip(&s, "configurations/d").await.is_err());
    pki.ca.client("agent-2").write(rotating.path(), "client");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = round_trip(&s, "configurations/d").await {
        assert!(std::time::Instant::now() < deadline, "still refused: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Config errors name the field, with dskit's texts.
    for (fields, want) in [
        (
            "tls_enabled: true\ntls_cert_path: /c\n",
            "certificate given but no key configured",
        ),
        (
            "tls_enabled: true\ntls_min_version: TLS13\n",
            "unknown minimum TLS version: \"TLS13\"",
        ),
        (
            "tls_enabled: true\ntls_cipher_suites: TLS_RSA_WITH_RC4_128_SHA\n",
            "unsupported cipher suite: \"TLS_RSA_WITH_RC4_128_SHA\"",
        ),
    ] {
        let err = store(&ep, fields).await.unwrap_err();
        assert!(err.starts_with(want), "{err}");
    }
}

/// Users and roles are set up over plain HTTP, then etcd restarts with TLS and client
/// certificates: the password and the certificates are both required.
async fn etcd_with_tls_and_auth(pki: &Pki, password: &str) -> EtcdServer {
    let mut server = tokio::task::block_in_place(EtcdServer::start);
    let mut raw = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .expect("raw etcd client");
    raw.user_add("root", "root-pw-unused", None).await.unwrap();
    raw.user_grant_role("root", "root").await.unwrap();
    raw.user_add("agent", password, None).await.unwrap();
    raw.user_grant_role("agent", "root").await.unwrap();
    raw.auth_enable().await.unwrap();
    drop(raw);
    tokio::task::block_in_place(|| server.restart_with_tls(pki.etcd_tls(true)));
    server
}

const PASSWORD: &str = "etcd-pw-sec-4471";

fn agent_yaml(dir: &Path, pki: &Pki, ep: &str, id: &str) -> String {
    ClusterMember {
        id,
        etcd: ep,
        etcd_extra: &format!("{}username: agent\npassword: {PASSWORD}\n", pki.fields()),
        wal_directory: &dir.join(format!("wal-{id}")),
        heartbeat_timeout: "1m",
        auto_forget_periods: None,
        reshard_interval: "5s",
        metrics_extra: "",
    }
    .yaml()
}

/// An agent on etcd with TLS, client certificates and a user: its config store and its ring
/// both work (PUT a config, it runs; the ring has the member), and the client tools reach the
/// same etcd with `--kv etcds://` and the TLS and credential flags. The password never reaches
/// the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_client_tools_use_etcd_with_tls_and_auth() {
    install_crypto();
    let pki = Pki::new(&["127.0.0.1"]);
    let server = etcd_with_tls_and_auth(&pki, PASSWORD).await;
    let ep = server.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let yaml = agent_yaml(dir.path(), &pki, &ep, "a1");
    let a =
        tokio::task::block_in_place(|| Agent::builder(dir.path()).name("a1").config(&yaml).start());
    let cfg = "scrape_configs:\n  - job_name: self\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:1']\n";
    tokio::task::block_in_place(|| {
        assert_eq!(a.put_config("via-api", cfg).status, 201);
        a.wait_until("the config runs", Duration::from_secs(30), |a| {
            a.running_configs()
                .is_some_and(|c| c.contains(&"via-api".to_owned()))
        });
    });

    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let kv = format!("etcds://{ep}");
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let tls_flags = ["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key];
    let auth_flags = [
        "--kv-username",
        "agent",
        "--kv-password-file",
        pw_file.to_str().unwrap(),
    ];
    let run = |args: &[&str]| {
        let out = agentctl(args, dir.path());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let status = |extra: &[&str]| {
        let mut args = vec!["ring", "status", "--kv", &kv, "--output", "json"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let mut args = tls_flags.to_vec();
    args.extend_from_slice(&auth_flags);
    let (code, out, err) = tokio::task::block_in_place(|| status(&args));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"a1\""), "{out}");

    // config-sync writes through etcd with TLS; the agent's watch (same TLS) runs it.
    let cfgs = dir.path().join("configs");
    std::fs::create_dir(&cfgs).unwrap();
    std::fs::write(cfgs.join("via-api.yml"), cfg).unwrap();
    std::fs::write(cfgs.join("via-sync.yml"), cfg.replace("self", "synced")).unwrap();
    let mut sync = vec!["config-sync", cfgs.to_str().unwrap(), "--kv", &kv];
    sync.extend_from_slice(&args);
    let (code, out, err) = tokio::task::block_in_place(|| run(&sync));
    assert_eq!(code, Some(0), "{out}{err}");
    tokio::task::block_in_place(|| {
        a.wait_until("the synced config runs", Duration::from_secs(30), |a| {
            a.running_configs()
                .is_some_and(|c| c.contains(&"via-sync".to_owned()))
        })
    });

    // Without the password, without the client certificate, or with TLS flags on a plain
    // spec: a clear failure, never a silent fallback.
    let (code, _, err) = tokio::task::block_in_place(|| status(&tls_flags));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&ep), "{err}");
    let (code, _, err) = tokio::task::block_in_place(|| {
        status(&[
            "--ca-file",
            &ca,
            "--kv-username",
            "agent",
            "--kv-password-file",
            pw_file.to_str().unwrap(),
        ])
    });
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = tokio::task::block_in_place(|| {
        run(&[
            "ring",
            "status",
            "--kv",
            &format!("etcd://{ep}"),
            "--ca-file",
            "x",
        ])
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("need --kv etcds://"), "{err}");

    let mut a = a;
    let log = a.log();
    a.stop();
    assert!(!log.contains(PASSWORD), "the etcd password is in the log");
    assert!(!log.contains("PRIVATE KEY"), "a private key is in the log");
}
