//! The Config Management API (`/agent/api/v1/configs`, `/agent/api/v1/config/{name}`), route
//! for route, envelope for envelope and status code for status code compatible with the old
//! agent, plus:
//!
//! * `GET /agent/api/v1/configs/{name}` on by default, with secrets shown as `<secret>`;
//! * `ETag` (the stored YAML's content hash) on GET, `If-Match` on PUT/POST/DELETE → 412;
//! * `GET /agent/api/v1/configs?hashes=true` adds `"hashes": {name: hash}` so clients can
//!   diff without reading configs back;
//! * a request body limit (413) and optional bearer-token auth for writes (401, 403);
//! * puts of different names run concurrently (no process-wide mutex).

// Handlers bail out early with the `Response` to send; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::config::load::parse_strict;
use crate::config::{GlobalConfig, InstanceConfigRaw};
use crate::kv::configstore::{content_hash, ConfigStore, ConfigStoreError, PutOutcome};
use crate::kv::KvError;

use super::{error, success};

/// Default request body limit (the old agent had none).
pub const DEFAULT_MAX_BODY: usize = 4 << 20;

/// Counters with the old agent's names (`agent_metrics_ha_configs_*_total`).
#[derive(Debug, Clone, Default)]
pub struct ApiMetrics {
    pub created: Counter,
    pub updated: Counter,
    pub deleted: Counter,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ApiMetrics::default();
        registry.register(
            "agent_metrics_ha_configs_created",
            "Total number of created scraping service configs",
            m.created.clone(),
        );
        registry.register(
            "agent_metrics_ha_configs_updated",
            "Total number of updated scraping service configs",
            m.updated.clone(),
        );
        registry.register(
            "agent_metrics_ha_configs_deleted",
            "Total number of deleted scraping service configs",
            m.deleted.clone(),
        );
        m
    }
}

/// Where the config store stands.
#[derive(Debug, Clone)]
pub enum StoreSlot {
    /// The scraping service is off: the old agent's "not connected" answers (404).
    Disabled,
    /// Not reachable yet (etcd down at start): 503 with the last error, so clients retry.
    Connecting(String),
    Ready(Arc<ConfigStore>),
}

/// What the API needs from the agent.
#[derive(Debug)]
pub struct ApiState {
    pub store: std::sync::RwLock<StoreSlot>,
    /// For validation of PUT bodies (the agent's `ApplyDefaults`); replaced on a reload.
    pub global: std::sync::RwLock<GlobalConfig>,
    /// Replaced on a reload.
    pub dangerous_allow_reading_files: std::sync::atomic::AtomicBool,
    /// `GET /agent/api/v1/configs/{name}`; on unless disabled.
    pub enable_get: bool,
    /// Bearer token required for writes, when set.
    pub write_token: Option<String>,
    pub max_body: usize,
    pub metrics: ApiMetrics,
}

/// The config routes.
pub fn router(state: Arc<ApiState>) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/agent/api/v1/configs", get(list))
        .route("/agent/api/v1/configs/{name}", get(get_config))
        .route(
            "/agent/api/v1/config/{name}",
            post(put_config).put(put_config).delete(delete_config),
        )
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            refuse_declared_oversize,
        ))
        .with_state(state)
}

/// A `Content-Length` over the limit is answered 413 at once, without waiting for (or
/// reading) the body; chunked bodies are cut off by `DefaultBodyLimit` once they pass it.
async fn refuse_declared_oversize(
    State(max): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {max} bytes"),
        );
    }
    next.run(req).await
}

impl ApiState {
    /// The store, or the response to give when there is none.
    fn store(&self, not_connected: &str) -> Result<Arc<ConfigStore>, Response> {
        let slot = self
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match slot {
            StoreSlot::Ready(s) => Ok(s),
            StoreSlot::Disabled => Err(error(StatusCode::NOT_FOUND, not_connected)),
            StoreSlot::Connecting(why) => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the config store is not reachable yet: {why}"),
            )),
        }
    }

    pub fn set_store(&self, slot: StoreSlot) {
        *self
            .store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = slot;
    }
}

