//! The agent.yaml fields that agentctl accepts (so an old agent's file loads unchanged) but
//! does not honour. None of them is silent: each one set in a file becomes a warning, logged
//! when the agent starts and printed by `agentctl config check`, naming the field and what to
//! use instead.
//!
//! Every field of agent.yaml's own sections is classified below, and a test fails when a
//! field exists in the parser and not here, so a new field cannot be accepted and forgotten.
//! Instance configs (`metrics.configs`, `metrics.global.remote_write`) are checked where they
//! are validated. The whole `integrations`, `logs`, `traces` and `agent_management` blocks are
//! reported by [`super::agent::AgentConfig::ignored_blocks`].
//!
//! How it works: the raw config is serialized back to a YAML value (absent fields are skipped
//! by `skip_serializing_if`), and the keys present in each section are looked up here.

use serde_yaml::{Mapping, Value};

use super::agent::AgentConfigRaw;

/// A field set in the file that has no effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredField {
    /// The field's path from the top of the file, e.g. `server.http_listen_port`.
    pub field: String,
    /// Why it has no effect and what to use instead.
    pub advice: &'static str,
}

impl std::fmt::Display for IgnoredField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is ignored: {}", self.field, self.advice)
    }
}

/// What agentctl does with one field.
#[derive(Clone, Copy)]
enum Use {
    /// The field works.
    Honoured,
    /// A section walked on its own (see [`SECTIONS`]).
    Section,
    /// The field has no effect whatever its value.
    Ignored(&'static str),
    /// The field has no effect for some values (given the field's value and its section).
    When(fn(&Value, &Mapping) -> Option<&'static str>),
}

const GRPC: &str = "agentctl serves no gRPC (agents coordinate through the ring in the KV store and talk HTTP); remove it";
const LISTEN: &str =
    "the listen address comes from the command line: use --server.http.address HOST:PORT";
const HTTP_TIMEOUTS: &str = "the HTTP server's timeouts are not configurable; remove it";

const SERVER: Fields = &[
    ("log_level", Use::Ignored("use --log.level")),
    ("log_format", Use::Ignored("use --log.format")),
    ("http_listen_address", Use::Ignored(LISTEN)),
    ("http_listen_port", Use::Ignored(LISTEN)),
    ("grpc_listen_address", Use::Ignored(GRPC)),
    ("grpc_listen_port", Use::Ignored(GRPC)),
    // A block with a certificate makes the server serve HTTPS; an empty one (an old agent's
    // config dump has one) is only a warning.
    ("http_tls_config", Use::When(tls_without_certificate)),
    ("grpc_tls_config", Use::Ignored(GRPC)),
    (
        "graceful_shutdown_timeout",
        Use::Ignored("on SIGTERM each instance flushes remote_write for up to its remote_flush_deadline; set that instead"),
    ),
    ("http_server_read_timeout", Use::Ignored(HTTP_TIMEOUTS)),
    ("http_server_write_timeout", Use::Ignored(HTTP_TIMEOUTS)),
    ("http_server_idle_timeout", Use::Ignored(HTTP_TIMEOUTS)),
    (
        "register_instrumentation",
        Use::Ignored("/metrics is always served; remove it"),
    ),
];

const SCRAPE_CLIENT: &str =
    "the scrape clients' connection settings are not configurable yet; remove it";

const METRICS: Fields = &[
    ("global", Use::Section),
    ("wal_directory", Use::Honoured),
    ("wal_cleanup_age", Use::Honoured),
    ("wal_cleanup_period", Use::Honoured),
    ("scraping_service", Use::Section),
    (
        "scraping_service_client",
        Use::Ignored(
            "agents coordinate through the ring in the KV store, not over gRPC; remove it",
        ),
    ),
    ("configs", Use::Honoured),
    ("instance_restart_backoff", Use::Honoured),
    ("instance_mode", Use::Honoured),
    ("http_disable_keepalives", Use::Ignored(SCRAPE_CLIENT)),
    ("http_idle_conn_timeout", Use::Ignored(SCRAPE_CLIENT)),
    (
        "disabled",
        Use::When(|v, _| {
            (v.as_bool() == Some(true))
                .then_some("agentctl runs the metrics subsystem only, so it cannot be disabled; do not run the agent instead")
        }),
    ),
];

const GLOBAL: Fields = &[
    ("scrape_interval", Use::Honoured),
    ("scrape_timeout", Use::Honoured),
    (
        "evaluation_interval",
        Use::Ignored("agentctl evaluates no rules (as the old agent); remove it"),
    ),
    ("scrape_protocols", Use::Honoured),
    ("external_labels", Use::Honoured),
    (
        "query_log_file",
        Use::Ignored("agentctl answers no PromQL queries; remove it"),
    ),
    ("body_size_limit", Use::Honoured),
    ("sample_limit", Use::Honoured),
    ("target_limit", Use::Honoured),
    ("label_limit", Use::Honoured),
    ("label_name_length_limit", Use::Honoured),
    ("label_value_length_limit", Use::Honoured),
    (
        "keep_dropped_targets",
        Use::Ignored(
            "the targets API lists active targets only, as the old agent's did; remove it",
        ),
    ),
    ("remote_write", Use::Honoured),
];

/// Every key of `scraping_service` but `enabled`, while the service is off.
const SCRAPING_SERVICE_OFF: &str = "the scraping service is off, so the agent runs only metrics.configs: set scraping_service.enabled: true to use it, or remove it";

const NO_PEER_CALLS: &str = "resharding is local to each agent, which watches the ring and the config store; nothing to time out, remove it";

const SCRAPING_SERVICE: Fields = &[
    ("enabled", Use::Honoured),
    ("reshard_interval", Use::Honoured),
    ("reshard_timeout", Use::Ignored(NO_PEER_CALLS)),
    ("cluster_reshard_event_timeout", Use::Ignored(NO_PEER_CALLS)),
    ("kvstore", Use::Section),
    ("lifecycler", Use::Section),
    ("dangerous_allow_reading_files", Use::Honoured),
    ("sharding", Use::Honoured),
];

/// A store's block is read only when `store` selects it, as in the old agent. `consul` and
/// `multi` are never read: selecting them is refused while the scraping service is on.
const KVSTORE: Fields = &[
    ("store", Use::Honoured),
    ("prefix", Use::Honoured),
    (
        "consul",
        Use::Ignored("agentctl cannot use a Consul store (store: consul is refused); use etcd or embedded, and remove it"),
    ),
    ("etcd", Use::When(|_, kv| unselected(kv, "etcd"))),
    (
        "multi",
        Use::Ignored("agentctl cannot use a multi store (store: multi is refused); use etcd or embedded, and remove it"),
    ),
    ("embedded", Use::When(|_, kv| unselected(kv, "embedded"))),
];

/// The store a `kvstore` block selects: `embedded` when it names none.
fn selected(kvstore: &Mapping) -> &str {
    kvstore
        .get("store")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("embedded")
}

fn unselected(kvstore: &Mapping, store: &str) -> Option<&'static str> {
    (selected(kvstore) != store).then_some(match store {
        "etcd" => "only read with store: etcd; remove it",
        _ => "only read with store: embedded; remove it",
    })
}

fn without_tls(_: &Value, etcd: &Mapping) -> Option<&'static str> {
    let enabled = etcd.get("tls_enabled").and_then(Value::as_bool) == Some(true);
    (!enabled).then_some("etcd TLS settings only apply with tls_enabled: true")
}

