//! Prometheus's common HTTP client configuration (`basic_auth`, `authorization`, `oauth2`,
//! `bearer_token`, `tls_config`, proxies, redirects, HTTP/2).
//!
//! In Prometheus these fields are inlined into the scrape config, the remote_write config and
//! several SD configs. serde's `flatten` cannot be combined with `deny_unknown_fields`, so the
//! [`with_http_client!`] macro writes the fields into each of those structs instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::url::ConfigUrl;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Default `Bearer`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<String>,
}

impl TlsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.ca.is_some() && self.ca_file.is_some() {
            return Err("at most one of ca and ca_file must be configured".into());
        }
        if self.cert.is_some() && self.cert_file.is_some() {
            return Err("at most one of cert and cert_file must be configured".into());
        }
        if self.key.is_some() && self.key_file.is_some() {
            return Err("at most one of key and key_file must be configured".into());
        }
        let has_cert = self.cert.is_some() || self.cert_file.is_some();
        let has_key = self.key.is_some() || self.key_file.is_some();
        if has_cert && !has_key {
            return Err("exactly one of key or key_file must be configured when a client certificate is configured".into());
        }
        if has_key && !has_cert {
            return Err("exactly one of cert or cert_file must be configured when a client key is configured".into());
        }
        for v in [&self.min_version, &self.max_version].into_iter().flatten() {
            if !matches!(v.as_str(), "TLS10" | "TLS11" | "TLS12" | "TLS13") {
                return Err(format!("unknown TLS version: {v}"));
            }
        }
        Ok(())
    }

    /// The first file-reading field that is set, in the old agent's order.
    fn first_file_field(&self) -> Option<&'static str> {
        [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ]
        .into_iter()
        .find(|(_, v)| v.as_deref().is_some_and(|s| !s.is_empty()))
        .map(|(name, _)| name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2 {
    #[serde(default)]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<ConfigUrl>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint_params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<ConfigUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_from_environment: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_connect_header: BTreeMap<String, Vec<Secret>>,
}

/// The HTTP client fields, gathered from whichever struct inlines them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpClientConfig {
    pub basic_auth: Option<BasicAuth>,
    pub authorization: Option<Authorization>,
    pub oauth2: Option<OAuth2>,
    pub bearer_token: Option<Secret>,
    pub bearer_token_file: Option<String>,
    pub tls_config: Option<TlsConfig>,
    pub proxy_url: Option<ConfigUrl>,
    pub no_proxy: Option<String>,
    pub proxy_from_environment: Option<bool>,
    pub proxy_connect_header: BTreeMap<String, Vec<Secret>>,
    /// Default true.
    pub follow_redirects: Option<bool>,
    /// Default true.
    pub enable_http2: Option<bool>,
}

impl HttpClientConfig {
    /// Prometheus's `HTTPClientConfig.Validate`, with its error texts.
    pub fn validate(&self) -> Result<(), String> {
        let bearer = self.bearer_token.as_ref().is_some_and(|s| !s.is_empty());
        let bearer_file = self
            .bearer_token_file
            .as_deref()
            .is_some_and(|s| !s.is_empty());
        if bearer && bearer_file {
            return Err(
                "at most one of bearer_token & bearer_token_file must be configured".into(),
            );
        }
        if (self.basic_auth.is_some() || self.oauth2.is_some()) && (bearer || bearer_file) {
            return Err(
                "at most one of basic_auth, oauth2, bearer_token & bearer_token_file must be configured"
                    .into(),
            );
        }
        if let Some(b) = &self.basic_auth {
            if b.password.as_ref().is_some_and(|p| !p.is_empty())
                && b.password_file.as_deref().is_some_and(|p| !p.is_empty())
            {
                return Err(
                    "at most one of basic_auth password & password_file must be configured".into(),
                );
            }
        }
        if let Some(a) = &self.authorization {
            if bearer || bearer_file {
                return Err(
                    "authorization is not compatible with bearer_token & bearer_token_file".into(),
                );
            }
            if a.credentials.is_some() && a.credentials_file.is_some() {
                return Err(
                    "at most one of authorization credentials & credentials_file must be configured".into(),
                );
            }
            if a.kind
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("basic"))
            {
                return Err(
                    r#"authorization type cannot be set to "basic", use "basic_auth" instead"#
                        .into(),
                );
            }
        }
        if let Some(o) = &self.oauth2 {
            if self.basic_auth.is_some() {
                return Err(
                    "at most one of basic_auth, oauth2 & authorization must be configured".into(),
                );
            }
            if self.authorization.is_some() {
                return Err("at most one of oauth2 & authorization must be configured".into());
            }
            if o.client_id.is_empty() {
                return Err("oauth2 client_id must be configured".into());
            }
            if o.client_secret.is_some() && o.client_secret_file.is_some() {
                return Err(
                    "at most one of oauth2 client_secret & client_secret_file must be configured"
                        .into(),
                );
            }
            if o.token_url.is_none() {
                return Err("oauth2 token_url must be configured".into());
            }
            if let Some(t) = &o.tls_config {
                t.validate()?;
            }
        }
        if self.basic_auth.is_some() && self.authorization.is_some() {
            return Err(
                "at most one of basic_auth, oauth2 & authorization must be configured".into(),
            );
        }
        if self.proxy_from_environment == Some(true)
            && (self.proxy_url.is_some() || self.no_proxy.is_some())
        {
            return Err("if proxy_from_environment is configured, proxy_url and no_proxy must not be configured".into());
        }
        if self.no_proxy.is_some() && self.proxy_url.is_none() {
            return Err("if no_proxy is configured, proxy_url must also be configured".into());
        }
        if let Some(t) = &self.tls_config {
            t.validate()?;
        }
        Ok(())
    }

    /// The old agent's `validateHTTPNoFiles`: the first field that reads a file from the
    /// agent's disk, in its order: `bearer_token_file`, `password_file`, `credentials_file`,
    /// `ca_file`, `cert_file`, `key_file`.
    pub fn first_file_field(&self) -> Option<&'static str> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if set(&self.bearer_token_file) {
            return Some("bearer_token_file");
        }
        if self
            .basic_auth
            .as_ref()
            .is_some_and(|b| set(&b.password_file))
        {
            return Some("password_file");
        }
        if self
            .authorization
            .as_ref()
            .is_some_and(|a| set(&a.credentials_file))
        {
            return Some("credentials_file");
        }
        self.tls_config
            .as_ref()
            .and_then(TlsConfig::first_file_field)
            // Beyond the old agent's list (it did not look inside oauth2): the same rule for the
            // files oauth2 would read.
            .or_else(|| {
                let o = self.oauth2.as_ref()?;
                if set(&o.client_secret_file) {
                    return Some("client_secret_file");
                }
                o.tls_config.as_ref().and_then(TlsConfig::first_file_field)
            })
    }

    /// Only the TLS file fields (the check the old agent applies to consul, openstack, triton).
    pub fn first_tls_file_field(&self) -> Option<&'static str> {
        self.tls_config
            .as_ref()
            .and_then(TlsConfig::first_file_field)
    }
}

