//! Cases re-derived from Prometheus 2.42's `TestPopulateLabels`, its conflicting-label scrape
//! tests, and the documented blackbox-exporter relabelling pattern.

use super::*;
use crate::config::scrape::{ScrapeConfigRaw, ScrapeDefaults};

fn l(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

/// A scrape config from YAML with the given interval and timeout.
fn cfg(yaml: &str, interval: &str, timeout: &str) -> ScrapeConfig {
    let raw: ScrapeConfigRaw = serde_yaml::from_str(yaml).expect("test yaml");
    raw.resolve(
        PromDuration::parse(interval).expect("interval"),
        PromDuration::parse(timeout).expect("timeout"),
        &ScrapeDefaults::default(),
    )
    .expect("valid scrape config")
}

fn https_job() -> ScrapeConfig {
    cfg(
        "job_name: job\nscheme: https\nmetrics_path: /metrics",
        "1s",
        "1s",
    )
}

fn populate(target: &[(&str, &str)], c: &ScrapeConfig) -> Result<Option<Target>, TargetError> {
    populate_labels(&Labels::empty(), &l(target), c, false)
}

fn err(target: &[(&str, &str)], c: &ScrapeConfig) -> String {
    match populate(target, c) {
        Err(e) => e.to_string(),
        Ok(t) => panic!("expected an error, got {t:?}"),
    }
}

fn active(target: &[(&str, &str)], c: &ScrapeConfig, no_default_port: bool) -> Target {
    match populate_labels(&Labels::empty(), &l(target), c, no_default_port) {
        Ok(Some(t)) => t,
        other => panic!("expected a target, got {other:?}"),
    }
}

#[test]
fn regular_population() {
    let t = active(
        &[("__address__", "1.2.3.4:1000"), ("custom", "value")],
        &https_job(),
        false,
    );
    assert_eq!(
        t.full_labels,
        l(&[
            ("__address__", "1.2.3.4:1000"),
            ("instance", "1.2.3.4:1000"),
            ("__scheme__", "https"),
            ("__metrics_path__", "/metrics"),
            ("job", "job"),
            ("__scrape_interval__", "1s"),
            ("__scrape_timeout__", "1s"),
            ("custom", "value"),
        ])
    );
    assert_eq!(
        t.discovered_labels,
        l(&[
            ("__address__", "1.2.3.4:1000"),
            ("__scheme__", "https"),
            ("__metrics_path__", "/metrics"),
            ("job", "job"),
            ("__scrape_interval__", "1s"),
            ("__scrape_timeout__", "1s"),
            ("custom", "value"),
        ])
    );
    assert_eq!(
        t.labels,
        l(&[
            ("instance", "1.2.3.4:1000"),
            ("job", "job"),
            ("custom", "value")
        ])
    );
    assert_eq!(t.url, "https://1.2.3.4:1000/metrics");
    assert_eq!(t.interval, PromDuration::from_secs(1));
    assert_eq!(t.timeout, PromDuration::from_secs(1));
}

#[test]
fn target_labels_override_config_defaults_and_port_follows_scheme() {
    let t = active(
        &[
            ("__address__", "1.2.3.4"),
            ("__scheme__", "http"),
            ("__metrics_path__", "/custom"),
            ("job", "custom-job"),
            ("__scrape_interval__", "2s"),
            ("__scrape_timeout__", "2s"),
        ],
        &https_job(),
        false,
    );
    assert_eq!(t.full_labels.get("__address__"), Some("1.2.3.4:80"));
    assert_eq!(
        t.labels,
        l(&[("instance", "1.2.3.4:80"), ("job", "custom-job")])
    );
    assert_eq!(t.discovered_labels.get("__address__"), Some("1.2.3.4"));
    assert_eq!(t.url, "http://1.2.3.4:80/custom");
    assert_eq!(t.interval, PromDuration::from_secs(2));
}

#[test]
fn ipv6_gets_the_https_port_and_a_given_instance_is_kept() {
    let t = active(
        &[("__address__", "[::1]"), ("instance", "custom-instance")],
        &https_job(),
        false,
    );
    assert_eq!(t.full_labels.get("__address__"), Some("[::1]:443"));
    assert_eq!(t.labels.get("instance"), Some("custom-instance"));
    assert_eq!(t.url, "https://[::1]:443/metrics");
}

#[test]
fn unsplittable_addresses_get_no_port() {
    // "::1" stays invalid with ":1234" appended, so no port is added.
    let t = active(&[("__address__", "::1")], &https_job(), false);
    assert_eq!(t.full_labels.get("__address__"), Some("::1"));
    assert_eq!(split_host_port("host:80"), Some(("host", "80")));
    assert_eq!(split_host_port("[::1]:80"), Some(("::1", "80")));
    assert_eq!(split_host_port("host"), None);
    assert_eq!(split_host_port("[::1]"), None);
    assert_eq!(split_host_port("[::1]x:80"), None);
    assert_eq!(split_host_port("a:b:c"), None);
    assert_eq!(split_host_port("a]:80"), None);
    assert_eq!(split_host_port("[a[b]:80"), None);
    assert_eq!(split_host_port(":80"), Some(("", "80")));
}

#[test]
fn address_is_required() {
    assert_eq!(err(&[("custom", "value")], &https_job()), "no address");
}

#[test]
fn address_may_come_from_relabelling() {
    let c = cfg(
        r#"
job_name: job
scheme: https
relabel_configs:
  - {source_labels: [custom], regex: '(.*)', replacement: '${1}', target_label: __address__}
"#,
        "1s",
        "1s",
    );
    let t = active(&[("custom", "host:1234")], &c, false);
    assert_eq!(
        t.labels,
        l(&[
            ("custom", "host:1234"),
            ("instance", "host:1234"),
            ("job", "job")
        ])
    );
    assert_eq!(t.discovered_labels.get("__address__"), None);
}

#[test]
fn interval_and_timeout_labels_are_checked() {
    let c = https_job();
    assert_eq!(
        err(
            &[
                ("__address__", "1.2.3.4:1000"),
                ("__scrape_interval__", "2notseconds")
            ],
            &c
        ),
        r#"error parsing scrape interval: not a valid duration string: "2notseconds""#
    );
    assert_eq!(
        err(
            &[
                ("__address__", "1.2.3.4:1000"),
                ("__scrape_timeout__", "2notseconds")
            ],
            &c
        ),
        r#"error parsing scrape timeout: not a valid duration string: "2notseconds""#
    );
    assert_eq!(
        err(
            &[
                ("__address__", "1.2.3.4:1000"),
                ("__scrape_interval__", "0s")
            ],
            &c
        ),
        "scrape interval cannot be 0"
    );
    assert_eq!(
        err(
            &[
                ("__address__", "1.2.3.4:1000"),
                ("__scrape_timeout__", "0s")
            ],
            &c
        ),
        "scrape timeout cannot be 0"
    );
    assert_eq!(
        err(
            &[
                ("__address__", "1.2.3.4:1000"),
                ("__scrape_interval__", "1s"),
                ("__scrape_timeout__", "2s")
            ],
            &c
        ),
        r#"scrape timeout cannot be greater than scrape interval ("2s" > "1s")"#
    );
    // Deleting the interval label in relabelling leaves an empty duration.
    let c = cfg(
        "job_name: j\nrelabel_configs: [{regex: __scrape_interval__, action: labeldrop}]",
        "1m",
        "10s",
    );
    assert_eq!(
        err(&[("__address__", "a:1")], &c),
        "error parsing scrape interval: empty duration string"
    );
}

#[test]
fn no_default_port() {
    let c = https_job();
    let t = active(&[("__address__", "1.2.3.4")], &c, true);
    assert_eq!(t.full_labels.get("__address__"), Some("1.2.3.4"));
    assert_eq!(t.labels.get("instance"), Some("1.2.3.4"));
    // A default port matching the scheme is stripped from the address, not from instance.
    let http = cfg("job_name: job\nscheme: http", "1s", "1s");
    let t = active(&[("__address__", "1.2.3.4:80")], &http, true);
    assert_eq!(t.full_labels.get("__address__"), Some("1.2.3.4"));
    assert_eq!(t.labels.get("instance"), Some("1.2.3.4:80"));
    let t = active(&[("__address__", "1.2.3.4:443")], &c, true);
    assert_eq!(t.full_labels.get("__address__"), Some("1.2.3.4"));
    assert_eq!(t.labels.get("instance"), Some("1.2.3.4:443"));
    // Not when the port belongs to the other scheme.
    let t = active(&[("__address__", "1.2.3.4:80")], &c, true);
    assert_eq!(t.full_labels.get("__address__"), Some("1.2.3.4:80"));
}

#[test]
fn unknown_scheme_errors_with_the_configs_scheme() {
    let c = cfg(
        "job_name: j\nscheme: https\nrelabel_configs: [{target_label: __scheme__, replacement: ftp}]",
        "1m",
        "10s",
    );
    assert_eq!(
        err(&[("__address__", "host")], &c),
        r#"invalid scheme: "https""#
    );
    // With a port present the scheme is not checked here.
    assert!(populate(&[("__address__", "host:21")], &c).is_ok());
}

#[test]
fn urls_are_not_hostnames() {
    assert_eq!(
        err(&[("__address__", "http://example.com")], &https_job()),
        r#""http://example.com" is not a valid hostname"#
    );
}

#[test]
fn meta_labels_are_removed_and_other_reserved_labels_kept_internally() {
    let c = cfg(
        r#"
job_name: node
relabel_configs:
  - {source_labels: [__meta_dc], target_label: dc}
  - {source_labels: [__meta_dc], target_label: __tmp_dc}
"#,
        "1m",
        "10s",
    );
    let t = active(
        &[("__address__", "n1:9100"), ("__meta_dc", "eu")],
        &c,
        false,
    );
    assert_eq!(t.discovered_labels.get("__meta_dc"), Some("eu"));
    assert_eq!(t.full_labels.get("__meta_dc"), None);
    assert_eq!(t.full_labels.get("__tmp_dc"), Some("eu"));
    assert_eq!(
        t.labels,
        l(&[("dc", "eu"), ("instance", "n1:9100"), ("job", "node")])
    );
    assert_eq!(t.url, "http://n1:9100/metrics");
    assert_eq!(t.interval, PromDuration::from_secs(60));
    assert_eq!(t.timeout, PromDuration::from_secs(10));
}

#[test]
fn group_labels_merge_under_target_labels() {
    let c = cfg("job_name: j", "1m", "10s");
    let group = l(&[("env", "prod"), ("__address__", "group:1")]);
    let t = populate_labels(
        &group,
        &l(&[("__address__", "t:1"), ("team", "a")]),
        &c,
        false,
    )
    .expect("ok")
    .expect("kept");
    assert_eq!(
        t.labels,
        l(&[
            ("env", "prod"),
            ("instance", "t:1"),
            ("job", "j"),
            ("team", "a")
        ])
    );
}

#[test]
fn dropped_targets_are_none() {
    let c = cfg(
        "job_name: j\nrelabel_configs: [{source_labels: [__address__], regex: 'skip.*', action: drop}]",
        "1m",
        "10s",
    );
    let target = l(&[("__address__", "skip-me:1")]);
    assert_eq!(
        populate_labels(&Labels::empty(), &target, &c, false),
        Ok(None)
    );
}

#[test]
fn params_become_labels_and_query() {
    let c = cfg(
        r#"
job_name: fed
metrics_path: /federate
params:
  'match[]': ['{job="a"}', '{job="b"}']
  empty: []
  q: ['a b&c']
"#,
        "1m",
        "10s",
    );
    let t = active(&[("__address__", "prom:9090")], &c, false);
    assert_eq!(t.discovered_labels.get("__param_q"), Some("a b&c"));
    // `__param_match[]` is not a valid label name, but reserved labels never reach series.
    assert_eq!(
        t.discovered_labels.get("__param_match[]"),
        Some("{job=\"a\"}")
    );
    assert_eq!(t.discovered_labels.get("__param_empty"), None);
    assert_eq!(
        t.url,
        "http://prom:9090/federate?match%5B%5D=%7Bjob%3D%22a%22%7D&match%5B%5D=%7Bjob%3D%22b%22%7D&q=a+b%26c"
    );
}

#[test]
fn param_labels_override_the_first_config_value() {
    // 2.42 sets __param_<k> from the config unconditionally; relabelling may change it.
    let c = cfg(
        r#"
job_name: j
params: {module: [http_2xx, extra]}
relabel_configs:
  - {target_label: __param_module, replacement: tcp}
  - {target_label: __param_new, replacement: 'x/y'}
"#,
        "1m",
        "10s",
    );
    let t = active(
        &[("__address__", "h:1"), ("__param_module", "from-target")],
        &c,
        false,
    );
    assert_eq!(t.discovered_labels.get("__param_module"), Some("http_2xx"));
    assert_eq!(
        t.url,
        "http://h:1/metrics?module=tcp&module=extra&new=x%2Fy"
    );
}

#[test]
fn blackbox_style_relabelling() {
    let c = cfg(
        r#"
job_name: blackbox
metrics_path: /probe
params: {module: [http_2xx]}
static_configs:
  - targets: ['https://example.com', 'http://intranet.local:8080/health']
relabel_configs:
  - source_labels: [__address__]
    target_label: __param_target
  - source_labels: [__param_target]
    target_label: instance
  - target_label: __address__
    replacement: 127.0.0.1:9115
"#,
        "1m",
        "10s",
    );
    let group = &c.static_configs[0];
    let mut urls = Vec::new();
    for addr in &group.targets {
        let target = Labels::from_pairs([("__address__", addr.as_str())]);
        let grp = Labels::from_pairs(group.labels.iter());
        let t = populate_labels(&grp, &target, &c, false)
            .expect("valid")
            .expect("kept");
        assert_eq!(t.labels.get("instance"), Some(addr.as_str()));
        assert_eq!(t.labels.get("job"), Some("blackbox"));
        assert_eq!(t.full_labels.get("__address__"), Some("127.0.0.1:9115"));
        assert_eq!(t.discovered_labels.get("__address__"), Some(addr.as_str()));
        urls.push(t.url);
    }
    assert_eq!(
        urls,
        vec![
            "http://127.0.0.1:9115/probe?module=http_2xx&target=https%3A%2F%2Fexample.com",
            "http://127.0.0.1:9115/probe?module=http_2xx&target=http%3A%2F%2Fintranet.local%3A8080%2Fhealth",
        ]
    );
}

#[test]
fn invalid_label_names_reject_the_target() {
    let c = cfg(
        "job_name: j\nrelabel_configs: [{regex: '__meta_(.*)', replacement: '${1}', action: labelmap}]",
        "1m",
        "10s",
    );
    assert_eq!(
        err(&[("__address__", "a:1"), ("__meta_0zone", "x")], &c),
        r#""0zone" is not a valid label name"#
    );
}

#[test]
fn go_url_formatting() {
    assert_eq!(
        go_url_string("http", "h:1", "/a b?c", ""),
        "http://h:1/a%20b%3Fc"
    );
    assert_eq!(go_url_string("http", "h:1", "rel", ""), "http://h:1/rel");
    assert_eq!(go_url_string("http", "h:1", "", "x=1"), "http://h:1?x=1");
    assert_eq!(go_url_string("", "", "a:b/c", ""), "./a:b/c");
    assert_eq!(
        go_url_string("https", "[::1]:443", "/m", ""),
        "https://[::1]:443/m"
    );
    let mut s = String::new();
    go_escape(&mut s, "a b~-_.!*'()é", Escape::QueryComponent);
    assert_eq!(s, "a+b~-_.%21%2A%27%28%29%C3%A9");
}

// --- honor_labels and exported_ renaming ---

fn merged(scraped: &[(&str, &str)], target: &[(&str, &str)], honor: bool) -> Labels {
    merge_target_labels(scraped, &l(target), honor)
}

#[test]
fn honor_labels_true_keeps_scraped_values() {
    let out = merged(
        &[("__name__", "up"), ("job", "scraped"), ("x", "1")],
        &[("job", "target"), ("instance", "i:1")],
        true,
    );
    assert_eq!(
        out,
        l(&[
            ("__name__", "up"),
            ("instance", "i:1"),
            ("job", "scraped"),
            ("x", "1")
        ])
    );
    // An exposed empty value still counts as present: no job at all.
    let out = merged(
        &[("__name__", "up"), ("job", "")],
        &[("job", "target")],
        true,
    );
    assert_eq!(out, l(&[("__name__", "up")]));
}

#[test]
fn honor_labels_false_renames_clashes() {
    let out = merged(
        &[("__name__", "m"), ("job", "scraped"), ("e", "")],
        &[("job", "target")],
        false,
    );
    assert_eq!(
        out,
        l(&[
            ("__name__", "m"),
            ("exported_job", "scraped"),
            ("job", "target")
        ])
    );
    // An empty exposed value is not a clash and is removed.
    let out = merged(
        &[("__name__", "m"), ("job", "")],
        &[("job", "target")],
        false,
    );
    assert_eq!(out, l(&[("__name__", "m"), ("job", "target")]));
}

#[test]
fn exported_prefix_repeats_until_free() {
    let m = ("__name__", "metric");
    // Target label already named exported_foo.
    assert_eq!(
        merged(
            &[m, ("foo", "1")],
            &[("foo", "2"), ("exported_foo", "3")],
            false
        ),
        l(&[
            m,
            ("exported_exported_foo", "1"),
            ("exported_foo", "3"),
            ("foo", "2")
        ])
    );
    // Exposed label already named exported_foo.
    assert_eq!(
        merged(
            &[m, ("foo", "1"), ("exported_foo", "2")],
            &[("foo", "3")],
            false
        ),
        l(&[
            m,
            ("exported_exported_foo", "1"),
            ("exported_foo", "2"),
            ("foo", "3")
        ])
    );
    // Both named exported_foo.
    assert_eq!(
        merged(&[m, ("exported_foo", "1")], &[("exported_foo", "2")], false),
        l(&[m, ("exported_exported_foo", "1"), ("exported_foo", "2")])
    );
    // Two clashes: the shorter name is renamed first.
    assert_eq!(
        merged(
            &[m, ("foo", "1"), ("exported_foo", "2")],
            &[("foo", "3"), ("exported_foo", "4")],
            false
        ),
        l(&[
            m,
            ("exported_exported_foo", "1"),
            ("exported_exported_exported_foo", "2"),
            ("exported_foo", "4"),
            ("foo", "3"),
        ])
    );
    // Prometheus's extreme example.
    assert_eq!(
        merged(
            &[
                m,
                ("foo", "3"),
                ("exported_foo", "4"),
                ("exported_exported_exported_foo", "5")
            ],
            &[
                ("foo", "0"),
                ("exported_exported_foo", "1"),
                ("exported_exported_exported_foo", "2")
            ],
            false
        ),
        l(&[
            m,
            ("exported_exported_exported_exported_exported_foo", "5"),
            ("exported_exported_exported_exported_foo", "3"),
            ("exported_exported_exported_foo", "2"),
            ("exported_exported_foo", "1"),
            ("exported_foo", "4"),
            ("foo", "0"),
        ])
    );
}

#[test]
fn merge_then_metric_relabel_in_one_builder() {
    let rules = cfg(
        "job_name: j\nmetric_relabel_configs: [{source_labels: [__name__], regex: 'go_.*', action: drop}]",
        "1m",
        "10s",
    )
    .metric_relabel_configs;
    let target = l(&[("instance", "a:1"), ("job", "j")]);
    let mut lb = LabelsBuilder::new();
    merge_target_labels_into(&mut lb, &[("__name__", "go_goroutines")], &target, false);
    assert!(!relabel::process(&mut lb, &rules));
    merge_target_labels_into(&mut lb, &[("__name__", "up")], &target, false);
    assert!(relabel::process(&mut lb, &rules));
    assert_eq!(
        lb.labels(),
        l(&[("__name__", "up"), ("instance", "a:1"), ("job", "j")])
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn merge_keeps_target_values_and_every_scraped_value(
            scraped in prop::collection::btree_map("(exported_){0,2}[ab]", "[xy]{0,2}", 0..5),
            target in prop::collection::btree_map("(exported_){0,2}[ab]", "[xy]{1,2}", 0..5),
            honor in any::<bool>(),
        ) {
            let s: Vec<(&str, &str)> = scraped.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let t = Labels::from_pairs(target.iter());
            let out = merge_target_labels(&s, &t, honor);
            prop_assert!(out.iter().all(|(_, v)| !v.is_empty()));
            if honor {
                for (k, v) in &scraped {
                    prop_assert_eq!(out.get(k), (!v.is_empty()).then_some(v.as_str()));
                }
            } else {
                for (k, v) in &target {
                    prop_assert_eq!(out.get(k), Some(v.as_str()));
                }
                // No exposed non-empty value is lost: it is kept, or renamed on a clash.
                let kept = scraped.values().filter(|v| !v.is_empty()).count();
                prop_assert_eq!(out.len(), kept + target.len());
            }
        }

        #[test]
        fn populate_never_panics(
            addr in "[a-z0-9:/\\[\\]%. ]{0,12}",
            scheme in prop::sample::select(vec!["http", "https", "ftp", ""]),
            interval in prop::sample::select(vec!["1m", "0s", "x", "", "10s"]),
            no_default_port in any::<bool>(),
        ) {
            let c = cfg("job_name: j", "1m", "10s");
            let target = Labels::from_pairs([
                ("__address__", addr.as_str()),
                ("__scheme__", scheme),
                ("__scrape_interval__", interval),
            ]);
            if let Ok(Some(t)) = populate_labels(&Labels::empty(), &target, &c, no_default_port) {
                prop_assert!(t.labels.iter().all(|(n, _)| !n.starts_with("__")));
                prop_assert!(t.labels.get("instance").is_some());
                prop_assert!(t.timeout <= t.interval);
            }
        }
    }
}

/// Prometheus's `Target.hash()`: agents of every version must agree on it (a moved config
/// keeps its phase), so the formula is restated here and one value pinned.
#[test]
fn scrape_hash_is_prometheus_target_hash() {
    let t = active(&[("__address__", "node-1:9100")], &https_job(), false);
    let mut bytes = Vec::new();
    for (n, v) in &t.full_labels {
        bytes.extend_from_slice(n.as_bytes());
        bytes.push(0xff);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0xff);
    }
    let labels_hash = twox_hash::XxHash64::oneshot(0, &bytes);
    let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{labels_hash:016}").bytes().chain(t.url.bytes()) {
        fnv = (fnv ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    assert_eq!(t.scrape_hash(), fnv);
    // The URL and every label count; the scrape phase is pinned to these.
    let other = active(&[("__address__", "node-2:9100")], &https_job(), false);
    assert_ne!(t.scrape_hash(), other.scrape_hash());
    assert_eq!(t.url, "https://node-1:9100/metrics");
    assert_eq!(t.scrape_hash(), PINNED_SCRAPE_HASH);
}

/// `scrape_hash_is_prometheus_target_hash`'s target, hashed once (and checked against an
/// independent xxHash64 + FNV-1a implementation): never change it.
const PINNED_SCRAPE_HASH: u64 = 10_701_560_908_394_998_504;
