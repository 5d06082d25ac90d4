//! The one HTTP client builder: every outbound HTTP request (scrapes, http_sd, oauth2 token
//! requests, remote_write, service discovery APIs) goes through an [`HttpClient`] built from a
//! validated `http_client_config` ([`HttpClientSettings`]).
//!
//! - TLS is rustls (see [`tls`]); the files of `tls_config` (`ca_file`, `cert_file`,
//!   `key_file`) are read again at most every [`TLS_RECHECK`] while requests are made, and when
//!   their contents changed the connection pool is rebuilt with them, so new connections use a
//!   rotated certificate without a restart (as Prometheus does; open connections finish on the
//!   old one). A file that cannot be read at such a check leaves the current pool in use and is
//!   logged.
//! - Credentials read from files (`username_file`, `password_file`, `credentials_file`,
//!   `bearer_token_file`) are read on every request, as Prometheus does, so rotated tokens are
//!   picked up. `oauth2` tokens come from a [`TokenSource`], cached until shortly before they
//!   expire.
//! - [`HttpClient::send`] applies the auth and, for token auths (`oauth2`), answers a 401 by
//!   dropping the token and sending the request once more with a new one: a token revoked before
//!   its expiry costs neither a scrape nor a remote_write batch.
//! - Proxies: none unless configured (the environment is ignored, as in Prometheus), `proxy_url`
//!   with `no_proxy`, or `proxy_from_environment` (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` and
//!   their lowercase forms, read when the client is built); `proxy_connect_header` is sent with
//!   each CONNECT.
//! - Scrapes (a client built with [`Options::scrape`]) go through [`HttpClient::fetch`] on the
//!   scrape transport ([`transport`]): hyper-util's client with a bounded read buffer per
//!   connection, the same TLS, proxy, auth, redirect and gzip behaviour as reqwest's. Every other
//!   request (service discovery, remote_write, token requests) goes through reqwest.

pub mod azuread;
pub mod oauth2;
pub mod sigv4;
pub mod tls;
pub mod transport;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::http::{
    Auth, AzureCredential, HttpClientSettings, OAuth2Settings, Proxy, TlsSettings,
};
use crate::config::secret::SecretSource;
pub use oauth2::{OAuth2Error, TokenSource};

/// How often the files of a `tls_config` are checked for changes (only while requests are made).
pub const TLS_RECHECK: Duration = Duration::from_secs(1);
/// Connecting is bounded by this unless [`Options::connect_timeout`] says otherwise (Prometheus's
/// dialer timeout).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot read {field} {path}: {source}")]
    ReadFile {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid proxy_url {url}: {message}")]
    Proxy { url: String, message: String },
    #[error("invalid {field} header {name:?}: {message}")]
    Header {
        field: &'static str,
        name: String,
        message: String,
    },
    #[error("{0}")]
    OAuth2(#[from] OAuth2Error),
    #[error("{0}")]
    AzureAd(String),
    /// Boxed: the error type stays small for everyone who returns it.
    #[error("{0}")]
    SigV4(Box<sigv4::SigV4Error>),
    #[error("building the HTTP client: {0}")]
    Build(String),
    /// Sending the request or reading its answer failed; the text is reqwest's cause chain
    /// (without the URL, which callers show redacted).
    #[error("{}", error_chain(.0))]
    Http(reqwest::Error),
    /// The scrape transport's error, with its cause chain.
    #[error("{0}")]
    Transport(String),
}

/// reqwest's top-level message hides the cause ("error sending request"); walk the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Installs rustls's `ring` provider unless one is installed already. The binary does this in
/// `main`; doing it here too keeps library users (tests, tools) from a panic inside reqwest.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Options that are not part of the config (they come from the caller).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Whole-request timeout (remote_timeout, a refresh interval); `None` for none (scrapes
    /// bound each request themselves; watches stream for as long as they last).
    pub timeout: Option<Duration>,
    /// Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Option<Duration>,
    /// Directory relative file paths are resolved against.
    pub base_dir: Option<PathBuf>,
    /// Ask for gzip and decode it.
    pub gzip: bool,
    pub user_agent: Option<String>,
    /// Also build the scrape transport ([`transport`]), which [`HttpClient::fetch`] uses.
    pub scrape: bool,
}

