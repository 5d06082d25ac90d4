//! Service discovery configs inside a scrape config.
//!
//! static, file, http, dns, kubernetes and consul are parsed strictly and validated. The other
//! Prometheus SD kinds are accepted as written (so configs that use them pass `config check`
//! and round-trip through the API unchanged); the scrape engine refuses them at run time with
//! an error naming the kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::PromDuration;
use super::http::{with_http_client, BasicAuth, HttpClientConfig, HttpClientSettings, TlsConfig};
use super::kubernetes_selector::{check_field_selector, check_label_selector};
use super::secret::Secret;
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
    #[serde(default, deserialize_with = "known_role")]
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
        #[serde(default, deserialize_with = "known_role")]
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

/// A role as written, refused while parsing when unknown (as Prometheus does, so the error
/// carries the line and comes before any other check).
fn known_role<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = super::duration::scalar_string(d)?;
    KubernetesRole::parse(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

/// A Kubernetes SD role: which kind of object becomes a target group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KubernetesRole {
    Node,
    Pod,
    Service,
    Endpoints,
    EndpointSlice,
    Ingress,
}

impl KubernetesRole {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "node" => KubernetesRole::Node,
            "pod" => KubernetesRole::Pod,
            "service" => KubernetesRole::Service,
            "endpoints" => KubernetesRole::Endpoints,
            "endpointslice" => KubernetesRole::EndpointSlice,
            "ingress" => KubernetesRole::Ingress,
            _ => return Err(format!("unknown Kubernetes SD role {s:?}")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KubernetesRole::Node => "node",
            KubernetesRole::Pod => "pod",
            KubernetesRole::Service => "service",
            KubernetesRole::Endpoints => "endpoints",
            KubernetesRole::EndpointSlice => "endpointslice",
            KubernetesRole::Ingress => "ingress",
        }
    }

    /// The roles whose selectors apply to an SD of this role (it watches their objects).
    fn allowed_selectors(self) -> &'static [&'static str] {
        match self {
            KubernetesRole::Pod => &["pod"],
            KubernetesRole::Service => &["service"],
            KubernetesRole::EndpointSlice => &["pod", "service", "endpointslice"],
            KubernetesRole::Endpoints => &["pod", "service", "endpoints"],
            KubernetesRole::Node => &["node"],
            KubernetesRole::Ingress => &["ingress"],
        }
    }
}

impl std::fmt::Display for KubernetesRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the Kubernetes API is and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub enum KubernetesApi {
    /// `api_server`, with the HTTP client fields of the block.
    Server {
        url: ConfigUrl,
        http_client: Box<HttpClientSettings>,
    },
    /// Neither `api_server` nor `kubeconfig_file`: the pod's service account
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT`, token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount/`), read when discovery starts.
    InCluster,
    /// `kubeconfig_file`, as written (relative to the config's directory), read when discovery
    /// starts.
    Kubeconfig(String),
}

/// The label and field selectors sent with the list and watch requests of one role's objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSelector {
    pub label: String,
    pub field: String,
}

/// A validated `kubernetes_sd_config`.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesSd {
    pub role: KubernetesRole,
    pub api: KubernetesApi,
    /// `namespaces.names`; empty with `own_namespace` false means every namespace.
    pub namespaces: Vec<String>,
    pub own_namespace: bool,
    /// Per watched role (see `KubernetesRole::allowed_selectors`).
    pub selectors: BTreeMap<KubernetesRole, ResourceSelector>,
    /// `attach_metadata.node`: node labels on pod, endpoints and endpointslice targets.
    pub attach_node_metadata: bool,
}

impl KubernetesSd {
    /// The selector for objects of `role` (empty when none is configured).
    pub fn selector(&self, role: KubernetesRole) -> ResourceSelector {
        self.selectors.get(&role).cloned().unwrap_or_default()
    }
}

