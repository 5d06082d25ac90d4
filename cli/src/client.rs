//! A client for an agent's Config Management API (docs/compat.md, *API envelope* and
//! *Config Management API*, plus this project's
//! additions).
//!
//! Wire format used here:
//!
//! * `GET  {addr}/agent/api/v1/configs?hashes=true` → 200
//!   `{"status":"success","data":{"configs":[names],"hashes":{name: md5hex}}}`
//! * `GET  {addr}/agent/api/v1/configs/{name}` → 200 `{"status":"success","data":{"value":YAML}}`
//!   (secrets shown as `<secret>`), header `ETag: "<md5hex>"`; 404 when absent.
//! * `PUT  {addr}/agent/api/v1/config/{name}` body = YAML → 201 created / 200 updated;
//!   `If-Match: "<md5hex>"` (must currently hash to this) or `If-Match: ""` (must not exist)
//!   → 412 when the precondition does not hold.
//! * `DELETE {addr}/agent/api/v1/config/{name}` → 200; 404 absent; 412 with a stale `If-Match`.
//! * Errors: `{"status":"error","data":{"error":"<message>"}}`; 503 while the store is
//!   unreachable. `{name}` is percent-encoded (`team/a` → `team%2Fa`).
//!
//! Connection failures and 5xx answers are retried a few times with exponential backoff; a
//! write whose answer was lost may then meet its own effect, so [`ClientError::Conflict`]
//! records whether it came from a retry.

use std::collections::BTreeMap;
use std::time::Duration;

use agent::config::http::{ClientCert, HttpClientSettings, TlsSettings};
use agent::config::secret::{Secret, SecretSource};
use agent::httpclient::HttpClient;
use agent::kv::configstore::PutOutcome;
use agent::kv::KvSpec;
use reqwest::header::{HeaderValue, AUTHORIZATION, ETAG, IF_MATCH};
use reqwest::{Method, StatusCode};

use crate::args::{KvAuthArgs, TlsArgs};

/// How many times a request is sent at most (connection errors and 5xx answers are retried).
const ATTEMPTS: u32 = 4;
/// First backoff; doubled after each attempt (0.2 s, 0.4 s, 0.8 s).
const BACKOFF: Duration = Duration::from_millis(200);

/// Errors talking to the API. Every variant names the URL or the config.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid --addr {addr:?}: {reason}")]
    BadAddr { addr: String, reason: String },
    #[error("cannot reach the agent at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// A non-success answer other than 404/412.
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    /// 412: the config changed (appeared, went away) since the plan.
    #[error("configuration {name} was changed by someone else since it was read: {message}")]
    Conflict {
        name: String,
        message: String,
        /// The request had been sent before (its answer was lost or was a 5xx).
        after_retry: bool,
    },
    #[error("configuration {name} does not exist")]
    NotFound { name: String },
    #[error("{url}: unexpected response: {message}")]
    BadResponse { url: String, message: String },
}

impl ClientError {
    /// Whether the failure is the agent's or the network's (exit 2) rather than the input's.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::BadResponse { .. }
            | ClientError::BadAddr { .. } => true,
            ClientError::Status { status, .. } => *status >= 500,
            ClientError::Conflict { .. } | ClientError::NotFound { .. } => false,
        }
    }
}

/// The TLS settings the flags give, or `None` when none is given.
pub fn tls_settings(tls: &TlsArgs) -> Option<TlsSettings> {
    let given = tls.ca_file.is_some()
        || tls.cert_file.is_some()
        || tls.server_name.is_some()
        || tls.insecure_skip_verify;
    given.then(|| TlsSettings {
        ca: tls.ca_file.clone().map(SecretSource::File),
        client_cert: match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => Some(ClientCert {
                cert: SecretSource::File(cert.clone()),
                key: SecretSource::File(key.clone()),
            }),
            _ => None,
        },
        server_name: tls.server_name.clone(),
        insecure_skip_verify: tls.insecure_skip_verify,
        ..TlsSettings::default()
    })
}

const TLS_FLAGS: &str =
    "--ca-file, --cert-file, --key-file, --server-name and --insecure-skip-verify";

