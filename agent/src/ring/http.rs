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
//! The ring is read from the KV store on every request, so the page never shows a stale view,
//! except while the store cannot be read: then the page shows the ring this agent last read
//! (its ring view's) under a banner "KV store unreachable since <time> (<error>); showing the
//! ring as read at <time>" (JSON: `kv_store_unreachable`, `{"since","error","ring_read_at"}`),
//! and answers 503 with the reason only when the agent has never read it. A ring value that
//! does not decode is still a 500.
//! During and just after a KV store outage, members are judged with the agent's own heartbeat
//! grace (the one it assigns configs by, [`KvHealth::grace`]), and the page says so: the JSON's
//! `state` is that judgement and `heartbeat_grace` (`{"from","until"}`) says which grace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tokio::sync::watch;

use crate::clock::{unix_secs, Clock};
use crate::kv::KvStore;

use super::lifecycler::{KvHealth, KvOutage};
use super::view::LastRead;

use super::model::Desc;
use super::render::{
    render_html, rfc3339_seconds, status_json, KvUnreachable, StatusJson, TargetsSummary,
};
use super::store::{forget, read_ring, RingStoreError};

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
    /// This agent's ring writes reaching the store (its lifecycler's); `None`: heartbeats are
    /// judged by age alone.
    pub kv_health: Option<watch::Receiver<KvHealth>>,
    /// The ring this agent last read (its ring view's), shown while the store cannot be read;
    /// `None`: the page answers 503 then.
    pub last_read: Option<LastRead>,
    /// Since when and why this agent's ring writes fail (its lifecycler's).
    pub kv_outage: Option<watch::Receiver<Option<KvOutage>>>,
}

/// Computes the target sharding figures when the page is read.
#[derive(Clone)]
pub struct TargetsSource(pub Arc<dyn Fn() -> TargetsSummary + Send + Sync>);

impl std::fmt::Debug for TargetsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetsSource")
    }
}

/// The page's state and, while its reads of the store fail, since when.
struct Page {
    s: RingPageState,
    failing_since: StdMutex<Option<SystemTime>>,
}

/// A router serving `/debug/ring` (any method).
pub fn router(state: RingPageState) -> Router {
    Router::new()
        .route("/debug/ring", any(ring_page))
        .with_state(Arc::new(Page {
            s: state,
            failing_since: StdMutex::new(None),
        }))
}

