//! The instance config (`metrics_instance_config`): the body of a config PUT, one file of
//! `config-sync`, one entry of `metrics.configs`. Validated in exactly the old agent's order
//! (`instance.Config.ApplyDefaults`) with its error texts.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::duration::{GoDuration, PromDuration};
use super::invalid::Invalid;
use super::relabel::{self, RelabelConfig, RelabelConfigRaw};
use super::remote_write::RemoteWriteConfigRaw;
use super::scrape::{Limits, ScrapeConfig, ScrapeConfigRaw, ScrapeDefaults, ScrapeProtocols};
use super::url::{is_valid_label_name, ByteSize};
use crate::path;

/// `metrics.global`: Prometheus's global config plus the default `remote_write`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfigRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_interval: Option<PromDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<PromDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_interval: Option<PromDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_protocols: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_log_file: Option<String>,
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
    pub keep_dropped_targets: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<RemoteWriteConfigRaw>,
}

/// The validated global config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GlobalConfig {
    pub scrape: ScrapeDefaults,
    pub external_labels: BTreeMap<String, String>,
    pub remote_write: Vec<RemoteWriteConfigRaw>,
}

impl GlobalConfigRaw {
    pub fn validate(&self) -> Result<GlobalConfig, String> {
        let interval = self.scrape_interval.unwrap_or(PromDuration::from_secs(60));
        if interval.is_zero() {
            return Err("global scrape_interval must be greater than 0s".into());
        }
        let timeout = match self.scrape_timeout {
            Some(t) if !t.is_zero() => t,
            _ => std::cmp::min(PromDuration::from_secs(10), interval),
        };
        if timeout > interval {
            return Err("global scrape timeout greater than scrape interval".into());
        }
        let scrape_protocols = match &self.scrape_protocols {
            Some(names) => {
                Some(ScrapeProtocols::parse(names).map_err(|e| format!("{e} for global config"))?)
            }
            None => None,
        };
        for name in self.external_labels.keys() {
            if !is_valid_label_name(name) {
                return Err(format!("{name:?} is not a valid label name"));
            }
        }
        for (i, rw) in self.remote_write.iter().enumerate() {
            rw.validate_self()
                .map_err(|e| format!("global remote_write[{i}]: {e}"))?;
        }
        Ok(GlobalConfig {
            scrape: ScrapeDefaults {
                scrape_interval: interval,
                scrape_timeout: timeout,
                scrape_protocols,
                limits: Limits {
                    body_size_limit: self.body_size_limit.map_or(0, |b| b.0),
                    sample_limit: self.sample_limit.unwrap_or(0),
                    target_limit: self.target_limit.unwrap_or(0),
                    label_limit: self.label_limit.unwrap_or(0),
                    label_name_length_limit: self.label_name_length_limit.unwrap_or(0),
                    label_value_length_limit: self.label_value_length_limit.unwrap_or(0),
                },
            },
            external_labels: self.external_labels.clone(),
            remote_write: self.remote_write.clone(),
        })
    }
}

/// An instance config as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfigRaw {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_filter: bool,
    #[serde(
        default,
        deserialize_with = "relabel::host_filter_rules",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub host_filter_relabel_configs: Vec<RelabelConfigRaw>,
    /// `Option` entries so that a `- ` (null) entry gets the old agent's error, not a parse error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrape_configs: Vec<Option<ScrapeConfigRaw>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<Option<RemoteWriteConfigRaw>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_truncate_frequency: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_wal_time: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wal_time: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_flush_deadline: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub write_stale_on_shutdown: bool,
}

pub use super::remote_write::RemoteWriteConfig;

/// A validated instance config.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    pub name: String,
    pub host_filter: bool,
    pub host_filter_relabel_configs: Vec<RelabelConfig>,
    pub scrape_configs: Vec<ScrapeConfig>,
    pub remote_write: Vec<RemoteWriteConfig>,
    pub wal_truncate_frequency: GoDuration,
    pub min_wal_time: GoDuration,
    pub max_wal_time: GoDuration,
    pub remote_flush_deadline: GoDuration,
    pub write_stale_on_shutdown: bool,
    pub external_labels: BTreeMap<String, String>,
}

