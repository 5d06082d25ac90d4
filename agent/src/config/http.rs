//! Prometheus's common HTTP client configuration (`basic_auth`, `authorization`, `oauth2`,
//! `bearer_token`, `tls_config`, proxies, redirects, HTTP/2).
//!
//! In Prometheus these fields are inlined into the scrape config, the remote_write config and
//! several SD configs. serde's `flatten` cannot be combined with `deny_unknown_fields`, so the
//! [`with_http_client!`] macro writes the fields into each of those structs instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::secret::{Secret, SecretSource};
use super::url::ConfigUrl;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<String>,
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
        self.settings().map(drop)
    }

    /// Validates (Prometheus's `TLSConfig.Validate`, with its texts) into typed settings.
    pub fn settings(&self) -> Result<TlsSettings, String> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        let key_set = self.key.as_ref().is_some_and(|k| !k.is_empty());
        if set(&self.ca) && set(&self.ca_file) {
            return Err("at most one of ca and ca_file must be configured".into());
        }
        if set(&self.cert) && set(&self.cert_file) {
            return Err("at most one of cert and cert_file must be configured".into());
        }
        if key_set && set(&self.key_file) {
            return Err("at most one of key and key_file must be configured".into());
        }
        let has_cert = set(&self.cert) || set(&self.cert_file);
        let has_key = key_set || set(&self.key_file);
        if has_cert && !has_key {
            return Err("exactly one of key or key_file must be configured when a client certificate is configured".into());
        }
        if has_key && !has_cert {
            return Err("exactly one of cert or cert_file must be configured when a client key is configured".into());
        }
        let version = |v: &Option<String>| -> Result<Option<TlsVersion>, String> {
            v.as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| TlsVersion::parse(v).ok_or_else(|| format!("unknown TLS version: {v}")))
                .transpose()
        };
        let key = self.key.as_ref().filter(|k| !k.is_empty());
        let pem = |s: &Option<String>| s.as_ref().filter(|s| !s.is_empty()).map(Secret::new);
        let cert = SecretSource::from_fields(pem(&self.cert).as_ref(), self.cert_file.as_deref());
        let key = SecretSource::from_fields(key, self.key_file.as_deref());
        let server_name = self.server_name.clone().filter(|s| !s.is_empty());
        if let Some(name) = &server_name {
            // Refused when the config is checked or stored, not when its job's client is built
            // (httpclient/tls.rs parses it the same way): no certificate names it, so every
            // request would fail.
            rustls::pki_types::ServerName::try_from(name.as_str())
                .map_err(|e| format!("server_name {name:?}: {e}"))?;
        }
        Ok(TlsSettings {
            ca: SecretSource::from_fields(pem(&self.ca).as_ref(), self.ca_file.as_deref()),
            client_cert: match (cert, key) {
                (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
                _ => None,
            },
            server_name,
            insecure_skip_verify: self.insecure_skip_verify,
            min_version: version(&self.min_version)?,
            max_version: version(&self.max_version)?,
            cipher_suites: Vec::new(),
        })
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
        self.settings().map(drop)
    }

    /// Validates (Prometheus's `HTTPClientConfig.Validate`, with its error texts) into the typed
    /// settings every HTTP client is built from.
    pub fn settings(&self) -> Result<HttpClientSettings, String> {
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
            if !b.username.is_empty() && b.username_file.as_deref().is_some_and(|f| !f.is_empty()) {
                return Err(
                    "at most one of basic_auth username & username_file must be configured".into(),
                );
            }
            if b.password.as_ref().is_some_and(|p| !p.is_empty())
                && b.password_file.as_deref().is_some_and(|p| !p.is_empty())
            {
                return Err(
                    "at most one of basic_auth password & password_file must be configured".into(),
                );
            }
        }
        let mut auth = Auth::None;
        if let Some(a) = &self.authorization {
            if bearer || bearer_file {
                return Err(
                    "authorization is not compatible with bearer_token & bearer_token_file".into(),
                );
            }
            if a.credentials.as_ref().is_some_and(|c| !c.is_empty())
                && a.credentials_file.as_deref().is_some_and(|f| !f.is_empty())
            {
                return Err(
                    "at most one of authorization credentials & credentials_file must be configured".into(),
                );
            }
            let kind = a.kind.as_deref().map(str::trim).unwrap_or("");
            let kind = if kind.is_empty() { "Bearer" } else { kind };
            if kind.eq_ignore_ascii_case("basic") {
                return Err(
                    r#"authorization type cannot be set to "basic", use "basic_auth" instead"#
                        .into(),
                );
            }
            if self.basic_auth.is_some() || self.oauth2.is_some() {
                return Err(
                    "at most one of basic_auth, oauth2 & authorization must be configured".into(),
                );
            }
            auth = Auth::Authorization {
                kind: kind.to_owned(),
                credentials: SecretSource::from_fields(
                    a.credentials.as_ref(),
                    a.credentials_file.as_deref(),
                ),
            };
        } else if bearer || bearer_file {
            // Prometheus turns the deprecated fields into `authorization` of type Bearer.
            auth = Auth::Authorization {
                kind: "Bearer".into(),
                credentials: SecretSource::from_fields(
                    self.bearer_token.as_ref(),
                    self.bearer_token_file.as_deref(),
                ),
            };
        }
        if let Some(o) = &self.oauth2 {
            if self.basic_auth.is_some() {
                return Err(
                    "at most one of basic_auth, oauth2 & authorization must be configured".into(),
                );
            }
            if o.client_id.is_empty() {
                return Err("oauth2 client_id must be configured".into());
            }
            let token_url = o
                .token_url
                .as_ref()
                .ok_or("oauth2 token_url must be configured")?;
            if o.client_secret.as_ref().is_some_and(|s| !s.is_empty())
                && o.client_secret_file
                    .as_deref()
                    .is_some_and(|f| !f.is_empty())
            {
                return Err(
                    "at most one of oauth2 client_secret & client_secret_file must be configured"
                        .into(),
                );
            }
            let proxy = proxy_settings(
                &o.proxy_url,
                &o.no_proxy,
                o.proxy_from_environment,
                &o.proxy_connect_header,
            )?;
            let tls = o.tls_config.clone().unwrap_or_default().settings()?;
            auth = Auth::OAuth2(Box::new(OAuth2Settings {
                client_id: o.client_id.clone(),
                client_secret: SecretSource::from_fields(
                    o.client_secret.as_ref(),
                    o.client_secret_file.as_deref(),
                ),
                scopes: o.scopes.clone(),
                token_url: token_url.clone(),
                endpoint_params: o.endpoint_params.clone(),
                tls,
                proxy,
            }));
        }
        if let Some(b) = &self.basic_auth {
            auth = Auth::Basic {
                username: SecretSource::from_fields(
                    Some(&Secret::new(b.username.clone())),
                    b.username_file.as_deref(),
                ),
                password: SecretSource::from_fields(
                    b.password.as_ref(),
                    b.password_file.as_deref(),
                ),
            };
        }
        let proxy = proxy_settings(
            &self.proxy_url,
            &self.no_proxy,
            self.proxy_from_environment,
            &self.proxy_connect_header,
        )?;
        let tls = self.tls_config.clone().unwrap_or_default().settings()?;
        Ok(HttpClientSettings {
            auth,
            tls,
            proxy,
            follow_redirects: self.follow_redirects.unwrap_or(true),
            enable_http2: self.enable_http2.unwrap_or(true),
        })
    }

    /// The old agent's `validateHTTPNoFiles`: the first field that reads a file from the
    /// agent's disk, in its order: `bearer_token_file`, `password_file`, `credentials_file`,
    /// (ours: `oauth2.client_secret_file`), `ca_file`, `cert_file`, `key_file` (then the same
    /// three of `oauth2.tls_config`).
    pub fn first_file_field(&self) -> Option<&'static str> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if set(&self.bearer_token_file) {
            return Some("bearer_token_file");
        }
        if let Some(b) = &self.basic_auth {
            // username_file is newer than the old agent's list; it reads the agent's disk too.
            if set(&b.username_file) {
                return Some("username_file");
            }
            if set(&b.password_file) {
                return Some("password_file");
            }
        }
        if self
            .authorization
            .as_ref()
            .is_some_and(|a| set(&a.credentials_file))
        {
            return Some("credentials_file");
        }
        // Not in the old agent's list (it refused oauth2 configs' files nowhere), but reading
        // a secret from the agent's disk is exactly what the flag guards.
        if self
            .oauth2
            .as_ref()
            .is_some_and(|o| set(&o.client_secret_file))
        {
            return Some("client_secret_file");
        }
        self.tls_config
            .as_ref()
            .and_then(TlsConfig::first_file_field)
            .or_else(|| {
                self.oauth2
                    .as_ref()
                    .and_then(|o| o.tls_config.as_ref())
                    .and_then(TlsConfig::first_file_field)
            })
    }

    /// Only the TLS file fields (the check the old agent applies to consul, openstack, triton).
    pub fn first_tls_file_field(&self) -> Option<&'static str> {
        self.tls_config
            .as_ref()
            .and_then(TlsConfig::first_file_field)
    }
}

