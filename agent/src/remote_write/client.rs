//! The HTTP side of remote_write: one POST per batch, and Prometheus's rules for what a
//! failed POST means.
//!
//! Request (remote-write 1.0):
//!
//! ```text
//! POST <url>
//! Content-Encoding: snappy
//! Content-Type: application/x-protobuf
//! X-Prometheus-Remote-Write-Version: 0.1.0
//! User-Agent: agentctl/<version>
//! X-Agent-Id: <agent id>                  (when the agent has one, as the old agent sent)
//! <configured headers>
//! Authorization: Basic … | Bearer … | <type> <credentials>   (when configured; with `oauth2`
//!                the token from the token endpoint, see [`crate::httpclient::oauth2`])
//!
//! <snappy block of a prometheus.WriteRequest>
//! ```
//!
//! Outcome, as Prometheus's `remote.Client.Store` classifies it:
//! - 2xx: delivered.
//! - 5xx, connection errors, timeouts: recoverable (retry with backoff, honouring
//!   `Retry-After`).
//! - 429: recoverable when `queue_config.retry_on_http_429` (the agent's default), else not.
//! - any other status: non-recoverable; the batch is dropped and counted as failed.
//! - with `oauth2`, a 401 first drops the cached token and the POST is sent once more with a
//!   new one (a token revoked before its expiry must not cost a batch); a second 401 is final.
//!   The HTTP client ([`crate::httpclient::HttpClient::send`]) does this from the status code.
//!
//! Auth, TLS, proxies, redirects and HTTP/2 come from the one HTTP client builder
//! ([`crate::httpclient`]), as for scrapes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;

use crate::config::http::HttpClientSettings;
use crate::config::instance::RemoteWriteConfig;
use crate::httpclient::{self, HttpClient};

/// `User-Agent` of every remote_write request.
pub const USER_AGENT: &str = concat!("agentctl/", env!("CARGO_PKG_VERSION"));
/// The header carrying the agent's id (the old agent's `agentseed.HeaderName`).
pub const AGENT_ID_HEADER: &str = "X-Agent-Id";
/// Error bodies are cut to this many bytes in messages (Prometheus's `maxErrMsgLen`).
const MAX_ERR_BODY: usize = 1024;

/// Why a remote_write client could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("remote_write {remote}: url is missing")]
    MissingUrl { remote: String },
    #[error("remote_write {remote}: {what} is not supported")]
    Unsupported { remote: String, what: &'static str },
    #[error("remote_write {remote}: {reason}")]
    Invalid { remote: String, reason: String },
    #[error("remote_write {remote}: header {name:?}: {reason}")]
    Header {
        remote: String,
        name: String,
        reason: String,
    },
    #[error("remote_write {remote}: {source}")]
    Client {
        remote: String,
        #[source]
        source: httpclient::Error,
    },
}

/// Why one POST did not deliver its batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: 5xx, 429 (when configured), connection errors, timeouts.
    #[error("{reason}")]
    Recoverable {
        reason: String,
        /// From the `Retry-After` header, when present, parseable and not in the past.
        retry_after: Option<Duration>,
    },
    /// The receiver will never accept this batch (4xx other than a retried 429).
    #[error("{reason}")]
    NonRecoverable {
        reason: String,
        /// The HTTP status (400 is what Prometheus answers for a sample older than its
        /// series' newest, see `queue.rs`'s resend window).
        status: u16,
    },
}

impl SendError {
    pub fn is_recoverable(&self) -> bool {
        matches!(self, SendError::Recoverable { .. })
    }
}

/// What a response status means, before the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Recoverable,
    NonRecoverable,
}

/// Prometheus's classification of a response status.
pub fn classify_status(status: StatusCode, retry_on_http_429: bool) -> StatusClass {
    if status.is_success() {
        StatusClass::Success
    } else if status.is_server_error()
        || (status == StatusCode::TOO_MANY_REQUESTS && retry_on_http_429)
    {
        StatusClass::Recoverable
    } else {
        StatusClass::NonRecoverable
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the past,
/// or anything unparseable, gives `None` (the normal backoff applies, as in Prometheus).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// The client settings of one remote_write endpoint.
#[derive(Clone)]
pub struct ClientSettings {
    pub remote_name: String,
    pub url: url::Url,
    pub timeout: Duration,
    /// Extra headers (validated with the config).
    pub headers: HeaderMap,
    pub http: HttpClientSettings,
    pub retry_on_http_429: bool,
    /// Sent as `X-Agent-Id`.
    pub agent_id: Option<String>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("remote_name", &self.remote_name)
            .field("url", &redact(&self.url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn redact(u: &url::Url) -> String {
    let mut u = u.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("<secret>"));
    }
    u.to_string()
}

impl ClientSettings {
    /// Settings from a validated remote_write entry.
    pub fn from_config(
        cfg: &RemoteWriteConfig,
        agent_id: Option<&str>,
    ) -> Result<ClientSettings, ClientError> {
        Ok(ClientSettings {
            remote_name: cfg.name.clone(),
            url: cfg.url.as_url().clone(),
            timeout: cfg.remote_timeout.as_std(),
            headers: cfg.headers.clone(),
            http: cfg.http.clone(),
            retry_on_http_429: cfg.queue.retry_on_http_429,
            agent_id: agent_id.map(str::to_owned),
        })
    }
}

/// Sends compressed `WriteRequest`s to one endpoint.
#[derive(Clone)]
pub struct RemoteClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: HttpClient,
    settings: ClientSettings,
    headers: HeaderMap,
    /// The URL with any password redacted, for messages and metric labels.
    url_label: String,
}

impl std::fmt::Debug for RemoteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient")
            .field("remote_name", &self.inner.settings.remote_name)
            .field("url", &self.inner.url_label)
            .finish()
    }
}