/// An HTTP client for `url` (`http` or `https`) with the TLS flags; the flags on a plain
/// `http://` URL are an error rather than silently unused.
pub fn http_client(
    url: &reqwest::Url,
    tls: &TlsArgs,
    follow_redirects: bool,
    timeout: Duration,
) -> Result<HttpClient, String> {
    let settings = tls_settings(tls);
    if settings.is_some() && url.scheme() != "https" {
        return Err(format!("{TLS_FLAGS} need an https:// address (got {url})"));
    }
    HttpClient::new(
        &HttpClientSettings {
            tls: settings.unwrap_or_default(),
            follow_redirects,
            ..HttpClientSettings::default()
        },
        &agent::httpclient::Options {
            timeout: Some(timeout),
            connect_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())
}

/// Whether `--kv` names an embedded store that is missing (opening one creates it, so a
/// mistyped path would read as an empty store): `Ok(true)` when there is none at `dir`.
pub fn embedded_store_missing(dir: &std::path::Path) -> Result<bool, String> {
    let file = dir.join(agent::kv::EMBEDDED_DB_FILE);
    file.try_exists()
        .map(|exists| !exists)
        .map_err(|e| format!("cannot look for {}: {e}", file.display()))
}

/// What to say when a read finds no embedded store (see [`embedded_store_missing`]).
pub fn no_embedded_store_message() -> String {
    format!(
        "no embedded KV store there (no {}): check the path; an agent keeps its store in its wal_directory, or in the kvstore's embedded path",
        agent::kv::EMBEDDED_DB_FILE
    )
}

/// The KV store `--kv` names, with the TLS flags (for `etcds://`) and the etcd credentials.
pub fn kv_spec(spec: &str, tls: &TlsArgs, auth: &KvAuthArgs) -> Result<KvSpec, String> {
    let mut parsed: KvSpec = spec
        .parse()
        .map_err(|e: agent::kv::KvSpecError| e.to_string())?;
    let settings = tls_settings(tls);
    match &mut parsed {
        KvSpec::Etcd(cfg) => {
            if let Some(t) = settings {
                if cfg.tls.is_none() {
                    return Err(format!("{TLS_FLAGS} need --kv etcds://... (got {spec})"));
                }
                cfg.tls = Some(t);
            }
            if let Some(user) = &auth.kv_username {
                cfg.username = user.clone();
                if let Some(path) = &auth.kv_password_file {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        format!("cannot read --kv-password-file {}: {e}", path.display())
                    })?;
                    cfg.password = Secret::new(text.lines().next().unwrap_or("").trim_end());
                }
            }
        }
        _ if settings.is_some() => {
            return Err(format!("{TLS_FLAGS} need --kv etcds://... (got {spec})"));
        }
        _ if auth.kv_username.is_some() => {
            return Err(format!("--kv-username needs an etcd store (got {spec})"));
        }
        _ => {}
    }
    Ok(parsed)
}

/// The API client.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// `scheme://host:port[/prefix]` without a trailing slash.
    base: String,
    http: HttpClient,
    token: Option<String>,
    /// `https://` with a client certificate (`--cert-file`): what a refusal by the agent's
    /// TLS server means differs with and without one (see `explain_connection_error`).
    tls_client_cert: Option<bool>,
}

/// One answer: status, body, and the `ETag` without quotes.
struct Answer {
    status: StatusCode,
    body: String,
    etag: Option<String>,
    retried: bool,
}