/// Prometheus's `ProxyConfig.Validate`, with its texts, into typed settings.
fn proxy_settings(
    url: &Option<ConfigUrl>,
    no_proxy: &Option<String>,
    from_environment: Option<bool>,
    connect_header: &BTreeMap<String, Vec<Secret>>,
) -> Result<Proxy, String> {
    let from_env = from_environment == Some(true);
    let no_proxy = no_proxy.clone().filter(|s| !s.is_empty());
    if !connect_header.is_empty() && !from_env && url.is_none() {
        return Err("if proxy_connect_header is configured, proxy_url or proxy_from_environment must also be configured".into());
    }
    if from_env && url.is_some() {
        return Err(
            "if proxy_from_environment is configured, proxy_url must not be configured".into(),
        );
    }
    if from_env && no_proxy.is_some() {
        return Err(
            "if proxy_from_environment is configured, no_proxy must not be configured".into(),
        );
    }
    if url.is_none() && no_proxy.is_some() {
        return Err("if no_proxy is configured, proxy_url must also be configured".into());
    }
    let mut headers = Vec::new();
    for (name, values) in connect_header {
        reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("proxy_connect_header {name:?}: {e}"))?;
        for v in values {
            reqwest::header::HeaderValue::from_str(v.expose())
                .map_err(|e| format!("proxy_connect_header {name:?}: {e}"))?;
            headers.push((name.clone(), v.clone()));
        }
    }
    Ok(match url {
        Some(url) => Proxy::Url {
            url: url.clone(),
            no_proxy,
            connect_header: headers,
        },
        None if from_env => Proxy::FromEnvironment {
            connect_header: headers,
        },
        None => Proxy::None,
    })
}

