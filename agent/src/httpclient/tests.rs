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
        &Options::default(),
    )
    .unwrap();
    let shown = format!("{c:?}");
    for secret in ["sec-pw", "sec-hdr"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}
