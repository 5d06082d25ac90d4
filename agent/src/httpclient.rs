//! HTTP clients built from Prometheus's `http_client_config` (scrape targets, http_sd, ...):
//! TLS through rustls, auth applied to each request, redirects, proxies, timeouts.
//!
//! Credentials read from files (`bearer_token_file`, `password_file`, `credentials_file`) are
//! re-read on every request, as Prometheus does, so rotated tokens are picked up. `oauth2`
//! tokens come from a [`TokenSource`] (cached until shortly before they expire; a 401 makes
//! the next request fetch a new one, see [`HttpClient::unauthorized`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::http::HttpClientConfig;
use crate::oauth2::{OAuth2Error, TokenSource};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {field} {path}: {source}")]
    ReadFile {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {field}: {message}")]
    Tls {
        field: &'static str,
        message: String,
    },
    #[error("invalid proxy_url: {0}")]
    Proxy(String),
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    #[error("{0}")]
    OAuth2(#[from] OAuth2Error),
    #[error("building the HTTP client: {0}")]
    Build(String),
}

/// Installs rustls's `ring` provider unless one is installed already. The binary does this in
/// `main`; doing it here too keeps library users (tests, tools) from a panic inside reqwest.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// How a request is authenticated.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic {
        username: String,
        password: Secretish,
    },
    /// `Authorization: <type> <credentials>` (bearer tokens are type `Bearer`).
    Header {
        kind: String,
        credentials: Secretish,
    },
    OAuth2(TokenSource),
}

/// A credential given inline or read from a file on each use.
#[derive(Clone)]
enum Secretish {
    Inline(String),
    File { field: &'static str, path: PathBuf },
}

impl std::fmt::Debug for Secretish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secretish::Inline(_) => f.write_str("<secret>"),
            Secretish::File { path, .. } => write!(f, "file {}", path.display()),
        }
    }
}

