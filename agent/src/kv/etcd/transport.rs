//! The connection under the etcd client: TCP to one of the configured endpoints, then TLS when
//! configured (or when the endpoint says `https://`).
//!
//! The gRPC channel holds one HTTP/2 connection. When it breaks or cannot be made, the next
//! connection attempt starts at the endpoint after the one that failed and goes round the list,
//! each attempt bounded by `dial_timeout / endpoints`, so a dead cluster member costs one
//! failed attempt (a refused connection fails at once) and the client moves on to a live one.
//!
//! TLS: rustls with the settings of `kvstore.etcd` (`tls_ca_path`, `tls_cert_path`,
//! `tls_key_path`, `tls_server_name`, `tls_insecure_skip_verify`, `tls_min_version`,
//! `tls_cipher_suites`). `tls_server_name` is sent as SNI and verified, as Go does. The PEM files
//! are read again at each new connection, so rotated certificates are used without a restart.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::Uri;

use crate::config::http::TlsSettings;
use crate::httpclient::tls::{self, Material, TlsError};

/// One endpoint, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `host:port`, `http://host:port` or `https://host:port` (IPv6 hosts in brackets). Without a
/// scheme, TLS is used when the config enables it (`tls_default`).
pub(super) fn parse_endpoint(ep: &str, tls_default: bool) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = ep.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = ep.strip_prefix("http://") {
        (false, r)
    } else {
        (tls_default, ep)
    };
    let rest = rest.trim_end_matches('/');
    let bad = || format!("etcd endpoint {ep:?} is not [http[s]://]host:port");
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, p) = r.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        rest.rsplit_once(':').ok_or_else(bad)?
    };
    if host.is_empty() || host.contains(['/', '@']) {
        return Err(bad());
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(bad)?;
    Ok(Target {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// A byte stream of either kind, for the HTTP/2 client.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// TLS settings with the PEM data last read and the client config built from it.
struct TlsState {
    settings: TlsSettings,
    built: tokio::sync::Mutex<Option<(Material, Arc<rustls::ClientConfig>)>>,
}

struct Inner {
    targets: Vec<Target>,
    tls: Option<TlsState>,
    /// Where the next connection attempt starts.
    next: AtomicUsize,
    attempt_timeout: Duration,
}

/// The tower connector handed to tonic. Cheap to clone.
#[derive(Clone)]
pub(super) struct Connector {
    inner: Arc<Inner>,
}

impl Connector {
    /// Checks the TLS settings by building them once (reading the files), so a bad certificate
    /// is an error at start, not a connection that never comes up.
    pub async fn new(
        targets: Vec<Target>,
        tls: Option<TlsSettings>,
        dial_timeout: Duration,
    ) -> Result<Connector, TlsError> {
        let needs_tls = targets.iter().any(|t| t.tls);
        let tls = match (tls, needs_tls) {
            (Some(settings), _) => Some(settings),
            // An https:// endpoint without TLS settings: the system roots.
            (None, true) => Some(TlsSettings::default()),
            (None, false) => None,
        };
        let tls = match tls {
            Some(settings) => {
                let material = Material::load(&settings).await?;
                let cfg = Arc::new(tls::client_config(&settings, &material, &[b"h2"])?);
                Some(TlsState {
                    settings,
                    built: tokio::sync::Mutex::new(Some((material, cfg))),
                })
            }
            None => None,
        };
        let n = targets.len().max(1) as u32;
        Ok(Connector {
            inner: Arc::new(Inner {
                targets,
                tls,
                next: AtomicUsize::new(0),
                attempt_timeout: (dial_timeout / n).max(Duration::from_millis(200)),
            }),
        })
    }

    /// The client config for a new connection: rebuilt when the PEM files changed; the last good
    /// one when they cannot be read (a rotation in progress).
    async fn tls_config(&self, st: &TlsState) -> io::Result<Arc<rustls::ClientConfig>> {
        let mut built = st.built.lock().await;
        match Material::load(&st.settings).await {
            Ok(m) => {
                if let Some((old, cfg)) = built.as_ref() {
                    if *old == m {
                        return Ok(cfg.clone());
                    }
                }
                match tls::client_config(&st.settings, &m, &[b"h2"]) {
                    Ok(cfg) => {
                        let cfg = Arc::new(cfg);
                        if built.is_some() {
                            tracing::info!("etcd: TLS files changed; new connections use them");
                        }
                        *built = Some((m, cfg.clone()));
                        Ok(cfg)
                    }
                    Err(e) => match built.as_ref() {
                        Some((_, cfg)) => {
                            tracing::warn!(error = %e, "etcd: the changed TLS files are not usable; keeping the ones loaded before");
                            Ok(cfg.clone())
                        }
                        None => Err(io::Error::other(e.to_string())),
                    },
                }
            }
            Err(e) => match built.as_ref() {
                Some((_, cfg)) => {
                    tracing::warn!(error = %e, "etcd: cannot read the TLS files; keeping the ones loaded before");
                    Ok(cfg.clone())
                }
                None => Err(io::Error::other(e.to_string())),
            },
        }
    }

    async fn connect_one(&self, t: &Target) -> io::Result<Box<dyn Io>> {
        let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await?;
        let _ = tcp.set_nodelay(true);
        let Some(st) = self.inner.tls.as_ref().filter(|_| t.tls) else {
            return Ok(Box::new(tcp));
        };
        let cfg = self.tls_config(st).await?;
        let name = st
            .settings
            .server_name
            .clone()
            .unwrap_or_else(|| t.host.clone());
        let name = ServerName::try_from(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        Ok(Box::new(stream))
    }

    /// Tries every endpoint once, starting after the last one that failed.
    async fn connect(&self) -> io::Result<Box<dyn Io>> {
        let inner = &*self.inner;
        let n = inner.targets.len();
        let start = inner.next.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let t = &inner.targets[idx];
            let attempt = tokio::time::timeout(inner.attempt_timeout, self.connect_one(t)).await;
            match attempt {
                Ok(Ok(io)) => {
                    inner.next.store(idx, Ordering::Relaxed);
                    if i > 0 {
                        tracing::info!(endpoint = %t, "etcd: connected to another endpoint");
                    }
                    return Ok(io);
                }
                Ok(Err(e)) => errors.push(format!("{t}: {e}")),
                Err(_) => errors.push(format!(
                    "{t}: no connection within {:?}",
                    inner.attempt_timeout
                )),
            }
            // The next connection (this one's replacement) starts with another member.
            inner.next.store((idx + 1) % n, Ordering::Relaxed);
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            errors.join("; "),
        ))
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let t = |host: &str, port, tls| Target {
            host: host.into(),
            port,
            tls,
        };
        assert_eq!(parse_endpoint("a:1", false), Ok(t("a", 1, false)));
        assert_eq!(parse_endpoint("a:1", true), Ok(t("a", 1, true)));
        assert_eq!(
            parse_endpoint("https://a:2379", false),
            Ok(t("a", 2379, true))
        );
        assert_eq!(
            parse_endpoint("http://a:2379/", true),
            Ok(t("a", 2379, false))
        );
        assert_eq!(
            parse_endpoint("[::1]:2379", false),
            Ok(t("::1", 2379, false))
        );
        assert_eq!(t("::1", 2379, false).to_string(), "[::1]:2379");
        for bad in ["a", "a:0", ":1", "a:x", "u@a:1", "https://", "a/b:1"] {
            assert!(parse_endpoint(bad, false).is_err(), "{bad}");
        }
    }
}
