//! Prometheus `scrape_config`, as written (raw) and validated (defaults applied).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::PromDuration;
use super::http::{with_http_client, HttpClientSettings};
use super::invalid::{Invalid, Seg};
use super::relabel::{self, RelabelConfig, RelabelConfigRaw};
use super::sd::{
    ConsulSd, ConsulSdConfig, DnsSdConfig, FileCheck, FileSdConfig, HttpSd, HttpSdConfig,
    KubernetesSd, KubernetesSdConfig, StaticConfig, OTHER_SD_KINDS,
};
use super::url::ByteSize;
use crate::path;

with_http_client! {
    /// A scrape config as written. Every Prometheus 2.x field is accepted; absent fields take
    /// their defaults in [`ScrapeConfig`].
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ScrapeConfigRaw {
        #[serde(default)]
        pub job_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub honor_labels: Option<bool>,
        #[serde(
            default,
            deserialize_with = "null_is_false",
            skip_serializing_if = "Option::is_none"
        )]
        pub honor_timestamps: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub track_timestamps_staleness: Option<bool>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub params: BTreeMap<String, Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scrape_interval: Option<PromDuration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scrape_timeout: Option<PromDuration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scrape_protocols: Option<Vec<String>>,
        /// Whether to keep a classic histogram that is also exposed as a native one. Accepted
        /// and always in effect: this agent negotiates only the text formats, which carry
        /// classic histograms alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scrape_classic_histograms: Option<bool>,
        #[serde(
            default,
            deserialize_with = "null_is_false",
            skip_serializing_if = "Option::is_none"
        )]
        pub enable_compression: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub metrics_path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scheme: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub body_size_limit: Option<ByteSize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sample_limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target_limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub label_limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub label_name_length_limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub label_value_length_limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub native_histogram_bucket_limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub keep_dropped_targets: Option<u64>,
        #[serde(
            default,
            deserialize_with = "relabel::target_rules",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub relabel_configs: Vec<RelabelConfigRaw>,
        #[serde(
            default,
            deserialize_with = "relabel::metric_rules",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub metric_relabel_configs: Vec<RelabelConfigRaw>,
        #[serde(
            default,
            deserialize_with = "sd_entries::static_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub static_configs: Vec<StaticConfig>,
        #[serde(
            default,
            deserialize_with = "sd_entries::file_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub file_sd_configs: Vec<FileSdConfig>,
        #[serde(
            default,
            deserialize_with = "sd_entries::http_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub http_sd_configs: Vec<HttpSdConfig>,
        #[serde(
            default,
            deserialize_with = "sd_entries::dns_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub dns_sd_configs: Vec<DnsSdConfig>,
        #[serde(
            default,
            deserialize_with = "sd_entries::kubernetes_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub kubernetes_sd_configs: Vec<KubernetesSdConfig>,
        #[serde(
            default,
            deserialize_with = "sd_entries::consul_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub consul_sd_configs: Vec<ConsulSdConfig>,
        // The other Prometheus SD kinds, kept as written (see `OTHER_SD_KINDS`).
        #[serde(
            default,
            deserialize_with = "sd_entries::azure_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub azure_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::digitalocean_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub digitalocean_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::docker_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub docker_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::dockerswarm_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub dockerswarm_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::ec2_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub ec2_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::eureka_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub eureka_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::gce_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub gce_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::hetzner_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub hetzner_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::ionos_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub ionos_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::kuma_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub kuma_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::lightsail_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub lightsail_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::linode_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub linode_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::marathon_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub marathon_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::nerve_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub nerve_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::nomad_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub nomad_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::openstack_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub openstack_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::ovhcloud_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub ovhcloud_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::puppetdb_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub puppetdb_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::scaleway_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub scaleway_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::serverset_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub serverset_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::triton_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub triton_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::uyuni_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub uyuni_sd_configs: Vec<serde_yaml::Value>,
        #[serde(
            default,
            deserialize_with = "sd_entries::vultr_sd_configs",
            skip_serializing_if = "Vec::is_empty"
        )]
        pub vultr_sd_configs: Vec<serde_yaml::Value>,
    }
}

/// A boolean written as `null` is false, as Prometheus's YAML decoder makes it (over a `true`
/// default); absent, it keeps its default.
fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Some(Option::<bool>::deserialize(d)?.unwrap_or(false)))
}

