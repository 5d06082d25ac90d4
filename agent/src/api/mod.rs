//! The agent's HTTP API. Every route, and the file that handles it:
//!
//! | route | handler |
//! |---|---|
//! | `GET /agent/api/v1/configs`, `GET /agent/api/v1/configs/{name}`, `PUT`/`POST`/`DELETE /agent/api/v1/config/{name}` | [`configs`] (the Config Management API) |
//! | `/-/healthy`, `/-/ready`, `/-/config`, `/-/reload`, `GET /metrics` | [`status`] |
//! | `GET /agent/api/v1/metrics/instances` (and `/agent/api/v1/instances`), `GET /agent/api/v1/metrics/targets` (and `/agent/api/v1/targets`) | [`status`] |
//! | `/debug/ring` (HTML, JSON, the Forget button's POST) | [`crate::ring::http`], mounted by [`status`] once the ring is reachable |
//! | `GET /agent/api/v1/ring/owner?target=…` (target sharding: who scrapes a target, and why) | [`crate::cluster::report`], mounted with the ring page |
//! | anything else | [`not_found`]: `404 page not found` |
//!
//! JSON answers use the old agent's envelopes: `{"status":"success","data":…}` (data left out
//! when empty) and `{"status":"error","data":{"error":"…"}}`, `Content-Type:
//! application/json`, no trailing newline.
//!
//! [`serve`] is where the HTTP server runs on its listener: the one place to change how
//! connections are accepted; with `server.http_tls_config` it serves HTTPS ([`tls`]).

pub mod configs;
pub mod status;
pub mod tls;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use configs::{ApiMetrics, ApiState, StoreSlot, DEFAULT_MAX_BODY};

/// Every route of the agent (see the module docs).
pub fn router(configs: Arc<ApiState>, status: Arc<status::StatusState>) -> Router {
    status::router(status)
        .merge(configs::router(configs))
        .fallback(not_found)
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` is cancelled;
/// connections in flight then finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tls::ServerTls>>,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
        Some(tls) => {
            axum::serve(tls::TlsListener::new(listener, tls), app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    }
}

fn envelope(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The envelope in the old agent's field order (`status` before `data`; Go marshals struct
/// fields in declaration order, and scripts compare bodies).
#[derive(serde::Serialize)]
struct Envelope<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

/// `{"status":"success"}` or `{"status":"success","data":…}`.
pub fn success(code: StatusCode, data: Option<serde_json::Value>) -> Response {
    let body = serde_json::to_string(&Envelope {
        status: "success",
        data,
    })
    .unwrap_or_default();
    envelope(code, body)
}

/// `{"status":"error","data":{"error":"…"}}`.
pub fn error(code: StatusCode, message: impl Into<String>) -> Response {
    let data = Some(serde_json::json!({"error": message.into()}));
    let body = serde_json::to_string(&Envelope {
        status: "error",
        data,
    })
    .unwrap_or_default();
    envelope(code, body)
}

/// A `text/plain` answer.
pub fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// A plain-text 404 for unknown paths, as gorilla/mux answers.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from("404 page not found\n"),
    )
        .into_response()
}
