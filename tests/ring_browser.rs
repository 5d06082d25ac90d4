//! The ring page in a real browser: headless Chromium renders `/debug/ring` (served by the
//! agent's router over a real etcd), chromedriver clicks a member's Forget button, and the
//! member is gone from the page and from the KV store.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; the README's test command installs them). Missing binaries fail the test.
//! `AGENTCTL_REGENERATE=1` also copies the screenshot to `docs/ring-page.png`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::clock::Clock;
use agent::kv::KvStore;
use agent::ring::http::{router, RingPageState};
use agent::ring::{generate_tokens, modify_ring, read_ring, InstanceDesc, InstanceState, TokenRng};
use serde_json::{json, Value};

use crate::ring::{etcd_store, unix_now, KEY};
use crate::support::etcd::EtcdServer;
use crate::support::{root, ChildGuard};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn chrome_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

fn require(bin: &str, package: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: the ring page browser test needs it. Run the README's test command \
         (it installs Debian's {package}), or `apt-get install {package}`."
    );
}

/// Runs Chromium once (dump-dom, screenshot) with a time limit.
async fn chromium(profile: &Path, extra: &[String], url: &str) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args(chrome_args(profile))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finished within 60s")
        .expect("run chromium")
}

/// Seeds a ring that shows every look of a row: two ACTIVE members, one LEAVING, and one
/// ACTIVE member whose heartbeat is 10 minutes old (UNHEALTHY): the one to forget.
async fn seed(store: &Arc<dyn KvStore>) {
    let now = unix_now();
    let mut rng = TokenRng::with_seed(7);
    let mut taken = Vec::new();
    let members = [
        (
            "agent-1",
            "10.0.0.1:12345",
            "eu-west-1a",
            InstanceState::Active,
            0,
        ),
        (
            "agent-2",
            "10.0.0.2:12345",
            "eu-west-1b",
            InstanceState::Active,
            1,
        ),
        (
            "agent-3",
            "10.0.0.3:12345",
            "eu-west-1c",
            InstanceState::Leaving,
            2,
        ),
        (
            "agent-4",
            "10.0.0.4:12345",
            "eu-west-1a",
            InstanceState::Active,
            600,
        ),
    ];
    let mut descs = Vec::new();
    for (id, addr, zone, state, age) in members {
        let tokens = generate_tokens(128, &taken, &mut rng).expect("tokens");
        taken.extend(&tokens);
        descs.push((
            id.to_owned(),
            InstanceDesc {
                addr: addr.into(),
                timestamp: now - age,
                state: state as i32,
                tokens,
                zone: zone.into(),
                registered_timestamp: now - 3600,
                id: id.into(),
            },
        ));
    }
    modify_ring(store.as_ref(), KEY, "seed", |d| {
        d.ingesters.extend(descs.iter().cloned());
        true
    })
    .await
    .expect("seed ring");
}

/// Starts chromedriver on a port of its own choosing and returns it with that port.
///
/// With `--port=0` chromedriver binds `[::1]` on an ephemeral port first and then `127.0.0.1` on
/// the same number; on a busy machine that IPv4 port can already be held by another socket, and
/// chromedriver then prints `IPv4 port not available. Exiting...` and exits. A new process gets a
/// new ephemeral port, so that one failure is retried (a few times, each attempt logged to its
/// own file); any other failure fails the test with chromedriver's output.
async fn start_chromedriver(dir: &Path) -> (ChildGuard, u16) {
    const ATTEMPTS: usize = 5;
    let mut refused = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let log = dir.join(format!("chromedriver-{attempt}.log"));
        let child = std::process::Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("chromedriver log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let mut driver = ChildGuard::new("chromedriver", child);
        match driver_port(&log, &mut driver).await {
            Ok(port) => return (driver, port),
            Err(text) => {
                let last = text.lines().last().unwrap_or_default();
                eprintln!("chromedriver attempt {attempt} of {ATTEMPTS}: {last}");
                refused.push(text);
            }
        }
    }
    panic!(
        "chromedriver found no free port in {ATTEMPTS} attempts:\n{}",
        refused.join("\n---\n")
    );
}

/// The port in chromedriver's `ChromeDriver was started successfully on port N.` line, or
/// `Err(its output)` when it exited saying that port was not available.
async fn driver_port(log: &Path, driver: &mut ChildGuard) -> Result<u16, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let port = text
            .split("started successfully on port ")
            .nth(1)
            .and_then(|rest| rest.split('.').next())
            .and_then(|p| p.trim().parse().ok());
        if let Some(port) = port {
            return Ok(port);
        }
        let exited = driver
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited {
            // Everything it wrote is in the log once it has exited.
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                text.contains("port not available"),
                "chromedriver exited before it listened: {text}"
            );
            return Err(text);
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not start within 60 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A W3C WebDriver session on chromedriver, spoken over plain HTTP.
struct WebDriver {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl WebDriver {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.expect("webdriver body");
        assert!(status.is_success(), "{method} {url}: {status}: {text}");
        serde_json::from_str(&text).expect("webdriver JSON")
    }

