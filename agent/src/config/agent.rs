//! `agent.yaml`: the `server` and `metrics` blocks the old agent's static mode reads.
//!
//! The `integrations`, `logs` and `traces` blocks of the old agent are accepted as written and
//! ignored (reported as a warning), so an existing agent.yaml loads unchanged.

use serde::{Deserialize, Serialize};

use super::duration::GoDuration;
use super::http::{parse_cipher_suites, ClientCert, TlsSettings, TlsVersion};
use super::instance::{GlobalConfig, GlobalConfigRaw, InstanceConfig, InstanceConfigRaw};
use super::invalid::{Invalid, Seg};
use super::secret::{Secret, SecretSource};
use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfigRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfigRaw>,
    /// This block's name before v0.19; at most one of the two may be given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<MetricsConfigRaw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrations: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<serde_yaml::Value>,
    /// The old name of `logs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loki: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces: Option<serde_yaml::Value>,
    /// The old name of `traces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tempo: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_management: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_listen_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_listen_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tls_config: Option<super::http::ServerTlsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tls_config: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_shutdown_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_server_read_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_server_write_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_server_idle_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_instrumentation: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfigRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalConfigRaw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_cleanup_age: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_cleanup_period: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scraping_service: Option<ScrapingServiceRaw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scraping_service_client: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<InstanceConfigRaw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_restart_backoff: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_disable_keepalives: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_idle_conn_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapingServiceRaw {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshard_interval: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshard_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_reshard_event_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstore: Option<KvStoreConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycler: Option<LifecyclerConfigRaw>,
    #[serde(default)]
    pub dangerous_allow_reading_files: bool,
    /// Beyond the old agent: `configs` (default) runs each config whole on the ring owner of its
    /// name; `targets` assigns the configs' discovered targets to the agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<String>,
}

/// dskit's `kv.Config`, plus `embedded` (this project's durable single-node store).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvStoreConfig {
    /// `etcd`, `embedded` (the default), `inmemory`; `consul` and `multi` are refused when the
    /// scraping service is on (agentctl cannot open them) and unused otherwise; `memberlist`
    /// never worked in the old agent and is refused. Validated into a [`KvBackend`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul: Option<ConsulConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi: Option<MultiConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedConfig>,
}

impl KvStoreConfig {
    /// The store this block selects, validated. `field` names the block in errors
    /// (`scraping_service.kvstore`). `consul` and `multi` are accepted only when `in_use` is
    /// false (the scraping service is off, so nothing opens the store).
    pub fn validate(&self, field: &str, in_use: bool) -> Result<KvBackend, String> {
        let name = self
            .store
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("embedded");
        match name {
            "embedded" => Ok(KvBackend::Embedded {
                dir: self
                    .embedded
                    .as_ref()
                    .and_then(|e| e.path.clone())
                    .filter(|p| !p.is_empty()),
            }),
            "etcd" => match &self.etcd {
                Some(e) if !e.endpoints.is_empty() => e
                    .settings()
                    .map(|s| KvBackend::Etcd(Box::new(s)))
                    .map_err(|m| format!("{field}.etcd: {m}")),
                _ => Err(format!(
                    "{field}.etcd.endpoints: at least one endpoint is required when store is etcd"
                )),
            },
            "inmemory" => Ok(KvBackend::InMemory),
            "consul" | "multi" if in_use => Err(format!(
                "{field}.store: {name} is not supported by agentctl; use etcd or embedded"
            )),
            "consul" => Ok(KvBackend::Unused("consul")),
            "multi" => Ok(KvBackend::Unused("multi")),
            "memberlist" => Err(format!(
                "{field}.store: memberlist is not supported (it never worked in the old agent's scraping service); use etcd or embedded"
            )),
            other => Err(format!(
                "{field}.store: invalid KV store type {other:?} (one of: embedded, etcd, inmemory, consul, multi)"
            )),
        }
    }
}

/// A validated `kvstore` block: the store the agent opens and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum KvBackend {
    /// The embedded, durable single-node store in `dir` (`embedded.path`; `None`: the WAL
    /// directory).
    Embedded { dir: Option<String> },
    /// etcd, with at least one endpoint.
    Etcd(Box<EtcdSettings>),
    /// A process-local store that forgets everything on exit.
    InMemory,
    /// `consul` or `multi`, written in a config whose scraping service is off: nothing opens
    /// it (with the scraping service on, validation refuses them).
    Unused(&'static str),
}