/// A TLS protocol version as configs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn parse(s: &str) -> Option<TlsVersion> {
        Some(match s {
            "TLS10" => TlsVersion::Tls10,
            "TLS11" => TlsVersion::Tls11,
            "TLS12" => TlsVersion::Tls12,
            "TLS13" => TlsVersion::Tls13,
            _ => return None,
        })
    }
}

/// A client certificate and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: SecretSource,
    pub key: SecretSource,
}

/// A validated `tls_config`. PEM data given as files is read when a client is built and read
/// again when the files change (see `crate::httpclient`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Replaces the system roots when set (as Go does).
    pub ca: Option<SecretSource>,
    pub client_cert: Option<ClientCert>,
    /// The name the server's certificate is verified against instead of the URL's host.
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    /// TLS 1.2 cipher suites by their Go names (empty: rustls's defaults). TLS 1.3 suites are
    /// not configurable, as in Go. Not a field of Prometheus's `tls_config`; the etcd client
    /// and the agent's own server take it.
    pub cipher_suites: Vec<String>,
}

/// The cipher suites rustls (ring) has, by their Go names: every AEAD ECDHE suite of TLS 1.2,
/// and the TLS 1.3 suites (accepted by name, always enabled, as in Go). Go's CBC, RSA key
/// exchange, 3DES and RC4 suites do not exist here.
pub const CIPHER_SUITES: [&str; 9] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Parses a Go-style cipher suite list (comma-separated, spaces ignored, Go's short names for
/// the ChaCha20 suites accepted), with dskit's error text for an unknown name.
pub fn parse_cipher_suites(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let canonical = match name {
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            n => n,
        };
        if !CIPHER_SUITES.contains(&canonical) {
            return Err(format!(
                "unsupported cipher suite: {name:?} (supported: {})",
                CIPHER_SUITES.join(", ")
            ));
        }
        out.push(canonical.to_owned());
    }
    Ok(out)
}