const ETCD: Fields = &[
    ("endpoints", Use::Honoured),
    ("dial_timeout", Use::Honoured),
    ("max_retries", Use::Honoured),
    ("tls_enabled", Use::Honoured),
    ("tls_cert_path", Use::When(without_tls)),
    ("tls_key_path", Use::When(without_tls)),
    ("tls_ca_path", Use::When(without_tls)),
    ("tls_server_name", Use::When(without_tls)),
    ("tls_insecure_skip_verify", Use::When(without_tls)),
    ("tls_cipher_suites", Use::When(without_tls)),
    ("tls_min_version", Use::When(without_tls)),
    ("username", Use::Honoured),
    ("password", Use::Honoured),
];

const READINESS: &str = "an agent is ready once it has joined the ring and placed its configs (the old agent did not use this either); remove it";
const INTERFACES: &str = "the advertised address is the one the kernel routes private traffic from; set lifecycler.address to choose it";

const LIFECYCLER: Fields = &[
    ("ring", Use::Section),
    ("num_tokens", Use::Honoured),
    ("heartbeat_period", Use::Honoured),
    (
        "heartbeat_timeout",
        Use::Ignored("the ring's timeout is the one used: set lifecycler.ring.heartbeat_timeout"),
    ),
    ("observe_period", Use::Honoured),
    ("join_after", Use::Honoured),
    ("min_ready_duration", Use::Ignored(READINESS)),
    ("interface_names", Use::Ignored(INTERFACES)),
    ("enable_inet6", Use::Ignored(INTERFACES)),
    ("final_sleep", Use::Honoured),
    ("tokens_file_path", Use::Honoured),
    ("availability_zone", Use::Honoured),
    ("unregister_on_shutdown", Use::Honoured),
    ("readiness_check_ring_health", Use::Ignored(READINESS)),
    ("address", Use::Honoured),
    ("port", Use::Honoured),
    ("id", Use::Honoured),
    ("auto_forget_unhealthy_periods", Use::Honoured),
];