/// The status for a store failure: an unreachable store is 503 (retry later), not 500.
fn store_error_status(e: &ConfigStoreError) -> StatusCode {
    match e {
        ConfigStoreError::Kv(KvError::EtcdTimeout { .. } | KvError::Etcd { .. }) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    hashes: Option<String>,
}

async fn list(State(state): State<Arc<ApiState>>, Query(q): Query<ListQuery>) -> Response {
    let store = match state.store("no config store running") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let all = match store.all().await {
        Ok(all) => all,
        // The old handler's wording, kept for scripts that match on it.
        Err(e) => {
            return error(
                store_error_status(&e),
                format!("failed to write config: {e}"),
            )
        }
    };
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let with_hashes = q.hashes.as_deref().is_some_and(|v| v == "true" || v == "1");
    let data = if with_hashes {
        let hashes: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|(n, y)| (n.clone(), serde_json::Value::String(content_hash(y))))
            .collect();
        serde_json::json!({"configs": names, "hashes": hashes})
    } else {
        serde_json::json!({"configs": names})
    };
    success(StatusCode::OK, Some(data))
}

/// Config names come percent-decoded from the path (`team%2Fa` is `team/a`). Names that could
/// escape a directory when used as a WAL folder, or that hold control characters, are refused.
fn check_name(name: Result<Path<String>, PathRejection>) -> Result<String, Response> {
    let Path(name) = name.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("could not decode config name: {}", e.body_text()),
        )
    })?;
    if name.is_empty()
        || name.chars().any(char::is_control)
        || name
            .split('/')
            .any(|seg| seg == "." || seg == ".." || seg.is_empty())
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("could not decode config name: invalid config name {name:?}: empty, `.` or `..` path segments and control characters are not allowed"),
        ));
    }
    Ok(name)
}

/// `ETag` values are quoted; `If-Match` may hold a quoted tag, `*`, or (beyond HTTP) `""`
/// meaning "must not exist".
fn if_match(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::IF_MATCH)?.to_str().ok()?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    Some(v.trim_matches('"').to_owned())
}

fn check_write_auth(state: &ApiState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &state.write_token else {
        return Ok(());
    };
    // The scheme is case-insensitive (RFC 7235 §2.1); the token is compared exactly.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        });
    match given {
        None => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required for writes",
            );
            // RFC 6750 §3: a 401 names the scheme the client should use.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            Err(resp)
        }
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(error(
            StatusCode::FORBIDDEN,
            "the bearer token is not valid",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn get_config(
    State(state): State<Arc<ApiState>>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    if !state.enable_get {
        return (StatusCode::NOT_FOUND, "404 - config endpoint is disabled").into_response();
    }
    let name = match check_name(name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let store = match state.store("not connected to store") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let yaml = match store.get(&name).await {
        Ok(Some(y)) => y,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("configuration {name} does not exist"),
            )
        }
        Err(e) => return error(store_error_status(&e), e.to_string()),
    };
    let etag = format!("\"{}\"", content_hash(&yaml));
    // Re-marshal through the config types so every secret shows as `<secret>`.
    let shown = match parse_strict::<InstanceConfigRaw>(&yaml, "an instance config").map(|raw| raw.to_yaml(false)) {
        Ok(Ok(y)) => y,
        _ => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not marshal config for response: configuration {name} in the store does not parse"),
            )
        }
    };
    let mut resp = success(StatusCode::OK, Some(serde_json::json!({"value": shown})));
    if let Ok(v) = etag.parse() {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn put_config(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if let Err(r) = check_write_auth(&state, &headers) {
        return r;
    }
    let name = match check_name(name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than the limit of {} bytes",
                    state.max_body
                ),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to read request body: {}", e.body_text()),
            )
        }
    };
    let store = match state.store("not connected to store") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("could not unmarshal config: body is not UTF-8: {e}"),
            )
        }
    };
    // Parsing and validating up to `max_body` bytes of YAML is CPU work: off the runtime's
    // worker threads, so a flood of large bodies cannot stall other requests and heartbeats.
    let stored = {
        let (state, name, text) = (Arc::clone(&state), name.clone(), text.to_owned());
        match tokio::task::spawn_blocking(move || validate_body(&state, &name, &text)).await {
            Ok(Ok(y)) => y,
            Ok(Err(r)) => return r,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to validate config: {e}"),
                )
            }
        }
    };
    if let Some(r) = shared_wal_folder(&store, &name).await {
        return r;
    }
    match store
        .put_if(&name, &stored, if_match(&headers).as_deref())
        .await
    {
        Ok(PutOutcome::Created) => {
            state.metrics.created.inc();
            tracing::info!(name, "config created");
            with_etag(success(StatusCode::CREATED, None), &stored)
        }
        Ok(PutOutcome::Updated) => {
            state.metrics.updated.inc();
            tracing::info!(name, "config updated");
            with_etag(success(StatusCode::OK, None), &stored)
        }
        Err(e @ ConfigStoreError::NotUnique { .. }) => error(
            StatusCode::BAD_REQUEST,
            format!("failed to check uniqueness of config: {e}"),
        ),
        Err(e @ ConfigStoreError::PreconditionFailed { .. }) => {
            error(StatusCode::PRECONDITION_FAILED, e.to_string())
        }
        Err(e) => error(store_error_status(&e), format!("failed to put config: {e}")),
    }
}