impl TlsSettings {
    /// The files this config reads, for reloading when they change.
    pub fn files(&self) -> Vec<&std::path::Path> {
        let mut out = Vec::new();
        if let Some(p) = self.ca.as_ref().and_then(SecretSource::path) {
            out.push(p);
        }
        if let Some(c) = &self.client_cert {
            out.extend(c.cert.path());
            out.extend(c.key.path());
        }
        out
    }
}

/// A validated proxy choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Proxy {
    /// No proxy, whatever the environment says (Prometheus's default).
    #[default]
    None,
    /// `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` (and their lowercase forms), as Go reads them.
    FromEnvironment {
        connect_header: Vec<(String, Secret)>,
    },
    Url {
        url: ConfigUrl,
        no_proxy: Option<String>,
        /// Sent with each CONNECT; values are secrets.
        connect_header: Vec<(String, Secret)>,
    },
}

/// A validated `oauth2` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Settings {
    pub client_id: String,
    pub client_secret: Option<SecretSource>,
    pub scopes: Vec<String>,
    pub token_url: ConfigUrl,
    pub endpoint_params: BTreeMap<String, String>,
    /// For the token endpoint.
    pub tls: TlsSettings,
    pub proxy: Proxy,
}

/// How requests are authenticated: exactly one way (validation refuses combinations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    None,
    /// `basic_auth`; an absent password is sent as empty.
    Basic {
        username: Option<SecretSource>,
        password: Option<SecretSource>,
    },
    /// `Authorization: <kind> <credentials>` (`authorization`, `bearer_token[_file]`).
    Authorization {
        kind: String,
        credentials: Option<SecretSource>,
    },
    OAuth2(Box<OAuth2Settings>),
    /// remote_write's `sigv4`: each request signed with AWS Signature Version 4.
    SigV4(Box<SigV4Settings>),
    /// remote_write's `azuread`: a bearer token from Azure AD (Azure Monitor).
    AzureAd(Box<AzureAdSettings>),
}

/// remote_write's `azuread` block, with Prometheus's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureAdConfig {
    /// `AzurePublic` (default), `AzureChina` or `AzureGovernment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<AzureManagedIdentityConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<AzureOAuthConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureManagedIdentityConfig {
    #[serde(default)]
    pub client_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureOAuthConfig {
    #[serde(default)]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub tenant_id: String,
}

/// The Azure cloud a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureCloud {
    Public,
    China,
    Government,
}

/// How an Azure AD token is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureCredential {
    /// The instance metadata service's token for a user-assigned managed identity.
    ManagedIdentity { client_id: String },
    /// OAuth 2.0 client credentials of an app registration.
    OAuth {
        client_id: String,
        client_secret: Secret,
        tenant_id: String,
    },
}

/// A validated `azuread` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureAdSettings {
    pub cloud: AzureCloud,
    pub credential: AzureCredential,
}

