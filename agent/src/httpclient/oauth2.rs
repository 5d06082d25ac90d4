//! OAuth 2.0 client credentials (RFC 6749 §4.4) for the `oauth2` block of Prometheus's HTTP
//! client config, behaving as Go's `golang.org/x/oauth2/clientcredentials` does for Prometheus.
//!
//! Token request:
//!
//! ```text
//! POST <token_url>
//! Content-Type: application/x-www-form-urlencoded
//! Authorization: Basic base64(urlquery(client_id) ":" urlquery(client_secret))   (header style)
//!
//! grant_type=client_credentials[&scope=<scopes joined by " ">][&<endpoint_params>]
//!                              [&client_id=..&client_secret=..]                 (params style)
//! ```
//!
//! Which style: Go's `AuthStyleAutoDetect`. The header style is tried first; if that request
//! fails, the same request is sent with the credentials as form fields, and whichever style
//! worked is used from then on.
//!
//! Response: 2xx with JSON `{"access_token", "token_type", "expires_in"}` (`expires_in` a
//! number or a numeric string, seconds), or a form-encoded body when the server says
//! `application/x-www-form-urlencoded` or `text/plain`. Requests then carry
//! `Authorization: <token_type> <access_token>`, the type normalised as Go does (`bearer` →
//! `Bearer`, empty → `Bearer`). A token is reused until 10 s before it expires (Go's
//! `expiryDelta`); one without `expires_in` until [`TokenSource::invalidate`], which a caller
//! uses after a 401 so the next request fetches a new one. `client_secret_file` is read at
//! every token request, so a rotated secret is picked up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::HttpClient;
use crate::config::http::OAuth2Settings;
use crate::config::secret::SecretSource;

/// Go's `expiryDelta`: a token this close to its expiry counts as expired.
pub const EXPIRY_DELTA: Duration = Duration::from_secs(10);
/// Token error bodies are cut to this many bytes in messages.
const MAX_ERR_BODY: usize = 512;

const STYLE_UNKNOWN: u8 = 0;
const STYLE_HEADER: u8 = 1;
const STYLE_PARAMS: u8 = 2;

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OAuth2Error {
    #[error("oauth2: reading client_secret_file {path}: {reason}")]
    SecretFile { path: PathBuf, reason: String },
    #[error("oauth2: cannot fetch token from {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("oauth2: cannot fetch token from {url}: server returned HTTP status {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("oauth2: token response from {url}: {reason}")]
    Response { url: String, reason: String },
}

struct Cached {
    /// The whole `Authorization` header value.
    header: String,
    expires: Option<Instant>,
}

struct Inner {
    http: HttpClient,
    client_id: String,
    secret: Option<SecretSource>,
    scopes: Vec<String>,
    token_url: url::Url,
    endpoint_params: BTreeMap<String, String>,
    style: AtomicU8,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

/// Fetches and caches tokens for one `oauth2` block. Cheap to clone (shared cache).
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("client_id", &self.inner.client_id)
            .field("token_url", &self.inner.token_url.as_str())
            .finish_non_exhaustive()
    }
}

/// A parsed token response.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: Option<Duration>,
}

impl Token {
    /// The `Authorization` header value (Go's `Token.Type()` normalisation).
    pub fn header_value(&self) -> String {
        let kind = match self.token_type.to_ascii_lowercase().as_str() {
            "" | "bearer" => "Bearer".to_owned(),
            "mac" => "MAC".to_owned(),
            "basic" => "Basic".to_owned(),
            _ => self.token_type.clone(),
        };
        format!("{kind} {}", self.access_token)
    }
}

