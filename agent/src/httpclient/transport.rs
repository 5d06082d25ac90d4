//! The scrape transport: the connections scrapes are made on, with a bounded read buffer, each
//! driven by the scrape loop's own task.
//!
//! reqwest (every other request of the process) reads a response into hyper's adaptive read
//! buffer, which grows to the size of the reads (up to ~400 KiB) and stays that large while the
//! connection idles in the keep-alive pool. A scrape target is asked once per interval and its
//! connection idles in between, so every target kept ~128 KiB of buffer between scrapes (a
//! 1,000-series target's body). Here hyper's HTTP/1 connections read [`READ_BUF`] bytes at a
//! time (`read_buf_exact_size`): a body is read in 16 KiB reads straight into the scrape's
//! pooled body buffer, and an idle connection keeps 16 KiB.
//!
//! A pooled client (hyper-util's, reqwest's) runs each connection as a task of its own and hands
//! the body to the caller frame by frame over a channel: per 16 KiB read the connection task and
//! the scrape woke each other, and after three such hand-offs in a row the runtime put the woken
//! task at the back of its run queue (where other workers steal from) and woke another worker,
//! which mostly found nothing to do. Here a
//! scrape loop keeps its connections in a [`Session`] and polls an HTTP/1 connection itself, in
//! the same task that reads the response ([`Driver`]): a body is read without a hand-off
//! between tasks and without waking another thread. An HTTP/2 connection (a TLS target that
//! picks `h2`) runs as its own task, as in a pooled client.
//!
//! It is built by [`HttpClient::new`](super::HttpClient::new) from the same validated
//! `http_client_config` and TLS material as the reqwest client, and does what reqwest does for
//! the fields of that config, with reqwest's rules:
//! - TLS: the rustls config of [`tls::client_config`] (CA, client certificate, `server_name`,
//!   `insecure_skip_verify`, versions); ALPN offers `h2` when `enable_http2`, and a server that
//!   picks it is spoken to in HTTP/2. The server name sent (SNI) is `server_name` when set (as
//!   Prometheus sends it), else the URL's host; reqwest always sends the URL's host.
//! - Proxies: hyper-util's proxy matcher built as reqwest builds it (`proxy_url` + `no_proxy`, or
//!   the environment's variables); `https` targets through a CONNECT tunnel carrying the proxy
//!   URL's credentials, `proxy_connect_header` and the User-Agent; `http` targets forwarded in
//!   absolute form with the proxy URL's credentials (`Proxy-Authorization`) and
//!   `proxy_connect_header` on the request.
//! - Redirects (`follow_redirects`): 301, 302, 303, 307 and 308 with a `Location` are followed,
//!   at most [`MAX_REDIRECTS`]; a hop to another scheme, host or port drops `Authorization`,
//!   `Cookie`, `Proxy-Authorization` and `WWW-Authenticate`; `Referer` names the previous URL
//!   (not from `https` to `http`).
//! - `Accept-Encoding: gzip` (when the client was built with `gzip`) unless the request names an
//!   encoding. A `Content-Encoding: gzip` body is decoded whatever was asked for: Prometheus's
//!   scrape decodes by that header alone, so a target that compresses although the scrape sent
//!   `Accept-Encoding: identity` (`enable_compression: false`) is still read (reqwest built
//!   without gzip would hand back the compressed bytes).
//! - Connecting (TCP, TLS, the CONNECT) is bounded by the client's connect timeout. A
//!   connection idle for [`IDLE_TIMEOUT`] is not used again, and a loop whose scrapes are that
//!   far apart or more closes its connections after each scrape ([`Session::finish`]). A request
//!   that a reused connection closed before sending it is sent once more on a new connection
//!   (hyper-util's rule for its pool). A body over the limit or that fails to read closes its
//!   connection at once, one left unread closes it after the scrape (a timeout, an error
//!   before the body); one dropped on purpose (a redirect, an
//!   error status, a 401 answered again) has what is left of its body read if it is already
//!   here and small, and its connection kept, as a pooled client does ([`Response::discard`]).

