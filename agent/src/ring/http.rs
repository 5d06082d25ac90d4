//! `/debug/ring`, as the old agent serves it (dskit's ring page; docs/compat.md, *Ring page*):
//!
//! - `GET` (any method but POST): the HTML page; `?tokens=true` lists every member's tokens.
//! - `GET` with an `Accept` header containing `application/json`:
//!   `{"shards":[{"id","state","address","timestamp","registered_timestamp","zone","tokens",
//!   "ownership","member_state"}],"now":"..."}`.
//! - `POST` with the form field `forget=<instance id>`: a CAS removing that member, then
//!   `302 Found` with `Location: #`; on failure `500` and
//!   `error forgetting instance '<id>': <error>`.
//!
//! The ring is read from the KV store on every request, so the page never shows a stale view.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::kv::KvStore;

use super::render::{render_html, render_json, TargetsSummary};
use super::store::{forget, read_ring};

/// What the ring page needs.
#[derive(Clone, Debug)]
pub struct RingPageState {
    pub store: Arc<dyn KvStore>,
    /// Full ring key, e.g. `collectors/agent`.
    pub ring_key: String,
    pub heartbeat_timeout: Duration,
    /// Number of configs each instance ID owns, for the "Configs owned" column.
    pub configs_owned: watch::Receiver<HashMap<String, usize>>,
    /// "Now" for heartbeat ages.
    pub clock: Clock,
    /// Under target sharding: who scrapes how many targets (`None` in config sharding).
    pub targets: Option<TargetsSource>,
}

/// Computes the target sharding figures when the page is read.
#[derive(Clone)]
pub struct TargetsSource(pub Arc<dyn Fn() -> TargetsSummary + Send + Sync>);

impl std::fmt::Debug for TargetsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetsSource")
    }
}

/// A router serving `/debug/ring` (any method).
pub fn router(state: RingPageState) -> Router {
    Router::new()
        .route("/debug/ring", any(ring_page))
        .with_state(Arc::new(state))
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn plain(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn ring_page(
    State(state): State<Arc<RingPageState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if method == Method::POST {
        // Like Go's FormValue: the body's field, else the query's; a missing field forgets
        // nothing and still redirects.
        let id = url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "forget")
            .map(|(_, v)| v.into_owned())
            .or_else(|| query_param(query.as_deref(), "forget"))
            .unwrap_or_default();
        if !id.is_empty() {
            match forget(&state.store, &state.ring_key, &id).await {
                Ok(removed) => {
                    tracing::info!(id, removed, "ring member forgotten from /debug/ring")
                }
                Err(e) => {
                    return plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("error forgetting instance '{id}': {e}\n"),
                    )
                }
            }
        }
        return (StatusCode::FOUND, [(header::LOCATION, "#")]).into_response();
    }
    let desc = match read_ring(state.store.as_ref(), &state.ring_key).await {
        Ok(d) => d,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error reading the ring: {e}\n"),
            )
        }
    };
    let now = state.clock.now();
    let targets = state.targets.as_ref().map(|t| (t.0)());
    let wants_json = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("application/json")));
    if wants_json {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            render_json(&desc, now, state.heartbeat_timeout, targets.as_ref()),
        )
            .into_response();
    }
    let show_tokens = query_param(query.as_deref(), "tokens").as_deref() == Some("true");
    let owned = state.configs_owned.borrow().clone();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render_html(
            &desc,
            now,
            state.heartbeat_timeout,
            show_tokens,
            &owned,
            targets.as_ref(),
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::InMemoryStore;
    use crate::ring::model::{InstanceDesc, InstanceState};
    use crate::ring::store::modify_ring;

    async fn app() -> (String, Arc<dyn KvStore>) {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let now = Clock::system().unix_secs();
        modify_ring(store.as_ref(), "collectors/agent", "seed", |d| {
            for (id, token) in [("agent-1", 100u32), ("agent-2", 1 << 31)] {
                d.ingesters.insert(
                    id.into(),
                    InstanceDesc {
                        addr: format!("{id}:12345"),
                        timestamp: now,
                        state: InstanceState::Active as i32,
                        tokens: vec![token],
                        id: id.into(),
                        ..Default::default()
                    },
                );
            }
            true
        })
        .await
        .expect("seed");
        let (tx, configs_owned) = watch::channel(HashMap::from([("agent-1".to_owned(), 3)]));
        let state = RingPageState {
            store: store.clone(),
            ring_key: "collectors/agent".into(),
            heartbeat_timeout: Duration::from_secs(60),
            configs_owned,
            clock: Clock::system(),
            targets: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/debug/ring", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _tx = tx; // the page reads the last value the cluster published

            let _ = axum::serve(listener, router(state)).await;
        });
        (url, store)
    }

    fn client() -> reqwest::Client {
        crate::httpclient::ensure_crypto_provider();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    async fn send(req: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, String) {
        let resp = req.send().await.expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.expect("body"))
    }

    #[tokio::test]
    async fn html_json_and_forget() {
        let (url, store) = app().await;
        let c = client();
        let (code, headers, html) = send(c.get(&url)).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(
            html.contains("<td>agent-1</td>") && html.contains("<td>agent-2</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"num\">3</td>"),
            "configs owned column: {html}"
        );
        assert!(!html.contains("Tokens: 100"));
        let (_, _, html) = send(c.get(format!("{url}?tokens=true"))).await;
        assert!(html.contains("Tokens: 100"), "{html}");

        let req = c
            .get(&url)
            .header(header::ACCEPT, "text/html, application/json");
        let (code, _, json) = send(req).await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["shards"][0]["id"], "agent-1");
        assert_eq!(v["shards"][1]["state"], "ACTIVE");

        let post = c
            .post(&url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("forget=agent-2");
        let (code, headers, _) = send(post).await;
        assert_eq!(code, StatusCode::FOUND);
        assert_eq!(headers[header::LOCATION], "#");
        let ring = read_ring(store.as_ref(), "collectors/agent")
            .await
            .expect("ring");
        assert_eq!(ring.ingesters.keys().collect::<Vec<_>>(), vec!["agent-1"]);
    }

    #[tokio::test]
    async fn forget_failure_is_500_with_the_old_text() {
        let (url, store) = app().await;
        let c = client();
        store
            .put("collectors/agent", b"\xff\xff\xff".to_vec())
            .await
            .expect("corrupt");
        let (code, _, body) = send(c.post(&url).body("forget=agent-1")).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            body.starts_with("error forgetting instance 'agent-1': "),
            "{body}"
        );
        let (code, _, body) = send(c.get(&url)).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("collectors/agent"), "{body}");
    }
}