/// Whether `c` is Prometheus's default HTTP client config (nothing set; `follow_redirects` and
/// `enable_http2` true): only then may it go with in-cluster config or `kubeconfig_file`.
fn is_default_http_client(c: &HttpClientConfig) -> bool {
    let unset_secret = |s: &Option<Secret>| s.as_ref().is_none_or(Secret::is_empty);
    let unset_str = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    c.basic_auth.is_none()
        && c.authorization.is_none()
        && c.oauth2.is_none()
        && unset_secret(&c.bearer_token)
        && unset_str(&c.bearer_token_file)
        && c.tls_config
            .as_ref()
            .is_none_or(|t| *t == TlsConfig::default())
        && c.proxy_url.is_none()
        && unset_str(&c.no_proxy)
        && c.proxy_from_environment != Some(true)
        && c.proxy_connect_header.is_empty()
        && c.follow_redirects != Some(false)
        && c.enable_http2 != Some(false)
}

impl KubernetesSdConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.resolve().map(drop)
    }

    /// Prometheus's checks, in its order and with its texts, and the validated value.
    pub fn resolve(&self) -> Result<KubernetesSd, String> {
        // Prometheus refuses unknown roles while decoding, before any other check.
        let role = if self.role.is_empty() {
            None
        } else {
            Some(KubernetesRole::parse(&self.role)?)
        };
        for s in &self.selectors {
            if !s.role.is_empty() {
                KubernetesRole::parse(&s.role)?;
            }
        }
        let role = role.ok_or(
            "role missing (one of: pod, service, endpoints, endpointslice, node, ingress)",
        )?;
        let raw_http = self.http_client();
        let http_client = raw_http.settings()?;
        let custom_http = !is_default_http_client(&raw_http);
        let kubeconfig = self.kubeconfig_file.as_deref().filter(|f| !f.is_empty());
        let own_namespace = self.namespaces.as_ref().is_some_and(|n| n.own_namespace);
        if self.api_server.is_some() && kubeconfig.is_some() {
            return Err("cannot use 'kubeconfig_file' and 'api_server' simultaneously".into());
        }
        if kubeconfig.is_some() && custom_http {
            return Err(
                "cannot use a custom HTTP client configuration together with 'kubeconfig_file'"
                    .into(),
            );
        }
        if self.api_server.is_none() && custom_http {
            return Err("to use custom HTTP client configuration please provide the 'api_server' URL explicitly".into());
        }
        if self.api_server.is_some() && own_namespace {
            return Err(
                "cannot use 'api_server' and 'namespaces.own_namespace' simultaneously".into(),
            );
        }
        if kubeconfig.is_some() && own_namespace {
            return Err(
                "cannot use 'kubeconfig_file' and 'namespaces.own_namespace' simultaneously".into(),
            );
        }
        let mut selectors = BTreeMap::new();
        for s in &self.selectors {
            // An empty selector role is Go's zero value: it fits no SD role.
            let sel_role = KubernetesRole::parse(&s.role).ok();
            if selectors.contains_key(&sel_role) {
                return Err(format!("duplicated selector role: {}", s.role));
            }
            let allowed = role.allowed_selectors();
            if !allowed.contains(&s.role.as_str()) {
                return Err(format!(
                    "{role} role supports only {} selectors",
                    allowed.join(", ")
                ));
            }
            let field = s.field.clone().unwrap_or_default();
            let label = s.label.clone().unwrap_or_default();
            check_field_selector(&field)?;
            check_label_selector(&label)?;
            selectors.insert(sel_role, ResourceSelector { label, field });
        }
        let api = match (&self.api_server, kubeconfig) {
            (Some(url), _) => KubernetesApi::Server {
                url: url.clone(),
                http_client: Box::new(http_client),
            },
            (None, Some(path)) => KubernetesApi::Kubeconfig(path.to_owned()),
            (None, None) => KubernetesApi::InCluster,
        };
        Ok(KubernetesSd {
            role,
            api,
            namespaces: self
                .namespaces
                .as_ref()
                .map(|n| n.names.clone())
                .unwrap_or_default(),
            own_namespace,
            selectors: selectors
                .into_iter()
                .filter_map(|(r, s)| r.map(|r| (r, s)))
                .collect(),
            attach_node_metadata: self.attach_metadata.as_ref().is_some_and(|a| a.node),
        })
    }
}

