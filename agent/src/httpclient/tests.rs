use super::*;

/// `proxy_from_environment` reads the variables as Go's `httpproxy.FromEnvironment` does:
/// upper case first, then lower case; empty counts as unset.
#[test]
fn environment_proxies() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let none = env(&[]);
    assert!(env_proxies(&none, &HeaderMap::new()).unwrap().is_empty());
    let both = env(&[
        ("HTTP_PROXY", ""),
        ("http_proxy", "http://lower:3128"),
        ("HTTPS_PROXY", "http://upper:3128"),
        ("NO_PROXY", "internal"),
    ]);
    assert_eq!(env_proxies(&both, &HeaderMap::new()).unwrap().len(), 2);
    assert_eq!(
        env_var(&both, "HTTP_PROXY").as_deref(),
        Some("http://lower:3128")
    );
    assert_eq!(
        env_var(&both, "HTTPS_PROXY").as_deref(),
        Some("http://upper:3128")
    );
    let bad = env(&[("HTTPS_PROXY", "::not a url::")]);
    let err = env_proxies(&bad, &HeaderMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid proxy_url $HTTPS_PROXY"), "{err}");
}

/// Secrets stay out of Debug output of the client and its settings.
#[test]
fn debug_output_hides_secrets() {
    let cfg: crate::config::scrape::ScrapeConfigRaw = serde_yaml::from_str(
        "job_name: j\nbasic_auth:\n  username: u\n  password: sec-pw\ntls_config:\n  key: sec-key\n  cert: c\nproxy_url: http://p:1\nproxy_connect_header:\n  X: [sec-hdr]\n",
    )
    .unwrap();
    let s = cfg.http_client().settings().unwrap();
    let shown = format!("{s:?}");
    for secret in ["sec-pw", "sec-key", "sec-hdr"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    let c = HttpClient::new(
        &HttpClientSettings {
            tls: Default::default(),
            ..s
        },
        &Options {
            scrape: true,
            ..Default::default()
        },
    )
    .unwrap();
    let shown = format!("{c:?}");
    for secret in ["sec-pw", "sec-hdr"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// The scrape transport's proxies for `proxy_from_environment` are the ones `env_proxies` gives
/// reqwest: `HTTP_PROXY` for http URLs, `HTTPS_PROXY` for https URLs, `NO_PROXY` bypassing both.
#[test]
fn scrape_transport_environment_proxies() {
    let vars = [
        ("http_proxy", "http://lower:3128"),
        ("HTTPS_PROXY", "http://upper:3129"),
        ("NO_PROXY", "internal"),
    ];
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    };
    let s = HttpClientSettings {
        proxy: Proxy::FromEnvironment {
            connect_header: vec![],
        },
        ..Default::default()
    };
    let m = proxy_matcher(&s, &get).expect("proxies");
    let via = |url: &str| {
        m.intercept(&url.parse().unwrap())
            .map(|i| i.uri().to_string())
    };
    assert_eq!(
        via("http://t:9100/metrics").as_deref(),
        Some("http://lower:3128/")
    );
    assert_eq!(
        via("https://t:9100/metrics").as_deref(),
        Some("http://upper:3129/")
    );
    assert_eq!(via("http://internal:9100/metrics"), None);
    assert!(proxy_matcher(&s, &|_| None).is_none());
    assert!(proxy_matcher(&HttpClientSettings::default(), &get).is_none());
}

/// A scrape connection reads in [`transport::READ_BUF`]-byte reads, so an idle connection keeps
/// that much buffer, not one the size of the last body: two 1 MiB bodies on one kept-alive
/// connection, and hyper never asked the connection for more than 16 KiB at once (its default
/// adaptive buffer grows to ~400 KiB on such bodies and keeps it while the connection idles).
#[tokio::test]
async fn scrape_connections_read_in_bounded_reads_and_stay_alive() {
    use std::sync::atomic::Ordering;
    let (addr, accepted, _) = keep_alive_target(vec![b'x'; 1 << 20], Close::Never).await;
    let c = scrape_client();
    let url = format!("http://{addr}/metrics");
    let mut session = transport::Session::default();
    for _ in 0..2 {
        let got = scrape_whole(&c, &mut session, &url).await;
        assert_eq!(got.len(), 1 << 20);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    assert_eq!(session.connections(), 1);
    let largest = transport::LARGEST_READ.load(Ordering::Relaxed);
    assert!(
        largest > 0 && largest <= transport::READ_BUF,
        "largest read {largest}"
    );
}

/// Reads one request's head off `sock` (the test servers' requests have no body); `false` once
/// the client closed the connection.
async fn read_request_head(sock: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if sock.read_exact(&mut byte).await.is_err() {
            return false;
        }
        head.push(byte[0]);
    }
    true
}

/// When [`keep_alive_target`] closes a connection.
#[derive(Clone)]
enum Close {
    Never,
    /// Right after its first response.
    AtOnce,
    /// After its first response, once told (the client has gone idle by then).
    When(Arc<tokio::sync::Notify>),
}

/// A scrape target on loopback answering every request on a connection with `body` (head and
/// body in one write); it closes connections as `close` says (keep-alive in the header all the
/// same, as a restarted target or a load balancer's idle cut does). Returns its address, the
/// count of connections it accepted and the count it closed.
async fn keep_alive_target(
    body: Vec<u8>,
    close: Close,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::sync::watch::Receiver<usize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let (closed_tx, closed) = tokio::sync::watch::channel(0usize);
    let closed_tx = Arc::new(closed_tx);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            let closed_tx = closed_tx.clone();
            let close = close.clone();
            tokio::spawn(async move {
                while read_request_head(&mut sock).await {
                    let mut response =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                            .into_bytes();
                    response.extend_from_slice(&body);
                    if sock.write_all(&response).await.is_err() {
                        return;
                    }
                    match &close {
                        Close::Never => continue,
                        Close::AtOnce => {}
                        Close::When(told) => told.notified().await,
                    }
                    drop(sock);
                    closed_tx.send_modify(|n| *n += 1);
                    return;
                }
            });
        }
    });
    (addr, accepted, closed)
}