/// The SD lists' deserializers: a null entry is Prometheus's `empty or null section in <key>`.
mod sd_entries {
    macro_rules! lists {
        ($($field:ident),* $(,)?) => {$(
            pub(super) fn $field<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
            where
                D: serde::Deserializer<'de>,
                T: serde::Deserialize<'de>,
            {
                $crate::config::relabel::non_null_entries(
                    d,
                    concat!("empty or null section in ", stringify!($field)),
                )
            }
        )*};
    }
    lists!(
        static_configs,
        file_sd_configs,
        http_sd_configs,
        dns_sd_configs,
        kubernetes_sd_configs,
        azure_sd_configs,
        consul_sd_configs,
        digitalocean_sd_configs,
        docker_sd_configs,
        dockerswarm_sd_configs,
        ec2_sd_configs,
        eureka_sd_configs,
        gce_sd_configs,
        hetzner_sd_configs,
        ionos_sd_configs,
        kuma_sd_configs,
        lightsail_sd_configs,
        linode_sd_configs,
        marathon_sd_configs,
        nerve_sd_configs,
        nomad_sd_configs,
        openstack_sd_configs,
        ovhcloud_sd_configs,
        puppetdb_sd_configs,
        scaleway_sd_configs,
        serverset_sd_configs,
        triton_sd_configs,
        uyuni_sd_configs,
        vultr_sd_configs,
    );
}

/// A `scrape_protocols` entry (Prometheus 2.49; the old agent's Prometheus predates it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeProtocol {
    PrometheusProto,
    PrometheusText004,
    OpenMetricsText001,
    OpenMetricsText100,
}

impl ScrapeProtocol {
    /// Every protocol with its name and media type, sorted by name (Prometheus lists them so
    /// in its error).
    const ALL: [(ScrapeProtocol, &'static str, &'static str); 4] = [
        (
            ScrapeProtocol::OpenMetricsText001,
            "OpenMetricsText0.0.1",
            "application/openmetrics-text;version=0.0.1",
        ),
        (
            ScrapeProtocol::OpenMetricsText100,
            "OpenMetricsText1.0.0",
            "application/openmetrics-text;version=1.0.0",
        ),
        (
            ScrapeProtocol::PrometheusProto,
            "PrometheusProto",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
        ),
        (
            ScrapeProtocol::PrometheusText004,
            "PrometheusText0.0.4",
            "text/plain;version=0.0.4",
        ),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _, _)| *p == self)
            .map_or("", |e| e.1)
    }

    fn media_type(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _, _)| *p == self)
            .map_or("", |e| e.2)
    }
}

/// A validated `scrape_protocols` list: at most the four protocols, each once, in preference
/// order. `Copy`, so it travels in [`ScrapeDefaults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeProtocols {
    list: [ScrapeProtocol; 4],
    len: usize,
}

impl ScrapeProtocols {
    /// Prometheus 2.49's `validateAcceptScrapeProtocols`, with its texts.
    pub fn parse(names: &[String]) -> Result<ScrapeProtocols, String> {
        if names.is_empty() {
            return Err("scrape_protocols cannot be empty".into());
        }
        let mut out = ScrapeProtocols {
            list: [ScrapeProtocol::PrometheusText004; 4],
            len: 0,
        };
        for name in names {
            let Some(&(p, _, _)) = ScrapeProtocol::ALL.iter().find(|(_, n, _)| n == name) else {
                let supported: Vec<&str> = ScrapeProtocol::ALL.iter().map(|e| e.1).collect();
                return Err(format!(
                    "scrape_protocols: unknown scrape protocol {name}, supported: [{}]",
                    supported.join(" ")
                ));
            };
            let dup = out.iter().any(|q| q.name().eq_ignore_ascii_case(name));
            if dup || out.len == out.list.len() {
                return Err(format!(
                    "duplicated protocol in scrape_protocols, got [{}]",
                    names.join(" ")
                ));
            }
            out.list[out.len] = p;
            out.len += 1;
        }
        Ok(out)
    }