use std::error::Error as StdError;
use std::future::Future;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, COOKIE, HOST,
    LOCATION, PROXY_AUTHORIZATION, RANGE, REFERER, USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::{Service, ServiceExt};

use super::tls;

/// The read size of a scrape connection, and so the buffer an idle one keeps. Measured side by
/// side against 8 and 32 KiB: 8 KiB reads cost more CPU per sample, 32 KiB saved less memory.
pub const READ_BUF: usize = 16 * 1024;
/// The longest redirect chain followed (reqwest's and Go's default).
pub const MAX_REDIRECTS: usize = 10;
/// A connection idle this long is closed rather than used again (hyper-util's pool setting
/// that this transport had before it kept its own connections).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The connections a [`Session`] keeps: its target's, plus the origins its redirects lead to.
const MAX_LINKS: usize = 4;
/// The most of a body [`Response::discard`] reads to keep its connection.
const DRAIN: u64 = 64 * 1024;
/// How many times [`Driver`] polls in one turn of its task before it lets others run.
const DRIVE_BUDGET: usize = 32;

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Numbers transports, so a session drops the connections of one that a TLS reload replaced.
static TRANSPORTS: AtomicU64 = AtomicU64::new(0);
/// Numbers connections, so a [`Response`] finds the one its body comes over.
static LINKS: AtomicU64 = AtomicU64::new(0);

/// What the transport is built from (the caller's part of [`super::Options`] and the config).
pub(crate) struct Settings<'a> {
    pub tls: &'a tls::Material,
    pub tls_settings: &'a crate::config::http::TlsSettings,
    pub enable_http2: bool,
    pub follow_redirects: bool,
    pub gzip: bool,
    pub user_agent: Option<HeaderValue>,
    pub connect_timeout: Duration,
    /// `None`: no proxy.
    pub proxies: Option<Matcher>,
    /// `proxy_connect_header`.
    pub proxy_headers: HeaderMap,
}

/// The scrape transport of one [`HttpClient`](super::HttpClient). Cheap to share; the
/// connections are in each scrape loop's [`Session`].
pub(crate) struct Transport {
    id: u64,
    connector: Connector,
    proxies: Option<Arc<Matcher>>,
    proxy_headers: HeaderMap,
    user_agent: Option<HeaderValue>,
    gzip: bool,
    follow_redirects: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("gzip", &self.gzip)
            .field("follow_redirects", &self.follow_redirects)
            .finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(s: Settings<'_>) -> Result<Self, tls::TlsError> {
        let alpn: &[&[u8]] = if s.enable_http2 {
            &[b"h2", b"http/1.1"]
        } else {
            &[b"http/1.1"]
        };
        let tls = TlsConnector::from(Arc::new(tls::client_config(s.tls_settings, s.tls, alpn)?));
        // A proxy reached over TLS speaks HTTP/1.1 (CONNECT, or forwarded requests).
        let proxy_tls = TlsConnector::from(Arc::new(tls::client_config(
            s.tls_settings,
            s.tls,
            &[b"http/1.1"],
        )?));
        // The name a target sees in the TLS handshake (SNI): `server_name` when it is set, as
        // Prometheus sends it (a server or proxy that picks its certificate or backend by SNI
        // then sees the name the certificate is verified against), else the URL's host.
        let sni = tls::server_name(s.tls_settings)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let proxies = s.proxies.map(Arc::new);
        let connector = Connector {
            direct: Direct {
                http: http.clone(),
                tls,
                sni,
            },
            // A proxy reached over TLS is named by its own URL.
            proxy: Direct {
                http,
                tls: proxy_tls,
                sni: None,
            },
            proxies: proxies.clone(),
            tunnel_headers: {
                let mut h = s.proxy_headers.clone();
                if let Some(ua) = &s.user_agent {
                    h.insert(USER_AGENT, ua.clone());
                }
                h
            },
            timeout: s.connect_timeout,
        };
        Ok(Transport {
            id: TRANSPORTS.fetch_add(1, Ordering::Relaxed),
            connector,
            proxies,
            proxy_headers: s.proxy_headers,
            user_agent: s.user_agent,
            gzip: s.gzip,
            follow_redirects: s.follow_redirects,
        })
    }