with_http_client! {
    /// `consul_sd_configs`: Consul's catalog, watched with blocking queries.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ConsulSdConfig {
        /// Default `localhost:8500`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub server: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub path_prefix: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub token: Option<Secret>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub datacenter: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub partition: Option<String>,
        /// Default `,`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tag_separator: Option<String>,
        /// Default `http`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scheme: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password: Option<Secret>,
        /// Default true.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub allow_stale: Option<bool>,
        /// Default 30s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub refresh_interval: Option<PromDuration>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub services: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub tags: Vec<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub node_meta: BTreeMap<String, String>,
    }
}

/// A validated `consul_sd_config`, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsulSd {
    /// `host:port` (a `http://` or `https://` prefix sets the scheme, a path after it the prefix).
    pub server: String,
    pub path_prefix: String,
    pub scheme: String,
    pub token: Option<Secret>,
    pub datacenter: String,
    pub namespace: String,
    pub partition: String,
    pub tag_separator: String,
    pub allow_stale: bool,
    pub refresh_interval: PromDuration,
    pub services: Vec<String>,
    pub tags: Vec<String>,
    pub node_meta: BTreeMap<String, String>,
    /// The HTTP client fields, `username`/`password` folded into `basic_auth`.
    pub http_client: HttpClientSettings,
}

impl ConsulSdConfig {
    pub const DEFAULT_SERVER: &'static str = "localhost:8500";
    pub const DEFAULT_REFRESH: PromDuration = PromDuration::from_secs(30);

    pub fn validate(&self) -> Result<(), String> {
        self.resolve().map(drop)
    }

    /// Prometheus's checks and texts, and the validated value.
    pub fn resolve(&self) -> Result<ConsulSd, String> {
        let server = self
            .server
            .clone()
            .unwrap_or_else(|| Self::DEFAULT_SERVER.to_owned());
        if server.trim().is_empty() {
            return Err("consul SD configuration requires a server address".into());
        }
        let mut http_client = self.http_client();
        let username = self.username.clone().unwrap_or_default();
        let password = self.password.clone().unwrap_or_default();
        if !username.is_empty() || !password.is_empty() {
            if http_client.basic_auth.is_some() {
                return Err("at most one of consul SD configuration username and password and basic auth can be configured".into());
            }
            http_client.basic_auth = Some(BasicAuth {
                username,
                password: Some(password),
                ..BasicAuth::default()
            });
        }
        let token = self.token.clone().filter(|t| !t.is_empty());
        if token.is_some() && (http_client.authorization.is_some() || http_client.oauth2.is_some())
        {
            return Err(
                "at most one of consul SD token, authorization, or oauth2 can be configured".into(),
            );
        }
        let http_client = http_client.settings()?;
        // Beyond Prometheus, which accepts any scheme and fails on every request.
        let scheme = self.scheme.clone().unwrap_or_else(|| "http".into());
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "scheme must be \"http\" or \"https\", got {scheme:?}"
            ));
        }
        Ok(ConsulSd {
            server,
            path_prefix: self.path_prefix.clone().unwrap_or_default(),
            scheme,
            token,
            datacenter: self.datacenter.clone().unwrap_or_default(),
            namespace: self.namespace.clone().unwrap_or_default(),
            partition: self.partition.clone().unwrap_or_default(),
            tag_separator: self.tag_separator.clone().unwrap_or_else(|| ",".into()),
            allow_stale: self.allow_stale.unwrap_or(true),
            refresh_interval: self.refresh_interval.unwrap_or(Self::DEFAULT_REFRESH),
            services: self.services.clone(),
            tags: self.tags.clone(),
            node_meta: self.node_meta.clone(),
            http_client,
        })
    }
}

/// The SD kinds Prometheus knows that this version accepts in configs but cannot run yet.
/// The old agent's `dangerous_allow_reading_files` check treats them in three groups.
pub const OTHER_SD_KINDS: &[(&str, FileCheck)] = &[
    ("azure_sd_configs", FileCheck::None),
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
