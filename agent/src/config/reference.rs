//! The field names of each config struct, read from serde's own derive output, so a test can
//! check that `docs/configuration.md` documents every field the parser accepts.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field recorder stops here")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

struct Recorder<'a>(&'a Cell<&'static [&'static str]>);

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.0.set(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The YAML keys `T` accepts (aliases excluded).
pub fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let cell = Cell::new(&[][..]);
    let _ = T::deserialize(Recorder(&cell));
    cell.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{agent, http, instance, relabel, remote_write, scrape, sd};

    /// Each documented section and the struct whose keys it must list.
    fn sections() -> Vec<(&'static str, &'static [&'static str])> {
        vec![
            ("agent.yaml", fields_of::<agent::AgentConfigRaw>()),
            ("server", fields_of::<agent::ServerConfig>()),
            ("metrics", fields_of::<agent::MetricsConfigRaw>()),
            ("global", fields_of::<instance::GlobalConfigRaw>()),
            ("scraping_service", fields_of::<agent::ScrapingServiceRaw>()),
            ("kvstore", fields_of::<agent::KvStoreConfig>()),
            ("etcd", fields_of::<agent::EtcdConfig>()),
            ("consul", fields_of::<agent::ConsulConfig>()),
            ("multi", fields_of::<agent::MultiConfig>()),
            ("embedded", fields_of::<agent::EmbeddedConfig>()),
            ("lifecycler", fields_of::<agent::LifecyclerConfigRaw>()),
            ("ring", fields_of::<agent::RingConfigRaw>()),
            (
                "instance config",
                fields_of::<instance::InstanceConfigRaw>(),
            ),
            ("scrape_config", fields_of::<scrape::ScrapeConfigRaw>()),
            ("relabel_config", fields_of::<relabel::RelabelConfigRaw>()),
            ("static_config", fields_of::<sd::StaticConfig>()),
            ("file_sd_config", fields_of::<sd::FileSdConfig>()),
            ("http_sd_config", fields_of::<sd::HttpSdConfig>()),
            ("dns_sd_config", fields_of::<sd::DnsSdConfig>()),
            (
                "kubernetes_sd_config",
                fields_of::<sd::KubernetesSdConfig>(),
            ),
            (
                "kubernetes namespaces",
                fields_of::<sd::KubernetesNamespaces>(),
            ),
            (
                "kubernetes selectors",
                fields_of::<sd::KubernetesSelector>(),
            ),
            (
                "kubernetes attach_metadata",
                fields_of::<sd::KubernetesAttachMetadata>(),
            ),
            ("consul_sd_config", fields_of::<sd::ConsulSdConfig>()),
            (
                "remote_write",
                fields_of::<remote_write::RemoteWriteConfigRaw>(),
            ),
            ("queue_config", fields_of::<remote_write::QueueConfigRaw>()),
            (
                "metadata_config",
                fields_of::<remote_write::MetadataConfigRaw>(),
            ),
            ("basic_auth", fields_of::<http::BasicAuth>()),
            ("authorization", fields_of::<http::Authorization>()),
            ("oauth2", fields_of::<http::OAuth2>()),
            ("tls_config", fields_of::<http::TlsConfig>()),
        ]
    }

    #[test]
    fn recorder_sees_fields() {
        assert!(fields_of::<relabel::RelabelConfigRaw>().contains(&"source_labels"));
        assert!(
            fields_of::<scrape::ScrapeConfigRaw>().contains(&"bearer_token"),
            "macro fields too"
        );
    }

    /// Fails when a field is added to the parser but not to docs/configuration.md.
    #[test]
    fn every_field_is_documented() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let doc = std::fs::read_to_string(path).expect("docs/configuration.md");
        let mut missing = Vec::new();
        for (section, fields) in sections() {
            let heading = format!("## `{section}`");
            let start = doc
                .find(&heading)
                .unwrap_or_else(|| panic!("no section {heading:?} in {path}"));
            let body = &doc[start + heading.len()..];
            let body = &body[..body.find("\n## ").unwrap_or(body.len())];
            for f in fields {
                if !body.contains(&format!("| `{f}`")) {
                    missing.push(format!("{section}.{f}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "undocumented config fields in docs/configuration.md: {missing:?}"
        );
    }
}