pub const DEFAULT_WAL_TRUNCATE_FREQUENCY: GoDuration = GoDuration::from_secs(60 * 60);
pub const DEFAULT_MIN_WAL_TIME: GoDuration = GoDuration::from_secs(5 * 60);
pub const DEFAULT_MAX_WAL_TIME: GoDuration = GoDuration::from_secs(4 * 60 * 60);
pub const DEFAULT_REMOTE_FLUSH_DEADLINE: GoDuration = GoDuration::from_secs(60);

impl InstanceConfigRaw {
    /// The old agent's `ApplyDefaults(global)`, in its order, with its texts. Each error
    /// carries the path of the node it is about, for [`super::load`] to turn into a line.
    pub fn validate(&self, global: &GlobalConfig) -> Result<InstanceConfig, Invalid> {
        if self.name.is_empty() {
            return Err(Invalid::at("missing instance name", path!["name"]));
        }
        let wal_truncate_frequency = self
            .wal_truncate_frequency
            .unwrap_or(DEFAULT_WAL_TRUNCATE_FREQUENCY);
        if wal_truncate_frequency.is_zero() {
            return Err(Invalid::at(
                "wal_truncate_frequency must be greater than 0s",
                path!["wal_truncate_frequency"],
            ));
        }
        let remote_flush_deadline = self
            .remote_flush_deadline
            .unwrap_or(DEFAULT_REMOTE_FLUSH_DEADLINE);
        if remote_flush_deadline.is_zero() {
            return Err(Invalid::at(
                "remote_flush_deadline must be greater than 0s",
                path!["remote_flush_deadline"],
            ));
        }
        let min_wal_time = self.min_wal_time.unwrap_or(DEFAULT_MIN_WAL_TIME);
        let max_wal_time = self.max_wal_time.unwrap_or(DEFAULT_MAX_WAL_TIME);
        if min_wal_time > max_wal_time {
            return Err(Invalid::at(
                "min_wal_time must be less than max_wal_time",
                path!["min_wal_time"],
            ));
        }

        let mut jobs = HashSet::new();
        let mut scrape_configs = Vec::with_capacity(self.scrape_configs.len());
        for (i, sc) in self.scrape_configs.iter().enumerate() {
            let at =
                |m: String, field: &'static str| Invalid::at(m, path!["scrape_configs", i, field]);
            let Some(sc) = sc.as_ref() else {
                return Err(Invalid::at(
                    "empty or null scrape config section",
                    path!["scrape_configs", i],
                ));
            };
            let job = &sc.job_name;
            let interval = match sc.scrape_interval {
                Some(i) if !i.is_zero() => i,
                _ => global.scrape.scrape_interval,
            };
            let timeout = sc.scrape_timeout.unwrap_or_default();
            if timeout > interval {
                return Err(at(
                    format!("scrape timeout greater than scrape interval for scrape config with job name {job:?}"),
                    "scrape_timeout",
                ));
            }
            // In u128: a scrape interval of centuries is accepted by the parser.
            if u128::from(interval.millis()) * 1_000_000
                > u128::from(wal_truncate_frequency.nanos())
            {
                return Err(at(
                    format!("scrape interval greater than wal_truncate_frequency for scrape config with job name {job:?}"),
                    "scrape_interval",
                ));
            }
            let timeout = if timeout.is_zero() {
                std::cmp::min(global.scrape.scrape_timeout, interval)
            } else {
                timeout
            };
            if !jobs.insert(job.as_str()) {
                return Err(at(
                    format!("found multiple scrape configs with job name {job:?}"),
                    "job_name",
                ));
            }
            let resolved = sc.resolve(interval, timeout, &global.scrape).map_err(|e| {
                let e = e.within(path!["scrape_configs", i]);
                if job.is_empty() {
                    e.prefixed(format_args!("scrape_configs[{i}]"))
                } else {
                    e.prefixed(format_args!("scrape config with job name {job:?}"))
                }
            })?;
            scrape_configs.push(resolved);
        }

        let mut remote_write = Vec::new();
        let from_global: Vec<Option<RemoteWriteConfigRaw>>;
        let (rws, in_this_config) = if self.remote_write.is_empty() {
            from_global = global.remote_write.iter().cloned().map(Some).collect();
            (&from_global, false)
        } else {
            (&self.remote_write, true)
        };
        let mut names = HashSet::new();
        for (i, rw) in rws.iter().enumerate() {
            // An entry is named by its index and URL: a generated name means nothing to the
            // person who wrote the file. Entries inherited from the agent's `global` are not in
            // this text, so they carry no position.
            let locate = |e: Invalid| {
                let url = rw
                    .as_ref()
                    .and_then(|r| r.url.as_ref())
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default();
                if in_this_config {
                    e.prefixed(format_args!("remote_write[{i}]{url}"))
                        .within(path!["remote_write", i])
                } else {
                    Invalid::new(format!("global remote_write[{i}]{url}: {}", e.message))
                }
            };
            let Some(rw) = rw.as_ref() else {
                return Err(locate(Invalid::new(
                    "empty or null remote write config section",
                )));
            };
            let (name, generated) = match rw.name.as_deref() {
                Some(n) if !n.is_empty() => (n.to_owned(), false),
                _ => (format!("{}-{}", self.name, rw.content_hash6()), true),
            };
            if !names.insert(name.clone()) {
                return Err(locate(if generated {
                    Invalid::new("found two identical remote_write configs")
                } else {
                    Invalid::at(
                        format!("found duplicate remote write configs with name {name:?}"),
                        path!["name"],
                    )
                }));
            }
            let validated = rw
                .validate(name.clone())
                .map_err(|e| locate(Invalid::new(e)))?;
            remote_write.push(validated);
        }

        Ok(InstanceConfig {
            name: self.name.clone(),
            host_filter: self.host_filter,
            host_filter_relabel_configs: relabel::validate_all(
                &self.host_filter_relabel_configs,
                "host_filter_relabel_configs",
            )?,
            scrape_configs,
            remote_write,
            wal_truncate_frequency,
            min_wal_time,
            max_wal_time,
            remote_flush_deadline,
            write_stale_on_shutdown: self.write_stale_on_shutdown,
            external_labels: global.external_labels.clone(),
        })
    }