    /// GETs `url` with `headers` over `session`'s connections, following redirects as
    /// configured. Any status is returned; its body is read with [`Response::read_into`] on the
    /// same session.
    pub(crate) async fn get(
        &self,
        session: &mut Session,
        url: &RequestUrl,
        mut headers: HeaderMap,
    ) -> Result<Response, String> {
        if let Some(ua) = &self.user_agent {
            headers.entry(USER_AGENT).or_insert_with(|| ua.clone());
        }
        if self.gzip && !headers.contains_key(ACCEPT_ENCODING) && !headers.contains_key(RANGE) {
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        }
        // The first hop is the caller's URL, parsed when it was made; a redirect's target is
        // parsed here.
        let mut redirected: Option<RequestUrl> = None;
        let mut followed = 0;
        loop {
            let here = redirected.as_ref().unwrap_or(url);
            let mut hop = headers.clone();
            self.forward_proxy_headers(&here.uri, &mut hop);
            let resp = self.send(session, here.uri.clone(), hop).await?;
            let status = resp.status();
            let redirect = matches!(
                status,
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            );
            let next = redirect
                .then(|| resp.headers().get(LOCATION))
                .flatten()
                .and_then(|l| std::str::from_utf8(l.as_bytes()).ok())
                .and_then(|l| here.url.join(l).ok());
            let Some(next) = next.filter(|_| self.follow_redirects) else {
                return Ok(resp);
            };
            resp.discard(session).await;
            if followed == MAX_REDIRECTS {
                return Err("error following redirect: too many redirects".into());
            }
            if next.scheme() != "http" && next.scheme() != "https" {
                return Err(format!("URL scheme is not allowed: {}", next.scheme()));
            }
            followed += 1;
            let cross_origin = next.host_str() != here.url.host_str()
                || next.port_or_known_default() != here.url.port_or_known_default()
                || next.scheme() != here.url.scheme();
            if cross_origin {
                for h in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE] {
                    headers.remove(h);
                }
                headers.remove("cookie2");
            }
            if let Some(r) = referer(&next, &here.url) {
                headers.insert(REFERER, r);
            }
            redirected = Some(RequestUrl::from_url(next)?);
        }
    }

    /// One request on a connection of `session` to `uri`'s origin, kept or new. A request that
    /// a kept connection closed before sending it goes once more on a new one.
    async fn send(
        &self,
        session: &mut Session,
        uri: Uri,
        mut headers: HeaderMap,
    ) -> Result<Response, String> {
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(format!("builder error: URL has no host: {uri}"));
        };
        let origin = (scheme, authority);
        loop {
            let (i, reused) = self.link(session, &origin).await?;
            let link = &mut session.links[i];
            let req = link.request(&uri, headers)?;
            link.idle_since = None;
            let sent = match &mut link.kind {
                Kind::H1(h) => {
                    let fut = h.sender.try_send_request(req);
                    match h.driver.drive(fut).await {
                        Some(r) => r.map_err(|mut e| (e.take_message(), e.into_error())),
                        None => {
                            let what = "error sending request: client error (SendRequest)";
                            return Err(session.close(i, what));
                        }
                    }
                }
                Kind::H2(s) => s
                    .try_send_request(req)
                    .await
                    .map_err(|mut e| (e.take_message(), e.into_error())),
            };
            match sent {
                Ok(inner) => {
                    let link = link.id;
                    return Ok(Response { inner, link });
                }
                Err((unsent, e)) => {
                    session.links.remove(i);
                    match unsent {
                        // Its headers go on the next try (with the `Host` this link added,
                        // the same for the same origin).
                        Some(req) if reused => headers = req.into_parts().0.headers,
                        _ => {
                            // hyper-util's words: a request handed back unsent was "canceled".
                            let kind = if unsent.is_some() {
                                "Canceled"
                            } else {
                                "SendRequest"
                            };
                            return Err(format!(
                                "error sending request: client error ({kind}): {}",
                                super::error_chain(&e)
                            ));
                        }
                    }
                }
            }
        }
    }

    /// The index in `session` of an open connection to `origin` made by this transport, and
    /// whether it was kept from before; a new one when there is none.
    async fn link(
        &self,
        session: &mut Session,
        origin: &(Scheme, Authority),
    ) -> Result<(usize, bool), String> {
        let now = Instant::now();
        session.links.retain(|l| {
            l.transport == self.id
                && l.idle_since
                    .is_some_and(|t| now.saturating_duration_since(t) < IDLE_TIMEOUT)
        });
        if let Some(i) = session.links.iter().position(|l| &l.origin == origin) {
            let open = match &mut session.links[i].kind {
                // Polling the connection reads a close the server sent while it idled.
                Kind::H1(h) => {
                    let ready = h.sender.ready();
                    let ready = matches!(h.driver.drive(ready).await, Some(Ok(())));
                    ready && h.driver.conn.is_some()
                }
                Kind::H2(s) => !s.is_closed(),
            };
            if open {
                return Ok((i, true));
            }
            session.links.remove(i);
        }
        let dst = Uri::from_parts({
            let mut p = hyper::http::uri::Parts::default();
            p.scheme = Some(origin.0.clone());
            p.authority = Some(origin.1.clone());
            p.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
            p
        })
        .map_err(|e| format!("builder error: {e}"))?;
        let conn = self.connector.clone().oneshot(dst).await.map_err(|e| {
            format!(
                "error sending request: client error (Connect): {}",
                super::error_chain(&*e)
            )
        })?;
        let proxied = conn.proxied;
        // hyper-util's words for a failed handshake.
        let handshake_error = |e: hyper::Error| {
            let e = super::error_chain(&e);
            format!("error sending request: client error (SendRequest): {e}")
        };
        let kind = if conn.h2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(conn)
                .await
                .map_err(handshake_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "scrape connection (HTTP/2) ended");
                }
            });
            Kind::H2(sender)
        } else {
            let (sender, connection) = http1::Builder::new()
                .read_buf_exact_size(Some(READ_BUF))
                .handshake(conn)
                .await
                .map_err(handshake_error)?;
            Kind::H1(Box::new(H1 {
                sender,
                driver: Driver::new(connection),
            }))
        };
        if session.links.len() >= MAX_LINKS {
            session.links.remove(0);
        }
        session.links.push(Link {
            id: LINKS.fetch_add(1, Ordering::Relaxed),
            origin: origin.clone(),
            transport: self.id,
            proxied,
            idle_since: None,
            kind,
        });
        Ok((session.links.len() - 1, false))
    }

    /// An `http` target forwarded through a proxy: the proxy's credentials and headers go on
    /// the request itself (for `https` targets they go on the CONNECT).
    fn forward_proxy_headers(&self, uri: &Uri, headers: &mut HeaderMap) {
        if uri.scheme() != Some(&hyper::http::uri::Scheme::HTTP) {
            return;
        }
        let Some(proxy) = self.proxies.as_ref().and_then(|m| m.intercept(uri)) else {
            return;
        };
        if !headers.contains_key(PROXY_AUTHORIZATION) {
            if let Some(auth) = proxy.basic_auth() {
                headers.insert(PROXY_AUTHORIZATION, auth.clone());
            }
        }
        for (name, value) in &self.proxy_headers {
            headers.insert(name, value.clone());
        }
    }
}