/// Defines a struct whose fields are the given ones plus the inlined HTTP client fields, and an
/// `http_client()` accessor gathering the latter.
macro_rules! with_http_client {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub basic_auth: Option<$crate::config::http::BasicAuth>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub authorization: Option<$crate::config::http::Authorization>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub oauth2: Option<$crate::config::http::OAuth2>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub bearer_token: Option<$crate::config::secret::Secret>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub bearer_token_file: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub tls_config: Option<$crate::config::http::TlsConfig>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub proxy_url: Option<$crate::config::url::ConfigUrl>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub no_proxy: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub proxy_from_environment: Option<bool>,
            #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
            pub proxy_connect_header:
                std::collections::BTreeMap<String, Vec<$crate::config::secret::Secret>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub follow_redirects: Option<bool>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub enable_http2: Option<bool>,
        }

        impl $name {
            /// The inlined HTTP client fields.
            pub fn http_client(&self) -> $crate::config::http::HttpClientConfig {
                $crate::config::http::HttpClientConfig {
                    basic_auth: self.basic_auth.clone(),
                    authorization: self.authorization.clone(),
                    oauth2: self.oauth2.clone(),
                    bearer_token: self.bearer_token.clone(),
                    bearer_token_file: self.bearer_token_file.clone(),
                    tls_config: self.tls_config.clone(),
                    proxy_url: self.proxy_url.clone(),
                    no_proxy: self.no_proxy.clone(),
                    proxy_from_environment: self.proxy_from_environment,
                    proxy_connect_header: self.proxy_connect_header.clone(),
                    follow_redirects: self.follow_redirects,
                    enable_http2: self.enable_http2,
                }
            }
        }
    };
}
pub(crate) use with_http_client;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_validation_texts() {
        let both = HttpClientConfig {
            bearer_token: Some(Secret::new("a")),
            bearer_token_file: Some("f".into()),
            ..Default::default()
        };
        assert_eq!(
            both.validate().unwrap_err(),
            "at most one of bearer_token & bearer_token_file must be configured"
        );
        let basic_and_bearer = HttpClientConfig {
            basic_auth: Some(BasicAuth {
                username: "u".into(),
                ..Default::default()
            }),
            bearer_token: Some(Secret::new("a")),
            ..Default::default()
        };
        assert!(basic_and_bearer
            .validate()
            .unwrap_err()
            .starts_with("at most one of basic_auth"));
        let basic_type = HttpClientConfig {
            authorization: Some(Authorization {
                kind: Some("Basic".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(basic_type
            .validate()
            .unwrap_err()
            .contains("use \"basic_auth\" instead"));
    }

    #[test]
    fn file_fields_in_old_agent_order() {
        let c = HttpClientConfig {
            tls_config: Some(TlsConfig {
                ca_file: Some("/ca".into()),
                ..Default::default()
            }),
            authorization: Some(Authorization {
                credentials_file: Some("/c".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(c.first_file_field(), Some("credentials_file"));
        assert_eq!(c.first_tls_file_field(), Some("ca_file"));
        assert_eq!(HttpClientConfig::default().first_file_field(), None);
    }
}