    pub fn iter(&self) -> impl Iterator<Item = ScrapeProtocol> + '_ {
        self.list[..self.len].iter().copied()
    }

    /// The `Accept` header for this list, weighted as Prometheus 2.49 weights it. The protobuf
    /// format is left out: this agent parses only the text formats.
    pub fn accept_header(&self) -> String {
        let mut weight = ScrapeProtocol::ALL.len() + 1;
        let mut vals = Vec::new();
        for p in self.iter() {
            if p != ScrapeProtocol::PrometheusProto {
                vals.push(format!("{};q=0.{weight}", p.media_type()));
            }
            weight -= 1;
        }
        vals.push(format!("*/*;q=0.{weight}"));
        vals.join(",")
    }
}

/// Scrape-level limits; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub body_size_limit: u64,
    pub sample_limit: u64,
    pub target_limit: u64,
    pub label_limit: u64,
    pub label_name_length_limit: u64,
    pub label_value_length_limit: u64,
}

/// A validated scrape config with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    pub job_name: String,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub track_timestamps_staleness: bool,
    pub params: BTreeMap<String, Vec<String>>,
    pub scrape_interval: PromDuration,
    pub scrape_timeout: PromDuration,
    pub enable_compression: bool,
    /// `None`: Prometheus 2.42's (and the old agent's) fixed preference.
    pub scrape_protocols: Option<ScrapeProtocols>,
    pub metrics_path: String,
    pub scheme: String,
    pub limits: Limits,
    pub relabel_configs: Vec<RelabelConfig>,
    pub metric_relabel_configs: Vec<RelabelConfig>,
    pub http_client: HttpClientSettings,
    pub static_configs: Vec<StaticConfig>,
    pub file_sd_configs: Vec<FileSdConfig>,
    pub http_sd_configs: Vec<HttpSd>,
    pub dns_sd_configs: Vec<DnsSdConfig>,
    pub kubernetes_sd_configs: Vec<KubernetesSd>,
    pub consul_sd_configs: Vec<ConsulSd>,
    /// Kinds present in the config that the scrape engine cannot run yet.
    pub unsupported_sd_kinds: Vec<String>,
}

/// Scrape defaults inherited from `global`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeDefaults {
    pub scrape_interval: PromDuration,
    pub scrape_timeout: PromDuration,
    pub scrape_protocols: Option<ScrapeProtocols>,
    pub limits: Limits,
}

impl Default for ScrapeDefaults {
    fn default() -> Self {
        ScrapeDefaults {
            scrape_interval: PromDuration::from_secs(60),
            scrape_timeout: PromDuration::from_secs(10),
            scrape_protocols: None,
            limits: Limits::default(),
        }
    }
}

