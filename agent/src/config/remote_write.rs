//! Prometheus `remote_write` config, with the old agent's overridden defaults
//! (`send_exemplars: true`, `queue_config.retry_on_http_429: true`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::PromDuration;
use super::http::{with_http_client, HttpClientSettings};
use super::relabel::{RelabelConfig, RelabelConfigRaw};
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
        #[serde(
            default,
            deserialize_with = "super::relabel::write_rules",
            skip_serializing_if = "Vec::is_empty"
        )]
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
        pub sigv4: Option<super::http::SigV4Config>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub azuread: Option<super::http::AzureAdConfig>,
    }
}

/// The most shards `queue_config.min_shards` may start with. Prometheus has no limit; a value
/// past this one is a typo that would take the process down at start (out of memory), and with
/// it every agent the config is assigned to.
pub const MAX_MIN_SHARDS: usize = 10_000;

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

/// A validated remote_write entry: everything the instance runs with, checked and compiled
/// once when the config is accepted. It can only be made by [`RemoteWriteConfigRaw::validate`]
/// (and renamed by the instance groups), so no component downstream sees an unvalidated value.
///
/// ```compile_fail
/// // Building one by hand, around validation, does not compile (it did while the instance
/// // compiled `write_relabel_configs` again at run time and sent everything when that failed):
/// let rw = agent::config::instance::RemoteWriteConfig {
///     name: "r".into(),
///     raw: Default::default(),
/// };
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWriteConfig {
    /// Unique within the instance (the configured name, or one the instance generated).
    pub name: String,
    pub url: ConfigUrl,
    pub remote_timeout: PromDuration,
    /// Extra headers, names and values checked (reserved names refused).
    pub headers: reqwest::header::HeaderMap,
    /// Compiled rules, applied to each series before it is sent.
    pub write_relabel_configs: Vec<RelabelConfig>,
    pub send_exemplars: bool,
    pub send_native_histograms: bool,
    pub queue: QueueConfig,
    pub metadata: MetadataConfig,
    /// TLS, proxy and the one auth (basic, authorization, oauth2, sigv4 or azuread).
    pub http: HttpClientSettings,
    /// The entry as written: its identity for instance groups and generated names, never read
    /// to run it.
    as_written: RemoteWriteConfigRaw,
}

impl RemoteWriteConfig {
    /// The entry as written (hashed for instance groups and generated names).
    pub fn as_written(&self) -> &RemoteWriteConfigRaw {
        &self.as_written
    }

    /// The same entry under another name, its written `name` field cleared (instance groups
    /// name their merged remote_writes by content).
    pub fn renamed(&self, name: String) -> RemoteWriteConfig {
        RemoteWriteConfig {
            name,
            as_written: RemoteWriteConfigRaw {
                name: None,
                ..self.as_written.clone()
            },
            ..self.clone()
        }
    }
}

impl RemoteWriteConfigRaw {
    /// Prometheus's checks of one remote_write entry (for `global.remote_write`, which is
    /// validated again, named, by each instance that inherits it).
    pub fn validate_self(&self) -> Result<(), String> {
        self.validate(String::new()).map(drop)
    }

