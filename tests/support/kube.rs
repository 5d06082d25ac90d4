//! A fake Kubernetes API server on loopback: the JSON of the real API for the collections
//! discovery reads (`/api/v1/{pods,services,endpoints,nodes}`,
//! `/apis/discovery.k8s.io/{v1,v1beta1}/endpointslices`, `/apis/networking.k8s.io/v1/ingresses`,
//! cluster-wide and under `/namespaces/<ns>/`), with what a client must get right:
//!
//! - lists with `resourceVersion`, `limit` and `continue` pages, `labelSelector` (`=`, `==`,
//!   `!=`, `in`, `notin`, `key`, `!key`) and `fieldSelector` (`=`, `==`, `!=` on dotted paths);
//! - watches (`watch=1`) from a `resourceVersion`: `ADDED`, `MODIFIED`, `DELETED` events as
//!   newline-delimited JSON, `BOOKMARK`s on request (`allowWatchBookmarks=true`), the stream
//!   closed after `timeoutSeconds`; a version older than the last compaction gets `410 Gone`,
//!   as an `ERROR` event (the default) or as the HTTP status;
//! - a bearer token, when one is required (`401` otherwise);
//! - counters of list and watch requests per path, to check that a client does not list again
//!   on every change, and a way to cut every open watch.
//!
//! Objects are stored as given (the test writes them as the API returns them); the server sets
//! `metadata.resourceVersion`, and `kind`/`apiVersion` when they are missing.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A collection: API prefix (`/api/v1`, `/apis/discovery.k8s.io/v1`) and plural.
pub type Collection = (String, String);

