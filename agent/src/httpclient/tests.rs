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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let body = vec![b'x'; 1 << 20];
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    head.clear();
                    while !head.ends_with(b"\r\n\r\n") {
                        if sock.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    if sock.write_all(h.as_bytes()).await.is_err()
                        || sock.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let c = HttpClient::new(
        &HttpClientSettings::default(),
        &Options {
            scrape: true,
            ..Default::default()
        },
    )
    .unwrap();
    let url = format!("http://{addr}/metrics");
    for _ in 0..2 {
        let resp = c.fetch(&url, HeaderMap::new()).await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        let mut got = Vec::new();
        resp.read_into(&mut got, 0).await.unwrap();
        assert_eq!(got.len(), 1 << 20);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    let largest = transport::LARGEST_READ.load(Ordering::Relaxed);
    assert!(
        largest > 0 && largest <= transport::READ_BUF,
        "largest read {largest}"
    );
}