    /// Prometheus's checks of one remote_write entry, with its texts, into the validated entry
    /// named `name`.
    pub fn validate(&self, name: String) -> Result<RemoteWriteConfig, String> {
        let url = self.url.as_ref().ok_or("url for remote_write is empty")?;
        if !matches!(url.as_url().scheme(), "http" | "https") {
            return Err(format!("remote_write url {url} must use http or https"));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (h, v) in &self.headers {
            let lower = h.to_ascii_lowercase();
            if lower == "authorization" {
                return Err("authorization header must be changed via the basic_auth, authorization, oauth2, sigv4, or azuread parameter".into());
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(format!("{h} is a reserved header. It must not be changed"));
            }
            let name = reqwest::header::HeaderName::from_bytes(h.as_bytes())
                .map_err(|e| format!("header {h:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("header {h:?}: {e}"))?;
            headers.insert(name, value);
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
        let mut http = self.http_client().settings()?;
        if let Some(sigv4) = &self.sigv4 {
            http.auth = super::http::Auth::SigV4(Box::new(sigv4.settings()?));
        }
        if let Some(azuread) = &self.azuread {
            http.auth = super::http::Auth::AzureAd(Box::new(azuread.settings()?));
        }
        let write_relabel_configs =
            super::relabel::validate_all(&self.write_relabel_configs, "write_relabel_configs")?;
        let queue = self.queue();
        if queue.min_shards > queue.max_shards {
            return Err("queue_config: min_shards must not be greater than max_shards".into());
        }
        if queue.min_shards > MAX_MIN_SHARDS {
            return Err(format!(
                "queue_config: min_shards {} is more than {MAX_MIN_SHARDS}: every shard starts at once, each a task with its own batch buffers",
                queue.min_shards
            ));
        }
        Ok(RemoteWriteConfig {
            name,
            url: url.clone(),
            remote_timeout: self.remote_timeout(),
            headers,
            write_relabel_configs,
            send_exemplars: self.send_exemplars(),
            send_native_histograms: self.send_native_histograms.unwrap_or(false),
            queue,
            metadata: self.metadata(),
            http,
            as_written: self.clone(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(yaml: &str) -> Result<RemoteWriteConfig, String> {
        let raw: RemoteWriteConfigRaw = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        raw.validate("r".into())
    }

    #[test]
    fn validated_entry_holds_compiled_and_typed_values() {
        let rw = validate(
            "url: http://r/push\nremote_timeout: 5s\nheaders:\n  X-Scope-OrgID: t1\nwrite_relabel_configs:\n  - source_labels: [__name__]\n    regex: 'up|keep_.*'\n    action: keep\nqueue_config:\n  max_shards: 3\nmetadata_config:\n  send: false\nbearer_token: tok\n",
        )
        .unwrap();
        assert_eq!(rw.name, "r");
        assert_eq!(rw.remote_timeout, PromDuration::from_secs(5));
        assert_eq!(rw.headers["x-scope-orgid"], "t1");
        assert_eq!(rw.write_relabel_configs.len(), 1);
        assert!(rw.write_relabel_configs[0].regex.is_match("keep_me"));
        assert_eq!(rw.queue.max_shards, 3);
        assert_eq!(rw.queue.capacity, QueueConfig::default().capacity);
        assert!(!rw.metadata.send);
        assert!(rw.send_exemplars);
        assert!(matches!(
            rw.http.auth,
            crate::config::http::Auth::Authorization { ref kind, .. } if kind == "Bearer"
        ));
        assert_eq!(rw.renamed("g-1".into()).name, "g-1");
        assert_eq!(rw.renamed("g-1".into()).as_written().name, None);
    }

    #[test]
    fn errors_use_prometheus_texts_and_name_the_header() {
        assert_eq!(
            validate("url: http://r/\nheaders:\n  Authorization: x\n").unwrap_err(),
            "authorization header must be changed via the basic_auth, authorization, oauth2, sigv4, or azuread parameter"
        );
        assert_eq!(
            validate("url: http://r/\nheaders:\n  User-Agent: x\n").unwrap_err(),
            "User-Agent is a reserved header. It must not be changed"
        );
        // Once refused only when the instance started; now when the config is accepted.
        let e = validate("url: http://r/\nheaders:\n  X-Bad: \"a\\nb\"\n").unwrap_err();
        assert!(e.starts_with("header \"X-Bad\": "), "{e}");
        let e = validate("url: http://r/\nheaders:\n  \"bad name\": x\n").unwrap_err();
        assert!(e.starts_with("header \"bad name\": "), "{e}");
        assert_eq!(
            validate("url: http://r/\nwrite_relabel_configs:\n  - action: hashmod\n").unwrap_err(),
            "write_relabel_configs[0]: relabel configuration for hashmod requires non-zero modulus"
        );
    }

    /// sigv4 and azuread are validated with Prometheus's texts into the auth the client uses
    /// (they were accepted and then ignored: requests went out unsigned).
    #[test]
    fn sigv4_and_azuread_become_the_auth_or_are_refused_with_prometheus_texts() {
        let rw = |yaml: &str| {
            serde_yaml::from_str::<RemoteWriteConfigRaw>(&format!("url: http://h/w\n{yaml}"))
                .unwrap()
                .validate("r".into())
        };
        let ok = rw("sigv4: {region: us-east-1, access_key: A, secret_key: S}").unwrap();
        assert!(matches!(ok.http.auth, super::super::http::Auth::SigV4(_)));
        let ok = rw("azuread: {oauth: {client_id: 00000000-0000-0000-0000-000000000001, client_secret: s, tenant_id: t}}").unwrap();
        assert!(matches!(ok.http.auth, super::super::http::Auth::AzureAd(_)));
        for (yaml, want) in [
            ("sigv4: {access_key: A}", "must provide a AWS SigV4 Access key and Secret Key if credentials are specified in the SigV4 config"),
            ("sigv4: {role_arn: 'arn:aws:iam::1:role/x'}", "sigv4.role_arn \"arn:aws:iam::1:role/x\": assuming a role (AWS STS AssumeRole) is not supported"),
            ("azuread: {}", "must provide an Azure Managed Identity or Azure OAuth in the Azure AD config"),
            ("azuread: {cloud: Mars, managed_identity: {client_id: x}}", "must provide a cloud in the Azure AD config"),
            ("azuread: {managed_identity: {client_id: x}, oauth: {client_id: y}}", "cannot provide both Azure Managed Identity and Azure OAuth in the Azure AD config"),
            ("azuread: {oauth: {client_id: 00000000-0000-0000-0000-000000000001, tenant_id: t}}", "must provide an Azure OAuth client_secret in the Azure AD config"),
            ("azuread: {oauth: {client_id: 00000000-0000-0000-0000-000000000001, client_secret: s, tenant_id: 't/x'}}", "the provided Azure OAuth tenant_id is invalid"),
            ("sigv4: {}\nazuread: {managed_identity: {client_id: x}}", "at most one of basic_auth, authorization, oauth2, sigv4, & azuread must be configured"),
        ] {
            let err = rw(yaml).unwrap_err();
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
    }
}