/// Percent-encodes a config name for a path segment: everything but RFC 3986 unreserved
/// characters, so `team/a` becomes `team%2Fa` (the API decodes it back).
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ApiClient {
    /// A client for the agent at `addr` (`http://host:port` or `https://...`; a bare
    /// `host:port` gets `http://`). `token` is sent as `Authorization: Bearer` on every
    /// request; `tls` applies to https.
    pub fn new(addr: &str, token: Option<String>, tls: &TlsArgs) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadAddr {
            addr: addr.to_owned(),
            reason: reason.to_owned(),
        };
        let addr_trim = addr.trim();
        if addr_trim.is_empty() {
            return Err(bad("it must not be empty"));
        }
        let with_scheme = if addr_trim.contains("://") {
            addr_trim.to_owned()
        } else {
            format!("http://{addr_trim}")
        };
        let url = reqwest::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if url.host_str().is_none() {
            return Err(bad("it has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it must not have a query or fragment"));
        }
        let http = http_client(&url, tls, true, Duration::from_secs(30)).map_err(|e| bad(&e))?;
        Ok(ApiClient {
            base: url.as_str().trim_end_matches('/').to_owned(),
            http,
            token,
            tls_client_cert: (url.scheme() == "https").then_some(tls.cert_file.is_some()),
        })
    }

    /// The agent's base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        if_match: Option<&str>,
        body: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut last_err = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
            }
            let mut req = self.http.request(method.clone(), &url);
            if let Some(t) = &self.token {
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                    req = req.header(AUTHORIZATION, v);
                }
            }
            if let Some(m) = if_match {
                req = req.header(IF_MATCH, format!("\"{m}\""));
            }
            if let Some(b) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                    .body(b.to_owned());
            }
            match self.http.send(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let etag = resp
                        .headers()
                        .get(ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.trim_start_matches("W/").trim_matches('"').to_owned());
                    let text = match resp.text().await {
                        Ok(t) => t,
                        Err(e) => {
                            last_err = Some(ClientError::Unreachable {
                                url: url.clone(),
                                message: format!(
                                    "reading the response failed: {}",
                                    agent::httpclient::error_chain(&e.without_url())
                                ),
                            });
                            continue;
                        }
                    };
                    if status.is_server_error() && attempt + 1 < ATTEMPTS {
                        tracing::debug!(%url, status = status.as_u16(), attempt, "retrying after a server error");
                        last_err = Some(status_error(&method, &url, status, &text));
                        continue;
                    }
                    return Ok(Answer {
                        status,
                        body: text,
                        etag,
                        retried: attempt > 0,
                    });
                }
                Err(e) => {
                    tracing::debug!(%url, attempt, error = %e, "retrying after a connection error");
                    last_err = Some(ClientError::Unreachable {
                        url: url.clone(),
                        message: explain_connection_error(e.to_string(), self.tls_client_cert),
                    });
                }
            }
        }
        Err(last_err.unwrap_or(ClientError::Unreachable {
            url,
            message: "no attempt was made".into(),
        }))
    }

    /// Every stored config with its content hash.
    pub async fn hashes(&self) -> Result<BTreeMap<String, String>, ClientError> {
        let path = "/agent/api/v1/configs?hashes=true";
        let a = self.send(Method::GET, path, None, None).await?;
        let url = format!("{}{path}", self.base);
        if a.status != StatusCode::OK {
            return Err(status_error(&Method::GET, &url, a.status, &a.body));
        }
        let data = success_data(&url, &a.body)?;
        let Some(hashes) = data.get("hashes").and_then(|h| h.as_object()) else {
            return Err(ClientError::BadResponse {
                url,
                message: "the agent sent no content hashes (an old agent?); point --addr at an agentctl agent, or use --kv".into(),
            });
        };
        let mut out = BTreeMap::new();
        for (name, h) in hashes {
            let Some(h) = h.as_str() else {
                return Err(ClientError::BadResponse {
                    url,
                    message: format!("the hash of {name:?} is not a string"),
                });
            };
            out.insert(name.clone(), h.to_owned());
        }
        Ok(out)
    }

    /// The names of all configs (works with the old agent too).
    pub async fn list(&self) -> Result<Vec<String>, ClientError> {
        let path = "/agent/api/v1/configs";
        let a = self.send(Method::GET, path, None, None).await?;
        let url = format!("{}{path}", self.base);
        if a.status != StatusCode::OK {
            return Err(status_error(&Method::GET, &url, a.status, &a.body));
        }
        let data = success_data(&url, &a.body)?;
        let names = data
            .get("configs")
            .and_then(|c| c.as_array())
            .ok_or_else(|| ClientError::BadResponse {
                url: url.clone(),
                message: "no \"configs\" list in the answer".into(),
            })?;
        Ok(names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect())
    }

    /// Config `name` as the API shows it (secrets as `<secret>`), with its hash.
    pub async fn get(&self, name: &str) -> Result<(String, Option<String>), ClientError> {
        let path = format!("/agent/api/v1/configs/{}", encode_name(name));
        let a = self.send(Method::GET, &path, None, None).await?;
        let url = format!("{}{path}", self.base);
        if is_missing_config(a.status, &a.body) {
            return Err(ClientError::NotFound {
                name: name.to_owned(),
            });
        }
        if a.status != StatusCode::OK {
            return Err(status_error(&Method::GET, &url, a.status, &a.body));
        }
        let data = success_data(&url, &a.body)?;
        let value =
            data.get("value")
                .and_then(|v| v.as_str())
                .ok_or_else(|| ClientError::BadResponse {
                    url,
                    message: "no \"value\" in the answer".into(),
                })?;
        Ok((value.to_owned(), a.etag))
    }

    /// Stores `yaml` as config `name`. `if_match`: `Some(hash)` = only if it currently has
    /// this hash; `Some("")` = only if it does not exist.
    pub async fn put(
        &self,
        name: &str,
        yaml: &str,
        if_match: Option<&str>,
    ) -> Result<PutOutcome, ClientError> {
        let path = format!("/agent/api/v1/config/{}", encode_name(name));
        let a = self.send(Method::PUT, &path, if_match, Some(yaml)).await?;
        match a.status {
            StatusCode::CREATED => Ok(PutOutcome::Created),
            StatusCode::OK => Ok(PutOutcome::Updated),
            StatusCode::PRECONDITION_FAILED => Err(ClientError::Conflict {
                name: name.to_owned(),
                message: error_message(&a.body),
                after_retry: a.retried,
            }),
            s => Err(status_error(
                &Method::PUT,
                &format!("{}{path}", self.base),
                s,
                &a.body,
            )),
        }
    }

    /// Deletes config `name`, with the same `if_match` as [`put`](Self::put).
    pub async fn delete(&self, name: &str, if_match: Option<&str>) -> Result<(), ClientError> {
        let path = format!("/agent/api/v1/config/{}", encode_name(name));
        let a = self.send(Method::DELETE, &path, if_match, None).await?;
        match a.status {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND if is_missing_config(a.status, &a.body) => {
                Err(ClientError::NotFound {
                    name: name.to_owned(),
                })
            }
            StatusCode::PRECONDITION_FAILED => Err(ClientError::Conflict {
                name: name.to_owned(),
                message: error_message(&a.body),
                after_retry: a.retried,
            }),
            s => Err(status_error(
                &Method::DELETE,
                &format!("{}{path}", self.base),
                s,
                &a.body,
            )),
        }
    }
}

