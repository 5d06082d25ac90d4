//! The agent's own routes: health and readiness, its config file, reloads, its metrics, the
//! instances and targets it runs, and `/debug/ring`.
//!
//! `/-/reload` (any method) asks the daemon to re-read `-config.file` (see
//! `agent/src/daemon/supervisor.rs`): 200 with an empty body when it was applied (or there is
//! none), 400 with the reason otherwise (naming file:line, or the fields that need a restart).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};

use super::{not_found, success, text};
use crate::instance::manager::InstanceManager;

/// Asks the daemon to reload its config file and waits for the outcome (the reason it was
/// refused, as a message). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader(mpsc::Sender<ReloadRequest>);

/// One reload request: the daemon answers on `reply`.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<(), String>>,
}

impl Reloader {
    /// A reloader and the receiving end the daemon serves.
    pub fn channel() -> (Reloader, mpsc::Receiver<ReloadRequest>) {
        let (tx, rx) = mpsc::channel(8);
        (Reloader(tx), rx)
    }

    pub async fn reload(&self) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        if self.0.send(ReloadRequest { reply }).await.is_err() {
            return Err("the agent is shutting down".to_owned());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the agent is shutting down".to_owned()))
    }
}

/// What these routes read.
#[derive(Debug)]
pub struct StatusState {
    /// `true` once the configs this agent owns run.
    pub ready: watch::Receiver<bool>,
    pub registry: Arc<Registry>,
    pub manager: Arc<InstanceManager>,
    /// `/debug/ring`, once the ring is reachable.
    pub ring_page: Arc<OnceLock<Router>>,
    pub scraping_service: bool,
    /// What `GET /-/config` shows (`None`: the route answers 404, as without
    /// `-config.enable-read-api`).
    pub read_api: Option<ReadApi>,
    pub reloader: Reloader,
    /// Read at each `/metrics` scrape.
    pub agent_metrics: crate::telemetry::AgentMetrics,
    pub wal_directory: PathBuf,
    /// The cluster, once joined.
    pub cluster: Arc<OnceLock<Arc<crate::cluster::Cluster>>>,
}

/// What `GET /-/config` shows.
#[derive(Debug, Clone)]
pub enum ReadApi {
    /// The config in effect, as loaded (decoded, `-config.expand-env` applied, secrets as
    /// `<secret>`): set at start and by each successful reload, whatever the file holds now.
    Loaded(watch::Receiver<Option<String>>),
    EmbeddedDefault,
}

pub fn router(state: Arc<StatusState>) -> Router {
    Router::new()
        .route(
            "/-/healthy",
            any(|| async { text(StatusCode::OK, "Agent is Healthy.\n") }),
        )
        .route("/-/ready", any(ready))
        .route("/-/config", any(show_config))
        .route("/-/reload", any(reload))
        .route("/metrics", get(metrics))
        .route("/agent/api/v1/metrics/instances", get(instances))
        .route("/agent/api/v1/instances", get(instances))
        .route("/agent/api/v1/metrics/targets", get(targets))
        .route("/agent/api/v1/targets", get(targets))
        .route("/debug/ring", any(debug_ring))
        .route("/agent/api/v1/ring/owner", get(debug_ring))
        .with_state(state)
}

async fn ready(State(state): State<Arc<StatusState>>) -> Response {
    if *state.ready.borrow() {
        text(StatusCode::OK, "Agent is Ready.\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Metrics are not ready yet.\n",
        )
    }
}

/// `GET /-/config`: the config in effect (as loaded at start or by the last successful reload),
/// secrets redacted; only with the read API enabled.
async fn show_config(State(state): State<Arc<StatusState>>) -> Response {
    let body = match &state.read_api {
        None => {
            return (StatusCode::NOT_FOUND, "404 - config endpoint is disabled").into_response()
        }
        Some(ReadApi::EmbeddedDefault) => "# embedded default: no config file\n".to_owned(),
        Some(ReadApi::Loaded(shown)) => {
            let Some(yaml) = shown.borrow().clone() else {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not render the loaded config\n",
                );
            };
            yaml
        }
    };
    ([(header::CONTENT_TYPE, "text/yaml; charset=utf-8")], body).into_response()
}

async fn reload(State(state): State<Arc<StatusState>>) -> Response {
    match state.reloader.reload().await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// `GET /metrics`: the agent's own metrics in the Prometheus text format.
async fn metrics(State(state): State<Arc<StatusState>>) -> Response {
    state
        .agent_metrics
        .refresh(&state.manager, &state.wal_directory)
        .await;
    if let Some(cluster) = state.cluster.get() {
        state
            .agent_metrics
            .refresh_cluster(cluster, state.manager.shared().clock.now());
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &state.registry) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// `GET /agent/api/v1/metrics/instances`: the sorted names of the configs this agent runs.
async fn instances(State(state): State<Arc<StatusState>>) -> Response {
    let names = state.manager.names();
    success(StatusCode::OK, Some(serde_json::json!(names)))
}

/// `GET /agent/api/v1/metrics/targets`: this agent's targets, in the old agent's shape
/// (`agent/src/scrape/manager.rs` builds it).
async fn targets(State(state): State<Arc<StatusState>>) -> Response {
    let t = state.manager.targets();
    let data = crate::scrape::manager::targets_response(t)["data"].take();
    success(StatusCode::OK, Some(data))
}

/// `/debug/ring` and `/agent/api/v1/ring/owner`, served by the cluster's ring page router
/// (`agent/src/ring/http.rs`, `agent/src/cluster/report.rs`) once the ring is reachable.
async fn debug_ring(
    State(state): State<Arc<StatusState>>,
    req: axum::extract::Request,
) -> Response {
    use tower::ServiceExt;
    match state.ring_page.get() {
        Some(r) => match r.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(e) => match e {},
        },
        None if !state.scraping_service => not_found().await,
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the ring is not reachable yet\n",
        ),
    }
}