/// Go's `uuid.Parse` for the canonical form (8-4-4-4-12 hex digits).
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl AzureAdConfig {
    /// Prometheus's checks, with its texts.
    pub fn settings(&self) -> Result<AzureAdSettings, String> {
        let cloud = match self.cloud.as_deref().unwrap_or("AzurePublic") {
            "AzurePublic" | "" => AzureCloud::Public,
            "AzureChina" => AzureCloud::China,
            "AzureGovernment" => AzureCloud::Government,
            _ => return Err("must provide a cloud in the Azure AD config".into()),
        };
        let credential = match (&self.managed_identity, &self.oauth) {
            (None, None) => {
                return Err(
                    "must provide an Azure Managed Identity or Azure OAuth in the Azure AD config"
                        .into(),
                )
            }
            (Some(_), Some(_)) => return Err(
                "cannot provide both Azure Managed Identity and Azure OAuth in the Azure AD config"
                    .into(),
            ),
            (Some(m), None) => {
                if m.client_id.is_empty() {
                    return Err(
                        "must provide an Azure Managed Identity client_id in the Azure AD config"
                            .into(),
                    );
                }
                if !is_uuid(&m.client_id) {
                    return Err("the provided Azure Managed Identity client_id is invalid".into());
                }
                AzureCredential::ManagedIdentity {
                    client_id: m.client_id.clone(),
                }
            }
            (None, Some(o)) => {
                let secret = o.client_secret.clone().filter(|s| !s.is_empty());
                if o.client_id.is_empty() {
                    return Err(
                        "must provide an Azure OAuth client_id in the Azure AD config".into(),
                    );
                }
                let Some(client_secret) = secret else {
                    return Err(
                        "must provide an Azure OAuth client_secret in the Azure AD config".into(),
                    );
                };
                if o.tenant_id.is_empty() {
                    return Err(
                        "must provide an Azure OAuth tenant_id in the Azure AD config".into(),
                    );
                }
                if !is_uuid(&o.client_id) {
                    return Err("the provided Azure OAuth client_id is invalid".into());
                }
                let tenant_ok = o
                    .tenant_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !tenant_ok {
                    return Err("the provided Azure OAuth tenant_id is invalid".into());
                }
                AzureCredential::OAuth {
                    client_id: o.client_id.clone(),
                    client_secret,
                    tenant_id: o.tenant_id.clone(),
                }
            }
        };
        Ok(AzureAdSettings { cloud, credential })
    }
}

/// remote_write's `sigv4` block, with Prometheus's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigV4Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// A validated `sigv4` block. What is not given here comes from the environment when a request
/// is signed, as the AWS SDK's default chain does (see `crate::httpclient::sigv4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Settings {
    pub region: Option<String>,
    /// `access_key` and `secret_key`, both or neither.
    pub keys: Option<(String, Secret)>,
    pub profile: Option<String>,
}

impl SigV4Config {
    /// Prometheus's checks (and texts), plus a refusal of `role_arn`.
    pub fn settings(&self) -> Result<SigV4Settings, String> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let access_key = nonempty(&self.access_key);
        let secret_key = self.secret_key.clone().filter(|s| !s.is_empty());
        let keys = match (access_key, secret_key) {
            (Some(a), Some(s)) => Some((a, s)),
            (None, None) => None,
            _ => {
                return Err("must provide a AWS SigV4 Access key and Secret Key if credentials are specified in the SigV4 config".into())
            }
        };
        if let Some(arn) = nonempty(&self.role_arn) {
            return Err(format!(
                "sigv4.role_arn {arn:?}: assuming a role (AWS STS AssumeRole) is not supported by \
                 agentctl; give the role's credentials through access_key and secret_key, the \
                 environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or a \
                 profile of the shared credentials file"
            ));
        }
        Ok(SigV4Settings {
            region: nonempty(&self.region),
            keys,
            profile: nonempty(&self.profile),
        })
    }
}

/// A validated HTTP client config: what `crate::httpclient::HttpClient` is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpClientSettings {
    pub auth: Auth,
    pub tls: TlsSettings,
    pub proxy: Proxy,
    pub follow_redirects: bool,
    pub enable_http2: bool,
}

impl Default for HttpClientSettings {
    /// No auth, the system roots, no proxy, redirects followed, HTTP/2 offered.
    fn default() -> Self {
        HttpClientSettings {
            auth: Auth::None,
            tls: TlsSettings::default(),
            proxy: Proxy::None,
            follow_redirects: true,
            enable_http2: true,
        }
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

/// `server.http_tls_config`: TLS for the agent's own HTTP server, with the old agent's fields
/// (its `server.TLSConfig`). The server serves HTTPS when the block names a certificate and a
/// key (see [`ServerTlsConfig::settings`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve_preferences: Vec<String>,
    /// `TLS10`..`TLS13`; an old agent's config dump writes an unset version as `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_server_cipher_suites: Option<bool>,
    /// Windows only in the old agent: refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_certificate_filter: Option<serde_yaml::Value>,
}

/// Which client certificates the agent's server asks for and how it checks them (Go's
/// `tls.ClientAuthType`, by the names the old agent took).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `NoClientCert` (or empty): none asked for.
    #[default]
    None,
    /// `RequestClientCert`: asked for, not required, not verified.
    Request,
    /// `RequireAnyClientCert` (or `RequireClientCert`): required, not verified.
    RequireAny,
    /// `VerifyClientCertIfGiven`: not required; verified against `client_ca_file` when sent.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: required and verified against `client_ca_file`.
    RequireAndVerify,
}

