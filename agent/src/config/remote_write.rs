//! Prometheus `remote_write` config, with the old agent's overridden defaults
//! (`send_exemplars: true`, `queue_config.retry_on_http_429: true`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::PromDuration;
use super::http::with_http_client;
use super::relabel::RelabelConfigRaw;
use super::url::ConfigUrl;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfigRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shards: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_shards: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples_per_send: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_send_deadline: Option<PromDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_backoff: Option<PromDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<PromDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_http_429: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_age_limit: Option<PromDuration>,
}

/// Queue settings with defaults applied (Prometheus v2.49 defaults, as the old agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub capacity: usize,
    pub max_shards: usize,
    pub min_shards: usize,
    pub max_samples_per_send: usize,
    pub batch_send_deadline: PromDuration,
    pub min_backoff: PromDuration,
    pub max_backoff: PromDuration,
    pub retry_on_http_429: bool,
    pub sample_age_limit: PromDuration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 10_000,
            max_shards: 50,
            min_shards: 1,
            max_samples_per_send: 2_000,
            batch_send_deadline: PromDuration::from_secs(5),
            min_backoff: PromDuration::from_millis(30),
            max_backoff: PromDuration::from_secs(5),
            retry_on_http_429: true,
            sample_age_limit: PromDuration::from_millis(0),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfigRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_interval: Option<PromDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples_per_send: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataConfig {
    pub send: bool,
    pub send_interval: PromDuration,
    pub max_samples_per_send: usize,
}

with_http_client! {
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RemoteWriteConfigRaw {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub url: Option<ConfigUrl>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub remote_timeout: Option<PromDuration>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub headers: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub write_relabel_configs: Vec<RelabelConfigRaw>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub send_exemplars: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub send_native_histograms: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub queue_config: Option<QueueConfigRaw>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub metadata_config: Option<MetadataConfigRaw>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sigv4: Option<serde_yaml::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub azuread: Option<serde_yaml::Value>,
    }
}

/// Headers remote_write sets itself; Prometheus refuses to let configs change them.
const RESERVED_HEADERS: [&str; 12] = [
    "authorization",
    "host",
    "content-encoding",
    "content-length",
    "content-type",
    "user-agent",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "www-authenticate",
    "x-prometheus-remote-write-version",
];

impl RemoteWriteConfigRaw {
    /// Prometheus's checks of one remote_write entry.
    pub fn validate_self(&self) -> Result<(), String> {
        let url = self.url.as_ref().ok_or("url for remote_write is empty")?;
        if !matches!(url.as_url().scheme(), "http" | "https") {
            return Err(format!("remote_write url {url} must use http or https"));
        }
        for h in self.headers.keys() {
            if RESERVED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                return Err(format!("{h} is a reserved header. It must not be changed"));
            }
        }
        let auths = [
            self.basic_auth.is_some(),
            self.authorization.is_some(),
            self.oauth2.is_some(),
            self.sigv4.is_some(),
            self.azuread.is_some(),
        ];
        if auths.iter().filter(|b| **b).count() > 1 {
            return Err("at most one of basic_auth, authorization, oauth2, sigv4, & azuread must be configured".into());
        }
        self.http_client().validate()?;
        for (i, r) in self.write_relabel_configs.iter().enumerate() {
            r.validate()
                .map_err(|e| format!("write_relabel_configs[{i}]: {e}"))?;
        }
        if let Some(q) = &self.queue_config {
            let q = q.resolve();
            if q.min_shards > q.max_shards {
                return Err("queue_config: min_shards must not be greater than max_shards".into());
            }
        }
        Ok(())
    }

    pub fn queue(&self) -> QueueConfig {
        self.queue_config
            .as_ref()
            .map(QueueConfigRaw::resolve)
            .unwrap_or_default()
    }

    pub fn metadata(&self) -> MetadataConfig {
        let m = self.metadata_config.clone().unwrap_or_default();
        MetadataConfig {
            send: m.send.unwrap_or(true),
            send_interval: m.send_interval.unwrap_or(PromDuration::from_secs(60)),
            max_samples_per_send: m.max_samples_per_send.unwrap_or(500),
        }
    }

    pub fn send_exemplars(&self) -> bool {
        self.send_exemplars.unwrap_or(true)
    }

    pub fn remote_timeout(&self) -> PromDuration {
        self.remote_timeout.unwrap_or(PromDuration::from_secs(30))
    }

    /// The hash the old agent uses to name unnamed remote_writes: the first 6 hex digits of
    /// md5 over the JSON of the entry. Our JSON is not byte-identical to Go's, so the suffix
    /// differs from the old agent's; it is stable for a given config, which is what it is for.
    pub fn content_hash6(&self) -> String {
        use md5::Digest;
        let json = super::secret::reveal_secrets(|| serde_json::to_vec(self)).unwrap_or_default();
        hex::encode(md5::Md5::digest(&json))[..6].to_owned()
    }
}

impl QueueConfigRaw {
    pub fn resolve(&self) -> QueueConfig {
        let d = QueueConfig::default();
        QueueConfig {
            capacity: self.capacity.unwrap_or(d.capacity),
            max_shards: self.max_shards.unwrap_or(d.max_shards),
            min_shards: self.min_shards.unwrap_or(d.min_shards),
            max_samples_per_send: self.max_samples_per_send.unwrap_or(d.max_samples_per_send),
            batch_send_deadline: self.batch_send_deadline.unwrap_or(d.batch_send_deadline),
            min_backoff: self.min_backoff.unwrap_or(d.min_backoff),
            max_backoff: self.max_backoff.unwrap_or(d.max_backoff),
            retry_on_http_429: self.retry_on_http_429.unwrap_or(d.retry_on_http_429),
            sample_age_limit: self.sample_age_limit.unwrap_or(d.sample_age_limit),
        }
    }
}