/// A URL to GET, parsed once for both uses: [`url::Url`] to resolve a redirect's `Location`
/// against and to compare origins, [`Uri`] for the request. A scrape loop makes its target's
/// when it starts (agent/src/scrape/scrape_loop.rs), not at every scrape.
#[derive(Clone, Debug)]
pub struct RequestUrl {
    url: url::Url,
    uri: Uri,
}

impl RequestUrl {
    /// Parses `s`; the error text is reqwest's for a URL it cannot build a request for.
    pub fn parse(s: &str) -> Result<RequestUrl, String> {
        let url = url::Url::parse(s).map_err(|e| format!("builder error: {e}"))?;
        RequestUrl::from_url(url)
    }

    fn from_url(url: url::Url) -> Result<RequestUrl, String> {
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(|e| format!("builder error: {e}"))?;
        Ok(RequestUrl { url, uri })
    }
}

/// reqwest's `Referer`: the previous URL without credentials or fragment, none from https to
/// http.
fn referer(next: &url::Url, previous: &url::Url) -> Option<HeaderValue> {
    if next.scheme() == "http" && previous.scheme() == "https" {
        return None;
    }
    let mut r = previous.clone();
    let _ = r.set_username("");
    let _ = r.set_password(None);
    r.set_fragment(None);
    r.as_str().parse().ok()
}