impl KvBackend {
    /// The `store:` name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            KvBackend::Embedded { .. } => "embedded",
            KvBackend::Etcd(_) => "etcd",
            KvBackend::InMemory => "inmemory",
            KvBackend::Unused(name) => name,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_client_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_reads: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_rate_limit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_burst_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cas_retry_delay: Option<GoDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<GoDuration>,
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_insecure_skip_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cipher_suites: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_min_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

/// A validated `kvstore.etcd` block.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub dial_timeout: std::time::Duration,
    pub max_retries: u32,
    pub username: String,
    pub password: Secret,
    /// `Some` with `tls_enabled: true`: TLS to every endpoint.
    pub tls: Option<TlsSettings>,
}

/// dskit's defaults for `kvstore.etcd`.
pub const ETCD_DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const ETCD_MAX_RETRIES: u32 = 10;

impl EtcdConfig {
    /// dskit's checks, with its texts where it has them, into the validated settings. Unlike
    /// dskit (which left them to etcd's client defaults), `tls_min_version` and
    /// `tls_cipher_suites` are honoured.
    pub fn settings(&self) -> Result<EtcdSettings, String> {
        let tls = if self.tls_enabled {
            let path = |p: &Option<String>| p.clone().filter(|s| !s.is_empty()).map(PathBuf::from);
            let client_cert = match (path(&self.tls_cert_path), path(&self.tls_key_path)) {
                (Some(cert), Some(key)) => Some(ClientCert {
                    cert: SecretSource::File(cert),
                    key: SecretSource::File(key),
                }),
                (Some(_), None) => return Err("certificate given but no key configured".into()),
                (None, Some(_)) => return Err("key given but no certificate configured".into()),
                (None, None) => None,
            };
            let min_version = match self.tls_min_version.as_deref().filter(|v| !v.is_empty()) {
                None => None,
                Some(v) => Some(
                    v.strip_prefix("Version")
                        .and_then(TlsVersion::parse)
                        .ok_or_else(|| format!("unknown minimum TLS version: {v:?}"))?,
                ),
            };
            Some(TlsSettings {
                ca: path(&self.tls_ca_path).map(SecretSource::File),
                client_cert,
                server_name: self.tls_server_name.clone().filter(|s| !s.is_empty()),
                insecure_skip_verify: self.tls_insecure_skip_verify,
                min_version,
                max_version: None,
                cipher_suites: parse_cipher_suites(
                    self.tls_cipher_suites.as_deref().unwrap_or(""),
                )?,
            })
        } else {
            None
        };
        Ok(EtcdSettings {
            endpoints: self.endpoints.clone(),
            dial_timeout: self.dial_timeout.map_or(ETCD_DIAL_TIMEOUT, |d| d.as_std()),
            max_retries: self.max_retries.unwrap_or(ETCD_MAX_RETRIES),
            username: self.username.clone().unwrap_or_default(),
            password: self.password.clone().unwrap_or_default(),
            tls,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_timeout: Option<GoDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Directory of the embedded store (file `kv.redb`). Default: `<wal_directory>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingConfigRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstore: Option<KvStoreConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<GoDuration>,
    /// Forced to 1, as the old agent does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_awareness_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_zones: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecyclerConfigRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingConfigRaw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_period: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe_period: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_after: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_duration: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_inet6: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_sleep: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unregister_on_shutdown: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_check_ring_health: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Beyond the old agent: a member whose heartbeat is older than this many
    /// `heartbeat_timeout`s is removed by the healthy members. 0 disables. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_forget_unhealthy_periods: Option<u32>,
}

/// Validated lifecycler and ring settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecyclerConfig {
    /// The ring's store (`lifecycler.ring.kvstore`; by default the config store's).
    pub ring_kvstore: KvBackend,
    pub ring_prefix: String,
    pub heartbeat_timeout: GoDuration,
    pub num_tokens: u32,
    pub heartbeat_period: GoDuration,
    pub observe_period: GoDuration,
    pub join_after: GoDuration,
    pub final_sleep: GoDuration,
    pub tokens_file_path: Option<String>,
    pub availability_zone: String,
    pub unregister_on_shutdown: bool,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub id: Option<String>,
    pub auto_forget_unhealthy_periods: u32,
}

/// Validated scraping service settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapingServiceConfig {
    pub enabled: bool,
    pub reshard_interval: GoDuration,
    pub reshard_timeout: GoDuration,
    pub cluster_reshard_event_timeout: GoDuration,
    /// The config store.
    pub kvstore: KvBackend,
    pub config_prefix: String,
    pub lifecycler: LifecyclerConfig,
    pub dangerous_allow_reading_files: bool,
    pub sharding: Sharding,
}

/// Where target sharding keeps its keys: next to the config prefix, its last path segment
/// replaced by `sharding/` (`configurations/` → `sharding/`, `prod/configurations/` →
/// `prod/sharding/`), so clusters sharing an etcd under different prefixes stay apart.
pub fn sharding_prefix(config_prefix: &str) -> String {
    let trimmed = config_prefix.trim_end_matches('/');
    let parent = match trimmed.rfind('/') {
        Some(i) => &trimmed[..=i],
        None => "",
    };
    format!("{parent}sharding/")
}

/// What the scraping service distributes over its agents (`scraping_service.sharding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharding {
    /// Each config runs whole on the ring owner of its name (the old agent's way).
    #[default]
    Configs,
    /// Each config's discovery runs on the ring owner of its name; its targets are assigned
    /// to the agents by a capacity-capped, sticky assignment.
    Targets,
}

impl Sharding {
    pub fn as_str(self) -> &'static str {
        match self {
            Sharding::Configs => "configs",
            Sharding::Targets => "targets",
        }
    }
}

/// How configs are grouped into running instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceMode {
    Shared,
    Distinct,
}

/// A validated agent config.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub server: ServerConfig,
    /// `server.http_tls_config` when it asks for HTTPS (names a certificate).
    pub http_tls: Option<super::http::ServerTlsSettings>,
    pub global: GlobalConfig,
    pub wal_directory: String,
    pub wal_cleanup_age: GoDuration,
    pub wal_cleanup_period: GoDuration,
    pub scraping_service: ScrapingServiceConfig,
    pub configs: Vec<InstanceConfig>,
    pub instance_restart_backoff: GoDuration,
    pub instance_mode: InstanceMode,
    /// Blocks of the old agent that this one does not run (`integrations`, `logs`, ...).
    pub ignored_blocks: Vec<&'static str>,
    /// Fields set in the file that have no effect (see [`super::ignored`]).
    pub ignored_fields: Vec<super::ignored::IgnoredField>,
}

impl AgentConfigRaw {
    /// Whether the file sets `metrics.wal_directory` (or `prometheus.wal_directory`).
    pub fn sets_wal_directory(&self) -> bool {
        self.metrics
            .as_ref()
            .or(self.prometheus.as_ref())
            .is_some_and(|m| m.wal_directory.is_some())
    }