/// Parses a 2xx token response body.
pub fn parse_token_response(content_type: Option<&str>, body: &[u8]) -> Result<Token, String> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (access_token, token_type, expires) =
        if media == "application/x-www-form-urlencoded" || media == "text/plain" {
            let mut m: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in url::form_urlencoded::parse(body) {
                m.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
            let expires = m.get("expires_in").cloned().map(serde_json::Value::String);
            (
                m.get("access_token").cloned().unwrap_or_default(),
                m.get("token_type").cloned().unwrap_or_default(),
                expires,
            )
        } else {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            (
                s("access_token"),
                s("token_type"),
                v.get("expires_in").cloned(),
            )
        };
    if access_token.is_empty() {
        return Err("server response missing access_token".into());
    }
    let secs = match expires {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(
            s.parse::<f64>()
                .map_err(|_| format!("invalid expires_in {s:?}"))?,
        ),
        Some(other) => return Err(format!("invalid expires_in {other}")),
    };
    // Go treats 0 as "no expiry".
    let expires_in = secs
        .filter(|s| *s > 0.0 && s.is_finite())
        .map(|s| Duration::from_secs(s.min(1e12) as u64));
    Ok(Token {
        access_token,
        token_type,
        expires_in,
    })
}

impl TokenSource {
    /// `http` is the client for the token endpoint (built from the block's `tls_config` and
    /// proxy fields, without auth); `base_dir` resolves a relative `client_secret_file`.
    pub fn new(cfg: &OAuth2Settings, http: HttpClient, base_dir: Option<&Path>) -> Self {
        TokenSource {
            inner: Arc::new(Inner {
                http,
                client_id: cfg.client_id.clone(),
                secret: cfg.client_secret.as_ref().map(|s| s.resolved(base_dir)),
                scopes: cfg.scopes.clone(),
                token_url: cfg.token_url.as_url().clone(),
                endpoint_params: cfg.endpoint_params.clone(),
                style: AtomicU8::new(STYLE_UNKNOWN),
                cache: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The `Authorization` header value for the next request: the cached token while it is
    /// valid, else a new one. Concurrent callers wait for one fetch.
    pub async fn authorization(&self) -> Result<String, OAuth2Error> {
        let mut cache = self.inner.cache.lock().await;
        if let Some(c) = cache.as_ref() {
            if c.expires.is_none_or(|e| Instant::now() + EXPIRY_DELTA < e) {
                return Ok(c.header.clone());
            }
        }
        let token = self.fetch().await?;
        let header = token.header_value();
        *cache = Some(Cached {
            header: header.clone(),
            expires: token.expires_in.map(|d| Instant::now() + d),
        });
        Ok(header)
    }

    /// Forgets the cached token if it is still `header` (the request it authorised got a 401),
    /// so the next [`authorization`](Self::authorization) fetches a new one.
    pub async fn invalidate(&self, header: &str) {
        let mut cache = self.inner.cache.lock().await;
        if cache.as_ref().is_some_and(|c| c.header == header) {
            *cache = None;
        }
    }

    /// Forgets the cached token whatever it is (a request got a 401).
    pub async fn clear(&self) {
        *self.inner.cache.lock().await = None;
    }

    async fn fetch(&self) -> Result<Token, OAuth2Error> {
        let inner = &*self.inner;
        let secret = match &inner.secret {
            None => String::new(),
            Some(src) => src
                .value()
                .await
                .map_err(|e| OAuth2Error::SecretFile {
                    path: src.path().map(Path::to_path_buf).unwrap_or_default(),
                    reason: e.to_string(),
                })?
                .expose()
                .to_owned(),
        };
        match inner.style.load(Ordering::Acquire) {
            STYLE_HEADER => self.request(&secret, true).await,
            STYLE_PARAMS => self.request(&secret, false).await,
            _ => match self.request(&secret, true).await {
                Ok(t) => {
                    inner.style.store(STYLE_HEADER, Ordering::Release);
                    Ok(t)
                }
                Err(first) => match self.request(&secret, false).await {
                    Ok(t) => {
                        inner.style.store(STYLE_PARAMS, Ordering::Release);
                        Ok(t)
                    }
                    // The header attempt's error is the more telling one (Go returns it).
                    Err(_) => Err(first),
                },
            },
        }
    }

    /// The token request's form body (kept out of the async fn: the serializer is not `Send`).
    fn form(&self, secret: &str, in_header: bool) -> String {
        let inner = &*self.inner;
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !inner.scopes.is_empty() {
            form.append_pair("scope", &inner.scopes.join(" "));
        }
        for (k, v) in &inner.endpoint_params {
            form.append_pair(k, v);
        }
        if !in_header {
            form.append_pair("client_id", &inner.client_id);
            if !secret.is_empty() {
                form.append_pair("client_secret", secret);
            }
        }
        form.finish()
    }

    async fn request(&self, secret: &str, in_header: bool) -> Result<Token, OAuth2Error> {
        let inner = &*self.inner;
        let url = inner.token_url.as_str().to_owned();
        let form = self.form(secret, in_header);
        let mut rb = inner
            .http
            .request(reqwest::Method::POST, inner.token_url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form);
        if in_header {
            let q =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            rb = rb.basic_auth(q(&inner.client_id), Some(q(secret)));
        }
        let resp = inner
            .http
            .send_without_auth(rb)
            .await
            .map_err(|e| OAuth2Error::Fetch {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| OAuth2Error::Fetch {
            url: url.clone(),
            reason: super::error_chain(&e.without_url()),
        })?;
        if !status.is_success() {
            let cut = &body[..body.len().min(MAX_ERR_BODY)];
            return Err(OAuth2Error::Status {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(cut).trim().to_owned(),
            });
        }
        parse_token_response(content_type.as_deref(), &body)
            .map_err(|reason| OAuth2Error::Response { url, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    #[test]
    fn token_responses_parse_as_go_does() {
        let t = parse_token_response(
            Some("application/json; charset=utf-8"),
            br#"{"access_token":"abc","token_type":"bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(t.header_value(), "Bearer abc");
        assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
        let t = parse_token_response(None, br#"{"access_token":"x","expires_in":"60"}"#).unwrap();
        assert_eq!(t.header_value(), "Bearer x");
        assert_eq!(t.expires_in, Some(Duration::from_secs(60)));
        let t = parse_token_response(
            Some("application/x-www-form-urlencoded"),
            b"access_token=f%20g&token_type=mac",
        )
        .unwrap();
        assert_eq!(t.header_value(), "MAC f g");
        assert_eq!(t.expires_in, None);
        let t = parse_token_response(None, br#"{"access_token":"x","expires_in":0}"#).unwrap();
        assert_eq!(t.expires_in, None);
        assert_eq!(
            parse_token_response(None, br#"{"token_type":"bearer"}"#).unwrap_err(),
            "server response missing access_token"
        );
        assert!(parse_token_response(None, b"not json").is_err());
        assert!(
            parse_token_response(None, br#"{"access_token":"x","expires_in":"soon"}"#).is_err()
        );
    }

    proptest::proptest! {
        /// Whatever a token endpoint answers, parsing returns (no panic); a JSON answer built
        /// from any token, type and lifetime reads back as given.
        #[test]
        fn token_responses_round_trip_and_never_panic(
            token in "[ -~]{1,40}",
            kind in "(bearer|Bearer|mac|basic|custom)?",
            expires in proptest::option::of(1u32..1_000_000),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            let _ = parse_token_response(Some("application/x-www-form-urlencoded"), &junk);
            let _ = parse_token_response(None, &junk);
            let json = serde_json::json!({"access_token": token, "token_type": kind, "expires_in": expires});
            let t = parse_token_response(None, json.to_string().as_bytes()).unwrap();
            proptest::prop_assert_eq!(&t.access_token, &token);
            proptest::prop_assert_eq!(t.expires_in, expires.map(|s| Duration::from_secs(u64::from(s))));
            let suffix = format!(" {token}");
            proptest::prop_assert!(t.header_value().ends_with(&suffix));
        }
    }

    #[derive(Default)]
    struct Server {
        /// Seen requests: (Authorization header, form body).
        seen: Mutex<Vec<(Option<String>, String)>>,
        issued: AtomicUsize,
        /// Refuse credentials in the header (forces the params style).
        refuse_header: bool,
        expires_in: u64,
    }

    async fn token(
        State(s): State<Arc<Server>>,
        headers: HeaderMap,
        body: String,
    ) -> impl IntoResponse {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        s.seen.lock().unwrap().push((auth.clone(), body.clone()));
        if s.refuse_header && auth.is_some() {
            return (StatusCode::UNAUTHORIZED, "no basic here".to_owned()).into_response();
        }
        let n = s.issued.fetch_add(1, Ordering::SeqCst) + 1;
        axum::Json(serde_json::json!({
            "access_token": format!("tok{n}"),
            "token_type": "bearer",
            "expires_in": s.expires_in,
        }))
        .into_response()
    }

    async fn serve(s: Arc<Server>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(s);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/token")
    }

    fn client() -> HttpClient {
        HttpClient::new(&Default::default(), &Default::default()).unwrap()
    }

    fn config(url: &str) -> OAuth2Settings {
        let yaml = format!(
            "client_id: my id\nclient_secret: s3cr&t\nscopes: [read, write]\ntoken_url: {url}\nendpoint_params:\n  audience: metrics\n"
        );
        oauth2_settings(&yaml)
    }

    fn oauth2_settings(yaml: &str) -> OAuth2Settings {
        let o: crate::config::http::OAuth2 = serde_yaml::from_str(yaml).unwrap();
        let cfg = crate::config::http::HttpClientConfig {
            oauth2: Some(o),
            ..Default::default()
        };
        match cfg.settings().unwrap().auth {
            crate::config::http::Auth::OAuth2(o) => *o,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn fetches_with_basic_auth_caches_and_refetches_after_invalidate() {
        let s = Arc::new(Server {
            expires_in: 3600,
            ..Default::default()
        });
        let url = serve(s.clone()).await;
        let ts = TokenSource::new(&config(&url), client(), None);
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok1");
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok1", "cached");
        {
            let seen = s.seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            let (auth, body) = &seen[0];
            // base64("my+id:s3cr%26t"): the parts are URL-query-escaped first, as Go does.
            assert_eq!(auth.as_deref(), Some("Basic bXkraWQ6czNjciUyNnQ="));
            assert_eq!(
                body,
                "grant_type=client_credentials&scope=read+write&audience=metrics"
            );
        }
        // A stale header does not throw away a newer token.
        ts.invalidate("Bearer old").await;
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok1");
        ts.invalidate("Bearer tok1").await;
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok2");
        assert_eq!(s.issued.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_about_to_expire_is_renewed() {
        // expires_in 5 s is inside the 10 s margin: every call fetches.
        let s = Arc::new(Server {
            expires_in: 5,
            ..Default::default()
        });
        let url = serve(s.clone()).await;
        let ts = TokenSource::new(&config(&url), client(), None);
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok1");
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok2");
    }

    #[tokio::test]
    async fn falls_back_to_credentials_in_the_form_and_remembers_it() {
        let s = Arc::new(Server {
            refuse_header: true,
            expires_in: 1,
            ..Default::default()
        });
        let url = serve(s.clone()).await;
        let ts = TokenSource::new(&config(&url), client(), None);
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok1");
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok2");
        let seen = s.seen.lock().unwrap();
        // header (refused), params, then params directly.
        assert_eq!(seen.len(), 3);
        assert!(seen[0].0.is_some());
        assert!(seen[1].0.is_none() && seen[2].0.is_none());
        assert!(seen[1]
            .1
            .ends_with("&client_id=my+id&client_secret=s3cr%26t"));
    }

    #[tokio::test]
    async fn errors_name_the_url_status_and_secret_file() {
        let s = Arc::new(Server {
            refuse_header: true,
            ..Default::default()
        });
        let url = serve(s.clone()).await;
        let mut cfg = config(&url);
        cfg.client_secret = Some(SecretSource::File("/nonexistent/secret".into()));
        let ts = TokenSource::new(&cfg, client(), None);
        let e = ts.authorization().await.unwrap_err().to_string();
        assert!(
            e.starts_with("oauth2: reading client_secret_file /nonexistent/secret"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr&t\n").unwrap();
        cfg.client_secret = Some(SecretSource::File("secret".into()));
        let ts = TokenSource::new(&cfg, client(), Some(dir.path()));
        // Refused in the header, accepted as params with the trimmed file contents.
        assert_eq!(ts.authorization().await.unwrap(), "Bearer tok1");
        assert!(s.seen.lock().unwrap()[1]
            .1
            .ends_with("client_secret=s3cr%26t"));

        let dead = format!("http://{}/token", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        });
        let ts = TokenSource::new(&config(&dead), client(), None);
        let e = ts.authorization().await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("oauth2: cannot fetch token from {dead}")),
            "{e}"
        );
    }
}