/// The runtime form of the config's [`Auth`]: the same choice, with live state (token caches).
#[derive(Debug, Clone)]
enum Authorizer {
    None,
    Basic {
        username: Option<SecretSource>,
        password: Option<SecretSource>,
    },
    Header {
        kind: String,
        credentials: Option<SecretSource>,
    },
    OAuth2(TokenSource),
    SigV4(sigv4::Signer),
    AzureManagedIdentity(Arc<azuread::ManagedIdentity>),
}

/// A configured client plus the auth it adds to each request. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: HttpClientSettings,
    opts: Options,
    /// `tls_config` with relative paths resolved.
    tls: TlsSettings,
    client: RwLock<Clients>,
    auth: Authorizer,
    /// Set when `tls_config` names files: what they held when `client` was built.
    reload: Option<Reload>,
}

/// The connection pools built from one version of the TLS material.
#[derive(Debug)]
struct Clients {
    reqwest: reqwest::Client,
    /// With [`Options::scrape`].
    scrape: Option<Arc<transport::Transport>>,
}

#[derive(Debug)]
struct Reload {
    state: Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    material: tls::Material,
    next_check: Instant,
}

fn resolve_tls(t: &TlsSettings, base: Option<&Path>) -> TlsSettings {
    let mut t = t.clone();
    t.ca = t.ca.map(|s| s.resolved(base));
    if let Some(c) = &mut t.client_cert {
        c.cert = c.cert.resolved(base);
        c.key = c.key.resolved(base);
    }
    t
}

fn header_pair(
    field: &'static str,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), Error> {
    let err = |message: String| Error::Header {
        field,
        name: name.to_owned(),
        message,
    };
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| err(e.to_string()))?;
    let mut v = HeaderValue::from_str(value).map_err(|e| err(e.to_string()))?;
    v.set_sensitive(true);
    Ok((n, v))
}

/// `Basic base64(user:password)`, marked sensitive (as reqwest's `basic_auth`).
fn basic_auth(user: &str, pass: &str) -> HeaderValue {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut v =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}

/// Go's `httpproxy.FromEnvironment`: the upper-case variable first, then the lower-case one.
fn env_var(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name)
        .filter(|v| !v.is_empty())
        .or_else(|| get(&name.to_ascii_lowercase()).filter(|v| !v.is_empty()))
}

/// The proxies `proxy_from_environment` means, from `get` (the process environment).
fn env_proxies(
    get: &dyn Fn(&str) -> Option<String>,
    connect: &HeaderMap,
) -> Result<Vec<reqwest::Proxy>, Error> {
    let no_proxy = env_var(get, "NO_PROXY").unwrap_or_default();
    let mut out = Vec::new();
    for var in ["HTTP_PROXY", "HTTPS_PROXY"] {
        if let Some(url) = env_var(get, var) {
            let p = if var == "HTTP_PROXY" {
                reqwest::Proxy::http(&url)
            } else {
                reqwest::Proxy::https(&url)
            };
            let p = p.map_err(|e| Error::Proxy {
                url: format!("${var}"),
                message: error_chain(&e),
            })?;
            out.push(
                p.no_proxy(reqwest::NoProxy::from_string(&no_proxy))
                    .headers(connect.clone()),
            );
        }
    }
    Ok(out)
}

fn connect_headers(h: &[(String, crate::config::secret::Secret)]) -> Result<HeaderMap, Error> {
    let mut out = HeaderMap::new();
    for (name, value) in h {
        let (n, v) = header_pair("proxy_connect_header", name, value.expose())?;
        out.append(n, v);
    }
    Ok(out)
}