    /// The job names of this config's scrape configs.
    pub fn job_names(&self) -> impl Iterator<Item = &str> {
        self.scrape_configs
            .iter()
            .flatten()
            .map(|s| s.job_name.as_str())
    }

    /// The old agent's `dangerous_allow_reading_files` check (API PUT only), with its texts.
    pub fn file_reading_violation(&self, global: &GlobalConfig) -> Option<String> {
        let msg =
            |f: &str| format!("{f} must be empty unless dangerous_allow_reading_files is set");
        let rws: Vec<&RemoteWriteConfigRaw> = if self.remote_write.is_empty() {
            global.remote_write.iter().collect()
        } else {
            self.remote_write.iter().flatten().collect()
        };
        for (i, rw) in rws.iter().enumerate() {
            if let Some(f) = rw.http_client().first_file_field() {
                return Some(format!(
                    "failed to validate remote_write at index {i}: {}",
                    msg(f)
                ));
            }
        }
        self.scrape_configs
            .iter()
            .flatten()
            .enumerate()
            .find_map(|(i, sc)| sc.file_reading_violation(i))
    }

    /// YAML of this config. With `reveal` the secrets are written in clear (what the KV store
    /// keeps, as the old agent did); otherwise they are `<secret>`.
    pub fn to_yaml(&self, reveal: bool) -> Result<String, serde_yaml::Error> {
        if reveal {
            super::secret::reveal_secrets(|| serde_yaml::to_string(self))
        } else {
            serde_yaml::to_string(self)
        }
    }
}