const ONE_REPLICA: &str =
    "each config runs on exactly one agent (replication factor 1, as in the old agent), so zones have no effect; remove it";

const RING: Fields = &[
    ("kvstore", Use::Section),
    ("heartbeat_timeout", Use::Honoured),
    (
        "replication_factor",
        Use::When(|v, _| {
            (v.as_u64() != Some(1)).then_some(
                "each config runs on exactly one agent: the factor is 1, as in the old agent; remove it",
            )
        }),
    ),
    (
        "zone_awareness_enabled",
        Use::When(|v, _| (v.as_bool() == Some(true)).then_some(ONE_REPLICA)),
    ),
    ("excluded_zones", Use::Ignored(ONE_REPLICA)),
];

/// Each section of agent.yaml walked here: its path and its fields.
/// The fields of one section and what agentctl does with each.
type Fields = &'static [(&'static str, Use)];

const SECTIONS: &[(&[&str], Fields)] = &[
    (&["server"], SERVER),
    (&["metrics"], METRICS),
    (&["metrics", "global"], GLOBAL),
    (&["metrics", "scraping_service"], SCRAPING_SERVICE),
    (&["metrics", "scraping_service", "kvstore"], KVSTORE),
    (&["metrics", "scraping_service", "kvstore", "etcd"], ETCD),
    (&["metrics", "scraping_service", "lifecycler"], LIFECYCLER),
    (&["metrics", "scraping_service", "lifecycler", "ring"], RING),
    (
        &[
            "metrics",
            "scraping_service",
            "lifecycler",
            "ring",
            "kvstore",
        ],
        KVSTORE,
    ),
    (
        &[
            "metrics",
            "scraping_service",
            "lifecycler",
            "ring",
            "kvstore",
            "etcd",
        ],
        ETCD,
    ),
];

/// The fields of `raw` that are set and have no effect, in file order within each section.
pub fn ignored_fields(raw: &AgentConfigRaw) -> Vec<IgnoredField> {
    let Ok(root) = serde_yaml::to_value(raw) else {
        return Vec::new();
    };
    // A file from before v0.19 calls the metrics block `prometheus`.
    let metrics_key = if raw.prometheus.is_some() {
        "prometheus"
    } else {
        "metrics"
    };
    let mut out = Vec::new();
    // With the scraping service off, its keys have no effect whatever their value: one warning
    // a key written (a bool at its default is not), nothing from inside its blocks.
    let service_off = lookup(&root, &[metrics_key, "scraping_service"])
        .filter(|ss| ss.get("enabled").and_then(Value::as_bool) != Some(true));
    for (path, fields) in SECTIONS {
        let path: Vec<&str> = path
            .iter()
            .map(|k| if *k == "metrics" { metrics_key } else { k })
            .collect();
        let Some(section) = lookup(&root, &path) else {
            continue;
        };
        // An etcd block its kvstore does not select is reported whole, not field by field.
        if path.last() == Some(&"etcd")
            && lookup(&root, &path[..path.len() - 1]).is_some_and(|kv| selected(kv) != "etcd")
        {
            continue;
        }
        if service_off.is_some() && path.get(1) == Some(&"scraping_service") {
            if path.len() == 2 {
                for (key, value) in section {
                    let Some(key) = key.as_str().filter(|k| *k != "enabled") else {
                        continue;
                    };
                    if !matches!(value, Value::Null | Value::Bool(false)) {
                        out.push(IgnoredField {
                            field: format!("{}.{key}", path.join(".")),
                            advice: SCRAPING_SERVICE_OFF,
                        });
                    }
                }
            }
            continue;
        }
        for (key, value) in section {
            let Some(key) = key.as_str() else { continue };
            let advice = match fields.iter().find(|(name, _)| *name == key) {
                Some((_, Use::Ignored(advice))) => Some(*advice),
                Some((_, Use::When(check))) => check(value, section),
                // Unknown keys cannot get here: parsing denies them.
                Some((_, Use::Honoured | Use::Section)) | None => None,
            };
            if let Some(advice) = advice {
                out.push(IgnoredField {
                    field: format!("{}.{key}", path.join(".")),
                    advice,
                });
            }
        }
    }
    out
}

fn lookup<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Mapping> {
    let mut v = root;
    for key in path {
        v = v.as_mapping()?.get(*key)?;
    }
    v.as_mapping()
}