    /// Applies defaults and the old agent's checks; errors carry the path of their node.
    pub fn validate(&self) -> Result<AgentConfig, Invalid> {
        let http_tls = match self
            .server
            .as_ref()
            .and_then(|s| s.http_tls_config.as_ref())
        {
            None => None,
            Some(tls) => tls.settings().map_err(|(field, message)| {
                Invalid::at(
                    format!("server.http_tls_config.{field}: {message}"),
                    [
                        Seg::from("server"),
                        Seg::from("http_tls_config"),
                        Seg::from(field),
                    ],
                )
            })?,
        };
        // The old agent's renamed blocks: either name, not both.
        for (old, new, both) in [
            (
                "prometheus",
                "metrics",
                self.prometheus.is_some() && self.metrics.is_some(),
            ),
            ("loki", "logs", self.loki.is_some() && self.logs.is_some()),
            (
                "tempo",
                "traces",
                self.tempo.is_some() && self.traces.is_some(),
            ),
        ] {
            if both {
                return Err(Invalid::at(
                    format!("at most one of {old} and {new} should be specified"),
                    [Seg::from(old)],
                ));
            }
        }
        let metrics_key = if self.prometheus.is_some() {
            "prometheus"
        } else {
            "metrics"
        };
        let metrics = self
            .metrics
            .clone()
            .or_else(|| self.prometheus.clone())
            .unwrap_or_default();
        let global = metrics
            .global
            .clone()
            .unwrap_or_default()
            .validate()
            .map_err(|e| Invalid::at(e, [Seg::from(metrics_key), Seg::from("global")]))?;
        let ss = metrics.scraping_service.clone().unwrap_or_default();
        let wal_directory = metrics
            .wal_directory
            .clone()
            .unwrap_or_else(|| "data-agent/".into());
        let at =
            |m: String, key: &'static str| Invalid::at(m, [Seg::from(metrics_key), Seg::from(key)]);
        if ss.enabled && wal_directory.is_empty() {
            return Err(at("no wal_directory configured".into(), "wal_directory"));
        }
        if ss.enabled && !metrics.configs.is_empty() {
            return Err(at(
                "cannot use configs when scraping_service mode is enabled".into(),
                "configs",
            ));
        }
        let instance_mode = match metrics.instance_mode.as_deref() {
            None | Some("") | Some("shared") => InstanceMode::Shared,
            Some("distinct") => InstanceMode::Distinct,
            Some(other) => {
                return Err(at(
                    format!(
                    "unsupported instance_mode '{other}'. supported values 'shared', 'distinct'"
                ),
                    "instance_mode",
                ))
            }
        };
        let kvstore_raw = ss.kvstore.clone().unwrap_or_default();
        let kvstore = kvstore_raw.validate("scraping_service.kvstore", ss.enabled)?;
        let sharding_path = [
            Seg::from(metrics_key),
            Seg::from("scraping_service"),
            Seg::from("sharding"),
        ];
        let sharding = match ss.sharding.as_deref() {
            None | Some("") | Some("configs") => Sharding::Configs,
            Some("targets") => Sharding::Targets,
            Some(other) => {
                return Err(Invalid::at(
                    format!(
                    "scraping_service.sharding: invalid value {other:?} (one of: configs, targets)"
                ),
                    sharding_path,
                ))
            }
        };
        let config_prefix = kvstore_raw
            .prefix
            .clone()
            .unwrap_or_else(|| "configurations/".into());
        if sharding == Sharding::Targets {
            let keys = sharding_prefix(&config_prefix);
            if keys.starts_with(&config_prefix) {
                return Err(Invalid::at(
                    format!(
                        "scraping_service.sharding: targets keeps its keys under {keys:?}, inside scraping_service.kvstore.prefix {config_prefix:?} where every key is a config; use a prefix such as \"configurations/\""
                    ),
                    sharding_path,
                ));
            }
        }
        let lc = ss.lifecycler.clone().unwrap_or_default();
        let ring = lc.ring.clone().unwrap_or_default();
        let ring_kvstore_raw = ring.kvstore.clone().unwrap_or_else(|| KvStoreConfig {
            prefix: None,
            ..kvstore_raw.clone()
        });
        let ring_kvstore =
            ring_kvstore_raw.validate("scraping_service.lifecycler.ring.kvstore", ss.enabled)?;
        let num_tokens = lc.num_tokens.unwrap_or(128);
        if num_tokens == 0 {
            return Err("scraping_service.lifecycler.num_tokens must be greater than 0".into());
        }
        let heartbeat_period = lc.heartbeat_period.unwrap_or(GoDuration::from_secs(5));
        if ss.enabled && heartbeat_period.is_zero() {
            return Err(
                "scraping_service.lifecycler.heartbeat_period must be greater than 0s".into(),
            );
        }

        let mut configs = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, c) in metrics.configs.iter().enumerate() {
            let within = [Seg::from(metrics_key), Seg::from("configs"), Seg::from(i)];
            let cfg = c.validate(&global).map_err(|e| {
                let e = e.within(within.clone());
                if c.name.is_empty() {
                    e.prefixed(format_args!("{metrics_key}.configs[{i}]"))
                } else {
                    e.prefixed(format_args!("failed to apply defaults to {:?}", c.name))
                }
            })?;
            if !names.insert(cfg.name.clone()) {
                return Err(Invalid::at(
                    format!("prometheus instance names must be unique. found multiple instances with name {}", cfg.name),
                    within.into_iter().chain([Seg::from("name")]),
                ));
            }
            configs.push(cfg);
        }