impl RemoteClient {
    /// Builds the client: fixed headers, then auth, TLS, proxy and redirect policy through the
    /// one HTTP client builder.
    pub fn new(settings: ClientSettings) -> Result<RemoteClient, ClientError> {
        let headers = build_headers(&settings)?;
        let http = HttpClient::new(
            &settings.http,
            &httpclient::Options {
                timeout: Some(settings.timeout),
                user_agent: Some(USER_AGENT.to_owned()),
                ..Default::default()
            },
        )
        .map_err(|source| ClientError::Client {
            remote: settings.remote_name.clone(),
            source,
        })?;
        let url_label = redact(&settings.url);
        Ok(RemoteClient {
            inner: Arc::new(ClientInner {
                http,
                settings,
                headers,
                url_label,
            }),
        })
    }

    pub fn remote_name(&self) -> &str {
        &self.inner.settings.remote_name
    }

    /// The endpoint URL with any password redacted.
    pub fn url(&self) -> &str {
        &self.inner.url_label
    }

    /// POSTs one compressed request, bounded by `remote_timeout` (twice with `oauth2` when the
    /// first answer is 401).
    pub async fn store(&self, body: bytes::Bytes) -> Result<(), SendError> {
        let inner = &*self.inner;
        let rb = inner
            .http
            .request(reqwest::Method::POST, inner.settings.url.clone())
            .headers(inner.headers.clone())
            .body(body);
        let resp = inner.http.send(rb).await.map_err(|e| match e {
            httpclient::Error::Http(_) => SendError::Recoverable {
                reason: format!("Post \"{}\": {e}", inner.url_label),
                retry_after: None,
            },
            // Unreadable credential files, a token endpoint that fails: worth retrying (the
            // file may be mid-rotation, the endpoint back).
            other => SendError::Recoverable {
                reason: other.to_string(),
                retry_after: None,
            },
        })?;
        let status = resp.status();
        let class = classify_status(status, inner.settings.retry_on_http_429);
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, crate::clock::Clock::system().now()));
        // Reading the body lets the connection be reused, and gives the error message.
        let body = resp.bytes().await.unwrap_or_default();
        let reason = || {
            let cut = &body[..body.len().min(MAX_ERR_BODY)];
            format!(
                "server returned HTTP status {status}: {}",
                String::from_utf8_lossy(cut).trim()
            )
        };
        match class {
            StatusClass::Success => Ok(()),
            StatusClass::Recoverable => Err(SendError::Recoverable {
                reason: reason(),
                retry_after,
            }),
            StatusClass::NonRecoverable => Err(SendError::NonRecoverable {
                reason: reason(),
                status: status.as_u16(),
            }),
        }
    }
}

fn header_pair(
    remote: &str,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), ClientError> {
    let err = |reason: String| ClientError::Header {
        remote: remote.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| err(e.to_string()))?;
    let v = HeaderValue::from_str(value).map_err(|e| err(e.to_string()))?;
    Ok((n, v))
}