#[derive(Clone)]
struct Event {
    rv: u64,
    collection: Collection,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// collection -> (namespace, name) -> object
    objects: HashMap<Collection, BTreeMap<(String, String), Value>>,
    events: Vec<Event>,
    /// Watches from a version below this get 410.
    compacted: u64,
    gone_as_status: bool,
    /// Watch requests answered 500 while set.
    reject_watches: bool,
    token: Option<String>,
    lists: HashMap<String, usize>,
    /// The `fieldSelector` of every list request, per path.
    list_fields: HashMap<String, Vec<String>>,
    /// Requests refused for a missing or wrong token.
    refused: usize,
    watches: HashMap<String, usize>,
    /// The `resourceVersion` of every watch request, per path.
    watch_versions: HashMap<String, Vec<String>>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every change: watches wake up and send what is new.
    changed: watch::Sender<u64>,
    /// Bumped to make every watch send a bookmark.
    bookmarks: watch::Sender<u64>,
    /// Cancelled (and replaced) to cut every open watch.
    cut: Arc<Mutex<CancellationToken>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server; stopped on drop.
pub struct FakeKube {
    pub addr: String,
    https: bool,
    shared: Shared,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn kind_of(collection: &Collection) -> (&'static str, &'static str) {
    match (collection.0.as_str(), collection.1.as_str()) {
        ("/api/v1", "pods") => ("Pod", "v1"),
        ("/api/v1", "services") => ("Service", "v1"),
        ("/api/v1", "endpoints") => ("Endpoints", "v1"),
        ("/api/v1", "nodes") => ("Node", "v1"),
        ("/api/v1", "namespaces") => ("Namespace", "v1"),
        ("/apis/discovery.k8s.io/v1", "endpointslices") => ("EndpointSlice", "discovery.k8s.io/v1"),
        ("/apis/discovery.k8s.io/v1beta1", "endpointslices") => {
            ("EndpointSlice", "discovery.k8s.io/v1beta1")
        }
        ("/apis/networking.k8s.io/v1", "ingresses") => ("Ingress", "networking.k8s.io/v1"),
        _ => ("Unknown", "v1"),
    }
}

/// The collection of an object from its `kind` and `apiVersion`.
pub fn collection_of(object: &Value) -> Collection {
    let kind = object["kind"].as_str().unwrap_or_default();
    let api = object["apiVersion"].as_str().unwrap_or("v1");
    let plural = match kind {
        "Pod" => "pods",
        "Service" => "services",
        "Endpoints" => "endpoints",
        "Node" => "nodes",
        "EndpointSlice" => "endpointslices",
        "Ingress" => "ingresses",
        "Namespace" => "namespaces",
        other => panic!("fake kube: unknown kind {other:?}"),
    };
    let prefix = if api == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{api}")
    };
    (prefix, plural.to_owned())
}

fn key_of(object: &Value) -> (String, String) {
    let m = &object["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

impl FakeKube {
    pub fn start() -> FakeKube {
        Self::start_with(None)
    }

    /// The same over HTTPS with `tls` (see `support::tls`).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> FakeKube {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> FakeKube {
        let (changed, _) = watch::channel(0);
        let (bookmarks, _) = watch::channel(0);
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1000,
                ..Inner::default()
            })),
            changed,
            bookmarks,
            cut: Arc::new(Mutex::new(CancellationToken::new())),
        };
        let stop = CancellationToken::new();
        let (s, st) = (shared.clone(), stop.clone());
        let https = tls.is_some();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let app = axum::Router::new()
                    .route("/version", get(version))
                    .route("/api/{version}/{plural}", get(core_cluster))
                    .route("/api/{version}/namespaces/{ns}/{plural}", get(core_ns))
                    .route("/apis/{group}/{version}/{plural}", get(group_cluster))
                    .route(
                        "/apis/{group}/{version}/namespaces/{ns}/{plural}",
                        get(group_ns),
                    )
                    .with_state(s);
                if let Some(tls) = tls {
                    let cfg = Arc::new(std::sync::RwLock::new(tls));
                    let addr = super::tls::serve(app, cfg).await;
                    addr_tx.send(addr.to_string()).unwrap();
                    st.cancelled().await;
                    return;
                }
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx
                    .send(listener.local_addr().unwrap().to_string())
                    .unwrap();
                // Not a graceful shutdown: a client's idle keep-alive connection would hold it.
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = st.cancelled() => {}
                }
            });
        });
        let addr = addr_rx.recv().expect("fake kube address");
        FakeKube {
            addr,
            https,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Requires `Authorization: Bearer <token>` from now on.
    pub fn require_token(&self, token: &str) {
        self.shared.lock().token = Some(token.to_owned());
    }

    /// Answers a too-old watch version with HTTP 410 instead of an `ERROR` event.
    pub fn gone_as_status(&self, yes: bool) {
        self.shared.lock().gone_as_status = yes;
    }

    fn record(&self, kind: &'static str, mut object: Value) -> u64 {
        let collection = collection_of(&object);
        let key = key_of(&object);
        let rv = {
            let mut g = self.shared.lock();
            g.rv += 1;
            let rv = g.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let objects = g.objects.entry(collection.clone()).or_default();
            match kind {
                "DELETED" => {
                    let old = objects.remove(&key).expect("checked by delete");
                    // A deletion carries the last state of the object.
                    let mut last = old;
                    last["metadata"]["resourceVersion"] = json!(rv.to_string());
                    object = last;
                }
                _ => {
                    objects.insert(key, object.clone());
                }
            }
            g.events.push(Event {
                rv,
                collection,
                kind,
                object,
            });
            rv
        };
        self.shared.changed.send_replace(rv);
        rv
    }

    fn complete(mut object: Value) -> Value {
        if object.get("metadata").is_none() {
            object["metadata"] = json!({});
        }
        object
    }

    /// Adds an object (`kind` and `apiVersion` say where); returns its resourceVersion.
    pub fn create(&self, object: Value) -> u64 {
        let object = Self::complete(object);
        let c = collection_of(&object);
        let exists = self
            .shared
            .lock()
            .objects
            .get(&c)
            .is_some_and(|m| m.contains_key(&key_of(&object)));
        assert!(!exists, "fake kube: {c:?} {:?} exists", key_of(&object));
        self.record("ADDED", object)
    }

    /// Replaces an object (created if missing, as an `ADDED` event).
    pub fn update(&self, object: Value) -> u64 {
        let object = Self::complete(object);
        let c = collection_of(&object);
        let exists = self
            .shared
            .lock()
            .objects
            .get(&c)
            .is_some_and(|m| m.contains_key(&key_of(&object)));
        self.record(if exists { "MODIFIED" } else { "ADDED" }, object)
    }

    /// Deletes the object with this kind, apiVersion, namespace and name; `None` (as the API's
    /// 404) when there is no such object.
    pub fn delete(&self, object: &Value) -> Option<u64> {
        if !self.exists(object) {
            return None;
        }
        Some(self.record("DELETED", Self::complete(object.clone())))
    }

    /// Whether the object exists.
    pub fn exists(&self, object: &Value) -> bool {
        self.shared
            .lock()
            .objects
            .get(&collection_of(object))
            .is_some_and(|m| m.contains_key(&key_of(object)))
    }

    /// Answers every watch request with 500 while `yes` (lists still work).
    pub fn reject_watches(&self, yes: bool) {
        self.shared.lock().reject_watches = yes;
    }

    /// Forgets every event up to now: a watch from an older version gets 410 Gone.
    pub fn compact(&self) {
        let mut g = self.shared.lock();
        g.compacted = g.rv;
        g.events.clear();
    }

    /// Sends a BOOKMARK with the current version on every open watch that allows bookmarks.
    pub fn bookmark(&self) {
        self.shared.bookmarks.send_modify(|n| *n += 1);
    }

    /// Closes every open watch (as a dropped connection would).
    pub fn cut_watches(&self) {
        let mut c = self.shared.cut.lock().unwrap();
        c.cancel();
        *c = CancellationToken::new();
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Requests refused with 401 so far.
    pub fn refused(&self) -> usize {
        self.shared.lock().refused
    }

    /// List requests so far for `path` (`/api/v1/pods`).
    pub fn lists(&self, path: &str) -> usize {
        self.shared.lock().lists.get(path).copied().unwrap_or(0)
    }

    /// Watch requests so far for `path`.
    pub fn watches(&self, path: &str) -> usize {
        self.shared.lock().watches.get(path).copied().unwrap_or(0)
    }

    /// The `resourceVersion` of each watch request for `path`, in order.
    pub fn watch_versions(&self, path: &str) -> Vec<String> {
        self.shared
            .lock()
            .watch_versions
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// The `fieldSelector` of every list request to `path` (`""` when it had none).
    pub fn list_field_selectors(&self, path: &str) -> Vec<String> {
        self.shared
            .lock()
            .list_fields
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Every list and watch request path seen.
    pub fn paths(&self) -> Vec<String> {
        let g = self.shared.lock();
        let mut v: Vec<String> = g.lists.keys().chain(g.watches.keys()).cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.cut_watches();
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn version() -> impl IntoResponse {
    axum::Json(
        json!({"major": "1", "minor": "28", "gitVersion": "v1.28.4", "platform": "linux/amd64"}),
    )
}

async fn core_cluster(
    State(s): State<Shared>,
    Path((version, plural)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(s, (format!("/api/{version}"), plural), None, q, headers).await
}

async fn core_ns(
    State(s): State<Shared>,
    Path((version, ns, plural)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(s, (format!("/api/{version}"), plural), Some(ns), q, headers).await
}

async fn group_cluster(
    State(s): State<Shared>,
    Path((group, version, plural)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        s,
        (format!("/apis/{group}/{version}"), plural),
        None,
        q,
        headers,
    )
    .await
}

async fn group_ns(
    State(s): State<Shared>,
    Path((group, version, ns, plural)): Path<(String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        s,
        (format!("/apis/{group}/{version}"), plural),
        Some(ns),
        q,
        headers,
    )
    .await
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [("content-type", "application/json")],
        status(code.as_u16(), reason, message).to_string(),
    )
        .into_response()
}

/// One requirement of a label selector.
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_labels(s: &str) -> Vec<Req> {
    split_top(s)
        .into_iter()
        .map(|r| {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            if let Some((k, v)) = r.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set(v))
            } else if let Some((k, v)) = r.split_once(" in ") {
                Req::In(k.trim().into(), set(v))
            } else if let Some((k, v)) = r.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = r.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else {
                Req::Exists(r.trim().into())
            }
        })
        .collect()
}

fn labels_match(reqs: &[Req], object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k) == Some(v.as_str()),
        Req::Ne(k, v) => get(k) != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

fn fields_match(selector: &str, object: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want, eq) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (p, v, true)
        } else {
            return false;
        };
        let mut cur = object;
        for part in path.split('.') {
            cur = &cur[part];
        }
        let have = match cur {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        (have == want) == eq
    })
}

struct Filter {
    ns: Option<String>,
    labels: Vec<Req>,
    fields: String,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.ns {
            if object["metadata"]["namespace"].as_str() != Some(ns) {
                return false;
            }
        }
        labels_match(&self.labels, object) && fields_match(&self.fields, object)
    }
}

