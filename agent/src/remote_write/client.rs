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
//!                the token from the token endpoint, see [`crate::oauth2`])
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::http::{HttpClientConfig, TlsConfig};
use crate::config::instance::RemoteWriteConfig;

/// `User-Agent` of every remote_write request.
pub const USER_AGENT: &str = concat!("agentctl/", env!("CARGO_PKG_VERSION"));
/// The header carrying the agent's id (the old agent's `agentseed.HeaderName`).
pub const AGENT_ID_HEADER: &str = "X-Agent-Id";
/// How a 401's error message starts (see `store`).
const UNAUTHORIZED_PREFIX: &str = "server returned HTTP status 401";
/// Error bodies are cut to this many bytes in messages (Prometheus's `maxErrMsgLen`).
const MAX_ERR_BODY: usize = 1024;

/// Why a remote_write client could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("remote_write {remote}: url is missing")]
    MissingUrl { remote: String },
    #[error("remote_write {remote}: oauth2: {reason}")]
    OAuth2 { remote: String, reason: String },
    #[error("remote_write {remote}: {what} is not supported")]
    Unsupported { remote: String, what: &'static str },
    #[error("remote_write {remote}: header {name:?}: {reason}")]
    Header {
        remote: String,
        name: String,
        reason: String,
    },
    #[error("remote_write {remote}: reading {field} {path}: {source}")]
    ReadFile {
        remote: String,
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("remote_write {remote}: tls_config: {reason}")]
    Tls { remote: String, reason: String },
    #[error("remote_write {remote}: proxy_url {url}: {source}")]
    Proxy {
        remote: String,
        url: String,
        source: reqwest::Error,
    },
    #[error("remote_write {remote}: building the HTTP client: {source}")]
    Build {
        remote: String,
        source: reqwest::Error,
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
    NonRecoverable { reason: String },
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

/// A secret read inline or, on every request, from a file (so rotated tokens are picked up,
/// as Prometheus does).
#[derive(Clone)]
enum Credential {
    Inline(String),
    File(PathBuf),
}

impl Credential {
    fn from_parts(inline: Option<&str>, file: Option<&str>) -> Credential {
        match (inline, file) {
            (_, Some(f)) if !f.is_empty() => Credential::File(PathBuf::from(f)),
            (Some(s), _) => Credential::Inline(s.to_owned()),
            _ => Credential::Inline(String::new()),
        }
    }

    async fn get(&self) -> Result<String, String> {
        match self {
            Credential::Inline(s) => Ok(s.clone()),
            Credential::File(p) => tokio::fs::read_to_string(p)
                .await
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("reading {}: {e}", p.display())),
        }
    }
}

#[derive(Clone)]
enum Auth {
    None,
    Basic {
        username: String,
        password: Credential,
    },
    /// `Authorization: <scheme> <credentials>`; `bearer_token` is scheme `Bearer`.
    Scheme {
        scheme: String,
        credentials: Credential,
    },
    OAuth2(crate::oauth2::TokenSource),
}

/// The client settings of one remote_write endpoint.
#[derive(Clone)]
pub struct ClientSettings {
    pub remote_name: String,
    pub url: url::Url,
    pub timeout: Duration,
    pub headers: BTreeMap<String, String>,
    pub http: HttpClientConfig,
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
        let url = cfg
            .raw
            .url
            .as_ref()
            .ok_or_else(|| ClientError::MissingUrl {
                remote: cfg.name.clone(),
            })?;
        Ok(ClientSettings {
            remote_name: cfg.name.clone(),
            url: url.as_url().clone(),
            timeout: cfg.raw.remote_timeout().as_std(),
            headers: cfg.raw.headers.clone(),
            http: cfg.raw.http_client(),
            retry_on_http_429: cfg.raw.queue().retry_on_http_429,
            agent_id: agent_id.map(str::to_owned),
        })
        .and_then(|s| {
            if cfg.raw.sigv4.is_some() {
                return Err(ClientError::Unsupported {
                    remote: cfg.name.clone(),
                    what: "sigv4",
                });
            }
            if cfg.raw.azuread.is_some() {
                return Err(ClientError::Unsupported {
                    remote: cfg.name.clone(),
                    what: "azuread",
                });
            }
            Ok(s)
        })
    }
}