fn build_headers(s: &ClientSettings) -> Result<HeaderMap, ClientError> {
    let mut h = HeaderMap::new();
    // Configured headers first; the protocol headers below then win (config validation
    // already rejects the reserved names).
    for (n, v) in &s.headers {
        h.insert(n.clone(), v.clone());
    }
    if let Some(id) = &s.agent_id {
        let (n, v) = header_pair(&s.remote_name, AGENT_ID_HEADER, id)?;
        h.insert(n, v);
    }
    h.insert(
        reqwest::header::CONTENT_ENCODING,
        HeaderValue::from_static("snappy"),
    );
    h.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    h.insert(
        HeaderName::from_static("x-prometheus-remote-write-version"),
        HeaderValue::from_static("0.1.0"),
    );
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification_follows_prometheus() {
        let c = |code: u16, r429| classify_status(StatusCode::from_u16(code).unwrap(), r429);
        assert_eq!(c(200, true), StatusClass::Success);
        assert_eq!(c(204, true), StatusClass::Success);
        assert_eq!(c(500, false), StatusClass::Recoverable);
        assert_eq!(c(503, false), StatusClass::Recoverable);
        assert_eq!(c(429, true), StatusClass::Recoverable);
        assert_eq!(c(429, false), StatusClass::NonRecoverable);
        assert_eq!(c(400, true), StatusClass::NonRecoverable);
        assert_eq!(c(404, true), StatusClass::NonRecoverable);
        assert_eq!(c(301, true), StatusClass::NonRecoverable);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        // 2015-10-21 07:28:00 UTC is `now`; ten seconds later:
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        // In the past, negative, garbage: use the normal backoff.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    fn settings() -> ClientSettings {
        ClientSettings {
            remote_name: "r".into(),
            url: url::Url::parse("http://127.0.0.1:1/api/v1/write").unwrap(),
            timeout: Duration::from_secs(1),
            headers: HeaderMap::from_iter([(
                HeaderName::from_static("x-scope-orgid"),
                HeaderValue::from_static("tenant"),
            )]),
            http: HttpClientSettings::default(),
            retry_on_http_429: true,
            agent_id: Some("agent-1".into()),
        }
    }

    #[test]
    fn fixed_headers() {
        let h = build_headers(&settings()).unwrap();
        assert_eq!(h["content-encoding"], "snappy");
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
        assert_eq!(h["x-agent-id"], "agent-1");
        assert_eq!(h["x-scope-orgid"], "tenant");
        let mut bad = settings();
        bad.agent_id = Some("a\nb".into());
        let err = build_headers(&bad).unwrap_err().to_string();
        assert!(
            err.contains("remote_write r: header \"X-Agent-Id\""),
            "{err}"
        );
    }

    /// A token endpoint issuing `tok1`, `tok2`, ... and a receiver accepting only the newest
    /// token: the first POST carries `tok1`; after the receiver "revokes" it (accepting only
    /// `tok2`), the client gets a 401, fetches `tok2` and the same POST goes through.
    #[tokio::test]
    async fn oauth2_token_is_sent_cached_and_renewed_after_a_401() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        #[derive(Default)]
        struct St {
            issued: AtomicUsize,
            accepted: AtomicUsize,
            seen: std::sync::Mutex<Vec<String>>,
        }
        let st = Arc::new(St::default());
        st.accepted.store(1, Ordering::SeqCst);
        let token = {
            let st = st.clone();
            move || async move {
                let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
                axum::Json(
                    serde_json::json!({"access_token": format!("tok{n}"), "token_type": "bearer", "expires_in": 3600}),
                )
            }
        };
        let write = {
            let st = st.clone();
            move |headers: axum::http::HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                st.seen.lock().unwrap().push(auth.clone());
                let want = format!("Bearer tok{}", st.accepted.load(Ordering::SeqCst));
                if auth == want {
                    axum::http::StatusCode::NO_CONTENT
                } else {
                    axum::http::StatusCode::UNAUTHORIZED
                }
            }
        };
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .route("/write", axum::routing::post(write));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut s = settings();
        s.url = url::Url::parse(&format!("http://{addr}/write")).unwrap();
        s.http = crate::config::http::HttpClientConfig {
            oauth2: Some(
                serde_yaml::from_str(&format!(
                    "client_id: id\nclient_secret: secret\ntoken_url: http://{addr}/token\n"
                ))
                .unwrap(),
            ),
            ..Default::default()
        }
        .settings()
        .unwrap();
        let c = RemoteClient::new(s).unwrap();
        c.store(bytes::Bytes::from_static(b"x")).await.unwrap();
        c.store(bytes::Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(st.issued.load(Ordering::SeqCst), 1, "the token is cached");
        st.accepted.store(2, Ordering::SeqCst);
        c.store(bytes::Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(
            *st.seen.lock().unwrap(),
            vec!["Bearer tok1", "Bearer tok1", "Bearer tok1", "Bearer tok2"]
        );
        // A receiver that refuses every token: one renewal, then the 401 is final.
        st.accepted.store(99, Ordering::SeqCst);
        let e = c.store(bytes::Bytes::from_static(b"x")).await.unwrap_err();
        assert!(!e.is_recoverable(), "{e}");
        assert!(
            e.to_string().starts_with("server returned HTTP status 401"),
            "{e}"
        );
        assert_eq!(st.issued.load(Ordering::SeqCst), 3);
    }
}