/// A key exchange group of `curve_preferences` that rustls (ring) has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    X25519,
    P256,
    P384,
}

/// A validated `server.http_tls_config` that asks for HTTPS. The files are read when the
/// server starts and read again when they change (see `crate::api::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<std::path::PathBuf>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    /// TLS 1.2 suites by their Go names (empty: rustls's defaults).
    pub cipher_suites: Vec<String>,
    /// In order of preference (empty: rustls's defaults).
    pub curves: Vec<Curve>,
    /// The server picks the suite by its own order (rustls `ignore_client_order`).
    pub prefer_server_cipher_suites: bool,
}

impl ServerTlsConfig {
    /// Validates the block; `Ok(None)` when it names no certificate and no key (the server
    /// then serves plain HTTP). Errors are `(field, message)`.
    pub fn settings(&self) -> Result<Option<ServerTlsSettings>, (&'static str, String)> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let version = |field: &'static str, v: &Option<serde_yaml::Value>| match v {
            None | Some(serde_yaml::Value::Null) => Ok(None),
            Some(serde_yaml::Value::Number(n)) if n.as_u64() == Some(0) => Ok(None),
            Some(serde_yaml::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_yaml::Value::String(s)) => TlsVersion::parse(s)
                .map(Some)
                .ok_or_else(|| (field, format!("unknown TLS version: {s}"))),
            Some(other) => Err((
                field,
                format!(
                    "unknown TLS version: {} (one of TLS10, TLS11, TLS12, TLS13)",
                    serde_yaml::to_string(other).unwrap_or_default().trim()
                ),
            )),
        };
        let min_version = version("min_version", &self.min_version)?;
        let max_version = version("max_version", &self.max_version)?;
        let client_auth = match self.client_auth_type.as_deref().unwrap_or("") {
            "" | "NoClientCert" => ClientAuth::None,
            "RequestClientCert" => ClientAuth::Request,
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAny,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
            other => {
                return Err((
                    "client_auth_type",
                    format!(
                        "invalid ClientAuth {other:?} (one of NoClientCert, RequestClientCert, \
                         RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
                    ),
                ))
            }
        };
        let cipher_suites =
            parse_cipher_suites(&self.cipher_suites.join(",")).map_err(|e| ("cipher_suites", e))?;
        let mut curves = Vec::new();
        for name in &self.curve_preferences {
            curves.push(match name.as_str() {
                "X25519" => Curve::X25519,
                "CurveP256" => Curve::P256,
                "CurveP384" => Curve::P384,
                "CurveP521" => {
                    return Err((
                        "curve_preferences",
                        "CurveP521 is not available in agentctl's TLS library (rustls with ring); \
                         use X25519, CurveP256 or CurveP384"
                            .into(),
                    ))
                }
                other => return Err(("curve_preferences", format!("unknown curve: {other}"))),
            });
        }
        if self.windows_certificate_filter.is_some() {
            return Err((
                "windows_certificate_filter",
                "the Windows certificate store is not available on this platform; use cert_file \
                 and key_file"
                    .into(),
            ));
        }
        let (cert_file, key_file) = match (nonempty(&self.cert_file), nonempty(&self.key_file)) {
            (None, None) => return Ok(None),
            (None, Some(_)) => return Err(("cert_file", "missing certificate file".into())),
            (Some(_), None) => return Err(("key_file", "missing key file".into())),
            (Some(c), Some(k)) => (c, k),
        };
        let client_ca_file = nonempty(&self.client_ca_file).map(std::path::PathBuf::from);
        if client_ca_file.is_some() && client_auth == ClientAuth::None {
            return Err((
                "client_ca_file",
                "Client CAs have been configured without a ClientAuth policy (set \
                 client_auth_type, e.g. RequireAndVerifyClientCert)"
                    .into(),
            ));
        }
        if client_ca_file.is_none()
            && matches!(
                client_auth,
                ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify
            )
        {
            return Err((
                "client_ca_file",
                "client_auth_type verifies client certificates: name the CA that signs them in \
                 client_ca_file"
                    .into(),
            ));
        }
        if let (Some(min), Some(max)) = (min_version, max_version) {
            if max < TlsVersion::Tls12 || min > max {
                return Err((
                    "max_version",
                    format!(
                        "no TLS version between min_version {min:?} and max_version {max:?} is \
                         available (agentctl speaks TLS12 and TLS13)"
                    ),
                ));
            }
        } else if max_version.is_some_and(|m| m < TlsVersion::Tls12) {
            return Err(("max_version", "agentctl speaks TLS12 and TLS13 only".into()));
        }
        Ok(Some(ServerTlsSettings {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_auth,
            client_ca_file,
            min_version,
            max_version,
            cipher_suites,
            curves,
            prefer_server_cipher_suites: self.prefer_server_cipher_suites.unwrap_or(false),
        }))
    }
}

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
        let oauth = |secret_file: Option<&str>, ca_file: Option<&str>| HttpClientConfig {
            oauth2: Some(OAuth2 {
                client_id: "id".into(),
                client_secret_file: secret_file.map(str::to_owned),
                tls_config: Some(TlsConfig {
                    ca_file: ca_file.map(str::to_owned),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            oauth(Some("/s"), Some("/ca")).first_file_field(),
            Some("client_secret_file")
        );
        assert_eq!(oauth(None, Some("/ca")).first_file_field(), Some("ca_file"));
        assert_eq!(oauth(None, None).first_file_field(), None);
    }

    #[test]
    fn server_tls_is_validated_with_the_old_agents_texts() {
        let parse = |yaml: &str| {
            serde_yaml::from_str::<ServerTlsConfig>(yaml)
                .unwrap()
                .settings()
                .map_err(|(f, m)| format!("{f}: {m}"))
        };
        let base = "cert_file: c.pem\nkey_file: k.pem\n";
        let ok = parse(&format!("{base}client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: ca.pem\nmin_version: TLS13\ncipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\ncurve_preferences: [X25519, CurveP256]\n"))
            .unwrap()
            .unwrap();
        assert_eq!(ok.client_auth, ClientAuth::RequireAndVerify);
        assert_eq!(ok.min_version, Some(TlsVersion::Tls13));
        assert_eq!(ok.curves, [Curve::X25519, Curve::P256]);
        assert_eq!(parse("min_version: 0\ncert_file: ''\n"), Ok(None));
        for (yaml, want) in [
            ("key_file: ''\n", "key_file: missing key file"),
            ("cert_file: ''\n", "cert_file: missing certificate file"),
            (
                "client_auth_type: Always\n",
                "client_auth_type: invalid ClientAuth \"Always\"",
            ),
            (
                "client_ca_file: ca.pem\n",
                "client_ca_file: Client CAs have been configured without a ClientAuth policy",
            ),
            (
                "client_auth_type: VerifyClientCertIfGiven\n",
                "client_ca_file: client_auth_type verifies client certificates",
            ),
            (
                "min_version: TLS14\n",
                "min_version: unknown TLS version: TLS14",
            ),
            (
                "max_version: TLS11\n",
                "max_version: agentctl speaks TLS12 and TLS13 only",
            ),
            (
                "cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
                "cipher_suites: unsupported cipher suite: \"TLS_RSA_WITH_AES_128_CBC_SHA\"",
            ),
            (
                "curve_preferences: [CurveP521]\n",
                "curve_preferences: CurveP521 is not available",
            ),
            (
                "windows_certificate_filter: {server: {store: My}}\n",
                "windows_certificate_filter: the Windows certificate store is not available",
            ),
        ] {
            // The case's field replaces the same one of `base`.
            let field = yaml.split(':').next().unwrap();
            let rest: String = base
                .lines()
                .filter(|l| !l.starts_with(field))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = parse(&format!("{rest}{yaml}")).unwrap_err();
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
    }
}