fn with_kind(collection: &Collection, mut object: Value) -> Value {
    let (kind, api) = kind_of(collection);
    if object.get("kind").is_none() {
        object["kind"] = json!(kind);
    }
    if object.get("apiVersion").is_none() {
        object["apiVersion"] = json!(api);
    }
    object
}

async fn serve(
    s: Shared,
    collection: Collection,
    ns: Option<String>,
    q: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let path = match &ns {
        Some(ns) => format!("{}/namespaces/{ns}/{}", collection.0, collection.1),
        None => format!("{}/{}", collection.0, collection.1),
    };
    let required = s.lock().token.clone();
    if let Some(token) = required {
        let ok = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {token}"));
        if !ok {
            s.lock().refused += 1;
            return error(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
    }
    if kind_of(&collection).0 == "Unknown" {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    }
    let filter = Filter {
        ns,
        labels: parse_labels(q.get("labelSelector").map_or("", String::as_str)),
        fields: q.get("fieldSelector").cloned().unwrap_or_default(),
    };
    let is_watch = q.get("watch").is_some_and(|w| w == "1" || w == "true");
    if !is_watch {
        return list(&s, &collection, &path, &filter, &q);
    }
    watch(s, collection, path, filter, q).await
}

fn list(
    s: &Shared,
    collection: &Collection,
    path: &str,
    filter: &Filter,
    q: &HashMap<String, String>,
) -> Response {
    let mut g = s.lock();
    *g.lists.entry(path.to_owned()).or_default() += 1;
    g.list_fields
        .entry(path.to_owned())
        .or_default()
        .push(filter.fields.clone());
    let rv = g.rv;
    let all: Vec<Value> = g
        .objects
        .get(collection)
        .map(|m| m.values().filter(|o| filter.matches(o)).cloned().collect())
        .unwrap_or_default();
    drop(g);
    let offset: usize = q
        .get("continue")
        .and_then(|c| c.split_once(':'))
        .and_then(|(_, o)| o.parse().ok())
        .unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = offset.saturating_add(limit).min(all.len());
    let items: Vec<Value> = all[offset.min(all.len())..end].to_vec();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if end < all.len() {
        meta["continue"] = json!(format!("{rv}:{end}"));
    }
    let (kind, api) = kind_of(collection);
    let body =
        json!({"kind": format!("{kind}List"), "apiVersion": api, "metadata": meta, "items": items});
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap();
    b.push(b'\n');
    Bytes::from(b)
}

async fn watch(
    s: Shared,
    collection: Collection,
    path: String,
    filter: Filter,
    q: HashMap<String, String>,
) -> Response {
    // No version (or "0"): from now on.
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v != 0)
        .unwrap_or_else(|| s.lock().rv);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs);
    let (too_old, as_status) = {
        let mut g = s.lock();
        if g.reject_watches {
            drop(g);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "watches are refused",
            );
        }
        *g.watches.entry(path.clone()).or_default() += 1;
        g.watch_versions
            .entry(path.clone())
            .or_default()
            .push(q.get("resourceVersion").cloned().unwrap_or_default());
        (from < g.compacted, g.gone_as_status)
    };
    let gone = format!("too old resource version: {from} ({})", s.lock().compacted);
    if too_old && as_status {
        return error(StatusCode::GONE, "Expired", &gone);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let cut = s.cut.lock().unwrap().clone();
    tokio::spawn(async move {
        if too_old {
            let _ = tx
                .send(line(
                    &json!({"type": "ERROR", "object": status(410, "Expired", &gone)}),
                ))
                .await;
            return;
        }
        let mut changed = s.changed.subscribe();
        let mut marks = s.bookmarks.subscribe();
        marks.mark_unchanged();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut sent = from;
        let mut bookmark_due = false;
        loop {
            changed.mark_unchanged();
            let (events, now): (Vec<Event>, u64) = {
                let g = s.lock();
                let evs = g
                    .events
                    .iter()
                    .filter(|e| e.rv > sent && e.collection == collection)
                    .cloned()
                    .collect();
                (evs, g.rv)
            };
            for e in events {
                sent = e.rv;
                if !filter.matches(&e.object) {
                    continue;
                }
                let ev = json!({"type": e.kind, "object": with_kind(&collection, e.object)});
                if tx.send(line(&ev)).await.is_err() {
                    return;
                }
            }
            // Every event up to `now` of this collection was sent: a bookmark may say so.
            if bookmark_due {
                bookmark_due = false;
                let (kind, api) = kind_of(&collection);
                let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api,
                    "metadata": {"resourceVersion": now.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}});
                if tx.send(line(&bm)).await.is_err() {
                    return;
                }
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cut.cancelled() => return,
                _ = sleep => return,
                r = changed.changed() => if r.is_err() { return },
                r = marks.changed() => {
                    if r.is_err() { return }
                    bookmark_due = bookmarks;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(Body::from_stream(stream))
        .unwrap()
}