/// A scrape loop's connections, kept between its scrapes (one per origin, at most
/// [`MAX_LINKS`]). Dropping it closes them.
#[derive(Default)]
pub struct Session {
    links: Vec<Link>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connections", &self.links.len())
            .finish()
    }
}

impl Session {
    /// Closes connection `i` and says why a request on it failed.
    fn close(&mut self, i: usize, what: &str) -> String {
        let link = self.links.remove(i);
        let why = match &link.kind {
            Kind::H1(h) => h.driver.ended.as_deref(),
            Kind::H2(_) => None,
        };
        format!("{what}: {}", why.unwrap_or("connection closed"))
    }

    /// After a scrape: closes at once a connection whose response was not read to its end (a
    /// timeout, an error; a pooled client's connection task closed it at once too), and every
    /// connection when the next scrape is `next_use_in` away and it would be idle too long by
    /// then ([`IDLE_TIMEOUT`]).
    pub fn finish(&mut self, next_use_in: Duration) {
        if next_use_in >= IDLE_TIMEOUT {
            self.links.clear();
        } else {
            self.links.retain(|l| l.idle_since.is_some());
        }
    }

    /// How many connections are kept (tests).
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        self.links.len()
    }
}

/// One kept connection.
struct Link {
    id: u64,
    origin: (Scheme, Authority),
    /// The [`Transport`] that made it.
    transport: u64,
    /// Through an HTTP proxy that is sent whole URLs (an `http` target through a proxy).
    proxied: bool,
    /// Since when it waits for a request; `None` while a response is on its way or was left
    /// unread, and such a connection is not used again.
    idle_since: Option<Instant>,
    kind: Kind,
}

enum Kind {
    H1(Box<H1>),
    /// Runs as its own task (hyper's HTTP/2 client spawns the streams' tasks anyway).
    H2(http2::SendRequest<Empty<Bytes>>),
}

struct H1 {
    sender: http1::SendRequest<Empty<Bytes>>,
    driver: Driver,
}

impl Link {
    /// The request for `uri` as this connection sends it: on HTTP/1 with a `Host` header and
    /// the path only, or the whole URL to a proxy (hyper-util's pooled client's rules).
    fn request(&self, uri: &Uri, headers: HeaderMap) -> Result<Request<Empty<Bytes>>, String> {
        let mut req = Request::get(uri.clone())
            .body(Empty::new())
            .map_err(|e| format!("builder error: {e}"))?;
        *req.headers_mut() = headers;
        if let Kind::H1(_) = self.kind {
            if !req.headers().contains_key(HOST) {
                let host = uri.host().unwrap_or_default();
                let default_port = if uri.scheme() == Some(&Scheme::HTTPS) {
                    443
                } else {
                    80
                };
                let value = match uri.port_u16().filter(|p| *p != default_port) {
                    Some(port) => HeaderValue::from_str(&format!("{host}:{port}")),
                    None => HeaderValue::from_str(host),
                };
                req.headers_mut().insert(
                    HOST,
                    value.map_err(|e| format!("builder error: host {host:?}: {e}"))?,
                );
            }
            if !self.proxied {
                *req.uri_mut() = match uri.path_and_query() {
                    Some(pq) if pq.as_str() != "/" => Uri::from(pq.clone()),
                    _ => Uri::from_static("/"),
                };
            }
        }
        Ok(req)
    }
}

