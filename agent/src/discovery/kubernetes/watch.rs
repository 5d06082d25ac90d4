//! List and watch one kind of object, as client-go's reflector does: a paginated list gives the
//! full state and a `resourceVersion`; a watch from that version streams each change
//! (`ADDED`, `MODIFIED`, `DELETED`) and `BOOKMARK`s that move the version on. When the watch
//! ends (the server's `timeoutSeconds`, a dropped connection, an error) it is resumed from the
//! last version seen, without listing again; only a `410 Gone` (the version is too old, as an
//! HTTP status or an `ERROR` event) makes it list again. Failed requests are retried with an
//! exponential backoff (0.5 s doubling to 30 s), logged with the URL and the error.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{Connection, LIST_TIMEOUT, WATCH_SILENCE_GRACE};
use super::objects::Object;
use crate::config::sd::ResourceSelector;

/// What a watcher reports.
#[derive(Debug)]
pub enum Op<T> {
    /// The whole current state (first list, or a list after `410 Gone`).
    Reset(Vec<T>),
    /// Added or modified.
    Put(T),
    Deleted(T),
}

/// One list+watch: a collection path (`/api/v1/pods`, `/api/v1/namespaces/ns/pods`) and the
/// selectors sent with it.
#[derive(Debug, Clone)]
pub struct Resource {
    pub path: String,
    pub selector: ResourceSelector,
}

#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct List<T> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty")]
    items: Vec<T>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
    #[serde(rename = "continue")]
    continue_token: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", content = "object", rename_all = "UPPERCASE")]