impl ScrapeConfigRaw {
    /// The SD kinds accepted as written, with their entries.
    pub fn other_sd_configs(&self) -> [(&'static str, &Vec<serde_yaml::Value>); 23] {
        [
            ("azure_sd_configs", &self.azure_sd_configs),
            ("digitalocean_sd_configs", &self.digitalocean_sd_configs),
            ("docker_sd_configs", &self.docker_sd_configs),
            ("dockerswarm_sd_configs", &self.dockerswarm_sd_configs),
            ("ec2_sd_configs", &self.ec2_sd_configs),
            ("eureka_sd_configs", &self.eureka_sd_configs),
            ("gce_sd_configs", &self.gce_sd_configs),
            ("hetzner_sd_configs", &self.hetzner_sd_configs),
            ("ionos_sd_configs", &self.ionos_sd_configs),
            ("kuma_sd_configs", &self.kuma_sd_configs),
            ("lightsail_sd_configs", &self.lightsail_sd_configs),
            ("linode_sd_configs", &self.linode_sd_configs),
            ("marathon_sd_configs", &self.marathon_sd_configs),
            ("nerve_sd_configs", &self.nerve_sd_configs),
            ("nomad_sd_configs", &self.nomad_sd_configs),
            ("openstack_sd_configs", &self.openstack_sd_configs),
            ("ovhcloud_sd_configs", &self.ovhcloud_sd_configs),
            ("puppetdb_sd_configs", &self.puppetdb_sd_configs),
            ("scaleway_sd_configs", &self.scaleway_sd_configs),
            ("serverset_sd_configs", &self.serverset_sd_configs),
            ("triton_sd_configs", &self.triton_sd_configs),
            ("uyuni_sd_configs", &self.uyuni_sd_configs),
            ("vultr_sd_configs", &self.vultr_sd_configs),
        ]
    }

    /// Prometheus's per-scrape-config checks (everything that does not need the instance).
    /// Interval/timeout defaults and cross-config rules are applied by the instance config,
    /// in the old agent's order. Error paths are relative to this scrape config.
    pub fn validate_self(&self) -> Result<(), Invalid> {
        if self.job_name.is_empty() {
            return Err(Invalid::at("job_name is empty", path!["job_name"]));
        }
        if let Some(s) = &self.scheme {
            if s != "http" && s != "https" {
                return Err(Invalid::at(
                    format!("scheme must be \"http\" or \"https\", got {s:?}"),
                    path!["scheme"],
                ));
            }
        }
        if let Some(p) = &self.metrics_path {
            if !p.starts_with('/') {
                return Err(Invalid::at(
                    format!("metrics_path {p:?} must start with \"/\""),
                    path!["metrics_path"],
                ));
            }
        }
        self.http_client().validate()?;
        // Prometheus's check for URLs put in target groups, which relabelling could fix.
        if self.relabel_configs.is_empty() {
            for (i, s) in self.static_configs.iter().enumerate() {
                for (j, t) in s.targets.iter().enumerate() {
                    if t.contains('/') {
                        return Err(Invalid::at(
                            format!("{t:?} is not a valid hostname"),
                            path!["static_configs", i, "targets", j],
                        ));
                    }
                }
            }
        }
        for (i, s) in self.static_configs.iter().enumerate() {
            s.validate().map_err(|e| {
                // The label name at fault, when it is one.
                let key = s
                    .labels
                    .keys()
                    .find(|k| !super::url::is_valid_label_name(k));
                let mut path: Vec<Seg> = path!["static_configs", i].into();
                if let Some(k) = key {
                    path.extend([Seg::from("labels"), Seg::Key(k.clone().into())]);
                }
                Invalid::at(format!("static_configs[{i}]: {e}"), path)
            })?;
        }
        refresh_intervals_positive(
            "file_sd_configs",
            self.file_sd_configs.iter().map(|s| s.refresh_interval),
        )?;
        refresh_intervals_positive(
            "http_sd_configs",
            self.http_sd_configs.iter().map(|s| s.refresh_interval),
        )?;
        refresh_intervals_positive(
            "dns_sd_configs",
            self.dns_sd_configs.iter().map(|s| s.refresh_interval),
        )?;
        refresh_intervals_positive(
            "consul_sd_configs",
            self.consul_sd_configs.iter().map(|s| s.refresh_interval),
        )?;
        for (i, s) in self.file_sd_configs.iter().enumerate() {
            s.validate().map_err(|e| {
                Invalid::at(
                    format!("file_sd_configs[{i}]: {e}"),
                    path!["file_sd_configs", i],
                )
            })?;
        }
        for (i, s) in self.http_sd_configs.iter().enumerate() {
            s.validate().map_err(|e| {
                Invalid::at(
                    format!("http_sd_configs[{i}]: {e}"),
                    path!["http_sd_configs", i],
                )
            })?;
        }
        for (i, s) in self.dns_sd_configs.iter().enumerate() {
            s.validate().map_err(|e| {
                Invalid::at(
                    format!("dns_sd_configs[{i}]: {e}"),
                    path!["dns_sd_configs", i],
                )
            })?;
        }
        for (i, s) in self.kubernetes_sd_configs.iter().enumerate() {
            s.validate().map_err(|e| {
                Invalid::at(
                    format!("kubernetes_sd_configs[{i}]: {e}"),
                    path!["kubernetes_sd_configs", i],
                )
            })?;
        }
        for (i, s) in self.consul_sd_configs.iter().enumerate() {
            s.validate()
                .map_err(|e| format!("consul_sd_configs[{i}]: {e}"))?;
        }
        relabel::validate_all(&self.relabel_configs, "relabel_configs")?;
        relabel::validate_all(&self.metric_relabel_configs, "metric_relabel_configs")?;
        Ok(())
    }

    /// Applies defaults; `interval` and `timeout` were already resolved by the caller.
    pub fn resolve(
        &self,
        interval: PromDuration,
        timeout: PromDuration,
        defaults: &ScrapeDefaults,
    ) -> Result<ScrapeConfig, Invalid> {
        self.validate_self()?;
        let g = defaults.limits;
        let pick = |v: Option<u64>, d: u64| v.unwrap_or(d);
        Ok(ScrapeConfig {
            job_name: self.job_name.clone(),
            honor_labels: self.honor_labels.unwrap_or(false),
            honor_timestamps: self.honor_timestamps.unwrap_or(true),
            track_timestamps_staleness: self.track_timestamps_staleness.unwrap_or(false),
            params: self.params.clone(),
            scrape_interval: interval,
            scrape_timeout: timeout,
            enable_compression: self.enable_compression.unwrap_or(true),
            scrape_protocols: match &self.scrape_protocols {
                Some(names) => Some(
                    ScrapeProtocols::parse(names)
                        .map_err(|e| Invalid::at(e, path!["scrape_protocols"]))?,
                ),
                None => defaults.scrape_protocols,
            },
            metrics_path: self
                .metrics_path
                .clone()
                .unwrap_or_else(|| "/metrics".into()),
            scheme: self.scheme.clone().unwrap_or_else(|| "http".into()),
            limits: Limits {
                body_size_limit: self.body_size_limit.map_or(g.body_size_limit, |b| b.0),
                sample_limit: pick(self.sample_limit, g.sample_limit),
                target_limit: pick(self.target_limit, g.target_limit),
                label_limit: pick(self.label_limit, g.label_limit),
                label_name_length_limit: pick(
                    self.label_name_length_limit,
                    g.label_name_length_limit,
                ),
                label_value_length_limit: pick(
                    self.label_value_length_limit,
                    g.label_value_length_limit,
                ),
            },
            relabel_configs: relabel::validate_all(&self.relabel_configs, "relabel_configs")?,
            metric_relabel_configs: relabel::validate_all(
                &self.metric_relabel_configs,
                "metric_relabel_configs",
            )?,
            http_client: self.http_client().settings()?,
            static_configs: self.static_configs.clone(),
            file_sd_configs: self.file_sd_configs.clone(),
            http_sd_configs: self
                .http_sd_configs
                .iter()
                .map(HttpSdConfig::settings)
                .collect::<Result<_, _>>()?,
            dns_sd_configs: self.dns_sd_configs.clone(),
            kubernetes_sd_configs: self
                .kubernetes_sd_configs
                .iter()
                .map(KubernetesSdConfig::resolve)
                .collect::<Result<_, _>>()?,
            consul_sd_configs: self
                .consul_sd_configs
                .iter()
                .map(ConsulSdConfig::resolve)
                .collect::<Result<_, _>>()?,
            unsupported_sd_kinds: self
                .other_sd_configs()
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| (*k).to_owned())
                .collect(),
        })
    }