/// `data` of a success envelope.
fn success_data(url: &str, body: &str) -> Result<serde_json::Value, ClientError> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| ClientError::BadResponse {
            url: url.to_owned(),
            message: format!("not a JSON envelope ({e}): {}", excerpt(body)),
        })?;
    match v.get("status").and_then(|s| s.as_str()) {
        Some("success") => Ok(v.get("data").cloned().unwrap_or(serde_json::Value::Null)),
        Some("error") => Err(ClientError::BadResponse {
            url: url.to_owned(),
            message: error_message(body),
        }),
        other => Err(ClientError::BadResponse {
            url: url.to_owned(),
            message: format!("unknown API response status: {}", other.unwrap_or("none")),
        }),
    }
}

/// The `data.error` text of an error envelope, or (for non-JSON answers such as mux's
/// `404 page not found`) the start of the body.
/// Adds what an operator should check when the agent's TLS server refused the client: with
/// TLS 1.3 the server checks the client certificate after the client finished its handshake,
/// so the refusal arrives as an alert (`CertificateRequired`, `UnknownCA`, ...) or, when the
/// server's close arrives before the request was sent, as a closed connection ("connection
/// was not ready"), which alone names no cause. `tls_client_cert`: `None` for plain HTTP,
/// else whether `--cert-file` was given.
fn explain_connection_error(message: String, tls_client_cert: Option<bool>) -> String {
    let Some(with_cert) = tls_client_cert else {
        return message;
    };
    let alert = |name: &str| message.contains(&format!("alert: {name}"));
    let closed = [
        "connection was not ready",
        "connection closed",
        "connection reset",
    ]
    .iter()
    .any(|m| message.contains(m));
    let hint = if alert("CertificateRequired") {
        "the agent requires a client certificate: pass --cert-file and --key-file"
    } else if alert("UnknownCA") || alert("BadCertificate") || alert("DecryptError") {
        "the agent refused the client certificate of --cert-file: it is not signed by a CA the \
         agent trusts for clients (server.http_tls_config.client_ca_file), or --key-file does not match it"
    } else if alert("CertificateExpired") {
        "the agent refused the client certificate of --cert-file: it has expired"
    } else if closed && with_cert {
        "the agent closed the TLS connection before answering: it may have refused the client \
         certificate of --cert-file (its log says why: \"TLS handshake failed\")"
    } else if closed {
        "the agent closed the TLS connection before answering: if it requires a client \
         certificate, pass --cert-file and --key-file (its log says why: \"TLS handshake failed\")"
    } else {
        return message;
    };
    format!("{message}; {hint}")
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("data")?.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| excerpt(body))
}