fn tls_without_certificate(block: &Value, _: &Mapping) -> Option<&'static str> {
    (!asks_for_tls(block))
        .then_some("it names no certificate, so the agent serves plain HTTP; remove it")
}

/// Whether `server.http_tls_config` asks for TLS: the old agent served HTTPS when the block
/// names a certificate or a key. A block without them (an old agent's config dump has one with
/// every value empty, `false` or `0`) asks for nothing.
pub fn asks_for_tls(block: &Value) -> bool {
    ["cert_file", "key_file"].iter().any(|k| {
        block
            .get(*k)
            .is_some_and(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::agent;
    use crate::config::instance::GlobalConfigRaw;
    use crate::config::load::parse_agent;
    use crate::config::reference::fields_of;

    /// A field added to the parser must be classified here (honoured or not).
    #[test]
    fn every_field_of_agent_yaml_is_classified() {
        let structs: [(&str, &[&str]); 8] = [
            ("server", fields_of::<agent::ServerConfig>()),
            ("metrics", fields_of::<agent::MetricsConfigRaw>()),
            ("metrics.global", fields_of::<GlobalConfigRaw>()),
            (
                "metrics.scraping_service",
                fields_of::<agent::ScrapingServiceRaw>(),
            ),
            (
                "metrics.scraping_service.kvstore",
                fields_of::<agent::KvStoreConfig>(),
            ),
            (
                "metrics.scraping_service.kvstore.etcd",
                fields_of::<agent::EtcdConfig>(),
            ),
            (
                "metrics.scraping_service.lifecycler",
                fields_of::<agent::LifecyclerConfigRaw>(),
            ),
            (
                "metrics.scraping_service.lifecycler.ring",
                fields_of::<agent::RingConfigRaw>(),
            ),
        ];
        for (path, fields) in structs {
            let (_, table) = SECTIONS
                .iter()
                .find(|(p, _)| p.join(".") == path)
                .unwrap_or_else(|| panic!("section {path} is not classified"));
            assert!(!fields.is_empty(), "{path}: no fields recorded");
            for f in fields {
                assert!(
                    table.iter().any(|(name, _)| name == f),
                    "{path}.{f} is accepted by the parser but not classified in config/ignored.rs"
                );
            }
            for (name, _) in *table {
                assert!(
                    fields.contains(name),
                    "{path}.{name} is classified but the parser has no such field"
                );
            }
        }
    }

    fn ignored(yaml: &str) -> Vec<String> {
        let (_, cfg) = parse_agent(yaml).expect("valid");
        cfg.ignored_fields.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn server_fields_name_the_flag_to_use() {
        let got = ignored("server:\n  http_listen_port: 9999\n  log_level: debug\n");
        assert_eq!(
            got,
            [
                "server.log_level is ignored: use --log.level",
                "server.http_listen_port is ignored: the listen address comes from the command line: use --server.http.address HOST:PORT",
            ]
        );
    }

    #[test]
    fn honoured_and_default_values_are_not_reported() {
        let yaml = "\
metrics:
  wal_directory: /tmp/x
  disabled: false
  global:
    scrape_interval: 15s
  scraping_service:
    enabled: true
    kvstore:
      store: etcd
      etcd:
        endpoints: [a:2379]
        tls_enabled: true
        tls_ca_path: /ca.pem
    lifecycler:
      heartbeat_period: 1s
      ring:
        replication_factor: 1
        zone_awareness_enabled: false
";
        assert_eq!(ignored(yaml), Vec::<String>::new());
    }

    #[test]
    fn nested_and_conditional_fields_are_reported_with_their_path() {
        let yaml = "\
metrics:
  disabled: true
  global:
    evaluation_interval: 1m
  scraping_service:
    enabled: true
    reshard_timeout: 10s
    kvstore:
      store: etcd
      etcd:
        endpoints: [a:2379]
        tls_ca_path: /ca.pem
    lifecycler:
      heartbeat_timeout: 1m
      ring:
        replication_factor: 3
        kvstore:
          store: etcd
          etcd:
            endpoints: [b:2379]
            tls_server_name: b
";
        let fields: Vec<String> = parse_agent(yaml)
            .expect("valid")
            .1
            .ignored_fields
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(
            fields,
            [
                "metrics.disabled",
                "metrics.global.evaluation_interval",
                "metrics.scraping_service.reshard_timeout",
                "metrics.scraping_service.kvstore.etcd.tls_ca_path",
                "metrics.scraping_service.lifecycler.heartbeat_timeout",
                "metrics.scraping_service.lifecycler.ring.replication_factor",
                "metrics.scraping_service.lifecycler.ring.kvstore.etcd.tls_server_name",
            ]
        );
    }

    #[test]
    fn a_store_block_the_store_does_not_select_is_reported() {
        let yaml = "\
metrics:
  scraping_service:
    enabled: true
    kvstore:
      store: etcd
      etcd: {endpoints: ['a:2379']}
      consul: {host: 'c:8500'}
      embedded: {path: /kv}
    lifecycler:
      ring:
        kvstore:
          store: inmemory
          etcd:
            endpoints: ['b:2379']
            tls_ca_path: /ca.pem
";
        let got = ignored(yaml);
        let fields: Vec<&str> = got.iter().map(|f| f.split(' ').next().unwrap()).collect();
        // Nothing from inside a block that is not read (the ring's etcd.tls_ca_path).
        assert_eq!(
            fields,
            [
                "metrics.scraping_service.kvstore.consul",
                "metrics.scraping_service.kvstore.embedded",
                "metrics.scraping_service.lifecycler.ring.kvstore.etcd",
            ],
            "{got:?}"
        );
        assert!(
            got[1].ends_with("only read with store: embedded; remove it"),
            "{got:?}"
        );
        assert!(
            got[2].ends_with("only read with store: etcd; remove it"),
            "{got:?}"
        );
        // No store named is the embedded store: its block is read.
        assert_eq!(
            ignored("metrics:\n  scraping_service:\n    enabled: true\n    kvstore:\n      embedded: {path: /kv}\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_scraping_service_blocks_are_reported_when_the_service_is_off() {
        // A cluster's settings without `enabled: true`: the agent runs static configs only.
        let yaml = "\
metrics:
  scraping_service:
    reshard_interval: 10s
    reshard_timeout: 10s
    kvstore:
      store: etcd
      etcd:
        endpoints: [a:2379]
        tls_ca_path: /ca.pem
    lifecycler:
      heartbeat_timeout: 1m
";
        let got = ignored(yaml);
        let fields: Vec<&str> = got.iter().map(|f| f.split(' ').next().unwrap()).collect();
        // One warning a key; nothing inside a block that has no effect as a whole.
        assert_eq!(
            fields,
            [
                "metrics.scraping_service.reshard_interval",
                "metrics.scraping_service.reshard_timeout",
                "metrics.scraping_service.kvstore",
                "metrics.scraping_service.lifecycler",
            ]
        );
        assert!(
            got.iter().all(|f| f.ends_with(SCRAPING_SERVICE_OFF)),
            "{got:?}"
        );
        // `enabled: false` written out, and the flag's default: only the blocks are reported.
        let got = ignored(
            "metrics:\n  scraping_service:\n    enabled: false\n    dangerous_allow_reading_files: false\n    kvstore: {store: inmemory}\n",
        );
        assert_eq!(
            got,
            [format!(
                "metrics.scraping_service.kvstore is ignored: {SCRAPING_SERVICE_OFF}"
            )]
        );
        let got =
            ignored("metrics:\n  scraping_service:\n    dangerous_allow_reading_files: true\n");
        assert_eq!(got.len(), 1, "{got:?}");
        // An empty block says nothing.
        assert_eq!(
            ignored("metrics:\n  scraping_service: {}\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_tls_block_with_a_certificate_is_honoured_and_an_empty_one_is_a_warning() {
        let (_, cfg) = parse_agent(
            "server:\n  http_tls_config:\n    cert_file: /etc/agent/cert.pem\n    key_file: /etc/agent/key.pem\n",
        )
        .expect("TLS is served");
        assert!(cfg.ignored_fields.is_empty(), "{:?}", cfg.ignored_fields);
        let tls = cfg.http_tls.expect("HTTPS");
        assert_eq!(tls.cert_file, std::path::Path::new("/etc/agent/cert.pem"));
        // The old agent's config dump: every value empty, false or 0.
        let dump = "server:\n  http_tls_config:\n    cert_file: \"\"\n    key_file: \"\"\n    client_auth_type: \"\"\n    client_ca_file: \"\"\n    cipher_suites: []\n    curve_preferences: []\n    min_version: 0\n    max_version: 0\n    prefer_server_cipher_suites: false\n";
        for empty in [
            "server:\n  http_tls_config: {}\n",
            "server:\n  http_tls_config:\n    cert_file: ''\n",
            dump,
        ] {
            let got = ignored(empty);
            assert_eq!(got.len(), 1, "{empty}: {got:?}");
            assert!(got[0].starts_with("server.http_tls_config is ignored"));
            assert_eq!(parse_agent(empty).expect("valid").1.http_tls, None);
        }
    }
}