    /// The old agent's `dangerous_allow_reading_files` check for this scrape config: the error
    /// text of its first violation, with the old agent's prefixes, or `None`.
    pub fn file_reading_violation(&self, index: usize) -> Option<String> {
        let msg = |field: &str| {
            format!("{field} must be empty unless dangerous_allow_reading_files is set")
        };
        if let Some(f) = self.http_client().first_file_field() {
            return Some(format!(
                "failed to validate scrape_config at index {index}: {}",
                msg(f)
            ));
        }
        // SD configs in the order Prometheus lists them; index j counts across kinds.
        let mut j = 0;
        let sd_err = |j: usize, e: String| {
            Some(format!(
                "failed to validate service discovery at index {j} within scrape_config at index {index}: {e}"
            ))
        };
        for c in &self.http_sd_configs {
            if let Some(f) = c.http_client().first_file_field() {
                return sd_err(j, msg(f));
            }
            j += 1;
        }
        for c in &self.kubernetes_sd_configs {
            if let Some(f) = c.http_client().first_file_field() {
                return sd_err(j, msg(f));
            }
            j += 1;
        }
        // Beyond the old agent, which allowed file_sd_configs: its globs let an API client make
        // the agent read any path its user can (`/dev/zero` never ends, `/proc/…` leaks through
        // target labels and parse errors), which is what this rule exists to stop.
        if !self.file_sd_configs.is_empty() {
            return sd_err(j + self.static_configs.len(), msg("file_sd_configs"));
        }
        j += self.static_configs.len() + self.dns_sd_configs.len();
        let mut consul_done = false;
        for (kind, values) in self.other_sd_configs() {
            // consul is checked in its alphabetical place among the others, TLS files only.
            if !consul_done && kind > "consul_sd_configs" {
                consul_done = true;
                for c in &self.consul_sd_configs {
                    if let Some(f) = c.http_client().first_tls_file_field() {
                        return sd_err(j, msg(f));
                    }
                    j += 1;
                }
            }
            let check = OTHER_SD_KINDS
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(FileCheck::Unknown, |(_, c)| *c);
            for v in values {
                let found = match check {
                    FileCheck::None => None,
                    FileCheck::TlsOnly => opaque_tls_file_field(v),
                    FileCheck::HttpClient => opaque_http_file_field(v).or_else(|| {
                        (kind == "marathon_sd_configs" && opaque_str(v, &["auth_token_file"]))
                            .then_some("auth_token_file")
                    }),
                    FileCheck::Unknown => {
                        let name = kind.trim_end_matches("_sd_configs");
                        return sd_err(
                            j,
                            format!(
                                "unknown service discovery {name}; rejecting config for safety. set dangerous_allow_reading_files to ignore"
                            ),
                        );
                    }
                };
                if let Some(f) = found {
                    return sd_err(j, msg(f));
                }
                j += 1;
            }
        }
        None
    }
}