fn excerpt(body: &str) -> String {
    let t = body.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}

/// A 404 saying the config does not exist (not one saying there is no store, or a disabled
/// route).
fn is_missing_config(status: StatusCode, body: &str) -> bool {
    status == StatusCode::NOT_FOUND
        && body.starts_with('{')
        && error_message(body).contains("does not exist")
}

fn status_error(method: &Method, url: &str, status: StatusCode, body: &str) -> ClientError {
    let mut message = error_message(body);
    // What to do about the answers a user's setup causes, beside the agent's own words.
    let hint = match status {
        StatusCode::UNAUTHORIZED => Some("pass --token-file with the token of the agent's --api.token-file"),
        StatusCode::FORBIDDEN => Some("the token given with --token-file is not the agent's (--api.token-file)"),
        StatusCode::NOT_FOUND
            if message.contains("no config store running")
                || message.contains("not connected to store") =>
        {
            Some("the agent does not run the scraping service (metrics.scraping_service.enabled), so it stores no configs")
        }
        StatusCode::NOT_FOUND if message.contains("config endpoint is disabled") => {
            Some("the agent was started with --api.disable-get-config")
        }
        _ => None,
    };
    if let Some(h) = hint {
        message = format!("{message} ({h})");
    }
    ClientError::Status {
        method: method.to_string(),
        url: url.to_owned(),
        status: status.as_u16(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(encode_name("team/a"), "team%2Fa");
        assert_eq!(encode_name("a.b-c_d~e"), "a.b-c_d~e");
        assert_eq!(encode_name("a b%"), "a%20b%25");
        assert_eq!(encode_name("é"), "%C3%A9");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(matches!(
            ApiClient::new("", None, &TlsArgs::default()),
            Err(ClientError::BadAddr { .. })
        ));
        assert!(matches!(
            ApiClient::new("ftp://x:1", None, &TlsArgs::default()),
            Err(ClientError::BadAddr { .. })
        ));
        let c = ApiClient::new("127.0.0.1:9/", None, &TlsArgs::default()).expect("bare host:port");
        assert_eq!(c.base(), "http://127.0.0.1:9");
        let c = ApiClient::new("http://h:1/prefix/", None, &TlsArgs::default()).expect("prefix");
        assert_eq!(c.base(), "http://h:1/prefix");
    }

    #[test]
    fn a_tls_refusal_says_what_to_check() {
        let closed = "error sending request: connection was not ready".to_owned();
        assert_eq!(explain_connection_error(closed.clone(), None), closed);
        assert!(explain_connection_error(closed.clone(), Some(true))
            .ends_with("it may have refused the client certificate of --cert-file (its log says why: \"TLS handshake failed\")"));
        assert!(explain_connection_error(closed, Some(false))
            .contains("if it requires a client certificate, pass --cert-file and --key-file"));
        let required = "received fatal alert: CertificateRequired".to_owned();
        assert!(explain_connection_error(required, Some(false))
            .ends_with("the agent requires a client certificate: pass --cert-file and --key-file"));
        let unknown = "invalid peer certificate: received fatal alert: UnknownCA".to_owned();
        assert!(explain_connection_error(unknown, Some(true)).contains("not signed by a CA"));
        let refused = "tcp connect error: Connection refused (os error 111)".to_owned();
        assert_eq!(
            explain_connection_error(refused.clone(), Some(true)),
            refused
        );
    }

    #[test]
    fn error_envelopes_give_their_message() {
        assert_eq!(
            error_message(r#"{"status":"error","data":{"error":"boom"}}"#),
            "boom"
        );
        assert_eq!(error_message("404 page not found\n"), "404 page not found");
        assert!(success_data("u", r#"{"status":"success"}"#)
            .expect("success")
            .is_null());
        assert!(matches!(
            success_data("u", r#"{"status":"weird"}"#),
            Err(ClientError::BadResponse { .. })
        ));
    }
}
