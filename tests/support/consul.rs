//! A fake Consul agent on loopback, with the catalog endpoints service discovery reads:
//!
//! - `/v1/agent/self` (`Config.Datacenter`);
//! - `/v1/catalog/services` (service name -> tags) and `/v1/health/service/<name>` (the
//!   service's instances with their node and checks, filtered by every `tag` parameter), both
//!   as blocking queries: with `index` at or above the current one the request waits for a
//!   change or for `wait` (`120000ms`, `30s`), and `X-Consul-Index` is always set;
//! - the `X-Consul-Token` header, when one is required (403 otherwise).
//!
//! Or, in stub mode, exact request URLs (path and query as the client sends them) answered
//! with canned bodies, every other URL recorded as unexpected: the form of Prometheus's own
//! consul tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Inner {
    index: u64,
    datacenter: String,
    /// service -> instances (`{"Node": .., "Service": .., "Checks": ..}`)
    services: BTreeMap<String, Vec<Value>>,
    token: Option<String>,
    /// Stub mode: exact URL -> (status, body).
    stubs: Option<BTreeMap<String, (u16, String)>>,
    requests: Vec<String>,
    unexpected: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server; stopped on drop.
pub struct FakeConsul {
    pub addr: String,
    shared: Shared,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeConsul {
    /// A catalog in datacenter `dc1`, empty.
    pub fn start() -> FakeConsul {
        Self::start_with(None)
    }

    /// Stub mode: each URL of `stubs` gets its `(status, body)`, with `X-Consul-Index: 1`.
    pub fn stub(stubs: BTreeMap<String, (u16, String)>) -> FakeConsul {
        Self::start_with(Some(stubs))
    }

    fn start_with(stubs: Option<BTreeMap<String, (u16, String)>>) -> FakeConsul {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (changed, _) = watch::channel(0);
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                index: 10,
                datacenter: "dc1".into(),
                stubs,
                ..Inner::default()
            })),
            changed,
        };
        let stop = CancellationToken::new();
        let (s, st) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(handle).with_state(s);
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = st.cancelled() => {}
                }
            });
        });
        FakeConsul {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn require_token(&self, token: &str) {
        self.shared.lock().token = Some(token.to_owned());
    }

    fn bump(&self, g: &mut Inner) {
        g.index += 1;
        self.shared.changed.send_replace(g.index);
    }

    /// Registers (or replaces, by `Service.ID`) an instance of `service`.
    pub fn register(&self, service: &str, entry: Value) {
        let mut g = self.shared.lock();
        let id = entry["Service"]["ID"].clone();
        let list = g.services.entry(service.to_owned()).or_default();
        list.retain(|e| e["Service"]["ID"] != id);
        list.push(entry);
        self.bump(&mut g);
    }

    /// Removes the instance with `Service.ID == id`; the service goes when it has none left.
    pub fn deregister(&self, service: &str, id: &str) {
        let mut g = self.shared.lock();
        if let Some(list) = g.services.get_mut(service) {
            list.retain(|e| e["Service"]["ID"] != id);
            if list.is_empty() {
                g.services.remove(service);
            }
        }
        self.bump(&mut g);
    }

    /// The URLs requested so far (path and query).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Stub mode: URLs that had no stub.
    pub fn unexpected(&self) -> Vec<String> {
        self.shared.lock().unexpected.clone()
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An instance as `/v1/health/service/<name>` returns it.
pub fn instance(
    service: &str,
    id: &str,
    node: &str,
    address: &str,
    port: u16,
    tags: &[&str],
    status: &str,
) -> Value {
    json!({
        "Node": {"ID": format!("id-{node}"), "Node": node, "Address": address, "Datacenter": "dc1",
                 "TaggedAddresses": {"lan": address, "wan": address}, "Meta": {"rack": "r1"},
                 "CreateIndex": 1, "ModifyIndex": 1},
        "Service": {"ID": id, "Service": service, "Tags": tags, "Address": "", "Meta": {"version": "1"},
                    "Port": port, "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                    "CreateIndex": 1, "ModifyIndex": 1},
        "Checks": [{"Node": node, "CheckID": "serfHealth", "Name": "Serf Health Status",
                    "Status": status, "ServiceID": "", "ServiceName": ""}],
    })
}

/// `120000ms`, `30s`, `2m`.
fn parse_wait(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return None,
    })
}

fn params(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://consul/?{query}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

async fn handle(
    State(s): State<Shared>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    let full = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let stubs = {
        let mut g = s.lock();
        g.requests.push(full.clone());
        g.stubs.clone()
    };
    if let Some(stubs) = stubs {
        return match stubs.get(&full) {
            Some((code, body)) => (
                StatusCode::from_u16(*code).unwrap(),
                [
                    ("X-Consul-Index", "1"),
                    ("content-type", "application/json"),
                ],
                body.clone(),
            )
                .into_response(),
            None => {
                s.lock().unexpected.push(full);
                (StatusCode::NOT_FOUND, "no stub").into_response()
            }
        };
    }
    let required = s.lock().token.clone();
    if let Some(token) = required {
        let ok = headers
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == token);
        if !ok {
            return (StatusCode::FORBIDDEN, "ACL not found").into_response();
        }
    }
    let path = uri.path().to_owned();
    let q = params(uri.query().unwrap_or_default());
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if path == "/v1/agent/self" {
        let dc = s.lock().datacenter.clone();
        return axum::Json(json!({"Config": {"Datacenter": dc, "NodeName": "agent"}}))
            .into_response();
    }
    // Blocking: wait for an index above the one asked for, at most `wait`.
    let want: u64 = get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = get("wait")
        .and_then(|w| parse_wait(&w))
        .unwrap_or(Duration::from_secs(300));
    let mut changed = s.changed.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        changed.mark_unchanged();
        if s.lock().index > want {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            r = changed.changed() => if r.is_err() { break },
        }
    }
    let g = s.lock();
    let index = g.index.to_string();
    let body = if path == "/v1/catalog/services" {
        let m: BTreeMap<&String, Vec<String>> = g
            .services
            .iter()
            .map(|(name, entries)| {
                let mut tags: Vec<String> = entries
                    .iter()
                    .flat_map(|e| e["Service"]["Tags"].as_array().cloned().unwrap_or_default())
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect();
                tags.sort();
                tags.dedup();
                (name, tags)
            })
            .collect();
        json!(m)
    } else if let Some(name) = path.strip_prefix("/v1/health/service/") {
        let tags: Vec<String> = q
            .iter()
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v.clone())
            .collect();
        let entries: Vec<Value> = g
            .services
            .get(name)
            .into_iter()
            .flatten()
            .filter(|e| {
                let have = e["Service"]["Tags"].as_array().cloned().unwrap_or_default();
                tags.iter().all(|t| have.iter().any(|h| h == t))
            })
            .cloned()
            .collect();
        json!(entries)
    } else {
        return (StatusCode::NOT_FOUND, format!("no such endpoint {path}")).into_response();
    };
    drop(g);
    (
        StatusCode::OK,
        [
            ("X-Consul-Index", index.as_str()),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
        .into_response()
}