    async fn start(base: String, profile: &Path) -> WebDriver {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"ready\":true")),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": chrome_args(profile)}
        }}});
        let mut wd = WebDriver {
            http,
            base,
            session: String::new(),
        };
        let v = wd.call(reqwest::Method::POST, "/session", Some(caps)).await;
        wd.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {v}"))
            .to_owned();
        wd
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    async fn navigate(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            &self.path("/url"),
            Some(json!({"url": url})),
        )
        .await;
    }

    async fn source(&self) -> String {
        let v = self
            .call(reqwest::Method::GET, &self.path("/source"), None)
            .await;
        v["value"].as_str().unwrap_or_default().to_owned()
    }

    async fn click_xpath(&self, xpath: &str) {
        let v = self
            .call(
                reqwest::Method::POST,
                &self.path("/element"),
                Some(json!({"using": "xpath", "value": xpath})),
            )
            .await;
        let id = v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element for {xpath}: {v}"))
            .to_owned();
        self.call(
            reqwest::Method::POST,
            &self.path(&format!("/element/{id}/click")),
            Some(json!({})),
        )
        .await;
    }

    async fn quit(&self) {
        self.call(reqwest::Method::DELETE, &self.path(""), None)
            .await;
    }
}

fn rows(html: &str) -> Vec<String> {
    html.split("<tr>")
        .skip(2) // before the header row, the header row
        .filter_map(|r| r.split("</td>").next())
        .map(|first| first.trim_start_matches("<td>").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_page_in_chromium_forget_button_removes_the_member() {
    require(CHROMIUM, "chromium");
    require(CHROMEDRIVER, "chromium-driver");
    agent::httpclient::ensure_crypto_provider();
    let server = EtcdServer::start();
    let store = etcd_store(&server).await;
    seed(&store).await;

    let (_owned_tx, configs_owned) = tokio::sync::watch::channel(HashMap::from([
        ("agent-1".to_owned(), 12usize),
        ("agent-2".to_owned(), 9),
        ("agent-3".to_owned(), 3),
    ]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/debug/ring", listener.local_addr().expect("addr"));
    let page = RingPageState {
        store: store.clone(),
        ring_key: KEY.into(),
        heartbeat_timeout: Duration::from_secs(60),
        configs_owned,
        clock: Clock::system(),
        targets: None,
        kv_health: None,
        last_read: None,
        kv_outage: None,
    };
    tokio::spawn(async move { axum::serve(listener, router(page)).await });
    let tmp = tempfile::tempdir().expect("tempdir");

    // 1. The rendered DOM has one row per member, sorted by ID, with the health verdict.
    let out = chromium(&tmp.path().join("p1"), &["--dump-dom".into()], &url).await;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        rows(&dom),
        vec!["agent-1", "agent-2", "agent-3", "agent-4"],
        "{dom}"
    );
    assert!(dom.contains("class=\"state-UNHEALTHY\">UNHEALTHY"), "{dom}");
    assert!(dom.contains("class=\"state-LEAVING\">LEAVING"), "{dom}");
    assert_eq!(
        dom.matches("<button type=\"submit\">Forget</button>")
            .count(),
        4
    );

    // 2. A screenshot for the README.
    let png = tmp.path().join("ring-page.png");
    let out = chromium(
        &tmp.path().join("p2"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1600,400".into(),
        ],
        &url,
    )
    .await;
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}); chromium said: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if std::env::var_os("AGENTCTL_REGENERATE").is_some() {
        std::fs::write(root().join("docs/ring-page.png"), &bytes)
            .expect("write docs/ring-page.png");
    }

    // 3. Click agent-4's Forget button through chromedriver. It binds port 0 itself and says
    // which port it got on standard output.
    let (_driver, port) = start_chromedriver(tmp.path()).await;
    let wd = WebDriver::start(format!("http://127.0.0.1:{port}"), &tmp.path().join("p3")).await;
    wd.navigate(&url).await;
    assert!(wd.source().await.contains("<td>agent-4</td>"));
    wd.click_xpath("//tr[td[1]='agent-4']//button[text()='Forget']")
        .await;
    // The POST answers 302 to `#`: the browser lands on the page again, without agent-4.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let html = wd.source().await;
        if !html.contains("<td>agent-4</td>") && html.contains("<td>agent-1</td>") {
            break html;
        }
        assert!(
            Instant::now() < deadline,
            "agent-4 still on the page: {html}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        rows(&after),
        vec!["agent-1", "agent-2", "agent-3"],
        "{after}"
    );
    wd.quit().await;
    let ring = read_ring(store.as_ref(), KEY).await.expect("ring");
    assert_eq!(
        ring.ingesters.keys().collect::<Vec<_>>(),
        vec!["agent-1", "agent-2", "agent-3"],
        "agent-4 removed from etcd, the others kept"
    );
}