fn opaque_str(v: &serde_yaml::Value, path: &[&str]) -> bool {
    let mut cur = v;
    for p in path {
        match cur.get(*p) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    cur.as_str().is_some_and(|s| !s.is_empty())
}

fn opaque_tls_file_field(v: &serde_yaml::Value) -> Option<&'static str> {
    ["ca_file", "cert_file", "key_file"]
        .into_iter()
        .find(|f| opaque_str(v, &["tls_config", f]))
}

fn opaque_http_file_field(v: &serde_yaml::Value) -> Option<&'static str> {
    if opaque_str(v, &["bearer_token_file"]) {
        return Some("bearer_token_file");
    }
    if opaque_str(v, &["basic_auth", "password_file"]) {
        return Some("password_file");
    }
    if opaque_str(v, &["authorization", "credentials_file"]) {
        return Some("credentials_file");
    }
    if opaque_str(v, &["oauth2", "client_secret_file"]) {
        return Some("client_secret_file");
    }
    opaque_tls_file_field(v).or_else(|| v.get("oauth2").and_then(opaque_tls_file_field))
}

/// A service discovery's `refresh_interval` of 0 is refused, naming the entry: Prometheus
/// starts a ticker with it, which panics after the first refresh, and here it would be a
/// refresh loop without a pause.
fn refresh_intervals_positive(
    kind: &'static str,
    intervals: impl Iterator<Item = Option<PromDuration>>,
) -> Result<(), Invalid> {
    for (i, r) in intervals.enumerate() {
        if r.is_some_and(PromDuration::is_zero) {
            return Err(Invalid::at(
                format!("{kind}[{i}]: refresh_interval must be greater than 0s"),
                path![kind, i, "refresh_interval"],
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_booleans_are_false_as_in_prometheus() {
        let raw: ScrapeConfigRaw =
            serde_yaml::from_str("job_name: a\nhonor_timestamps: null\nenable_compression:\n")
                .unwrap();
        assert_eq!(
            (raw.honor_timestamps, raw.enable_compression),
            (Some(false), Some(false))
        );
        let raw: ScrapeConfigRaw = serde_yaml::from_str("job_name: a\n").unwrap();
        assert_eq!((raw.honor_timestamps, raw.enable_compression), (None, None));
    }

    #[test]
    fn scrape_protocols_as_prometheus_2_49() {
        let names = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let p = ScrapeProtocols::parse(&names(&[
            "PrometheusProto",
            "OpenMetricsText1.0.0",
            "PrometheusText0.0.4",
        ]))
        .unwrap();
        assert_eq!(
            p.accept_header(),
            "application/openmetrics-text;version=1.0.0;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        );
        assert_eq!(
            ScrapeProtocols::parse(&[]).unwrap_err(),
            "scrape_protocols cannot be empty"
        );
        assert_eq!(
            ScrapeProtocols::parse(&names(&["PrometheusText0.0.4", "PrometheusText0.0.4"]))
                .unwrap_err(),
            "duplicated protocol in scrape_protocols, got [PrometheusText0.0.4 PrometheusText0.0.4]"
        );
        assert!(ScrapeProtocols::parse(&names(&["prometheustext0.0.4"]))
            .unwrap_err()
            .starts_with("scrape_protocols: unknown scrape protocol prometheustext0.0.4, supported: [OpenMetricsText0.0.1 "));
    }
}
