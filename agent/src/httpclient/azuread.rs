//! Azure AD tokens for remote_write's `azuread` (Azure Monitor's ingestion), as Prometheus's
//! azuread round tripper gets them: `Authorization: Bearer <token>` with the audience of the
//! configured cloud (`https://monitor.azure.com//.default` for `AzurePublic`).
//!
//! - `oauth`: OAuth 2.0 client credentials at `<authority>/<tenant_id>/oauth2/v2.0/token`,
//!   through the `oauth2` token source (cached until shortly before expiry, dropped on a 401).
//!   The authority is the cloud's (`https://login.microsoftonline.com` for `AzurePublic`), or
//!   `AZURE_AUTHORITY_HOST` as the Azure SDKs read it.
//! - `managed_identity`: the instance metadata service's token for the user-assigned identity
//!   `client_id` (`GET http://169.254.169.254/metadata/identity/oauth2/token` with
//!   `Metadata: true`), or the host in `AZURE_POD_IDENTITY_AUTHORITY_HOST` as the Azure SDKs
//!   read it. Cached until five minutes before it expires, dropped on a 401.

use std::time::Duration;

use tokio::time::Instant;

use super::oauth2::parse_token_response;
use super::{error_chain, HttpClient};
use crate::config::http::AzureCloud;

/// How long before its expiry a token is replaced.
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

/// The token scope for the cloud.
pub fn scope(cloud: AzureCloud) -> &'static str {
    match cloud {
        AzureCloud::Public => "https://monitor.azure.com//.default",
        AzureCloud::China => "https://monitor.azure.cn//.default",
        AzureCloud::Government => "https://monitor.azure.us//.default",
    }
}

/// The cloud's Azure AD authority, or `AZURE_AUTHORITY_HOST`.
pub fn authority(cloud: AzureCloud, env: impl Fn(&str) -> Option<String>) -> String {
    env("AZURE_AUTHORITY_HOST")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            match cloud {
                AzureCloud::Public => "https://login.microsoftonline.com",
                AzureCloud::China => "https://login.chinacloudapi.cn",
                AzureCloud::Government => "https://login.microsoftonline.us",
            }
            .to_owned()
        })
        .trim_end_matches('/')
        .to_owned()
}

/// The client-credentials token URL of `tenant`.
pub fn token_url(cloud: AzureCloud, tenant: &str, env: impl Fn(&str) -> Option<String>) -> String {
    format!("{}/{tenant}/oauth2/v2.0/token", authority(cloud, env))
}

/// Why no token could be had from the metadata service.
#[derive(Debug, thiserror::Error)]
#[error("azuread managed_identity: token request to {url} failed: {reason}")]
pub struct ManagedIdentityError {
    url: String,
    reason: String,
}

/// Tokens of a managed identity from the instance metadata service.
#[derive(Debug)]
pub struct ManagedIdentity {
    http: HttpClient,
    url: url::Url,
    cache: tokio::sync::Mutex<Option<(String, Option<Instant>)>>,
}

impl ManagedIdentity {
    /// `http` is a plain client (no auth) for the metadata service.
    pub fn new(
        cloud: AzureCloud,
        client_id: &str,
        http: HttpClient,
        env: impl Fn(&str) -> Option<String>,
    ) -> ManagedIdentity {
        let host = env("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "http://169.254.169.254".into());
        let mut url = url::Url::parse(&format!(
            "{}/metadata/identity/oauth2/token",
            host.trim_end_matches('/')
        ))
        .unwrap_or_else(|_| {
            url::Url::parse("http://169.254.169.254/metadata/identity/oauth2/token").expect("URL")
        });
        let resource = scope(cloud)
            .trim_end_matches(".default")
            .trim_end_matches('/');
        url.query_pairs_mut()
            .append_pair("api-version", "2018-02-01")
            .append_pair("resource", &format!("{resource}/"))
            .append_pair("client_id", client_id);
        ManagedIdentity {
            http,
            url,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The `Authorization` header value: the cached token while it is valid, else a new one.
    pub async fn authorization(&self) -> Result<String, ManagedIdentityError> {
        let mut cache = self.cache.lock().await;
        if let Some((header, expires)) = cache.as_ref() {
            if expires.is_none_or(|e| Instant::now() + EXPIRY_MARGIN < e) {
                return Ok(header.clone());
            }
        }
        let err = |reason: String| ManagedIdentityError {
            url: self.url.as_str().split('?').next().unwrap_or("").to_owned(),
            reason,
        };
        let rb = self.http.get(self.url.clone()).header("Metadata", "true");
        let resp = self
            .http
            .send_without_auth(rb)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .bytes()
            .await
            .map_err(|e| err(error_chain(&e.without_url())))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(err(format!("HTTP status {status}: {}", text.trim())));
        }
        let token = parse_token_response(content_type.as_deref(), &body).map_err(err)?;
        let header = token.header_value();
        *cache = Some((header.clone(), token.expires_in.map(|d| Instant::now() + d)));
        Ok(header)
    }

    /// Forgets the cached token (a request got a 401).
    pub async fn clear(&self) {
        *self.cache.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_cloud_and_the_sdk_variables() {
        let none = |_: &str| None;
        assert_eq!(
            token_url(AzureCloud::Public, "t1", none),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
        );
        assert_eq!(
            token_url(AzureCloud::China, "t1", |k: &str| (k
                == "AZURE_AUTHORITY_HOST")
                .then(|| "http://127.0.0.1:9/".to_owned())),
            "http://127.0.0.1:9/t1/oauth2/v2.0/token"
        );
        assert_eq!(
            scope(AzureCloud::Government),
            "https://monitor.azure.us//.default"
        );
        let http = HttpClient::new(&Default::default(), &Default::default()).unwrap();
        let m = ManagedIdentity::new(AzureCloud::Public, "abc", http, none);
        assert_eq!(
            m.url.as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmonitor.azure.com%2F&client_id=abc"
        );
    }
}