#[serde(bound = "T: DeserializeOwned")]
enum WatchEvent<T> {
    Added(T),
    Modified(T),
    Deleted(T),
    Bookmark(Bookmark),
    Error(Status),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Bookmark {
    metadata: BookmarkMeta,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct BookmarkMeta {
    resource_version: String,
}

/// A `Status` object (error responses and `ERROR` watch events).
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Status {
    message: String,
    reason: String,
    code: u16,
}

/// How a watch request ended.
enum WatchEnd {
    /// The server closed the stream (its timeout): watch again from the last version.
    Closed,
    /// `410 Gone`: list again.
    Expired,
    Failed(String),
}

const PAGE_SIZE: usize = 500;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// The server-side timeout a watch asks for: 5 to 10 minutes, spread so that many watchers do
/// not all reconnect at once (client-go does the same).
fn watch_timeout_secs() -> u64 {
    use std::hash::BuildHasher;
    // A randomly keyed hasher is the standard library's source of random numbers.
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    300 + r % 300
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Lists and watches `res` until `shutdown`, sending each change through `tx` wrapped by
/// `wrap`. Returns when `shutdown` is cancelled or the receiver is gone.
pub async fn run<T, F, M>(
    conn: Connection,
    res: Resource,
    tx: mpsc::Sender<M>,
    wrap: F,
    shutdown: CancellationToken,
) where
    T: Object + DeserializeOwned,
    F: Fn(Op<T>) -> M,
{
    let mut backoff = Backoff(BACKOFF_MIN);
    let mut rv: Option<String> = None;
    let mut query = Vec::new();
    if !res.selector.label.is_empty() {
        query.push(format!("labelSelector={}", encode(&res.selector.label)));
    }
    if !res.selector.field.is_empty() {
        query.push(format!("fieldSelector={}", encode(&res.selector.field)));
    }
    let url = format!("{}{}", conn.base, res.path);
    let shown = format!("{}{}", conn.shown_base, res.path);
    loop {
        if rv.is_none() {
            let listed = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = list::<T>(&conn, &url, &query) => r,
            };
            match listed {
                Ok((items, version)) => {
                    tracing::debug!(url = %shown, objects = items.len(), resource_version = %version, "kubernetes_sd: listed");
                    if tx.send(wrap(Op::Reset(items))).await.is_err() {
                        return;
                    }
                    rv = Some(version);
                    backoff.reset();
                }
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(url = %shown, error = %e, retry_in = ?wait, "kubernetes_sd: list failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            }
        }
        let Some(version) = rv.clone() else { continue };
        let mut last = version;
        let end = tokio::select! {
            _ = shutdown.cancelled() => return,
            end = watch::<T, F, M>(&conn, &url, &query, &mut last, &tx, &wrap, &mut backoff) => end,
        };
        rv = Some(last);
        match end {
            WatchEnd::Closed => {}
            WatchEnd::Expired => {
                tracing::info!(url = %shown, "kubernetes_sd: resource version expired (410 Gone); listing again");
                rv = None;
            }
            WatchEnd::Failed(e) => {
                if tx.is_closed() {
                    return;
                }
                let wait = backoff.next();
                tracing::warn!(url = %shown, error = %e, retry_in = ?wait, "kubernetes_sd: watch failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Reads an error response's `Status` message, or its status line.
async fn status_error(resp: reqwest::Response) -> (u16, String) {
    let code = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let msg = serde_json::from_slice::<Status>(&body)
        .ok()
        .filter(|s| !s.message.is_empty())
        .map(|s| format!("{}: {}", s.reason, s.message))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    (
        code.as_u16(),
        format!("server returned HTTP status {code}: {msg}"),
    )
}

async fn list<T: DeserializeOwned>(
    conn: &Connection,
    url: &str,
    query: &[String],
) -> Result<(Vec<T>, String), String> {
    let mut items = Vec::new();
    let mut cont = String::new();
    loop {
        let mut q = query.to_vec();
        q.push(format!("limit={PAGE_SIZE}"));
        if !cont.is_empty() {
            q.push(format!("continue={}", encode(&cont)));
        }
        let full = format!("{url}?{}", q.join("&"));
        let rb = conn
            .client
            .get(&full)
            .header("Accept", "application/json")
            .timeout(LIST_TIMEOUT);
        let resp = conn.client.send(rb).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            let (code, msg) = status_error(resp).await;
            // An expired continue token: start the list over.
            if code == 410 && !cont.is_empty() {
                items.clear();
                cont.clear();
                continue;
            }
            return Err(msg);
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let page: List<T> =
            serde_json::from_slice(&body).map_err(|e| format!("decoding the list: {e}"))?;
        items.extend(page.items);
        if page.metadata.continue_token.is_empty() {
            return Ok((items, page.metadata.resource_version));
        }
        cont = page.metadata.continue_token;
    }
}

async fn watch<T, F, M>(
    conn: &Connection,
    url: &str,
    query: &[String],
    rv: &mut String,
    tx: &mpsc::Sender<M>,
    wrap: &F,
    backoff: &mut Backoff,
) -> WatchEnd
where
    T: Object + DeserializeOwned,
    F: Fn(Op<T>) -> M,
{
    let timeout = watch_timeout_secs();
    let mut q = query.to_vec();
    q.push("watch=1".into());
    q.push("allowWatchBookmarks=true".into());
    q.push(format!("resourceVersion={}", encode(rv)));
    q.push(format!("timeoutSeconds={timeout}"));
    let full = format!("{url}?{}", q.join("&"));
    let rb = conn.client.get(&full).header("Accept", "application/json");
    let mut resp = match tokio::time::timeout(LIST_TIMEOUT, conn.client.send(rb)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return WatchEnd::Failed(e.to_string()),
        Err(_) => return WatchEnd::Failed("no response within 120s".into()),
    };
    if resp.status() == reqwest::StatusCode::GONE {
        return WatchEnd::Expired;
    }
    if !resp.status().is_success() {
        return WatchEnd::Failed(status_error(resp).await.1);
    }
    let silence = Duration::from_secs(timeout) + WATCH_SILENCE_GRACE;
    let mut buf: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let chunk = match tokio::time::timeout(silence, resp.chunk()).await {
            Err(_) => return WatchEnd::Failed(format!("no data for {silence:?}")),
            Ok(Err(e)) => return WatchEnd::Failed(e.to_string()),
            Ok(Ok(None)) => {
                return if buf.iter().all(u8::is_ascii_whitespace) {
                    WatchEnd::Closed
                } else {
                    WatchEnd::Failed("the watch stream ended inside an event".into())
                }
            }
            Ok(Ok(Some(c))) => c,
        };
        if first {
            // The watch is established: a later failure starts the backoff anew.
            backoff.reset();
            first = false;
        }
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchEvent<T> = match serde_json::from_slice(line) {
                Ok(e) => e,
                Err(e) => return WatchEnd::Failed(format!("decoding a watch event: {e}")),
            };
            let op = match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    *rv = o.meta().resource_version.clone();
                    Op::Put(o)
                }
                WatchEvent::Deleted(o) => {
                    *rv = o.meta().resource_version.clone();
                    Op::Deleted(o)
                }
                WatchEvent::Bookmark(b) => {
                    *rv = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Error(s) if s.code == 410 => return WatchEnd::Expired,
                WatchEvent::Error(s) => {
                    return WatchEnd::Failed(format!(
                        "watch error {} {}: {}",
                        s.code, s.reason, s.message
                    ))
                }
            };
            if tx.send(wrap(op)).await.is_err() {
                return WatchEnd::Failed("discovery stopped".into());
            }
        }
        buf.drain(..start);
    }
}