/// Polls an HTTP/1 connection in the task that waits on it (module doc).
///
/// The connection and the future waiting on it (a response, a body frame) are polled with one
/// waker, [`Relay`]: a wake while they are being polled (from either of them, or the socket
/// becoming readable meanwhile) means only "poll once more", which `drive` does in the same
/// turn, up to [`DRIVE_BUDGET`] times; a wake while the task waits in `drive` wakes the task.
/// A wake while no `drive` waits (the request going into the connection's queue, the
/// connection settling after a response, a close while it idles) is only noted: nothing but a
/// `drive` polls the connection, and the next one polls it first. Waking the task then would
/// make the runtime queue the task again (it is often running: the request is queued from its
/// own poll) and wake another worker for it, once per scrape for nothing.
struct Driver {
    /// Dropped as soon as it ends: only then does hyper tell the sender, and a request waiting
    /// in its queue, that it is closed (the request comes back unsent, and is sent again on a
    /// new connection).
    conn: Option<http1::Connection<Conn, Empty<Bytes>>>,
    /// Why the connection ended.
    ended: Option<String>,
    relay: Arc<Relay>,
    waker: Waker,
}

impl Driver {
    fn new(conn: http1::Connection<Conn, Empty<Bytes>>) -> Self {
        let relay = Arc::new(Relay::default());
        Driver {
            conn: Some(conn),
            ended: None,
            waker: Waker::from(relay.clone()),
            relay,
        }
    }

    /// `fut`'s output, with the connection polled alongside; `None` when the connection ended
    /// and `fut` still waits.
    async fn drive<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| self.poll(cx, fut.as_mut())).await
    }

    fn poll<F: Future>(
        &mut self,
        cx: &mut Context<'_>,
        mut fut: Pin<&mut F>,
    ) -> Poll<Option<F::Output>> {
        self.relay.watch(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..DRIVE_BUDGET {
            self.relay.state.store(POLLING, Ordering::SeqCst);
            if let Some(conn) = self.conn.as_mut() {
                if let Poll::Ready(r) = Pin::new(conn).poll(&mut inner) {
                    self.ended = Some(match r {
                        Ok(()) => "connection closed".to_owned(),
                        Err(e) => super::error_chain(&e),
                    });
                    // Wakes (through the relay) what waits on it, which is polled again below.
                    self.conn = None;
                }
            }
            if let Poll::Ready(v) = fut.as_mut().poll(&mut inner) {
                self.relay.state.store(0, Ordering::SeqCst);
                return Poll::Ready(Some(v));
            }
            if self.relay.state.load(Ordering::SeqCst) & WOKEN == 0 {
                break;
            }
        }
        // From here a wake wakes the task. A wake that came after the last look (from the
        // driver's thread), or the budget spent with work left: the task is polled again.
        if self.relay.state.swap(WAITING, Ordering::SeqCst) & WOKEN != 0 {
            cx.waker().wake_by_ref();
        } else if self.conn.is_none() {
            // Nothing will wake `fut` any more.
            self.relay.state.store(0, Ordering::SeqCst);
            return Poll::Ready(None);
        }
        // A `drive` dropped while waiting (a scrape's timeout) leaves `WAITING` set until the
        // next `drive`: a request's or a body's link is closed by `Session::finish` right after
        // (with the connection and this relay); a kept link whose check in `link` was dropped
        // only passes its connection's wakes to the task meanwhile, as before `WAITING`.
        Poll::Pending
    }
}

/// [`Relay::state`]: a [`Driver`] is polling.
const POLLING: u8 = 1;
/// [`Relay::state`]: woken since the driver last looked.
const WOKEN: u8 = 2;
/// [`Relay::state`]: a [`Driver::drive`] waits for a wake.
const WAITING: u8 = 4;