        // Named as the file names them, so the warning points at a key the user can find.
        let mut ignored_blocks = Vec::new();
        for (name, present) in [
            ("integrations", self.integrations.is_some()),
            ("logs", self.logs.is_some()),
            ("loki", self.loki.is_some()),
            ("traces", self.traces.is_some()),
            ("tempo", self.tempo.is_some()),
            ("agent_management", self.agent_management.is_some()),
        ] {
            if present {
                ignored_blocks.push(name);
            }
        }

        Ok(AgentConfig {
            server: self.server.clone().unwrap_or_default(),
            http_tls,
            global,
            wal_directory,
            wal_cleanup_age: metrics
                .wal_cleanup_age
                .unwrap_or(GoDuration::from_secs(12 * 3600)),
            wal_cleanup_period: metrics
                .wal_cleanup_period
                .unwrap_or(GoDuration::from_secs(30 * 60)),
            scraping_service: ScrapingServiceConfig {
                enabled: ss.enabled,
                reshard_interval: ss.reshard_interval.unwrap_or(GoDuration::from_secs(60)),
                reshard_timeout: ss.reshard_timeout.unwrap_or(GoDuration::from_secs(30)),
                cluster_reshard_event_timeout: ss
                    .cluster_reshard_event_timeout
                    .unwrap_or(GoDuration::from_secs(30)),
                config_prefix,
                kvstore,
                lifecycler: LifecyclerConfig {
                    ring_prefix: ring_kvstore_raw
                        .prefix
                        .clone()
                        .unwrap_or_else(|| "collectors/".into()),
                    ring_kvstore,
                    heartbeat_timeout: ring.heartbeat_timeout.unwrap_or(GoDuration::from_secs(60)),
                    num_tokens,
                    heartbeat_period,
                    observe_period: lc.observe_period.unwrap_or_default(),
                    join_after: lc.join_after.unwrap_or_default(),
                    final_sleep: lc.final_sleep.unwrap_or_default(),
                    tokens_file_path: lc.tokens_file_path.clone().filter(|s| !s.is_empty()),
                    availability_zone: lc.availability_zone.clone().unwrap_or_default(),
                    unregister_on_shutdown: lc.unregister_on_shutdown.unwrap_or(true),
                    address: lc.address.clone().filter(|s| !s.is_empty()),
                    port: lc.port.filter(|p| *p != 0),
                    id: lc.id.clone().filter(|s| !s.is_empty()),
                    auto_forget_unhealthy_periods: lc.auto_forget_unhealthy_periods.unwrap_or(10),
                },
                dangerous_allow_reading_files: ss.dangerous_allow_reading_files,
                sharding,
            },
            configs,
            instance_restart_backoff: metrics
                .instance_restart_backoff
                .unwrap_or(GoDuration::from_secs(5)),
            instance_mode,
            ignored_blocks,
            ignored_fields: super::ignored::ignored_fields(self),
        })
    }
}

