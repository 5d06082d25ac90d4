//! Service discovery configs inside a scrape config.
//!
//! static, file, http, dns and kubernetes are parsed strictly and validated. The other
//! Prometheus SD kinds are accepted as written (so configs that use them pass `config check`
//! and round-trip through the API unchanged); the scrape engine refuses them at run time with
//! an error naming the kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::PromDuration;
use super::http::with_http_client;
use super::url::{is_valid_label_name, ConfigUrl};

/// A target group of `static_configs` (also the file_sd and http_sd payload).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl StaticConfig {
    pub fn validate(&self) -> Result<(), String> {
        // Targets may hold URLs only when relabelling rewrites them (blackbox probes): the
        // scrape config refuses a URL target when it has no relabel_configs, as Prometheus does.
        for name in self.labels.keys() {
            if !is_valid_label_name(name) {
                return Err(format!("{name:?} is not a valid label name"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSdConfig {
    #[serde(default)]
    pub files: Vec<String>,
    /// Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<PromDuration>,
}

impl FileSdConfig {
    pub const DEFAULT_REFRESH: PromDuration = PromDuration::from_secs(300);

    pub fn validate(&self) -> Result<(), String> {
        if self.files.is_empty() {
            return Err("file service discovery config must contain at least one path name".into());
        }
        for f in &self.files {
            let ok = [".json", ".yml", ".yaml"]
                .iter()
                .any(|ext| f.ends_with(ext));
            // Only the last path element may be a glob pattern.
            let dir_has_glob = std::path::Path::new(f)
                .parent()
                .is_some_and(|p| p.to_string_lossy().contains(['*', '?', '[']));
            if !ok || dir_has_glob {
                return Err(format!("path name {f:?} is not valid for file discovery"));
            }
        }
        Ok(())
    }
}

with_http_client! {
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HttpSdConfig {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub url: Option<ConfigUrl>,
        /// Default 60s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub refresh_interval: Option<PromDuration>,
    }
}

/// A validated `http_sd_configs` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSd {
    pub url: ConfigUrl,
    pub refresh_interval: PromDuration,
    pub http_client: super::http::HttpClientSettings,
}

impl HttpSdConfig {
    pub const DEFAULT_REFRESH: PromDuration = PromDuration::from_secs(60);

    pub fn validate(&self) -> Result<(), String> {
        self.settings().map(drop)
    }

    /// Prometheus's checks, with its texts, into the validated entry.
    pub fn settings(&self) -> Result<HttpSd, String> {
        let url = self.url.as_ref().ok_or("URL is missing")?;
        if !matches!(url.as_url().scheme(), "http" | "https") {
            return Err("URL scheme must be 'http' or 'https'".into());
        }
        if url.as_url().host_str().is_none_or(str::is_empty) {
            return Err("host is missing in URL".into());
        }
        Ok(HttpSd {
            url: url.clone(),
            refresh_interval: self.refresh_interval.unwrap_or(Self::DEFAULT_REFRESH),
            http_client: self.http_client().settings()?,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSdConfig {
    #[serde(default)]
    pub names: Vec<String>,
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<PromDuration>,
    /// SRV (default), A, AAAA, MX or NS.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl DnsSdConfig {
    pub const DEFAULT_REFRESH: PromDuration = PromDuration::from_secs(30);

    pub fn record_type(&self) -> &str {
        self.kind.as_deref().unwrap_or("SRV")
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.names.is_empty() {
            return Err("DNS-SD config must contain at least one SRV record name".into());
        }
        // Prometheus upper-cases the type before checking it.
        match self.record_type().to_ascii_uppercase().as_str() {
            "SRV" => Ok(()),
            "A" | "AAAA" | "MX" | "NS" => {
                if self.port.is_none_or(|p| p == 0) {
                    Err(
                        "a port is required in DNS-SD configs for all record types except SRV"
                            .into(),
                    )
                } else {
                    Ok(())
                }
            }
            other => Err(format!("invalid DNS-SD records type {other}")),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesNamespaces {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_namespace: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSelector {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesAttachMetadata {
    #[serde(default)]
    pub node: bool,
}

with_http_client! {
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct KubernetesSdConfig {
        #[serde(default)]
        pub role: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub api_server: Option<ConfigUrl>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kubeconfig_file: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespaces: Option<KubernetesNamespaces>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub selectors: Vec<KubernetesSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub attach_metadata: Option<KubernetesAttachMetadata>,
    }
}

const KUBERNETES_ROLES: [&str; 6] = [
    "endpoints",
    "endpointslice",
    "service",
    "pod",
    "node",
    "ingress",
];

impl KubernetesSdConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.role.is_empty() {
            return Err(
                "role missing (one of: pod, service, endpoints, endpointslice, node, ingress)"
                    .into(),
            );
        }
        if !KUBERNETES_ROLES.contains(&self.role.as_str()) {
            return Err(format!("unknown Kubernetes SD role {:?}", self.role));
        }
        if self.api_server.is_some() && self.kubeconfig_file.is_some() {
            return Err("cannot use 'kubeconfig_file' and 'api_server' simultaneously".into());
        }
        for s in &self.selectors {
            if !KUBERNETES_ROLES.contains(&s.role.as_str()) {
                return Err(format!("invalid selector role {:?}", s.role));
            }
        }
        self.http_client().validate()
    }
}

/// The SD kinds Prometheus knows that this version accepts in configs but cannot run yet.
/// The old agent's `dangerous_allow_reading_files` check treats them in three groups.
pub const OTHER_SD_KINDS: &[(&str, FileCheck)] = &[
    ("azure_sd_configs", FileCheck::None),
    ("consul_sd_configs", FileCheck::TlsOnly),
    ("digitalocean_sd_configs", FileCheck::HttpClient),
    ("docker_sd_configs", FileCheck::Unknown),
    ("dockerswarm_sd_configs", FileCheck::HttpClient),
    ("ec2_sd_configs", FileCheck::None),
    ("eureka_sd_configs", FileCheck::HttpClient),
    ("gce_sd_configs", FileCheck::None),
    ("hetzner_sd_configs", FileCheck::HttpClient),
    ("ionos_sd_configs", FileCheck::Unknown),
    ("kuma_sd_configs", FileCheck::Unknown),
    ("lightsail_sd_configs", FileCheck::Unknown),
    ("linode_sd_configs", FileCheck::HttpClient),
    ("marathon_sd_configs", FileCheck::HttpClient),
    ("nerve_sd_configs", FileCheck::None),
    ("nomad_sd_configs", FileCheck::Unknown),
    ("openstack_sd_configs", FileCheck::TlsOnly),
    ("ovhcloud_sd_configs", FileCheck::Unknown),
    ("puppetdb_sd_configs", FileCheck::Unknown),
    ("scaleway_sd_configs", FileCheck::HttpClient),
    ("serverset_sd_configs", FileCheck::None),
    ("triton_sd_configs", FileCheck::TlsOnly),
    ("uyuni_sd_configs", FileCheck::Unknown),
    ("vultr_sd_configs", FileCheck::Unknown),
];

/// How the old agent's `validateNofiles` treats an SD kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCheck {
    /// No file fields to check.
    None,
    /// Only `tls_config.{ca,cert,key}_file`.
    TlsOnly,
    /// The full HTTP client check.
    HttpClient,
    /// Not known to the old agent: rejected unless reading files is allowed.
    Unknown,
}