/// GETs `url` over `session`, as a scrape does (no headers of its own).
async fn get_on(
    c: &HttpClient,
    session: &mut transport::Session,
    url: &str,
) -> transport::Response {
    let url = transport::RequestUrl::parse(url).unwrap();
    c.fetch(session, &url, &HeaderMap::new()).await.unwrap()
}

/// GETs `url` over `session` and reads its whole body, as a scrape does (status 200 asserted).
async fn scrape_whole(c: &HttpClient, session: &mut transport::Session, url: &str) -> Vec<u8> {
    let resp = get_on(c, session, url).await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let mut got = Vec::new();
    resp.read_into(session, &mut got, 0).await.unwrap();
    got
}

fn scrape_client() -> HttpClient {
    HttpClient::new(
        &HttpClientSettings::default(),
        &Options {
            scrape: true,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A target that closed the kept connection while it idled (right after the response, or
/// later, once this side had gone idle: a keep-alive timeout shorter than the interval): the
/// next scrape notices the close when it takes the connection and goes on a new connection,
/// with no failed scrape in between. (A close that races the request instead hands the request
/// back unsent, and it is sent on a new connection; no test makes that race happen.)
#[tokio::test]
async fn a_connection_the_target_closed_is_replaced_before_the_next_scrape() {
    for close_later in [false, true] {
        let told = Arc::new(tokio::sync::Notify::new());
        let close = if close_later {
            Close::When(told.clone())
        } else {
            Close::AtOnce
        };
        scrapes_across_closes(close, &told).await;
    }
}

async fn scrapes_across_closes(close: Close, told: &tokio::sync::Notify) {
    use std::sync::atomic::Ordering;
    let (addr, accepted, mut closed) = keep_alive_target(b"up 1\n".to_vec(), close).await;
    let c = scrape_client();
    let url = format!("http://{addr}/metrics");
    let mut session = transport::Session::default();
    for n in 1..=3 {
        let got = scrape_whole(&c, &mut session, &url).await;
        assert_eq!(got, b"up 1\n", "scrape {n}");
        assert_eq!(session.connections(), 1, "kept after scrape {n}");
        // The target closes the connection after the body, at once or now that this side went
        // idle (on loopback its FIN is in this side's socket once it has).
        told.notify_one();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            closed.wait_for(|c| *c >= n),
        )
        .await
        .expect("the target closes")
        .unwrap();
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per scrape"
    );
}

/// A response whose body was not read (a scrape that timed out mid-body, a body over the
/// limit) leaves its connection mid-response: it is closed, and the next scrape gets a new
/// connection and the whole body.
#[tokio::test]
async fn a_connection_left_mid_body_is_not_used_again() {
    use std::sync::atomic::Ordering;
    let body = vec![b'x'; 1 << 20];
    let (addr, accepted, _) = keep_alive_target(body.clone(), Close::Never).await;
    let c = scrape_client();
    let url = format!("http://{addr}/metrics");
    let mut session = transport::Session::default();
    let resp = get_on(&c, &mut session, &url).await;
    let mut got = Vec::new();
    let over = resp.read_into(&mut session, &mut got, 1000).await;
    assert!(matches!(over, Err(transport::BodyError::Limit)), "{over:?}");
    assert_eq!(session.connections(), 0, "the unread connection is closed");
    // A response dropped without reading its body, as a timed-out scrape leaves it.
    let resp = get_on(&c, &mut session, &url).await;
    drop(resp);
    assert_eq!(session.connections(), 1);
    session.finish(std::time::Duration::from_secs(15));
    assert_eq!(
        session.connections(),
        0,
        "closed after the scrape, not at the next one"
    );
    let got = scrape_whole(&c, &mut session, &url).await;
    assert_eq!(got, body);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(session.connections(), 1);
}

/// A response dropped on purpose (an error status, a redirect, a 401 answered again) whose small
/// body is already here is read to its end and its connection kept; a scrape loop that scrapes
/// less often than the idle timeout keeps no connection between scrapes.
#[tokio::test]
async fn a_discarded_small_response_keeps_its_connection() {
    use std::sync::atomic::Ordering;
    let (addr, accepted, _) = keep_alive_target(b"not found\n".to_vec(), Close::Never).await;
    let c = scrape_client();
    let url = format!("http://{addr}/metrics");
    let mut session = transport::Session::default();
    for _ in 0..3 {
        let resp = get_on(&c, &mut session, &url).await;
        resp.discard(&mut session).await;
        session.finish(std::time::Duration::from_secs(15));
        assert_eq!(session.connections(), 1);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for all three"
    );
    session.finish(transport::IDLE_TIMEOUT);
    assert_eq!(session.connections(), 0);
}

/// A body that arrives in pieces, on a runtime with two workers: the socket's readiness comes
/// from the I/O driver on a worker thread (the test's own thread never runs it), while the loop
/// polls or while it waits, and wakes the scrape's task through [`transport`]'s `Relay`: every
/// body is read whole, and a lost wake fails the test at its timeout instead of hanging it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_arrives_in_pieces_is_read_whole() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body: Vec<u8> = (0..(200 * 1024)).map(|i| (i % 251) as u8).collect();
    let served = body.clone();
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        while read_request_head(&mut sock).await {
            let h = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                served.len()
            );
            if sock.write_all(h.as_bytes()).await.is_err() {
                return;
            }
            for piece in served.chunks(5000) {
                if sock.write_all(piece).await.is_err() {
                    return;
                }
                // Each piece its own write, with a turn for the client in between: the
                // client's reads meet an empty socket between pieces (how often depends on
                // the threads; the assertions hold whichever way they fall).
                tokio::task::yield_now().await;
            }
        }
    });
    let c = scrape_client();
    let url = format!("http://{addr}/metrics");
    let mut session = transport::Session::default();
    for n in 0..5 {
        // A lost wake would hang the read: bounded, so it fails instead.
        let read = scrape_whole(&c, &mut session, &url);
        let got = tokio::time::timeout(std::time::Duration::from_secs(60), read)
            .await
            .unwrap_or_else(|_| panic!("scrape {n} did not finish"));
        assert!(got == body, "scrape {n}: {} bytes", got.len());
        session.finish(std::time::Duration::from_secs(15));
        assert_eq!(session.connections(), 1, "scrape {n}");
    }
}