impl Secretish {
    fn value(&self) -> Result<String, Error> {
        match self {
            Secretish::Inline(s) => Ok(s.clone()),
            Secretish::File { field, path } => std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|source| Error::ReadFile {
                    field,
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// The client for an `oauth2` block's token endpoint: its own `tls_config` and proxy fields,
/// no auth. `timeout` bounds each token request.
pub fn oauth2_token_client(
    o: &crate::config::http::OAuth2,
    base_dir: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, Error> {
    let cfg = HttpClientConfig {
        tls_config: o.tls_config.clone(),
        proxy_url: o.proxy_url.clone(),
        no_proxy: o.no_proxy.clone(),
        proxy_from_environment: o.proxy_from_environment,
        ..HttpClientConfig::default()
    };
    let opts = Options {
        timeout: Some(timeout),
        base_dir: base_dir.map(Path::to_path_buf),
        gzip: false,
        user_agent: None,
    };
    HttpClient::new(&cfg, &opts).map(|c| c.client)
}

/// A configured client plus the auth it adds to each request.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    auth: Auth,
}

/// Options that are not part of the config (they come from the caller).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Whole-request timeout (scrape_timeout, remote_timeout, refresh).
    pub timeout: Option<Duration>,
    /// Directory relative file paths are resolved against.
    pub base_dir: Option<PathBuf>,
    /// Ask for gzip and decode it.
    pub gzip: bool,
    pub user_agent: Option<String>,
}

fn resolve(base: Option<&Path>, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path,
    }
}

impl HttpClient {
    pub fn new(cfg: &HttpClientConfig, opts: &Options) -> Result<Self, Error> {
        ensure_crypto_provider();
        let base = opts.base_dir.as_deref();
        let mut b = reqwest::Client::builder()
            .gzip(opts.gzip)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(300));
        if let Some(t) = opts.timeout {
            b = b.timeout(t);
        }
        if let Some(ua) = &opts.user_agent {
            b = b.user_agent(ua.clone());
        }
        if cfg.follow_redirects == Some(false) {
            b = b.redirect(reqwest::redirect::Policy::none());
        }
        if cfg.enable_http2 == Some(false) {
            b = b.http1_only();
        }
        match (&cfg.proxy_url, cfg.proxy_from_environment) {
            (Some(url), _) => {
                let mut proxy = reqwest::Proxy::all(url.as_url().as_str())
                    .map_err(|e| Error::Proxy(e.to_string()))?;
                if let Some(np) = &cfg.no_proxy {
                    proxy = proxy.no_proxy(reqwest::NoProxy::from_string(np));
                }
                b = b.proxy(proxy);
            }
            (None, Some(true)) => {}
            (None, _) => b = b.no_proxy(),
        }
        if let Some(tls) = &cfg.tls_config {
            let read = |field: &'static str,
                        inline: &Option<String>,
                        file: &Option<String>|
             -> Result<Option<Vec<u8>>, Error> {
                if let Some(s) = inline {
                    return Ok(Some(s.as_bytes().to_vec()));
                }
                match file {
                    Some(f) => {
                        let path = resolve(base, f);
                        std::fs::read(&path)
                            .map(Some)
                            .map_err(|source| Error::ReadFile {
                                field,
                                path,
                                source,
                            })
                    }
                    None => Ok(None),
                }
            };
            if let Some(ca) = read("ca_file", &tls.ca, &tls.ca_file)? {
                let certs = reqwest::Certificate::from_pem_bundle(&ca).map_err(|e| Error::Tls {
                    field: "tls_config.ca",
                    message: e.to_string(),
                })?;
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            let key_inline = tls.key.as_ref().map(|k| k.expose().to_owned());
            let cert = read("cert_file", &tls.cert, &tls.cert_file)?;
            let key = read("key_file", &key_inline, &tls.key_file)?;
            if let (Some(mut cert), Some(key)) = (cert, key) {
                cert.push(b'\n');
                cert.extend_from_slice(&key);
                let id = reqwest::Identity::from_pem(&cert).map_err(|e| Error::Tls {
                    field: "tls_config.cert",
                    message: e.to_string(),
                })?;
                b = b.identity(id);
            }
            if tls.insecure_skip_verify {
                b = b.danger_accept_invalid_certs(true);
            }
            if tls.server_name.is_some() {
                return Err(Error::Unsupported("tls_config.server_name"));
            }
            let version = |v: &str| match v {
                "TLS12" | "TLS10" | "TLS11" => reqwest::tls::Version::TLS_1_2,
                _ => reqwest::tls::Version::TLS_1_3,
            };
            if let Some(v) = &tls.min_version {
                b = b.min_tls_version(version(v));
            }
            if let Some(v) = &tls.max_version {
                b = b.max_tls_version(version(v));
            }
        }
        let auth = if let Some(o) = &cfg.oauth2 {
            let http =
                oauth2_token_client(o, base, opts.timeout.unwrap_or(Duration::from_secs(30)))?;
            Auth::OAuth2(TokenSource::new(o, http, base)?)
        } else if let Some(ba) = &cfg.basic_auth {
            let password = match (&ba.password, &ba.password_file) {
                (_, Some(f)) if !f.is_empty() => Secretish::File {
                    field: "password_file",
                    path: resolve(base, f),
                },
                (Some(p), _) => Secretish::Inline(p.expose().to_owned()),
                _ => Secretish::Inline(String::new()),
            };
            Auth::Basic {
                username: ba.username.clone(),
                password,
            }
        } else if let Some(a) = &cfg.authorization {
            let credentials = match (&a.credentials, &a.credentials_file) {
                (_, Some(f)) if !f.is_empty() => Secretish::File {
                    field: "credentials_file",
                    path: resolve(base, f),
                },
                (Some(c), _) => Secretish::Inline(c.expose().to_owned()),
                _ => Secretish::Inline(String::new()),
            };
            Auth::Header {
                kind: a.kind.clone().unwrap_or_else(|| "Bearer".into()),
                credentials,
            }
        } else if let Some(f) = cfg.bearer_token_file.as_deref().filter(|f| !f.is_empty()) {
            Auth::Header {
                kind: "Bearer".into(),
                credentials: Secretish::File {
                    field: "bearer_token_file",
                    path: resolve(base, f),
                },
            }
        } else if let Some(t) = cfg.bearer_token.as_ref().filter(|t| !t.is_empty()) {
            Auth::Header {
                kind: "Bearer".into(),
                credentials: Secretish::Inline(t.expose().to_owned()),
            }
        } else {
            Auth::None
        };
        let client = b.build().map_err(|e| Error::Build(e.to_string()))?;
        Ok(HttpClient { client, auth })
    }

    /// A request with this client's auth applied (fetching an oauth2 token if needed).
    pub async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, Error> {
        let rb = self.client.request(method, url);
        Ok(match &self.auth {
            Auth::None => rb,
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password.value()?)),
            Auth::Header { kind, credentials } => rb.header(
                reqwest::header::AUTHORIZATION,
                format!("{kind} {}", credentials.value()?),
            ),
            Auth::OAuth2(ts) => {
                rb.header(reqwest::header::AUTHORIZATION, ts.authorization().await?)
            }
        })
    }

    pub async fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, Error> {
        self.request(reqwest::Method::GET, url).await
    }

    /// Tells the client a request got 401: an oauth2 token is fetched anew next time.
    pub async fn unauthorized(&self) {
        if let Auth::OAuth2(ts) = &self.auth {
            ts.clear().await;
        }
    }
}