/// Sends compressed `WriteRequest`s to one endpoint.
#[derive(Clone)]
pub struct RemoteClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    settings: ClientSettings,
    headers: HeaderMap,
    auth: Auth,
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
    /// Builds the client: fixed headers, auth, TLS, proxy and redirect policy. Needs a rustls
    /// crypto provider installed as the process default unless `tls_config` is set.
    pub fn new(settings: ClientSettings) -> Result<RemoteClient, ClientError> {
        // reqwest panics without a rustls provider; the binary installs one, library users may not.
        crate::httpclient::ensure_crypto_provider();
        let remote = settings.remote_name.clone();
        let http_cfg = &settings.http;
        let headers = build_headers(&settings)?;
        let auth = match &http_cfg.oauth2 {
            Some(o) => {
                let err = |reason: String| ClientError::OAuth2 {
                    remote: remote.clone(),
                    reason,
                };
                let http = crate::httpclient::oauth2_token_client(o, None, settings.timeout)
                    .map_err(|e| err(e.to_string()))?;
                Auth::OAuth2(
                    crate::oauth2::TokenSource::new(o, http, None)
                        .map_err(|e| err(e.to_string()))?,
                )
            }
            None => build_auth(http_cfg),
        };

        let mut b = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(settings.timeout);
        b = if http_cfg.follow_redirects == Some(false) {
            b.redirect(reqwest::redirect::Policy::none())
        } else {
            b.redirect(reqwest::redirect::Policy::limited(10))
        };
        let http2 = http_cfg.enable_http2 != Some(false);
        if !http2 {
            b = b.http1_only();
        }
        if let Some(proxy_url) = &http_cfg.proxy_url {
            let mut p = reqwest::Proxy::all(proxy_url.as_url().clone()).map_err(|source| {
                ClientError::Proxy {
                    remote: remote.clone(),
                    url: proxy_url.redacted(),
                    source,
                }
            })?;
            if let Some(np) = &http_cfg.no_proxy {
                p = p.no_proxy(reqwest::NoProxy::from_string(np));
            }
            if !http_cfg.proxy_connect_header.is_empty() {
                let mut h = HeaderMap::new();
                for (name, values) in &http_cfg.proxy_connect_header {
                    for v in values {
                        let (n, v) = header_pair(&remote, name, v.expose())?;
                        h.append(n, v);
                    }
                }
                p = p.headers(h);
            }
            b = b.proxy(p);
        } else if http_cfg.proxy_from_environment != Some(true) {
            // Prometheus ignores HTTP_PROXY & co unless asked to.
            b = b.no_proxy();
        }
        if let Some(tls) = &http_cfg.tls_config {
            let cfg = rustls_config(tls, http2).map_err(|reason| ClientError::Tls {
                remote: remote.clone(),
                reason,
            })?;
            b = b.tls_backend_preconfigured(cfg);
        }
        let http = b.build().map_err(|source| ClientError::Build {
            remote: remote.clone(),
            source,
        })?;
        let url_label = redact(&settings.url);
        Ok(RemoteClient {
            inner: Arc::new(ClientInner {
                http,
                settings,
                headers,
                auth,
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
        if let Auth::OAuth2(ts) = &self.inner.auth {
            let header = ts
                .authorization()
                .await
                .map_err(|e| SendError::Recoverable {
                    reason: e.to_string(),
                    retry_after: None,
                })?;
            let res = self.store_once(body.clone(), Some(&header)).await;
            if matches!(&res, Err(SendError::NonRecoverable { reason }) if reason.starts_with(UNAUTHORIZED_PREFIX))
            {
                ts.invalidate(&header).await;
                let header = ts
                    .authorization()
                    .await
                    .map_err(|e| SendError::Recoverable {
                        reason: e.to_string(),
                        retry_after: None,
                    })?;
                return self.store_once(body, Some(&header)).await;
            }
            return res;
        }
        self.store_once(body, None).await
    }

    async fn store_once(
        &self,
        body: bytes::Bytes,
        oauth2_header: Option<&str>,
    ) -> Result<(), SendError> {
        let inner = &*self.inner;
        let mut req = inner
            .http
            .post(inner.settings.url.clone())
            .headers(inner.headers.clone())
            .body(body);
        match &inner.auth {
            Auth::None => {}
            Auth::OAuth2(_) => {
                if let Some(h) = oauth2_header {
                    req = req.header(reqwest::header::AUTHORIZATION, h);
                }
            }
            Auth::Basic { username, password } => {
                let pw = password.get().await.map_err(|e| SendError::Recoverable {
                    reason: format!("basic_auth password: {e}"),
                    retry_after: None,
                })?;
                req = req.basic_auth(username, Some(pw));
            }
            Auth::Scheme {
                scheme,
                credentials,
            } => {
                let c = credentials
                    .get()
                    .await
                    .map_err(|e| SendError::Recoverable {
                        reason: format!("authorization credentials: {e}"),
                        retry_after: None,
                    })?;
                req = req.header(reqwest::header::AUTHORIZATION, format!("{scheme} {c}"));
            }
        }
        let resp = req.send().await.map_err(|e| SendError::Recoverable {
            reason: format!("Post \"{}\": {}", inner.url_label, error_chain(&e)),
            retry_after: None,
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
            StatusClass::NonRecoverable => Err(SendError::NonRecoverable { reason: reason() }),
        }
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); walk the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
    for (name, value) in &s.headers {
        let (n, v) = header_pair(&s.remote_name, name, value)?;
        h.insert(n, v);
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

fn build_auth(c: &HttpClientConfig) -> Auth {
    if let Some(b) = &c.basic_auth {
        return Auth::Basic {
            username: b.username.clone(),
            password: Credential::from_parts(
                b.password.as_ref().map(|p| p.expose()),
                b.password_file.as_deref(),
            ),
        };
    }
    if let Some(a) = &c.authorization {
        return Auth::Scheme {
            scheme: a
                .kind
                .clone()
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "Bearer".to_owned()),
            credentials: Credential::from_parts(
                a.credentials.as_ref().map(|p| p.expose()),
                a.credentials_file.as_deref(),
            ),
        };
    }
    let bearer = c.bearer_token.as_ref().filter(|t| !t.is_empty());
    let bearer_file = c.bearer_token_file.as_deref().filter(|f| !f.is_empty());
    if bearer.is_some() || bearer_file.is_some() {
        return Auth::Scheme {
            scheme: "Bearer".to_owned(),
            credentials: Credential::from_parts(bearer.map(|s| s.expose()), bearer_file),
        };
    }
    Auth::None
}

fn pem_bytes(
    inline: Option<&str>,
    file: Option<&str>,
    field: &str,
) -> Result<Option<Vec<u8>>, String> {
    if let Some(s) = inline.filter(|s| !s.is_empty()) {
        return Ok(Some(s.as_bytes().to_vec()));
    }
    match file.filter(|f| !f.is_empty()) {
        Some(f) => std::fs::read(f)
            .map(Some)
            .map_err(|e| format!("reading {field} {f}: {e}")),
        None => Ok(None),
    }
}

/// The rustls config for a `tls_config` block: CA (replacing the system roots, as Go does),
/// client certificate, `insecure_skip_verify`, `server_name` (used to verify the server's
/// certificate; the SNI sent stays the URL's host), and min/max version (rustls speaks only
/// TLS 1.2 and 1.3, so `TLS10`/`TLS11` as a minimum mean 1.2).
fn rustls_config(t: &TlsConfig, http2: bool) -> Result<rustls::ClientConfig, String> {
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let version_rank = |v: &str| match v {
        "TLS13" => 13,
        "TLS12" => 12,
        _ => 10,
    };
    let min = t.min_version.as_deref().map_or(12, version_rank);
    let max = t.max_version.as_deref().map_or(13, version_rank);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(r, _)| *r >= min && *r <= max)
            .map(|(_, v)| v)
            .collect();
    if versions.is_empty() {
        return Err(format!(
            "no TLS version supported between min_version {:?} and max_version {:?} (only TLS12 and TLS13 are)",
            t.min_version, t.max_version
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;

    let verifier: Arc<dyn ServerCertVerifier> = if t.insecure_skip_verify {
        Arc::new(NoVerify(provider.clone()))
    } else {
        let base: Arc<dyn ServerCertVerifier> =
            match pem_bytes(t.ca.as_deref(), t.ca_file.as_deref(), "ca_file")? {
                Some(pem) => {
                    let mut roots = rustls::RootCertStore::empty();
                    let mut n = 0;
                    for cert in CertificateDer::pem_slice_iter(&pem) {
                        let cert = cert.map_err(|e| format!("ca: invalid PEM: {e}"))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("ca: invalid certificate: {e}"))?;
                        n += 1;
                    }
                    if n == 0 {
                        return Err("ca: no PEM certificate found".into());
                    }
                    rustls::client::WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| format!("ca: {e}"))?
                }
                None => Arc::new(
                    rustls_platform_verifier::Verifier::new(provider.clone())
                        .map_err(|e| format!("loading the system roots: {e}"))?,
                ),
            };
        match t.server_name.as_deref().filter(|s| !s.is_empty()) {
            Some(name) => {
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("server_name {name:?}: {e}"))?;
                Arc::new(FixedServerName { inner: base, name })
            }
            None => base,
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);

    let cert = pem_bytes(t.cert.as_deref(), t.cert_file.as_deref(), "cert_file")?;
    let key = pem_bytes(
        t.key.as_ref().map(|k| k.expose()),
        t.key_file.as_deref(),
        "key_file",
    )?;
    let mut cfg = match (cert, key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cert: invalid PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| format!("key: invalid PEM: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    // reqwest leaves ALPN to a preconfigured config.
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(cfg)
}

/// `insecure_skip_verify`: accepts any certificate, but still checks the handshake signature
/// so the session is at least bound to the presented key.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `server_name`: verifies the certificate against the configured name instead of the URL's.
#[derive(Debug)]
struct FixedServerName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::http::{Authorization, BasicAuth, OAuth2};
    use crate::config::secret::Secret;

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
            headers: BTreeMap::from([("X-Scope-OrgID".to_owned(), "tenant".to_owned())]),
            http: HttpClientConfig::default(),
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
        bad.headers.insert("X-Bad".into(), "a\nb".into());
        let err = build_headers(&bad).unwrap_err().to_string();
        assert!(err.contains("remote_write r: header \"X-Bad\""), "{err}");
    }

    #[test]
    fn auth_selection() {
        let mut c = HttpClientConfig {
            bearer_token: Some(Secret::new("tok")),
            ..Default::default()
        };
        assert!(
            matches!(build_auth(&c), Auth::Scheme { ref scheme, credentials: Credential::Inline(ref t) } if scheme == "Bearer" && t == "tok")
        );
        c.bearer_token = None;
        c.authorization = Some(Authorization {
            kind: Some("Custom".into()),
            credentials: Some(Secret::new("x")),
            credentials_file: None,
        });
        assert!(matches!(build_auth(&c), Auth::Scheme { ref scheme, .. } if scheme == "Custom"));
        c.authorization = None;
        c.basic_auth = Some(BasicAuth {
            username: "u".into(),
            password: None,
            password_file: Some("/run/pw".into()),
        });
        assert!(
            matches!(build_auth(&c), Auth::Basic { ref username, password: Credential::File(_) } if username == "u")
        );
        assert!(matches!(
            build_auth(&HttpClientConfig::default()),
            Auth::None
        ));
    }

    #[test]
    fn oauth2_without_token_url_is_refused_clearly() {
        let mut s = settings();
        s.http.oauth2 = Some(OAuth2 {
            client_id: "id".into(),
            ..Default::default()
        });
        let err = RemoteClient::new(s).unwrap_err().to_string();
        assert_eq!(err, "remote_write r: oauth2: oauth2: token_url is missing");
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
        s.http.oauth2 = Some(
            serde_yaml::from_str(&format!(
                "client_id: id\nclient_secret: secret\ntoken_url: http://{addr}/token\n"
            ))
            .unwrap(),
        );
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
        assert!(e.to_string().starts_with(UNAUTHORIZED_PREFIX), "{e}");
        assert_eq!(st.issued.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn tls_config_errors_name_the_field() {
        let t = TlsConfig {
            ca: Some("not a pem".into()),
            ..Default::default()
        };
        assert_eq!(
            rustls_config(&t, true).unwrap_err(),
            "ca: no PEM certificate found"
        );
        let t = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert!(rustls_config(&t, true)
            .unwrap_err()
            .starts_with("reading ca_file /nonexistent/ca.pem"));
        let t = TlsConfig {
            insecure_skip_verify: true,
            min_version: Some("TLS13".into()),
            ..Default::default()
        };
        let cfg = rustls_config(&t, false).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