/// The ring to show: read from the store now, or, while the store cannot be read, the one this
/// agent last read with why; `Err` is the answer when there is none to show.
async fn ring_to_show(
    page: &Page,
    now: SystemTime,
) -> Result<(Desc, Option<KvUnreachable>), Response> {
    let state = &page.s;
    let failing_since = || {
        page.failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let error = match read_ring(state.store.as_ref(), &state.ring_key).await {
        Ok(d) => {
            *failing_since() = None;
            return Ok((d, None));
        }
        // The store answered with a value that does not decode: nothing to wait out.
        Err(e @ RingStoreError::Decode { .. }) => {
            return Err(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error reading the ring: {e}\n"),
            ))
        }
        Err(e) => e,
    };
    let last = state
        .last_read
        .as_ref()
        .and_then(|l| Some(((**l.ring.borrow()).clone(), (*l.read_at.borrow())?)));
    // The earliest failure known: this agent's ring writes', or this page's reads' (unless the
    // ring view read the store after those: then this is another outage).
    let mut since = {
        let mut f = failing_since();
        if f.is_some_and(|t| last.as_ref().is_some_and(|(_, read_at)| *read_at > t)) {
            *f = None;
        }
        *f.get_or_insert(now)
    };
    if let Some(o) = state.kv_outage.as_ref().and_then(|o| o.borrow().clone()) {
        since = since.min(o.since);
    }
    let since = rfc3339_seconds(unix_secs(since));
    match last {
        Some((desc, read_at)) => Ok((
            desc,
            Some(KvUnreachable {
                since,
                error: error.to_string(),
                ring_read_at: rfc3339_seconds(unix_secs(read_at)),
            }),
        )),
        None => Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this agent has not read the ring from the KV store since it started, and the \
                 store is unreachable (since {since}): {error}\n"
            ),
        )),
    }
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
    State(page): State<Arc<Page>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let state = &page.s;
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
    let now = state.clock.now();
    let (desc, unreachable) = match ring_to_show(&page, now).await {
        Ok(shown) => shown,
        Err(answer) => return answer,
    };
    let grace = state
        .kv_health
        .as_ref()
        .and_then(|h| h.borrow().grace(state.heartbeat_timeout, now));
    let targets = state.targets.as_ref().map(|t| (t.0)());
    let wants_json = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("application/json")));
    if wants_json {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            // Serializing plain strings, integers and finite floats cannot fail.
            serde_json::to_string(&StatusJson {
                kv_store_unreachable: unreachable,
                ..status_json(&desc, now, state.heartbeat_timeout, grace, targets.as_ref())
            })
            .unwrap_or_default(),
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
            grace,
            show_tokens,
            &owned,
            targets.as_ref(),
            unreachable.as_ref(),
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

    /// Puts an ACTIVE member `id`, with one token and its heartbeat at `heartbeat` (Unix
    /// seconds), into the ring at `key`.
    async fn seed_member(
        store: &(dyn KvStore + 'static),
        key: &str,
        id: &str,
        token: u32,
        heartbeat: i64,
    ) {
        modify_ring(store, key, "seed", |d| {
            d.ingesters.insert(
                id.into(),
                InstanceDesc {
                    addr: format!("{id}:12345"),
                    timestamp: heartbeat,
                    state: InstanceState::Active as i32,
                    tokens: vec![token],
                    id: id.into(),
                    ..Default::default()
                },
            );
            true
        })
        .await
        .expect("seed");
    }

    async fn app() -> (String, Arc<dyn KvStore>) {
        let store: Arc<dyn KvStore> = Arc::new(InMemoryStore::new());
        let now = Clock::system().unix_secs();
        for (id, token) in [("agent-1", 100u32), ("agent-2", 1 << 31)] {
            seed_member(store.as_ref(), "collectors/agent", id, token, now).await;
        }
        let (tx, configs_owned) = watch::channel(HashMap::from([("agent-1".to_owned(), 3)]));
        let state = RingPageState {
            store: store.clone(),
            ring_key: "collectors/agent".into(),
            heartbeat_timeout: Duration::from_secs(60),
            configs_owned,
            clock: Clock::system(),
            targets: None,
            kv_health: None,
            last_read: None,
            kv_outage: None,
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

    /// After a KV store outage the page shows what the agent decides on: a member whose
    /// heartbeat the outage made old is ACTIVE (the agent's grace, labelled as such), not
    /// UNHEALTHY as a page judging by heartbeat age alone shows it (the page before, and the
    /// same page here without the agent's KV health).
    #[tokio::test]
    async fn after_a_store_outage_the_page_shows_the_agents_grace() {
        use crate::kv::testing::FaultyStore;
        use crate::ring::lifecycler::{KvHealth, Lifecycler, LifecyclerSettings};

        const KEY: &str = "collectors/agent";
        // Long enough that the page is read well within the grace on a slow machine.
        let timeout = Duration::from_secs(60);
        let faulty = FaultyStore::new(Arc::new(InMemoryStore::new()));
        let store: Arc<dyn KvStore> = faulty.clone();
        let stale = Clock::system().unix_secs() - 300;
        seed_member(store.as_ref(), KEY, "old", 1 << 31, stale).await;
        // This agent starts while the store is down, and registers once it is back.
        faulty.set_down(true);
        let me = Lifecycler::start(
            store.clone(),
            LifecyclerSettings {
                num_tokens: 8,
                heartbeat_timeout: timeout,
                ..LifecyclerSettings::for_test(KEY, "me")
            },
            Clock::system(),
        );
        let mut health = me.subscribe_kv_health();
        tokio::time::timeout(
            Duration::from_secs(30),
            health.wait_for(|h| *h == KvHealth::Failing),
        )
        .await
        .expect("registration failed while the store was down")
        .expect("health");
        faulty.set_down(false);
        tokio::time::timeout(
            Duration::from_secs(30),
            health.wait_for(|h| matches!(h, KvHealth::RecoveredAt(_))),
        )
        .await
        .expect("registered once the store was back")
        .expect("health");

        let serve = |kv_health: Option<watch::Receiver<KvHealth>>| {
            let store = store.clone();
            async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let url = format!("http://{}/debug/ring", listener.local_addr().expect("addr"));
                let state = RingPageState {
                    store,
                    ring_key: KEY.into(),
                    heartbeat_timeout: timeout,
                    configs_owned: watch::channel(HashMap::new()).1,
                    clock: Clock::system(),
                    targets: None,
                    kv_health,
                    last_read: None,
                    kv_outage: None,
                };
                tokio::spawn(async move { axum::serve(listener, router(state)).await });
                url
            }
        };
        let c = client();
        let json = |url: String| {
            let req = c.get(url).header(header::ACCEPT, "application/json");
            async move {
                let (code, _, body) = send(req).await;
                assert_eq!(code, StatusCode::OK, "{body}");
                serde_json::from_str::<serde_json::Value>(&body).expect("JSON")
            }
        };
        let old = |v: &serde_json::Value| {
            v["shards"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["id"] == "old"))
                .cloned()
                .unwrap_or_else(|| panic!("no member old: {v}"))
        };

        // By heartbeat age alone (no KV health): UNHEALTHY.
        let plain = json(serve(None).await).await;
        assert_eq!(old(&plain)["state"], "UNHEALTHY", "{plain}");
        assert!(plain.get("heartbeat_grace").is_none(), "{plain}");

        // As the agent judges it: ACTIVE, with the grace said, the stored heartbeat unchanged.
        let url = serve(Some(me.subscribe_kv_health())).await;
        let v = json(url.clone()).await;
        assert_eq!(old(&v)["state"], "ACTIVE", "{v}");
        assert_eq!(
            old(&v)["timestamp"],
            crate::ring::render::rfc3339_seconds(stale),
            "{v}"
        );
        let grace = &v["heartbeat_grace"];
        assert!(
            grace["from"].is_string() && grace["until"].is_string(),
            "{v}"
        );
        let (code, _, html) = send(c.get(&url)).await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            html.contains("heartbeats again at") && html.contains("healthy by the KV outage grace"),
            "{html}"
        );
        assert!(!html.contains(">UNHEALTHY<"), "{html}");
    }

    /// While the KV store is down the page shows the ring the agent last read (its ring view),
    /// with a banner saying since when the store is unreachable, why, and when the ring shown was
    /// read; the agent's own health judgement (its lifecycler failing: nobody judged by age);
    /// the same in the JSON (`kv_store_unreachable`, the old fields as they are). Before the
    /// agent has ever read the ring: 503 saying so. (Both were 500 "error reading the ring".)
    #[tokio::test]
    async fn while_the_store_is_down_the_page_shows_the_last_ring_read() {
        use crate::kv::testing::FaultyStore;
        use crate::ring::lifecycler::{Lifecycler, LifecyclerSettings};
        use crate::ring::view::RingView;

        const KEY: &str = "collectors/agent";
        let timeout = Duration::from_secs(60);
        let faulty = FaultyStore::new(Arc::new(InMemoryStore::new()));
        let store: Arc<dyn KvStore> = faulty.clone();
        seed_member(
            store.as_ref(),
            KEY,
            "other",
            1 << 31,
            Clock::system().unix_secs(),
        )
        .await;
        let me = Lifecycler::start(
            store.clone(),
            LifecyclerSettings {
                num_tokens: 8,
                heartbeat_timeout: timeout,
                heartbeat_period: Duration::from_millis(100),
                ..LifecyclerSettings::for_test(KEY, "me")
            },
            Clock::system(),
        );
        let view = RingView::start(store.clone(), KEY.into(), timeout, Clock::system());
        // The view has read the ring with both members in it.
        let mut ring = view.subscribe();
        tokio::time::timeout(
            Duration::from_secs(30),
            ring.wait_for(|d| d.ingesters.len() == 2),
        )
        .await
        .expect("the view read both members")
        .expect("view");
        let serve = |last_read: Option<LastRead>| {
            let state = RingPageState {
                store: store.clone(),
                ring_key: KEY.into(),
                heartbeat_timeout: timeout,
                configs_owned: watch::channel(HashMap::new()).1,
                clock: Clock::system(),
                targets: None,
                kv_health: Some(me.subscribe_kv_health()),
                last_read,
                kv_outage: Some(me.subscribe_kv_outage()),
            };
            async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let url = format!("http://{}/debug/ring", listener.local_addr().expect("addr"));
                tokio::spawn(async move { axum::serve(listener, router(state)).await });
                url
            }
        };
        let url = serve(Some(view.last_read())).await;
        let never_read = serve(None).await;

        faulty.set_down(true);
        // The agent's heartbeats fail (its judgement: nobody is judged by heartbeat age).
        let mut outage = me.subscribe_kv_outage();
        tokio::time::timeout(Duration::from_secs(30), outage.wait_for(Option::is_some))
            .await
            .expect("the lifecycler's heartbeat failed")
            .expect("outage");
        let since = outage.borrow().clone().expect("outage").since;

        let c = client();
        let (code, headers, html) = send(c.get(&url)).await;
        assert_eq!(code, StatusCode::OK, "{html}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(
            html.contains("<td>me</td>") && html.contains("<td>other</td>"),
            "{html}"
        );
        let read_at = view.last_read().read_at.borrow().expect("read");
        let banner = format!(
            "KV store unreachable since {} (",
            crate::ring::render::rfc3339_seconds(crate::clock::unix_secs(since))
        );
        assert!(html.contains(&banner), "{banner}: {html}");
        assert!(html.contains("faulty in-memory"), "the error: {html}");
        assert!(
            html.contains(&format!(
                "showing the ring as read at {}.",
                crate::ring::render::rfc3339_seconds(crate::clock::unix_secs(read_at))
            )),
            "{html}"
        );
        assert!(html.contains("cannot write its heartbeat"), "{html}");

        let req = c.get(&url).header(header::ACCEPT, "application/json");
        let (code, _, json) = send(req).await;
        assert_eq!(code, StatusCode::OK, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["shards"][0]["id"], "me", "{v}");
        assert_eq!(v["shards"][1]["id"], "other", "{v}");
        assert_eq!(v["shards"][1]["state"], "ACTIVE", "{v}");
        assert!(v["now"].is_string(), "{v}");
        let u = &v["kv_store_unreachable"];
        assert!(
            u["since"].is_string() && u["ring_read_at"].is_string(),
            "{v}"
        );
        assert!(
            u["error"]
                .as_str()
                .unwrap_or_default()
                .contains("faulty in-memory"),
            "{v}"
        );
        assert!(v["heartbeat_grace"]["from"].is_string(), "{v}");

        // Never read: 503 with the reason.
        let (code, _, body) = send(c.get(&never_read)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("has not read the ring") && body.contains("faulty in-memory"),
            "{body}"
        );

        // Back: read fresh, no banner.
        faulty.set_down(false);
        let (code, _, html) = send(c.get(&url)).await;
        assert_eq!(code, StatusCode::OK);
        assert!(!html.contains("KV store unreachable"), "{html}");
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