/// The waker a [`Driver`] polls with: it wakes the task that polled last only while a `drive`
/// waits; while the driver polls, or while no `drive` waits, a wake is only noted (see
/// [`Driver`]).
#[derive(Default)]
struct Relay {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Relay {
    fn watch(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.fetch_or(WOKEN, Ordering::SeqCst) & (POLLING | WAITING) == WAITING {
            let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(t) = task {
                t.wake();
            }
        }
    }
}

/// A response of the scrape transport; its body is read by [`Response::read_into`].
#[derive(Debug)]
pub struct Response {
    inner: hyper::Response<Incoming>,
    /// The connection it came over ([`Link::id`]).
    link: u64,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The (decoded) body reached the limit.
    #[error("body size limit reached")]
    Limit,
    #[error("{0}")]
    Read(String),
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// Appends the body (decoded when its `Content-Encoding` is gzip, whether or not gzip was
    /// asked for) to `body`; fails once `body` holds `limit` bytes or more (`0`: no limit).
    /// `session` is the one the response came over; its connection is kept for the next
    /// request once the body was read to its end, and closed otherwise.
    pub async fn read_into(
        self,
        session: &mut Session,
        body: &mut Vec<u8>,
        limit: u64,
    ) -> Result<(), BodyError> {
        let Some(i) = session.links.iter().position(|l| l.id == self.link) else {
            return Err(BodyError::Read(
                "error reading a body from connection: the connection is gone".into(),
            ));
        };
        let read = read_body(self.inner, &mut session.links[i], body, limit).await;
        match read {
            Ok(()) => session.links[i].idle_since = Some(Instant::now()),
            Err(_) => {
                session.links.remove(i);
            }
        }
        read
    }
}

impl Response {
    /// Drops the response, reading first what is left of its body if that is already here and
    /// at most [`DRAIN`] bytes (a redirect's, an error page's), so that its connection can be
    /// used again; the connection is closed otherwise. Never waits for the network.
    pub async fn discard(self, session: &mut Session) {
        let link = self.link;
        let mut sink = Vec::new();
        let done = {
            let mut read = std::pin::pin!(self.read_into(session, &mut sink, DRAIN));
            std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx).is_ready())).await
        };
        if !done {
            session.links.retain(|l| l.id != link);
        }
    }
}

/// The next frame of `incoming`, the connection polled alongside on HTTP/1.
async fn next_frame(
    link: &mut Link,
    incoming: &mut Incoming,
) -> Option<Result<hyper::body::Frame<Bytes>, BodyError>> {
    let frame = match &mut link.kind {
        Kind::H1(h) => match h.driver.drive(incoming.frame()).await {
            Some(f) => f,
            None => {
                return Some(Err(BodyError::Read(format!(
                    "error reading a body from connection: {}",
                    h.driver.ended.as_deref().unwrap_or("connection closed")
                ))))
            }
        },
        Kind::H2(_) => incoming.frame().await,
    };
    frame.map(|f| {
        f.map_err(|e| {
            BodyError::Read(format!(
                "error reading a body from connection: {}",
                super::error_chain(&e)
            ))
        })
    })
}

async fn read_body(
    resp: hyper::Response<Incoming>,
    link: &mut Link,
    body: &mut Vec<u8>,
    limit: u64,
) -> Result<(), BodyError> {
    let gzip = resp
        .headers()
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|e| e == "gzip");
    let over = |b: &Vec<u8>| limit > 0 && b.len() as u64 >= limit;
    let mut incoming = resp.into_body();
    if !gzip {
        while let Some(frame) = next_frame(link, &mut incoming).await {
            if let Ok(data) = frame?.into_data() {
                // The limit is checked before the bytes are kept, as Prometheus does.
                if limit > 0 && (body.len() + data.len()) as u64 >= limit {
                    return Err(BodyError::Limit);
                }
                body.extend_from_slice(&data);
            }
        }
        return Ok(());
    }
    let decode_err = |e: io::Error| BodyError::Read(format!("error decoding response body: {e}"));
    let mut decoder = flate2::write::GzDecoder::new(body);
    let mut fed = false;
    while let Some(frame) = next_frame(link, &mut incoming).await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        fed |= !data.is_empty();
        // Fed in small pieces, so the limit stops a body that inflates far beyond it early
        // (deflate expands 512 bytes to at most ~0.5 MiB).
        for piece in data.chunks(512) {
            decoder.write_all(piece).map_err(decode_err)?;
            if over(decoder.get_ref()) {
                return Err(BodyError::Limit);
            }
        }
    }
    if fed {
        decoder.try_finish().map_err(decode_err)?;
        if over(decoder.get_ref()) {
            return Err(BodyError::Limit);
        }
    }
    Ok(())
}