impl AgentConfig {
    /// The embedded default: a single-node scraping service on the embedded KV store.
    pub fn embedded_default() -> AgentConfig {
        let raw = AgentConfigRaw {
            metrics: Some(MetricsConfigRaw {
                scraping_service: Some(ScrapingServiceRaw {
                    enabled: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        raw.validate()
            .expect("the embedded default config is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(yaml: &str) -> Result<(KvBackend, KvBackend), String> {
        let raw: AgentConfigRaw = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let cfg = raw.validate()?;
        let ss = cfg.scraping_service;
        Ok((ss.kvstore, ss.lifecycler.ring_kvstore))
    }

    #[test]
    fn the_store_kind_is_validated_into_an_enum_at_load() {
        let on = |store: &str| {
            format!(
                "metrics:\n  scraping_service:\n    enabled: true\n    kvstore:\n      {store}\n"
            )
        };
        assert_eq!(
            backends(&on("store: embedded\n      embedded: {path: /kv}")),
            Ok((
                KvBackend::Embedded {
                    dir: Some("/kv".into())
                },
                KvBackend::Embedded {
                    dir: Some("/kv".into())
                }
            ))
        );
        assert_eq!(
            backends(&on("store: inmemory")).map(|b| b.0),
            Ok(KvBackend::InMemory)
        );
        let etcd = backends(&on("store: etcd\n      etcd: {endpoints: ['e:2379']}")).unwrap();
        assert!(matches!(&etcd.0, KvBackend::Etcd(e) if e.endpoints == ["e:2379"]));
        assert_eq!(etcd.0, etcd.1, "the ring uses the config store by default");
        // No store named: the embedded store in the WAL directory.
        assert_eq!(
            backends("metrics:\n  scraping_service:\n    enabled: true\n").map(|b| b.0),
            Ok(KvBackend::Embedded { dir: None })
        );
        // Stores agentctl cannot open are refused at load, not found out at run time.
        for (store, want) in [
            (
                "consul",
                "scraping_service.kvstore.store: consul is not supported by agentctl",
            ),
            (
                "multi",
                "scraping_service.kvstore.store: multi is not supported by agentctl",
            ),
            ("memberlist", "memberlist is not supported"),
            ("redis", "invalid KV store type \"redis\""),
            (
                "etcd",
                "scraping_service.kvstore.etcd.endpoints: at least one endpoint",
            ),
        ] {
            let err = backends(&on(&format!("store: {store}"))).unwrap_err();
            assert!(err.contains(want), "{store}: {err}");
        }
        // Without the scraping service nothing opens the store: an old agent's consul block
        // still loads.
        assert_eq!(
            backends("metrics:\n  scraping_service:\n    kvstore:\n      store: consul\n")
                .map(|b| b.0),
            Ok(KvBackend::Unused("consul"))
        );
    }
}