/// The reqwest client for `s`, with the PEM data in `material`.
fn build_reqwest(
    s: &HttpClientSettings,
    tls: &TlsSettings,
    opts: &Options,
    material: &tls::Material,
) -> Result<reqwest::Client, Error> {
    let mut b = reqwest::Client::builder()
        .gzip(opts.gzip)
        .connect_timeout(opts.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
        .pool_idle_timeout(Duration::from_secs(300));
    if let Some(t) = opts.timeout {
        b = b.timeout(t);
    }
    if let Some(ua) = &opts.user_agent {
        b = b.user_agent(ua.clone());
    }
    b = b.redirect(if s.follow_redirects {
        reqwest::redirect::Policy::limited(10)
    } else {
        reqwest::redirect::Policy::none()
    });
    let alpn: &[&[u8]] = if s.enable_http2 {
        &[b"h2", b"http/1.1"]
    } else {
        b = b.http1_only();
        &[b"http/1.1"]
    };
    match &s.proxy {
        Proxy::None => b = b.no_proxy(),
        Proxy::Url {
            url,
            no_proxy,
            connect_header,
        } => {
            let mut p = reqwest::Proxy::all(url.as_url().as_str()).map_err(|e| Error::Proxy {
                url: url.redacted(),
                message: error_chain(&e),
            })?;
            if let Some(np) = no_proxy {
                p = p.no_proxy(reqwest::NoProxy::from_string(np));
            }
            b = b.proxy(p.headers(connect_headers(connect_header)?));
        }
        Proxy::FromEnvironment { connect_header } => {
            let headers = connect_headers(connect_header)?;
            let proxies = env_proxies(&|k| std::env::var(k).ok(), &headers)?;
            if proxies.is_empty() {
                b = b.no_proxy();
            }
            for p in proxies {
                b = b.proxy(p);
            }
        }
    }
    b = b.tls_backend_preconfigured(tls::client_config(tls, material, alpn)?);
    b.build().map_err(|e| Error::Build(error_chain(&e)))
}

/// The proxies of `s` as hyper-util's matcher, built as reqwest builds it from the same settings
/// (`reqwest::Proxy::all` + `no_proxy`; `env_proxies`' variables); `None` for no proxy.
fn proxy_matcher(
    s: &HttpClientSettings,
    get: &dyn Fn(&str) -> Option<String>,
) -> Option<hyper_util::client::proxy::matcher::Matcher> {
    use hyper_util::client::proxy::matcher::Matcher;
    match &s.proxy {
        Proxy::None => None,
        Proxy::Url { url, no_proxy, .. } => Some(
            Matcher::builder()
                .all(url.as_url().as_str())
                .no(no_proxy.as_deref().unwrap_or(""))
                .build(),
        ),
        Proxy::FromEnvironment { .. } => {
            let http = env_var(get, "HTTP_PROXY");
            let https = env_var(get, "HTTPS_PROXY");
            if http.is_none() && https.is_none() {
                return None;
            }
            Some(
                Matcher::builder()
                    .http(http.unwrap_or_default())
                    .https(https.unwrap_or_default())
                    .no(env_var(get, "NO_PROXY").unwrap_or_default())
                    .build(),
            )
        }
    }
}

/// Both pools (the scrape transport only with [`Options::scrape`]) for `s` with the PEM data in
/// `material`.
fn build_clients(
    s: &HttpClientSettings,
    tls: &TlsSettings,
    opts: &Options,
    material: &tls::Material,
) -> Result<Clients, Error> {
    let reqwest = build_reqwest(s, tls, opts, material)?;
    let scrape = if opts.scrape {
        let proxy_headers = match &s.proxy {
            Proxy::None => HeaderMap::new(),
            Proxy::Url { connect_header, .. } | Proxy::FromEnvironment { connect_header } => {
                connect_headers(connect_header)?
            }
        };
        let user_agent = match &opts.user_agent {
            Some(ua) => Some(
                HeaderValue::from_str(ua)
                    .map_err(|e| Error::Build(format!("user agent {ua:?}: {e}")))?,
            ),
            None => None,
        };
        Some(Arc::new(transport::Transport::new(transport::Settings {
            tls: material,
            tls_settings: tls,
            enable_http2: s.enable_http2,
            follow_redirects: s.follow_redirects,
            gzip: opts.gzip,
            user_agent,
            connect_timeout: opts.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            proxies: proxy_matcher(s, &|k| std::env::var(k).ok()),
            proxy_headers,
        })?))
    } else {
        None
    };
    Ok(Clients { reqwest, scrape })
}

/// A client without auth for a token endpoint.
fn token_client(tls: TlsSettings, proxy: Proxy, opts: &Options) -> Result<HttpClient, Error> {
    HttpClient::new(
        &HttpClientSettings {
            tls,
            proxy,
            ..HttpClientSettings::default()
        },
        &Options {
            timeout: Some(opts.timeout.unwrap_or(Duration::from_secs(30))),
            connect_timeout: opts.connect_timeout,
            base_dir: opts.base_dir.clone(),
            gzip: false,
            user_agent: opts.user_agent.clone(),
            scrape: false,
        },
    )
}

impl HttpClient {
    /// Builds the client: TLS (reading `tls_config`'s files now), proxy, redirects, HTTP/2, and
    /// the auth [`send`](Self::send) applies.
    pub fn new(settings: &HttpClientSettings, opts: &Options) -> Result<Self, Error> {
        ensure_crypto_provider();
        let base = opts.base_dir.as_deref();
        let tls = resolve_tls(&settings.tls, base);
        let material = tls::Material::load_blocking(&tls)?;
        if opts.scrape && matches!(settings.auth, Auth::SigV4(_)) {
            return Err(Error::Build(
                "sigv4 signs remote_write requests only, not scrapes".into(),
            ));
        }
        let client = build_clients(settings, &tls, opts, &material)?;
        let auth = match &settings.auth {
            Auth::None => Authorizer::None,
            Auth::Basic { username, password } => Authorizer::Basic {
                username: username.as_ref().map(|s| s.resolved(base)),
                password: password.as_ref().map(|s| s.resolved(base)),
            },
            Auth::Authorization { kind, credentials } => Authorizer::Header {
                kind: kind.clone(),
                credentials: credentials.as_ref().map(|s| s.resolved(base)),
            },
            Auth::OAuth2(o) => {
                // The token endpoint's own tls_config and proxy, no auth.
                let token_client = token_client(o.tls.clone(), o.proxy.clone(), opts)?;
                Authorizer::OAuth2(TokenSource::new(o, token_client, base))
            }
            Auth::SigV4(s) => Authorizer::SigV4(sigv4::Signer::new(s)),
            Auth::AzureAd(a) => {
                let env = |k: &str| std::env::var(k).ok();
                let http = token_client(TlsSettings::default(), Proxy::None, opts)?;
                match &a.credential {
                    AzureCredential::ManagedIdentity { client_id } => {
                        Authorizer::AzureManagedIdentity(Arc::new(azuread::ManagedIdentity::new(
                            a.cloud, client_id, http, env,
                        )))
                    }
                    AzureCredential::OAuth {
                        client_id,
                        client_secret,
                        tenant_id,
                    } => {
                        let url = azuread::token_url(a.cloud, tenant_id, env);
                        let token_url = crate::config::url::ConfigUrl::parse(&url)
                            .map_err(|e| Error::Build(format!("azuread token URL {url}: {e}")))?;
                        let o = OAuth2Settings {
                            client_id: client_id.clone(),
                            client_secret: Some(SecretSource::Inline(client_secret.clone())),
                            scopes: vec![azuread::scope(a.cloud).to_owned()],
                            token_url,
                            endpoint_params: Default::default(),
                            tls: TlsSettings::default(),
                            proxy: Proxy::None,
                        };
                        Authorizer::OAuth2(TokenSource::new(&o, http, base))
                    }
                }
            }
        };
        let reload = (!tls.files().is_empty()).then(|| Reload {
            state: Mutex::new(ReloadState {
                material,
                next_check: Instant::now() + TLS_RECHECK,
            }),
        });
        Ok(HttpClient {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                opts: opts.clone(),
                tls,
                client: RwLock::new(client),
                auth,
                reload,
            }),
        })
    }

    /// A request builder for `url` (no auth yet: [`send`](Self::send) adds it).
    pub fn request<U: reqwest::IntoUrl>(
        &self,
        method: reqwest::Method,
        url: U,
    ) -> reqwest::RequestBuilder {
        self.current().request(method, url)
    }

    pub fn get<U: reqwest::IntoUrl>(&self, url: U) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, url)
    }

    fn current(&self) -> reqwest::Client {
        self.inner
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .reqwest
            .clone()
    }

    fn current_scrape(&self) -> Option<Arc<transport::Transport>> {
        self.inner
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .scrape
            .clone()
    }

    /// Rebuilds the connection pool when `tls_config`'s files changed since it was built.
    async fn reload_tls(&self) {
        let Some(reload) = &self.inner.reload else {
            return;
        };
        {
            let mut st = reload.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if now < st.next_check {
                return;
            }
            // Whoever sees the check due does it; the others go on with the current pool.
            st.next_check = now + TLS_RECHECK;
        }
        let material = match tls::Material::load(&self.inner.tls).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "tls_config: cannot read the certificate files; keeping the ones loaded before");
                return;
            }
        };
        let unchanged = {
            let st = reload.state.lock().unwrap_or_else(|e| e.into_inner());
            st.material == material
        };
        if unchanged {
            return;
        }
        let inner = &*self.inner;
        match build_clients(&inner.settings, &inner.tls, &inner.opts, &material) {
            Ok(client) => {
                *inner.client.write().unwrap_or_else(|e| e.into_inner()) = client;
                reload
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .material = material;
                tracing::info!(files = ?inner.tls.files(), "tls_config: certificate files changed; new connections use them");
            }
            Err(e) => {
                tracing::warn!(error = %e, "tls_config: the changed certificate files are not usable; keeping the ones loaded before")
            }
        }
    }

    /// Adds the auth (basic, `Authorization`, a token) to `rb`; returns the token header used,
    /// for token auths.
    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<(reqwest::RequestBuilder, Option<String>), Error> {
        let (header, token) = self.authorization().await?;
        Ok(match header {
            Some(v) => (rb.header(reqwest::header::AUTHORIZATION, v), token),
            None => (rb, token),
        })
    }

    /// The `Authorization` value of the auth (`None` for none, and for sigv4, which signs the
    /// complete request) and, for token auths, the token header used.
    async fn authorization(&self) -> Result<(Option<HeaderValue>, Option<String>), Error> {
        let read = |field: &'static str, src: &SecretSource| {
            let src = src.clone();
            async move {
                src.value().await.map_err(|source| Error::ReadFile {
                    field,
                    path: src.path().map(Path::to_path_buf).unwrap_or_default(),
                    source,
                })
            }
        };
        Ok(match &self.inner.auth {
            // Signed in `send`, once the request is complete.
            Authorizer::None | Authorizer::SigV4(_) => (None, None),
            Authorizer::AzureManagedIdentity(m) => {
                let header = m
                    .authorization()
                    .await
                    .map_err(|e| Error::AzureAd(e.to_string()))?;
                let (_, v) = header_pair("azuread", "Authorization", &header)?;
                (Some(v), Some(header))
            }
            Authorizer::Basic { username, password } => {
                let user = match username {
                    Some(u) => read("username_file", u).await?.expose().to_owned(),
                    None => String::new(),
                };
                let pass = match password {
                    Some(p) => read("password_file", p).await?.expose().to_owned(),
                    None => String::new(),
                };
                (Some(basic_auth(&user, &pass)), None)
            }
            Authorizer::Header { kind, credentials } => {
                let c = match credentials {
                    Some(c) => read("credentials_file", c).await?.expose().to_owned(),
                    None => String::new(),
                };
                let (_, v) = header_pair("authorization", "Authorization", &format!("{kind} {c}"))?;
                (Some(v), None)
            }
            Authorizer::OAuth2(ts) => {
                let header = ts.authorization().await?;
                let (_, v) = header_pair("oauth2", "Authorization", &header)?;
                (Some(v), Some(header))
            }
        })
    }

    /// Sends `rb` (made by [`request`](Self::request)) with the auth applied. With a token auth,
    /// a 401 drops the token and the request is sent once more with a new one. Any status is
    /// returned as is.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        self.reload_tls().await;
        if let Authorizer::SigV4(signer) = &self.inner.auth {
            let mut req = rb.build().map_err(|e| Error::Http(e.without_url()))?;
            signer
                .sign(&mut req)
                .await
                .map_err(|e| Error::SigV4(Box::new(e)))?;
            return self
                .current()
                .execute(req)
                .await
                .map_err(|e| Error::Http(e.without_url()));
        }
        let retry = match self.inner.auth {
            Authorizer::OAuth2(_) => rb.try_clone(),
            _ => None,
        };
        let (rb, token) = self.authorize(rb).await?;
        let resp = self.execute(rb).await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED || !self.retry_after_401(token).await
        {
            return Ok(resp);
        }
        let Some(again) = retry else {
            return Ok(resp);
        };
        let (again, _) = self.authorize(again).await?;
        self.execute(again).await
    }

    /// GETs `url` with `headers` and the auth on the scrape transport (a client built with
    /// [`Options::scrape`]), over the connections of `session` (the scrape loop's), with
    /// [`send`](Self::send)'s 401 handling for token auths. Any status is returned as is; the
    /// body is read with [`transport::Response::read_into`] on the same session.
    pub async fn fetch(
        &self,
        session: &mut transport::Session,
        url: &transport::RequestUrl,
        headers: &HeaderMap,
    ) -> Result<transport::Response, Error> {
        self.reload_tls().await;
        let Some(transport) = self.current_scrape() else {
            return Err(Error::Build(
                "this client was not built for scrapes (Options::scrape)".into(),
            ));
        };
        let with_auth = |auth: Option<HeaderValue>| {
            let mut headers = headers.clone();
            if let Some(v) = auth {
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
            headers
        };
        let (auth, token) = self.authorization().await?;
        let resp = transport
            .get(session, url, with_auth(auth))
            .await
            .map_err(Error::Transport)?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED || !self.retry_after_401(token).await
        {
            return Ok(resp);
        }
        resp.discard(session).await;
        let (auth, _) = self.authorization().await?;
        transport
            .get(session, url, with_auth(auth))
            .await
            .map_err(Error::Transport)
    }

    /// After a 401 to a request that carried `token` (the header value of a token auth):
    /// whether to send it once more. An OAuth2 token is dropped, so the next `authorization`
    /// fetches a new one, and the request is retried; an Azure managed-identity token is
    /// cleared for the next request; other auths return the 401 as is.
    async fn retry_after_401(&self, token: Option<String>) -> bool {
        match (&self.inner.auth, token) {
            (Authorizer::AzureManagedIdentity(m), _) => {
                m.clear().await;
                false
            }
            (Authorizer::OAuth2(ts), Some(token)) => {
                ts.invalidate(&token).await;
                true
            }
            _ => false,
        }
    }

    /// Sends `rb` as it is, without this client's auth (the token requests of `oauth2`).
    pub(crate) async fn send_without_auth(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        self.reload_tls().await;
        self.execute(rb).await
    }

    async fn execute(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let req = rb.build().map_err(|e| Error::Http(e.without_url()))?;
        self.current()
            .execute(req)
            .await
            .map_err(|e| Error::Http(e.without_url()))
    }
}

#[cfg(test)]
mod tests;