/// A connection: TCP, or TLS over TCP or over a CONNECT tunnel (itself TCP or TLS to a proxy).
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<Stream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connects to a URI's host: TCP, plus TLS for `https`.
#[derive(Clone)]
struct Direct {
    http: HttpConnector,
    tls: TlsConnector,
    /// The SNI sent instead of the URL's host (`server_name`).
    sni: Option<ServerName<'static>>,
}

impl Direct {
    /// The stream and whether the server picked HTTP/2.
    async fn connect(self, dst: Uri) -> Result<(Stream, bool), BoxError> {
        let tcp = self.http.clone().oneshot(dst.clone()).await?.into_inner();
        if dst.scheme() == Some(&hyper::http::uri::Scheme::HTTPS) {
            self.handshake(&dst, Stream::Tcp(tcp)).await
        } else {
            Ok((Stream::Tcp(tcp), false))
        }
    }

    async fn handshake(&self, dst: &Uri, io: Stream) -> Result<(Stream, bool), BoxError> {
        let name = match &self.sni {
            Some(name) => name.clone(),
            None => {
                let host = dst.host().ok_or("no host in url")?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned()).map_err(|_| "Invalid Server Name")?
            }
        };
        let tls = self.tls.connect(name, io).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((Stream::Tls(Box::new(tls)), h2))
    }
}

/// The connector a CONNECT [`Tunnel`] reaches its proxy with.
impl Service<Uri> for Direct {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = BoxFuture<TokioIo<Stream>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(TokioIo::new(this.connect(dst).await?.0)) })
    }
}

/// The scrape connector: direct, tunnelled or forwarded, as the proxy matcher says.
#[derive(Clone)]
struct Connector {
    direct: Direct,
    proxy: Direct,
    proxies: Option<Arc<Matcher>>,
    /// `proxy_connect_header` plus the User-Agent, for CONNECT requests.
    tunnel_headers: HeaderMap,
    timeout: Duration,
}

impl Connector {
    async fn connect(self, dst: Uri) -> Result<Conn, BoxError> {
        let Some(proxy) = self.proxies.as_ref().and_then(|m| m.intercept(&dst)) else {
            let (s, h2) = self.direct.connect(dst).await?;
            return Ok(Conn::new(s, false, h2));
        };
        if dst.scheme() == Some(&hyper::http::uri::Scheme::HTTPS) {
            let mut tunnel = Tunnel::new(proxy.uri().clone(), self.proxy.clone());
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            if !self.tunnel_headers.is_empty() {
                tunnel = tunnel.with_headers(self.tunnel_headers.clone());
            }
            let tunneled = tunnel.oneshot(dst.clone()).await?.into_inner();
            let (s, h2) = self.direct.handshake(&dst, tunneled).await?;
            Ok(Conn::new(s, false, h2))
        } else {
            let (s, _) = self.proxy.clone().connect(proxy.uri().clone()).await?;
            Ok(Conn::new(s, true, false))
        }
    }
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = BoxFuture<Conn>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timeout = this.timeout;
            tokio::time::timeout(timeout, this.connect(dst))
                .await
                .map_err(|_| format!("connect timed out after {timeout:?}"))?
        })
    }
}

/// One connection as hyper sees it: the stream, and how it was made.
pub(crate) struct Conn {
    io: TokioIo<Stream>,
    proxied: bool,
    h2: bool,
}

impl Conn {
    fn new(s: Stream, proxied: bool, h2: bool) -> Self {
        Conn {
            io: TokioIo::new(s),
            proxied,
            h2,
        }
    }
}

/// The largest read hyper asked a scrape connection for (tests show the bound with it).
#[cfg(test)]
pub(crate) static LARGEST_READ: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        #[cfg(test)]
        LARGEST_READ.fetch_max(buf.remaining(), std::sync::atomic::Ordering::Relaxed);
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