/// The wakes of the task that polls a future, counted by [`counted`]: all of them, and those
/// that came while the task was being polled. A task woken during its own poll is queued again
/// when the poll ends, and a multi-thread runtime wakes another worker to take it.
#[derive(Default)]
struct Wakes {
    polling: std::sync::atomic::AtomicBool,
    during_poll: std::sync::atomic::AtomicUsize,
    total: std::sync::atomic::AtomicUsize,
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        self.total.fetch_add(1, Ordering::SeqCst);
        if self.polling.load(Ordering::SeqCst) {
            self.during_poll.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(task) = self.task.lock().unwrap().clone() {
            task.wake();
        }
    }
}

/// Runs `fut`, counting its task's wakes into `wakes`.
async fn counted<F: std::future::Future>(wakes: &Arc<Wakes>, fut: F) -> F::Output {
    use std::sync::atomic::Ordering;
    let waker = std::task::Waker::from(wakes.clone());
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        *wakes.task.lock().unwrap() = Some(cx.waker().clone());
        wakes.polling.store(true, Ordering::SeqCst);
        let r = fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        wakes.polling.store(false, Ordering::SeqCst);
        r
    })
    .await
}

/// Scrapes over a kept connection wake their task only to go on: never during its own poll
/// (the request going into the connection's queue woke it once per scrape, and the runtime
/// then woke the other worker for nothing), and not while no request waits (the connection
/// settling after a response, a close while it idles).
#[tokio::test]
async fn a_scrape_over_a_kept_connection_does_not_wake_itself() {
    use std::sync::atomic::Ordering;
    let (addr, accepted, _) = keep_alive_target(b"up 1\n".to_vec(), Close::Never).await;
    let c = scrape_client();
    let url = format!("http://{addr}/metrics");
    let mut session = transport::Session::default();
    let wakes = Arc::new(Wakes::default());
    for n in 0..5 {
        let scrape = scrape_whole(&c, &mut session, &url);
        assert_eq!(counted(&wakes, scrape).await, b"up 1\n", "scrape {n}");
        session.finish(std::time::Duration::from_secs(15));
        let after = wakes.total.load(Ordering::SeqCst);
        // Time for the connection's own events after the response (none wake the task).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            wakes.total.load(Ordering::SeqCst),
            after,
            "woken between scrapes (after scrape {n})"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one kept connection");
    assert_eq!(
        wakes.during_poll.load(Ordering::SeqCst),
        0,
        "wakes during the scrape's own poll ({} wakes in all)",
        wakes.total.load(Ordering::SeqCst)
    );
}