/// A 400 when another config's WAL folder would be this one's (`a/b` and `a--b` are both
/// `a--b`, see [`dir_name`](crate::instance::dir_name)). Only names with `/` or `--` can
/// collide, so only those pay for the listing. The instance manager refuses to run two such
/// configs at once anyway (for configs written around the API); this says so up front.
async fn shared_wal_folder(store: &ConfigStore, name: &str) -> Option<Response> {
    use crate::instance::dir_name;
    if !name.contains('/') && !name.contains("--") {
        return None;
    }
    let dir = dir_name(name);
    let names = store.list().await.ok()?;
    let other = names.iter().find(|n| *n != name && dir_name(n) == dir)?;
    Some(error(
        StatusCode::BAD_REQUEST,
        format!("failed to validate config: config {name:?} would share its WAL folder {dir:?} with config {other:?} (`/` in names is stored as `--`); choose another name"),
    ))
}

fn with_etag(mut resp: Response, stored: &str) -> Response {
    if let Ok(v) = format!("\"{}\"", content_hash(stored)).parse() {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// The old agent's PUT pipeline: strict parse (400 `could not unmarshal
/// config`), the name from the URL, `ApplyDefaults` and the file-reading rules (400 `failed to
/// validate config`). Returns the YAML to store: the config as written, re-marshalled with its
/// name set and secrets kept (what the old agent stores).
fn validate_body(state: &ApiState, name: &str, text: &str) -> Result<String, Response> {
    // yaml.v2's decoder answers an empty (or comments-only) document with io.EOF.
    if crate::config::load::is_blank_yaml(text) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "could not unmarshal config: EOF",
        ));
    }
    if let Err(e) = crate::config::load::check_yaml_limits(text) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("could not unmarshal config: {e}"),
        ));
    }
    let mut raw: InstanceConfigRaw = match serde_yaml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let e = crate::config::load::yaml_error(&e);
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("could not unmarshal config: {e}"),
            ));
        }
    };
    raw.name = name.to_owned();
    let global = state
        .global
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Err(e) = raw.validate(&global) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("failed to validate config: failed to apply defaults to {name:?}: {e}"),
        ));
    }
    if !state
        .dangerous_allow_reading_files
        .load(std::sync::atomic::Ordering::Acquire)
    {
        if let Some(e) = raw.file_reading_violation(&global) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("failed to validate config: {e}"),
            ));
        }
    }
    raw.to_yaml(true).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to marshal config: {e}"),
        )
    })
}

async fn delete_config(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    if let Err(r) = check_write_auth(&state, &headers) {
        return r;
    }
    let name = match check_name(name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let store = match state.store("not connected to store") {
        Ok(s) => s,
        Err(r) => return r,
    };
    match store.delete_if(&name, if_match(&headers).as_deref()).await {
        Ok(()) => {
            state.metrics.deleted.inc();
            tracing::info!(name, "config deleted");
            success(StatusCode::OK, None)
        }
        Err(e @ ConfigStoreError::NotExist { .. }) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ConfigStoreError::PreconditionFailed { .. }) => {
            error(StatusCode::PRECONDITION_FAILED, e.to_string())
        }
        Err(e) => error(
            store_error_status(&e),
            format!("error deleting configuration: {e}"),
        ),
    }
}
